"""Markdown table of `cactus bench --json` results (benchmarks/results/*.json), one row per file.

    python benchmarks/summarize.py [GLOB]      # default: benchmarks/results/*.json
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

COLUMNS = ["run", "model", "quant", "threads", "prompt", "prefill tok/s", "prefill % of compute per run", "TTFT ms",
           "decode tok/s", "weights/token MB",
           "effective GB/s", "measured GB/s per run", "eff % of bw per run", "peak anon MB", "peak RSS MB",
           "python %", "team jobs %"]


def bandwidth(r: dict) -> str:
    """Memory bandwidth around each decode run (older files: before / after all runs)."""
    if "bw_gbs_all" in r:
        return ", ".join(f"{(b0 + b1) / 2:.0f}" for b0, b1 in r["bw_gbs_all"])
    return f"{r['bw_before_gbs']:.1f} / {r['bw_after_gbs']:.1f}"


def percent(r: dict) -> str:
    if "effective_pct_of_bw_all" in r:
        return ", ".join(f"{p:.0f}" for p in r["effective_pct_of_bw_all"])
    return f"{r['effective_pct_of_bw']:.0f}–{r['effective_pct_of_bw_low']:.0f}"


def compute(r: dict) -> str:
    """Prefill work against the kernels' in-cache rate measured around each run (newer files only)."""
    return ", ".join(f"{p:.0f}" for p in r.get("prefill_pct_of_compute_all", [])) or "–"


def row(path: Path, r: dict) -> list[str]:
    name = Path(r["model"]).name
    return [path.stem.rsplit("-", 1)[-1], name, r["quant"], str(r["threads"]), str(r["prompt"]),
            f"{r['prefill_tps']:.1f}", compute(r), f"{r['ttft_ms']:.0f}", f"{r['decode_tps']:.2f}",
            f"{r['weight_bytes_per_token'] / 1e6:.0f}", f"{r['effective_gbs']:.1f}",
            bandwidth(r), percent(r),
            f"{r['peak_anon_rss_mb']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['python_overhead_pct']:.1f}",
            f"{r.get('decode_jobs_on_all_threads_pct', float('nan')):.0f}"]


def main(argv: list[str]) -> None:
    pattern = argv[0] if argv else str(Path(__file__).parent / "results" / "*.json")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for p in sorted(glob.glob(pattern)):
        try:
            r = json.loads(Path(p).read_text())
        except (json.JSONDecodeError, OSError):
            continue  # a run still writing, or one that failed
        print("| " + " | ".join(row(Path(p), r)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
