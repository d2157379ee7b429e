// PTX wrappers of the Hopper (sm_90a) kernels, flash_attention_sm90.cu and
// flash_attention_bwd_sm90.cu: mbarriers, TMA, setmaxnreg, named barriers (sync, arrive), proxy
// fences, the TMA reduce-add with its bulk-group commit / wait, and the wgmma fence / commit /
// wait and descriptor. Under LIMO_FLASH_EMULATE each calls
// the emulation's emulated_* function (flash_attention_sm90_emulate.cuh, included first); the
// wgmma products themselves stay in each kernel file, one per shape it uses.
#pragma once

// The accumulator operands of a wgmma m64nN (N/2 f32 registers per thread of d) as asm
// operands with constraint `c` ("+f", or "=f" for a first k-step), and the matching register
// lists of the instruction string.
#define LIMO_WG_D32(c) \
    c(d[0]), c(d[1]), c(d[2]), c(d[3]), c(d[4]), c(d[5]), c(d[6]), c(d[7]), c(d[8]), c(d[9]), \
    c(d[10]), c(d[11]), c(d[12]), c(d[13]), c(d[14]), c(d[15]), c(d[16]), c(d[17]), c(d[18]), \
    c(d[19]), c(d[20]), c(d[21]), c(d[22]), c(d[23]), c(d[24]), c(d[25]), c(d[26]), c(d[27]), \
    c(d[28]), c(d[29]), c(d[30]), c(d[31])
#define LIMO_WG_D64(c) \
    LIMO_WG_D32(c), \
    c(d[32]), c(d[33]), c(d[34]), c(d[35]), c(d[36]), c(d[37]), c(d[38]), c(d[39]), c(d[40]), \
    c(d[41]), c(d[42]), c(d[43]), c(d[44]), c(d[45]), c(d[46]), c(d[47]), c(d[48]), c(d[49]), \
    c(d[50]), c(d[51]), c(d[52]), c(d[53]), c(d[54]), c(d[55]), c(d[56]), c(d[57]), c(d[58]), \
    c(d[59]), c(d[60]), c(d[61]), c(d[62]), c(d[63])
#define LIMO_WG_R32 \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LIMO_WG_R64 \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

namespace limo_flash_sm90 {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
#ifdef LIMO_FLASH_EMULATE
    return emu_smem_u32(p);
#else
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#ifdef LIMO_FLASH_EMULATE
    emulated_mbar_init(bar, count);
#else
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
#endif
}

// Makes the initialised barriers visible to the other threads and the async proxy (TMA).
__device__ __forceinline__ void fence_barrier_init() {
#ifndef LIMO_FLASH_EMULATE
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// Release semantics (the default .release.cta): the arriving thread's earlier shared-memory
// stores are visible to a thread whose wait sees the phase complete.
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#ifdef LIMO_FLASH_EMULATE
    emulated_mbar_arrive(bar, 0);
#else
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#endif
}

// One arrival that also raises the phase's expected transaction count by `bytes`.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#ifdef LIMO_FLASH_EMULATE
    emulated_mbar_arrive(bar, bytes);
#else
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
                 "r"(bytes)
                 : "memory");
#endif
}

// Blocks until the phase of parity `parity` has completed (a fresh barrier is in phase 0, so
// waiting for parity 1 returns at once: the "preceding phase" counts as complete).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#ifdef LIMO_FLASH_EMULATE
    emulated_mbar_wait(bar, parity);
#else
    const uint32_t a = smem_u32(bar);
    uint32_t done = 0;
    while (!done) {
        asm volatile(
            "{\n.reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(a), "r"(parity)
            : "memory");
    }
#endif
}

// TMA: the box at (c0, c1, c2) of `map` into shared memory at dst, completion (its bytes) on
// `bar`.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1,
                                            int c2, uint64_t* bar) {
#ifdef LIMO_FLASH_EMULATE
    emulated_tma_load_3d(dst, map, c0, c1, c2, bar);
#else
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_u32(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
        : "memory");
#endif
}

// TMA reduce-add (the backward's dQ): the box at (c0, c1, c2) of `map` += the box at src in
// shared memory (the map's element type, f32 here; laid out as a TMA load of that map would put
// it, swizzle included; 128-byte aligned, 1024 with the 128-byte swizzle); out-of-bound
// elements are skipped. Completion by bulk async-group: bulk_commit_group() closes the thread's
// group, bulk_wait_group_read<N>() waits until at most N of its groups still read shared memory.
// All three are per thread (the issuing thread's groups).
__device__ __forceinline__ void tma_reduce_add_3d(const void* src, const CUtensorMap* map, int c0,
                                                  int c1, int c2) {
#ifdef LIMO_FLASH_EMULATE
    emulated_tma_reduce_add_3d(src, map, c0, c1, c2);
#else
    asm volatile(
        "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group "
        "[%0, {%1, %2, %3}], [%4];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
        "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(src))
        : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit_group() {
#ifdef LIMO_FLASH_EMULATE
    emulated_bulk_commit_group();
#else
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// A thread with no bulk group pending passes at once (the non-issuing threads).
template <int N>
__device__ __forceinline__ void bulk_wait_group_read() {
#ifdef LIMO_FLASH_EMULATE
    emulated_bulk_wait_group_read(N);
#else
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}

template <int REGS>
__device__ __forceinline__ void setmaxnreg_dec() {
#ifndef LIMO_FLASH_EMULATE
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
#endif
}
template <int REGS>
__device__ __forceinline__ void setmaxnreg_inc() {
#ifndef LIMO_FLASH_EMULATE
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
#endif
}

// Barrier `id` over `COUNT` threads (the consumer warpgroups only; 0 is __syncthreads).
template <int COUNT>
__device__ __forceinline__ void named_barrier(int id) {
#ifdef LIMO_FLASH_EMULATE
    emulated_named_barrier(id, COUNT);
#else
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(COUNT) : "memory");
#endif
}

// Arrival at barrier `id` without waiting (bar.arrive): counts toward COUNT like a bar.sync
// of the same barrier, so one group can release another that bar.syncs on it (the forward's
// ping-pong turns).
template <int COUNT>
__device__ __forceinline__ void named_barrier_arrive(int id) {
#ifdef LIMO_FLASH_EMULATE
    emulated_named_barrier_arrive(id, COUNT);
#else
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(COUNT) : "memory");
#endif
}

// Generic-proxy stores (dS) made visible to the async proxy (wgmma's operand reads).
__device__ __forceinline__ void fence_proxy_async() {
#ifndef LIMO_FLASH_EMULATE
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma_fence();
#else
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef LIMO_FLASH_EMULATE
    emulated_wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving accesses of accumulator registers across the asynchronous
// wgmma boundaries (the asm statements above only see the registers at issue).
template <int R>
__device__ __forceinline__ void fence_regs(float (&r)[R]) {
#ifndef LIMO_FLASH_EMULATE
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(r[i])::"memory");
#endif
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride
// byte offsets (each >> 4 in 14 bits), base offset 0 (the pattern starts on a 1024-byte
// boundary), swizzle mode 1 in bits 62-63.
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
    return uint64_t((saddr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) |
           (uint64_t((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace limo_flash_sm90
