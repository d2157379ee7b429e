// Checks of flash_attention_sm90.cu on the CPU emulation (flash_attention_sm90_emulate.cuh):
//   1. the emulated primitives against layouts written out independently from the PTX ISA's
//      and cuda.h's descriptions: TMA's 128-byte swizzle (16-byte chunk c of box row r at chunk
//      c ^ (r % 8) of a 128-byte row; out-of-bound rows zero; the box poisoned until the
//      mbarrier's wait), mbarrier phases (a fresh barrier passes a wait for parity 1, not 0),
//      wgmma m64n128k16 with both operands from shared memory (K-major, 128B swizzle, a k-step
//      inside the swizzle atom: start address + 32 bytes) and m64n128k16 / m64n64k16 with A from
//      registers and B N-major (imm-trans-b, two 64-column blocks through LBO), against the
//      accumulator fragment layout d[j] = D[16w + g + 8((j/2)%2)][8(j/4) + 2t + (j%2)];
//   2. the forward kernel against a float64 reference of the attention contract on packed
//      documents (one-token, partial 128-row tiles, documents of up to eight kv tiles so that
//      every ring stage is reused with both mbarrier parities and every path of the consumer's
//      unrolled pipeline runs), GQA 5:1, 6:1 and 4:1, head_dim 64 and 128; outputs pre-filled
//      with NaN, so an unwritten element fails; and no race flagged.
// Build and run: see flash_attention_sm90_emulate.cuh. Exit 1 on any failure.
#pragma once

#include "emulate_check.cuh"

#include <algorithm>
#include <array>
#include <chrono>
#include <random>
#include <string>

namespace emu90_test {

using limo_flash_sm90::kBlockM;

bool check_primitives() {
    bool ok = true;
    std::mt19937 gen(7);
    // TMA: a [200 rows][2 heads][64] bf16 tensor, box {64, 1, 128} at rows 100.. of head 1:
    // rows 200..227 are out of bounds.
    const int rows = 200;
    std::vector<__nv_bfloat16> glob(size_t(rows) * 2 * 64);
    for (size_t i = 0; i < glob.size(); ++i) glob[i] = __float2bfloat16_rn(float(int(i % 251) - 125));
    alignas(64) CUtensorMap map;
    const cuuint64_t dim[3] = {64, 2, uint64_t(rows)}, str[2] = {128, 256};
    const cuuint32_t box[3] = {64, 1, 128}, es[3] = {1, 1, 1};
    ok = ok && cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, glob.data(), dim,
                                      str, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
    bool tma_ok = true, poisoned = true, parity_ok = true;
    // wgmma operands: A 64x16 (k-step 1 of a [64][64] Q-like block), B^T 128x16 (k-step 1 of a
    // [128][64] K-like block), V [16 keys][128] (keys 80..95 of a [128][128] V-like tile in two
    // 64-column blocks).
    auto a = emu_rnd_bf16(64 * 16, gen, 1.f), bt = emu_rnd_bf16(128 * 16, gen, 1.f), v = emu_rnd_bf16(16 * 128, gen, 1.f);
    std::vector<float> got_ss(128 * 64), got_rs(128 * 64), got_rs64(128 * 32);
    emu90_launch(1, 1, 128, [&] {
        unsigned char* smem = limo_flash_sm90::smem_raw;
        const uint32_t s0 = emu_smem_u32(smem);
        unsigned char* base = smem + ((1024 - (s0 & 1023)) & 1023);  // 1024-aligned
        uint64_t* bar = reinterpret_cast<uint64_t*>(base + 0x1f000);
        const unsigned tid = threadIdx.x;
        if (tid == 0) {
            emulated_mbar_init(bar, 1);
            emulated_mbar_wait(bar, 1);  // the "preceding phase" of a fresh barrier: passes
            emulated_mbar_arrive(bar, 128 * 128);
            emulated_tma_load_3d(base, &map, 0, 1, 100, bar);
            uint16_t first;
            std::memcpy(&first, base, 2);
            poisoned = first == 0xffff;  // not landed before the wait
            emulated_mbar_wait(bar, 0);
            for (int r = 0; r < 128; ++r)
                for (int c = 0; c < 64; ++c) {
                    uint16_t x;
                    std::memcpy(&x, base + emu_swz128(r, c), 2);
                    const uint16_t want = 100 + r < rows ? glob[(size_t(100 + r) * 2 + 1) * 64 + c].bits : 0;
                    tma_ok = tma_ok && x == want;
                }
            parity_ok = (emu90_mbars.at(emu_smem_u32(bar)).phase & 1) == 1;
            // Operands for the wgmma checks (plain stores, then the barrier below).
            unsigned char* qa = base + 0x4000;  // [64][64], A at columns 16..31
            unsigned char* kb = base + 0x8000;  // [128][64], B^T at columns 16..31
            unsigned char* vb = base + 0x10000; // two [128][64] blocks, keys 80..95
            for (int r = 0; r < 64; ++r)
                for (int k = 0; k < 16; ++k) {
                    const uint16_t x = emu_bf16_bits(a[r * 16 + k]);
                    std::memcpy(qa + emu_swz128(r, 16 + k), &x, 2);
                }
            for (int r = 0; r < 128; ++r)
                for (int k = 0; k < 16; ++k) {
                    const uint16_t x = emu_bf16_bits(bt[r * 16 + k]);
                    std::memcpy(kb + emu_swz128(r, 16 + k), &x, 2);
                }
            for (int k = 0; k < 16; ++k)
                for (int c = 0; c < 128; ++c) {
                    const uint16_t x = emu_bf16_bits(v[k * 128 + c]);
                    std::memcpy(vb + (c / 64) * 16384 + emu_swz128(80 + k, c % 64), &x, 2);
                }
        }
        __syncthreads();
        const uint32_t qa = emu_smem_u32(base + 0x4000), kb = emu_smem_u32(base + 0x8000);
        const uint32_t vb = emu_smem_u32(base + 0x10000);
        auto desc = [](uint32_t addr, uint32_t lbo, uint32_t sbo) {
            return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) |
                   (uint64_t((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);
        };
        const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
        float d[64], d64[32];
        for (int j = 0; j < 64; ++j) d[j] = 1e30f;  // must be ignored (scale-d 0)
        emulated_wgmma_fence();
        emulated_wgmma<128>(d, desc(qa + 32, 16, 1024), nullptr, desc(kb + 32, 16, 1024), 0, false);
        emulated_wgmma_commit();
        emulated_wgmma_wait(0);
        for (int j = 0; j < 64; ++j) got_ss[tid * 64 + j] = d[j];
        // A from registers in the documented fragment layout.
        uint32_t ar[4];
        for (int x = 0; x < 4; ++x) {
            float e[2];
            for (int h = 0; h < 2; ++h) {
                const int j = 2 * x + h;
                e[h] = a[(16 * w + g + 8 * ((j / 2) % 2)) * 16 + 8 * (j / 4) + 2 * t + (j % 2)];
            }
            ar[x] = uint32_t(emu_bf16_bits(e[0])) | (uint32_t(emu_bf16_bits(e[1])) << 16);
        }
        for (int j = 0; j < 64; ++j) d[j] = 0.f;
        for (int j = 0; j < 32; ++j) d64[j] = 0.5f;
        emulated_wgmma_fence();
        emulated_wgmma<128>(d, 0, ar, desc(vb + 80 * 128, 16384, 1024), 1, true);
        emulated_wgmma<64>(d64, 0, ar, desc(vb + 80 * 128, 16384, 1024), 1, true);
        emulated_wgmma_commit();
        emulated_wgmma_wait(0);
        for (int j = 0; j < 64; ++j) got_rs[tid * 64 + j] = d[j];
        for (int j = 0; j < 32; ++j) got_rs64[tid * 32 + j] = d64[j];
    });
    double err_ss = 0, err_rs = 0;
    for (int tid = 0; tid < 128; ++tid) {
        const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
        for (int j = 0; j < 64; ++j) {
            const int row = 16 * w + g + 8 * ((j / 2) % 2), col = 8 * (j / 4) + 2 * t + (j % 2);
            double ss = 0, rs = 0;
            for (int k = 0; k < 16; ++k) {
                ss += double(a[row * 16 + k]) * bt[col * 16 + k];
                rs += double(a[row * 16 + k]) * v[k * 128 + col];
            }
            err_ss = std::max(err_ss, std::abs(got_ss[tid * 64 + j] - ss));
            err_rs = std::max(err_rs, std::abs(got_rs[tid * 64 + j] - rs));
            if (j < 32) err_rs = std::max(err_rs, std::abs(got_rs64[tid * 32 + j] - (rs + 0.5)));
        }
    }
    const bool wg_ok = err_ss < 1e-4 && err_rs < 1e-4;
    std::printf("TMA 128B swizzle + out-of-bound zero fill: %s; box poisoned until the wait: %s; "
                "mbarrier parity: %s\n",
                tma_ok ? "ok" : "FAIL", poisoned ? "ok" : "FAIL", parity_ok ? "ok" : "FAIL");
    std::printf("wgmma m64n128k16 SS (K-major) max err %.1e, RS (N-major B, n128 and n64) max err "
                "%.1e: %s\n",
                err_ss, err_rs, wg_ok ? "ok" : "FAIL");
    return ok && tma_ok && poisoned && parity_ok && wg_ok;
}

// ---------------------------------------------------------------------------------------------
// The forward against float64.

struct Case {
    std::vector<int> cu;
    int hq, hkv, d;
};

void reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
               const std::vector<float>& v, double scale, std::vector<double>& out,
               std::vector<double>& lse) {
    EmuAttention r = emu_attention_reference(c.cu, c.hq, c.hkv, c.d, q, k, v, {}, scale);
    out = std::move(r.out);
    lse = std::move(r.lse);
}



bool run_case(const Case& c, uint64_t seed) {
    const int n = c.cu.back(), hq = c.hq, hkv = c.hkv, d = c.d;
    const float scale = 1.f / std::sqrt(float(d));
    std::mt19937 gen(seed);
    auto qf = emu_rnd_bf16(size_t(n) * hq * d, gen, 1.f), kf = emu_rnd_bf16(size_t(n) * hkv * d, gen, 1.f);
    auto vf = emu_rnd_bf16(size_t(n) * hkv * d, gen, 1.f);
    std::vector<double> ref_out, ref_lse;
    reference(c, qf, kf, vf, scale, ref_out, ref_lse);
    auto to_bf = [](const std::vector<float>& x) {
        std::vector<__nv_bfloat16> r(x.size());
        for (size_t i = 0; i < x.size(); ++i) r[i] = __float2bfloat16_rn(x[i]);
        return r;
    };
    const auto q = to_bf(qf), k = to_bf(kf), v = to_bf(vf);
    std::vector<__nv_bfloat16> out(q.size(), __nv_bfloat16{0xffff});  // NaN: must be written
    std::vector<float> lse(size_t(hq) * n, NAN);
    const CUtensorMap tq = emu_tensor_map(q, n, hq, d, kBlockM);
    const CUtensorMap tk = emu_tensor_map(k, n, hkv, d, kBlockM);
    const CUtensorMap tv = emu_tensor_map(v, n, hkv, d, kBlockM);
    const auto ft = tiles(c.cu, false, kBlockM);
    emu90_launch(unsigned(ft.size() / 3), hq, 384, [&] {
        if (d == 64) flash_fwd_sm90_bf16_hd64(tq, tk, tv, out.data(), lse.data(), ft.data(), n, hq, hkv, scale);
        else flash_fwd_sm90_bf16_hd128(tq, tk, tv, out.data(), lse.data(), ft.data(), n, hq, hkv, scale);
    });
    const double eo = rel_l2(std::vector<float>(out.begin(), out.end()), ref_out);
    const double el = rel_l2(lse, ref_lse);
    const bool ok = eo <= 5e-3 && el <= 1e-4 && std::isfinite(eo) && std::isfinite(el);
    std::printf("  bf16 out rel_l2 %.3e (tol 5e-03), lse rel_l2 %.3e (tol 1e-04) %s\n", eo, el,
                ok ? "ok" : "FAIL");
    return ok;
}

}  // namespace emu90_test

int main() {
    using namespace emu90_test;
    const auto start = std::chrono::steady_clock::now();
    bool ok = check_primitives();
    const std::vector<Case> cases = {
        // a one-token document, a partial one (69), one of 260 tokens (three 128-row tiles, the
        // last with three kv tiles: all three ring stages), GQA 5:1
        {{0, 1, 70, 330}, 5, 1, 64},
        // hd128, GQA 6:1: exactly one tile, a partial one (83), 300 tokens (three kv tiles)
        {{0, 128, 211, 511}, 6, 1, 128},
        // hd128 without grouping, 150 then 40 tokens; hd64 GQA 6:2
        {{0, 150, 190}, 2, 2, 128},
        {{0, 257, 300}, 6, 2, 64},
        // one document of 900 tokens: tiles with 1 to 8 kv tiles (every unrolled path of the
        // consumer's software pipeline; each of the three ring stages reused in rounds of both
        // mbarrier parities, up to the third round), 4:1
        {{0, 900}, 4, 1, 128},
    };
    return emu90_run_cases(cases, 11, ok, run_case, "sm90", start);
}
