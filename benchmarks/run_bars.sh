#!/usr/bin/env bash
# The issue-3 bars, each measured by `cactus bench` (medians of --runs runs, memory bandwidth
# measured in the same run). Results land in benchmarks/results/NAME-QUANT-TAG.json; summarize
# with `python benchmarks/summarize.py`. Usage: benchmarks/run_bars.sh [TAG] [extra bench args]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-$(date +%H%M%S)}
shift || true
extra=("$@")
out=benchmarks/results
mkdir -p "$out"
bench() {  # name quant prompt gen runs
    python -m cactus.bench --synthetic "$1" --quant "$2" --prompt "$3" --gen "$4" --runs "$5" --json "${extra[@]}" \
        > "$out/$1-$2-p$3-$tag.json"
    python -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], 'prefill %.1f (%s%% of compute) decode %s eff %s%% of bw %s GB/s steal %s%% anon %.0f MB py %.1f%%' % (r['prefill_tps'], ' '.join('%.0f' % p for p in r['prefill_pct_of_compute_all']), ' '.join('%.2f' % d for d in r['decode_tps_all']), ' '.join('%.0f' % p for p in r['effective_pct_of_bw_all']), ' '.join('%.0f' % ((a + b) / 2) for a, b in r['bw_gbs_all']), ' '.join('-' if x is None else '%.0f' % x for x in r.get('decode_steal_pct_all', [])), r['peak_anon_rss_mb'], r['python_overhead_pct']))" "$out/$1-$2-p$3-$tag.json"
}
bench lfm2-350m int4 128 64 5
bench lfm2-1.2b int8 128 64 3
bench lfm2-8b-a1b int4 512 64 3
bench lfm2-24b-a2b int4 512 64 3
bench lfm2-24b-a2b int4 4096 16 1
