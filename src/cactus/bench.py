"""`cactus bench`: prefill and decode speed, time to first token, memory, and the effective weight
bandwidth next to the machine's own read bandwidth, measured in the same run.

    cactus bench [MODEL_DIR] [--synthetic NAME] [--quant int4|int8] [--prompt N] [--gen N]
                 [--threads T] [--runs R] [--batch B] [--verify K] [--speculative prompt|MODEL]
                 [--draft-tokens K] [--json]

Effective weight bandwidth = bytes of weights read per decoded token (active experts only, plus
the dense parts and the LM head) x decode tok/s. Memory bandwidth is measured in a child process
(so its buffer never shows in our RSS) just before and just after every decode run, and each run's
effective bandwidth is read against the mean of the two: machines like this one move between
bandwidth levels within seconds, so only neighbouring measurements compare. Peak anonymous RSS is the
process's own memory, sampled (memory.py: RssAnon on Linux, where mmap'ed weights count as RssFile;
phys_footprint on macOS); peak RSS includes the weights' resident pages.
Python overhead = decode wall time minus time inside kernels (counted by the binding). CPU steal
(Linux /proc/stat: time a hypervisor gave this VM's CPUs to other guests) is read over each decode run.
Prefill is bound by compute, so its yardstick is the kernels' own rate on a matrix in cache (the
model's format, 64 tokens, all threads), measured in a child process just before and just after
every prefill run (the mean of the two): prefill work = multiply-adds of a prompt token against
the weight matrices (dense, and the active share of the experts) x prefill tok/s, read against it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import memory
from .cpus import cpu_name
from .quant import FORMATS


class AnonSampler:
    """Peak private memory (RssAnon on Linux, phys_footprint on macOS: memory.py) and RssShmem
    (which should stay ~0), sampled every few milliseconds on a thread (kernels release the GIL).
    Peaks stay None where the OS does not tell."""

    def __init__(self, period: float = 0.005):
        self.period, self.peak, self.peak_shmem, self._stop = period, None, None, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        for name, now in (("peak", memory.private_bytes()), ("peak_shmem", memory.shmem_bytes()),
                          ("peak", memory.peak_private_bytes())):
            if now is not None:
                setattr(self, name, max(getattr(self, name) or 0, now))

    def __enter__(self):
        self.sample()  # a peak from the start: a reading right after entering is never None by a race
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.sample()


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the whole machine so far (Linux /proc/stat), else None. Steal is
    time the hypervisor gave this VM's CPUs to others: on a shared cloud machine it is what makes
    two runs of the same decode differ by a third, and the bench prints it beside each run."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user, nice]
    return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None


def read_bandwidth(buf: np.ndarray, reps: int) -> float:
    """Best-of-`reps` GB/s of the kernel threads streaming `buf` (in this process)."""
    from . import ops

    times = []
    for _ in range(reps):
        t = time.perf_counter()
        ops.read_memory(buf)
        times.append(time.perf_counter() - t)
    return buf.nbytes / min(times) / 1e9


def _read_bandwidth(threads: int, mib: int, reps: int) -> float:
    """Best-of-`reps` GB/s of `threads` kernel threads streaming a fresh `mib` MiB buffer."""
    from . import ops

    ops.set_threads(threads)
    buf = np.ones(mib << 20, np.uint8)
    ops.read_memory(buf)
    return read_bandwidth(buf, reps)


def measure_bandwidth(threads: int, mib: int = 512, reps: int = 7) -> float:
    """_read_bandwidth in a child process, so its buffer never counts in this process's RSS."""
    code = f"from cactus.bench import _read_bandwidth; print(_read_bandwidth({threads}, {mib}, {reps}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def weight_bytes_per_token(model) -> dict[str, int]:
    """Bytes of weights one decoded token reads: every dense tensor once, A/E of each expert stack."""
    out = {"dense": 0, "experts": 0, "lm_head": 0, "embed_row": 0}
    for part, t, share in model.net.token_reads():
        out["embed_row" if part == "embed" else part] += round(t.nbytes * share)
    out["total"] = sum(out.values())
    return out


def weight_macs_per_prompt_token(model) -> int:
    """Multiply-adds of one prompt token against the weight matrices (dense and its share of the
    experts; the LM head runs for the last token only, attention's own products are left out)."""
    from .quant import QTensor

    return round(sum(np.prod(t.shape) * share for part, t, share in model.net.token_reads()
                     if part in ("dense", "experts") and isinstance(t, QTensor)))  # norms and conv: arrays


def _compute(threads: int, fmt: str, seconds: float) -> float:
    """GMAC/s of `threads` kernel threads running the prefill kernels on a `fmt` matrix that stays in
    cache (2048 columns, 1024 rows per thread: an 8B-A1B expert's shape and token count in a
    512-token prefill; with 256 rows, per-call costs took ~10 %) against 64 tokens, for `seconds`."""
    from . import ops
    from .quant import QTensor

    ops.set_threads(threads)
    rng = np.random.default_rng(0)
    n, k = 1024 * threads, 2048
    w = QTensor.from_float(rng.standard_normal((n, k), np.float32) / np.sqrt(k), fmt)
    x = rng.standard_normal((64, k), np.float32)
    ops.linear(x, w)
    reps, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        ops.linear(x, w)
        reps += 1
    return n * k * x.shape[0] * reps / elapsed / 1e9


def measure_compute(threads: int, fmt: str, seconds: float = 0.5) -> float:
    """_compute in a child process (its buffers never count in this process's RSS): the yardstick
    of prefill, as the read bandwidth is of decode."""
    code = f"from cactus.bench import _compute; print(_compute({threads}, {fmt!r}, {seconds}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def warm_page_cache(model) -> float:
    """Read every page of the weight file once (the page cache then holds it); returns seconds."""
    from . import ops

    t = time.perf_counter()
    ops.read_memory(model.weights.file._mmap, 64)  # one 64-byte line per 4 KiB page
    return time.perf_counter() - t


def decode_batch(model, snap, tok: int, batch: int, gen: int, seed: int = 0) -> tuple[float, float | None]:
    """Decode `gen` tokens of `batch` sequences together (one tape call per step, batch.py), each
    starting from the prompt's caches (`snap`, detached) with its own first token so their routes
    differ -> (wall seconds, peak anonymous bytes the extra caches took, when the OS tells)."""
    V = model.config.vocab_size
    toks = np.array([tok, *np.random.default_rng(seed).integers(0, V, batch - 1)], np.int64)
    with AnonSampler() as anon:
        base = anon.peak
        caches = []
        for _ in range(batch):
            model.restore(snap)
            caches.append(model.cache)
            model.cache = model.net.make_cache(model.max_context)
        pos = np.full(batch, snap.n_past, np.int64)
        seqs = np.arange(batch)
        t = time.perf_counter()
        for _ in range(gen):
            toks = model.net.step(toks, seqs, pos, caches).argmax(-1)
            pos += 1
        wall = time.perf_counter() - t
    model.reset()
    return wall, None if base is None or anon.peak is None else anon.peak - base


def verify_cost(model, snap, k: int, reps: int = 9) -> dict:
    """One forward over k tokens (Engine.verify: a decode step's token and k-1 drafts) as a multiple
    of one decode step, both timed from the same caches, alternated; medians."""
    one, many = [], []
    ids = np.arange(k, dtype=np.int64) % model.config.vocab_size
    for _ in range(reps):
        model.restore(snap)
        t = time.perf_counter()
        model.forward(ids[:1])
        one.append(time.perf_counter() - t)
        model.restore(snap)
        t = time.perf_counter()
        model.verify(ids)
        many.append(time.perf_counter() - t)
    med = statistics.median
    return {"verify_tokens": k, "step_ms": med(one) * 1e3, "verify_ms": med(many) * 1e3,
            "verify_cost": med(many) / med(one)}


def drafter_factory(model, mode: str):
    """`--speculative` -> a function giving a fresh drafter per run: prompt lookup, or a draft model
    (loaded once; its tokenizer checked against the model's where both directories have one)."""
    from . import engine, speculative
    from .generate import Session

    if mode == "prompt":
        return speculative.PromptLookup
    draft = Path(mode)
    if (model.path / "tokenizer.json").is_file() and (draft / "tokenizer.json").is_file() \
            and not speculative.same_tokenizer(model.path, draft):
        raise ValueError(f"draft model {draft}: its tokenizer differs from the model's ({model.path})")
    d = speculative.DraftModel(Session(engine.load(draft, max_context=model.max_context)))
    return lambda: d


def decode_speculative(model, snap, tok: int, prompt_ids, gen: int, drafter, max_k: int) -> dict:
    """Decode `gen` tokens greedily from the prompt's caches through the `Speculator` generate() uses
    (speculative.py) -> wall seconds, the tokens, drafted and accepted counts."""
    from .generate import Session
    from .speculative import Speculator

    session = Session(model)
    model.restore(snap)
    session.ids, history = [int(i) for i in prompt_ids], [int(i) for i in prompt_ids]  # as generate(): two lists
    spec = Speculator(session, drafter(), history, max_k)
    out = []
    t = time.perf_counter()
    for _ in range(gen):
        out.append(tok)
        history.append(tok)
        tok = int(spec.step(tok).argmax())
    wall = time.perf_counter() - t
    spec.settle()
    model.reset()
    return {"wall": wall, "tokens": out, "drafted": spec.drafted, "accepted": spec.accepted}


def run(model_dir: Path, prompt: int, gen: int, runs: int, threads: int | None, seed: int = 0, batch: int = 1,
        verify: int | None = None, speculative: str | None = None, draft_tokens: int = 8) -> dict:
    from . import engine, ops

    if threads:
        ops.set_threads(threads)
    nthreads = ops.threads()
    res: dict = {"model": str(model_dir), "cpu": cpu_name(), "isa": ops.isa(), "threads": nthreads, "prompt": prompt,
                 "gen": gen, "runs": runs}
    with AnonSampler() as anon:
        model = engine.load(model_dir, max_context=prompt + gen + 8)
        if prompt + gen > model.max_context:
            raise ValueError(f"--prompt {prompt} plus --gen {gen} tokens exceed the model's context window of "
                             f"{model.max_context} tokens")
        res["quant"] = model.quant
        res["page_cache_warm_s"] = warm_page_cache(model)
        ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, prompt)
        logits = model.forward(ids[:8], last_only=True)  # warm-up: threads, first-touch of scratch
        prefill, ttft, decode, overhead, team, bw, compute, steal = [], [], [], [], [], [], [], []
        batched, verified, speculated = [], [], []
        drafter = drafter_factory(model, speculative) if speculative else None
        if verify and verify + 1 > model.max_context - prompt:
            model = engine.load(model_dir, max_context=prompt + max(gen, verify) + 8)
        for _ in range(runs):
            c0 = measure_compute(nthreads, model.quant)
            model.reset()
            t0 = time.perf_counter()
            logits = model.forward(ids, last_only=True)
            tok = int(logits.argmax())
            t1 = time.perf_counter()
            prefill.append(prompt / (t1 - t0))
            ttft.append(t1 - t0)
            compute.append((c0 + measure_compute(nthreads, model.quant)) / 2)
            before = measure_bandwidth(nthreads)
            ops.profile(True)
            jobs0, cpu0 = ops.pool_stats(), cpu_ticks()
            first, plain = tok, []
            t2 = time.perf_counter()
            for _ in range(gen):
                plain.append(tok)
                tok = int(model.forward([tok], last_only=True).argmax())
            wall = time.perf_counter() - t2
            _, kernel_ns = ops.profile(False)
            jobs1, cpu1 = ops.pool_stats(), cpu_ticks()
            steal.append(None if cpu0 is None or cpu1 is None or cpu1[1] <= cpu0[1]
                         else 100 * (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]))
            bw.append((before, measure_bandwidth(nthreads)))
            team.append((jobs1[0] - jobs0[0]) / max(1, jobs1[0] - jobs0[0] + jobs1[1] - jobs0[1]))
            decode.append(gen / wall)
            overhead.append(max(0.0, 1.0 - kernel_ns / 1e9 / wall))
            if batch > 1 or verify or drafter:
                model.reset()
                model.forward(ids, last_only=True)
                snap = model.snapshot(detach=True)
            if batch > 1:  # B sequences decoded together, right after the single stream, same bandwidth
                bwall, extra = decode_batch(model, snap, tok, batch, gen, seed)
                batched.append((batch * gen / bwall, measure_bandwidth(nthreads), extra))
            if verify:
                verified.append(verify_cost(model, snap, verify))
            if drafter:  # the same tokens again, speculating, right after the plain run
                sp = decode_speculative(model, snap, first, ids, gen, drafter, draft_tokens)
                speculated.append({**sp, "speedup": wall / sp["wall"], "same": sp["tokens"] == plain})
    wb = weight_bytes_per_token(model)
    macs = weight_macs_per_prompt_token(model)
    med = statistics.median
    pct = [100 * wb["total"] * d / 1e9 / ((b0 + b1) / 2) for d, (b0, b1) in zip(decode, bw, strict=True)]
    cpct = [100 * macs * p / 1e9 / c for p, c in zip(prefill, compute, strict=True)]
    res.update({
        "prefill_tps": med(prefill), "decode_tps": med(decode), "ttft_ms": med(ttft) * 1e3,
        "prefill_tps_all": prefill, "decode_tps_all": decode,
        "weight_macs_per_prompt_token": macs, "prefill_gmacs": macs * med(prefill) / 1e9,
        "compute_gmacs_all": compute, "prefill_pct_of_compute_all": cpct, "prefill_pct_of_compute": med(cpct),
        "python_overhead_pct": med(overhead) * 100,
        "decode_jobs_on_all_threads_pct": med(team) * 100,
        "weight_bytes_per_token": wb["total"], "weight_bytes_detail": wb,
        "effective_gbs": wb["total"] * med(decode) / 1e9,
        "bw_gbs_all": bw, "bw_gbs": med([(b0 + b1) / 2 for b0, b1 in bw]), "decode_steal_pct_all": steal,
        "effective_pct_of_bw_all": pct, "effective_pct_of_bw": med(pct),
        "peak_rss_mb": memory.peak_rss_bytes() / 2**20, "peak_anon_rss_mb": _mb(anon.peak),
        "peak_shmem_rss_mb": _mb(anon.peak_shmem), "anon_rss_source": memory.PRIVATE_NAME,
    })
    if batched:  # decode_tps becomes the aggregate of the batch; the single stream's stays beside it
        agg = [a for a, _, _ in batched]
        extra = [x for _, _, x in batched if x is not None]
        res.update({
            "batch": batch, "decode_tps": med(agg), "decode_tps_all": agg, "decode_tps_batch1": med(decode),
            "decode_tps_batch1_all": decode, "decode_tps_per_sequence": med(agg) / batch,
            # each batch run against the single-stream run just before it: the machine's level moves
            "batch_speedup": med(a / d for a, d in zip(agg, decode, strict=True)),
            "batch_bw_gbs_after_all": [b for _, b, _ in batched],
            "anon_mb_per_extra_sequence": _mb(max(extra) / (batch - 1)) if extra else None,
        })
    if speculated:
        drafted, accepted = sum(x["drafted"] for x in speculated), sum(x["accepted"] for x in speculated)
        res.update({
            "speculative": speculative, "draft_tokens": draft_tokens,
            "decode_tps_speculative": med(gen / x["wall"] for x in speculated),
            "speculative_speedup": med(x["speedup"] for x in speculated),
            "speculative_speedup_all": [x["speedup"] for x in speculated],
            "speculative_acceptance": accepted / drafted if drafted else None,
            "speculative_tokens_from_drafts": accepted / (gen * len(speculated)),
            "speculative_same_tokens": all(x["same"] for x in speculated),
        })
    if verified:
        res.update({"verify_tokens": verify, "verify_cost": med(v["verify_cost"] for v in verified),
                    "verify_cost_all": [v["verify_cost"] for v in verified],
                    "verify_step_ms": med(v["step_ms"] for v in verified),
                    "verify_ms": med(v["verify_ms"] for v in verified)})
    return res


def format_result(r: dict) -> str:
    single = r.get("decode_tps_batch1_all", r["decode_tps_all"])
    per_run = zip(single, r["bw_gbs_all"], r["effective_pct_of_bw_all"], strict=True)
    runs = ", ".join(f"{d:.2f} at {(b0 + b1) / 2:.1f} GB/s = {p:.0f}%" + ("" if st is None else f" (steal {st:.0f}%)")
                     for (d, (b0, b1), p), st in zip(per_run, r["decode_steal_pct_all"], strict=True))
    return "\n".join([
        f"model          {r['model']}  ({r['quant']}, {r['isa']}, {r['threads']} threads)",
        f"cpu            {r.get('cpu', 'unknown')}",
        f"prefill        {r['prefill_tps']:.1f} tok/s   ({r['prompt']} tokens; runs: "
        + ", ".join(f"{x:.1f}" for x in r["prefill_tps_all"]) + ")",
        f"prefill work   {r['prefill_gmacs']:.1f} GMAC/s of weight products; median "
        f"{r['prefill_pct_of_compute']:.0f}% of the kernels' in-cache rate measured around each run ("
        + ", ".join(f"{c:.0f}" for c in r["compute_gmacs_all"]) + " GMAC/s)",
        f"time to first  {r['ttft_ms']:.0f} ms",
        f"decode         {r.get('decode_tps_batch1', r['decode_tps']):.2f} tok/s   ({r['gen']} tokens)",
        f"weights/token  {r['weight_bytes_per_token'] / 1e6:.1f} MB",
        f"effective bw   {r['effective_gbs']:.1f} GB/s; median {r['effective_pct_of_bw']:.0f}% of the memory "
        f"bandwidth measured around each run",
        f"runs           {runs}",
        f"peak RSS       {r['peak_rss_mb']:.0f} MB (includes the page cache's pages of the mmap'ed weights)",
        f"peak anon RSS  {_anon_line(r)}",
        f"python share   {r['python_overhead_pct']:.1f}% of decode time outside kernels",
        f"threads        {r['decode_jobs_on_all_threads_pct']:.0f}% of decode jobs ran on all {r['threads']} threads "
        f"(the rest on one: the pool measures which is faster on this machine now)",
    ] + _extra_lines(r))


def _extra_lines(r: dict) -> list[str]:
    out = []
    if "batch" in r:
        mem = r["anon_mb_per_extra_sequence"]
        out += [f"batch {r['batch']:<8} {r['decode_tps']:.2f} tok/s aggregate ({r['decode_tps_per_sequence']:.2f} per "
                f"sequence) = x{r['batch_speedup']:.2f} the single stream; runs: "
                + ", ".join(f"{x:.2f}" for x in r["decode_tps_all"])
                + ("" if mem is None else f"; {mem:.1f} MB anonymous per extra sequence")]
    if "verify_cost" in r:
        out += [f"verify {r['verify_tokens']:<7} {r['verify_cost']:.2f} decode steps for one forward over "
                f"{r['verify_tokens']} tokens ({r['verify_ms']:.1f} ms against {r['verify_step_ms']:.1f} ms); runs: "
                + ", ".join(f"{x:.2f}" for x in r["verify_cost_all"])]
    if "speculative" in r:
        acc = r["speculative_acceptance"]
        out += [f"speculative    {r['decode_tps_speculative']:.2f} tok/s = x{r['speculative_speedup']:.2f} the plain "
                f"decode ({r['speculative']}, K <= {r['draft_tokens']}; "
                + ("nothing drafted" if acc is None else f"{100 * acc:.0f}% of drafts taken")
                + f", {100 * r['speculative_tokens_from_drafts']:.0f}% of tokens from drafts; "
                + ("the same tokens" if r["speculative_same_tokens"] else "TOKENS DIFFER") + "); runs: "
                + ", ".join(f"x{x:.2f}" for x in r["speculative_speedup_all"])]
    return out


def _mb(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def _anon_line(r: dict) -> str:
    if r["peak_anon_rss_mb"] is None:
        return "not available on this OS"
    shmem = r["peak_shmem_rss_mb"]
    return (f"{r['peak_anon_rss_mb']:.0f} MB ({r['anon_rss_source']}"
            + (f"; shared memory peak {shmem:.0f} MB)" if shmem is not None else ")"))


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _speculative(value: str) -> str:
    if value != "prompt" and not (Path(value) / "config.json").is_file():
        raise argparse.ArgumentTypeError(f'must be "prompt" or a converted model directory, got {value!r}')
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cactus bench", description="Measure prefill/decode speed and memory.")
    p.add_argument("model_dir", nargs="?", help="a converted model directory, a name from `cactus list`, "
                                                "or a HuggingFace repo id")
    p.add_argument("--synthetic", metavar="NAME", help="random weights of a published shape (cactus.shapes)")
    p.add_argument("--quant", default="int4", choices=list(FORMATS))
    p.add_argument("--prompt", type=_count, default=512, help="prompt tokens (default 512)")
    p.add_argument("--gen", type=_count, default=64, help="decoded tokens (default 64)")
    p.add_argument("--threads", type=_count, help="kernel threads (default: CACTUS_THREADS or fast physical cores)")
    p.add_argument("--runs", type=_count, default=3, help="runs; medians are reported (default 3)")
    p.add_argument("--batch", type=_count, default=1, metavar="B",
                   help="also decode B sequences together after each single-stream run: aggregate and "
                        "per-sequence tok/s (decode_tps in --json becomes the aggregate)")
    p.add_argument("--verify", type=_count, default=None, metavar="K",
                   help="also time one forward over K tokens (speculative verification) as a multiple of one "
                        "decode step (verify_cost)")
    p.add_argument("--speculative", metavar="prompt|MODEL", type=_speculative, default=None,
                   help="also decode the same tokens speculating after each run (prompt lookup, or a draft "
                        "model directory): tok/s, speed-up, drafts taken")
    p.add_argument("--draft-tokens", dest="draft_tokens", type=_count, default=8, metavar="K",
                   help="most tokens drafted per verification (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if bool(args.model_dir) == bool(args.synthetic):
        parser().error("give a MODEL_DIR or --synthetic NAME (one of them)")
    if args.synthetic:
        from . import shapes

        if args.synthetic not in shapes.SHAPES:
            parser().error(f"unknown shape {args.synthetic!r} (one of {', '.join(shapes.SHAPES)})")
        # written by a child process, so its buffers never count in this process's memory
        out = subprocess.run([sys.executable, "-m", "cactus.synthetic", args.synthetic, args.quant],
                             stdout=subprocess.PIPE, text=True)
        if out.returncode:
            return 1  # the child printed why
        model_dir = Path(out.stdout.strip().splitlines()[-1])
    else:
        from .cli import resolve_model  # a directory, a name from `cactus list`, or a repo id, as `cactus run`

        model_dir = resolve_model(args.model_dir, args.quant)
    r = run(model_dir, args.prompt, args.gen, args.runs, args.threads, batch=args.batch, verify=args.verify,
            speculative=args.speculative, draft_tokens=min(args.draft_tokens, 32))
    print(json.dumps(r) if args.json else format_result(r))
    return 0


if __name__ == "__main__":  # python -m cactus.bench: as `cactus bench`, errors as one line
    from .cli import main as cli_main

    sys.exit(cli_main(["bench", *sys.argv[1:]]))
