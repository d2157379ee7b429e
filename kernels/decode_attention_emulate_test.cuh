// Checks of decode_attention.cu's kernels on the CPU emulation (decode_attention_emulate.cuh):
// kv_cache_write must place every row exactly, and split + combine must equal a float64
// reference of the contract (crates/limo-ops/src/decode_attention.rs) for lengths of one key,
// exactly one split, one key past a split and several splits with a partial last one, GQA
// groups of 1, 2, 6 and 10 (two chunks of query heads), head_dim 64 and 128, bf16 and f32.
// It also checks that a sequence's output is bit-identical alone and inside a batch.
// Run by scripts/test-decode-emulation.sh; exit 1 on any failed check.
#pragma once

#include "emulate_check.cuh"

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace decode_test {

using limo_decode::kSplit;
using limo_decode::kThreads;

struct Case {
    int hq, hkv, d, slots, cap;
    std::vector<int> seq_slots, lens;
};

// bf16-representable inputs: the bf16 and f32 entry points see exactly the reference's inputs.
std::vector<float> rnd(size_t n, std::mt19937& gen) {
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> v(n);
    for (auto& x : v) x = float(__float2bfloat16_rn(dist(gen)));
    return v;
}

template <typename T>
float as_f(T x) {
    return float(x);
}

std::vector<double> reference(const Case& c, const std::vector<float>& q,
                              const std::vector<float>& kc, const std::vector<float>& vc,
                              double scale) {
    const int b_n = int(c.lens.size()), group = c.hq / c.hkv, d = c.d;
    std::vector<double> out(size_t(b_n) * c.hq * d, 0);
    for (int b = 0; b < b_n; ++b) {
        for (int h = 0; h < c.hq; ++h) {
            const size_t base = (size_t(c.seq_slots[b]) * c.hkv + h / group) * c.cap * d;
            std::vector<double> s(c.lens[b]);
            double mx = -INFINITY;
            for (int j = 0; j < c.lens[b]; ++j) {
                double dot = 0;
                for (int x = 0; x < d; ++x)
                    dot += double(q[(size_t(b) * c.hq + h) * d + x]) * kc[base + size_t(j) * d + x];
                s[j] = dot * scale;
                mx = std::max(mx, s[j]);
            }
            double sum = 0;
            for (auto& x : s) sum += (x = std::exp(x - mx));
            for (int j = 0; j < c.lens[b]; ++j)
                for (int x = 0; x < d; ++x)
                    out[(size_t(b) * c.hq + h) * d + x] += s[j] / sum * vc[base + size_t(j) * d + x];
        }
    }
    return out;
}

// The wrapper's launches: split kernel over (splits, B * kv_heads * chunks), then the combine.
template <typename T>
std::vector<float> decode(const Case& c, const std::vector<T>& q, const std::vector<T>& kc,
                          const std::vector<T>& vc, const std::vector<int>& slots,
                          const std::vector<int>& lens, float scale) {
    const int b_n = int(lens.size()), group = c.hq / c.hkv;
    const int chunks = (group + limo_decode::kMaxGroup - 1) / limo_decode::kMaxGroup;
    const int max_splits = (*std::max_element(lens.begin(), lens.end()) + kSplit - 1) / kSplit;
    std::vector<int> index(slots);
    index.insert(index.end(), lens.begin(), lens.end());
    std::vector<float> acc(size_t(b_n) * c.hq * max_splits * c.d, NAN);
    std::vector<float> ml(size_t(b_n) * c.hq * max_splits * 2, NAN);
    std::vector<T> out(size_t(b_n) * c.hq * c.d);
    std::memset(limo_decode::smem_raw, 0xff, sizeof(limo_decode::smem_raw));  // poison
    emu_launch(unsigned(max_splits), unsigned(b_n * c.hkv * chunks), kThreads, [&] {
        if (c.d == 64)
            limo_decode::decode_attn_split<T, 64>(q.data(), kc.data(), vc.data(), index.data(), acc.data(),
                                        ml.data(), b_n, c.hq, c.hkv, c.cap, max_splits, scale);
        else
            limo_decode::decode_attn_split<T, 128>(q.data(), kc.data(), vc.data(), index.data(), acc.data(),
                                         ml.data(), b_n, c.hq, c.hkv, c.cap, max_splits, scale);
    });
    emu_launch(unsigned(b_n * c.hq), 1, unsigned(c.d), [&] {
        limo_decode::decode_attn_combine<T>(acc.data(), ml.data(), index.data(), out.data(), b_n,
                                            c.hq, c.d, max_splits);
    });
    std::vector<float> r(out.size());
    for (size_t i = 0; i < out.size(); ++i) r[i] = as_f(out[i]);
    return r;
}

template <typename T>
bool run_case(const Case& c, const char* tname, uint64_t seed) {
    const int b_n = int(c.lens.size()), d = c.d;
    const size_t cache_len = size_t(c.slots) * c.hkv * c.cap * d;
    std::mt19937 gen(seed);
    auto kf = rnd(cache_len, gen), vf = rnd(cache_len, gen);
    auto qf = rnd(size_t(b_n) * c.hq * d, gen);
    // The newest key and value of each sequence arrive through kv_cache_write, as in a decode
    // step: rows [B, kv_heads, D] written at (slot, len - 1).
    auto knew = rnd(size_t(b_n) * c.hkv * d, gen), vnew = rnd(size_t(b_n) * c.hkv * d, gen);
    auto kc = to_t<T>(kf), vc = to_t<T>(vf);
    const auto kn = to_t<T>(knew), vn = to_t<T>(vnew);
    std::vector<int> rows(c.seq_slots);
    for (int b = 0; b < b_n; ++b) rows.push_back(c.lens[b] - 1);
    const long long total = (long long)b_n * c.hkv * d;
    emu_launch(unsigned((total + 255) / 256), 1, 256, [&] {
        limo_decode::kv_cache_write<T>(kc.data(), vc.data(), kn.data(), vn.data(), rows.data(),
                                       b_n, c.hkv, d, c.cap);
    });
    for (int b = 0; b < b_n; ++b)
        for (int h = 0; h < c.hkv; ++h)
            for (int x = 0; x < d; ++x) {
                const size_t dst =
                    ((size_t(c.seq_slots[b]) * c.hkv + h) * c.cap + c.lens[b] - 1) * d + x;
                kf[dst] = knew[(size_t(b) * c.hkv + h) * d + x];
                vf[dst] = vnew[(size_t(b) * c.hkv + h) * d + x];
            }
    bool ok = true;
    size_t wrong = 0;
    for (size_t i = 0; i < cache_len; ++i)
        wrong += as_f(kc[i]) != kf[i] || as_f(vc[i]) != vf[i];
    std::printf("  %-4s kv_cache_write             %zu wrong elements %s\n", tname, wrong,
                wrong ? "FAIL" : "ok");
    ok = ok && wrong == 0;

    const float scale = 1.f / std::sqrt(float(d));
    const auto q = to_t<T>(qf);
    const auto got = decode<T>(c, q, kc, vc, c.seq_slots, c.lens, scale);
    const double err = rel_l2(got, reference(c, qf, kf, vf, scale));
    // f32: summation order only; bf16: one rounding of the output.
    const double tol = std::is_same_v<T, float> ? 1e-5 : 5e-3;
    const bool pass = err <= tol;
    std::printf("  %-4s decode attention           rel_l2 %.3e (tol %.0e) %s\n", tname, err, tol,
                pass ? "ok" : "FAIL");
    ok = ok && pass;

    // The last sequence alone (its query row only): the same bits as in the batch.
    const int last = b_n - 1;
    const std::vector<T> q1(q.begin() + size_t(last) * c.hq * d, q.end());
    const auto alone = decode<T>(c, q1, kc, vc, {c.seq_slots[last]}, {c.lens[last]}, scale);
    const bool same = std::equal(alone.begin(), alone.end(), got.begin() + size_t(last) * c.hq * d);
    std::printf("  %-4s alone == in the batch      %s\n", tname, same ? "ok" : "FAIL");
    return ok && same;
}

}  // namespace decode_test

int main() {
    using namespace decode_test;
    const std::vector<Case> cases = {
        // (q heads, kv heads, head_dim, slots, cap, slot of each sequence, its length)
        {4, 2, 64, 4, 600, {2, 0, 3}, {1, 257, 600}},   // group 2; one key, split + 1, 3 splits
        {10, 1, 128, 3, 520, {1, 2, 0}, {256, 513, 5}}, // group 10: chunks of 8 and 2
        {12, 2, 128, 2, 800, {1, 0}, {700, 64}},        // the 1.5B heads (group 6)
        {2, 2, 64, 1, 40, {0}, {33}},                   // no grouping, a single short sequence
    };
    bool ok = true;
    uint64_t seed = 1;
    for (const auto& c : cases) {
        std::printf("heads %d/%d, head_dim %d, lens [", c.hq, c.hkv, c.d);
        for (size_t i = 0; i < c.lens.size(); ++i) std::printf(i ? ", %d" : "%d", c.lens[i]);
        std::printf("]\n");
        ok = run_case<float>(c, "f32", seed) && ok;
        ok = run_case<__nv_bfloat16>(c, "bf16", seed) && ok;
        ++seed;
    }
    std::printf(ok ? "all checks passed\n" : "FAILED\n");
    return ok ? 0 : 1;
}
