"""Property tests of the readers of untrusted input, a few seconds each: weight files, the tool-call
parser, the options parser and the server's request parsers raise only their own error type (the
tool-call parser nothing), whatever they are given. tools/fuzz.py runs the same checks under
atheris for long runs (docs/RELIABILITY.md); every crash either found is a row of REGRESSIONS."""

from __future__ import annotations

import json
import runpy
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cactus.sampling import OptionError, SamplingOptions
from cactus.tools import extract_tool_calls, parse_call_block
from cactus.weights import DTYPES, PlannedTensor, SafetensorsFile, WeightDir, WeightError, write_safetensors

FUZZ = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "fuzz.py"))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


# ----------------------------------------------------------------------------- weight files

def header_entries():
    """Header entries near valid ones: each field sometimes the right type, sometimes anything."""
    dtype = st.sampled_from(sorted(DTYPES)) | json_values
    shape = st.lists(st.integers(-3, 2**40), max_size=4) | json_values
    offsets = st.lists(st.integers(-10, 2**40) | json_values, min_size=0, max_size=3)
    entry = st.fixed_dictionaries({"dtype": dtype, "shape": shape, "data_offsets": offsets})
    return st.dictionaries(st.text(max_size=8), entry | json_values, max_size=4)


@FAST
@given(header=header_entries(), metadata=st.none() | json_values, data=st.binary(max_size=64),
       hlen_delta=st.sampled_from([0, 0, 0, 1, -1, 2**40]))
def test_safetensors_header_fuzz_gives_only_weight_errors(tmp_path, header, metadata, data, hlen_delta):
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    f = tmp_path / "x.safetensors"
    f.write_bytes(FUZZ["safetensors_bytes"](raw, data, max(0, len(raw) + hlen_delta)))
    try:
        st_file = SafetensorsFile(f)
    except WeightError:
        return
    for name, array in st_file.tensors.items():  # what it did accept lies inside the file
        assert array.nbytes <= f.stat().st_size and st_file.dtypes[name] in DTYPES


def write(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    write_safetensors(path, [PlannedTensor(n, {np.float32: "F32", np.int8: "I8"}[a.dtype.type], a.shape,
                                           lambda a=a: a) for n, a in tensors.items()], metadata)
    return path.read_bytes()


@FAST
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_truncated_or_corrupted_files_give_only_weight_errors(tmp_path, cut, flips):
    good = bytearray(write(tmp_path / "good.safetensors", {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                                                          "b": np.ones(5, dtype=np.int8)}, {"k": "v"}))
    end = 8 + int.from_bytes(good[:8], "little") + 64  # the header, and the data right after it
    for at, xor in flips:
        good[int(at * (end - 1))] ^= xor
    f = tmp_path / "bad.safetensors"
    f.write_bytes(bytes(good[:int(cut * len(good))]))
    try:
        SafetensorsFile(f)
    except WeightError:
        pass


@FAST
@given(tensors=st.dictionaries(st.text(max_size=6), json_values | st.fixed_dictionaries(
    {"fmt": st.sampled_from(["f32", "f16", "int8", "int4", "q9"]) | json_values,
     "shape": st.lists(st.integers(-2, 70), max_size=3) | json_values,
     "group_size": st.sampled_from([0, 32, 7, -32]) | json_values}), max_size=3) | json_values)
def test_cactus_tensor_metadata_fuzz_gives_only_weight_errors(tmp_path, tensors):
    """The `cactus.tensors` metadata of a converted model: what each weight's format and shape are."""
    write(tmp_path / "model.safetensors", {"w": np.zeros((2, 64), np.float32)},
          {"cactus.tensors": json.dumps(tensors)})
    (tmp_path / "config.json").write_text(json.dumps({"cactus": {"format_version": 1}}))
    try:
        wd = WeightDir(tmp_path)
        for name, info in wd.info.items():
            wd.tensor(name, info.shape)
    except WeightError:
        pass


@FAST
@given(st.binary(max_size=300))
def test_fuzz_harness_safetensors_target(data):
    FUZZ["check_safetensors"](data)


# ----------------------------------------------------------------------------- tool calls

call_text = st.text(alphabet="[](){}=,'\":.\\ abcxyz0123456789-_TrueFalseNone\n", max_size=80)


@FAST
@given(st.one_of(call_text, st.text(max_size=80)))
def test_tool_call_parser_never_raises(text):
    calls = parse_call_block(text)
    assert calls is None or all(isinstance(c["name"], str) and isinstance(c["arguments"], dict) for c in calls)
    rest, found = extract_tool_calls(f"a<|tool_call_start|>{text}<|tool_call_end|>b{text}")
    assert isinstance(rest, str) and isinstance(found, list)


@FAST
@given(st.binary(max_size=200))
def test_fuzz_harness_tools_target(data):
    FUZZ["check_tools"](data)


@pytest.mark.parametrize("text", [
    "[f(a=" + "[" * 100_000 + "]" * 100_000 + ")]",   # nesting far past the parser's recursion limit
    "[f(a=" + "{'a': " * 50_000 + "1" + "}" * 50_000 + ")]",
    "[" * 200_000,
    "[f(x='" + "a" * 2_000_000 + "')]",               # a 2 MB argument
    "[" + ", ".join(f"f{i}(a={i})" for i in range(20_000)) + "]",
    "<|tool_call_start|>" * 20_000,                   # many unterminated blocks
    "(" * 100_000 + "f()" + ")" * 100_000,
    "[f(a=1e99999, b=-1e99999)]",
    "[f(a=" + "9" * 5000 + ")]",                      # past int's 4300-digit str limit
])
def test_tool_call_parser_on_huge_and_deep_input_returns_in_bounded_time(text):
    start = time.perf_counter()
    parse_call_block(text)
    extract_tool_calls(text)
    assert time.perf_counter() - start < 30  # a bound against quadratic blow-ups, not a benchmark


# ----------------------------------------------------------------------------- options and requests

option_names = st.sampled_from(["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed",
                                "max_tokens", "stop", "confidence_threshold", "confidence_window",
                                "max_new_tokens", "n_predict", "stop_sequences", "bogus"])


@FAST
@given(st.dictionaries(option_names, json_values | st.integers(-2**80, 2**80), max_size=5) | json_values)
def test_options_parser_raises_only_option_errors(options):
    for source in (options, json.dumps(options)):
        try:
            SamplingOptions.parse(source)
        except OptionError:
            pass


@FAST
@given(st.binary(max_size=200))
def test_fuzz_harness_options_target(data):
    FUZZ["check_options"](data)


request_fields = st.sampled_from(["messages", "tools", "tool_choice", "stream", "stream_options", "n",
                                  "temperature", "stop", "max_tokens", "model", "response_format", "logprobs",
                                  "top_logprobs", "prompt", "input", "instructions", "text", "frobnicate"])
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool", "x"]) | json_values,
                                           "content": st.text(max_size=10) | json_values}), max_size=3)


@FAST
@given(st.dictionaries(request_fields, json_values | messages, max_size=6) | json_values)
def test_request_parsers_raise_only_request_errors(body):
    FUZZ["check_request_body"](body)  # chat completions, completions, responses


@FAST
@given(st.binary(max_size=200))
def test_fuzz_harness_request_target(data):
    FUZZ["check_request"](data)


# ----------------------------------------------------------------------------- crashes found

def _entry(**kw):
    return {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], **kw}


REGRESSIONS = [  # (what the fuzzer found, the header) -> WeightError, no longer the exception named
    ("TypeError: unhashable dtype", {"t": _entry(dtype=["F32"])}),
    ("TypeError: string offsets", {"t": _entry(data_offsets=["0", "4"])}),
    ("TypeError: float offsets sliced the buffer", {"t": _entry(data_offsets=[0.0, 4.0])}),
    ("OverflowError: int(inf) of a shape", {"t": _entry(shape=[1e400])}),
    ("ValueError: int64 wrap of a huge shape made 0 bytes", {"t": _entry(shape=[2**32, 2**32, 2**32],
                                                                         data_offsets=[0, 0])}),
    ("ValueError: reshape to a huge dimension", {"t": _entry(shape=[0, 2**62], data_offsets=[0, 0])}),
    ("AttributeError later: __metadata__ a list", {"__metadata__": [1]}),
    ("RecursionError: deep header", b"[" * 100_000),
]


@pytest.mark.parametrize("what,header", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_fuzz_regressions_are_weight_errors(tmp_path, what, header):
    f = tmp_path / "x.safetensors"
    f.write_bytes(FUZZ["safetensors_bytes"](header, b"\0" * 8))
    with pytest.raises(WeightError):
        SafetensorsFile(f)


def test_fuzz_regression_option_values_past_float_range():
    with pytest.raises(OptionError, match="'temperature' must be a number"):
        SamplingOptions.parse({"temperature": 10**400})
    with pytest.raises(OptionError, match="an integer of 16610 bits"):
        SamplingOptions.parse({"top_k": -(10**5000)})
    with pytest.raises(OptionError, match="not valid JSON"):
        SamplingOptions.parse("[" * 100_000)
