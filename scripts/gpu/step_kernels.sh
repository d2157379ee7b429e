#!/usr/bin/env bash
# On the GPU machine, check.sh's `step-kernels` stage: the duration of every kernel launch of
# one timed training step (`limo bench step --profile-range`: 1.5B at 16k tokens, its first 4
# layers, checkpointing), by Nsight Compute, summed by kernel and by kind (step_kernels.py
# beside this): what the "other" time of the step's phases is made of. Writes
# LOGS/step-kernels.csv (ncu's raw page) and prints the tables, the last line the summary's key.
#
#   bash scripts/gpu/step_kernels.sh LIMO_BIN WORK_DIR LOGS_DIR SECONDS
#
# Exit 0 with a table; otherwise the last line says why (no ncu, no counters, no launch read,
# or ncu's exit status).
set -uo pipefail
limo=$1 work=$2 logs=$3 secs=$4
here=$(dirname "$0")

# shellcheck source=scripts/gpu/ncu.sh
. "$here/ncu.sh"

# One metric, one pass per launch; the warm-up step runs outside the range at full speed. The
# caches are left as the step leaves them (ncu flushes them before each launch by default, which
# would time every small kernel cold).
rm -f "$work/step-kernels.ncu-rep"
timeout -k 5 "$secs" "$ncu" --target-processes all --clock-control none --cache-control none \
    --profile-from-start off --metrics gpu__time_duration.sum \
    --export "$work/step-kernels" --force-overwrite \
    "$limo" bench step --device cuda --shape 1.5b --layers 4 --tokens 16384 --docs 1 \
    --dtype bf16 --warmup 1 --steps 1 --profile-range 2>&1 | tee "$work/step-ncu.out"
rc=${PIPESTATUS[0]}
if [ ! -s "$work/step-kernels.ncu-rep" ]; then
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && exit "$rc"
    echo "no report (ncu exit $rc): $(grep -o -E '==(ERROR|WARNING)==.*' "$work/step-ncu.out" |
        tail -1 | cut -c1-150)"
    exit 3
fi
"$ncu" --import "$work/step-kernels.ncu-rep" --page raw --csv --print-units base \
    >"$logs/step-kernels.csv" 2>&1
[ "$rc" = 0 ] || echo "# the profiled run ended with exit $rc: the table has what ran before"
python3 "$here/step_kernels.py" "$logs/step-kernels.csv"
