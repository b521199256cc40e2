"""Model configuration: an HF `config.json`, parsed once, by its architecture.

Field names are HuggingFace's. `ModelConfig` holds what every architecture has and the rest of
the package reads; `ModelConfig.from_dict` finds the architecture by `model_type` (models/) and
returns its `Config`, which derives everything else (attention layers, head_dim, FFN widths), so
the model code never re-derives it. `Fields` reads a field checked, naming the file and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A config.json that does not describe a model we can run."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The fields every architecture's config has (its `Config` subclasses this)."""

    model_type: str
    vocab_size: int
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_id: tuple[int, ...]
    pad_token_id: int | None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> ModelConfig:
        """Check every field we read (type and range, naming `source` and the field) -> the config
        of the architecture `d["model_type"]` names."""
        from .models import architecture

        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        return architecture(d.get("model_type"), source).Config.parse(Fields(d, source))

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(d, str(path))

    @staticmethod
    def common(f: Fields, max_position_embeddings: int, bos_token_id: int | None, eos_token_id: int | None,
               pad_token_id: int | None) -> dict:
        """ModelConfig's fields read from `f`, with the architecture's defaults for those that may be absent."""
        eos = f.d.get("eos_token_id", eos_token_id)
        eos = tuple(f.integers("eos_token_id", lo=0)) if isinstance(eos, list) else \
            (() if eos is None else (f.integer("eos_token_id", eos_token_id, lo=0),))
        return dict(model_type=f.d["model_type"], vocab_size=f.integer("vocab_size"),
                    max_position_embeddings=f.integer("max_position_embeddings", max_position_embeddings),
                    bos_token_id=f.integer("bos_token_id", bos_token_id, lo=0, nullable=True), eos_token_id=eos,
                    pad_token_id=f.integer("pad_token_id", pad_token_id, lo=0, nullable=True), raw=dict(f.d))


def rope_theta(f: Fields, layer_types: tuple[str, ...]) -> float:
    """The rope base, where transformers >= 5 reads it (PreTrainedConfig.convert_rope_params_to_dict):
    `rope_scaling` (the old name) if set, else `rope_parameters` (LFM2.5-8B-A1B: {"rope_type":
    "default", "rope_theta": 5e6}); a theta missing there falls back to top-level `rope_theta`."""
    rope_key = "rope_scaling" if f.d.get("rope_scaling") else "rope_parameters"
    rope = f.d.get(rope_key) or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{f.source}: {rope_key} must be an object, got {show(rope)}")
    nested = sorted(k for k in rope if k in layer_types)
    if nested:  # a rotary embedding reads one flat dict: transformers cannot run this either
        raise ConfigError(f"{f.source}: {rope_key} given per layer type ({', '.join(nested)}) is not "
                          f"supported: one rope serves every attention layer")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{f.source}: {rope_key}.rope_type {show(rope_type)} is not supported (only 'default')")
    return Fields(rope, f.source, f"{rope_key}.").number("rope_theta", f.number("rope_theta", 1000000.0))


_MISSING = object()


class Fields:
    """Typed reads of a config dict: a missing, mistyped or out-of-range field is a ConfigError
    naming the file and the field (`config.json: num_attention_heads must be > 0, got 0`).
    A field that is null counts as absent (HF writes nulls), except where None is a value."""

    def __init__(self, d: dict, source: str, prefix: str = ""):
        self.d, self.source, self.prefix = d, source, prefix

    def _get(self, key: str, default, nullable: bool):
        value = self.d.get(key)
        if value is not None:
            return value, False
        if nullable and key in self.d:
            return None, True
        if default is _MISSING:
            raise ConfigError(f"{self.source}: missing required field '{self.prefix}{key}'")
        return default, True

    def error(self, key: str, problem: str, value) -> ConfigError:
        return ConfigError(f"{self.source}: {self.prefix}{key} {problem}, got {show(value)}")

    def integer(self, key: str, default=_MISSING, lo: int = 1, nullable: bool = False):
        """An integer >= lo (1 unless said). Integral floats (`2048.0`) are taken as ints."""
        value, absent = self._get(key, default, nullable)
        if absent:
            return value
        return self._check_int(key, value, lo)

    def _check_int(self, key: str, value, lo: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "must be an integer", value)
        if value < lo:
            raise self.error(key, f"must be > {lo - 1}" if lo == 1 else f"must be >= {lo}", value)
        return value

    def strings(self, key: str, default=_MISSING) -> tuple[str, ...]:
        """A list of strings."""
        value, absent = self._get(key, default, False)
        if absent:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings", value)
        return tuple(value)

    def integers(self, key: str, default=_MISSING, lo: int = 0) -> list[int]:
        """A list of integers >= lo."""
        value, absent = self._get(key, default, False)
        if absent:
            return value
        if not isinstance(value, list):
            raise self.error(key, "must be a list of integers", value)
        return [self._check_int(f"{key}[{i}]", v, lo) for i, v in enumerate(value)]

    def number(self, key: str, default=_MISSING, nullable: bool = False):
        """A finite number > 0."""
        value, absent = self._get(key, default, nullable)
        if absent:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise self.error(key, "must be a number", value)
        if value <= 0:
            raise self.error(key, "must be > 0", value)
        return float(value)

    def flag(self, key: str, default=_MISSING) -> bool:
        value, absent = self._get(key, default, False)
        if absent:
            return value
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false", value)
        return value


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def show(value, limit: int = 60) -> str:
    """A value as an error message shows it: repr, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int past the digit limit of str()
        return "a huge integer"
    return text if len(text) <= limit else text[:limit] + "..."
