#!/usr/bin/env bash
# What no GPU has run yet (docs/gpu-runs.md: "Not run" in run 70's entry, and the levers
# bench/NOTES.md lists as not measured), in order of value, each step bounded, for one device
# call of at most 600 s (carry gpu-bundle/):
#
#   bash scripts/gpu-pending.sh            # on the GPU machine, from the repository root
#
# 1. the whole GPU suite (tests.log; first run of
#    background::a_runner_dropped_mid_background_capture_leaves_nothing_behind);
# 2. issue 30's memory table with the held figures per state (largest alone, after capture,
#    replayed ascending after a trim, after release + resume; capture and resume now upload
#    the largest graph), from the candle binary (all four backends; candle-tests.log);
# 3. issue 29's cuBLAS preload lever: decode_bench --serve-start, one discarded start, then
#    with (CUDAGRAPH_PRELOAD=on) and without it in ABBA order, 6 starts each
#    (serve_start_{on,off}_*.log);
# 4. racecheck over the whole suite with the built-in GEMM (sanitizer-racecheck.log; cuBLAS's
#    own Hopper kernels are flagged by racecheck).
# rc.txt and pending-logs.tgz (every log) go to $OUT (or ./gpu-out). PENDING_SCALE=2 doubles
# every time limit.
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
step footprint 60 bash "$b/run.sh" candle footprint::
# One discarded start (it writes the GEMM algorithms to disk), then ABBA x 3 (12 starts).
BENCH_TAG=serve_start_warm step serve_start_warm 20 bash "$b/run.sh" bench --serve-start
k=0
for i in 1 2 3; do
  for mode in on off off on; do
    k=$((k + 1))
    pre=; [ "$mode" = on ] && pre=on
    CUDAGRAPH_PRELOAD=$pre BENCH_TAG=serve_start_${mode}_$k step serve_start_$mode 15 \
      bash "$b/run.sh" bench --serve-start
  done
done
# (The whole suite under racecheck took 434-456 s in earlier runs: this one may be cut; its
# log keeps the tests that finished.)
CUDAGRAPH_GEMM=builtin SANITIZER_TIMEOUT=$((210 * scale)) step racecheck 220 \
  bash "$b/run.sh" racecheck
# The device tool brings back a limited number of files: the logs go back as one archive
# (rc.txt stays beside it).
archive=$(mktemp -d)/pending-logs.tgz
tar czf "$archive" -C "$out" . && find "$out" -mindepth 1 ! -name rc.txt -delete && mv "$archive" "$out/"
