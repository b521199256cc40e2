"""Weight formats and their numpy specification: quantize, dequantize, and the integer dot product.

This file is the definition the C kernels are held to (docs/FORMAT.md describes the bytes).
- int8: symmetric per group of G along the input dimension K, q = rint(w / s), |q| <= 127,
  s = absmax / 127 stored as fp16.
- int4: symmetric per group, s = m / -8 where m is the group's value of largest magnitude (so m
  maps exactly to -8 and 16 levels are used, as ggml's Q4_0), q = clamp(rint(w / s), -8, 7),
  stored as u = q + 8, two per byte: byte j of a group holds element j in its low nibble and
  element j + G/2 in its high nibble (one 16-byte load + mask/shift yields 32 ordered lanes).
K is padded with zeros up to a multiple of G. Activations are quantized the same way to int8
(fp32 scale) right before an integer dot product: y = sum_g sw[g] * sx[g] * sum_j qw[g,j] * qx[g,j].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMATS = ("f32", "f16", "bf16", "int8", "int4")
QUANTIZED = ("int8", "int4")
DEFAULT_GROUP = 32


def padded(k: int, group: int) -> int:
    return -(-k // group) * group


def _groups(w: np.ndarray, group: int) -> np.ndarray:
    """(..., K) f32 -> (..., Kp/G, G) with zero padding."""
    k = w.shape[-1]
    kp = padded(k, group)
    if kp != k:
        w = np.concatenate([w, np.zeros(w.shape[:-1] + (kp - k,), np.float32)], axis=-1)
    return w.reshape(w.shape[:-1] + (kp // group, group))


def quantize(w: np.ndarray, fmt: str, group: int = DEFAULT_GROUP) -> tuple[np.ndarray, np.ndarray | None]:
    """w (..., N, K) -> (data, scales) in `fmt`'s stored layout (scales None for float formats)."""
    w = np.asarray(w, np.float32)
    if fmt == "f32":
        return np.ascontiguousarray(w), None
    if fmt == "f16":
        return w.astype(np.float16), None
    if fmt == "bf16":
        u = w.view(np.uint32)
        # round to nearest even, as torch's float -> bfloat16 cast does
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16), None
    if fmt not in QUANTIZED:
        raise ValueError(f"unknown weight format {fmt!r} (expected one of {FORMATS})")
    if group % 2 or group <= 0:
        raise ValueError(f"group size must be a positive even number, got {group}")
    g = _groups(w, group)
    if fmt == "int8":
        s = (np.abs(g).max(-1) / 127.0).astype(np.float16)
        sf = s.astype(np.float32)[..., None]
        q = np.rint(np.divide(g, sf, out=np.zeros_like(g), where=sf != 0))
        q = np.clip(q, -127, 127).astype(np.int8)
        return q.reshape(q.shape[:-2] + (-1,)), s
    idx = np.abs(g).argmax(-1)[..., None]
    m = np.take_along_axis(g, idx, -1)[..., 0]
    s = (m / -8.0).astype(np.float16)
    sf = s.astype(np.float32)[..., None]
    q = np.rint(np.divide(g, sf, out=np.zeros_like(g), where=sf != 0))
    u = (np.clip(q, -8, 7) + 8).astype(np.uint8)
    half = group // 2
    packed = u[..., :half] | (u[..., half:] << 4)
    return packed.reshape(packed.shape[:-2] + (-1,)), s


def unpack_int4(packed: np.ndarray, group: int) -> np.ndarray:
    """(..., Kp/2) uint8 -> (..., Kp) int8 values in [-8, 7]."""
    b = packed.reshape(packed.shape[:-1] + (-1, group // 2))
    q = np.concatenate([b & 0x0F, b >> 4], axis=-1).astype(np.int8) - 8
    return q.reshape(packed.shape[:-1] + (-1,))


def quantize_activations(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """x (T, K) f32 -> qx (T, Kp/G, G) int8, sx (T, Kp/G) f32; the kernels' activation format."""
    g = _groups(np.asarray(x, np.float32), group)
    sx = (np.abs(g).max(-1) / np.float32(127.0)).astype(np.float32)
    d = sx[..., None]
    q = np.rint(np.divide(g, d, out=np.zeros_like(g), where=d != 0))
    return np.clip(q, -127, 127).astype(np.int8), sx


@dataclass(frozen=True)
class QTensor:
    """A weight of logical shape (..., N, K) in one of FORMATS; data and scales are mmap views."""

    fmt: str
    shape: tuple[int, ...]
    data: np.ndarray  # f32/f16 (..., N, K); bf16 as uint16 (..., N, K); int8 (..., N, Kp); int4 uint8 (..., N, Kp/2)
    scales: np.ndarray | None = None  # f16 (..., N, Kp/G)
    group_size: int = 0

    @classmethod
    def from_float(cls, w: np.ndarray, fmt: str, group: int = DEFAULT_GROUP) -> QTensor:
        data, scales = quantize(w, fmt, group)
        return cls(fmt, tuple(w.shape), data, scales, group if fmt in QUANTIZED else 0)

    def __getitem__(self, i) -> QTensor:
        """Slice the leading (expert) axis: a view, never a copy."""
        data = self.data[i]
        return QTensor(self.fmt, tuple(data.shape[:-1]) + self.shape[-1:], data,
                       None if self.scales is None else self.scales[i], self.group_size)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def dequantize(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """f32 (..., N, K), or only the given rows of a 2-D weight (the embedding lookup)."""
        data = self.data if rows is None else self.data[rows]
        k = self.shape[-1]
        if self.fmt == "f32":
            return np.asarray(data, np.float32)
        if self.fmt == "f16":
            return data.astype(np.float32)
        if self.fmt == "bf16":
            return (data.astype(np.uint32) << 16).view(np.float32)
        scales = self.scales if rows is None else self.scales[rows]
        q = data if self.fmt == "int8" else unpack_int4(data, self.group_size)
        g = q.reshape(q.shape[:-1] + (-1, self.group_size)).astype(np.float32)
        w = g * scales.astype(np.float32)[..., None]
        return w.reshape(w.shape[:-2] + (-1,))[..., :k]


def qlinear_spec(x: np.ndarray, w: QTensor) -> np.ndarray:
    """y (T, N) = x (T, K) @ W^T as the int8/int4 kernels compute it: x quantized to int8 per
    group, exact integer sums per group, then y = sum_g sw[n, g] * sx[t, g] * isum[t, n, g]."""
    if w.fmt not in QUANTIZED or len(w.shape) != 2:
        raise ValueError("qlinear_spec takes a 2-D int8/int4 weight")
    g = w.group_size
    qx, sx = quantize_activations(x, g)  # (T, Kg, G), (T, Kg)
    q = w.data if w.fmt == "int8" else unpack_int4(w.data, g)
    qw = q.reshape(w.shape[0], -1, g)  # (N, Kg, G)
    # Integer sums are exact in f32: |sum| <= 127 * 127 * G < 2^24 for G <= 1024.
    isum = np.matmul(qx.astype(np.float32).transpose(1, 0, 2), qw.astype(np.float32).transpose(1, 2, 0))
    return (isum * sx.T[:, :, None] * w.scales.astype(np.float32).T[:, None, :]).sum(0)
