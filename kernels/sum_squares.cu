// The squared L2 norm of a flat buffer (bf16 or f32) in f64, for gradient clipping: the CUDA
// form of sum_of_squares_tensor (crates/limo-ops/src/adamw.rs). candle's sum_all reduces with a
// single block, one SM reading a 1.5B-element gradient; here a fixed grid of blocks sums
// grid-strided elements into one f64 partial each, then one block adds the partials.
// Deterministic: the grid is a constant (not the GPU's size) and both reductions go in a fixed
// tree order, so a run gives the same bits every time (not the CPU's: another order).
#include "common.cuh"

using limo::to_f32;

// Threads per block of both kernels (the tree reductions assume this power of two).
#define LIMO_SUM_SQ_THREADS 256

// partial[b] = sum over i = b * 256 + t + k * gridDim.x * 256 of x[i]^2, in f64.
template <typename T>
__device__ void sum_squares_partial(const T* x, size_t n, double* partial) {
  __shared__ double tree[LIMO_SUM_SQ_THREADS];
  double acc = 0.0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const double v = to_f32(x[i]);
    acc += v * v;  // exact square of an f32 in f64; the sum rounds
  }
  tree[threadIdx.x] = acc;
  __syncthreads();
  for (int s = LIMO_SUM_SQ_THREADS / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) tree[threadIdx.x] += tree[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = tree[0];
}

// out[0] = the sum of partial[0..parts), one block, the same tree.
extern "C" __global__ void sum_squares_reduce(const double* partial, int parts, double* out) {
  __shared__ double tree[LIMO_SUM_SQ_THREADS];
  double acc = 0.0;
  for (int i = threadIdx.x; i < parts; i += LIMO_SUM_SQ_THREADS) acc += partial[i];
  tree[threadIdx.x] = acc;
  __syncthreads();
  for (int s = LIMO_SUM_SQ_THREADS / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) tree[threadIdx.x] += tree[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = tree[0];
}

#define LIMO_SUM_SQ(T, S)                                                                       \
  extern "C" __global__ void __launch_bounds__(LIMO_SUM_SQ_THREADS)                             \
      sum_squares_partial_##S(const T* x, size_t n, double* partial) {                          \
    sum_squares_partial<T>(x, n, partial);                                                      \
  }

LIMO_SUM_SQ(__nv_bfloat16, bf16)
LIMO_SUM_SQ(float, f32)
