"""Tool-call parsing and rendering (cactus.tools), from tables."""

import pytest

from cactus.tools import extract_tool_calls, format_tool_calls, normalize_call, parse_call_block

S, E = "<|tool_call_start|>", "<|tool_call_end|>"


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


# (generated text, expected remaining text, expected calls)
PARSE_CASES = [
    ("no call", "hello", "hello", []),
    ("simple", f"{S}[get_weather(city='Paris')]{E}", "", [call("get_weather", city="Paris")]),
    ("no arguments", f"{S}[now()]{E}", "", [call("now")]),
    ("list then int", f"{S}[f(items=[1, 2], n=3)]{E}", "", [call("f", items=[1, 2], n=3)]),
    ("two calls", f"{S}[a(x=1), b(y='z')]{E}", "", [call("a", x=1), call("b", y="z")]),
    ("three calls", f"{S}[a(), b(), c(k=None)]{E}", "", [call("a"), call("b"), call("c", k=None)]),
    ("nested dict and list", f"{S}[f(cfg={{'a': [1, {{'b': (2, 3)}}], 'c': {{}}}})]{E}", "",
     [call("f", cfg={"a": [1, {"b": [2, 3]}], "c": {}})]),
    ("string with comma and paren", f"{S}[f(s='a, b) c')]{E}", "", [call("f", s="a, b) c")]),
    ("string with brackets", f"{S}[f(s='x]y[z', t=\"]\")]{E}", "", [call("f", s="x]y[z", t="]")]),
    ("string with quotes", f"{S}[f(s=\"it's \\\"quoted\\\"\")]{E}", "", [call("f", s="it's \"quoted\"")]),
    ("string with marker-like text", f"{S}[f(code='print(\"[1, 2]\")')]{E}", "",
     [call("f", code='print("[1, 2]")')]),
    ("unicode", f"{S}[translate(text='日本語 ✓ 🎉', to='fr')]{E}", "",
     [call("translate", text="日本語 ✓ 🎉", to="fr")]),
    ("numbers", f"{S}[f(a=-1, b=2.5, c=1e3, d=0x10)]{E}", "", [call("f", a=-1, b=2.5, c=1000.0, d=16)]),
    ("booleans python", f"{S}[f(a=True, b=False)]{E}", "", [call("f", a=True, b=False)]),
    ("booleans json", f"{S}[f(a=true, b=[false, null])]{E}", "", [call("f", a=True, b=[False, None])]),
    ("multiline code arg", f"{S}[run_code(code='def f(x):\\n    return x * 2')]{E}", "",
     [call("run_code", code="def f(x):\n    return x * 2")]),
    ("text around call", f"Let me check.{S}[f(a=1)]{E}Done.", "Let me check.Done.", [call("f", a=1)]),
    ("two blocks", f"{S}[a()]{E} and {S}[b(x=2)]{E}", " and ", [call("a"), call("b", x=2)]),
    ("whitespace inside", f"{S} [ f( a = 1 ) ] {E}", "", [call("f", a=1)]),
    ("single call without list", f"{S}f(a=1){E}", "", [call("f", a=1)]),
    ("dotted name", f"{S}[math.add(a=1)]{E}", "", [call("math.add", a=1)]),
    ("json array", f'{S}[{{"name": "f", "arguments": {{"a": 1, "b": [true, null]}}}}]{E}', "",
     [call("f", a=1, b=[True, None])]),
    ("json array two calls",
     f'{S}[{{"name": "a", "arguments": {{}}}}, {{"name": "b", "arguments": {{"s": "x,]"}}}}]{E}',
     "", [call("a"), call("b", s="x,]")]),
    ("json single object", f'{S}{{"name": "f", "arguments": {{"q": "é"}}}}{E}', "", [call("f", q="é")]),
    ("json arguments as string", f'{S}[{{"name": "f", "arguments": "{{\\"a\\": 2}}"}}]{E}', "",
     [call("f", a=2)]),
    ("unterminated but complete", f"ok {S}[f(a=1)]", "ok ", [call("f", a=1)]),
    # malformed: left as plain text, no exception
    ("positional argument", f"{S}[f(1)]{E}", f"{S}[f(1)]{E}", []),
    ("name argument", f"{S}[f(a=b)]{E}", f"{S}[f(a=b)]{E}", []),
    ("function call argument", f"{S}[f(a=open('x'))]{E}", f"{S}[f(a=open('x'))]{E}", []),
    ("star kwargs", f"{S}[f(**{{'a': 1}})]{E}", f"{S}[f(**{{'a': 1}})]{E}", []),
    ("repeated keyword", f"{S}[f(a=1, a=2)]{E}", f"{S}[f(a=1, a=2)]{E}", []),
    ("unbalanced", f"{S}[f(a=[1, 2)]{E}", f"{S}[f(a=[1, 2)]{E}", []),
    ("unterminated string", f"{S}[f(a='x)]{E}", f"{S}[f(a='x)]{E}", []),
    ("garbage", f"{S}@@ not python ##{E}", f"{S}@@ not python ##{E}", []),
    ("empty block", f"{S}{E}", f"{S}{E}", []),
    ("not a call", f"{S}[1, 2]{E}", f"{S}[1, 2]{E}", []),
    ("lambda", f"{S}[f(a=lambda: 0)]{E}", f"{S}[f(a=lambda: 0)]{E}", []),
    ("subscript call", f"{S}[x[0](a=1)]{E}", f"{S}[x[0](a=1)]{E}", []),
    ("set argument: a list in written order", f"{S}[f(a={{2, 1}})]{E}", "", [call("f", a=[2, 1])]),
    ("bytes argument", f"{S}[f(a=b'x')]{E}", f"{S}[f(a=b'x')]{E}", []),
    ("unterminated and cut", f"{S}[f(a=1", f"{S}[f(a=1", []),
    ("json object with extra key", f'{S}{{"name": "f", "arguments": {{}}, "x": 1}}{E}',
     f'{S}{{"name": "f", "arguments": {{}}, "x": 1}}{E}', []),
    ("json nan", f'{S}[{{"name": "f", "arguments": {{"a": NaN}}}}]{E}',
     f'{S}[{{"name": "f", "arguments": {{"a": NaN}}}}]{E}', []),
    ("deep nesting", f"{S}[f(a={'[' * 5000}{']' * 5000})]{E}", f"{S}[f(a={'[' * 5000}{']' * 5000})]{E}", []),
    ("bad block then good block", f"{S}[f(1)]{E}{S}[g(a=1)]{E}", f"{S}[f(1)]{E}", [call("g", a=1)]),
    ("stray end marker dropped", f"text {E}", "text ", []),
]


@pytest.mark.parametrize("text, rest, calls", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_extract_tool_calls(text, rest, calls):
    assert extract_tool_calls(text) == (rest, calls)


def test_parse_call_block_returns_none_for_malformed():
    assert parse_call_block("[f(1)]") is None


RENDER_CASES = [
    ("simple", [call("f", a=1)], f"{S}[f(a=1)]{E}"),
    ("strings are repr'd", [call("f", s="it's")], f'{S}[f(s="it\'s")]{E}'),
    ("json literals become python", [call("f", a=True, b=None, c=[1.5, {"k": False}])],
     f"{S}[f(a=True, b=None, c=[1.5, {{'k': False}}])]{E}"),
    ("two calls", [call("a"), call("b", x="y")], f"{S}[a(), b(x='y')]{E}"),
    ("openai style", [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": "x"}'}}],
     f"{S}[f(q='x')]{E}"),
]


@pytest.mark.parametrize("calls, text", [c[1:] for c in RENDER_CASES], ids=[c[0] for c in RENDER_CASES])
def test_format_tool_calls(calls, text):
    assert format_tool_calls(calls) == text


ROUND_TRIP = [
    [call("f", items=[1, 2], n=3)],
    [call("run_code", code="print('a, b')\n# ]) \"q\"")],
    [call("a", x={"nested": [1, {"y": None}]}), call("b", s="日本 🎉")],
]


@pytest.mark.parametrize("calls", ROUND_TRIP)
def test_format_then_parse_round_trips(calls):
    assert extract_tool_calls(format_tool_calls(calls)) == ("", calls)


BAD_CALLS = [
    ("not an object", "f"),
    ("no name", {"arguments": {}}),
    ("name not identifier", {"name": "get-weather", "arguments": {}}),
    ("arguments not json", {"name": "f", "arguments": "{bad"}),
    ("arguments not object", {"name": "f", "arguments": [1]}),
    ("argument name not identifier", {"name": "f", "arguments": {"a b": 1}}),
]


@pytest.mark.parametrize("bad", [c[1] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_normalize_call_rejects(bad):
    with pytest.raises(ValueError):
        normalize_call(bad)
