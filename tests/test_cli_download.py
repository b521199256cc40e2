"""`cactus download` against a local directory laid out like the HuggingFace cache (never the network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
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
    make_hf_model(snap, "moe")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return root


def test_download_converts_from_cache_offline(hf_home, tmp_path):
    r = run_cactus("download", "LiquidAI/LFM2-Tiny", "--quant", "int8", "--quiet",
                   env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "weights" / "lfm2-tiny"
    assert "model ready: weights/lfm2-tiny" in r.stdout
    from cactus.engine import load

    assert load(out).quant == "int8"


def test_download_reuses_finished_conversion(hf_home, tmp_path):
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    assert run_cactus("download", "LiquidAI/LFM2-Tiny", "--quiet", env=env, cwd=tmp_path).returncode == 0
    stamp = (tmp_path / "weights/lfm2-tiny/model.safetensors").stat().st_mtime_ns
    assert run_cactus("download", "LiquidAI/LFM2-Tiny", "--quiet", env=env, cwd=tmp_path).returncode == 0
    assert (tmp_path / "weights/lfm2-tiny/model.safetensors").stat().st_mtime_ns == stamp


def test_download_without_network_fails_fast_with_advice(tmp_path):
    empty = tmp_path / "empty_home"
    r = run_cactus("download", "LiquidAI/LFM2-350M", env={"HF_HOME": str(empty), "HF_HUB_OFFLINE": "1"},
                   cwd=tmp_path)
    assert r.returncode == 1
    assert "cactus convert PATH/TO/CHECKPOINT weights/lfm2-350m" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "weights").exists()


def test_convert_errors_are_one_line(tmp_path):
    r = run_cactus("convert", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no config.json" in r.stderr


def test_convert_then_help_lists_commands(tmp_path):
    hf, _ = make_hf_model(tmp_path / "hf", "dense")
    r = run_cactus("convert", str(hf), str(tmp_path / "out"), "--quant", "int4", "--quiet")
    assert r.returncode == 0, r.stderr
    shutil.rmtree(tmp_path / "out")
    assert "convert" in run_cactus("--help").stdout
