"""Random-weight models of the published shapes, written straight into our format (for `cactus bench`).

Quantized tensors are made directly in their stored layout (random int8 / packed int4 bytes and
fp16 scales sized so each layer keeps unit-scale activations), so a 13 GB model takes disk speed,
not quantization time. Tensor names, formats and metadata are exactly convert.py's.
Kept among the converted models, as <cactus home>/models/synthetic-NAME-QUANT (hub.py: default
~/.cache/cactus/models; `cactus list` shows it, `cactus rm` removes it); written once, atomically.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import shapes
from .config import ModelConfig
from .convert import weight_format
from .quant import DEFAULT_GROUP, FORMATS, embed_format
from .weights import (
    FORMAT_VERSION,
    WEIGHTS_FILE,
    PlannedTensor,
    cactus_section,
    plan_stored,
    staged_dir,
    write_safetensors,
)


def model_dir(name: str, quant: str) -> Path:
    from .hub import models_dir

    return models_dir() / f"synthetic-{name}-{quant}"


def logical_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our tensor names and logical shapes for a config (as convert.py writes them)."""
    d, hd, L = cfg.hidden_size, cfg.head_dim, cfg.conv_L_cache
    out = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.embedding_norm.weight": (d,)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "operator_norm.weight"] = (d,)
        out[p + "ffn_norm.weight"] = (d,)
        if cfg.is_attention(i):
            a = p + "self_attn."
            out.update({a + "q_proj.weight": (cfg.num_attention_heads * hd, d),
                        a + "k_proj.weight": (cfg.num_key_value_heads * hd, d),
                        a + "v_proj.weight": (cfg.num_key_value_heads * hd, d),
                        a + "out_proj.weight": (d, cfg.num_attention_heads * hd),
                        a + "q_layernorm.weight": (hd,), a + "k_layernorm.weight": (hd,)})
        else:
            c = p + "conv."
            out.update({c + "in_proj.weight": (3 * d, d), c + "out_proj.weight": (d, d), c + "conv.weight": (d, 1, L)})
        f = p + "feed_forward."
        if cfg.is_moe_layer(i):
            e, im = cfg.num_experts, cfg.moe_intermediate_size
            out.update({f + "gate.weight": (e, d), f + "experts.w1.weight": (e, im, d),
                        f + "experts.w3.weight": (e, im, d), f + "experts.w2.weight": (e, d, im)})
            if cfg.use_expert_bias:
                out[f + "expert_bias"] = (e,)
        else:
            ff = cfg.intermediate_size
            out.update({f + "w1.weight": (ff, d), f + "w3.weight": (ff, d), f + "w2.weight": (d, ff)})
    return out


def _producers(name: str, fmt: str, shape: tuple[int, ...], group: int, seed: int) -> list[Callable[[], np.ndarray]]:
    """Makers of the stored arrays (data, then scales for grouped formats), in the format's layout order."""
    f = FORMATS[fmt]

    def rng():
        return np.random.default_rng([seed, len(name), sum(name.encode())])

    if f.grouped:  # random stored values, scales that keep unit-scale activations
        (dshape, _), (sshape, _) = f.layout(shape, group)
        k = shape[-1]
        s = (1.0 / np.sqrt(k)) / f.random_std
        return [lambda: f.random(rng(), dshape, k), lambda: (s * rng().uniform(0.8, 1.2, sshape)).astype(np.float16)]

    def floats():
        r = rng()
        if "norm" in name:
            w = 1.0 + 0.1 * r.standard_normal(shape)
        elif name.endswith("conv.weight"):
            w = 0.5 * r.standard_normal(shape)
        elif name.endswith("expert_bias"):
            w = 0.01 * r.standard_normal(shape)
        else:
            w = r.standard_normal(shape) / np.sqrt(shape[-1])
        return f.quantize(w.astype(np.float32), group)[0]

    return [floats]


def write(name: str, quant: str, out_dir: str | Path, group: int = DEFAULT_GROUP, seed: int = 0,
          progress: bool = True) -> Path:
    """Write the random-weight model `name` (a key of shapes.SHAPES) in `quant` to out_dir."""
    out_dir = Path(out_dir)
    cfg_dict = shapes.config(name)
    cfg = ModelConfig.from_dict(cfg_dict, f"shape {name}")
    embed_quant = embed_format(quant)
    planned, info = [], {}
    for tname, shape in logical_tensors(cfg).items():
        fmt = weight_format(tname, shape, quant, embed_quant)
        pieces, info[tname] = plan_stored(tname, fmt, shape, group, _producers(tname, fmt, shape, group, seed))
        planned += pieces
    metadata = {"format": "cactus", "cactus.format_version": str(FORMAT_VERSION),
                "cactus.tensors": json.dumps(info, separators=(",", ":")), "cactus.synthetic": name}
    total = sum(t.nbytes for t in planned)
    with staged_dir(out_dir) as tmp:
        done = [0, 0.0]

        def report(t: PlannedTensor) -> None:
            done[0] += t.nbytes
            if progress and (done[0] - done[1] > total / 100 or done[0] == total):
                done[1] = done[0]
                print(f"\rwriting {name} {quant}: {done[0] / 1e9:6.2f} / {total / 1e9:.2f} GB", end="",
                      file=sys.stderr, flush=True)

        write_safetensors(tmp / WEIGHTS_FILE, planned, metadata, progress=report)
        if progress:
            print(file=sys.stderr)
        cfg_dict["cactus"] = cactus_section(quant, group, embed_quant, synthetic=name)
        (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    return out_dir


def ensure(name: str, quant: str, progress: bool = True) -> Path:
    """The cached synthetic model directory, written first if missing."""
    path = model_dir(name, quant)
    if not (path / "config.json").exists():
        write(name, quant, path, progress=progress)
    return path


if __name__ == "__main__":  # python -m cactus.synthetic NAME QUANT: write (or find) the cached model
    try:
        print(ensure(sys.argv[1], sys.argv[2]))
    except (OSError, ValueError) as e:  # one line for `cactus bench`, which runs this as a child
        print(f"cactus bench: error: {e}", file=sys.stderr)
        sys.exit(1)
