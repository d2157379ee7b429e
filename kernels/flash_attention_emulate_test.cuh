// Checks of flash_attention.cu's kernels on the CPU emulation (flash_attention_emulate.cuh):
// every entry point against a float64 reference of the same contract as
// crates/limo-ops/src/attention.rs (causal, packed documents, grouped-query heads), on
// documents whose lengths are not multiples of the tiles (128 query rows forward, 64 rows
// backward, kv tiles of 64), one-token documents, documents long enough for several kv tiles
// (every cp.async stage reused, the forward's Q place included), GQA groups of 5 and 6. Also:
// ldmatrix's emulation against the fragment layout it must produce, zero bank conflicts for
// ldmatrix and cp.async, and no shared-memory race flagged by the emulation's shadow.
// Build and run: see flash_attention_emulate.cuh. Exit 1 on any error above the tolerance.
#pragma once

#include "emulate_check.cuh"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>

namespace emu_test {

using limo_flash::kFwdTile;
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

// The float64 forward and backward (emulate_check.cuh).
EmuAttention reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                       const std::vector<float>& v, const std::vector<float>& dout, double scale) {
    return emu_attention_reference(c.cu, c.hq, c.hkv, c.d, q, k, v, dout, scale);
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
    const EmuAttention ref = reference(c, qf, kf, vf, dof, scale);
    auto q = to_t<T>(qf), k = to_t<T>(kf), v = to_t<T>(vf), dout = to_t<T>(dof);
    std::vector<T> out(q.size());
    std::vector<float> lse(size_t(hq) * n, NAN), delta(size_t(hq) * n, NAN);
    const auto ft = tiles(c.cu, false, kFwdTile);
    const auto qt = tiles(c.cu, false, kTile), kt = tiles(c.cu, true, kTile);
    const unsigned ftiles = unsigned(ft.size() / 3), ntiles = unsigned(qt.size() / 3);

    auto fwd = [&] {
        if (d == 64) limo_flash::flash_fwd<T, 64>(q.data(), k.data(), v.data(), out.data(), lse.data(), ft.data(), n, hq, hkv, scale);
        else limo_flash::flash_fwd<T, 128>(q.data(), k.data(), v.data(), out.data(), lse.data(), ft.data(), n, hq, hkv, scale);
    };
    emu_launch(ftiles, hq, 256, fwd);
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

// ldmatrix .x1/.x2/.x4, plain and .trans, on one warp: lane l supplies row l%8 of matrix l/8
// (matrices at different places of a padded [32][40] b16 array, the rows of one matrix 80 bytes
// apart) and must get row l/4, columns 2(l%4)..+1 of each matrix (.trans: the transpose's).
bool check_ldmatrix() {
    bool ok = true;
    auto* m = reinterpret_cast<uint16_t*>(limo_flash::smem_raw);
    constexpr int LD = 40;
    const int r0[4] = {0, 8, 16, 24}, c0[4] = {0, 8, 32, 16};
    auto run = [&](auto count_tag, auto trans_tag) {
        constexpr int COUNT = decltype(count_tag)::value;
        constexpr bool TRANS = decltype(trans_tag)::value;
        std::vector<uint32_t> got(32 * COUNT);
        emu_launch(1, 1, 32, [&] {
            const int l = threadIdx.x;
            if (l == 0)
                for (int i = 0; i < 32 * LD; ++i) m[i] = uint16_t(i * 7 + 3);
            emu_warp_sync();
            const int i = (l / 8) % COUNT;  // lanes past 8*COUNT: any valid address
            uint32_t r[4];
            emulated_ldmatrix<COUNT, TRANS>(r, m + (r0[i] + l % 8) * LD + c0[i]);
            for (int j = 0; j < COUNT; ++j) got[l * COUNT + j] = r[j];
        });
        for (int l = 0; l < 32; ++l) {
            for (int j = 0; j < COUNT; ++j) {
                const int g = l / 4, t = l % 4;
                auto at = [&](int row, int col) {
                    return uint32_t(TRANS ? m[(r0[j] + col) * LD + c0[j] + row]
                                          : m[(r0[j] + row) * LD + c0[j] + col]);
                };
                const uint32_t want = at(g, 2 * t) | (at(g, 2 * t + 1) << 16);
                ok = ok && got[l * COUNT + j] == want;
            }
        }
    };
    run(std::integral_constant<int, 1>{}, std::false_type{});
    run(std::integral_constant<int, 2>{}, std::false_type{});
    run(std::integral_constant<int, 4>{}, std::false_type{});
    run(std::integral_constant<int, 1>{}, std::true_type{});
    run(std::integral_constant<int, 2>{}, std::true_type{});
    run(std::integral_constant<int, 4>{}, std::true_type{});
    std::printf("ldmatrix x1/x2/x4 (plain, trans) layout: %s\n", ok ? "ok" : "FAIL");
    return ok;
}

}  // namespace emu_test

int main() {
    using namespace emu_test;
    const auto start = std::chrono::steady_clock::now();
    bool ok = check_ldmatrix();
    emu_ldmatrix_count = 0;
    emu_ldmatrix_conflicts = 0;
    const std::vector<Case> cases = {
        // a one-token document, a partial one, one of 200 tokens (two forward query tiles, the
        // second with four kv tiles: all three forward stages used, the first twice), GQA group 5
        {{0, 1, 70, 270}, 5, 1, 64},
        // hd128, GQA group 6: one document of exactly two 64-row tiles and a partial one of 83
        {{0, 128, 211}, 6, 1, 128},
        // hd128 without grouping, a document of 150 tokens (three kv tiles), then 40
        {{0, 150, 190}, 2, 2, 128},
    };
    uint64_t seed = 1;
    for (const auto& c : cases) {
        std::printf("cu_seqlens [");
        for (size_t i = 0; i < c.cu.size(); ++i) std::printf(i ? ", %d" : "%d", c.cu[i]);
        std::printf("], heads %d/%d, head_dim %d\n", c.hq, c.hkv, c.d);
        ok = run_case<float>(c, "f32", seed) && ok;
        ok = run_case<__nv_bfloat16>(c, "bf16", seed) && ok;
        ++seed;
    }
    std::printf("shared-memory races (ldmatrix / cp.async across warps): %ld %s\n",
                emu_races.load(), emu_races ? "FAIL" : "ok");
    ok = ok && emu_races == 0;
    const long conflicts = emu_ldmatrix_conflicts + emu_cp_async_conflicts;
    std::printf("shared-memory bank conflicts: ldmatrix %ld of %ld matrices, cp.async %ld (%ld copies) %s\n",
                emu_ldmatrix_conflicts.load(), emu_ldmatrix_count.load(),
                emu_cp_async_conflicts.load(), emu_cp_async_count.load(), conflicts ? "FAIL" : "ok");
    ok = ok && conflicts == 0;
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s (%.1f s)\n", ok ? "all checks passed" : "FAILED", secs);
    return ok ? 0 : 1;
}
