"""Where models live: one cactus home (CACTUS_HOME, else $XDG_CACHE_HOME/cactus, else ~/.cache/cactus),
the same repo id -> the same converted model from any directory, one directory per quant,
`cactus list` / `cactus rm`, and a missing path reported as such, never tried as a repo id."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from chat_helpers import make_chat_model

from cactus import hub, synthetic
from cactus.cli import main


def run_cactus(*args, home: Path, cwd: Path, hf_home: Path | None = None, stdin: str = ""):
    env = {**os.environ, "CACTUS_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if hf_home:
        env["HF_HOME"] = str(hf_home)
    return subprocess.run([sys.executable, "-m", "cactus.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, input=stdin, timeout=300)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """HF_HOME with models--LiquidAI--LFM2-Tiny cached, as huggingface_hub lays it out."""
    root = tmp_path_factory.mktemp("hf_home")
    repo = root / "hub" / "models--LiquidAI--LFM2-Tiny"
    make_chat_model(repo / "snapshots" / ("0" * 40), "moe", max_position_embeddings=1024)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return root


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err.strip()


# ----------------------------------------------------------------------------- the home

def test_home_is_cactus_home_then_xdg_then_dot_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CACTUS_HOME", str(tmp_path / "c"))
    assert hub.models_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("CACTUS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.home() == tmp_path / "xdg" / "cactus"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert hub.home() == tmp_path / "me" / ".cache" / "cactus"


def test_names_are_the_repo_name_and_the_quant_unless_int4():
    assert hub.model_name("LiquidAI/LFM2-8B-A1B") == "lfm2-8b-a1b"
    assert hub.model_name("LiquidAI/LFM2-8B-A1B", "int8") == "lfm2-8b-a1b-int8"
    assert synthetic.model_dir("tiny", "int4") == hub.models_dir() / "synthetic-tiny-int4"


def test_same_repo_id_is_the_same_model_from_any_directory(hf_home, tmp_path):
    home, a, b = tmp_path / "home", tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    r = run_cactus("download", "LiquidAI/LFM2-Tiny", "--quiet", home=home, cwd=a, hf_home=hf_home)
    assert r.returncode == 0, r.stderr
    out = home / "models" / "lfm2-tiny"
    assert r.stdout == f"model ready: {out}\n" and hub.converted_quant(out) == "int4"
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    r = run_cactus("run", "LiquidAI/LFM2-Tiny", "--max-tokens", "3", home=home, cwd=b, stdin="Hello\n")
    assert r.returncode == 0, r.stderr
    assert "not converted yet" not in r.stderr and (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert not (a / "weights").exists() and not (b / "weights").exists()


def test_other_quant_is_converted_into_its_own_directory(hf_home, tmp_path):
    home = tmp_path / "home"
    assert run_cactus("download", "LiquidAI/LFM2-Tiny", "--quiet", home=home, cwd=tmp_path,
                      hf_home=hf_home).returncode == 0
    int4 = home / "models" / "lfm2-tiny"
    stamp = (int4 / "model.safetensors").stat().st_mtime_ns
    r = run_cactus("run", "LiquidAI/LFM2-Tiny", "--quant", "int8", "--max-tokens", "3", home=home, cwd=tmp_path,
                   hf_home=hf_home, stdin="Hello\n")
    assert r.returncode == 0, r.stderr
    int8 = home / "models" / "lfm2-tiny-int8"
    assert f"LiquidAI/LFM2-Tiny (int8) is not converted yet: downloading it to {int8}" in r.stderr
    assert hub.converted_quant(int8) == "int8" and hub.converted_quant(int4) == "int4"
    assert (int4 / "model.safetensors").stat().st_mtime_ns == stamp


def test_download_out_holding_another_model_needs_force(hf_home, tmp_path):
    home = tmp_path / "home"
    mine = tmp_path / "mine"
    assert run_cactus("download", "LiquidAI/LFM2-Tiny", "--quiet", "--out", mine, home=home, cwd=tmp_path,
                      hf_home=hf_home).returncode == 0
    r = run_cactus("download", "LiquidAI/LFM2-Tiny", "--quiet", "--quant", "int8", "--out", mine, home=home,
                   cwd=tmp_path, hf_home=hf_home)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"cactus download: error: {mine} already exists and holds a int4 model, not int8 "
                                f"(pass --force to replace it, or choose another --out)")


# ----------------------------------------------------------------------------- cactus list / rm

@pytest.fixture
def home(tmp_path, monkeypatch, capsys):
    """A home holding two conversions of one tiny chat model."""
    monkeypatch.setenv("CACTUS_HOME", str(tmp_path / "home"))
    src, _ = make_chat_model(tmp_path / "hf", "dense")
    for quant, name in (("int4", "tiny"), ("int8", "tiny-int8")):
        assert cli(capsys, "convert", src, hub.models_dir() / name, "--quant", quant, "--quiet")[0] == 0
    return hub.models_dir()


def test_list_shows_name_quant_size_and_path(home, capsys):
    rc, out, _ = cli(capsys, "list")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "QUANT", "SIZE", "PATH"]
    for line, (name, quant) in zip(lines[1:], [("tiny", "int4"), ("tiny-int8", "int8")], strict=True):
        size = sum(f.stat().st_size for f in (home / name).iterdir())
        assert line.split() == [name, quant, f"{size / 1e9:.2f}", "GB", str(home / name)]


def test_list_of_an_empty_home_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CACTUS_HOME", str(tmp_path / "none"))
    assert cli(capsys, "list") == (0, "", f"no converted models in {tmp_path / 'none' / 'models'} "
                                          f"(`cactus download REPO` adds one)")


def test_rm_removes_one_model(home, capsys):
    rc, out, _ = cli(capsys, "rm", "tiny-int8")
    assert rc == 0 and out.startswith("removed tiny-int8 (int8, 0.") and out.endswith(f"GB) from {home}\n")
    assert sorted(p.name for p in home.iterdir()) == ["tiny"]
    rc, _, err = cli(capsys, "rm", "tiny-int8")
    assert rc == 2 and err == f"cactus rm: error: tiny-int8: no such model in {home} (`cactus list` shows them)"


@pytest.mark.parametrize("name", ["..", "../home", "/etc", "tiny/model.safetensors"])
def test_rm_refuses_anything_outside_the_home(home, capsys, name):
    rc, _, err = cli(capsys, "rm", name)
    assert rc == 2 and err == (f"cactus rm: error: {name}: not a model in {home}: cactus rm removes only the "
                               f"models `cactus list` shows")
    assert sorted(p.name for p in home.iterdir()) == ["tiny", "tiny-int8"]


def test_a_name_from_list_runs(home, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Hello\n"))
    rc, _, err = cli(capsys, "run", "tiny-int8", "--max-tokens", "3")
    assert rc == 0, err


# ----------------------------------------------------------------------------- missing paths

@pytest.mark.parametrize("name", ["weights/lfm2-24b-a2b", "./lfm2", "~/no/such/model", "a/b/c", "/no/such"])
def test_missing_path_is_reported_not_downloaded(tmp_path, monkeypatch, capsys, name):
    """`weights/lfm2-24b-a2b` has the shape of a repo id; with a ./weights directory it is a path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    monkeypatch.setattr(hub, "fetch", lambda *a: pytest.fail("tried the hub"))
    rc, _, err = cli(capsys, "run", name)
    assert rc == 2 and err == f"cactus run: error: {name}: no such model directory"


def test_unknown_plain_name_points_at_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CACTUS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli(capsys, "bench", "lfm2-nope")
    assert rc == 2 and err.startswith(f"cactus bench: error: lfm2-nope: no such model directory, and no model "
                                      f"of that name in {tmp_path / 'home' / 'models'}")
