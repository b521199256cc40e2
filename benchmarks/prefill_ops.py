"""Prefill speed and where it goes: tok/s of a few prompts, then seconds per kernel op for one more.

    python benchmarks/prefill_ops.py MODEL_DIR [PROMPT=512] [THREADS] [RUNS=2]

To compare two builds on a noisy machine, run this alternately with PYTHONPATH pointing at each
build's src/ (a few times each), rather than one build's runs and then the other's.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import numpy as np

from cactus import engine, ops


def main() -> None:
    model_dir = sys.argv[1]
    prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    if len(sys.argv) > 3:
        ops.set_threads(int(sys.argv[3]))
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    model = engine.load(model_dir, max_context=prompt + 8)
    ops.read_memory(model.weights.file._mmap, 64)  # the page cache holds the file
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, prompt)
    model.forward(ids[:8], last_only=True)  # warm-up: threads, scratch
    tps = []
    for _ in range(runs):
        model.reset()
        t = time.perf_counter()
        model.forward(ids, last_only=True)
        tps.append(prompt / (time.perf_counter() - t))
    print(f"{ops.isa()}, {ops.threads()} threads, {prompt} tokens: prefill "
          + ", ".join(f"{x:.1f}" for x in tps) + " tok/s")
    model.reset()
    prof = cProfile.Profile()
    prof.enable()
    model.forward(ids, last_only=True)
    prof.disable()
    rows = [(v[2], v[1], name) for (_, _, name), v in pstats.Stats(prof).stats.items() if "_kernels" in name]
    for sec, calls, name in sorted(rows, reverse=True):
        if sec >= 0.01:
            print(f"  {name.split('.')[-1].rstrip('>'):12s} {calls:5d} calls {sec:7.3f} s")


if __name__ == "__main__":
    main()
