#!/usr/bin/env bash
# What no GPU has run yet (docs/gpu-runs.md, the "Not run" entries), in order of value, each
# step bounded, for one device call of at most 600 s when device time is short (carry
# gpu-bundle/):
#
#   bash scripts/gpu-pending.sh            # on the GPU machine, from the repository root
#
# 1. the GPU tests the unverified changes touch (tests_a.log); 2. serve_bench and
# decode_bench --keys-growth (serve_bench.log, keys_growth.log); 3. decode_bench --serve-start
# twice (a first and a second start: serve_start1.log, serve_start2.log); 4. the decode
# benchmark (decode_bench.log: staged and run() host times, background capture); 5. memcheck on
# serving:: and staged::; 6. issue 30's memory table (the candle binary's ignored footprint::
# test: candle-tests.log); 7. the rest of the GPU suite (tests_b.log).
# Logs and rc.txt go to $OUT (or ./gpu-out). PENDING_SCALE=2 doubles every time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
b=${BUNDLE:-gpu-bundle}
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
scale=${PENDING_SCALE:-1}
export CUDAGRAPH_REQUIRE_GPU=1 NCCL_NVLS_ENABLE=0 OUT="$out"
# step NAME SECONDS CMD...: CMD under a time limit; its exit status and time go to rc.txt.
step() {
  local name=$1 limit=$(($2 * scale)) t=$SECONDS
  shift 2
  timeout --kill-after=5 "$limit" "$@" >/dev/null 2>&1
  echo "$name rc $? ($((SECONDS - t)) s of $limit)" | tee -a "$out/rc.txt"
}
first=(kernels:: prefill:: islands:: keys:: serving:: staged:: background:: step_kernels::
  cudarc_backend::cudarc_island soundness:: coverage::generated_memory_estimate)
TESTS_TAG=tests_a step tests_a 110 bash "$b/run.sh" tests "${first[@]}"
step serve 70 bash "$b/run.sh" serve --requests 64 --rate inf
BENCH_TAG=serve_start1 step serve_start1 20 bash "$b/run.sh" bench --serve-start
BENCH_TAG=serve_start2 step serve_start2 20 bash "$b/run.sh" bench --serve-start
BENCH_TAG=decode_bench step decode_bench 80 bash "$b/run.sh" bench --iters 20
SANITIZER_TIMEOUT=$((55 * scale)) step memcheck 65 bash "$b/run.sh" memcheck serving:: staged::
step footprint 90 bash "$b/run.sh" candle footprint::
skips=()
for f in "${first[@]}"; do skips+=(--skip "$f"); done
TESTS_TAG=tests_b step tests_b 130 bash "$b/run.sh" tests "${skips[@]}"
