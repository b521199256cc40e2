"""Fuzz cactus's readers of untrusted input with atheris (coverage-guided, libFuzzer), for long runs.

    pip install atheris
    python tools/fuzz.py TARGET [libFuzzer flags]      # e.g. -max_total_time=3600 -jobs=2 corpus/

Targets: safetensors (weights.SafetensorsFile / WeightDir), tools (tools.parse_call_block /
extract_tool_calls), options (sampling.SamplingOptions.parse), request (the server's request
parsers: chat completions, completions, responses).
Each `check_<target>(data: bytes)` raises only when the parser breaks its contract: an exception
type other than the one it documents, or (tools) any exception at all. tests/test_fuzz.py runs
these same checks under hypothesis for a few seconds in CI; docs/RELIABILITY.md says how to run
them for an hour. A crash found becomes a fix plus a regression row in tests/test_fuzz.py.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cactus.openai_chat import ChatJob, CompletionJob, RequestError  # noqa: E402
from cactus.openai_responses import ResponsesJob  # noqa: E402
from cactus.sampling import OptionError, SamplingOptions  # noqa: E402
from cactus.tools import extract_tool_calls, parse_call_block  # noqa: E402
from cactus.weights import SafetensorsFile, WeightDir, WeightError  # noqa: E402

_SCRATCH = Path(tempfile.mkdtemp(prefix="cactus-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def safetensors_bytes(header: object, data: bytes = b"", hlen: int | None = None) -> bytes:
    """A safetensors file: u64 header length, the header as JSON (or given bytes), the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data


def check_safetensors(data: bytes) -> None:
    """Any bytes as a .safetensors file, and as the weights of a converted model directory:
    reading it gives tensors or a WeightError, nothing else. The first byte picks how the rest
    is read: as the whole file, or as a header (JSON) + data split at the second byte."""
    if data and data[0] & 1:  # structured: a header of the fuzzer's bytes with a correct length
        cut = data[1] if len(data) > 1 else 0
        data = safetensors_bytes(data[2:2 + cut], data[2 + cut:])
    (_SCRATCH / "model.safetensors").write_bytes(data)
    try:
        SafetensorsFile(_SCRATCH / "model.safetensors")
    except WeightError:
        pass
    config = _SCRATCH / "config.json"
    if not config.exists():
        config.write_text(json.dumps({"cactus": {"format_version": 1, "weights": "model.safetensors"}}))
    try:
        wd = WeightDir(_SCRATCH)
        for name, info in list(wd.info.items())[:16]:
            wd.tensor(name, info.shape)
    except WeightError:
        pass


def check_tools(data: bytes) -> None:
    """Any text as generated output: the tool-call parser never raises."""
    text = data.decode("utf-8", "replace")
    parse_call_block(text)
    extract_tool_calls(text)
    extract_tool_calls(f"<|tool_call_start|>{text}<|tool_call_end|>")


def check_options(data: bytes) -> None:
    """Any bytes as the options JSON of cactus_complete: options or an OptionError."""
    try:
        SamplingOptions.parse(data)
    except OptionError:
        pass


REQUEST_PARSERS = (ChatJob.parse, CompletionJob.parse, ResponsesJob.parse)  # server.py's routes


def check_request_body(body: object) -> None:
    """Any JSON value as the body of each route: a job, or a RequestError (the server's 4xx)."""
    for parse in REQUEST_PARSERS:
        try:
            parse(body, "model")
        except RequestError:
            pass


def check_request(data: bytes) -> None:
    """Any bytes as a request body, JSON-decoded as the server does first."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return  # the server answers 400 itself before any parser
    check_request_body(body)


TARGETS = {"safetensors": check_safetensors, "tools": check_tools, "options": check_options,
           "request": check_request}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in TARGETS:
        sys.exit(f"usage: python tools/fuzz.py {{{','.join(TARGETS)}}} [libFuzzer flags]")
    try:
        import atheris
    except ImportError:
        sys.exit("tools/fuzz.py needs atheris: pip install atheris")
    check = TARGETS[argv[0]]
    atheris.instrument_all()  # coverage of everything imported (cactus included) guides the mutations
    atheris.Setup([sys.argv[0], *argv[1:]], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
