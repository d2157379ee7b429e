// Rotary position embedding, "rotate half" layout (Hugging Face Qwen2), forward and backward.
// CPU reference: crates/limo-ops/src/rope.rs. x: [tokens, heads, head_dim]; cos, sin:
// [tokens, head_dim] (one row per token, both halves of a row equal). One thread per element.
#include "common.cuh"

using limo::from_f32;
using limo::to_f32;

// Forward (Backward = false): y = x * cos + rotate_half(x) * sin,
// rotate_half([x1, x2]) = [-x2, x1].
// Backward, its transpose: dx = dy * cos + rotate_half^T(dy * sin),
// rotate_half^T([z1, z2]) = [z2, -z1]; here x is dy and y is dx.
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
    float rotated;
    if (Backward) {
      rotated = i < half ? to_f32(x[e + half]) * to_f32(sin[tab + half])
                         : -to_f32(x[e - half]) * to_f32(sin[tab - half]);
    } else {
      rotated = (i < half ? -to_f32(x[e + half]) : to_f32(x[e - half])) * to_f32(sin[tab]);
    }
    y[e] = from_f32<T>(to_f32(x[e]) * to_f32(cos[tab]) + rotated);
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
