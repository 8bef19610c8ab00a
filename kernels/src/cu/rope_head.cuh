
// ---------------------------------------------------------------------------------------------
// RoPE frequencies, with the scalings transformers defines (modeling_rope_utils.py, read from
// transformers 5.17): RopeScaling::kernel_args (ops/rope_scaling.rs) builds the arguments, and
// RopeScaling::inv_freq there is the same computation on the host (the tests' reference).
//
// kind  | a                 | b                    | c                    | d
// 0 default  -                 -                      -                      -
// 1 linear   factor            -                      -                      -
// 2 dynamic  factor            original max positions -                      -
// 3 llama3   factor            low_freq_factor        high_freq_factor       original max positions
// 4 yarn     factor            ramp low (pairs)       ramp width (pairs, > 0) -
//
// attn multiplies cos and sin (yarn's attention factor; 1 otherwise). min_len: a dynamic
// (NTK) RoPE computes its base for the sequence length max(pos + 1, min_len) (a decode step:
// 0; a prefill chunk: the sequence's length after it, as transformers uses the longest position
// of the forward).
// ---------------------------------------------------------------------------------------------
#define ROPE_KIND_DEFAULT 0
#define ROPE_KIND_LINEAR 1
#define ROPE_KIND_DYNAMIC 2
#define ROPE_KIND_LLAMA3 3
#define ROPE_KIND_YARN 4

struct RopeArgs {
    int kind;
    float theta;
    float a, b, c, d;
    float attn;
    int min_len;
};

// The kernel parameters of a RopeArgs, in this order (RopeScaling::kernel_args).
#define ROPE_PARAMS int rope_kind, float rope_theta, float rope_a, float rope_b, float rope_c, \
    float rope_d, float rope_attn, int rope_min_len
#define ROPE_ARGS RopeArgs{rope_kind, rope_theta, rope_a, rope_b, rope_c, rope_d, rope_attn, rope_min_len}

// The inverse frequency of dimension pair i (i < head_dim / 2) at position pos.
__device__ __forceinline__ float rope_inv_freq(const RopeArgs r, int i, int head_dim, int pos)
{
    const float exponent = (float)(2 * i) / (float)head_dim;
    if (r.kind == ROPE_KIND_DEFAULT) {
        return 1.0f / powf(r.theta, exponent);  // plain RoPE first: the common case
    }
    if (r.kind == ROPE_KIND_DYNAMIC) {
        const int len = pos + 1 > r.min_len ? pos + 1 : r.min_len;
        if ((float)len > r.b) {
            const float base = r.theta * powf(r.a * (float)len / r.b - (r.a - 1.0f),
                                              (float)head_dim / (float)(head_dim - 2));
            return 1.0f / powf(base, exponent);
        }
    }
    const float pos_freq = powf(r.theta, exponent);
    const float inv = 1.0f / pos_freq;
    switch (r.kind) {
    case ROPE_KIND_LINEAR:
        return inv / r.a;
    case ROPE_KIND_LLAMA3: {
        const float wavelen = 6.283185307179586f / inv;
        const float low_freq_wavelen = r.d / r.b;
        const float high_freq_wavelen = r.d / r.c;
        float v = wavelen > low_freq_wavelen ? inv / r.a : inv;
        if (!(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen)) {
            const float smooth = (r.d / wavelen - r.b) / (r.c - r.b);
            v = (1.0f - smooth) * v / r.a + smooth * v;
        }
        return v;
    }
    case ROPE_KIND_YARN: {
        float ramp = ((float)i - r.b) / r.c;
        ramp = ramp < 0.0f ? 0.0f : (ramp > 1.0f ? 1.0f : ramp);
        const float extrapolation = 1.0f - ramp;
        const float interpolated = 1.0f / (r.a * pos_freq);
        return interpolated * (1.0f - extrapolation) + inv * extrapolation;
    }
    default:
        return inv;
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE of one q or k head by one warp, shared by the `rope` module (rope_kv_write_bf16) and the
// `attention` module (rope_attention_decode_bf16), so both compute the same bits.
//
// With a norm weight w (Qwen3's q_norm / k_norm), each element x of the head is first replaced
// by bf16(x * rsqrt(mean(x^2) + eps) * w) (the mean over the head, in f32, reduced with warp
// shuffles), which is what an unfused bf16 RMS norm would store. Then, for i < head_dim / 2
// (Llama / Hugging Face "rotate_half" convention):
//   inv_freq = rope_inv_freq(rope, i, head_dim, pos) (1 / theta^(2i / head_dim) unscaled),
//   angle = pos * inv_freq, cos and sin multiplied by rope.attn,
//   dst[i]        = bf16(x[i] * cos - x[i + half] * sin)
//   dst[i + half] = bf16(x[i + half] * cos + x[i] * sin)
//
// All 32 lanes of the calling warp call it with the same arguments (one warp per head: other
// warps of the block can rotate other heads at the same time). dst may be global or shared
// memory; it does not overlap src.
// ---------------------------------------------------------------------------------------------
// SCALED = false: plain RoPE from rope.theta alone (the other fields unread), for the decode
// step's fused kernel without a scaling (rope_attention_decode_bf16), whose parameters and
// instructions stay those it had before scalings existed (docs/gpu-runs.md run 62: the scaled
// kernel costs ~0.5 us more per launch). Both give the same bits for plain RoPE.
template <bool SCALED>
__device__ __forceinline__ void rope_head_warp(
    const bf16_t* __restrict__ src,
    const bf16_t* __restrict__ norm,
    float eps,
    int pos,
    int head_dim,
    const RopeArgs rope,
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
        // Unscaled: plain RoPE's frequency, the instructions of the kernels before scalings.
        const float inv_freq = SCALED
            ? rope_inv_freq(rope, i, head_dim, pos)
            : 1.0f / powf(rope.theta, (float)(2 * i) / (float)head_dim);
        const float angle = (float)pos * inv_freq;
        float s, c;
        sincosf(angle, &s, &c);
        if (SCALED && rope.kind == ROPE_KIND_YARN) {  // the only scaling with an attention factor
            s *= rope.attn;
            c *= rope.attn;
        }
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
