#!/usr/bin/env python3
"""Write a random-weight HuggingFace checkpoint of LFM2-8B-A1B (or LFM2-24B-A2B) shape.

The output is what `convert_hf_to_gguf.py` (llama.cpp) expects from a published
LiquidAI checkpoint: `config.json` (model_type "lfm2_moe", Lfm2MoeForCausalLM),
bf16 safetensors shards of about 2 GB with the published tensor names (per-expert
`model.layers.L.feed_forward.experts.N.w1/w2/w3.weight`), a
`model.safetensors.index.json`, and a small self-trained byte-level BPE tokenizer
that carries LFM2's 14 special tokens at ids 0..13.

Weights are N(0, 1/fan_in) (bf16), RMSNorm weights are 1 + N(0, 0.02^2),
`expert_bias` is N(0, 0.01^2) in f32. Everything is seeded, so a rerun with the
same --seed writes the same bytes. Tensors are generated and written one at a
time (the largest, the 65536 x 2048 embedding, needs ~0.8 GB of RAM), and every
finished shard is dropped from the page cache so the run does not evict other
people's files.

  python make_random_hf.py --preset 8b  --out /work/llamacpp/models/lfm2-8b-a1b-random-hf
  python make_random_hf.py --preset 24b --out DIR --no-weights   # config + tokenizer only

`--no-weights` writes only config.json and the tokenizer; `convert.py
--synthetic-weights` then generates the very same tensors (same names, shapes,
seeds) inside the converter instead of reading them from disk, which is how the
~48 GB LFM2-24B-A2B checkpoint is converted without ever storing it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SPECIAL_TOKENS_FILE = REPO / "tools" / "lfm2_special_tokens.json"
CHAT_TEMPLATE_FILE = REPO / "tools" / "lfm2_chat_template.jinja"

SHARD_BYTES = 2 * 1000**3  # ~2 GB per shard, like the published checkpoints


def _layer_types(n_layers: int, attn: list[int]) -> list[str]:
    return ["full_attention" if i in attn else "conv" for i in range(n_layers)]


def build_config(preset: str) -> dict:
    """The published LFM2-MoE configs (see README.md for the sources)."""
    if preset == "8b":
        n_layers, attn = 24, [2, 6, 10, 14, 18, 21]
        n_experts, moe_ff = 32, 1792
    elif preset == "24b":
        # 40 layers, 30 conv + 10 GQA (model card); attention positions assumed
        # 2, 6, 10, ..., 38 (the published layer_types list was not available).
        n_layers, attn = 40, list(range(2, 40, 4))
        n_experts, moe_ff = 64, 1536
    else:
        raise ValueError(preset)
    rope_theta = 1000000.0
    return {
        "architectures": ["Lfm2MoeForCausalLM"],
        "model_type": "lfm2_moe",
        "vocab_size": 65536,
        "hidden_size": 2048,
        "intermediate_size": 7168,
        "moe_intermediate_size": moe_ff,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "layer_types": _layer_types(n_layers, attn),
        "conv_L_cache": 3,
        "conv_bias": False,
        "num_dense_layers": 2,
        "num_experts": n_experts,
        "num_experts_per_tok": 4,
        "use_expert_bias": True,
        "norm_topk_prob": True,
        "routed_scaling_factor": 1.0,
        "norm_eps": 1e-05,
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_theta": rope_theta, "rope_type": "default"},
        "max_position_embeddings": 128000,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 7,
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": "bfloat16",
        "torch_dtype": "bfloat16",
    }


# --------------------------------------------------------------------------- tensors


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...], str, str, float]]:
    """(name, shape, safetensors dtype, init kind, std) in checkpoint order."""
    H = cfg["hidden_size"]
    V = cfg["vocab_size"]
    nH, nKV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = H // nH
    ff, Im = cfg["intermediate_size"], cfg["moe_intermediate_size"]
    E = cfg["num_experts"]
    Lc = cfg["conv_L_cache"]

    def lin(name, out_f, in_f):
        return (name, (out_f, in_f), "BF16", "normal", in_f**-0.5)

    def norm(name, n):
        return (name, (n,), "BF16", "norm", 0.02)

    specs = [("model.embed_tokens.weight", (V, H), "BF16", "normal", H**-0.5)]
    for L, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{L}."
        specs.append(norm(p + "operator_norm.weight", H))
        if kind == "full_attention":
            specs += [
                lin(p + "self_attn.q_proj.weight", nH * hd, H),
                lin(p + "self_attn.k_proj.weight", nKV * hd, H),
                lin(p + "self_attn.v_proj.weight", nKV * hd, H),
                lin(p + "self_attn.out_proj.weight", H, nH * hd),
                norm(p + "self_attn.q_layernorm.weight", hd),
                norm(p + "self_attn.k_layernorm.weight", hd),
            ]
        else:
            specs += [
                lin(p + "conv.in_proj.weight", 3 * H, H),
                (p + "conv.conv.weight", (H, 1, Lc), "BF16", "normal", Lc**-0.5),
                lin(p + "conv.out_proj.weight", H, H),
            ]
        specs.append(norm(p + "ffn_norm.weight", H))
        if L < cfg["num_dense_layers"]:
            specs += [
                lin(p + "feed_forward.w1.weight", ff, H),
                lin(p + "feed_forward.w3.weight", ff, H),
                lin(p + "feed_forward.w2.weight", H, ff),
            ]
        else:
            specs.append(lin(p + "feed_forward.gate.weight", E, H))
            specs.append((p + "feed_forward.expert_bias", (E,), "F32", "normal", 0.01))
            for x in range(E):
                q = f"{p}feed_forward.experts.{x}."
                specs += [lin(q + "w1.weight", Im, H), lin(q + "w3.weight", Im, H), lin(q + "w2.weight", H, Im)]
    specs.append(norm("model.embedding_norm.weight", H))
    return specs


def _seed_for(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def make_tensor(spec, seed: int) -> torch.Tensor:
    """The tensor for one spec, deterministic in (seed, name)."""
    name, shape, dtype, kind, std = spec
    g = torch.Generator().manual_seed(_seed_for(seed, name))
    t = torch.randn(shape, generator=g, dtype=torch.float32)
    t.mul_(std)
    if kind == "norm":
        t.add_(1.0)
    return t.to(torch.bfloat16 if dtype == "BF16" else torch.float32)


def _nbytes(spec) -> int:
    n = int(np.prod(spec[1]))
    return n * (2 if spec[2] == "BF16" else 4)


def _raw_bytes(t: torch.Tensor) -> bytes:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def plan_shards(specs, shard_bytes: int = SHARD_BYTES) -> list[list]:
    shards, cur, size = [], [], 0
    for s in specs:
        b = _nbytes(s)
        if cur and size + b > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += b
    if cur:
        shards.append(cur)
    return shards


def write_shard(path: Path, specs, seed: int) -> None:
    """A safetensors file written tensor by tensor (header first, offsets known up front)."""
    header, off = {}, 0
    for s in specs:
        n = _nbytes(s)
        header[s[0]] = {"dtype": s[2], "shape": list(s[1]), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for s in specs:
            f.write(_raw_bytes(make_tensor(s, seed)))
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    tmp.rename(path)


# --------------------------------------------------------------------------- tokenizer


def _corpus(max_bytes: int = 4_000_000):
    """Deterministic-ish training text: the Python standard library's own sources."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for p in sorted(root.glob("*.py")):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        total += len(text)
        yield text
        if total >= max_bytes:
            return


def write_tokenizer(out: Path, vocab_size: int) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = json.loads(SPECIAL_TOKENS_FILE.read_text())
    assert len(specials) == 14, specials
    tok = Tokenizer(models.BPE(byte_fallback=False))
    # the Llama-3 style split that llama.cpp uses for tokenizer.ggml.pre = "lfm2"
    split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
        r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,  # -> ids 0..13, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    for i, s in enumerate(specials):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    bos = specials[1]  # <|startoftext|>
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
    )
    tok.save(str(out / "tokenizer.json"))

    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": "<|im_end|>",
        "pad_token": specials[0],
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 1000000000000000019884624838656,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "added_tokens_decoder": {
            str(i): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, s in enumerate(specials)
        },
    }
    if CHAT_TEMPLATE_FILE.is_file():
        cfg["chat_template"] = CHAT_TEMPLATE_FILE.read_text()
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": bos, "eos_token": "<|im_end|>", "pad_token": specials[0]}, indent=2) + "\n"
    )


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["8b", "24b"], default="8b")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-vocab", type=int, default=8192, help="size of the self-trained BPE (<= 65536)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the RNG (default 1: be quiet)")
    ap.add_argument(
        "--no-weights", action="store_true", help="config + tokenizer only (for convert.py --synthetic-weights)"
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = build_config(args.preset)
    cfg["random_weights_seed"] = args.seed  # not an HF key; records how the weights were made
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0}, indent=2) + "\n"
    )
    write_tokenizer(out, args.tokenizer_vocab)
    print(f"config + tokenizer written to {out}", flush=True)

    specs = tensor_specs(cfg)
    total = sum(_nbytes(s) for s in specs)
    n_params = sum(int(np.prod(s[1])) for s in specs)
    print(f"{len(specs)} tensors, {n_params / 1e9:.3f} B parameters, {total / 1e9:.2f} GB", flush=True)
    if args.no_weights:
        return 0

    shards = plan_shards(specs)
    n = len(shards)
    weight_map = {}
    for i, sh in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        path = out / fname
        if path.is_file():
            print(f"  {fname} exists, skipped", flush=True)
        else:
            write_shard(path, sh, args.seed)
            print(f"  {fname}: {len(sh)} tensors, {sum(_nbytes(s) for s in sh) / 1e9:.2f} GB", flush=True)
        for s in sh:
            weight_map[s[0]] = fname
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
