"""The ops the model is written with, on numpy arrays. Shapes: T tokens, S cached positions,
D hidden, H heads, Hkv KV heads, hd head dim, E experts, A active experts per token, I expert width.

Every op has a short numpy definition (`*_ref`, the reference the tests hold the C kernels to) and
the C kernel (cactus._kernels) that runs by default. `CACTUS_ISA=ref` runs the references;
`CACTUS_ISA=scalar|ssse3|avx2|avxvnni|avx512|neon80|neon|i8mm` forces a kernel level;
`with ops.use("avx2"):` does the same for a block. `CACTUS_THREADS` / `set_threads` sets the kernel
threads (default: one per physical core of the fastest kind, cpus.py).
Weights arrive as QTensor mmap views; the kernels read them in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

from . import cpus
from .quant import QTensor

# ============================================================================ references

def rmsnorm_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """(T, ..., D) -> same; w (D,). As Lfm2RMSNorm: w * (x * rsqrt(mean(x^2) + eps)), in f32."""
    var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)
    return w * (x / np.sqrt(var + np.float32(eps)))


def linear_ref(x: np.ndarray, w: QTensor) -> np.ndarray:
    """y (T, N) = x (T, K) @ W (N, K)^T, exactly, on the dequantized weight.

    The int8/int4 kernels also quantize x to int8 per group for integer dot products;
    quant.qlinear_spec is that arithmetic, and the kernel tests pin them to it."""
    return x @ w.dequantize().T


def embed_ref(ids: np.ndarray, w: QTensor) -> np.ndarray:
    """(T,) int -> (T, D): rows of the (quantized) embedding table."""
    return w.dequantize(rows=np.asarray(ids, np.int64))


def rope_ref(x: np.ndarray, start: int, theta: float) -> np.ndarray:
    """x (T, H, hd) at positions start.. rotated, rotate-half convention (apply_rotary_pos_emb)."""
    hd = x.shape[-1]
    positions = np.arange(start, start + x.shape[0])
    inv_freq = (1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))).astype(np.float32)
    freqs = positions.astype(np.float32)[:, None] * inv_freq[None, :]  # (T, hd/2)
    cos = np.cos(np.concatenate([freqs, freqs], -1))[:, None, :]
    sin = np.sin(np.concatenate([freqs, freqs], -1))[:, None, :]
    rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return (x * cos + rot * sin).astype(np.float32)


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """q (T, H, hd) at positions start..start+T-1; k, v (S, Hkv, hd) with S = start + T -> (T, H, hd).

    Causal softmax attention; query head h reads KV head h // (H / Hkv), as repeat_kv does.
    """
    t, h, hd = q.shape
    s, hkv, _ = k.shape
    qg = q.reshape(t, hkv, h // hkv, hd).transpose(1, 2, 0, 3)  # (Hkv, R, T, hd)
    scores = np.matmul(qg, k.transpose(1, 2, 0)[:, None]) * np.float32(hd ** -0.5)  # (Hkv, R, T, S)
    mask = np.arange(s)[None, :] > (start + np.arange(t))[:, None]
    scores = np.where(mask, -np.inf, scores)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    probs = scores / scores.sum(-1, keepdims=True)
    out = np.matmul(probs, v.transpose(1, 0, 2)[:, None])  # (Hkv, R, T, hd)
    return out.transpose(2, 0, 1, 3).reshape(t, h, hd).astype(np.float32)


def short_conv_ref(bx: np.ndarray, state: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Depthwise causal conv over time. bx (T, D); state (L-1, D) holds the previous L-1 inputs
    and is updated in place; w (D, L). out[t] = b + sum_j w[:, j] * xs[t + j], xs = [state; bx]."""
    lm1 = state.shape[0]
    t = bx.shape[0]
    xs = np.concatenate([state, bx], 0)  # (L-1+T, D)
    out = np.zeros_like(bx) if b is None else np.broadcast_to(b, bx.shape).astype(np.float32)
    for j in range(lm1 + 1):
        out = out + xs[j:j + t] * w[:, j]
    if lm1:
        state[:] = xs[-lm1:]
    return out


def conv_gate_ref(bcx: np.ndarray, state: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """bcx (T, 3D) = B, C, x -> C * conv(B * x) (T, D): the gated short conv (Lfm2ShortConv)."""
    bb, c, xx = np.split(bcx, 3, axis=-1)
    return c * short_conv_ref(bb * xx, state, w, b)


def silu_mul_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """silu(a) * b, elementwise."""
    return a / (1.0 + np.exp(-a)) * b


def swiglu_ref(x: np.ndarray, w1: QTensor, w3: QTensor, w2: QTensor) -> np.ndarray:
    """w2 (silu(w1 x) * w3 x): the dense LFM2 feed-forward."""
    return linear_ref(silu_mul_ref(linear_ref(x, w1), linear_ref(x, w3)), w2)


def moe_route_ref(logits: np.ndarray, bias: np.ndarray | None, k: int, norm_topk: bool,
                  scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Router logits (T, E) -> expert ids (T, A), weights (T, A), as Lfm2MoeTopKRouter:
    sigmoid scores; the expert bias only chooses, the unbiased score weighs; optional
    renormalisation with its +1e-6; then routed_scaling_factor."""
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))
    choose = scores if bias is None else scores + bias
    idx = np.argsort(-choose, axis=-1, kind="stable")[:, :k]
    wts = np.take_along_axis(scores, idx, -1)
    if norm_topk:
        wts = wts / (wts.sum(-1, keepdims=True) + np.float32(1e-6))
    return idx, (wts * np.float32(scale)).astype(np.float32)


def moe_experts_ref(x: np.ndarray, idx: np.ndarray, wts: np.ndarray,
                    w1: QTensor, w3: QTensor, w2: QTensor) -> np.ndarray:
    """sum_a wts[t, a] * w2[e] (silu(w1[e] x) * w3[e] x), e = idx[t, a]; x (T, D), w1/w3 (E, I, D),
    w2 (E, D, I). Only the selected experts run, each over the tokens that chose it."""
    out = np.zeros_like(x)
    for e in np.unique(idx):
        tok, slot = np.nonzero(idx == e)
        np.add.at(out, tok, swiglu_ref(x[tok], w1[e], w3[e], w2[e]) * wts[tok, slot][:, None])
    return out


def moe_ref(x: np.ndarray, gate: QTensor, bias: np.ndarray | None, w1: QTensor, w3: QTensor, w2: QTensor,
            k: int, norm_topk: bool, scale: float) -> np.ndarray:
    """The sparse MoE block: route with gate (E, D), then the chosen experts."""
    idx, wts = moe_route_ref(linear_ref(x, gate), bias, k, norm_topk, scale)
    return moe_experts_ref(x, idx, wts, w1, w3, w2)


def cache_views_ref(kt: np.ndarray, v: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The KV cache's stored layout -> natural k, v (S, Hkv, hd) f32 of its first `length` positions.
    kt (Hkv, cap/16, hd, 16): keys in blocks of 16 positions, d-major inside; v (Hkv, cap, hd)."""
    hkv, nb, hd, blk = kt.shape
    k = kt.transpose(0, 1, 3, 2).reshape(hkv, nb * blk, hd)[:, :length]
    return k.transpose(1, 0, 2).astype(np.float32), v[:, :length].transpose(1, 0, 2).astype(np.float32)


def kv_store_ref(kt: np.ndarray, v: np.ndarray, k_new: np.ndarray, v_new: np.ndarray, pos: int) -> None:
    """Write k_new, v_new (T, Hkv, hd) at positions pos.. of the cache (layout of cache_views_ref)."""
    for t in range(k_new.shape[0]):
        s = pos + t
        kt[:, s // 16, :, s % 16] = k_new[t]
        v[:, s] = v_new[t]


def cache_attention_ref(q: np.ndarray, kt: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """attention_ref over the cache's first start + T positions."""
    k, vv = cache_views_ref(kt, v, start + q.shape[0])
    return attention_ref(q, k, vv, start)


# ============================================================================ kernel selection

ISAS = ("ref", "scalar", "ssse3", "avx2", "avxvnni", "avx512", "neon80", "neon", "i8mm")
_k = None          # cactus._kernels, or None while the numpy references run
_started = False


def _lib():
    """The kernels as CACTUS_ISA and CACTUS_THREADS set them up, on first use. A bad setting raises
    every time it is used (never a silent fall back to the numpy references)."""
    global _k, _started
    if not _started:
        from . import _kernels as k

        isa = os.environ.get("CACTUS_ISA", "").strip().lower()
        if isa and isa != "ref":
            k.set_isa(isa)  # ValueError names an ISA this CPU cannot run
        order, n = cpus.plan()
        env = os.environ.get("CACTUS_THREADS", "").strip()
        if env:
            if not env.isdigit() or not 1 <= int(env) <= 256:
                raise ValueError(f"CACTUS_THREADS must be a whole number from 1 to 256, got {env!r}")
            n = int(env)
        k.set_threads(n, order)
        _k = None if isa == "ref" else k
        _started = True
    return _k


def default_threads() -> int:
    """One per physical core of the fastest kind this process may run on (cpus.py)."""
    return cpus.plan()[1]


def isa() -> str:
    """The kernel level in use ('ref' for the numpy references)."""
    k = _lib()
    return "ref" if k is None else k.isa()


def supported() -> list[str]:
    """Kernel levels this machine runs, 'ref' included."""
    from . import _kernels as k

    return ["ref"] + k.supported()


@contextlib.contextmanager
def use(level: str) -> Iterator[None]:
    """Run a block at one kernel level ('ref' = numpy references); restores the previous level."""
    global _k
    if level not in ISAS:
        raise ValueError(f"unknown ISA {level!r} (one of {', '.join(ISAS)})")
    k = _ext()
    prev_k, prev_isa = _k, k.isa()
    try:
        if level == "ref":
            _k = None
        else:
            k.set_isa(level)
            _k = k
        yield
    finally:
        k.set_isa(prev_isa)
        _k = prev_k


def _ext():
    """The extension module, initialised (also while the 'ref' level is in use)."""
    _lib()
    from . import _kernels

    return _kernels


def set_threads(n: int) -> None:
    """n kernel threads (the caller and n - 1 workers), workers pinned as cpus.plan orders them."""
    _ext().set_threads(int(n), cpus.plan()[0])


def set_prefetch(l2_bytes: int, l1_bytes: int) -> tuple[int, int]:
    """Decode's software prefetch distances (into L2, into L1; 0 turns the L1 one off); returns
    the previous pair. A tuning knob for benchmarks/ab_prefetch.py: speed only, never results."""
    return _ext().set_prefetch(int(l2_bytes), int(l1_bytes))


def threads() -> int:
    return _ext().threads()


def pool_stats() -> tuple[int, int]:
    """(kernel jobs run on all threads, jobs run on the calling thread alone) since start."""
    return _ext().pool_stats()


def profile(on: bool) -> tuple[int, int]:
    """Start (True) or stop (False) counting time inside kernels; returns (calls, ns) counted since
    the previous call. Python overhead = wall time - kernel time."""
    return _ext().profile(on)


def read_memory(buf, stride: int = 1) -> int:
    """Stream buf with every kernel thread (the bandwidth probe of `cactus bench`)."""
    return _ext().read_memory(buf, stride)


def _weight(w: QTensor):
    """The kernel handle of a QTensor, made once and kept on it (QTensor is a frozen dataclass)."""
    h = w.__dict__.get("_kernel")
    if h is None:
        h = _k.Weight(w.data, w.scales, w.fmt, w.group_size, w.shape[-1])
        object.__setattr__(w, "_kernel", h)
    return h


def _f32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 and x.flags.c_contiguous else np.ascontiguousarray(x, np.float32)


# ============================================================================ the ops

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    k = _lib()
    return rmsnorm_ref(x, w, eps) if k is None else k.rmsnorm(_f32(x), w, eps)


def linear(x: np.ndarray, w: QTensor) -> np.ndarray:
    """y (T, N) = x (T, K) @ W^T. Quantized weights: int8 activations per group (qlinear_spec)."""
    k = _lib()
    return linear_ref(x, w) if k is None else k.linear(_f32(x), _weight(w), 0)


def embed(ids: np.ndarray, w: QTensor) -> np.ndarray:
    k = _lib()
    return embed_ref(ids, w) if k is None else k.embed(np.ascontiguousarray(ids, np.int64), _weight(w))


def rope(x: np.ndarray, start: int, theta: float) -> np.ndarray:
    """x (T, H, hd) rotated for positions start.. (the kernel rotates x in place and returns it)."""
    k = _lib()
    if k is None:
        return rope_ref(x, start, theta)
    x = _f32(x)
    k.rope(x, start, theta)
    return x


def conv_gate(bcx: np.ndarray, state: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    k = _lib()
    return conv_gate_ref(bcx, state, w, b) if k is None else k.conv_gate(_f32(bcx), state, w, b)


def silu_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = _lib()
    return silu_mul_ref(a, b) if k is None else k.silu_mul(_f32(a), _f32(b))


def swiglu(x: np.ndarray, w1: QTensor, w3: QTensor, w2: QTensor) -> np.ndarray:
    k = _lib()
    if k is None:
        return swiglu_ref(x, w1, w3, w2)
    return k.swiglu(_f32(x), _weight(w1), _weight(w3), _weight(w2))


def moe_route(logits: np.ndarray, bias: np.ndarray | None, k: int, norm_topk: bool,
              scale: float) -> tuple[np.ndarray, np.ndarray]:
    kk = _lib()
    if kk is None:
        return moe_route_ref(logits, bias, k, norm_topk, scale)
    return kk.route(_f32(logits), bias, k, norm_topk, scale)


def moe_experts(x: np.ndarray, idx: np.ndarray, wts: np.ndarray, w1: QTensor, w3: QTensor, w2: QTensor) -> np.ndarray:
    k = _lib()
    if k is None:
        return moe_experts_ref(x, idx, wts, w1, w3, w2)
    return k.moe(_f32(x), np.ascontiguousarray(idx, np.int32), _f32(wts), _weight(w1), _weight(w3), _weight(w2))


def moe(x: np.ndarray, gate: QTensor, bias: np.ndarray | None, w1: QTensor, w3: QTensor, w2: QTensor,
        k: int, norm_topk: bool, scale: float) -> np.ndarray:
    kk = _lib()
    if kk is None:
        return moe_ref(x, gate, bias, w1, w3, w2, k, norm_topk, scale)
    x = _f32(x)
    idx, wts = kk.route(kk.linear(x, _weight(gate), 0), bias, k, norm_topk, scale)
    return kk.moe(x, idx, wts, _weight(w1), _weight(w3), _weight(w2))


def kv_store(kt: np.ndarray, v: np.ndarray, k_new: np.ndarray, v_new: np.ndarray, pos: int) -> None:
    k = _lib()
    if k is None:
        kv_store_ref(kt, v, k_new, v_new, pos)
    else:
        k.kv_store(kt, v, _f32(k_new), _f32(v_new), pos)


def cache_attention(q: np.ndarray, kt: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """Causal attention of q (T, H, hd) at positions start.. over the cache (kv_store's layout)."""
    k = _lib()
    if k is None:
        return cache_attention_ref(q, kt, v, start)
    return k.attention(_f32(q), kt, v, start, q.shape[-1] ** -0.5)


# ============================================================================ whole-token decode

def decoder(layers: list[tuple], embed: QTensor, norm: np.ndarray, head: QTensor, eps: float):
    """The C plan of one-token decode (`_kernels.Decoder`), or None on the 'ref' level. layers: per
    layer (op, ffn, operator_norm, ffn_norm) with op ("conv", in_proj, out_proj, conv_w, conv_b, in_b,
    out_b) or ("attention", q, k, v, o, q_norm, k_norm, H, Hkv, hd, theta), and ffn ("swiglu", w1, w3,
    w2) or ("moe", gate, expert_bias, w1, w3, w2, top_k, norm_topk, scale); QTensors for weights."""
    k = _lib()
    if k is None:
        return None

    def handles(spec: tuple) -> tuple:
        return tuple(_weight(v) if isinstance(v, QTensor) else v for v in spec)

    plan = tuple((handles(op), handles(ffn), on, fn) for op, ffn, on, fn in layers)
    return k.Decoder(plan, _weight(embed), norm, _weight(head), eps)


def decode(plan, token: int, pos: int, states: tuple) -> np.ndarray:
    """logits (1, vocab) of one token at position pos, all layers in one kernel call; states per
    layer: the conv state, or (kt, v) of the KV cache (position pos is written)."""
    return _lib().decode(plan, token, pos, states)


# The plain names of the definitions, for callers that hold k, v themselves.
attention = attention_ref
short_conv = short_conv_ref
