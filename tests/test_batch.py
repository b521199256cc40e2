"""Batched decoding (batch.py): several sequences decoded together give each exactly the ids it
gets alone (dense, MoE, the demo model; prompts of different lengths prefilled while others
decode), through `Model.complete_batch` and the server's parallel slots."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import make_hf_model

from cactus.api import Model
from cactus.batch import Batcher
from cactus.convert import convert
from cactus.engine import load
from cactus.generate import Session, collect, generate
from cactus.sampling import SamplingOptions
from cactus.tokenizer import Tokenizer


@pytest.fixture(scope="module", params=[("dense", "int4"), ("moe", "int8"), ("moe", "f32")], ids=lambda p: "-".join(p))
def engine(request, tmp_path_factory):
    kind, quant = request.param
    root = tmp_path_factory.mktemp(f"batch-{kind}-{quant}")
    hf, _ = make_hf_model(root / "hf", kind)
    return load(convert(hf, root / quant, quant=quant, chat=False), max_context=256)


class _Tok:
    """The least a generate() loop needs of a tokenizer, for checkpoints without one."""
    eos_token_id = None
    special_tokens: dict = {}

    def token_to_id(self, _):
        return None

    def stream(self):
        class S:
            def push(self, _):
                return "x"

            def flush(self):
                return ""
        return S()

    def decode(self, ids):
        return ""


def _answer(session, prompt, n, tok):
    opts = SamplingOptions(max_tokens=n, speculative="off")
    return collect(generate(session, tok, prompt, opts, stop_ids=())).token_ids


def test_slots_decode_as_alone(engine):
    """Three prompts of different lengths, answered at once on slots: each gets the ids it gets
    alone, and the batcher ran them together (fewer rounds than tokens)."""
    tok = _Tok()
    V = engine.config.vocab_size
    prompts = [list(np.arange(n) * (7 + n) % V) for n in (3, 40, 17)]
    lengths = (30, 12, 25)
    alone = [_answer(Session(engine), p, n, tok) for p, n in zip(prompts, lengths, strict=True)]
    batcher = Batcher(engine)
    sessions = [Session(batcher.slot()) for _ in prompts]
    got: list = [None] * 3

    def run(i):
        got[i] = _answer(sessions[i], prompts[i], lengths[i], tok)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone
    assert batcher.tokens_run == sum(lengths) - 3  # every decode step went through the rounds
    assert batcher.steps_run < batcher.tokens_run


def test_a_long_prompt_does_not_stall_a_running_stream(engine, monkeypatch):
    """While one slot prefills a long prompt (8 chunks), the slot already decoding gets a step
    between every two of its chunks, and both answers are the ones they get alone."""
    from cactus import batch
    from cactus import engine as engine_module

    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 8)
    monkeypatch.setattr(batch, "PREFILL_CHUNK", 8)
    tok, V = _Tok(), engine.config.vocab_size
    short, long = [3, 1, 4], list(np.arange(64) * 11 % V)
    alone = [_answer(Session(engine), short, 120, tok), _answer(Session(engine), long, 5, tok)]
    events: list[str] = []
    b = Batcher(engine)
    a_slot, b_slot = b.slot(), b.slot()
    real_round, real_forward = Batcher._round, engine_module.Engine.forward

    def logged_round(self, steps):
        events.append("A" if a_slot in steps else "-")
        real_round(self, steps)

    def logged_forward(self, ids, last_only=False):
        if self is b_slot:
            events.append("chunk")
        return real_forward(self, ids, last_only)

    monkeypatch.setattr(Batcher, "_round", logged_round)
    monkeypatch.setattr(engine_module.Engine, "forward", logged_forward)
    got: list = [None, None]

    def run(i, slot, prompt, n):
        got[i] = _answer(Session(slot), prompt, n, tok)

    ta = threading.Thread(target=run, args=(0, a_slot, short, 120))
    ta.start()
    while b.tokens_run < 3:  # A is decoding
        threading.Event().wait(0.001)
    tb = threading.Thread(target=run, args=(1, b_slot, long, 5))
    tb.start()
    tb.join()
    ta.join()
    assert got == alone
    chunks = [i for i, e in enumerate(events) if e == "chunk"]
    assert len(chunks) == 8
    for i, j in zip(chunks, chunks[1:], strict=False):  # A stepped between any two chunks of B's prompt
        assert "A" in events[i + 1:j], events


def test_complete_batch_equals_complete(demo):
    convs = [[{"role": "user", "content": q}] for q in
             ("What is the weather in Paris?", "Write a python function to add two numbers.", "Tell me a joke.",
              "What is 2+2?")]
    alone = []
    for c in convs:
        demo.reset()
        alone.append(demo.complete(c, max_tokens=40).response)
    for spec in ("off", "prompt"):
        got = demo.complete_batch(convs, max_tokens=40, speculative=spec)
        assert [g.response for g in got] == alone
    assert demo.slots(4)[0].session.ids  # the slots keep their conversations for next time
    with pytest.raises(ValueError, match="non-empty list"):
        demo.complete_batch([])


def test_complete_batch_reports_a_bad_conversation(demo):
    with pytest.raises(ValueError):
        demo.complete_batch([[{"role": "user", "content": "hi"}], [{"role": "nobody", "content": "x"}]],
                            max_tokens=4)


def test_server_parallel_slots(demo, start):
    """Two clients at once on `--parallel 2`: each answer is the one served alone; a client that
    hangs up mid-stream frees its slot for the next."""
    client, _ = start(demo, parallel=2)
    qs = ["Tell me a joke.", "What is the capital of France?"]

    def ask(q):
        r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": q}], max_tokens=40,
                                           temperature=0)
        return r.choices[0].message.content

    alone = [ask(q) for q in qs]
    got: list = [None, None]
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, ask(qs[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone
    for _ in range(3):  # abandoned streams: their slots come back
        stream = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": qs[0]}],
                                                max_tokens=200, stream=True)
        next(iter(stream))
        stream.close()
    assert ask(qs[1]) == alone[1]


def test_slots_need_their_own_tokenizer_files(demo):
    slot = demo.slots(1)[0]
    assert isinstance(slot, Model) and isinstance(slot.tokenizer, Tokenizer)
    assert slot.engine is not demo.engine and slot.engine.net is demo.engine.net  # the weights are shared


def test_bench_batch_verify_and_speculative(tmp_path):
    """`cactus bench --batch B --verify K --speculative prompt`: the aggregate of B sequences as
    decode_tps beside the single stream's, per-sequence tok/s, memory per extra sequence,
    verify_cost, and the same tokens decoded speculating (its speed-up and drafts taken)."""
    import json
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cactus.cli", "bench", "--synthetic", "tiny", "--quant", "int8",
                        "--prompt", "16", "--gen", "8", "--runs", "1", "--batch", "3", "--verify", "4",
                        "--speculative", "prompt", "--draft-tokens", "4", "--json"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, CACTUS_HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["batch"] == 3 and res["decode_tps"] == res["decode_tps_all"][0]
    assert res["decode_tps_per_sequence"] == pytest.approx(res["decode_tps"] / 3)
    assert res["decode_tps_batch1"] > 0 and res["batch_speedup"] > 0
    assert res["verify_tokens"] == 4 and res["verify_cost"] > 0
    assert res["anon_mb_per_extra_sequence"] is None or res["anon_mb_per_extra_sequence"] >= 0
    assert res["speculative"] == "prompt" and res["draft_tokens"] == 4 and res["speculative_same_tokens"] is True
    assert res["speculative_speedup"] > 0 and 0 <= res["speculative_tokens_from_drafts"] <= 1
    assert res["speculative_acceptance"] is None or 0 <= res["speculative_acceptance"] <= 1
