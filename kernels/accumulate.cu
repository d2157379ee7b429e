// acc += x in place, in f32 (x bf16 or f32): how the chunked linear + cross-entropy
// (crates/limo-ops/src/linear_cross_entropy.rs) sums the head's weight gradient over its loss
// chunks, and ZeRO-3 adds each reduce-scattered slice to its gradient accumulator, on the GPU.
// candle's `acc + x` would allocate a new table each time and read x through a cast copy; this
// reads x once and rewrites acc where it is.
// dst = x as f32: a layer's gradients written straight into their slots of the f32 buffer the
// reduce-scatter sends (crates/limo-ops/src/flat.rs); candle's to_dtype then slice_set writes
// each piece twice.
#include "common.cuh"

using limo::to_f32;

template <typename T>
__device__ void add_into(float* acc, const T* x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    acc[i] = __fadd_rn(acc[i], to_f32(x[i]));
}

#define LIMO_ADD_INTO(T, S)                                                                     \
  extern "C" __global__ void add_into_f32_##S(float* acc, const T* x, size_t n) {              \
    add_into<T>(acc, x, n);                                                                     \
  }

LIMO_ADD_INTO(__nv_bfloat16, bf16)
LIMO_ADD_INTO(float, f32)

template <typename T>
__device__ void cast_into(float* dst, const T* x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = to_f32(x[i]);
}

#define LIMO_CAST_INTO(T, S)                                                                    \
  extern "C" __global__ void cast_into_f32_##S(float* dst, const T* x, size_t n) {             \
    cast_into<T>(dst, x, n);                                                                    \
  }

LIMO_CAST_INTO(__nv_bfloat16, bf16)
LIMO_CAST_INTO(float, f32)
