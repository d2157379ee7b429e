// The gradient of the token-embedding table, deterministic and without atomics.
// CPU implementation: crates/limo-ops/src/embedding.rs (a zero table, index_add of the token rows
// in position order, then + base). For every vocabulary row r, in f32:
//   out[r, :] = base[r, :] + (0 + dx[p1, :] + dx[p2, :] + ...)   (out = the sum alone: no base)
// over the positions p1 < p2 < ... whose token is r, added in that order: the CPU's operations,
// so the result is the same to the bit. The host sorts the positions by token (a counting sort):
// row_start [vocab + 1] and positions [tokens] (CSR), so a thread reads exactly its row's tokens.
//
// One thread per V consecutive columns of one row (V = 4: one 16-byte load of base, one store;
// V = 1 when the hidden size or an offset does not allow it), grid-stride. Why not a block per
// row (session 7's design): its threads walked their columns one at a time, each access after the
// last (out may alias the inputs without __restrict__), and a frequent token's row ran on one SM:
// 16.6 ms on an H200 for 16k tokens into Qwen2.5-32B's table, no faster than candle's index_add.
// Here every column group of a frequent row is its own thread, and each thread issues the loads
// of 8 tokens before adding them in order, so the table streams at the copy rate (the floor is
// 2 x 3.1 GB of base read + table written: ~1.5 ms at 4.25 TB/s).
#include "common.cuh"

using limo::to_f32;

// V consecutive elements as one aligned access (8 or 16 bytes for V = 4).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ void load_f32(const T* __restrict__ p, float (&x)[V]) {
  const Vec<T, V> a = *reinterpret_cast<const Vec<T, V>*>(p);
#pragma unroll
  for (int j = 0; j < V; ++j) x[j] = to_f32(a.v[j]);
}

// Tokens whose loads one thread has in flight before it adds them.
constexpr int BATCH = 8;

template <typename T, int V>
__device__ void embedding_bwd(const T* __restrict__ dx, const uint32_t* __restrict__ row_start,
                              const uint32_t* __restrict__ positions,
                              const float* __restrict__ base, float* __restrict__ out, int vocab,
                              int hidden) {
  const size_t groups = hidden / V, total = (size_t)vocab * groups;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const size_t r = i / groups, c = (i - r * groups) * V;
    const uint32_t first = row_start[r], last = row_start[r + 1];
    float acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0.0f;
    uint32_t k = first;
    for (; k + BATCH <= last; k += BATCH) {
      float x[BATCH][V];
#pragma unroll
      for (int b = 0; b < BATCH; ++b)
        load_f32<T, V>(dx + (size_t)positions[k + b] * hidden + c, x[b]);
#pragma unroll
      for (int b = 0; b < BATCH; ++b)
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] = __fadd_rn(acc[j], x[b][j]);
    }
    for (; k < last; ++k) {
      float x[V];
      load_f32<T, V>(dx + (size_t)positions[k] * hidden + c, x);
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] = __fadd_rn(acc[j], x[j]);
    }
    const size_t at = r * hidden + c;
    Vec<float, V> o;
    if (base != nullptr) {
      float b[V];
      load_f32<float, V>(base + at, b);
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = __fadd_rn(acc[j], b[j]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = acc[j];
    }
    *reinterpret_cast<Vec<float, V>*>(out + at) = o;
  }
}

#define LIMO_EMBEDDING(T, S, V, NAME)                                                           \
  extern "C" __global__ void NAME##_##S(const T* dx, const uint32_t* row_start,                 \
                                        const uint32_t* positions, const float* base,           \
                                        float* out, int vocab, int hidden) {                    \
    embedding_bwd<T, V>(dx, row_start, positions, base, out, vocab, hidden);                    \
  }

LIMO_EMBEDDING(__nv_bfloat16, bf16, 1, embedding_bwd)
LIMO_EMBEDDING(float, f32, 1, embedding_bwd)
LIMO_EMBEDDING(__nv_bfloat16, bf16, 4, embedding_bwd4)
LIMO_EMBEDDING(float, f32, 4, embedding_bwd4)
