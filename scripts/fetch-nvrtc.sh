#!/usr/bin/env bash
# Fetches NVRTC from PyPI (no CUDA toolkit or GPU needed) into target/nvrtc and prints the folder
# holding libnvrtc.so.13, so CPU-only machines (CI) can compile every kernel module with NVRTC.
# Prints nothing and exits 0 when it can't (the NVRTC test then skips, saying so).
set -uo pipefail
cd "$(dirname "$0")/.."
dest=target/nvrtc
lib=$(find "$dest" -name libnvrtc.so.13 2>/dev/null | head -n1)
if [ -z "$lib" ]; then
  mkdir -p "$dest"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dest" "nvidia-cuda-nvrtc==13.5.37" >&2 || exit 0
  (cd "$dest" && python3 -m zipfile -e nvidia_cuda_nvrtc-*.whl unpacked >&2) || exit 0
  lib=$(find "$dest" -name libnvrtc.so.13 2>/dev/null | head -n1)
fi
[ -n "$lib" ] && dirname "$(readlink -f "$lib")"
exit 0
