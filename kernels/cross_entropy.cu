// Softmax cross-entropy of one chunk of logits, the loss half of the chunked linear +
// cross-entropy (crates/limo-ops/src/linear_cross_entropy.rs; the matmuls stay cuBLAS).
// One block per row: an online max/sum pass, then (when asked) one pass writing
//   d_logits = scale * softmax(x) - scale * one_hot(target)   (zero rows for ignored tokens).
// d_logits may alias logits (the chunk's logits are overwritten by their gradient, which saves
// a [chunk, vocab] buffer): each element is read before the same thread writes it, and the
// first pass over the row ends at a barrier before the second starts.
#include "common.cuh"

using limo::from_f32;
using limo::to_f32;

#define LIMO_IGNORE_INDEX (-100LL)

template <typename T>
__device__ void softmax_xent(const T* logits, const long long* targets, float* loss, T* d_logits,
                             int rows, int vocab, float scale, int want_grad) {
  __shared__ float scratch_m[32], scratch_s[32];
  __shared__ float shared_target_logit;
  const int row = blockIdx.x;
  if (row >= rows) return;
  const long long target = targets[row];
  const T* x = logits + (size_t)row * vocab;
  T* d = d_logits + (size_t)row * vocab;
  if (target == LIMO_IGNORE_INDEX) {
    if (threadIdx.x == 0) loss[row] = 0.0f;
    if (want_grad)
      for (int j = threadIdx.x; j < vocab; j += blockDim.x) d[j] = from_f32<T>(0.0f);
    return;
  }
  float m = -INFINITY, s = 0.0f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = to_f32(x[j]);
    if (v > m) {
      s = s * expf(m - v) + 1.0f;
      m = v;
    } else if (v != -INFINITY) {  // -inf logits add nothing (and -inf - -inf is NaN)
      s += expf(v - m);
    }
  }
  limo::block_max_sum(m, s, scratch_m, scratch_s);
  const float lse = m + logf(s);
  // Read the target's logit before any thread may overwrite it with its gradient.
  if (threadIdx.x == 0) shared_target_logit = to_f32(x[target]);
  __syncthreads();
  if (threadIdx.x == 0) loss[row] = lse - shared_target_logit;
  if (!want_grad) return;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float p = expf(to_f32(x[j]) - lse);
    d[j] = from_f32<T>(j == target ? scale * p - scale : scale * p);
  }
}

#define LIMO_XENT(T, S)                                                                        \
  extern "C" __global__ void softmax_xent_##S(const T* logits, const long long* targets,      \
                                              float* loss, T* d_logits, int rows, int vocab,  \
                                              float scale, int want_grad) {                    \
    softmax_xent<T>(logits, targets, loss, d_logits, rows, vocab, scale, want_grad);           \
  }

LIMO_XENT(__nv_bfloat16, bf16)
LIMO_XENT(float, f32)
