"""Train the small LFM2-MoE demo model that lets cactus run offline, on a 2-core CPU in < 1 hour.

Data (all generated on this machine, see tools/demo_data.py):
  - CPython's standard library *.py sources (PSF license), sorted, tests/idlelib/tkinter/
    encodings tables left out; ~5% of files (by a CRC of the path) held out for perplexity.
  - Synthetic chat rendered with tools/lfm2_chat_template.jinja: "write a Python function to ..."
    requests answered with short, executed-and-checked code, and tool-use conversations
    (OpenAI-style schemas in the system turn, `<|tool_call_start|>[f(k="v")]<|tool_call_end|>`
    answers, sometimes a tool result and a final answer). 100 tool requests with unseen argument
    values are held out for the tool-call parse rate.
Tokenizer: byte-level BPE (tokenizers), 8192 entries, LFM2's 14 special tokens at ids 0..13.
Model: Lfm2MoeForCausalLM, hidden 256, 6 layers (conv,conv,attn,conv,conv,attn), 4 heads / 2 KV,
  layer 0 dense SwiGLU 768, layers 1-5 MoE 8 experts x 384, top-2, sigmoid router with expert
  bias (updated loss-free from expert load, as LFM2/DeepSeek-V3 do), tied embeddings: ~15.9M params.
Training: fp32, AdamW (0.9, 0.95, wd 0.1 on matrices), peak lr 2e-3, 50 warmup steps, cosine to
  2e-4, batches of 8 x 512 tokens (3 rows packed chat, 5 rows stdlib windows), grad clip 1.0,
  seeds fixed. The run stops at 1000 steps or 50 minutes of training, whichever comes first, and
  the cosine follows that same progress, so a slower machine gets fewer steps, never a cut-off
  schedule. One torch thread by default: on this shared 2-core machine two threads under `nice`
  measured 3-4x slower (OpenMP barriers stall whenever a neighbour's process holds a core).
  Measured tokens/s, steps and time are printed and stored in <out>/train_meta.json.
Measured here (docs/DEMO_MODEL.md): the 50-minute limit bound first, 882 steps, 3.6M tokens,
  1,204 tok/s, 50.2 minutes in all including data and tokenizer.

Run:  nohup nice -n 15 python3 tools/train_demo.py --out build/demo_hf > build/train_demo.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_data  # noqa: E402

N_CHAT = 12000
VOCAB = 8192
EXPERT_BIAS_RATE = 1e-3  # DeepSeek-V3's gamma for the loss-free balancing update


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE; the special tokens go in first, so they get ids 0..13 and never split."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2,
                                  special_tokens=demo_data.SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, t in enumerate(demo_data.SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def build_config(vocab_size: int):
    from transformers import Lfm2MoeConfig
    return Lfm2MoeConfig(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=768, moe_intermediate_size=384,
        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention"],
        num_dense_layers=1, num_experts=8, num_experts_per_tok=2, use_expert_bias=True,
        norm_topk_prob=True, routed_scaling_factor=1.0, tie_word_embeddings=True,
        max_position_embeddings=2048, conv_L_cache=3, conv_bias=False, norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=1, eos_token_id=7, pad_token_id=0)


class Batches:
    """Rows of seq_len+1 tokens: stdlib windows at random offsets, and chat rows packed from
    whole conversations (each row starts at a conversation's <|startoftext|>)."""

    def __init__(self, stream: np.ndarray, chats: list[np.ndarray], seq_len: int, seed: int):
        self.stream, self.chats, self.n = stream, chats, seq_len + 1
        self.rng = np.random.default_rng(seed)

    def chat_row(self) -> np.ndarray:
        parts, size = [], 0
        while size < self.n:
            c = self.chats[self.rng.integers(len(self.chats))]
            parts.append(c)
            size += len(c)
        return np.concatenate(parts)[: self.n]

    def __call__(self, n_text: int, n_chat: int) -> torch.Tensor:
        starts = self.rng.integers(0, len(self.stream) - self.n, size=n_text)
        rows = [self.stream[s: s + self.n] for s in starts] + [self.chat_row() for _ in range(n_chat)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, seq_len + 1)


def save_tokenizer_files(tok: Tokenizer, out: Path) -> None:
    template = demo_data.TEMPLATE_PATH.read_text()
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(template)
    special = {"bos_token": demo_data.BOS, "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": False,
           "add_eos_token": False, "model_max_length": 2048, "chat_template": template}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def lr_at(step: int, progress: float, peak: float, warmup: int, floor: float) -> float:
    """Linear warmup over steps, then cosine from peak to floor over progress in [0, 1]."""
    cosine = floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cosine * min(1.0, (step + 1) / warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="build/demo_hf")
    ap.add_argument("--steps", type=int, default=1000, help="step limit")
    ap.add_argument("--minutes", type=float, default=50.0, help="training time limit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chat-rows", type=int, default=3, help="chat rows per batch")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experts-impl", default="eager", help="transformers experts implementation")
    args = ap.parse_args()
    t_start = time.time()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # ---- data
    template = demo_data.load_template()
    files = demo_data.stdlib_files()
    train_files = [t for r, t in files if not demo_data.is_heldout_file(r)]
    held_prompts = {demo_data.render(template, m, t, add_generation_prompt=True)
                    for m, t, _ in demo_data.heldout_tool_requests(demo_data.N_HELDOUT_TOOL,
                                                                demo_data.HELDOUT_TOOL_SEED)}
    chats = [c for c in demo_data.chat_texts(N_CHAT, demo_data.CHAT_SEED, template)
             if not any(c.startswith(p) for p in held_prompts)]
    print(f"data: {len(train_files)} stdlib train files ({len(files) - len(train_files)} held out),"
          f" {sum(map(len, train_files)) / 1e6:.2f} M chars; {len(chats)} chat samples", flush=True)

    tok = train_tokenizer(train_files + chats[:4000])
    docs = tok.encode_batch([demo_data.BOS + t + demo_data.EOT for t in train_files])
    stream = np.concatenate([np.array(d.ids, dtype=np.int32) for d in docs])
    chat_ids = [np.array(e.ids, dtype=np.int32) for e in tok.encode_batch(chats)]
    print(f"tokenizer: {tok.get_vocab_size()} entries; stdlib stream {len(stream) / 1e6:.2f} M tokens,"
          f" chat {sum(map(len, chat_ids)) / 1e6:.2f} M tokens"
          f" (longest conversation {max(map(len, chat_ids))}); {time.time() - t_start:.0f} s",
          flush=True)

    # ---- model
    from transformers import GenerationConfig, Lfm2MoeForCausalLM
    config = build_config(tok.get_vocab_size())
    config._experts_implementation = args.experts_impl
    model = Lfm2MoeForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters; experts implementation {args.experts_impl}",
          flush=True)

    # Loss-free load balancing: remember each MoE router's picks, nudge expert_bias afterwards.
    picks: dict[int, torch.Tensor] = {}
    moe_blocks = {i: layer.feed_forward for i, layer in enumerate(model.model.layers)
                  if hasattr(layer.feed_forward, "gate")}
    for i, block in moe_blocks.items():
        block.gate.register_forward_hook(
            lambda mod, inp, outp, i=i: picks.__setitem__(i, outp[2].detach()))

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    batches = Batches(stream, chat_ids, args.seq_len, args.seed)
    n_chat, n_text = args.chat_rows, args.batch - args.chat_rows
    tokens_per_step = args.batch * args.seq_len
    log_path = out / "train_log.csv"
    log = log_path.open("w")
    log.write("step,tokens,loss,lr,elapsed_s,tokens_per_s,max_expert_load\n")

    print(f"training: up to {args.steps} steps or {args.minutes} min of {tokens_per_step} tokens, "
          f"lr {args.lr}, warmup {args.warmup}, {args.threads} thread(s)", flush=True)
    t_train = time.time()
    window_loss, window_n, max_load = 0.0, 0, 0.0
    step, progress = 0, 0.0
    while progress < 1.0:
        lr = lr_at(step, progress, args.lr, args.warmup, args.lr / 10)
        for g in opt.param_groups:
            g["lr"] = lr
        x = batches(n_text, n_chat)
        logits = model(input_ids=x[:, :-1]).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for i, block in moe_blocks.items():
                load = torch.bincount(picks[i].flatten(), minlength=config.num_experts).float()
                block.expert_bias += EXPERT_BIAS_RATE * torch.sign(load.mean() - load)
                max_load = max(max_load, (load.max() / load.mean()).item())
        window_loss += loss.item()
        window_n += 1
        step += 1
        el = time.time() - t_train
        # Whichever limit binds first ends the run; the cosine follows the same progress.
        progress = max(step / args.steps, el / (60 * args.minutes))
        if step % args.log_every == 0 or progress >= 1.0:
            tps = step * tokens_per_step / el
            log.write(f"{step},{step * tokens_per_step},{window_loss / window_n:.4f},"
                      f"{lr:.6g},{el:.1f},{tps:.0f},{max_load:.2f}\n")
            log.flush()
            print(f"step {step} loss {window_loss / window_n:.4f} lr {lr:.2e} "
                  f"{tps:.0f} tok/s max expert load {max_load:.2f}x "
                  f"elapsed {el / 60:.1f} min", flush=True)
            last_loss = window_loss / window_n
            window_loss, window_n, max_load = 0.0, 0, 0.0
    train_s = time.time() - t_train
    log.close()

    # ---- save
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=7, pad_token_id=0)
    model.save_pretrained(out)
    save_tokenizer_files(tok, out)
    total_s = time.time() - t_start
    meta = {"steps": step, "step_limit": args.steps, "minute_limit": args.minutes,
            "threads": args.threads, "batch": args.batch, "chat_rows": n_chat, "seq_len": args.seq_len,
            "lr": args.lr, "warmup": args.warmup, "seed": args.seed, "params": n_params,
            "tokens": step * tokens_per_step, "train_seconds": round(train_s, 1),
            "total_seconds": round(total_s, 1), "final_loss": round(last_loss, 4),
            "tokens_per_second": round(step * tokens_per_step / train_s, 1),
            "stdlib_tokens": int(len(stream)), "chat_samples": len(chats),
            "torch": torch.__version__, "experts_implementation": args.experts_impl}
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"done: training {train_s / 60:.1f} min, total {total_s / 60:.1f} min, "
          f"{meta['tokens_per_second']:.0f} tok/s; saved to {out}", flush=True)


if __name__ == "__main__":
    main()
