#!/usr/bin/env bash
# Runs kernels/flash_attention.cu's kernels on the CPU emulation (kernels/flash_attention_emulate.cuh:
# a std::thread per CUDA thread, mma.sync rebuilt from the PTX fragment layouts) against a float64
# reference of the attention contract. Needs only g++ (C++20). Exit 1 on any error over tolerance.
# It checks the kernels' logic (tiling, masks, online softmax, backward, determinism), not the
# GPU: races, PTX JIT and real numerics are `limo doctor`'s job on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)/flash_emulate
g++ -std=c++20 -O2 -fno-strict-aliasing -Wno-unknown-pragmas -x c++ -DLIMO_FLASH_EMULATE \
    -Ikernels kernels/flash_attention.cu -o "$bin" -lpthread
"$bin"
