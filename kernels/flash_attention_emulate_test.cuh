// Checks of flash_attention.cu's kernels on the CPU emulation (flash_attention_emulate.cuh):
// every entry point against a float64 reference of the same contract as
// crates/limo-ops/src/attention.rs (causal, packed documents, grouped-query heads), on
// documents whose lengths are not multiples of the 64-row tile, including one-token documents.
// Build and run: see flash_attention_emulate.cuh. Exit 1 on any error above the tolerance.
#pragma once

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>

namespace emu_test {

using limo_flash::kTile;

struct Case {
    std::vector<int> cu;
    int hq, hkv, d;
};

// Inputs are bf16-representable values, so both the bf16 and the f32 entry points see exactly
// the reference's inputs.
std::vector<float> rnd(size_t n, std::mt19937& gen, float scale) {
    std::normal_distribution<float> dist(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = float(__float2bfloat16_rn(dist(gen)));
    return v;
}

struct Grads {
    std::vector<double> out, lse, dq, dk, dv;
};

Grads reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                const std::vector<float>& v, const std::vector<float>& dout, double scale) {
    const int n = c.cu.back(), hq = c.hq, hkv = c.hkv, d = c.d, group = hq / hkv;
    Grads r;
    r.out.assign(size_t(n) * hq * d, 0);
    r.lse.assign(size_t(hq) * n, 0);
    r.dq.assign(size_t(n) * hq * d, 0);
    r.dk.assign(size_t(n) * hkv * d, 0);
    r.dv.assign(size_t(n) * hkv * d, 0);
    auto Q = [&](int i, int h, int x) { return double(q[(size_t(i) * hq + h) * d + x]); };
    auto K = [&](int j, int h, int x) { return double(k[(size_t(j) * hkv + h) * d + x]); };
    auto V = [&](int j, int h, int x) { return double(v[(size_t(j) * hkv + h) * d + x]); };
    auto DO = [&](int i, int h, int x) { return double(dout[(size_t(i) * hq + h) * d + x]); };
    for (size_t doc = 0; doc + 1 < c.cu.size(); ++doc) {
        const int s = c.cu[doc], e = c.cu[doc + 1];
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
                double delta = 0;
                for (int x = 0; x < d; ++x) delta += DO(i, h, x) * o[x];
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

// The wrapper's tile table: (tile start, document start, document end), longest work first.
std::vector<int> tiles(const std::vector<int>& cu, bool by_keys) {
    std::vector<std::array<int, 3>> t;
    for (size_t i = 0; i + 1 < cu.size(); ++i)
        for (int s = cu[i]; s < cu[i + 1]; s += kTile) t.push_back({s, cu[i], cu[i + 1]});
    std::stable_sort(t.begin(), t.end(), [&](auto& a, auto& b) {
        return by_keys ? (a[2] - a[0]) > (b[2] - b[0]) : (a[0] - a[1]) > (b[0] - b[1]);
    });
    std::vector<int> flat;
    for (auto& x : t) flat.insert(flat.end(), x.begin(), x.end());
    return flat;
}

double rel_l2(const std::vector<float>& got, const std::vector<double>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double diff = double(got[i]) - want[i];
        num += diff * diff;
        den += want[i] * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}

template <typename T>
std::vector<T> to_t(const std::vector<float>& x) {
    std::vector<T> r(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        if constexpr (std::is_same_v<T, float>) r[i] = x[i];
        else r[i] = __float2bfloat16_rn(x[i]);
    }
    return r;
}

template <typename T>
std::vector<float> to_f(const std::vector<T>& x) {
    return std::vector<float>(x.begin(), x.end());
}

using FwdFn = void (*)(const void*, const void*, const void*, void*, float*, const int*, int, int,
                       int, float);

// Runs forward + both backward variants for element type T; returns false on a failed check.
template <typename T>
bool run_case(const Case& c, const char* tname, uint64_t seed) {
    const int n = c.cu.back(), hq = c.hq, hkv = c.hkv, d = c.d;
    const float scale = 1.f / std::sqrt(float(d));
    std::mt19937 gen(seed);
    auto qf = rnd(size_t(n) * hq * d, gen, 1.f), kf = rnd(size_t(n) * hkv * d, gen, 1.f);
    auto vf = rnd(size_t(n) * hkv * d, gen, 1.f), dof = rnd(size_t(n) * hq * d, gen, 1.f);
    const Grads ref = reference(c, qf, kf, vf, dof, scale);
    auto q = to_t<T>(qf), k = to_t<T>(kf), v = to_t<T>(vf), dout = to_t<T>(dof);
    std::vector<T> out(q.size());
    std::vector<float> lse(size_t(hq) * n, NAN), delta(size_t(hq) * n, NAN);
    const auto qt = tiles(c.cu, false), kt = tiles(c.cu, true);
    const unsigned ntiles = unsigned(qt.size() / 3);

    auto fwd = [&] {
        if (d == 64) limo_flash::flash_fwd<T, 64>(q.data(), k.data(), v.data(), out.data(), lse.data(), qt.data(), n, hq, hkv, scale);
        else limo_flash::flash_fwd<T, 128>(q.data(), k.data(), v.data(), out.data(), lse.data(), qt.data(), n, hq, hkv, scale);
    };
    emu_launch(ntiles, hq, 128, fwd);
    emu_launch(64, 1, 256, [&] {
        limo_flash::flash_bwd_preprocess<T>(dout.data(), out.data(), delta.data(), n, hq, d);
    });

    bool ok = true;
    auto report = [&](const char* what, double err, double tol) {
        const bool pass = err <= tol && std::isfinite(err);
        std::printf("  %-4s %-26s rel_l2 %.3e (tol %.0e) %s\n", tname, what, err, tol,
                    pass ? "ok" : "FAIL");
        ok = ok && pass;
    };
    // P and dS are rounded to bf16 before their products (as in FlashAttention-2), so the
    // tolerances are bf16-level.
    report("out", rel_l2(to_f(out), ref.out), 5e-3);
    report("lse", rel_l2(lse, ref.lse), 1e-4);

    for (int det = 0; det < 2; ++det) {
        std::vector<T> dk(k.size()), dv(v.size()), dq(q.size());
        std::vector<float> dq_accum(q.size(), 0.f);
        if (det) {
            emu_launch(ntiles, hkv, 256, [&] {
                if (d == 64) limo_flash::flash_bwd_dkdv<T, 64, false>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(), dv.data(), nullptr, kt.data(), n, hq, hkv, scale);
                else limo_flash::flash_bwd_dkdv<T, 128, false>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(), dv.data(), nullptr, kt.data(), n, hq, hkv, scale);
            });
            emu_launch(ntiles, hq, 128, [&] {
                if (d == 64) limo_flash::flash_bwd_dq<T, 64>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dq.data(), qt.data(), n, hq, hkv, scale);
                else limo_flash::flash_bwd_dq<T, 128>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dq.data(), qt.data(), n, hq, hkv, scale);
            });
        } else {
            emu_launch(ntiles, hkv, 256, [&] {
                if (d == 64) limo_flash::flash_bwd_dkdv<T, 64, true>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(), dv.data(), dq_accum.data(), kt.data(), n, hq, hkv, scale);
                else limo_flash::flash_bwd_dkdv<T, 128, true>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(), dv.data(), dq_accum.data(), kt.data(), n, hq, hkv, scale);
            });
            if constexpr (std::is_same_v<T, float>) {
                dq = dq_accum;
            } else {
                std::vector<T> conv(q.size());
                emu_launch(4, 1, 256, [&] {
                    flash_convert_dq_bf16(dq_accum.data(), conv.data(), (long long)conv.size());
                });
                dq = conv;
            }
        }
        const std::string tag = det ? " (deterministic)" : " (atomic dQ)";
        report(("dq" + tag).c_str(), rel_l2(to_f(dq), ref.dq), 1e-2);
        report(("dk" + tag).c_str(), rel_l2(to_f(dk), ref.dk), 1e-2);
        report(("dv" + tag).c_str(), rel_l2(to_f(dv), ref.dv), 1e-2);
    }
    return ok;
}

}  // namespace emu_test

int main() {
    using namespace emu_test;
    const std::vector<Case> cases = {
        {{0, 70, 200}, 4, 2, 64},        // two documents, partial tiles, GQA group 2
        {{0, 1, 65, 66, 130}, 2, 1, 64}, // one-token documents, a document of exactly 64
        {{0, 150}, 2, 2, 128},           // hd128, no grouping, three tiles (last partial)
        {{0, 33, 100}, 6, 2, 128},       // hd128, group 3
    };
    bool ok = true;
    uint64_t seed = 1;
    for (const auto& c : cases) {
        std::printf("cu_seqlens [");
        for (size_t i = 0; i < c.cu.size(); ++i) std::printf(i ? ", %d" : "%d", c.cu[i]);
        std::printf("], heads %d/%d, head_dim %d\n", c.hq, c.hkv, c.d);
        ok = run_case<float>(c, "f32", seed) && ok;
        ok = run_case<__nv_bfloat16>(c, "bf16", seed) && ok;
        ++seed;
    }
    std::printf(ok ? "all checks passed\n" : "FAILED\n");
    return ok ? 0 : 1;
}
