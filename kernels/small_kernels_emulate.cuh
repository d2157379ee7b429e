// CPU emulation for the small kernels (rms_norm.cu, cross_entropy.cu, rope.cu, swiglu.cu,
// adamw.cu): the CUDA built-ins come from flash_attention_emulate.cuh (one std::thread per CUDA
// thread, blocks one at a time, shuffles through per-warp arrays); this header adds what those
// kernels use beyond them. common.cuh includes it instead of <cuda_bf16.h> under
// LIMO_SMALL_EMULATE; never part of the PTX build.
#pragma once

#include "flash_attention_emulate.cuh"

#include <cmath>

// The kernels declare their block-shared scratch inside device functions (`__shared__ float
// scratch[32]`). A function-local static is one object for all threads of the process, which is
// the block's shared memory when blocks run one at a time (the flash emulation defines
// __shared__ as nothing: its kernels only use the dynamic buffer).
#undef __shared__
#define __shared__ static

inline float __bfloat162float(__nv_bfloat16 x) { return float(x); }

// The _rn intrinsics are IEEE operations rounded to nearest; x86-64 (SSE) does exactly that when
// nothing is contracted into an FMA (the test builds with -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __double2float_rn(double a) { return float(a); }
using std::isfinite;
