#!/usr/bin/env bash
# On the GPU machine, check.sh's `profile` stage: Nsight Compute's hardware counters for the
# flash attention kernels at the 32B recipe's heads (40/8, hd128) on one 16k-token document,
# the shape issue #14's targets are read at: what bounds each kernel, for the next session's
# kernel work (one visit in several sessions; counters beat guesses). Writes LOGS/profile.csv
# and LOGS/profile.txt (ncu's details page: every section's numbers and its own hints) and
# prints one row per kernel (ncu_table.py beside this), the last line the summary's key.
#
#   bash scripts/gpu/profile.sh LIMO_BIN WORK_DIR LOGS_DIR SECONDS
#
# Exit 0 with a table; otherwise the last line says why (no ncu, no access to the counters as
# on gVisor machines (KINDS.md), no kernel profiled, or ncu's exit status).
set -uo pipefail
limo=$1 work=$2 logs=$3 secs=$4
here=$(dirname "$0")

# shellcheck source=scripts/gpu/ncu.sh
. "$here/ncu.sh"
echo "ncu: $ncu, $("$ncu" --version 2>&1 | tail -1)"

# The sections wanted that this ncu lists (an unknown one would end the run before it starts);
# all of them if it lists none in the form expected (names stable since 2019).
wanted=(SpeedOfLight ComputeWorkloadAnalysis MemoryWorkloadAnalysis LaunchStats Occupancy
    SchedulerStats WarpStateStats)
have=$("$ncu" --list-sections 2>/dev/null | awk '{ print $1 }')
sections=()
for s in "${wanted[@]}"; do grep -qx "$s" <<<"$have" && sections+=(--section "$s"); done
if [ ${#sections[@]} = 0 ]; then
    for s in "${wanted[@]}"; do sections+=(--section "$s"); done
fi
echo "sections: ${sections[*]}"

# The clocks as every other stage ran them (METHOD.md). The matrix kernels only: the backward's
# preprocess and the dQ conversion are one memory-bound pass each. At most 24 launches: the
# doctor's path check runs the same kernels on a small document first (ncu_table.py keeps each
# kernel's longest launch), and the bench then runs each forward and backward variant once.
rm -f "$work/profile.ncu-rep"
timeout -k 5 "$secs" "$ncu" --target-processes all --clock-control none \
    --kernel-name 'regex:^flash_(fwd|bwd_dkdv|bwd_dq|bwd_sm90)' --launch-count 24 \
    "${sections[@]}" --export "$work/profile" --force-overwrite \
    "$limo" bench kernels --op attention --docs 1 --warmup 0 --repeats 1 --rotate 1 2>&1 |
    tee "$work/ncu.out"
rc=${PIPESTATUS[0]}
if [ ! -s "$work/profile.ncu-rep" ]; then
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && exit "$rc"
    # ncu's own words: e.g. "==ERROR== Failed to initialize the profiler: LibraryNotLoaded",
    # "==ERROR== ERR_NVGPUCTRPERM ..." or "==WARNING== No kernels were profiled."
    echo "no report (ncu exit $rc): $(grep -o -E '==(ERROR|WARNING)==.*' "$work/ncu.out" |
        tail -1 | cut -c1-150)"
    exit 3
fi
"$ncu" --import "$work/profile.ncu-rep" --page details --print-units base --csv \
    >"$logs/profile.csv" 2>&1
"$ncu" --import "$work/profile.ncu-rep" --page details >"$logs/profile.txt" 2>&1
[ "$rc" = 0 ] || echo "# the profiled run ended with exit $rc: the table has what ran before"
python3 "$here/ncu_table.py" "$logs/profile.csv"
