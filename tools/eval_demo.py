"""Evaluate the demo model with transformers in f32: held-out perplexity and tool-call parse rate.

Perplexity: the held-out stdlib files (tools/demo_data.is_heldout_file), each as
<|startoftext|> + text + <|endoftext|>, concatenated and cut into non-overlapping 512-token windows.
Tool calls: greedy generation on the held-out tool requests (rendered with the chat template,
add_generation_prompt=True); a reply counts as parsable when it holds a
<|tool_call_start|>[...]<|tool_call_end|> block whose inside parses with `ast` as a list of calls
with keyword literal arguments. `--plot` draws the training loss curve from <dir>/train_log.csv.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_data  # noqa: E402


def parse_tool_calls(text: str) -> list[tuple[str, dict]] | None:
    """The (name, arguments) of every well-formed call in text (cactus's own parser, the one the
    API and server use), or None when there is none."""
    from cactus.tools import extract_tool_calls

    calls = extract_tool_calls(text)[1]
    return [(c["name"], c["arguments"]) for c in calls] or None


@torch.no_grad()
def heldout_perplexity(model, tok, seq_len: int = 512) -> tuple[float, int]:
    texts = [t for r, t in demo_data.stdlib_files() if demo_data.is_heldout_file(r)]
    ids = [i for e in tok.encode_batch([demo_data.BOS + t + demo_data.EOT for t in texts])
           for i in e.ids]
    nll, count = 0.0, 0
    for s in range(0, len(ids) - 1, seq_len):
        x = torch.tensor([ids[s: s + seq_len + 1]])  # (1, <= seq_len + 1)
        if x.shape[1] < 2:
            break
        logits = model(input_ids=x[:, :-1]).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        count += x.shape[1] - 1
    return math.exp(nll / count), count


@torch.no_grad()
def greedy(model, tok, prompt: str, max_new_tokens: int) -> str:
    x = torch.tensor([tok.encode(prompt).ids])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=7, pad_token_id=0)
    return tok.decode(out[0, x.shape[1]:].tolist(), skip_special_tokens=False)


def cactus_eval(hf_dir: Path, quants: list[str], n_tool: int, max_new_tokens: int) -> dict:
    """The same held-out perplexity windows and tool requests, through cactus after `cactus convert`
    at each weight format (the C kernels, int8 activations for the int formats)."""
    import tempfile

    import numpy as np
    from tokenizers import Tokenizer

    from cactus import Model
    from cactus.convert import convert
    from cactus.engine import load

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    texts = [t for r, t in demo_data.stdlib_files() if demo_data.is_heldout_file(r)]
    ids = [i for e in tok.encode_batch([demo_data.BOS + t + demo_data.EOT for t in texts]) for i in e.ids]
    requests = demo_data.heldout_tool_requests(demo_data.N_HELDOUT_TOOL, demo_data.HELDOUT_TOOL_SEED)[:n_tool]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for quant in quants:
            t = time.time()
            path = convert(hf_dir, Path(tmp) / quant, quant=quant)
            engine = load(path)
            nll, count = 0.0, 0
            for s in range(0, len(ids) - 1, 512):
                window = ids[s: s + 513]
                if len(window) < 2:
                    break
                engine.reset()
                z = engine.forward(window[:-1]).astype(np.float64)
                z -= z.max(-1, keepdims=True)
                logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
                nll -= logp[np.arange(len(window) - 1), window[1:]].sum()
                count += len(window) - 1
            parsed = 0
            with Model(path) as chat:
                for messages, tools, _expected in requests:
                    chat.reset()
                    parsed += bool(chat.complete(messages, tools=tools, max_tokens=max_new_tokens).function_calls)
            out[quant] = {"heldout_ppl": round(math.exp(nll / count), 3), "heldout_tokens": count,
                          "tool_parse_rate": parsed / len(requests),
                          "file_mb": round((path / "model.safetensors").stat().st_size / 1e6, 1)}
            print(f"cactus {quant}: {out[quant]} ({time.time() - t:.0f} s)", flush=True)
    return out


def constrained_eval(n_tool: int, max_new_tokens: int) -> dict:
    """The held-out tool requests through cactus on the shipped demo model, greedy, without and
    with the tool-call grammar (cactus.grammar): parsable, declared tool names only, arguments
    valid against the tool's schema, right tool, exact arguments."""
    from unittest import mock

    from cactus import Model, grammar
    from cactus.demo import demo_path

    requests = demo_data.heldout_tool_requests(demo_data.N_HELDOUT_TOOL, demo_data.HELDOUT_TOOL_SEED)[:n_tool]
    out = {}
    with Model(demo_path()) as chat:
        ll = grammar.ll_tokenizer(chat.tokenizer, chat.engine.config.vocab_size, sorted(chat.stop_ids))
        for mode, choice in (("unconstrained", "auto"), ("constrained", "auto"), ("constrained", "required")):
            counts = dict.fromkeys(("parsable", "declared", "schema_valid", "right_tool", "exact"), 0)
            with mock.patch.object(grammar, "available", return_value=mode == "constrained"):
                chat._plans.clear()
                for messages, tools, expected in requests:
                    chat.reset()
                    calls = chat.complete(messages, tools=tools, max_tokens=max_new_tokens,
                                          tool_choice=choice).function_calls
                    by_name = {t["function"]["name"]: t for t in tools}
                    got = [(c["name"], c["arguments"]) for c in calls]
                    counts["parsable"] += bool(calls)
                    counts["declared"] += bool(calls) and all(n in by_name for n, _ in got)
                    counts["schema_valid"] += bool(calls) and all(
                        n in by_name and grammar.arguments_error(ll, by_name[n], a) is None for n, a in got)
                    counts["right_tool"] += [n for n, _ in got] == [n for n, _ in expected]
                    counts["exact"] += got == [tuple(c) for c in expected]
            out[f"{mode}, tool_choice={choice}"] = row = {k: v / len(requests) for k, v in counts.items()}
            print(f"{mode}, tool_choice={choice}: {row}", flush=True)
    return out


def plot_loss(log_csv: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [line.split(",") for line in log_csv.read_text().splitlines()[1:]]
    step = [int(r[0]) for r in rows]
    loss = [float(r[2]) for r in rows]
    lr = [float(r[3]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(step, loss, color="tab:blue", label="train loss (mean per log interval)")
    ax.set_xlabel("step (4096 tokens each)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax2 = ax.twinx()
    ax2.plot(step, lr, color="tab:orange", alpha=0.6, label="learning rate")
    ax2.set_ylabel("learning rate")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    meta = json.loads((log_csv.parent / "train_meta.json").read_text())
    ax.set_title(f"cactus demo LFM2-MoE ({meta['params'] / 1e6:.1f}M params, "
                 f"{meta['tokens'] / 1e6:.1f}M tokens, {meta['train_seconds'] / 60:.0f} min): "
                 "training loss", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-tool", type=int, default=demo_data.N_HELDOUT_TOOL)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--plot", type=Path, help="write the loss curve PNG here")
    ap.add_argument("--cactus", nargs="+", metavar="QUANT", help="evaluate through cactus at these formats "
                    "(f32 int8 int4) instead of transformers; writes eval_cactus.json")
    ap.add_argument("--constrained", action="store_true", help="the held-out tool requests on the shipped "
                    "demo model through cactus, without and with the tool-call grammar")
    args = ap.parse_args()
    if args.constrained:
        print(json.dumps(constrained_eval(args.n_tool, args.max_new_tokens), indent=2))
        return
    if args.cactus:
        results = cactus_eval(args.dir, args.cactus, args.n_tool, args.max_new_tokens)
        (args.dir / "eval_cactus.json").write_text(json.dumps(results, indent=2) + "\n")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.plot:
        plot_loss(args.dir / "train_log.csv", args.plot)
        print(f"loss curve -> {args.plot}")

    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    tok = Tokenizer.from_file(str(args.dir / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32).eval()
    template = demo_data.load_template(args.dir / "chat_template.jinja")
    results: dict = {"params": sum(p.numel() for p in model.parameters())}

    t = time.time()
    ppl, n = heldout_perplexity(model, tok)
    results.update(heldout_ppl=round(ppl, 3), heldout_tokens=n)
    print(f"held-out stdlib perplexity (transformers f32): {ppl:.3f} over {n} tokens "
          f"({time.time() - t:.0f} s)", flush=True)

    t = time.time()
    requests = demo_data.heldout_tool_requests(demo_data.N_HELDOUT_TOOL,
                                               demo_data.HELDOUT_TOOL_SEED)[: args.n_tool]
    parsed = right_name = exact = 0
    failures = []
    for messages, tools, expected in requests:
        reply = greedy(model, tok, demo_data.render(template, messages, tools, True),
                       args.max_new_tokens)
        calls = parse_tool_calls(reply)
        parsed += calls is not None
        right_name += calls is not None and [c[0] for c in calls] == [c[0] for c in expected]
        exact += calls == [tuple(c) for c in expected]
        if calls is None and len(failures) < 3:
            failures.append({"request": messages[-1]["content"], "reply": reply})
    n = len(requests)
    results.update(tool_requests=n, tool_parse_rate=parsed / n, tool_name_rate=right_name / n,
                   tool_exact_rate=exact / n, tool_failures=failures)
    print(f"tool calls: parsable {parsed}/{n} = {parsed / n:.1%}; right tool {right_name}/{n}; "
          f"exact name+arguments {exact}/{n} ({time.time() - t:.0f} s)", flush=True)

    samples = {}
    code_prompt = [{"role": "user", "content": "Write a Python function to sort a list"}]
    samples["code"] = {"prompt": code_prompt,
                       "reply": greedy(model, tok, demo_data.render(template, code_prompt, None, True),
                                       200)}
    messages, tools, _ = requests[0]
    samples["tool"] = {"prompt": messages, "tools": [t["function"]["name"] for t in tools],
                       "reply": greedy(model, tok, demo_data.render(template, messages, tools, True),
                                       args.max_new_tokens)}
    results["samples"] = samples
    for k, v in samples.items():
        print(f"--- sample ({k}): {v['prompt'][-1]['content']!r}\n{v['reply']}")
    (args.dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results -> {args.dir / 'eval.json'}")


if __name__ == "__main__":
    main()
