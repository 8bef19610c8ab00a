#!/usr/bin/env bash
# Issue 5's benchmarks, on the GPU machine, from the repository root (about 5 minutes on an H100):
#
#   bash scripts/bench.sh
#
# Needs gpu-bundle/ (built here by scripts/gpu.sh: decode_bench, driver_floor, run.sh) and a
# python3 with torch (CUDA). With the device tool: `bash scripts/bench.sh`, carry ["gpu-bundle"].
# Writes into $OUT (the device tool's output folder), else ./bench-out:
#   ours.json, ours_second.json   decode_bench --json, twice (the second start finds the kernel
#                                 cache warm)
#   floor.json                    driver_floor --json
#   torch_default.json, torch_gc.json   benches/peer_torch.py --mode default | gc, fresh processes
#   torch_vllm.json, torch_default_hf.json   extras, run only while time is left
#   results/<gpu-slug>.json, README.md    benches/report.py's merge and tables: copy them into
#                                 bench/results/ and bench/README.md
#   *.log, device.txt
# Environment: BUNDLE (default gpu-bundle), BENCH_BUDGET_S (default 330: extras start only while
# at least 60 s of it are left), BENCH_SECOND_ARGS (decode_bench's arguments for the second start,
# default "--iters 5 --batches 1": it is there for its start-up figures).
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${BUNDLE:-gpu-bundle}
out=${OUT:-$PWD/bench-out}
budget=${BENCH_BUDGET_S:-330}
read -r -a second_args <<<"${BENCH_SECOND_ARGS:---iters 5 --batches 1}"
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
status=0

# NVRTC and cuBLAS of CUDA 13 for our binaries, found as scripts/gpu-run.sh finds them (the
# toolkit's, else copies under /usr/lib or /opt), else the pip wheels' copies next to torch.
# Only our binaries get this LD_LIBRARY_PATH: torch keeps loading its own wheels' libraries.
ours_ld=${LD_LIBRARY_PATH:-}
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
for lib in libnvrtc.so.13 libcublas.so.13; do
  dir=$(dirname "$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" 2>/dev/null | head -n1)" 2>/dev/null)
  if { [ -z "$dir" ] || [ "$dir" = . ]; } && [ -n "$site" ] && [ -d "$site/nvidia" ]; then
    dir=$(dirname "$(find "$site/nvidia" -name "$lib" 2>/dev/null | head -n1)" 2>/dev/null)
  fi
  [ -n "$dir" ] && [ "$dir" != . ] && ours_ld="$dir${ours_ld:+:$ours_ld}"
done

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tee -a "$out/device.txt"

# step NAME LIMIT_S CMD...: runs CMD with a time limit, its output in $out/NAME.log.
step() {
  local name=$1 limit=$2 t=$SECONDS rc
  shift 2
  echo "== $name: $*"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "   $name: exit $rc after $((SECONDS - t)) s"
  if [ $rc -ne 0 ]; then
    status=1
    tail -n 15 "$out/$name.log" | sed 's/^/   | /'
  fi
  return $rc
}
# ours NAME LIMIT_S BIN ARGS...: one of our binaries, with its LD_LIBRARY_PATH.
ours() {
  local name=$1 limit=$2 bin=$3
  shift 3
  if [ ! -x "$bundle/$bin" ]; then
    echo "== $name: $bundle/$bin is missing (build it with scripts/gpu.sh)"
    status=1
    return 1
  fi
  step "$name" "$limit" env LD_LIBRARY_PATH="$ours_ld" "$bundle/$bin" "$@"
}

# First start with an empty kernel cache, second start with the cache the first one filled.
export CUDAGRAPH_CACHE_DIR="$out/kernel-cache.$$"
rm -rf "$CUDAGRAPH_CACHE_DIR"
ours decode_bench 150 decode_bench --json "$out/ours.json"
ours decode_bench_second 120 decode_bench --json "$out/ours_second.json" "${second_args[@]}"
# The floor for our node count: the kernel nodes of our batch-1 graph, when decode_bench said.
nodes=$(python3 -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["kernels_per_forward"]))' \
  "$out/ours.json" 2>/dev/null || true)
ours driver_floor 90 driver_floor --json "$out/floor.json" ${nodes:+--nodes "$nodes"}
step torch_default 150 python3 benches/peer_torch.py --mode default --out "$out/torch_default.json"
step torch_gc 150 python3 benches/peer_torch.py --mode gc --out "$out/torch_gc.json"

extras=()
if [ $((SECONDS + 60)) -le "$budget" ]; then
  step torch_vllm 90 python3 benches/peer_torch.py --mode vllm --out "$out/torch_vllm.json" &&
    extras+=(--torch-extra "$out/torch_vllm.json")
else
  echo "== torch_vllm: skipped (${SECONDS} s of a ${budget} s budget used)"
fi
if [ $((SECONDS + 60)) -le "$budget" ]; then
  step torch_default_hf 90 python3 benches/peer_torch.py --mode default --kv-layout hf \
    --out "$out/torch_default_hf.json" && extras+=(--torch-extra "$out/torch_default_hf.json")
else
  echo "== torch_default_hf: skipped (${SECONDS} s of a ${budget} s budget used)"
fi

# The report keeps bench/README.md's text around its results section.
[ -f bench/README.md ] && cp bench/README.md "$out/README.md"
python3 benches/report.py \
  --ours "$out/ours.json" --ours-second "$out/ours_second.json" --floor "$out/floor.json" \
  --torch-default "$out/torch_default.json" --torch-gc "$out/torch_gc.json" \
  ${extras[@]+"${extras[@]}"} --device-txt "$out/device.txt" \
  --results-dir "$out/results" --readme "$out/README.md" || status=1
echo "bench: done in ${SECONDS} s, exit $status; copy $out/results/*.json to bench/results/ and $out/README.md to bench/README.md"
exit $status
