#!/usr/bin/env bash
# What no GPU has run yet (docs/gpu-runs.md, "Not run: 2026-12-07, second session"), in order of
# value, each bounded, for one device call when device time is short (carry gpu-bundle/):
#
#   bash scripts/gpu-pending.sh            # on the GPU machine, from the repository root
#
# 1. the GPU tests the session's changes touch (kernels, prefill, islands, keys, serving, staged,
#    the cudarc island tests), 2. serve_bench on a small trace, 3. decode_bench --keys-growth,
# 4. memcheck on serving:: and staged::, 5. serve_bench --model on a random Qwen3 folder built
# with transformers (scripts/tiny_checkpoint.py), 6. issue 30's memory table (the candle binary's
# ignored footprint:: test: native, cudarc, candle decoder, BERT). Logs and rc.txt go to $OUT
# (or ./gpu-out).
# PENDING_SCALE=2 doubles every time limit (a machine with time to spare).
set -uo pipefail
cd "$(dirname "$0")/.."
b=${BUNDLE:-gpu-bundle}
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
scale=${PENDING_SCALE:-1}
export CUDAGRAPH_REQUIRE_GPU=1 NCCL_NVLS_ENABLE=0
note() { echo "$1 rc $2 ($((SECONDS - $3)) s)" | tee -a "$out/rc.txt"; }
t=$SECONDS
# PENDING_TESTS overrides the test filter (set it empty for the whole suite; PENDING_TESTS_S its
# time limit).
filter=${PENDING_TESTS-kernels:: prefill:: islands:: keys:: serving:: staged:: background:: step_kernels:: cudarc_backend::cudarc_island}
# shellcheck disable=SC2086 # the filter is a list of words
timeout $((${PENDING_TESTS_S:-100} * scale)) bash "$b/run.sh" tests $filter >/dev/null 2>&1
note tests $? $t
t=$SECONDS
timeout $((40 * scale)) "$b/serve_bench" --requests 64 --rate inf >"$out/serve_bench.log" 2>&1
note serve_bench $? $t
t=$SECONDS
timeout $((25 * scale)) "$b/decode_bench" --keys-growth >"$out/keys_growth.log" 2>&1
note keys_growth $? $t
t=$SECONDS
SANITIZER_TIMEOUT=$((60 * scale)) bash "$b/run.sh" memcheck serving:: staged:: >"$out/memcheck.txt" 2>&1
note memcheck $? $t
t=$SECONDS
{ timeout $((30 * scale)) python3 scripts/tiny_checkpoint.py /tmp/qwen3-tiny &&
  timeout $((25 * scale)) "$b/serve_bench" --model /tmp/qwen3-tiny --requests 32 --rate 64 \
    --max-prompt 512 --max-output 64; } >"$out/serve_bench_hf.log" 2>&1
note serve_bench_hf $? $t
t=$SECONDS
timeout $((120 * scale)) bash "$b/run.sh" candle footprint:: >/dev/null 2>&1
note footprint $? $t
