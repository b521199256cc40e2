"""`cactus run` with piped stdin and `cactus serve` driven by the official openai client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from chat_helpers import ScriptedModel, convert_chat_model

from cactus.api import Model
from cactus.server import Server
from cactus.tokenizer import Tokenizer

USER = [{"role": "user", "content": "Write a Python function to sort a list"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return convert_chat_model(tmp_path_factory.mktemp("cli"), "moe", max_position_embeddings=2048)[0]


def cactus(*args, stdin: str = "", timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "cactus.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


# ----------------------------------------------------------------------------- cactus run

def test_run_two_turns_from_a_pipe_reuses_the_cache(model_dir):
    r = cactus("run", str(model_dir), "--max-tokens", "8", stdin="Hello there\nAnd a second question\n")
    assert r.returncode == 0, r.stderr
    stats = re.findall(r"\[([\d.]+) tok/s · (\d+) tokens · prefill (\d+) tokens", r.stderr)
    assert len(stats) == 2, r.stderr
    first_prefill, second_prefill = int(stats[0][2]), int(stats[1][2])
    with Model(model_dir) as m:  # what a fresh handle would have to prefill for the second turn
        turn1 = [{"role": "user", "content": "Hello there"}]
        answer = m.complete(turn1, max_tokens=8).response
        whole = m.prompt_ids(turn1 + [{"role": "assistant", "content": answer},
                                      {"role": "user", "content": "And a second question"}])
    assert 0 < first_prefill and second_prefill <= len(whole) - first_prefill
    assert "Traceback" not in r.stderr


def test_run_answers_match_the_api(model_dir):
    r = cactus("run", str(model_dir), "--max-tokens", "6", stdin="Hello there\n")
    with Model(model_dir) as m:
        expected = m.complete([{"role": "user", "content": "Hello there"}], max_tokens=6).response
    assert r.stdout.strip() == expected.strip()


def test_run_commands_and_multiline(model_dir):
    script = ('/help\n/system Be brief.\n"""\nline one\nline two\n"""\n/reset\n'
              'continued \\\nline\n/bogus\n/exit\nnever read\n')
    r = cactus("run", str(model_dir), "--max-tokens", "3", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "/reset" in r.stderr and "[system prompt set]" in r.stderr and "[conversation cleared]" in r.stderr
    assert "unknown command /bogus" in r.stderr
    assert len(re.findall(r"\[[\d.]+ tok/s ·", r.stderr)) == 2  # the block and the continued line; not after /exit


def test_run_missing_model_is_one_clear_line(tmp_path):
    r = cactus("run", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "no such model directory" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- cactus serve

@pytest.fixture
def serve():
    """Start a server on a free loopback port over a given api.Model -> an openai client."""
    from openai import OpenAI

    started = []

    def start(model: Model, name: str = "tiny"):
        server = Server(("127.0.0.1", 0), model, name)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
        port = server.server_address[1]
        return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120), port

    yield start
    for s in started:
        s.shutdown()
        s.server_close()


def test_serve_chat_completion_matches_the_api(model_dir, serve):
    client, _ = serve(Model(model_dir))
    r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=8, temperature=0)
    with Model(model_dir) as m:
        expected = m.complete(USER, max_tokens=8)
    assert r.choices[0].message.content == expected.response
    assert r.usage.completion_tokens == expected.decode_tokens
    assert r.usage.prompt_tokens == expected.prefill_tokens
    assert r.choices[0].finish_reason in ("stop", "length")


def test_serve_streaming_pieces_join_to_the_answer(model_dir, serve):
    client, _ = serve(Model(model_dir))
    plain = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10).choices[0].message.content
    stream = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10, stream=True)
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(pieces) == plain and finish in ("stop", "length")


def test_serve_tool_calls_in_openai_shape(model_dir, serve):
    text = "<|tool_call_start|>[get_weather(city='Paris, France')]<|tool_call_end|>"
    script = Tokenizer(model_dir).encode(text)
    client, _ = serve(Model(model_dir, engine=ScriptedModel(model_dir, script)))
    r = client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris, France"}
    stream = client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, stream=True)
    calls = [tc for ch in stream if ch.choices and ch.choices[0].delta.tool_calls
             for tc in ch.choices[0].delta.tool_calls]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris, France"}]


def test_serve_second_turn_reuses_the_cache(model_dir, serve):
    client, _ = serve(Model(model_dir))
    first = client.chat.completions.create(model="tiny", messages=USER, max_tokens=6)
    turn2 = USER + [{"role": "assistant", "content": first.choices[0].message.content},
                    {"role": "user", "content": "Thanks"}]
    second = client.chat.completions.create(model="tiny", messages=turn2, max_tokens=6)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens


def test_serve_concurrent_requests_are_queued_not_mixed(model_dir, serve):
    client, _ = serve(Model(model_dir))
    prompts = [[{"role": "user", "content": f"question number {i}"}] for i in range(3)]
    with Model(model_dir) as m:
        expected = [m.complete(p, max_tokens=8).response for p in prompts]
    results = [None] * 3

    def ask(i):
        results[i] = client.chat.completions.create(model="tiny", messages=prompts[i],
                                                    max_tokens=8).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


@pytest.mark.parametrize("body,status,fragment", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"messages": []}).encode(), 400, "'messages' must be a non-empty array"),
    (json.dumps({"messages": USER, "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({"messages": USER, "frobnicate": 1}).encode(), 400, "unknown field"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "role"),
])
def test_serve_bad_requests_get_openai_errors(model_dir, serve, body, status, fragment):
    import http.client

    _, port = serve(Model(model_dir))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    err = json.loads(resp.read())["error"]
    assert resp.status == status and fragment in err["message"] and err["type"] == "invalid_request_error"


def test_serve_body_size_limit_and_routes(model_dir, serve):
    import http.client

    from cactus import server

    client, port = serve(Model(model_dir))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Length", str(server.MAX_BODY + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]["message"]
    assert [m.id for m in client.models.list().data] == ["tiny"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read())["status"] == "ok"


def test_serve_client_disconnect_stops_generation(model_dir, serve):
    """A client that leaves mid-stream stops the generation and frees the model for the next one."""
    import socket
    import time

    class Slow(ScriptedModel):  # never ends by itself; 2 ms a token
        def forward(self, ids, last_only=False):
            time.sleep(0.002)
            return super().forward(ids, last_only)

    engine = Slow(model_dir, Tokenizer(model_dir).encode("word " * 2000))
    client, port = serve(Model(model_dir, engine=engine))
    body = json.dumps({"messages": USER, "max_tokens": 1500, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s.recv(200)  # the stream has started
    s.close()
    r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=4)  # waits for the lock
    assert r.usage.completion_tokens == 4
    abandoned = [len(f) for f in engine.fed]
    assert abandoned.count(1) < 1000  # single-token decode steps of the abandoned answer: it stopped early


def test_serve_subprocess_starts_and_answers(model_dir):
    """`cactus serve` as users start it (port picked by the OS, announced on stderr)."""
    from openai import OpenAI

    proc = subprocess.Popen([sys.executable, "-m", "cactus.cli", "serve", str(model_dir), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", line).group(1))
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="x", messages=USER, max_tokens=4)
        assert r.object == "chat.completion" and r.usage.total_tokens > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_ctrl_c_stops_the_answer_not_the_program(model_dir):
    """Ctrl-C (KeyboardInterrupt) in the middle of an answer ends that answer; the chat goes on."""
    import io

    from cactus.repl import repl

    class Interrupted(ScriptedModel):  # the user presses Ctrl-C at the 5th generated token, once
        pressed = False

        def forward(self, ids, last_only=False):
            if len(ids) == 1 and self.step == 4 and not Interrupted.pressed:
                Interrupted.pressed = True
                raise KeyboardInterrupt
            return super().forward(ids, last_only)

    tok = Tokenizer(model_dir)
    model = Model(model_dir, engine=Interrupted(model_dir, tok.encode(" one two three four five six seven")))
    out, err = io.StringIO(), io.StringIO()
    assert repl(model, io.StringIO("first\nsecond\n"), out, err) == 0
    first, second = out.getvalue().splitlines()
    assert "[stopped]" in err.getvalue()
    assert second == " one two three four five six seven"
    assert first and second.startswith(first) and first != second  # the stopped answer, as far as it got


def test_bench_synthetic_tiny_reports_speed_memory_and_bandwidth(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cactus.cli", "bench", "--synthetic", "tiny", "--quant", "int4",
                        "--prompt", "16", "--gen", "4", "--runs", "1", "--json"], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, CACTUS_HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    for key in ("prefill_tps", "decode_tps", "ttft_ms", "peak_rss_mb", "peak_anon_rss_mb", "effective_gbs",
                "bw_gbs", "prefill_gmacs", "prefill_pct_of_compute"):
        assert result[key] > 0, key
    assert (tmp_path / "models" / "synthetic-tiny-int4" / "model.safetensors").is_file()
    assert result["cpu"] and result["cpu"] != "unknown"
    # steal over a decode run: None where it is shorter than the kernel's tick (as here) or not Linux
    assert all(x is None or 0 <= x <= 100 for x in result["decode_steal_pct_all"])
    if sys.platform.startswith("linux"):
        from cactus.bench import cpu_ticks

        steal, total = cpu_ticks()
        assert 0 <= steal <= total


def test_bench_synthetic_without_disk_space_says_so_in_one_line(tmp_path):
    """The synthetic model is written by a child process; too little space is its one-line error
    (every process here sees 1000 bytes free, through a sitecustomize on PYTHONPATH)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import shutil\n_real = shutil.disk_usage\n"
                                           "shutil.disk_usage = lambda p: _real(p)._replace(free=1000)\n")
    env = dict(os.environ, CACTUS_HOME=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "cactus.cli", "bench", "--synthetic", "tiny", "--gen", "4"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("cactus bench: error: not enough disk space in ")
    assert "Traceback" not in r.stderr
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_bench_says_when_the_os_does_not_tell_private_memory(monkeypatch):
    # macOS reads phys_footprint; an OS with neither it nor /proc gets "not available", never "0 MB"
    from cactus import bench, memory

    monkeypatch.setattr(memory, "private_bytes", lambda: None)
    monkeypatch.setattr(memory, "peak_private_bytes", lambda: None)
    monkeypatch.setattr(memory, "shmem_bytes", lambda: None)
    with bench.AnonSampler() as s:
        pass
    assert s.peak is None and s.peak_shmem is None
    r = {"peak_anon_rss_mb": bench._mb(s.peak), "peak_shmem_rss_mb": None, "anon_rss_source": None}
    assert bench._anon_line(r) == "not available on this OS"
    r = {"peak_anon_rss_mb": 181.4, "peak_shmem_rss_mb": None, "anon_rss_source": "phys_footprint"}
    assert bench._anon_line(r) == "181 MB (phys_footprint)"


def test_memory_readings_are_consistent():
    from cactus import memory

    rss, peak, private = memory.rss_bytes(), memory.peak_rss_bytes(), memory.private_bytes()
    assert 0 < rss <= peak
    if memory.LINUX:
        assert private is not None and 0 < private <= rss
        x = np.ones(64 << 20, np.uint8)  # 64 MiB touched: private memory grows by it
        assert memory.private_bytes() >= private + 60 * 2**20
        del x


def test_bench_counts_a_prompt_tokens_multiply_adds_from_the_config(tmp_path):
    # the yardstick of prefill work: every weight matrix once, top_k of E experts, no LM head
    from cactus import engine, synthetic
    from cactus.bench import weight_macs_per_prompt_token

    d = synthetic.write("tiny", "int4", tmp_path / "tiny", progress=False)
    cfg = json.loads((Path(d) / "config.json").read_text())
    h, kv, hd = cfg["hidden_size"], cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
    want = 0
    for i, kind in enumerate(cfg["layer_types"]):
        want += 4 * h * h if kind == "conv" else 2 * h * h + 2 * h * kv * hd  # in/out proj; q, k, v, o
        if i < cfg["num_dense_layers"]:
            want += 3 * h * cfg["intermediate_size"]
        else:  # router, then top_k experts of w1, w3, w2
            want += h * cfg["num_experts"] + cfg["num_experts_per_tok"] * 3 * h * cfg["moe_intermediate_size"]
    assert weight_macs_per_prompt_token(engine.load(d)) == want


@pytest.mark.parametrize("args,says", [
    (["--runs", "0"], "argument --runs: must be at least 1, got 0"),
    (["--gen", "0"], "argument --gen: must be at least 1, got 0"),
    (["--threads", "-3"], "argument --threads: must be at least 1, got -3"),
    (["--prompt", "x"], "argument --prompt: not a whole number: 'x'"),
    (["--prompt", "999999"], "--prompt 999999 plus --gen 4 tokens exceed the model's context window of"),
])
def test_bench_rejects_bad_options_in_one_line(tmp_path, args, says):
    # through `python -m cactus.bench` as benchmarks/run_bars.sh calls it: the message, not a traceback
    r = subprocess.run([sys.executable, "-m", "cactus.bench", "--synthetic", "tiny", "--gen", "4", *args],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, CACTUS_HOME=str(tmp_path)))
    assert r.returncode == 2
    assert says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_build_rebuilds_kernels_and_reports_the_isa():
    r = cactus("build")
    assert r.returncode == 0, r.stderr
    assert re.search(r"this machine runs (avx512|avx2|neon|scalar)", r.stdout)
