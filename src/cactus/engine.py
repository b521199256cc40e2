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

    def forward(self, ids, last_only: bool = False) -> np.ndarray:
        """Feed token ids (T,) after what the session holds -> logits (T, vocab) f32, or (1, vocab)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size})")
        if self.n_past + ids.size > self.max_context:
            raise ContextError(f"{self.n_past + ids.size} tokens exceed the context window of {self.max_context}")
        self.weights.file.check_in_place()  # one fstat: an error, not a wrong answer or SIGBUS, after `cp` over it
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


def load(path: str | Path, max_context: int | None = None) -> Engine:
    """Open a converted model directory (see docs/FORMAT.md)."""
    return Engine(path, max_context)


Model = Engine  # the former name


__all__ = ["Engine", "Model", "Snapshot", "load", "ContextError", "ConfigError", "WeightError"]
