
// ---------------------------------------------------------------------------------------------
// RoPE of one q or k head by one warp, shared by the `rope` module (rope_kv_write_bf16) and the
// `attention` module (rope_attention_decode_bf16), so both compute the same bits.
//
// With a norm weight w (Qwen3's q_norm / k_norm), each element x of the head is first replaced
// by bf16(x * rsqrt(mean(x^2) + eps) * w) (the mean over the head, in f32, reduced with warp
// shuffles), which is what an unfused bf16 RMS norm would store. Then, for i < head_dim / 2
// (Llama / Hugging Face "rotate_half" convention):
//   inv_freq = 1 / theta^(2i / head_dim), angle = pos * inv_freq,
//   dst[i]        = bf16(x[i] * cos - x[i + half] * sin)
//   dst[i + half] = bf16(x[i + half] * cos + x[i] * sin)
//
// All 32 lanes of the calling warp call it with the same arguments (one warp per head: other
// warps of the block can rotate other heads at the same time). dst may be global or shared
// memory; it does not overlap src.
// ---------------------------------------------------------------------------------------------
__device__ void rope_head_warp(
    const bf16_t* __restrict__ src,
    const bf16_t* __restrict__ norm,
    float eps,
    int pos,
    int head_dim,
    float theta,
    bf16_t* __restrict__ dst)
{
    const int lane = threadIdx.x & 31;
    float inv_rms = 1.0f;
    if (norm != nullptr) {
        float sum_sq = 0.0f;
        for (int i = lane; i < head_dim; i += 32) {
            const float v = bf2f(src[i]);
            sum_sq += v * v;
        }
        sum_sq = warp_sum(sum_sq);
        inv_rms = rsqrtf(sum_sq / (float)head_dim + eps);
    }
    const int half = head_dim / 2;
    for (int i = lane; i < half; i += 32) {
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
}
