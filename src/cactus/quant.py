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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


# ----------------------------------------------------------------------------- the formats

@dataclass(frozen=True)
class Format:
    """One weight format: how a logical (..., N, K) weight is stored and read back. formats.c holds
    the same row for the kernels; docs/FORMAT.md describes the bytes. A new format is one entry of
    FORMATS here, one row there, and its kernels."""

    name: str
    dtype: str  # the stored element, as safetensors names it
    pack: int  # weights per stored element (int4: two per byte)
    grouped: bool  # an f16 scale per group of G along K, K zero-padded to a multiple of G
    quantize: Callable  # (w (..., N, K) f32, G) -> (data, scales or None), in the stored layout
    values: Callable  # (data, G) -> f32 weights; for a grouped format the integers q of w = s * q
    embed: str = ""  # the embedding / LM head's default format when the linear layers take this one
    random: Callable | None = None  # (rng, data shape, K) -> stored data of uniformly random q
    random_std: float = 0.0  # the std of those q (synthetic.py sizes the scales by it)

    def dequantize(self, data: np.ndarray, scales: np.ndarray | None, group: int) -> np.ndarray:
        """Stored data (and scales) -> f32 (..., N, K), or (..., N, Kp) for a grouped format."""
        v = self.values(data, group)
        if not self.grouped:
            return v
        g = v.reshape(v.shape[:-1] + (-1, group)).astype(np.float32)
        w = g * scales.astype(np.float32)[..., None]
        return w.reshape(w.shape[:-2] + (-1,))

    def layout(self, shape: tuple[int, ...], group: int) -> list[tuple[tuple[int, ...], str]]:
        """[(shape, dtype)] of the data tensor (and its scales) for a logical (..., N, K) weight."""
        shape = tuple(shape)
        if not self.grouped:
            return [(shape, self.dtype)]
        if group <= 0:
            raise ValueError(f"format {self.name} needs a positive group size")
        kp = padded(shape[-1], group)
        return [(shape[:-1] + (kp // self.pack,), self.dtype), (shape[:-1] + (kp // group,), "F16")]

    def row_bytes(self, k: int, group: int = 0) -> int:
        """Bytes a row of K weights is stored in, its scales included (formats.c: row_bytes + scales)."""
        return sum(int(np.prod(shape)) * _ITEMSIZE[dtype] for shape, dtype in self.layout((k,), group))


_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1}


def _bf16(w: np.ndarray, group: int) -> tuple[np.ndarray, None]:
    u = w.view(np.uint32)
    # round to nearest even, as torch's float -> bfloat16 cast does
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16), None


def _divided(g: np.ndarray, s: np.ndarray) -> np.ndarray:
    """rint(g / s) per group (0 where s is 0): g (..., Kp/G, G), s (..., Kp/G) f16."""
    sf = s.astype(np.float32)[..., None]
    return np.rint(np.divide(g, sf, out=np.zeros_like(g), where=sf != 0))


def _int8(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    g = _groups(w, group)
    s = (np.abs(g).max(-1) / 127.0).astype(np.float16)
    q = np.clip(_divided(g, s), -127, 127).astype(np.int8)
    return q.reshape(q.shape[:-2] + (-1,)), s


def _int4(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    g = _groups(w, group)
    idx = np.abs(g).argmax(-1)[..., None]
    s = (np.take_along_axis(g, idx, -1)[..., 0] / -8.0).astype(np.float16)
    u = (np.clip(_divided(g, s), -8, 7) + 8).astype(np.uint8)
    half = group // 2
    packed = u[..., :half] | (u[..., half:] << 4)
    return packed.reshape(packed.shape[:-2] + (-1,)), s


def _random_bytes(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.frombuffer(rng.bytes(int(np.prod(shape))), dtype).reshape(shape).copy()


def _random_int8(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    q = _random_bytes(rng, shape, np.int8)
    np.maximum(q, -127, out=q)  # int8 weights stay in [-127, 127]
    q[..., k:] = 0  # the padding past K
    return q


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("f32", "F32", 1, False, lambda w, g: (np.ascontiguousarray(w), None),
           lambda d, g: np.asarray(d, np.float32)),
    Format("f16", "F16", 1, False, lambda w, g: (w.astype(np.float16), None), lambda d, g: d.astype(np.float32)),
    Format("bf16", "BF16", 1, False, _bf16, lambda d, g: (d.astype(np.uint32) << 16).view(np.float32)),
    Format("int8", "I8", 1, True, _int8, lambda d, g: d, random=_random_int8, random_std=73.3),
    # int4 on the 65k-row LM head costs noticeably more quality than it saves bytes per token
    Format("int4", "U8", 2, True, _int4, lambda d, g: unpack_int4(d, g), embed="int8",
           random=lambda rng, shape, k: _random_bytes(rng, shape, np.uint8), random_std=4.61),
)}
QUANTIZED = tuple(name for name, f in FORMATS.items() if f.grouped)


def get_format(name: str) -> Format:
    """FORMATS[name], or a ValueError naming the formats there are."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown weight format {name!r} (one of {', '.join(FORMATS)})") from None


def embed_format(quant: str) -> str:
    """The embedding / LM head's default format when the linear layers take `quant`."""
    return get_format(quant).embed or quant


def float_format(dtype: str) -> str | None:
    """The format of a plain float safetensors tensor of `dtype` (F32, F16, BF16), else None."""
    return next((f.name for f in FORMATS.values() if f.dtype == dtype and not f.grouped), None)


def quantize(w: np.ndarray, fmt: str, group: int = DEFAULT_GROUP) -> tuple[np.ndarray, np.ndarray | None]:
    """w (..., N, K) -> (data, scales) in `fmt`'s stored layout (scales None for float formats)."""
    f = get_format(fmt)
    if f.grouped and (group % 2 or group <= 0):
        raise ValueError(f"group size must be a positive even number, got {group}")
    return f.quantize(np.asarray(w, np.float32), group)


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
        scales = self.scales if rows is None or self.scales is None else self.scales[rows]
        return FORMATS[self.fmt].dequantize(data, scales, self.group_size)[..., :self.shape[-1]]


def qlinear_spec(x: np.ndarray, w: QTensor) -> np.ndarray:
    """y (T, N) = x (T, K) @ W^T as the int8/int4 kernels compute it: x quantized to int8 per
    group, exact integer sums per group, then y = sum_g sw[n, g] * sx[t, g] * isum[t, n, g]."""
    if w.fmt not in QUANTIZED or len(w.shape) != 2:
        raise ValueError("qlinear_spec takes a 2-D int8/int4 weight")
    g = w.group_size
    qx, sx = quantize_activations(x, g)  # (T, Kg, G), (T, Kg)
    qw = FORMATS[w.fmt].values(w.data, g).reshape(w.shape[0], -1, g)  # (N, Kg, G) integers
    # Integer sums are exact in f32: |sum| <= 127 * 127 * G < 2^24 for G <= 1024.
    isum = np.matmul(qx.astype(np.float32).transpose(1, 0, 2), qw.astype(np.float32).transpose(1, 2, 0))
    return (isum * sx.T[:, :, None] * w.scales.astype(np.float32).T[:, None, :]).sum(0)
