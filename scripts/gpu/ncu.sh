# Sourced by profile.sh and step_kernels.sh: sets $ncu to Nsight Compute's command line, or
# exits 3 saying there is none (check.sh's key reads that last line).
ncu=$(command -v ncu)
for c in /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu; do
    [ -z "$ncu" ] && [ -x "$c" ] && ncu=$c
done
[ -n "$ncu" ] || { echo "no ncu on PATH or in /opt/nvidia/nsight-compute"; exit 3; }
