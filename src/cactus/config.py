"""Model configuration: an HF `config.json` of model_type `lfm2` / `lfm2_moe`, parsed once.

Field names are HuggingFace's. Everything derived (attention layers, head_dim, the FFN width
rule, dense-vs-MoE per layer) is computed here, so the model code never re-derives it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_MODEL_TYPES = ("lfm2", "lfm2_moe")


class ConfigError(ValueError):
    """A config.json that does not describe a model we can run."""


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    layer_types: tuple[str, ...]
    norm_eps: float
    rope_theta: float
    conv_L_cache: int
    conv_bias: bool
    intermediate_size: int  # dense FFN width, already adjusted as the reference does
    max_position_embeddings: int
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 1
    eos_token_id: tuple[int, ...] = (2,)
    pad_token_id: int | None = 0
    # MoE (lfm2_moe only)
    num_dense_layers: int = 0
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    use_expert_bias: bool = False
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.model_type == "lfm2_moe"

    def is_attention(self, layer: int) -> bool:
        return self.layer_types[layer] != "conv"

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.num_dense_layers

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_hidden_layers) if self.is_attention(i))

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> ModelConfig:
        """Check every field we read (type and range, naming `source` and the field) -> the config."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        f = _Fields(d, source)
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {_show(model_type)} is not supported "
                f"(cactus runs {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        n_layers = f.integer("num_hidden_layers")
        layer_types = d.get("layer_types")
        if layer_types is None:
            # Older LFM2 configs list attention layers by index (Lfm2Config.__post_init__).
            idxs = f.integers("full_attn_idxs", list(range(n_layers)), lo=0)
            layer_types = ["full_attention" if i in idxs else "conv" for i in range(n_layers)]
        if not isinstance(layer_types, list) or not all(isinstance(t, str) for t in layer_types):
            raise ConfigError(f"{source}: layer_types must be a list of strings, got {_show(layer_types)}")
        layer_types = tuple(layer_types)
        if len(layer_types) != n_layers:
            raise ConfigError(f"{source}: layer_types has {len(layer_types)} entries, expected {n_layers}")
        bad = sorted({t for t in layer_types if t not in ("conv", "full_attention")})
        if bad:
            raise ConfigError(f"{source}: unknown layer type(s) {bad}")

        hidden = f.integer("hidden_size")
        heads = f.integer("num_attention_heads")
        kv_heads = f.integer("num_key_value_heads", heads)
        if hidden % heads or heads % kv_heads:
            raise ConfigError(
                f"{source}: hidden_size {hidden}, num_attention_heads {heads} and "
                f"num_key_value_heads {kv_heads} must divide evenly"
            )
        if f.integer("head_dim", hidden // heads) != hidden // heads:
            raise ConfigError(f"{source}: head_dim {d['head_dim']} != hidden_size/num_attention_heads")

        rope_theta = _rope_theta(d, f, layer_types)

        eos = d.get("eos_token_id", 2)
        eos = tuple(f.integers("eos_token_id", lo=0)) if isinstance(eos, list) else \
            (() if eos is None else (f.integer("eos_token_id", 2, lo=0),))

        common = dict(
            model_type=model_type,
            vocab_size=f.integer("vocab_size"),
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            layer_types=layer_types,
            norm_eps=f.number("norm_eps", 1e-5),
            rope_theta=rope_theta,
            conv_L_cache=f.integer("conv_L_cache", 3),
            conv_bias=f.flag("conv_bias", False),
            max_position_embeddings=f.integer("max_position_embeddings", 128000),
            tie_word_embeddings=f.flag("tie_word_embeddings", f.flag("tie_embedding", True)),
            bos_token_id=f.integer("bos_token_id", 1, lo=0, nullable=True),
            eos_token_id=eos,
            pad_token_id=f.integer("pad_token_id", 0, lo=0, nullable=True),
            raw=dict(d),
        )
        if model_type == "lfm2":
            return cls(intermediate_size=_lfm2_ff_dim(f), **common)
        n_experts = f.integer("num_experts")
        top_k = f.integer("num_experts_per_tok")
        if top_k > n_experts:
            raise ConfigError(f"{source}: num_experts_per_tok {top_k} must be in 1..num_experts ({n_experts})")
        dense_layers = f.integer("num_dense_layers", 2, lo=0)
        if dense_layers > n_layers:
            raise ConfigError(f"{source}: num_dense_layers {dense_layers} is more than num_hidden_layers ({n_layers})")
        return cls(
            intermediate_size=f.integer("intermediate_size"),
            num_dense_layers=dense_layers,
            num_experts=n_experts,
            num_experts_per_tok=top_k,
            moe_intermediate_size=f.integer("moe_intermediate_size"),
            use_expert_bias=f.flag("use_expert_bias", True),
            norm_topk_prob=f.flag("norm_topk_prob", True),
            routed_scaling_factor=f.number("routed_scaling_factor", 1.0),
            **common,
        )

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


def _rope_theta(d: dict, f: _Fields, layer_types: tuple[str, ...]) -> float:
    """The rope base, where transformers >= 5 reads it (PreTrainedConfig.convert_rope_params_to_dict):
    `rope_scaling` (the old name) if set, else `rope_parameters` (LFM2.5-8B-A1B: {"rope_type":
    "default", "rope_theta": 5e6}); a theta missing there falls back to top-level `rope_theta`."""
    rope_key = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    rope = d.get(rope_key) or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{f.source}: {rope_key} must be an object, got {_show(rope)}")
    nested = sorted(k for k in rope if k in layer_types)
    if nested:  # Lfm2RotaryEmbedding reads one flat dict: transformers cannot run this either
        raise ConfigError(f"{f.source}: {rope_key} given per layer type ({', '.join(nested)}) is not "
                          f"supported: LFM2 has one rope for its attention layers")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{f.source}: {rope_key}.rope_type {_show(rope_type)} is not supported (only 'default')")
    return _Fields(rope, f.source, f"{rope_key}.").number("rope_theta", f.number("rope_theta", 1000000.0))


def _lfm2_ff_dim(f: _Fields) -> int:
    """The dense LFM2 FFN width, with the reference's auto-adjust rule (Lfm2MLP.__init__)."""
    ff = f.integer("block_ff_dim", None) if f.d.get("block_ff_dim") else f.integer("intermediate_size")
    if f.flag("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        mult = f.number("block_ffn_dim_multiplier", 1.0, nullable=True)
        if mult is not None:
            multiple_of = f.integer("block_multiple_of", 256)
            ff = int(mult * ff)
            ff = multiple_of * ((ff + multiple_of - 1) // multiple_of)
    if ff <= 0:
        raise ConfigError(f"{f.source}: the FFN width works out to {ff}; intermediate_size is too small")
    return ff


_MISSING = object()


class _Fields:
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

    def _error(self, key: str, problem: str, value) -> ConfigError:
        return ConfigError(f"{self.source}: {self.prefix}{key} {problem}, got {_show(value)}")

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
            raise self._error(key, "must be an integer", value)
        if value < lo:
            raise self._error(key, f"must be > {lo - 1}" if lo == 1 else f"must be >= {lo}", value)
        return value

    def integers(self, key: str, default=_MISSING, lo: int = 0) -> list[int]:
        """A list of integers >= lo."""
        value, absent = self._get(key, default, False)
        if absent:
            return value
        if not isinstance(value, list):
            raise self._error(key, "must be a list of integers", value)
        return [self._check_int(f"{key}[{i}]", v, lo) for i, v in enumerate(value)]

    def number(self, key: str, default=_MISSING, nullable: bool = False):
        """A finite number > 0."""
        value, absent = self._get(key, default, nullable)
        if absent:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise self._error(key, "must be a number", value)
        if value <= 0:
            raise self._error(key, "must be > 0", value)
        return float(value)

    def flag(self, key: str, default=_MISSING) -> bool:
        value, absent = self._get(key, default, False)
        if absent:
            return value
        if not isinstance(value, bool):
            raise self._error(key, "must be true or false", value)
        return value


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _show(value, limit: int = 60) -> str:
    """A value as an error message shows it: repr, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int past the digit limit of str()
        return "a huge integer"
    return text if len(text) <= limit else text[:limit] + "..."
