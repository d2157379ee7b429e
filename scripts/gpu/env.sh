# shellcheck shell=bash
# Sourced by check.sh, doctor.sh and bench.sh on the GPU machine: finds the carried `limo` binary
# (unpacking target/gpu/limo.xz if package.sh shipped it compressed), exported as LIMO_BIN, and
# the CUDA 13
# libraries of the local torch install (the machine has no CUDA toolkit and no Rust).
# libcuda.so.1 comes from the NVIDIA driver; never put the development machine's stub first.
# On failure it says why on stderr and returns 1 (a sourcing script decides what to do).

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# package.sh ships target/gpu/limo, or target/gpu/limo.xz when the binary must be compressed to
# fit the call. The GPU machine may have no xz, so python's lzma unpacks it, outside the carried
# folder (an unpacked copy there would be carried back next time, over the size limit), into
# /tmp/limo-bin-<crc>-<size>/limo: once per distinct archive.
if [ -z "${LIMO_BIN:-}" ]; then
    if [ -f "$repo/target/gpu/limo.xz" ]; then
        sum=$(cksum <"$repo/target/gpu/limo.xz" | tr ' ' '-')
        LIMO_BIN=${TMPDIR:-/tmp}/limo-bin-$sum/limo
        if [ ! -x "$LIMO_BIN" ]; then
            mkdir -p "$(dirname "$LIMO_BIN")"
            if ! python3 - "$repo/target/gpu/limo.xz" "$LIMO_BIN" <<'PY'
import lzma, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
tmp = dst + ".part"
with lzma.open(src) as fin, open(tmp, "wb") as fout:
    shutil.copyfileobj(fin, fout, 1 << 22)
os.chmod(tmp, 0o755)
os.replace(tmp, dst)
PY
            then
                echo "could not unpack $repo/target/gpu/limo.xz into $LIMO_BIN" >&2
                return 1
            fi
        fi
    else
        LIMO_BIN=$repo/target/gpu/limo
    fi
fi
export LIMO_BIN
if [ ! -x "$LIMO_BIN" ]; then
    echo "no limo binary at $LIMO_BIN: run scripts/gpu/package.sh on the development machine" \
        "and carry target/gpu (or set LIMO_BIN)" >&2
    return 1
fi

# cuBLAS, cuRAND, cudart, NVRTC and NCCL 13 from the nvidia-* wheels next to torch.
libs=$(python3 - <<'PY'
import os, sys
dirs = []
for entry in sys.path:
    base = os.path.join(entry, "nvidia")
    if os.path.isdir(base):
        for root, _subdirs, files in os.walk(base):
            if os.path.basename(root) == "lib" and any(".so" in f for f in files):
                dirs.append(root)
print(":".join(dirs))
PY
)
if [ -z "$libs" ]; then
    echo "no nvidia-* CUDA libraries found in this python's sys.path (is torch installed?)" >&2
    return 1
fi
case ":${LD_LIBRARY_PATH:-}:" in
    *":$libs:"*) ;;
    *) export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
esac
# The driver JIT-compiles candle's own kernels (PTX) on first use and caches the result
# (`limo debug warm-jit` compiles them all at once); a generous cache in a folder surely
# writable (not ~/.nv, which a sandbox may refuse: every process would compile them again)
# keeps every module compiled once per machine.
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-${TMPDIR:-/tmp}/limo-cuda-cache}
mkdir -p "$CUDA_CACHE_PATH" 2>/dev/null || true
