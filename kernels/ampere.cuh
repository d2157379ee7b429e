// PTX wrappers of the sm_80 flash-attention kernels (flash_attention.cu), which also run on
// sm_90: mma.sync m16n8k16 (bf16, f32 accumulate), ldmatrix (plain and .trans) with the
// fragment loads built on it, cp.async with its commit / wait, and the staging of tile rows into
// shared memory. Under LIMO_FLASH_EMULATE each calls the emulation's emulated_* function
// (flash_attention_emulate.cuh, included first). Included by flash_attention.cu after the bf16
// typedef.
#pragma once

namespace limo_flash {

// Whether T is bf16 (staged with cp.async) or f32 (converted through registers).
template <typename T>
struct IsBf16 {
    static constexpr bool value = false;
};
template <>
struct IsBf16<bf16> {
    static constexpr bool value = true;
};

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

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8x8 matrices, row addresses from all
// 32 lanes (16-byte aligned, shared memory).
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16* p) {
#ifdef LIMO_FLASH_EMULATE
    emulated_ldmatrix<4, false>(r, p);
#else
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const bf16* p) {
#ifdef LIMO_FLASH_EMULATE
    emulated_ldmatrix<4, true>(r, p);
#else
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}

// A fragment of the 16x16 block of M at (r0, c0): A[r][k] = M[r0 + r][c0 + k]. Matrices in
// register order: rows +0/+8 of columns +0, then rows +0/+8 of columns +8.
__device__ __forceinline__ void frag_a(uint32_t a[4], const bf16* m, int ld, int r0, int c0) {
    const int lane = threadIdx.x & 31, i = lane >> 3;
    ldsm_x4(a, m + (r0 + (lane & 7) + ((i & 1) << 3)) * ld + c0 + ((i >> 1) << 3));
}

// A fragment of the transpose: A[r][k] = M[c0 + k][r0 + r] (transposed 8x8 loads: matrix j
// covers M rows c0 + 8(j>>1).., columns r0 + 8(j&1)..).
__device__ __forceinline__ void frag_a_trans(uint32_t a[4], const bf16* m, int ld, int r0, int c0) {
    const int lane = threadIdx.x & 31, i = lane >> 3;
    ldsm_x4_trans(a, m + (c0 + (lane & 7) + ((i >> 1) << 3)) * ld + r0 + ((i & 1) << 3));
}

// B fragments of two adjacent n blocks (n0.. and n0+8..; b[0..1] and b[2..3]) stored n-major,
// e.g. K for S = Q K^T: B[k][n] = M[n0 + n][k0 + k].
__device__ __forceinline__ void frag_b2_nmajor(uint32_t b[4], const bf16* m, int ld, int n0, int k0) {
    const int lane = threadIdx.x & 31, i = lane >> 3;
    ldsm_x4(b, m + (n0 + (lane & 7) + ((i >> 1) << 3)) * ld + k0 + ((i & 1) << 3));
}

// The same stored k-major, e.g. V for O = P V: B[k][n] = M[k0 + k][n0 + n] (transposed loads).
__device__ __forceinline__ void frag_b2_kmajor(uint32_t b[4], const bf16* m, int ld, int k0, int n0) {
    const int lane = threadIdx.x & 31, i = lane >> 3;
    ldsm_x4_trans(b, m + (k0 + (lane & 7) + ((i & 1) << 3)) * ld + n0 + ((i >> 1) << 3));
}

// cp.async of `bytes` (16: .cg, L2 only; 4: .ca) from global to shared memory; `valid` false
// copies nothing and zero-fills the destination (source size 0; src must still be a valid
// address). Completes at cp_async_wait<N>() once at most N newer groups are pending.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
#ifdef LIMO_FLASH_EMULATE
    emulated_cp_async(dst, src, BYTES, valid ? BYTES : 0);
#else
    const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
    if constexpr (BYTES == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                     "r"(valid ? 16 : 0));
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src),
                     "r"(valid ? 4 : 0));
    }
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef LIMO_FLASH_EMULATE
    emulated_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef LIMO_FLASH_EMULATE
    emulated_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Eight consecutive f32 of global memory as eight bf16 (32-byte aligned source).
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
// rows >= valid are zero-filled so partial tiles contribute nothing to the MMAs. bf16: cp.async
// (part of the caller's next commit group); f32: converted through registers, visible after the
// caller's next __syncthreads. Consecutive threads take consecutive 16-byte chunks of a row.
template <typename T, int D, int ROWS, int NTHREADS>
__device__ __forceinline__ void stage_rows(bf16* dst, int ld, const T* src, long long stride,
                                           int valid) {
    constexpr int kChunks = D / 8;
    static_assert((ROWS * kChunks) % NTHREADS == 0, "every thread copies the same count");
#pragma unroll
    for (int c = threadIdx.x; c < ROWS * kChunks; c += NTHREADS) {
        const int r = c / kChunks, col = (c % kChunks) * 8;
        if constexpr (IsBf16<T>::value) {
            cp_async<16>(dst + r * ld + col, src + (r < valid ? r : 0) * stride + col, r < valid);
        } else {
            uint4 v = make_uint4(0, 0, 0, 0);
            if (r < valid) v = load8(src + r * stride + col);
            *reinterpret_cast<uint4*>(dst + r * ld + col) = v;
        }
    }
}

}  // namespace limo_flash
