"""`cactus serve`: an OpenAI-compatible HTTP server over one model (standard library only).

POST /v1/chat/completions (plain and SSE streaming, tools -> tool_calls), GET /v1/models,
GET /health. Requests queue on one lock: one model, one conversation cache, no interleaving; a
request that extends the previous conversation prefills only its new tokens. A client that
disconnects mid-stream closes the token generator, which stops the generation.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .api import Completion, Model
from .sampling import OptionError

MAX_BODY = 4 << 20  # bytes
# OpenAI request fields -> cactus option names (None: accepted and ignored)
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens",
                 "max_completion_tokens": "max_tokens", "stop": "stop", "seed": "seed", "top_k": "top_k",
                 "min_p": "min_p", "repetition_penalty": "repetition_penalty",
                 "confidence_threshold": "confidence_threshold"}
IGNORED_FIELDS = {"model", "messages", "tools", "tool_choice", "stream", "stream_options", "n", "user",
                  "presence_penalty", "frequency_penalty", "logit_bias", "parallel_tool_calls",
                  "response_format", "metadata", "store", "logprobs", "top_logprobs"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def parse_request(body: dict) -> tuple[list, list | None, dict, bool]:
    """An OpenAI chat request -> (messages, tools, cactus options, stream). Raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty array", "messages")
    if body.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported", "n")
    unknown = sorted(set(body) - set(OPTION_FIELDS) - IGNORED_FIELDS)
    if unknown:
        raise RequestError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])
    options = {OPTION_FIELDS[k]: v for k, v in body.items() if k in OPTION_FIELDS and v is not None}
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    tools = body.get("tools") or None
    if body.get("tool_choice") == "none":
        tools = None
    return messages, tools, options, bool(body.get("stream", False))


def tool_calls(completion: Completion) -> list[dict]:
    """cactus function_calls -> OpenAI tool_calls (arguments as a JSON string)."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in completion.function_calls]


def finish_reason(completion: Completion) -> str:
    if completion.function_calls:
        return "tool_calls"
    return "length" if completion.finish_reason == "length" else "stop"


def usage(completion: Completion, prompt_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion.decode_tokens,
            "total_tokens": prompt_tokens + completion.decode_tokens,
            "prompt_tokens_details": {"cached_tokens": prompt_tokens - completion.prefill_tokens}}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, model: Model, model_name: str, verbose: bool = False):
        self.model, self.model_name, self.verbose = model, model_name, verbose
        self.lock = threading.Lock()  # one generation at a time on the one model
        self.created = int(time.time())
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet unless --verbose
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} - {fmt % args}\n")

    # ------------------------------------------------------------------ plumbing
    def _send_json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: RequestError) -> None:
        self._send_json(e.status, error_body(e.message, e.kind, e.param))

    def _read_body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "a Content-Length header is required") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise RequestError(413, f"request body of {length} bytes is over the {MAX_BODY}-byte limit")
        try:
            return json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON ({e})") from None

    # ------------------------------------------------------------------ routes
    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send_json(200, {"status": "ok", "model": self.server.model_name})
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "created": self.server.created,
                 "owned_by": "cactus"}]})
        else:
            self._send_json(404, error_body(f"no route GET {path}", "not_found_error"))

    def do_POST(self):
        path = self.path.split("?")[0].rstrip("/")
        if path != "/v1/chat/completions":
            self._send_json(404, error_body(f"no route POST {path}", "not_found_error"))
            return
        try:
            messages, tools, options, stream = parse_request(self._read_body())
        except RequestError as e:
            self._error(e)
            return
        with self.server.lock:
            try:
                model = self.server.model
                prompt_tokens = len(model.prompt_ids(messages, tools))
                events = model.stream(messages, tools, **options)
                first = next(events)  # options and messages are validated before any byte is sent
            except (ValueError, OptionError, TypeError) as e:
                self._error(RequestError(400, str(e)))
                return
            except Exception as e:  # noqa: BLE001 - reported to the client, server stays up
                self._error(RequestError(500, f"{type(e).__name__}: {e}", kind="server_error"))
                return
            if stream:
                self._stream(events, first, prompt_tokens)
            else:
                completion = first if isinstance(first, Completion) else None
                for event in events:
                    completion = event if isinstance(event, Completion) else completion
                self._send_json(200, self._completion_body(completion, prompt_tokens))

    def _completion_body(self, c: Completion, prompt_tokens: int) -> dict:
        message = {"role": "assistant", "content": c.response or (None if c.function_calls else "")}
        if c.function_calls:
            message["tool_calls"] = tool_calls(c)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.server.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(c), "logprobs": None}],
                "usage": usage(c, prompt_tokens), "cactus": _cactus_fields(c)}

    def _stream(self, events, first, prompt_tokens: int) -> None:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": self.server.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(chunk({"role": "assistant", "content": ""}))
            event = first
            while not isinstance(event, Completion):
                if event.text:
                    self.wfile.write(chunk({"content": event.text}))
                    self.wfile.flush()
                event = next(events)
            c = event
            if c.function_calls:
                calls = [dict(tc, index=i) for i, tc in enumerate(tool_calls(c))]
                self.wfile.write(chunk({"tool_calls": calls}))
            self.wfile.write(chunk({}, finish_reason(c), usage=usage(c, prompt_tokens)))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client left: stop generating
        finally:
            events.close()


def _cactus_fields(c: Completion) -> dict:
    return {"confidence": c.confidence, "cloud_handoff": c.cloud_handoff,
            "time_to_first_token_ms": round(c.time_to_first_token_ms, 2), "prefill_tps": round(c.prefill_tps, 2),
            "decode_tps": round(c.decode_tps, 2), "prefill_tokens": c.prefill_tokens}


def serve(model: Model, model_name: str, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False,
          ready=None) -> None:
    """Serve until interrupted. `ready(server)` is called once the socket is listening."""
    server = Server((host, port), model, model_name, verbose)
    if ready:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
