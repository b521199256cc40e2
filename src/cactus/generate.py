"""The one core primitive: `generate()` turns prompt ids into a stream of `Token` events and one
`Finish`. The API, the CLI and the server all consume it; a non-streaming answer is a fold over it.

Also here: `Session` (which prompt tokens the model's caches already hold, so a conversation that
grows is prefilled only by its new part) and `TextGate` (stop strings and tool calls lifted out of
the streamed text, holding back what may still become one of them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .sampling import ConfidenceMeter, Sampler, SamplingOptions
from .tokenizer import Tokenizer
from .tools import TOOL_CALL_END, TOOL_CALL_START, extract_tool_calls

END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


class ContextFullError(ValueError):
    """The prompt does not fit in the model's context window."""


@dataclass(frozen=True)
class Token:
    id: int
    text: str            # response text this token releases ("" while held back); all of them
                         # concatenated are the response, each valid UTF-8 on its own
    probability: float   # the model's own T=1 probability of this token: its confidence


@dataclass(frozen=True)
class Finish:
    reason: str                   # "eos" | "stop" | "length" | "handoff"
    function_calls: list[dict]
    confidence: float             # mean token probability over the confidence window
    cloud_handoff: bool
    prefill_tokens: int           # prompt tokens actually run (the part the caches lacked)
    decode_tokens: int            # tokens sampled, the final eos included
    prefill_s: float
    first_token_s: float          # generate() start -> first token sampled (prefill included)
    decode_s: float               # first token -> end, time spent by the caller excluded


@dataclass
class _Boundary:
    """The caches right after a prompt's prefill: where the next conversation turn can start from."""
    snapshot: object
    n_ids: int
    logits: np.ndarray  # (V,) of the prompt's last token


class Session:
    """A model's caches plus the ids they hold. `prefill` runs only what the caches lack:

    - the new prompt extends what is held        -> feed the new ids only;
    - it diverges, but after the last prompt end -> restore that snapshot, feed from there
      (conv states cannot be rolled back, so that boundary is snapshotted at each prefill);
    - otherwise                                   -> reset and feed everything.
    """

    def __init__(self, model):
        self.model = model
        self.reset()

    def reset(self) -> None:
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
        common = _common_prefix(self.ids, prompt)
        b = self.boundary
        try:
            if b is not None and b.n_ids == len(prompt) == common:  # the very same prompt again
                self.model.restore(b.snapshot)
                self.ids = prompt
                return b.logits, 0
            if common == len(self.ids) and common < len(prompt):
                start = common
            elif b is not None and b.n_ids <= common and b.n_ids < len(prompt):
                self.model.restore(b.snapshot)
                start = b.n_ids
            else:
                self.model.reset()
                start = 0
            self.ids = prompt[:start]
            logits = self.model.forward(prompt[start:], last_only=True)[-1]
            self.ids = prompt
            self.boundary = _Boundary(self.model.snapshot(), len(prompt), np.array(logits, copy=True))
            return logits, len(prompt) - start
        except BaseException:
            self.reset()  # the caches may hold part of a chunk: start clean next time
            raise

    def step(self, token_id: int) -> np.ndarray:
        """Feed one generated id -> (V,) logits for the next."""
        try:
            logits = self.model.forward([token_id], last_only=True)[-1]
        except BaseException:
            self.reset()
            raise
        self.ids.append(int(token_id))
        return logits

    @property
    def full(self) -> bool:
        return self.model.n_past >= self.model.max_context


class TextGate:
    """Decoded text in, response text out.

    Text up to a stop string is released and the rest dropped; a well-formed tool-call block is
    removed and its calls collected (a malformed one is released as text); any tail that could
    still grow into a stop string or a tool-call start marker is held until it is decided.
    """

    def __init__(self, stop: Iterable[str] = ()):
        self.stop = tuple(stop)
        self.pending = ""
        self.in_call = False
        self.stopped = False
        self.calls: list[dict] = []

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        out = []
        while True:
            if self.in_call:
                end = self.pending.find(TOOL_CALL_END)
                if end < 0:
                    break
                end += len(TOOL_CALL_END)
                rest, calls = extract_tool_calls(self.pending[:end])  # rest: "" or the malformed block
                out.append(rest)
                self.calls += calls
                self.pending, self.in_call = self.pending[end:], False
                continue
            stop_at = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
            call_at = self.pending.find(TOOL_CALL_START)
            if stop_at >= 0 and (call_at < 0 or stop_at < call_at):
                out.append(self.pending[:stop_at])
                self.pending, self.stopped = "", True
                break
            if call_at >= 0:
                out.append(self.pending[:call_at])
                self.pending, self.in_call = self.pending[call_at:], True
                continue
            keep = _held_tail(self.pending, self.stop + (TOOL_CALL_START,))
            out.append(self.pending[:len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep:]
            break
        return "".join(out)

    def close(self, text: str = "") -> str:
        """The stream ended: release what is held (an unterminated tool call counts if it parses)."""
        out = self.feed(text)
        if self.stopped:
            return out
        rest, calls = extract_tool_calls(self.pending) if self.in_call else (self.pending, [])
        self.calls += calls
        self.pending, self.in_call = "", False
        return out + rest


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
             stop_ids: Iterable[int] | None = None) -> Iterator[Token | Finish]:
    """Prefill `prompt_ids` (only what `session` lacks), then sample until eos, a stop string,
    `max_tokens`, a full context, or a settled-low confidence with `confidence_threshold` set.

    Yields one `Token` per sampled id (the eos too, with text ""), then one `Finish`.
    """
    clock = _Clock()
    prompt = [int(i) for i in prompt_ids]
    stop_ids = eos_ids(session.model, tokenizer) if stop_ids is None else frozenset(stop_ids)
    logits, n_prefill = session.prefill(prompt)
    prefill_s = clock.now()
    sampler = Sampler(options)
    meter = ConfidenceMeter(options.confidence_window, options.confidence_threshold)
    detok, gate = tokenizer.stream(), TextGate(options.stop)
    history = list(prompt)  # for the repetition penalty: prompt and answer, as transformers
    first_token_s = 0.0
    for n in range(1, options.max_tokens + 1):
        token, p = sampler(logits, history)
        if n == 1:
            first_token_s = clock.now()
        meter.add(p)
        if token in stop_ids:
            reason, text = "eos", gate.close(detok.flush())
        else:
            text = gate.feed(detok.push(token))
            history.append(token)
            reason = ("stop" if gate.stopped else "handoff" if meter.settled_low
                      else "length" if n == options.max_tokens or session.full else None)
            if reason is not None:
                text += gate.close(detok.flush())
        with clock.paused():
            yield Token(token, text, p)
        if reason is not None:
            break
        logits = session.step(token)
    yield Finish(reason=reason, function_calls=gate.calls,
                 confidence=meter.value, cloud_handoff=meter.handoff,
                 prefill_tokens=n_prefill, decode_tokens=n, prefill_s=prefill_s, first_token_s=first_token_s,
                 decode_s=clock.now() - first_token_s)


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


def _held_tail(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best


def _common_prefix(a: list[int], b: list[int]) -> int:
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
    "TextGate",
    "Token",
    "collect",
    "eos_ids",
    "generate",
]
