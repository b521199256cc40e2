"""Structured generation as real clients use it: the openai SDK's `parse()` helpers (a pydantic model
as the response format) and json_object mode against `cactus serve` on loopback with the demo model,
and `cactus run --tools FILE --tool-choice` piped."""

from __future__ import annotations

import io
import json
import sys

import pytest

from cactus.cli import main
from cactus.demo import demo_path

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}


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
