"""The ops the model is written with, on numpy arrays. Shapes: T tokens, S cached positions,
D hidden, H heads, Hkv KV heads, hd head dim, E experts, A active experts per token, I expert width.

Every op has a short numpy definition (`*_ref`, the reference the tests hold the C kernels to) and
the C kernel (cactus._kernels) that runs by default. `CACTUS_ISA=ref` runs the references;
`CACTUS_ISA=scalar|ssse3|avx2|avxvnni|avx512|neon80|neon|i8mm` forces a kernel level;
`with ops.use("avx2"):` does the same for a block. `CACTUS_THREADS` / `set_threads` sets the kernel
threads (default: one per physical core of the fastest kind, cpus.py).
Weights arrive as QTensor mmap views; the kernels read them in place. A forward written with these
ops can be recorded (`record`) into a tape, one flat op list that _kernels/tape.c runs for T tokens
in one call (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

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


def _i64(x) -> np.ndarray:
    return x if type(x) is np.ndarray and x.dtype == np.int64 and x.flags.c_contiguous else np.array(x, np.int64)


def _f32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 and x.flags.c_contiguous else np.ascontiguousarray(x, np.float32)


# ============================================================================ the ops
# Each op runs its kernel (or its reference on the 'ref' level); given a Value (the forward being
# recorded, see `record`) it appends itself to the tape instead.

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    if isinstance(x, Value):
        return x.tape.emit("rmsnorm", x.shape, (x,), vecs=(w,), ints=(x.shape[-1],), floats=(eps,))
    k = _lib()
    return rmsnorm_ref(x, w, eps) if k is None else k.rmsnorm(_f32(x), w, eps)


def linear(x: np.ndarray, w: QTensor) -> np.ndarray:
    """y (T, N) = x (T, K) @ W^T. Quantized weights: int8 activations per group (qlinear_spec)."""
    if isinstance(x, Value):
        return x.tape.emit("linear", (1, w.shape[0]), (x,), weights=(w,))
    k = _lib()
    return linear_ref(x, w) if k is None else k.linear(_f32(x), _weight(w), 0)


def embed(ids: np.ndarray, w: QTensor) -> np.ndarray:
    if isinstance(ids, Value):
        return ids.tape.emit("embed", (1, w.shape[-1]), (), weights=(w,))
    k = _lib()
    return embed_ref(ids, w) if k is None else k.embed(np.ascontiguousarray(ids, np.int64), _weight(w))


def rope(x: np.ndarray, start: int, theta: float) -> np.ndarray:
    """x (T, H, hd) rotated for positions start.. (the kernel rotates x in place and returns it)."""
    if isinstance(x, Value):  # each token at its own position
        return x.tape.emit("rope", x.shape, (x,), ints=(x.shape[-1],), floats=(theta,))
    k = _lib()
    if k is None:
        return rope_ref(x, start, theta)
    x = _f32(x)
    k.rope(x, start, theta)
    return x


def conv_gate(bcx: np.ndarray, state: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if isinstance(bcx, Value):  # each token's own sequence's state
        return bcx.tape.emit("conv_gate", (1, w.shape[0]), (bcx,), layer=state.layer, vecs=(w, b))
    k = _lib()
    return conv_gate_ref(bcx, state, w, b) if k is None else k.conv_gate(_f32(bcx), state, w, b)


def silu_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = _lib()
    return silu_mul_ref(a, b) if k is None else k.silu_mul(_f32(a), _f32(b))


def swiglu(x: np.ndarray, w1: QTensor, w3: QTensor, w2: QTensor) -> np.ndarray:
    if isinstance(x, Value):
        return x.tape.emit("swiglu", x.shape, (x,), weights=(w1, w3, w2))
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
    if isinstance(x, Value):
        return x.tape.emit("moe", x.shape, (x,), weights=(gate, w1, w3, w2), vecs=(bias,),
                           ints=(k, int(bool(norm_topk))), floats=(scale,))
    kk = _lib()
    if kk is None:
        return moe_ref(x, gate, bias, w1, w3, w2, k, norm_topk, scale)
    x = _f32(x)
    idx, wts = kk.route(kk.linear(x, _weight(gate), 0), bias, k, norm_topk, scale)
    return kk.moe(x, idx, wts, _weight(w1), _weight(w3), _weight(w2))


def kv_store(kt: np.ndarray, v: np.ndarray, k_new: np.ndarray, v_new: np.ndarray, pos: int) -> None:
    if isinstance(k_new, Value):  # each token at its own position of its own sequence's cache
        k_new.tape.emit("kv_store", None, (k_new, v_new), layer=kt.layer, ints=k_new.shape[1:])
        return
    k = _lib()
    if k is None:
        kv_store_ref(kt, v, k_new, v_new, pos)
    else:
        k.kv_store(kt, v, _f32(k_new), _f32(v_new), pos)


def cache_attention(q: np.ndarray, kt: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """Causal attention of q (T, H, hd) at positions start.. over the cache (kv_store's layout)."""
    if isinstance(q, Value):  # each token over its own sequence's positions up to its own
        return q.tape.emit("attention", q.shape, (q,), layer=kt.layer, ints=(q.shape[1], kt.n_kv_heads, q.shape[2]),
                           floats=(q.shape[-1] ** -0.5,))
    k = _lib()
    if k is None:
        return cache_attention_ref(q, kt, v, start)
    return k.attention(_f32(q), kt, v, start, q.shape[-1] ** -0.5)


# ============================================================================ the tape
# The forward recorded once as a flat list of the ops above (`record`), then run for T tokens at a
# time by one C call (_kernels/tape.c) with the GIL released. Each token has its own sequence and
# position (data, not structure): rope, kv_store, attention and conv_gate use the token's position
# and its sequence's caches, every other op runs on the (T, width) rows of all tokens at once.

TAPE_OPS = ("embed", "rmsnorm", "linear", "bias", "add", "rope", "kv_store", "attention", "conv_gate", "swiglu",
            "moe")


class Value:
    """A value of the forward while it is recorded: per token a row of shape[1:] f32 (shape[0] is
    the token axis, 1 while recording). Supports what a forward does with arrays: +, reshape."""

    __slots__ = ("tape", "id", "shape")
    __array_ufunc__ = None  # ndarray + Value -> Value.__radd__

    def __init__(self, tape: Tape, id_: int, shape: tuple[int, ...]):
        self.tape, self.id, self.shape = tape, id_, tuple(shape)

    @property
    def width(self) -> int:
        """Floats per token."""
        return int(np.prod(self.shape[1:]))

    def reshape(self, *shape) -> Value:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        known = int(np.prod([d for d in shape[1:] if d != -1]))
        new = (1, *(self.width // max(known, 1) if d == -1 else d for d in shape[1:]))
        if shape[0] not in (1, -1) or int(np.prod(new[1:])) != self.width:
            raise ValueError(f"cannot reshape {self.shape} to {tuple(shape)} (one token per row)")
        return Value(self.tape, self.id, new)

    def __add__(self, other) -> Value:
        if isinstance(other, Value):
            return self.tape.emit("add", self.shape, (self, other))
        return self.tape.emit("bias", self.shape, (self,), vecs=(np.asarray(other, np.float32),))

    __radd__ = __add__


class KVRef:
    """Layer `layer`'s KV cache while the forward is recorded (KVCache.recorded): at run time,
    the cache of each token's sequence, at that token's position."""

    def __init__(self, layer: int, n_kv_heads: int):
        self.layer, self.n_kv_heads = layer, n_kv_heads
        self.kt = self.v = self
        self.length = None  # positions are per token

    def append(self, k: Value, v: Value) -> None:
        kv_store(self, self, k, v, None)


class ConvRef:
    """Layer `layer`'s conv state while the forward is recorded (ConvCache.recorded)."""

    def __init__(self, layer: int):
        self.layer = layer
        self.state = self


@dataclass(frozen=True)
class TapeOp:
    """One recorded op: value ids in and out (-1: none), the cache layer it reads or writes (-1),
    then its weights (QTensors), float vectors (None for an absent bias), ints and floats, in
    the order docs/ARCHITECTURE.md and tape.h list per op."""

    name: str
    out: int
    ins: tuple[int, ...]
    layer: int
    weights: tuple
    vecs: tuple
    ints: tuple[int, ...]
    floats: tuple[float, ...]


class Tape:
    """A recorded forward: `ops` in order over values 0..n-1, `out` the logits. `run` executes it
    for T tokens (token t of sequence seqs[t] at positions[t]; caches[s] the per-layer caches of
    sequence s) in one kernel call; `run_ops` executes it op by op with the functions above (the
    numpy references on the 'ref' level), the definition the C interpreter is held to."""

    def __init__(self):
        self.ops: list[TapeOp] = []
        self.widths: list[int] = []  # floats per token of each value
        self.out = -1
        self._kernel = None

    def value(self, shape: tuple[int, ...]) -> Value:
        self.widths.append(int(np.prod(shape[1:])))
        return Value(self, len(self.widths) - 1, shape)

    def emit(self, name: str, shape: tuple[int, ...] | None, ins: tuple[Value, ...], layer: int = -1,
             weights: tuple = (), vecs: tuple = (), ints: tuple = (), floats: tuple = ()) -> Value | None:
        out = None if shape is None else self.value((1, *shape[1:]))
        self.ops.append(TapeOp(name, -1 if out is None else out.id, tuple(v.id for v in ins), layer, tuple(weights),
                               tuple(vecs), tuple(int(i) for i in ints), tuple(float(f) for f in floats)))
        return out

    # ------------------------------------------------------------------ running

    def run(self, ids, seqs, positions, caches: list[list], conv_inputs: dict | None = None) -> np.ndarray:
        """logits (T, vocab): token ids[t] of sequence seqs[t] at positions[t]; caches[s] is
        sequence s's per-layer caches (make_cache), written at each token's position. Each token's
        logits are bit-identical to its own T = 1 run. `conv_inputs` {layer: (T, D) f32}: row t of
        each gets the conv input (B*x) of token t, so a conv state can be put back to its value
        after any token (speculative verification: engine.Engine.keep)."""
        k = _lib()
        if k is None:
            return self.run_ops(ids, seqs, positions, caches, conv_inputs)
        if self._kernel is None:
            self._kernel = self._compile(k)
            self._written = sorted({op.layer for op in self.ops if op.name == "kv_store"})  # caches that advance
        ids, seqs, positions = _i64(ids), _i64(seqs), _i64(positions)
        inputs = conv_inputs or {}
        states = tuple(tuple((c.tape_state(), inputs[i]) if i in inputs else c.tape_state()
                             for i, c in enumerate(cache)) for cache in caches)
        logits = self._kernel.run(ids, seqs, positions, states)
        for s, p in zip(seqs.tolist(), positions.tolist(), strict=True):
            cache = caches[s]
            for layer in self._written:
                cache[layer].advance(p)
        return logits

    def _compile(self, k):
        """The C tape: values packed into slots (T rows of one width), a slot reused by a value of
        its width once its value is dead; the logits keep their own."""
        last = {}
        for i, op in enumerate(self.ops):
            for v in op.ins:
                last[v] = i
        slot_of, widths, free = {}, [], {}  # free: width -> slots
        for i, op in enumerate(self.ops):
            if op.out >= 0:
                width = self.widths[op.out]
                if op.out != self.out and free.get(width):
                    s = free[width].pop()
                else:
                    s = len(widths)
                    widths.append(width)
                slot_of[op.out] = s
            for v in dict.fromkeys(op.ins):
                if last[v] == i and v != self.out:
                    free.setdefault(widths[slot_of[v]], []).append(slot_of[v])
        code = tuple((op.name, slot_of.get(op.out, -1), tuple(slot_of[v] for v in op.ins), op.layer,
                      tuple(_weight(w) for w in op.weights), op.vecs, op.ints, op.floats) for op in self.ops)
        return k.Tape(code, tuple(widths), slot_of[self.out])

    def run_ops(self, ids, seqs, positions, caches: list[list], conv_inputs: dict | None = None) -> np.ndarray:
        """`run`, op by op in Python: each op on all T rows, or token by token where it is positional."""
        T = len(ids)
        val: dict[int, np.ndarray] = {}
        for op in self.ops:
            x = [val[v] for v in op.ins]
            w, vec, n = op.weights, op.vecs, op.ints
            r = None
            if op.name == "embed":
                r = embed(np.asarray(ids, np.int64), w[0])
            elif op.name == "rmsnorm":
                r = rmsnorm(x[0].reshape(T, -1, n[0]), vec[0], op.floats[0]).reshape(T, -1)
            elif op.name == "linear":
                r = linear(x[0], w[0])
            elif op.name in ("bias", "add"):
                r = x[0] + (vec[0] if op.name == "bias" else x[1])
            elif op.name == "swiglu":
                r = swiglu(x[0], *w)
            elif op.name == "moe":
                r = moe(x[0], w[0], vec[0], *w[1:], n[0], bool(n[1]), op.floats[0])
            else:
                rows = []
                for t in range(T):
                    c, p = caches[int(seqs[t])][op.layer] if op.layer >= 0 else None, int(positions[t])
                    xt = [a[t:t + 1] for a in x]
                    if op.name == "rope":
                        rows.append(rope(xt[0].reshape(1, -1, n[0]).copy(), p, op.floats[0]).reshape(1, -1))
                    elif op.name == "kv_store":
                        kv_store(c.kt, c.v, xt[0].reshape(1, *n), xt[1].reshape(1, *n), p)
                    elif op.name == "attention":
                        q = xt[0].reshape(1, n[0], n[2])
                        rows.append(cache_attention(q, c.kt, c.v, p).reshape(1, -1))
                    elif op.name == "conv_gate":
                        if conv_inputs and op.layer in conv_inputs:
                            b, _, xx = np.split(xt[0], 3, axis=-1)
                            conv_inputs[op.layer][t] = b[0] * xx[0]
                        rows.append(conv_gate(xt[0], c.state, vec[0], vec[1]))
                    else:
                        raise ValueError(f"unknown tape op {op.name!r}")
                r = np.concatenate(rows) if rows else None
            if op.out >= 0:
                val[op.out] = np.ascontiguousarray(r, np.float32).reshape(T, -1)
        for s, p in zip(np.asarray(seqs).tolist(), np.asarray(positions).tolist(), strict=True):
            for c in caches[s]:
                c.advance(p)
        return val[self.out]


def record(forward, caches: list) -> Tape:
    """The tape of `forward(ids, caches, pos) -> logits` for one token, run once against
    stand-ins: ids and every value are Values, caches[i].recorded(i) the caches, positions per token."""
    tape = Tape()
    ids = Value(tape, -1, (1,))
    out = forward(ids, [c.recorded(i) for i, c in enumerate(caches)], None)
    if not isinstance(out, Value):
        raise TypeError("the recorded forward must return a value computed by ops")
    tape.out = out.id
    return tape


# The plain names of the definitions, for callers that hold k, v themselves.
attention = attention_ref
short_conv = short_conv_ref
