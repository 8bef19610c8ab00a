// Elementwise kernels. 1-D kernels use grid-stride loops over 64-bit indices, so the result
// never depends on the launch configuration.

// out[r, j] = silu(g) * u with g = gate_up[r, j], u = gate_up[r, inter + j];
// silu(g) = g / (1 + exp(-g)).
extern "C" __global__ void silu_mul_bf16(
    const bf16_t* __restrict__ gate_up,
    bf16_t* __restrict__ out,
    unsigned long long rows,
    unsigned long long inter)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    const unsigned long long total = rows * inter;
    for (unsigned long long idx = global_thread_index(); idx < total; idx += grid_thread_count()) {
        const unsigned long long r = idx / inter;
        const unsigned long long j = idx - r * inter;
        const bf16_t* row = gate_up + r * 2ull * inter;
        const float g = bf2f(row[j]);
        const float u = bf2f(row[inter + j]);
        const float silu = g / (1.0f + expf(-g));
        out[idx] = f2bf(silu * u);
    }
}

// out = a + b (same number of elements).
extern "C" __global__ void add_bf16(
    const bf16_t* __restrict__ a,
    const bf16_t* __restrict__ b,
    bf16_t* __restrict__ out,
    unsigned long long numel)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    for (unsigned long long idx = global_thread_index(); idx < numel; idx += grid_thread_count()) {
        out[idx] = f2bf(bf2f(a[idx]) + bf2f(b[idx]));
    }
}

// out = a * b (same number of elements), in f32, rounded once.
extern "C" __global__ void mul_bf16(
    const bf16_t* __restrict__ a,
    const bf16_t* __restrict__ b,
    bf16_t* __restrict__ out,
    unsigned long long numel)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    for (unsigned long long idx = global_thread_index(); idx < numel; idx += grid_thread_count()) {
        out[idx] = f2bf(bf2f(a[idx]) * bf2f(b[idx]));
    }
}

// out = x * s, in f32, rounded once.
extern "C" __global__ void scale_bf16(
    const bf16_t* __restrict__ x,
    bf16_t* __restrict__ out,
    unsigned long long numel,
    float s)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    for (unsigned long long idx = global_thread_index(); idx < numel; idx += grid_thread_count()) {
        out[idx] = f2bf(bf2f(x[idx]) * s);
    }
}

// dst[r, dst_col0 + c] = src[r, src_col0 + c] for r < rows, c < cols; src rows hold src_width
// elements, dst rows dst_width (concat and split copy column ranges with it).
extern "C" __global__ void copy_columns_bf16(
    const bf16_t* __restrict__ src,
    bf16_t* __restrict__ dst,
    unsigned long long rows,
    unsigned long long cols,
    unsigned long long src_width,
    unsigned long long src_col0,
    unsigned long long dst_width,
    unsigned long long dst_col0)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    const unsigned long long total = rows * cols;
    for (unsigned long long idx = global_thread_index(); idx < total; idx += grid_thread_count()) {
        const unsigned long long r = idx / cols;
        const unsigned long long c = idx - r * cols;
        dst[r * dst_width + dst_col0 + c] = src[r * src_width + src_col0 + c];
    }
}

// out[r, j] = x[r, j] + bias[j].
extern "C" __global__ void add_bias_bf16(
    const bf16_t* __restrict__ x,
    const bf16_t* __restrict__ bias,
    bf16_t* __restrict__ out,
    unsigned long long rows,
    unsigned long long cols)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    const unsigned long long total = rows * cols;
    for (unsigned long long idx = global_thread_index(); idx < total; idx += grid_thread_count()) {
        const unsigned long long j = idx % cols;
        out[idx] = f2bf(bf2f(x[idx]) + bf2f(bias[j]));
    }
}

// out[r, :] = table[min(ids[r], vocab - 1), :]. One block per row.
extern "C" __global__ void embedding_bf16(
    const bf16_t* __restrict__ table,
    const unsigned int* __restrict__ ids,
    bf16_t* __restrict__ out,
    int n,
    int vocab,
    int hidden)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    const int r = blockIdx.x;
    if (r >= n) {
        return;
    }
    unsigned int id = ids[r];
    if (id > (unsigned int)(vocab - 1)) {
        id = (unsigned int)(vocab - 1);
    }
    const bf16_t* src = table + (unsigned long long)id * (unsigned long long)hidden;
    bf16_t* dst = out + (unsigned long long)r * (unsigned long long)hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        dst[j] = src[j];
    }
}

// Counter-based uniform random numbers in [0, 1): splitmix64 of (seed, index).
// Mirrored on the host by `reference::uniform_unit`.
__device__ __forceinline__ float uniform_unit(unsigned long long seed, unsigned long long index) {
    unsigned long long z = seed + (index + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    // Top 24 bits -> exactly representable in f32, in [0, 1).
    return (float)(z >> 40) * 5.9604644775390625e-8f;
}

// low + (high - low) * u, with an explicit fused multiply-add so the host mirror is bit-exact.
__device__ __forceinline__ float uniform_value(
    unsigned long long seed, unsigned long long index, float low, float high)
{
    return fmaf(high - low, uniform_unit(seed, index), low);
}

extern "C" __global__ void fill_uniform_bf16(
    bf16_t* __restrict__ out,
    unsigned long long numel,
    unsigned long long seed,
    float low,
    float high)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    for (unsigned long long idx = global_thread_index(); idx < numel; idx += grid_thread_count()) {
        out[idx] = f2bf(uniform_value(seed, idx, low, high));
    }
}

extern "C" __global__ void fill_uniform_f32(
    float* __restrict__ out,
    unsigned long long numel,
    unsigned long long seed,
    float low,
    float high)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    for (unsigned long long idx = global_thread_index(); idx < numel; idx += grid_thread_count()) {
        out[idx] = uniform_value(seed, idx, low, high);
    }
}

extern "C" __global__ void cast_bf16_f32(
    const bf16_t* __restrict__ x,
    float* __restrict__ out,
    unsigned long long numel)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    for (unsigned long long idx = global_thread_index(); idx < numel; idx += grid_thread_count()) {
        out[idx] = bf2f(x[idx]);
    }
}

extern "C" __global__ void cast_f32_bf16(
    const float* __restrict__ x,
    bf16_t* __restrict__ out,
    unsigned long long numel)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    for (unsigned long long idx = global_thread_index(); idx < numel; idx += grid_thread_count()) {
        out[idx] = f2bf(x[idx]);
    }
}

// out[r] = the index of the largest element of row r of x [m, cols] (greedy sampling of
// logits): the first of equal maxima; NaN never wins; a row with no number gives 0. out has
// out_rows >= m entries; those past m are 0. One block of ARGMAX_THREADS threads per out row.
#define ARGMAX_THREADS 256
extern "C" __global__ void argmax_rows_bf16(
    const bf16_t* __restrict__ x,
    unsigned int* __restrict__ out,
    int m,
    int cols,
    int out_rows)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    __shared__ float best_v[ARGMAX_THREADS];
    __shared__ int best_i[ARGMAX_THREADS];
    const int r = blockIdx.x;
    if (r >= out_rows) {
        return;
    }
    if (r >= m) {
        if (threadIdx.x == 0) {
            out[r] = 0u;
        }
        return;
    }
    const bf16_t* row = x + (unsigned long long)r * (unsigned long long)cols;
    float bv = neg_inf_f32();
    int bi = cols;  // none yet
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = bf2f(row[j]);
        if (v > bv || (v == bv && j < bi)) {  // false for NaN
            bv = v;
            bi = j;
        }
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float ov = best_v[threadIdx.x + s];
            const int oi = best_i[threadIdx.x + s];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[r] = best_i[0] >= cols ? 0u : (unsigned int)best_i[0];
    }
}
