#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there): the GPU test suite, the decode benchmark, and the
# suite under compute-sanitizer. Logs go to $OUT (the device tool's output folder) or ./gpu-out.
#   bash gpu-bundle/run.sh [tests|candle|bench|serve|sanitize|memcheck|racecheck|all|hf|tp] [TEST FILTER...]
# `hf` (not part of `all`: it needs PyTorch and transformers) checks the Hugging Face loader
# against transformers with hf_check.py. `tp` (not part of `all`: it needs 2 GPUs) runs the
# tensor-parallel GPU tests and `decode_bench --tp 2` (NCCL all-reduces inside the graphs).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/../gpu-out}
mkdir -p "$out"
what=${1:-all}
export CUDAGRAPH_REQUIRE_GPU=1 NCCL_NVLS_ENABLE=0
# NVRTC and cuBLAS of CUDA 13: the toolkit's, else the pip wheels' copies.
for lib in libnvrtc.so.13 libcublas.so.13; do
  dir=$(dirname "$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" 2>/dev/null | head -n1)" 2>/dev/null)
  [ -n "$dir" ] && [ "$dir" != . ] && export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
done
# NCCL (tensor parallelism): cudarc opens `libnccl.so`, not `libnccl.so.2`; where only the latter
# is installed (the runtime package, a pip wheel), a private `libnccl.so` link to it goes first on
# LD_LIBRARY_PATH. NVLink multicast stays off (NCCL_NVLS_ENABLE=0, exported above).
has_lib() {
  ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 " && return 0
  local d; IFS=: read -ra dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in ${dirs[@]+"${dirs[@]}"}; do [ -n "$d" ] && [ -e "$d/$1" ] && return 0; done
  return 1
}
if ! has_lib libnccl.so; then
  nccl=$(ldconfig -p 2>/dev/null | awk '/[[:space:]]libnccl\.so\.2 /{print $NF; exit}')
  [ -n "$nccl" ] || nccl=$(find /usr/lib /usr/local /opt -name libnccl.so.2 2>/dev/null | head -n1)
  if [ -n "$nccl" ]; then
    nccl_dir=$(mktemp -d) && ln -s "$nccl" "$nccl_dir/libnccl.so" &&
      export LD_LIBRARY_PATH="$nccl_dir:${LD_LIBRARY_PATH:-}" && echo "NCCL: $nccl (linked as libnccl.so)"
  fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  # (TESTS_TAG names the log, e.g. when CUDAGRAPH_GEMM=builtin runs the suite a second time.)
  "$here/gpu-tests" --test-threads=1 --nocapture "${@:2}" 2>&1 | tee "$out/${TESTS_TAG:-tests}.log"
  status=$((status | PIPESTATUS[0]))
fi
if [ "$what" = candle ] || [ "$what" = all ]; then
  # The candle backend's tests (a binary linked against libcuda, libcublas, libcurand and
  # libcudart of CUDA 13; `candle [FILTER...]`, default: the candle and cudarc tests, and the
  # candle decoder's latency table).
  [ -f "$here/gpu-tests-candle.xz" ] && xz -dkf "$here/gpu-tests-candle.xz" && chmod +x "$here/gpu-tests-candle"
  if [ -x "$here/gpu-tests-candle" ]; then
    filter=("${@:2}"); [ ${#filter[@]} -eq 0 ] && filter=(candle_backend::)
    "$here/gpu-tests-candle" --test-threads=1 --nocapture --include-ignored "${filter[@]}" 2>&1 | tee "$out/candle-tests.log"
    status=$((status | PIPESTATUS[0]))
  else
    echo "no candle test binary in the bundle (built with CUDAGRAPH_SKIP_CANDLE=1?)" | tee "$out/candle-tests.log"
  fi
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  # (bench [ARGS...]: arguments for decode_bench, e.g. --iters 10; BENCH_TAG names the log.)
  "$here/decode_bench" "${@:2}" 2>&1 | tee "$out/${BENCH_TAG:-decode_bench}.log"; status=$((status | PIPESTATUS[0]))
fi
if [ "$what" = serve ] || [ "$what" = all ]; then
  # The serving loop in four modes (serve [ARGS...]: arguments for serve_bench, e.g.
  # --requests 64 --rate 32), and the key-space growth table (issue 27).
  args=("${@:2}"); [ "$what" = all ] && args=()
  "$here/serve_bench" ${args[@]+"${args[@]}"} 2>&1 | tee "$out/serve_bench.log"; status=$((status | PIPESTATUS[0]))
  "$here/decode_bench" --keys-growth 2>&1 | tee "$out/keys_growth.log"; status=$((status | PIPESTATUS[0]))
fi
if [ "$what" = tp ]; then
  NCCL_NVLS_ENABLE=0 "$here/gpu-tests" --test-threads=1 --nocapture tp:: 2>&1 | tee "$out/tp-tests.log"
  status=$((status | PIPESTATUS[0]))
  NCCL_NVLS_ENABLE=0 "$here/decode_bench" --tp 2 --json "$out/decode_bench-tp2.json" 2>&1 | tee "$out/decode_bench-tp2.log"
  status=$((status | PIPESTATUS[0]))
fi
if [ "$what" = hf ]; then
  python3 "$here/hf_check.py" "$here/decode_bench" --out "$out/hf" 2>&1 | tee "$out/hf_check.log"
  status=$((status | PIPESTATUS[0]))
fi
# compute-sanitizer over the suite (or over the tests named after the mode):
#   sanitize [FILTER...]    memcheck, then racecheck
#   memcheck [FILTER...]    racecheck [FILTER...]
# * API errors are not reported: the reliability tests provoke them on purpose (an allocation,
#   a host copy, a free during capture, an out-of-memory) and check each is handled.
# * The tensor-parallel tests start their ranks as processes (CUDAGRAPH_TP_PROCESSES=1): the
#   sanitizer runs one process's kernels one at a time, so in one process an all-reduce would
#   wait forever for its peer. The sanitizer follows the child processes (--target-processes all).
# * racecheck runs with the built-in GEMM (CUDAGRAPH_GEMM=builtin): racecheck reports hazards
#   inside cuBLAS's own Hopper kernels (nvjet_sm90_*) whoever calls them, PyTorch included.
#   memcheck runs with cuBLAS.
# * SANITIZER_TIMEOUT (seconds, default 3000) bounds each tool's run.
sanitize() {
  local tool=$1; shift
  local tag=${SANITIZER_TAG:-$tool}
  local env=(CUDAGRAPH_TP_PROCESSES=1)
  [ "$tool" = racecheck ] && env+=(CUDAGRAPH_GEMM=${RACECHECK_GEMM:-builtin})
  echo "compute-sanitizer $tool: ${env[*]} gpu-tests $*" >"$out/sanitizer-$tag.log"
  local start=$SECONDS
  env "${env[@]}" timeout "${SANITIZER_TIMEOUT:-3000}" compute-sanitizer --tool "$tool" --target-processes all \
    --report-api-errors no --error-exitcode 9 "$here/gpu-tests" --test-threads=1 "$@" \
    >>"$out/sanitizer-$tag.log" 2>&1
  local rc=$?
  echo "compute-sanitizer $tool ($tag): exit $rc in $((SECONDS - start)) s; $(grep -E '^test result' "$out/sanitizer-$tag.log" | tail -n1); $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer-$tag.log" | sort | uniq -c | tr -s ' ' | paste -sd ';')"
  status=$((status | rc))
}
case "$what" in
  sanitize) shift; sanitize memcheck "$@"; sanitize racecheck "$@" ;;
  all) sanitize memcheck; sanitize racecheck ;;
  memcheck|racecheck) shift; sanitize "$what" "$@" ;;
esac
exit $status
