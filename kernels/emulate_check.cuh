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

// The float64 attention every flash emulation test compares against: per document (`cu`),
// causal, query head h reading kv head h / (hq / hkv). P = softmax(scale q k^T), O = P V,
// lse = log-sum-exp of the scaled scores; with `dout` (empty: forward only) also delta =
// rowsum(dO * O), dS = P (dO V^T - delta), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO.
struct EmuAttention {
    std::vector<double> out, lse, delta, dq, dk, dv;
};

inline EmuAttention emu_attention_reference(const std::vector<int>& cu, int hq, int hkv, int d,
                                            const std::vector<float>& q,
                                            const std::vector<float>& k,
                                            const std::vector<float>& v,
                                            const std::vector<float>& dout, double scale) {
    const int n = cu.back(), group = hq / hkv;
    const bool backward = !dout.empty();
    EmuAttention r;
    r.out.assign(size_t(n) * hq * d, 0);
    r.lse.assign(size_t(hq) * n, 0);
    r.delta.assign(size_t(hq) * n, 0);
    r.dq.assign(backward ? size_t(n) * hq * d : 0, 0);
    r.dk.assign(backward ? size_t(n) * hkv * d : 0, 0);
    r.dv.assign(backward ? size_t(n) * hkv * d : 0, 0);
    auto Q = [&](int i, int h, int x) { return double(q[(size_t(i) * hq + h) * d + x]); };
    auto K = [&](int j, int h, int x) { return double(k[(size_t(j) * hkv + h) * d + x]); };
    auto V = [&](int j, int h, int x) { return double(v[(size_t(j) * hkv + h) * d + x]); };
    auto DO = [&](int i, int h, int x) { return double(dout[(size_t(i) * hq + h) * d + x]); };
    for (size_t doc = 0; doc + 1 < cu.size(); ++doc) {
        const int s = cu[doc], e = cu[doc + 1];
        for (int h = 0; h < hq; ++h) {
            const int kh = h / group;
            for (int i = s; i < e; ++i) {
                std::vector<double> p(i - s + 1);
                double mx = -INFINITY;
                for (int j = s; j <= i; ++j) {
                    double dot = 0;
                    for (int x = 0; x < d; ++x) dot += Q(i, h, x) * K(j, kh, x);
                    p[j - s] = dot * scale;
                    mx = std::max(mx, p[j - s]);
                }
                double sum = 0;
                for (auto& x : p) sum += std::exp(x - mx);
                const double lse = mx + std::log(sum);
                r.lse[size_t(h) * n + i] = lse;
                for (auto& x : p) x = std::exp(x - lse);
                std::vector<double> o(d, 0);
                for (int j = s; j <= i; ++j)
                    for (int x = 0; x < d; ++x) o[x] += p[j - s] * V(j, kh, x);
                for (int x = 0; x < d; ++x) r.out[(size_t(i) * hq + h) * d + x] = o[x];
                if (!backward) continue;
                double delta = 0;
                for (int x = 0; x < d; ++x) delta += DO(i, h, x) * o[x];
                r.delta[size_t(h) * n + i] = delta;
                for (int j = s; j <= i; ++j) {
                    double dp = 0;
                    for (int x = 0; x < d; ++x) dp += DO(i, h, x) * V(j, kh, x);
                    const double ds = p[j - s] * (dp - delta);
                    for (int x = 0; x < d; ++x) {
                        r.dv[(size_t(j) * hkv + kh) * d + x] += p[j - s] * DO(i, h, x);
                        r.dq[(size_t(i) * hq + h) * d + x] += scale * ds * K(j, kh, x);
                        r.dk[(size_t(j) * hkv + kh) * d + x] += scale * ds * Q(i, h, x);
                    }
                }
            }
        }
    }
    return r;
}
