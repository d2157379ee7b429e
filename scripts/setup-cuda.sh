#!/usr/bin/env bash
# Sets up everything needed to *build* (and start) limo's CUDA flavour on a machine with no GPU
# and no CUDA toolkit, from PyPI only. See docs/CUDA.md for the facts behind every pin and path.
#
# Usage: scripts/setup-cuda.sh            then:  source "${LIMO_CUDA_DIR:-$HOME/.cache/limo-cuda}/env.sh"
# Env:   LIMO_CUDA_DIR     target directory (default $HOME/.cache/limo-cuda); it becomes CUDA_HOME
#        LIMO_CUDA_FORCE=1 ignore an nvcc 13.0 already on PATH and set up the pip toolchain anyway
#        PYTHON            interpreter for the venv (default python3)
#        CUDA_COMPUTE_CAP  written to env.sh (default 90: H100/H200; no nvidia-smi here to detect it)
#
# Layout of $LIMO_CUDA_DIR (= CUDA_HOME):
#   venv/      python venv holding the pinned nvidia-* wheels (nvcc, headers, libraries)
#   bin/       -> venv/.../nvidia/cu13/bin      (nvcc, ptxas)
#   include/   -> venv/.../nvidia/cu13/include  (cuda_runtime.h, cuda_bf16.h, ...)
#   lib/       unversioned .so links to the wheel libraries + the stub libcuda.so
#   stub/      generated libcuda_stub.c and the symbol list it came from
#   env.sh     the exports a build needs; CI does `source $LIMO_CUDA_DIR/env.sh`
#
# Idempotent: a second run only re-checks (a few seconds). Exits non-zero on any failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cuda_dir=${LIMO_CUDA_DIR:-$HOME/.cache/limo-cuda}
venv=$cuda_dir/venv
python=${PYTHON:-python3}
compute_cap=${CUDA_COMPUTE_CAP:-90}

# CUDA 13.0 exactly: the GPU machines run driver 580, which JITs PTX ISA up to 9.0; newer nvcc
# (13.5 on PyPI) emits PTX 9.5 that driver cannot load, and cudarc's build script rejects
# toolkits above 13.4. All nine versions are pinned together so the headers, nvcc, nvvm and
# libraries agree. cuobjdump and the nvdisasm it calls (no 13.0 wheels exist; 13.2 reads 13.0's
# cubins) only disassemble, for scripts/sass-check-sm90-overlap.sh.
pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.0.19
    nvidia-curand==10.4.0.35
    nvidia-cuda-nvrtc==13.0.48
    nvidia-nccl-cu13==2.27.7
    nvidia-cuda-cuobjdump==13.2.51
    nvidia-cuda-nvdisasm==13.2.51
)
# The libraries candle + cudarc (feature dynamic-linking) pass to the linker as -l<name>;
# the driver (cuda) is not among them because no wheel ships it: we build a stub below.
link_libs=(cublas cublasLt curand nvrtc cudart nccl)

die() { echo "setup-cuda: ERROR: $*" >&2; exit 1; }
say() { echo "setup-cuda: $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# `nvcc --version` says e.g. "Cuda compilation tools, release 13.0, V13.0.88".
# (Output is captured before grep: with pipefail, `grep -q` closing the pipe early can make the
# writer die of SIGPIPE and the whole test fail spuriously.)
is_nvcc_13_0() {
    local v
    v=$("$1" --version 2>/dev/null) || return 1
    grep -q 'release 13\.0,' <<<"$v"
}

t_start=$(now)
mkdir -p "$cuda_dir"
cuda_dir=$(cd "$cuda_dir" && pwd) # absolute: env.sh and the symlinks must not depend on cwd
venv=$cuda_dir/venv

# ---------------------------------------------------------------------------------------------
# 0. An nvcc 13.0 that is not ours already on PATH (a real toolkit): use it, change nothing.
# ---------------------------------------------------------------------------------------------
if [ "${LIMO_CUDA_FORCE:-0}" != 1 ] && path_nvcc=$(command -v nvcc 2>/dev/null) &&
    is_nvcc_13_0 "$path_nvcc"; then
    real=$(readlink -f "$path_nvcc")
    case "$real" in
    "$cuda_dir"/*) ;; # it is ours (env.sh already sourced): fall through to the normal checks
    *)
        home=$(dirname "$(dirname "$real")")
        say "nvcc 13.0 already on PATH ($real); using that toolkit, nothing installed."
        say "(LIMO_CUDA_FORCE=1 sets up the pip toolchain in $cuda_dir instead.)"
        echo "export PATH=$(dirname "$real"):\$PATH CUDA_HOME=$home CUDA_COMPUTE_CAP=$compute_cap LD_LIBRARY_PATH=$home/lib64:$home/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
        exit 0
        ;;
    esac
fi

# ---------------------------------------------------------------------------------------------
# 1. The venv with the pinned wheels. A marker file records the pins of the last successful
#    install, so a second run (or a changed pin) is detected without asking pip.
# ---------------------------------------------------------------------------------------------
marker=$cuda_dir/.pins
want_pins=$(printf '%s\n' "${pins[@]}")
t_pip=$(now)
if [ -x "$venv/bin/python" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$want_pins" ]; then
    say "pinned CUDA 13.0 wheels already installed in $venv"
    pip_s="skipped, 0"
else
    command -v "$python" >/dev/null || die "$python not found (set PYTHON=...)"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" || die "cannot create venv $venv"
    say "installing ${#pins[@]} pinned wheels (~1.4 GB download) into $venv ..."
    # --no-cache-dir: the wheels are unpacked into the venv anyway; a pip cache copy would
    # only double the 1.4 GB on disk.
    "$venv/bin/python" -m pip install --quiet --no-cache-dir "${pins[@]}" ||
        die "pip install of the pinned CUDA wheels failed (network? PyPI reachable?)"
    printf '%s\n' "$want_pins" >"$marker"
    pip_s=$(since "$t_pip")
    say "wheels installed in ${pip_s} s"
fi

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cu13=$site/nvidia/cu13 # where the CUDA 13 wheels put bin/, include/, lib/
nccl_lib=$site/nvidia/nccl/lib
nvcc=$cu13/bin/nvcc
[ -x "$nvcc" ] || die "no nvcc at $nvcc after install (wheel layout changed?)"
is_nvcc_13_0 "$nvcc" || die "$nvcc is not release 13.0: $("$nvcc" --version | tail -n2 | tr '\n' ' ')"

# ---------------------------------------------------------------------------------------------
# 2. CUDA_HOME layout. cudarc's build script adds $CUDA_HOME/lib to the link search path and the
#    linker wants unversioned lib<name>.so, which wheels do not ship (they ship only the soname
#    file, e.g. libcublas.so.13). bin/ and include/ follow the usual toolkit layout for tools
#    that look for $CUDA_HOME/bin/nvcc or $CUDA_HOME/include/cuda.h.
# ---------------------------------------------------------------------------------------------
mkdir -p "$cuda_dir/lib" "$cuda_dir/stub"
ln -sfn "$cu13/bin" "$cuda_dir/bin"
ln -sfn "$cu13/include" "$cuda_dir/include"
for name in "${link_libs[@]}"; do
    # The versioned file: lib<name>.so.<digits...> (not libnvrtc-builtins, not libcublasLt for
    # cublas: the pattern requires ".so." right after the name).
    target=$(find "$cu13/lib" "$nccl_lib" -maxdepth 1 -name "lib$name.so.[0-9]*" 2>/dev/null |
        LC_ALL=C sort | sed -n 1p)
    [ -n "$target" ] || die "lib$name.so.* not found in $cu13/lib or $nccl_lib"
    ln -sfn "$target" "$cuda_dir/lib/lib$name.so"
done

# ---------------------------------------------------------------------------------------------
# 3. The stub libcuda.so. libcuda is the driver and comes with the GPU driver, never with a
#    wheel, yet the binary links against it (-lcuda) and needs libcuda.so.1 to start. The stub
#    exports every cu* symbol cudarc declares, each returning CUDA_ERROR_STUB_LIBRARY (34), so
#    the binary links and starts here, and any attempt to use the GPU fails cleanly with that
#    error. On a GPU machine the driver's real libcuda.so.1 is found first and the stub is unused.
# ---------------------------------------------------------------------------------------------
# Symbol list: parse cudarc's bindings if its sources are in the cargo registry (follows a
# cudarc upgrade automatically), and always add the committed list (works offline / when
# cudarc is not downloaded yet / if the parser breaks). Extra symbols are harmless.
symbols=$cuda_dir/stub/symbols.txt
fallback=$here/cuda-stub/symbols.txt
[ -f "$fallback" ] || die "missing $fallback"
if parsed=$("$here/cuda-stub/gen-symbols.sh" 2>/dev/null); then
    sym_src="cudarc sources + $fallback"
else
    parsed=""
    sym_src="$fallback (cudarc sources not in the cargo registry)"
fi
{ printf '%s\n' "$parsed"; cat "$fallback"; } | grep -E '^cu[A-Z][A-Za-z0-9_]*$' |
    LC_ALL=C sort -u >"$symbols.new"
mv "$symbols.new" "$symbols"
nsyms=$(wc -l <"$symbols")

stub_c=$cuda_dir/stub/libcuda_stub.c
{
    echo "/* Generated by scripts/setup-cuda.sh from $nsyms symbols ($sym_src). Do not edit."
    echo " * Stub CUDA driver: every entry point returns CUDA_ERROR_STUB_LIBRARY (34). Arguments"
    echo " * are ignored, which is safe on x86-64 (the caller owns its argument registers/stack). */"
    echo "#include <stddef.h>"
    echo "#define CUDA_ERROR_STUB_LIBRARY 34"
    echo "#define STUB(name) int name(void) { return CUDA_ERROR_STUB_LIBRARY; }"
    # The two error-text functions succeed, so that cudarc's DriverError prints a readable
    # message ("CUDA_ERROR_STUB_LIBRARY ...") instead of "<Failure when calling cuGetErrorString()>".
    cat <<'EOF'
int cuGetErrorName(int error, const char **out) {
    if (out == NULL) return 1; /* CUDA_ERROR_INVALID_VALUE */
    *out = error == CUDA_ERROR_STUB_LIBRARY ? "CUDA_ERROR_STUB_LIBRARY" : "CUDA_ERROR_UNKNOWN_TO_STUB";
    return 0;
}
int cuGetErrorString(int error, const char **out) {
    if (out == NULL) return 1;
    *out = error == CUDA_ERROR_STUB_LIBRARY
        ? "CUDA driver is a stub (limo's stub libcuda.so): no GPU driver on this machine"
        : "unknown error (limo's stub libcuda.so has no error table)";
    return 0;
}
EOF
    grep -vxE 'cuGetErrorName|cuGetErrorString' "$symbols" | sed 's/.*/STUB(&)/'
} >"$stub_c.new"
# Recompile only when the generated source changed: keeps the second run fast and the .so's
# mtime stable (cargo does not relink for nothing).
if [ -f "$cuda_dir/lib/libcuda.so.1" ] && cmp -s "$stub_c.new" "$stub_c"; then
    rm "$stub_c.new"
    say "stub libcuda.so.1 up to date ($nsyms symbols)"
else
    mv "$stub_c.new" "$stub_c"
    gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$cuda_dir/lib/libcuda.so.1.tmp" "$stub_c" ||
        die "compiling the stub libcuda failed"
    mv "$cuda_dir/lib/libcuda.so.1.tmp" "$cuda_dir/lib/libcuda.so.1"
    say "built stub libcuda.so.1 ($nsyms symbols from $sym_src)"
fi
ln -sfn libcuda.so.1 "$cuda_dir/lib/libcuda.so" # -lcuda at link time; .so.1 (soname) at run time

# ---------------------------------------------------------------------------------------------
# 4. env.sh: what a build needs. PATH: candle-kernels runs nvcc, cudarc runs `nvcc --version`
#    to choose cuda-13000. LD_LIBRARY_PATH: the stub (lib/) and the sonames (libcublas.so.13,
#    libnccl.so.2, ...) the built binary loads when it starts.
# ---------------------------------------------------------------------------------------------
ld_path=$cuda_dir/lib:$cu13/lib:$nccl_lib
cat >"$cuda_dir/env.sh.new" <<EOF
# Generated by scripts/setup-cuda.sh: \`source\` it before \`cargo build --features cuda\`.
case ":\$PATH:" in *":$cu13/bin:"*) ;; *) export PATH="$cu13/bin:\$PATH" ;; esac
export CUDA_HOME="$cuda_dir"
export CUDA_COMPUTE_CAP=$compute_cap
case ":\${LD_LIBRARY_PATH:-}:" in
*":$cuda_dir/lib:"*) ;;
*) export LD_LIBRARY_PATH="$ld_path\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" ;;
esac
EOF
mv "$cuda_dir/env.sh.new" "$cuda_dir/env.sh"

# ---------------------------------------------------------------------------------------------
# 5. Self-check, every run (about 2 s): a toolchain that cannot compile a bf16 kernel, or a stub
#    that does not answer 34, would otherwise only show up 14 minutes into a cargo build.
# ---------------------------------------------------------------------------------------------
t_check=$(now)
# From here on a failure means a damaged setup: say how to start over.
die() { echo "setup-cuda: ERROR: $*" >&2; echo "setup-cuda: to start over: rm -rf $cuda_dir && $0" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ver=$("$nvcc" --version | grep -o 'release [0-9.]*, V[0-9.]*') || die "nvcc --version failed"
say "check: nvcc $ver"

cat >"$tmp/k.cu" <<'EOF'
#include <cuda_bf16.h>
extern "C" __global__ void axpy_bf16(__nv_bfloat16 *y, const __nv_bfloat16 *x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16(a * __bfloat162float(x[i]) + __bfloat162float(y[i]));
}
EOF
"$nvcc" -ptx -arch=sm_$compute_cap "$tmp/k.cu" -o "$tmp/k.ptx" >"$tmp/nvcc.log" 2>&1 ||
    die "nvcc -ptx of a bf16 kernel failed: $(cat "$tmp/nvcc.log")"
ptx_ver=$(awk '$1 == ".version" { print $2; exit }' "$tmp/k.ptx")
[ -n "$ptx_ver" ] || die "no .version line in the PTX"
# Driver 580 (CUDA 13.0) JITs PTX ISA <= 9.0.
awk -v v="$ptx_ver" 'BEGIN { split(v, p, "."); exit !(p[1] < 9 || (p[1] == 9 && p[2] <= 0)) }' ||
    die "PTX ISA $ptx_ver > 9.0: driver 580 on the GPU machines cannot load it"
grep -q 'axpy_bf16' "$tmp/k.ptx" || die "kernel missing from the PTX"
say "check: nvcc -ptx -arch=sm_$compute_cap bf16 kernel OK, PTX .version $ptx_ver (<= 9.0)"

exports=$(nm -D --defined-only "$cuda_dir/lib/libcuda.so.1") || die "nm -D on the stub failed"
for s in cuInit cuDeviceGet; do
    grep -qE " T $s\$" <<<"$exports" || die "stub does not export $s"
done
soname=$(objdump -p "$cuda_dir/lib/libcuda.so.1" | awk '$1 == "SONAME" { print $2 }')
[ "$soname" = libcuda.so.1 ] || die "stub soname is '$soname', want libcuda.so.1"
say "check: nm -D stub: cuInit, cuDeviceGet exported ($(grep -c ' T cu' <<<"$exports") cu* functions), soname $soname"

# dlopen the stub the way a loader would and call cuInit(0).
cat >"$tmp/dl.c" <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
    int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    int (*name)(int, const char **) = (int (*)(int, const char **))dlsym(h, "cuGetErrorName");
    if (!init || !name) { fprintf(stderr, "dlsym failed\n"); return 2; }
    int r = init(0);
    const char *s = "?";
    name(r, &s);
    printf("cuInit(0) = %d (%s)\n", r, s);
    return r == 34 ? 0 : 1;
}
EOF
gcc -o "$tmp/dl" "$tmp/dl.c" -ldl || die "compiling the dlopen test failed"
out=$("$tmp/dl" "$cuda_dir/lib/libcuda.so.1" 2>&1) || die "dlopen test: ${out:-failed} (want 34)"
say "check: dlopen stub: $out"

# Link the way the Rust build will (-L$CUDA_HOME/lib -lcuda -lcublas ...) and start the result
# with env.sh's LD_LIBRARY_PATH: proves every unversioned link resolves and every soname loads.
echo 'int cuInit(unsigned); int main(void) { return cuInit(0) == 34 ? 0 : 1; }' >"$tmp/link.c"
gcc -o "$tmp/link" "$tmp/link.c" -L"$cuda_dir/lib" -Wl,--no-as-needed -lcuda \
    $(printf -- '-l%s ' "${link_libs[@]}") >"$tmp/link.log" 2>&1 ||
    die "linking -lcuda $(printf -- '-l%s ' "${link_libs[@]}")failed: $(cat "$tmp/link.log")"
LD_LIBRARY_PATH=$ld_path "$tmp/link" || die "linked test program did not start or cuInit != 34"
say "check: linked with -lcuda $(printf -- '-l%s ' "${link_libs[@]}")and started OK"
say "self-check passed in $(since "$t_check") s"

say "done in $(since "$t_start") s (pip: $pip_s s). For a CUDA build:"
echo "source $cuda_dir/env.sh"
echo "# i.e.:"
echo "export PATH=$cu13/bin:\$PATH CUDA_HOME=$cuda_dir CUDA_COMPUTE_CAP=$compute_cap LD_LIBRARY_PATH=$ld_path\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
