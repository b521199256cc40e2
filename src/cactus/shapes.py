"""The published LFM2 / LFM2-MoE shapes as HF config dicts, for `cactus bench --synthetic NAME`.

A real config.json always wins over this table; these only size random-weight models.
Sources: the model cards' tables (layers, conv/attention split, parameter counts) and the
LFM2-8B-A1B config.json. Checked by parameter count: 350M -> 354.5M, 700M -> 742.5M,
1.2B -> 1170.3M, 2.6B -> 2569.3M, 8B-A1B -> 8.34B (1.5B active), 24B-A2B -> 23.8B (2.3B active).
Assumed where no published config was at hand: the attention layer indices of LFM2-2.6B and
LFM2-24B-A2B (the counts, 8 of 30 and 10 of 40, are published; positions only move work around).
"""

from __future__ import annotations

import copy


def _layer_types(n: int, attn: list[int]) -> list[str]:
    return ["full_attention" if i in attn else "conv" for i in range(n)]


_COMMON = dict(vocab_size=65536, conv_L_cache=3, conv_bias=False, norm_eps=1e-5, rope_theta=1000000.0,
               max_position_embeddings=128000, tie_word_embeddings=True, bos_token_id=1, eos_token_id=7,
               pad_token_id=0)
_DENSE16 = [2, 5, 8, 10, 12, 14]


def _dense(hidden: int, heads: int, layers: int, attn: list[int], ff: int, auto_adjust: bool = True) -> dict:
    return dict(_COMMON, model_type="lfm2", architectures=["Lfm2ForCausalLM"], hidden_size=hidden,
                num_attention_heads=heads, num_key_value_heads=8, num_hidden_layers=layers,
                layer_types=_layer_types(layers, attn), intermediate_size=ff, block_ff_dim=ff,
                block_auto_adjust_ff_dim=auto_adjust, block_ffn_dim_multiplier=1.0, block_multiple_of=256)


def _moe(layers: int, attn: list[int], experts: int, moe_ff: int) -> dict:
    return dict(_COMMON, model_type="lfm2_moe", architectures=["Lfm2MoeForCausalLM"], hidden_size=2048,
                num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=layers,
                layer_types=_layer_types(layers, attn), intermediate_size=7168, moe_intermediate_size=moe_ff,
                num_experts=experts, num_experts_per_tok=4, num_dense_layers=2, use_expert_bias=True,
                norm_topk_prob=True, routed_scaling_factor=1.0)


SHAPES: dict[str, dict] = {
    "lfm2-350m": _dense(1024, 16, 16, _DENSE16, 6656),          # ff -> 4608
    "lfm2-700m": _dense(1536, 24, 16, _DENSE16, 10240),         # ff -> 6912
    "lfm2-1.2b": _dense(2048, 32, 16, _DENSE16, 12288),         # ff -> 8192
    "lfm2-2.6b": _dense(2048, 32, 30, [2, 6, 10, 14, 18, 21, 24, 27], 10752, auto_adjust=False),
    "lfm2-8b-a1b": _moe(24, [2, 6, 10, 14, 18, 21], 32, 1792),
    "lfm2-24b-a2b": _moe(40, list(range(2, 40, 4)), 64, 1536),
    # not a published model: the real MoE layout at toy size, for tests and quick smoke runs
    "tiny": dict(_moe(4, [1, 3], 8, 64), vocab_size=512, hidden_size=128, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=256, num_dense_layers=1, num_experts_per_tok=2),
}


def config(name: str) -> dict:
    """The HF config dict of a published shape (a copy)."""
    try:
        return copy.deepcopy(SHAPES[name])
    except KeyError:
        raise ValueError(f"unknown shape {name!r} (one of {', '.join(SHAPES)})") from None
