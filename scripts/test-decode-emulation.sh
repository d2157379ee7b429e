#!/usr/bin/env bash
# Runs kernels/decode_attention.cu's kernels (KV-cache append, split-K decode attention and its
# combine) on the CPU emulation of CUDA (kernels/decode_attention_emulate.cuh, built on
# flash_attention_emulate.cuh: a std::thread per CUDA thread) against a float64 reference of the
# contract. Needs only g++ (C++20); well under a minute. Exit 1 on any error over tolerance.
# It checks the kernels' logic (indexing, splits, GQA chunks, softmax merge), not the GPU: races
# and real numerics are `limo doctor`'s job on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
g++ -std=c++20 -O2 -fno-strict-aliasing -Wno-unknown-pragmas -x c++ -DLIMO_DECODE_EMULATE \
    -Ikernels kernels/decode_attention.cu -o "$dir/decode_emulate" -lpthread
"$dir/decode_emulate"
