#!/usr/bin/env bash
# On the GPU machine: every CUDA kernel against the CPU reference (limo doctor), the table on
# stdout, exit status non-zero on any failure. Extra arguments go to `limo doctor`
# (e.g. --quick to skip the 16k-token shapes, --seed N to replay a run).
set -euo pipefail
# shellcheck disable=SC1091
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec "$LIMO_BIN" doctor "$@"
