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
// document into tiles that start at the document's first token (128 query rows for the forward,
// 64 rows for the backward kernels) and uploads one triple (tile start, document start, document
// end) per tile. A tile never crosses a document boundary, so the varlen masking reduces to "key
// inside [document start, tile limit)" plus the causal "key <= query", and whole kv tiles outside
// the causal range are never visited (the loops start at the document start and stop at the
// diagonal; in the forward a warp also skips a kv tile that lies entirely after its 16 rows).
// The tail tile of a document is partial: its missing rows are loaded as zeros and masked or
// skipped on store. The wrapper orders the tiles longest-work first so the long causal rows start
// early and the short ones fill the tail of the grid. GQA reads the shared kv head in place
// (no expanded K/V copies).
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
// Fragment loads: ldmatrix.x4 (.trans for operands stored transposed: V, and P, dS, dO, Q, K in
// the backward's k-major products). ldmatrix gives lane l row l/4, columns 2(l%4)..+1 of each
// 8x8 b16 matrix (one register per matrix), which is the A/B layout above: one x4 is a whole A
// fragment or the B fragments of two adjacent n blocks. Lane l supplies the address of row l%8
// of matrix l/8.
//
// Global -> shared: cp.async.cg 16 bytes (bf16 inputs; rows past a partial tile are zero-filled
// by the copy's source size 0), commit_group / wait_group, multi-stage: the next two kv tiles
// (forward, three stages), the next kv tile (deterministic dQ, two stages) or the next query
// tile with its lse and D (dK/dV, two stages) are in flight while the current one is computed.
// Every loop iteration starts with wait_group (stages - 2) and one __syncthreads: the current
// tile has landed and every warp is done with the previous one, whose buffer the prefetch then
// overwrites. f32 inputs are rounded to bf16 as they are staged (a
// register round trip, synchronous), so the f32 entry points are a convenience for checking
// against the f32 CPU reference, with bf16 product precision; softmax and accumulation are fp32
// for both.
//
// Shared memory tiles are bf16 [rows][D + 8] (P and dS [64][72]): the 16-byte pad shifts
// consecutive rows by 4 banks, so the 8 row addresses of an ldmatrix phase (16 bytes each) and
// the 8 16-byte cp.async stores of a quarter warp (consecutive chunks of one row) fall into 8
// different 4-bank groups: no bank conflicts (the CPU emulation counts them and requires zero).
// Padding rather than an XOR swizzle keeps the addressing trivial at 6% (D=128) to 12% (D=64)
// more shared memory. Dynamic shared memory per CTA is 54-121 KiB (docs/CUDA.md): A100 (163 KiB)
// and H100/H200 (227 KiB) fit; sm_86/sm_89's 99 KiB do not at D=128.
//
// Kernels (each instantiated for T in {bf16, f32} and D in {64, 128}; names end in
// _{bf16,f32}_hd{64,128}):
//   flash_fwd_*           forward: 8 warps, 128 query rows per CTA (16 per warp), kv tiles of 64
//                         in three cp.async stages (two tiles in flight while one is computed;
//                         the Q tile is staged in the third). Q fragments live in registers, K
//                         and V tiles in shared memory. Online softmax in the exp2 domain
//                         (scores pre-multiplied by scale*log2 e); O is rescaled in registers
//                         when the running max grows and divided by the row sum once at the
//                         end; lse = (m + log2 l) * ln 2. bf16 O leaves through shared memory
//                         (the Q tile's place) as 16-byte stores.
//                         8 warps x 16 rows rather than 4 x 32: at D=128 a 32-row warp needs
//                         128 (O) + 64 (S) fp32 accumulator registers before Q's fragments
//                         (64 more) and addresses, beyond the 255 limit without spilling or
//                         re-reading Q from shared memory every kv tile; 16 rows keep O 64, S 32,
//                         Q 32 registers and no spills, at the price of one ldmatrix per MMA for
//                         the K/V operand instead of one per two.
//   flash_bwd_preprocess_* D_i = rowsum(dO_i * O_i), [q_heads, N] f32, one warp per row.
//   flash_bwd_dkdv_*      8 warps, one kv tile of 64 keys of one kv head per CTA; loops over the
//                         query heads of the group (fixed order) and, for each, over the query
//                         tiles at or after the kv tile up to the document end, the next query
//                         tile (Q, dO, lse, D) prefetched by cp.async. dK and dV stay in
//                         registers for the whole loop, so the group sum needs no atomics and
//                         is deterministic. Phase 1 (warp = 16 query rows x 32 keys): S = Q K^T,
//                         P = exp2(S*scale*log2e - lse*log2e), dP = dO V^T, dS = P (dP - D), both
//                         written to shared memory as bf16. Phase 2 (warp = 16 keys x D/2):
//                         dV += P^T dO, dK += dS^T Q. Atomic variant (..._atomic_..., the
//                         default): also dQ += scale dS K with fp32 atomicAdd (2-wide on
//                         sm_90) into a [N, q_heads, D] buffer (order of the adds varies run to
//                         run -> not bit-reproducible).
//   flash_bwd_dq_*        the deterministic dQ: 4 warps, 64 query rows of one query head per
//                         CTA, loops over the kv tiles of the causal range in order (two-stage
//                         cp.async as in the forward); recomputes S, P, dP, dS (as in phase 1)
//                         and accumulates dQ += dS K in registers; no atomics, every dQ element
//                         is the sum of the same terms in the same order on every run. Costs the
//                         S and dP recomputation (two of the backward's five matmuls again, ~+40%
//                         backward FLOPs) and a second pass over K/V, against the atomic
//                         variant's fp32 atomics and [N, q_heads, D] f32 buffer.
//   flash_convert_dq_bf16 fp32 dQ accumulator -> bf16 output (atomic variant, bf16 only).
//
// Resource usage (ptxas -v) and the SASS to expect: docs/CUDA.md. Checked on the CPU without a
// GPU: flash_attention_emulate.cuh runs these kernels' code under an emulation of the CUDA
// built-ins (ldmatrix and cp.async included).

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

// PTX wrappers (mma.sync, ldmatrix, cp.async), fragment loads and row staging.
#include "ampere.cuh"

namespace limo_flash {

constexpr int kTile = 64;      // kv tiles everywhere; query tiles of the backward kernels
constexpr int kFwdTile = 128;  // query tiles of the forward (the wrapper's block tables too)

// The query tile of this block (tile table entry blockIdx.x, query head blockIdx.y): rows q0..q1
// of head h, reading kv head kvh from its document's start doc0; qs/kvs are the token strides.
struct QueryTile {
    int q0, doc0, q1, h, kvh;
    long long qs, kvs;
};

template <int D, int BR>
__device__ __forceinline__ QueryTile query_tile(const int* tiles, int q_heads, int kv_heads) {
    const int q0 = tiles[3 * blockIdx.x], doc0 = tiles[3 * blockIdx.x + 1];
    const int doc1 = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, kvh = h / (q_heads / kv_heads);
    const int q1 = min(q0 + BR, doc1);
    return {q0, doc0, q1, h, kvh, (long long)q_heads * D, (long long)kv_heads * D};
}

// Key tile j of the query tile's causal range (keys doc0 + j * BC .., up to its last query) into
// stage `stage` of kv_s: K rows, then V rows, [BC][D + 8] each.
template <typename T, int D, int BC, int NT>
__device__ __forceinline__ void stage_kv(bf16* kv_s, int stage, const T* k, const T* v,
                                         const QueryTile& qt, int j) {
    constexpr int LD = D + 8;
    const int kb = qt.doc0 + j * BC, kn = min(BC, qt.q1 - kb);
    bf16* ks = kv_s + stage * 2 * BC * LD;
    stage_rows<T, D, BC, NT>(ks, LD, k + kb * qt.kvs + qt.kvh * D, qt.kvs, kn);
    stage_rows<T, D, BC, NT>(ks + BC * LD, LD, v + kb * qt.kvs + qt.kvh * D, qt.kvs, kn);
}

template <int N>
__device__ __forceinline__ void zero(float (&x)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i) x[i][0] = x[i][1] = x[i][2] = x[i][3] = 0.f;
}

// acc += C B: C, this warp's 16 x BC product still in accumulator registers, is the A operand
// (the accumulator layout of two n8 tiles is the A fragment of one k16 step, packed to bf16);
// B is the k-major [BC][D] tile m in shared memory. O += P V in the forward, dQ += dS K.
template <int BC, int D>
__device__ __forceinline__ void mma_acc_times(float (&acc)[D / 8][4], const float (&c)[BC / 8][4],
                                              const bf16* m, int ld) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t a[4];
        a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
        a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
        a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
        a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
#pragma unroll
        for (int np = 0; np < D / 16; ++np) {
            uint32_t b[4];
            frag_b2_kmajor(b, m, ld, kk * 16, np * 16);
            mma_bf16_16816(acc[2 * np], a, b);
            mma_bf16_16816(acc[2 * np + 1], a, b + 2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward

// Forward dynamic shared memory: three stages of K, V [64][D+8] bf16; the Q tile [128][D+8]
// is exactly one stage and is staged in the last one, which takes its first kv tile (tile 2)
// only after every warp holds its Q fragments (104,448 bytes at D=128, 55,296 at D=64).
constexpr int kFwdStages = 3;
template <int D>
struct FwdSmem {
    static constexpr int LD = D + 8;
    static constexpr int bytes = kFwdStages * 2 * kTile * LD * 2;
};

template <typename T, int D>
__device__ __forceinline__ void flash_fwd(const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v, T* __restrict__ out,
                                          float* __restrict__ lse, const int* __restrict__ tiles,
                                          int n, int q_heads, int kv_heads, float scale) {
    constexpr int BR = kFwdTile, BC = kTile, LD = D + 8, NT = 256, S = kFwdStages;
    static_assert(BR == 2 * BC, "the Q tile fills one K+V stage");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* kv_s = reinterpret_cast<bf16*>(smem_raw);  // stage s: K at kv_s + s*2*BC*LD, V after it
    bf16* qsm = kv_s + (S - 1) * 2 * BC * LD;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const QueryTile qt = query_tile<D, BR>(tiles, q_heads, kv_heads);
    const int q0 = qt.q0, doc0 = qt.doc0, q1 = qt.q1, h = qt.h;
    const long long qs = qt.qs;
    // Causal + varlen: keys from the document start up to the last query of the tile.
    const int n_kv = (q1 - doc0 + BC - 1) / BC;
    auto issue_kv = [&](int j) { stage_kv<T, D, BC, NT>(kv_s, j % S, k, v, qt, j); };

    // Groups: {Q, tile 0}, {tile 1}, then one per loop iteration (tile j + S - 1, or empty), so
    // at iteration j's wait the S - 2 newest groups are the tiles after j.
    stage_rows<T, D, BR, NT>(qsm, LD, q + q0 * qs + h * D, qs, q1 - q0);
    issue_kv(0);
    cp_async_commit();
#pragma unroll
    for (int j = 1; j < S - 1; ++j) {
        if (j < n_kv) issue_kv(j);
        cp_async_commit();
    }
    cp_async_wait<S - 2>();
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kt = 0; kt < D / 16; ++kt) frag_a(qf[kt], qsm, LD, warp * 16, kt * 16);

    float o[D / 8][4];
    zero(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const float sl2 = scale * LOG2E_F;
    const int wq0 = q0 + warp * 16;  // this warp's first query
    const int row_q0 = wq0 + g;      // this thread's rows: row_q0 and row_q0 + 8

    for (int j = 0; j < n_kv; ++j) {
        // Tile j has landed (this thread's copies; tiles up to j + S - 2 may still be in flight)
        // and every warp is done with tile j - 1 and, at j = 0, with Q (everyone's), so the
        // prefetch may overwrite tile j - 1's stage (Q's at j = 0).
        cp_async_wait<S - 2>();
        __syncthreads();
        if (j + S - 1 < n_kv) issue_kv(j + S - 1);
        cp_async_commit();

        const int kb = doc0 + j * BC, kn = min(BC, q1 - kb);
        // A kv tile entirely after this warp's last query is all masked: skip it (warp-uniform).
        if (kb > wq0 + 15) continue;
        const bf16* ks = kv_s + (j % S) * 2 * BC * LD;
        const bf16* vs = ks + BC * LD;

        float s[BC / 8][4];
        zero(s);
#pragma unroll
        for (int kt = 0; kt < D / 16; ++kt) {
#pragma unroll
            for (int np = 0; np < BC / 16; ++np) {
                uint32_t b[4];
                frag_b2_nmajor(b, ks, LD, np * 16, kt * 16);
                mma_bf16_16816(s[2 * np], qf[kt], b);
                mma_bf16_16816(s[2 * np + 1], qf[kt], b + 2);
            }
        }

        // Only the diagonal tile (keys past this warp's first query) and a partial tile need
        // the element mask; the others are entirely visible.
        const bool need_mask = (kb + BC - 1 > wq0) || (kn < BC);
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
        mma_acc_times<BC, D>(o, s, vs, LD);
    }

    // Epilogue. bf16: the warp's 16 rows of O go through its own rows of the Q tile's place, so
    // the global stores are whole 16-byte chunks, consecutive lanes on consecutive chunks of a
    // row; that place is a kv stage other warps may still be reading, hence the barrier (no
    // copies are pending: the last tile was waited for). f32: pairs straight from the
    // accumulators.
    if constexpr (IsBf16<T>::value) __syncthreads();
    bf16* ow = qsm + warp * 16 * LD;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int query = row_q0 + r * 8;
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        if constexpr (IsBf16<T>::value) {
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt)
                *reinterpret_cast<uint32_t*>(ow + (g + r * 8) * LD + nt * 8 + 2 * t) =
                    pack_bf16(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
        } else if (query < q1) {
            T* dst = out + query * qs + h * D + 2 * t;
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt)
                store2(dst + nt * 8, o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
        }
        if (query < q1 && t == 0) lse[(long long)h * n + query] = (m[r] + log2f(sum)) * LN2_F;
    }
    if constexpr (IsBf16<T>::value) {
        __syncwarp();
        constexpr int kChunks = D / 8;
#pragma unroll
        for (int c = lane; c < 16 * kChunks; c += 32) {
            const int r = c / kChunks, col = (c % kChunks) * 8;
            if (wq0 + r < q1)
                *reinterpret_cast<uint4*>(out + (wq0 + r) * qs + h * D + col) =
                    *reinterpret_cast<const uint4*>(ow + r * LD + col);
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
// Backward dK/dV (+ atomic dQ). Dynamic shared memory, laid out as
//   K, V : 2 x [64][D+8] bf16,  two stages of Q, dO : 2 x 2 x [64][D+8] bf16,
//   P, dS : 2 x [64][64+8] bf16,  two stages of lse, D : 2 x 2 x [64] f32
// = 123,904 bytes at D=128 and 74,752 at D=64 (the wrapper computes the same sum).

template <int D>
struct BwdSmem {
    static constexpr int LD = D + 8, LDP = kTile + 8;
    static constexpr int bytes = 6 * kTile * LD * 2 + 2 * kTile * LDP * 2 + 4 * kTile * 4;
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
    bf16* qdo_s = vs + BC * LD;  // stage s: Q at qdo_s + s * 2 * BR * LD, dO right after it
    bf16* ps = qdo_s + 4 * BR * LD;
    bf16* dss = ps + BR * LDP;
    float* ld_s = reinterpret_cast<float*>(dss + BR * LDP);  // stage s: lse, D at ld_s + s * 2 * BR

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int k0 = tiles[3 * blockIdx.x], doc1 = tiles[3 * blockIdx.x + 2];
    const int kvh = blockIdx.y, group = q_heads / kv_heads;
    const int kn = min(BC, doc1 - k0);
    const long long qs = (long long)q_heads * D, kvs = (long long)kv_heads * D;
    const float sl2 = scale * LOG2E_F;
    // Queries before k0 never see these keys (causal), queries after the document end are
    // another document: per query head of the group, the query tiles run from k0 to the
    // document end. Iteration it = (head hi, tile): hi = it / n_qt.
    const int n_qt = (doc1 - k0 + BR - 1) / BR, n_it = group * n_qt;

    // Query tile `it` (Q, dO and, as raw lse and D, its rows' statistics) into stage it & 1.
    // Missing rows get lse = D = 0 and are masked in phase 1.
    auto issue_q = [&](int it) {
        const int h = kvh * group + it / n_qt, qb = k0 + (it % n_qt) * BR;
        const int nq = min(BR, doc1 - qb);
        bf16* qsm = qdo_s + (it & 1) * 2 * BR * LD;
        stage_rows<T, D, BR, NT>(qsm, LD, q + qb * qs + h * D, qs, nq);
        stage_rows<T, D, BR, NT>(qsm + BR * LD, LD, dout + qb * qs + h * D, qs, nq);
        if (threadIdx.x < 2 * BR) {
            const int r = threadIdx.x & (BR - 1);
            const float* src = threadIdx.x < BR ? lse : delta;
            const long long row = (long long)h * n + qb + (r < nq ? r : 0);
            cp_async<4>(ld_s + (it & 1) * 2 * BR + threadIdx.x, src + row, r < nq);
        }
    };

    stage_rows<T, D, BC, NT>(ks, LD, k + k0 * kvs + kvh * D, kvs, kn);
    stage_rows<T, D, BC, NT>(vs, LD, v + k0 * kvs + kvh * D, kvs, kn);
    issue_q(0);
    cp_async_commit();

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

    for (int it = 0; it < n_it; ++it) {
        // Query tile `it` has landed and the previous iteration's phase 2 is done with its
        // stage and with P, dS: prefetch the next tile there.
        cp_async_wait<0>();
        __syncthreads();
        if (it + 1 < n_it) issue_q(it + 1);
        cp_async_commit();

        const int h = kvh * group + it / n_qt, qb = k0 + (it % n_qt) * BR;
        const int nq = min(BR, doc1 - qb);
        const bf16* qsm = qdo_s + (it & 1) * 2 * BR * LD;
        const bf16* dos = qsm + BR * LD;
        const float* lse_s = ld_s + (it & 1) * 2 * BR;
        const float* d_s = lse_s + BR;

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
            for (int np = 0; np < 2; ++np) {
                uint32_t b[4];
                frag_b2_nmajor(b, ks, LD, pc + np * 16, kt * 16);
                mma_bf16_16816(s[2 * np], a, b);
                mma_bf16_16816(s[2 * np + 1], a, b + 2);
                frag_b2_nmajor(b, vs, LD, pc + np * 16, kt * 16);
                mma_bf16_16816(dp[2 * np], ad, b);
                mma_bf16_16816(dp[2 * np + 1], ad, b + 2);
            }
        }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = pr + g + r * 8, col = pc + nt * 8 + 2 * t;
                const int query = qb + row, key = k0 + col;
                const float lse2 = lse_s[row] * LOG2E_F, dr = d_s[row];
                float p[2], d[2];
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const bool masked = key + j > query || col + j >= kn || row >= nq;
                    p[j] = masked ? 0.f : exp2f(s[nt][2 * r + j] * sl2 - lse2);
                    d[j] = p[j] * (dp[nt][2 * r + j] - dr);
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
            for (int np = 0; np < D / 32; ++np) {
                uint32_t b[4];
                frag_b2_kmajor(b, dos, LD, kt * 16, dc + np * 16);
                mma_bf16_16816(dva[2 * np], a, b);
                mma_bf16_16816(dva[2 * np + 1], a, b + 2);
            }
            frag_a_trans(a, dss, LDP, kr, kt * 16);
#pragma unroll
            for (int np = 0; np < D / 32; ++np) {
                uint32_t b[4];
                frag_b2_kmajor(b, qsm, LD, kt * 16, dc + np * 16);
                mma_bf16_16816(dka[2 * np], a, b);
                mma_bf16_16816(dka[2 * np + 1], a, b + 2);
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
                for (int np = 0; np < D / 32; ++np) {
                    uint32_t b[4];
                    frag_b2_kmajor(b, ks, LD, kt * 16, dc + np * 16);
                    mma_bf16_16816(acc[2 * np], a, b);
                    mma_bf16_16816(acc[2 * np + 1], a, b + 2);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = kr + g + r * 8;
                if (row < nq) {
                    float* dst = dq_accum + (qb + row) * qs + h * D + dc + 2 * t;
#pragma unroll
                    for (int nt = 0; nt < D / 16; ++nt) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                        // sm_90 has 2-wide fp32 reductions: half the atomic requests.
                        atomicAdd(reinterpret_cast<float2*>(dst + nt * 8),
                                  make_float2(acc[nt][2 * r] * scale, acc[nt][2 * r + 1] * scale));
#else
                        atomicAdd(dst + nt * 8, acc[nt][2 * r] * scale);
                        atomicAdd(dst + nt * 8 + 1, acc[nt][2 * r + 1] * scale);
#endif
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
// Deterministic dQ. Dynamic shared memory: Q, dO [64][D+8], then two stages of K, V [64][D+8],
// bf16 (104,448 bytes at D=128, 55,296 at D=64).

template <int D>
struct DqSmem {
    static constexpr int bytes = 6 * kTile * (D + 8) * 2;
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
    bf16* kv_s = dos + BR * LD;  // stage s: K at kv_s + s * 2 * BC * LD, V right after it

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const QueryTile qt = query_tile<D, BR>(tiles, q_heads, kv_heads);
    const int q0 = qt.q0, doc0 = qt.doc0, q1 = qt.q1, h = qt.h;
    const long long qs = qt.qs;
    const float sl2 = scale * LOG2E_F;
    const int n_kv = (q1 - doc0 + BC - 1) / BC;
    auto issue_kv = [&](int j) { stage_kv<T, D, BC, NT>(kv_s, j & 1, k, v, qt, j); };

    stage_rows<T, D, BR, NT>(qsm, LD, q + q0 * qs + h * D, qs, q1 - q0);
    stage_rows<T, D, BR, NT>(dos, LD, dout + q0 * qs + h * D, qs, q1 - q0);
    issue_kv(0);
    cp_async_commit();
    const int row_q0 = q0 + warp * 16 + g;
    float lse_r[2], d_r[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int query = row_q0 + r * 8;
        lse_r[r] = query < q1 ? lse[(long long)h * n + query] * LOG2E_F : INFINITY;
        d_r[r] = query < q1 ? delta[(long long)h * n + query] : 0.f;
    }

    float dqa[D / 8][4];
    zero(dqa);

    for (int j = 0; j < n_kv; ++j) {
        // As in the forward: tile j landed, tile j - 1's stage free for the prefetch.
        cp_async_wait<0>();
        __syncthreads();
        if (j + 1 < n_kv) issue_kv(j + 1);
        cp_async_commit();

        const int kb = doc0 + j * BC, kn = min(BC, q1 - kb);
        const bf16* ks = kv_s + (j & 1) * 2 * BC * LD;
        const bf16* vs = ks + BC * LD;

        float s[BC / 8][4], dp[BC / 8][4];
        zero(s);
        zero(dp);
#pragma unroll
        for (int kt = 0; kt < D / 16; ++kt) {
            uint32_t a[4], ad[4];
            frag_a(a, qsm, LD, warp * 16, kt * 16);
            frag_a(ad, dos, LD, warp * 16, kt * 16);
#pragma unroll
            for (int np = 0; np < BC / 16; ++np) {
                uint32_t b[4];
                frag_b2_nmajor(b, ks, LD, np * 16, kt * 16);
                mma_bf16_16816(s[2 * np], a, b);
                mma_bf16_16816(s[2 * np + 1], a, b + 2);
                frag_b2_nmajor(b, vs, LD, np * 16, kt * 16);
                mma_bf16_16816(dp[2 * np], ad, b);
                mma_bf16_16816(dp[2 * np + 1], ad, b + 2);
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
        mma_acc_times<BC, D>(dqa, s, ks, LD);
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
// Entry points (C names, loaded by name from the PTX / cubin). The forward runs one 256-thread
// CTA per SM by registers (~200 per thread), so its launch bounds ask for one block. dK/dV's
// bounds are per head_dim, by measurement (ptxas, docs/CUDA.md): at D=128 a minimum of one
// block lets ptxas go to 255 registers and spill in the atomic variant, while the plain bound
// lands at ~195 without spills; at D=64 the plain bound caps at 128 and spills, one block does
// not.

using namespace limo_flash;

#define LIMO_FLASH_ENTRIES(T, TN, D, DKDV_BOUNDS)                                               \
    extern "C" __global__ void __launch_bounds__(256, 1)                                        \
        flash_fwd_##TN##_hd##D(const T* q, const T* k, const T* v, T* out, float* lse,          \
                               const int* tiles, int n, int q_heads, int kv_heads,              \
                               float scale) {                                                   \
        flash_fwd<T, D>(q, k, v, out, lse, tiles, n, q_heads, kv_heads, scale);                 \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__ DKDV_BOUNDS flash_bwd_dkdv_atomic_##TN##_hd##D(\
        const T* q, const T* k, const T* v, const T* dout, const float* lse,                    \
        const float* delta, T* dk, T* dv, float* dq_accum, const int* tiles, int n,             \
        int q_heads, int kv_heads, float scale) {                                               \
        flash_bwd_dkdv<T, D, true>(q, k, v, dout, lse, delta, dk, dv, dq_accum, tiles, n,       \
                                   q_heads, kv_heads, scale);                                   \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__ DKDV_BOUNDS flash_bwd_dkdv_##TN##_hd##D(       \
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

LIMO_FLASH_ENTRIES(bf16, bf16, 64, (256, 1))
LIMO_FLASH_ENTRIES(bf16, bf16, 128, (256))
LIMO_FLASH_ENTRIES(float, f32, 64, (256, 1))
LIMO_FLASH_ENTRIES(float, f32, 128, (256))

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

#ifdef LIMO_FLASH_EMULATE
#include "flash_attention_emulate_test.cuh"
#endif
