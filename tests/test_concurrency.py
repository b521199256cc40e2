"""One handle shared by threads: calls are serialized (every answer is the one it gets alone),
`cactus_stop` ends a generation from another thread, a nested stream is refused at once, and two
handles on one model directory are independent."""

from __future__ import annotations

import json
import threading

import pytest

from cactus import Model, cactus_complete, cactus_destroy, cactus_init, cactus_stop
from cactus.demo import demo_path

PROMPTS = [[{"role": "user", "content": text}] for text in (
    "Write a Python function to reverse a string", "Write a function that checks if a number is prime",
    "What is the weather in Paris?", "Write a function to sum a list", "Hello")]


def alone(handle, messages, max_tokens=24) -> str:
    """The answer with a fresh conversation cache, as a sequential caller gets it."""
    handle.reset()
    return handle.complete(messages, max_tokens=max_tokens).response


@pytest.fixture(scope="module")
def handle():
    h = cactus_init(demo_path())
    yield h
    cactus_destroy(h)


def test_threads_sharing_a_handle_each_get_their_own_answer(handle):
    expected = [alone(handle, m) for m in PROMPTS]
    got: dict[int, dict] = {}

    def worker(i: int) -> None:
        got[i] = json.loads(cactus_complete(handle, PROMPTS[i % len(PROMPTS)], options={"max_tokens": 24}))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(got) == list(range(10))
    for i, r in got.items():
        assert r["success"], r["error"]
        assert r["response"] == expected[i % len(PROMPTS)], i


def test_stop_from_another_thread_ends_the_generation(handle):
    started = threading.Event()

    def on_token(token, token_id, user_data):
        started.set()

    def stopper():
        started.wait(60)
        cactus_stop(handle)

    t = threading.Thread(target=stopper)
    t.start()
    r = json.loads(cactus_complete(handle, PROMPTS[0], options={"max_tokens": 400, "stop": ["@@never@@"]},
                                   callback=on_token))
    t.join(10)
    assert r["success"] and r["finish_reason"] == "cancelled"
    assert r["decode_tokens"] < 400
    # the handle works normally afterwards; a stale stop does not leak into the next call
    r = json.loads(cactus_complete(handle, PROMPTS[4], options={"max_tokens": 4}))
    assert r["success"] and r["finish_reason"] != "cancelled"


def test_stop_from_the_callback(handle):
    def on_token(token, token_id, user_data):
        cactus_stop(handle)

    r = json.loads(cactus_complete(handle, PROMPTS[0], options={"max_tokens": 50}, callback=on_token))
    assert r["finish_reason"] == "cancelled" and r["decode_tokens"] <= 2


def test_a_nested_stream_on_the_same_thread_is_refused_at_once(handle):
    outer = handle.stream(PROMPTS[0], max_tokens=8)
    next(outer)
    r = json.loads(cactus_complete(handle, PROMPTS[1], options={"max_tokens": 4}))
    assert not r["success"] and "already generating" in r["error"]
    outer.close()  # closing the stream frees the handle
    assert json.loads(cactus_complete(handle, PROMPTS[1], options={"max_tokens": 4}))["success"]


def test_two_handles_on_one_directory_are_independent(handle):
    other = Model(demo_path())
    try:
        a, b = alone(handle, PROMPTS[0]), alone(other, PROMPTS[0])
        assert a == b
        results = {}
        ts = [threading.Thread(target=lambda k=k, h=h: results.__setitem__(k, alone(h, PROMPTS[k])))
              for k, h in ((1, handle), (2, other))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert results[1] == alone(handle, PROMPTS[1]) and results[2] == alone(other, PROMPTS[2])
    finally:
        other.close()


def test_close_waits_for_the_running_generation_and_later_calls_fail(tmp_path):
    h = cactus_init(demo_path())
    started, done = threading.Event(), {}

    def run():
        done["r"] = json.loads(cactus_complete(h, PROMPTS[0], options={"max_tokens": 300, "stop": ["@@"]},
                                               callback=lambda *a: started.set()))

    t = threading.Thread(target=run)
    t.start()
    started.wait(60)
    cactus_destroy(h)  # stops the generation, waits for it, then frees the handle
    t.join(30)
    assert done["r"]["success"] and done["r"]["finish_reason"] == "cancelled"
    r = json.loads(cactus_complete(h, PROMPTS[0]))
    assert not r["success"] and "destroyed" in r["error"]
