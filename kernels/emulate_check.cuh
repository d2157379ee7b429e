// Helpers shared by the CPU emulation tests of the kernels (flash sm80, flash sm90, decode):
// the float64 comparison, the conversion of inputs to the kernel dtype, and the host-side tile
// table that the Rust wrappers build (crates/limo-ops/src/cuda/flash_attention.rs).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

// Tiles of `size` rows that never cross a document: (tile start, document start, document end)
// per tile, longest work first, stable (queries: farthest from the document start; keys: most
// keys after the tile).
inline std::vector<int> tiles(const std::vector<int>& cu, bool by_keys, int size) {
    std::vector<std::array<int, 3>> t;
    for (size_t i = 0; i + 1 < cu.size(); ++i)
        for (int s = cu[i]; s < cu[i + 1]; s += size) t.push_back({s, cu[i], cu[i + 1]});
    std::stable_sort(t.begin(), t.end(), [&](auto& a, auto& b) {
        return by_keys ? (a[2] - a[0]) > (b[2] - b[0]) : (a[0] - a[1]) > (b[0] - b[1]);
    });
    std::vector<int> flat;
    for (auto& x : t) flat.insert(flat.end(), x.begin(), x.end());
    return flat;
}

// ||got - want|| / ||want|| in float64; infinite when `got` holds a NaN or an infinity, so such
// an output fails every bound.
inline double rel_l2(const std::vector<float>& got, const std::vector<double>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double diff = double(got[i]) - want[i];
        num += diff * diff;
        den += want[i] * want[i];
    }
    return std::isfinite(num) ? std::sqrt(num / std::max(den, 1e-30)) : INFINITY;
}

// The inputs in the kernel's dtype (bf16 rounded to nearest even, as the device converts).
template <typename T>
std::vector<T> to_t(const std::vector<float>& x) {
    std::vector<T> r(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        if constexpr (std::is_same_v<T, float>) r[i] = x[i];
        else r[i] = __float2bfloat16_rn(x[i]);
    }
    return r;
}

// Byte offset of element (row, col) of a [rows][64] bf16 block with the 128-byte swizzle, as
// TMA's documentation describes it (block 1024-byte aligned): the Hopper tests' layouts.
inline uint32_t emu_swz128(int row, int col) {
    return uint32_t(row * 128 + (((col / 8) ^ (row % 8)) * 16) + (col % 8) * 2);
}

// The bits of `x` rounded to bf16.
inline uint16_t emu_bf16_bits(float x) { return __float2bfloat16_rn(x).bits; }

// `n` normal values of standard deviation `scale`, each rounded to bf16, so the kernel's bf16
// inputs and the float64 reference see the same numbers.
inline std::vector<float> emu_rnd_bf16(size_t n, std::mt19937& gen, float scale) {
    std::normal_distribution<float> dist(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = float(__float2bfloat16_rn(dist(gen)));
    return v;
}
