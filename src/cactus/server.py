"""`cactus serve`: an OpenAI-compatible HTTP server over one model (standard library only).

The HTTP side: a route table (`ROUTES`, one row per endpoint), request bodies read or refused
on every path (so a kept-alive connection stays in step), socket timeouts, opt-in CORS, and the
generation run for a `Job` (openai_chat.py / openai_responses.py parse requests and shape answers).
Requests run on `--parallel` slots: each a model handle with its own caches, whose decode steps
are batched with the others' (batch.py: continuous batching, every answer the same bits as served
alone); a request takes the free slot whose conversation shares the longest prefix with its prompt,
and waits when all are busy. Each slot's session keeps a pool of conversation caches (its share of
`--cache-mb`), so clients that take turns each prefill only their new tokens. A client that
disconnects, streaming or not, stops its generation within a token and frees its slot.
"""

from __future__ import annotations

import json
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .api import Completion, Model
from .generate import Token, common_prefix
from .openai_chat import ChatJob, CompletionJob, Job, RequestError, Sample, error_body
from .openai_responses import ResponsesJob

MAX_BODY = 4 << 20  # bytes
TIMEOUT_S = 60.0    # a client silent this long mid-request (or mid-stream) is dropped
CACHE_MB = 512      # default budget of the conversation pool


class ClientGone(Exception):
    """The client closed its connection: stop generating for it."""


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, model: Model, model_name: str, verbose: bool = False, cors: list[str] | None = None,
                 timeout_s: float = TIMEOUT_S, cache_mb: float = CACHE_MB, parallel: int = 1):
        if parallel < 1:
            raise ValueError("--parallel must be >= 1")
        self.model, self.model_name, self.verbose = model, model_name, verbose
        self.cors, self.timeout_s = list(cors or []), timeout_s
        self.created = int(time.time())
        handles = [model] if parallel == 1 else model.slots(parallel)
        for h in handles:
            h.session.pool_bytes = int(cache_mb * 2**20 / parallel)
        self.free, self.slot_free = handles, threading.Condition()
        super().__init__(address, Handler)

    @contextmanager
    def slot(self, prompt: list[int]) -> Iterator[Model]:
        """A free slot for this prompt (the one whose conversation it continues furthest), held
        until the request ends."""
        with self.slot_free:
            while not self.free:
                self.slot_free.wait()
            best = max(self.free, key=lambda h: common_prefix(h.session.ids, prompt))
            self.free.remove(best)
        try:
            yield best
        finally:
            with self.slot_free:
                self.free.append(best)
                self.slot_free.notify()


# ----------------------------------------------------------------------------- endpoints

def health(h: Handler, body) -> None:
    h.send_json(200, {"status": "ok", "model": h.server.model_name})


def _model_object(h: Handler) -> dict:
    return {"id": h.server.model_name, "object": "model", "created": h.server.created, "owned_by": "cactus"}


def list_models(h: Handler, body) -> None:
    h.send_json(200, {"object": "list", "data": [_model_object(h)]})


def get_model(h: Handler, body, model_id: str) -> None:
    if model_id != h.server.model_name:
        raise RequestError(404, f"the model {model_id!r} does not exist (this server has "
                                f"{h.server.model_name!r})", "model", "not_found_error")
    h.send_json(200, _model_object(h))


def generation(parse: Callable[[dict, str], Job]) -> Callable:
    def endpoint(h: Handler, body) -> None:
        h.run(parse(body, h.server.model_name))
    return endpoint


# (method, path pattern) -> handler(h, body, *groups); body is the parsed JSON of a POST
ROUTES: list[tuple[str, str, Callable]] = [
    ("GET", "/health", health),
    ("GET", "/v1/models", list_models),
    ("GET", "/v1/models/(?P<id>.+)", get_model),
    ("POST", "/v1/chat/completions", generation(ChatJob.parse)),
    ("POST", "/v1/completions", generation(CompletionJob.parse)),
    ("POST", "/v1/responses", generation(ResponsesJob.parse)),
]
_COMPILED = [(method, re.compile(pattern + "/?"), fn) for method, pattern, fn in ROUTES]


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.timeout_s  # StreamRequestHandler puts it on the socket
        super().setup()

    def log_message(self, fmt, *args):  # quiet unless --verbose
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} - {fmt % args}\n")

    # ------------------------------------------------------------------ dispatch
    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        path = self.path.split("?")[0]
        try:
            raw = self._read_body()  # first, on every path: the connection stays in step
            allowed = [(method, m, fn) for method, pattern, fn in _COMPILED if (m := pattern.fullmatch(path))]
            if not allowed:
                raise RequestError(404, f"no route {self.command} {path}", None, "not_found_error")
            methods = sorted({method for method, _, _ in allowed})
            if self.command == "OPTIONS" and self.server.cors:  # a CORS preflight
                self.send_response(204)
                self.send_header("Access-Control-Allow-Methods", ", ".join(methods + ["OPTIONS"]))
                self.send_header("Access-Control-Allow-Headers",
                                 self.headers.get("Access-Control-Request-Headers", "Authorization, Content-Type"))
                self.send_header("Access-Control-Max-Age", "600")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            match = [(m, fn) for method, m, fn in allowed if method == self.command]
            if not match:
                raise MethodNotAllowed(methods)
            m, fn = match[0]
            fn(self, _parse_json(raw) if self.command == "POST" else None, *m.groups())
        except MethodNotAllowed as e:
            self.send_json(405, error_body(f"{self.command} is not allowed on {path} (allowed: "
                                           f"{', '.join(e.methods)})", "invalid_request_error"),
                           {"Allow": ", ".join(e.methods)})
        except RequestError as e:
            self.send_json(e.status, error_body(e.message, e.kind, e.param))
        except ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        """The whole body, read before anything is answered. A body that cannot be read in step
        (chunked, bad or over-limit length) is refused and the connection closed after the answer."""
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise RequestError(411, "send the body with a Content-Length (chunked bodies are not supported)")
        length = self.headers.get("Content-Length")
        if length is None:
            if self.command in ("POST", "PUT", "PATCH"):
                self.close_connection = True  # a body may follow that we cannot delimit
                raise RequestError(411, "a Content-Length header is required")
            return b""
        if not length.strip().isdigit():
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length {length!r}")
        n = int(length)
        if n > MAX_BODY:
            self.close_connection = True
            raise RequestError(413, f"request body of {n} bytes is over the {MAX_BODY}-byte limit")
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(408, f"the request body did not arrive within {self.server.timeout_s:g} s") from None
        if len(raw) < n:
            self.close_connection = True
            raise ClientGone
        return raw

    def send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, headers too long) as OpenAI JSON, not HTML."""
        self.close_connection = True
        try:
            self.send_json(code, error_body(message or self.responses.get(code, ("error",))[0]))
        except OSError:
            pass

    def end_headers(self) -> None:
        origin = self._cors_origin()
        if origin:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")
        super().end_headers()

    def _cors_origin(self) -> str | None:
        allowed = self.server.cors
        origin = self.headers.get("Origin") if hasattr(self, "headers") and self.headers else None
        if "*" in allowed:
            return "*"
        return origin if origin and origin in allowed else None

    def client_gone(self) -> bool:
        """Has the client closed its side? (readable with no data pending = EOF). Costs a select."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # ------------------------------------------------------------------ generation
    def run(self, job: Job) -> None:
        """Generate the job's samples one after another (the prompt is prefilled once: the next
        sample finds it in the session) and answer in its API's shape."""
        model = self.server.model
        job.tokenizer = model.tokenizer
        check_speculative(job, model.defaults.get("speculative"))
        try:
            prompt = job.prompt_ids(model)
        except (ValueError, TypeError) as e:
            raise job.field_error(str(e)) from None
        with self.server.slot(prompt) as model:
            events = self._samples(job, model)
            try:
                prompt_tokens = len(prompt)
                first = next(events)  # messages and options are checked before any byte is sent
            except RequestError:
                raise
            except (ValueError, TypeError) as e:
                raise job.field_error(str(e)) from None
            except Exception as e:  # noqa: BLE001 - reported to the client, the server stays up
                raise RequestError(500, f"{type(e).__name__}: {e}", kind="server_error") from None
            try:
                if job.stream:
                    self._send_stream(job.chunks(_chain(first, events), prompt_tokens))
                else:
                    try:
                        body = job.body(_fold(_chain(first, events)), prompt_tokens)
                    except (RequestError, ClientGone):
                        raise
                    except Exception as e:  # noqa: BLE001 - as above
                        raise RequestError(500, f"{type(e).__name__}: {e}", kind="server_error") from None
                    self.send_json(200, body)
            finally:
                events.close()

    def _samples(self, job: Job, model: Model) -> Iterator[tuple[int, Token | Completion]]:
        for i in range(job.n):
            events = job.events(model, i)
            try:
                for event in events:
                    yield i, event
                    if self.client_gone():
                        raise ClientGone
            finally:
                events.close()

    def _send_stream(self, chunks: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for piece in chunks:
                self.wfile.write(piece)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ClientGone):
            pass  # the client left or stalled: closing the chunks generator stops the generation
        except Exception as e:  # noqa: BLE001 - headers are sent: the error goes in the stream
            error = error_body(f"{type(e).__name__}: {e}", "server_error")
            try:
                self.wfile.write(b"data: " + json.dumps(error, ensure_ascii=False).encode() + b"\n\n")
            except OSError:
                pass
        finally:
            chunks.close()


class MethodNotAllowed(Exception):
    def __init__(self, methods: list[str]):
        self.methods = methods


def _parse_json(raw: bytes):
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON ({e})") from None


def check_speculative(job: Job, served: str | None) -> None:
    """A request may turn speculation off or to prompt lookup, or name the draft model the server
    was started with; loading any other model directory is the operator's choice, not a client's."""
    mode = job.options.get("speculative")
    if mode is None or mode in ("off", "prompt") or mode == served:
        return
    field = job.fields.get("speculative", "speculative")
    hint = f" or {served!r} (the server's --draft)" if served not in (None, "off", "prompt") else ""
    raise RequestError(400, f"'{field}' must be \"off\" or \"prompt\"{hint}; a draft model is chosen when the "
                            "server starts (cactus serve --draft MODEL)", field)


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _fold(events: Iterator[tuple[int, Token | Completion]]) -> list[Sample]:
    """A non-streamed answer is the fold of the stream: each sample's tokens and completion."""
    samples, tokens = [], []
    for _, event in events:
        if isinstance(event, Completion):
            samples.append(Sample(tokens, event))
            tokens = []
        else:
            tokens.append(event)
    return samples


def default_parallel(model: Model) -> int:
    """Slots for `cactus serve` when --parallel is not given: batching pays most where decode is
    bound by reading the weights, so two per core for models under 4 GiB, one per core above
    (their caches and steps are larger), 1 to 8."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_core = 2 if model.engine.weights.file.path.stat().st_size < 4 << 30 else 1
    return max(1, min(8, per_core * cores))


def serve(model: Model, model_name: str, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False,
          ready=None, cors: list[str] | None = None, timeout_s: float = TIMEOUT_S, cache_mb: float = CACHE_MB,
          parallel: int = 1) -> None:
    """Serve until interrupted. `ready(server)` is called once the socket is listening."""
    server = Server((host, port), model, model_name, verbose, cors=cors, timeout_s=timeout_s, cache_mb=cache_mb,
                    parallel=parallel)
    if ready:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
