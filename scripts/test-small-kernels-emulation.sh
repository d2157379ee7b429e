#!/usr/bin/env bash
# Runs the small kernels (kernels/rms_norm.cu, cross_entropy.cu, rope.cu, swiglu.cu, adamw.cu,
# embedding.cu, sum_squares.cu, accumulate.cu) on the CPU emulation of CUDA
# (kernels/small_kernels_emulate.cuh, built on flash_attention_emulate.cuh: a std::thread per CUDA
# thread) with their Rust wrappers' launch shapes, against float64 references of each contract
# and, for AdamW, the embedding gradient and the in-place accumulation, bit for bit against the
# CPU's operation order. Needs only g++ (C++20); well under a minute. Exit 1 on any failed check.
# It checks the kernels' logic (indexing, block reductions, grid-stride loops, aliasing), not the
# GPU: the device's expf/logf and PTX JIT are `limo doctor`'s job on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# -ffp-contract=off: the _rn intrinsics (AdamW) are separate IEEE operations, never an FMA.
g++ -std=c++20 -O2 -ffp-contract=off -fno-strict-aliasing -Wno-unknown-pragmas -x c++ \
    -DLIMO_SMALL_EMULATE -Ikernels kernels/small_kernels_emulate_test.cuh \
    -o "$dir/small_emulate" -lpthread
"$dir/small_emulate"
