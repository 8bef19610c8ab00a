#!/usr/bin/env bash
# Issue 15 (GEMMs through cuBLASLt, algorithms on disk): the measurements of bench/NOTES.md
# lever 7, on the GPU machine, from the bundle (scripts/gpu.sh copies this file into it). Logs
# go to $OUT (at most 8 files):
#   bash gpu-bundle/lt-gpu-run.sh [suite]     (`suite`: also the whole GPU suite at the end)
# the cuBLASLt tests and measurements (gemm_lt::, ignored ones included), decode_bench in two
# fresh processes sharing one empty CUDAGRAPH_CACHE_DIR and in a third with cublasGemmEx
# (CUDAGRAPH_CUBLASLT=off), the driver floor for the same node count (3 times).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/../gpu-out}
mkdir -p "$out"
export CUDAGRAPH_REQUIRE_GPU=1 NCCL_NVLS_ENABLE=0
for lib in libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13; do
  dir=$(dirname "$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" 2>/dev/null | head -n1)" 2>/dev/null)
  [ -n "$dir" ] && [ "$dir" != . ] && export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
ls -l $(echo "${LD_LIBRARY_PATH:-}" | tr : ' ') 2>/dev/null | grep -i 'cublas.*\.so\.' | sort -u | tee -a "$out/device.txt"
t0=$SECONDS
stamp() { echo "[lt-gpu-run] $* at +$((SECONDS - t0)) s"; }
d1=$(mktemp -d) d2=$(mktemp -d)
stamp "gemm_lt tests and measurements"
CUDAGRAPH_CACHE_DIR=$d1 timeout 240 "$here/gpu-tests" --test-threads=1 --nocapture --include-ignored gemm_lt:: \
  >"$out/gemm_lt.log" 2>&1; echo "exit $?" >>"$out/gemm_lt.log"
stamp "decode_bench, first process (empty cache folder)"
for tag in first second; do
  CUDAGRAPH_CACHE_DIR=$d2 timeout 120 "$here/decode_bench" --iters 5 --batches 1 >"$out/decode_bench-$tag.log" 2>&1
  echo "exit $?" >>"$out/decode_bench-$tag.log"
  stamp "decode_bench $tag done"
done
CUDAGRAPH_CACHE_DIR=$d2 CUDAGRAPH_CUBLASLT=off timeout 120 "$here/decode_bench" --iters 5 --batches 1 \
  >"$out/decode_bench-gemmex.log" 2>&1; echo "exit $?" >>"$out/decode_bench-gemmex.log"
stamp "decode_bench gemmex done"
cp "$d2"/gemm-algos-*.txt "$out/" 2>/dev/null
nodes=$(grep -o '[0-9]* kernel nodes at batch 1' "$out/decode_bench-first.log" | grep -o '^[0-9]*')
for i in 1 2 3; do
  CUDAGRAPH_CACHE_DIR=$d2 timeout 60 "$here/driver_floor" --nodes "${nodes:-284}" >>"$out/driver_floor.log" 2>&1
done
stamp "driver floor done (nodes ${nodes:-284})"
if [ "${1:-}" = suite ]; then
  CUDAGRAPH_CACHE_DIR=$d1 timeout "${SUITE_TIMEOUT:-200}" "$here/gpu-tests" --test-threads=1 >"$out/suite.log" 2>&1
  echo "exit $?" >>"$out/suite.log"
  stamp "suite done"
fi
grep -E "^test result|FAILED|panicked" "$out"/gemm_lt.log "$out"/suite.log 2>/dev/null | head -20
grep -hE "^captured|^GEMM algorithms|^start-up" "$out"/decode_bench-*.log
tail -n 3 "$out/driver_floor.log"
