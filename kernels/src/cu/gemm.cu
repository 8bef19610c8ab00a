
// ---------------------------------------------------------------------------------------------
// Built-in GEMM: y[r, o] = sum_k x[r, k] * w[o, k] (a linear layer, w in PyTorch's [out, in]
// layout), bf16 in and out, f32 accumulation rounded once.
//
// The portable alternative to cuBLAS (`GemmBackend::Builtin`): no tensor cores and no shared
// memory, so it needs no library beyond NVRTC and every access it makes is a plain global
// load or store. Each warp computes a tile of GEMM_ROWS rows x GEMM_OUTS outputs; its lanes
// split the k dimension (8 elements per 16-byte load on the vector path), and the partial sums
// meet through warp shuffles. A block is GEMM_WARPS warps side by side along the outputs.
//
// Grid: x = row tiles (fastest, so the blocks resident together share their weight rows and
// those come from L2), y = blocks of GEMM_WARPS * GEMM_OUTS outputs. `vec` = 1 when
// in % 8 == 0 and x, w are 16-byte aligned (checked by the launcher).
// ---------------------------------------------------------------------------------------------

#define GEMM_ROWS 4
#define GEMM_OUTS 4
#define GEMM_WARPS 8

extern "C" __global__ void linear_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                       bf16_t* __restrict__ y, int rows, int outs, int in,
                                       int vec) {
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int r0 = blockIdx.x * GEMM_ROWS;
    const long long o0 = ((long long)blockIdx.y * GEMM_WARPS + warp) * GEMM_OUTS;
    if (o0 >= outs) {
        return;  // the whole warp: no block-wide synchronization below
    }
    // Rows and outputs past the end read the last valid one (in bounds) and are not written.
    const bf16_t* xr[GEMM_ROWS];
    const bf16_t* wr[GEMM_OUTS];
#pragma unroll
    for (int i = 0; i < GEMM_ROWS; ++i) {
        xr[i] = x + (size_t)min(r0 + i, rows - 1) * in;
    }
#pragma unroll
    for (int j = 0; j < GEMM_OUTS; ++j) {
        wr[j] = w + (size_t)min(o0 + j, (long long)outs - 1) * in;
    }
    float acc[GEMM_ROWS][GEMM_OUTS];
#pragma unroll
    for (int i = 0; i < GEMM_ROWS; ++i) {
#pragma unroll
        for (int j = 0; j < GEMM_OUTS; ++j) {
            acc[i][j] = 0.0f;
        }
    }
    if (vec) {
        for (int k = lane * 8; k < in; k += 32 * 8) {
            float xf[GEMM_ROWS][8];
#pragma unroll
            for (int i = 0; i < GEMM_ROWS; ++i) {
                unpack_bf16x8(*reinterpret_cast<const uint4*>(xr[i] + k), xf[i]);
            }
#pragma unroll
            for (int j = 0; j < GEMM_OUTS; ++j) {
                float wf[8];
                unpack_bf16x8(*reinterpret_cast<const uint4*>(wr[j] + k), wf);
#pragma unroll
                for (int i = 0; i < GEMM_ROWS; ++i) {
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        acc[i][j] = fmaf(xf[i][e], wf[e], acc[i][j]);
                    }
                }
            }
        }
    } else {
        for (int k = lane; k < in; k += 32) {
            float xf[GEMM_ROWS];
#pragma unroll
            for (int i = 0; i < GEMM_ROWS; ++i) {
                xf[i] = bf2f(xr[i][k]);
            }
#pragma unroll
            for (int j = 0; j < GEMM_OUTS; ++j) {
                const float wv = bf2f(wr[j][k]);
#pragma unroll
                for (int i = 0; i < GEMM_ROWS; ++i) {
                    acc[i][j] = fmaf(xf[i], wv, acc[i][j]);
                }
            }
        }
    }
    // Every lane ends with every sum; lane i * GEMM_OUTS + j writes output (r0 + i, o0 + j).
#pragma unroll
    for (int i = 0; i < GEMM_ROWS; ++i) {
#pragma unroll
        for (int j = 0; j < GEMM_OUTS; ++j) {
            const float sum = warp_sum(acc[i][j]);
            const int r = r0 + i;
            const long long o = o0 + j;
            if (lane == i * GEMM_OUTS + j && r < rows && o < outs) {
                y[(size_t)r * outs + o] = f2bf(sum);
            }
        }
    }
}
