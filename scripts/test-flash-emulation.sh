#!/usr/bin/env bash
# Runs kernels/flash_attention.cu's kernels on the CPU emulation (kernels/flash_attention_emulate.cuh:
# a std::thread per CUDA thread, mma.sync and ldmatrix rebuilt from the PTX fragment layouts,
# cp.async deferred to its wait_group with the destination poisoned until then) against a float64
# reference of the attention contract, and requires zero shared-memory bank conflicts. Needs only
# g++ (C++20); about 1.5 minutes on 2 cores. Exit 1 on any error over tolerance.
# It checks the kernels' logic (tiling, masks, online softmax, backward, the cp.async waits), not
# the GPU: timing-dependent races, PTX JIT and real numerics are `limo doctor`'s job on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)/flash_emulate
g++ -std=c++20 -O2 -fno-strict-aliasing -Wno-unknown-pragmas -x c++ -DLIMO_FLASH_EMULATE \
    -Ikernels kernels/flash_attention.cu -o "$bin" -lpthread
"$bin"
