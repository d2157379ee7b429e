// CPU emulation of the CUDA built-ins used by flash_attention.cu, for checking the kernels'
// logic (tiling, masks, online softmax, fragment layouts, ldmatrix addressing, the cp.async
// pipeline, the backward) without a GPU. Never part of the PTX build: flash_attention.cu
// includes it only under LIMO_FLASH_EMULATE.
//
//   g++ -std=c++20 -O2 -fno-strict-aliasing -Wno-unknown-pragmas -x c++ -DLIMO_FLASH_EMULATE \
//       -Ikernels kernels/flash_attention.cu -o /tmp/flash_emulate -lpthread && /tmp/flash_emulate
//
// (scripts/test-flash-emulation.sh does exactly that.)
//
// Every CUDA thread of a block is a std::thread; __syncthreads is a std::barrier over the
// block, warp collectives (shuffles, mma.sync, ldmatrix) exchange values through per-warp arrays
// between two warp barriers. mma.sync.m16n8k16 is rebuilt from the PTX ISA's fragment layouts
// (the same table as in flash_attention.cu's header), products summed in fp32. ldmatrix
// (.x1/.x2/.x4, .trans) takes the row addresses of lanes 0..8*count-1 (lane 8i+r: row r of
// matrix i) and gives lane l row l/4, columns 2(l%4)..+1 of matrix i in register i (.trans:
// rows 2(l%4)..+1 of column l/4); it checks that every address is 16-byte aligned and inside
// shared memory and counts bank conflicts (two of a phase's 8 rows in the same 4-bank group).
// cp.async is deferred, as on the GPU: the issue poisons the destination with 0xff bytes (a
// bf16 NaN) and records the copy; commit_group closes the thread's current group and
// wait_group N performs all but the N newest groups' copies. A read before the matching wait
// (and __syncthreads) sees NaN, a copy landing in a buffer another thread still reads
// overwrites it late, and the float64 check fails. On top of that a shadow of shared memory
// flags, deterministically, a ldmatrix of an in-flight or unsynchronised cp.async destination and
// a cp.async over data another warp read in the same __syncthreads interval (a missing wait or
// barrier). 16-byte cp.async stores are checked for bank conflicts per quarter warp (the 8 lanes
// of a store phase) at the end of each block.
// Blocks run one at a time, so shared memory is one global buffer. Slow (a thread per CUDA
// thread), meant for small shapes.
#pragma once

#include <array>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __maxnreg__(n)

struct EmuDim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 gridDim, blockDim;

inline int min(int a, int b) { return a < b ? a : b; }

struct uint4 {
    uint32_t x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
struct float2 {
    float x, y;
};
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

inline uint16_t emu_f2bf(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return uint16_t(u >> 16);
}

struct __nv_bfloat16 {
    uint16_t bits;
    operator float() const {
        uint32_t u = uint32_t(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {emu_f2bf(f)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return {{emu_f2bf(a)}, {emu_f2bf(b)}};
}

// Block-wide and warp-wide synchronisation of the block being run.
// __syncthreads intervals of the running block, numbered from 1 (0 = never), for the race check.
inline std::atomic<unsigned> emu_epoch{1};
struct EmuEpochStep {
    void operator()() noexcept { ++emu_epoch; }
};
inline std::barrier<EmuEpochStep>* emu_block_barrier = nullptr;
inline std::vector<std::barrier<>*> emu_warp_barriers;
inline float emu_xchg_f[32][32];
inline uint32_t emu_xchg_a[32][32][4], emu_xchg_b[32][32][2];
inline std::mutex emu_atomic_mutex;
inline const void* emu_xchg_ptr[32][32];

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

inline void emu_warp_sync() { emu_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

inline void __syncwarp() { emu_warp_sync(); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    emu_xchg_f[w][l] = v;
    emu_warp_sync();
    const float r = emu_xchg_f[w][l ^ mask];
    emu_warp_sync();
    return r;
}

inline float atomicAdd(float* p, float v) {
    std::lock_guard<std::mutex> lock(emu_atomic_mutex);
    const float old = *p;
    *p = old + v;
    return old;
}

inline float emu_lo(uint32_t r) { return float(__nv_bfloat16{uint16_t(r & 0xffff)}); }
inline float emu_hi(uint32_t r) { return float(__nv_bfloat16{uint16_t(r >> 16)}); }

// D = A B + C for one warp, A 16x16, B 16x8, from the 32 lanes' fragments.
inline void emulated_mma_bf16_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) emu_xchg_a[w][l][i] = a[i];
    for (int i = 0; i < 2; ++i) emu_xchg_b[w][l][i] = b[i];
    emu_warp_sync();
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const uint32_t* ra = emu_xchg_a[w][lane];
        A[g][2 * t] = emu_lo(ra[0]);
        A[g][2 * t + 1] = emu_hi(ra[0]);
        A[g + 8][2 * t] = emu_lo(ra[1]);
        A[g + 8][2 * t + 1] = emu_hi(ra[1]);
        A[g][2 * t + 8] = emu_lo(ra[2]);
        A[g][2 * t + 9] = emu_hi(ra[2]);
        A[g + 8][2 * t + 8] = emu_lo(ra[3]);
        A[g + 8][2 * t + 9] = emu_hi(ra[3]);
        const uint32_t* rb = emu_xchg_b[w][lane];
        B[2 * t][g] = emu_lo(rb[0]);
        B[2 * t + 1][g] = emu_hi(rb[0]);
        B[2 * t + 8][g] = emu_lo(rb[1]);
        B[2 * t + 9][g] = emu_hi(rb[1]);
    }
    emu_warp_sync();
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
        float acc = c[i];
        for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
        c[i] = acc;
    }
}

namespace limo_flash {
// The `extern __shared__` buffer of every kernel (blocks run one at a time).
alignas(16) inline unsigned char smem_raw[256 * 1024];
}  // namespace limo_flash

[[noreturn]] inline void emu_fail(const char* what) {
    std::fprintf(stderr, "emulation: %s (thread %u of block %u,%u)\n", what, threadIdx.x,
                 blockIdx.x, blockIdx.y);
    std::abort();
}

inline bool emu_in_smem(const void* p, size_t bytes) {
    const auto* c = static_cast<const unsigned char*>(p);
    const auto* base = limo_flash::smem_raw;
    return c >= base && c + bytes <= base + sizeof(limo_flash::smem_raw);
}

// Bank conflicts found by the checks (must stay 0).
inline std::atomic<long> emu_ldmatrix_conflicts{0}, emu_cp_async_conflicts{0};
inline std::atomic<long> emu_ldmatrix_count{0}, emu_cp_async_count{0};

// Up to 8 addresses of 16-byte units served in one shared-memory phase: conflict-free iff no
// two distinct units fall into the same 4-bank group (unit % 8).
inline bool emu_phase_conflicts(const uintptr_t* addr16, int count = 8) {
    unsigned seen = 0;
    for (int i = 0; i < count; ++i) {
        bool dup = false;
        for (int j = 0; j < i; ++j) dup = dup || addr16[j] == addr16[i];
        if (dup) continue;  // the same unit twice is a broadcast
        const unsigned bit = 1u << (addr16[i] % 8);
        if (seen & bit) return true;
        seen |= bit;
    }
    return false;
}

// Race check on shared memory, per 16-byte granule, between warps, by __syncthreads interval
// (epoch): a ldmatrix row may not be an in-flight cp.async destination, nor another warp's
// copy completed in the same interval (its wait must be followed by a barrier), and a cp.async
// may not overwrite a granule another warp read in the same interval (the prefetch must come
// after the barrier that ends the readers' use). Deterministic, unlike the poison, which only
// shows when the threads happen to interleave badly. Covers ldmatrix reads and 16-byte cp.async
// writes (the kernels' tile traffic); plain loads and stores are not tracked.
struct EmuShadow {
    unsigned read_epoch, write_epoch;
    short read_warp, write_warp;
    bool read_multi, pending;
};
inline EmuShadow emu_shadow[sizeof(limo_flash::smem_raw) / 16];
inline std::mutex emu_shadow_mutex;
inline std::atomic<long> emu_races{0};

inline void emu_shadow_reset() { std::memset(emu_shadow, 0, sizeof(emu_shadow)); }

inline size_t emu_granule(const void* p) {
    return size_t(static_cast<const unsigned char*>(p) - limo_flash::smem_raw) / 16;
}

inline void emu_race(const char* what, const void* p) {
    if (emu_races++ < 5)
        std::fprintf(stderr, "emulation: race: %s (smem byte %zu, thread %u, block %u,%u, epoch %u)\n",
                     what, emu_granule(p) * 16, threadIdx.x, blockIdx.x, blockIdx.y, emu_epoch.load());
}

// Caller holds emu_shadow_mutex.
inline void emu_shadow_read(const void* p, int warp) {
    EmuShadow& s = emu_shadow[emu_granule(p)];
    const unsigned e = emu_epoch;
    if (s.pending) emu_race("ldmatrix reads an in-flight cp.async destination", p);
    else if (s.write_epoch == e && s.write_warp != warp)
        emu_race("ldmatrix reads another warp's cp.async with no barrier after its wait", p);
    if (s.read_epoch != e) {
        s.read_epoch = e;
        s.read_warp = short(warp);
        s.read_multi = false;
    } else if (s.read_warp != warp) {
        s.read_multi = true;
    }
}

template <int COUNT, bool TRANS>
inline void emulated_ldmatrix(uint32_t* r, const void* p) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l < 8 * COUNT) {
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu_fail("ldmatrix row address not 16-byte aligned");
        if (!emu_in_smem(p, 16)) emu_fail("ldmatrix row address outside shared memory");
    }
    emu_xchg_ptr[w][l] = p;
    emu_warp_sync();
    if (l == 0) {
        std::lock_guard<std::mutex> lock(emu_shadow_mutex);
        for (int j = 0; j < 8 * COUNT; ++j) emu_shadow_read(emu_xchg_ptr[w][j], w);
        emu_ldmatrix_count += COUNT;
        for (int i = 0; i < COUNT; ++i) {
            uintptr_t a[8];
            for (int j = 0; j < 8; ++j) a[j] = reinterpret_cast<uintptr_t>(emu_xchg_ptr[w][8 * i + j]) / 16;
            if (emu_phase_conflicts(a)) ++emu_ldmatrix_conflicts;
        }
    }
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < COUNT; ++i) {
        uint16_t lo, hi;
        if (!TRANS) {
            const auto* row = static_cast<const uint16_t*>(emu_xchg_ptr[w][8 * i + g]);
            lo = row[2 * t];
            hi = row[2 * t + 1];
        } else {
            lo = static_cast<const uint16_t*>(emu_xchg_ptr[w][8 * i + 2 * t])[g];
            hi = static_cast<const uint16_t*>(emu_xchg_ptr[w][8 * i + 2 * t + 1])[g];
        }
        r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
    emu_warp_sync();
}

// cp.async: per thread, the pending copies and where each commit group ends.
struct EmuCopy {
    void* dst;
    const void* src;
    int bytes, src_bytes;
};
inline thread_local std::vector<EmuCopy> emu_pending;
inline thread_local std::vector<size_t> emu_group_ends;  // emu_pending indices, one per group
inline thread_local size_t emu_cp_seq = 0;  // this thread's 16-byte cp.async count in the block
// Destinations of the 16-byte copies, [warp][sequence number][lane], for the bank check.
inline std::vector<std::vector<std::array<uintptr_t, 32>>> emu_cp_dst;
inline std::mutex emu_cp_mutex;

inline void emulated_cp_async(void* dst, const void* src, int bytes, int src_bytes) {
    if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || reinterpret_cast<uintptr_t>(src) % bytes != 0)
        emu_fail("cp.async address not aligned to its size");
    if (!emu_in_smem(dst, bytes)) emu_fail("cp.async destination outside shared memory");
    std::memset(dst, 0xff, bytes);  // poison until the wait
    emu_pending.push_back({dst, src, bytes, src_bytes});
    if (bytes == 16) {
        std::lock_guard<std::mutex> lock(emu_shadow_mutex);
        EmuShadow& s = emu_shadow[emu_granule(dst)];
        const int w = threadIdx.x / 32;
        if (s.read_epoch == emu_epoch && (s.read_multi || s.read_warp != w))
            emu_race("cp.async overwrites what another warp read with no barrier in between", dst);
        s.pending = true;
    }
    ++emu_cp_async_count;
    if (bytes == 16) {
        const int w = threadIdx.x / 32, l = threadIdx.x % 32;
        std::lock_guard<std::mutex> lock(emu_cp_mutex);
        auto& v = emu_cp_dst[w];
        if (v.size() <= emu_cp_seq) v.resize(emu_cp_seq + 1, std::array<uintptr_t, 32>{});
        v[emu_cp_seq][l] = reinterpret_cast<uintptr_t>(dst) / 16 + 1;  // 0 = no copy
        ++emu_cp_seq;
    }
}

inline void emulated_cp_async_commit() { emu_group_ends.push_back(emu_pending.size()); }

inline void emulated_cp_async_wait(int newer) {
    const size_t groups = emu_group_ends.size();
    if (groups <= size_t(newer)) return;
    const size_t done = emu_group_ends[groups - 1 - newer];
    for (size_t i = 0; i < done; ++i) {
        const EmuCopy& c = emu_pending[i];
        std::memset(c.dst, 0, c.bytes);
        std::memcpy(c.dst, c.src, c.src_bytes);
        if (c.bytes == 16) {
            std::lock_guard<std::mutex> lock(emu_shadow_mutex);
            EmuShadow& s = emu_shadow[emu_granule(c.dst)];
            s.pending = false;
            s.write_epoch = emu_epoch;
            s.write_warp = short(threadIdx.x / 32);
        }
    }
    emu_pending.erase(emu_pending.begin(), emu_pending.begin() + done);
    emu_group_ends.erase(emu_group_ends.begin(), emu_group_ends.end() - newer);
    for (auto& e : emu_group_ends) e -= done;
}

// After a block: the 16-byte copies issued together by each quarter warp (same sequence number)
// must hit 8 distinct 4-bank groups.
inline void emu_check_cp_async_banks() {
    for (auto& warp : emu_cp_dst) {
        for (auto& lanes : warp) {
            for (int q = 0; q < 4; ++q) {
                uintptr_t a[8];
                int n = 0;
                for (int j = 0; j < 8; ++j)
                    if (lanes[8 * q + j]) a[n++] = lanes[8 * q + j] - 1;
                if (emu_phase_conflicts(a, n)) ++emu_cp_async_conflicts;
            }
        }
        warp.clear();
    }
}


// Block (x, y): `body` on a std::thread per CUDA thread, each with its threadIdx and blockIdx;
// returns when all have finished.
template <class F>
void emu_run_block(unsigned x, unsigned y, unsigned threads, F body) {
    std::vector<std::thread> pool;
    for (unsigned i = 0; i < threads; ++i) {
        pool.emplace_back([=] {
            threadIdx = {i, 0, 0};
            blockIdx = {x, y, 0};
            body();
        });
    }
    for (auto& th : pool) th.join();
}

// Runs `body` as a grid of (grid_x, grid_y) blocks of `threads` threads, block after block.
template <class F>
void emu_launch(unsigned grid_x, unsigned grid_y, unsigned threads, F body) {
    gridDim = {grid_x, grid_y, 1};
    blockDim = {threads, 1, 1};
    for (unsigned y = 0; y < grid_y; ++y) {
        for (unsigned x = 0; x < grid_x; ++x) {
            std::barrier<EmuEpochStep> block(threads);
            emu_epoch = 1;
            emu_shadow_reset();
            std::vector<std::barrier<>*> warps;
            for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(new std::barrier<>(32));
            emu_block_barrier = &block;
            emu_warp_barriers = warps;
            emu_cp_dst.assign(threads / 32, {});
            std::memset(limo_flash::smem_raw, 0xff, sizeof(limo_flash::smem_raw));  // poison
            emu_run_block(x, y, threads, body);
            for (auto* b : warps) delete b;
            emu_check_cp_async_banks();
        }
    }
}
