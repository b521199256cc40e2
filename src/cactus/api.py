"""The user-facing API: `Model` (Pythonic: `.complete(messages) -> Completion`) and the C-style
`cactus_init / cactus_complete / cactus_reset / cactus_destroy` (JSON in, JSON out) thin over it.

`cactus_complete` never raises: any failure is `{"success": false, "error": "...", ...}` with
every other response field present.
"""

from __future__ import annotations

import json
import operator
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import grammar, memory
from .chat import ChatTemplate, validate_tools
from .generate import Finish, Session, Token, eos_ids, generate
from .sampling import OptionError, SamplingOptions, check_option
from .tokenizer import Tokenizer, read_json_object
from .tools import format_tool_calls

RESPONSE_FIELDS = ("success", "error", "response", "function_calls", "cloud_handoff", "confidence",
                   "time_to_first_token_ms", "total_time_ms", "prefill_tps", "decode_tps", "prefill_tokens",
                   "decode_tokens", "total_tokens", "ram_usage_mb", "finish_reason", "thinking")
# generation_config.json fields that become default options (the caller's options win)
_GENERATION_DEFAULTS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


@dataclass
class Completion:
    response: str
    function_calls: list[dict]
    cloud_handoff: bool
    confidence: float
    time_to_first_token_ms: float
    total_time_ms: float
    prefill_tps: float
    decode_tps: float
    prefill_tokens: int
    decode_tokens: int
    total_tokens: int
    ram_usage_mb: float
    finish_reason: str = ""                          # eos | stop | length | handoff | cancelled
    thinking: str = ""                               # the reasoning (think block), never in `response`
    thinking_tokens: int = 0                         # decode tokens spent on it (of decode_tokens)
    token_ids: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """The response object of DESIGN §7 (exactly its fields)."""
        d = asdict(self)
        return {"success": True, "error": None, **{k: d[k] for k in RESPONSE_FIELDS[2:]}}


def error_response(message: str) -> dict:
    return {"success": False, "error": message, "response": "", "function_calls": [], "cloud_handoff": False,
            "confidence": 0.0, "time_to_first_token_ms": 0.0, "total_time_ms": 0.0, "prefill_tps": 0.0,
            "decode_tps": 0.0, "prefill_tokens": 0, "decode_tokens": 0, "total_tokens": 0,
            "ram_usage_mb": ram_usage_mb(), "finish_reason": "error", "thinking": ""}


class Model:
    """A loaded model with one conversation session (its caches persist between calls).

        with Model("weights/lfm2-1.2b") as m:
            print(m.complete([{"role": "user", "content": "Hi"}], max_tokens=64).response)

    A handle is safe to share between threads: calls on it are serialized (one generation at a
    time, each on the session as the previous one left it); `stop()` ends the generation in
    progress from any thread. A thread that opens a second generation while its own first one is
    still open (a nested `stream`) gets a RuntimeError at once instead of a deadlock. Two handles
    on one model directory are independent and share the weights' page cache.
    """

    def __init__(self, path: str | Path, max_context: int | None = None, engine=None):
        # everything the model directory says is checked here, so a bad file fails at open, naming itself
        max_context = check_context_size(max_context, "max_context")
        if engine is None:
            from .engine import load

            engine = load(path, max_context)
        self.engine = engine
        self.path = Path(engine.path)
        self.tokenizer = Tokenizer(self.path)
        self.template = ChatTemplate.from_dir(self.path, self.tokenizer.template_tokens())
        self.template.check()
        self.defaults, extra_eos = generation_config(self.path / "generation_config.json")
        self.stop_ids = eos_ids(engine, self.tokenizer, extra_eos)
        self.session = Session(engine)
        self.closed = False
        self._lock = threading.Lock()       # one generation at a time on this handle
        self._owner: int | None = None      # the thread holding it
        self._cancel = threading.Event()    # set by stop(): the running generation ends
        self._plans: dict[str, grammar.Plan | None] = {}  # compiled constraints by request
        self._batcher, self._slots = None, []  # batched slots on this engine (`slots`)

    def prompt_ids(self, messages: Any, tools: Any = None, enable_thinking: bool | None = None) -> list[int]:
        """Messages (+ tools) rendered through the model's template and tokenized; `enable_thinking`
        is handed to templates that read it (None: left out, the template's default)."""
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        return self.tokenizer.encode(self.template.render(messages, tools=tools, add_generation_prompt=True,
                                                          **extra))

    def stream(self, messages: Any, tools: Any = None, options: Any = None,
               **kwargs) -> Iterator[Token | Completion]:
        """Yield a `Token` per sampled id (its `.text`: the response piece it releases; `.reasoning`:
        the reasoning piece), then the `Completion`. Options: keyword arguments and/or `options`
        (dict or JSON string)."""
        return self._stream(lambda o: self.prompt_ids(messages, tools, o.enable_thinking), tools, options, kwargs)

    def stream_prompt(self, prompt: str, options: Any = None, **kwargs) -> Iterator[Token | Completion]:
        """`stream` over raw prompt text, no chat template (special-token text becomes its id)."""
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("prompt must be a non-empty string")
        return self._stream(lambda o: self.tokenizer.encode(prompt), None, options, kwargs)

    def _stream(self, prompt_ids: Callable[[SamplingOptions], list[int]], tools: Any, options: Any,
                kwargs: dict) -> Iterator[Token | Completion]:
        with self._exclusive():
            start = time.perf_counter()
            opts = SamplingOptions.parse(options, defaults=self.defaults, **kwargs)
            prompt = prompt_ids(opts)
            tools = validate_tools(tools)
            constraint = self.grammar(tools, opts)
            pieces, ids, finish = [], [], None
            setup_s = time.perf_counter() - start  # options, template, tokenizer, grammar
            for event in generate(self.session, self.tokenizer, prompt, opts, stop_ids=self.stop_ids,
                                  cancel=self._cancel, grammar=constraint, tools=tools):
                if isinstance(event, Finish):
                    finish = event
                    break
                pieces.append(event.text)
                ids.append(event.id)
                yield event
            calls, rejected = self._checked_calls(tools, finish.function_calls, constraint)
            text = "".join(pieces) + (format_tool_calls(rejected) if rejected else "")  # kept, as text
            yield _completion(text, ids, finish, time.perf_counter() - start, setup_s, calls)

    def _checked_calls(self, tools: list[dict] | None, calls: list[dict], plan: grammar.Plan | None):
        """Calls to undeclared tools, or with arguments outside the tool's schema, are not calls."""
        if not tools or not calls:
            return calls, []
        ll = plan.ll_tokenizer if plan is not None else None
        if ll is None and grammar.available():
            ll = grammar.ll_tokenizer(self.tokenizer, self.engine.config.vocab_size, sorted(self.stop_ids))
        return grammar.check_calls(tools, calls, ll)

    def grammar(self, tools: list[dict] | None, opts: SamplingOptions) -> grammar.Plan | None:
        """The compiled constraints of a request's (validated) tools, tool_choice and response_format
        (None: nothing to constrain); the last few are kept, as agents repeat the same tools."""
        key = json.dumps([tools, opts.tool_choice, opts.parallel_tool_calls, opts.response_format],
                         sort_keys=True)
        if key not in self._plans:
            if len(self._plans) >= 8:
                self._plans.pop(next(iter(self._plans)))
            try:
                self._plans[key] = grammar.plan(self.tokenizer, self.engine.config.vocab_size,
                                                sorted(self.stop_ids), tools, opts.tool_choice,
                                                opts.parallel_tool_calls, opts.response_format)
            except grammar.GrammarError as e:
                raise OptionError(str(e)) from None
        return self._plans[key]

    def complete(self, messages: Any, tools: Any = None, callback: Callable | None = None,
                 user_data: Any = None, options: Any = None, **kwargs) -> Completion:
        """The whole answer. `callback(token: bytes, token_id: int, user_data)` gets each piece of
        response text as it is released (whole UTF-8 characters; together, the response). With the
        option `stream_thinking`, it also gets the reasoning, between `<think>` and `</think>`."""
        show_thinking = SamplingOptions.parse(options, **kwargs).stream_thinking
        thinking = False  # inside the reasoning, as the callback was told
        for event in self.stream(messages, tools, options, **kwargs):
            if isinstance(event, Completion):
                if thinking and callback is not None:
                    callback(b"</think>", -1, user_data)
                return event
            if callback is None:
                continue
            if show_thinking and event.reasoning:
                if not thinking:
                    callback(b"<think>", -1, user_data)
                    thinking = True
                callback(event.reasoning.encode("utf-8"), event.id, user_data)
            if event.text:
                if thinking:
                    callback(b"</think>", -1, user_data)
                    thinking = False
                callback(event.text.encode("utf-8"), event.id, user_data)
        raise AssertionError("generate() ended without a Finish event")

    def complete_batch(self, conversations: list, tools: Any = None, options: Any = None,
                       **kwargs) -> list[Completion]:
        """Answer several conversations at once -> their Completions, in order. Their decode steps
        run together (batch.py: each weight read once per step for all of them), each on its own
        caches; every answer is the one `complete` gives it alone (greedy: the very same ids).
        Options as `complete`'s, the same for all. The handle's own conversation is left as it was."""
        if not isinstance(conversations, (list, tuple)) or not conversations:
            raise ValueError("conversations must be a non-empty list of message lists")
        with self._exclusive():
            handles = self.slots(len(conversations))
            out: list = [None] * len(conversations)

            def answer(i: int) -> None:
                try:
                    out[i] = handles[i].complete(conversations[i], tools, options=options, **kwargs)
                except BaseException as e:  # noqa: BLE001 - raised in the caller's thread below
                    out[i] = e

            threads = [threading.Thread(target=answer, args=(i,), daemon=True) for i in range(len(out))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return out

    def slots(self, n: int) -> list[Model]:
        """n handles on this model's weights, each with its own caches, whose decode steps are
        batched together (batch.py); kept and reused (their conversations too). The server's
        parallel slots and `complete_batch` run on them; each is a handle of its own (one call at
        a time on each), and this one stays usable beside them (kernel calls take turns)."""
        from .batch import Batcher

        if self._batcher is None:
            self._batcher = Batcher(self.engine)
        while len(self._slots) < n:
            slot = Model(self.path, engine=self._batcher.slot())
            slot.defaults = self.defaults
            self._slots.append(slot)
        return self._slots[:n]

    def reset(self) -> None:
        """Forget the conversation: the next call prefills its whole prompt."""
        with self._exclusive():
            self.session.reset()

    def stop(self) -> None:
        """End the generation in progress (from any thread) after the token being computed; its
        completion has finish_reason "cancelled". Does nothing when no generation runs."""
        if self._owner is not None:
            self._cancel.set()
        for slot in self._slots:
            slot.stop()

    def close(self) -> None:
        """Release the model (its weights' mmap and caches), after a generation in progress ends.
        Calling it twice is harmless."""
        if self.closed:
            return
        self.stop()
        with self._exclusive():
            self.closed = True
            self.session = self.engine = None
            self.template = self.tokenizer = None

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("this model handle was destroyed (cactus_destroy / close)")

    @contextmanager
    def _exclusive(self):
        """Hold this handle for one call: other threads wait their turn; a nested call from the
        thread that holds it is refused (it would wait for itself)."""
        self._check_open()
        if self._owner == threading.get_ident():
            raise RuntimeError("this model handle is already generating in this thread (finish or close "
                               "the open stream first)")
        with self._lock:
            self._check_open()  # it may have been closed while we waited
            self._owner = threading.get_ident()
            self._cancel.clear()
            try:
                yield
            finally:
                self._owner = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _completion(text: str, ids: list[int], finish: Finish, total_s: float, setup_s: float,
                calls: list[dict]) -> Completion:
    # time to first token is counted from the call's start: template, tokenizer and prefill included
    ttft_s = setup_s + finish.first_token_s
    decode_steps = finish.decode_tokens - 1  # the first token comes out of the prefill
    return Completion(
        response=text, function_calls=calls, cloud_handoff=finish.cloud_handoff,
        confidence=round(finish.confidence, 6),
        time_to_first_token_ms=ttft_s * 1e3, total_time_ms=total_s * 1e3,
        prefill_tps=finish.prefill_tokens / finish.prefill_s if finish.prefill_s > 0 else 0.0,
        decode_tps=decode_steps / finish.decode_s if decode_steps > 0 and finish.decode_s > 0 else 0.0,
        prefill_tokens=finish.prefill_tokens, decode_tokens=finish.decode_tokens,
        total_tokens=finish.prefill_tokens + finish.decode_tokens, ram_usage_mb=ram_usage_mb(),
        finish_reason=finish.reason, thinking=finish.reasoning,
        thinking_tokens=finish.reasoning_tokens, token_ids=ids)


# ----------------------------------------------------------------------------- C-style API

def cactus_init(model_path: str | Path, context_size: int | None = None) -> Model:
    """Load a converted model directory -> a handle for the other cactus_* functions.
    context_size: tokens of context (None: the model's own); bad values raise ValueError."""
    return Model(model_path, max_context=check_context_size(context_size, "context_size"))


def check_context_size(value: Any, name: str = "context_size") -> int | None:
    """A context window in tokens: None (the model's own) or an integer > 0. Raises ValueError."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # ints and numpy ints; not floats or strings
    except TypeError:
        raise ValueError(f"{name} must be a whole number of tokens (or None), got {value!r:.60}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0 tokens, got {value}")
    return value


def generation_config(file: Path) -> tuple[dict, list[int]]:
    """generation_config.json -> (default sampling options, extra eos ids), checked when the model
    is opened: a bad value names the file and the field. Sampling defaults apply only with
    `do_sample: true` (transformers' rule); repetition_penalty always."""
    if not file.is_file():
        return {}, []
    g = read_json_object(file)
    eos = g.get("eos_token_id")
    eos = [] if eos is None else [eos] if not isinstance(eos, list) else eos
    if not all(type(i) is int and i >= 0 for i in eos):
        raise ValueError(f"{file}: eos_token_id must be an integer or a list of integers, "
                         f"got {g.get('eos_token_id')!r:.60}")
    sampled = g.get("do_sample", False)
    if not isinstance(sampled, bool):
        raise ValueError(f"{file}: do_sample must be true or false, got {sampled!r:.60}")
    defaults = {}
    for k in _GENERATION_DEFAULTS:
        if g.get(k) is not None and (sampled or k == "repetition_penalty"):
            try:
                defaults[k] = check_option(k, g[k])
            except OptionError as e:
                raise ValueError(f"{file}: {k} {e.problem}") from None
    return defaults, eos


def cactus_complete(handle: Model, messages: Any, options: Any = None, callback: Callable | None = None,
                    tools: Any = None, user_data: Any = None, **kwargs) -> str:
    """Messages (list or JSON string) -> response JSON string (DESIGN §7). Never raises."""
    try:
        model = _model(handle)
        return json.dumps(model.complete(messages, tools=tools, callback=callback, user_data=user_data,
                                         options=options, **kwargs).to_dict(), ensure_ascii=False)
    except Exception as e:  # the contract: errors come back as JSON, not as a crash
        message = str(e) if isinstance(e, (ValueError, FileNotFoundError)) else f"{type(e).__name__}: {e}"
        return json.dumps(error_response(message), ensure_ascii=False)


def cactus_stop(handle: Model) -> None:
    """Stop the handle's generation in progress (call it from another thread, or from the
    streaming callback): the running `cactus_complete` returns what it has, finish_reason
    "cancelled"."""
    if isinstance(handle, Model):
        handle.stop()


def cactus_reset(handle: Model) -> None:
    """Clear the handle's conversation caches."""
    _model(handle).reset()


def cactus_destroy(handle: Model) -> None:
    """Free the handle. Using it afterwards gives an error; destroying it twice does nothing."""
    if isinstance(handle, Model):
        handle.close()


def _model(handle: Any) -> Model:
    if not isinstance(handle, Model):
        raise ValueError(f"invalid model handle ({type(handle).__name__}); pass what cactus_init returned")
    handle._check_open()
    return handle


# ----------------------------------------------------------------------------- memory

def ram_usage_mb() -> float:
    """Current resident set size of this process in MB (not the peak)."""
    return round(memory.rss_bytes() / 2**20, 3)


__all__ = [
    "RESPONSE_FIELDS",
    "Completion",
    "Model",
    "cactus_complete",
    "cactus_destroy",
    "cactus_init",
    "cactus_reset",
    "cactus_stop",
    "ram_usage_mb",
]
