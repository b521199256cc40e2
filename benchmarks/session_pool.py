"""Two agents taking turns on one model: time to first token per turn with one conversation cache
(before: each turn re-prefills the other agent's displaced conversation) and with the session pool
(after: each turn prefills only its new tokens).

    python benchmarks/session_pool.py [--models demo,lfm2-1.2b] [--prompt 1800] [--turns 3]

Each conversation opens with a PROMPT-token prompt, then each turn adds 60 user tokens after the
previous answer (8 greedy tokens). Token ids are random (the synthetic shape has no tokenizer);
the timed path is the server's: `Session.prefill` (pool lookup, restore, prefill) + the first
argmax, as `generate()` runs it. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cactus.engine import load
from cactus.generate import Session

NEW, ANSWER = 60, 8  # user tokens per turn, answer tokens per turn


def model_path(name: str):
    if name == "demo":
        from cactus.demo import demo_path

        return demo_path()
    from cactus import synthetic

    return synthetic.ensure(name, "int4")


def conversation_turns(session: Session, prompts: dict, turns: int, rng) -> list[tuple[str, int, int, float]]:
    """Alternate the conversations for `turns` rounds -> (name, prompt tokens, tokens run, ttft s) per turn."""
    rows = []
    for _ in range(turns):
        for name, ids in prompts.items():
            t = time.perf_counter()
            logits, n_run = session.prefill(ids)
            token = int(np.argmax(logits))
            ttft = time.perf_counter() - t
            rows.append((name, len(ids), n_run, ttft))
            answer = [token]
            for _ in range(ANSWER - 1):  # the answer is decoded; it joins the conversation
                answer.append(int(np.argmax(session.step(answer[-1]))))
            ids += answer + list(rng.integers(100, 8000, NEW))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="demo,lfm2-1.2b")
    p.add_argument("--prompt", type=int, default=1800)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--cache-mb", type=float, default=512)
    args = p.parse_args()
    for name in args.models.split(","):
        engine = load(model_path(name), max_context=args.prompt + args.turns * (NEW + ANSWER) + 64)
        results = {}
        for label, pool in (("before (one cache)", 0), (f"after (pool {args.cache_mb:g} MB)", args.cache_mb)):
            rng = np.random.default_rng(0)
            prompts = {k: list(rng.integers(100, 8000, args.prompt)) for k in "AB"}
            engine.forward([5])  # warm the kernels
            engine.reset()
            results[label] = conversation_turns(Session(engine, pool_bytes=int(pool * 2**20)), prompts,
                                                args.turns, rng)
        print(f"\n{name} {engine.quant} ({engine.config.num_hidden_layers} layers), {args.prompt}-token prompts, "
              f"+{NEW} tokens a turn\n")
        labels = list(results)
        print("| turn | conv | prompt tokens | " + " | ".join(f"{lb}: prefilled, TTFT ms" for lb in labels) + " |")
        print("|---|---|---|" + "---|" * len(labels))
        for i, row in enumerate(results[labels[0]]):
            cells = " | ".join(f"{results[lb][i][2]}, {results[lb][i][3] * 1e3:.0f}" for lb in labels)
            print(f"| {i + 1} | {row[0]} | {row[1]} | {cells} |")
        for lb in labels:
            later = [r[3] for r in results[lb][2:]]
            print(f"\n{lb}: mean TTFT after the first round {np.mean(later) * 1e3:.0f} ms", end="")
        print()


if __name__ == "__main__":
    main()
