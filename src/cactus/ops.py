"""The ops the model is written with, on numpy arrays. Shapes: T tokens, S cached positions,
D hidden, H heads, Hkv KV heads, hd head dim, E experts, A active experts per token.

Each op here is the short numpy definition; the C kernels (cactus._kernels) are held to these
by the tests and take their place where they exist. Weights arrive as QTensor mmap views.
"""

from __future__ import annotations

import numpy as np

from .quant import QTensor


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """(T, ..., D) -> same; w (D,). As Lfm2RMSNorm: w * (x * rsqrt(mean(x^2) + eps)), in f32."""
    var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)
    return w * (x / np.sqrt(var + np.float32(eps)))


def linear(x: np.ndarray, w: QTensor) -> np.ndarray:
    """y (T, N) = x (T, K) @ W (N, K)^T, exactly, on the dequantized weight.

    The C kernels for int8/int4 also quantize x to int8 per group for integer dot products;
    quant.qlinear_spec is that arithmetic, and the kernel tests pin them to it."""
    return x @ w.dequantize().T


def embed(ids: np.ndarray, w: QTensor) -> np.ndarray:
    """(T,) int -> (T, D): rows of the (quantized) embedding table."""
    return w.dequantize(rows=np.asarray(ids, np.int64))


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """x (T, H, hd) rotated by position, rotate-half convention (transformers' apply_rotary_pos_emb)."""
    hd = x.shape[-1]
    inv_freq = (1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))).astype(np.float32)
    freqs = positions.astype(np.float32)[:, None] * inv_freq[None, :]  # (T, hd/2)
    cos = np.cos(np.concatenate([freqs, freqs], -1))[:, None, :]
    sin = np.sin(np.concatenate([freqs, freqs], -1))[:, None, :]
    rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return (x * cos + rot * sin).astype(np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
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


def short_conv(bx: np.ndarray, state: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
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


def silu_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """silu(a) * b, elementwise."""
    return a / (1.0 + np.exp(-a)) * b


def moe_route(logits: np.ndarray, bias: np.ndarray | None, k: int, norm_topk: bool,
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


def moe_experts(x: np.ndarray, idx: np.ndarray, wts: np.ndarray,
                w1: QTensor, w3: QTensor, w2: QTensor) -> np.ndarray:
    """sum_a wts[t, a] * w2[e] (silu(w1[e] x) * w3[e] x), e = idx[t, a]; x (T, D), w1/w3 (E, I, D),
    w2 (E, D, I). Only the selected experts run, each over the tokens that chose it."""
    out = np.zeros_like(x)
    for e in np.unique(idx):
        tok, slot = np.nonzero(idx == e)
        xe = x[tok]
        h = silu_mul(linear(xe, w1[e]), linear(xe, w3[e]))
        np.add.at(out, tok, linear(h, w2[e]) * wts[tok, slot][:, None])
    return out
