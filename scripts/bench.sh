#!/usr/bin/env bash
# Issues 15's and 5's benchmarks, on the GPU machine, from the repository root, within one device
# command (the device tool allows 600 s; BENCH_BUDGET_S keeps the whole script under it):
#
#   bash scripts/bench.sh
#
# Needs gpu-bundle/ (built here by scripts/gpu.sh: decode_bench, driver_floor, run.sh) and a
# python3 with torch (CUDA). With the device tool: `bash scripts/bench.sh`, carry ["gpu-bundle"].
# Order: the required steps first, then extras while the budget allows:
#   ours.json, ours_second.json   decode_bench --json, twice (the second start finds the kernel
#                                 cache warm)
#   serve_start.json              decode_bench --serve-start (issue 29's start-up figures)
#   floor.json                    driver_floor --json, for our node count
#   torch_compile.json            benches/peer_torch.py --mode compile --peer strong (issue 29's
#                                 peer; cold Inductor cache, so it is the longest step)
#   torch_default.json            benches/peer_torch.py --mode default (issue 5's peer)
#   torch_gc.json, torch_compile_plain.json (issue 15's compiled peer), torch_vllm.json,
#   torch_default_hf.json         extras, each only while the budget
#                                 still has room for it
#   results/<gpu-slug>.json, README.md    benches/report.py's merge and tables: copy them into
#                                 bench/results/ and bench/README.md
#   *.log, device.txt
# Every step's time limit is cut to what the budget has left (less a reserve for the report), so
# the report always runs. Environment: BUNDLE (default gpu-bundle), OUT (default ./bench-out),
# BENCH_BUDGET_S (default 560), BENCH_SECOND_ARGS (decode_bench's arguments for the second start,
# default "--iters 5 --batches 1": it is there for its start-up and capture figures).
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${BUNDLE:-gpu-bundle}
out=${OUT:-$PWD/bench-out}
budget=${BENCH_BUDGET_S:-560}
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

# Seconds kept back for the report and for `timeout --kill-after` of the step running last.
reserve=25
# limit WANT_S: WANT_S, or less when the budget has less left (0: no time left).
limit() {
  local left=$((budget - reserve - SECONDS))
  if [ "$left" -lt 10 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# step NAME WANT_S CMD...: runs CMD with a time limit (WANT_S, cut to the budget), its output in
# $out/NAME.log. A required step that finds no time left fails the script.
step() {
  local name=$1 want=$2 t=$SECONDS rc lim
  shift 2
  lim=$(limit "$want")
  if [ "$lim" -eq 0 ]; then
    echo "== $name: not run, no time left (${SECONDS} s of a ${budget} s budget used)"
    status=1
    return 1
  fi
  echo "== $name (limit ${lim} s): $*"
  timeout --kill-after=10 "$lim" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "   $name: exit $rc after $((SECONDS - t)) s"
  if [ $rc -ne 0 ]; then
    status=1
    tail -n 15 "$out/$name.log" | sed 's/^/   | /'
  fi
  return $rc
}
# ours NAME WANT_S BIN ARGS...: one of our binaries, with its LD_LIBRARY_PATH.
ours() {
  local name=$1 want=$2 bin=$3
  shift 3
  if [ ! -x "$bundle/$bin" ]; then
    echo "== $name: $bundle/$bin is missing (build it with scripts/gpu.sh)"
    status=1
    return 1
  fi
  step "$name" "$want" env LD_LIBRARY_PATH="$ours_ld" "$bundle/$bin" "$@"
}
# extra NAME NEED_S WANT_S JSON ARGS...: an optional peer run, started only when at least NEED_S
# of the budget are left; succeeds when its JSON was written (the caller then passes it on).
extra() {
  local name=$1 need=$2 want=$3 json=$4
  shift 4
  if [ $((SECONDS + need + reserve)) -gt "$budget" ]; then
    echo "== $name: skipped (${SECONDS} s of a ${budget} s budget used; it needs about ${need} s)"
    return 1
  fi
  step "$name" "$want" python3 benches/peer_torch.py "$@" --out "$json"
}

# First start with an empty kernel cache, second start with the cache the first one filled.
export CUDAGRAPH_CACHE_DIR="$out/kernel-cache.$$"
rm -rf "$CUDAGRAPH_CACHE_DIR"
ours decode_bench 150 decode_bench --growth --json "$out/ours.json"
ours decode_bench_second 120 decode_bench --json "$out/ours_second.json" "${second_args[@]}"
# Issue 29's start-up: main() to the first served forward with background capture, and to all
# graphs live, in a third process (kernel cache and GEMM algorithms on disk: a second start).
ours serve_start 40 decode_bench --serve-start --json "$out/serve_start.json"
# The floor for our node count: the kernel nodes of our batch-1 graph, when decode_bench said.
nodes=$(python3 -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["kernels_per_forward"]))' \
  "$out/ours.json" 2>/dev/null || true)
ours driver_floor 90 driver_floor --json "$out/floor.json" ${nodes:+--nodes "$nodes"}
# Required peers: torch.compile (issue 15; a cold compile, the longest step), then the default.
# The compiled peer is the strong one (issue 29: F.rms_norm, fused RoPE, SDPA over grouped
# queries, the cache as [slots, kv_heads, T, head_dim]); the plain one it replaced is an extra.
step torch_compile 300 python3 benches/peer_torch.py --mode compile --peer strong --out "$out/torch_compile.json"
step torch_default 150 python3 benches/peer_torch.py --mode default --out "$out/torch_default.json"

gc_arg=()
extras=()
extra torch_gc 70 120 "$out/torch_gc.json" --mode gc && gc_arg=(--torch-gc "$out/torch_gc.json")
extra torch_compile_plain 150 300 "$out/torch_compile_plain.json" --mode compile &&
  extras+=(--torch-extra "$out/torch_compile_plain.json")
extra torch_vllm 60 90 "$out/torch_vllm.json" --mode vllm && extras+=(--torch-extra "$out/torch_vllm.json")
extra torch_default_hf 60 90 "$out/torch_default_hf.json" --mode default --kv-layout hf &&
  extras+=(--torch-extra "$out/torch_default_hf.json")

# The report keeps bench/README.md's text around its results section.
[ -f bench/README.md ] && cp bench/README.md "$out/README.md"
python3 benches/report.py \
  --ours "$out/ours.json" --ours-second "$out/ours_second.json" --floor "$out/floor.json" \
  --torch-compile "$out/torch_compile.json" --torch-default "$out/torch_default.json" \
  --serve-start "$out/serve_start.json" \
  ${gc_arg[@]+"${gc_arg[@]}"} ${extras[@]+"${extras[@]}"} --device-txt "$out/device.txt" \
  --results-dir "$out/results" --readme "$out/README.md" || status=1
echo "bench: done in ${SECONDS} s, exit $status; copy $out/results/*.json to bench/results/ and $out/README.md to bench/README.md"
exit $status
