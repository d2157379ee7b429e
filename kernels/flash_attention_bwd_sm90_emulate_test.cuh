// Checks of flash_attention_bwd_sm90.cu on the CPU emulation (flash_attention_sm90_emulate.cuh):
//   1. the emulation feature only the backward uses: wgmma m64n64k16 with A from shared memory
//      MN-major (imm-trans-a; the dS operand of dQ = dS K) and B N-major, against the layout
//      written out from TMA's 128-byte swizzle (element (k, m) of A at emu_swz128(k, m) of a
//      [16][64] block, (k, n) of B likewise) and the accumulator fragment layout;
//   2. the kernel against a float64 backward of the attention contract on packed documents
//      (a one-token document, documents that end inside a 64-row query block and inside a
//      128-key tile, a sequence length that is no multiple of either, long enough documents
//      that the Q/dO ring and the dS double buffer are reused with both mbarrier parities),
//      GQA 5:1, 6:1, 4:1, 3:1 and 1:1 (the group loop; a CTA with a single iteration), head_dim
//      64 and 128: dQ (from the fp32 accumulator the kernel's TMA reduce-adds go into, through
//      an f32 tensor map with {32, 1, 64} boxes and the 128-byte swizzle; N no multiple of 64,
//      so boxes run past N), dK, dV by relative L2; dK and dV pre-filled with NaN so an
//      unwritten element fails; and no race flagged (a dQ staging buffer written while its
//      reduce is pending is one).
// Inputs are bf16-exact; lse and delta are the float64 reference's (rounded to f32), so the
// error measured is the kernel's own (bf16 P and dS operands, fp32 accumulation, bf16 dK/dV).
// Build: as flash_attention_sm90_emulate.cuh says, with kernels/flash_attention_bwd_sm90.cu.
// Exit 1 on any failure.
#pragma once

#include "emulate_check.cuh"

#include <chrono>
#include <random>

namespace emu90_bwd_test {

// The sizes the Rust wrapper asks for (smem_bytes in crates/limo-ops/src/cuda/
// flash_attention_bwd_sm90.rs, which asserts the same numbers).
static_assert(limo_flash_sm90::BwdSmem<128>::bytes == 231464, "wrapper's shared memory, D=128");
static_assert(limo_flash_sm90::BwdSmem<64>::bytes == 165928, "wrapper's shared memory, D=64");

bool check_trans_a() {
    std::mt19937 gen(5);
    auto a = emu_rnd_bf16(16 * 64, gen, 1.f), b = emu_rnd_bf16(16 * 64, gen, 1.f);  // A [k][m], B [k][n]
    std::vector<float> got(128 * 32);
    emu90_launch(1, 1, 128, [&] {
        unsigned char* smem = limo_flash_sm90::smem_raw;
        unsigned char* base = smem + ((1024 - (emu_smem_u32(smem) & 1023)) & 1023);
        if (threadIdx.x == 0) {
            // Keys 16..31 of a [128][64] block (the second k-step of the dS buffer).
            for (int k = 0; k < 16; ++k)
                for (int m = 0; m < 64; ++m) {
                    const uint16_t x = emu_bf16_bits(a[k * 64 + m]), y = emu_bf16_bits(b[k * 64 + m]);
                    std::memcpy(base + emu_swz128(16 + k, m), &x, 2);
                    std::memcpy(base + 0x4000 + emu_swz128(16 + k, m), &y, 2);
                }
        }
        __syncthreads();
        auto desc = [](uint32_t addr, uint32_t lbo, uint32_t sbo) {
            return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) |
                   (uint64_t((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);
        };
        const uint32_t sa = emu_smem_u32(base) + 2048, sb = emu_smem_u32(base + 0x4000) + 2048;
        float d[32];
        emulated_wgmma_fence();
        emulated_wgmma<64>(d, desc(sa, 8192, 1024), nullptr, desc(sb, 16384, 1024), 0, true, true);
        emulated_wgmma_commit();
        emulated_wgmma_wait(0);
        for (int j = 0; j < 32; ++j) got[threadIdx.x * 32 + j] = d[j];
    });
    double err = 0;
    for (int tid = 0; tid < 128; ++tid) {
        const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
        for (int j = 0; j < 32; ++j) {
            const int m = 16 * w + g + 8 * ((j / 2) % 2), nn = 8 * (j / 4) + 2 * t + (j % 2);
            double want = 0;
            for (int k = 0; k < 16; ++k) want += double(a[k * 64 + m]) * b[k * 64 + nn];
            err = std::max(err, std::abs(got[tid * 32 + j] - want));
        }
    }
    const bool ok = err < 1e-4;
    std::printf("wgmma m64n64k16 SS, A MN-major (imm-trans-a) and B N-major: max err %.1e %s\n", err,
                ok ? "ok" : "FAIL");
    return ok;
}

struct Case {
    std::vector<int> cu;
    int hq, hkv, d;
};

// The float64 backward (emulate_check.cuh): lse and delta from the exact O go to the kernel.
EmuAttention reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                       const std::vector<float>& v, const std::vector<float>& dout, double scale) {
    return emu_attention_reference(c.cu, c.hq, c.hkv, c.d, q, k, v, dout, scale);
}

bool run_case(const Case& c, uint64_t seed) {
    const int n = c.cu.back(), hq = c.hq, hkv = c.hkv, d = c.d;
    const float scale = 1.f / std::sqrt(float(d));
    std::mt19937 gen(seed);
    auto qf = emu_rnd_bf16(size_t(n) * hq * d, gen, 1.f), kf = emu_rnd_bf16(size_t(n) * hkv * d, gen, 1.f);
    auto vf = emu_rnd_bf16(size_t(n) * hkv * d, gen, 1.f), dof = emu_rnd_bf16(size_t(n) * hq * d, gen, 1.f);
    const EmuAttention ref = reference(c, qf, kf, vf, dof, scale);
    const auto q = to_t<__nv_bfloat16>(qf), k = to_t<__nv_bfloat16>(kf);
    const auto v = to_t<__nv_bfloat16>(vf), dout = to_t<__nv_bfloat16>(dof);
    std::vector<float> lse(ref.lse.begin(), ref.lse.end()), delta(ref.delta.begin(), ref.delta.end());
    std::vector<__nv_bfloat16> dk(k.size(), __nv_bfloat16{0xffff}), dv(v.size(), __nv_bfloat16{0xffff});
    std::vector<float> dq(q.size(), 0.f);  // the host zeroes dq_accum
    const CUtensorMap tq = emu_tensor_map(q, n, hq, d, 64);
    const CUtensorMap tdo = emu_tensor_map(dout, n, hq, d, 64);
    const CUtensorMap tk = emu_tensor_map(k, n, hkv, d, 128);
    const CUtensorMap tv = emu_tensor_map(v, n, hkv, d, 128);
    const CUtensorMap tdq = emu_tensor_map_f32(dq, n, hq, d, 64);
    const auto kt = tiles(c.cu, true, kBwdKeys);
    emu90_launch(unsigned(kt.size() / 3), hkv, 384, [&] {
        if (d == 64)
            flash_bwd_sm90_bf16_hd64(tq, tk, tv, tdo, tdq, lse.data(), delta.data(), dk.data(),
                                     dv.data(), kt.data(), n, hq, hkv, scale);
        else
            flash_bwd_sm90_bf16_hd128(tq, tk, tv, tdo, tdq, lse.data(), delta.data(), dk.data(),
                                      dv.data(), kt.data(), n, hq, hkv, scale);
    });
    auto to_f = [](const std::vector<__nv_bfloat16>& x) { return std::vector<float>(x.begin(), x.end()); };
    const double eq = rel_l2(dq, ref.dq), ek = rel_l2(to_f(dk), ref.dk), ev = rel_l2(to_f(dv), ref.dv);
    // dQ is fp32 from bf16 dS; dK and dV are also rounded to bf16 at the end.
    const double tol_q = 3e-3, tol_kv = 4e-3;
    const bool ok = eq <= tol_q && ek <= tol_kv && ev <= tol_kv;
    std::printf("  dq rel_l2 %.3e (tol %.0e), dk %.3e, dv %.3e (tol %.0e) %s\n", eq, tol_q, ek, ev,
                tol_kv, ok ? "ok" : "FAIL");
    return ok;
}

}  // namespace emu90_bwd_test

int main() {
    using namespace emu90_bwd_test;
    const auto start = std::chrono::steady_clock::now();
    bool ok = check_trans_a();
    const std::vector<Case> cases = {
        // a one-token document, one of 69 (inside a query block), one of 260 (three key tiles,
        // the last one partial; five query blocks: both ring stages twice), 5:1, hd64; N = 330
        {{0, 1, 70, 330}, 5, 1, 64},
        // hd128, 6:1: a document ending inside a key tile (83) and one of 172 tokens
        {{0, 83, 255}, 6, 1, 128},
        // hd128 3:1 over two kv heads, one document of 300 tokens (N = 300)
        {{0, 300}, 6, 2, 128},
        // no grouping (1:1), hd64: a 40-token document (one iteration per CTA: only the
        // pipeline's last step runs) and one of 150
        {{0, 40, 190}, 2, 2, 64},
        // one document of 900 tokens, 4:1, hd128: up to 60 iterations per CTA (many rounds of
        // both ring stages and of the dS buffers), tiles of 15 down to 1 query blocks
        {{0, 900}, 4, 1, 128},
    };
    return emu90_run_cases(cases, 21, ok, run_case, "sm90 backward", start);
}
