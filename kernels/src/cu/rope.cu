// Rotary position embedding (Llama / Hugging Face "rotate_half" convention) fused with the
// KV-cache write of one decode step, with an optional per-head RMS norm of q and k before the
// rotation (Qwen3's q_norm / k_norm).
//
// Layouts (row-major):
//   qkv      [n, (q_heads + 2 * kv_heads) * head_dim]: q heads, then k heads, then v heads
//   positions[n] (int32): a negative position marks a padded row (see below); a position
//            >= max_t is clamped to max_t - 1 (never an out-of-bounds write)
//   k_cache, v_cache [batch_slots, max_t, kv_heads, head_dim]; row b uses slot b
//   q_out    [n, q_heads * head_dim]
//   q_norm, k_norm [head_dim] or null (both null: no norm)
//
// Grid: (n, q_heads + 2 * kv_heads); one block per (row, head). blockDim.x is a multiple of 32
// (the norm's block reduction needs it).
//
// With a norm weight w, each element of a q (k) head is first replaced by
//   bf16(x * rsqrt(mean(x^2) + eps) * w)      (mean over the head, in f32)
// which is what an unfused bf16 RMS norm would store. Then, for i < head_dim / 2:
//   inv_freq = 1 / theta^(2i / head_dim), angle = pos * inv_freq,
//   out[i]            = x[i] * cos - x[i + half] * sin
//   out[i + half]     = x[i + half] * cos + x[i] * sin
//
// Padded rows (vLLM's PAD_SLOT_ID): a row whose position is negative writes nothing into
// k_cache or v_cache, and its q_out row is all zeros (so what reads it downstream is
// deterministic). The position is uniform over the block, so its blocks return as a whole.
extern "C" __global__ void rope_kv_write_bf16(
    const bf16_t* __restrict__ qkv,
    const int* __restrict__ positions,
    bf16_t* __restrict__ k_cache,
    bf16_t* __restrict__ v_cache,
    bf16_t* __restrict__ q_out,
    int n,
    int q_heads,
    int kv_heads,
    int head_dim,
    int max_t,
    float theta,
    const bf16_t* __restrict__ q_norm,
    const bf16_t* __restrict__ k_norm,
    float eps)
{
    __shared__ float scratch[32];
    const int b = blockIdx.x;
    const int head = blockIdx.y;
    const int total_heads = q_heads + 2 * kv_heads;
    if (b >= n || head >= total_heads) {
        return;
    }
    int pos = positions[b];
    const unsigned long long d = (unsigned long long)head_dim;
    if (pos < 0) {
        // A padded row: zeros for its q heads, and no cache write for its k and v heads.
        if (head < q_heads) {
            bf16_t* dst = q_out + ((unsigned long long)b * (unsigned long long)q_heads
                                   + (unsigned long long)head) * d;
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
                dst[i] = (bf16_t)0;
            }
        }
        return;
    }
    pos = pos > max_t - 1 ? max_t - 1 : pos;

    const bf16_t* src = qkv + ((unsigned long long)b * (unsigned long long)total_heads
                               + (unsigned long long)head) * d;

    if (head < q_heads + kv_heads) {
        bf16_t* dst;
        if (head < q_heads) {
            dst = q_out + ((unsigned long long)b * (unsigned long long)q_heads
                           + (unsigned long long)head) * d;
        } else {
            const int kv_head = head - q_heads;
            dst = k_cache + (((unsigned long long)b * (unsigned long long)max_t
                              + (unsigned long long)pos) * (unsigned long long)kv_heads
                             + (unsigned long long)kv_head) * d;
        }
        // Uniform over the block: every thread takes the same branch, as block_sum requires.
        const bf16_t* norm = head < q_heads ? q_norm : k_norm;
        float inv_rms = 1.0f;
        if (norm != nullptr) {
            float sum_sq = 0.0f;
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
                const float v = bf2f(src[i]);
                sum_sq += v * v;
            }
            sum_sq = block_sum(sum_sq, scratch);
            inv_rms = rsqrtf(sum_sq / (float)head_dim + eps);
        }
        const int half = head_dim / 2;
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            const float exponent = (float)(2 * i) / (float)head_dim;
            const float inv_freq = 1.0f / powf(theta, exponent);
            const float angle = (float)pos * inv_freq;
            float s, c;
            sincosf(angle, &s, &c);
            float x1 = bf2f(src[i]);
            float x2 = bf2f(src[i + half]);
            if (norm != nullptr) {
                x1 = bf2f(f2bf(x1 * inv_rms * bf2f(norm[i])));
                x2 = bf2f(f2bf(x2 * inv_rms * bf2f(norm[i + half])));
            }
            dst[i] = f2bf(x1 * c - x2 * s);
            dst[i + half] = f2bf(x2 * c + x1 * s);
        }
    } else {
        const int kv_head = head - q_heads - kv_heads;
        bf16_t* dst = v_cache + (((unsigned long long)b * (unsigned long long)max_t
                                  + (unsigned long long)pos) * (unsigned long long)kv_heads
                                 + (unsigned long long)kv_head) * d;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            dst[i] = src[i];
        }
    }
}
