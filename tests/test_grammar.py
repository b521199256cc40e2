"""Structured generation (cactus.grammar): the call-block grammar built from tool schemas accepts
exactly the calls the schemas allow, in LFM2's pythonic syntax; the mask acts inside generate()
for greedy and sampled decoding; tool_choice and response_format hold on the demo model; bad
requests fail naming the field; confidence reads the unconstrained distribution."""

from __future__ import annotations

import json

import llguidance
import numpy as np
import pytest

from cactus import Model, cactus_complete
from cactus.demo import demo_path
from cactus.grammar import call_block_grammar
from cactus.sampling import Sampler, SamplingOptions
from cactus.tokenizer import Tokenizer
from cactus.tools import TOOL_CALL_END, TOOL_CALL_START, parse_call_block


def tool(name, properties, required=(), **extra):
    return {"type": "function", "function": {"name": name, "description": name, "parameters": {
        "type": "object", "properties": properties, "required": list(required), **extra}}}


WEATHER = tool("get_weather", {"city": {"type": "string"},
                               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"])
TIME = tool("get_time", {"timezone": {"type": "string"}}, ["timezone"])
RICH = tool("Calendar.create_event", {
    "title": {"type": "string", "minLength": 1},
    "attendees": {"type": "array", "items": {"type": "string"}},
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "weight": {"type": "number"},
    "private": {"type": "boolean"},
    "room": {"type": ["string", "null"]},
    "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
              "required": ["lat", "lon"]},
    "kind": {"const": "meeting"},
}, ["title", "days"])


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(demo_path())


@pytest.fixture(scope="module")
def model():
    m = Model(demo_path())
    yield m
    m.close()


def accepts(tokenizer, grammar: str, text: str) -> bool:
    ll = llguidance.LLTokenizer(tokenizer._tok.to_str(), n_vocab=8192, eos_token=[7])
    m = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    assert not m.is_error(), m.get_error()
    ok = all(m.consume_token(t) for t in tokenizer.encode(text))
    return ok and m.is_accepting()


CALLS = [  # (tools, text after <|tool_call_start|>, accepted)
    ([WEATHER], '[get_weather(city="Paris")]', True),
    ([WEATHER], '[get_weather(city="Paris", unit="celsius")]', True),
    ([WEATHER], '[get_weather(unit="celsius")]', False),               # required key missing
    ([WEATHER], '[get_weather(city="Paris", unit="kelvin")]', False),  # outside the enum
    ([WEATHER], '[get_weather(city="Paris", country="FR")]', False),   # undeclared key
    ([WEATHER], '[get_weather(city=3)]', False),                       # wrong type
    ([WEATHER], '[get_time(timezone="UTC")]', False),                  # undeclared tool
    ([WEATHER, TIME], '[get_weather(city="Paris"), get_time(timezone="UTC")]', True),
    ([TIME], '[get_time(timezone="line\\nbreak \\"quoted\\"")]', True),
    ([TIME], "[get_time(timezone='Europe/Paris')]", True),                   # repr's quotes
    ([WEATHER], "[get_weather(city='Nice', unit='celsius')]", True),
    ([TIME], "[get_time(timezone='two\nlines')]", False),                   # a raw newline: not Python
    ([RICH], '[Calendar.create_event(title="Sync", days=3)]', True),
    ([RICH], '[Calendar.create_event(title="Sync", attendees=["ann", "bo"], days=7, weight=1.5, '
             'private=True, room=None, where={"lat": 1.0, "lon": -2}, kind="meeting")]', True),
    ([RICH], '[Calendar.create_event(title="Sync", days=8)]', False),       # maximum
    ([RICH], '[Calendar.create_event(title="", days=2)]', False),           # minLength
    ([RICH], '[Calendar.create_event(title="Sync", days=2.5)]', False),     # integer
    ([RICH], '[Calendar.create_event(title="Sync", days=2, private=true)]', False),  # Python spelling
    ([RICH], '[Calendar.create_event(title="Sync", days=2, where={"lat": 1})]', False),  # nested required
    ([RICH], '[Calendar.create_event(title="Sync", days=2, kind="party")]', False),  # const
    ([tool("ping", {})], "[ping()]", True),
    ([tool("f", {"a": {"type": "integer"}}, additionalProperties=True)], "[f(a=1, other=[1, 2])]", True),
]


@pytest.mark.parametrize("tools, text, ok", CALLS)
def test_call_grammar_accepts_exactly_what_the_schema_allows(tokenizer, tools, text, ok):
    grammar = call_block_grammar(tools, single=False)
    assert accepts(tokenizer, grammar, text + TOOL_CALL_END) is ok
    if ok:  # what the grammar lets through is what the parser reads back
        assert parse_call_block(text) is not None


def test_parallel_tool_calls_false_allows_one_call(tokenizer):
    grammar = call_block_grammar([WEATHER, TIME], single=True)
    assert accepts(tokenizer, grammar, '[get_weather(city="Paris")]' + TOOL_CALL_END)
    assert not accepts(tokenizer, grammar, '[get_weather(city="Paris"), get_time(timezone="UTC")]' + TOOL_CALL_END)


def test_the_mask_binds_greedy_and_sampled_choices_but_not_the_confidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=64).astype(np.float32)
    allowed = np.zeros(64, dtype=bool)
    allowed[[3, 17, 40]] = True
    best = max((3, 17, 40), key=lambda i: logits[i])
    token, p = Sampler(SamplingOptions())(logits, (), allowed)
    assert token == best
    w = np.exp(logits - logits.max())
    assert p == pytest.approx(w[best] / w.sum(), rel=1e-6)  # the model's own probability
    sampler = Sampler(SamplingOptions(temperature=1.5, top_p=0.9, seed=1))
    assert {sampler(logits, (), allowed)[0] for _ in range(200)} <= {3, 17, 40}


def complete(model, text, tools=None, **options):
    model.reset()
    return model.complete([{"role": "user", "content": text}], tools=tools, **{"max_tokens": 80, **options})


def test_only_declared_tools_are_called(model):
    # the demo model answers a time question with get_time; offered only get_weather, it cannot
    for question in ("What time is it in Tokyo?", "What is the weather in Paris?", "Search the web for cats"):
        c = complete(model, question, [WEATHER])
        assert all(call["name"] == "get_weather" for call in c.function_calls), c.function_calls
        assert TOOL_CALL_START not in c.response


def test_tool_choice(model):
    assert not complete(model, "What is the weather in Paris?", [WEATHER], tool_choice="none").function_calls
    c = complete(model, "Hello", [WEATHER, TIME], tool_choice="required")
    assert c.function_calls and c.function_calls[0]["name"] in ("get_weather", "get_time")
    c = complete(model, "What is the weather in Paris?", [WEATHER, TIME],
                 tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [call["name"] for call in c.function_calls] == ["get_time"]
    assert set(c.function_calls[0]["arguments"]) == {"timezone"}


def test_sampled_answers_obey_the_grammar_too(model):
    for seed in range(4):
        c = complete(model, "What is the weather like?", [WEATHER], tool_choice="required",
                     temperature=1.0, seed=seed)
        assert c.function_calls and all(call["name"] == "get_weather" for call in c.function_calls)
        for call in c.function_calls:
            assert "city" in call["arguments"] and set(call["arguments"]) <= {"city", "unit"}
            assert call["arguments"].get("unit", "celsius") in ("celsius", "fahrenheit")


PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                          "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age"], "additionalProperties": False}


def test_response_format_json_schema_always_parses(model):
    for seed, temperature in ((0, 0.0), (1, 1.0), (2, 1.0)):
        c = complete(model, "Describe a person", temperature=temperature, seed=seed,
                     response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
        if c.finish_reason == "length":
            continue
        value = json.loads(c.response)
        assert set(value) <= {"name", "age", "tags"} and {"name", "age"} <= set(value)
        assert isinstance(value["age"], int) and value["age"] >= 0


def test_response_format_json_object(model):
    c = complete(model, "Write a sort function", response_format={"type": "json_object"})
    assert c.finish_reason == "length" or isinstance(json.loads(c.response), dict)
    assert c.response.startswith("{")


def test_confidence_is_the_unconstrained_models(model):
    """A forced call: confidence is the mean of the model's own T=1 probabilities of the tokens
    written, recomputed here from the raw logits of a fresh forward."""
    messages = [{"role": "user", "content": "Write a sort function"}]
    model.reset()
    forced = model.complete(messages, tools=[WEATHER], tool_choice="required", max_tokens=20)
    assert forced.function_calls
    engine = model.engine
    engine.reset()
    logits = engine.forward(model.prompt_ids(messages, [WEATHER]), last_only=True)[-1]
    probs = []
    for token in forced.token_ids[:16]:
        w = np.exp(logits.astype(np.float64) - logits.max())
        probs.append(w[token] / w.sum())
        logits = engine.forward([token], last_only=True)[-1]
    model.session.reset()
    assert forced.confidence == pytest.approx(float(np.mean(probs)), rel=1e-5)


@pytest.mark.parametrize("tools, options, field", [
    (None, {"tool_choice": "required"}, "tool_choice"),
    ([WEATHER], {"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ([WEATHER], {"tool_choice": "sometimes"}, "tool_choice"),
    ([tool("f", {"a": {"type": "colour"}})], {}, "tools"),
    ([tool("f", {"a": {"$ref": "http://example.com/x"}})], {}, "tools"),
    (None, {"response_format": {"type": "xml"}}, "response_format"),
    (None, {"response_format": {"type": "json_schema", "json_schema": {"schema": "object"}}}, "response_format"),
    (None, {"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_requests_fail_naming_the_field(model, tools, options, field):
    r = json.loads(cactus_complete(model, [{"role": "user", "content": "hi"}], tools=tools, options=options))
    assert not r["success"] and field in r["error"], r["error"]


def test_recursive_schema_through_refs(tokenizer):
    node = tool("tree", {"root": {"$ref": "#/$defs/node"}}, ["root"],
                **{"$defs": {"node": {"type": "object", "properties": {
                    "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                    "required": ["v"]}}})
    grammar = call_block_grammar([node], single=False)
    good = '[tree(root={"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": []}]})]'
    assert accepts(tokenizer, grammar, good + TOOL_CALL_END)
    assert not accepts(tokenizer, grammar, '[tree(root={"v": 1, "kids": [{"w": 2}]})]' + TOOL_CALL_END)
