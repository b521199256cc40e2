#!/usr/bin/env bash
# Make a random-weight Q4_0 GGUF of LFM2-8B-A1B (or LFM2-24B-A2B) for llama.cpp.
#
#   benchmarks/llamacpp/build.sh 8b    # writes the bf16 HF checkpoint (~16.7 GB), converts, deletes it
#   benchmarks/llamacpp/build.sh 24b   # no checkpoint on disk: weights generated inside the converter, written as Q4_0
#
# Everything runs under nice -n 19 / ionice -c3 (the machine is shared with timing runs).
# Peak disk: 8b ~26 GB (HF + q8_0), 24b ~13 GB (the final file only). Final: 8b 4.4 GiB, 24b ~12 GiB.
# Environment: LLAMA_CPP_DIR (llama.cpp source tree with build/bin), MODELS_DIR, SEED.
set -euo pipefail

PRESET=${1:-8b}
HERE=$(cd "$(dirname "$0")" && pwd)
LLAMA_CPP_DIR=${LLAMA_CPP_DIR:-/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp}
BIN=$LLAMA_CPP_DIR/build/bin
MODELS_DIR=${MODELS_DIR:-/work/llamacpp/models}
SEED=${SEED:-0}
case $PRESET in
  8b)  NAME=lfm2-8b-a1b-random ;;
  24b) NAME=lfm2-24b-a2b-random ;;
  *) echo "usage: $0 8b|24b" >&2; exit 2 ;;
esac
HF=$MODELS_DIR/$NAME-hf
Q8=$MODELS_DIR/$NAME.q8_0.gguf
Q4=$MODELS_DIR/$NAME.q4_0.gguf
QUIET=(nice -n 19 ionice -c 3)
export LLAMA_CPP_DIR
mkdir -p "$MODELS_DIR"
df -h "$MODELS_DIR"

if [ "$PRESET" = 8b ]; then
  # as the brief asked: real bf16 safetensors -> q8_0 GGUF -> llama-quantize Q4_0
  "${QUIET[@]}" python "$HERE/make_random_hf.py" --preset 8b --seed "$SEED" --out "$HF"
  "${QUIET[@]}" python "$HERE/convert.py" "$HF" --outtype q8_0 --outfile "$Q8"
  rm -f "$HF"/model-*.safetensors   # keep config.json + tokenizer (< 1 MB) as the record
  "${QUIET[@]}" "$BIN/llama-quantize" --allow-requantize "$Q8" "$Q4" Q4_0 2
  rm -f "$Q8"
else
  # 24b: the ~48 GB checkpoint and ~25 GB q8_0 file would not fit next to everyone else's,
  # so the weights are generated inside the converter and written straight to Q4_0
  # (same tensor types and metadata as llama-quantize gives; checked on the 8b, see README)
  "${QUIET[@]}" python "$HERE/make_random_hf.py" --preset 24b --seed "$SEED" --out "$HF" --no-weights
  "${QUIET[@]}" python "$HERE/convert.py" "$HF" --outtype q8_0 --outfile "$Q4" --synthetic-weights --direct-q4_0
fi
ls -l "$Q4"
sha256sum "$Q4" | tee "$Q4.sha256"
# smoke run: does it load and run (not a measurement)
"${QUIET[@]}" "$BIN/llama-bench" -m "$Q4" -t 2 -p 16 -n 8 -r 1
