// CPU emulation of the Hopper built-ins used by flash_attention_sm90.cu (wgmma, mbarrier, TMA,
// setmaxnreg), on top of flash_attention_emulate.cuh (a std::thread per CUDA thread, bf16,
// shuffles, __syncthreads). Never part of the cubin build: flash_attention_sm90.cu includes it
// only under LIMO_FLASH_EMULATE.
//
//   g++ -std=c++20 -O2 -fno-strict-aliasing -Wno-unknown-pragmas -x c++ -DLIMO_FLASH_EMULATE \
//       -Ikernels kernels/flash_attention_sm90.cu -o /tmp/flash_sm90_emulate -lpthread
//
// (scripts/test-flash-emulation.sh runs it after the sm_80 emulation.) What is emulated, and how
// faithfully (PTX ISA: "Asynchronous Warpgroup Level Matrix Multiply-Accumulate",
// "mbarrier", "cp.async.bulk.tensor"; cuda.h: cuTensorMapEncodeTiled):
//
// Shared memory is one buffer per block (blocks run one at a time). Shared-window addresses
// (__cvta_generic_to_shared) are offsets into it plus kSmemWindow (16), so the window does not
// start on a 1024-byte boundary and the kernel's own alignment of its base is exercised; every
// swizzle below is a function of these addresses, as on the GPU.
//
// wgmma.mma_async.m64nNk16.f32.bf16.bf16 is asynchronous, as on the GPU: the issue records the
// operation (descriptors, the accumulator's and the A registers' addresses) and poisons the
// accumulator registers with NaN; the product is computed only at the wgmma.wait_group that
// retires its commit group, reading shared memory then (so a buffer released or overwritten
// before the wait gives wrong results). Operands: A and B from shared memory through 64-bit
// matrix descriptors decoded field by field (start address bits 0-13, leading byte offset
// 16-29, stride byte offset 32-45, each << 4; base offset 49-51, must be 0; swizzle mode
// 62-63: 1 = 128B, 2 = 64B, 3 = 32B, 0 (interleave) is refused), in the canonical layouts
// K-major ((8,m),(T,2k)):((W/16 T,SBO),(1,T)) and MN-major ((T,W/16,m),(8,k)):((1,T,LBO),
// (W/16 T,SBO)) (T = 8 bf16 per 16 bytes, W the swizzle width), then the swizzle XORs address
// bits [4, 4+log2(W/16)) with bits [7, ...); or A from registers in the m64nNk16 A fragment
// layout. Accumulator fragment: d[j] = D[16w + g + 8((j/2)%2)][8(j/4) + 2t + (j%2)] (w warp of
// the warpgroup, g = lane/4, t = lane%4). Products are exact in fp32 and summed in k order.
// Checked: all 128 threads issue the same operations (descriptors, shape, flags); a
// wgmma.fence precedes the first wgmma after every wait (the registers were accessed); the A
// registers are unchanged between issue and completion; no operand lies in a TMA destination
// still in flight, nor outside shared memory; no wgmma is left unretired at the end of a block.
//
// mbarrier: init (count), arrive, arrive.expect_tx (tx-count += bytes, then arrive), TMA's
// complete_tx (tx-count -= bytes); a phase completes when its pending arrivals and its
// tx-count are both 0, then the phase bit flips and the arrival count resets.
// try_wait.parity P is complete iff the current phase's parity differs from P (a fresh barrier:
// waiting for parity 1 passes at once). More arrivals than expected, use before init, and a
// barrier whose 8 bytes were overwritten by something else are errors; a wait that cannot
// complete (deadlock) fails after 30 s.
//
// cp.async.bulk.tensor.3d (TMA) with tensor maps from an emulated cuTensorMapEncodeTiled that
// checks the driver's documented constraints (16-byte aligned address, strides multiples of 16,
// box <= 256, inner box bytes a multiple of 16 and <= the swizzle span, element strides 1): the
// issue poisons the whole box in shared memory (0xff bytes, a bf16 NaN) and records the copy;
// the copy happens, and its bytes are signalled on the mbarrier (complete_tx), only when some
// thread waits on that mbarrier, i.e. as late as a correct program allows. The box lands
// row-major (innermost dimension contiguous), out-of-bound elements as zeros, 16-byte chunks
// swizzled by shared address bits (128B: chunk ^= (address >> 7) & 7). The destination must be
// 128-byte aligned (1024 with the 128-byte swizzle, so the pattern starts where wgmma's does).
// A TMA write over an operand of a wgmma not yet retired is flagged as a race.
//
// Named barriers (bar.sync and bar.arrive id, count; the forward's ping-pong, the backward's dS
// exchange), counted per warp as on the GPU (details at emu_named_barrier). The backward
// (flash_attention_bwd_sm90.cu) adds: A from shared memory MN-major (imm-trans-a, decoded with
// the MN-major layout above), sm_90's 2-wide fp32 atomicAdd, and the TMA reduce-add
// (cp.reduce.async.bulk.tensor.3d .add.tile.bulk_group, f32 maps, with cp.async.bulk
// .commit_group / .wait_group.read; details at EmuReduce): recorded at issue, performed at the
// latest legal point (the issuing thread's covering wait_group.read; none by the block's end
// is an error),
// reading shared memory then, out-of-bound elements skipped; a source written between the issue
// and that point is flagged as a race.
//
// setmaxnreg is a no-op; fences (fence.mbarrier_init, fence.proxy.async, wgmma.fence apart from
// the check above) have no effect (so a missing fence.proxy.async before a TMA reduce goes
// unnoticed). Not emulated: clusters and multicast, TMA stores and reductions other than the f32
// add, im2col, other swizzles in TMA than none/32B/64B/128B, the timing of anything.
#pragma once

#include "flash_attention_emulate.cuh"

#include <chrono>
#include <condition_variable>
#include <map>

#define __grid_constant__

// ---------------------------------------------------------------------------------------------
// The cuda.h subset the kernel and its test use (enumerator values as in cuda.h).

typedef uint64_t cuuint64_t;
typedef uint32_t cuuint32_t;
enum CUresult { CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1 };
enum CUtensorMapDataType {
    CU_TENSOR_MAP_DATA_TYPE_UINT8 = 0,
    CU_TENSOR_MAP_DATA_TYPE_UINT16,
    CU_TENSOR_MAP_DATA_TYPE_UINT32,
    CU_TENSOR_MAP_DATA_TYPE_INT32,
    CU_TENSOR_MAP_DATA_TYPE_UINT64,
    CU_TENSOR_MAP_DATA_TYPE_INT64,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT64,
    CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
};
enum CUtensorMapInterleave { CU_TENSOR_MAP_INTERLEAVE_NONE = 0 };
enum CUtensorMapSwizzle {
    CU_TENSOR_MAP_SWIZZLE_NONE = 0,
    CU_TENSOR_MAP_SWIZZLE_32B,
    CU_TENSOR_MAP_SWIZZLE_64B,
    CU_TENSOR_MAP_SWIZZLE_128B,
};
enum CUtensorMapL2promotion {
    CU_TENSOR_MAP_L2_PROMOTION_NONE = 0,
    CU_TENSOR_MAP_L2_PROMOTION_L2_64B,
    CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
    CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
};
enum CUtensorMapFloatOOBfill { CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0 };

// Opaque (128 bytes, 64-byte aligned) in cuda.h; here the encoded parameters.
struct alignas(64) CUtensorMap {
    const unsigned char* addr;
    uint32_t type, rank, elem_bytes, swizzle;
    uint64_t dim[5], stride[5];  // stride[i]: bytes between consecutive indices of dimension i
    uint32_t box[5];
};
static_assert(sizeof(CUtensorMap) <= 128, "a CUtensorMap is 128 bytes");

inline CUresult cuTensorMapEncodeTiled(CUtensorMap* map, CUtensorMapDataType type,
                                       cuuint32_t rank, void* addr, const cuuint64_t* dim,
                                       const cuuint64_t* strides, const cuuint32_t* box,
                                       const cuuint32_t* elem_strides,
                                       CUtensorMapInterleave interleave,
                                       CUtensorMapSwizzle swizzle, CUtensorMapL2promotion,
                                       CUtensorMapFloatOOBfill) {
    static const uint32_t sizes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2};
    auto bad = [](const char* why) {
        std::fprintf(stderr, "emulation: cuTensorMapEncodeTiled: %s\n", why);
        return CUDA_ERROR_INVALID_VALUE;
    };
    if (reinterpret_cast<uintptr_t>(map) % 64) return bad("tensorMap not 64-byte aligned");
    if (rank < 1 || rank > 5) return bad("rank");
    if (reinterpret_cast<uintptr_t>(addr) % 16) return bad("globalAddress not 16-byte aligned");
    if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return bad("only INTERLEAVE_NONE is emulated");
    const uint32_t es = sizes[type];
    CUtensorMap m{};
    m.addr = static_cast<const unsigned char*>(addr);
    m.type = type;
    m.rank = rank;
    m.elem_bytes = es;
    m.swizzle = swizzle;
    for (uint32_t i = 0; i < rank; ++i) {
        if (dim[i] == 0 || dim[i] > (uint64_t(1) << 32)) return bad("globalDim");
        if (box[i] == 0 || box[i] > 256) return bad("boxDim");
        if (elem_strides[i] != 1) return bad("only elementStrides 1 is emulated");
        m.dim[i] = dim[i];
        m.box[i] = box[i];
        m.stride[i] = i == 0 ? es : strides[i - 1];
        if (i > 0 && (strides[i - 1] % 16 || strides[i - 1] >= (uint64_t(1) << 40)))
            return bad("globalStrides must be multiples of 16 below 2^40");
    }
    if ((box[0] * es) % 16) return bad("boxDim[0] * element size must be a multiple of 16");
    const uint32_t span[] = {0, 32, 64, 128};
    if (swizzle != CU_TENSOR_MAP_SWIZZLE_NONE && box[0] * es > span[swizzle])
        return bad("inner box dimension exceeds the swizzle span");
    *map = m;
    return CUDA_SUCCESS;
}

// The map the Rust wrappers build over a [n, heads, d] bf16 tensor (the tests' inputs):
// dimensions innermost first {d, heads, n}, a box of {64 columns, 1 head, `rows` tokens},
// 128-byte swizzle, zeros past n.
inline CUtensorMap emu_tensor_map(const std::vector<__nv_bfloat16>& x, int n, int heads, int d,
                                  int rows) {
    alignas(64) CUtensorMap m;
    const cuuint64_t dim[3] = {uint64_t(d), uint64_t(heads), uint64_t(n)};
    const cuuint64_t str[2] = {uint64_t(d) * 2, uint64_t(heads) * d * 2};
    const cuuint32_t box[3] = {64, 1, uint32_t(rows)}, es[3] = {1, 1, 1};
    if (cuTensorMapEncodeTiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3,
                               const_cast<__nv_bfloat16*>(x.data()), dim, str, box, es,
                               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                               CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
        emu_fail("cuTensorMapEncodeTiled refused the map");
    return m;
}

// The backward's dq_accum map (tensor_map_f32 in the Rust wrapper): a [n, heads, d] f32
// tensor, a box of {32 columns, 1 head, `rows` tokens} (128 bytes: the 128-byte swizzle's span),
// 128-byte swizzle.
inline CUtensorMap emu_tensor_map_f32(std::vector<float>& x, int n, int heads, int d, int rows) {
    alignas(64) CUtensorMap m;
    const cuuint64_t dim[3] = {uint64_t(d), uint64_t(heads), uint64_t(n)};
    const cuuint64_t str[2] = {uint64_t(d) * 4, uint64_t(heads) * d * 4};
    const cuuint32_t box[3] = {32, 1, uint32_t(rows)}, es[3] = {1, 1, 1};
    if (cuTensorMapEncodeTiled(&m, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, x.data(), dim, str, box, es,
                               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                               CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
        emu_fail("cuTensorMapEncodeTiled refused the map");
    return m;
}

namespace limo_flash_sm90 {
// The `extern __shared__` buffer of the kernel (blocks run one at a time).
alignas(1024) inline unsigned char smem_raw[256 * 1024];
}  // namespace limo_flash_sm90

// Shared-window address of the buffer's first byte (deliberately not 1024-aligned).
constexpr uint32_t kSmemWindow = 16;

inline uint32_t emu_smem_u32(const void* p) {
    const auto* c = static_cast<const unsigned char*>(p);
    const auto* b = limo_flash_sm90::smem_raw;
    if (c < b || c > b + sizeof(limo_flash_sm90::smem_raw)) emu_fail("shared address of a non-shared pointer");
    return uint32_t(c - b) + kSmemWindow;
}
inline unsigned char* emu_smem_ptr(uint32_t a, uint32_t bytes) {
    if (a < kSmemWindow || a - kSmemWindow + bytes > sizeof(limo_flash_sm90::smem_raw))
        emu_fail("shared-memory access outside the block's shared memory");
    return limo_flash_sm90::smem_raw + (a - kSmemWindow);
}

// Swizzle of a shared address: XOR address bits [4, 4+b) with bits [7, 7+b); b = 3 (128B),
// 2 (64B), 1 (32B), 0 (none).
inline uint32_t emu_swizzle(uint32_t a, int b) {
    if (b == 0) return a;
    const uint32_t mask = (1u << b) - 1;
    return a ^ (((a >> 7) & mask) << 4);
}

// Walks a TMA box of map m at coordinates c, row-major (innermost first) as it lands in shared
// memory from byte address smem: each element's swizzled shared address and its global address,
// or nullptr where the element lies out of bounds.
template <typename F>
inline void emu_tma_box(const CUtensorMap& m, const int* c, uint32_t smem, F&& each) {
    const int b = m.swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 3
                  : m.swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 2
                  : m.swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 1 : 0;
    uint32_t off = 0;
    for (uint32_t i2 = 0; i2 < m.box[2]; ++i2)
        for (uint32_t i1 = 0; i1 < m.box[1]; ++i1)
            for (uint32_t i0 = 0; i0 < m.box[0]; ++i0, off += m.elem_bytes) {
                const int64_t g0 = int64_t(c[0]) + i0, g1 = int64_t(c[1]) + i1;
                const int64_t g2 = int64_t(c[2]) + i2;
                const bool in = g0 >= 0 && g1 >= 0 && g2 >= 0 && uint64_t(g0) < m.dim[0] &&
                                uint64_t(g1) < m.dim[1] && uint64_t(g2) < m.dim[2];
                each(emu_swizzle(smem + off, b),
                     in ? m.addr + g0 * m.stride[0] + g1 * m.stride[1] + g2 * m.stride[2]
                        : nullptr);
            }
}

// ---------------------------------------------------------------------------------------------
// Per-block state

struct EmuMbar {
    uint32_t expected = 0, pending = 0, phase = 0;
    int64_t tx = 0;
};
struct EmuTma {
    uint32_t dst, bar, bytes;
    CUtensorMap map;
    int c[3];
};
struct EmuWgmmaOp {
    int n;
    uint64_t da, db;
    const uint32_t* a;  // A registers (RS form), else null
    uint32_t a_copy[4];
    float* d;
    int scale_d;
    bool trans_b;
    bool trans_a;  // A from shared memory MN-major (imm-trans-a; the backward's dS)
};

inline std::mutex emu90_mutex;  // mbarriers, TMA, in-flight ranges
inline std::condition_variable emu90_cv;
inline std::map<uint32_t, EmuMbar> emu90_mbars;
inline std::vector<EmuTma> emu90_tma;
inline std::vector<unsigned char> emu90_tma_pending;  // per 16-byte granule of shared memory
inline std::atomic<long> emu90_races{0}, emu90_tma_count{0}, emu90_wgmma_count{0};
constexpr uint64_t kMbarSentinel = 0x6d62617272696572ull;  // what emulated barriers hold

// wgmma, per thread of the block (the warpgroup's leader reads all 128 at a wait).
constexpr int kEmuMaxThreads = 1024;
inline std::vector<EmuWgmmaOp> emu90_ops[kEmuMaxThreads];
inline std::vector<size_t> emu90_groups[kEmuMaxThreads];  // op count at each commit
inline std::map<float*, std::vector<float>> emu90_acc[kEmuMaxThreads];  // accumulators in flight
inline bool emu90_fenced[kEmuMaxThreads];
inline std::vector<std::barrier<>*> emu90_wg_barriers;
// Shared byte ranges read by wgmmas not yet retired, per warpgroup.
inline std::vector<std::vector<std::pair<uint32_t, uint32_t>>> emu90_wg_ranges;

inline void emu90_race(const char* what, uint32_t addr) {
    if (emu90_races++ < 5)
        std::fprintf(stderr, "emulation: race: %s (shared address %u, thread %u, block %u,%u)\n",
                     what, addr, threadIdx.x, blockIdx.x, blockIdx.y);
}

// ---------------------------------------------------------------------------------------------
// mbarrier

inline EmuMbar& emu_mbar(uint64_t* bar, bool init = false) {
    const uint32_t a = emu_smem_u32(bar);
    if (a % 8) emu_fail("mbarrier not 8-byte aligned");
    emu_smem_ptr(a, 8);
    auto it = emu90_mbars.find(a);
    if (init) {
        *bar = kMbarSentinel;
        return emu90_mbars[a];
    }
    if (it == emu90_mbars.end()) emu_fail("mbarrier used before mbarrier.init");
    if (*bar != kMbarSentinel) emu_fail("mbarrier object overwritten by another store or copy");
    return it->second;
}

// Caller holds emu90_mutex.
inline void emu_mbar_try_complete(EmuMbar& b) {
    if (b.pending == 0 && b.tx == 0) {
        ++b.phase;
        b.pending = b.expected;
        emu90_cv.notify_all();
    }
}

inline void emulated_mbar_init(uint64_t* bar, uint32_t count) {
    std::lock_guard<std::mutex> lock(emu90_mutex);
    if (count == 0 || count >= (1u << 20)) emu_fail("mbarrier.init count out of range");
    EmuMbar& b = emu_mbar(bar, true);
    b = EmuMbar{count, count, 0, 0};
}

inline void emulated_mbar_arrive(uint64_t* bar, uint32_t tx_bytes) {
    std::lock_guard<std::mutex> lock(emu90_mutex);
    EmuMbar& b = emu_mbar(bar);
    b.tx += tx_bytes;
    if (b.pending == 0) emu_fail("mbarrier: more arrivals than its count in one phase");
    --b.pending;
    emu_mbar_try_complete(b);
}

// Performs (now) the TMA copies signalled on `bar`. Caller holds emu90_mutex.
inline void emu_tma_complete_for(uint32_t bar) {
    for (size_t i = 0; i < emu90_tma.size();) {
        EmuTma& c = emu90_tma[i];
        if (c.bar != bar) {
            ++i;
            continue;
        }
        const CUtensorMap& m = c.map;
        emu_tma_box(m, c.c, c.dst, [&](uint32_t smem, const unsigned char* global) {
            unsigned char* dst = emu_smem_ptr(smem, m.elem_bytes);
            if (global)
                std::memcpy(dst, global, m.elem_bytes);
            else
                std::memset(dst, 0, m.elem_bytes);
        });
        for (uint32_t g = (c.dst - kSmemWindow) / 16; g < (c.dst - kSmemWindow + c.bytes) / 16; ++g)
            emu90_tma_pending[g] = 0;
        uint64_t* barp = reinterpret_cast<uint64_t*>(emu_smem_ptr(c.bar, 8));
        EmuMbar& mb = emu_mbar(barp);
        mb.tx -= c.bytes;
        emu_mbar_try_complete(mb);
        emu90_tma.erase(emu90_tma.begin() + i);
    }
}

inline void emulated_mbar_wait(uint64_t* bar, uint32_t parity) {
    std::unique_lock<std::mutex> lock(emu90_mutex);
    const uint32_t a = emu_smem_u32(bar);
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
        emu_tma_complete_for(a);
        if ((emu_mbar(bar).phase & 1) != (parity & 1)) return;
        emu90_cv.wait_for(lock, std::chrono::milliseconds(20));
        if (std::chrono::steady_clock::now() - start > std::chrono::seconds(30))
            emu_fail("mbarrier wait never completes (deadlock)");
    }
}

// ---------------------------------------------------------------------------------------------
// TMA

inline void emulated_tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2,
                                 uint64_t* bar) {
    std::lock_guard<std::mutex> lock(emu90_mutex);
    if (map->rank != 3) emu_fail("cp.async.bulk.tensor.3d with a tensor map of another rank");
    const uint32_t d = emu_smem_u32(dst);
    const uint32_t need = map->swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 1024 : 128;
    if (d % need) emu_fail("TMA destination not aligned (128 bytes; 1024 with the 128B swizzle)");
    const uint32_t bytes = map->box[0] * map->box[1] * map->box[2] * map->elem_bytes;
    std::memset(emu_smem_ptr(d, bytes), 0xff, bytes);  // poison until complete_tx
    emu_mbar(bar);
    for (auto& wg : emu90_wg_ranges)
        for (auto& r : wg)
            if (d < r.second && r.first < d + bytes)
                emu90_race("TMA overwrites an operand of a wgmma not yet retired by wgmma.wait_group", d);
    for (uint32_t g = (d - kSmemWindow) / 16; g < (d - kSmemWindow + bytes) / 16; ++g)
        emu90_tma_pending[g] = 1;
    emu90_tma.push_back({d, emu_smem_u32(bar), bytes, *map, {c0, c1, c2}});
    ++emu90_tma_count;
}

// cp.reduce.async.bulk.tensor.3d ... .add.tile.bulk_group (TMA reduce-add, f32 maps only) with
// cp.async.bulk.commit_group / wait_group.read, per issuing thread as on the GPU. The issue only
// records the operation and a snapshot of its source box; the reduction is performed at the
// latest legal point, the thread's cp.async.bulk.wait_group.read that covers its group (one
// still pending when the block ends is an error), reading shared memory then: into global
// memory, the box's elements past the tensor's bounds skipped. A source that changed between the
// issue and that point (a store into a buffer whose reduce is still pending: a buffer reused
// before its wait, or a store the issuing thread did not wait for at a barrier) is flagged as a
// race.
struct EmuReduce {
    uint32_t src, bytes;
    CUtensorMap map;
    int c[3];
    std::vector<unsigned char> snapshot;
};
inline std::vector<EmuReduce> emu90_red_ops[kEmuMaxThreads];
inline std::vector<size_t> emu90_red_groups[kEmuMaxThreads];  // op count at each commit
inline std::atomic<long> emu90_reduce_count{0};

inline void emulated_tma_reduce_add_3d(const void* src, const CUtensorMap* map, int c0, int c1,
                                       int c2) {
    if (map->rank != 3) emu_fail("cp.reduce.async.bulk.tensor.3d with a tensor map of another rank");
    if (map->type != CU_TENSOR_MAP_DATA_TYPE_FLOAT32)
        emu_fail("cp.reduce.async.bulk.tensor: only the f32 add is emulated");
    const uint32_t a = emu_smem_u32(src);
    const uint32_t need = map->swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 1024 : 128;
    if (a % need) emu_fail("TMA reduce source not aligned (128 bytes; 1024 with the 128B swizzle)");
    const uint32_t bytes = map->box[0] * map->box[1] * map->box[2] * map->elem_bytes;
    const unsigned char* p = emu_smem_ptr(a, bytes);
    emu90_red_ops[threadIdx.x].push_back({a, bytes, *map, {c0, c1, c2}, {p, p + bytes}});
}

inline void emulated_bulk_commit_group() {
    emu90_red_groups[threadIdx.x].push_back(emu90_red_ops[threadIdx.x].size());
}

// Performs (now) reduce `r`, reading shared memory. Takes emu90_mutex (the two consumer
// warpgroups' reductions may add into the same elements).
inline void emu_reduce_perform(const EmuReduce& r, unsigned thread) {
    std::lock_guard<std::mutex> lock(emu90_mutex);
    const unsigned char* p = emu_smem_ptr(r.src, r.bytes);
    if (std::memcmp(p, r.snapshot.data(), r.bytes) != 0 && emu90_races++ < 5)
        std::fprintf(stderr,
                     "emulation: race: the shared source of a TMA reduce was written before the "
                     "cp.async.bulk.wait_group.read that covers it (shared address %u, issued by "
                     "thread %u, block %u,%u)\n",
                     r.src, thread, blockIdx.x, blockIdx.y);
    emu_tma_box(r.map, r.c, r.src, [&](uint32_t smem, const unsigned char* global) {
        if (!global) return;  // TMA does not write out of bounds
        float x, y;
        std::memcpy(&x, emu_smem_ptr(smem, 4), 4);
        unsigned char* dst = const_cast<unsigned char*>(global);
        std::memcpy(&y, dst, 4);
        y += x;
        std::memcpy(dst, &y, 4);
    });
    ++emu90_reduce_count;
}

inline void emulated_bulk_wait_group_read(int newer) {
    auto& groups = emu90_red_groups[threadIdx.x];
    if (groups.size() <= size_t(newer)) return;
    auto& ops = emu90_red_ops[threadIdx.x];
    const size_t done = groups[groups.size() - 1 - newer];
    for (size_t i = 0; i < done; ++i) emu_reduce_perform(ops[i], threadIdx.x);
    ops.erase(ops.begin(), ops.begin() + done);
    groups.erase(groups.begin(), groups.end() - newer);
    for (auto& e : groups) e -= done;
}

// ---------------------------------------------------------------------------------------------
// wgmma

// Byte address of element (row, k) of a K-major operand, or (k, mn) of an MN-major one, from a
// descriptor (see the file header).
struct EmuDesc {
    uint32_t start, lbo, sbo;
    int swz;  // log2(width / 16)
};
inline EmuDesc emu_decode(uint64_t desc) {
    EmuDesc r;
    r.start = uint32_t(desc & 0x3FFF) << 4;
    r.lbo = uint32_t((desc >> 16) & 0x3FFF) << 4;
    r.sbo = uint32_t((desc >> 32) & 0x3FFF) << 4;
    const uint32_t base_offset = uint32_t(desc >> 49) & 7, mode = uint32_t(desc >> 62) & 3;
    if (base_offset != 0) emu_fail("wgmma descriptor: base offset != 0 is not emulated");
    if (mode == 0) emu_fail("wgmma descriptor: the interleaved (no swizzle) mode is not emulated");
    r.swz = mode == 1 ? 3 : mode == 2 ? 2 : 1;
    return r;
}
inline uint32_t emu_kmajor(const EmuDesc& e, int row, int k) {
    const uint32_t width = 16u << e.swz;
    return emu_swizzle(e.start + (row / 8) * e.sbo + (row % 8) * width + k * 2, e.swz);
}
inline uint32_t emu_mnmajor(const EmuDesc& e, int k, int mn) {
    const uint32_t width = 16u << e.swz, per = width / 2;  // bf16 per swizzled row
    return emu_swizzle(e.start + (mn / per) * e.lbo + (mn % per) * 2 + (k % 8) * width + (k / 8) * e.sbo,
                       e.swz);
}

// The shared byte ranges op i of thread `t` reads (for the TMA overlap check), coarsely: the
// span from its lowest to its highest operand byte.
inline std::pair<uint32_t, uint32_t> emu_wgmma_span(uint64_t desc, bool kmajor, int rows) {
    const EmuDesc e = emu_decode(desc);
    uint32_t lo = ~0u, hi = 0;
    for (int r = 0; r < rows; ++r)
        for (int k = 0; k < 16; ++k) {
            const uint32_t a = kmajor ? emu_kmajor(e, r, k) : emu_mnmajor(e, k, r);
            lo = std::min(lo, a);
            hi = std::max(hi, a + 2);
        }
    return {lo, hi};
}

// The in-flight ranges are recorded at issue too (a TMA may follow the issue before any wait):
// the warpgroup's leader adds its operations' spans after each issue of its own.
inline void emu_wgmma_note_issue() {
    const unsigned tid = threadIdx.x;
    if (tid % 128) return;
    std::lock_guard<std::mutex> lock(emu90_mutex);
    const EmuWgmmaOp& o = emu90_ops[tid].back();
    auto& ranges = emu90_wg_ranges[tid / 128];
    ranges.push_back(emu_wgmma_span(o.db, !o.trans_b, o.n));
    if (!o.a) ranges.push_back(emu_wgmma_span(o.da, !o.trans_a, 64));
}

inline std::barrier<>& emu_wg_barrier() { return *emu90_wg_barriers[threadIdx.x / 128]; }

inline void emulated_wgmma_fence() { emu90_fenced[threadIdx.x] = true; }

template <int N>
inline void emulated_wgmma(float* d, uint64_t da, const uint32_t* a, uint64_t db, int scale_d,
                           bool trans_b, bool trans_a = false) {
    const unsigned tid = threadIdx.x;
    if (!emu90_fenced[tid]) emu_fail("wgmma.mma_async without a wgmma.fence since the registers were last accessed");
    if (a && trans_a) emu_fail("wgmma: imm-trans-a needs A in shared memory");
    EmuWgmmaOp op{N, da, db, a, {0, 0, 0, 0}, d, scale_d, trans_b, trans_a};
    if (a) std::memcpy(op.a_copy, a, 16);
    auto& acc = emu90_acc[tid];
    if (acc.find(d) == acc.end()) {
        acc[d] = std::vector<float>(d, d + N / 2);
        for (int i = 0; i < N / 2; ++i) d[i] = NAN;  // undefined until the wait
    }
    emu90_ops[tid].push_back(op);
    emu_wgmma_note_issue();
}

inline void emulated_wgmma_commit() { emu90_groups[threadIdx.x].push_back(emu90_ops[threadIdx.x].size()); }

inline float emu_bf16_at(uint32_t addr, std::vector<std::pair<uint32_t, uint32_t>>* ranges) {
    uint16_t v;
    std::memcpy(&v, emu_smem_ptr(addr, 2), 2);
    if (emu90_tma_pending[(addr - kSmemWindow) / 16]) emu90_race("wgmma reads a TMA destination still in flight", addr);
    if (ranges) ranges->push_back({addr, addr + 2});
    return float(__nv_bfloat16{v});
}

// Runs op index `i` of all 128 threads of the calling warpgroup (called by its leader).
inline void emu_wgmma_execute(unsigned wg0, size_t i) {
    const EmuWgmmaOp& op = emu90_ops[wg0][i];
    const int n = op.n;
    for (unsigned t = wg0; t < wg0 + 128; ++t) {
        const EmuWgmmaOp& o = emu90_ops[t][i];
        if (o.n != n || o.da != op.da || o.db != op.db || (o.a == nullptr) != (op.a == nullptr) ||
            o.scale_d != op.scale_d || o.trans_b != op.trans_b || o.trans_a != op.trans_a)
            emu_fail("wgmma: the threads of a warpgroup issued different operations");
        if (o.a && std::memcmp(o.a, o.a_copy, 16) != 0)
            emu_fail("wgmma: A registers modified before the wgmma.wait_group that retires it");
    }
    float A[64][16], B[16][256];
    const EmuDesc eb = emu_decode(op.db);
    for (int k = 0; k < 16; ++k)
        for (int c = 0; c < n; ++c)
            B[k][c] = emu_bf16_at(op.trans_b ? emu_mnmajor(eb, k, c) : emu_kmajor(eb, c, k), nullptr);
    if (op.a) {
        for (unsigned t = 0; t < 128; ++t) {
            const int w = t / 32, g = (t % 32) / 4, q = t % 4;
            for (int j = 0; j < 8; ++j) {
                const uint32_t r = emu90_ops[wg0 + t][i].a[j / 2];
                A[16 * w + g + 8 * ((j / 2) % 2)][8 * (j / 4) + 2 * q + (j % 2)] =
                    (j % 2) ? emu_hi(r) : emu_lo(r);
            }
        }
    } else {
        const EmuDesc ea = emu_decode(op.da);
        for (int r = 0; r < 64; ++r)
            for (int k = 0; k < 16; ++k)
                A[r][k] = emu_bf16_at(op.trans_a ? emu_mnmajor(ea, k, r) : emu_kmajor(ea, r, k), nullptr);
    }
    for (unsigned t = 0; t < 128; ++t) {
        std::vector<float>& acc = emu90_acc[wg0 + t].at(emu90_ops[wg0 + t][i].d);
        const int w = t / 32, g = (t % 32) / 4, q = t % 4;
        for (int j = 0; j < n / 2; ++j) {
            const int row = 16 * w + g + 8 * ((j / 2) % 2), col = 8 * (j / 4) + 2 * q + (j % 2);
            float s = op.scale_d ? acc[j] : 0.f;
            for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
            acc[j] = s;
        }
    }
    ++emu90_wgmma_count;
}

inline void emulated_wgmma_wait(int newer) {
    const unsigned tid = threadIdx.x, wg0 = tid / 128 * 128;
    emu90_fenced[tid] = false;
    emu_wg_barrier().arrive_and_wait();
    if (tid == wg0) {
        auto& groups = emu90_groups[wg0];
        std::lock_guard<std::mutex> lock(emu90_mutex);
        auto& ranges = emu90_wg_ranges[wg0 / 128];
        if (groups.size() > size_t(newer)) {
            for (unsigned t = wg0; t < wg0 + 128; ++t)
                if (emu90_groups[t] != groups || emu90_ops[t].size() != emu90_ops[wg0].size())
                    emu_fail("wgmma: the threads of a warpgroup committed different groups");
            const size_t done = groups[groups.size() - 1 - newer];
            for (size_t i = 0; i < done; ++i) emu_wgmma_execute(wg0, i);
            for (unsigned t = wg0; t < wg0 + 128; ++t) {
                auto& ops = emu90_ops[t];
                ops.erase(ops.begin(), ops.begin() + done);
                auto& gr = emu90_groups[t];
                gr.erase(gr.begin(), gr.end() - newer);
                for (auto& e : gr) e -= done;
                // Accumulators with no operation left in flight go back to the registers.
                for (auto it = emu90_acc[t].begin(); it != emu90_acc[t].end();) {
                    bool busy = false;
                    for (auto& o : ops) busy = busy || o.d == it->first;
                    if (busy) {
                        ++it;
                        continue;
                    }
                    std::memcpy(it->first, it->second.data(), it->second.size() * 4);
                    it = emu90_acc[t].erase(it);
                }
            }
        }
        ranges.clear();
        for (auto& o : emu90_ops[wg0]) {
            ranges.push_back(emu_wgmma_span(o.db, !o.trans_b, o.n));
            if (!o.a) ranges.push_back(emu_wgmma_span(o.da, !o.trans_a, 64));
        }
    }
    emu_wg_barrier().arrive_and_wait();
}

// ---------------------------------------------------------------------------------------------
// Named barriers (bar.sync / bar.arrive id, count; barrier 0 is __syncthreads). As on the GPU,
// count is in threads (a multiple of 32) and arrivals are counted per warp: a warp's k-th
// operation on a barrier counts 32 once all 32 of its threads have made it (they must agree on
// the count and on sync vs arrive: the instructions are .aligned). When `count` threads have
// arrived the phase completes and the barrier restarts empty; bar.sync waits for the completion
// of the phase its warp was counted in, bar.arrive does not wait. Errors: an id outside 1..15, a
// bad count, the lanes of a warp disagreeing, two counts in one phase, a bar.sync that never
// completes (30 s: deadlock), and, stricter than the GPU (where each is legal but here always a
// bug): one id used with two counts in a block, a phase completed by bar.arrive alone (nobody
// waited: a count too small), a block that ends with a phase begun but not completed (an
// unmatched bar.arrive: the schedule is unbalanced).

struct EmuNamedWarp {
    uint64_t calls[32] = {};                             // operations made by each lane
    std::map<uint64_t, std::pair<unsigned, bool>> ops;   // k -> (count, sync), not yet counted
    std::vector<uint64_t> phase_of;                      // k -> the phase it was counted in
};
struct EmuNamedBar {
    unsigned block_count = 0;         // the count of the block's first use
    unsigned count = 0, arrived = 0;  // of the open phase
    bool synced = false;              // a bar.sync counted in the open phase
    uint64_t completed = 0;           // phases completed
    std::map<unsigned, EmuNamedWarp> warps;
};
inline std::mutex emu90_named_mutex;
inline std::condition_variable emu90_named_cv;
inline std::map<unsigned, EmuNamedBar> emu90_named;

inline void emu_named_barrier(unsigned id, unsigned count, bool sync) {
    if (id == 0 || id > 15) emu_fail("bar.sync / bar.arrive: barrier id not in 1..15");
    if (count == 0 || count % 32 || count > blockDim.x)
        emu_fail("bar.sync / bar.arrive: count not a multiple of 32 in 32..blockDim");
    std::unique_lock<std::mutex> lock(emu90_named_mutex);
    EmuNamedBar& b = emu90_named[id];
    EmuNamedWarp& w = b.warps[threadIdx.x / 32];
    const unsigned lane = threadIdx.x % 32;
    const uint64_t k = w.calls[lane]++;
    auto it = w.ops.find(k);
    if (it == w.ops.end()) w.ops.emplace(k, std::make_pair(count, sync));
    else if (it->second != std::make_pair(count, sync))
        emu_fail("bar.sync / bar.arrive: the lanes of a warp made different barrier operations");
    // Count each operation all 32 lanes have made.
    for (;;) {
        const uint64_t next = w.phase_of.size();
        bool all = true;
        for (int l = 0; l < 32; ++l) all = all && w.calls[l] > next;
        if (!all) break;
        const auto [c, is_sync] = w.ops.at(next);
        w.ops.erase(next);
        if (b.arrived == 0) b.count = c;
        else if (b.count != c)
            emu_fail("bar.sync / bar.arrive: one barrier phase used with two thread counts");
        if (b.block_count == 0) b.block_count = c;
        else if (b.block_count != c)
            emu_fail("bar.sync / bar.arrive: one barrier id used with two thread counts");
        w.phase_of.push_back(b.completed);
        b.arrived += 32;
        b.synced = b.synced || is_sync;
        if (b.arrived == b.count) {
            if (!b.synced)
                emu_fail("bar.arrive: a barrier phase completed without any bar.sync (count too small?)");
            ++b.completed;
            b.arrived = 0;
            b.synced = false;
            emu90_named_cv.notify_all();
        }
    }
    if (!sync) return;
    const auto start = std::chrono::steady_clock::now();
    while (!(k < w.phase_of.size() && b.completed > w.phase_of[k])) {
        emu90_named_cv.wait_for(lock, std::chrono::milliseconds(20));
        if (std::chrono::steady_clock::now() - start > std::chrono::seconds(30))
            emu_fail("bar.sync never completes (deadlock)");
    }
}
inline void emulated_named_barrier(unsigned id, unsigned count) {
    emu_named_barrier(id, count, true);
}
inline void emulated_named_barrier_arrive(unsigned id, unsigned count) {
    emu_named_barrier(id, count, false);
}

// End of a block: every phase begun completed, every warp's lanes made the same operations.
inline void emu_named_check_end(unsigned x, unsigned y) {
    for (auto& [id, b] : emu90_named) {
        if (b.arrived) {
            std::fprintf(stderr, "emulation: block %u,%u, barrier %u: %u of %u threads arrived\n", x,
                         y, id, b.arrived, b.count);
            emu_fail("a named-barrier phase never completed (an unmatched bar.arrive / bar.sync)");
        }
        for (auto& [warp, w] : b.warps)
            for (int l = 0; l < 32; ++l)
                if (w.calls[l] != w.phase_of.size())
                    emu_fail("bar.sync / bar.arrive: the lanes of a warp made different numbers of "
                             "operations");
    }
    emu90_named.clear();
}

// sm_90's 2-wide fp32 atomic add (red.global.add.v2.f32 when the result is unused).
inline float2 atomicAdd(float2* p, float2 v) {
    std::lock_guard<std::mutex> lock(emu_atomic_mutex);
    const float2 old = *p;
    p->x = old.x + v.x;
    p->y = old.y + v.y;
    return old;
}

// ---------------------------------------------------------------------------------------------
// Launch: a grid of (grid_x, grid_y) blocks of `threads` threads, one block after another.

template <class F>
void emu90_launch(unsigned grid_x, unsigned grid_y, unsigned threads, F body) {
    if (threads > unsigned(kEmuMaxThreads) || threads % 128) emu_fail("emu90_launch: threads");
    gridDim = {grid_x, grid_y, 1};
    blockDim = {threads, 1, 1};
    for (unsigned y = 0; y < grid_y; ++y) {
        for (unsigned x = 0; x < grid_x; ++x) {
            std::barrier<EmuEpochStep> block(threads);
            emu_epoch = 1;
            std::vector<std::barrier<>*> warps, wgs;
            for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(new std::barrier<>(32));
            for (unsigned w = 0; w < threads / 128; ++w) wgs.push_back(new std::barrier<>(128));
            emu_block_barrier = &block;
            emu_warp_barriers = warps;
            emu90_wg_barriers = wgs;
            emu90_wg_ranges.assign(threads / 128, {});
            emu90_mbars.clear();
            emu90_tma.clear();
            emu90_tma_pending.assign(sizeof(limo_flash_sm90::smem_raw) / 16, 0);
            for (unsigned t = 0; t < threads; ++t) {
                emu90_ops[t].clear();
                emu90_groups[t].clear();
                emu90_acc[t].clear();
                emu90_fenced[t] = false;
                emu90_red_ops[t].clear();
                emu90_red_groups[t].clear();
            }
            std::memset(limo_flash_sm90::smem_raw, 0xff, sizeof(limo_flash_sm90::smem_raw));
            emu_run_block(x, y, threads, body);
            for (auto* b : warps) delete b;
            for (auto* b : wgs) delete b;
            emu_named_check_end(x, y);
            if (!emu90_tma.empty()) emu_fail("the block ended with TMA copies never waited for");
            for (unsigned t = 0; t < threads; ++t)
                if (!emu90_ops[t].empty()) emu_fail("the block ended with wgmmas never retired");
            // A TMA reduction still reading shared memory when the block ends reads memory the
            // block no longer owns: the kernel must wait_group.read 0 before it exits.
            for (unsigned t = 0; t < threads; ++t)
                if (!emu90_red_ops[t].empty())
                    emu_fail("the block ended with TMA reductions never waited for "
                             "(cp.async.bulk.wait_group.read 0 missing)");
        }
    }
}

// A test's main loop: each case (cu_seqlens `cu`, heads `hq`/`hkv`, head_dim `d`) printed and
// run with its own seed, then the race count and the totals. Returns the exit status.
template <typename Case, typename Run>
int emu90_run_cases(const std::vector<Case>& cases, uint64_t seed, bool ok, Run run,
                    const char* what, std::chrono::steady_clock::time_point start) {
    for (const auto& c : cases) {
        std::printf("cu_seqlens [");
        for (size_t i = 0; i < c.cu.size(); ++i) std::printf(i ? ", %d" : "%d", c.cu[i]);
        std::printf("], heads %d/%d, head_dim %d\n", c.hq, c.hkv, c.d);
        ok = run(c, seed++) && ok;
    }
    std::printf("races (TMA over a live wgmma operand, wgmma over an in-flight TMA, a TMA reduce "
                "source written before its wait): %ld %s\n",
                emu90_races.load(), emu90_races ? "FAIL" : "ok");
    ok = ok && emu90_races == 0;
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%ld wgmma, %ld TMA copies, %ld TMA reductions emulated\n",
                emu90_wgmma_count.load(), emu90_tma_count.load(), emu90_reduce_count.load());
    std::printf(ok ? "all %s checks passed (%.1f s)\n" : "%s FAILED (%.1f s)\n", what, secs);
    return ok ? 0 : 1;
}
