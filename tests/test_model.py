"""Our logits against transformers' Lfm2 / Lfm2Moe on tiny random checkpoints, through the real
`cactus convert`: f32 to the oracle, cached decode to prefill, quantized weights to the oracle
running the same dequantized weights, and the quantization error itself (measured, reported)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import hf_logits, load_dequantized_into, make_hf_model

from cactus import ops
from cactus.convert import convert
from cactus.engine import load

# Each case is a config the reference honours that changes the computation.
CASES = {
    "dense": ("dense", {}),
    "dense-conv_bias-odd_hidden": ("dense", dict(conv_bias=True, hidden_size=40, num_attention_heads=5,
                                                 num_key_value_heads=1, intermediate_size=70)),
    "dense-mha-all_attention": ("dense", dict(num_key_value_heads=4, layer_types=["full_attention"] * 3,
                                              num_hidden_layers=3)),
    "dense-all_conv-no_autoadjust-rope": ("dense", dict(layer_types=["conv"] * 3, num_hidden_layers=3,
                                                        block_auto_adjust_ff_dim=False,
                                                        rope_parameters={"rope_type": "default",
                                                                         "rope_theta": 10000.0})),
    "dense-untied": ("dense", dict(tie_word_embeddings=False)),
    "moe": ("moe", {}),
    "moe-no_expert_bias-no_norm-scaled": ("moe", dict(use_expert_bias=False, norm_topk_prob=False,
                                                      routed_scaling_factor=2.5)),
    "moe-top3-two_dense-conv_bias": ("moe", dict(num_experts_per_tok=3, num_dense_layers=2, conv_bias=True,
                                                 num_hidden_layers=5,
                                                 layer_types=["conv", "full_attention", "conv", "conv",
                                                              "full_attention"])),
    "moe-top1-gqa4-rope": ("moe", dict(num_experts_per_tok=1, num_attention_heads=8, num_key_value_heads=2,
                                       hidden_size=64, num_dense_layers=0,
                                       rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(p || q) over positions."""
    lp = p_logits - p_logits.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = q_logits - q_logits.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    kind, overrides = CASES[request.param]
    path, model = make_hf_model(tmp_path_factory.mktemp(request.param) / "hf", kind, **overrides)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, 24)
    return path, model, ids


def test_f32_prefill_matches_transformers(case, tmp_path):
    hf_dir, model, ids = case
    ours = load(convert(hf_dir, tmp_path / "f32", quant="f32", chat=False)).forward(ids)
    assert rel_err(ours, hf_logits(model, ids)) < 1e-4


def test_cached_decode_matches_prefill(case, tmp_path):
    hf_dir, model, ids = case
    m = load(convert(hf_dir, tmp_path / "f32", quant="f32", chat=False))
    # prefill a prefix, then one token at a time, then a chunk: every split gives the same logits
    steps = [m.forward(ids[:7])] + [m.forward(ids[i:i + 1]) for i in range(7, 15)] + [m.forward(ids[15:])]
    assert rel_err(np.concatenate(steps), hf_logits(model, ids)) < 1e-4
    assert m.n_past == len(ids)


@pytest.mark.parametrize("quant", ["f16", "bf16", "int8", "int4"])
def test_stored_weights_compute_exactly(case, tmp_path, quant):
    """Same (dequantized) weights in transformers and in our engine's reference ops: the same
    logits. (The int kernels also quantize activations: see the next test.)"""
    hf_dir, model, ids = case
    out = convert(hf_dir, tmp_path / quant, quant=quant, chat=False)
    with ops.use("ref"):
        ours = load(out).forward(ids)
    oracle = copy.deepcopy(model)
    load_dequantized_into(oracle, out)
    assert rel_err(ours, hf_logits(oracle, ids)) < 1e-4


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_kernels_follow_the_reference_on_whole_models(case, tmp_path, quant):
    """The C kernels (int8 activations, f16 KV cache) against the exact reference path on the same
    weights, prefill then cached decode. Random tiny models are chaotic (a flipped MoE route
    changes a token's whole FFN), so this bounds the divergence rather than asking for equality."""
    hf_dir, model, ids = case
    out = convert(hf_dir, tmp_path / quant, quant=quant, chat=False)
    with ops.use("ref"):
        ref = load(out).forward(ids)
    m = load(out)
    ours = np.concatenate([m.forward(ids[:12])] + [m.forward(ids[i:i + 1]) for i in range(12, len(ids))])
    divergence, top1 = kl(ref, ours), (ours.argmax(-1) == ref.argmax(-1)).mean()
    print(f"kernels vs reference: KL {divergence:.2e}, top-1 {top1:.3f}")
    # measured: dense <= 7.4e-4; MoE up to 4.2e-2, where int8 activations flip a near-tied route.
    # On a trained model the kernel path's perplexity equals transformers' (tests/test_demo.py).
    moe = model.config.model_type == "lfm2_moe"
    assert divergence < (0.1 if moe else 2e-3)
    assert top1 >= (0.7 if moe else 0.9)


@pytest.mark.parametrize("quant", ["f32", "int8", "int4"])
def test_tape_equals_op_by_op(case, tmp_path, quant):
    """A decoded token runs as the model's tape (its forward recorded once, ops.record) in one kernel
    call; prefill runs the forward op by op. Both make the same kernel calls in the same order, so
    every level gives the same logits bit for bit, conv state and KV cache included (checked by
    decoding on from each); so does the tape run op by op from Python (Tape.run_ops)."""
    hf_dir, model, ids = case
    m = load(convert(hf_dir, tmp_path / quant, quant=quant, chat=False))
    for level in [lv for lv in ops.supported() if lv != "ref"]:
        with ops.use(level):
            m.reset()
            m.forward(ids[:9])
            start = m.snapshot()
            runs = []
            for taped in (True, False):
                m.restore(start)
                m.net.use_tape = taped
                runs.append(np.concatenate([m.forward(ids[i:i + 1]) for i in range(9, len(ids))]))
            m.net.use_tape = True
            assert m.n_past == len(ids)
            m.restore(start)
            runs.append(np.concatenate([m.net.tape.run_ops([t], [0], [i], [m.cache]) for i, t in
                                        enumerate(ids[9:], 9)]))
        assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2]), level


@pytest.mark.parametrize("quant", ["f32", "int4"])
def test_tape_runs_tokens_of_several_sequences(case, tmp_path, quant):
    """One tape call over T tokens, each of its own sequence at its own position with its own
    caches (two tokens of sequence 0 in a row, as speculative verification will feed them), gives
    each token the logits it gets alone (the C tape and the Python one), and leaves each
    sequence's caches as decoding alone does."""
    hf_dir, model, ids = case
    m = load(convert(hf_dir, tmp_path / quant, quant=quant, chat=False))
    net = m.net
    prompts = [ids[:5], ids[5:12], ids[12:15]]
    seqs, positions = [0, 1, 0, 2], [5, 7, 6, 3]
    tokens = [int(t) for t in ids[15:19]]
    for level in ("ref", "scalar", ops.supported()[-1]):
        with ops.use(level):
            def prefilled():
                caches = [net.make_cache(64) for _ in prompts]
                for c, p in zip(caches, prompts, strict=True):
                    net.definition(p, c, 0)
                return caches
            alone, want = prefilled(), []
            for t, s, p in zip(tokens, seqs, positions, strict=True):
                want.append(net.definition(np.array([t]), alone[s], p))
            want = np.concatenate(want)
            tape = ops.record(net.definition, alone[0])
            for run in (tape.run, tape.run_ops):
                together = prefilled()
                got = run(tokens, seqs, positions, together)
                np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max(), err_msg=level)
                for a, b in zip(alone, together, strict=True):
                    for ca, cb in zip(a, b, strict=True):
                        if hasattr(ca, "kt"):
                            assert ca.length == cb.length
                            tol = 2e-3 if ca.v.dtype == np.float16 else 1e-5  # an f16 ulp
                            np.testing.assert_allclose(cb.v[:, :ca.length], ca.v[:, :ca.length], rtol=tol, atol=tol)
                        else:
                            np.testing.assert_allclose(cb.state, ca.state, rtol=1e-5, atol=1e-5)


def test_quantization_error_on_random_weights(tmp_path):
    """int8/int4 against the f32 original. Random tiny models have flat, chaotic logits, so these
    bounds are the measured error (see docs/FORMAT.md), not the issue's trained-model targets."""
    hf_dir, model = make_hf_model(tmp_path / "hf", "dense", hidden_size=128, intermediate_size=384,
                                  vocab_size=256)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 256, 32) for _ in range(4)]
    ref = np.concatenate([hf_logits(model, p) for p in prompts])
    results = {}
    for quant in ("int8", "int4"):
        m = load(convert(hf_dir, tmp_path / quant, quant=quant, chat=False))
        ours = []
        with ops.use("ref"):  # the weights' quantization error alone
            for p in prompts:
                m.reset()
                ours.append(m.forward(p))
        ours = np.concatenate(ours)
        results[quant] = (kl(ref, ours), float((ours.argmax(-1) == ref.argmax(-1)).mean()))
    print("quantization error vs f32 (KL, top-1):", results)
    assert results["int8"][0] < 2e-3 and results["int8"][1] >= 0.95
    assert results["int4"][0] < 0.3
    assert results["int8"][0] < results["int4"][0]
