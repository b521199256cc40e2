"""The engine: a model's weights, its network (models.<arch>.Model) and one sequence's caches.
`load(path) -> Engine`, then `forward` continues the
session (KV cache for attention layers, conv state for conv layers), `reset` clears it, and
`snapshot`/`restore` return to an earlier point (the conv state cannot be rolled back otherwise),
or, detached, to another conversation's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, ModelConfig
from .models import ARCHITECTURES
from .models.cache import ConvCache
from .weights import WeightDir, WeightError

PREFILL_CHUNK = 512  # tokens per prefill step: bounds activation memory; MoE experts see ~T*A/E tokens each


class ContextError(ValueError):
    """The session would grow past the model's context window."""


@dataclass(frozen=True)
class Snapshot:
    n_past: int
    states: tuple  # one per layer: what its cache's snapshot() returned

    @property
    def nbytes(self) -> int:
        """Bytes of array data this snapshot owns."""
        def size(x) -> int:
            return x.nbytes if isinstance(x, np.ndarray) else sum(map(size, x)) if isinstance(x, tuple) else 0
        return size(self.states)


class Engine:
    def __init__(self, path: str | Path, max_context: int | None = None):
        self.path = Path(path)
        self.weights = WeightDir(self.path)
        self.config = ModelConfig.from_dict(self.weights.config_dict, str(self.path / "config.json"))
        self.quant = self.weights.config_dict["cactus"].get("quant")
        self.net = ARCHITECTURES[self.config.model_type](self.config, self.weights)
        limit = self.config.max_position_embeddings
        self.max_context = min(limit, max_context) if max_context else limit
        self.reset()

    def reset(self) -> None:
        self.cache = self.net.make_cache(self.max_context)
        self.n_past = 0
        self._verified = None

    def _checked(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size})")
        if self.n_past + ids.size > self.max_context:
            raise ContextError(f"{self.n_past + ids.size} tokens exceed the context window of {self.max_context}")
        self.weights.file.check_in_place()  # one fstat: an error, not a wrong answer or SIGBUS, after `cp` over it
        self._verified = None
        return ids

    def verify(self, ids) -> np.ndarray:
        """Feed ids (T,) as T decode steps in one forward (the tape over T tokens: the current token
        and T-1 drafted ones) -> logits (T, vocab), each bit-identical to feeding the ids one by one.
        `keep(n)` then takes the session back to just after the n-th of them."""
        ids = self._checked(ids)
        start, T = self.n_past, ids.size
        if self.net.steps_by_tape:
            convs = {i: c.state.copy() for i, c in enumerate(self.cache) if isinstance(c, ConvCache)}
            inputs = {i: np.empty((T, s.shape[1]), np.float32) for i, s in convs.items()}
            logits = self.net.step(ids, np.zeros(T, np.int64), np.arange(start, start + T), [self.cache], inputs)
            self.n_past += T
            self._verified = (start, convs, inputs)
            return logits
        snaps, rows = [self.snapshot()], []  # the numpy references: token by token, a snapshot after each
        for i in ids:
            rows.append(self.net.forward(i.reshape(1), self.cache, self.n_past))
            self.n_past += 1
            snaps.append(self.snapshot())
        self._verified = (start, snaps)
        return np.concatenate(rows, 0)

    def keep(self, n: int) -> None:
        """Keep the first n (0..T) ids of the last `verify` and drop the rest: KV caches cut to that
        length, each conv state rebuilt exactly from its inputs (the state before the call, then the
        kept tokens' rows: the last L-1 of them), nothing recomputed."""
        if self._verified is None:
            raise RuntimeError("keep() must follow verify()")
        start, *saved = self._verified
        if len(saved) == 1:
            self.restore(saved[0][n])
        else:
            convs, inputs = saved
            states = tuple(np.concatenate([convs[i], inputs[i][:n]])[n:] if i in convs else start + n
                           for i in range(len(self.cache)))
            self.restore(Snapshot(start + n, states))
        self._verified = None

    def forward(self, ids, last_only: bool = False) -> np.ndarray:
        """Feed token ids (T,) after what the session holds -> logits (T, vocab) f32, or (1, vocab)."""
        ids = self._checked(ids)
        out = []
        for start in range(0, ids.size, PREFILL_CHUNK):
            chunk = ids[start:start + PREFILL_CHUNK]
            out.append(self.net.forward(chunk, self.cache, self.n_past, last_only=last_only))
            self.n_past += chunk.size
        return out[-1] if last_only or len(out) == 1 else np.concatenate(out, 0)

    def snapshot(self, detach: bool = False) -> Snapshot:
        """The session's point now. By default KV caches give only their length (they are append-
        only, so it rolls them back); `detach` copies their filled part too, so the snapshot
        survives another conversation overwriting the caches (the server's session pool)."""
        return Snapshot(self.n_past, tuple(c.snapshot(detach) for c in self.cache))

    def restore(self, snap: Snapshot) -> None:
        for c, s in zip(self.cache, snap.states, strict=True):
            c.restore(s)
        self.n_past = snap.n_past
        self._verified = None


def load(path: str | Path, max_context: int | None = None) -> Engine:
    """Open a converted model directory (see docs/FORMAT.md)."""
    return Engine(path, max_context)


Model = Engine  # the former name


__all__ = ["Engine", "Model", "Snapshot", "load", "ContextError", "ConfigError", "WeightError"]
