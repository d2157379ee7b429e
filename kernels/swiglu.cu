// SwiGLU of Qwen2's MLP, forward and backward, elementwise in f32.
// CPU reference: crates/limo-ops/src/swiglu.rs. h = silu(g) * u, silu(g) = g * sigmoid(g).
#include "common.cuh"

using limo::from_f32;
using limo::to_f32;

// 1 / (1 + exp(-g)), the reference's formulation (large negative g gives 0, not NaN).
__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (expf(-g) + 1.0f); }

template <typename T>
__device__ void swiglu_fwd(const T* gate, const T* up, T* h, size_t n) {
  for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
       e += (size_t)gridDim.x * blockDim.x) {
    const float g = to_f32(gate[e]);
    h[e] = from_f32<T>(g * sigmoid(g) * to_f32(up[e]));
  }
}

// dg = dh * u * s * (1 + g * (1 - s)), du = dh * silu(g), s = sigmoid(g).
template <typename T>
__device__ void swiglu_bwd(const T* dh, const T* gate, const T* up, T* dg, T* du, size_t n) {
  for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
       e += (size_t)gridDim.x * blockDim.x) {
    const float g = to_f32(gate[e]);
    const float u = to_f32(up[e]);
    const float d = to_f32(dh[e]);
    const float s = sigmoid(g);
    dg[e] = from_f32<T>(d * u * (s * (g * (1.0f - s) + 1.0f)));
    du[e] = from_f32<T>(d * (g * s));
  }
}

#define LIMO_SWIGLU(T, S)                                                                       \
  extern "C" __global__ void swiglu_fwd_##S(const T* gate, const T* up, T* h, size_t n) {      \
    swiglu_fwd<T>(gate, up, h, n);                                                              \
  }                                                                                             \
  extern "C" __global__ void swiglu_bwd_##S(const T* dh, const T* gate, const T* up, T* dg,    \
                                            T* du, size_t n) {                                  \
    swiglu_bwd<T>(dh, gate, up, dg, du, n);                                                     \
  }

LIMO_SWIGLU(__nv_bfloat16, bf16)
LIMO_SWIGLU(float, f32)
