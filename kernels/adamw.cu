// Fused AdamW over flat fp32 shards (CPU implementation: crates/limo-ops/src/adamw.rs). One pass
// reads the gradient and updates weight, first and second moment in place, with the clipping
// scale folded in, and writes the bf16 copy of the weight the forward uses.
//
// The arithmetic is torch.optim.AdamW's, in the reference's exact operation order, and uses the
// _rn intrinsics so nvcc cannot contract a*b+c into an FMA: the result is bit-identical to the
// CPU f32 implementation (the doctor checks this with tolerance 0). The constants are computed
// on the host in f64 and rounded to f32, as the reference does.
//
// Clipping: with `norm_sq` (the global squared gradient norm, one f64 on the device) the kernel
// computes the clipping coefficient itself, in f64 exactly as the host does (clip_coefficient in
// crates/limo-ops/src/adamw.rs), so the host never waits for the norm before the update. A norm
// that is not finite skips the update: the host reads the norm after the step and stops.
#include "common.cuh"

extern "C" __global__ void adamw_f32(float* param, const float* grad, float* exp_avg,
                                     float* exp_avg_sq, __nv_bfloat16* param_bf16, size_t n,
                                     float beta1, float beta2, float one_minus_beta1,
                                     float one_minus_beta2, float decay, float step_size,
                                     float bias2_sqrt, float eps, float grad_scale,
                                     int apply_scale, int apply_decay, const double* norm_sq,
                                     double max_norm) {
  if (norm_sq != nullptr) {
    const double norm = __dsqrt_rn(*norm_sq);
    if (!isfinite(norm)) return;
    const double coef = max_norm <= 0.0 ? 1.0 : fmin(__ddiv_rn(max_norm, __dadd_rn(norm, 1e-6)), 1.0);
    grad_scale = __double2float_rn(coef);
    apply_scale = coef != 1.0;
  }
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const float g = apply_scale ? __fmul_rn(grad[i], grad_scale) : grad[i];
    const float p = apply_decay ? __fmul_rn(param[i], decay) : param[i];
    const float m = __fadd_rn(__fmul_rn(beta1, exp_avg[i]), __fmul_rn(one_minus_beta1, g));
    const float v =
        __fadd_rn(__fmul_rn(beta2, exp_avg_sq[i]), __fmul_rn(one_minus_beta2, __fmul_rn(g, g)));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bias2_sqrt), eps);
    const float updated = __fsub_rn(p, __fmul_rn(step_size, __fdiv_rn(m, denom)));
    param[i] = updated;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16_rn(updated);
  }
}
