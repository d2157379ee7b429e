// RMSNorm forward (alone, or after a residual add) and backward (Qwen2):
// y = w * round_T(x * rstd), rstd = 1/sqrt(mean(x^2)+eps).
// CPU reference: crates/limo-ops/src/rms_norm.rs. One block per row; statistics in f32.
#include "common.cuh"

using limo::from_f32;
using limo::to_f32;

// x, y: [rows, hidden] (T); w: [hidden] (T); rstd: [rows] f32. With Residual, the row
// normalized is the residual sum s = round_T(x + res), written to sum (a decoder layer's
// x1 = x + attention, then its norm, in one pass): an f32 sum of two bf16 values rounded once is
// the correctly rounded bf16 sum, candle's add, so sum and y are the bits of candle's add then
// rms_norm_fwd. The sum of squares is spelled as FMAs for the same bits in both instantiations.
template <typename T, bool Residual>
__device__ void rms_norm_fwd(const T* x, const T* res, const T* w, T* sum, T* y, float* rstd,
                             int rows, int hidden, float eps) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const size_t at = (size_t)row * hidden;
  // The second pass reads the normalized input: x itself, or the sum this thread wrote.
  const T* in = Residual ? sum + at : x + at;
  T* yr = y + at;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
    float v = to_f32(x[at + j]);
    if (Residual) {
      const T s = from_f32<T>(v + to_f32(res[at + j]));
      sum[at + j] = s;
      v = to_f32(s);
    }
    ss = __fmaf_rn(v, v, ss);
  }
  ss = limo::block_sum(ss, scratch);
  // sqrt then reciprocal, as the reference does (rsqrtf is approximate).
  const float r = 1.0f / sqrtf(ss / (float)hidden + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
    // transformers rounds the normalized value to the input dtype before the weight multiply.
    const float n = to_f32(from_f32<T>(to_f32(in[j]) * r));
    yr[j] = from_f32<T>(n * to_f32(w[j]));
  }
}

// dx = rstd * (dy*w - n * mean(dy*w*n)) with n = x * rstd (unrounded, f32). Block b also adds
// dy*n of its rows (rows b, b + gridDim.x, ...) to dw_partial[b, :], which it alone owns; a
// second kernel sums the partials in a fixed order, so dw is deterministic.
template <typename T>
__device__ void rms_norm_bwd(const T* dy, const T* x, const T* w, const float* rstd, T* dx,
                             float* dw_partial, int rows, int hidden) {
  __shared__ float scratch[32];
  float* part = dw_partial + (size_t)blockIdx.x * hidden;
  for (int j = threadIdx.x; j < hidden; j += blockDim.x) part[j] = 0.0f;
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + (size_t)row * hidden;
    const T* dyr = dy + (size_t)row * hidden;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
      const float n = to_f32(xr[j]) * r;
      const float g = to_f32(dyr[j]);
      dot += g * to_f32(w[j]) * n;
      part[j] += g * n;
    }
    const float proj = limo::block_sum(dot, scratch) / (float)hidden;
    T* dxr = dx + (size_t)row * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
      const float n = to_f32(xr[j]) * r;
      dxr[j] = from_f32<T>((to_f32(dyr[j]) * to_f32(w[j]) - n * proj) * r);
    }
  }
}

// dw[j] = sum over partial rows p of dw_partial[p, j], in order of p. Written in fp32 whatever
// the input dtype: the gradient of a norm weight sums over every token of the batch, and the
// optimizer accumulates it in fp32; rounding it to bf16 here would keep 8 bits of that sum.
extern "C" __global__ void rms_norm_dw_reduce(const float* dw_partial, float* dw, int parts,
                                              int hidden) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= hidden) return;
  float acc = 0.0f;
  for (int p = 0; p < parts; ++p) acc += dw_partial[(size_t)p * hidden + j];
  dw[j] = acc;
}

#define LIMO_RMS_NORM(T, S)                                                                     \
  extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, float* rstd,       \
                                              int rows, int hidden, float eps) {               \
    rms_norm_fwd<T, false>(x, nullptr, w, nullptr, y, rstd, rows, hidden, eps);                 \
  }                                                                                             \
  extern "C" __global__ void add_rms_norm_fwd_##S(const T* x, const T* res, const T* w,        \
                                                  T* sum, T* y, float* rstd, int rows,         \
                                                  int hidden, float eps) {                     \
    rms_norm_fwd<T, true>(x, res, w, sum, y, rstd, rows, hidden, eps);                          \
  }                                                                                             \
  extern "C" __global__ void rms_norm_bwd_##S(const T* dy, const T* x, const T* w,             \
                                              const float* rstd, T* dx, float* dw_partial,      \
                                              int rows, int hidden) {                           \
    rms_norm_bwd<T>(dy, x, w, rstd, dx, dw_partial, rows, hidden);                              \
  }

LIMO_RMS_NORM(__nv_bfloat16, bf16)
LIMO_RMS_NORM(float, f32)
