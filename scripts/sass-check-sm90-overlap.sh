#!/usr/bin/env bash
# Checks, in the SASS of the Hopper forward (kernels/flash_attention_sm90.cu), that the
# intra-warpgroup overlap survived ptxas: in every `WARPGROUP.DEPBAR.LE gsb0, 0x1` ..
# `WARPGROUP.DEPBAR.LE gsb0, 0x0` window (wgmma.wait_group 1 .. wait_group 0 of a main-loop
# step: S(j+1) retired, P V(j) still on the tensor cores) the softmax of S(j+1) must be there:
# its exp2 (MUFU.EX2) and its row-max shuffles (SHFL). Prints, per kernel function, one line per
# window with the counts of MUFU.EX2 / SHFL / F2FP (bf16 packs) / FMNMX inside it, and the
# kernel's MUFU.EX2 total. Exit 1 if a function has no such window or a window without MUFU.EX2.
#
# Usage: scripts/sass-check-sm90-overlap.sh [file.cubin | file.sass]
#   no argument: compiles kernels/flash_attention_sm90.cu with build.rs's flags (-cubin -O3
#   -std=c++17 -lineinfo -arch=sm_90a) into a temporary directory and checks that.
# Needs nvcc 13 and cuobjdump: scripts/setup-cuda.sh installs both (source its env.sh), as CI
# does before running this; else $CUOBJDUMP, or the nvidia-cuda-cuobjdump wheel unpacked under
# /tmp/cuobj. No GPU needed (~2 s).
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
input=${1:-}
if [[ -z "$input" ]]; then
    nvcc -cubin -O3 -std=c++17 -lineinfo -arch=sm_90a -Ikernels kernels/flash_attention_sm90.cu \
        -o "$dir/fa.cubin"
    input=$dir/fa.cubin
fi
case "$input" in
*.sass | *.txt) sass=$input ;;
*) sass=$dir/fa.sass; "$(find_cuobjdump)" -sass "$input" >"$sass" ;;
esac

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
' "$sass"
