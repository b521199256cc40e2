"""Batched decoding: many sequences per pass over the weights.

Decode reads every weight once per step. `Batcher` runs the decode steps of several sequences
together, as one tape call over their tokens (each token of its own sequence at its own position,
with its own caches: models.lfm2.Model.step), so dense weights are read once for all of them and
each MoE expert once for the tokens that chose it. Every token's logits are bit-identical to
decoding its sequence alone (the tape's one-token kernels): batching changes no answer.

A `Slot` is an `Engine` (one sequence's caches) whose kernel work goes through the batcher. Each
slot is driven by its own thread running the ordinary `generate()` loop (api.Model on a slot: the
server's parallel slots, `Model.complete_batch`); the batcher's one thread runs all kernel work:

- each round, the single-token steps of every slot waiting for one, in one call (a slot that
  stepped in the last round is waited for a moment, so the batch stays whole while its thread
  samples: continuous batching, slots join and leave at any step);
- then at most one other job: a prefill chunk (PREFILL_CHUNK tokens, the same chunks a lone
  Engine runs, so prompts give the same bits) or a speculative verification. A long prompt is
  prefilled chunk by chunk between the others' decode steps: a job runs only once every slot of
  the last round has its next step in (or has left: generate() calls `done()` when it ends), so
  running streams never wait for more than one chunk.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from .engine import PREFILL_CHUNK, Engine

GATHER_S = 0.002  # longest wait for a slot of the last round to come back with its next token
OWED_S = 0.05     # ... before a prefill chunk or verification runs instead (see _loop)


class Batcher:
    """Runs the kernel work of its slots on one thread, decode steps batched (module docstring)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.net = engine.net
        self.cond = threading.Condition()
        self.steps: dict[Slot, int] = {}  # slot -> the token it waits to feed
        self.results: dict[Slot, object] = {}
        self.jobs: deque = deque()
        self.last: set[Slot] = set()  # the last round's slots
        self.owed: set[Slot] = set()  # slots decoding, owed a step before the next job
        self.last_s = 0.0             # ... and how long it took
        self.thread: threading.Thread | None = None
        self.steps_run = self.tokens_run = 0  # rounds and tokens, for tests and benchmarks

    def slot(self) -> Slot:
        return Slot(self.engine, self)

    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="cactus-batcher", daemon=True)
            self.thread.start()

    def step(self, slot: Slot, token: int) -> np.ndarray:
        """Feed one token of `slot` in the next round -> its (1, vocab) logits."""
        with self.cond:
            self._start()
            self.steps[slot] = token
            self.cond.notify_all()
            while slot not in self.results:
                self.cond.wait()
            out = self.results.pop(slot)
        if isinstance(out, BaseException):
            raise out
        return out

    def leave(self, slot: Slot) -> None:
        """`slot`'s generation ended: the next rounds and jobs wait for it no more."""
        with self.cond:
            self.last.discard(slot)
            self.owed.discard(slot)
            self.cond.notify_all()

    def run(self, fn):
        """Run fn() on the batcher's thread between rounds -> its result (or its exception)."""
        box: list = []
        with self.cond:
            self._start()
            self.jobs.append((fn, box))
            self.cond.notify_all()
            while not box:
                self.cond.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.steps and not self.jobs:
                    self.cond.wait()
                deadline = time.perf_counter() + min(GATHER_S, self.last_s / 4)
                while not self.last <= self.steps.keys() and (left := deadline - time.perf_counter()) > 0:
                    self.cond.wait(left)
                if not self.steps and self.jobs and self.owed:
                    # a job would run while decoding slots are between two steps (their threads
                    # sampling, or slow to get the CPU): they get their step first, so a stream
                    # waits for at most one chunk; a slot that neither steps nor leaves (done())
                    # within OWED_S is taken for idle
                    deadline = time.perf_counter() + OWED_S
                    while self.owed and not self.steps and (left := deadline - time.perf_counter()) > 0:
                        self.cond.wait(left)
                    if not self.steps:
                        self.owed = set()
                batch, self.steps = self.steps, {}
                job = self.jobs.popleft() if self.jobs else None
            if batch:
                self._round(batch)
            if job is not None:
                fn, box = job
                try:
                    result = (True, fn())
                except BaseException as e:  # noqa: BLE001 - handed to the thread that asked
                    result = (False, e)
                with self.cond:
                    box.append(result)
                    self.cond.notify_all()

    def _round(self, batch: dict[Slot, int]) -> None:
        slots = list(batch)
        t = time.perf_counter()
        try:
            logits = self.net.step(np.array([batch[s] for s in slots], np.int64), np.arange(len(slots)),
                                   np.array([s.n_past for s in slots], np.int64), [s.cache for s in slots])
            out = {s: logits[i:i + 1] for i, s in enumerate(slots)}
            for s in slots:
                s.n_past += 1
        except BaseException as e:  # noqa: BLE001 - every slot of the round hears it
            out = dict.fromkeys(slots, e)
        self.last, self.last_s = set(slots), time.perf_counter() - t
        self.owed = set(slots)
        self.steps_run += 1
        self.tokens_run += len(slots)
        with self.cond:
            self.results.update(out)
            self.cond.notify_all()


class Slot(Engine):
    """One sequence's caches on a shared engine's weights and network; its kernel work runs on
    the batcher's thread (single-token steps batched with the other slots')."""

    def __init__(self, engine: Engine, batcher: Batcher):  # noqa: D107 - shares, does not load
        self.path, self.weights, self.config = engine.path, engine.weights, engine.config
        self.quant, self.net, self.max_context = engine.quant, engine.net, engine.max_context
        self.batcher = batcher
        self.reset()

    def forward(self, ids, last_only: bool = False) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 1 and self.net.steps_by_tape:
            self._checked(ids)
            return self.batcher.step(self, int(ids[0]))
        out = [self.batcher.run(lambda c=ids[i:i + PREFILL_CHUNK]: Engine.forward(self, c, last_only))
               for i in range(0, max(ids.size, 1), PREFILL_CHUNK)]
        return out[-1] if last_only or len(out) == 1 else np.concatenate(out, 0)

    def verify(self, ids) -> np.ndarray:
        return self.batcher.run(lambda: Engine.verify(self, ids))

    def done(self) -> None:
        """A generation on this slot ended (generate() says so): it leaves the batch."""
        self.batcher.leave(self)
