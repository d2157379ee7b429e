// FlashAttention-2 forward and backward for limo: causal grouped-query attention over packed
// variable-length documents, bf16 (or f32) inputs, bf16 tensor-core MMA with fp32 accumulation.
//
// Contract (identical to the CPU reference crates/limo-ops/src/attention.rs):
//   q [N, q_heads, D], k/v [N, kv_heads, D], contiguous; out [N, q_heads, D] in the input dtype;
//   lse [q_heads, N] f32 (natural log); documents given by cumulative offsets cu_seqlens; token i
//   attends to token j iff both are in the same document and j <= i; query head h reads kv head
//   h / (q_heads / kv_heads). D is 64 or 128.
//
// Work decomposition. The wrapper (crates/limo-ops/src/cuda/flash_attention.rs) cuts every
// document into tiles of 64 rows that start at the document's first token, and uploads one
// triple (tile start, document start, document end) per tile. A tile never crosses a document
// boundary, so the varlen masking reduces to "key inside [document start, tile limit)" plus the
// causal "key <= query", and whole kv tiles outside the causal range are never visited (the
// loops below start at the document start and stop at the diagonal): no work is spent on the
// masked upper triangle except the one diagonal tile, and nothing across documents. The tail
// tile of a document is partial (length not a multiple of 64): its missing rows are loaded as
// zeros and masked or skipped on store. The wrapper orders the tiles longest-work first so the
// long causal rows start early and the short ones fill the tail of the grid.
//
// MMA. mma.sync.m16n8k16 bf16 -> f32 (sm_80+, also sm_90). Fragment layouts (PTX ISA, "Matrix
// fragments for mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   A 16x16 (row-major): reg0 = A[g][2t..2t+1], reg1 = A[g+8][2t..], reg2 = A[g][2t+8..],
//                        reg3 = A[g+8][2t+8..]   (low half = lower column)
//   B 16x8  (k x n):     reg0 = B[2t..2t+1][g],  reg1 = B[2t+8..2t+9][g]
//   C 16x8  f32:         c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// Two adjacent C tiles (n = 8j..8j+15) hold exactly the A fragment of a 16-wide k slice, which
// is how the probabilities P (forward) and dS (dQ kernel) go from one MMA's accumulator into the
// next MMA's A operand without touching shared memory.
//
// Shared memory tiles are bf16 [rows][D + 8]: the 8-element (16-byte) pad keeps every row
// 16-byte aligned for vector stores and shifts consecutive rows by 4 banks, so the fragment loads
// below (8 rows x 4 words per warp, or 16-bit transposed loads of 2 rows x 8 columns per 4
// lanes) are free of bank conflicts. f32 inputs are rounded to bf16 as they are staged into
// shared memory (the MMA is bf16 either way; the softmax and all accumulation are fp32), so the
// f32 entry points are a convenience for checking against the f32 CPU reference, with bf16
// product precision.
//
// Kernels (each instantiated for T in {bf16, f32} and D in {64, 128}; names end in
// _{bf16,f32}_hd{64,128}):
//   flash_fwd_*           forward: 4 warps, 64 query rows per CTA (16 per warp), kv tiles of 64.
//                         Q fragments live in registers, K and V tiles in shared memory
//                         (2 x 64 x (D+8) bf16 = 34 KiB at D=128). Online softmax in the exp2
//                         domain (scores pre-multiplied by scale*log2 e); O is rescaled in
//                         registers when the running max grows and divided by the row sum once at
//                         the end; lse = (m + log2 l) * ln 2.
//   flash_bwd_preprocess_* D_i = rowsum(dO_i * O_i), [q_heads, N] f32, one warp per row.
//   flash_bwd_dkdv_*      8 warps, one kv tile of 64 keys of one kv head per CTA; loops over the
//                         query heads of the group (fixed order) and, for each, over the query
//                         tiles at or after the kv tile up to the document end. dK and dV stay
//                         in registers for the whole loop, so the group sum needs no atomics and
//                         is deterministic. Phase 1 (warp = 16 query rows x 32 keys): S = Q K^T,
//                         P = exp2(S*scale*log2e - lse*log2e), dP = dO V^T, dS = P (dP - D), both
//                         written to shared memory as bf16. Phase 2 (warp = 16 keys x D/2):
//                         dV += P^T dO, dK += dS^T Q. Fast variant (..._atomic_...): also
//                         dQ += scale dS K with fp32 atomicAdd into a [N, q_heads, D] buffer
//                         (order of the adds varies run to run -> not bit-reproducible).
//   flash_bwd_dq_*        the deterministic dQ: 4 warps, 64 query rows of one query head per
//                         CTA, loops over the kv tiles of the causal range in order; recomputes
//                         S, P, dP, dS (as in phase 1) and accumulates dQ += dS K in registers;
//                         no atomics, every dQ element is the sum of the same terms in the same
//                         order on every run. Costs one more S/dP recomputation (~+40% backward
//                         FLOPs) compared to the atomic variant.
//   flash_convert_dq_bf16 fp32 dQ accumulator -> bf16 output (atomic variant, bf16 only).
//
// Resource usage (ptxas -v): the table at the end of this file. Checked on the CPU without a GPU:
// flash_attention_emulate.cuh runs these kernels' code under an emulation of the CUDA built-ins.

#ifdef LIMO_FLASH_EMULATE
// CPU emulation of the CUDA built-ins this file uses (one std::thread per CUDA thread), so the
// kernel logic can be checked on a machine without a GPU; see flash_attention_emulate.cuh.
#include "flash_attention_emulate.cuh"
#else
#include <cuda_bf16.h>
#include <stdint.h>
#endif

typedef __nv_bfloat16 bf16;

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

namespace limo_flash {

constexpr int kTile = 64;  // rows of every query and kv tile (the wrapper's block table too)

// ---------------------------------------------------------------------------------------------
// Small helpers

__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef LIMO_FLASH_EMULATE
    emulated_mma_bf16_16816(c, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// Two consecutive bf16 of one row (4-byte aligned: columns are always even).
__device__ __forceinline__ uint32_t lds32(const bf16* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// Two bf16 from two different rows, `lo` in the low half.
__device__ __forceinline__ uint32_t lds_pair(const bf16* lo, const bf16* hi) {
    uint32_t l = *reinterpret_cast<const uint16_t*>(lo);
    uint32_t h = *reinterpret_cast<const uint16_t*>(hi);
    return l | (h << 16);
}

// A fragment of the 16x16 block of M at (r0, c0): A[r][k] = M[r0 + r][c0 + k].
__device__ __forceinline__ void frag_a(uint32_t a[4], const bf16* m, int ld, int r0, int c0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16* p = m + (r0 + g) * ld + c0 + 2 * t;
    a[0] = lds32(p);
    a[1] = lds32(p + 8 * ld);
    a[2] = lds32(p + 8);
    a[3] = lds32(p + 8 * ld + 8);
}

// A fragment of the transpose: A[r][k] = M[c0 + k][r0 + r].
__device__ __forceinline__ void frag_a_trans(uint32_t a[4], const bf16* m, int ld, int r0, int c0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16* p = m + (c0 + 2 * t) * ld + r0 + g;
    a[0] = lds_pair(p, p + ld);
    a[1] = lds_pair(p + 8, p + ld + 8);
    a[2] = lds_pair(p + 8 * ld, p + 9 * ld);
    a[3] = lds_pair(p + 8 * ld + 8, p + 9 * ld + 8);
}

// B fragment (16 x 8) stored n-major, e.g. K for S = Q K^T: B[k][n] = M[n0 + n][k0 + k].
__device__ __forceinline__ void frag_b_nmajor(uint32_t b[2], const bf16* m, int ld, int n0, int k0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16* p = m + (n0 + g) * ld + k0 + 2 * t;
    b[0] = lds32(p);
    b[1] = lds32(p + 8);
}

// B fragment stored k-major, e.g. V for O = P V: B[k][n] = M[k0 + k][n0 + n].
__device__ __forceinline__ void frag_b_kmajor(uint32_t b[2], const bf16* m, int ld, int k0, int n0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16* p = m + (k0 + 2 * t) * ld + n0 + g;
    b[0] = lds_pair(p, p + ld);
    b[1] = lds_pair(p + 8 * ld, p + 9 * ld);
}

// Eight consecutive elements of global memory as eight bf16 (16-byte aligned source).
__device__ __forceinline__ uint4 load8(const bf16* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ uint4 load8(const float* p) {
    const float4 x = reinterpret_cast<const float4*>(p)[0];
    const float4 y = reinterpret_cast<const float4*>(p)[1];
    uint4 r;
    r.x = pack_bf16(x.x, x.y);
    r.y = pack_bf16(x.z, x.w);
    r.z = pack_bf16(y.x, y.y);
    r.w = pack_bf16(y.z, y.w);
    return r;
}

// Two consecutive outputs.
__device__ __forceinline__ void store2(bf16* p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void store2(float* p, float a, float b) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
}

// Stage `ROWS` rows of D elements (row r at src + r * stride) into shared memory [ROWS][ld];
// rows >= valid are zero-filled so partial tiles contribute nothing to the MMAs.
template <typename T, int D, int ROWS, int NTHREADS>
__device__ __forceinline__ void stage_rows(bf16* dst, int ld, const T* src, long long stride,
                                           int valid) {
    constexpr int kChunks = D / 8;
    for (int c = threadIdx.x; c < ROWS * kChunks; c += NTHREADS) {
        const int r = c / kChunks, col = (c % kChunks) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid) v = load8(src + r * stride + col);
        *reinterpret_cast<uint4*>(dst + r * ld + col) = v;
    }
}

// ---------------------------------------------------------------------------------------------
// Forward

// Forward dynamic shared memory: K and V tiles [64][D+8] bf16 (34,816 bytes at D=128).
template <int D>
struct FwdSmem {
    static constexpr int bytes = 2 * kTile * (D + 8) * 2;
};

template <typename T, int D>
__device__ __forceinline__ void flash_fwd(const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v, T* __restrict__ out,
                                          float* __restrict__ lse, const int* __restrict__ tiles,
                                          int n, int q_heads, int kv_heads, float scale) {
    constexpr int BR = kTile, BC = kTile, LD = D + 8, NT = 128;
    // Dynamic (FwdSmem::bytes, under the 48 KiB default) so every kernel shares one layout
    // mechanism, which the CPU emulation relies on.
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* ks = reinterpret_cast<bf16*>(smem_raw);
    bf16* vs = ks + BC * LD;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = tiles[3 * blockIdx.x], doc0 = tiles[3 * blockIdx.x + 1];
    const int doc1 = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, kvh = h / (q_heads / kv_heads);
    const int q1 = min(q0 + BR, doc1);
    const long long qs = (long long)q_heads * D, kvs = (long long)kv_heads * D;

    // Q tile -> (staged through the K buffer) -> registers, 16 rows per warp.
    stage_rows<T, D, BR, NT>(ks, LD, q + q0 * qs + h * D, qs, q1 - q0);
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kt = 0; kt < D / 16; ++kt) frag_a(qf[kt], ks, LD, warp * 16, kt * 16);
    __syncthreads();

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const float sl2 = scale * LOG2E_F;
    const int row_q0 = q0 + warp * 16 + g;  // this thread's rows: row_q0 and row_q0 + 8

    // Causal + varlen: keys from the document start up to the last query of the tile.
    for (int kb = doc0; kb < q1; kb += BC) {
        const int kn = min(BC, q1 - kb);
        stage_rows<T, D, BC, NT>(ks, LD, k + kb * kvs + kvh * D, kvs, kn);
        stage_rows<T, D, BC, NT>(vs, LD, v + kb * kvs + kvh * D, kvs, kn);
        __syncthreads();

        float s[BC / 8][4];
#pragma unroll
        for (int i = 0; i < BC / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kt = 0; kt < D / 16; ++kt) {
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt) {
                uint32_t b[2];
                frag_b_nmajor(b, ks, LD, nt * 8, kt * 16);
                mma_bf16_16816(s[nt], qf[kt], b);
            }
        }

        // Only the diagonal tile (keys past this warp's first query) and a partial tile need
        // the element mask; the others are entirely visible.
        const bool need_mask = (kb + BC - 1 > q0 + warp * 16) || (kn < BC);
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int key = kb + nt * 8 + 2 * t + (i & 1);
                const int query = row_q0 + (i >> 1) * 8;
                const bool masked = need_mask && (key > query || key >= kb + kn);
                s[nt][i] = masked ? -INFINITY : s[nt][i] * sl2;
            }
        }

        // Online softmax: new running max per row (the 4 lanes of a quad share a row).
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = m[r];
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // A row with no visible key yet keeps max -inf; subtract 0 instead to avoid NaN.
            const float mu = mx == -INFINITY ? 0.f : mx;
            const float alpha = exp2f(m[r] - mu);
            m[r] = mx;
            l[r] *= alpha;  // per-lane partial sum; the quad is reduced once at the end
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                o[nt][2 * r] *= alpha;
                o[nt][2 * r + 1] *= alpha;
            }
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt) {
                const float p0 = exp2f(s[nt][2 * r] - mu), p1 = exp2f(s[nt][2 * r + 1] - mu);
                s[nt][2 * r] = p0;
                s[nt][2 * r + 1] = p1;
                l[r] += p0 + p1;
            }
        }

        // O += P V with P straight from the accumulator registers (see the header).
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t a[4];
            a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                uint32_t b[2];
                frag_b_kmajor(b, vs, LD, kk * 16, nt * 8);
                mma_bf16_16816(o[nt], a, b);
            }
        }
        __syncthreads();  // K and V are overwritten by the next tile
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int query = row_q0 + r * 8;
        if (query < q1) {
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            T* dst = out + query * qs + h * D + 2 * t;
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt)
                store2(dst + nt * 8, o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
            if (t == 0) lse[(long long)h * n + query] = (m[r] + log2f(sum)) * LN2_F;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward preprocessing: D_i = rowsum(dO_i * O_i) in fp32, one warp per (token, head).

template <typename T>
__device__ __forceinline__ void flash_bwd_preprocess(const T* __restrict__ dout,
                                                     const T* __restrict__ out,
                                                     float* __restrict__ delta, int n,
                                                     int q_heads, int head_dim) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
         row < (long long)n * q_heads; row += warps) {
        const T* a = dout + row * head_dim;
        const T* b = out + row * head_dim;
        float acc = 0.f;
        for (int i = lane; i < head_dim; i += 32) acc += float(a[i]) * float(b[i]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (lane == 0) {
            const long long token = row / q_heads, h = row % q_heads;
            delta[h * n + token] = acc;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward dK/dV (+ atomic dQ in the fast variant). Dynamic shared memory, laid out as
//   K, V, Q, dO : 4 x [64][D+8] bf16,  P, dS : 2 x [64][64+8] bf16,  lse*log2e, D : 2 x [64] f32
// = 88,576 bytes at D=128 and 55,808 at D=64 (the wrapper computes the same sum).

template <int D>
struct BwdSmem {
    static constexpr int LD = D + 8, LDP = kTile + 8;
    static constexpr int bytes = 4 * kTile * LD * 2 + 2 * kTile * LDP * 2 + 2 * kTile * 4;
};

template <typename T, int D, bool ATOMIC_DQ>
__device__ __forceinline__ void flash_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k,
                                               const T* __restrict__ v,
                                               const T* __restrict__ dout,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ delta,
                                               T* __restrict__ dk, T* __restrict__ dv,
                                               float* __restrict__ dq_accum,
                                               const int* __restrict__ tiles, int n,
                                               int q_heads, int kv_heads, float scale) {
    constexpr int BR = kTile, BC = kTile, LD = D + 8, LDP = BC + 8, NT = 256;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* ks = reinterpret_cast<bf16*>(smem_raw);
    bf16* vs = ks + BC * LD;
    bf16* qsm = vs + BC * LD;
    bf16* dos = qsm + BR * LD;
    bf16* ps = dos + BR * LD;
    bf16* dss = ps + BR * LDP;
    float* lse_s = reinterpret_cast<float*>(dss + BR * LDP);
    float* d_s = lse_s + BR;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int k0 = tiles[3 * blockIdx.x], doc1 = tiles[3 * blockIdx.x + 2];
    const int kvh = blockIdx.y, group = q_heads / kv_heads;
    const int kn = min(BC, doc1 - k0);
    const long long qs = (long long)q_heads * D, kvs = (long long)kv_heads * D;
    const float sl2 = scale * LOG2E_F;

    stage_rows<T, D, BC, NT>(ks, LD, k + k0 * kvs + kvh * D, kvs, kn);
    stage_rows<T, D, BC, NT>(vs, LD, v + k0 * kvs + kvh * D, kvs, kn);

    // Phase 1 owner: query rows pr..pr+15, keys pc..pc+31. Phase 2 owner: keys kr..kr+15,
    // columns dc..dc+D/2-1 of dK/dV (and query rows kr.., same columns, of the atomic dQ).
    const int pr = (warp & 3) * 16, pc = (warp >> 2) * 32;
    const int kr = (warp & 3) * 16, dc = (warp >> 2) * (D / 2);

    float dka[D / 16][4], dva[D / 16][4];
#pragma unroll
    for (int i = 0; i < D / 16; ++i) {
        dka[i][0] = dka[i][1] = dka[i][2] = dka[i][3] = 0.f;
        dva[i][0] = dva[i][1] = dva[i][2] = dva[i][3] = 0.f;
    }

    for (int hi = 0; hi < group; ++hi) {
        const int h = kvh * group + hi;
        // Queries before k0 never see these keys (causal), queries after the document end are
        // another document: the query tiles run from k0 to the document end.
        for (int qb = k0; qb < doc1; qb += BR) {
            const int nq = min(BR, doc1 - qb);
            __syncthreads();  // the previous tile's phase 2 is done with Q, dO, P, dS
            stage_rows<T, D, BR, NT>(qsm, LD, q + qb * qs + h * D, qs, nq);
            stage_rows<T, D, BR, NT>(dos, LD, dout + qb * qs + h * D, qs, nq);
            if (threadIdx.x < BR) {
                const int r = threadIdx.x;
                // Missing rows get lse = +inf, so their probabilities are exactly 0.
                lse_s[r] = r < nq ? lse[(long long)h * n + qb + r] * LOG2E_F : INFINITY;
                d_s[r] = r < nq ? delta[(long long)h * n + qb + r] : 0.f;
            }
            __syncthreads();

            // Phase 1: S and dP for 16 query rows x 32 keys per warp.
            float s[4][4], dp[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
                dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
            }
#pragma unroll
            for (int kt = 0; kt < D / 16; ++kt) {
                uint32_t a[4], ad[4];
                frag_a(a, qsm, LD, pr, kt * 16);
                frag_a(ad, dos, LD, pr, kt * 16);
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
                    uint32_t b[2];
                    frag_b_nmajor(b, ks, LD, pc + nt * 8, kt * 16);
                    mma_bf16_16816(s[nt], a, b);
                    frag_b_nmajor(b, vs, LD, pc + nt * 8, kt * 16);
                    mma_bf16_16816(dp[nt], ad, b);
                }
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int row = pr + g + r * 8, col = pc + nt * 8 + 2 * t;
                    const int query = qb + row, key = k0 + col;
                    float p[2], d[2];
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const bool masked = key + j > query || col + j >= kn;
                        p[j] = masked ? 0.f : exp2f(s[nt][2 * r + j] * sl2 - lse_s[row]);
                        d[j] = p[j] * (dp[nt][2 * r + j] - d_s[row]);
                    }
                    *reinterpret_cast<uint32_t*>(ps + row * LDP + col) = pack_bf16(p[0], p[1]);
                    *reinterpret_cast<uint32_t*>(dss + row * LDP + col) = pack_bf16(d[0], d[1]);
                }
            }
            __syncthreads();

            // Phase 2: dV += P^T dO, dK += dS^T Q for 16 keys x D/2 columns per warp.
#pragma unroll
            for (int kt = 0; kt < BR / 16; ++kt) {
                uint32_t a[4];
                frag_a_trans(a, ps, LDP, kr, kt * 16);
#pragma unroll
                for (int nt = 0; nt < D / 16; ++nt) {
                    uint32_t b[2];
                    frag_b_kmajor(b, dos, LD, kt * 16, dc + nt * 8);
                    mma_bf16_16816(dva[nt], a, b);
                }
                frag_a_trans(a, dss, LDP, kr, kt * 16);
#pragma unroll
                for (int nt = 0; nt < D / 16; ++nt) {
                    uint32_t b[2];
                    frag_b_kmajor(b, qsm, LD, kt * 16, dc + nt * 8);
                    mma_bf16_16816(dka[nt], a, b);
                }
            }

            if constexpr (ATOMIC_DQ) {
                // dQ (query rows kr.., columns dc..) += scale dS K, added to the fp32 buffer.
                float acc[D / 16][4];
#pragma unroll
                for (int i = 0; i < D / 16; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
                for (int kt = 0; kt < BC / 16; ++kt) {
                    uint32_t a[4];
                    frag_a(a, dss, LDP, kr, kt * 16);
#pragma unroll
                    for (int nt = 0; nt < D / 16; ++nt) {
                        uint32_t b[2];
                        frag_b_kmajor(b, ks, LD, kt * 16, dc + nt * 8);
                        mma_bf16_16816(acc[nt], a, b);
                    }
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int row = kr + g + r * 8;
                    if (row < nq) {
                        float* dst = dq_accum + (qb + row) * qs + h * D + dc + 2 * t;
#pragma unroll
                        for (int nt = 0; nt < D / 16; ++nt) {
                            atomicAdd(dst + nt * 8, acc[nt][2 * r] * scale);
                            atomicAdd(dst + nt * 8 + 1, acc[nt][2 * r + 1] * scale);
                        }
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = kr + g + r * 8;
        if (row < kn) {
            const long long off = (k0 + row) * kvs + kvh * D + dc + 2 * t;
#pragma unroll
            for (int nt = 0; nt < D / 16; ++nt) {
                store2(dk + off + nt * 8, dka[nt][2 * r] * scale, dka[nt][2 * r + 1] * scale);
                store2(dv + off + nt * 8, dva[nt][2 * r], dva[nt][2 * r + 1]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic dQ. Dynamic shared memory: Q, dO, K, V as 4 x [64][D+8] bf16 (69,632 bytes at
// D=128, 36,864 at D=64).

template <int D>
struct DqSmem {
    static constexpr int bytes = 4 * kTile * (D + 8) * 2;
};

template <typename T, int D>
__device__ __forceinline__ void flash_bwd_dq(const T* __restrict__ q, const T* __restrict__ k,
                                             const T* __restrict__ v, const T* __restrict__ dout,
                                             const float* __restrict__ lse,
                                             const float* __restrict__ delta,
                                             T* __restrict__ dq, const int* __restrict__ tiles,
                                             int n, int q_heads, int kv_heads, float scale) {
    constexpr int BR = kTile, BC = kTile, LD = D + 8, NT = 128;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* qsm = reinterpret_cast<bf16*>(smem_raw);
    bf16* dos = qsm + BR * LD;
    bf16* ks = dos + BR * LD;
    bf16* vs = ks + BC * LD;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = tiles[3 * blockIdx.x], doc0 = tiles[3 * blockIdx.x + 1];
    const int doc1 = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, kvh = h / (q_heads / kv_heads);
    const int q1 = min(q0 + BR, doc1);
    const long long qs = (long long)q_heads * D, kvs = (long long)kv_heads * D;
    const float sl2 = scale * LOG2E_F;

    stage_rows<T, D, BR, NT>(qsm, LD, q + q0 * qs + h * D, qs, q1 - q0);
    stage_rows<T, D, BR, NT>(dos, LD, dout + q0 * qs + h * D, qs, q1 - q0);
    const int row_q0 = q0 + warp * 16 + g;
    float lse_r[2], d_r[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int query = row_q0 + r * 8;
        lse_r[r] = query < q1 ? lse[(long long)h * n + query] * LOG2E_F : INFINITY;
        d_r[r] = query < q1 ? delta[(long long)h * n + query] : 0.f;
    }

    float dqa[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;

    for (int kb = doc0; kb < q1; kb += BC) {
        const int kn = min(BC, q1 - kb);
        __syncthreads();  // previous tile's K is no longer read
        stage_rows<T, D, BC, NT>(ks, LD, k + kb * kvs + kvh * D, kvs, kn);
        stage_rows<T, D, BC, NT>(vs, LD, v + kb * kvs + kvh * D, kvs, kn);
        __syncthreads();

        float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
        for (int i = 0; i < BC / 8; ++i) {
            s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
            dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
        }
#pragma unroll
        for (int kt = 0; kt < D / 16; ++kt) {
            uint32_t a[4], ad[4];
            frag_a(a, qsm, LD, warp * 16, kt * 16);
            frag_a(ad, dos, LD, warp * 16, kt * 16);
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt) {
                uint32_t b[2];
                frag_b_nmajor(b, ks, LD, nt * 8, kt * 16);
                mma_bf16_16816(s[nt], a, b);
                frag_b_nmajor(b, vs, LD, nt * 8, kt * 16);
                mma_bf16_16816(dp[nt], ad, b);
            }
        }
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int key = kb + nt * 8 + 2 * t + (i & 1);
                const int r = i >> 1, query = row_q0 + r * 8;
                const bool masked = key > query || key >= kb + kn;
                const float p = masked ? 0.f : exp2f(s[nt][i] * sl2 - lse_r[r]);
                s[nt][i] = p * (dp[nt][i] - d_r[r]);  // dS, in place
            }
        }
        // dQ += dS K, dS from the accumulator registers (same C -> A reuse as the forward).
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t a[4];
            a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                uint32_t b[2];
                frag_b_kmajor(b, ks, LD, kk * 16, nt * 8);
                mma_bf16_16816(dqa[nt], a, b);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int query = row_q0 + r * 8;
        if (query < q1) {
            T* dst = dq + query * qs + h * D + 2 * t;
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt)
                store2(dst + nt * 8, dqa[nt][2 * r] * scale, dqa[nt][2 * r + 1] * scale);
        }
    }
}

}  // namespace limo_flash

// ---------------------------------------------------------------------------------------------
// Entry points (C names, loaded by name from the PTX).

using namespace limo_flash;

#define LIMO_FLASH_ENTRIES(T, TN, D)                                                            \
    extern "C" __global__ void __launch_bounds__(128)                                           \
        flash_fwd_##TN##_hd##D(const T* q, const T* k, const T* v, T* out, float* lse,          \
                               const int* tiles, int n, int q_heads, int kv_heads,              \
                               float scale) {                                                   \
        flash_fwd<T, D>(q, k, v, out, lse, tiles, n, q_heads, kv_heads, scale);                 \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkdv_atomic_##TN##_hd##D(      \
        const T* q, const T* k, const T* v, const T* dout, const float* lse,                    \
        const float* delta, T* dk, T* dv, float* dq_accum, const int* tiles, int n,             \
        int q_heads, int kv_heads, float scale) {                                               \
        flash_bwd_dkdv<T, D, true>(q, k, v, dout, lse, delta, dk, dv, dq_accum, tiles, n,       \
                                   q_heads, kv_heads, scale);                                   \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkdv_##TN##_hd##D(             \
        const T* q, const T* k, const T* v, const T* dout, const float* lse,                    \
        const float* delta, T* dk, T* dv, const int* tiles, int n, int q_heads, int kv_heads,   \
        float scale) {                                                                          \
        flash_bwd_dkdv<T, D, false>(q, k, v, dout, lse, delta, dk, dv, nullptr, tiles, n,       \
                                    q_heads, kv_heads, scale);                                  \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) flash_bwd_dq_##TN##_hd##D(               \
        const T* q, const T* k, const T* v, const T* dout, const float* lse,                    \
        const float* delta, T* dq, const int* tiles, int n, int q_heads, int kv_heads,          \
        float scale) {                                                                          \
        flash_bwd_dq<T, D>(q, k, v, dout, lse, delta, dq, tiles, n, q_heads, kv_heads, scale);  \
    }

LIMO_FLASH_ENTRIES(bf16, bf16, 64)
LIMO_FLASH_ENTRIES(bf16, bf16, 128)
LIMO_FLASH_ENTRIES(float, f32, 64)
LIMO_FLASH_ENTRIES(float, f32, 128)

extern "C" __global__ void flash_bwd_preprocess_bf16(const bf16* dout, const bf16* out,
                                                     float* delta, int n, int q_heads,
                                                     int head_dim) {
    flash_bwd_preprocess<bf16>(dout, out, delta, n, q_heads, head_dim);
}

extern "C" __global__ void flash_bwd_preprocess_f32(const float* dout, const float* out,
                                                    float* delta, int n, int q_heads,
                                                    int head_dim) {
    flash_bwd_preprocess<float>(dout, out, delta, n, q_heads, head_dim);
}

extern "C" __global__ void flash_convert_dq_bf16(const float* src, bf16* dst, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

// Resource usage, ptxas -v (CUDA 13.0; no spills anywhere; registers per thread, dynamic shared
// memory per CTA as set by the wrapper):
//
//   kernel (bf16 and f32 alike)   threads  smem hd64/hd128    regs sm_90 hd64/hd128  sm_80
//   flash_fwd                       128    18,432 / 34,816       128 / 175         128 / 168
//   flash_bwd_dkdv_atomic           256    55,808 / 88,576       127 / 126         127 / 165
//   flash_bwd_dkdv                  256    55,808 / 88,576       126 / 126         125 / 128
//   flash_bwd_dq                    128    36,864 / 69,632       127 / 175         156 / 164
//   flash_bwd_preprocess            256         0                   30                30
//
// Not yet done for speed (correctness first): cp.async double buffering of the K/V tiles,
// ldmatrix for the fragment loads, 128-row query tiles in the forward, a persistent grid.

#ifdef LIMO_FLASH_EMULATE
#include "flash_attention_emulate_test.cuh"
#endif
