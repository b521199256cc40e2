"""The published LFM2 / LFM2-MoE / LFM2.5 shapes as HF config dicts, for `cactus bench --synthetic NAME`.

A real config.json always wins over this table; these only size random-weight models.
Sources: the model cards' tables (layers, conv/attention split, parameter counts) and the
LFM2-8B-A1B config.json. Checked by parameter count: 350M -> 354.5M, 700M -> 742.5M,
1.2B -> 1170.3M, 2.6B -> 2569.3M, 8B-A1B -> 8.34B (1.5B active), 24B-A2B -> 23.8B (2.3B active).
The 30-layer attention indices [2, 5, 9, 13, 17, 21, 24, 27] are those of LFM2-2.6B's and
LFM2.5-2.6B's configs (as quoted by public tests pinned to those repos). Assumed where no
published config was at hand: LFM2-24B-A2B's attention indices (the count, 10 of 40, is published;
positions only move work around) and LFM2.5-8B-A1B's layout beyond its vocabulary and rope
(that of LFM2-8B-A1B; the card's 24 layers, 6 attention, 128K context agree, its 8.3B total
is 0.17B under what the larger embedding gives, so something else may differ).

LFM2.5-2.6B and -8B-A1B have a 128,000-token vocabulary with every special id moved (pad 124893,
<|im_end|> 124900); bos is inferred (124894, LFM2's order kept). Real runs read ids from the
tokenizer and config.json, never from here.
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


def _lfm25(shape: dict, rope_theta: float) -> dict:
    """The 128K-vocabulary LFM2.5 layout: rope nested under rope_parameters (transformers >= 5)."""
    d = dict(shape, vocab_size=128000, bos_token_id=124894, eos_token_id=124900, pad_token_id=124893,
             rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    del d["rope_theta"]
    return d


_ATTN30 = [2, 5, 9, 13, 17, 21, 24, 27]

SHAPES: dict[str, dict] = {
    "lfm2-350m": _dense(1024, 16, 16, _DENSE16, 6656),          # ff -> 4608
    "lfm2-700m": _dense(1536, 24, 16, _DENSE16, 10240),         # ff -> 6912
    "lfm2-1.2b": _dense(2048, 32, 16, _DENSE16, 12288),         # ff -> 8192
    "lfm2-2.6b": _dense(2048, 32, 30, _ATTN30, 10752, auto_adjust=False),
    "lfm2-8b-a1b": _moe(24, [2, 6, 10, 14, 18, 21], 32, 1792),
    "lfm2-24b-a2b": _moe(40, list(range(2, 40, 4)), 64, 1536),
    "lfm2.5-1.2b": _dense(2048, 32, 16, _DENSE16, 12288),       # LFM2-1.2B's shape: 1170.3M
    # 2697.2M; rope theta 1e7 as its GGUF header states (freq_base)
    "lfm2.5-2.6b": _lfm25(_dense(2048, 32, 30, _ATTN30, 10752, auto_adjust=False), 1e7),
    "lfm2.5-8b-a1b": _lfm25(_moe(24, [2, 6, 10, 14, 18, 21], 32, 1792), 5e6),  # 8.47B (card: 8.3B)
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
