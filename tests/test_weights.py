"""The weight directory: bad inputs give clear errors naming the file and tensor, never a crash;
convert publishes nothing half-written; quantized layouts round-trip as docs/FORMAT.md says."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
from helpers import hf_logits, make_hf_model

from cactus import weights
from cactus.config import ConfigError, ModelConfig
from cactus.convert import convert
from cactus.engine import load
from cactus.quant import FORMATS, QUANTIZED, QTensor, embed_format, float_format, quantize, unpack_int4
from cactus.weights import ALIGN, NoSpaceError, SafetensorsFile, WeightError


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    hf, _ = make_hf_model(root / "hf", "moe")
    return hf, convert(hf, root / "int4", quant="int4", chat=False)


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_weight_file(converted, tmp_path):
    d = copy_model(converted[1], tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(WeightError, match=r"model\.safetensors: truncated: tensor '.+' ends at byte"):
        load(d)


def test_missing_weight_file(converted, tmp_path):
    d = copy_model(converted[1], tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(WeightError, match="no such weight file"):
        load(d)


def test_corrupt_header(converted, tmp_path):
    d = copy_model(converted[1], tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(WeightError, match="truncated or corrupt header"):
        load(d)


def _edit_header(path, edit):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (n - len(new))
    assert len(new) == n
    path.write_bytes(raw[:8] + new + raw[8 + n:])


def test_missing_tensor(converted, tmp_path):
    d = copy_model(converted[1], tmp_path / "m")
    _edit_header(d / "model.safetensors",
                 lambda h: h.__setitem__("renamed", h.pop("model.layers.1.self_attn.q_layernorm.weight")))
    with pytest.raises(WeightError, match=r"missing tensor 'model\.layers\.1\.self_attn\.q_layernorm\.weight'"):
        load(d)


def test_wrong_shape_in_config(converted, tmp_path):
    d = copy_model(converted[1], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["moe_intermediate_size"] += 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightError, match=r"tensor 'model\.layers\.\d+\.feed_forward\.experts\.w1\.weight' has shape"):
        load(d)


def test_other_model_type(converted, tmp_path):
    d = copy_model(converted[1], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type 'llama' is not supported"):
        load(d)


def test_missing_config_field():
    with pytest.raises(ConfigError, match="missing required field 'hidden_size'"):
        ModelConfig.from_dict({"model_type": "lfm2", "vocab_size": 10, "num_hidden_layers": 1})


def test_hf_checkpoint_is_not_a_weight_dir(converted):
    with pytest.raises(WeightError, match="convert it first"):
        load(converted[0])


def test_convert_leaves_nothing_on_failure(converted, tmp_path):
    hf = copy_model(converted[0], tmp_path / "hf")
    f = hf / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(WeightError):
        convert(hf, tmp_path / "out", chat=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_convert_checks_disk_space_first(converted, tmp_path, monkeypatch):
    """Too little free space: one clear error before any byte is written, and nothing left behind."""
    real = shutil.disk_usage
    monkeypatch.setattr(weights.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(NoSpaceError, match=r"not enough disk space in .*: the weight file needs 0\.\d+ GB"):
        convert(converted[0], tmp_path / "out", chat=False)
    assert list(tmp_path.iterdir()) == []


def test_disk_filling_up_while_writing_is_one_clear_error(converted, tmp_path, monkeypatch):
    """ENOSPC in the middle of the file (the space went elsewhere after the check) is reported as
    such, and the partial directory is removed."""
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write = weights.write_safetensors

    def write(path, tensors, metadata, progress=None):
        tensors = list(tensors)
        tensors[len(tensors) // 2].produce = full
        real_write(path, tensors, metadata, progress)

    monkeypatch.setattr("cactus.convert.write_safetensors", write)
    with pytest.raises(NoSpaceError, match="filled up while writing the weight file"):
        convert(converted[0], tmp_path / "out", chat=False)
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_to_overwrite(converted, tmp_path):
    out = copy_model(converted[1], tmp_path / "out")
    with pytest.raises(FileExistsError):
        convert(converted[0], out, chat=False)


def test_file_is_standard_safetensors_with_aligned_tensors(converted):
    from safetensors import safe_open

    path = converted[1] / "model.safetensors"
    with safe_open(path, "np") as f:  # any safetensors reader opens it
        assert "model.embed_tokens.weight" in f.keys()
    st = SafetensorsFile(path)
    base = np.frombuffer(st._mmap, np.uint8).ctypes.data
    for name, arr in st.tensors.items():
        assert (arr.ctypes.data - base) % ALIGN == 0, name


def test_sharded_bf16_checkpoint(tmp_path):
    """Sharded bf16 checkpoints, as published, convert like single f32 files."""
    import torch

    _, model = make_hf_model(tmp_path / "src", "dense")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    ours = load(convert(tmp_path / "sharded", tmp_path / "a", quant="f32", chat=False)).forward(ids)
    oracle = hf_logits(model.to(torch.float32), ids)  # the bf16-rounded weights, computed in f32
    assert np.abs(ours - oracle).max() < 1e-4 * np.abs(oracle).max()


@pytest.mark.parametrize("k", [32, 33, 64, 95])
@pytest.mark.parametrize("fmt,tol", [("int8", 1 / 254), ("int4", 1 / 8)])
def test_quant_roundtrip_error_bound(fmt, tol, k):
    """int8: half a step (absmax/254). int4: s = m/-8, so a value of the opposite sign to m and
    the same magnitude clamps from 8 to 7: up to a full step, |m|/8."""
    w = np.random.default_rng(k).standard_normal((5, k)).astype(np.float32)
    q = QTensor.from_float(w, fmt, 32)
    err = np.abs(q.dequantize() - w)
    group_max = np.abs(np.pad(w, ((0, 0), (0, -k % 32)))).reshape(5, -1, 32).max(-1)
    bound = np.repeat(group_max, 32, axis=1)[:, :k] * tol * 1.01
    assert (err <= bound + 1e-6).all()


def test_int4_nibble_layout():
    """Byte j of a group: element j in the low nibble, element j + G/2 in the high nibble."""
    w = np.array([[-8, -7, 1, 2] + [0] * 12 + [7, 6, 5, -1] + [0] * 12], np.float32)
    data, scales = quantize(w, "int4", 32)
    assert float(scales[0, 0]) == 1.0  # largest magnitude -8 maps to -8: s = -8 / -8
    assert data[0, 0] == (-8 + 8) | ((7 + 8) << 4)
    assert data[0, 3] == (2 + 8) | ((-1 + 8) << 4)
    np.testing.assert_array_equal(unpack_int4(data, 32), w.astype(np.int8))


# ----------------------------------------------------------------------------- the format registry

@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_stores_its_layout_and_the_kernels_take_it(fmt):
    """quant.FORMATS is the one Python table: quantize writes its layout, dequantize reads it back,
    and the C table (formats.c) accepts that layout for the same name."""
    from cactus import _kernels

    f = FORMATS[fmt]
    w = np.random.default_rng(0).standard_normal((3, 5, 40)).astype(np.float32)
    stored = quantize(w, fmt, 32)
    layout = f.layout(w.shape, 32)
    assert [(a.shape, a.dtype) for a in stored if a is not None] == \
        [(shape, np.dtype(weights.DTYPES[dtype])) for shape, dtype in layout]
    err = np.abs(QTensor(fmt, w.shape, *stored, 32 if f.grouped else 0).dequantize() - w).max() / np.abs(w).max()
    assert err <= {"f32": 0, "f16": 5e-4, "bf16": 4e-3, "int8": 8e-3, "int4": 0.125}[fmt]
    assert _kernels.Weight(stored[0], stored[1], fmt, 32 if f.grouped else 0, 40).fmt == fmt
    if f.random:  # synthetic models' stored values stay in the format's range, zero past K
        data = f.random(np.random.default_rng(1), layout[0][0], 33)
        assert data.shape == layout[0][0] and data.dtype == stored[0].dtype
        assert np.abs(f.dequantize(data, np.ones(layout[1][0], np.float16), 32)).max() <= 127


def test_format_traits():
    assert QUANTIZED == ("int8", "int4")
    assert [embed_format(q) for q in FORMATS] == ["f32", "f16", "bf16", "int8", "int8"]
    assert [float_format(d) for d in ("F32", "F16", "BF16", "I8", "F64")] == ["f32", "f16", "bf16", None, None]
    with pytest.raises(ValueError, match="unknown weight format 'q3' .one of f32, f16, bf16, int8, int4."):
        quantize(np.zeros((1, 32)), "q3")


def test_unknown_format_in_metadata_names_the_tensor(converted, tmp_path):
    d = copy_model(converted[1], tmp_path / "m")
    path = d / "model.safetensors"
    st = SafetensorsFile(path)
    info = json.loads(st.metadata["cactus.tensors"])
    info["model.embed_tokens.weight"]["fmt"] = "q3"
    planned = [weights.PlannedTensor(n, st.dtypes[n], a.shape, lambda a=a: a) for n, a in st.tensors.items()]
    weights.write_safetensors(tmp_path / "x.safetensors", planned, {**st.metadata, "cactus.tensors": json.dumps(info)})
    del st
    (tmp_path / "x.safetensors").replace(path)
    with pytest.raises(WeightError, match=r"'model\.embed_tokens\.weight' has fmt 'q3', not one of f32, f16"):
        load(d)
