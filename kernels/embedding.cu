// The gradient of the token-embedding table, deterministic and without atomics.
// CPU implementation: crates/limo-ops/src/embedding.rs (a zero table, index_add of the token rows
// in position order, then + base). For every vocabulary row r, in f32:
//   out[r, :] = base[r, :] + (0 + dx[p1, :] + dx[p2, :] + ...)   (out = the sum alone: no base)
// over the positions p1 < p2 < ... whose token is r, added in that order: the CPU's operations,
// so the result is the same to the bit. The host sorts the positions by token (a counting sort):
// row_start [vocab + 1] and positions [tokens] (CSR), so block r reads exactly its own rows.
// One block per vocabulary row (grid-stride), threads over the hidden columns: rows of no token
// cost a read of base and a write: the whole table's bandwidth once (by estimate ~0.45 ms for
// Qwen2.5-1.5B's 0.93 GB f32 table on an H200). candle's index_add, which this replaces on the
// GPU, gives each column one thread that walks all tokens in sequence: 16k dependent
// read-modify-writes per thread at 16k tokens, on only `hidden` threads.
#include "common.cuh"

using limo::to_f32;

template <typename T>
__device__ void embedding_bwd(const T* dx, const uint32_t* row_start, const uint32_t* positions,
                              const float* base, float* out, int vocab, int hidden) {
  for (int r = blockIdx.x; r < vocab; r += gridDim.x) {
    const uint32_t first = row_start[r], last = row_start[r + 1];
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
      float acc = 0.0f;
      // Unrolled so that a frequent token's loads are in flight together (the adds stay in order).
#pragma unroll 8
      for (uint32_t k = first; k < last; ++k)
        acc = __fadd_rn(acc, to_f32(dx[(size_t)positions[k] * hidden + c]));
      const size_t at = (size_t)r * hidden + c;
      out[at] = base != nullptr ? __fadd_rn(acc, base[at]) : acc;
    }
  }
}

#define LIMO_EMBEDDING(T, S)                                                                    \
  extern "C" __global__ void embedding_bwd_##S(const T* dx, const uint32_t* row_start,         \
                                               const uint32_t* positions, const float* base,   \
                                               float* out, int vocab, int hidden) {            \
    embedding_bwd<T>(dx, row_start, positions, base, out, vocab, hidden);                       \
  }

LIMO_EMBEDDING(__nv_bfloat16, bf16)
LIMO_EMBEDDING(float, f32)
