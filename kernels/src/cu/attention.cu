// Single-token (decode) attention over a KV cache, grouped-query aware.
//
// Layouts (row-major):
//   q        [n, q_heads * head_dim]
//   k_cache, v_cache [batch_slots, max_t, kv_heads, head_dim]; row b reads slot b, or every
//            row reads slot `slot` when slot >= 0 (attention_decode_bf16 only: the causal
//            attention of a prefill chunk, whose keys rope_kv_write_bf16 wrote before), or
//            row b reads slot b / q when slot = -q (attention_decode_bf16 only: q tokens of
//            each sequence, consecutive rows, e.g. a draft to verify); slot = -1 is row b
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

// The largest head dimension (MAX_HEAD_DIM in ops/attention.rs).
#define MAX_HEAD_DIM_CU 256


// The attention of one (row, q head) once its query is in q_s (f32 of bf16 values): scores over
// cache positions 0..len-1 of k_base (element (t, i) at t * t_stride + i), softmax, weighted sum
// of v_base's rows, written to out_row as bf16. When k_last / v_last are given, position
// len - 1 is read from them (this step's key and value, not yet in the cache for this block)
// instead of the cache. Every thread of the block calls it; `scores` holds len floats,
// `partial` blockDim.x * 8, `scratch` 32.
__device__ void attend_decode(
    const float* q_s,
    const bf16_t* __restrict__ k_base,
    const bf16_t* __restrict__ v_base,
    unsigned long long t_stride,
    int len,
    int head_dim,
    float scale,
    const bf16_t* k_last,
    const bf16_t* v_last,
    float* scores,
    float* partial,
    float* scratch,
    bf16_t* __restrict__ out_row)
{
    const int vecs = head_dim / 8;
    const int last = k_last != nullptr ? len - 1 : len;

    // Scores: one cache position per thread, the whole key row in 16-byte loads.
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const uint4* k_row = t == last ? (const uint4*)k_last
                                       : (const uint4*)(k_base + (unsigned long long)t * t_stride);
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
        // Four positions' loads in flight at a time; the sums are added in position order, as
        // one position at a time would add them.
        int t = g;
        for (; t + 3 * groups < len; t += 4 * groups) {
            uint4 rows[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int tq = t + q * groups;
                rows[q] = (tq == last ? (const uint4*)v_last
                                      : (const uint4*)(v_base + (unsigned long long)tq * t_stride))[v];
            }
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                float f[8];
                unpack_bf16x8(rows[q], f);
                const float p = scores[t + q * groups];
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    acc[j] += p * f[j];
                }
            }
        }
        for (; t < len; t += groups) {
            const uint4* v_row = t == last
                ? (const uint4*)v_last
                : (const uint4*)(v_base + (unsigned long long)t * t_stride);
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

// Where one block of a decode-attention kernel (grid (q_heads, n): block (head, row b)) stands:
// its kv head, its output row, and its row's position clamped to the cache, or false when the
// block has nothing more to do (a block past the grid's work, or a padded row, pos < 0, whose
// output row it has zeroed). Uniform over the block (head and b are the block's), so the
// caller returns as a whole. Both kernels below start with it.
struct AttentionRow {
    int kv_head;
    int pos;
    unsigned long long d;
    bf16_t* out_row;
};

__device__ __forceinline__ bool attention_row_begin(
    const int* __restrict__ positions,
    bf16_t* __restrict__ out,
    int n,
    int q_heads,
    int kv_heads,
    int head_dim,
    int max_t,
    AttentionRow* row)
{
    const int head = blockIdx.x;
    const int b = blockIdx.y;
    if (head >= q_heads || b >= n) {
        return false;
    }
    row->kv_head = head / (q_heads / kv_heads);
    row->d = (unsigned long long)head_dim;
    row->out_row = out + ((unsigned long long)b * (unsigned long long)q_heads
                          + (unsigned long long)head) * row->d;
    const int pos = positions[b];
    if (pos < 0) {
        // A padded row: zeros, no cache read or write.
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            row->out_row[i] = (bf16_t)0;
        }
        return false;
    }
    row->pos = pos > max_t - 1 ? max_t - 1 : pos;
    return true;
}

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
    int slot,
    float scale,
    const int* __restrict__ row_slots,
    int slots)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    extern __shared__ float smem[];
    __shared__ float scratch[32];

    AttentionRow r;
    if (!attention_row_begin(positions, out, n, q_heads, kv_heads, head_dim, max_t, &r)) {
        return;  // uniform over the block
    }
    const int head = blockIdx.x;
    const int b = blockIdx.y;
    if (row_slots != nullptr) {
        // A step of mixed sequences: row b's slot and whether it attends here (1) or in
        // attention_tiles_bf16 (a row of a prompt chunk, which rewrites its output there, after
        // this launch). A row without a slot, or left to the tiles, is written as zeros here,
        // so a row no tile covers is zeros rather than whatever the buffer held.
        const unsigned long long at = 2ull * (unsigned long long)b;
        const int own = row_slots[at];
        if (own < 0 || own >= slots || row_slots[at + 1] != 1) {
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
                r.out_row[i] = (bf16_t)0;
            }
            return;
        }
        slot = own;
    }
    const int kv_head = r.kv_head;
    const int pos = r.pos;
    const unsigned long long d = r.d;
    bf16_t* out_row = r.out_row;

    float* q_s = smem;
    float* scores = smem + head_dim;
    float* partial = scores + max_t;

    const bf16_t* q_row = q + ((unsigned long long)b * (unsigned long long)q_heads
                               + (unsigned long long)head) * d;
    // Element (t, i) of this row's cache slot and kv head: base + t * t_stride + i.
    const unsigned long long t_stride = (unsigned long long)kv_heads * d;
    const unsigned long long cache_slot = (unsigned long long)(slot >= 0 ? slot : b / (-slot));
    const unsigned long long slot_base =
        cache_slot * (unsigned long long)max_t * t_stride
        + (unsigned long long)kv_head * d;

    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        q_s[i] = bf2f(q_row[i]);
    }
    __syncthreads();
    attend_decode(q_s, k_cache + slot_base, v_cache + slot_base, t_stride, pos + 1, head_dim,
                  scale, nullptr, nullptr, scores, partial, scratch, out_row);
}

// ---------------------------------------------------------------------------------------------
// RoPE, KV-cache write and decode attention in one kernel: rope_kv_write_bf16 (rope.cu)
// followed by attention_decode_bf16, bit for bit, in one launch.
//
// Layouts: qkv [n, (q_heads + 2 * kv_heads) * head_dim] (q heads, k heads, v heads), the caches
// and positions as above, q_norm / k_norm [head_dim] or null (both null: no norm), out
// [n, q_heads * head_dim]. Grid (q_heads, n), one block per (q head, row), blockDim.x as above.
//
// Each block rotates its q head and its kv head's k (rope_head_warp, one warp each, side by
// side) into shared memory and copies the v head there, while the cache rows it will read are
// prefetched into L2. The first q head of each kv group writes k and v into the cache at
// pos; no block reads the cache at pos (it uses its own copy, bit-identical to what is written),
// so no block waits for another. A padded row (pos < 0) writes zeros and no cache.
// Dynamic shared memory as attention_decode_bf16's.
// ---------------------------------------------------------------------------------------------
template <bool SCALED>
__device__ __forceinline__ void rope_attention_decode_body(
    const bf16_t* __restrict__ qkv,
    const int* __restrict__ positions,
    bf16_t* __restrict__ k_cache,
    bf16_t* __restrict__ v_cache,
    bf16_t* __restrict__ out,
    int n,
    int q_heads,
    int kv_heads,
    int head_dim,
    int max_t,
    const RopeArgs rope,
    const bf16_t* __restrict__ q_norm,
    const bf16_t* __restrict__ k_norm,
    float eps,
    float scale)
{
    extern __shared__ float smem[];
    __shared__ float scratch[32];
    __shared__ __align__(16) bf16_t q_h[MAX_HEAD_DIM_CU];
    __shared__ __align__(16) bf16_t k_h[MAX_HEAD_DIM_CU];
    __shared__ __align__(16) bf16_t v_h[MAX_HEAD_DIM_CU];

    AttentionRow r;
    if (!attention_row_begin(positions, out, n, q_heads, kv_heads, head_dim, max_t, &r)) {
        return;  // uniform over the block
    }
    const int head = blockIdx.x;
    const int b = blockIdx.y;
    const int group_size = q_heads / kv_heads;
    const int kv_head = r.kv_head;
    const int pos = r.pos;
    const unsigned long long d = r.d;
    bf16_t* out_row = r.out_row;

    const unsigned long long t_stride = (unsigned long long)kv_heads * d;
    const unsigned long long slot_base =
        (unsigned long long)b * (unsigned long long)max_t * t_stride
        + (unsigned long long)kv_head * d;
    // The cache rows this block reads (positions before pos), asked of L2 now: their fetch
    // overlaps the rotation below. Small batches only: there the kernel is one wave of blocks
    // and latency-bound; a large batch keeps the SMs busy with other blocks instead.
    for (int t = threadIdx.x; n <= 16 && t < pos; t += blockDim.x) {
        for (int i = 0; i < head_dim; i += 64) {  // one 128-byte line per 64 bf16
            const unsigned long long at = slot_base + (unsigned long long)t * t_stride + i;
            asm volatile("prefetch.global.L2 [%0];" ::"l"(k_cache + at));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(v_cache + at));
        }
    }

    // Warp 0 rotates the q head, warp 1 the kv head's k, warp 2 copies its v: side by side.
    const int total_heads = q_heads + 2 * kv_heads;
    const bf16_t* row = qkv + (unsigned long long)b * (unsigned long long)total_heads * d;
    const int warp = threadIdx.x >> 5;
    if (warp == 0) {
        rope_head_warp<SCALED>(row + (unsigned long long)head * d, q_norm, eps, pos, head_dim,
                               rope, q_h);
    } else if (warp == 1) {
        rope_head_warp<SCALED>(row + (unsigned long long)(q_heads + kv_head) * d, k_norm, eps, pos,
                       head_dim, rope, k_h);
    } else if (warp == 2) {
        const bf16_t* v_src = row + (unsigned long long)(q_heads + kv_heads + kv_head) * d;
        for (int i = threadIdx.x & 31; i < head_dim; i += 32) {
            v_h[i] = v_src[i];
        }
    }
    __syncthreads();

    float* q_s = smem;
    float* scores = smem + head_dim;
    float* partial = scores + max_t;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        q_s[i] = bf2f(q_h[i]);
    }

    if (head % group_size == 0) {
        bf16_t* k_dst = k_cache + slot_base + (unsigned long long)pos * t_stride;
        bf16_t* v_dst = v_cache + slot_base + (unsigned long long)pos * t_stride;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            k_dst[i] = k_h[i];
            v_dst[i] = v_h[i];
        }
    }
    __syncthreads();
    attend_decode(q_s, k_cache + slot_base, v_cache + slot_base, t_stride, pos + 1, head_dim,
                  scale, k_h, v_h, scores, partial, scratch, out_row);
}

// Plain RoPE (no scaling): the base alone.
extern "C" __global__ void rope_attention_decode_bf16(
    const bf16_t* __restrict__ qkv,
    const int* __restrict__ positions,
    bf16_t* __restrict__ k_cache,
    bf16_t* __restrict__ v_cache,
    bf16_t* __restrict__ out,
    int n,
    int q_heads,
    int kv_heads,
    int head_dim,
    int max_t,
    float theta,
    const bf16_t* __restrict__ q_norm,
    const bf16_t* __restrict__ k_norm,
    float eps,
    float scale)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    const RopeArgs rope = RopeArgs{ROPE_KIND_DEFAULT, theta, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0};
    rope_attention_decode_body<false>(qkv, positions, k_cache, v_cache, out, n, q_heads,
                                      kv_heads, head_dim, max_t, rope, q_norm, k_norm, eps,
                                      scale);
}

// A scaled RoPE (ROPE_PARAMS, rope_head.cuh).
extern "C" __global__ void rope_attention_decode_scaled_bf16(
    const bf16_t* __restrict__ qkv,
    const int* __restrict__ positions,
    bf16_t* __restrict__ k_cache,
    bf16_t* __restrict__ v_cache,
    bf16_t* __restrict__ out,
    int n,
    int q_heads,
    int kv_heads,
    int head_dim,
    int max_t,
    ROPE_PARAMS,
    const bf16_t* __restrict__ q_norm,
    const bf16_t* __restrict__ k_norm,
    float eps,
    float scale)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    rope_attention_decode_body<true>(qkv, positions, k_cache, v_cache, out, n, q_heads,
                                     kv_heads, head_dim, max_t, ROPE_ARGS, q_norm, k_norm, eps,
                                     scale);
}

// ---------------------------------------------------------------------------------------------
// Causal attention of prompt chunks inside a step of mixed sequences (one token per row, each
// row with its own slot and position; see rope_kv_write_bf16's row_slots), by tiles of up to
// TILE_ROWS rows of one sequence: each chunk of TILE_KEYS cached keys and values is read into
// shared memory once per tile and q head and used by every row of the tile, where
// attention_decode_bf16 would read the slot once per row. Online softmax over the chunks.
//
// Layouts (row-major):
//   q          [n, q_heads * head_dim]: the rows rotated by rope_kv_write_bf16, which wrote
//              every row's key and value into the cache before this launch (stream order)
//   positions  [n] (int32): row r attends over its slot's positions 0..=positions[r]
//              (clamped to max_t - 1)
//   row_slots  [n, 2] (int32): (slot, alone); attention_decode_bf16 writes the rows with
//              alone = 1 and zeros for every other row, then this kernel the rows of its tiles
//   tiles      [n, 2] (int32): tile t is rows first .. first + rows of one slot (rows <=
//              TILE_ROWS; rows = 0: no tile t). A row of a tile that is padded (negative
//              position) or of another slot than the tile's first row is not written (it keeps
//              what attention_decode_bf16 wrote: zeros, or its own decode output); a slot
//              outside 0..slots leaves the whole tile so. Nothing is read outside the cache
//              whatever the tables hold.
//   out        [n, q_heads * head_dim]
//
// Grid: (q_heads, n); blockDim.x = TILE_WARPS * 32. Warp w handles rows w, w + TILE_WARPS, ...
// of the tile; lane j scores key c0 + j of a chunk, and accumulates output dimensions
// j, j + 32, ... (head_dim <= MAX_HEAD_DIM_CU, a multiple of 8).
// Dynamic shared memory (bytes, the host computes the same):
//   k_s [TILE_KEYS][head_dim + 8] bf16 (padded rows: conflict-free 16-byte reads by the lanes)
//   | v_s [TILE_KEYS][head_dim] bf16 | q_s [TILE_ROWS][head_dim] float
#define TILE_ROWS 8
#define TILE_KEYS 32
#define TILE_WARPS 4
#define TILE_ROWS_PER_WARP (TILE_ROWS / TILE_WARPS)
#define TILE_DIMS_PER_LANE (MAX_HEAD_DIM_CU / 32)

extern "C" __global__ void attention_tiles_bf16(
    const bf16_t* __restrict__ q,
    const bf16_t* __restrict__ k_cache,
    const bf16_t* __restrict__ v_cache,
    const int* __restrict__ positions,
    const int* __restrict__ row_slots,
    const int* __restrict__ tiles,
    bf16_t* __restrict__ out,
    int n,
    int q_heads,
    int kv_heads,
    int head_dim,
    int max_t,
    int slots,
    float scale)
{
    PDL_LAUNCH_DEPENDENTS();
    PDL_WAIT();  // before any memory access: see prelude.cuh
    extern __shared__ float4 tile_smem[];
    const int head = blockIdx.x;
    const int t = blockIdx.y;
    if (head >= q_heads || t >= n) {
        return;
    }
    const int first = tiles[2ull * (unsigned long long)t];
    int count = tiles[2ull * (unsigned long long)t + 1];
    if (count <= 0 || first < 0 || first >= n) {
        return;  // no tile t (uniform over the block)
    }
    count = count > TILE_ROWS ? TILE_ROWS : count;
    count = count > n - first ? n - first : count;
    const int slot = row_slots[2ull * (unsigned long long)first];
    const bool slot_ok = slot >= 0 && slot < slots;
    const unsigned long long d = (unsigned long long)head_dim;
    const int kv_head = head / (q_heads / kv_heads);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;

    // Each row's position (clamped), or -1: padded, of another slot, or past the tile.
    int row_pos[TILE_ROWS];
    int max_pos = -1;
#pragma unroll
    for (int i = 0; i < TILE_ROWS; ++i) {
        int p = -1;
        if (slot_ok && i < count && row_slots[2ull * (unsigned long long)(first + i)] == slot) {
            p = positions[first + i];
            p = p > max_t - 1 ? max_t - 1 : p;
            p = p < 0 ? -1 : p;
        }
        row_pos[i] = p;
        max_pos = p > max_pos ? p : max_pos;
    }

    const int k_stride = head_dim + 8;
    bf16_t* k_s = (bf16_t*)tile_smem;
    bf16_t* v_s = k_s + TILE_KEYS * k_stride;
    float* q_s = (float*)(v_s + TILE_KEYS * head_dim);
    for (int i = threadIdx.x; i < TILE_ROWS * head_dim; i += blockDim.x) {
        const int row = i / head_dim;
        const int k = i % head_dim;
        float v = 0.f;
        if (row_pos[row] >= 0) {
            v = bf2f(q[((unsigned long long)(first + row) * (unsigned long long)q_heads
                        + (unsigned long long)head) * d + (unsigned long long)k]);
        }
        q_s[i] = v;
    }

    const unsigned long long t_stride = (unsigned long long)kv_heads * d;
    const unsigned long long slot_base =
        (unsigned long long)(slot_ok ? slot : 0) * (unsigned long long)max_t * t_stride
        + (unsigned long long)kv_head * d;
    const int vecs = head_dim / 8;
    float m[TILE_ROWS_PER_WARP];
    float l[TILE_ROWS_PER_WARP];
    float acc[TILE_ROWS_PER_WARP][TILE_DIMS_PER_LANE];
#pragma unroll
    for (int j = 0; j < TILE_ROWS_PER_WARP; ++j) {
        m[j] = neg_inf_f32();
        l[j] = 0.f;
#pragma unroll
        for (int k = 0; k < TILE_DIMS_PER_LANE; ++k) {
            acc[j][k] = 0.f;
        }
    }

    for (int c0 = 0; c0 <= max_pos; c0 += TILE_KEYS) {  // max_pos is uniform over the block
        __syncthreads();  // q_s written; the previous chunk consumed
        for (int i = threadIdx.x; i < TILE_KEYS * vecs; i += blockDim.x) {
            const int key = i / vecs;
            const int v8 = i % vecs;
            const int tpos = c0 + key;
            uint4 kw = make_uint4(0u, 0u, 0u, 0u);
            uint4 vw = kw;
            if (tpos <= max_pos) {
                const unsigned long long at =
                    slot_base + (unsigned long long)tpos * t_stride + (unsigned long long)v8 * 8;
                kw = *(const uint4*)(k_cache + at);
                vw = *(const uint4*)(v_cache + at);
            }
            *(uint4*)(k_s + key * k_stride + v8 * 8) = kw;
            *(uint4*)(v_s + key * head_dim + v8 * 8) = vw;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < TILE_ROWS_PER_WARP; ++j) {
            const int row = warp + j * TILE_WARPS;
            const int pos = row_pos[row];
            if (pos < c0) {
                continue;  // uniform over the warp (a row without attention included)
            }
            const int key = c0 + lane;
            float s = neg_inf_f32();
            if (key <= pos) {
                const float* qr = q_s + row * head_dim;
                const bf16_t* kr = k_s + lane * k_stride;
                float dot = 0.f;
                for (int v8 = 0; v8 < vecs; ++v8) {
                    const uint4 raw = *(const uint4*)(kr + v8 * 8);
                    const bf16_t* e = (const bf16_t*)&raw;
#pragma unroll
                    for (int x = 0; x < 8; ++x) {
                        dot += qr[v8 * 8 + x] * bf2f(e[x]);
                    }
                }
                s = dot * scale;
            }
            // Key c0 <= pos, so lane 0's score is finite and so is m_new.
            const float m_new = fmaxf(m[j], warp_max(s));
            const float p = key <= pos ? expf(s - m_new) : 0.f;
            const float alpha = expf(m[j] - m_new);  // 0 on the first chunk (m = -inf)
            l[j] = l[j] * alpha + warp_sum(p);
#pragma unroll
            for (int k = 0; k < TILE_DIMS_PER_LANE; ++k) {
                acc[j][k] *= alpha;
            }
            const int last = pos - c0 < TILE_KEYS - 1 ? pos - c0 : TILE_KEYS - 1;
            for (int kk = 0; kk <= last; ++kk) {
                const float pk = __shfl_sync(0xffffffffu, p, kk);
                const bf16_t* vr = v_s + kk * head_dim;
#pragma unroll
                for (int k = 0; k < TILE_DIMS_PER_LANE; ++k) {
                    const int dim = lane + 32 * k;
                    if (dim < head_dim) {
                        acc[j][k] += pk * bf2f(vr[dim]);
                    }
                }
            }
            m[j] = m_new;
        }
    }

#pragma unroll
    for (int j = 0; j < TILE_ROWS_PER_WARP; ++j) {
        const int row = warp + j * TILE_WARPS;
        // Only the rows this tile attended are written: a padded row, or a row of another
        // slot that a malformed table put in the tile, keeps what attention_decode_bf16 wrote
        // there just before (zeros, or that row's own decode output).
        if (row >= count || row_pos[row] < 0) {
            continue;
        }
        bf16_t* o = out + ((unsigned long long)(first + row) * (unsigned long long)q_heads
                           + (unsigned long long)head) * d;
#pragma unroll
        for (int k = 0; k < TILE_DIMS_PER_LANE; ++k) {
            const int dim = lane + 32 * k;
            if (dim < head_dim) {
                o[dim] = f2bf(acc[j][k] / l[j]);
            }
        }
    }
}
