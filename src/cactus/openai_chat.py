"""OpenAI Chat Completions (`POST /v1/chat/completions`) and legacy Completions (`POST /v1/completions`):
request parsing into a `Job` (what to generate: messages or a raw prompt, tools, cactus options, n)
and the shaping of its samples into a response body or SSE chunks. No HTTP here (server.py).

Fields are either mapped to cactus options, accepted and ignored (`HINTS`: they change nothing a
local model does), or refused with a 400 naming them; an unknown field is refused too.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .api import Completion, Model
from .generate import Token

# accepted and ignored everywhere: routing / caching / billing hints with no meaning for one local model
HINTS = frozenset({"model", "user", "metadata", "reasoning_effort", "verbosity", "service_tier",
                   "prompt_cache_key", "prompt_cache_retention", "safety_identifier"})
# request field -> cactus option
CHAT_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens",
                "max_completion_tokens": "max_tokens", "stop": "stop", "seed": "seed", "top_k": "top_k",
                "min_p": "min_p", "repetition_penalty": "repetition_penalty",
                "confidence_threshold": "confidence_threshold", "tool_choice": "tool_choice",
                "parallel_tool_calls": "parallel_tool_calls", "response_format": "response_format",
                "max_thinking_tokens": "max_thinking_tokens", "speculative": "speculative",
                "draft_tokens": "draft_tokens"}
# fields whose meaning is not implemented: refused unless they hold their no-op value
NOT_IMPLEMENTED = {"logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0, "modalities": ["text"],
                   "audio": None, "prediction": None, "web_search_options": None, "functions": None,
                   "function_call": None}
MAX_N = 16


class RequestError(Exception):
    """A request the server answers with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ----------------------------------------------------------------------------- the job

@dataclass
class Sample:
    """One generated answer: its token events and its completion."""
    tokens: list[Token]
    completion: Completion


@dataclass
class Job:
    """What one request asks the model for. Subclasses shape the samples into their API's body."""
    model_name: str
    messages: list | None = None        # chat: the conversation (roles normalized)
    prompt: str | None = None           # raw completions: the prompt text, no template
    tools: list | None = None
    options: dict = field(default_factory=dict)   # cactus options (api.Model.stream keywords)
    fields: dict = field(default_factory=dict)    # cactus option -> the request field it came from
    n: int = 1
    stream: bool = False
    logprobs: int | None = None         # top alternatives per token, None: no logprobs
    tokenizer: Any = None               # the model's (set by the server): token strings of logprobs

    def events(self, model: Model, i: int) -> Iterator[Token | Completion]:
        """The i-th sample's `generate()` stream (a fresh seed per sample when one is given)."""
        options = dict(self.options)
        if i and options.get("seed") is not None:
            options["seed"] += i
        if self.logprobs is not None:
            options["logprobs"] = self.logprobs
        if self.prompt is not None:
            return model.stream_prompt(self.prompt, **options)
        return model.stream(self.messages, self.tools, **options)

    def prompt_ids(self, model: Model) -> list[int]:
        if self.prompt is not None:
            return model.tokenizer.encode(self.prompt)
        return model.prompt_ids(self.messages, self.tools)

    def field_error(self, message: str) -> RequestError:
        """A model-side ValueError -> a 400 naming the request's own field (max_output_tokens, not
        max_tokens)."""
        m = re.search(r"option '(\w+)'", message)
        name = self.fields.get(m.group(1)) if m else None
        if name and name != m.group(1):
            message = message.replace(f"option '{m.group(1)}'", f"'{name}'")
        return RequestError(400, message, name)

    def body(self, samples: list[Sample], prompt_tokens: int) -> dict:
        raise NotImplementedError

    def chunks(self, events: Iterator[tuple[int, Token | Completion]], prompt_tokens: int) -> Iterator[bytes]:
        raise NotImplementedError


def options_from(body: dict, mapping: dict[str, str], where: str = "") -> tuple[dict, dict]:
    """Request fields -> (cactus options, option -> field). Values are checked by the model."""
    options, fields = {}, {}
    for key, name in mapping.items():
        if key in body:
            if name in options:
                raise RequestError(400, f"give only one of {fields[name]!r} and {key!r}", key)
            options[name], fields[name] = body[key], where + key
    return options, fields


def check_fields(body: dict, known: set | frozenset, not_implemented: dict) -> None:
    for key, noop in not_implemented.items():
        if key in body and body[key] != noop and not (noop is None and not body[key]):
            raise RequestError(400, f"'{key}' is not implemented by this server; leave it out", key)
    unknown = sorted(set(body) - set(known) - set(not_implemented) - HINTS)
    if unknown:
        raise RequestError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])


def json_object(body: Any) -> dict:
    """Drop null fields (clients send them for 'not given')."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return {k: v for k, v in body.items() if v is not None}


def top_logprobs_count(body: dict, flag: str = "logprobs", count: str = "top_logprobs", hi: int = 20) -> int | None:
    """`logprobs: true` + `top_logprobs: k` -> k (0 when only the flag), or None when not asked."""
    k = body.get(count)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= hi):
        raise RequestError(400, f"'{count}' must be an integer in [0, {hi}], got {k!r}", count)
    if flag is None:
        return k
    on = body.get(flag, False)
    if not isinstance(on, bool):
        raise RequestError(400, f"'{flag}' must be a boolean, got {on!r}", flag)
    if k is not None and not on:
        raise RequestError(400, f"'{count}' needs '{flag}': true", count)
    return (k or 0) if on else None


def include_usage(body: dict, stream: bool) -> bool:
    """`stream_options.include_usage` (a last chunk with the usage); the options need stream: true."""
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage", "include_obfuscation"}:
        raise RequestError(400, "'stream_options' may hold only include_usage", "stream_options")
    if stream_options and not stream:
        raise RequestError(400, "'stream_options' is only allowed with stream: true", "stream_options")
    return bool(stream_options.get("include_usage"))


def sample_count(body: dict) -> int:
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise RequestError(400, f"'n' must be an integer in [1, {MAX_N}], got {n!r}", "n")
    return n


def tool_calls(completion: Completion) -> list[dict]:
    """cactus function_calls -> OpenAI tool_calls (arguments as a JSON string)."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in completion.function_calls]


def finish_reason(completion: Completion) -> str:
    if completion.function_calls:
        return "tool_calls"
    return "length" if completion.finish_reason == "length" else "stop"


def usage(samples: list[Completion], prompt_tokens: int) -> dict:
    """Prompt tokens once (the samples share the prefill); cached: what the first did not run."""
    out = sum(c.decode_tokens for c in samples)
    cached = prompt_tokens - samples[0].prefill_tokens if samples else 0
    return {"prompt_tokens": prompt_tokens, "completion_tokens": out, "total_tokens": prompt_tokens + out,
            "prompt_tokens_details": {"cached_tokens": max(cached, 0)}}


def reasoning(completion: Completion) -> str:
    return completion.thinking


def logprob_entry(tokenizer, t: Token, text: str) -> dict:
    """One token's OpenAI logprob entry; `text` is what it added to the content."""
    alts = [{"token": (s := tokenizer.decode([i])), "logprob": round(float(lp), 6), "bytes": list(s.encode())}
            for i, lp in (getattr(t, "top_logprobs", None) or ())]
    return {"token": text, "logprob": round(float(t.logprob), 6), "bytes": list(text.encode()),
            "top_logprobs": alts}


def content_logprobs(tokenizer, tokens: list[Token]) -> list[dict]:
    """Entries for the tokens that released content: their strings concatenate to the content
    (a piece held back, e.g. a possible stop string, comes with the token that releases it)."""
    return [logprob_entry(tokenizer, t, t.text) for t in tokens if t.text]


def cactus_fields(c: Completion) -> dict:
    return {"confidence": c.confidence, "cloud_handoff": c.cloud_handoff,
            "time_to_first_token_ms": round(c.time_to_first_token_ms, 2), "prefill_tps": round(c.prefill_tps, 2),
            "decode_tps": round(c.decode_tps, 2), "prefill_tokens": c.prefill_tokens}


def sse(obj: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


# ----------------------------------------------------------------------------- chat completions

def chat_messages(messages: Any) -> list:
    """The `developer` role is the newer name of `system`; everything else the template checks."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty array", "messages")
    return [dict(m, role="system") if isinstance(m, dict) and m.get("role") == "developer" else m
            for m in messages]


@dataclass
class ChatJob(Job):
    include_usage: bool = False

    @classmethod
    def parse(cls, body: Any, model_name: str) -> ChatJob:
        body = json_object(body)
        check_fields(body, {"messages", "tools", "n", "stream", "stream_options", "logprobs", "top_logprobs",
                            "store", "chat_template_kwargs", *CHAT_OPTIONS}, NOT_IMPLEMENTED)
        if body.get("store"):
            raise RequestError(400, "'store': this server keeps no completions; send store: false or leave it out",
                               "store")
        options, fields = options_from(body, CHAT_OPTIONS)
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"}:
            raise RequestError(400, "'chat_template_kwargs' may hold only enable_thinking", "chat_template_kwargs")
        if "enable_thinking" in kwargs:
            options["enable_thinking"] = kwargs["enable_thinking"]
            fields["enable_thinking"] = "chat_template_kwargs.enable_thinking"
        stream = bool(body.get("stream", False))
        return cls(model_name, messages=chat_messages(body.get("messages")), tools=body.get("tools") or None,
                   options=options, fields=fields, n=sample_count(body), stream=stream,
                   logprobs=top_logprobs_count(body), include_usage=include_usage(body, stream))

    def body(self, samples: list[Sample], prompt_tokens: int) -> dict:
        choices = []
        for i, s in enumerate(samples):
            c = s.completion
            message = {"role": "assistant", "content": c.response or (None if c.function_calls else "")}
            if reasoning(c):
                message["reasoning_content"] = reasoning(c)
            if c.function_calls:
                message["tool_calls"] = tool_calls(c)
            lp = None if self.logprobs is None else {"content": content_logprobs(self.tokenizer, s.tokens),
                                                     "refusal": None}
            choices.append({"index": i, "message": message, "finish_reason": finish_reason(c), "logprobs": lp})
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": usage([s.completion for s in samples], prompt_tokens),
                "cactus": cactus_fields(samples[0].completion)}

    def chunks(self, events, prompt_tokens: int) -> Iterator[bytes]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list, **extra) -> bytes:
            return sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                        "model": self.model_name, "choices": choices, **extra})

        def choice(i: int, delta: dict, finish: str | None = None, lp: list | None = None) -> list:
            logprobs = None if lp is None else {"content": lp, "refusal": None}
            return [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]

        done, started = [], set()
        for i, event in events:
            if i not in started:
                started.add(i)
                yield chunk(choice(i, {"role": "assistant", "content": ""}))
            if isinstance(event, Token):
                if event.reasoning:
                    yield chunk(choice(i, {"reasoning_content": event.reasoning}))
                if event.text:
                    lp = None if self.logprobs is None else [logprob_entry(self.tokenizer, event, event.text)]
                    yield chunk(choice(i, {"content": event.text}, lp=lp))
                continue
            c = event
            done.append(c)
            if c.function_calls:
                yield chunk(choice(i, {"tool_calls": [dict(tc, index=j) for j, tc in enumerate(tool_calls(c))]}))
            yield chunk(choice(i, {}, finish_reason(c)))
        if self.include_usage:
            yield chunk([], usage=usage(done, prompt_tokens))
        yield b"data: [DONE]\n\n"


# ----------------------------------------------------------------------------- legacy completions

COMPLETION_OPTIONS = {k: v for k, v in CHAT_OPTIONS.items()
                      if k not in ("max_completion_tokens", "tool_choice", "parallel_tool_calls", "response_format")}
COMPLETION_NOT_IMPLEMENTED = {"logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0, "echo": False,
                              "suffix": None, "best_of": 1}


@dataclass
class CompletionJob(Job):
    """`POST /v1/completions`: a raw prompt, no chat template (max_tokens defaults to 16, as OpenAI)."""
    include_usage: bool = False

    @classmethod
    def parse(cls, body: Any, model_name: str) -> CompletionJob:
        body = json_object(body)
        check_fields(body, {"prompt", "n", "stream", "stream_options", "logprobs", *COMPLETION_OPTIONS},
                     COMPLETION_NOT_IMPLEMENTED)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(400, "'prompt' must be a non-empty string (one prompt per request)", "prompt")
        options, fields = options_from(body, COMPLETION_OPTIONS)
        options.setdefault("max_tokens", 16)
        stream = bool(body.get("stream", False))
        return cls(model_name, prompt=prompt, options=options, fields=fields, n=sample_count(body),
                   stream=stream, logprobs=top_logprobs_count(body, None, "logprobs", 5),
                   include_usage=include_usage(body, stream))

    def _logprobs(self, tokens: list[Token], offset: int = 0) -> dict:
        strings, lps, tops, offsets = [], [], [], []
        for t in tokens:
            if not t.text:
                continue
            strings.append(t.text)
            lps.append(round(float(t.logprob), 6))
            tops.append({self.tokenizer.decode([i]): round(float(lp), 6) for i, lp in t.top_logprobs})
            offsets.append(offset)
            offset += len(t.text)
        return {"tokens": strings, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    def body(self, samples: list[Sample], prompt_tokens: int) -> dict:
        choices = [{"index": i, "text": s.completion.response, "finish_reason": finish_reason(s.completion),
                    "logprobs": None if self.logprobs is None else self._logprobs(s.tokens)}
                   for i, s in enumerate(samples)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": usage([s.completion for s in samples], prompt_tokens)}

    def chunks(self, events, prompt_tokens: int) -> Iterator[bytes]:
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        done, offsets = [], {}

        def chunk(choices: list, **extra) -> bytes:
            return sse({"id": cid, "object": "text_completion", "created": created, "model": self.model_name,
                        "choices": choices, **extra})

        for i, event in events:
            if isinstance(event, Token):
                if event.text:
                    lp = None if self.logprobs is None else self._logprobs([event], offsets.get(i, 0))
                    offsets[i] = offsets.get(i, 0) + len(event.text)
                    yield chunk([{"index": i, "text": event.text, "finish_reason": None, "logprobs": lp}])
                continue
            done.append(event)
            yield chunk([{"index": i, "text": "", "finish_reason": finish_reason(event), "logprobs": None}])
        if self.include_usage:
            yield chunk([], usage=usage(done, prompt_tokens))
        yield b"data: [DONE]\n\n"
