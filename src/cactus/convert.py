"""HuggingFace LFM2 / LFM2-MoE checkpoint (single or sharded safetensors) -> our weight directory.

Names stay HF's, with two explicit exceptions: per-expert MoE weights
(`feed_forward.experts.N.w1.weight`, or transformers' fused `gate_up_proj` / `down_proj`) are
stacked into `feed_forward.experts.w{1,2,3}.weight` (E, ., .), and a tied `lm_head` is dropped.
The output is written under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .quant import DEFAULT_GROUP, FORMATS, QUANTIZED
from .weights import (
    FORMAT_VERSION,
    WEIGHTS_FILE,
    SafetensorsFile,
    WeightError,
    cactus_section,
    plan_weight,
    staged_dir,
    write_safetensors,
)

# Files that travel with the weights: tokenizer, chat template, generation defaults.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
              "special_tokens_map.json", "generation_config.json")
_EXPERT = re.compile(r"^(model\.layers\.\d+\.feed_forward\.experts)\.(\d+)\.(w[123])\.weight$")
_FUSED = re.compile(r"^(model\.layers\.\d+\.feed_forward\.experts)\.(gate_up_proj|down_proj)$")


def weight_format(name: str, shape: tuple[int, ...], quant: str, embed_quant: str | None) -> str:
    """Which format a tensor is stored in. Linear weights take `quant`; norms, conv kernels, biases,
    the router and the expert bias stay f32 (tiny, and routing and normalisation are where
    low precision hurts quality most). The tied embedding/LM head takes `embed_quant`."""
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return embed_quant or quant
    small = ("norm" in name or name.endswith(("conv.conv.weight", ".bias", "gate.weight", "expert_bias")))
    if small or len(shape) < 2:
        return "f32"
    return quant


def default_embed_quant(quant: str) -> str:
    # int4 on the 65k-row LM head costs noticeably more quality than it saves bytes per token.
    return "int8" if quant == "int4" else quant


class _Source:
    """All tensors of a HF checkpoint directory, as f32 on demand (bf16/f16/f32 sources)."""

    def __init__(self, hf_dir: Path):
        index = hf_dir / "model.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in hf_dir.glob("*.safetensors"))
        if not files:
            raise WeightError(f"{hf_dir}: no .safetensors weights found")
        self.arrays: dict[str, tuple[SafetensorsFile, str]] = {}
        for f in files:
            st = SafetensorsFile(hf_dir / f)
            for name in st.tensors:
                self.arrays[name] = (st, st.dtypes[name])

    def shape(self, name: str) -> tuple[int, ...]:
        st, _ = self.arrays[name]
        return tuple(st.tensors[name].shape)

    def f32(self, name: str) -> np.ndarray:
        st, dtype = self.arrays[name]
        a = st.tensors[name]
        if dtype == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if dtype not in ("F32", "F16", "F64"):
            raise WeightError(f"{st.path}: tensor '{name}' has dtype {dtype}, expected a float type")
        return a.astype(np.float32)


def _logical_tensors(src: _Source, cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], Callable]]:
    """Our tensor name -> (logical shape, producer of its f32 values)."""
    out: dict[str, tuple[tuple[int, ...], Callable]] = {}
    experts: dict[tuple[str, str], dict[int, str]] = {}
    for name in sorted(src.arrays):
        if name.startswith("__pad__"):
            continue
        m = _EXPERT.match(name)
        if m:
            experts.setdefault((m[1], m[3]), {})[int(m[2])] = name
            continue
        m = _FUSED.match(name)
        if m:
            e, rows, cols = src.shape(name)
            if m[2] == "down_proj":
                out[m[1] + ".w2.weight"] = ((e, rows, cols), lambda n=name: src.f32(n))
            else:
                half = rows // 2
                out[m[1] + ".w1.weight"] = ((e, half, cols), lambda n=name, h=half: src.f32(n)[:, :h])
                out[m[1] + ".w3.weight"] = ((e, half, cols), lambda n=name, h=half: src.f32(n)[:, h:])
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        out[name] = (src.shape(name), lambda n=name: src.f32(n))
    for (prefix, w), by_idx in experts.items():
        if sorted(by_idx) != list(range(cfg.num_experts)):
            raise WeightError(f"{prefix}.*.{w}.weight: found experts {sorted(by_idx)}, "
                              f"config has num_experts={cfg.num_experts}")
        names = [by_idx[i] for i in range(cfg.num_experts)]
        shape = (len(names),) + src.shape(names[0])
        out[f"{prefix}.{w}.weight"] = (shape, lambda ns=names: np.stack([src.f32(n) for n in ns]))
    return out


def convert(hf_dir: str | Path, out_dir: str | Path, quant: str = "int4", group_size: int = DEFAULT_GROUP,
            embed_quant: str | None = None, progress: bool = False, overwrite: bool = False) -> Path:
    """Convert a local HF checkpoint directory into a cactus weight directory; returns out_dir."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if quant not in FORMATS:
        raise ValueError(f"unknown quantization {quant!r} (choose from {', '.join(FORMATS)})")
    embed_quant = embed_quant or default_embed_quant(quant)
    if embed_quant not in FORMATS:
        raise ValueError(f"unknown embedding quantization {embed_quant!r}")
    if quant in QUANTIZED and (group_size <= 0 or group_size % 32):
        raise ValueError(f"group size must be a positive multiple of 32, got {group_size}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --force to replace it)")
    cfg_dict = json.loads((hf_dir / "config.json").read_text()) if (hf_dir / "config.json").exists() else None
    if cfg_dict is None:
        raise WeightError(f"{hf_dir}: no config.json (is this a HuggingFace checkpoint directory?)")
    cfg = ModelConfig.from_dict(cfg_dict, str(hf_dir / "config.json"))
    src = _Source(hf_dir)
    logical = _logical_tensors(src, cfg)

    planned, info = [], {}
    for name, (shape, produce) in logical.items():
        fmt = weight_format(name, shape, quant, embed_quant)
        pieces, meta = plan_weight(name, fmt, shape, group_size, produce)
        planned += pieces
        info[name] = meta
    metadata = {"format": "cactus", "cactus.format_version": str(FORMAT_VERSION),
                "cactus.tensors": json.dumps(info, separators=(",", ":"))}

    with staged_dir(out_dir) as tmp:
        bar = None
        if progress:
            from tqdm import tqdm
            total = sum(int(np.prod(t.shape)) * np.dtype(_np(t.dtype)).itemsize for t in planned)
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"convert {quant}")
        write_safetensors(tmp / WEIGHTS_FILE, planned, metadata,
                          progress=(lambda t: bar.update(int(np.prod(t.shape)) * np.dtype(_np(t.dtype)).itemsize))
                          if bar else None)
        if bar:
            bar.close()
        for f in SIDE_FILES:
            if (hf_dir / f).exists():
                shutil.copy2(hf_dir / f, tmp / f)
        cfg_dict["cactus"] = cactus_section(quant, group_size, embed_quant)
        (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
        from .engine import load
        load(tmp)  # validates every tensor against the config before the result is published
    return out_dir


def _np(dtype: str):
    from .weights import DTYPES
    return DTYPES[dtype]
