#!/usr/bin/env bash
# Builds everything the GPU machine runs (it has no Rust toolchain) into gpu-bundle/ (ignored by
# git), and prints the one command that runs it there.
#
#   scripts/gpu.sh            build the bundle
#   then, on the GPU machine: bash gpu-bundle/run.sh [tests|bench|sanitize|all]
#   (or bash gpu-bundle/lt-gpu-run.sh: issue 15's cuBLASLt measurements, bench/NOTES.md lever 7)
#   (with the device tool: run `bash gpu-bundle/run.sh all` with carry ["gpu-bundle"]).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle
rm -rf "$bundle" && mkdir -p "$bundle"

echo "building release binaries ..." >&2
cargo build --release --examples --quiet
test_bin=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" and m.get("executable"):
        print(m["executable"])')
[ -n "$test_bin" ] || { echo "no GPU test binary built" >&2; exit 1; }
cp "$test_bin" "$bundle/gpu-tests"
for ex in decode_bench driver_floor cudarc_mlp quickstart islands serve_bench; do cp "target/release/examples/$ex" "$bundle/"; done
[ -d benches/peer ] && cp -r benches/peer "$bundle/" || true
cp scripts/gpu-run.sh "$bundle/run.sh"
cp scripts/lt-gpu-run.sh "$bundle/"
cp scripts/hf_check.py "$bundle/"
strip "$bundle"/gpu-tests "$bundle"/decode_bench "$bundle"/driver_floor "$bundle"/cudarc_mlp "$bundle"/quickstart "$bundle"/islands "$bundle"/serve_bench 2>/dev/null || true
# The candle backend's GPU tests: a second test binary built with candle's `cuda` feature (nvcc
# from scripts/cuda-toolchain.sh), compressed (candle's kernels make it ~45 MB). Skipped with
# CUDAGRAPH_SKIP_CANDLE=1.
if [ "${CUDAGRAPH_SKIP_CANDLE:-0}" != 1 ]; then
  echo "building the candle GPU tests (first build: ~10 min of nvcc) ..." >&2
  # A fresh clone has no target/candle yet: the path file below is written into it.
  mkdir -p target/candle
  (
    eval "$(scripts/cuda-toolchain.sh)"
    cargo test --release --no-default-features --features cuda-13000,candle-transformers \
      --target-dir target/candle --test gpu --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" and m.get("executable"):
        print(m["executable"])' >target/candle/gpu-test-path
  )
  candle_bin=$(cat target/candle/gpu-test-path)
  [ -n "$candle_bin" ] || { echo "no candle GPU test binary built" >&2; exit 1; }
  cp "$candle_bin" "$bundle/gpu-tests-candle"
  strip "$bundle/gpu-tests-candle" 2>/dev/null || true
  xz -T0 -6 "$bundle/gpu-tests-candle"
fi
du -sh "$bundle" >&2
echo "bundle ready: on the GPU machine run: bash $bundle/run.sh all" >&2
