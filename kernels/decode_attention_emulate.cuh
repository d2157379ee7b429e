// CPU emulation for decode_attention.cu: the CUDA built-ins come from flash_attention_emulate.cuh
// (included read-only: one std::thread per CUDA thread, blocks one at a time); this header adds
// only what decode_attention.cu needs beyond them, under names of its own so that it cannot clash
// with later additions there. Never part of the PTX build (included under LIMO_DECODE_EMULATE).
#pragma once

#include "flash_attention_emulate.cuh"

namespace limo_decode {
// The `extern __shared__` buffer of the decode kernels (blocks run one at a time).
alignas(16) inline unsigned char smem_raw[64 * 1024];
}  // namespace limo_decode

// A bf16 bit pattern as f32 (the device code uses __uint_as_float).
inline float emu_decode_bf16_bits(uint16_t bits) {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
