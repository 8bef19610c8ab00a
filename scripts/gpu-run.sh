#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there): the GPU test suite, the decode benchmark, and the
# suite under compute-sanitizer. Logs go to $OUT (the device tool's output folder) or ./gpu-out.
#   bash gpu-bundle/run.sh [tests|bench|sanitize|all|hf|tp]
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
  "$here/gpu-tests" --test-threads=1 --nocapture 2>&1 | tee "$out/tests.log"; status=$((status | PIPESTATUS[0]))
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  "$here/decode_bench" 2>&1 | tee "$out/decode_bench.log"; status=$((status | PIPESTATUS[0]))
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
if [ "$what" = sanitize ] || [ "$what" = all ]; then
  for tool in memcheck racecheck; do
    # API errors are not reported: the reliability tests provoke them on purpose (an allocation,
    # a host copy, a free during capture, an out-of-memory) and check each is handled.
    # racecheck (shared-memory hazards) is slow: it runs the kernel tests, where every kernel
    # that uses shared memory is checked against its reference; memcheck runs the whole suite.
    # The tensor-parallel tests stay out: the sanitizer serializes kernels, and an NCCL kernel
    # waits for its peer on the other GPU.
    filter=(--skip tp::)
    # (RACECHECK_ALL=1: racecheck over the whole suite too; it takes minutes.)
    [ "$tool" = racecheck ] && [ "${RACECHECK_ALL:-0}" != 1 ] && filter=(kernels:: qk_norm_rope_matches_reference)
    compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 "$here/gpu-tests" --test-threads=1 ${filter[@]+"${filter[@]}"} \
      >"$out/sanitizer-$tool.log" 2>&1; rc=$?
    echo "compute-sanitizer $tool: exit $rc; $(grep -E 'ERROR SUMMARY' "$out/sanitizer-$tool.log" | tail -n1)"
    status=$((status | rc))
  done
fi
exit $status
