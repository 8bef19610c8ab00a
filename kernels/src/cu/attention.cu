// Single-token (decode) attention over a KV cache, grouped-query aware.
//
// Layouts (row-major):
//   q        [n, q_heads * head_dim]
//   k_cache, v_cache [batch_slots, max_t, kv_heads, head_dim]; row b reads slot b
//   positions[n] (int32): row b attends over cache positions 0..=pos; pos >= max_t is
//            clamped to max_t - 1. A negative pos marks a padded row (vLLM's PAD_SLOT_ID):
//            its output row is all zeros and it reads no cache.
//   out      [n, q_heads * head_dim]
//
// Grid: (q_heads, n); one block per (head, row). blockDim.x: a multiple of 32, at most 1024,
// and at least head_dim / 8. head_dim is a multiple of 8: keys and values are read 8 bf16 (16
// bytes) at a time, so many independent loads are in flight per thread.
//   scores:  thread t handles cache positions t, t + blockDim.x, ... (a whole key row each);
//   output:  threads form P = blockDim.x / (head_dim / 8) position groups; thread (g, v) sums
//            dims 8v..8v+8 over positions g, g + P, ...; the P partials meet in shared memory.
// Dynamic shared memory, in floats:
//   q_s[head_dim] | scores[max_t] | partial[blockDim.x * 8]
// (the host computes the same size).

extern "C" __global__ void attention_decode_bf16(
    const bf16_t* __restrict__ q,
    const bf16_t* __restrict__ k_cache,
    const bf16_t* __restrict__ v_cache,
    const int* __restrict__ positions,
    bf16_t* __restrict__ out,
    int n,
    int q_heads,
    int kv_heads,
    int head_dim,
    int max_t,
    float scale)
{
    extern __shared__ float smem[];
    __shared__ float scratch[32];

    const int head = blockIdx.x;
    const int b = blockIdx.y;
    if (head >= q_heads || b >= n) {
        return;  // uniform over the block
    }
    const int group_size = q_heads / kv_heads;
    const int kv_head = head / group_size;

    const unsigned long long d = (unsigned long long)head_dim;
    bf16_t* out_row = out + ((unsigned long long)b * (unsigned long long)q_heads
                             + (unsigned long long)head) * d;

    int pos = positions[b];
    if (pos < 0) {
        // A padded row: zeros, no cache read. Uniform over the block (b is the block's row).
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            out_row[i] = (bf16_t)0;
        }
        return;
    }
    pos = pos > max_t - 1 ? max_t - 1 : pos;
    const int len = pos + 1;

    float* q_s = smem;
    float* scores = smem + head_dim;
    float* partial = scores + max_t;

    const bf16_t* q_row = q + ((unsigned long long)b * (unsigned long long)q_heads
                               + (unsigned long long)head) * d;
    // Element (t, i) of this row's cache slot and kv head: base + t * t_stride + i.
    const unsigned long long t_stride = (unsigned long long)kv_heads * d;
    const unsigned long long slot_base =
        (unsigned long long)b * (unsigned long long)max_t * t_stride
        + (unsigned long long)kv_head * d;
    const bf16_t* k_base = k_cache + slot_base;
    const bf16_t* v_base = v_cache + slot_base;
    const int vecs = head_dim / 8;

    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        q_s[i] = bf2f(q_row[i]);
    }
    __syncthreads();

    // Scores: one cache position per thread, the whole key row in 16-byte loads.
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const uint4* k_row = (const uint4*)(k_base + (unsigned long long)t * t_stride);
        float dot = 0.0f;
#pragma unroll 4
        for (int v = 0; v < vecs; ++v) {
            float f[8];
            unpack_bf16x8(k_row[v], f);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                dot += q_s[v * 8 + j] * f[j];
            }
        }
        scores[t] = dot * scale;
    }
    __syncthreads();

    // Softmax over scores[0..len), in f32 with max subtraction.
    float local_max = neg_inf_f32();
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        local_max = fmaxf(local_max, scores[t]);
    }
    const float max_score = block_max(local_max, scratch);

    float local_sum = 0.0f;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const float e = expf(scores[t] - max_score);
        scores[t] = e;
        local_sum += e;
    }
    const float sum = block_sum(local_sum, scratch);  // synchronizes: all of scores is written
    __syncthreads();

    // Output: position group g = threadIdx.x / vecs sums dims [8v, 8v + 8) over its positions.
    const int groups = blockDim.x / vecs;
    const int g = threadIdx.x / vecs;
    const int v = threadIdx.x - g * vecs;
    if (g < groups) {
        float acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            acc[j] = 0.0f;
        }
        for (int t = g; t < len; t += groups) {
            const uint4* v_row = (const uint4*)(v_base + (unsigned long long)t * t_stride);
            float f[8];
            unpack_bf16x8(v_row[v], f);
            const float p = scores[t];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                acc[j] += p * f[j];
            }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            partial[g * head_dim + v * 8 + j] = acc[j];
        }
    }
    __syncthreads();

    const float inv_sum = 1.0f / sum;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float acc = 0.0f;
        for (int k = 0; k < groups; ++k) {
            acc += partial[k * head_dim + i];
        }
        out_row[i] = f2bf(acc * inv_sum);
    }
}
