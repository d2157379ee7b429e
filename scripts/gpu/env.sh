# Sourced by doctor.sh and bench.sh on the GPU machine: finds the carried `limo` binary and the
# CUDA 13 libraries of the local torch install (the machine has no CUDA toolkit and no Rust).
# libcuda.so.1 comes from the NVIDIA driver; never put the development machine's stub first.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LIMO_BIN=${LIMO_BIN:-$repo/target/gpu/limo}
if [ ! -x "$LIMO_BIN" ]; then
    echo "no limo binary at $LIMO_BIN: run scripts/gpu/package.sh on the development machine" \
        "and carry target/gpu (or set LIMO_BIN)" >&2
    exit 1
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
    exit 1
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
