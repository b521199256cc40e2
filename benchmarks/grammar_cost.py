"""The cost of structured generation per decoded token: the grammar's mask (`Constraint.allowed()`),
applying it in the sampler, and `advance()`, next to the decode step (forward + sampling) it rides on.

    python benchmarks/grammar_cost.py [--models demo,lfm2-350m:int4,lfm2-1.2b:int8] [--repeats 3]
                                      [--out benchmarks/results/grammar_cost]

Each case forces a realistic answer token by token, as `generate()` runs it: a tool-call block
(four tools, nested arguments, a long string argument; tool_choice auto) and a response_format
json_schema answer. A row gives means over the tokens of all runs (ms/token): the forward, the
sampler without the mask on the same logits (both: the decode step without a grammar), and the
grammar's parts: the mask, applying it (the sampler with the mask minus without), `advance()`;
`share` = grammar / decode step, both measured on the same tokens. Synthetic shapes have no
tokenizer, and the mask's cost depends on the vocabulary, so they get a 65,536-token byte-level BPE
trained on the Python standard library with LFM2's special tokens (cached in the output
directory); the demo model uses its own 8,192-token tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from cactus import grammar
from cactus.engine import load
from cactus.generate import Session, eos_ids
from cactus.sampling import Sampler, SamplingOptions
from cactus.tokenizer import Tokenizer
from cactus.tools import TOOL_CALL_END, TOOL_CALL_START

# LFM2's special tokens (ids 0..13 as in its tokenizer.json) and the think tags of its reasoning models
SPECIAL = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
           "<|im_start|>", "<|im_end|>", "<|tool_list_start|>", "<|tool_list_end|>", "<|tool_call_start|>",
           "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>", "<think>", "</think>"]
VOCAB = 65536

BODY = ("Hi team,\n\nThe quarterly numbers are in: revenue grew 12% over the last quarter, churn fell to "
        "3.1%, and the new onboarding flow cut the time to a first project from 9 minutes to 4. Please "
        "read the attached report before Thursday's review, and bring one question about the roadmap "
        "for Q3 (\"what do we stop doing?\" is a fine one).\n\nThanks,\nAna")
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"},
                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "send_email", "description": "Send an email", "parameters": {
        "type": "object", "properties": {
            "to": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "subject": {"type": "string", "maxLength": 120}, "body": {"type": "string"},
            "priority": {"type": "string", "enum": ["low", "normal", "high"]}},
        "required": ["to", "subject", "body"]}}},
    {"type": "function", "function": {"name": "create_event", "description": "Add a calendar event", "parameters": {
        "type": "object", "properties": {
            "title": {"type": "string"}, "start": {"type": "string"},
            "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 480},
            "attendees": {"type": "array", "items": {
                "type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                                                 "optional": {"type": "boolean"}},
                "required": ["name", "email"]}},
            "location": {"type": ["string", "null"]}},
        "required": ["title", "start", "duration_minutes"]}}},
    {"type": "function", "function": {"name": "search_files", "description": "Find files", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query"]}}},
]
CALL = ("[send_email(to=[\"ana@example.com\", \"bo@example.org\"], subject=\"Quarterly report\", body="
        + json.dumps(BODY) + ", priority=\"high\"), create_event(title=\"Quarterly review\", "
        "start=\"2025-03-13T10:00:00\", duration_minutes=45, attendees=[{\"name\": \"Ana\", \"email\": "
        "\"ana@example.com\"}, {\"name\": \"Bo\", \"email\": \"bo@example.org\", \"optional\": True}], "
        "location=None)]")
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "email": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
    "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                                 "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street", "city", "zip"], "additionalProperties": False},
    "notes": {"type": "string"}},
    "required": ["name", "age", "email", "tags", "address", "notes"], "additionalProperties": False}
ANSWER = {"name": "Ana Lopez", "age": 34, "email": "ana@example.com", "tags": ["engineering", "lead", "remote"],
          "address": {"street": "12 Harbour Road", "city": "Lisbon", "zip": "10115"}, "notes": BODY}


def bpe_tokenizer(out: Path) -> Path:
    """A 65,536-token byte-level BPE in LFM2's layout (special tokens first), trained once on the
    Python standard library's sources and kept in `out`."""
    path = out / f"bpe-{VOCAB}"
    if (path / "tokenizer.json").is_file():
        return path
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in lib.rglob("*.py") if "site-packages" not in f.parts)
    print(f"training a {VOCAB}-token BPE on {len(files)} files of {lib} ...", file=sys.stderr)

    def texts():
        for f in files:
            try:
                yield f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):  # a few test files are deliberately not UTF-8
                continue
    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts(), trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if tok.get_vocab_size() != VOCAB:
        raise SystemExit(f"the BPE came out with {tok.get_vocab_size()} tokens, not {VOCAB}")
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}))
    return path


def model_and_tokenizer(spec: str, out: Path):
    if spec == "demo":
        from cactus.demo import demo_path

        return load(demo_path(), max_context=2048), Tokenizer(demo_path())
    from cactus import synthetic

    name, _, quant = spec.partition(":")
    engine = load(synthetic.ensure(name, quant or "int4"), max_context=2048)
    return engine, Tokenizer(bpe_tokenizer(out))


def cases(tok: Tokenizer, vocab: int, eos: list[int]):
    """(name, plan, forced answer ids) for the tool call and the json_schema answer."""
    end = tok.token_to_id("<|im_end|>")
    call = tok.encode(TOOL_CALL_START + CALL + TOOL_CALL_END) + [end]
    text = json.dumps(ANSWER, ensure_ascii=False, separators=(",", ":"))
    yield "tool call", grammar.plan(tok, vocab, eos, TOOLS, "auto"), call
    fmt = {"type": "json_schema", "schema": SCHEMA}
    yield "json_schema", grammar.plan(tok, vocab, eos, None, response_format=fmt), tok.encode(text) + [end]


def run(session: Session, prompt: list[int], ids: list[int], plan) -> dict[str, np.ndarray]:
    """Force `ids` as generate() would sample them (mask, sample, advance, forward) -> seconds per
    token of each part; with `plan`, the sampler is also timed without the mask on the same logits
    (just before or just after the masked call, in turn)."""
    sampler, history = Sampler(SamplingOptions()), list(prompt)
    logits, _ = session.prefill(prompt)
    constraint = plan.start(prompt) if plan is not None else None
    t = {k: [] for k in ("allowed", "sample", "sample_free", "advance", "forward")}
    for i, token in enumerate(ids):
        mask = None
        if constraint is not None:
            dt, mask = timed(constraint.allowed)
            t["allowed"].append(dt)
            if mask is not None and not mask[token]:
                raise SystemExit(f"the grammar refuses token {i} ({token}) of the forced answer")
        order = [("sample", mask), ("sample_free", None)][::1 if i % 2 else -1]
        for key, m in order if constraint is not None else [("sample", None)]:
            t[key].append(timed(sampler, logits, history, m)[0])
        if constraint is not None:
            t["advance"].append(timed(constraint.advance, token)[0])
        history.append(token)
        if i + 1 < len(ids):
            dt, logits = timed(session.step, token)
            t["forward"].append(dt)
    return {k: np.array(v) for k, v in t.items()}


def timed(f, *args):
    """(seconds, f(*args))"""
    t = time.perf_counter()
    out = f(*args)
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="demo,lfm2-350m:int4,lfm2-1.2b:int8")
    p.add_argument("--repeats", type=int, default=3, help="runs per case")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grammar_cost")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"threads: {os.environ.get('CACTUS_THREADS', 'default')}; llguidance {grammar_version()}\n")
    print("| model | vocab | case | tokens | forward | sample | decode step | mask | apply | advance "
          "| grammar | share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for spec in args.models.split(","):
        engine, tok = model_and_tokenizer(spec, args.out)
        vocab = engine.config.vocab_size
        eos = sorted(eos_ids(engine, tok))
        session = Session(engine)
        prompt = tok.encode("<|startoftext|><|im_start|>user\nPlan the quarterly review and tell the team."
                            "<|im_end|>\n<|im_start|>assistant\n")
        for name, plan, ids in cases(tok, vocab, eos):
            run(session, prompt, ids[:8], plan)  # warm: kernels, and llguidance's lexer caches
            runs = []
            for _ in range(args.repeats):
                session.reset()
                runs.append(run(session, prompt, ids, plan))
            g = {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
            ms = {k: float(np.mean(v)) * 1e3 for k, v in g.items()}  # means: the costs add up per token
            apply_ms = float(np.mean(g["sample"] - g["sample_free"])) * 1e3
            grammar_ms = ms["allowed"] + apply_ms + ms["advance"]
            decode_ms = ms["forward"] + ms["sample_free"]
            row = dict(model=f"{spec.partition(':')[0]} {engine.quant}", vocab=vocab, case=name, tokens=len(ids),
                       forward=ms["forward"], sample=ms["sample_free"], decode=decode_ms, mask=ms["allowed"],
                       apply=apply_ms, advance=ms["advance"], grammar=grammar_ms, share=grammar_ms / decode_ms)
            rows.append(row)
            print(f"| {row['model']} | {vocab} | {name} | {len(ids)} | {ms['forward']:.2f} | {ms['sample_free']:.3f} "
                  f"| {decode_ms:.2f} | {ms['allowed']:.3f} | {apply_ms:.3f} | {ms['advance']:.3f} "
                  f"| {grammar_ms:.3f} | {grammar_ms / decode_ms:.1%} |", flush=True)
    (args.out / "grammar_cost.json").write_text(json.dumps(rows, indent=1))


def grammar_version() -> str:
    import llguidance

    return getattr(llguidance, "__version__", "?")


if __name__ == "__main__":
    main()
