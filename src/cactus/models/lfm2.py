"""LFM2 and LFM2-MoE (transformers' Lfm2ForCausalLM / Lfm2MoeForCausalLM), written with `ops`.

Embedding -> N blocks -> final RMSNorm (`embedding_norm`) -> LM head tied to the embedding.
Each block: h = x + op(operator_norm(x)); out = h + ffn(ffn_norm(h)), where op is a gated short
convolution or GQA attention (by layer_types) and ffn is SwiGLU or a sparse MoE (lfm2_moe past
num_dense_layers). Tensor names are HF's; MoE experts are stacked per layer (E, ., .) by convert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from ..config import ModelConfig
from ..quant import QUANTIZED, QTensor
from ..weights import WeightDir
from .cache import ConvCache, KVCache

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

    def __init__(self, cfg: ModelConfig, w: WeightDir):
        self.cfg = cfg
        self.tape: ops.Tape | None = None  # recorded at the first decoded token
        d, hd, e = cfg.hidden_size, cfg.head_dim, cfg.num_experts
        self.embed = w.tensor("model.embed_tokens.weight", (cfg.vocab_size, d))
        self.lm_head = self.embed if cfg.tie_word_embeddings else w.tensor("lm_head.weight", (cfg.vocab_size, d))
        self.norm = w.float_tensor("model.embedding_norm.weight", (d,))

        def opt(name: str, shape: tuple[int, ...]) -> np.ndarray | None:
            return w.float_tensor(name, shape) if cfg.conv_bias else None

        self.blocks: list[Block] = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            if cfg.is_attention(i):
                a = p + "self_attn."
                op = Attention(
                    w.tensor(a + "q_proj.weight", (cfg.num_attention_heads * hd, d)),
                    w.tensor(a + "k_proj.weight", (cfg.num_key_value_heads * hd, d)),
                    w.tensor(a + "v_proj.weight", (cfg.num_key_value_heads * hd, d)),
                    w.tensor(a + "out_proj.weight", (d, cfg.num_attention_heads * hd)),
                    w.float_tensor(a + "q_layernorm.weight", (hd,)),
                    w.float_tensor(a + "k_layernorm.weight", (hd,)),
                    cfg.num_attention_heads, cfg.num_key_value_heads, hd, cfg.norm_eps, cfg.rope_theta,
                )
            else:
                c = p + "conv."
                op = ShortConv(
                    w.tensor(c + "in_proj.weight", (3 * d, d)),
                    w.tensor(c + "out_proj.weight", (d, d)),
                    w.float_tensor(c + "conv.weight", (d, 1, cfg.conv_L_cache))[:, 0, :],
                    opt(c + "conv.bias", (d,)), opt(c + "in_proj.bias", (3 * d,)), opt(c + "out_proj.bias", (d,)),
                )
            f = p + "feed_forward."
            if cfg.is_moe_layer(i):
                im = cfg.moe_intermediate_size
                ffn = MoE(
                    w.tensor(f + "gate.weight", (e, d)),
                    w.float_tensor(f + "expert_bias", (e,)) if cfg.use_expert_bias else None,
                    w.tensor(f + "experts.w1.weight", (e, im, d)),
                    w.tensor(f + "experts.w3.weight", (e, im, d)),
                    w.tensor(f + "experts.w2.weight", (e, d, im)),
                    cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.routed_scaling_factor,
                )
            else:
                ff = cfg.intermediate_size
                ffn = SwiGLU(w.tensor(f + "w1.weight", (ff, d)), w.tensor(f + "w3.weight", (ff, d)),
                             w.tensor(f + "w2.weight", (d, ff)))
            self.blocks.append(Block(w.float_tensor(p + "operator_norm.weight", (d,)),
                                     w.float_tensor(p + "ffn_norm.weight", (d,)), op, ffn, cfg.norm_eps))

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
