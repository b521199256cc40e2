"""How close one-token matrix-vector products come to the machine's read bandwidth, per weight class.

    python benchmarks/decode_stream.py MODEL_DIR [--threads 2 1] [--rounds 8]

For each class of weight matrix of an LFM2 / LFM2-MoE model (the LM head, the conv in/out
projections, MoE expert w1/w2, every one a separate `ops.linear` call as in decode), streams the
whole class once with a fresh token and reads 256 MiB of the weight file with every thread just
before and just after; prints the median ratio "GB/s of weights / GB/s read" over the rounds, then
the median absolute figures. This machine's bandwidth moves between levels within seconds, so
only the ratio of neighbouring measurements means anything. Classes are chosen to exceed the
32 MiB L3 so every matrix comes from DRAM.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cactus import engine, ops
from cactus.models.lfm2 import MoE, ShortConv


def classes(model) -> dict[str, list]:
    blocks = model.net.blocks
    moe = [b.ffn for b in blocks if isinstance(b.ffn, MoE)]
    conv = [b.op for b in blocks if isinstance(b.op, ShortConv)]
    out = {"lm_head": [model.net.lm_head]}
    if conv:
        out["conv.in_proj"] = [c.in_proj for c in conv]
        out["conv.out_proj"] = [c.out_proj for c in conv]
    if moe:
        e = moe[0].w1.shape[0]
        out["expert.w1"] = [f.w1[i] for f in moe for i in range(0, e, 2)]
        out["expert.w2"] = [f.w2[i] for f in moe for i in range(0, e, 2)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--rounds", type=int, default=8)
    a = p.parse_args()
    model = engine.load(a.model_dir, max_context=64)
    ops.read_memory(model.weights.file._mmap, 64)  # the page cache holds the file
    probe = np.frombuffer(model.weights.file._mmap, np.uint8)[: 256 << 20]
    rng = np.random.default_rng(0)

    def read_gbs() -> float:
        t = time.perf_counter()
        ops.read_memory(probe)
        return probe.nbytes / (time.perf_counter() - t) / 1e9

    sets = classes(model)
    for th in a.threads:
        ops.set_threads(th)
        ratio = {k: [] for k in sets}
        gbs = {k: [] for k in sets}
        reads = []
        for _ in range(a.rounds):
            for name, ws in sets.items():
                xs = {w.shape[-1]: rng.standard_normal((1, w.shape[-1])).astype(np.float32) for w in ws}
                b0 = read_gbs()
                t = time.perf_counter()
                for w in ws:
                    ops.linear(xs[w.shape[-1]], w)
                g = sum(w.nbytes for w in ws) / (time.perf_counter() - t) / 1e9
                b1 = read_gbs()
                ratio[name].append(g / ((b0 + b1) / 2))
                gbs[name].append(g)
                reads += [b0, b1]
        print(f"{th} thread(s), {ops.isa()}: " + "  ".join(f"{k} {100 * np.median(v):.0f}%" for k, v in ratio.items()))
        print("   GB/s: " + "  ".join(f"{k} {np.median(v):.1f}" for k, v in gbs.items())
              + f"  read {np.median(reads):.1f}")


if __name__ == "__main__":
    main()
