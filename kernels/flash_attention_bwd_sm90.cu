// FlashAttention-3-style backward for Hopper (sm_90a only) for limo: dK, dV and the accumulated
// dQ of causal grouped-query attention over packed documents, bf16 in, fp32 accumulation. Same
// contract and same results as flash_bwd_dkdv_atomic_bf16_* in flash_attention.cu:
//   q [N, q_heads, D], k/v [N, kv_heads, D], dO [N, q_heads, D] bf16 contiguous; lse and
//   delta = rowsum(dO * O) (flash_bwd_preprocess_*) [q_heads, N] f32; dk/dv [N, kv_heads, D]
//   bf16 (every element written); dq_accum [N, q_heads, D] f32, zeroed by the host, receives
//   scale * dS K by TMA reduce-adds (through the tensor map tm_dq; flash_convert_dq_bf16 turns
//   it into dQ). Documents come from the wrapper's tile table: one (tile start, document
//   start, document end) triple per tile of 128 keys, tiles never cross a document, longest
//   work (most queries after the tile) first.
//   Query head h reads kv head h / (q_heads / kv_heads) in place. D is 64 or 128.
//   With P = exp(scale q.k - lse) (causal, same document) and dS = P (dO.v - delta):
//   dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K.
//
// Built by build.rs only as an sm_90a cubin; loaded on compute capability 9.x only
// (crates/limo-ops/src/cuda/flash_attention_bwd_sm90.rs).
//
// CTA: 384 threads = 3 warpgroups, one tile of 128 keys of one kv head (grid: tiles x kv_heads).
// It loops over the query heads of the GQA group and, per head, over the 64-row query blocks
// from the tile start to the document end (earlier queries never see these keys); dK and dV
// stay in registers for the whole loop, so the group sum needs no atomics.
//   warpgroup 0, the producer (setmaxnreg.dec 24): thread 0 loads K and V once and, per
//     iteration, the Q and dO blocks into a ring of kStages stages by TMA (tensor maps over
//     [N, heads, D], {64 columns, 1 head, 128 or 64 rows} boxes, 128-byte swizzle); warp 1
//     copies the block's lse (times log2 e) and delta into the stage (zeros past the document),
//     then arrives on the stage's "full" barrier (1 + 32 arrivals plus the TMA bytes). A stage
//     is refilled once both consumer warpgroups released it on its "empty" barrier.
//   warpgroups 1 and 2, the consumers (setmaxnreg.inc 240): warpgroup c owns keys 64c..64c+63
//     of the tile (the m64 of its wgmmas). Per iteration (S^T = K Q^T, D/16 wgmma.m64n64k16
//     with both operands K-major in shared memory, was issued by the previous one):
//       dP^T = V dO^T (as S^T, one commit group); while it runs, S^T having retired,
//       P^T = exp2(S^T scale log2 e - lse log2 e) masked (key > query, or query past the
//         document; the mask is a branch of its own, taken only by blocks that need it, and
//         that branch between the dP^T issue and the exp2s is what keeps ptxas from sinking
//         the dP^T HGMMAs below them), rounded to bf16 A fragments in registers (the
//         accumulator fragment of keys x queries is the A fragment of the next product), and
//         dV += P^T dO issued at once (4 wgmma.m64nDk16, A from registers, dO N-major), so
//         it runs while
//       dS^T = P^T (dP^T - delta) is computed (after wait_group 1 retired dP^T), rounded to A
//         fragments and stored to shared memory ([128 keys][64 queries], 128-byte swizzle,
//         double buffered) for dQ;
//       dK += dS^T Q (as dV);
//       dQ = dS K (wgmma.m64n64k16, A = dS from shared memory MN-major (imm-trans-a), B = K
//         N-major): at D=128 warpgroup c takes columns 64c..64c+63 over all 128 keys (a named
//         barrier over both consumers orders the dS stores); at D=64 it takes all 64 columns
//         over its own 64 keys (a per-warpgroup named barrier; each dQ element gets two adds);
//       wait for everything, release the stage, issue S^T of the next iteration, and while it
//         runs add scale dQ to dq_accum: stored (fp32) to this warpgroup's dQ staging buffer
//         in shared memory, fence.proxy.async, a per-warpgroup named barrier, then thread 0
//         issues cp.reduce.async.bulk.tensor (add, two {32 columns, 1 head, 64 rows} boxes)
//         and commits a bulk group; retire S^T. Two staging buffers per warpgroup: buffer it & 1
//         is rewritten only after thread 0's cp.async.bulk.wait_group.read 1 (the reduce of
//         it - 2 has read it), placed before the dS^T barrier of iteration it, which tells the
//         other threads. So the reduce overlaps the next S^T and the next iteration. Rows past
//         the document add zeros (P = 0 there), rows past N are skipped by TMA; at D=64 both
//         warpgroups add into the same region. wait_group.read 0 at the very end.
//     The first k-step of each chain writes its accumulator without reading it (scale-d 0, an
//     output-only asm operand), no wgmma is left in flight across the loop's back edge and none
//     is issued under a runtime condition (the last iteration is a separate copy): ptxas
//     serialises the wgmmas (C7514) when it cannot see that no other instruction touches their
//     registers meanwhile. At the end dK scale and dV go from registers to global memory as bf16.
//   Not (yet) done relative to FlashAttention-3: more overlap between the softmax and the
//   tensor cores within a warpgroup (the other consumer warpgroup is what fills the gaps),
//   skipping the all-masked first query block of warpgroup 2, deterministic dQ (the wrapper
//   keeps the sm_80 kernels for that).
//
// Fragment layouts (PTX ISA, wgmma .m64nNk16; thread i of a warpgroup, w = i / 32, g =
// (i % 32) / 4, t = i % 4): D: d[j] = D[16w + g + 8((j/2)%2)][8(j/4) + 2t + (j%2)]; A: a[x] holds
// A[16w + g + 8(x%2)][8(x/2) + 2t + {0,1}], so accumulator registers 8kk..8kk+7 of a 64-column
// product are the A fragment of k-step kk (the forward's P V trick).
//
// Shared memory (1024-aligned base; tiles stored as D/64 column blocks of [rows][64] bf16 with
// TMA's 128-byte swizzle: 16-byte chunk c of row r at chunk c ^ (r % 8)):
//   K, V [128][D]; kStages x (Q [64][D], dO [64][D]); 2 x dS^T [128][64]; 2 warpgroups x 2 dQ
//   staging buffers, each two [64 rows][32 cols] f32 boxes (128-byte rows, the same 128-byte
//   swizzle: 16-byte chunk k of row r at k ^ (r % 8), as the TMA reduce reads them; lanes of odd
//   g store column block nb ^ 2 where the others store nb, so that the 64-bit fragment stores of
//   each half-warp cover all 32 banks); kStages x (lse log2e [64], delta [64]) f32; mbarriers.
//   Descriptors (start, LBO, SBO):
//   K-major operands (K, V as A; Q, dO as B): start = block (kt/4) + 32 (kt%4) (+ 8192 c for A's
//     rows 64c..), SBO 1024 between 8-row groups;
//   N-major B (dO, Q in dV/dK; K in dQ): start + 2048 per 16 k-rows, SBO 1024 (8 k-rows), LBO =
//     one column block (8192 for 64-row Q/dO, 16384 for 128-row K);
//   MN-major A (dS in dQ): start + 2048 per 16 keys, SBO 1024; 64 queries = one swizzle row.
// Sizes: hd128 64 KiB K/V + 2 x 32 KiB Q/dO + 32 KiB dS + 64 KiB dQ staging + 1 KiB stats =
// 231,464 bytes with the barriers and the alignment slack (of 232,448); hd64 165,928.
//
// Checked on the CPU without a GPU: flash_attention_bwd_sm90_emulate_test.cuh runs this file on
// flash_attention_sm90_emulate.cuh against float64 (scripts/test-flash-emulation.sh).

#ifdef LIMO_FLASH_EMULATE
#include "flash_attention_sm90_emulate.cuh"
#else
#include <cuda.h>  // CUtensorMap (the type only; the maps are built on the host)
#include <cuda_bf16.h>
#include <stdint.h>
#endif

#include "hopper.cuh"

typedef __nv_bfloat16 bf16;

#define LOG2E_F 1.4426950408889634f

// The forward's namespace: the emulation's shared-memory buffer lives there.
namespace limo_flash_sm90 {

constexpr int kBwdKeys = 128;    // keys per CTA (64 per consumer warpgroup)
constexpr int kBwdQueries = 64;  // query rows per iteration
constexpr int kBwdStages = 2;    // Q/dO ring depth
constexpr int kKBlockBytes = kBwdKeys * 128;     // one [128][64] column block of K or V
constexpr int kQBlockBytes = kBwdQueries * 128;  // one [64][64] column block of Q or dO
constexpr int kDsBytes = kBwdKeys * kBwdQueries * 2;
constexpr int kDqBoxBytes = kBwdQueries * 32 * 4;  // one [64][32] f32 box of the dQ staging
constexpr int kDqBytes = 2 * kDqBoxBytes;           // a warpgroup's 64 x 64 dQ, two boxes

template <int D>
struct BwdSmem {
    static constexpr int kv_tile = kBwdKeys * D * 2;
    static constexpr int q_tile = kBwdQueries * D * 2;
    static constexpr int k = 0;
    static constexpr int v = kv_tile;
    static constexpr int q = 2 * kv_tile;  // stage s: Q at q + 2 s q_tile, dO right after
    static constexpr int ds = q + kBwdStages * 2 * q_tile;  // buffer b at ds + b kDsBytes
    static constexpr int dq = ds + 2 * kDsBytes;  // warpgroup c, buffer b at dq + (2c + b) kDqBytes
    static constexpr int stats = dq + 4 * kDqBytes;  // stage s: lse log2e [64], delta [64]
    static constexpr int stats_bytes = 2 * kBwdQueries * 4;
    static constexpr int bars = stats + kBwdStages * stats_bytes;
    static constexpr int bar_bytes = 8 * (1 + 2 * kBwdStages);
    static constexpr int bytes = bars + bar_bytes + 1024;
    static_assert(bytes <= 227 * 1024, "sm_90's 227 KiB of shared memory per block");
};

// PTX wrappers: hopper.cuh (included above).

// wgmma.mma_async m64n64k16 bf16 -> f32, both operands from shared memory; TA / TB: imm-trans-a
// / imm-trans-b (1: the operand is MN-major). scale_d 0: D = A B, 1: D += A B.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t da, uint64_t db, int scale_d) {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma<64>(d, da, nullptr, db, scale_d, TB != 0, TA != 0);
#else
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        LIMO_WG_R32 ", "
        "%32, %33, p, 1, 1, %35, %36;\n}\n"
        : LIMO_WG_D32("+f")
        : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB));
#endif
}

// The same with scale-d 0 and the accumulator as output only ("=f"): the first k-step of a
// chain. With "+f" the stale values are an input the compiler must keep and may copy into
// place between wgmma.fence and the wgmma, which makes ptxas serialise the pipeline (C7514).
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n64_first(float (&d)[32], uint64_t da, uint64_t db) {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma<64>(d, da, nullptr, db, 0, TB != 0, TA != 0);
#else
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        LIMO_WG_R32 ", "
        "%32, %33, p, 1, 1, %34, %35;\n}\n"
        : LIMO_WG_D32("=f")
        : "l"(da), "l"(db), "n"(TA), "n"(TB));
#endif
}

// A chain step: the first writes, the others accumulate.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n64_step(float (&d)[32], uint64_t da, uint64_t db, bool first) {
    if (first) wgmma_ss_n64_first<TA, TB>(d, da, db);
    else wgmma_ss_n64<TA, TB>(d, da, db, 1);
}

// A from registers, B from shared memory N-major (imm-trans-b 1), accumulate (scale-d 1).
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma<64>(d, 0, a, db, 1, true);
#else
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        LIMO_WG_R32 ", "
        "{%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
        : LIMO_WG_D32("+f")
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
#endif
}

__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma<128>(d, 0, a, db, 1, true);
#else
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        LIMO_WG_R64 ", "
        "{%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
        : LIMO_WG_D64("+f")
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
#endif
}

// A compile-time flag for generic lambdas (`if constexpr (decltype(f)::value)`).
template <bool B>
struct Flag {
    static constexpr bool value = B;
};

template <int D>
__device__ __forceinline__ void wgmma_rs_nd(float (&d)[D / 2], const uint32_t (&a)[4], uint64_t db) {
    if constexpr (D == 64) wgmma_rs_n64(d, a, db);
    else wgmma_rs_n128(d, a, db);
}

// ---------------------------------------------------------------------------------------------
// The backward

template <int D>
__device__ __forceinline__ void flash_bwd_sm90(const CUtensorMap* tm_q, const CUtensorMap* tm_k,
                                               const CUtensorMap* tm_v, const CUtensorMap* tm_do,
                                               const CUtensorMap* tm_dq,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ delta,
                                               bf16* __restrict__ dk, bf16* __restrict__ dv,
                                               const int* __restrict__ tiles, int n, int q_heads,
                                               int kv_heads, float scale) {
    static_assert(D == 64 || D == 128, "head_dim 64 or 128");
    using L = BwdSmem<D>;
    constexpr int CB = D / 64;  // column blocks per tile
    constexpr int S = kBwdStages;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char* base = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    uint64_t* bars = reinterpret_cast<uint64_t*>(base + L::bars);
    uint64_t* kv_full = bars;
    uint64_t* q_full = bars + 1;       // [S]
    uint64_t* q_empty = bars + 1 + S;  // [S]

    const int k0 = tiles[3 * blockIdx.x], doc1 = tiles[3 * blockIdx.x + 2];
    const int kvh = blockIdx.y, group = q_heads / kv_heads;
    // Query blocks from the tile start (earlier queries never see these keys) to the document
    // end, for every query head of the group: iteration it = (head it / n_qb, block it % n_qb).
    const int n_qb = (doc1 - k0 + kBwdQueries - 1) / kBwdQueries, n_it = group * n_qb;
    const int wg = threadIdx.x / 128;

    if (threadIdx.x == 0) {
        mbar_init(kv_full, 1);
        for (int s = 0; s < S; ++s) {
            mbar_init(&q_full[s], 1 + 32);    // the TMA thread + the stats warp
            mbar_init(&q_empty[s], 2 * 128);  // every consumer thread
        }
        fence_barrier_init();
    }
    __syncthreads();

    if (wg == 0) {
        setmaxnreg_dec<24>();
        if (threadIdx.x == 0) {
            mbar_arrive_expect_tx(kv_full, 2 * L::kv_tile);
#pragma unroll
            for (int cb = 0; cb < CB; ++cb) {
                tma_load_3d(base + L::k + cb * kKBlockBytes, tm_k, cb * 64, kvh, k0, kv_full);
                tma_load_3d(base + L::v + cb * kKBlockBytes, tm_v, cb * 64, kvh, k0, kv_full);
            }
            for (int it = 0; it < n_it; ++it) {
                const int st = it % S, h = kvh * group + it / n_qb;
                const int qb = k0 + (it % n_qb) * kBwdQueries;
                mbar_wait(&q_empty[st], ((it / S) & 1) ^ 1);
                unsigned char* qs = base + L::q + st * 2 * L::q_tile;
                mbar_arrive_expect_tx(&q_full[st], 2 * L::q_tile);
#pragma unroll
                for (int cb = 0; cb < CB; ++cb) {
                    tma_load_3d(qs + cb * kQBlockBytes, tm_q, cb * 64, h, qb, &q_full[st]);
                    tma_load_3d(qs + L::q_tile + cb * kQBlockBytes, tm_do, cb * 64, h, qb,
                                &q_full[st]);
                }
            }
        } else if (threadIdx.x / 32 == 1) {
            // The stats of the block's rows; rows past the document get zeros (masked anyway).
            const int lane = threadIdx.x % 32;
            for (int it = 0; it < n_it; ++it) {
                const int st = it % S, h = kvh * group + it / n_qb;
                const int qb = k0 + (it % n_qb) * kBwdQueries;
                mbar_wait(&q_empty[st], ((it / S) & 1) ^ 1);
                float* stats = reinterpret_cast<float*>(base + L::stats + st * L::stats_bytes);
#pragma unroll
                for (int r = lane; r < kBwdQueries; r += 32) {
                    const bool in = qb + r < doc1;
                    const long long row = (long long)h * n + qb + r;
                    stats[r] = in ? lse[row] * LOG2E_F : 0.f;
                    stats[kBwdQueries + r] = in ? delta[row] : 0.f;
                }
                mbar_arrive(&q_full[st]);
            }
        }
        return;
    }

    setmaxnreg_inc<240>();
    const int c = wg - 1, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int key_r0 = k0 + 64 * c + 16 * warp + g;  // this thread's keys: key_r0, key_r0 + 8
    const float sl2 = scale * LOG2E_F;
    const uint32_t k_addr = smem_u32(base + L::k), v_addr = smem_u32(base + L::v);

    float dka[D / 2], dva[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dka[i] = dva[i] = 0.f;
    float s[32], dp[32], dq[32];
    uint32_t pa[4][4], dsa[4][4];  // P^T, dS^T as bf16 A fragments, 4 k-steps of 16 queries

    auto stage_q = [&](int it) { return smem_u32(base + L::q + (it % S) * 2 * L::q_tile); };
    // S^T = K Q^T (64 keys x 64 queries) of iteration it, one commit group, once its Q and dO
    // have landed.
    // acc = A B^T with A this warpgroup's 64 rows of a [128][D] key-side tile (K or V) and B a
    // [64][D] query-side block (Q or dO), both K-major: S^T = K Q^T and dP^T = V dO^T.
    auto keys_by_queries = [&](float (&acc)[32], uint32_t a_addr, uint32_t b_addr) {
#pragma unroll
        for (int kt = 0; kt < D / 16; ++kt) {
            const uint32_t ka = (kt / 4) * kKBlockBytes + (kt % 4) * 32 + 64 * 128 * c;
            const uint32_t qo = (kt / 4) * kQBlockBytes + (kt % 4) * 32;
            wgmma_ss_n64_step<0, 0>(acc, make_desc(a_addr + ka, 16, 1024),
                                    make_desc(b_addr + qo, 16, 1024), kt == 0);
        }
        wgmma_commit();
    };
    auto issue_s = [&](int it) {
        mbar_wait(&q_full[it % S], (it / S) & 1);  // before the fence: no branch after it
        wgmma_fence();
        keys_by_queries(s, k_addr, stage_q(it));
    };

    // Iteration it, whose S^T has retired. With `next` (a Flag), S^T of it + 1 is issued before
    // this iteration's dQ staging and reduce, so the tensor cores work on it meanwhile, and
    // retired before the loop's back edge (with S^T and dP^T left in flight across it, ptxas
    // serialised the wgmmas and spilled at D=128). The last iteration has its own copy (no
    // `next`): no wgmma is issued under a runtime condition.
    auto step = [&](int it, auto next) {
        const int st = it % S, h = kvh * group + it / n_qb;
        const int qb = k0 + (it % n_qb) * kBwdQueries;
        const int q1 = min(qb + kBwdQueries, doc1);
        const uint32_t q_addr = stage_q(it), do_addr = q_addr + L::q_tile;
        unsigned char* ds_buf = base + L::ds + (it & 1) * kDsBytes;
        const float* stats = reinterpret_cast<const float*>(base + L::stats + st * L::stats_bytes);

        // dP^T = V dO^T, one commit group; P^T is computed while it runs.
        // The branch below (the mask, in a block of its own) is also what keeps that overlap in
        // the SASS: nothing orders a wgmma issue against the exp2s inside one basic block (no
        // common register, no memory), and with the mask inline ptxas sank the dP^T HGMMAs
        // below 30-31 of the 32 MUFU.EX2 (0 of them after the chain's last HGMMA); it does not
        // move them across a branch. Rotating the loop instead (dP^T issued before the back
        // edge, wait_group 1 after the loop head) made ptxas serialise every wgmma (C7514).
        // scripts/sass-check-sm90-overlap.sh checks it (docs/CUDA.md).
        wgmma_fence();
        keys_by_queries(dp, v_addr, do_addr);
        // The mask, only where some key of this warpgroup lies after some query of the block
        // or the block runs past the document end (uniform over the warpgroup): -inf, which the
        // exp2 below turns into 0. Other blocks skip its ~100 instructions.
        if (qb < k0 + 64 * c + 63 || q1 < qb + kBwdQueries) {
#pragma unroll
            for (int nb = 0; nb < 8; ++nb) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int key = key_r0 + 8 * r, query = qb + 8 * nb + 2 * t + e;
                        const int j = 4 * nb + 2 * r + e;
                        if (key > query || query >= q1) s[j] = -INFINITY;
                    }
                }
            }
        }
#pragma unroll
        for (int nb = 0; nb < 8; ++nb) {
            const int ql = 8 * nb + 2 * t;  // this thread's queries ql, ql + 1 (of the block)
            const float l0 = stats[ql], l1 = stats[ql + 1];
#pragma unroll
            for (int j = 4 * nb; j < 4 * nb + 4; ++j) s[j] = exp2f(s[j] * sl2 - (j % 2 ? l1 : l0));
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
            for (int x = 0; x < 4; ++x) pa[kk][x] = pack_bf16(s[8 * kk + 2 * x], s[8 * kk + 2 * x + 1]);
        }
        // dV += P^T dO now, so that it runs while dS^T is computed (a third commit group).
        fence_regs(dva);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            wgmma_rs_nd<D>(dva, pa[kk], make_desc(do_addr + kk * 2048, kQBlockBytes, 1024));
        wgmma_commit();
        wgmma_wait<1>();  // dP^T retired; dV may still run
        fence_regs(dp);
        // dS^T = P^T (dP^T - delta), into registers and the shared dS^T buffer.
#pragma unroll
        for (int nb = 0; nb < 8; ++nb) {
            const int ql = 8 * nb + 2 * t;
            const float d0 = stats[kBwdQueries + ql], d1 = stats[kBwdQueries + ql + 1];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                dp[4 * nb + 2 * r] = s[4 * nb + 2 * r] * (dp[4 * nb + 2 * r] - d0);
                dp[4 * nb + 2 * r + 1] = s[4 * nb + 2 * r + 1] * (dp[4 * nb + 2 * r + 1] - d1);
            }
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
            for (int x = 0; x < 4; ++x) {
                dsa[kk][x] = pack_bf16(dp[8 * kk + 2 * x], dp[8 * kk + 2 * x + 1]);
                // Element (key row, query col) of the [128][64] buffer, 128-byte swizzle.
                const int row = 64 * c + 16 * warp + g + 8 * (x % 2);
                const int col = 16 * kk + 8 * (x / 2) + 2 * t;
                *reinterpret_cast<uint32_t*>(ds_buf + row * 128 + (((col / 8) ^ (row % 8)) * 16) +
                                             (col % 8) * 2) = dsa[kk][x];
            }
        }
        fence_proxy_async();
        // This iteration's dQ staging buffer (it & 1) was last read by the TMA reduce of
        // iteration it - 2: the issuing thread waits for it to have read the buffer (the newest
        // group, iteration it - 1's, may still run; the other threads have no bulk group and
        // pass), and the barrier below tells the others that the buffer is free.
        bulk_wait_group_read<1>();
        // dS^T rows are read by the dQ wgmma of both warpgroups (D=128) or of this one (D=64).
        if constexpr (D == 128) named_barrier<256>(1);
        else if (c == 0) named_barrier<128>(1);  // constant ids: ptxas reserves only these
        else named_barrier<128>(2);

        // dK += dS^T Q, then dQ = dS K: two more commit groups.
        fence_regs(dka);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            wgmma_rs_nd<D>(dka, dsa[kk], make_desc(q_addr + kk * 2048, kQBlockBytes, 1024));
        wgmma_commit();
        {
            const uint32_t ds_addr = smem_u32(ds_buf);
            // D=128: all 128 keys, columns 64c..; D=64: own 64 keys, all columns.
            constexpr int KSTEPS = D == 128 ? 8 : 4;
            const uint32_t a0 = D == 128 ? 0 : 64 * 128 * c;
            const uint32_t b0 = D == 128 ? kKBlockBytes * c : 64 * 128 * c;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; ++kk)
                wgmma_ss_n64_step<1, 1>(dq, make_desc(ds_addr + a0 + kk * 2048, 8192, 1024),
                                        make_desc(k_addr + b0 + kk * 2048, kKBlockBytes, 1024),
                                        kk == 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(dka);
        fence_regs(dva);
        fence_regs(dq);
        // Q and dO of this stage are no longer read.
        mbar_arrive(&q_empty[st]);
        if constexpr (decltype(next)::value) issue_s(it + 1);

        // dq_accum += scale dQ by a TMA reduce-add while S^T of the next iteration runs: scale
        // dQ into this warpgroup's staging buffer (two [64 queries][32 columns] f32 boxes,
        // 128-byte swizzle: 16-byte chunk k of row r at k ^ (r % 8)), make it visible to the
        // async proxy, sync the warpgroup, and one thread issues the reduce of both boxes (one
        // bulk group). Lanes of odd g store column block nb ^ 2 where the others store nb (a
        // select, no data movement): each half-warp's 64-bit stores then cover all 32 banks
        // (rows g = 0..3 of one swizzle pattern; with the plain order g and g ^ 1 hit the same
        // chunks, a 2-way conflict). Rows past the document add exact zeros (P = 0 there; the
        // next document's rows are unchanged), rows past N are skipped by TMA.
        {
            unsigned char* dqs = base + L::dq + (2 * c + (it & 1)) * kDqBytes;
            const bool odd = g & 1;
#pragma unroll
            for (int nb = 0; nb < 8; ++nb) {
                const int ns = nb ^ (odd ? 2 : 0);
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const float x = odd ? dq[4 * (nb ^ 2) + 2 * r] : dq[4 * nb + 2 * r];
                    const float y = odd ? dq[4 * (nb ^ 2) + 2 * r + 1] : dq[4 * nb + 2 * r + 1];
                    const int row = 16 * warp + g + 8 * r, col = 8 * (ns % 4) + 2 * t;
                    *reinterpret_cast<float2*>(dqs + (nb / 4) * kDqBoxBytes + row * 128 +
                                               (((col / 4) ^ (row % 8)) * 16) + (col % 4) * 4) =
                        make_float2(x * scale, y * scale);
                }
            }
            fence_proxy_async();
            if (c == 0) named_barrier<128>(3);  // constant ids (as for dS above)
            else named_barrier<128>(4);
            if (tid == 0) {
                const int col0 = D == 128 ? 64 * c : 0;
                tma_reduce_add_3d(dqs, tm_dq, col0, h, qb);
                tma_reduce_add_3d(dqs + kDqBoxBytes, tm_dq, col0 + 32, h, qb);
                bulk_commit_group();
            }
        }
        if constexpr (decltype(next)::value) {
            wgmma_wait<0>();
            fence_regs(s);
        }
    };

    mbar_wait(kv_full, 0);
    issue_s(0);
    wgmma_wait<0>();
    fence_regs(s);
    int it = 0;  // declared outside the loop: ptxas then needs no register spilled over it
    for (; it + 1 < n_it; ++it) step(it, Flag<true>{});
    step(it, Flag<false>{});

    // dK = scale dS^T Q and dV to global memory (keys of the next document skipped).
    const long long kvstride = (long long)kv_heads * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = key_r0 + 8 * r;
        if (key < doc1) {
            const long long off = key * kvstride + kvh * D + 2 * t;
#pragma unroll
            for (int nb = 0; nb < D / 8; ++nb) {
                *reinterpret_cast<__nv_bfloat162*>(dk + off + 8 * nb) =
                    __floats2bfloat162_rn(dka[4 * nb + 2 * r] * scale, dka[4 * nb + 2 * r + 1] * scale);
                *reinterpret_cast<__nv_bfloat162*>(dv + off + 8 * nb) =
                    __floats2bfloat162_rn(dva[4 * nb + 2 * r], dva[4 * nb + 2 * r + 1]);
            }
        }
    }
    // The last reductions ran meanwhile; their source must stay until they have read it.
    bulk_wait_group_read<0>();
}

}  // namespace limo_flash_sm90

// ---------------------------------------------------------------------------------------------
// Entry points. Tensor maps (__grid_constant__): q and dO with {64, 1, 64} boxes, k and v with
// {64, 1, 128} boxes (bf16), dq_accum ([N, q_heads, D] f32, zeroed by the host) with {32, 1, 64}
// boxes, all with the 128-byte swizzle. Dynamic shared memory: BwdSmem<D>::bytes.

using namespace limo_flash_sm90;

#define LIMO_FLASH_BWD_SM90_ENTRY(D)                                                             \
    extern "C" __global__ void __launch_bounds__(384, 1) flash_bwd_sm90_bf16_hd##D(             \
        const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,     \
        const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,    \
        const __grid_constant__ CUtensorMap tm_dq, const float* lse, const float* delta,        \
        bf16* dk, bf16* dv, const int* tiles, int n, int q_heads, int kv_heads, float scale) {  \
        flash_bwd_sm90<D>(&tm_q, &tm_k, &tm_v, &tm_do, &tm_dq, lse, delta, dk, dv, tiles, n,    \
                          q_heads, kv_heads, scale);                                            \
    }

LIMO_FLASH_BWD_SM90_ENTRY(64)
LIMO_FLASH_BWD_SM90_ENTRY(128)

#ifdef LIMO_FLASH_EMULATE
#include "flash_attention_bwd_sm90_emulate_test.cuh"
#endif
