// Rotary position embedding (Llama / Hugging Face "rotate_half" convention) fused with the
// KV-cache write of one decode step, with an optional per-head RMS norm of q and k before the
// rotation (Qwen3's q_norm / k_norm).
//
// Layouts (row-major):
//   qkv      [n, (q_heads + 2 * kv_heads) * head_dim]: q heads, then k heads, then v heads
//   positions[n] (int32): a negative position marks a padded row (see below); a position
//            >= max_t is clamped to max_t - 1 (never an out-of-bounds write)
//   k_cache, v_cache [batch_slots, max_t, kv_heads, head_dim]; row b uses slot b, or every
//            row uses slot `slot` when slot >= 0 (a prefill chunk of one sequence), or row b
//            uses slot b / q when slot = -q (q tokens of each sequence in consecutive rows)
//   q_out    [n, q_heads * head_dim]
//   q_norm, k_norm [head_dim] or null (both null: no norm)
//   row_slots [n, 2] (int32) or null: when given, row b uses slot row_slots[2b] (a step of
//            mixed sequences, one token per row; `slot` is ignored); a slot outside
//            0..slots makes the row a padded one (a bad index is never an out-of-bounds write)
//
// Grid: (n, q_heads + 2 * kv_heads); one block per (row, head). blockDim.x is a multiple of 32
// (warp 0 rotates a q or k head; every thread copies a v head).
//
// Each q and k head is normalised (when q_norm / k_norm are given) and rotated by
// rope_head_warp (rope_head.cuh, which the module's source includes before this file).
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
    int slot,
    ROPE_PARAMS,
    const bf16_t* __restrict__ q_norm,
    const bf16_t* __restrict__ k_norm,
    float eps,
    const int* __restrict__ row_slots,
    int slots)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    const int b = blockIdx.x;
    const int head = blockIdx.y;
    const int total_heads = q_heads + 2 * kv_heads;
    if (b >= n || head >= total_heads) {
        return;
    }
    int pos = positions[b];
    if (row_slots != nullptr) {
        const int own = row_slots[2ull * (unsigned long long)b];
        if (own < 0 || own >= slots) {
            pos = -1;  // no slot: a padded row
        } else {
            slot = own;
        }
    }
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
    // slot >= 0: every row's; slot = -q: row b's sequence is b / q (q = 1: row b).
    const unsigned long long cache_slot = (unsigned long long)(slot >= 0 ? slot : b / (-slot));

    const bf16_t* src = qkv + ((unsigned long long)b * (unsigned long long)total_heads
                               + (unsigned long long)head) * d;

    if (head < q_heads + kv_heads) {
        bf16_t* dst;
        if (head < q_heads) {
            dst = q_out + ((unsigned long long)b * (unsigned long long)q_heads
                           + (unsigned long long)head) * d;
        } else {
            const int kv_head = head - q_heads;
            dst = k_cache + ((cache_slot * (unsigned long long)max_t
                              + (unsigned long long)pos) * (unsigned long long)kv_heads
                             + (unsigned long long)kv_head) * d;
        }
        // One warp rotates the head (rope_head_warp); the block is that warp.
        const bf16_t* norm = head < q_heads ? q_norm : k_norm;
        if (threadIdx.x < 32) {
            rope_head_warp<true>(src, norm, eps, pos, head_dim, ROPE_ARGS, dst);
        }
    } else {
        const int kv_head = head - q_heads - kv_heads;
        bf16_t* dst = v_cache + ((cache_slot * (unsigned long long)max_t
                                  + (unsigned long long)pos) * (unsigned long long)kv_heads
                                 + (unsigned long long)kv_head) * d;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            dst[i] = src[i];
        }
    }
}
