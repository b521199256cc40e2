"""The generation stream (cactus.generate): text gate, stop strings, tool calls, eos, handoff, and the
session's cache reuse (against a fresh prefill on a real tiny model)."""

import numpy as np
import pytest
from chat_helpers import ScriptedModel, convert_chat_model, write_tokenizer

from cactus.generate import ContextFullError, Finish, Session, Token, collect, generate
from cactus.sampling import SamplingOptions
from cactus.tokenizer import Tokenizer
from cactus.tools import OutputParser

S, E = "<|tool_call_start|>", "<|tool_call_end|>"

# (chunks fed one by one, stop strings, released text per chunk + the close() text, calls)
GATE_CASES = [
    ("plain", ["Hel", "lo"], (), ["Hel", "lo", ""], []),
    ("stop inside a chunk", ["Hello END more"], ("END",), ["Hello ", ""], []),
    ("stop across chunks is held", ["Hi E", "N", "D tail"], ("END",), ["Hi ", "", "", ""], []),
    ("false alarm released", ["Hi E", "N", "x"], ("END",), ["Hi ", "", "ENx", ""], []),
    ("partial stop released at close", ["Hi EN"], ("END",), ["Hi ", "EN"], []),
    ("earliest of two stops", ["a##b\n\nc"], ("\n\n", "##"), ["a", ""], []),
    ("tool call removed", [f"Sure.{S}[f(a=1)]{E} ok"], (), ["Sure. ok", ""],
     [{"name": "f", "arguments": {"a": 1}}]),
    ("tool marker split", ["x<|tool_", "call_start|>[g()]", f"{E}"], (), ["x", "", "", ""],
     [{"name": "g", "arguments": {}}]),
    ("malformed call becomes text", [f"{S}[f(1)]{E}!"], (), [f"{S}[f(1)]{E}!", ""], []),
    ("stop string inside call arguments ignored", [f"{S}[f(s='END')]{E}END"], ("END",), ["", ""],
     [{"name": "f", "arguments": {"s": "END"}}]),
    ("unterminated complete call at close", [f"a{S}[f(b=2)]"], (), ["a", ""],
     [{"name": "f", "arguments": {"b": 2}}]),
    ("unterminated cut call at close", [f"a{S}[f(b="], (), ["a", f"{S}[f(b="], []),
    ("angle bracket that is not a marker", ["a <b> c"], (), ["a <b> c", ""], []),
    ("held '<' released when next char differs", ["a<", "x"], (), ["a", "<x", ""], []),
]


@pytest.mark.parametrize("chunks, stop, released, calls", [c[1:] for c in GATE_CASES],
                         ids=[c[0] for c in GATE_CASES])
def test_streamed_output_releases_what_is_decided(chunks, stop, released, calls):
    parser = OutputParser(stop=stop)
    assert [parser.feed(c)[0] for c in chunks] + [parser.close()[0]] == released and parser.calls == calls


# ----------------------------------------------------------------------------- generate on a scripted model

@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer(tok_dir)


def run(tok, tok_dir, text, prompt=(1, 6, 20, 21), confidence=0.9, **options):
    model = ScriptedModel(tok_dir, tok.encode(text), confidence=confidence, **options.pop("model", {}))
    events = list(generate(Session(model), tok, list(prompt), SamplingOptions(**options)))
    return events, model


def test_eos_ends_and_text_is_the_script(tok, tok_dir):
    events, _ = run(tok, tok_dir, "Hello, world! 日本 🎉")
    tokens, finish = events[:-1], events[-1]
    assert isinstance(finish, Finish) and finish.reason == "eos"
    assert "".join(t.text for t in tokens) == "Hello, world! 日本 🎉"


def test_eos_token_is_an_event_without_text(tok, tok_dir):
    events, _ = run(tok, tok_dir, "Hi")
    assert (events[-2].id, events[-2].text) == (7, "")


def test_pieces_are_whole_characters(tok, tok_dir):
    events, _ = run(tok, tok_dir, "🎉🚀 日本語 ꙮ")
    pieces = [e.text for e in events if isinstance(e, Token)]
    assert all("\ufffd" not in p for p in pieces) and len([p for p in pieces if p]) > 1


def test_im_end_in_text_ends_the_turn(tok, tok_dir):
    events, _ = run(tok, tok_dir, "Done<|im_end|>after")
    assert collect(events).text == "Done"


def test_stop_string_not_leaked(tok, tok_dir):
    events, _ = run(tok, tok_dir, "The answer is 42.\nUser: more", stop=["\nUser:"])
    out = collect(events)
    assert (out.text, out.finish.reason) == ("The answer is 42.", "stop")


def test_stop_string_stops_generation(tok, tok_dir):
    events, _model = run(tok, tok_dir, "abc STOP " + "x " * 50, stop="STOP")
    assert collect(events).finish.decode_tokens < len(tok.encode("abc STOP")) + 1


def test_max_tokens(tok, tok_dir):
    out = collect(run(tok, tok_dir, "a b c d e f g h", max_tokens=3)[0])
    assert (out.finish.reason, out.finish.decode_tokens, len(out.token_ids)) == ("length", 3, 3)


def test_tool_call_lifted_out_of_stream(tok, tok_dir):
    out = collect(run(tok, tok_dir, f"Checking.{S}[get_weather(city='Paris')]{E}")[0])
    assert out.text == "Checking."
    assert out.finish.function_calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]


def test_malformed_tool_call_stays_text(tok, tok_dir):
    out = collect(run(tok, tok_dir, f"{S}[get_weather('Paris')]{E}")[0])
    assert (out.text, out.finish.function_calls) == (f"{S}[get_weather('Paris')]{E}", [])


def test_confidence_is_mean_token_probability(tok, tok_dir):
    out = collect(run(tok, tok_dir, "Hello there", confidence=0.8)[0])
    assert out.finish.confidence == pytest.approx(0.8, abs=1e-4) and not out.finish.cloud_handoff


def test_handoff_stops_early(tok, tok_dir):
    # window 16, threshold 0.7, p = 0.1 per token: settled low once n - 0.1 n > 16 * 0.3, i.e. n = 6
    out = collect(run(tok, tok_dir, "word " * 40, confidence=0.1, confidence_threshold=0.7)[0])
    f = out.finish
    assert (f.reason, f.cloud_handoff, f.decode_tokens) == ("handoff", True, 6)
    assert f.confidence == pytest.approx(0.1, abs=1e-4)


def test_no_handoff_when_confident(tok, tok_dir):
    out = collect(run(tok, tok_dir, "word " * 40, confidence=0.95, confidence_threshold=0.7)[0])
    assert (out.finish.reason, out.finish.cloud_handoff) == ("eos", False)


def test_low_confidence_without_threshold_runs_on(tok, tok_dir):
    out = collect(run(tok, tok_dir, "word " * 10, confidence=0.1)[0])
    assert (out.finish.reason, out.finish.cloud_handoff) == ("eos", False)


def test_handoff_keeps_released_text(tok, tok_dir):
    out = collect(run(tok, tok_dir, "abc " * 20, confidence=0.1, confidence_threshold=0.7)[0])
    assert out.text == tok.decode(out.token_ids)


def test_context_full_ends_generation(tok, tok_dir):
    out = collect(run(tok, tok_dir, "word " * 40, model={"max_context": 10})[0])
    assert (out.finish.reason, out.finish.decode_tokens) == ("length", 10 - 4 + 1)


def test_prompt_longer_than_context_raises(tok, tok_dir):
    with pytest.raises(ContextFullError, match="context window is 3"):
        run(tok, tok_dir, "x", model={"max_context": 3})


def test_same_seed_same_stream(tok, tok_dir):
    a = collect(run(tok, tok_dir, "a b c d e f", confidence=0.3, temperature=1.0, seed=5)[0])
    b = collect(run(tok, tok_dir, "a b c d e f", confidence=0.3, temperature=1.0, seed=5)[0])
    assert a.token_ids == b.token_ids


def test_consumer_time_not_counted_as_decode(tok, tok_dir):
    import time

    model = ScriptedModel(tok_dir, tok.encode("a b c"))
    events = []
    for e in generate(Session(model), tok, [1, 6], SamplingOptions()):
        events.append(e)
        time.sleep(0.05)
    assert events[-1].decode_s < 0.05 * (len(events) - 2)


# ----------------------------------------------------------------------------- session reuse on a real model

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from cactus.engine import load

    path, _ = convert_chat_model(tmp_path_factory.mktemp("m"))
    return load(path)


def fresh_logits(engine, ids):
    engine.reset()
    return engine.forward(ids, last_only=True)[-1]


P1 = [1, 6, 40, 41, 42, 43, 44, 7, 6, 50]


def test_session_extension_prefills_only_new(engine):
    s = Session(engine)
    s.prefill(P1)
    logits, n = s.prefill(P1 + [60, 61, 62])
    assert n == 3 and np.allclose(logits, fresh_logits(engine, P1 + [60, 61, 62]), atol=1e-4)


def test_session_extension_after_generated_tokens(engine):
    s = Session(engine)
    s.prefill(P1)
    s.step(70)
    s.step(71)
    logits, n = s.prefill(P1 + [70, 71, 7, 6, 80])
    assert n == 3 and np.allclose(logits, fresh_logits(engine, P1 + [70, 71, 7, 6, 80]), atol=1e-4)


def test_session_divergence_after_boundary_restores_snapshot(engine):
    s = Session(engine)
    s.prefill(P1)
    s.step(70)
    s.step(71)
    logits, n = s.prefill(P1 + [72, 7, 6, 80])
    assert n == 4 and np.allclose(logits, fresh_logits(engine, P1 + [72, 7, 6, 80]), atol=1e-4)


def test_session_divergence_before_boundary_resets(engine):
    s = Session(engine)
    s.prefill(P1)
    other = P1[:4] + [90, 91]
    logits, n = s.prefill(other)
    assert n == len(other) and np.allclose(logits, fresh_logits(engine, other), atol=1e-4)


def test_session_same_prompt_again_runs_nothing(engine):
    s = Session(engine)
    first, _ = s.prefill(P1)
    first = first.copy()
    s.step(70)
    logits, n = s.prefill(P1)
    assert n == 0 and np.array_equal(logits, first) and engine.n_past == len(P1)


def test_session_prefix_of_boundary_resets(engine):
    s = Session(engine)
    s.prefill(P1)
    logits, n = s.prefill(P1[:5])
    assert n == 5 and np.allclose(logits, fresh_logits(engine, P1[:5]), atol=1e-4)


def test_session_reset_after_failed_forward(engine):
    s = Session(engine)
    s.prefill(P1)
    with pytest.raises(ValueError):
        s.prefill(P1 + [10**6])  # an id out of the vocabulary
    assert s.ids == [] and engine.n_past == 0
