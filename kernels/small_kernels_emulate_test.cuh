// Checks of the small kernels (rms_norm.cu, cross_entropy.cu, rope.cu, swiglu.cu, adamw.cu,
// embedding.cu, sum_squares.cu, accumulate.cu) on
// the CPU emulation (small_kernels_emulate.cuh), with the launch shapes of their Rust wrappers
// (crates/limo-ops/src/cuda/): float64 references of each contract for RMSNorm, cross-entropy,
// RoPE and SwiGLU (bf16 and f32, sizes that are not multiples of the block, rows past the
// backward's 256 partial-sum blocks, ignored targets and -inf logits, the gradient written over
// the logits, the backward of RoPE as the transpose of its forward), and AdamW bit for bit against
// the f32 reference's operation order (crates/limo-ops/src/adamw.rs), with and without the
// on-device clipping and with a non-finite norm. Grid-stride kernels give the same bits on a grid
// too small to cover the data. Every output starts as NaN, so an element never written fails.
// The main file of scripts/test-small-kernels-emulation.sh; exit 1 on any failed check.

#include "rms_norm.cu"
#include "cross_entropy.cu"
#include "rope.cu"
#include "swiglu.cu"
#include "adamw.cu"
#include "embedding.cu"
#include "sum_squares.cu"
#include "accumulate.cu"

#include "emulate_check.cuh"

#include <cstdio>
#include <random>
#include <type_traits>
#include <vector>

namespace small_test {

bool all_ok = true;

void report(const char* what, double err, double tol) {
    const bool ok = err <= tol;
    std::printf("  %-58s rel_l2 %.3e (tol %.0e) %s\n", what, err, tol, ok ? "ok" : "FAIL");
    all_ok = all_ok && ok;
}

void report_same(const char* what, bool same) {
    std::printf("  %-58s %s\n", what, same ? "ok" : "FAIL");
    all_ok = all_ok && same;
}

template <typename T>
const char* name() {
    return std::is_same_v<T, float> ? "f32 " : "bf16";
}

// An output buffer whose every element is NaN until the kernel writes it.
template <typename T>
std::vector<T> nan_buffer(size_t n) {
    return to_t<T>(std::vector<float>(n, NAN));
}

template <typename T>
std::vector<float> floats(const std::vector<T>& x) {
    return std::vector<float>(x.begin(), x.end());
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// f64 -> the kernel dtype -> f64: the reference's rounding where the contract has one.
template <typename T>
double round_t(double x) {
    return double(float(to_t<T>({float(x)})[0]));
}

// grid_1d of the Rust wrappers: one thread per element, `block` per block.
unsigned grid_1d(size_t n, unsigned block) { return unsigned(std::max<size_t>(1, (n + block - 1) / block)); }

// ---- RMSNorm (crates/limo-ops/src/cuda/rms_norm.rs: BLOCK 256, BWD_BLOCKS 1024) ----

template <typename T>
void rms_norm_case(int rows, int hidden, std::mt19937& gen) {
    const auto xf = emu_rnd_bf16(size_t(rows) * hidden, gen, 1.5f);
    const auto wf = emu_rnd_bf16(hidden, gen, 1.f);
    const auto dyf = emu_rnd_bf16(size_t(rows) * hidden, gen, 1.f);
    const auto x = to_t<T>(xf), w = to_t<T>(wf), dy = to_t<T>(dyf);
    const float eps = 1e-6f;
    auto y = nan_buffer<T>(x.size());
    std::vector<float> rstd(rows, NAN);
    emu_launch(rows, 1, 256, [&] {
        rms_norm_fwd<T, false>(x.data(), nullptr, w.data(), nullptr, y.data(), rstd.data(), rows,
                               hidden, eps);
    });
    // The wrapper's min(BWD_BLOCKS, rows), with a smaller cap here so that the emulation also
    // has blocks walking several rows (300 rows over 256 blocks); the kernel reads gridDim.
    const int parts = std::min(256, rows);
    std::vector<float> partial(size_t(parts) * hidden, NAN), dw(hidden, NAN);
    auto dx = nan_buffer<T>(x.size());
    emu_launch(parts, 1, 256, [&] {
        rms_norm_bwd<T>(dy.data(), x.data(), w.data(), rstd.data(), dx.data(), partial.data(),
                        rows, hidden);
    });
    emu_launch(grid_1d(hidden, 256), 1, 256,
               [&] { rms_norm_dw_reduce(partial.data(), dw.data(), parts, hidden); });

    std::vector<double> want_y(x.size()), want_r(rows), want_dx(x.size()), want_dw(hidden, 0);
    for (int r = 0; r < rows; ++r) {
        const size_t o = size_t(r) * hidden;
        double ss = 0, dot = 0;
        for (int j = 0; j < hidden; ++j) ss += double(xf[o + j]) * xf[o + j];
        const double rs = 1 / std::sqrt(ss / hidden + eps);
        want_r[r] = rs;
        for (int j = 0; j < hidden; ++j) {
            const double n = xf[o + j] * rs;
            want_y[o + j] = wf[j] * round_t<T>(n);  // transformers rounds n to the input dtype
            dot += double(dyf[o + j]) * wf[j] * n;
            want_dw[j] += dyf[o + j] * n;
        }
        for (int j = 0; j < hidden; ++j)
            want_dx[o + j] = (double(dyf[o + j]) * wf[j] - xf[o + j] * rs * dot / hidden) * rs;
    }
    // f32: summation order only; bf16: a rounding of each output (2^-8 relative at most) and,
    // in y, of the normalized value.
    const double tol = std::is_same_v<T, float> ? 2e-6 : 5e-3;
    char what[96];
    std::snprintf(what, sizeof what, "%s rms_norm %d x %d: y", name<T>(), rows, hidden);
    report(what, rel_l2(floats(y), want_y), tol);
    std::snprintf(what, sizeof what, "%s rms_norm %d x %d: rstd", name<T>(), rows, hidden);
    report(what, rel_l2(rstd, want_r), 2e-6);
    std::snprintf(what, sizeof what, "%s rms_norm %d x %d: dx (%d partial blocks)", name<T>(),
                  rows, hidden, parts);
    report(what, rel_l2(floats(dx), want_dx), tol);
    // dw stays f32 whatever T (summed over every row).
    std::snprintf(what, sizeof what, "%s rms_norm %d x %d: dw (f32)", name<T>(), rows, hidden);
    report(what, rel_l2(dw, want_dw), 2e-6);

    // After a residual add (add_rms_norm_fwd): x = a + b rounded to T as candle adds, then the
    // same bits as rms_norm_fwd of that sum, the sum included.
    const auto bf = emu_rnd_bf16(xf.size(), gen, 0.5f);
    std::vector<float> af(xf.size());
    for (size_t i = 0; i < af.size(); ++i) af[i] = xf[i] - bf[i];
    const auto a = to_t<T>(af), b = to_t<T>(bf);
    std::vector<float> sf(af.size());
    for (size_t i = 0; i < sf.size(); ++i) sf[i] = float(a[i]) + float(b[i]);
    const auto s = to_t<T>(sf);
    auto y_s = nan_buffer<T>(x.size()), y2 = nan_buffer<T>(x.size()), sum = nan_buffer<T>(x.size());
    std::vector<float> rstd_s(rows, NAN), rstd2(rows, NAN);
    emu_launch(rows, 1, 256, [&] {
        rms_norm_fwd<T, false>(s.data(), nullptr, w.data(), nullptr, y_s.data(), rstd_s.data(),
                               rows, hidden, eps);
    });
    emu_launch(rows, 1, 256, [&] {
        rms_norm_fwd<T, true>(a.data(), b.data(), w.data(), sum.data(), y2.data(), rstd2.data(),
                              rows, hidden, eps);
    });
    std::snprintf(what, sizeof what, "%s add_rms_norm %d x %d: = add, then rms_norm", name<T>(),
                  rows, hidden);
    report_same(what, same_bits(sum, s) && same_bits(y2, y_s) && same_bits(rstd2, rstd_s));
}

// ---- cross-entropy (crates/limo-ops/src/cuda/cross_entropy.rs: BLOCK 512, one block per row) --

template <typename T>
void xent_case(int rows, int vocab, std::mt19937& gen) {
    auto lf = emu_rnd_bf16(size_t(rows) * vocab, gen, 3.f);
    std::vector<long long> targets(rows);
    std::uniform_int_distribution<int> pick(0, vocab - 1);
    for (auto& t : targets) t = pick(gen);
    targets[1] = LIMO_IGNORE_INDEX;
    targets[2] = vocab - 1;
    // Row 3: a third of its logits masked to -inf (never its target).
    for (int j = 0; j < vocab; j += 3)
        if (j != targets[3]) lf[size_t(3) * vocab + j] = -INFINITY;
    int counted = 0;
    for (auto t : targets) counted += t != LIMO_IGNORE_INDEX;
    const float scale = 1.f / float(counted);
    const auto logits = to_t<T>(lf);

    std::vector<double> want_loss(rows, 0), want_grad(logits.size(), 0);
    for (int r = 0; r < rows; ++r) {
        if (targets[r] == LIMO_IGNORE_INDEX) continue;
        const float* x = &lf[size_t(r) * vocab];
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < vocab; ++j) mx = std::max(mx, double(x[j]));
        for (int j = 0; j < vocab; ++j) s += std::exp(x[j] - mx);
        const double lse = mx + std::log(s);
        want_loss[r] = lse - x[targets[r]];
        for (int j = 0; j < vocab; ++j)
            want_grad[size_t(r) * vocab + j] =
                scale * std::exp(x[j] - lse) - (j == targets[r] ? scale : 0.0);
    }

    // Loss only: d_logits is the logits pointer and must stay untouched.
    auto kept = logits;
    std::vector<float> loss(rows, NAN);
    emu_launch(rows, 1, 512, [&] {
        softmax_xent<T>(kept.data(), targets.data(), loss.data(), kept.data(), rows, vocab, 0.f, 0);
    });
    char what[96];
    const double tol = std::is_same_v<T, float> ? 1e-6 : 5e-3;
    std::snprintf(what, sizeof what, "%s xent %d x %d: loss", name<T>(), rows, vocab);
    report(what, rel_l2(loss, want_loss), 1e-6);
    std::snprintf(what, sizeof what, "%s xent %d x %d: logits untouched without gradient",
                  name<T>(), rows, vocab);
    report_same(what, same_bits(kept, logits));

    // The gradient into its own buffer, then over the logits (the chunked loss's in-place mode).
    auto grad = nan_buffer<T>(logits.size());
    std::vector<float> loss2(rows, NAN), loss3(rows, NAN);
    emu_launch(rows, 1, 512, [&] {
        softmax_xent<T>(logits.data(), targets.data(), loss2.data(), grad.data(), rows, vocab,
                        scale, 1);
    });
    auto in_place = logits;
    emu_launch(rows, 1, 512, [&] {
        softmax_xent<T>(in_place.data(), targets.data(), loss3.data(), in_place.data(), rows, vocab,
                        scale, 1);
    });
    std::snprintf(what, sizeof what, "%s xent %d x %d: d_logits (ignored row, -inf logits)",
                  name<T>(), rows, vocab);
    report(what, rel_l2(floats(grad), want_grad), tol);
    std::snprintf(what, sizeof what, "%s xent %d x %d: in place == own buffer, same loss",
                  name<T>(), rows, vocab);
    report_same(what, same_bits(in_place, grad) && same_bits(loss3, loss2) &&
                          same_bits(loss2, loss));
}

// ---- RoPE (crates/limo-ops/src/cuda/rope.rs: grid_1d(n, 256)) ----

template <typename T>
void rope_case(int tokens, int heads, int d, std::mt19937& gen) {
    const int half = d / 2;
    std::vector<float> cf(size_t(tokens) * d), sf(cf.size());
    for (int t = 0; t < tokens; ++t)
        for (int i = 0; i < d; ++i) {
            // Positions restart per document in packed batches: token t sits at 3t % 11.
            const double angle = (3 * t % 11) * std::pow(1e6, -2.0 * (i % half) / d);
            cf[size_t(t) * d + i] = float(to_t<T>({float(std::cos(angle))})[0]);
            sf[size_t(t) * d + i] = float(to_t<T>({float(std::sin(angle))})[0]);
        }
    const auto xf = emu_rnd_bf16(size_t(tokens) * heads * d, gen, 1.f);
    const auto dyf = emu_rnd_bf16(xf.size(), gen, 1.f);
    const auto x = to_t<T>(xf), dy = to_t<T>(dyf), c = to_t<T>(cf), s = to_t<T>(sf);
    const size_t n = x.size();
    auto run = [&](bool backward, const std::vector<T>& in, unsigned grid) {
        auto out = nan_buffer<T>(n);
        emu_launch(grid, 1, 256, [&] {
            if (backward) rope<true, T, T>(in.data(), c.data(), s.data(), out.data(), tokens, heads, d);
            else rope<false, T, T>(in.data(), c.data(), s.data(), out.data(), tokens, heads, d);
        });
        return out;
    };
    const auto y = run(false, x, grid_1d(n, 256)), dx = run(true, dy, grid_1d(n, 256));
    std::vector<double> want_y(n), want_dx(n);
    for (size_t e = 0; e < n; ++e) {
        const int i = int(e % d);
        const size_t tab = e / (size_t(heads) * d) * d + i;
        const double rot = i < half ? -double(xf[e + half]) : double(xf[e - half]);
        want_y[e] = xf[e] * double(cf[tab]) + rot * sf[tab];
        const double rot_t = i < half ? double(dyf[e + half]) * sf[tab + half]
                                      : -double(dyf[e - half]) * sf[tab - half];
        want_dx[e] = dyf[e] * double(cf[tab]) + rot_t;
    }
    const double tol = std::is_same_v<T, float> ? 1e-6 : 5e-3;  // bf16: 2^-8 rounding
    char what[96];
    std::snprintf(what, sizeof what, "%s rope %d x %d x %d: forward", name<T>(), tokens, heads, d);
    report(what, rel_l2(floats(y), want_y), tol);
    std::snprintf(what, sizeof what, "%s rope %d x %d x %d: backward", name<T>(), tokens, heads, d);
    report(what, rel_l2(floats(dx), want_dx), tol);
    if constexpr (std::is_same_v<T, float>) {
        // The backward is the forward's transpose: <dy, rope(x)> = <rope_bwd(dy), x>.
        double lhs = 0, rhs = 0;
        for (size_t e = 0; e < n; ++e) {
            lhs += double(dyf[e]) * y[e];
            rhs += double(dx[e]) * xf[e];
        }
        std::snprintf(what, sizeof what, "%s rope %d x %d x %d: <dy, fwd x> = <bwd dy, x>",
                      name<T>(), tokens, heads, d);
        report(what, std::abs(lhs - rhs) / std::abs(lhs), 1e-5);
    }
    std::snprintf(what, sizeof what, "%s rope %d x %d x %d: grid of 3 blocks, same bits", name<T>(),
                  tokens, heads, d);
    report_same(what, same_bits(run(false, x, 3), y) && same_bits(run(true, dy, 3), dx));
}

// ---- Bias + RoPE + KV-cache append (crates/limo-ops/src/cuda/rope.rs: grid_1d(n * width, 256)) ----

// n new rows, q_heads/kv_heads x d, into caches of `slots` x `cap` at (slot, position) =
// ((3i + 1) % slots, cap - 1 - i): bit for bit the unfused form (the bias adds rounded to T,
// rope_fwd on q and k, the rows placed in the caches, every other cache element untouched), and
// q within rounding of a float64 rotation of lin + bias.
template <typename T>
void qkv_append_case(int n, int hq, int hkv, int d, int slots, int cap, std::mt19937& gen) {
    const int half = d / 2, qw = hq * d, kw = hkv * d;
    std::vector<float> cf(size_t(n) * d), sf(cf.size());
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < d; ++i) {
            const double angle = (100 + 7 * t) * std::pow(1e6, -2.0 * (i % half) / d);
            cf[size_t(t) * d + i] = float(to_t<T>({float(std::cos(angle))})[0]);
            sf[size_t(t) * d + i] = float(to_t<T>({float(std::sin(angle))})[0]);
        }
    const auto qf = emu_rnd_bf16(size_t(n) * qw, gen, 2.f), kf = emu_rnd_bf16(size_t(n) * kw, gen, 2.f);
    const auto vf = emu_rnd_bf16(size_t(n) * kw, gen, 2.f);
    const auto bqf = emu_rnd_bf16(qw, gen, 0.5f), bkf = emu_rnd_bf16(kw, gen, 0.5f);
    const auto bvf = emu_rnd_bf16(kw, gen, 0.5f);
    const auto cache0 = to_t<T>(emu_rnd_bf16(size_t(slots) * kw * cap, gen, 1.f));
    const auto q = to_t<T>(qf), k = to_t<T>(kf), v = to_t<T>(vf), c = to_t<T>(cf), s = to_t<T>(sf);
    const auto bq = to_t<T>(bqf), bk = to_t<T>(bkf), bv = to_t<T>(bvf);
    std::vector<int> rows(2 * size_t(n));
    for (int i = 0; i < n; ++i) rows[i] = (3 * i + 1) % slots, rows[n + i] = cap - 1 - i;
    const size_t total = size_t(n) * (qw + 2 * kw);
    auto run = [&](unsigned grid) {
        auto q_out = nan_buffer<T>(size_t(n) * qw);
        auto kc = cache0, vc = cache0;
        emu_launch(grid, 1, 256, [&] {
            qkv_rope_append<T>(q.data(), k.data(), v.data(), bq.data(), bk.data(), bv.data(),
                               c.data(), s.data(), rows.data(), q_out.data(), kc.data(), vc.data(),
                               n, hq, hkv, d, cap);
        });
        return std::tuple{q_out, kc, vc};
    };
    const auto [q_out, kc, vc] = run(grid_1d(total, 256));

    // The unfused form: candle's bias add (an f32 sum rounded to T), then rope_fwd.
    auto biased = [&](const std::vector<float>& x, const std::vector<float>& b) {
        std::vector<float> out(x.size());
        for (size_t e = 0; e < x.size(); ++e) out[e] = x[e] + b[e % b.size()];
        return to_t<T>(out);
    };
    auto rope_fwd = [&](const std::vector<T>& x, int heads) {
        auto y = nan_buffer<T>(x.size());
        emu_launch(grid_1d(x.size(), 256), 1, 256,
                   [&] { rope<false, T, T>(x.data(), c.data(), s.data(), y.data(), n, heads, d); });
        return y;
    };
    const auto q_want = rope_fwd(biased(qf, bqf), hq), k_rot = rope_fwd(biased(kf, bkf), hkv);
    const auto v_b = biased(vf, bvf);
    auto kc_want = cache0, vc_want = cache0;
    for (int i = 0; i < n; ++i)
        for (int e = 0; e < kw; ++e) {
            const size_t dst = ((size_t(rows[i]) * hkv + e / d) * cap + rows[n + i]) * d + e % d;
            kc_want[dst] = k_rot[size_t(i) * kw + e];
            vc_want[dst] = v_b[size_t(i) * kw + e];
        }
    char what[96];
    std::snprintf(what, sizeof what, "%s qkv_rope_append %d x %d/%d x %d: = bias, rope, write",
                  name<T>(), n, hq, hkv, d);
    report_same(what, same_bits(q_out, q_want) && same_bits(kc, kc_want) && same_bits(vc, vc_want));

    std::vector<double> want(size_t(n) * qw);
    for (size_t e = 0; e < want.size(); ++e) {
        const int i = int(e % d), col = int(e % qw);
        const size_t tab = e / qw * d + i;
        const size_t p = i < half ? e + half : e - half;
        const double x = double(qf[e]) + bqf[col], xp = double(qf[p]) + bqf[p % qw];
        want[e] = x * cf[tab] + (i < half ? -xp : xp) * sf[tab];
    }
    std::snprintf(what, sizeof what, "%s qkv_rope_append %d x %d/%d x %d: q against float64",
                  name<T>(), n, hq, hkv, d);
    report(what, rel_l2(floats(q_out), want), std::is_same_v<T, float> ? 1e-6 : 8e-3);
    std::snprintf(what, sizeof what, "%s qkv_rope_append %d x %d/%d x %d: grid of 3, same bits",
                  name<T>(), n, hq, hkv, d);
    const auto [q3, kc3, vc3] = run(3);
    report_same(what, same_bits(q3, q_out) && same_bits(kc3, kc) && same_bits(vc3, vc));
}

// ---- SwiGLU (crates/limo-ops/src/cuda/swiglu.rs: grid_1d(n, 256)) ----

template <typename T>
void swiglu_case(size_t n, std::mt19937& gen) {
    auto gf = emu_rnd_bf16(n, gen, 3.f);
    // Saturated gates: silu must give 0 (not NaN) far below zero and g far above.
    gf[0] = -100.f, gf[1] = 100.f, gf[2] = 0.f, gf[3] = -88.f;
    const auto uf = emu_rnd_bf16(n, gen, 1.f), dhf = emu_rnd_bf16(n, gen, 1.f);
    const auto g = to_t<T>(gf), u = to_t<T>(uf), dh = to_t<T>(dhf);
    auto fwd = [&](unsigned grid) {
        auto h = nan_buffer<T>(n);
        emu_launch(grid, 1, 256, [&] { swiglu_fwd<T>(g.data(), u.data(), h.data(), n); });
        return h;
    };
    auto bwd = [&](unsigned grid) {
        std::vector<T> dg = nan_buffer<T>(n), du = nan_buffer<T>(n);
        emu_launch(grid, 1, 256,
                   [&] { swiglu_bwd<T>(dh.data(), g.data(), u.data(), dg.data(), du.data(), n); });
        return std::make_pair(dg, du);
    };
    const auto h = fwd(grid_1d(n, 256));
    const auto [dg, du] = bwd(grid_1d(n, 256));
    std::vector<double> want_h(n), want_dg(n), want_du(n);
    for (size_t e = 0; e < n; ++e) {
        const double x = gf[e], sg = 1 / (1 + std::exp(-x));
        want_h[e] = x * sg * uf[e];
        want_dg[e] = double(dhf[e]) * uf[e] * sg * (1 + x * (1 - sg));
        want_du[e] = double(dhf[e]) * x * sg;
    }
    const double tol = std::is_same_v<T, float> ? 1e-6 : 5e-3;  // bf16: 2^-8 rounding
    char what[96];
    std::snprintf(what, sizeof what, "%s swiglu %zu: h", name<T>(), n);
    report(what, rel_l2(floats(h), want_h), tol);
    std::snprintf(what, sizeof what, "%s swiglu %zu: dg", name<T>(), n);
    report(what, rel_l2(floats(dg), want_dg), tol);
    std::snprintf(what, sizeof what, "%s swiglu %zu: du", name<T>(), n);
    report(what, rel_l2(floats(du), want_du), tol);
    const auto [dg3, du3] = bwd(3);
    std::snprintf(what, sizeof what, "%s swiglu %zu: grid of 3 blocks, same bits", name<T>(), n);
    report_same(what, same_bits(fwd(3), h) && same_bits(dg3, dg) && same_bits(du3, du));
}

// ---- AdamW (crates/limo-ops/src/cuda/adamw.rs: grid_1d(n, 256)) ----

struct Hyper {
    double lr, beta1, beta2, eps, weight_decay, grad_scale;
    int t;
};

struct State {
    std::vector<float> p, m, v;
    std::vector<__nv_bfloat16> p16;
};

// adamw_update of crates/limo-ops/src/adamw.rs with F = f32, in its operation order; with a
// squared norm, the clipping coefficient of clip_coefficient in f64.
State reference(State s, const std::vector<float>& g, Hyper h, const double* norm_sq,
                double max_norm) {
    if (norm_sq) {
        const double norm = std::sqrt(*norm_sq);
        if (!std::isfinite(norm)) return s;
        h.grad_scale = max_norm <= 0 ? 1.0 : std::min(max_norm / (norm + 1e-6), 1.0);
    }
    const float b1 = float(h.beta1), b2 = float(h.beta2), omb1 = float(1 - h.beta1),
                omb2 = float(1 - h.beta2), decay = float(1 - h.lr * h.weight_decay),
                step = float(h.lr / (1 - std::pow(h.beta1, h.t))),
                bias2 = float(std::sqrt(1 - std::pow(h.beta2, h.t))), eps = float(h.eps),
                scale = float(h.grad_scale);
    for (size_t i = 0; i < s.p.size(); ++i) {
        const float gi = h.grad_scale != 1.0 ? g[i] * scale : g[i];
        const float p = h.weight_decay != 0.0 ? s.p[i] * decay : s.p[i];
        const float m = b1 * s.m[i] + omb1 * gi;
        const float v = b2 * s.v[i] + omb2 * (gi * gi);
        s.p[i] = p - step * (m / (std::sqrt(v) / bias2 + eps));
        s.m[i] = m;
        s.v[i] = v;
        if (!s.p16.empty()) s.p16[i] = __float2bfloat16_rn(s.p[i]);
    }
    return s;
}

State kernel(State s, const std::vector<float>& g, Hyper h, const double* norm_sq,
             double max_norm, unsigned grid) {
    const size_t n = s.p.size();
    __nv_bfloat16* p16 = s.p16.empty() ? nullptr : s.p16.data();
    emu_launch(grid, 1, 256, [&] {
        adamw_f32(s.p.data(), g.data(), s.m.data(), s.v.data(), p16, n, float(h.beta1),
                  float(h.beta2), float(1 - h.beta1), float(1 - h.beta2),
                  float(1 - h.lr * h.weight_decay), float(h.lr / (1 - std::pow(h.beta1, h.t))),
                  float(std::sqrt(1 - std::pow(h.beta2, h.t))), float(h.eps), float(h.grad_scale),
                  h.grad_scale != 1.0, h.weight_decay != 0.0, norm_sq, max_norm);
    });
    return s;
}

bool same_state(const State& a, const State& b) {
    return same_bits(a.p, b.p) && same_bits(a.m, b.m) && same_bits(a.v, b.v) &&
           a.p16.size() == b.p16.size() &&
           std::memcmp(a.p16.data(), b.p16.data(), a.p16.size() * 2) == 0;
}

void adamw_cases(size_t n, std::mt19937& gen) {
    std::normal_distribution<float> dist(0.f, 1.f);
    State s;
    std::vector<float> g(n);
    for (size_t i = 0; i < n; ++i) {
        s.p.push_back(dist(gen));
        s.m.push_back(0.01f * dist(gen));
        s.v.push_back(1e-4f * std::abs(dist(gen)));
        g[i] = 0.1f * dist(gen);
    }
    s.p16 = to_t<__nv_bfloat16>(std::vector<float>(n, NAN));
    const Hyper h{1e-3, 0.9, 0.95, 1e-8, 0.1, 0.5, 7};
    const Hyper plain{5e-6, 0.9, 0.999, 1e-8, 0.0, 1.0, 1};
    State no_copy = s;
    no_copy.p16.clear();
    const double norm_sq = 400.0, infinite = INFINITY;
    struct Case {
        const char* what;
        const State& state;
        Hyper h;
        const double* norm_sq;
        double max_norm;
    };
    const Case cases[] = {
        {"adamw: scale 0.5, decay, bf16 copy", s, h, nullptr, 0},
        {"adamw: no scale, no decay (LIMO's lr, t = 1)", s, plain, nullptr, 0},
        {"adamw: clipped on the device (norm 20, max 1), no copy", no_copy, h, &norm_sq, 1.0},
        {"adamw: device norm under max_norm (coefficient 1)", s, h, &norm_sq, 50.0},
        {"adamw: clipping off (max_norm 0) with a norm", s, h, &norm_sq, 0.0},
        {"adamw: non-finite norm leaves everything untouched", s, h, &infinite, 1.0},
    };
    for (const auto& c : cases) {
        const State want = reference(c.state, g, c.h, c.norm_sq, c.max_norm);
        const State got = kernel(c.state, g, c.h, c.norm_sq, c.max_norm, grid_1d(n, 256));
        const State small = kernel(c.state, g, c.h, c.norm_sq, c.max_norm, 2);
        char what[96];
        std::snprintf(what, sizeof what, "%s, bit-exact (grids %u and 2)", c.what,
                      grid_1d(n, 256));
        report_same(what, same_state(got, want) && same_state(small, want));
    }
}

// ---- embedding gradient (crates/limo-ops/src/cuda/embedding.rs: grid_1d(vocab x hidden / V, 256)) --

template <typename T, int V>
void embedding_case(int tokens, int vocab, int hidden, bool with_base, std::mt19937& gen) {
    const auto dxf = emu_rnd_bf16(size_t(tokens) * hidden, gen, 1.f);
    const auto dx = to_t<T>(dxf);
    // Tokens from the first half of the vocabulary (the rest get no gradient), many repeated,
    // and the last row once.
    std::uniform_int_distribution<int> pick(0, vocab / 2);
    std::vector<int> ids(tokens);
    for (auto& id : ids) id = pick(gen);
    ids[tokens / 2] = vocab - 1;
    // The wrapper's counting sort: row_start [vocab + 1], positions grouped by token in order.
    std::vector<uint32_t> row_start(vocab + 1, 0), positions(tokens);
    for (int id : ids) ++row_start[id + 1];
    for (int r = 0; r < vocab; ++r) row_start[r + 1] += row_start[r];
    std::vector<uint32_t> fill(row_start.begin(), row_start.end() - 1);
    for (int p = 0; p < tokens; ++p) positions[fill[ids[p]]++] = p;
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> base;
    if (with_base)
        for (size_t i = 0; i < size_t(vocab) * hidden; ++i) base.push_back(dist(gen));
    auto run = [&](unsigned grid) {
        std::vector<float> out(size_t(vocab) * hidden, NAN);
        emu_launch(grid, 1, 256, [&] {
            embedding_bwd<T, V>(dx.data(), row_start.data(), positions.data(),
                                with_base ? base.data() : nullptr, out.data(), vocab, hidden);
        });
        return out;
    };
    const auto got = run(grid_1d(size_t(vocab) * hidden / V, 256));
    // The CPU's operations: a zero table, index_add in position order, then + base.
    std::vector<float> cpu(size_t(vocab) * hidden, 0.f);
    std::vector<double> want(cpu.size(), 0);
    for (int p = 0; p < tokens; ++p)
        for (int c = 0; c < hidden; ++c) {
            cpu[size_t(ids[p]) * hidden + c] += dxf[size_t(p) * hidden + c];
            want[size_t(ids[p]) * hidden + c] += dxf[size_t(p) * hidden + c];
        }
    for (size_t i = 0; with_base && i < cpu.size(); ++i) {
        cpu[i] = cpu[i] + base[i];
        want[i] += base[i];
    }
    char what[96];
    std::snprintf(what, sizeof what, "%s embedding grad (V=%d) %d tokens, %d x %d%s", name<T>(), V,
                  tokens, vocab, hidden, with_base ? " + base" : "");
    report(what, rel_l2(got, want), 1e-6);
    std::snprintf(what, sizeof what, "%s embedding grad (V=%d): the CPU's bits, grid of 3 the same",
                  name<T>(), V);
    report_same(what, same_bits(got, cpu) && same_bits(run(3), got));
}

// ---- sum of squares (crates/limo-ops/src/cuda/sum_squares.rs: PARTS blocks of 256, then one) --

template <typename T>
void sum_squares_case(size_t n, unsigned parts, std::mt19937& gen) {
    const auto xf = emu_rnd_bf16(n, gen, 3.f);
    const auto x = to_t<T>(xf);
    std::vector<double> partial(parts, NAN), out(1, NAN);
    emu_launch(parts, 1, 256, [&] { sum_squares_partial<T>(x.data(), n, partial.data()); });
    emu_launch(1, 1, 256, [&] { sum_squares_reduce(partial.data(), int(parts), out.data()); });
    double want = 0;
    for (float v : xf) want += double(v) * v;
    char what[96];
    std::snprintf(what, sizeof what, "%s sum of squares of %zu over %u blocks", name<T>(), n, parts);
    // f64 sums of exact squares: only the order of the additions differs.
    report(what, std::abs(out[0] - want) / want, 1e-14);
}

// ---- acc += x (crates/limo-ops/src/cuda/accumulate.rs: grid_1d(n, 256)) ----

template <typename T>
void add_into_case(size_t n, std::mt19937& gen) {
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> acc0(n);
    for (auto& a : acc0) a = dist(gen);
    const auto x = to_t<T>(emu_rnd_bf16(n, gen, 1.f));
    auto run = [&](unsigned grid) {
        auto acc = acc0;
        emu_launch(grid, 1, 256, [&] { add_into<T>(acc.data(), x.data(), n); });
        return acc;
    };
    std::vector<float> want(n);
    for (size_t i = 0; i < n; ++i) want[i] = acc0[i] + float(x[i]);
    char what[96];
    std::snprintf(what, sizeof what, "%s acc += x, %zu: the sums, grid of 3 the same", name<T>(), n);
    report_same(what, same_bits(run(grid_1d(n, 256)), want) && same_bits(run(3), want));
}

// ---- dst = x as f32, into a slot of a larger buffer (crates/limo-ops/src/flat.rs) ----

template <typename T>
void cast_into_case(size_t n, std::mt19937& gen) {
    const auto xf = emu_rnd_bf16(n, gen, 2.f);
    const auto x = to_t<T>(xf);
    auto run = [&](unsigned grid) {
        std::vector<float> buf(n + 10, -7.f);  // the slot starts at 5, 5 untouched after it
        emu_launch(grid, 1, 256, [&] { cast_into<T>(buf.data() + 5, x.data(), n); });
        return buf;
    };
    std::vector<float> want(n + 10, -7.f);
    for (size_t i = 0; i < n; ++i) want[5 + i] = float(x[i]);
    char what[96];
    std::snprintf(what, sizeof what, "%s dst = x in a slot, %zu: exact, nothing outside", name<T>(),
                  n);
    report_same(what, same_bits(run(grid_1d(n, 256)), want) && same_bits(run(2), want));
}

}  // namespace small_test

int main() {
    using namespace small_test;
    std::mt19937 gen(7);
    std::printf("RMSNorm\n");
    for (auto [rows, hidden] : {std::pair{5, 1000}, {300, 200}, {3, 64}}) {
        rms_norm_case<float>(rows, hidden, gen);
        rms_norm_case<__nv_bfloat16>(rows, hidden, gen);
    }
    std::printf("cross-entropy\n");
    for (int vocab : {1000, 1537}) {
        xent_case<float>(6, vocab, gen);
        xent_case<__nv_bfloat16>(6, vocab, gen);
    }
    std::printf("RoPE\n");
    for (auto [tokens, heads, d] : {std::tuple{9, 3, 64}, {5, 2, 128}, {3, 1, 8}}) {
        rope_case<float>(tokens, heads, d, gen);
        rope_case<__nv_bfloat16>(tokens, heads, d, gen);
    }
    std::printf("bias + RoPE + KV-cache append\n");
    for (auto [n, hq, hkv, d] : {std::tuple{5, 12, 2, 128}, {3, 4, 4, 64}, {1, 6, 1, 8}}) {
        qkv_append_case<float>(n, hq, hkv, d, 4, 9, gen);
        qkv_append_case<__nv_bfloat16>(n, hq, hkv, d, 4, 9, gen);
    }
    std::printf("SwiGLU\n");
    swiglu_case<float>(1037, gen);
    swiglu_case<__nv_bfloat16>(1037, gen);
    std::printf("AdamW\n");
    adamw_cases(1003, gen);
    std::printf("embedding gradient\n");
    // A frequent token (tokens / 2 draws from 49 rows) takes the 8-token batches and the rest;
    // hidden 30 is the V = 1 kernel's case (not a multiple of 4).
    for (bool with_base : {false, true}) {
        embedding_case<float, 4>(500, 97, 300, with_base, gen);
        embedding_case<__nv_bfloat16, 4>(500, 97, 300, with_base, gen);
        embedding_case<float, 1>(500, 97, 30, with_base, gen);
        embedding_case<__nv_bfloat16, 1>(500, 97, 30, with_base, gen);
    }
    std::printf("sum of squares\n");
    for (auto [n, parts] : {std::pair<size_t, unsigned>{100003, 8}, {5, 7}, {70000, 1}}) {
        sum_squares_case<float>(n, parts, gen);
        sum_squares_case<__nv_bfloat16>(n, parts, gen);
    }
    std::printf("acc += x\n");
    add_into_case<float>(1037, gen);
    add_into_case<__nv_bfloat16>(1037, gen);
    std::printf("dst = x\n");
    cast_into_case<float>(1037, gen);
    cast_into_case<__nv_bfloat16>(1037, gen);
    std::printf(all_ok ? "all checks passed\n" : "FAILED\n");
    return all_ok ? 0 : 1;
}
