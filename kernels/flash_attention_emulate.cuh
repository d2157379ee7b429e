// CPU emulation of the CUDA built-ins used by flash_attention.cu, for checking the kernels'
// logic (tiling, masks, online softmax, fragment layouts, the backward) without a GPU.
// Never part of the PTX build: flash_attention.cu includes it only under LIMO_FLASH_EMULATE.
//
//   g++ -std=c++20 -O2 -fno-strict-aliasing -Wno-unknown-pragmas -x c++ -DLIMO_FLASH_EMULATE \
//       -Ikernels kernels/flash_attention.cu -o /tmp/flash_emulate -lpthread && /tmp/flash_emulate
//
// (about 2.5 minutes on 2 cores, most of it creating threads; 2026-11-25: all checks passed,
// relative L2 errors 0.9e-3..2.7e-3 against float64, bf16-level as expected.)
//
// Every CUDA thread of a block is a std::thread; __syncthreads is a std::barrier over the
// block, warp collectives (shuffles, mma.sync) exchange values through per-warp arrays between
// two warp barriers. mma.sync.m16n8k16 is rebuilt from the PTX ISA's fragment layouts (the same
// table as in flash_attention.cu's header), products summed in fp32. Blocks run one at a time,
// so shared memory is one global buffer. Slow (a thread per CUDA thread), meant for small shapes.
#pragma once

#include <barrier>
#include <cmath>
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
#define __launch_bounds__(n)

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
inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<std::barrier<>*> emu_warp_barriers;
inline float emu_xchg_f[32][32];
inline uint32_t emu_xchg_a[32][32][4], emu_xchg_b[32][32][2];
inline std::mutex emu_atomic_mutex;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

inline void emu_warp_sync() { emu_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

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

// Runs `body` as a grid of (grid_x, grid_y) blocks of `threads` threads, block after block.
template <class F>
void emu_launch(unsigned grid_x, unsigned grid_y, unsigned threads, F body) {
    gridDim = {grid_x, grid_y, 1};
    blockDim = {threads, 1, 1};
    for (unsigned y = 0; y < grid_y; ++y) {
        for (unsigned x = 0; x < grid_x; ++x) {
            std::barrier<> block(threads);
            std::vector<std::barrier<>*> warps;
            for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(new std::barrier<>(32));
            emu_block_barrier = &block;
            emu_warp_barriers = warps;
            std::memset(limo_flash::smem_raw, 0xff, sizeof(limo_flash::smem_raw));  // poison
            std::vector<std::thread> pool;
            for (unsigned i = 0; i < threads; ++i) {
                pool.emplace_back([=] {
                    threadIdx = {i, 0, 0};
                    blockIdx = {x, y, 0};
                    body();
                });
            }
            for (auto& th : pool) th.join();
            for (auto* b : warps) delete b;
        }
    }
}
