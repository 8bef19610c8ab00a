#!/usr/bin/env bash
# cuda-toolchain.sh: a CUDA build toolchain for machines with no GPU and no CUDA toolkit (CI,
# developers' machines), built from PyPI wheels, so that crates which *link* against CUDA
# (candle-core's `cuda` feature: cudarc `dynamic-linking` + candle-kernels compiled by nvcc)
# build, link and start their test binaries here.
#
#   eval "$(scripts/cuda-toolchain.sh)"      # then cargo build / cargo test as usual
#
# What it does (idempotent: the second run only checks a stamp and prints the exports):
#   1. downloads a few NVIDIA wheels from PyPI (`pip download --no-deps`) and unpacks them into
#      one CUDA-like tree  $CACHE/cuda-<ver>/{bin,nvvm,include,lib}:
#        nvidia-cuda-nvcc    nvcc, ptxas, fatbinary, nvlink, cudafe++      (candle-kernels' build)
#        nvidia-nvvm         nvvm/bin/cicc + libdevice: nvcc's device front end
#        nvidia-cuda-crt     include/crt/*.h (host_config.h, ...): nvcc includes them for every .cu
#        nvidia-cuda-runtime include/cuda_runtime.h, cuda.h, cuda_fp16/bf16/fp8.h and the real
#                            lib/libcudart.so.13 (candle-kernels links `-lcudart` for its libmoe.a)
#        nvidia-cuda-cccl    include/cccl/{cuda/std,thrust,cub}: reduce.cu uses <cuda/std/limits>,
#                            the MoE kernels thrust
#      The big ones (cuBLAS ~0.5 GB, cuRAND, NVRTC, NCCL) are NOT downloaded: linking only needs a
#      library with the right SONAME that defines the symbols, so they get stubs (step 2).
#   2. generates stub shared libraries in $CACHE/cuda-<ver>/lib/stubs for every library that
#      cudarc's `dynamic-linking` puts on the link line (-lcuda -lnvrtc -lcurand -lcublas
#      -lcublasLt -lnccl). Each stub defines every function that cudarc's sys bindings declare
#      (read from cudarc's source in the cargo registry) and returns that library's "not
#      available" status: CUDA_ERROR_STUB_LIBRARY (34) for the driver, NVRTC_ERROR_INTERNAL_ERROR,
#      CUBLAS_STATUS_NOT_INITIALIZED, CURAND_STATUS_INITIALIZATION_FAILED, ncclSystemError; string
#      getters return a static "stub" string. Every stub carries the SONAME of the real CUDA 13
#      library (libcuda.so.1, libnvrtc.so.13, libcurand.so.10, libcublas.so.13,
#      libcublasLt.so.13, libnccl.so.2), so binaries linked here need exactly the libraries a CUDA
#      13 machine has, and resolve to the real ones there.
#   3. prints `export` lines (stdout; all chatter goes to stderr) for the caller to eval.
#
# Why CUDA 13.0.x and not the newest wheels: candle loads its kernels as PTX, which the *driver*
# JIT-compiles. PTX from nvcc 13.N carries PTX ISA 9.N, and a driver only accepts PTX ISA up to
# its own CUDA version (CUDA_ERROR_UNSUPPORTED_PTX_VERSION otherwise). The GPU machine runs
# driver 580 (CUDA 13.0) with toolkit 13.0.88, so nvcc is pinned to 13.0.88. It also makes
# cudarc's `cuda-version-from-build-system` (which parses `nvcc --version`) pick cuda-13000.
#
# Linking needs nothing else; the run-time side differs per machine: here LD_LIBRARY_PATH gets the
# stubs (+ the real libcudart), on a GPU machine the binary finds the real libraries through
# ldconfig (/usr/local/cuda/targets/x86_64-linux/lib, /usr/local/nvidia/lib64, libnccl in
# /lib/x86_64-linux-gnu there). Note: candle-kernels' build (nvcc for ~30 .cu files, its
# mmq_*.cu take about a minute each) takes ~9 minutes on 2 cores, once per profile and target dir.
#
# Environment knobs:
#   CUDAGRAPH_TOOLCHAIN_DIR   cache folder (default ~/.cache/cudagraph-cuda-toolchain)
#   CUDAGRAPH_CUDA_COMPUTE_CAP  compute capability for nvcc (default 90: H100/H200 -> sm_90a)
#   CUDAGRAPH_STUBS_ON_LD_PATH  1/0: put the stubs on LD_LIBRARY_PATH (default: 1 unless this
#                             machine has a real libcuda.so.1 / an NVIDIA device, where the stubs
#                             would shadow the real driver)
#   CUDAGRAPH_REAL_NVRTC=1    use the real libnvrtc.so.13 (nvidia-cuda-nvrtc wheel, ~90 MB)
#                             instead of the NVRTC stub, for tests that compile kernels with NVRTC
#                             on a CPU-only machine
#   CUDARC_SRC                cudarc's source folder (default: found in the cargo registry)
set -euo pipefail

log() { echo "cuda-toolchain: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- pinned versions (all CUDA 13.0.x, see above) ----------------------------------------------
NVCC_VERSION=13.0.88      # nvidia-cuda-nvcc
NVVM_VERSION=13.0.88      # nvidia-nvvm
CRT_VERSION=13.0.88       # nvidia-cuda-crt
CUDART_VERSION=13.0.96    # nvidia-cuda-runtime
CCCL_VERSION=13.0.85      # nvidia-cuda-cccl
NVRTC_VERSION=13.0.88     # nvidia-cuda-nvrtc, only with CUDAGRAPH_REAL_NVRTC=1
CUDARC_VERSION_DEFAULT=0.19.10

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${CUDAGRAPH_TOOLCHAIN_DIR:-$HOME/.cache/cudagraph-cuda-toolchain}
compute_cap=${CUDAGRAPH_CUDA_COMPUTE_CAP:-90}
real_nvrtc=${CUDAGRAPH_REAL_NVRTC:-0}
python=$(command -v python3.11 || command -v python3) || die "python3 with pip is needed"
command -v gcc >/dev/null || die "gcc is needed (stub libraries; nvcc's host compiler)"
command -v g++ >/dev/null || die "g++ is needed (nvcc's host compiler)"

# ---- cudarc's source: the stubs define exactly the functions its sys bindings declare ----------
find_cudarc() {
  local reg="${CARGO_HOME:-$HOME/.cargo}/registry/src" ver
  # the version the project's lock file resolved, else the one this script was written for
  ver=$(awk '/^name = "cudarc"/{getline; gsub(/[" ]/,""); sub(/^version=/,""); print; exit}' \
        "$repo/Cargo.lock" 2>/dev/null || true)
  ver=${ver:-$CUDARC_VERSION_DEFAULT}
  ls -d "$reg"/*/"cudarc-$ver" 2>/dev/null | head -n1 || true
}
cudarc_src=${CUDARC_SRC:-$(find_cudarc)}
if [ -z "$cudarc_src" ] || [ ! -d "$cudarc_src/src/driver/sys" ]; then
  # a fresh machine: let cargo download the crates of the project's lock file (nothing else)
  log "cudarc source not in the cargo registry yet: cargo fetch"
  cargo fetch --manifest-path "$repo/Cargo.toml" >&2 || die "cargo fetch failed"
  cudarc_src=$(find_cudarc)
fi
[ -d "${cudarc_src:-/nonexistent}/src/driver/sys" ] || die "cudarc source not found (set CUDARC_SRC)"
cudarc_ver=${cudarc_src##*/cudarc-}

# Everything that changes the output goes into the stamp, so a change rebuilds the tree.
key="nvcc=$NVCC_VERSION nvvm=$NVVM_VERSION crt=$CRT_VERSION cudart=$CUDART_VERSION"
key+=" cccl=$CCCL_VERSION cudarc=$cudarc_ver real_nvrtc=$real_nvrtc layout=2"
root="$cache/cuda-$NVCC_VERSION"
stamp="$root/.toolchain-stamp"

build_tree() {
  local tmp="$root.tmp.$$" wheels="$cache/wheels"
  rm -rf "$tmp" && mkdir -p "$tmp" "$wheels"
  trap "rm -rf '$tmp'" EXIT
  local specs=("nvidia-cuda-nvcc==$NVCC_VERSION" "nvidia-nvvm==$NVVM_VERSION"
               "nvidia-cuda-crt==$CRT_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION"
               "nvidia-cuda-cccl==$CCCL_VERSION")
  [ "$real_nvrtc" = 1 ] && specs+=("nvidia-cuda-nvrtc==$NVRTC_VERSION")

  # 1. wheels (kept in $cache/wheels, so a rebuild of the tree doesn't download them again)
  log "downloading ${specs[*]}"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$wheels" "${specs[@]}" >&2 || die "pip download failed"

  # Unpack every wheel's nvidia/cu13/ into one tree (that's the layout nvcc.profile expects:
  # bin/nvcc finds ../nvvm/bin/cicc, ../include and ../include/cccl). Skip what nothing uses:
  # libnvvm.so (cicc is static; ~63 MB), static/devrt archives, NVIDIA's scan metadata.
  log "unpacking into $root"
  "$python" - "$tmp" "$wheels" "${specs[@]}" <<'PY' || die "unpacking failed"
import glob, os, sys, zipfile
out, wheels, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
skip = ("lib/libnvvm.so", "lib/libcudart_static.a", "lib/libcudadevrt.a", ".metadata/",
        "lib/cmake/", "libnvrtc.alt.so", "libnvrtc-builtins.alt.so")
for spec in specs:
    name, ver = spec.split("==")
    [whl] = glob.glob(os.path.join(wheels, f"{name.replace('-', '_')}-{ver}-*.whl"))
    with zipfile.ZipFile(whl) as z:
        for m in z.infolist():
            if not m.filename.startswith("nvidia/cu13/") or m.is_dir():
                continue
            rel = m.filename[len("nvidia/cu13/"):]
            if any(s in rel for s in skip):
                continue
            dst = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(m) as src, open(dst, "wb") as f:
                f.write(src.read())
            # zip keeps Unix modes in the high bits of external_attr; wheels' may be plain 0644
            mode = (m.external_attr >> 16) & 0o777
            if rel.startswith(("bin/", "nvvm/bin/")) or mode & 0o111:
                os.chmod(dst, 0o755)
PY
  # The wheels ship only the versioned file (libcudart.so.13); `-lcudart` needs libcudart.so.
  ln -sfn libcudart.so.13 "$tmp/lib/libcudart.so"
  if [ "$real_nvrtc" = 1 ]; then ln -sfn libnvrtc.so.13 "$tmp/lib/libnvrtc.so"; fi

  # 2. stubs, generated from cudarc's sys bindings
  log "generating stub libraries from $cudarc_src"
  mkdir -p "$tmp/lib/stubs"
  "$python" - "$cudarc_src/src" "$tmp/lib/stubs" "$real_nvrtc" <<'PY' || die "stub generation failed"
import os, re, subprocess, sys
src, out, real_nvrtc = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
# library -> (cudarc sys module, SONAME of the real CUDA 13 library, status returned by the stub)
libs = {
    "cuda":     ("driver",   "libcuda.so.1",      34),   # CUDA_ERROR_STUB_LIBRARY
    "nvrtc":    ("nvrtc",    "libnvrtc.so.13",    11),   # NVRTC_ERROR_INTERNAL_ERROR
    "curand":   ("curand",   "libcurand.so.10",  203),   # CURAND_STATUS_INITIALIZATION_FAILED
    "cublas":   ("cublas",   "libcublas.so.13",    1),   # CUBLAS_STATUS_NOT_INITIALIZED
    "cublasLt": ("cublaslt", "libcublasLt.so.13",  1),   # CUBLAS_STATUS_NOT_INITIALIZED
    "nccl":     ("nccl",     "libnccl.so.2",       2),   # ncclSystemError
}
if real_nvrtc:
    del libs["nvrtc"]
# The declarations cudarc links against: `fn name(args) -> Ret;` inside `extern "C" { }` blocks
# (one per CUDA version variant; the stub defines the union, extra symbols are harmless).
decl = re.compile(r'^\s+fn (\w+)\((.*)\)(?: -> (.+))?;$')
for lib, (module, soname, status) in libs.items():
    fns = {}
    with open(os.path.join(src, module, "sys", "mod.rs")) as f:
        for line in f:
            m = decl.match(line)
            if m:
                fns.setdefault(m.group(1), (m.group(3) or "").strip())
    body = [f"/* generated by cuda-toolchain.sh from cudarc's {module} bindings: {len(fns)} functions */",
            "#include <stddef.h>",
            f'static const char stub_msg[] = "{soname} stub: no CUDA on this machine";']
    for name, ret in sorted(fns.items()):
        # The C ABI lets a callee ignore its arguments, so `(void)` is fine for every function.
        if name in ("cuGetErrorString", "cuGetErrorName"):
            # (CUresult, const char **out): answer, so that errors read "... stub ..."
            body.append(f"int {name}(int e, const char **s) {{ (void)e; if (s) *s = stub_msg; return 0; }}")
        elif ret == "":
            body.append(f"void {name}(void) {{}}")
        elif ret.startswith("*"):
            body.append(f"const char *{name}(void) {{ return stub_msg; }}")
        elif ret == "usize":
            body.append(f"size_t {name}(void) {{ return 0; }}")
        else:  # a status enum (#[repr(u32)]): return the value that says "not available"
            body.append(f"int {name}(void) {{ return {status}; }}")
    c = os.path.join(out, f"{lib}_stub.c")
    with open(c, "w") as f:
        f.write("\n".join(body) + "\n")
    so = os.path.join(out, soname)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-w", f"-Wl,-soname,{soname}", "-o", so, c],
                   check=True)
    os.symlink(soname, os.path.join(out, f"lib{lib}.so"))   # the name `-l{lib}` looks for
    print(f"  {soname}: {len(fns)} symbols", file=sys.stderr)
PY

  "$tmp/bin/nvcc" --version >/dev/null || die "the unpacked nvcc doesn't run"
  echo "$key" > "$tmp/.toolchain-stamp"
  rm -rf "$root" && mv "$tmp" "$root"
  trap - EXIT
}

if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ] || [ ! -x "$root/bin/nvcc" ]; then
  mkdir -p "$cache"
  build_tree
  log "toolchain ready in $root"
fi

# ---- should the stubs be on LD_LIBRARY_PATH? ---------------------------------------------------
# Binaries linked with cudarc `dynamic-linking` need libcuda.so.1 etc. just to start. Here that's
# the stubs (calls then fail with CUDA_ERROR_STUB_LIBRARY and CPU tests run). On a machine with a
# real driver the stubs would shadow it, so they stay off the run-time path there.
stubs_on_ld=${CUDAGRAPH_STUBS_ON_LD_PATH:-}
if [ -z "$stubs_on_ld" ]; then
  stubs_on_ld=1
  if [ -e /dev/nvidiactl ] || { command -v ldconfig >/dev/null &&
       ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; }; then
    stubs_on_ld=0
    log "a real CUDA driver is installed here: the stubs stay off LD_LIBRARY_PATH"
  fi
fi

# ---- exports ------------------------------------------------------------------------------------
q() { printf '%q' "$1"; }
echo "# CUDA $NVCC_VERSION toolchain from PyPI wheels + stub libraries ($root)"
# nvcc on PATH: candle-kernels' build (cudaforge) looks for $NVCC, then `nvcc` on PATH; cudarc's
# `cuda-version-from-build-system` runs `nvcc --version` when no cuda-NNNNN feature is set.
echo "export PATH=$(q "$root/bin"):\"\$PATH\""
echo "export NVCC=$(q "$root/bin/nvcc")"
# The toolkit root: cudarc's build.rs adds <root>/lib and <root>/lib/stubs (and lib64, ...) of
# every one of these that is set as link search paths; all four point here so that a stale value
# from the environment can't add another toolkit's libraries.
for v in CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR; do echo "export $v=$(q "$root")"; done
# CUDARC_CUDA_VERSION is deliberately not exported: cudarc's version comes from a cuda-NNNNN feature
# (cudagraph-runtime's `cuda-13000`) or, without one, from `nvcc --version` of the nvcc above (13.0
# -> cuda-13000); an exported value that disagrees with a feature would turn on two versions.
# cudaforge can't query a GPU here (nvidia-smi): it reads the compute capability from here.
# 90 becomes -gencode=arch=compute_90a,code=sm_90a (PTX and SASS for H100/H200 only).
echo "export CUDA_COMPUTE_CAP=$compute_cap"
# For the final link: -lcuda/-lcublas/... find the stubs, -lcudart the real libcudart.so.
echo "export LIBRARY_PATH=$(q "$root/lib:$root/lib/stubs")\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
if [ "$stubs_on_ld" = 1 ]; then
  # To start test binaries: they NEED libcuda.so.1, libcublas.so.13, ..., libcudart.so.13.
  echo "export LD_LIBRARY_PATH=$(q "$root/lib/stubs:$root/lib")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
fi
