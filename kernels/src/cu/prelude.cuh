// Common prelude of every kernel module: concatenated in front of each module's source.
//
// NVRTC runs here without any include path, so this file (and every module) includes no
// header at all: bf16 is handled as raw bits, and only compiler built-ins are used
// (__float_as_uint, __shfl_xor_sync, expf, sincosf, ...). All arithmetic is done in f32.

typedef unsigned short bf16_t;

// bf16 -> f32: the bf16 bits are the top half of the f32 bits (exact).
__device__ __forceinline__ float bf2f(bf16_t v) {
    return __uint_as_float(((unsigned int)v) << 16);
}

// f32 -> bf16, round to nearest, ties to even. Any NaN becomes the canonical quiet NaN 0x7FC0.
// Mirrored on the host by `reference::f32_to_bf16_bits`.
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16_t)0x7FC0u;
    }
    unsigned int rounding_bias = 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)((u + rounding_bias) >> 16);
}

// The 8 floats of 8 packed bf16 (element 0 in the low half of .x, little-endian).
__device__ __forceinline__ void unpack_bf16x8(uint4 w, float* f) {
    f[0] = __uint_as_float(w.x << 16); f[1] = __uint_as_float(w.x & 0xffff0000u);
    f[2] = __uint_as_float(w.y << 16); f[3] = __uint_as_float(w.y & 0xffff0000u);
    f[4] = __uint_as_float(w.z << 16); f[5] = __uint_as_float(w.z & 0xffff0000u);
    f[6] = __uint_as_float(w.w << 16); f[7] = __uint_as_float(w.w & 0xffff0000u);
}

// -infinity without math.h.
__device__ __forceinline__ float neg_inf_f32() {
    return __uint_as_float(0xff800000u);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Sum of `v` over the whole block; every thread gets the result.
// Requirements: blockDim.x is a multiple of 32 (at most 1024), every thread of the block calls
// it (no thread has returned), and `scratch` is a __shared__ array of at least 32 floats.
// Safe to call repeatedly with the same scratch: it synchronizes before overwriting it.
__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    float total = (lane < num_warps) ? scratch[lane] : 0.0f;
    return warp_sum(total);
}

// Maximum of `v` over the whole block; same requirements as block_sum.
__device__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    float total = (lane < num_warps) ? scratch[lane] : neg_inf_f32();
    return warp_max(total);
}

// Index of this thread in a 1-D grid, and the grid's total thread count (64-bit: no overflow).
__device__ __forceinline__ unsigned long long global_thread_index() {
    return (unsigned long long)blockIdx.x * (unsigned long long)blockDim.x
        + (unsigned long long)threadIdx.x;
}

__device__ __forceinline__ unsigned long long grid_thread_count() {
    return (unsigned long long)gridDim.x * (unsigned long long)blockDim.x;
}


// Programmatic dependent launch (sm_90+; no-ops before, and when a kernel was launched without
// the attribute). A kernel launched with programmatic stream serialization may start while the
// kernel before it in the stream is still running:
//   PDL_LAUNCH_DEPENDENTS(): lets the next kernel launch now (it still waits, below, for this
//                            one to finish before touching memory);
//   PDL_WAIT():              waits until the previous kernel has completed and its memory is
//                            visible. Every kernel calls it before its first memory access of
//                            any kind: any buffer, weights included, may have been written by the
//                            kernel just before (a weight update is a kernel like any other).
// So what overlaps is the launch and the scheduling of a kernel's blocks, never a memory access.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
#define PDL_LAUNCH_DEPENDENTS() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define PDL_LAUNCH_DEPENDENTS()
#define PDL_WAIT()
#endif
