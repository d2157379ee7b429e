// FlashAttention-3-style forward for Hopper (sm_90a only) for limo: causal grouped-query
// attention over packed variable-length documents, bf16 in, fp32 softmax and accumulation,
// bf16 out. Same contract as flash_fwd_bf16_* in flash_attention.cu (and the CPU reference
// crates/limo-ops/src/attention.rs):
//   q [N, q_heads, D], k/v [N, kv_heads, D] bf16 contiguous; out [N, q_heads, D] bf16;
//   lse [q_heads, N] f32 (natural log); documents given by the wrapper's tile table (one
//   (tile start, document start, document end) triple per 128-row query tile, tiles never cross
//   a document: the same table as the sm_80 forward); token i attends to j iff same document and
//   j <= i; query head h reads kv head h / (q_heads / kv_heads) in place (no K/V copies).
//   D is 64 or 128. The backward stays on flash_attention.cu (it reads out and lse, which are
//   the same contract).
//
// Built by build.rs only as an sm_90a cubin (wgmma, setmaxnreg and the `a` features need
// -arch=sm_90a; no PTX for other targets), loaded only on compute capability 9.x
// (crates/limo-ops/src/cuda/flash_attention_sm90.rs).
//
// CTA: 384 threads = 3 warpgroups, one 128-row query tile of one query head (grid: tiles x
// q_heads, longest-work tiles first, as in the sm_80 forward).
//   warpgroup 0, the producer: setmaxnreg.dec to 24 registers; one thread issues every load
//     with TMA (cp.async.bulk.tensor.3d, tensor maps built on the host with
//     cuTensorMapEncodeTiled over [N, heads, D] with a {64 columns, 1 head, 128 rows} box and
//     128-byte swizzle): the Q tile once, then the K and V tiles of 128 keys from the document
//     start to the tile's last query into a ring of kStages (3) stages. Completion is counted in
//     bytes on mbarriers (arrive.expect_tx + complete_tx); a stage is refilled only after both
//     consumer warpgroups have released it on its "empty" mbarrier.
//   warpgroups 1 and 2, the consumers: setmaxnreg.inc to 240; each owns 64 query rows (its
//     own m64 slice of every wgmma). Per kv tile j: S = Q K^T with D/16 wgmma.m64n128k16 (both
//     operands from shared memory through matrix descriptors, K-major), mask (causal; only the
//     diagonal tile needs it, keys past the tile's rows are the next document's and always
//     after the query, TMA zero-fills rows past N), online softmax in the exp2 domain on the
//     accumulator fragment, P rounded to bf16 and kept in registers as the A operand of
//     O += P V (8 wgmma.m64nDk16, A from registers, V as an N-major (transposed) shared-memory
//     operand), then an arrival on the stage's "empty" barrier once the P V group retired.
//     Software-pipelined inside the warpgroup (FlashAttention-3's intra-warpgroup overlap):
//     S(j+1) and P V(j) are issued together (two commit groups), wgmma.wait_group 1 retires
//     S(j+1), whose softmax (max, shuffles, exp2, row sums, in f32 in the S registers) runs
//     while P V(j) is still on the tensor cores; wait_group 0, release stage j, pack P(j+1) to
//     bf16 into the one P register buffer (P V(j)'s A operand, free only now, as in FA3),
//     rescale O by the new running max. The loop is rotated so that its branch sits between
//     the softmax and wait_group 0: without that branch ptxas hoists the wait above the softmax
//     and the overlap is lost (see the loop; scripts/sass-check-sm90-overlap.sh checks the
//     SASS). No wgmma is issued under a runtime condition (ptxas would serialise the pipeline).
//     Ping-pong between the two consumers (FlashAttention-3's inter-warpgroup overlap): they
//     take turns issuing their wgmmas, so one's softmax (MUFU exp2) runs while the other's
//     GEMMs hold the tensor cores. A turn is one issue: S(0); then S(j+1) with P V(j); then
//     the last P V. Named barrier 1 / 2 (256 threads) is "warpgroup 1's / 2's turn": a
//     consumer bar.syncs on its own before its wgmma.fence and bar.arrives on the other's
//     right after its commits. Warpgroup 2 arrives once at the start (warpgroup 1 goes first);
//     both have the CTA's n_kv, so the turns alternate 1, 2, 1, ... to the end, and warpgroup
//     1 takes warpgroup 2's last pass after its loop (no barrier left half-arrived).
//     At the end O / l goes straight from registers to global memory (bf16x2 stores) and
//     lse = (m + log2 l) ln 2.
//
// Fragment layouts (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate",
// register fragments of wgmma .m64nNk16): thread i of the warpgroup, w = i / 32 (warp),
// g = (i % 32) / 4, t = i % 4:
//   D (f32, N/2 registers): d[j] = D[16w + g + 8((j/2)%2)][8(j/4) + 2t + (j%2)]
//   A (bf16, 4 registers x2): a[j] = A[16w + g + 8((j/2)%2)][8(j/4) + 2t + (j%2)], j = 0..7
// so the S accumulator of keys 16kk..16kk+15 (d[8kk..8kk+7]) is exactly the A fragment of the
// k16 step kk of P V: packing pairs to bf16x2 is the whole conversion, as with mma.sync.
//
// Shared memory (1024-byte aligned base, the 128-byte swizzle repeats every 1024 bytes): every
// tile is stored as D/64 column blocks of [128 rows][64 bf16] (128 bytes a row, 16 KiB a
// block), the 16-byte chunk c of row r at chunk c ^ (r % 8) (TMA's CU_TENSOR_MAP_SWIZZLE_128B,
// which is the wgmma descriptor's 128-byte swizzle mode: both XOR address bits [4,7) with
// [7,10)). Q [128][D], then kStages x (K [128][D], V [128][D]), then the mbarriers.
//   S = Q K^T: A = Q rows 64c.. (K-major: start = block kt/4 + 8192c + 32(kt%4) bytes,
//     SBO = 1024 between 8-row groups, LBO unused), B = K (K-major, the same addressing, N = 128
//     keys = 16 8-row groups).
//   O = P V: B = V [keys][D] is N-major (D contiguous) -> imm-trans-b = 1; start = 2048 kk (16
//     keys = two 8-row groups), SBO = 1024 (next 8 keys), LBO = 16384 (next 64 columns of D).
// Sizes: hd128 32 KiB Q + 3 stages x 64 KiB = 224 KiB (+1 KiB alignment, +barriers: 230,456
// bytes of sm_90's 232,448); hd64 113 KiB (115,768 bytes).
//
// Not (yet) done, relative to FlashAttention-3: the output through shared memory and a TMA
// store, a persistent tile scheduler, FP8, the backward.
//
// Checked on the CPU without a GPU: flash_attention_sm90_emulate.cuh emulates wgmma (fragments,
// descriptors, swizzle, asynchronous completion), mbarriers with phases and tx counts, TMA with
// deferred completion and the swizzle, named barriers (bar.sync / bar.arrive, per-warp counts,
// deadlock and unmatched-arrival checks), setmaxnreg; flash_attention_sm90_emulate_test.cuh checks
// this kernel against float64 (scripts/test-flash-emulation.sh).

#ifdef LIMO_FLASH_EMULATE
#include "flash_attention_sm90_emulate.cuh"
#else
#include <cuda.h>  // CUtensorMap (the type only; the map is built on the host)
#include <cuda_bf16.h>
#include <stdint.h>
#endif

#include "hopper.cuh"

typedef __nv_bfloat16 bf16;

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

namespace limo_flash_sm90 {

constexpr int kBlockM = 128;  // query rows per CTA (the wrapper's forward tile table)
constexpr int kBlockN = 128;  // keys per kv tile
// K/V ring depth. Three, not two: with the software pipeline a consumer holds two tiles at once
// (P V of tile j and S of tile j + 1), so the load of tile j + 2 can only start when tile j is
// released; the third stage gives that load a whole iteration to land (two stages would expose
// the TMA latency every iteration).
constexpr int kStages = 3;
constexpr int kColBlock = 64;                  // bf16 columns per 128-byte swizzled row
constexpr int kBlockBytes = kBlockM * 128;     // one [128][64] column block: 16 KiB

template <int D>
struct Smem {
    static constexpr int tile = kBlockM * D * 2;  // one [128][D] tile (Q, K or V)
    static constexpr int q = 0;
    static constexpr int kv = tile;               // stage s: K at kv + 2s tile, V at + tile
    static constexpr int bars = kv + kStages * 2 * tile;
    static constexpr int bar_bytes = 8 * (1 + 2 * kStages);
    // What the wrapper asks for: the layout plus up to 1023 bytes to align the base.
    static constexpr int bytes = bars + bar_bytes + 1024;
    static_assert(bytes <= 227 * 1024, "sm_90's 227 KiB of shared memory per block");
};

// PTX wrappers: hopper.cuh (included above).

// wgmma.mma_async m64nNk16 bf16 -> f32. _ss: A and B from shared memory (descriptors, K-major,
// imm-trans 0); _rs: A from registers, B from shared memory N-major (imm-trans-b 1). scale_d 0:
// D = A B (the accumulator's old value ignored), 1: D += A B.

__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma<128>(d, da, nullptr, db, scale_d, false);
#else
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        LIMO_WG_R64 ", "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : LIMO_WG_D64("+f")
        : "l"(da), "l"(db), "r"(scale_d));
#endif
}

__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db, int scale_d) {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma<64>(d, 0, a, db, scale_d, true);
#else
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        LIMO_WG_R32 ", "
        "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : LIMO_WG_D32("+f")
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
#endif
}

__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t db, int scale_d) {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma<128>(d, 0, a, db, scale_d, true);
#else
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        LIMO_WG_R64 ", "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : LIMO_WG_D64("+f")
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
#endif
}

// ---------------------------------------------------------------------------------------------
// The forward

template <int D>
__device__ __forceinline__ void wgmma_pv(float (&o)[D / 2], const uint32_t (&a)[4], uint64_t db) {
    if constexpr (D == 64) wgmma_rs_n64(o, a, db, 1);
    else wgmma_rs_n128(o, a, db, 1);
}

template <int D>
__device__ __forceinline__ void flash_fwd_sm90(const CUtensorMap* tm_q, const CUtensorMap* tm_k,
                                               const CUtensorMap* tm_v, bf16* __restrict__ out,
                                               float* __restrict__ lse,
                                               const int* __restrict__ tiles, int n, int q_heads,
                                               int kv_heads, float scale) {
    static_assert(D == 64 || D == 128, "head_dim 64 or 128");
    using L = Smem<D>;
    constexpr int CB = D / kColBlock;  // column blocks per tile
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // Align the shared-memory address (not the generic pointer) to 1024 bytes.
    unsigned char* base = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    unsigned char* qs = base + L::q;
    uint64_t* bars = reinterpret_cast<uint64_t*>(base + L::bars);
    uint64_t* q_full = bars;
    uint64_t* kv_full = bars + 1;             // [kStages]
    uint64_t* kv_empty = bars + 1 + kStages;  // [kStages]

    const int q0 = tiles[3 * blockIdx.x], doc0 = tiles[3 * blockIdx.x + 1];
    const int doc1 = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, kvh = h / (q_heads / kv_heads);
    const int q1 = min(q0 + kBlockM, doc1);
    // Causal + varlen: keys from the document start to the tile's last query.
    const int n_kv = (q1 - doc0 + kBlockN - 1) / kBlockN;
    const int wg = threadIdx.x / 128;

    if (threadIdx.x == 0) {
        mbar_init(q_full, 1);
        for (int s = 0; s < kStages; ++s) {
            mbar_init(&kv_full[s], 1);
            mbar_init(&kv_empty[s], 2 * 128);  // every consumer thread arrives once
        }
        fence_barrier_init();
    }
    __syncthreads();

    if (wg == 0) {
        // Producer. One thread issues everything; the others have nothing to do.
        setmaxnreg_dec<24>();
        if (threadIdx.x == 0) {
            mbar_arrive_expect_tx(q_full, L::tile);
#pragma unroll
            for (int cb = 0; cb < CB; ++cb)
                tma_load_3d(qs + cb * kBlockBytes, tm_q, cb * kColBlock, h, q0, q_full);
            for (int j = 0; j < n_kv; ++j) {
                const int st = j % kStages;
                // Round r = j / kStages of stage st waits for the consumers' release of round
                // r - 1 (parity of r - 1; the first round passes at once).
                mbar_wait(&kv_empty[st], ((j / kStages) & 1) ^ 1);
                unsigned char* ks = base + L::kv + st * 2 * L::tile;
                unsigned char* vs = ks + L::tile;
                mbar_arrive_expect_tx(&kv_full[st], 2 * L::tile);
                const int kb = doc0 + j * kBlockN;
#pragma unroll
                for (int cb = 0; cb < CB; ++cb) {
                    tma_load_3d(ks + cb * kBlockBytes, tm_k, cb * kColBlock, kvh, kb, &kv_full[st]);
                    tma_load_3d(vs + cb * kBlockBytes, tm_v, cb * kColBlock, kvh, kb, &kv_full[st]);
                }
            }
        }
        return;
    }

    // Consumers: warpgroup c = wg - 1 owns query rows 64c..64c+63 of the tile.
    setmaxnreg_inc<240>();
    const int c = wg - 1, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int wq0 = q0 + 64 * c;                 // this warpgroup's first query
    const int row_q0 = wq0 + 16 * warp + g;      // this thread's rows: row_q0 and row_q0 + 8
    const float sl2 = scale * LOG2E_F;
    const uint32_t q_addr = smem_u32(qs) + 64 * 128 * c;

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float s[kBlockN / 2];  // S of the newest kv tile (P in f32 after the softmax)
    // P of the tile whose P V is next or in flight, as bf16 A fragments. One buffer: the next P
    // is packed into it only after wait_group 0 (see the loop below).
    uint32_t pa[kBlockN / 16][4];

    auto stage_addr = [&](int j) { return smem_u32(base + L::kv + (j % kStages) * 2 * L::tile); };
    // Waits until kv tile j has landed (its stage's "full" barrier, round j / kStages).
    auto wait_full = [&](int j) { mbar_wait(&kv_full[j % kStages], (j / kStages) & 1); };
    // S = Q K^T of kv tile j (64 x 128 per warpgroup): D/16 k-steps, one commit group.
    auto issue_s = [&](int j) {
        const uint32_t k_addr = stage_addr(j);
#pragma unroll
        for (int kt = 0; kt < D / 16; ++kt) {
            const uint32_t off = (kt / 4) * kBlockBytes + (kt % 4) * 32;
            wgmma_ss_n128(s, make_desc(q_addr + off, 16, 1024), make_desc(k_addr + off, 16, 1024),
                          kt > 0);
        }
        wgmma_commit();
    };
    // O += P V of kv tile j, P from pa; one commit group.
    auto issue_pv = [&](int j) {
        const uint32_t v_addr = stage_addr(j) + L::tile;
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk)
            wgmma_pv<D>(o, pa[kk], make_desc(v_addr + kk * 2048, kBlockBytes, 1024));
        wgmma_commit();
    };
    // Mask and online softmax of S (kv tile j): new running max, l rescaled and increased, P
    // in f32 in place in s (pack_p makes the bf16 A fragments); returns through alpha the
    // factor O must be scaled by (applied by the caller once the P V reading O has retired).
    // Touches only s, m, l and alpha: no register of an in-flight P V (see the loop below).
    auto softmax = [&](int j, float (&alpha)[2]) {
        const int kb = doc0 + j * kBlockN;
        // Only tiles reaching past this warpgroup's first query need the mask (the diagonal).
        const bool need_mask = kb + kBlockN - 1 > wq0;
#pragma unroll
        for (int i = 0; i < kBlockN / 2; ++i) {
            const int key = kb + 8 * (i / 4) + 2 * t + (i % 2);
            const int query = row_q0 + 8 * ((i / 2) % 2);
            s[i] = (need_mask && key > query) ? -INFINITY : s[i] * sl2;
        }
        // Per row (the 4 threads of a quad share a row).
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = m[r];
#pragma unroll
            for (int nb = 0; nb < kBlockN / 8; ++nb)
                mx = fmaxf(mx, fmaxf(s[4 * nb + 2 * r], s[4 * nb + 2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mu = mx == -INFINITY ? 0.f : mx;  // no visible key yet: avoid NaN
            alpha[r] = exp2f(m[r] - mu);
            m[r] = mx;
            l[r] *= alpha[r];
#pragma unroll
            for (int nb = 0; nb < kBlockN / 8; ++nb) {
                const float p0 = exp2f(s[4 * nb + 2 * r] - mu);
                const float p1 = exp2f(s[4 * nb + 2 * r + 1] - mu);
                s[4 * nb + 2 * r] = p0;
                s[4 * nb + 2 * r + 1] = p1;
                l[r] += p0 + p1;
            }
        }
    };
    // P from the S registers as bf16 A fragments (layout identity, see the header).
    auto pack_p = [&] {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
            for (int x = 0; x < 4; ++x)
                pa[kk][x] = pack_bf16(s[8 * kk + 2 * x], s[8 * kk + 2 * x + 1]);
        }
    };
    auto rescale_o = [&](const float (&alpha)[2]) {
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                o[4 * nb + 2 * r] *= alpha[r];
                o[4 * nb + 2 * r + 1] *= alpha[r];
            }
        }
    };

    // Software pipeline inside the warpgroup (FlashAttention-3's intra-warpgroup overlap): the
    // softmax of tile j + 1 runs while the tensor cores do P V of tile j. Per step j: head(j)
    // issues S(j+1) and PV(j) (two commit groups), waits for S(j+1) only (wait_group 1) and runs
    // the softmax of j+1 (s, m, l only: no register of the in-flight PV(j)); tail(j) waits for
    // PV(j) (wait_group 0), releases stage j, packs P(j+1) into pa and rescales O.
    // Two things in ptxas (CUDA 13.0) decide whether that overlap survives in the SASS:
    // - wgmma.wait_group has no register operands and the softmax touches no memory, so inside
    //   one basic block nothing orders them: ptxas's scheduler puts WARPGROUP.DEPBAR.LE gsb0,
    //   0x0 some 100-130 instructions after the wait_group 1 (in the middle of the mask),
    //   whatever follows the wait, and every SHFL and MUFU.EX2 lands after it. Hence the loop
    //   below is rotated (tail(j) then head(j + 1)) so that its test is a branch between every
    //   head and its tail: ptxas does not move the wait above a block boundary.
    // - P is packed after wait_group 0 into the single buffer PV(j) reads. Packing into a second
    //   buffer before the wait (this kernel's first version) does not work either: ptxas gave
    //   both buffers the same physical registers, so those packs had to wait for PV(j) anyway.
    // The branch must not lead to a trap (an `if (..) __trap()` there made ptxas serialise the
    // hd128 wgmmas for "insufficient register resources", with spills).
    // scripts/sass-check-sm90-overlap.sh checks the SASS (docs/CUDA.md).
    // Ping-pong (see the header): barrier wg is warpgroup wg's turn, 256 threads (its own 128
    // bar.sync, the other's 128 bar.arrive). Ids 1 and 2 (0 is __syncthreads). The id is a
    // register, as in FA3 (ptxas then reserves all 16 barriers; harmless at one CTA per SM):
    // constant ids behind `if (wg == 1)` let ptxas hoist the bar.sync into the softmax.
    auto take_turn = [&] { named_barrier<256>(wg); };
    auto pass_turn = [&] { named_barrier_arrive<256>(3 - wg); };
    if (wg == 2) pass_turn();  // warpgroup 1 goes first

    mbar_wait(q_full, 0);
    float alpha[2];
    wait_full(0);
    take_turn();
    wgmma_fence();
    issue_s(0);
    pass_turn();
    wgmma_wait<0>();
    fence_regs(s);
    softmax(0, alpha);  // O is zero: nothing to rescale
    pack_p();
    // A step with a next tile j + 1, split around the loop's branch (above): head(j), tail(j).
    // No wgmma is issued conditionally (ptxas serialises the pipeline when it cannot tell
    // statically which commit group an accumulator belongs to): the conditions only choose
    // between whole heads, tails and the separate last step.
    auto head = [&](int j) {
        wait_full(j + 1);  // before the fence: no branch between it and the wgmmas
        fence_regs(o);
        take_turn();
        wgmma_fence();  // s, pa and o were written since the last wgmma
        issue_s(j + 1);
        issue_pv(j);
        pass_turn();
        wgmma_wait<1>();  // S(j+1) retired; PV(j) may still run
        fence_regs(s);
        softmax(j + 1, alpha);
    };
    auto tail = [&](int j) {
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(s);  // the pack below reads s only after the wait (pa is PV(j)'s A operand)
        // This thread's reads of stage j are over (its warpgroup's wgmmas on it retired).
        mbar_arrive(&kv_empty[j % kStages]);
        pack_p();
        rescale_o(alpha);
    };
    auto last_step = [&](int j) {
        fence_regs(o);
        take_turn();
        wgmma_fence();
        issue_pv(j);
        pass_turn();
        wgmma_wait<0>();
        fence_regs(o);
        mbar_arrive(&kv_empty[j % kStages]);
    };
    // head(0) [tail(j) head(j + 1)]* tail(n_kv - 2), then the last P V: every head's softmax
    // is followed by a branch (the guard or the loop test) before its tail's wait_group 0.
    if (n_kv > 1) {
        head(0);
        int j = 0;
        for (; j + 2 < n_kv; ++j) {
            tail(j);
            head(j + 1);
        }
        tail(j);
    }
    last_step(n_kv - 1);
    // Warpgroup 2's last pass: taken so that no barrier phase is left half-arrived (a branch
    // only now that no wgmma is in flight).
    if (wg == 1) take_turn();

    // Final: O / l, lse. l is per-thread partial: reduce over the quad.
    const long long qstride = (long long)q_heads * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int query = row_q0 + 8 * r;
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        if (query < q1) {
            bf16* dst = out + query * qstride + h * D + 2 * t;
#pragma unroll
            for (int nb = 0; nb < D / 8; ++nb)
                *reinterpret_cast<__nv_bfloat162*>(dst + 8 * nb) =
                    __floats2bfloat162_rn(o[4 * nb + 2 * r] * inv, o[4 * nb + 2 * r + 1] * inv);
            if (t == 0) lse[(long long)h * n + query] = (m[r] + log2f(sum)) * LN2_F;
        }
    }
}

}  // namespace limo_flash_sm90

// ---------------------------------------------------------------------------------------------
// Entry points (C names, loaded by name from the sm_90a cubin). The tensor maps are kernel
// parameters (__grid_constant__: TMA reads them from parameter space). Dynamic shared memory:
// Smem<D>::bytes (the wrapper sets it).

using namespace limo_flash_sm90;

#define LIMO_FLASH_SM90_ENTRY(D)                                                                 \
    extern "C" __global__ void __launch_bounds__(384, 1) flash_fwd_sm90_bf16_hd##D(             \
        const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,     \
        const __grid_constant__ CUtensorMap tm_v, bf16* out, float* lse, const int* tiles,      \
        int n, int q_heads, int kv_heads, float scale) {                                        \
        flash_fwd_sm90<D>(&tm_q, &tm_k, &tm_v, out, lse, tiles, n, q_heads, kv_heads, scale);   \
    }

LIMO_FLASH_SM90_ENTRY(64)
LIMO_FLASH_SM90_ENTRY(128)

#ifdef LIMO_FLASH_EMULATE
#include "flash_attention_sm90_emulate_test.cuh"
#endif
