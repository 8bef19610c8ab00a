#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there): the GPU test suite, the decode benchmark, and the
# suite under compute-sanitizer. Logs go to $OUT (the device tool's output folder) or ./gpu-out.
#   bash gpu-bundle/run.sh [tests|bench|sanitize|all|hf]
# `hf` (not part of `all`: it needs PyTorch and transformers) checks the Hugging Face loader
# against transformers with hf_check.py.
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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  "$here/gpu-tests" --test-threads=1 --nocapture 2>&1 | tee "$out/tests.log"; status=$((status | PIPESTATUS[0]))
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  "$here/decode_bench" 2>&1 | tee "$out/decode_bench.log"; status=$((status | PIPESTATUS[0]))
fi
if [ "$what" = hf ]; then
  python3 "$here/hf_check.py" "$here/decode_bench" --out "$out/hf" 2>&1 | tee "$out/hf_check.log"
  status=$((status | PIPESTATUS[0]))
fi
if [ "$what" = sanitize ] || [ "$what" = all ]; then
  for tool in memcheck racecheck; do
    # API errors are not reported: the reliability tests provoke them on purpose (an allocation,
    # a host copy, a free during capture, an out-of-memory) and check each is handled.
    # racecheck (shared-memory hazards) is slow: it runs the kernel tests, where every kernel
    # that uses shared memory is checked against its reference; memcheck runs the whole suite.
    filter=()
    [ "$tool" = racecheck ] && filter=(kernels:: qk_norm_rope_matches_reference)
    compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 "$here/gpu-tests" --test-threads=1 ${filter[@]+"${filter[@]}"} \
      >"$out/sanitizer-$tool.log" 2>&1; rc=$?
    echo "compute-sanitizer $tool: exit $rc; $(grep -E 'ERROR SUMMARY' "$out/sanitizer-$tool.log" | tail -n1)"
    status=$((status | rc))
  done
fi
exit $status
