#!/usr/bin/env bash
# What no GPU has run yet (docs/gpu-runs.md: "Not run" in run 70's entry, and the levers
# bench/NOTES.md lists as not measured), in order of value, each step bounded, for one device
# call of at most 600 s (carry gpu-bundle/):
#
#   bash scripts/gpu-pending.sh            # on the GPU machine, from the repository root
#
# 1. the whole GPU suite (tests.log; first run of
#    background::a_runner_dropped_mid_background_capture_leaves_nothing_behind);
# 2. issue 29's cuBLAS preload lever: decode_bench --serve-start twice with the preload and
#    twice with CUDAGRAPH_PRELOAD=off (serve_start_{on,off}{1,2}.log);
# 3. racecheck over the whole suite with the built-in GEMM (sanitizer-racecheck.log; cuBLAS's
#    own Hopper kernels are flagged by racecheck).
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
step tests 90 bash "$b/run.sh" tests
for i in 1 2; do
  BENCH_TAG=serve_start_on$i step serve_start_on$i 20 bash "$b/run.sh" bench --serve-start
  CUDAGRAPH_PRELOAD=off BENCH_TAG=serve_start_off$i step serve_start_off$i 20 \
    bash "$b/run.sh" bench --serve-start
done
CUDAGRAPH_GEMM=builtin SANITIZER_TIMEOUT=$((380 * scale)) step racecheck 390 \
  bash "$b/run.sh" racecheck
