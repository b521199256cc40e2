"""`cactus download` against a local directory laid out like the HuggingFace cache (never the network);
converted models go to the cactus home (CACTUS_HOME, a temporary directory here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from chat_helpers import make_chat_model
from helpers import make_hf_model


def run_cactus(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "cactus.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """HF_HOME with models--LiquidAI--LFM2-Tiny cached, as huggingface_hub lays it out."""
    root = tmp_path_factory.mktemp("hf_home")
    repo = root / "hub" / "models--LiquidAI--LFM2-Tiny"
    snap = repo / "snapshots" / ("0" * 40)
    make_chat_model(snap, "moe")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return root


def test_download_converts_from_cache_offline(hf_home, tmp_path):
    r = run_cactus("download", "LiquidAI/LFM2-Tiny", "--quant", "int8", "--quiet",
                   env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "CACTUS_HOME": str(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "models" / "lfm2-tiny-int8"
    assert f"model ready: {out}" in r.stdout
    from cactus.engine import load

    assert load(out).quant == "int8"


def test_download_reuses_finished_conversion(hf_home, tmp_path):
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "CACTUS_HOME": str(tmp_path)}
    assert run_cactus("download", "LiquidAI/LFM2-Tiny", "--quiet", env=env, cwd=tmp_path).returncode == 0
    stamp = (tmp_path / "models/lfm2-tiny/model.safetensors").stat().st_mtime_ns
    assert run_cactus("download", "LiquidAI/LFM2-Tiny", "--quiet", env=env, cwd=tmp_path).returncode == 0
    assert (tmp_path / "models/lfm2-tiny/model.safetensors").stat().st_mtime_ns == stamp


def test_download_without_network_fails_fast_with_advice(tmp_path):
    empty = tmp_path / "empty_home"
    home = tmp_path / "home"
    r = run_cactus("download", "LiquidAI/LFM2-350M", env={"HF_HOME": str(empty), "HF_HUB_OFFLINE": "1",
                                                          "CACTUS_HOME": str(home)}, cwd=tmp_path)
    assert r.returncode == 1
    assert f"cactus convert PATH/TO/CHECKPOINT {home / 'models' / 'lfm2-350m'}" in r.stderr
    assert "Traceback" not in r.stderr
    assert not home.exists()


def test_convert_errors_are_one_line(tmp_path):
    r = run_cactus("convert", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no config.json" in r.stderr


def test_convert_then_help_lists_commands(tmp_path):
    hf, _ = make_hf_model(tmp_path / "hf", "dense")
    r = run_cactus("convert", str(hf), str(tmp_path / "out"), "--quant", "int4", "--quiet", "--no-chat")
    assert r.returncode == 0, r.stderr
    shutil.rmtree(tmp_path / "out")
    assert "convert" in run_cactus("--help").stdout
