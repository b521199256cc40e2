"""Sampling options, the sampler and the confidence meter (cactus.sampling)."""

import math

import numpy as np
import pytest

from cactus.sampling import ConfidenceMeter, OptionError, Sampler, SamplingOptions


def sample_counts(logits, n=4000, **options):
    sampler = Sampler(SamplingOptions(seed=0, **options))
    return np.bincount([sampler.choose(np.asarray(logits, float)) for _ in range(n)], minlength=len(logits))


def test_defaults_are_greedy():
    o = SamplingOptions()
    assert (o.temperature, o.top_k, o.top_p, o.min_p, o.repetition_penalty, o.confidence_threshold) == \
        (0.0, 0, 1.0, 0.0, 1.0, None)


def test_parse_merges_defaults_options_kwargs_in_order():
    o = SamplingOptions.parse({"temperature": 0.5, "top_k": 3}, defaults={"temperature": 0.1, "top_p": 0.9},
                              top_k=7)
    assert (o.temperature, o.top_p, o.top_k) == (0.5, 0.9, 7)


def test_parse_json_string():
    expected = SamplingOptions(max_tokens=7, stop=("\n",))
    assert SamplingOptions.parse('{"max_tokens": 7, "stop": ["\\n"]}') == expected


def test_parse_aliases():
    expected = SamplingOptions(max_tokens=5, stop=("END",))
    assert SamplingOptions.parse({"max_new_tokens": 5}, stop_sequences="END") == expected


def test_parse_empty_string_is_no_options():
    assert SamplingOptions.parse("") == SamplingOptions()


BAD_OPTIONS = [
    ("unknown", {"temprature": 1}, "unknown option 'temprature'"),
    ("not json", "{", "not valid JSON"),
    ("json not object", "[1]", "must be an object"),
    ("negative temperature", {"temperature": -1}, "'temperature' must be in"),
    ("nan temperature", {"temperature": float("nan")}, "'temperature' must be a number"),
    ("string temperature", {"temperature": "hot"}, "'temperature' must be a number"),
    ("top_k float", {"top_k": 2.5}, "'top_k' must be an integer"),
    ("top_k bool", {"top_k": True}, "'top_k' must be an integer"),
    ("top_p zero", {"top_p": 0}, "'top_p' must be in"),
    ("top_p above one", {"top_p": 1.5}, "'top_p' must be in"),
    ("min_p above one", {"min_p": 2}, "'min_p' must be in"),
    ("repetition penalty zero", {"repetition_penalty": 0}, "'repetition_penalty' must be in"),
    ("seed negative", {"seed": -3}, "'seed' must be in"),
    ("max_tokens zero", {"max_tokens": 0}, "'max_tokens' must be in"),
    ("stop empty string", {"stop": [""]}, "'stop' must be"),
    ("stop number", {"stop": 3}, "'stop' must be"),
    ("threshold above one", {"confidence_threshold": 1.2}, "'confidence_threshold' must be in"),
    ("window zero", {"confidence_window": 0}, "'confidence_window' must be in"),
]


@pytest.mark.parametrize("options, error", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options_raise(options, error):
    with pytest.raises(OptionError, match=error):
        SamplingOptions.parse(options)


def test_bad_keyword_option_raises():
    with pytest.raises(OptionError, match="unknown option 'foo'"):
        SamplingOptions.parse(None, foo=1)


def test_probability_is_stable_for_huge_logits():
    token, p = Sampler(SamplingOptions())(np.array([1e4, 1e4 - 1.0, -1e4], dtype=np.float32))
    assert token == 0 and math.isclose(p, 1 / (1 + math.exp(-1)), rel_tol=1e-6)


def test_greedy_is_argmax_even_with_close_logits():
    logits = np.array([0.1, 3.0, 3.0 - 1e-6, -1.0], dtype=np.float32)
    assert Sampler(SamplingOptions())(logits)[0] == 1


def test_greedy_returns_probability_at_temperature_one():
    logits = np.log(np.array([0.2, 0.5, 0.3]))
    token, p = Sampler(SamplingOptions())(logits)
    assert token == 1 and math.isclose(p, 0.5, rel_tol=1e-6)


def test_probability_ignores_sampling_temperature():
    logits = np.log(np.array([0.2, 0.5, 0.3]))
    sampler = Sampler(SamplingOptions(temperature=5.0, seed=1))
    token, p = sampler(logits)
    assert math.isclose(p, [0.2, 0.5, 0.3][token], rel_tol=1e-6)


def test_same_seed_same_tokens():
    logits = np.random.default_rng(0).normal(size=50)
    a, b = (Sampler(SamplingOptions(temperature=1.0, seed=42)) for _ in range(2))
    assert [a.choose(logits) for _ in range(30)] == [b.choose(logits) for _ in range(30)]


def test_different_seed_different_tokens():
    logits = np.zeros(1000)
    a, b = (Sampler(SamplingOptions(temperature=1.0, seed=s)) for s in (1, 2))
    assert [a.choose(logits) for _ in range(10)] != [b.choose(logits) for _ in range(10)]


def test_temperature_one_follows_the_distribution():
    probs = np.array([0.1, 0.6, 0.3])
    counts = sample_counts(np.log(probs), n=6000, temperature=1.0)
    assert np.allclose(counts / counts.sum(), probs, atol=0.03)


def test_top_k_keeps_k_best():
    counts = sample_counts([1.0, 3.0, 2.0, 0.5], temperature=1.0, top_k=2)
    assert counts[0] == counts[3] == 0 and counts[1] > 0 and counts[2] > 0


def test_top_p_keeps_smallest_head():
    # sorted: 0.5, 0.3, 0.15, 0.05 -> mass 0.75 reached by the first two
    counts = sample_counts(np.log([0.15, 0.5, 0.3, 0.05]), temperature=1.0, top_p=0.75)
    assert counts[0] == counts[3] == 0 and counts[1] > 0 and counts[2] > 0


def test_top_k_larger_than_vocab_keeps_all():
    counts = sample_counts([0.0, 0.1, 0.2], temperature=1.0, top_k=10)
    assert (counts > 0).all()


def test_top_p_on_a_flat_tail_is_exact():
    # one token at p=0.5, the rest spread thin: the 0.9 nucleus needs tail tokens far below 1e-4 of the best
    v = 20_000
    probs = np.full(v, 0.5 / (v - 1))
    probs[0] = 0.5
    sampler = Sampler(SamplingOptions(temperature=1.0, top_p=0.9, seed=0))
    counts = np.bincount([sampler.choose(np.log(probs)) for _ in range(200)], minlength=v)
    assert 70 < counts[0] < 150  # tail kept: p(best) = 0.5 / 0.9 = 0.56; tail wrongly dropped: 1.0


def test_min_p_drops_tokens_below_fraction_of_best():
    counts = sample_counts(np.log([0.5, 0.3, 0.15, 0.05]), temperature=1.0, min_p=0.5)
    assert counts[2] == counts[3] == 0 and counts[0] > 0 and counts[1] > 0


def test_low_temperature_sharpens():
    counts = sample_counts(np.log([0.4, 0.6]), temperature=0.01)
    assert counts[1] == counts.sum()


def test_repetition_penalty_as_transformers():
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = np.array([2.0, -1.0, 1.5, 0.5, 1.9])
    history = [0, 1, 0]
    ours = Sampler(SamplingOptions(repetition_penalty=1.5))
    expected = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([history]), torch.tensor(logits[None]))[0]
    assert ours.choose(logits, history) == int(expected.argmax()) == 4


WARPER_CASES = [
    ("temperature", {"temperature": 0.7}),
    ("top_k", {"temperature": 1.0, "top_k": 7}),
    ("top_p", {"temperature": 1.0, "top_p": 0.6}),
    ("min_p", {"temperature": 1.0, "min_p": 0.1}),
    ("all of them", {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.02,
                     "repetition_penalty": 1.3}),
    ("hot top_p", {"temperature": 2.5, "top_p": 0.95}),
]


@pytest.mark.parametrize("options", [c[1] for c in WARPER_CASES], ids=[c[0] for c in WARPER_CASES])
def test_distribution_matches_transformers_warpers(options):
    import torch
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    o = SamplingOptions(**options)
    logits = np.random.default_rng(3).normal(size=300).astype(np.float32) * 2
    history = [5, 9, 9, 200]
    procs = [RepetitionPenaltyLogitsProcessor(o.repetition_penalty), TemperatureLogitsWarper(o.temperature)]
    procs += [TopKLogitsWarper(o.top_k)] if o.top_k else []
    procs += [TopPLogitsWarper(o.top_p)] if o.top_p < 1 else []
    procs += [MinPLogitsWarper(o.min_p)] if o.min_p else []
    scores = LogitsProcessorList(procs)(torch.tensor([history]), torch.tensor(logits[None]))[0]
    expected = torch.softmax(scores.double(), -1).numpy()
    ids, w = Sampler(o).distribution(logits, history)
    ours = np.zeros(300)
    ours[ids] = w / w.sum(dtype=np.float64)
    assert set(ids.tolist()) == set(np.flatnonzero(expected).tolist())
    assert np.allclose(ours, expected, atol=1e-6)


def test_non_finite_logits_raise():
    with pytest.raises(FloatingPointError):
        Sampler(SamplingOptions())(np.array([0.0, np.nan]))


def test_meter_value_is_mean_over_window():
    m = ConfidenceMeter(window=3)
    for p in [0.9, 0.6, 0.3, 0.0, 0.0]:
        m.add(p)
    assert math.isclose(m.value, 0.6)


def test_meter_value_with_fewer_tokens_than_window():
    m = ConfidenceMeter(window=16)
    m.add(0.5)
    m.add(1.0)
    assert math.isclose(m.value, 0.75)


# (window, threshold, token probabilities, number of tokens after which it is settled low, or None)
SETTLE_CASES = [
    ("hopeless stops at ceil(W*(1-t))", 16, 0.7, [0.0] * 16, 5),
    ("small window", 8, 0.7, [0.0] * 8, 3),
    ("confident never settles", 16, 0.7, [0.95] * 16, None),
    ("just above threshold", 4, 0.5, [0.5, 0.5, 0.5, 0.5], None),
    ("decided at window end", 4, 0.5, [0.6, 0.4, 0.4, 0.4], 4),
    ("no threshold", 4, None, [0.0] * 4, None),
]


@pytest.mark.parametrize("window, threshold, probs, settled_at", [c[1:] for c in SETTLE_CASES],
                         ids=[c[0] for c in SETTLE_CASES])
def test_meter_settles_as_early_as_provable(window, threshold, probs, settled_at):
    m = ConfidenceMeter(window, threshold)
    at = None
    for i, p in enumerate(probs, 1):
        m.add(p)
        if m.settled_low:
            at = i
            break
    assert at == settled_at


def test_meter_settled_low_implies_handoff():
    m = ConfidenceMeter(window=10, threshold=0.8)
    while not m.settled_low:
        m.add(0.3)
    assert m.handoff and m.value < 0.8
