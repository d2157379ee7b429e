#!/usr/bin/env bash
# On the development machine: builds the CUDA flavour of `limo` and puts a stripped copy in
# target/gpu/limo, the path doctor.sh and bench.sh expect. Carry `target/gpu` to the GPU machine
# (its tree travels at most 64 MiB; the stripped binary is well under that).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup-cuda.sh >/dev/null
# shellcheck disable=SC1091
source "${LIMO_CUDA_DIR:-$HOME/.cache/limo-cuda}/env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/cuda-target}
cargo build --release --features cuda -p limo-cli
mkdir -p target/gpu
strip -o target/gpu/limo "$CARGO_TARGET_DIR/release/limo"
ls -l target/gpu/limo
