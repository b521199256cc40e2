"""Every op's C kernel held to its numpy definition, at every ISA level this machine runs, on odd
shapes (K not a multiple of the group, one row, tails). Quantized matmuls are held tightly to
quant.qlinear_spec (the integer arithmetic they implement) and loosely to the exact float op.
No timing here: speed lives in benchmarks/.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cactus import ops, quant
from cactus.quant import QTensor

LEVELS = [lv for lv in ops.supported() if lv != "ref"]
RNG = np.random.default_rng(1234)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / (np.abs(b).max() + 1e-12))


def weight(fmt: str, n: int, k: int, group: int = 32, lead: tuple[int, ...] = ()) -> QTensor:
    return QTensor.from_float(RNG.standard_normal(lead + (n, k)).astype(np.float32) / np.sqrt(k), fmt, group)


def spec_linear(x: np.ndarray, w: QTensor) -> np.ndarray:
    return quant.qlinear_spec(x, w) if w.fmt in quant.QUANTIZED else ops.linear_ref(x, w)


SHAPES = [(1, 1, 32), (1, 37, 100), (1, 64, 2048), (2, 33, 96), (3, 5, 1056), (5, 17, 64), (7, 24, 160), (8, 40, 96),
          (9, 50, 300), (10, 21, 128), (17, 40, 200)]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("t,n,k", SHAPES)
def test_quantized_linear_matches_spec(level, fmt, t, n, k):
    w = weight(fmt, n, k)
    x = RNG.standard_normal((t, k)).astype(np.float32)
    with ops.use(level):
        y = ops.linear(x, w)
    assert y.shape == (t, n) and y.dtype == np.float32
    assert rel(y, quant.qlinear_spec(x, w)) < 2e-5
    assert rel(y, ops.linear_ref(x, w)) < 3e-2  # activations are int8: close to the float op, not equal


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt,group", [("int8", 64), ("int4", 64), ("int4", 128), ("int8", 96)])
@pytest.mark.parametrize("t", [1, 6])
def test_other_group_sizes(level, fmt, group, t):
    w = weight(fmt, 21, 3 * group + 5, group)
    x = RNG.standard_normal((t, 3 * group + 5)).astype(np.float32)
    with ops.use(level):
        assert rel(ops.linear(x, w), quant.qlinear_spec(x, w)) < 2e-5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("t,n,k", [(1, 7, 13), (3, 40, 100), (6, 9, 64)])
def test_float_linear(level, fmt, t, n, k):
    w = weight(fmt, n, k)
    x = RNG.standard_normal((t, k)).astype(np.float32)
    with ops.use(level):
        assert rel(ops.linear(x, w), ops.linear_ref(x, w)) < 2e-6


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", ["int4", "f16"])
@pytest.mark.parametrize("t", [1, 7])
def test_swiglu(level, fmt, t):
    w1, w3, w2 = weight(fmt, 80, 48), weight(fmt, 80, 48), weight(fmt, 48, 80)
    x = RNG.standard_normal((t, 48)).astype(np.float32)
    want = spec_linear(ops.silu_mul_ref(spec_linear(x, w1), spec_linear(x, w3)), w2)
    with ops.use(level):
        assert rel(ops.swiglu(x, w1, w3, w2), want) < 2e-5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", ["int8", "int4", "f32"])
@pytest.mark.parametrize("t", [1, 11])
def test_moe(level, fmt, t):
    e, a, d, i = 6, 2, 64, 40
    w1, w3, w2 = weight(fmt, i, d, lead=(e,)), weight(fmt, i, d, lead=(e,)), weight(fmt, d, i, lead=(e,))
    gate = QTensor.from_float(RNG.standard_normal((e, d)).astype(np.float32), "f32")
    bias = (0.1 * RNG.standard_normal(e)).astype(np.float32)
    x = RNG.standard_normal((t, d)).astype(np.float32)
    idx, wts = ops.moe_route_ref(ops.linear_ref(x, gate), bias, a, True, 1.5)
    want = np.zeros_like(x)
    for ex in np.unique(idx):
        tok, slot = np.nonzero(idx == ex)
        h = ops.silu_mul_ref(spec_linear(x[tok], w1[ex]), spec_linear(x[tok], w3[ex]))
        np.add.at(want, tok, spec_linear(h, w2[ex]) * wts[tok, slot][:, None])
    with ops.use(level):
        got = ops.moe(x, gate, bias, w1, w3, w2, a, True, 1.5)
    assert rel(got, want) < 2e-5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("fewest", [1, 4])
def test_moe_experts_by_pairs_per_expert(level, fmt, fewest):
    """Experts with 4 or more pairs run the panel kernels; one with fewer runs the decode kernels,
    which need the activation extras (ActLayout.extras): both mixes match the spec."""
    e, a, d, i, t = 4, 2, 64, 40, 12
    w1, w3, w2 = weight(fmt, i, d, lead=(e,)), weight(fmt, i, d, lead=(e,)), weight(fmt, d, i, lead=(e,))
    x = RNG.standard_normal((t, d)).astype(np.float32)
    # slot 0: experts 0 and 1, 6 pairs each; slot 1: expert 2 for the first `fewest` tokens, expert 3 after
    idx = np.stack([np.arange(t) % 2, 2 + (np.arange(t) >= fewest)], axis=1).astype(np.int32)
    wts = RNG.random((t, a)).astype(np.float32)
    want = np.zeros_like(x)
    for ex in np.unique(idx):
        tok, slot = np.nonzero(idx == ex)
        h = ops.silu_mul_ref(spec_linear(x[tok], w1[ex]), spec_linear(x[tok], w3[ex]))
        np.add.at(want, tok, spec_linear(h, w2[ex]) * wts[tok, slot][:, None])
    assert np.bincount(idx.ravel()).min() == fewest
    with ops.use(level):
        got = ops.moe_experts(x, idx, wts, w1, w3, w2)
    assert rel(got, want) < 2e-5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize("t,start,h,hkv,hd", [(1, 0, 8, 2, 64), (1, 300, 8, 2, 64), (20, 13, 4, 2, 64),
                                              (5, 3, 4, 1, 12), (3, 40, 6, 3, 16),
                                              (7, 150, 8, 2, 64), (4, 200, 6, 2, 24)])
def test_cache_attention(level, kv, t, start, h, hkv, hd):
    s = start + t
    cap = -(-s // 256) * 256
    kt = np.zeros((hkv, cap // 16, hd, 16), kv)
    v = np.zeros((hkv, cap, hd), kv)
    k_new = RNG.standard_normal((s, hkv, hd)).astype(np.float32)
    v_new = RNG.standard_normal((s, hkv, hd)).astype(np.float32)
    q = (2 * RNG.standard_normal((t, h, hd))).astype(np.float32)
    with ops.use(level):
        ops.kv_store(kt, v, k_new, v_new, 0)
        got = ops.cache_attention(q, kt, v, start)
    kr, vr = ops.cache_views_ref(kt, v, s)
    np.testing.assert_array_equal(kr, k_new.astype(kv).astype(np.float32))  # the store is exact
    assert rel(got, ops.attention_ref(q, kr, vr, start)) < 2e-5


@pytest.mark.parametrize("level", LEVELS)
def test_small_ops(level):
    x = RNG.standard_normal((5, 3, 64)).astype(np.float32)
    w = RNG.standard_normal(64).astype(np.float32)
    a, b = RNG.standard_normal((2, 7, 33)).astype(np.float32)
    with ops.use(level):
        assert rel(ops.rmsnorm(x, w, 1e-5), ops.rmsnorm_ref(x, w, 1e-5)) < 1e-6
        assert rel(ops.silu_mul(a, b), ops.silu_mul_ref(a, b)) < 1e-6
        for start in (0, 4000):
            assert rel(ops.rope(x.copy(), start, 1e6), ops.rope_ref(x, start, 1e6)) < 2e-4


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_gate_updates_state(level, bias):
    d, L = 24, 3
    w = RNG.standard_normal((d, L)).astype(np.float32)
    b = RNG.standard_normal(d).astype(np.float32) if bias else None
    bcx = RNG.standard_normal((6, 3 * d)).astype(np.float32)
    s_ref, s_k = np.zeros((L - 1, d), np.float32), np.zeros((L - 1, d), np.float32)
    with ops.use(level):
        for chunk in (bcx[:4], bcx[4:5], bcx[5:]):
            want = ops.conv_gate_ref(chunk, s_ref, w, b)
            assert rel(ops.conv_gate(chunk, s_k, w, b), want) < 1e-6
            np.testing.assert_allclose(s_k, s_ref, rtol=1e-6)


@pytest.mark.parametrize("level", LEVELS)
def test_route_top_k(level):
    logits = RNG.standard_normal((9, 32)).astype(np.float32)
    logits[0, :] = 0.5  # all tied: the lowest ids win, as the stable argsort does
    bias = (0.3 * RNG.standard_normal(32)).astype(np.float32)
    for bb, norm in ((bias, True), (None, False)):
        want_i, want_w = ops.moe_route_ref(logits, bb, 4, norm, 2.0)
        with ops.use(level):
            got_i, got_w = ops.moe_route(logits, bb, 4, norm, 2.0)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_w, want_w, rtol=1e-6)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", ["int8", "int4", "f16", "bf16", "f32"])
def test_embed_rows(level, fmt):
    w = weight(fmt, 50, 70)
    ids = np.array([0, 49, 7, 7])
    with ops.use(level):
        np.testing.assert_allclose(ops.embed(ids, w), ops.embed_ref(ids, w), rtol=1e-6)


def test_threads_do_not_change_results():
    w = weight("int4", 300, 256)
    x = RNG.standard_normal((7, 256)).astype(np.float32)
    before = ops.threads()
    try:
        ops.set_threads(1)
        one = ops.linear(x, w)
        ops.set_threads(2)
        np.testing.assert_array_equal(ops.linear(x, w), one)
    finally:
        ops.set_threads(before)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_prefetch_distances_do_not_change_results(level, fmt):
    w = weight(fmt, 300, 1056)  # rows of 528 / 1056 bytes: prefetches cross rows, and the matrix end
    x = RNG.standard_normal((1, 1056)).astype(np.float32)
    with ops.use(level):
        before = ops.set_prefetch(8192, 0)
        try:
            base = ops.linear(x, w)
            for l2, l1 in ((64, 64), (4096, 1024), (65536, 4096)):
                ops.set_prefetch(l2, l1)
                np.testing.assert_array_equal(ops.linear(x, w), base)
        finally:
            ops.set_prefetch(*before)
    for bad in ((32, 0), (4096, 8192), (4096, -1), (2 << 20, 0)):
        with pytest.raises(ValueError, match="set_prefetch"):
            ops.set_prefetch(*bad)


def test_arguments_are_checked():
    from cactus import _kernels as k

    w = weight("int4", 8, 64)
    h = k.Weight(w.data, w.scales, "int4", 32, 64)
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    with pytest.raises(TypeError, match="dtype"):
        k.linear(x.astype(np.float64), h, 0)
    with pytest.raises(ValueError, match="contiguous"):
        k.linear(np.asfortranarray(RNG.standard_normal((3, 64)).astype(np.float32)), h, 0)
    with pytest.raises(ValueError, match="K="):
        k.linear(x[:, :32].copy(), h, 0)
    with pytest.raises(IndexError):
        k.linear(x, h, 1)
    with pytest.raises(ValueError, match="needs"):
        k.Weight(w.data[:, :16].copy(), w.scales, "int4", 32, 64)
    with pytest.raises(ValueError, match="group"):
        k.Weight(w.data, w.scales, "int4", 48, 64)
    with pytest.raises(TypeError):
        k.linear(x, "not a weight", 0)
    up, down = weight("int8", 8, 64, lead=(3,)), weight("int8", 64, 8, lead=(3,))
    hu = k.Weight(up.data, up.scales, "int8", 32, 64)
    hd = k.Weight(down.data, down.scales, "int8", 32, 8)
    ones = np.ones((1, 2), np.float32)
    with pytest.raises(IndexError, match="expert"):
        k.moe(x[:1], np.array([[0, 3]], np.int32), ones, hu, hu, hd)
    with pytest.raises(ValueError, match="twice"):
        k.moe(x[:1], np.array([[1, 1]], np.int32), ones, hu, hu, hd)
    with pytest.raises(ValueError, match="must be"):
        k.attention(np.zeros((1, 4, 64), np.float32), np.zeros((2, 1, 64, 8), np.float16),
                    np.zeros((2, 16, 64), np.float16), 0, 0.1)


def test_tape_and_states_are_checked(tmp_path):
    """The C tape checks its ops once and its caches at every run: a wrong shape, position or
    sequence is an error, never a write outside a buffer."""
    from helpers import make_hf_model

    from cactus import _kernels as k
    from cactus.convert import convert
    from cactus.engine import load

    hf_dir, _ = make_hf_model(tmp_path / "hf", "moe", conv_bias=True)  # biases: every op on the tape
    m = load(convert(hf_dir, tmp_path / "int4", quant="int4", chat=False), max_context=32)
    tape = ops.record(m.net.definition, m.cache)
    assert {op.name for op in tape.ops} == set(ops.TAPE_OPS)
    kernel = tape._compile(k)
    compiled = {}

    def capture(c, w, o):  # the arguments _compile passes
        compiled.update(code=c, widths=w, out=o)
        return k.Tape(c, w, o)

    class Capture:
        Tape = staticmethod(capture)

    tape._compile(Capture)
    code, widths, out = list(compiled["code"]), compiled["widths"], compiled["out"]

    def refused(match, i, field, value, exc=ValueError):
        bad = list(code)
        op = list(bad[i])
        op[field] = value
        bad[i] = tuple(op)
        with pytest.raises(exc, match=match):
            k.Tape(tuple(bad), widths, out)

    at = {name: next(i for i, op in enumerate(code) if op[0] == name) for name in ops.TAPE_OPS}
    refused("rmsnorm", at["rmsnorm"], 5, (code[at["rmsnorm"]][5][0][:-1].copy(),))
    refused("linear.*weight", at["linear"], 4, (code[at["embed"]][4][0],))
    refused("top_k", at["moe"], 6, (99, 1))
    refused("unknown op", 0, 0, "matmul")
    refused("not a value written before", at["add"], 2, (len(widths) - 1, len(widths) - 1))
    refused("KV cache", at["attention"], 3, code[at["conv_gate"]][3])
    refused("expected a cactus._kernels.Weight", at["linear"], 4, ("w",), TypeError)
    with pytest.raises(ValueError, match="output"):
        k.Tape(tuple(code), widths, len(widths))
    states = (tuple(c.tape_state() for c in m.cache),)
    one = np.array([3]), np.array([0]), np.array([0])
    assert kernel.run(*one, states).shape == (1, m.config.vocab_size)
    with pytest.raises(ValueError, match="exceeds the cache"):
        kernel.run(np.array([3]), np.array([0]), np.array([32]), states)
    with pytest.raises(IndexError, match="id"):
        kernel.run(np.array([m.config.vocab_size]), *one[1:], states)
    with pytest.raises(IndexError, match="sequence"):
        kernel.run(np.array([3]), np.array([1]), np.array([1]), states)
    with pytest.raises(ValueError, match="tuple of"):
        kernel.run(*one, (states[0][:-1],))
    with pytest.raises(ValueError, match="must be"):
        kernel.run(np.array([3, 4]), np.array([0]), np.array([1]), states)
    conv = next(i for i, st in enumerate(states[0]) if not isinstance(st, tuple))
    wrong = list(states[0])
    wrong[conv] = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match="conv state"):
        kernel.run(*one, (tuple(wrong),))
    with pytest.raises(ValueError, match="writeable"):
        wrong[conv] = np.broadcast_to(states[0][conv], states[0][conv].shape)
        kernel.run(*one, (tuple(wrong),))


def test_isa_switches():
    with ops.use("ref"):
        assert ops.isa() == "ref"
    with pytest.raises(ValueError):
        with ops.use("sse9"):
            pass
    code = "from cactus import ops; print(ops.isa())"
    for level in ("ref", "scalar"):
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, CACTUS_ISA=level),
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == level
