// Single-token (decode) attention over a KV cache, grouped-query aware.
//
// Layouts (row-major):
//   q        [n, q_heads * head_dim]
//   k_cache, v_cache [batch_slots, max_t, kv_heads, head_dim]; row b reads slot b
//   positions[n] (int32): row b attends over cache positions 0..=pos, pos clamped to
//            [0, max_t - 1]
//   out      [n, q_heads * head_dim]
//
// Grid: (q_heads, n); one block per (head, row). blockDim.x: a multiple of 32, at most 1024.
// Dynamic shared memory, in floats:
//   q_s[head_dim] | scores[max_t] | partial[max(blockDim.x, head_dim)]
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

    int pos = positions[b];
    pos = pos < 0 ? 0 : pos;
    pos = pos > max_t - 1 ? max_t - 1 : pos;
    const int len = pos + 1;

    float* q_s = smem;
    float* scores = smem + head_dim;
    float* partial = scores + max_t;

    const unsigned long long d = (unsigned long long)head_dim;
    const bf16_t* q_row = q + ((unsigned long long)b * (unsigned long long)q_heads
                               + (unsigned long long)head) * d;
    // Element (t, i) of this row's cache slot and kv head: base + t * t_stride + i.
    const unsigned long long t_stride = (unsigned long long)kv_heads * d;
    const unsigned long long slot_base =
        (unsigned long long)b * (unsigned long long)max_t * t_stride
        + (unsigned long long)kv_head * d;
    const bf16_t* k_base = k_cache + slot_base;
    const bf16_t* v_base = v_cache + slot_base;

    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        q_s[i] = bf2f(q_row[i]);
    }
    __syncthreads();

    // Scores: one warp per cache position, lanes split the head dimension.
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;
    for (int t = warp; t < len; t += num_warps) {
        const bf16_t* k_row = k_base + (unsigned long long)t * t_stride;
        float dot = 0.0f;
        for (int i = lane; i < head_dim; i += 32) {
            dot += q_s[i] * bf2f(k_row[i]);
        }
        dot = warp_sum(dot);
        if (lane == 0) {
            scores[t] = dot * scale;
        }
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

    // Output: weighted sum of v rows. The block is split into `groups` groups of head_dim
    // threads; group g handles positions g, g + groups, ...; partial sums meet in shared memory.
    // When head_dim > blockDim.x there is one group and each thread handles several dims.
    int groups = blockDim.x / head_dim;
    if (groups < 1) {
        groups = 1;
    }
    for (int e = threadIdx.x; e < groups * head_dim; e += blockDim.x) {
        const int g = e / head_dim;
        const int i = e - g * head_dim;
        float acc = 0.0f;
        for (int t = g; t < len; t += groups) {
            acc += scores[t] * bf2f(v_base[(unsigned long long)t * t_stride + i]);
        }
        partial[e] = acc;
    }
    __syncthreads();

    const float inv_sum = 1.0f / sum;
    bf16_t* out_row = out + ((unsigned long long)b * (unsigned long long)q_heads
                             + (unsigned long long)head) * d;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float acc = 0.0f;
        for (int g = 0; g < groups; ++g) {
            acc += partial[g * head_dim + i];
        }
        out_row[i] = f2bf(acc * inv_sum);
    }
}
