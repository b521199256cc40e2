"""Structured generation as real clients use it: the openai SDK's `parse()` helpers (a pydantic model
as the response format) and json_object mode against `cactus serve` on loopback with the demo model,
and `cactus run --tools FILE --tool-choice` piped."""

from __future__ import annotations

import io
import json
import sys
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from cactus import grammar
from cactus.cli import main
from cactus.demo import demo_path
from cactus.tokenizer import Tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}

WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


class Day(BaseModel):
    sky: Literal["sunny", "cloudy", "rainy"]
    high: int = Field(ge=-40, le=50)


class Forecast(BaseModel):  # nested models, a list with bounds, an enum, a bounded string
    city: str = Field(max_length=20)
    days: list[Day] = Field(min_length=1, max_length=3)
    windy: bool


# ----------------------------------------------------------------------------- checked after generation

def fn(properties, **extra):
    return {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": properties, **extra}}}


POST_CHECK = [  # (tool, arguments, kept as a call): grammar.check_calls, what api.py runs on every call
    (fn({"a": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}}), {"a": [1, 2]}, True),
    (fn({"a": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}}), {"a": [1, 2, 3]}, False),
    (fn({"a": {"allOf": [{"type": "integer"}, {"minimum": 5}]}}), {"a": 3}, False),
    (fn({"a": {"type": "string", "pattern": "^[0-9]+$"}}), {"a": "x"}, False),
    # keywords llguidance does not implement leave the rest checked, not every call refused
    (fn({"a": {"type": "integer", "not": {"const": 3}}}), {"a": 4}, True),
    (fn({"a": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}}), {"a": [1, 1]}, True),
    (fn({"a": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}), {"a": 3}, True),
    (fn({"a": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}), {"a": [3]}, False),
    # absent additionalProperties is false, as the grammar takes it; an object without properties takes any
    (fn({"a": {"type": "integer"}}), {"a": 1, "b": 2}, False),
    (fn({"a": {"type": "object", "properties": {"x": {"type": "integer"}}}}), {"a": {"x": 1, "y": 2}}, False),
    (fn({"a": {"type": "object"}}), {"a": {"x": 1, "y": [2]}}, True),
    (fn({"a": {"type": "integer"}}, additionalProperties=True), {"a": 1, "b": 2}, True),
]


@pytest.mark.parametrize("tool,arguments,kept", POST_CHECK)
def test_calls_are_checked_against_the_full_schema(tool, arguments, kept):
    ll = grammar.ll_tokenizer(Tokenizer(demo_path()), 8192, [7])
    valid, rejected = grammar.check_calls([tool], [{"name": "f", "arguments": arguments}], ll)
    assert (valid, rejected) == (([{"name": "f", "arguments": arguments}], []) if kept
                                 else ([], [{"name": "f", "arguments": arguments}]))


# ----------------------------------------------------------------------------- the openai SDK's parse()

def test_chat_completions_parse_gives_the_pydantic_object(demo, start):
    # parse() sends the model's strict json_schema and validates the answer with pydantic
    client, _ = start(demo)
    for question in (WEATHER_Q, [{"role": "user", "content": "Forecast for Tokyo this week"}]):
        r = client.chat.completions.parse(model="demo", messages=question, response_format=Forecast, max_tokens=120)
        choice = r.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Forecast)
        assert choice.message.parsed == Forecast.model_validate_json(choice.message.content)
        assert 1 <= len(choice.message.parsed.days) <= 3 and len(choice.message.parsed.city) <= 20


def test_chat_completions_stream_parses_the_same_object(demo, start):
    client, _ = start(demo)
    whole = client.chat.completions.parse(model="demo", messages=WEATHER_Q, response_format=Forecast, max_tokens=120)
    with client.chat.completions.stream(model="demo", messages=WEATHER_Q, response_format=Forecast,
                                        max_tokens=120) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == whole.choices[0].message.parsed


def test_responses_parse_with_text_format(demo, start):
    client, _ = start(demo)
    r = client.responses.parse(model="demo", input="What is the weather in Paris?", text_format=Forecast,
                               max_output_tokens=120)
    assert r.status == "completed" and isinstance(r.output_parsed, Forecast)
    assert r.output_parsed == Forecast.model_validate_json(r.output_text)


@pytest.mark.parametrize("system,question", [("Answer with a JSON object.", "What is the weather in Paris?"),
                                             (None, "Hello"), (None, "Return a JSON object with a key answer.")])
def test_json_object_mode_gives_a_json_object(demo, start, system, question):
    # prompts the demo model answers within the budget (a string it never closes would stop at length)
    client, _ = start(demo)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    r = client.chat.completions.create(model="demo", messages=messages, response_format={"type": "json_object"},
                                       max_tokens=120)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


# ----------------------------------------------------------------------------- cactus run --tool-choice

@pytest.fixture
def tools_file(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([WEATHER, TIME]))
    return str(path)


def run_piped(capsys, monkeypatch, stdin: str, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(["run", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("choice,call", [("get_time", "get_time("), ("required", ""), ("none", None)])
def test_run_tool_choice_is_passed_through(capsys, monkeypatch, tools_file, choice, call):
    # a weather question: a named tool is called anyway, "none" allows no call at all
    rc, out, err = run_piped(capsys, monkeypatch, "What is the weather in Paris?\n", str(demo_path()),
                             "--tools", tools_file, "--tool-choice", choice, "--max-tokens", "40")
    assert rc == 0, err
    calls = [line for line in out.splitlines() if line.startswith("[tool call] ")]
    if call is None:
        assert calls == []
    else:
        assert len(calls) >= 1 and calls[0].startswith(f"[tool call] {call}")
        assert calls[0].removeprefix("[tool call] ").split("(")[0] in ("get_weather", "get_time")


@pytest.mark.parametrize("argv,line", [
    (["--tool-choice", "bogus", "--tools", "{tools}"],
     "--tool-choice: must be auto, none, required or a tool in {tools} (get_weather, get_time), got 'bogus'"),
    (["--tool-choice", "get_weather"],
     "--tool-choice: must be auto, none, required or a tool name (with --tools), got 'get_weather'"),
    (["--tool-choice", "required"],
     "--tool-choice required: a tool call is required but no --tools were given"),
])
def test_run_bad_tool_choice_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path, tools_file, argv, line):
    # the model path does not exist: the flag is refused first, before anything loads
    argv = [a.replace("{tools}", tools_file) for a in argv]
    rc, out, err = run_piped(capsys, monkeypatch, "Hi\n", str(tmp_path / "no-model"), *argv)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [f"cactus run: error: {line.replace('{tools}', tools_file)}"]


def test_the_call_grammar_takes_any_keys_in_an_object_without_properties():
    import llguidance

    tok = Tokenizer(demo_path())
    ll = grammar.ll_tokenizer(tok, 8192, [7])
    lark = grammar.call_block_grammar([fn({"a": {"type": "object"}})], single=False)

    def accepts(text: str) -> bool:
        m = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)
        return all(m.consume_token(t) for t in tok.encode(text + "<|tool_call_end|>")) and m.is_accepting()

    assert accepts('[f(a={"x": 1, "y": [2]})]') and accepts("[f(a={})]")
    assert not accepts('[f(a={"x": 1}, b=2)]')  # the arguments themselves stay closed
