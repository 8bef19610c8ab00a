
// ---------------------------------------------------------------------------------------------
// Small-batch linear layer (GEMV): y[r, o] = sum_k xin[r, k] * w[o, k] (+ bias[o]) for at most
// GEMV_MAX_ROWS rows, bf16 in and out, f32 accumulation rounded once (then once more after the
// bias, as an unfused GEMM + bias add rounds).
//
// Why our own kernel: a decode step at batch 1 or 2 is bound by reading the weights once. On an
// H200 cuBLAS streams the large projections about as fast (lm_head at m = 1: 77 µs, 4 TB/s) but
// is slow on the small ones (a 1024 x 1024 projection: 7.5 µs against 2.2 µs here; see
// bench/NOTES.md), and it cannot compute the norm or activation in front of the projection.
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
// Two entry points: gemv_r1_bf16 (one row, CUDA cores, no row loop) and gemv_mma_bf16 (up to
// GEMV_MAX_ROWS rows, tensor cores; below). Each block loops over output tiles and fetches the
// next tile's first weights before it reduces the current one's sums. The launcher sizes the
// grid to one wave of resident blocks, so the prologue is paid once per block slot.
//
// Requirements of gemv_r1_bf16 (checked by the launcher): rows == 1, k % 8 == 0, x, delta, sum_out,
// nw and w 16-byte aligned, blockDim.x == 32 * GEMV_WARPS. Dynamic shared memory: xs[rows * k]
// bf16.
// ---------------------------------------------------------------------------------------------

#define GEMV_MAX_ROWS 8
#define GEMV_WARPS 8

// The kernels' dynamic shared memory (one declaration for the module).
extern __shared__ __align__(16) unsigned char gemv_smem[];

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
    PDL_LAUNCH_DEPENDENTS();
    // Wait before anything else, weight loads included: a kernel just before this one may have
    // written them (a weight update is a kernel like any other).
    PDL_WAIT();
    const uint4* xs = (const uint4*)gemv_smem;
    const int kv = k / 8;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int per_tile = GEMV_WARPS * OUTS;
    const int tiles = (outs + per_tile - 1) / per_tile;

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
            if (!(c0 == 0 && preloaded)) {
                gemv_load_weights<OUTS, UNROLL>(w, o0, outs, k, c0, lane, wv);
            }
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
        preloaded = false;
        // The next tile's first weights are fetched before this one's sums are reduced.
        {
            const int next = (tile + (int)gridDim.x) * GEMV_WARPS * OUTS + warp * OUTS;
            if (tile + (int)gridDim.x < tiles && next < outs) {
                gemv_load_weights<OUTS, UNROLL>(w, next, outs, k, 0, lane, wv);
                preloaded = true;
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

// One row streams best on CUDA cores with one output per warp and 4 chunks in flight per lane
// (measured on an H200, see bench/NOTES.md); more rows go to gemv_mma_bf16 below, whose cost
// barely grows with them.
extern "C" __global__ void gemv_r1_bf16(
    const bf16_t* __restrict__ x, const bf16_t* __restrict__ delta,
    const bf16_t* __restrict__ norm_w, bf16_t* __restrict__ sum_out,
    const bf16_t* __restrict__ w, const bf16_t* __restrict__ bias, bf16_t* __restrict__ y,
    int rows, int outs, int k, int mode, float eps)
{
    // gemv_body waits for the previous kernel (PDL) before its first load.
    gemv_body<1, 1, 4>(x, delta, norm_w, sum_out, w, bias, y, rows, outs, k, mode, eps);
}


// ---------------------------------------------------------------------------------------------
// The tensor-core variant for 1 to 8 rows (gemv_mma_bf16): each block computes 8 outputs of
// every row with mma.sync m16n8k16 (bf16 in, f32 accumulation), its 8 warps splitting k and
// adding their partial sums through shared memory (in warp order: deterministic). The staged
// rows are the mma's A (rows 8..15 are zero), the weights its B, so the cost barely grows with
// the rows, unlike the CUDA-core variants above.
//
// Lane (g = lane / 4, q = lane % 4) loads the 16-byte chunk q of weight row g of each 32-wide
// k step, and the matching chunk of staged row g. The mma's k slots are matched to actual k
// indices the same way for A and B (slot 2q + e and 2q + 8 + e of the first mma are actual
// 8q + e and 8q + 2 + e, of the second 8q + 4 + e and 8q + 6 + e), so each k step is two mmas
// and the sum is over every k once. Output (row g, columns 2q and 2q + 1) is accumulator
// registers 0 and 1.
//
// Requirements (checked by the launcher): compute capability 8.0 or later, 1 <= rows <= 8,
// k % 32 == 0, 16-byte aligned tensors, blockDim.x == 32 * GEMV_WARPS. Dynamic shared memory:
// xs[rows * k] bf16, then GEMV_WARPS * 32 float2 of partial sums.
// ---------------------------------------------------------------------------------------------
#define GEMV_MMA_UNROLL 4

__device__ __forceinline__ void mma_bf16_16x8x16(float* c, unsigned int a0, unsigned int a2,
                                                 unsigned int b0, unsigned int b1) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
#else
    __trap();  // the launcher never picks this kernel before sm_80
#endif
}

extern "C" __global__ void gemv_mma_bf16(
    const bf16_t* __restrict__ x, const bf16_t* __restrict__ delta,
    const bf16_t* __restrict__ norm_w, bf16_t* __restrict__ sum_out,
    const bf16_t* __restrict__ w, const bf16_t* __restrict__ bias, bf16_t* __restrict__ y,
    int rows, int outs, int k, int mode, float eps)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before anything else (see prelude.cuh)
    const uint4* xs = (const uint4*)gemv_smem;
    float2* partial = (float2*)(gemv_smem + (size_t)rows * k * sizeof(bf16_t));
    const int kv = k / 8;
    const int steps = k / 32;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int q = lane & 3;
    const int tiles = (outs + 7) / 8;
    // This warp's k steps: warp, warp + GEMV_WARPS, ...
    const int my_steps = steps > warp ? (steps - warp + GEMV_WARPS - 1) / GEMV_WARPS : 0;

    uint4 wv[GEMV_MMA_UNROLL];
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    // Loads batch `batch` (GEMV_MMA_UNROLL of this warp's steps) of weight row g of `tile`.
    auto load = [&](int tile, int batch) {
        const uint4* row = (const uint4*)(w + (size_t)min(tile * 8 + g, outs - 1) * k);
#pragma unroll
        for (int u = 0; u < GEMV_MMA_UNROLL; ++u) {
            const int i = batch * GEMV_MMA_UNROLL + u;
            const int s = warp + GEMV_WARPS * i;
            wv[u] = i < my_steps ? row[s * 4 + q] : zero;
        }
    };
    bool preloaded = false;
    if ((int)blockIdx.x < tiles) {
        load(blockIdx.x, 0);
        preloaded = true;
    }
    gemv_prologue(x, delta, norm_w, sum_out, (uint4*)gemv_smem, rows, k, mode, eps);

    const int batches = (my_steps + GEMV_MMA_UNROLL - 1) / GEMV_MMA_UNROLL;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int batch = 0; batch < batches; ++batch) {
            if (!(batch == 0 && preloaded)) {
                load(tile, batch);
            }
#pragma unroll
            for (int u = 0; u < GEMV_MMA_UNROLL; ++u) {
                const int i = batch * GEMV_MMA_UNROLL + u;
                if (i < my_steps) {
                    const int s = warp + GEMV_WARPS * i;
                    const uint4 a = g < rows ? xs[g * kv + s * 4 + q] : zero;
                    mma_bf16_16x8x16(c, a.x, a.y, wv[u].x, wv[u].y);
                    mma_bf16_16x8x16(c, a.z, a.w, wv[u].z, wv[u].w);
                }
            }
        }
        preloaded = false;
        // The next tile's first weights are fetched before the block meets to add the partial
        // sums, so the fetch overlaps the reduction and the stores.
        if (tile + (int)gridDim.x < tiles) {
            load(tile + gridDim.x, 0);
            preloaded = true;
        }
        partial[warp * 32 + lane] = make_float2(c[0], c[1]);
        __syncthreads();
        if (warp == 0 && g < rows) {
            float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
            for (int v = 0; v < GEMV_WARPS; ++v) {
                const float2 p = partial[v * 32 + lane];
                s0 += p.x;
                s1 += p.y;
            }
            const int o = tile * 8 + 2 * q;
            const float sums[2] = {s0, s1};
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                if (o + e < outs) {
                    bf16_t v = f2bf(sums[e]);
                    if (bias != nullptr) {
                        v = f2bf(bf2f(v) + bf2f(bias[o + e]));
                    }
                    y[(size_t)g * outs + o + e] = v;
                }
            }
        }
        __syncthreads();  // the partial sums are rewritten by the next tile
    }
}
