#!/usr/bin/env bash
# llama.cpp speed on a GGUF: prefill 512 tokens and decode 64 tokens, 2 threads, 3 repetitions.
#
#   benchmarks/llamacpp/run.sh [MODEL.gguf] [extra llama-bench args...]
#
# Default model: /work/llamacpp/models/lfm2-8b-a1b-random.q4_0.gguf (see README.md).
# Prints one line each for prefill and decode tok/s (mean +- stddev over the repetitions)
# and keeps llama-bench's full JSON next to it as $OUT_JSON (default /tmp/llamacpp-bench.json).
# Environment: LLAMA_CPP_DIR, THREADS (2), N_PROMPT (512), N_GEN (64), REPS (3), OUT_JSON.
set -euo pipefail

LLAMA_CPP_DIR=${LLAMA_CPP_DIR:-/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp}
BENCH=$LLAMA_CPP_DIR/build/bin/llama-bench
MODEL=${1:-/work/llamacpp/models/lfm2-8b-a1b-random.q4_0.gguf}
shift || true
THREADS=${THREADS:-2}
N_PROMPT=${N_PROMPT:-512}
N_GEN=${N_GEN:-64}
REPS=${REPS:-3}
OUT_JSON=${OUT_JSON:-/tmp/llamacpp-bench.json}

[ -f "$MODEL" ] || { echo "no model at $MODEL (make it with benchmarks/llamacpp/build.sh)" >&2; exit 1; }

"$BENCH" -m "$MODEL" -t "$THREADS" -p "$N_PROMPT" -n "$N_GEN" -r "$REPS" -o json "$@" > "$OUT_JSON"

python3 - "$OUT_JSON" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1]))
for r in runs:
    if r["n_prompt"] and not r["n_gen"]:
        what = f"prefill {r['n_prompt']:>4} tok"
    elif r["n_gen"] and not r["n_prompt"]:
        what = f"decode  {r['n_gen']:>4} tok"
    else:
        what = f"pp{r['n_prompt']}+tg{r['n_gen']}"
    print(f"llama.cpp {what}: {r['avg_ts']:8.2f} +- {r['stddev_ts']:.2f} tok/s"
          f"  ({r['model_type']}, {r['n_threads']} threads, {len(r['samples_ts'])} reps, build {r['build_commit']})")
EOF
