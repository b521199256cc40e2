"""Speculative decoding: several tokens per pass over the weights, the same answer.

Decode reads every weight once per token and is bound by memory bandwidth; one forward over the
current token and K drafted ones (`Engine.verify`) costs little more than one step. A `Speculator`
sits where `generate()` feeds each sampled token: it drafts what may follow, verifies token + drafts
in one forward, and hands the loop the logits after each draft for as long as the loop samples
exactly that draft. The loop itself is unchanged: it samples every token from the model's own
logits with its own sampler (temperature, top-p, repetition penalty, grammar mask, seed), so
streaming, stop strings, tool-call gating and confidence see the same tokens in the same order.

Acceptance is the sampler's own rule. Drafts here are point guesses (prompt lookup, or a draft
model's argmax), and for a point-mass draft q the standard rejection rule (accept d with
probability min(1, p(d)/q(d)) = p(d), else sample from (p - q)+ renormalised, i.e. p without d) is
exactly "sample x ~ p, accept iff x == d": the output distribution is p's, and greedy is exact match.
A rejected draft's successors are dropped with `Engine.keep` (KV cut, conv state rebuilt from its
recorded inputs: nothing recomputed). Each token's logits are bit-identical to decoding it alone
(the tape's one-token kernels), so greedy output is token-for-token the same with and without.

Drafters:
- `PromptLookup`: the tokens that followed the latest earlier occurrence of the last n tokens
  (n = 4, then 3) in prompt + answer: free, and long correct runs where the answer repeats the
  context (code, file contents, tool output: coding agents). Off by itself where it keeps failing.
- `DraftModel`: a small converted model with the same tokenizer (e.g. LFM2-350M for a larger LFM2),
  drafting greedily with its own caches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class PromptLookup:
    """Drafts by n-gram match over the history (prompt + answer so far). An index from each
    n-gram to the position after its latest occurrence is kept up to date as the history grows."""

    NGRAMS = (4, 3)  # with pairs too, the demo's answers that repeat nothing drafted 9 tokens per 100, took 0

    def __init__(self):
        self.index: dict[tuple, int] = {}
        self.indexed = 0  # history positions whose n-grams ending there are in the index

    def draft(self, history: list[int], k: int) -> list[int]:
        h, end = history, len(history) - 1  # n-grams ending before the last token: earlier occurrences
        for i in range(self.indexed, end):
            for n in self.NGRAMS:
                if i + 1 >= n:
                    self.index[tuple(h[i + 1 - n:i + 1])] = i + 1
        self.indexed = max(self.indexed, end)
        for n in self.NGRAMS:
            if len(h) >= n and (at := self.index.get(tuple(h[-n:]))) is not None:
                return h[at:at + k]
        return []


class DraftModel:
    """A draft model (a converted LFM2 model with the same tokenizer) on its own `Session`: each
    `draft` brings its caches to the history (only what they lack), drafts k argmax tokens, and
    goes back to the history's end (the session's prompt boundary)."""

    def __init__(self, session):
        self.session = session

    def draft(self, history: list[int], k: int) -> list[int]:
        s = self.session
        k = min(k, s.model.max_context - len(history))
        if k < 1:
            return []
        logits, _ = s.prefill(history)
        out = []
        try:
            for i in range(k):
                out.append(int(np.argmax(logits)))
                if i + 1 < k:
                    logits = s.model.forward(out[-1:], last_only=True)[-1]
        finally:
            s.model.restore(s.boundary.snapshot)
        return out


class Speculator:
    """Feeds the loop's tokens to a `Session`, speculating ahead. `step(token)` -> logits after
    it, as `Session.step`; `settle()` drops whatever was verified beyond the tokens the loop took.

    K adapts: after a fully accepted run it grows by 2 (up to `max_k`), after a rejection it is set
    to the accepted length + 1; after 4 verifications in a row accept nothing, drafting pauses for
    16 tokens, doubling up to 256 while it keeps failing (a turn that repeats nothing costs a few
    wasted two-token verifications, then nothing)."""

    def __init__(self, session, drafter, history: list[int], max_k: int):
        self.session, self.drafter, self.history, self.max_k = session, drafter, history, max_k
        self.k = min(4, max_k)
        self.pending: list[int] = []       # verified drafts the loop has not taken yet
        self.logits: list[np.ndarray] = []  # the logits after each of them
        self.verified = 0                   # tokens of the last verification (its current token included)
        self.misses, self.pause, self.paused = 0, 16, 0
        self.drafted = self.accepted = 0    # totals, for benchmarks

    @property
    def full(self) -> bool:
        """Do the loop's tokens fill the context (drafts awaiting a decision not counted)?"""
        model = self.session.model
        return model.n_past - len(self.pending) >= model.max_context

    def step(self, token: int) -> np.ndarray:
        """`history` ends with `token` (generate appends each fed token to it first)."""
        if self.pending:
            if token == self.pending[0]:
                self.pending.pop(0)
                if not self.pending:
                    self._account(self.verified - 1)
                return self.logits.pop(0)
            self._reject()
        drafts = self._draft()
        if not drafts:
            return self.session.step(token)
        logits = self.session.verify([token, *drafts])
        self.verified = 1 + len(drafts)
        self.pending, self.logits = drafts, list(logits[1:])
        self.drafted += len(drafts)
        return logits[0]

    def _draft(self) -> list[int]:
        if self.paused:
            self.paused -= 1
            return []
        model = self.session.model
        k = min(self.k, model.max_context - model.n_past - 1)
        drafts = self.drafter.draft(self.history, k) if k > 0 else []
        vocab = model.config.vocab_size  # a draft model's vocabulary may be padded wider
        return next((drafts[:i] for i, d in enumerate(drafts) if d >= vocab), drafts)

    def _reject(self) -> None:
        """The loop sampled another token than the next draft: keep what it took, drop the rest."""
        taken = self.verified - len(self.pending)
        self._account(taken - 1)
        self.session.keep(taken)
        self.pending, self.logits = [], []

    def _account(self, good: int) -> None:
        """A verification decided: `good` of its drafts were taken."""
        self.accepted += good
        self.k = min(self.max_k, self.k + 2) if good == self.verified - 1 else max(1, good + 1)
        self.misses = self.misses + 1 if good == 0 else 0
        if self.misses >= 4:
            self.paused, self.pause, self.misses = self.pause, min(256, self.pause * 2), 0
        elif good:
            self.pause = 16
        self.verified = 0

    def settle(self) -> None:
        """The loop is done: the caches keep exactly the tokens it fed."""
        if self.pending:
            self._reject()


def same_tokenizer(a: Path, b: Path) -> bool:
    """Do two model directories tokenize alike (the same vocabulary, id for id)?"""
    from .tokenizer import Tokenizer

    return Tokenizer(a).vocab() == Tokenizer(b).vocab()
