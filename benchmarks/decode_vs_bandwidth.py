"""Decode speed read against the memory bandwidth measured right next to it, many short rounds.

    python benchmarks/decode_vs_bandwidth.py MODEL_DIR [ROUNDS] [TOKENS]

Each round reads a 512 MiB anonymous buffer with every thread (best of 3), decodes TOKENS tokens
greedily, reads again, and prints tok/s, effective weight GB/s and its ratio to the mean of the
two readings. Rounds of ~0.5 s catch both of this machine's bandwidth levels in one run, which a
`cactus bench` run (one pair of readings per 64-token run) often does not.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from cactus import engine, ops
from cactus.bench import read_bandwidth, weight_bytes_per_token


def main() -> None:
    model_dir = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    ntok = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    model = engine.load(model_dir, max_context=rounds * ntok + 16)
    ops.read_memory(model.weights.file._mmap, 64)  # the page cache holds the file
    per_token = weight_bytes_per_token(model)["total"]
    probe = np.ones(512 << 20, np.uint8)

    def read_gbs() -> float:
        return read_bandwidth(probe, 3)

    tok = int(model.forward(np.arange(8), last_only=True).argmax())
    for _ in range(rounds):
        b0 = read_gbs()
        t = time.perf_counter()
        for _ in range(ntok):
            tok = int(model.forward([tok], last_only=True).argmax())
        dt = time.perf_counter() - t
        b1 = read_gbs()
        eff = per_token * ntok / dt / 1e9
        print(f"bandwidth {b0:5.1f} / {b1:5.1f} GB/s   decode {ntok / dt:6.2f} tok/s   "
              f"weights {eff:5.1f} GB/s = {100 * eff / ((b0 + b1) / 2):3.0f}%", flush=True)


if __name__ == "__main__":
    main()
