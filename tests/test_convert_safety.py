"""`cactus convert` never destroys its input nor publishes a model that cannot run, and a model that
is loaded survives being converted again (docs/RELIABILITY.md). Each test runs the CLI in-process
and checks the one stderr line and the exit code the user sees."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from chat_helpers import make_chat_model
from helpers import make_hf_model
from safetensors.numpy import load_file, save_file

from cactus import weights
from cactus.cli import main
from cactus.engine import load
from cactus.weights import WeightError


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny chat-ready MoE checkpoint (per-expert tensors, tokenizer, chat template)."""
    return make_chat_model(tmp_path_factory.mktemp("safety") / "hf", "moe")[0]


def copy(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return dst


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()  # what earlier steps printed
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return rc, err


def edit_tensors(hf_dir, change) -> None:
    """Rewrite the checkpoint's model.safetensors with change(dict of arrays) applied."""
    tensors = load_file(hf_dir / "model.safetensors")
    change(tensors)
    save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})


def snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- output vs input

def test_output_equal_to_input_is_refused_and_the_input_kept(hf, tmp_path, capsys):
    src = copy(hf, tmp_path / "hf")
    before = snapshot(src)
    rc, err = cli(capsys, "convert", src, src, "--force", "--quiet")
    assert rc == 2 and err == f"cactus convert: error: {src}: the output directory is the input checkpoint: " \
                              f"choose another output directory"
    assert snapshot(src) == before


def test_output_inside_or_containing_the_input_is_refused(hf, tmp_path, capsys):
    src = copy(hf, tmp_path / "parent" / "hf")
    rc, err = cli(capsys, "convert", src, src / "int4", "--quiet")
    assert rc == 2 and "the output directory is inside the input checkpoint" in err
    rc, err = cli(capsys, "convert", src, tmp_path / "parent", "--force", "--quiet")
    assert rc == 2 and "the output directory contains the input checkpoint" in err
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == ["hf"] and (src / "config.json").is_file()


def test_symlinks_are_resolved(hf, tmp_path, capsys):
    """A link to the input is the input; a HF cache snapshot's files link to blobs elsewhere, and
    replacing the blobs' directory would destroy them."""
    src = copy(hf, tmp_path / "hf")
    (tmp_path / "link").symlink_to(src)
    rc, err = cli(capsys, "convert", src, tmp_path / "link", "--force", "--quiet")
    assert rc == 2 and "the output directory is the input checkpoint" in err
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snap.mkdir()
    for f in src.iterdir():
        shutil.copy(f, blobs / f.name)
        (snap / f.name).symlink_to(blobs / f.name)
    rc, err = cli(capsys, "convert", snap, blobs, "--force", "--quiet")
    assert rc == 2 and "the output directory contains the input's file" in err
    assert snapshot(blobs) == snapshot(src)


def test_force_does_not_replace_a_directory_that_is_not_a_model(hf, tmp_path, capsys):
    out = tmp_path / "documents"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = cli(capsys, "convert", hf, out, "--force", "--quiet")
    assert rc == 2 and err.endswith("exists and is not a cactus model directory: not replacing it "
                                    "(choose another output directory, or remove it yourself)")
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- bad checkpoints

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_is_refused_naming_the_tensor(hf, tmp_path, capsys, value):
    src = copy(hf, tmp_path / "hf")
    name = "model.layers.2.feed_forward.experts.3.w2.weight"

    def poison(t):
        t[name][5, 7] = value
    edit_tensors(src, poison)
    rc, err = cli(capsys, "convert", src, tmp_path / "out", "--quiet")
    assert rc == 2 and err == (f"cactus convert: error: {src / 'model.safetensors'}: tensor '{name}' has 1 "
                               f"non-finite values (NaN or inf), the first at index [5, 7]: the checkpoint is damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # nothing published, nothing left over


def test_config_that_is_not_json_is_named(hf, tmp_path, capsys):
    src = copy(hf, tmp_path / "hf")
    (src / "config.json").write_text("{\"model_type\": ")
    rc, err = cli(capsys, "convert", src, tmp_path / "out", "--quiet")
    assert rc == 2 and err.startswith(f"cactus convert: error: {src / 'config.json'}: not valid JSON (")


def test_checkpoint_without_tokenizer_needs_no_chat(tmp_path, capsys):
    src, _ = make_hf_model(tmp_path / "hf", "dense")
    rc, err = cli(capsys, "convert", src, tmp_path / "out", "--quiet")
    assert rc == 2 and err == (f"cactus convert: error: {src}: no tokenizer.json: copy it from the original model "
                               f"repo, or pass --no-chat (chat=False) if the model is only for `cactus bench` "
                               f"and forward passes")
    assert not (tmp_path / "out").exists()
    rc, err = cli(capsys, "convert", src, tmp_path / "out", "--quiet", "--no-chat")
    assert rc == 0, err
    assert load(tmp_path / "out").forward([1, 2, 3]).shape == (3, 97)


def test_checkpoint_without_chat_template_needs_no_chat(hf, tmp_path, capsys):
    src = copy(hf, tmp_path / "hf")
    (src / "chat_template.jinja").unlink()
    rc, err = cli(capsys, "convert", src, tmp_path / "out", "--quiet")
    assert rc == 2 and f"{src}: no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)" \
        in err and "--no-chat" in err
    assert cli(capsys, "convert", src, tmp_path / "out", "--quiet", "--no-chat")[0] == 0


def test_experts_of_unequal_shapes_are_named(hf, tmp_path, capsys):
    src = copy(hf, tmp_path / "hf")
    bad = "model.layers.1.feed_forward.experts.4.w1.weight"

    def shrink(t):
        t[bad] = np.ascontiguousarray(t[bad][:-1])
    edit_tensors(src, shrink)
    rc, err = cli(capsys, "convert", src, tmp_path / "out", "--quiet")
    assert rc == 2 and err == (f"cactus convert: error: {src / 'model.safetensors'}: tensor '{bad}' has shape "
                               f"[39, 48], expert 0 ('model.layers.1.feed_forward.experts.0.w1.weight') has [40, 48]: "
                               f"all experts need one shape")


def test_shape_errors_name_the_source_not_a_staging_dir(hf, tmp_path, capsys):
    src = copy(hf, tmp_path / "hf")
    name = "model.layers.1.self_attn.q_layernorm.weight"

    def widen(t):
        t[name] = np.ones(13, np.float32)
    edit_tensors(src, widen)
    rc, err = cli(capsys, "convert", src, tmp_path / "out", "--quiet")
    assert rc == 2 and err == (f"cactus convert: error: {src / 'model.safetensors'}: tensor '{name}' has shape "
                               f"[13], config.json needs [12]")


def test_tensors_the_config_asks_for_are_checked_before_writing(hf, tmp_path, capsys):
    """Conv biases the config asks for and the checkpoint lacks: refused before anything is written."""
    src = copy(hf, tmp_path / "hf")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(dict(cfg, conv_bias=True)))
    rc, err = cli(capsys, "convert", src, tmp_path / "out", "--quiet")
    assert rc == 2 and err == (f"cactus convert: error: {src}: the checkpoint has no tensor "
                               f"'model.layers.0.conv.conv.bias' (config.json needs it)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_load_back_errors_name_the_output_not_a_staging_dir(hf, tmp_path, capsys, monkeypatch):
    """What only loading the written model finds names the output directory the user gave."""
    from cactus import engine

    def load_fails(path):
        raise WeightError(f"{path / 'model.safetensors'}: missing tensor 'x'")

    monkeypatch.setattr(engine, "load", load_fails)
    rc, err = cli(capsys, "convert", hf, tmp_path / "out", "--quiet")
    assert rc == 2 and err.startswith(f"cactus convert: error: {tmp_path / 'out' / 'model.safetensors'}: "
                                      f"missing tensor 'x'")
    assert ".partial-" not in err and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- files changed under a process

def test_force_convert_keeps_a_loaded_model_working(hf, tmp_path, capsys):
    """Converting again over a model in use renames the old directory aside and unlinks its files:
    the running model keeps its mapping (the old inode) and its answers; the new file is a new inode."""
    out = tmp_path / "model"
    assert cli(capsys, "convert", hf, out, "--quiet")[0] == 0
    m = load(out)
    before = m.forward([1, 2, 3, 4])
    old_inode = m.weights.file.identity[1]
    assert cli(capsys, "convert", hf, out, "--quant", "int8", "--force", "--quiet")[0] == 0
    assert os.stat(out / "model.safetensors").st_ino != old_inode
    assert load(out).quant == "int8" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    m.reset()
    np.testing.assert_array_equal(m.forward([1, 2, 3, 4]), before)


@pytest.fixture
def model(hf, tmp_path, capsys):
    assert cli(capsys, "convert", hf, tmp_path / "m", "--quiet")[0] == 0
    return tmp_path / "m"


def test_weight_file_modified_while_being_opened_is_refused(model, monkeypatch, capsys):
    f = model / "model.safetensors"
    real = weights._huge_pages

    def append(m):  # right after the file is mapped, someone writes to it
        with open(f, "ab") as w:
            w.write(b"\0" * 64)
        real(m)
    monkeypatch.setattr(weights, "_huge_pages", append)
    rc, err = cli(capsys, "bench", model, "--runs", "1", "--prompt", "4", "--gen", "2")
    assert rc == 2 and err.startswith(f"cactus bench: error: {f}: modified while it was being opened "
                                      f"(is it being written or copied right now?)")


def test_weight_file_replaced_while_being_opened_is_refused(model, monkeypatch):
    f = model / "model.safetensors"
    real = weights._huge_pages

    def replace(m):
        shutil.copy(f, model / "new")
        os.replace(model / "new", f)
        real(m)
    monkeypatch.setattr(weights, "_huge_pages", replace)
    with pytest.raises(WeightError, match="replaced while it was being opened"):
        load(model)


def test_weight_file_truncated_is_refused_naming_the_tensor(model, capsys):
    f = model / "model.safetensors"
    os.truncate(f, f.stat().st_size - 1000)
    rc, err = cli(capsys, "bench", model, "--runs", "1")
    assert rc == 2 and err.startswith(f"cactus bench: error: {f}: truncated: tensor '")


def test_model_written_over_in_place_after_loading_is_an_error_not_sigbus(model):
    """`cp` over a loaded model's weight file, between two calls: the next call says so (a subprocess,
    as a regression here would be a SIGBUS)."""
    code = ("import os, sys; from cactus.engine import load; m = load(sys.argv[1]); m.forward([1, 2]);"
            "f = os.path.join(sys.argv[1], 'model.safetensors'); os.truncate(f, 4096)\n"
            "try: m.forward([3])\nexcept ValueError as e: print(e)")
    r = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=120)
    f = model / "model.safetensors"
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{f}: written over in place since it was loaded (") and "-> 4096 bytes)" in r.stdout


def test_same_size_write_over_a_loaded_model_is_an_error(model):
    m = load(model)
    m.forward([1, 2])
    f = model / "model.safetensors"
    with open(f, "r+b") as w:  # same size, other bytes, a later mtime: as `cp other-model model` does
        w.seek(-64, os.SEEK_END)
        w.write(b"\xff" * 64)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(WeightError, match="written over in place since it was loaded"):
        m.forward([3])


def test_truncating_a_mapped_file_in_place_is_sigbus(tmp_path):
    """Documented, not caught (docs/RELIABILITY.md): a page of a mapped file cut off by truncating it
    in place faults with SIGBUS, which Python cannot turn into an exception. cactus never does this
    to its files (convert, download and rm rename); `cp new old` over a model in use does."""
    f = tmp_path / "w.safetensors"
    weights.write_safetensors(f, [weights.PlannedTensor("x", "F32", (1 << 16,), lambda: np.ones(1 << 16, np.float32))],
                              {})
    code = ("import os, sys; from cactus.weights import SafetensorsFile; st = SafetensorsFile(sys.argv[1]);"
            "os.truncate(sys.argv[1], 4096); print(float(st.tensors['x'].sum()))")
    r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGBUS
