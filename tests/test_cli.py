"""`cactus run` with piped stdin, and the other subcommands run as users run them (`cactus serve`: test_server.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chat_helpers import ScriptedModel, convert_chat_model

from cactus.api import Model
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


# cactus serve: tests/test_server.py


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
