"""The one core primitive: `generate()` turns prompt ids into a stream of `Token` events and one
`Finish`. The API, the CLI and the server all consume it; a non-streaming answer is a fold over it.

Also here: `Session` (which prompt tokens the model's caches already hold, so a conversation that
grows is prefilled only by its new part). The streamed text is split into answer, reasoning and
tool calls by `tools.OutputParser`, the one output parser.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import speculative
from .grammar import Plan
from .sampling import ConfidenceMeter, Sampler, SamplingOptions
from .tokenizer import Tokenizer
from .tools import THINK_END, THINK_START, OutputParser

END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


class ContextFullError(ValueError):
    """The prompt does not fit in the model's context window."""


@dataclass(frozen=True)
class Token:
    id: int
    text: str            # response text this token releases ("" while held back); all of them
                         # concatenated are the response, each valid UTF-8 on its own
    probability: float   # the model's own T=1 probability of this token: its confidence
    logprob: float | None = None  # with the logprobs option: log of `probability` (unconstrained)
    top_logprobs: tuple[tuple[int, float], ...] = ()  # ... and the likeliest ids, best first
    reasoning: str = ""  # reasoning text this token releases (the think block's; never in `text`)


@dataclass(frozen=True)
class Finish:
    reason: str                   # "eos" | "stop" | "length" | "handoff" | "cancelled"
    function_calls: list[dict]
    reasoning: str                # the think block's text ("" when the model did not reason)
    reasoning_tokens: int         # tokens sampled inside it, its tags included
    confidence: float             # mean token probability over the confidence window (answer tokens)
    cloud_handoff: bool
    prefill_tokens: int           # prompt tokens actually run (the part the caches lacked)
    decode_tokens: int            # tokens sampled, the final eos included
    prefill_s: float
    first_token_s: float          # generate() start -> first token sampled (prefill included)
    decode_s: float               # first token -> end, time spent by the caller excluded
    drafted_tokens: int = 0       # speculative decoding: tokens drafted and verified
    accepted_tokens: int = 0      # ... and those of them the answer took


@dataclass
class _Boundary:
    """The caches right after a prompt's prefill: where the next conversation turn can start from."""
    snapshot: object
    n_ids: int
    logits: np.ndarray  # (V,) of the prompt's last token


@dataclass
class _Saved:
    """A conversation set aside for another: its ids, the caches after them (a detached snapshot:
    it owns its KV) and its last prompt boundary (whose KV is a prefix of `end`'s)."""
    ids: list[int]
    end: object
    boundary: _Boundary | None
    nbytes: int


class Session:
    """A model's caches plus the ids they hold. `prefill` runs only what the caches lack; a state
    (the live caches, or a conversation saved in the pool) serves a prompt from

    - its end, when the prompt extends its ids                       -> feed the new ids only;
    - its last prompt boundary, when the prompt diverges after that  -> restore it, feed from there
      (conv states cannot be rolled back, so that boundary is snapshotted at each prefill);
    - nowhere                                                         -> reset and feed everything.

    With `pool_bytes` > 0, a conversation that another prompt displaces is kept in a pool (LRU,
    at most that many bytes of snapshots), so conversations that take turns each prefill only
    their new tokens; the prompt continues whichever state serves it from furthest.
    """

    def __init__(self, model, pool_bytes: int = 0):
        self.model = model
        self.pool_bytes = pool_bytes
        self.pool: list[_Saved] = []  # least recently used first
        self.drafters: dict = {}  # draft model path -> its DraftModel
        self.reset()

    def reset(self) -> None:
        """Forget every conversation (the pool's too)."""
        self.pool = []
        self._reset_live()

    def _reset_live(self) -> None:
        self.model.reset()
        self.ids: list[int] = []
        self.boundary: _Boundary | None = None

    def prefill(self, prompt_ids: Iterable[int]) -> tuple[np.ndarray, int]:
        """Make the caches hold exactly `prompt_ids` -> ((V,) logits after its last id, ids run)."""
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) > self.model.max_context:
            raise ContextFullError(f"the prompt is {len(prompt)} tokens; the context window is "
                                   f"{self.model.max_context}")
        try:
            (start, how), saved = _resume_point(self.ids, self.boundary, prompt), None
            for i, s in enumerate(self.pool):
                point = _resume_point(s.ids, s.boundary, prompt)
                if point[0] > start:
                    (start, how), saved = point, i
            if saved is not None or not how:  # the live conversation is displaced
                saved = self.pool.pop(saved) if saved is not None else None
                self._set_aside()
                if saved is not None:
                    self.model.restore(saved.end)
                    self.ids, self.boundary = saved.ids, saved.boundary
            b = self.boundary
            if how == "same":  # the very same prompt again
                self.model.restore(b.snapshot)
                self.ids = prompt
                return b.logits, 0
            if how == "boundary":
                self.model.restore(b.snapshot)
            elif not how:
                self.model.reset()
            self.ids = prompt[:start]
            logits = self.model.forward(prompt[start:], last_only=True)[-1]
            self.ids = prompt
            self.boundary = _Boundary(self.model.snapshot(), len(prompt), np.array(logits, copy=True))
            return logits, len(prompt) - start
        except BaseException:
            self._reset_live()  # the caches may hold part of a chunk: start clean next time
            raise

    def _set_aside(self) -> None:
        """Save the live conversation in the pool (evicting the least recently used past the budget)."""
        if self.pool_bytes <= 0 or not self.ids:
            return
        end, b = self.model.snapshot(detach=True), self.boundary
        size = _nbytes(end) + (_nbytes(b.snapshot) + b.logits.nbytes if b is not None else 0)
        self.pool.append(_Saved(self.ids, end, b, size))
        while sum(s.nbytes for s in self.pool) > self.pool_bytes:
            self.pool.pop(0)

    def step(self, token_id: int) -> np.ndarray:
        """Feed one generated id -> (V,) logits for the next."""
        try:
            logits = self.model.forward([token_id], last_only=True)[-1]
        except BaseException:
            self._reset_live()
            raise
        self.ids.append(int(token_id))
        return logits

    def verify(self, token_ids: list[int]) -> np.ndarray:
        """Feed a generated id and drafted ones in one forward -> (n, V) logits after each
        (speculative.py); `keep` then drops the drafts not taken."""
        try:
            logits = self.model.verify(token_ids)
        except BaseException:
            self._reset_live()
            raise
        self.ids.extend(int(t) for t in token_ids)
        self._verified = len(token_ids)
        return logits

    def keep(self, n: int) -> None:
        """Keep the first n ids of the last `verify`."""
        self.model.keep(n)
        del self.ids[len(self.ids) - (self._verified - n):]

    def speculator(self, options: SamplingOptions, history: list[int]) -> speculative.Speculator | None:
        """The `Speculator` for a generation's options, or None: speculation off, or a model that
        cannot verify (the numpy references step token by token anyway)."""
        mode = options.speculative
        if mode == "off" or not getattr(getattr(self.model, "net", None), "steps_by_tape", False):
            return None
        if mode == "prompt":
            drafter = speculative.PromptLookup()  # indexes this generation's history
        else:  # a draft model: kept (one at a time: its caches and weights are not small)
            if mode not in self.drafters:
                self.drafters = {mode: speculative.DraftModel(Session(self._load_draft(mode)))}
            drafter = self.drafters[mode]
        return speculative.Speculator(self, drafter, history, options.draft_tokens)

    def _load_draft(self, path: str):
        from .engine import load

        if not speculative.same_tokenizer(self.model.path, Path(path)):
            raise ValueError(f"draft model {path}: its tokenizer differs from the model's ({self.model.path})")
        return load(path, self.model.max_context)

    @property
    def full(self) -> bool:
        return self.model.n_past >= self.model.max_context


def _resume_point(ids: list[int], boundary: _Boundary | None, prompt: list[int]) -> tuple[int, str]:
    """Where a state holding `ids` serves `prompt` from -> (ids kept, how): how is "end" (extend
    the ids), "boundary" (from the last prompt boundary), "same" (that boundary is the prompt) or
    "" (nowhere)."""
    common = common_prefix(ids, prompt)
    if boundary is not None and boundary.n_ids == len(prompt) == common:
        return len(prompt), "same"
    if common == len(ids) and common < len(prompt):
        return common, "end"
    if boundary is not None and boundary.n_ids <= common and boundary.n_ids < len(prompt):
        return boundary.n_ids, "boundary"
    return 0, ""


def _nbytes(snapshot) -> int:
    return getattr(snapshot, "nbytes", 0)  # test engines' snapshots own no arrays


def eos_ids(model, tokenizer: Tokenizer, extra: Iterable[int] = ()) -> frozenset[int]:
    """Ids that end the answer: the config's eos ids, the tokenizer's eos, and the end-of-turn tokens."""
    ids = set(getattr(model.config, "eos_token_id", None) or ())
    ids.update(extra)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for name in END_OF_TURN_TOKENS:
        if (i := tokenizer.token_to_id(name)) is not None:
            ids.add(i)
    return frozenset(int(i) for i in ids)


def generate(session: Session, tokenizer: Tokenizer, prompt_ids: Iterable[int], options: SamplingOptions,
             stop_ids: Iterable[int] | None = None, cancel: threading.Event | None = None,
             grammar: Plan | None = None, tools: list | None = None) -> Iterator[Token | Finish]:
    """Prefill `prompt_ids` (only what `session` lacks), then sample until eos, a stop string,
    `max_tokens`, a full context, a settled-low confidence with `confidence_threshold` set, or
    `cancel` being set (checked after each token). With `grammar`, each id is sampled among those
    its constraint allows; confidence still reads the model's own distribution. `tools` (the
    declared schemas) let the output parser take a bare `[name(...)]` answer for a call.

    A think block (`<think>...</think>` at the start of the answer, or opened by the prompt) is
    reasoning: it comes out in `Token.reasoning`, not in `Token.text`; where the tokenizer has the
    tags as special tokens the split is made on their ids. `max_thinking_tokens` closes the block
    when spent. Confidence is measured on the answer's tokens only (docs/CONFIDENCE.md).

    Yields one `Token` per sampled id (the eos too, with text ""), then one `Finish`.
    """
    clock = _Clock()
    prompt = [int(i) for i in prompt_ids]
    stop_ids = eos_ids(session.model, tokenizer) if stop_ids is None else frozenset(stop_ids)
    logits, n_prefill = session.prefill(prompt)
    prefill_s = clock.now()
    sampler = Sampler(options)
    meter = ConfidenceMeter(options.confidence_window, options.confidence_threshold)
    think = Think(tokenizer)
    detok = tokenizer.stream()
    parser = OutputParser(tools, reasoning=think.opened_by(prompt), stop=options.stop, think=think.tags)
    history = list(prompt)  # for the repetition penalty: prompt and answer, as transformers
    constraint = grammar.start(prompt) if grammar is not None else None
    first_token_s, thought = 0.0, 0
    forced = think.close_ids() if options.max_thinking_tokens == 0 and parser.in_reasoning else []
    spec = session.speculator(options, history)
    stepper = spec if spec is not None else session
    try:
        for n in range(1, options.max_tokens + 1):
            if forced:  # the thinking budget is spent: the block is closed for the model
                token = forced.pop(0)
                logprob, _ = Sampler.logprobs(logits, token, 0)
                p = math.exp(logprob)
            else:
                token, p = sampler(logits, history, constraint.allowed() if constraint is not None else None)
            if constraint is not None:
                constraint.advance(token)
            logprob, top = (sampler.logprobs(logits, token, options.logprobs) if options.logprobs is not None
                            else (None, ()))
            if n == 1:
                first_token_s = clock.now()
            was_thinking = parser.in_reasoning
            if token in stop_ids:
                reason, (text, reasoning) = "eos", parser.close(think.text(detok.flush(), None))
            else:
                reason, (text, reasoning) = None, parser.feed(think.text(detok.push(token), token))
                history.append(token)
            if was_thinking or parser.in_reasoning:
                thought += 1
                if (options.max_thinking_tokens is not None and thought >= options.max_thinking_tokens
                        and parser.in_reasoning and not forced):
                    forced = think.close_ids()
            else:
                meter.add(p)  # the answer's tokens (reasoning explores; the answer is what is trusted)
            if reason is None:
                reason = ("stop" if parser.stopped else "handoff" if meter.settled_low
                          else "length" if n == options.max_tokens or stepper.full
                          else "cancelled" if cancel is not None and cancel.is_set() else None)
                if reason is not None:
                    more, more_reasoning = parser.close(think.text(detok.flush(), None))
                    text, reasoning = text + more, reasoning + more_reasoning
            with clock.paused():
                yield Token(token, text, p, logprob, top, reasoning)
            if reason is not None:
                break
            logits = stepper.step(token)
    finally:
        if spec is not None:
            spec.settle()  # the caches keep the fed tokens only
        if (done := getattr(session.model, "done", None)) is not None:
            done()  # a batch slot (batch.Slot) leaves its batch: nobody waits for its next step
    yield Finish(reason=reason, function_calls=parser.calls, reasoning=parser.reasoning, reasoning_tokens=thought,
                 confidence=meter.value, cloud_handoff=meter.handoff,
                 prefill_tokens=n_prefill, decode_tokens=n, prefill_s=prefill_s, first_token_s=first_token_s,
                 decode_s=clock.now() - first_token_s, drafted_tokens=spec.drafted if spec else 0,
                 accepted_tokens=spec.accepted if spec else 0)


class Think:
    """Where a tokenizer's think block starts and ends. With `<think>`/`</think>` as special tokens,
    the split is made on their ids: the parser sees private-use marks in their place, which no
    decoded ordinary token stands for (ids are read from the tokenizer: LFM2.5's 128k vocabulary
    moved them). Without them, the tags are plain text and the parser reads the text."""

    OPEN, CLOSE = "\U000f0001", "\U000f0002"  # Unicode plane-15 private use

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.open_id, self.close_id = (tokenizer.special_tokens.get(t) for t in (THINK_START, THINK_END))
        self.by_id = self.open_id is not None and self.close_id is not None
        self.tags = (self.OPEN, self.CLOSE) if self.by_id else (THINK_START, THINK_END)

    def text(self, piece: str, token: int | None) -> str:
        """A decoded piece as the parser reads it: a think tag's id becomes its mark."""
        if self.by_id and token is not None and token in (self.open_id, self.close_id):
            tag, mark = (THINK_START, self.OPEN) if token == self.open_id else (THINK_END, self.CLOSE)
            if piece.endswith(tag):
                return piece[:-len(tag)] + mark
        return piece

    def opened_by(self, prompt: list[int]) -> bool:
        """Did the prompt open a think block and leave it open (a template ending in `<think>`)?"""
        if self.by_id:
            tail = prompt[-8:]
            last = {t: i for i, t in enumerate(tail)}
            return last.get(self.open_id, -1) > last.get(self.close_id, -1)
        tail = self.tokenizer.decode(prompt[-8:])
        return tail.rfind(THINK_START) > tail.rfind(THINK_END)

    def close_ids(self) -> list[int]:
        return [self.close_id] if self.by_id else self.tokenizer.encode(THINK_END)


@dataclass
class Generation:
    """A whole answer: the fold of a `generate()` stream."""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish: Finish | None = None


def collect(events: Iterable[Token | Finish]) -> Generation:
    out, pieces = Generation(), []
    for event in events:
        if isinstance(event, Token):
            out.token_ids.append(event.id)
            pieces.append(event.text)
        else:
            out.finish = event
    out.text = "".join(pieces)
    return out


class _Clock:
    """Seconds since creation, not counting time spent paused (the consumer's, between yields)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.away = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start - self.away

    @contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.away += time.perf_counter() - t


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids a and b share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


__all__ = [
    "ContextFullError",
    "Finish",
    "Generation",
    "Session",
    "Think",
    "Token",
    "collect",
    "common_prefix",
    "eos_ids",
    "generate",
]
