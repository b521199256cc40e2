#!/usr/bin/env bash
# cactus and llama.cpp back to back on the same random-weight shape, alternating rounds, each
# llama.cpp run between two memory-bandwidth readings (cactus bench takes its own around every run).
#
#   benchmarks/vs_llamacpp.sh NAME GGUF [ROUNDS]     e.g. lfm2-8b-a1b /work/llamacpp/models/lfm2-8b-a1b-random.q4_0.gguf
#
# NAME is a cactus.shapes name (cactus side: --synthetic NAME --quant int4); GGUF the Q4_0 of a
# random checkpoint of that shape (benchmarks/llamacpp/README.md). Both: 512-token prompt, 64
# decoded tokens, 2 threads, 3 repetitions. JSON: benchmarks/results/NAME-int4-p512-TAGi.json and
# benchmarks/results/llamacpp/NAME-TAGi.json (TAG from the environment, default "vs").
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 gguf=$2 rounds=${3:-2} tag=${TAG:-vs}
out=benchmarks/results
mkdir -p "$out/llamacpp"
bw() { python -c "from cactus.bench import measure_bandwidth; print(f'{measure_bandwidth(2):.1f}')"; }
for i in $(seq "$rounds"); do
    b0=$(bw)
    OUT_JSON="$out/llamacpp/$name-$tag$i.json" benchmarks/llamacpp/run.sh "$gguf"
    echo "llama.cpp round $i: memory bandwidth $b0 GB/s before, $(bw) GB/s after"
    python -m cactus.bench --synthetic "$name" --quant int4 --prompt 512 --gen 64 --runs 3 --json \
        > "$out/$name-int4-p512-$tag$i.json"
    python benchmarks/summarize.py "$out/$name-int4-p512-$tag$i.json" | tail -1
done
