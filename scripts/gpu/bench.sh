#!/usr/bin/env bash
# On the GPU machine: times every CUDA kernel (limo bench kernels). Extra arguments go to the
# command (e.g. --op attention --docs 4, --repeats 50).
set -euo pipefail
# shellcheck disable=SC1091
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
exec "$LIMO_BIN" bench kernels "$@"
