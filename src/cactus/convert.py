"""HuggingFace checkpoint (single or sharded safetensors) -> our weight directory.

The architecture (models/<arch>.py, by the config's model_type) says what the tensors are: HF's
names mapped to ours (`from_hf`: for LFM2, MoE experts stacked and a tied lm_head dropped), the
shapes the config gives (`tensors`), and each one's format (`weight_format`).
The output is written under a temporary name, loaded back once, and renamed into place only
then; an existing output is renamed aside, never written over (docs/RELIABILITY.md).
Refused before anything is written: an output that is, holds or lies inside the input; a checkpoint
without a tokenizer and chat template (unless chat=False / --no-chat); expert tensors of unequal
shapes; a tensor whose shape the config does not give. A non-finite weight stops the write.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .models import architecture
from .quant import DEFAULT_GROUP, FORMATS, embed_format, float_format
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


def _index_files(index: Path) -> list[str]:
    """The shard files model.safetensors.index.json lists (its `weight_map` values); errors name
    the file and the field."""
    from .tokenizer import read_json_object

    try:
        weight_map = read_json_object(index).get("weight_map")
    except ValueError as e:
        raise WeightError(str(e)) from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise WeightError(f"{index}: weight_map must be an object of tensor names to file names, "
                          f"got {weight_map!r:.60}")
    bad = sorted({f for f in weight_map.values() if Path(f).name != f or not f.endswith(".safetensors")})
    if bad:
        raise WeightError(f"{index}: weight_map names {bad[0]!r}, not a .safetensors file of this directory")
    return sorted(set(weight_map.values()))


Tensor = tuple[tuple[int, ...], Callable[[], np.ndarray], str]  # (logical shape, its f32 values, where from)


class Source:
    """All tensors of a HF checkpoint directory, as f32 on demand (bf16/f16/f32 sources): what an
    architecture's `from_hf` maps to our tensors."""

    def __init__(self, hf_dir: Path):
        index = hf_dir / "model.safetensors.index.json"
        if index.exists():
            files = _index_files(index)
        else:
            files = sorted(p.name for p in hf_dir.glob("*.safetensors"))
        if not files:
            raise WeightError(f"{hf_dir}: no .safetensors weights found")
        self.arrays: dict[str, tuple[SafetensorsFile, str]] = {}
        for f in files:
            st = SafetensorsFile(hf_dir / f)
            for name in st.tensors:
                self.arrays[name] = (st, st.dtypes[name])
        self.names = sorted(n for n in self.arrays if not n.startswith("__pad__"))

    def shape(self, name: str) -> tuple[int, ...]:
        st, _ = self.arrays[name]
        return tuple(st.tensors[name].shape)

    def where(self, name: str) -> str:
        return f"{self.arrays[name][0].path}: tensor '{name}'"

    def f32(self, name: str) -> np.ndarray:
        st, dtype = self.arrays[name]
        a, fmt = st.tensors[name], float_format(dtype)
        if fmt:
            a = FORMATS[fmt].values(a, 0)
        elif dtype == "F64":
            a = a.astype(np.float32)
        else:
            raise WeightError(f"{self.where(name)} has dtype {dtype}, expected a float type")
        if not np.isfinite(a.sum(dtype=np.float64)):  # exact: a float64 sum of finite f32 cannot overflow
            bad = np.flatnonzero(~np.isfinite(a))
            first = [int(i) for i in np.unravel_index(bad[0], a.shape)]
            raise WeightError(f"{self.where(name)} has {bad.size} non-finite values (NaN or inf), the first "
                              f"at index {first}: the checkpoint is damaged")
        return a

    def tensor(self, name: str, rows: slice | None = None) -> Tensor:
        """The tensor `name`, or a range of its rows (axis -2)."""
        if rows is None:
            return self.shape(name), lambda: self.f32(name), self.where(name)
        shape = self.shape(name)
        n = len(range(*rows.indices(shape[-2])))
        return shape[:-2] + (n, shape[-1]), lambda: self.f32(name)[..., rows, :], self.where(name)

    def experts(self, names: list[str], label: str) -> Tensor:
        """Per-expert tensors `names` (expert 0 first), all of one shape, stacked into one (E, ...)."""
        first = self.shape(names[0])
        for n in names[1:]:
            if self.shape(n) != first:
                raise WeightError(f"{self.where(n)} has shape {list(self.shape(n))}, expert 0 "
                                  f"('{names[0]}') has {list(first)}: all experts need one shape")
        return ((len(names),) + first, lambda: np.stack([self.f32(n) for n in names]),
                f"{self.arrays[names[0]][0].path}: tensors '{label}'")


def convert(hf_dir: str | Path, out_dir: str | Path, quant: str = "int4", group_size: int = DEFAULT_GROUP,
            embed_quant: str | None = None, progress: bool = False, overwrite: bool = False,
            chat: bool = True) -> Path:
    """Convert a local HF checkpoint directory into a cactus weight directory; returns out_dir.
    chat=False converts a checkpoint without tokenizer or chat template (for bench / forward only)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if quant not in FORMATS:
        raise ValueError(f"unknown quantization {quant!r} (choose from {', '.join(FORMATS)})")
    embed_quant = embed_quant or embed_format(quant)
    if embed_quant not in FORMATS:
        raise ValueError(f"unknown embedding quantization {embed_quant!r}")
    if (FORMATS[quant].grouped or FORMATS[embed_quant].grouped) and (group_size <= 0 or group_size % 32):
        raise ValueError(f"group size must be a positive multiple of 32, got {group_size}")
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise WeightError(f"{hf_dir}: no config.json (is this a HuggingFace checkpoint directory?)")
    try:
        cfg_dict = json.loads(cfg_path.read_bytes())
    except ValueError as e:  # not UTF-8, not JSON
        raise WeightError(f"{cfg_path}: not valid JSON ({e})") from None
    _check_output(hf_dir, out_dir, overwrite)
    cfg = ModelConfig.from_dict(cfg_dict, str(cfg_path))
    arch = architecture(cfg.model_type)
    if chat:
        _check_chat_files(hf_dir)
    logical = arch.from_hf(Source(hf_dir), cfg)
    _check_shapes(logical, arch.tensors(cfg), hf_dir)

    planned, info = [], {}
    for name, (shape, produce, _) in logical.items():
        fmt = arch.weight_format(name, shape, quant, embed_quant)
        pieces, meta = plan_weight(name, fmt, shape, group_size, produce)
        planned += pieces
        info[name] = meta
    metadata = {"format": "cactus", "cactus.format_version": str(FORMAT_VERSION),
                "cactus.tensors": json.dumps(info, separators=(",", ":"))}

    with staged_dir(out_dir) as tmp:
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=sum(t.nbytes for t in planned), unit="B", unit_scale=True, desc=f"convert {quant}")
        write_safetensors(tmp / WEIGHTS_FILE, planned, metadata,
                          progress=(lambda t: bar.update(t.nbytes)) if bar else None)
        if bar:
            bar.close()
        for f in SIDE_FILES:
            if (hf_dir / f).exists():
                shutil.copy2(hf_dir / f, tmp / f)
        cfg_dict["cactus"] = cactus_section(quant, group_size, embed_quant)
        (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
        from .engine import load
        try:
            load(tmp)  # validates every tensor against the config before the result is published
        except ValueError as e:  # name the directory the user asked for, not the staging one
            raise WeightError(str(e).replace(str(tmp), str(out_dir))) from None
    return out_dir


def _check_output(hf_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Refuse an output that would destroy the input (symlinks resolved, the input's files too: a HF
    cache snapshot links to blobs elsewhere) or something that is not a cactus model."""
    out = out_dir.resolve()
    inputs = [("the input checkpoint", hf_dir.resolve())]
    inputs += [(f"the input's file {f} (a link to {f.resolve()})", f.resolve()) for f in hf_dir.iterdir()
               if f.is_symlink()]
    for what, src in inputs:
        if out == src:
            raise ValueError(f"{out_dir}: the output directory is {what}: choose another output directory")
        if out in src.parents:
            raise ValueError(f"{out_dir}: the output directory contains {what}: choose another output directory")
    if hf_dir.resolve() in out.parents:
        raise ValueError(f"{out_dir}: the output directory is inside the input checkpoint {hf_dir}: "
                         f"choose another output directory")
    if out_dir.exists() or out_dir.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --force to replace it)")
        if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_model_dir(out_dir):
            raise FileExistsError(f"{out_dir} exists and is not a cactus model directory: not replacing it "
                                  f"(choose another output directory, or remove it yourself)")


def _is_model_dir(path: Path) -> bool:
    try:
        return isinstance(json.loads((path / "config.json").read_text()).get("cactus"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def _check_chat_files(hf_dir: Path) -> None:
    """`cactus run` / `serve` need tokenizer.json and a chat template: check they are there and load."""
    from .chat import ChatTemplate
    from .tokenizer import Tokenizer

    hint = ("copy it from the original model repo, or pass --no-chat (chat=False) if the model is only for "
            "`cactus bench` and forward passes")
    if not (hf_dir / "tokenizer.json").is_file():
        raise WeightError(f"{hf_dir}: no tokenizer.json: {hint}")
    try:
        ChatTemplate.from_dir(hf_dir, Tokenizer(hf_dir).template_tokens())
    except FileNotFoundError:
        raise WeightError(f"{hf_dir}: no chat template (chat_template.jinja, or chat_template in "
                          f"tokenizer_config.json): {hint}") from None


def _check_shapes(logical: dict[str, Tensor], needed: dict[str, tuple[int, ...]], hf_dir: Path) -> None:
    """Every tensor the model reads is there with the shape its config gives (named in the source)."""
    for name, shape in needed.items():
        if name not in logical:
            raise WeightError(f"{hf_dir}: the checkpoint has no tensor '{name}' (config.json needs it)")
        have, _, where = logical[name]
        if tuple(have) != tuple(shape):
            raise WeightError(f"{where} has shape {list(have)}, config.json needs {list(shape)}"
                              + (f" for '{name}'" if f"'{name}'" not in where else ""))
