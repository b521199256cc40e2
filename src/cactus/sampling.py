"""Sampling options, the next-token sampler, and the confidence meter behind cloud handoff.

Confidence is the probability the model's own T=1 distribution gives each chosen token, averaged
over the first `confidence_window` tokens (docs/CONFIDENCE.md says why).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from . import grammar

ALIASES = {"max_new_tokens": "max_tokens", "n_predict": "max_tokens", "stop_sequences": "stop"}


class OptionError(ValueError):
    """An unknown option, or a value out of range. `name` and `problem` say which and why
    (`'top_p'`, `must be in (0, 1], got 2.0`), for callers that name the field their own way."""

    def __init__(self, message: str, name: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.name, self.problem = name, problem


def _bad(name: str, problem: str) -> OptionError:
    return OptionError(f"option {name!r} {problem}", name, problem)


def check_option(name: str, value: Any) -> Any:
    """One option's value checked (and normalized: ints to float where a number is meant) the way
    SamplingOptions checks it; the one place the ranges live. Raises OptionError."""
    name = ALIASES.get(name, name)
    if name not in _CHECKS:
        raise OptionError(f"unknown option {name!r}; known options: {', '.join(sorted(_CHECKS))}", name,
                          "is not a known option")
    return _CHECKS[name](name, value)


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0           # 0 = greedy: exactly the argmax
    top_k: int = 0                     # 0 = off
    top_p: float = 1.0                 # 1 = off
    min_p: float = 0.0                 # 0 = off; keep tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0    # 1 = off; as transformers: logit / r if > 0 else logit * r
    seed: int | None = None            # None = fresh randomness each call
    max_tokens: int = 512
    stop: tuple[str, ...] = ()         # strings that end the answer (not included in it)
    confidence_threshold: float | None = None  # below it: cloud_handoff and stop early
    confidence_window: int = 16        # tokens the confidence is averaged over
    # structured generation (grammar.py): what a tool call or the whole answer must look like
    tool_choice: Any = "auto"          # "auto" | "none" | "required" | {"name": tool}
    parallel_tool_calls: bool = True   # False: one call per call block
    response_format: dict | None = None  # None (free text) | {"type", "schema"}
    logprobs: int | None = None        # None = off; else each token's logprob and this many alternatives
    # reasoning models (generate.py): the think block
    enable_thinking: bool | None = None     # passed to chat templates that read it; None: the template's default
    max_thinking_tokens: int | None = None  # None = no budget; when spent, `</think>` is written for the model
    stream_thinking: bool = False           # callbacks also get the reasoning, between <think> and </think>
    # speculative decoding (speculative.py): the same tokens, several per pass over the weights
    speculative: str = "prompt"        # "off" | "prompt" (n-gram lookup in the context) | a draft model directory
    draft_tokens: int = 8              # most tokens drafted per verification (K adapts below it)

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _CHECKS[f.name](f.name, getattr(self, f.name)))

    @classmethod
    def parse(cls, options: Any = None, defaults: dict | None = None, **kwargs) -> SamplingOptions:
        """Options from (lowest priority first) `defaults`, `options` (a dict, a JSON object string
        or SamplingOptions) and keyword arguments. Unknown names and bad values raise OptionError."""
        merged: dict[str, Any] = {}
        for source, what in ((defaults, "defaults"), (options, "options"), (kwargs, "keyword options")):
            merged.update(_as_dict(source, what))
        return cls(**merged)


def _as_dict(source: Any, what: str) -> dict:
    if source is None:
        return {}
    if isinstance(source, SamplingOptions):
        return {f.name: getattr(source, f.name) for f in fields(source)}
    if isinstance(source, (str, bytes)):
        if not source.strip():
            return {}
        try:
            source = json.loads(source)
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser goes
            raise OptionError(f"{what}: not valid JSON ({e})") from None
    if not isinstance(source, dict):
        raise OptionError(f"{what} must be an object of option names to values, got {type(source).__name__}")
    known = {f.name for f in fields(SamplingOptions)}
    out = {}
    for key, value in source.items():
        name = ALIASES.get(key, key)
        if name not in known:
            raise OptionError(f"unknown option {_show(key)}; known options: {', '.join(sorted(known))}")
        out[name] = value
    return out


def _number(name, value, lo, hi, lo_open=False, hi_open=False, integer=False):
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not _finite(value)):
        raise _bad(name, f"must be {kind}, got {_show(value)}")
    below = value <= lo if lo_open else value < lo
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        left, right = "(" if lo_open else "[", ")" if hi_open or hi is None else "]"
        upper = "inf" if hi is None else hi
        raise _bad(name, f"must be in {left}{lo}, {upper}{right}, got {_show(value)}")
    return int(value) if integer else float(value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range
        return False


def _show(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: repr, cut short (a 10,000-digit int has no repr)."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= limit else text[:limit] + "..."


def _stop(name, value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
        raise _bad(name, f"must be a string or a list of non-empty strings, got {_show(value)}")
    return tuple(value)


def _bool(name, value):
    if not isinstance(value, bool):
        raise OptionError(f"option {name!r} must be true or false, got {value!r}", name,
                          f"must be true or false, got {value!r}")
    return value


def _grammar_check(check, name, value):
    try:
        return check(name, value)
    except grammar.GrammarError as e:
        raise OptionError(str(e), name, str(e)) from None


def _speculative(name, value):
    if value in ("off", "prompt"):
        return value
    if not isinstance(value, str) or not value:
        raise _bad(name, f'must be "off", "prompt" or a draft model directory, got {_show(value)}')
    from pathlib import Path

    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise _bad(name, f'must be "off", "prompt" or a converted model directory; {value} has no config.json')
    return str(path.resolve())


def _optional(check):
    return lambda name, value: None if value is None else check(name, value)


_CHECKS = {
    "temperature": lambda n, v: _number(n, v, 0, None),
    "top_k": lambda n, v: _number(n, v, 0, None, integer=True),
    "top_p": lambda n, v: _number(n, v, 0, 1, lo_open=True),
    "min_p": lambda n, v: _number(n, v, 0, 1),
    "repetition_penalty": lambda n, v: _number(n, v, 0, None, lo_open=True),
    "seed": _optional(lambda n, v: _number(n, v, 0, 2**63 - 1, integer=True)),
    "max_tokens": lambda n, v: _number(n, v, 1, None, integer=True),
    "stop": _stop,
    "confidence_threshold": _optional(lambda n, v: _number(n, v, 0, 1)),
    "confidence_window": lambda n, v: _number(n, v, 1, None, integer=True),
    "tool_choice": lambda n, v: _grammar_check(grammar.check_tool_choice, n, v),
    "parallel_tool_calls": lambda n, v: _bool(n, v),
    "response_format": lambda n, v: _grammar_check(grammar.check_response_format, n, v),
    "logprobs": _optional(lambda n, v: _number(n, v, 0, 20, integer=True)),
    "enable_thinking": _optional(_bool),
    "max_thinking_tokens": _optional(lambda n, v: _number(n, v, 0, None, integer=True)),
    "stream_thinking": _bool,
    "speculative": _speculative,
    "draft_tokens": lambda n, v: _number(n, v, 1, 32, integer=True),
}


def _weights(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Unnormalized probabilities exp((z - max) / T), float32 in [0, 1]; the best token gets 1.
    The max is subtracted first, so exp never overflows; exp runs in float32 (15x faster than
    float64 over a 65k vocabulary) and every sum over it accumulates in float64."""
    return np.exp((z - z.max()) / np.float32(temperature))


class Sampler:
    """Picks the next id from a logits row. Same seed and same logits -> same ids.

    Order as transformers: repetition penalty, then temperature, top-k, top-p, min-p. The
    truncations only ever look at the head of the distribution, found above a falling cutoff,
    so a 65k vocabulary is never fully sorted.
    """

    def __init__(self, options: SamplingOptions):
        self.options = options
        self.rng = np.random.default_rng(options.seed)

    def __call__(self, logits: np.ndarray, history=(), allowed: np.ndarray | None = None) -> tuple[int, float]:
        """(V,) logits, ids seen so far, optionally the (V,) bool mask of ids a grammar allows ->
        (chosen id, the probability the model's own unconstrained T=1 distribution gives it: the
        token's confidence). The mask acts before every other rule, greedy or sampled."""
        z = np.asarray(logits, dtype=np.float32).reshape(-1)
        if not np.isfinite(z).all():
            raise FloatingPointError("the model produced non-finite logits")
        token = self.choose(z if allowed is None else np.where(allowed, z, np.float32(-np.inf)), history)
        w = _weights(z)
        return token, float(w[token] / w.sum(dtype=np.float64))

    @staticmethod
    def logprobs(logits: np.ndarray, token: int, k: int) -> tuple[float, tuple[tuple[int, float], ...]]:
        """The model's own (T=1, unconstrained) log-probability of `token`, and its k likeliest
        ids with theirs, best first."""
        z = np.asarray(logits, dtype=np.float32).reshape(-1)
        lse = float(z.max()) + math.log(float(_weights(z).sum(dtype=np.float64)))
        top = np.argpartition(-z, k - 1)[:k] if k else np.empty(0, dtype=np.int64)
        top = top[np.argsort(-z[top], kind="stable")]
        return float(z[token]) - lse, tuple((int(i), float(z[i]) - lse) for i in top)

    def choose(self, logits: np.ndarray, history=()) -> int:
        if self.options.temperature == 0.0:
            return int(np.argmax(self._penalized(logits, history)))
        ids, w = self.distribution(logits, history)
        cum = np.cumsum(w, dtype=np.float64)
        i = min(int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right")), w.size - 1)
        return int(ids[i])

    def distribution(self, logits: np.ndarray, history=()) -> tuple[np.ndarray, np.ndarray]:
        """What sampling draws from: (ids still in play, their unnormalized float32 weights)."""
        o = self.options
        z = self._penalized(logits, history)
        w = _weights(z, o.temperature or 1.0)  # (V,) the best token weighs 1
        ids = None  # None: the whole vocabulary
        if o.top_k or o.top_p < 1.0:
            ids = self._head(w, o.top_k, o.top_p)
            if o.top_k:
                ids = ids[:o.top_k]
            if o.top_p < 1.0:
                cum = np.cumsum(w[ids], dtype=np.float64)
                # after top-k the nucleus is taken from the renormalized top-k, as transformers does
                total = cum[-1] if o.top_k else w.sum(dtype=np.float64)
                ids = ids[:int(np.searchsorted(cum / total, o.top_p)) + 1]
        if o.min_p > 0.0:  # p >= min_p * p_max, and p_max has weight 1
            keep = np.flatnonzero((w if ids is None else w[ids]) >= o.min_p)
            ids = keep if ids is None else ids[keep]
        if ids is None:
            return np.arange(w.size), w
        return ids, w[ids]

    def _penalized(self, logits: np.ndarray, history) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float32).reshape(-1)
        r = self.options.repetition_penalty
        if r != 1.0 and len(history):
            z = z.copy()
            seen = np.unique(np.asarray(history, dtype=np.int64))
            z[seen] = np.where(z[seen] > 0, z[seen] / r, z[seen] * r)
        return z

    @staticmethod
    def _head(w: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
        """Ids sorted by weight, enough of them to hold the top-k (or the top-p mass) exactly.

        Every id outside `w >= cut` weighs less than every id inside, so the sorted head of
        the inside is the sorted head of the whole vocabulary."""
        cut, total = 1e-4, None
        while True:
            ids = np.flatnonzero(w >= cut)
            if top_k:
                enough = ids.size >= top_k
            else:
                total = w.sum(dtype=np.float64) if total is None else total
                enough = w[ids].sum(dtype=np.float64) >= top_p * total
            if enough or cut == 0.0:
                return ids[np.argsort(-w[ids])]
            cut = cut * 1e-4 if cut > 1e-36 else 0.0


class ConfidenceMeter:
    """Running confidence over the first `window` tokens, and the early handoff decision.

    value: mean token probability over the first `window` tokens (all of them if fewer).
    settled_low: True as soon as that mean is bound to end below `threshold` even if every
    token still to come in the window had probability 1, so stopping then changes no decision.
    """

    def __init__(self, window: int = 16, threshold: float | None = None):
        self.window, self.threshold = window, threshold
        self.probs: list[float] = []

    def add(self, p: float) -> None:
        if len(self.probs) < self.window:
            self.probs.append(float(p))

    @property
    def value(self) -> float:
        return sum(self.probs) / len(self.probs) if self.probs else 0.0

    @property
    def settled_low(self) -> bool:
        if self.threshold is None or not self.probs:
            return False
        best = (sum(self.probs) + (self.window - len(self.probs))) / self.window
        return best < self.threshold

    @property
    def handoff(self) -> bool:
        return self.threshold is not None and bool(self.probs) and self.value < self.threshold


__all__ = ["ConfidenceMeter", "OptionError", "Sampler", "SamplingOptions", "check_option"]
