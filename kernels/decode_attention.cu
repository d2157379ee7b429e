// Decode attention for limo's KV-cache generation: one new query row per sequence, attending to
// that sequence's cached keys and values, batched over sequences and query heads; split-K
// ("flash-decoding") over the cache length so that long caches fill the GPU.
//
// Contract (identical to the CPU reference crates/limo-ops/src/decode_attention.rs):
//   k_cache, v_cache [S, kv_heads, cap, D] (T, contiguous): S cache slots of cap positions each.
//   q [B, q_heads, D] (T, contiguous): row b is the newest token of the sequence in slot
//   slots[b], which has lens[b] keys cached (1 <= lens[b] <= cap; its own key included).
//   out[b, h] = softmax(scale * q[b, h] . K[j]) V over j < lens[b], with K, V the rows of
//   k_cache/v_cache[slots[b], h / (q_heads / kv_heads)] (GQA). out [B, q_heads, D] in T.
//   index = [slots[0..B) | lens[0..B)] int32 (one upload per decode step, shared by layers).
//   T is bf16 or f32, D is 64 or 128; products, softmax and sums are fp32.
//
// The cache is written by kv_cache_write_* (below): row i of k_new/v_new [n, kv_heads, D] goes
// to position rows[n + i] of slot rows[i]; generation calls it once per layer with every new
// token of the step (decode: one per sequence; prefill: a whole prompt per slot), so appending
// is one launch per layer, whatever the batch.
//
// Work decomposition. decode_attn_split_*: one CTA of 128 threads per (split, sequence, kv head,
// chunk of up to 8 query heads of its GQA group); a split is kSplit = 256 consecutive keys. The
// split size is fixed (not derived from the batch or the GPU), so what a sequence computes does
// not depend on which other sequences share the launch. Three phases over the split's keys:
//   1. scores: D/8 threads per key, 8 elements each (one 16-byte load of bf16), dot products
//      for every query head of the chunk (queries in registers, pre-scaled), reduced over the
//      key's threads with shuffles; written to shared memory [8][256] f32.
//   2. per query head (one warp each): m = max score, p = exp(s - m) in place, l = sum p.
//   3. acc = sum_j p_j V_j: warp w takes keys j = w mod 4, lane holds D/32 columns (a warp reads
//      whole V rows, coalesced); the four warps' sums are added in shared memory in a fixed
//      order. (m, l, acc) of the split go to fp32 partial buffers.
// decode_attn_combine_*: one CTA of D threads per (sequence, query head) merges the splits:
//   M = max m_i, out = sum_i exp(m_i - M) acc_i / sum_i exp(m_i - M) l_i, in split order.
// A sequence of one split goes through the same merge (exp(0) = 1: out = acc / l), so a result
// never depends on how many splits other sequences have.
//
// Checked on the CPU without a GPU: decode_attention_emulate_test.cuh runs these kernels under
// the CUDA emulation of flash_attention_emulate.cuh (scripts/test-decode-emulation.sh).

#ifdef LIMO_DECODE_EMULATE
#include "decode_attention_emulate.cuh"
#else
#include <cuda_bf16.h>
#include <stdint.h>
#endif

namespace limo_decode {

typedef __nv_bfloat16 bf16;

constexpr int kThreads = 128;  // 4 warps per CTA
constexpr int kWarps = kThreads / 32;
constexpr int kSplit = 256;    // keys per split (the wrapper's `SPLIT`)
constexpr int kMaxGroup = 8;   // query heads per CTA (the wrapper's `MAX_GROUP`)

__device__ __forceinline__ float bf16_to_f32(bf16 x) {
#ifdef LIMO_DECODE_EMULATE
    return float(x);
#else
    return __bfloat162float(x);
#endif
}

__device__ __forceinline__ float bits_lo(uint32_t r) {
#ifdef LIMO_DECODE_EMULATE
    return emu_decode_bf16_bits(uint16_t(r & 0xffffu));
#else
    return __uint_as_float(r << 16);
#endif
}

__device__ __forceinline__ float bits_hi(uint32_t r) {
#ifdef LIMO_DECODE_EMULATE
    return emu_decode_bf16_bits(uint16_t(r >> 16));
#else
    return __uint_as_float(r & 0xffff0000u);
#endif
}

// Eight consecutive elements as f32 (16-byte aligned for bf16, 32 for f32).
__device__ __forceinline__ void load8(const bf16* p, float out[8]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = bits_lo(w[i]);
        out[2 * i + 1] = bits_hi(w[i]);
    }
}

__device__ __forceinline__ void load8(const float* p, float out[8]) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    const float4 b = *reinterpret_cast<const float4*>(p + 4);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// C consecutive elements (C = 2 or 4) as f32.
template <int C>
__device__ __forceinline__ void load_cols(const bf16* p, float out[C]) {
    if constexpr (C == 2) {
        const uint32_t u = *reinterpret_cast<const uint32_t*>(p);
        out[0] = bits_lo(u);
        out[1] = bits_hi(u);
    } else {
        const uint32_t* w = reinterpret_cast<const uint32_t*>(p);
        const uint32_t u0 = w[0], u1 = w[1];
        out[0] = bits_lo(u0);
        out[1] = bits_hi(u0);
        out[2] = bits_lo(u1);
        out[3] = bits_hi(u1);
    }
}

template <int C>
__device__ __forceinline__ void load_cols(const float* p, float out[C]) {
#pragma unroll
    for (int i = 0; i < C; ++i) out[i] = p[i];
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return bf16_to_f32(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Dynamic shared memory of decode_attn_split (the wrapper's `split_smem_bytes`): scores
// [kMaxGroup][kSplit] f32, then the per-warp sums [kWarps][kMaxGroup][D] f32.
template <int D>
struct SplitSmem {
    static constexpr int bytes = (kMaxGroup * kSplit + kWarps * kMaxGroup * D) * 4;
};

// Grid: x = split, y = (sequence * kv_heads + kv head) * chunks + chunk, where
// chunks = ceil(group / kMaxGroup). partial_acc [B, q_heads, max_splits, D] f32 and
// partial_ml [B, q_heads, max_splits, 2] f32 (m, l); splits at or past a sequence's length are
// neither computed nor written (the combine never reads them).
template <typename T, int D>
__device__ __forceinline__ void decode_attn_split(
    const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
    const int* __restrict__ index, float* __restrict__ partial_acc,
    float* __restrict__ partial_ml, int batch, int q_heads, int kv_heads, int cap,
    int max_splits, float scale) {
    constexpr int TPK = D / 8;              // threads per key in phase 1
    constexpr int KPP = kThreads / TPK;     // keys per pass in phase 1
    constexpr int C = D / 32;               // columns per lane in phase 3
    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* scores = reinterpret_cast<float*>(smem_raw);
    float* sums = scores + kMaxGroup * kSplit;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int group = q_heads / kv_heads;
    const int chunks = (group + kMaxGroup - 1) / kMaxGroup;
    const int split = blockIdx.x;
    const int chunk = blockIdx.y % chunks;
    const int kvh = (blockIdx.y / chunks) % kv_heads;
    const int b = blockIdx.y / (chunks * kv_heads);
    if (b >= batch) return;
    const int len = index[batch + b];
    const int k0 = split * kSplit;
    if (k0 >= len) return;  // uniform over the CTA
    const int nk = min(kSplit, len - k0);
    const int h0 = kvh * group + chunk * kMaxGroup;
    const int G = min(kMaxGroup, group - chunk * kMaxGroup);
    const size_t base = ((size_t(index[b]) * kv_heads + kvh) * cap + k0) * D;
    const T* K = k_cache + base;
    const T* V = v_cache + base;

    // Phase 1: scores.
    const int c0 = (tid % TPK) * 8;
    float qr[kMaxGroup][8];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
        if (g < G) {
            load8(q + (size_t(b) * q_heads + h0 + g) * D + c0, qr[g]);
#pragma unroll
            for (int i = 0; i < 8; ++i) qr[g][i] *= scale;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) qr[g][i] = 0.f;
        }
    }
    // Two passes unrolled: two rows of K loading at once per thread (one at a time, each pass
    // waited on memory latency). Four made the bf16 kernels spill; two fit in the 128
    // registers allowed below.
#pragma unroll 2
    for (int jb = 0; jb < nk; jb += KPP) {
        const int j = jb + tid / TPK;
        const bool valid = j < nk;
        float kr[8];
        if (valid) {
            load8(K + size_t(j) * D + c0, kr);
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) kr[i] = 0.f;
        }
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g) {
            if (g < G) {  // uniform: every lane takes part in the shuffles
                float s = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) s += qr[g][i] * kr[i];
#pragma unroll
                for (int o = TPK / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                if (valid && tid % TPK == 0) scores[g * kSplit + j] = s;
            }
        }
    }
    __syncthreads();

    // Phase 2: max, exp and sum per query head, one warp per head.
    for (int g = warp; g < G; g += kWarps) {
        float* row = scores + g * kSplit;
        float m = -INFINITY;
        for (int j = lane; j < nk; j += 32) m = fmaxf(m, row[j]);
        m = warp_max(m);
        float l = 0.f;
        for (int j = lane; j < nk; j += 32) {
            const float p = expf(row[j] - m);
            row[j] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) {
            float* ml = partial_ml + ((size_t(b) * q_heads + h0 + g) * max_splits + split) * 2;
            ml[0] = m;
            ml[1] = l;
        }
    }
    __syncthreads();

    // Phase 3: acc = P V.
    float acc[kMaxGroup][C];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
        for (int i = 0; i < C; ++i) acc[g][i] = 0.f;
    // Unrolled so that several rows of V are loading at once (one at a time, the loop waited on
    // memory latency).
#pragma unroll 4
    for (int j = warp; j < nk; j += kWarps) {
        float vr[C];
        load_cols<C>(V + size_t(j) * D + lane * C, vr);
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g) {
            if (g < G) {
                const float p = scores[g * kSplit + j];
#pragma unroll
                for (int i = 0; i < C; ++i) acc[g][i] += p * vr[i];
            }
        }
    }
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
        for (int i = 0; i < C; ++i) sums[(warp * kMaxGroup + g) * D + lane * C + i] = acc[g][i];
    __syncthreads();
    for (int e = tid; e < G * D; e += kThreads) {
        const int g = e / D, d = e % D;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) s += sums[(w * kMaxGroup + g) * D + d];
        partial_acc[((size_t(b) * q_heads + h0 + g) * max_splits + split) * D + d] = s;
    }
}

// One CTA of D threads per (sequence, query head): blockIdx.x = b * q_heads + h.
template <typename T>
__device__ __forceinline__ void decode_attn_combine(const float* __restrict__ partial_acc,
                                                    const float* __restrict__ partial_ml,
                                                    const int* __restrict__ index,
                                                    T* __restrict__ out, int batch, int q_heads,
                                                    int head_dim, int max_splits) {
    const int row = blockIdx.x, b = row / q_heads, d = threadIdx.x;
    if (b >= batch || d >= head_dim) return;
    const int splits = (index[batch + b] + kSplit - 1) / kSplit;
    const float* ml = partial_ml + size_t(row) * max_splits * 2;
    const float* acc = partial_acc + size_t(row) * max_splits * head_dim + d;
    float m = -INFINITY;
    for (int i = 0; i < splits; ++i) m = fmaxf(m, ml[2 * i]);
    float l = 0.f, o = 0.f;
    for (int i = 0; i < splits; ++i) {
        const float w = expf(ml[2 * i] - m);
        l += w * ml[2 * i + 1];
        o += w * acc[size_t(i) * head_dim];
    }
    out[size_t(row) * head_dim + d] = from_f32<T>(o / l);
}

// k_new, v_new [n, kv_heads, D] -> k_cache, v_cache [S, kv_heads, cap, D] at (slot, position) =
// (rows[i], rows[n + i]) for row i; one thread per element.
template <typename T>
__device__ __forceinline__ void kv_cache_write(T* __restrict__ k_cache, T* __restrict__ v_cache,
                                               const T* __restrict__ k_new,
                                               const T* __restrict__ v_new,
                                               const int* __restrict__ rows, int n, int kv_heads,
                                               int head_dim, int cap) {
    const long long total = (long long)n * kv_heads * head_dim;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int d = int(e % head_dim);
        const long long t = e / head_dim;
        const int h = int(t % kv_heads), i = int(t / kv_heads);
        const size_t dst = ((size_t(rows[i]) * kv_heads + h) * cap + rows[n + i]) * head_dim + d;
        k_cache[dst] = k_new[e];
        v_cache[dst] = v_new[e];
    }
}

}  // namespace limo_decode

// ---------------------------------------------------------------------------------------------
// Entry points (C names, loaded by name from the PTX).

// At most 128 registers a thread (4 CTAs of 128 threads per SM): under __launch_bounds__ alone,
// ptxas held the bf16 kernels to 96 and spilled once phase 1 was unrolled.
#define LIMO_DECODE_SPLIT(T, TN, D)                                                             \
    extern "C" __global__ void __maxnreg__(128)                                                 \
        decode_attn_split_##TN##_hd##D(const T* q, const T* k_cache, const T* v_cache,          \
                                       const int* index, float* partial_acc,                    \
                                       float* partial_ml, int batch, int q_heads, int kv_heads, \
                                       int cap, int max_splits, float scale) {                  \
        limo_decode::decode_attn_split<T, D>(q, k_cache, v_cache, index, partial_acc,           \
                                             partial_ml, batch, q_heads, kv_heads, cap,         \
                                             max_splits, scale);                                \
    }

#define LIMO_DECODE_TYPE(T, TN)                                                                 \
    extern "C" __global__ void decode_attn_combine_##TN(                                        \
        const float* partial_acc, const float* partial_ml, const int* index, T* out, int batch, \
        int q_heads, int head_dim, int max_splits) {                                            \
        limo_decode::decode_attn_combine<T>(partial_acc, partial_ml, index, out, batch,         \
                                            q_heads, head_dim, max_splits);                     \
    }                                                                                           \
    extern "C" __global__ void kv_cache_write_##TN(T* k_cache, T* v_cache, const T* k_new,      \
                                                   const T* v_new, const int* rows, int n,      \
                                                   int kv_heads, int head_dim, int cap) {       \
        limo_decode::kv_cache_write<T>(k_cache, v_cache, k_new, v_new, rows, n, kv_heads,       \
                                       head_dim, cap);                                          \
    }

LIMO_DECODE_SPLIT(__nv_bfloat16, bf16, 64)
LIMO_DECODE_SPLIT(__nv_bfloat16, bf16, 128)
LIMO_DECODE_SPLIT(float, f32, 64)
LIMO_DECODE_SPLIT(float, f32, 128)
LIMO_DECODE_TYPE(__nv_bfloat16, bf16)
LIMO_DECODE_TYPE(float, f32)

// Resource usage, ptxas -v (CUDA 13.0, sm_90; no spills): decode_attn_split 96 (bf16) / 99-101
// (f32) registers at 128 threads, dynamic shared memory 16,384 (hd64) / 24,576 (hd128) bytes;
// decode_attn_combine 32 registers; kv_cache_write 34-36 registers.
//
// Not yet done for speed: the split kernel reads K and V straight from global memory (no
// cp.async staging), and a sequence shorter than one split still goes through the combine.

#ifdef LIMO_DECODE_EMULATE
#include "decode_attention_emulate_test.cuh"
#endif
