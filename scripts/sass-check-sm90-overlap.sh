#!/usr/bin/env bash
# Checks, in the SASS of the Hopper flash-attention kernels, that the intra-warpgroup overlaps
# survived ptxas (docs/CUDA.md, "SASS overlap check" and the backward's "SASS overlap check").
#
# Forward (kernels/flash_attention_sm90.cu; every function not named flash_bwd_*): in every
# `WARPGROUP.DEPBAR.LE gsb0, 0x1` .. `WARPGROUP.DEPBAR.LE gsb0, 0x0` window (wgmma.wait_group 1 ..
# wait_group 0 of a main-loop step: S(j+1) retired, P V(j) still on the tensor cores) the
# softmax of S(j+1) must be there: its exp2 (MUFU.EX2) and its row-max shuffles (SHFL). Prints,
# per kernel function, one line per window with the counts of MUFU.EX2 / SHFL / F2FP (bf16
# packs) / FMNMX inside it, and the kernel's MUFU.EX2 total. A function fails if it has no such
# window or a window without MUFU.EX2.
#
# Backward (kernels/flash_attention_bwd_sm90.cu, functions flash_bwd_*), in SASS order, with the
# wgmma chains told apart by their operands: SS = `HGMMA ... Rd, gdesc[..]` without tnsp (S^T =
# K Q^T and dP^T = V dO^T), RS = `Rd, Ra, gdesc[..].tnspB` (dV += P^T dO, dK += dS^T Q), dQ =
# `gdesc[..].tnspA.tnspB`. A window opens at the last HGMMA of an SS chain (the one carrying
# gsb0, the commit) and closes at the next `WARPGROUP.DEPBAR.LE`:
#   - closed by `gsb0, 0x1`: a dP^T window (dP^T in flight). P^T = exp2(..) must be computed
#     there: every MUFU.EX2 of the function (all are P^T's) must lie in one, and each must also
#     issue the dV chain (RS HGMMA) before its wait_group 1;
#   - then `gsb0, 0x1` .. the next `gsb0, 0x0`: a dS^T window (dV in flight): dS^T = P^T (dP^T -
#     delta) must be computed (FADD) and stored for dQ (STS) there;
#   - closed by `gsb0, 0x0`: an S^T window (S^T of the next iteration in flight, or the
#     prologue's S^T(0), which has no dQ): the dq_accum update is a TMA reduce-add
#     (cp.reduce.async.bulk.tensor = `UTMAREDG.3D.ADD`, its commit_group `UTMACMDFLUSH`, its
#     wait_group.read N `DEPBAR.LE SB0, N`), issued there so that it runs under the next S^T and
#     the next iteration: at least half the function's UTMAREDG (the peeled last iteration has
#     no next S^T) must lie in S^T windows; no per-thread fp32 atomic (`REDG`) may be left; and
#     no `DEPBAR.LE SB0, 0x0` (a full drain of the reductions) may come before the function's
#     last UTMAREDG (the loop waits with N = 1, for the reduce of two iterations back only).
# Prints per function one line per window and PASS or FAIL lines.
#
# Usage: scripts/sass-check-sm90-overlap.sh [file.cubin | file.sass]...
#   no argument: compiles kernels/flash_attention_sm90.cu and kernels/flash_attention_bwd_sm90.cu
#   with build.rs's flags (-cubin -O3 -std=c++17 -lineinfo -arch=sm_90a) into a temporary
#   directory and checks both. Exit 1 if any function fails.
# Needs nvcc 13 and cuobjdump: scripts/setup-cuda.sh installs both (source its env.sh), as CI
# does before running this; else $CUOBJDUMP, or the nvidia-cuda-cuobjdump wheel unpacked under
# /tmp/cuobj. No GPU needed (~4 s).
set -euo pipefail
cd "$(dirname "$0")/.."

find_cuobjdump() {
    if [[ -n "${CUOBJDUMP:-}" ]]; then echo "$CUOBJDUMP"; return; fi
    if command -v cuobjdump >/dev/null 2>&1; then command -v cuobjdump; return; fi
    local c
    for c in "${CUDA_HOME:-/nonexistent}"/bin/cuobjdump /tmp/cuobj/x/nvidia/cu13/bin/cuobjdump \
             /tmp/cuobj/nvidia/cu13/bin/cuobjdump; do
        [[ -x "$c" ]] && { echo "$c"; return; }
    done
    echo "sass-check: no cuobjdump (set CUOBJDUMP, see the header)" >&2
    exit 2
}

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
inputs=("$@")
if [[ ${#inputs[@]} -eq 0 ]]; then
    for k in flash_attention_sm90 flash_attention_bwd_sm90; do
        nvcc -cubin -O3 -std=c++17 -lineinfo -arch=sm_90a -Ikernels "kernels/$k.cu" -o "$dir/$k.cubin"
        inputs+=("$dir/$k.cubin")
    done
fi
sass=$dir/all.sass
: >"$sass"
for input in "${inputs[@]}"; do
    case "$input" in
    *.sass | *.txt) cat "$input" >>"$sass" ;;
    *) "$(find_cuobjdump)" -sass "$input" >>"$sass" ;;
    esac
done
# Each function goes to the rule its name calls for (the forward's: all but flash_bwd_*).
awk '/Function :/ { keep = ($3 !~ /^flash_bwd_/) } keep' "$sass" >"$dir/fwd.sass"
awk '/Function :/ { keep = ($3 ~ /^flash_bwd_/) } keep' "$sass" >"$dir/bwd.sass"
if ! grep -q "Function :" "$sass"; then
    echo "sass-check: no kernel function in the input" >&2
    exit 2
fi

status=0
awk '
function flush() {
    if (fn == "") return
    printf "%s: %d wait1..wait0 window(s), %d MUFU.EX2 in the function\n%s", fn, nwin, ex2_all, lines
    if (nwin == 0) { print "  FAIL: no DEPBAR.LE gsb0, 0x1 followed by DEPBAR.LE gsb0, 0x0"; bad = 1 }
}
/Function :/ { flush(); fn = $3; nwin = 0; ex2_all = 0; inwin = 0; lines = ""; next }
/MUFU\.EX2/ { ex2_all++ }
/WARPGROUP\.DEPBAR\.LE gsb0, 0x1/ { inwin = 1; ex2 = 0; shfl = 0; f2fp = 0; mnmx = 0; n = 0; next }
/WARPGROUP\.DEPBAR\.LE gsb0, 0x0/ {
    if (inwin) {
        nwin++
        lines = lines sprintf("  window %d: %4d instructions, MUFU.EX2 %3d, SHFL %2d, F2FP %3d, FMNMX %3d%s\n",
               nwin, n, ex2, shfl, f2fp, mnmx, ex2 ? "" : "   <- softmax NOT overlapped")
        if (!ex2) bad = 1
    }
    inwin = 0; next
}
inwin && /^[ \t]+\/\*[0-9a-f]+\*\/[ \t]+[@A-Z]/ { n++ }
inwin && /MUFU\.EX2/ { ex2++ }
inwin && /SHFL\./ { shfl++ }
inwin && /F2FP\./ { f2fp++ }
inwin && /FMNMX/ { mnmx++ }
END { flush(); exit bad }
' "$dir/fwd.sass" || status=1

awk '
function reset() { n = 0; ex2 = 0; rs = 0; red = 0; fadd = 0; fmul = 0; f2fp = 0; sts = 0; bar = 0; dq = 0; flushc = 0 }
function flush(   ok) {
    if (fn == "") return
    printf "%s: %d MUFU.EX2, %d UTMAREDG, %d REDG in the function\n%s", fn, ex2_all, red_all, redg_all, lines
    ok = 1
    if (hg_all && hg_gsb == hg_all) {
        printf "  FAIL: all %d HGMMA carry gsb0: ptxas serialised the wgmmas (its remark C7514)\n", hg_all
        ok = 0
    }
    if (ndp == 0) { print "  FAIL: no dP^T window (an SS chain closed by DEPBAR.LE gsb0, 0x1)"; ok = 0 }
    if (ex2_all == 0 || ex2_dp < ex2_all) {
        printf "  FAIL: %d of %d MUFU.EX2 outside the dP^T windows: P^T not computed while dP^T runs\n", ex2_all - ex2_dp, ex2_all
        ok = 0
    }
    if (dp_bad) { print "  FAIL: a dP^T window without MUFU.EX2 or without the dV issue"; ok = 0 }
    if (nds == 0 || ds_bad) { print "  FAIL: no dS^T window, or one without its FADD / STS: dS^T not computed while dV runs"; ok = 0 }
    if (red_all == 0 || 2 * red_s < red_all) {
        printf "  FAIL: %d of %d UTMAREDG in S^T windows: the dQ TMA reduce-add is missing or does not overlap the next S^T\n", red_s, red_all
        ok = 0
    }
    if (redg_all) {
        printf "  FAIL: %d REDG: per-thread fp32 atomics into dq_accum are back\n", redg_all
        ok = 0
    }
    if (drain_early) {
        printf "  FAIL: a DEPBAR.LE SB0, 0x0 (wait_group.read 0) before the last UTMAREDG: the reductions are drained inside the loop\n"
        ok = 0
    }
    print ok ? "  PASS" : "  FAIL"
    if (!ok) bad = 1
}
/Function :/ { flush(); fn = $3; ex2_all = 0; red_all = 0; redg_all = 0; ndp = 0; nds = 0; nst = 0; ex2_dp = 0; red_s = 0
               dp_bad = 0; ds_bad = 0; hg_all = 0; hg_gsb = 0; drained_at = -1; drain_early = 0; win = ""; lines = ""; next }
/^[ \t]+\/\*[0-9a-f]+\*\/[ \t]+[@A-Z]/ { n++ }
/MUFU\.EX2/ { ex2_all++; ex2++ }
/UTMAREDG/ { red_all++; red++; if (drained_at >= 0) drain_early = 1 }
/UTMACMDFLUSH/ { flushc++ }
/[ \t]REDG/ { redg_all++ }
/[ \t]DEPBAR\.LE SB0, 0x0/ { drained_at = red_all }
/HGMMA/ { hg_all++; if (/gsb0/) hg_gsb++ }
/HGMMA/ && /tnspA/ { dq++; next }
/HGMMA/ && /tnspB/ { rs++; next }
/HGMMA/ && /gsb0/ { win = "ss"; reset(); next }
/WARPGROUP\.DEPBAR\.LE gsb0, 0x1/ {
    if (win == "ss") {
        ndp++; ex2_dp += ex2
        lines = lines sprintf("  dP^T window %d: %4d instructions, MUFU.EX2 %2d, dV HGMMA %d%s\n", ndp, n, ex2, rs,
                              ex2 && rs ? "" : "   <- NOT overlapped")
        if (!ex2 || !rs) dp_bad = 1
    }
    win = "ds"; reset(); next
}
/WARPGROUP\.DEPBAR\.LE gsb0, 0x0/ {
    if (win == "ds") {
        nds++
        lines = lines sprintf("  dS^T window %d: %4d instructions, FADD %2d, FMUL %2d, F2FP %2d, STS %2d, BAR.SYNC %d, dK HGMMA %d, dQ HGMMA %d%s\n",
                              nds, n, fadd, fmul, f2fp, sts, bar, rs, dq, fadd && sts ? "" : "   <- NOT overlapped")
        if (!fadd || !sts) ds_bad = 1
    } else if (win == "ss") {
        nst++; red_s += red
        lines = lines sprintf("  S^T window %d: %4d instructions, UTMAREDG %d, UTMACMDFLUSH %d, STS %2d, BAR.SYNC %d\n",
                              nst, n, red, flushc, sts, bar)
    }
    win = ""; reset(); next
}
/WARPGROUP\.DEPBAR/ { win = ""; reset(); next }
/FADD/ { fadd++ }
/FMUL/ { fmul++ }
/F2FP\./ { f2fp++ }
/ STS[ .]/ { sts++ }
/BAR\.SYNC/ { bar++ }
END { flush(); exit bad }
' "$dir/bwd.sass" || status=1
exit $status
