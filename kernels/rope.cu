// Rotary position embedding, "rotate half" layout (Hugging Face Qwen2), forward and backward,
// and generation's fused bias + RoPE + KV-cache append (qkv_rope_append, below).
// CPU reference: crates/limo-ops/src/rope.rs. x: [tokens, heads, head_dim]; cos, sin:
// [tokens, head_dim] (one row per token, both halves of a row equal). One thread per element.
#include "common.cuh"

using limo::from_f32;
using limo::to_f32;

// Forward (Backward = false): y = x * cos + rotate_half(x) * sin,
// rotate_half([x1, x2]) = [-x2, x1].
// Backward, its transpose: dx = dy * cos + rotate_half^T(dy * sin),
// rotate_half^T([z1, z2]) = [z2, -z1]; here x is dy and y is dx.
// The forward rotation of one element: x * cos + rotate_half(x) * sin, from the element x, its
// partner p (x[i + half] in the first half, x[i - half] in the second), cos[i] and sin[i]. The
// roundings are spelled out (a product, then one FMA) so that every kernel using it gets the
// same bits, whatever nvcc would contract.
__device__ __forceinline__ float rope_rotate(float x, float p, float c, float s, bool first_half) {
  return __fmaf_rn(x, c, __fmul_rn(first_half ? -p : p, s));
}

template <bool Backward, typename T, typename C>
__device__ void rope(const T* x, const C* cos, const C* sin, T* y, int tokens, int heads,
                     int head_dim) {
  const size_t total = (size_t)tokens * heads * head_dim;
  const int half = head_dim / 2;
  for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    const int i = (int)(e % head_dim);
    const size_t t = e / ((size_t)heads * head_dim);
    const size_t tab = t * head_dim + i;
    if (Backward) {
      const float rotated = i < half ? to_f32(x[e + half]) * to_f32(sin[tab + half])
                                     : -to_f32(x[e - half]) * to_f32(sin[tab - half]);
      y[e] = from_f32<T>(to_f32(x[e]) * to_f32(cos[tab]) + rotated);
    } else {
      const float partner = to_f32(i < half ? x[e + half] : x[e - half]);
      y[e] = from_f32<T>(rope_rotate(to_f32(x[e]), partner, to_f32(cos[tab]), to_f32(sin[tab]),
                                     i < half));
    }
  }
}

// The new rows of a generation step, from their projections to the KV cache, in one launch
// (decode runs a few hundred small kernels per token; this one replaces six of them per layer):
//   q = rope(q_lin + bq)  -> q_out [n, q_heads, D]
//   k = rope(k_lin + bk), v = v_lin + bv -> k_cache, v_cache [S, kv_heads, cap, D] at slot
//   rows[i], position rows[n + i] (decode_attention.cu's kv_cache_write layout)
// for q_lin [n, q_heads * D], k_lin, v_lin [n, kv_heads * D], cos, sin [n, D]. The bias add
// rounds to T as candle's add does (an f32 sum of two bf16 values rounded once is the correctly
// rounded bf16 sum) and the rotation is rope_fwd's rope_rotate, so the outputs are bit for bit
// those of candle's bias adds, rope_fwd and kv_cache_write. One thread per element of the row.
template <typename T>
__device__ void qkv_rope_append(const T* q_lin, const T* k_lin, const T* v_lin, const T* bq,
                                const T* bk, const T* bv, const T* cos, const T* sin,
                                const int* rows, T* q_out, T* k_cache, T* v_cache, int n,
                                int q_heads, int kv_heads, int head_dim, int cap) {
  const int half = head_dim / 2;
  const int q_width = q_heads * head_dim, kv_width = kv_heads * head_dim;
  const int width = q_width + 2 * kv_width;
  const size_t total = (size_t)n * width;
  for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    const int i = (int)(e / width), c = (int)(e % width);
    const int part = c < q_width ? 0 : c < q_width + kv_width ? 1 : 2;  // q, k, v
    const int col = part == 0 ? c : part == 1 ? c - q_width : c - q_width - kv_width;
    const T* lin = part == 0 ? q_lin : part == 1 ? k_lin : v_lin;
    const T* bias = part == 0 ? bq : part == 1 ? bk : bv;
    const size_t row = (size_t)i * (part == 0 ? q_width : kv_width);
    const auto biased = [&](int j) {
      return to_f32(from_f32<T>(to_f32(lin[row + j]) + to_f32(bias[j])));
    };
    const int d = col % head_dim;
    float y = biased(col);
    if (part < 2) {
      const size_t tab = (size_t)i * head_dim + d;
      y = rope_rotate(y, biased(d < half ? col + half : col - half), to_f32(cos[tab]),
                      to_f32(sin[tab]), d < half);
    }
    if (part == 0) {
      q_out[row + col] = from_f32<T>(y);
    } else {
      const size_t dst =
          (((size_t)rows[i] * kv_heads + col / head_dim) * cap + rows[n + i]) * head_dim + d;
      (part == 1 ? k_cache : v_cache)[dst] = from_f32<T>(y);
    }
  }
}

// Names: rope_{fwd,bwd}_<x dtype>_<table dtype>.
#define LIMO_ROPE(T, C, S)                                                                      \
  extern "C" __global__ void rope_fwd_##S(const T* x, const C* cos, const C* sin, T* y,        \
                                          int tokens, int heads, int head_dim) {               \
    rope<false, T, C>(x, cos, sin, y, tokens, heads, head_dim);                                 \
  }                                                                                             \
  extern "C" __global__ void rope_bwd_##S(const T* dy, const C* cos, const C* sin, T* dx,      \
                                          int tokens, int heads, int head_dim) {               \
    rope<true, T, C>(dy, cos, sin, dx, tokens, heads, head_dim);                                \
  }

LIMO_ROPE(__nv_bfloat16, __nv_bfloat16, bf16_bf16)
LIMO_ROPE(float, float, f32_f32)

// Names: qkv_rope_append_<dtype>.
#define LIMO_QKV_ROPE_APPEND(T, S)                                                              \
  extern "C" __global__ void qkv_rope_append_##S(                                               \
      const T* q_lin, const T* k_lin, const T* v_lin, const T* bq, const T* bk, const T* bv,    \
      const T* cos, const T* sin, const int* rows, T* q_out, T* k_cache, T* v_cache, int n,     \
      int q_heads, int kv_heads, int head_dim, int cap) {                                       \
    qkv_rope_append<T>(q_lin, k_lin, v_lin, bq, bk, bv, cos, sin, rows, q_out, k_cache,         \
                       v_cache, n, q_heads, kv_heads, head_dim, cap);                           \
  }

LIMO_QKV_ROPE_APPEND(__nv_bfloat16, bf16)
LIMO_QKV_ROPE_APPEND(float, f32)
