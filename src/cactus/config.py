"""Model configuration: an HF `config.json` of model_type `lfm2` / `lfm2_moe`, parsed once.

Field names are HuggingFace's. Everything derived (attention layers, head_dim, the FFN width
rule, dense-vs-MoE per layer) is computed here, so the model code never re-derives it.
"""

from __future__ import annotations

import json
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
        def need(key: str, *aliases: str):
            for k in (key, *aliases):
                if k in d and d[k] is not None:
                    return d[k]
            raise ConfigError(f"{source}: missing required field '{key}'")

        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported "
                f"(cactus runs {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        n_layers = int(need("num_hidden_layers"))
        layer_types = d.get("layer_types")
        if layer_types is None:
            # Older LFM2 configs list attention layers by index (Lfm2Config.__post_init__).
            idxs = d.get("full_attn_idxs")
            idxs = list(range(n_layers)) if idxs is None else idxs
            layer_types = ["full_attention" if i in idxs else "conv" for i in range(n_layers)]
        layer_types = tuple(layer_types)
        if len(layer_types) != n_layers:
            raise ConfigError(f"{source}: layer_types has {len(layer_types)} entries, expected {n_layers}")
        bad = sorted({t for t in layer_types if t not in ("conv", "full_attention")})
        if bad:
            raise ConfigError(f"{source}: unknown layer type(s) {bad}")

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(d.get("num_key_value_heads") or heads)
        if hidden % heads or heads % kv_heads:
            raise ConfigError(
                f"{source}: hidden_size {hidden}, num_attention_heads {heads} and "
                f"num_key_value_heads {kv_heads} must divide evenly"
            )
        if "head_dim" in d and d["head_dim"] not in (None, hidden // heads):
            raise ConfigError(f"{source}: head_dim {d['head_dim']} != hidden_size/num_attention_heads")

        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"{source}: rope_type {rope_type!r} is not supported (only 'default')")
        rope_theta = float(rope.get("rope_theta", d.get("rope_theta", 1000000.0)))

        eos = d.get("eos_token_id", 2)
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))

        common = dict(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            layer_types=layer_types,
            norm_eps=float(d.get("norm_eps", 1e-5)),
            rope_theta=rope_theta,
            conv_L_cache=int(d.get("conv_L_cache", 3)),
            conv_bias=bool(d.get("conv_bias", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 128000)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", d.get("tie_embedding", True))),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=eos,
            pad_token_id=d.get("pad_token_id", 0),
            raw=dict(d),
        )
        if model_type == "lfm2":
            return cls(intermediate_size=_lfm2_ff_dim(d, need), **common)
        n_experts = int(need("num_experts"))
        top_k = int(need("num_experts_per_tok"))
        if not 0 < top_k <= n_experts:
            raise ConfigError(f"{source}: num_experts_per_tok {top_k} must be in 1..num_experts ({n_experts})")
        return cls(
            intermediate_size=int(need("intermediate_size")),
            num_dense_layers=int(d.get("num_dense_layers", 2)),
            num_experts=n_experts,
            num_experts_per_tok=top_k,
            moe_intermediate_size=int(need("moe_intermediate_size")),
            use_expert_bias=bool(d.get("use_expert_bias", True)),
            norm_topk_prob=bool(d.get("norm_topk_prob", True)),
            routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)),
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


def _lfm2_ff_dim(d: dict, need) -> int:
    """The dense LFM2 FFN width, with the reference's auto-adjust rule (Lfm2MLP.__init__)."""
    ff = int(d.get("block_ff_dim") or need("intermediate_size"))
    if d.get("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        mult = d.get("block_ffn_dim_multiplier", 1.0)
        if mult is not None:
            multiple_of = int(d.get("block_multiple_of", 256))
            ff = int(mult * ff)
            ff = multiple_of * ((ff + multiple_of - 1) // multiple_of)
    return ff
