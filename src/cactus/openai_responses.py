"""OpenAI Responses API (`POST /v1/responses`): `input` (a string or input items) -> a chat `Job`,
and its completion -> a response object (output items: reasoning, message, function_call) or the
documented SSE event sequence. No HTTP here (server.py).

This server keeps no responses: `store: true` and `previous_response_id` are refused with a 400
(send the whole conversation as `input`, as stateless clients do).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .api import Completion
from .generate import Token
from .openai_chat import (
    Job,
    RequestError,
    Sample,
    check_fields,
    json_object,
    logprob_entry,
    reasoning,
    sse,
    top_logprobs_count,
)

OPTIONS = {"temperature": "temperature", "top_p": "top_p", "max_output_tokens": "max_tokens",
           "parallel_tool_calls": "parallel_tool_calls", "speculative": "speculative", "draft_tokens": "draft_tokens"}
KNOWN = {"input", "instructions", "tools", "tool_choice", "text", "stream", "stream_options", "store",
         "previous_response_id", "include", "top_logprobs", "reasoning", "truncation", *OPTIONS}
NOT_IMPLEMENTED = {"background": False, "conversation": None, "prompt": None, "max_tool_calls": None,
                   "context_management": None, "prompt_cache_options": None}
TEXT_PARTS = ("input_text", "output_text", "text")


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponsesJob(Job):
    echo: dict = field(default_factory=dict)  # request fields the response object repeats

    @classmethod
    def parse(cls, body: Any, model_name: str) -> ResponsesJob:
        body = json_object(body)
        check_fields(body, KNOWN, NOT_IMPLEMENTED)
        if body.get("store"):
            raise RequestError(400, "'store': this server keeps no responses; send store: false (or leave "
                                    "it out) and the whole conversation as 'input'", "store")
        if "previous_response_id" in body:
            raise RequestError(400, "'previous_response_id': this server keeps no responses; send the whole "
                                    "conversation as 'input'", "previous_response_id")
        options, fields = {}, {}
        for key, name in OPTIONS.items():
            if key in body:
                options[name], fields[name] = body[key], key
        tools = [_tool(t, f"tools[{i}]") for i, t in enumerate(_list(body.get("tools", []), "tools"))]
        if "tool_choice" in body:
            options["tool_choice"], fields["tool_choice"] = _tool_choice(body["tool_choice"]), "tool_choice"
        text = body.get("text", {})
        if not isinstance(text, dict) or set(text) - {"format", "verbosity"}:
            raise RequestError(400, "'text' may hold only format and verbosity", "text")
        if (fmt := _format(text.get("format"))) is not None:
            options["response_format"], fields["response_format"] = fmt, "text.format"
        include = _list(body.get("include", []), "include")
        logprobs = top_logprobs_count(body, None)
        if "message.output_text.logprobs" in include:
            logprobs = logprobs or 0
        echo = {"instructions": body.get("instructions"), "tools": body.get("tools", []),
                "tool_choice": body.get("tool_choice", "auto"), "temperature": body.get("temperature"),
                "top_p": body.get("top_p"), "max_output_tokens": body.get("max_output_tokens"),
                "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "text": text or {"format": {"type": "text"}},
                "metadata": body.get("metadata", {}), "user": body.get("user"),
                "truncation": body.get("truncation", "disabled"), "reasoning": body.get("reasoning")}
        return cls(model_name, messages=_messages(body.get("input"), body.get("instructions")), tools=tools or None,
                   options=options, fields=fields, stream=bool(body.get("stream", False)), logprobs=logprobs,
                   echo=echo)

    # ------------------------------------------------------------------ shaping
    def response(self, rid: str, created: int, output: list, c: Completion | None, prompt_tokens: int) -> dict:
        status, incomplete = "in_progress", None
        if c is not None:
            status = "incomplete" if c.finish_reason == "length" and not c.function_calls else "completed"
            incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        usage = None if c is None else {
            "input_tokens": prompt_tokens, "output_tokens": c.decode_tokens,
            "total_tokens": prompt_tokens + c.decode_tokens,
            "input_tokens_details": {"cached_tokens": max(prompt_tokens - c.prefill_tokens, 0)},
            "output_tokens_details": {"reasoning_tokens": c.thinking_tokens}}
        return {"id": rid, "object": "response", "created_at": created, "status": status, "error": None,
                "incomplete_details": incomplete, "model": self.model_name, "output": output,
                "usage": usage, "previous_response_id": None, "store": False, **self.echo}

    def _message(self, text: str, tokens: list[Token], status: str = "completed") -> dict:
        return {"type": "message", "id": _id("msg"), "status": status, "role": "assistant",
                "content": [self._text_part(text, tokens)]}

    def _text_part(self, text: str, tokens: list[Token]) -> dict:
        lp = [] if self.logprobs is None else [logprob_entry(self.tokenizer, t, t.text) for t in tokens if t.text]
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": lp}

    def body(self, samples: list[Sample], prompt_tokens: int) -> dict:
        s = samples[0]
        c = s.completion
        output = []
        if reasoning(c):
            output.append(_reasoning_item(reasoning(c)))
        if c.response or not c.function_calls:
            output.append(self._message(c.response, s.tokens))
        output += [_call_item(call) for call in c.function_calls]
        return self.response(_id("resp"), int(time.time()), output, c, prompt_tokens)

    def chunks(self, events, prompt_tokens: int) -> Iterator[bytes]:
        rid, created, seq, output = _id("resp"), int(time.time()), [0], []

        def event(kind: str, **payload) -> bytes:
            seq[0] += 1
            return sse({"type": kind, "sequence_number": seq[0] - 1, **payload}, event=kind)

        def added(item: dict) -> bytes:
            output.append(item)
            return event("response.output_item.added", output_index=len(output) - 1, item=dict(item))

        def done(item: dict) -> bytes:
            return event("response.output_item.done", output_index=output.index(item), item=item)

        yield event("response.created", response=self.response(rid, created, [], None, prompt_tokens))
        yield event("response.in_progress", response=self.response(rid, created, [], None, prompt_tokens))
        think = msg = None
        tokens: list[Token] = []
        for _, ev in events:
            if isinstance(ev, Token):
                tokens.append(ev)
                if piece := ev.reasoning:
                    if think is None:
                        think = _reasoning_item("")
                        yield added(think)
                    think["content"][0]["text"] += piece
                    yield event("response.reasoning_text.delta", item_id=think["id"], output_index=output.index(think),
                                content_index=0, delta=piece)
                if not ev.text:
                    continue
                if think is not None and think["status"] != "completed":
                    yield from _close_reasoning(event, done, output, think)
                if msg is None:
                    msg = dict(self._message("", [], "in_progress"), content=[])
                    yield added(msg)
                    yield event("response.content_part.added", item_id=msg["id"], output_index=len(output) - 1,
                                content_index=0, part=self._text_part("", []))
                    msg["content"] = [self._text_part("", [])]
                lp = [] if self.logprobs is None else [logprob_entry(self.tokenizer, ev, ev.text)]
                msg["content"][0]["text"] += ev.text
                msg["content"][0]["logprobs"] += lp
                yield event("response.output_text.delta", item_id=msg["id"], output_index=output.index(msg),
                            content_index=0, delta=ev.text, logprobs=lp)
                continue
            c = ev
            if think is not None and think["status"] != "completed":
                yield from _close_reasoning(event, done, output, think)
            if msg is None and (c.response or not c.function_calls):
                msg = self._message(c.response, tokens, "in_progress")
                yield added(msg)
                yield event("response.content_part.added", item_id=msg["id"], output_index=output.index(msg),
                            content_index=0, part=self._text_part("", []))
            if msg is not None:
                part, i = msg["content"][0], output.index(msg)
                yield event("response.output_text.done", item_id=msg["id"], output_index=i, content_index=0,
                            text=part["text"], logprobs=part["logprobs"])
                yield event("response.content_part.done", item_id=msg["id"], output_index=i, content_index=0,
                            part=part)
                msg["status"] = "completed"
                yield done(msg)
            for call in c.function_calls:
                item = _call_item(call)
                args = item["arguments"]
                yield added(dict(item, arguments="", status="in_progress"))
                output[-1] = item
                i = len(output) - 1
                # the arguments come whole, once the call block is parsed (as chat completions' tool_calls)
                yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=i, delta=args)
                yield event("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                            name=item["name"], arguments=args)
                yield done(item)
            final = self.response(rid, created, output, c, prompt_tokens)
            yield event(f"response.{'incomplete' if final['status'] == 'incomplete' else 'completed'}",
                        response=final)


def _close_reasoning(event, done, output: list, item: dict) -> Iterator[bytes]:
    i = output.index(item)
    item["status"] = "completed"
    yield event("response.reasoning_text.done", item_id=item["id"], output_index=i, content_index=0,
                text=item["content"][0]["text"])
    yield done(item)


def _reasoning_item(text: str) -> dict:
    return {"type": "reasoning", "id": _id("rs"), "summary": [], "status": "in_progress" if not text else "completed",
            "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(call: dict) -> dict:
    return {"type": "function_call", "id": _id("fc"), "call_id": f"call_{uuid.uuid4().hex[:24]}",
            "name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False),
            "status": "completed"}


# ----------------------------------------------------------------------------- request parts

def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise RequestError(400, f"'{where}' must be an array", where)
    return value


def _tool(tool: Any, where: str) -> dict:
    """A Responses function tool (name/description/parameters at the top) -> the chat shape."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise RequestError(400, f"{where}.type: only 'function' tools are supported, got {kind!r}", where)
    fn = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        return {"type": "function", "function": {"name": choice.get("name")}}
    if isinstance(choice, dict) and choice.get("type") not in ("function", None):
        raise RequestError(400, f"'tool_choice' of type {choice.get('type')!r} is not supported "
                                "(auto, none, required or a function)", "tool_choice")
    return choice


def _format(fmt: Any) -> dict | None:
    """text.format -> a cactus response_format (None: plain text)."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                       if k in fmt}}
    raise RequestError(400, f"'text.format' must be of type text, json_object or json_schema, got {fmt!r}",
                       "text.format")


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(400, f"{where} must be a string or an array of text parts", where)
    texts = []
    for k, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in (*TEXT_PARTS, "refusal"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RequestError(400, f"{where}[{k}].type: this model reads text only, got {kind!r}", f"{where}[{k}]")
        texts.append(part.get("text", part.get("refusal", "")))
    return "".join(texts)


def _messages(input: Any, instructions: Any) -> list:
    """`instructions` + `input` -> chat messages. Consecutive function_call items join the assistant
    message before them; function_call_output items become tool messages; a reasoning item is
    handed to the next assistant message as its reasoning_content."""
    out: list[dict] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise RequestError(400, "'instructions' must be a string", "instructions")
        out.append({"role": "system", "content": instructions})
    if isinstance(input, str):
        return out + [{"role": "user", "content": input}]
    if not isinstance(input, list) or not input:
        raise RequestError(400, "'input' must be a string or a non-empty array of input items", "input")
    thought = ""
    for j, item in enumerate(input):
        where = f"input[{j}]"
        if not isinstance(item, dict):
            raise RequestError(400, f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            role = "system" if role == "developer" else role
            if role not in ("user", "system", "assistant"):
                raise RequestError(400, f"{where}.role must be user, system, developer or assistant, got "
                                        f"{item.get('role')!r}", f"{where}.role")
            message = {"role": role, "content": _text(item.get("content"), f"{where}.content")}
            if role == "assistant" and thought:
                message["reasoning_content"], thought = thought, ""
            out.append(message)
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            last = out[-1] if out else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": None}
                if thought:
                    last["reasoning_content"], thought = thought, ""
                out.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _text(output, f"{where}.output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            thought += "".join(p.get("text", "") for p in parts if isinstance(p, dict))
        else:
            raise RequestError(400, f"{where}.type {kind!r} is not supported (message, function_call, "
                                    "function_call_output, reasoning)", f"{where}.type")
    return out
