"""Speculative decoding (speculative.py): verification over several tokens is bit-identical to
stepping them one by one, `keep` rolls the KV caches and the conv states back exactly, and answers
are token for token the same with and without speculation (greedy, seeded sampling, stop strings,
eos, tool calls, max_tokens inside an accepted run, a draft model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_hf_model

from cactus import ops
from cactus.api import Model
from cactus.convert import convert
from cactus.engine import load
from cactus.generate import collect, generate
from cactus.sampling import OptionError, SamplingOptions
from cactus.speculative import PromptLookup


@pytest.fixture(scope="module", params=[("dense", "f32"), ("dense", "int4"), ("moe", "int8")],
                ids=lambda p: "-".join(p))
def engine(request, tmp_path_factory):
    kind, quant = request.param
    root = tmp_path_factory.mktemp(f"spec-{kind}-{quant}")
    hf, _ = make_hf_model(root / "hf", kind, conv_bias=True)
    return load(convert(hf, root / quant, quant=quant, chat=False), max_context=128)


def _prefilled(e, n=9):
    e.reset()
    e.forward(np.arange(n) * 7 % e.config.vocab_size)
    e.forward([5])
    return e.snapshot(detach=True)


@pytest.mark.parametrize("level", ["ref", "scalar", "best"])
def test_verify_equals_steps_and_keep_rolls_back(engine, level):
    """verify(T ids) gives each id the logits stepping it alone gives, bit for bit; keep(j) leaves
    the caches as stepping j ids does: the next step's logits are the same bits, for every j."""
    e = engine
    with ops.use(ops.supported()[-1] if level == "best" else level):
        start = _prefilled(e)
        ids = [int(i) for i in (np.arange(6) * 31 + 3) % e.config.vocab_size]
        alone, after = [], []
        for j in range(len(ids) + 1):  # after[j]: the next step's logits once j ids are in
            e.restore(start)
            for t in ids[:j]:
                row = e.forward([t])[0]
                if j == len(ids):
                    alone.append(row)
            after.append(e.forward([11])[0])
        for j in range(len(ids) + 1):
            e.restore(start)
            got = e.verify(ids)
            assert np.array_equal(got, np.stack(alone)), level
            e.keep(j)
            assert e.n_past == start.n_past + j
            assert np.array_equal(e.forward([11])[0], after[j]), (level, j)


def test_keep_needs_a_verify(engine):
    engine.reset()
    engine.forward([1, 2])
    with pytest.raises(RuntimeError, match="verify"):
        engine.keep(1)


def test_prompt_lookup_drafts_what_followed_the_last_match():
    d = PromptLookup()
    h = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert d.draft(h, 3) == [4, 5, 9]
    assert d.draft(h + [7], 3) == []  # (2, 3, 7) and (1, 2, 3, 7) never occurred
    h = h + [7, 1, 2, 3]
    assert d.draft(h, 2) == [7, 1]    # (7, 1, 2, 3) never occurred; the latest (1, 2, 3) did, at 6
    assert d.draft([5], 4) == []
    # a pair alone drafts nothing (in text that repeats nothing, pairs matched and failed); the
    # longest match wins over a later shorter one
    assert PromptLookup().draft([1, 2, 8, 9, 1, 2], 3) == []
    assert PromptLookup().draft([8, 1, 2, 3, 4, 6, 1, 2, 3, 5, 8, 1, 2, 3], 2) == [4, 6]


CODE = '''def area(w, h):
    """The area of a w x h rectangle."""
    return w * h


def perimeter(w, h):
    return 2 * (w + h)
'''


def _run(model, prompt_ids, **options):
    opts = SamplingOptions.parse(None, defaults=model.defaults, **options)
    g = collect(generate(model.session, model.tokenizer, prompt_ids, opts, stop_ids=model.stop_ids))
    return g.token_ids, g.finish


def _repeat_prompt(model) -> list[int]:
    return model.tokenizer.encode(f"{CODE}\n{CODE}\n{CODE[:40]}")


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.7, top_p=0.9, seed=3),  # sampled, taking drafts
                                     dict(repetition_penalty=1.3), dict(max_tokens=37),
                                     dict(stop=["perimeter"])])
def test_same_tokens_with_and_without_speculation(demo, options):
    """The demo model repeating code from its context: drafts are taken, and the answer is the
    very same ids (greedy and seeded sampling), finishing the same way."""
    prompt = _repeat_prompt(demo)
    options = {"max_tokens": 120, **options}
    demo.session.reset()
    want, f0 = _run(demo, prompt, speculative="off", **options)
    demo.session.reset()
    got, f1 = _run(demo, prompt, speculative="prompt", draft_tokens=8, **options)
    assert got == want
    assert (f1.reason, f1.decode_tokens) == (f0.reason, f0.decode_tokens)
    assert f1.accepted_tokens > 0 and f0.drafted_tokens == 0
    # the caches hold exactly the fed tokens: the session continues as without speculation
    assert demo.session.ids == prompt + want[:-1]
    assert demo.engine.n_past == len(demo.session.ids)


def test_next_turn_is_unchanged(demo):
    """A conversation continued after a speculative turn answers as one that never speculated."""
    msgs = [{"role": "user", "content": f"Here is my code:\n{CODE}\nRepeat it."}]
    answers = {}
    for spec in ("off", "prompt"):
        demo.reset()
        first = demo.complete(msgs, max_tokens=60, speculative=spec)
        convo = msgs + [{"role": "assistant", "content": first.response},
                        {"role": "user", "content": "Again, exactly."}]
        answers[spec] = (first.response, demo.complete(convo, max_tokens=60, speculative=spec).response)
    assert answers["off"] == answers["prompt"]


def test_tool_call_and_eos_inside_accepted_runs(demo):
    """A call the model repeats from the conversation (drafted from it) parses the same, and the
    eos that ends it comes at the same place."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
            {"role": "tool", "content": "sunny"},
            {"role": "user", "content": "And in Paris again?"}]
    out = {}
    for spec in ("off", "prompt"):
        demo.reset()
        c = demo.complete(msgs, tools=tools, max_tokens=60, speculative=spec)
        out[spec] = (c.response, c.function_calls, c.finish_reason, c.decode_tokens)
    assert out["off"] == out["prompt"]


def test_draft_model(demo, tmp_path):
    """A draft model (here the demo model drafting for itself: every greedy draft is right) gives
    the same answer with most tokens taken from drafts; one with another vocabulary is refused."""
    prompt = demo.tokenizer.encode("Tell me about the weather in Paris.")
    demo.session.reset()
    want, _ = _run(demo, prompt, speculative="off", max_tokens=40)
    demo.session.reset()
    got, f = _run(demo, prompt, speculative=str(demo.path), max_tokens=40)
    assert got == want
    assert f.accepted_tokens >= 0.8 * f.drafted_tokens > 0
    other = tmp_path / "other"
    hf, _ = make_hf_model(tmp_path / "hf", "dense")
    text = (demo.path / "tokenizer.json").read_text()
    (hf / "tokenizer.json").write_text(text.replace('"<|im_end|>"', '"<|im_stop|>"'))
    convert(hf, other, quant="f32", chat=False)
    with pytest.raises(ValueError, match="tokenizer differs"):
        _run(demo, prompt, speculative=str(other), max_tokens=4)


def test_speculation_options_are_checked(tmp_path):
    assert SamplingOptions().speculative == "prompt"
    with pytest.raises(OptionError, match="speculative"):
        SamplingOptions(speculative="fast")
    with pytest.raises(OptionError, match="no config.json"):
        SamplingOptions(speculative=str(tmp_path))
    with pytest.raises(OptionError, match="draft_tokens"):
        SamplingOptions(draft_tokens=0)
    with pytest.raises(OptionError, match="draft_tokens"):
        SamplingOptions(draft_tokens=33)


def test_api_handle_speculates(demo):
    """`cactus_complete`-level: the option travels through the handle's options."""
    assert isinstance(demo, Model)
    msgs = [{"role": "user", "content": f"{CODE}\nRepeat the code."}]
    demo.reset()
    a = demo.complete(msgs, options=json.dumps({"speculative": "off", "max_tokens": 40}))
    demo.reset()
    b = demo.complete(msgs, options=json.dumps({"speculative": "prompt", "draft_tokens": 4, "max_tokens": 40}))
    assert a.response == b.response
