
// ---------------------------------------------------------------------------------------------
// Small-batch linear layer (GEMV): y[r, o] = sum_k xin[r, k] * w[o, k] (+ bias[o]) for at most
// GEMV_MAX_ROWS rows, bf16 in and out, f32 accumulation rounded once (then once more after the
// bias, as an unfused GEMM + bias add rounds).
//
// Why our own kernel: a decode step at batch <= 8 is bound by reading the weights once. cuBLAS
// at m = 1 streams these shapes at about 1.35 TB/s on an H200 (issue 15), and it runs its
// heuristic the first time it sees each (m, n, k), which dominated a first capture. This kernel
// keeps many 16-byte weight loads in flight per lane and needs no per-shape choice.
//
// A prologue computes the input rows once per block into shared memory (bf16, [rows][k]), so a
// norm or an activation before the projection costs no kernel of its own:
//   GEMV_COPY      xin = x                                     x: [rows, k]
//   GEMV_RMS       xin = bf16(x * rsqrt(mean(x^2) + eps) * nw)  x: [rows, k], nw: [k]
//   GEMV_ADD_RMS   s = bf16(x + delta); xin = rms_norm(s)      s is written to sum_out by
//                                                              block 0 (sum_out may be null)
//   GEMV_SILU_MUL  xin = bf16(silu(g) * u), g = x[r, j], u = x[r, k + j]   x: [rows, 2k]
// These match the unfused kernels' arithmetic element for element (norm.cu, elementwise.cu);
// only the order in which the norm's sum of squares is added differs. The norm modes give each
// row to one warp (rows <= GEMV_WARPS), so the rows' norms are reduced side by side with warp
// shuffles, and x, delta and the norm weight are loaded in one round trip.
//
// Each warp computes OUTS outputs for every row; its lanes split k in 16-byte (8 bf16) chunks,
// UNROLL chunks per output loaded before any is used. A block is GEMV_WARPS warps; blocks loop
// over output tiles (the grid may be smaller than the tile count, so the prologue is paid once
// per block). The first weight chunks of a block's first tile are loaded before the prologue,
// so their fetch overlaps the prologue's.
//
// One entry point per row count (gemv_r1_bf16, gemv_r2_bf16), so the inner loop carries no row
// loop.
//
// Requirements (checked by the launcher): rows == ROWS, k % 8 == 0, x, delta, sum_out,
// nw and w 16-byte aligned, blockDim.x == 32 * GEMV_WARPS. Dynamic shared memory: xs[rows * k]
// bf16.
// ---------------------------------------------------------------------------------------------

#define GEMV_MAX_ROWS 2
#define GEMV_WARPS 8

#define GEMV_COPY 0
#define GEMV_RMS 1
#define GEMV_ADD_RMS 2
#define GEMV_SILU_MUL 3

__device__ __forceinline__ uint4 pack_bf16x8(const float* f) {
    uint4 v;
    v.x = (unsigned int)f2bf(f[0]) | ((unsigned int)f2bf(f[1]) << 16);
    v.y = (unsigned int)f2bf(f[2]) | ((unsigned int)f2bf(f[3]) << 16);
    v.z = (unsigned int)f2bf(f[4]) | ((unsigned int)f2bf(f[5]) << 16);
    v.w = (unsigned int)f2bf(f[6]) | ((unsigned int)f2bf(f[7]) << 16);
    return v;
}

// Chunks each thread loads before it uses any, in the prologue's loops: one memory round
// trip covers GEMV_PRO_UNROLL chunks per thread.
#define GEMV_PRO_UNROLL 4

// The prologue: fills xs (rows * kv chunks of 8 bf16) from x. Ends with __syncthreads().
__device__ void gemv_prologue(
    const bf16_t* __restrict__ x,
    const bf16_t* __restrict__ delta,
    const bf16_t* __restrict__ norm_w,
    bf16_t* __restrict__ sum_out,
    uint4* xs,
    int rows,
    int k,
    int mode,
    float eps)
{
    const int kv = k / 8;
    const int tid = threadIdx.x;
    const int threads = blockDim.x;
    if (mode == GEMV_COPY || mode == GEMV_SILU_MUL) {
        const bool silu = mode == GEMV_SILU_MUL;
        const int total = rows * kv;
        for (int i0 = tid; i0 < total; i0 += threads * GEMV_PRO_UNROLL) {
            uint4 a[GEMV_PRO_UNROLL], b[GEMV_PRO_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_PRO_UNROLL; ++u) {
                const int i = i0 + u * threads;
                if (i < total) {
                    const int r = i / kv;
                    const int c = i - r * kv;
                    if (silu) {
                        const uint4* row = (const uint4*)(x + (size_t)r * 2 * k);
                        a[u] = row[c];
                        b[u] = row[kv + c];
                    } else {
                        a[u] = ((const uint4*)x)[i];
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < GEMV_PRO_UNROLL; ++u) {
                const int i = i0 + u * threads;
                if (i < total) {
                    if (silu) {
                        float g[8], up[8], o[8];
                        unpack_bf16x8(a[u], g);
                        unpack_bf16x8(b[u], up);
#pragma unroll
                        for (int e = 0; e < 8; ++e) {
                            const float sl = g[e] / (1.0f + expf(-g[e]));
                            o[e] = sl * up[e];
                        }
                        xs[i] = pack_bf16x8(o);
                    } else {
                        xs[i] = a[u];
                    }
                }
            }
        }
    } else {
        // One warp per row (rows <= GEMV_WARPS): the rows' norms are reduced side by side with
        // warp shuffles only.
        const int lane = tid & 31;
        const int r = tid >> 5;
        if (r < rows) {
            const bool add = mode == GEMV_ADD_RMS;
            const bool write_sum = add && sum_out != nullptr && blockIdx.x == 0;
            const uint4* nw = (const uint4*)norm_w;
            const uint4* xr = (const uint4*)(x + (size_t)r * k);
            const uint4* dr = add ? (const uint4*)(delta + (size_t)r * k) : nullptr;
            float sum_sq = 0.0f;
            for (int c0 = lane; c0 < kv; c0 += 32 * GEMV_PRO_UNROLL) {
                uint4 a[GEMV_PRO_UNROLL], b[GEMV_PRO_UNROLL];
#pragma unroll
                for (int u = 0; u < GEMV_PRO_UNROLL; ++u) {
                    const int c = c0 + u * 32;
                    if (c < kv) {
                        a[u] = xr[c];
                        if (add) {
                            b[u] = dr[c];
                        }
                        // The norm weight is fetched with x; the second pass reads it.
                        asm volatile("prefetch.global.L1 [%0];" ::"l"(nw + c));
                    }
                }
#pragma unroll
                for (int u = 0; u < GEMV_PRO_UNROLL; ++u) {
                    const int c = c0 + u * 32;
                    if (c < kv) {
                        float v[8];
                        unpack_bf16x8(a[u], v);
                        if (add) {
                            float d[8];
                            unpack_bf16x8(b[u], d);
#pragma unroll
                            for (int e = 0; e < 8; ++e) {
                                v[e] = bf2f(f2bf(v[e] + d[e]));
                            }
                        }
                        const uint4 packed = pack_bf16x8(v);  // x or the rounded sum: exact
                        if (write_sum) {
                            ((uint4*)(sum_out + (size_t)r * k))[c] = packed;
                        }
                        xs[r * kv + c] = packed;
#pragma unroll
                        for (int e = 0; e < 8; ++e) {
                            sum_sq += v[e] * v[e];
                        }
                    }
                }
            }
            sum_sq = warp_sum(sum_sq);
            const float inv_rms = rsqrtf(sum_sq / (float)k + eps);
            // Each lane rewrites only the chunks it wrote above: no synchronization needed.
            for (int c = lane; c < kv; c += 32) {
                float v[8], wf[8];
                unpack_bf16x8(xs[r * kv + c], v);
                unpack_bf16x8(nw[c], wf);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    v[e] = v[e] * inv_rms * wf[e];
                }
                xs[r * kv + c] = pack_bf16x8(v);
            }
        }
    }
    __syncthreads();
}

// Loads chunks c0 + u * 32 + lane (u < UNROLL) of weight rows o0 .. o0 + OUTS (rows past the
// end read the last one; chunks past the end are zero).
template <int OUTS, int UNROLL>
__device__ __forceinline__ void gemv_load_weights(
    const bf16_t* __restrict__ w, int o0, int outs, int k, int c0, int lane,
    uint4 (&wv)[OUTS][UNROLL])
{
    const int kv = k / 8;
#pragma unroll
    for (int j = 0; j < OUTS; ++j) {
        const uint4* row = (const uint4*)(w + (size_t)min(o0 + j, outs - 1) * k);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int c = c0 + u * 32 + lane;
            wv[j][u] = c < kv ? row[c] : make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

template <int ROWS, int OUTS, int UNROLL>
__device__ void gemv_body(
    const bf16_t* __restrict__ x,
    const bf16_t* __restrict__ delta,
    const bf16_t* __restrict__ norm_w,
    bf16_t* __restrict__ sum_out,
    const bf16_t* __restrict__ w,
    const bf16_t* __restrict__ bias,
    bf16_t* __restrict__ y,
    int rows,
    int outs,
    int k,
    int mode,
    float eps)
{
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    const uint4* xs = (const uint4*)gemv_smem;
    const int kv = k / 8;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int per_tile = GEMV_WARPS * OUTS;
    const int tiles = (outs + per_tile - 1) / per_tile;

    PDL_LAUNCH_DEPENDENTS();
    // Wait before any load, weights included: a kernel just before this one may have written
    // them (a weight update is a kernel like any other).
    PDL_WAIT();
    uint4 wv[OUTS][UNROLL];
    bool preloaded = false;
    {
        const int o0 = (blockIdx.x * GEMV_WARPS + warp) * OUTS;
        if (blockIdx.x < tiles && o0 < outs) {
            gemv_load_weights<OUTS, UNROLL>(w, o0, outs, k, 0, lane, wv);
            preloaded = true;
        }
    }
    gemv_prologue(x, delta, norm_w, sum_out, (uint4*)gemv_smem, rows, k, mode, eps);

    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int o0 = (tile * GEMV_WARPS + warp) * OUTS;
        if (o0 >= outs) {
            continue;  // warp-uniform; nothing below synchronizes the block
        }
        float acc[OUTS][ROWS];
#pragma unroll
        for (int j = 0; j < OUTS; ++j) {
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                acc[j][r] = 0.0f;
            }
        }
        for (int c0 = 0; c0 < kv; c0 += 32 * UNROLL) {
            if (!preloaded) {
                gemv_load_weights<OUTS, UNROLL>(w, o0, outs, k, c0, lane, wv);
            }
            preloaded = false;
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + u * 32 + lane;
                if (c < kv) {
                    float wf[OUTS][8];
#pragma unroll
                    for (int j = 0; j < OUTS; ++j) {
                        unpack_bf16x8(wv[j][u], wf[j]);
                    }
#pragma unroll
                    for (int r = 0; r < ROWS; ++r) {
                        if (r < rows) {
                            float xf[8];
                            unpack_bf16x8(xs[r * kv + c], xf);
#pragma unroll
                            for (int j = 0; j < OUTS; ++j) {
#pragma unroll
                                for (int e = 0; e < 8; ++e) {
                                    acc[j][r] = fmaf(xf[e], wf[j][e], acc[j][r]);
                                }
                            }
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < OUTS; ++j) {
            const int o = o0 + j;
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                if (r < rows) {
                    const float sum = warp_sum(acc[j][r]);
                    if (lane == 0 && o < outs) {
                        bf16_t v = f2bf(sum);
                        if (bias != nullptr) {
                            v = f2bf(bf2f(v) + bf2f(bias[o]));
                        }
                        y[(size_t)r * outs + o] = v;
                    }
                }
            }
        }
    }
}

// Outputs per warp and chunks in flight per output, by row bucket (measured on an H200, see
// bench/NOTES.md): one row streams best with one output and 4 chunks per lane, two rows reuse
// each staged x chunk across two outputs. More rows lose to cuBLAS's tensor cores (the staged
// rows are unpacked once per weight chunk), so the launcher stops at GEMV_MAX_ROWS.
extern "C" __global__ void gemv_r1_bf16(
    const bf16_t* __restrict__ x, const bf16_t* __restrict__ delta,
    const bf16_t* __restrict__ norm_w, bf16_t* __restrict__ sum_out,
    const bf16_t* __restrict__ w, const bf16_t* __restrict__ bias, bf16_t* __restrict__ y,
    int rows, int outs, int k, int mode, float eps)
{
    // gemv_body waits for the previous kernel (PDL) before its first load.
    gemv_body<1, 1, 4>(x, delta, norm_w, sum_out, w, bias, y, rows, outs, k, mode, eps);
}

extern "C" __global__ void gemv_r2_bf16(
    const bf16_t* __restrict__ x, const bf16_t* __restrict__ delta,
    const bf16_t* __restrict__ norm_w, bf16_t* __restrict__ sum_out,
    const bf16_t* __restrict__ w, const bf16_t* __restrict__ bias, bf16_t* __restrict__ y,
    int rows, int outs, int k, int mode, float eps)
{
    // gemv_body waits for the previous kernel (PDL) before its first load.
    gemv_body<2, 2, 4>(x, delta, norm_w, sum_out, w, bias, y, rows, outs, k, mode, eps);
}
