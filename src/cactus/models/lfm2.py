"""LFM2 and LFM2-MoE (transformers' Lfm2ForCausalLM / Lfm2MoeForCausalLM), written with `ops`.

Embedding -> N blocks -> final RMSNorm (`embedding_norm`) -> LM head tied to the embedding.
Each block: h = x + op(operator_norm(x)); out = h + ffn(ffn_norm(h)), where op is a gated short
convolution or GQA attention (by layer_types) and ffn is SwiGLU or a sparse MoE (lfm2_moe past
num_dense_layers). Tensor names are HF's; MoE experts are stacked per layer (E, ., .) by convert.
The architecture's contract (docs/ARCHITECTURE.md): Config, tensors, Model (make_cache, forward,
definition, token_reads), and for convert and synthetic models from_hf, weight_format, random_init.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..config import ConfigError, Fields, ModelConfig, rope_theta
from ..quant import QUANTIZED, QTensor
from ..weights import WeightDir, WeightError
from .cache import ConvCache, KVCache

MODEL_TYPES = ("lfm2", "lfm2_moe")

# ----------------------------------------------------------------------------- config

@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    layer_types: tuple[str, ...]  # "conv" or "full_attention" per layer
    norm_eps: float
    rope_theta: float
    conv_L_cache: int
    conv_bias: bool
    intermediate_size: int  # dense FFN width, already adjusted as the reference does
    tie_word_embeddings: bool
    # MoE (lfm2_moe only)
    num_dense_layers: int = 0
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    use_expert_bias: bool = False
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0

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
    def parse(cls, f: Fields) -> Config:
        """Lfm2Config / Lfm2MoeConfig's fields, checked, with transformers' defaults."""
        n_layers = f.integer("num_hidden_layers")
        if f.d.get("layer_types") is None:
            # Older LFM2 configs list attention layers by index (Lfm2Config.__post_init__).
            idxs = f.integers("full_attn_idxs", list(range(n_layers)), lo=0)
            layer_types = tuple("full_attention" if i in idxs else "conv" for i in range(n_layers))
        else:
            layer_types = f.strings("layer_types")
        if len(layer_types) != n_layers:
            raise ConfigError(f"{f.source}: layer_types has {len(layer_types)} entries, expected {n_layers}")
        bad = sorted({t for t in layer_types if t not in ("conv", "full_attention")})
        if bad:
            raise ConfigError(f"{f.source}: unknown layer type(s) {bad}")

        hidden = f.integer("hidden_size")
        heads = f.integer("num_attention_heads")
        kv_heads = f.integer("num_key_value_heads", heads)
        if hidden % heads or heads % kv_heads:
            raise ConfigError(f"{f.source}: hidden_size {hidden}, num_attention_heads {heads} and "
                              f"num_key_value_heads {kv_heads} must divide evenly")
        if f.integer("head_dim", hidden // heads) != hidden // heads:
            raise ConfigError(f"{f.source}: head_dim {f.d['head_dim']} != hidden_size/num_attention_heads")

        fields = dict(
            ModelConfig.common(f, max_position_embeddings=128000, bos_token_id=1, eos_token_id=2, pad_token_id=0),
            hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            layer_types=layer_types, norm_eps=f.number("norm_eps", 1e-5), rope_theta=rope_theta(f, layer_types),
            conv_L_cache=f.integer("conv_L_cache", 3), conv_bias=f.flag("conv_bias", False),
            tie_word_embeddings=f.flag("tie_word_embeddings", f.flag("tie_embedding", True)),
        )
        if f.d["model_type"] == "lfm2":
            return cls(intermediate_size=_ff_dim(f), **fields)
        n_experts = f.integer("num_experts")
        top_k = f.integer("num_experts_per_tok")
        if top_k > n_experts:
            raise ConfigError(f"{f.source}: num_experts_per_tok {top_k} must be in 1..num_experts ({n_experts})")
        dense_layers = f.integer("num_dense_layers", 2, lo=0)
        if dense_layers > n_layers:
            raise ConfigError(f"{f.source}: num_dense_layers {dense_layers} is more than num_hidden_layers "
                              f"({n_layers})")
        return cls(intermediate_size=f.integer("intermediate_size"), num_dense_layers=dense_layers,
                   num_experts=n_experts, num_experts_per_tok=top_k,
                   moe_intermediate_size=f.integer("moe_intermediate_size"),
                   use_expert_bias=f.flag("use_expert_bias", True), norm_topk_prob=f.flag("norm_topk_prob", True),
                   routed_scaling_factor=f.number("routed_scaling_factor", 1.0), **fields)


def _ff_dim(f: Fields) -> int:
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


def tensors(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor the model reads: our name -> logical shape (what convert checks and writes)."""
    d, hd, e = cfg.hidden_size, cfg.head_dim, cfg.num_experts
    out = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.embedding_norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "operator_norm.weight"] = (d,)
        out[p + "ffn_norm.weight"] = (d,)
        if cfg.is_attention(i):
            a, q, kv = p + "self_attn.", cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
            out.update({a + "q_proj.weight": (q, d), a + "k_proj.weight": (kv, d), a + "v_proj.weight": (kv, d),
                        a + "out_proj.weight": (d, q), a + "q_layernorm.weight": (hd,),
                        a + "k_layernorm.weight": (hd,)})
        else:
            c = p + "conv."
            out.update({c + "in_proj.weight": (3 * d, d), c + "out_proj.weight": (d, d),
                        c + "conv.weight": (d, 1, cfg.conv_L_cache)})
            if cfg.conv_bias:
                out.update({c + "conv.bias": (d,), c + "in_proj.bias": (3 * d,), c + "out_proj.bias": (d,)})
        f = p + "feed_forward."
        if cfg.is_moe_layer(i):
            im = cfg.moe_intermediate_size
            out.update({f + "gate.weight": (e, d), f + "experts.w1.weight": (e, im, d),
                        f + "experts.w3.weight": (e, im, d), f + "experts.w2.weight": (e, d, im)})
            if cfg.use_expert_bias:
                out[f + "expert_bias"] = (e,)
        else:
            ff = cfg.intermediate_size
            out.update({f + "w1.weight": (ff, d), f + "w3.weight": (ff, d), f + "w2.weight": (d, ff)})
    return out


# ----------------------------------------------------------------------------- layers

@dataclass
class ShortConv:
    in_proj: QTensor  # (3D, D) -> B, C, x
    out_proj: QTensor  # (D, D)
    conv: np.ndarray  # (D, L) depthwise kernel
    conv_b: np.ndarray | None  # (D,)
    in_b: np.ndarray | None  # (3D,)
    out_b: np.ndarray | None  # (D,)

    def __call__(self, x: np.ndarray, cache: ConvCache, pos: int) -> np.ndarray:
        bcx = ops.linear(x, self.in_proj)
        if self.in_b is not None:
            bcx = bcx + self.in_b
        y = ops.linear(ops.conv_gate(bcx, cache.state, self.conv, self.conv_b), self.out_proj)
        return y if self.out_b is None else y + self.out_b



@dataclass
class Attention:
    q_proj: QTensor  # (H*hd, D)
    k_proj: QTensor  # (Hkv*hd, D)
    v_proj: QTensor  # (Hkv*hd, D)
    out_proj: QTensor  # (D, H*hd)
    q_norm: np.ndarray  # (hd,)
    k_norm: np.ndarray  # (hd,)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    theta: float

    def __call__(self, x: np.ndarray, cache: KVCache, pos: int) -> np.ndarray:
        t = x.shape[0]
        q = ops.rmsnorm(ops.linear(x, self.q_proj).reshape(t, self.n_heads, self.head_dim), self.q_norm, self.eps)
        k = ops.rmsnorm(ops.linear(x, self.k_proj).reshape(t, self.n_kv_heads, self.head_dim), self.k_norm, self.eps)
        v = ops.linear(x, self.v_proj).reshape(t, self.n_kv_heads, self.head_dim)
        cache.append(ops.rope(k, pos, self.theta), v)
        o = ops.cache_attention(ops.rope(q, pos, self.theta), cache.kt, cache.v, pos)
        return ops.linear(o.reshape(t, -1), self.out_proj)



@dataclass
class SwiGLU:
    w1: QTensor  # (I, D)
    w3: QTensor  # (I, D)
    w2: QTensor  # (D, I)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ops.swiglu(x, self.w1, self.w3, self.w2)



@dataclass
class MoE:
    gate: QTensor  # (E, D) router, f32
    expert_bias: np.ndarray | None  # (E,), chooses experts, does not weigh them
    w1: QTensor  # (E, I, D)
    w3: QTensor  # (E, I, D)
    w2: QTensor  # (E, D, I)
    top_k: int
    norm_topk: bool
    scale: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ops.moe(x, self.gate, self.expert_bias, self.w1, self.w3, self.w2,
                       self.top_k, self.norm_topk, self.scale)



@dataclass
class Block:
    operator_norm: np.ndarray  # (D,)
    ffn_norm: np.ndarray  # (D,)
    op: ShortConv | Attention
    ffn: SwiGLU | MoE
    eps: float

    def __call__(self, x: np.ndarray, cache, pos: int) -> np.ndarray:
        h = x + self.op(ops.rmsnorm(x, self.operator_norm, self.eps), cache, pos)
        return h + self.ffn(ops.rmsnorm(h, self.ffn_norm, self.eps))


# ----------------------------------------------------------------------------- model

_SEQ0 = np.zeros(1, np.int64)  # the one sequence an Engine holds

class Model:
    """The network: weights (mmap views) and the forward. One token runs as its tape (the forward
    recorded once, ops.record) in one kernel call; prompts run the forward op by op."""

    use_tape = True  # False: one token op by op too (tests, benchmarks/decode_ops.py)

    def __init__(self, cfg: Config, w: WeightDir):
        self.cfg = cfg
        self.tape: ops.Tape | None = None  # recorded at the first decoded token
        shapes = tensors(cfg)

        def q(name: str) -> QTensor:  # a weight in its stored format
            return w.tensor(name, shapes[name])

        def f(name: str) -> np.ndarray | None:  # a small weight as f32; None where the config has none
            return w.float_tensor(name, shapes[name]) if name in shapes else None

        self.embed = q("model.embed_tokens.weight")
        self.lm_head = self.embed if cfg.tie_word_embeddings else q("lm_head.weight")
        self.norm = f("model.embedding_norm.weight")
        self.blocks: list[Block] = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            if cfg.is_attention(i):
                a = p + "self_attn."
                op = Attention(q(a + "q_proj.weight"), q(a + "k_proj.weight"), q(a + "v_proj.weight"),
                               q(a + "out_proj.weight"), f(a + "q_layernorm.weight"), f(a + "k_layernorm.weight"),
                               cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.norm_eps,
                               cfg.rope_theta)
            else:
                c = p + "conv."
                op = ShortConv(q(c + "in_proj.weight"), q(c + "out_proj.weight"), f(c + "conv.weight")[:, 0, :],
                               f(c + "conv.bias"), f(c + "in_proj.bias"), f(c + "out_proj.bias"))
            m = p + "feed_forward."
            if cfg.is_moe_layer(i):
                ffn = MoE(q(m + "gate.weight"), f(m + "expert_bias"), q(m + "experts.w1.weight"),
                          q(m + "experts.w3.weight"), q(m + "experts.w2.weight"),
                          cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.routed_scaling_factor)
            else:
                ffn = SwiGLU(q(m + "w1.weight"), q(m + "w3.weight"), q(m + "w2.weight"))
            self.blocks.append(Block(f(p + "operator_norm.weight"), f(p + "ffn_norm.weight"), op, ffn, cfg.norm_eps))

    def make_cache(self, max_context: int) -> list[KVCache | ConvCache]:
        cfg = self.cfg
        # f16 halves KV memory and bandwidth; kept to int8/int4 models on the kernels, whose
        # activations are quantized anyway: float models and the numpy reference stay exact
        kv = np.float16 if self.blocks and self._quantized() and ops.isa() != "ref" else np.float32
        return [KVCache(cfg.num_key_value_heads, cfg.head_dim, max_context, kv) if cfg.is_attention(i)
                else ConvCache(cfg.conv_L_cache, cfg.hidden_size) for i in range(cfg.num_hidden_layers)]

    def _quantized(self) -> bool:
        op = self.blocks[0].op
        return (op.in_proj if isinstance(op, ShortConv) else op.q_proj).fmt in QUANTIZED

    def token_reads(self) -> Iterator[tuple[str, QTensor | np.ndarray, float]]:
        """(part, weight, share) for each weight one decoded token reads (`cactus bench`): share is
        the fraction read (top_k / E of an expert stack, one row of the embedding, else 1); part is
        dense, experts, lm_head or embed."""
        for b in self.blocks:
            yield from (("dense", b.operator_norm, 1), ("dense", b.ffn_norm, 1))
            op, ffn = b.op, b.ffn
            ts = (op.in_proj, op.out_proj, op.conv, op.conv_b, op.in_b, op.out_b) if isinstance(op, ShortConv) \
                else (op.q_proj, op.k_proj, op.v_proj, op.out_proj, op.q_norm, op.k_norm)
            if isinstance(ffn, MoE):
                ts += (ffn.gate, ffn.expert_bias)
                yield from (("experts", t, ffn.top_k / t.shape[0]) for t in (ffn.w1, ffn.w3, ffn.w2))
            else:
                ts += (ffn.w1, ffn.w2, ffn.w3)
            yield from (("dense", t, 1) for t in ts if t is not None)
        yield from (("lm_head", self.lm_head, 1), ("lm_head", self.norm, 1),
                    ("embed", self.embed, 1 / self.embed.shape[0]))

    def forward(self, ids: np.ndarray, cache: list, pos: int, last_only: bool = False) -> np.ndarray:
        """ids (T,) at positions pos.. -> logits (T, vocab), or (1, vocab) with last_only."""
        if len(ids) == 1 and self.steps_by_tape:
            return self.step(ids, _SEQ0, np.array([pos]), [cache])
        return self.definition(ids, cache, pos, last_only)

    @property
    def steps_by_tape(self) -> bool:
        """Do `step`s run the tape (one kernel call), or the definition op by op ('ref', tests)?"""
        return self.use_tape and ops.isa() != "ref"

    def step(self, ids, seqs, positions, caches: list[list], conv_inputs: dict | None = None) -> np.ndarray:
        """T tokens, each of its own sequence at its own position (caches[s]: sequence s's), through
        the tape in one call -> logits (T, vocab), each token's bit-identical to stepping it alone:
        decoding, batched decoding and speculative verification (ops.Tape.run)."""
        if self.tape is None:
            self.tape = ops.record(self.definition, caches[0])
        return self.tape.run(ids, seqs, positions, caches, conv_inputs)

    def definition(self, ids, cache: list, pos: int, last_only: bool = False) -> np.ndarray:
        """The forward, op by op (what the tape records)."""
        x = ops.embed(ids, self.embed)  # (T, D)
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x = block(x, layer_cache, pos)
        if last_only:
            x = x[-1:]
        return ops.linear(ops.rmsnorm(x, self.norm, self.cfg.norm_eps), self.lm_head)

    @property
    def fused(self) -> bool:  # the former name of use_tape (benchmarks/decode_ops.py sets it)
        return self.use_tape

    @fused.setter
    def fused(self, on: bool) -> None:
        self.use_tape = on


LFM2 = Model  # the former name


# ----------------------------------------------------------------------------- convert and synthetic models

_EXPERT = re.compile(r"^(model\.layers\.\d+\.feed_forward\.experts)\.(\d+)\.(w[123])\.weight$")
_FUSED = re.compile(r"^(model\.layers\.\d+\.feed_forward\.experts)\.(gate_up_proj|down_proj)$")


def from_hf(src, cfg: Config) -> dict:
    """A HF checkpoint's tensors under our names (convert.py; src: its convert.Source): HF's names,
    but per-expert weights (`experts.N.w1.weight`, or transformers' fused `gate_up_proj` (E, 2I, D)
    and `down_proj`) stacked per layer into `experts.w{1,2,3}.weight` (E, ., .), a tied lm_head dropped."""
    out, experts = {}, {}
    for name in src.names:
        if m := _EXPERT.match(name):
            experts.setdefault((m[1], m[3]), {})[int(m[2])] = name
        elif m := _FUSED.match(name):
            if m[2] == "down_proj":
                out[m[1] + ".w2.weight"] = src.tensor(name)
            else:
                half = src.shape(name)[1] // 2
                out[m[1] + ".w1.weight"] = src.tensor(name, slice(0, half))
                out[m[1] + ".w3.weight"] = src.tensor(name, slice(half, 2 * half))
        elif name != "lm_head.weight" or not cfg.tie_word_embeddings:
            out[name] = src.tensor(name)
    for (prefix, w), by_idx in experts.items():
        if sorted(by_idx) != list(range(cfg.num_experts)):
            raise WeightError(f"{prefix}.*.{w}.weight: found experts {sorted(by_idx)}, "
                              f"config has num_experts={cfg.num_experts}")
        out[f"{prefix}.{w}.weight"] = src.experts([by_idx[i] for i in range(cfg.num_experts)], f"{prefix}.*.{w}.weight")
    return out


def weight_format(name: str, shape: tuple[int, ...], quant: str, embed_quant: str) -> str:
    """Which format a tensor is stored in. Linear weights take `quant`; norms, conv kernels, biases,
    the router and the expert bias stay f32 (tiny, and routing and normalisation are where
    low precision hurts quality most). The embedding / LM head takes `embed_quant`."""
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return embed_quant
    small = ("norm" in name or name.endswith(("conv.conv.weight", ".bias", "gate.weight", "expert_bias")))
    return "f32" if small or len(shape) < 2 else quant


def random_init(name: str) -> tuple[float, float] | None:
    """(mean, std) of a synthetic model's random float tensor, None for the fan-in scaled default
    (std 1/sqrt(K), as the linear weights)."""
    if "norm" in name:
        return 1.0, 0.1
    if name.endswith("conv.weight"):
        return 0.0, 0.5
    if name.endswith("expert_bias"):
        return 0.0, 0.01
    return None
