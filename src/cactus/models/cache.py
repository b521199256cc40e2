"""The per-layer caches of a sequence (what an architecture's `make_cache` returns): a KV cache for
attention layers, a conv state for short-conv layers. Each also gives the stand-in the forward is
recorded against (`recorded`, ops.record): the tape finds a token's cache by its sequence at run time.
"""

from __future__ import annotations

import mmap

import numpy as np

from .. import ops


def _lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros whose pages are only committed when written, in 4 KiB steps: an anonymous mmap with
    huge pages off (numpy's own large arrays ask for 2 MiB pages, which would commit 2 MiB per
    head at the first token)."""
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)  # private: in RssAnon
    buf = mmap.mmap(-1, nbytes, flags=flags)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype, count=int(np.prod(shape))).reshape(shape)


class KVCache:
    """Keys and values of one attention layer for up to `capacity` positions.
    kt (Hkv, cap/16, hd, 16): keys in blocks of 16 positions, d-major inside a block (the decode
    kernel reads 16 scores per vector); v (Hkv, cap, hd). Allocated once at the context limit:
    untouched pages are mapped lazily, so memory grows with the positions actually written and
    nothing is ever copied. f16 for int8/int4 models (half the memory and bandwidth)."""

    def __init__(self, n_kv_heads: int, head_dim: int, capacity: int, dtype=np.float32):
        cap = -(-capacity // 16) * 16
        self.kt = _lazy_zeros((n_kv_heads, cap // 16, head_dim, 16), dtype)
        self.v = _lazy_zeros((n_kv_heads, cap, head_dim), dtype)
        self.length = 0

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Store k, v (T, Hkv, hd) at positions length.."""
        ops.kv_store(self.kt, self.v, k, v, self.length)
        self.length += k.shape[0]

    def tape_state(self) -> tuple[np.ndarray, np.ndarray]:
        """What the tape reads and writes (ops.Tape.run)."""
        return self.kt, self.v

    def advance(self, position: int) -> None:
        """The tape wrote `position`."""
        self.length = max(self.length, position + 1)

    def recorded(self, layer: int) -> ops.KVRef:
        """The stand-in the forward is recorded against (ops.record)."""
        return ops.KVRef(layer, self.kt.shape[0])

    def snapshot(self, detach: bool = False) -> int | tuple:
        """The length; detached: (length, kt, v) copies of the filled part, which survive the
        cache being overwritten by another conversation."""
        if not detach:
            return self.length
        n = self.length
        return n, self.kt[:, :-(-n // 16)].copy(), self.v[:, :n].copy()

    def restore(self, state: int | tuple) -> None:
        if isinstance(state, tuple):
            state, kt, v = state
            self.kt[:, :kt.shape[1]] = kt
            self.v[:, :state] = v
        self.length = state


class ConvCache:
    """The last L-1 inputs (B*x) of one short-conv layer: state (L-1, D)."""

    def __init__(self, l_cache: int, hidden: int):
        self.state = np.zeros((l_cache - 1, hidden), np.float32)

    def tape_state(self) -> np.ndarray:
        return self.state

    def advance(self, position: int) -> None:
        pass

    def recorded(self, layer: int) -> ops.ConvRef:
        return ops.ConvRef(layer)

    def snapshot(self, detach: bool = False) -> np.ndarray:
        return self.state.copy()  # always a copy: the state is overwritten by every token

    def restore(self, state: np.ndarray) -> None:
        self.state[:] = state
