"""`cactus serve` on loopback, driven by the official openai client, openai-agents and raw sockets:
chat completions, legacy completions, the Responses API, HTTP robustness, the conversation pool.
The demo model answers; ScriptedModel where the answer or the engine calls must be known.
Every socket and client has a timeout."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from chat_helpers import ScriptedModel

from cactus.api import Model
from cactus.demo import demo_path
from cactus.generate import Session
from cactus.server import MAX_BODY
from cactus.tokenizer import Tokenizer

T = 60  # seconds: the bound on every socket and client call
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
FN = {"name": "get_weather", "description": "Weather for a city",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOLS = [{"type": "function", "function": FN}]
RESPONSES_TOOLS = [{"type": "function", **FN}]


def post(port: int, path: str, body, conn: http.client.HTTPConnection | None = None, headers=None):
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=T)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    return resp, json.loads(resp.read() or b"null")


# ----------------------------------------------------------------------------- chat completions

def test_chat_completion_matches_the_api(demo, start):
    client, _ = start(demo)
    r = client.chat.completions.create(model="demo", messages=USER, max_tokens=8, temperature=0)
    expected = demo.complete(USER, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == expected.response
    assert r.usage.completion_tokens == expected.decode_tokens
    assert r.usage.prompt_tokens == len(demo.prompt_ids(USER))


def test_developer_role_is_system(demo, start):
    client, _ = start(demo)
    ask = [{"role": "developer", "content": "Answer in one word."}] + USER
    r = client.chat.completions.create(model="demo", messages=ask, max_tokens=8)
    system = [{"role": "system", "content": "Answer in one word."}] + USER
    assert r.choices[0].message.content == demo.complete(system, max_tokens=8).response


def test_streaming_joins_to_the_answer_and_usage_comes_only_when_asked(demo, start):
    client, _ = start(demo)
    plain = client.chat.completions.create(model="demo", messages=USER, max_tokens=10).choices[0].message.content
    chunks = list(client.chat.completions.create(model="demo", messages=USER, max_tokens=10, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="demo", messages=USER, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])


def test_tool_choice_required_gives_a_declared_call(demo, start):
    client, _ = start(demo)
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hello"}],
                                       tools=TOOLS, tool_choice="required", max_tokens=40)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    stream = client.chat.completions.create(model="demo", messages=USER, tools=TOOLS, tool_choice="required",
                                            max_tokens=40, stream=True)
    calls = [tc for ch in stream if ch.choices and ch.choices[0].delta.tool_calls
             for tc in ch.choices[0].delta.tool_calls]
    assert [c.function.name for c in calls] == ["get_weather"]


def test_logprobs_are_the_models_own_and_join_to_the_content(demo, start):
    client, _ = start(demo)
    r = client.chat.completions.create(model="demo", messages=USER, max_tokens=12, logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    own = [t.logprob for t in demo.stream(USER, max_tokens=12, logprobs=3) if getattr(t, "text", "")]
    assert [e.logprob for e in entries] == pytest.approx(own, abs=1e-5)
    for e in entries:  # greedy: the chosen token is the likeliest, so it heads its alternatives
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-5)
        assert e.logprob <= 0 and bytes(e.bytes).decode() == e.token
    assert client.chat.completions.create(model="demo", messages=USER, max_tokens=2).choices[0].logprobs is None


def test_n_samples_share_one_prefill(start):
    engine = scripted(" sunny and warm", confidence=0.5)
    model = Model(demo_path(), engine=engine)
    client, _ = start(model)
    r = client.chat.completions.create(model="demo", messages=USER, n=3, temperature=1.0, seed=3, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1, 2] and len({c.message.content for c in r.choices}) > 1
    assert [len(f) > 1 for f in engine.fed].count(True) == 1  # one prompt prefill for three samples
    assert r.usage.prompt_tokens == len(model.prompt_ids(USER)) and r.usage.completion_tokens >= 3


# fields that are refused by name (and on one kept-alive connection, which stays usable after each 400)
REFUSED = [
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"temperature": -1}, "temperature"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"n": 0}, "'n'"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"store": True}, "store"),
]


def test_hints_are_ignored_and_unimplemented_fields_refused_by_name(demo, start):
    _, port = start(demo)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=T)
    hints = {"reasoning_effort": "low", "verbosity": "low", "service_tier": "auto", "prompt_cache_key": "k",
             "prompt_cache_retention": "24h", "safety_identifier": "u1", "user": "u", "metadata": {"a": "b"},
             "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "store": False}
    resp, body = post(port, "/v1/chat/completions", {"messages": USER, "max_tokens": 2, **hints}, conn)
    assert resp.status == 200, body
    sock = conn.sock
    for extra, name in REFUSED:
        resp, body = post(port, "/v1/chat/completions", {"messages": USER, "max_tokens": 2, **extra}, conn)
        assert resp.status == 400 and name in body["error"]["message"], (extra, body)
        assert body["error"]["type"] == "invalid_request_error"
    assert conn.sock is sock  # the same connection all along


def test_speculation_per_request_keeps_the_answer_and_loads_no_model_a_client_names(demo, start):
    client, port = start(demo)
    code = "def add(a, b):\n    return a + b\n"
    ask = [{"role": "user", "content": f"Repeat this code:\n{code}\nAgain:\n{code}"}]
    answers = [client.chat.completions.create(model="demo", messages=ask, max_tokens=40, temperature=0,
                                              extra_body={"speculative": spec, "draft_tokens": 4})
               .choices[0].message.content for spec in ("off", "prompt")]
    assert answers[0] == answers[1] == demo.complete(ask, max_tokens=40, temperature=0, speculative="off").response
    r = client.responses.create(model="demo", input="Hello", max_output_tokens=8, temperature=0,
                                extra_body={"speculative": "off"})
    assert r.output_text == demo.complete([{"role": "user", "content": "Hello"}], max_tokens=8,
                                          temperature=0).response
    for path, body in (("/v1/chat/completions", {"messages": USER}), ("/v1/responses", {"input": "Hi"})):
        resp, err = post(port, path, {**body, "max_tokens" if "messages" in body else "max_output_tokens": 2,
                                      "speculative": str(demo.path)})
        assert resp.status == 400 and err["error"]["param"] == "speculative", err
        assert "cactus serve --draft" in err["error"]["message"]
        resp, err = post(port, path, {**body, "draft_tokens": 0})
        assert resp.status == 400 and "draft_tokens" in err["error"]["message"], err


def test_models_by_id(demo, start):
    client, port = start(demo)
    assert client.models.retrieve("demo").id == "demo"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=T)
    conn.request("GET", "/v1/models/other")
    assert conn.getresponse().status == 404


def test_raw_completions_use_no_template(demo, start):
    client, _ = start(demo)
    prompt = "The weather in Paris is"
    r = client.completions.create(model="demo", prompt=prompt, max_tokens=6, logprobs=2)
    expected = [e for e in demo.stream_prompt(prompt, max_tokens=6)][-1]
    assert r.choices[0].text == expected.response and r.usage.prompt_tokens == len(demo.tokenizer.encode(prompt))
    assert "".join(r.choices[0].logprobs.tokens) == r.choices[0].text
    pieces = [c.choices[0].text for c in client.completions.create(model="demo", prompt=prompt, max_tokens=6,
                                                                   stream=True) if c.choices]
    assert "".join(pieces) == expected.response


# ----------------------------------------------------------------------------- Responses API

def test_responses_text_matches_chat_streamed_and_not(demo, start):
    client, _ = start(demo)
    r = client.responses.create(model="demo", instructions="Be brief.", input="Who are you?",
                                max_output_tokens=60)
    chat = demo.complete([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Who are you?"}], max_tokens=60)
    assert r.output_text == chat.response and r.output[0].type == "message"
    assert r.usage.output_tokens == chat.decode_tokens and r.status == "completed"
    with client.responses.stream(model="demo", instructions="Be brief.", input="Who are you?",
                                 max_output_tokens=60) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == chat.response
    assert final.output_text == chat.response
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_function_call_round_trip(demo, start):
    client, _ = start(demo)
    r = client.responses.create(model="demo", input=USER[0]["content"], tools=RESPONSES_TOOLS,
                                tool_choice="required", max_output_tokens=40)
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "get_weather" and call.call_id and "city" in json.loads(call.arguments)
    with client.responses.stream(model="demo", input=USER[0]["content"], tools=RESPONSES_TOOLS,
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 max_output_tokens=40) as stream:
        kinds = [e.type for e in stream]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    follow = [{"role": "user", "content": USER[0]["content"]},
              {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
              {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
    r2 = client.responses.create(model="demo", input=follow, tools=RESPONSES_TOOLS, max_output_tokens=20)
    chat = USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}]
    assert r2.usage.input_tokens == len(demo.prompt_ids(chat, TOOLS))  # the same conversation as chat's
    assert r2.output and r2.status in ("completed", "incomplete")


def test_responses_json_schema_format(demo, start):
    client, _ = start(demo)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    r = client.responses.create(model="demo", input="Describe the weather in Paris as JSON.", max_output_tokens=60,
                                text={"format": {"type": "json_schema", "name": "weather", "schema": schema,
                                                 "strict": True}})
    value = json.loads(r.output_text)
    assert set(value) == {"city", "sunny"} and isinstance(value["sunny"], bool)


@pytest.mark.parametrize("extra,name", [({"store": True}, "store"), ({"previous_response_id": "resp_1"},
                                                                      "previous_response_id"),
                                        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
                                        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
                                        ({"max_output_tokens": 0}, "max_output_tokens")])
def test_responses_refusals_name_the_field(demo, start, extra, name):
    _, port = start(demo)
    resp, body = post(port, "/v1/responses", {"input": "Hi", **extra})
    assert resp.status == 400 and name in body["error"]["message"], body


def test_openai_agents_agent_with_one_function_tool(demo, start, monkeypatch):
    """openai-agents' default model path (the Responses API) runs a one-tool agent to its final answer."""
    import asyncio

    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "none")
    set_tracing_disabled(True)
    _, port = start(demo)
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        calls.append(city)
        return f"sunny, 21 C in {city}"

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=T)
    agent = Agent(name="weather", instructions="You answer weather questions.", tools=[get_weather],
                  model=OpenAIResponsesModel("demo", client), model_settings=ModelSettings(max_tokens=60))
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert calls and isinstance(result.final_output, str) and result.final_output


# ----------------------------------------------------------------------------- HTTP robustness

def test_every_path_reads_the_body_so_keep_alive_stays_in_step(demo, start):
    _, port = start(demo)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=T)
    resp, body = post(port, "/v1/nowhere", {"messages": USER, "padding": "x" * 5000}, conn)
    assert resp.status == 404 and body["error"]["type"] == "not_found_error"
    sock = conn.sock
    conn.request("GET", "/v1/chat/completions")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "POST" and json.loads(resp.read())["error"]
    conn.request("DELETE", "/v1/models", body=b"{}")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "GET"
    resp.read()
    resp, body = post(port, "/v1/chat/completions", b"{not json", conn)
    assert resp.status == 400 and "not valid JSON" in body["error"]["message"]
    resp, body = post(port, "/v1/chat/completions", {"messages": USER, "max_tokens": 2}, conn)
    assert resp.status == 200 and body["object"] == "chat.completion" and conn.sock is sock
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read())["status"] == "ok" and conn.sock is sock


def raw(port: int, data: bytes) -> bytes:
    """Send raw bytes, read the answer until the server closes or a response is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=T) as s:
        s.sendall(data)
        out = b""
        while b"\r\n\r\n" not in out or len(out.split(b"\r\n\r\n", 1)[1]) < _length(out):
            piece = s.recv(65536)
            if not piece:
                break
            out += piece
        return out


def _length(head: bytes) -> int:
    m = re.search(rb"Content-Length: (\d+)", head)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("headers,status", [
    (b"Content-Length: -5\r\n", b"400"),
    (b"", b"411"),
    (f"Content-Length: {MAX_BODY + 1}\r\n".encode(), b"413"),
    (b"Transfer-Encoding: chunked\r\n", b"411"),
])
def test_bad_or_missing_lengths_are_answered(demo, start, headers, status):
    _, port = start(demo)
    out = raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert out.startswith(b"HTTP/1.1 " + status) and b'"error"' in out


def test_a_stalled_client_times_out_without_holding_the_model(demo, start):
    client, port = start(demo, timeout_s=1.0)
    with socket.create_connection(("127.0.0.1", port), timeout=T) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"messages\"")
        r = client.chat.completions.create(model="demo", messages=USER, max_tokens=2)  # served meanwhile
        assert r.choices[0].message.content is not None
        s.settimeout(T)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")


def test_cors_only_when_asked(demo, start):
    _, port = start(demo, cors=["http://app.example"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=T)
    conn.request("OPTIONS", "/v1/chat/completions", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 204 and resp.getheader("Access-Control-Allow-Origin") == "http://app.example"
    assert "POST" in resp.getheader("Access-Control-Allow-Methods")
    assert resp.getheader("Access-Control-Allow-Headers") == "authorization, content-type"
    conn.request("GET", "/v1/models", headers={"Origin": "http://evil.example"})
    resp = conn.getresponse()
    resp.read()
    assert resp.getheader("Access-Control-Allow-Origin") is None
    _, plain = start(demo)
    conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=T)
    conn.request("GET", "/v1/models", headers={"Origin": "http://app.example"})
    resp = conn.getresponse()
    resp.read()
    assert resp.getheader("Access-Control-Allow-Origin") is None


def scripted(text: str, cls=ScriptedModel, **kw) -> ScriptedModel:
    """An engine whose greedy answer is `text` (in the demo model's tokens and vocabulary)."""
    engine = cls(demo_path(), Tokenizer(demo_path()).encode(text), max_context=2048, **kw)
    engine.config.vocab_size = Tokenizer(demo_path()).vocab_size
    return engine


class Slow(ScriptedModel):  # never ends by itself; 2 ms a token
    def forward(self, ids, last_only=False):
        time.sleep(0.002)
        return super().forward(ids, last_only)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_stops_its_generation(start, stream):
    engine = scripted("word " * 2000, Slow)
    client, port = start(Model(demo_path(), engine=engine))
    body = json.dumps({"messages": USER, "max_tokens": 1500, "stream": stream}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=T)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    if stream:
        s.recv(200)  # the stream has started
    else:
        deadline = time.monotonic() + T
        while len(engine.fed) < 20 and time.monotonic() < deadline:  # the generation is under way
            time.sleep(0.01)
    s.close()
    r = client.chat.completions.create(model="demo", messages=USER, max_tokens=4)  # waits for the lock
    assert r.usage.completion_tokens == 4
    abandoned = [len(f) for f in engine.fed].count(1)
    assert abandoned < 1000  # single-token decode steps of the abandoned answer: it stopped early


def test_concurrent_requests_are_queued_not_mixed(demo, start):
    client, _ = start(demo)
    prompts = [[{"role": "user", "content": f"question number {i}"}] for i in range(3)]
    expected = [demo.complete(p, max_tokens=8).response for p in prompts]
    results = [None] * 3

    def ask(i):
        results[i] = client.chat.completions.create(model="demo", messages=prompts[i],
                                                    max_tokens=8).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert results == expected


# ----------------------------------------------------------------------------- the conversation pool

def test_two_agents_taking_turns_each_prefill_only_their_new_tokens(start):
    client, _ = start(Model(demo_path()))
    talks = {k: [{"role": "system", "content": f"You are agent {k}. " * 30}, {"role": "user", "content": "Hello"}]
             for k in "AB"}
    seen = {}
    for turn in range(2):
        for k, talk in talks.items():
            r = client.chat.completions.create(model="demo", messages=talk, max_tokens=4)
            cached = r.usage.prompt_tokens_details.cached_tokens
            if turn:  # everything up to its previous answer was in the pool
                assert cached >= seen[k], (k, cached, seen[k])
            else:
                assert cached == 0  # the two agents share no prefix but the bos
            seen[k] = r.usage.prompt_tokens
            talk += [{"role": "assistant", "content": r.choices[0].message.content},
                     {"role": "user", "content": "And then?"}]
    client, _ = start(Model(demo_path()), cache_mb=0)  # no pool: the other agent displaced each
    for k in "AB":
        client.chat.completions.create(model="demo", messages=talks[k][:2], max_tokens=4)
    r = client.chat.completions.create(model="demo", messages=talks["A"], max_tokens=4)
    assert r.usage.prompt_tokens_details.cached_tokens <= 1


def test_session_pool_gives_the_logits_of_a_fresh_prefill_and_keeps_to_its_budget():
    from cactus.engine import load

    rng = np.random.default_rng(0)
    a, b = list(rng.integers(20, 8000, 200)), list(rng.integers(20, 8000, 150))
    pooled, fresh = Session(load(demo_path()), pool_bytes=64 << 20), Session(load(demo_path()))

    def both(prompt):
        logits, n_run = pooled.prefill(prompt)
        fresh.reset()
        return n_run, float(np.abs(logits - fresh.prefill(prompt)[0]).max())

    both(a)
    pooled.step(5)
    both(b)
    n_run, diff = both(a + [5, 9, 10])  # a, its answer token 5, then new tokens
    assert n_run == 2 and diff < 1e-4
    n_run, diff = both(b + [11])
    assert n_run == 1 and diff < 1e-4
    one = pooled.pool[0].nbytes
    pooled.pool_bytes = one + one // 2  # room for one conversation: the least recent goes
    both(list(rng.integers(20, 8000, 100)))
    assert len(pooled.pool) == 1 and pooled.pool[0].ids[:len(b)] == b


def test_serve_subprocess_starts_and_answers():
    """`cactus serve` as users start it (port picked by the OS, announced on stderr), with the new flags."""
    from openai import OpenAI

    proc = subprocess.Popen([sys.executable, "-m", "cactus.cli", "serve", "demo", "--port", "0", "--cache-mb", "64",
                             "--cors", "*", "--timeout", "30"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", line).group(1))
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=T)
        r = client.chat.completions.create(model="x", messages=USER, max_tokens=4)
        assert r.object == "chat.completion" and r.usage.total_tokens > 0
    finally:
        proc.terminate()
        proc.wait(timeout=T)
