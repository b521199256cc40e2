"""Where a decoded token's time goes: each kernel entry point timed, with the weight bytes it reads.

    python benchmarks/decode_ops.py MODEL_DIR [TOKENS] [ROUNDS] [PROMPT=8]

Each round reads a 512 MiB buffer (memory bandwidth, best of 3), decodes TOKENS tokens greedily
with every call into cactus._kernels timed, reads again, and prints: wall time per token, time
inside kernel calls, time inside the calls that read weights and the GB/s they stream, then one
line per kind of call (per token: calls, ms, GB/s of weights, microseconds per call). Wall time
minus time in calls is Python. The timing wrapper adds well under a microsecond per call. PROMPT
random tokens are prefilled first (the context decode attends over). Decode
runs op by op here (`net.fused = False`); normally a token is one call (ops.decode).
"""

from __future__ import annotations

import collections
import sys
import time

import numpy as np

from cactus import engine, ops
from cactus.bench import read_bandwidth
from cactus.models.lfm2 import MoE, ShortConv

WEIGHT_CALLS = ("linear", "swiglu", "moe")


def weight_handles(net) -> dict[int, float]:
    """id(kernel handle) -> weight bytes one decoded token reads through it."""
    out: dict[int, float] = {}

    def add(q, share: float = 1.0) -> None:
        out[id(ops._weight(q))] = q.nbytes * share

    for b in net.blocks:
        op = b.op
        conv = isinstance(op, ShortConv)
        for q in (op.in_proj, op.out_proj) if conv else (op.q_proj, op.k_proj, op.v_proj, op.out_proj):
            add(q)
        f = b.ffn
        if isinstance(f, MoE):
            add(f.gate)
            for q in (f.w1, f.w3, f.w2):
                add(q, f.top_k / f.w1.shape[0])  # top_k of E experts per token
        else:
            for q in (f.w1, f.w3, f.w2):
                add(q)
    add(net.lm_head)
    return out


def main() -> None:
    model_dir = sys.argv[1]
    ntok = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    prompt = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    model = engine.load(model_dir, max_context=prompt + rounds * ntok + 16)
    model.net.fused = False  # op by op, as the Python path runs them, so each op is timed on its own
    ops.read_memory(model.weights.file._mmap, 64)  # the page cache holds the file
    nbytes = weight_handles(model.net)
    lib = ops._lib()
    stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0, 0.0])

    class Timed:
        def __getattr__(self, name):
            fn = getattr(lib, name)
            if not callable(fn):
                return fn

            def call(*args):
                t = time.perf_counter_ns()
                r = fn(*args)
                dt = time.perf_counter_ns() - t
                # the weight calls (embed reads one row of the tied head: not counted)
                by = sum(nbytes.get(id(a), 0.0) for a in args) if name in WEIGHT_CALLS else 0.0
                key = f"{name} ({by / 1e6:.2f} MB)" if name == "linear" else name
                s = stats[key]
                s[0] += 1
                s[1] += dt
                s[2] += by
                return r
            return call

    timed = Timed()
    probe = np.ones(512 << 20, np.uint8)

    def bandwidth() -> float:
        return read_bandwidth(probe, 3)

    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, prompt)
    tok = int(model.forward(ids, last_only=True).argmax())
    for _ in range(rounds):
        stats.clear()
        b0 = bandwidth()
        ops._lib = lambda: timed
        t = time.perf_counter()
        try:
            for _ in range(ntok):
                tok = int(model.forward([tok], last_only=True).argmax())
        finally:
            ops._lib = lambda: lib
        dt = time.perf_counter() - t
        b1 = bandwidth()
        inside = sum(s[1] for s in stats.values()) / 1e9
        wtime = sum(s[1] for s in stats.values() if s[2]) / 1e9
        wbytes = sum(s[2] for s in stats.values())
        print(f"bandwidth {b0:.0f} / {b1:.0f} GB/s  {ntok / dt:.1f} tok/s  wall {dt / ntok * 1e3:.2f} ms/token  "
              f"in calls {inside / ntok * 1e3:.2f}  weight calls {wtime / ntok * 1e3:.2f} ms at "
              f"{wbytes / wtime / 1e9:.1f} GB/s  (whole token {wbytes / dt / 1e9:.1f} GB/s)")
        for key, (n, ns, by) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
            print(f"    {key:24s} {n / ntok:5.1f} calls  {ns / ntok / 1e6:6.3f} ms  "
                  f"{by / ns if by else 0:5.1f} GB/s  {ns / n / 1e3:7.1f} us/call")


if __name__ == "__main__":
    main()
