#!/usr/bin/env bash
# Runs kernels/flash_attention.cu's kernels on the CPU emulation (kernels/flash_attention_emulate.cuh:
# a std::thread per CUDA thread, mma.sync and ldmatrix rebuilt from the PTX fragment layouts,
# cp.async deferred to its wait_group with the destination poisoned until then) against a float64
# reference of the attention contract, and requires zero shared-memory bank conflicts; then the
# Hopper forward kernels/flash_attention_sm90.cu and the Hopper backward
# kernels/flash_attention_bwd_sm90.cu on kernels/flash_attention_sm90_emulate.cuh (wgmma with
# matrix descriptors and the 128-byte swizzle, retired at wgmma.wait_group; mbarrier phases and tx
# counts; TMA deferred to the mbarrier wait, destination poisoned until then; named barriers).
# Needs only g++ (C++20); about 2 minutes on 2 cores. Exit 1 on any error over tolerance.
# It checks the kernels' logic (tiling, masks, online softmax, backward, the cp.async waits, the
# sm90 pipelines' barriers), not the GPU: timing-dependent races, PTX JIT and real numerics are
# `limo doctor`'s job on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
flags=(-std=c++20 -O2 -fno-strict-aliasing -Wno-unknown-pragmas -Wno-psabi -x c++ -DLIMO_FLASH_EMULATE -Ikernels)
# Two builds at a time (2 cores), then the runs one after the other.
g++ "${flags[@]}" kernels/flash_attention.cu -o "$dir/flash_emulate" -lpthread &
sm80_build=$!
g++ "${flags[@]}" kernels/flash_attention_sm90.cu -o "$dir/flash_sm90_emulate" -lpthread
g++ "${flags[@]}" kernels/flash_attention_bwd_sm90.cu -o "$dir/flash_bwd_sm90_emulate" -lpthread
wait "$sm80_build"
"$dir/flash_emulate"
echo "--- sm_90a forward (flash_attention_sm90.cu) ---"
"$dir/flash_sm90_emulate"
echo "--- sm_90a backward (flash_attention_bwd_sm90.cu) ---"
"$dir/flash_bwd_sm90_emulate"
