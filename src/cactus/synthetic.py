"""Random-weight models of the published shapes, written straight into our format (for `cactus bench`).

Quantized tensors are made directly in their stored layout (random int8 / packed int4 bytes and
fp16 scales sized so each layer keeps unit-scale activations), so a 13 GB model takes disk speed,
not quantization time. Tensor names, formats and metadata are exactly convert.py's, from the
architecture module (tensors, weight_format; random_init for the float tensors' scale).
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
from .models import architecture
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
    """Our tensor names and logical shapes for a config (its architecture's `tensors`, as convert writes them)."""
    return architecture(cfg.model_type).tensors(cfg)


def _producers(name: str, fmt: str, shape: tuple[int, ...], group: int, seed: int,
               init: tuple[float, float] | None) -> list[Callable[[], np.ndarray]]:
    """Makers of the stored arrays (data, then scales for grouped formats), in the format's layout
    order; a float tensor drawn with init's (mean, std), by default N(0, 1/K)."""
    f = FORMATS[fmt]

    def rng():
        return np.random.default_rng([seed, len(name), sum(name.encode())])

    if f.grouped:  # random stored values, scales that keep unit-scale activations
        (dshape, _), (sshape, _) = f.layout(shape, group)
        k = shape[-1]
        s = (1.0 / np.sqrt(k)) / f.random_std
        return [lambda: f.random(rng(), dshape, k), lambda: (s * rng().uniform(0.8, 1.2, sshape)).astype(np.float16)]

    def floats():
        x = rng().standard_normal(shape)
        w = x / np.sqrt(shape[-1]) if init is None else init[0] + init[1] * x
        return f.quantize(w.astype(np.float32), group)[0]

    return [floats]


def write(name: str, quant: str, out_dir: str | Path, group: int = DEFAULT_GROUP, seed: int = 0,
          progress: bool = True) -> Path:
    """Write the random-weight model `name` (a key of shapes.SHAPES) in `quant` to out_dir."""
    out_dir = Path(out_dir)
    cfg_dict = shapes.config(name)
    cfg = ModelConfig.from_dict(cfg_dict, f"shape {name}")
    arch, embed_quant = architecture(cfg.model_type), embed_format(quant)
    planned, info = [], {}
    for tname, shape in logical_tensors(cfg).items():
        fmt = arch.weight_format(tname, shape, quant, embed_quant)
        makers = _producers(tname, fmt, shape, group, seed, arch.random_init(tname))
        pieces, info[tname] = plan_stored(tname, fmt, shape, group, makers)
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
