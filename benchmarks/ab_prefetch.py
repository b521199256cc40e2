"""Decode's prefetch distances compared on real decode, at both of this machine's bandwidth levels.

    python benchmarks/ab_prefetch.py MODEL_DIR SECONDS L2:L1 [L2:L1 ...]

e.g. `... ~/.cache/cactus/synthetic/lfm2-8b-a1b-int4 480 8192:0 4096:1024`. Rounds of 8 greedy
tokens cycle through the settings (ops.set_prefetch), each between two memory bandwidth readings;
rounds whose two readings differ by 4 GB/s or more are dropped. The median tok/s of each setting
is printed per bandwidth band. Because the settings alternate every fraction of a second, each band
compares them under the same conditions; the level switches that spoil run-to-run comparisons here
then only decide how many rounds land in each band.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from cactus import engine, ops
from cactus.bench import read_bandwidth

BANDS = ((15, 25), (25, 40), (40, 48), (48, 80))


def main() -> None:
    model_dir, seconds = sys.argv[1], float(sys.argv[2])
    settings = [tuple(int(v) for v in s.split(":")) for s in sys.argv[3:]]
    model = engine.load(model_dir, max_context=4096)
    ops.read_memory(model.weights.file._mmap, 64)  # the page cache holds the file
    probe = np.ones(256 << 20, np.uint8)

    def bandwidth() -> float:
        return read_bandwidth(probe, 2)

    before = ops.set_prefetch(*settings[0])
    tok = int(model.forward(np.arange(8), last_only=True).argmax())
    rounds: list[tuple[int, float, float]] = []  # setting, bandwidth, tok/s
    end = time.time() + seconds
    try:
        while time.time() < end:
            for i, s in enumerate(settings):
                ops.set_prefetch(*s)
                if model.n_past > 4000:
                    model.reset()
                b0 = bandwidth()
                t = time.perf_counter()
                for _ in range(8):
                    tok = int(model.forward([tok], last_only=True).argmax())
                dt = time.perf_counter() - t
                b1 = bandwidth()
                if abs(b0 - b1) < 4:
                    rounds.append((i, (b0 + b1) / 2, 8 / dt))
    finally:
        ops.set_prefetch(*before)
    for lo, hi in BANDS:
        cells = []
        for i, (l2, l1) in enumerate(settings):
            sel = [r[2] for r in rounds if r[0] == i and lo <= r[1] < hi]
            cells.append(f"{l2}:{l1} {np.median(sel):6.2f} (n={len(sel)})" if sel else f"{l2}:{l1}      - (n=0)")
        print(f"{lo}-{hi} GB/s   " + "   ".join(cells))


if __name__ == "__main__":
    main()
