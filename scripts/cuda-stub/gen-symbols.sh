#!/usr/bin/env bash
# Prints, one per line and sorted, every CUDA driver symbol (cu*) that cudarc's driver bindings
# can reference. scripts/setup-cuda.sh compiles one stub function per line into libcuda.so.
#
# Usage: scripts/cuda-stub/gen-symbols.sh [path/to/cudarc/src/driver/sys/mod.rs ...]
#   With no argument it looks for the newest cudarc 0.19.* in the local cargo registry.
#   Regenerate the committed fallback after a cudarc upgrade with:
#     scripts/cuda-stub/gen-symbols.sh > scripts/cuda-stub/symbols.txt
#
# Why three patterns: the bindgen output has had several shapes across cudarc releases, and a
# symbol missed here becomes an "undefined reference" at link time (or a panic at run time),
# so we take the union of every place a driver symbol name can appear:
#   1. `fn cuXxx(`           -- the `extern "C" { fn cuXxx(..) }` declarations used with the
#                               `dynamic-linking` feature (exactly what the linker resolves),
#                               and the `pub unsafe fn cuXxx(` wrappers (same names);
#   2. `load::<_F>("cuXxx")` -- the names the `dynamic-loading` feature looks up with dlsym;
#   3. `b"cuXxx\0"`          -- the libloading byte strings of older cudarc (0.10-0.16).
# Names must be `cu` + an upper-case letter: that keeps real driver entry points (cuInit,
# cuMemAlloc_v2, ...) and drops cudarc's own helpers (`culib`, `cuda_...`). A symbol that
# cudarc never calls costs nothing in the stub, so over-matching is harmless; under-matching
# is not, hence the sanity check at the end.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
    # Prefer the version the project pins (0.19.10); otherwise the newest 0.19.x present.
    src=$(ls -d "$registry"/*/cudarc-0.19.10 2>/dev/null | sed -n 1p || true)
    if [ -z "$src" ]; then
        src=$(ls -d "$registry"/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -n1 || true)
    fi
    if [ -z "$src" ] || [ ! -f "$src/src/driver/sys/mod.rs" ]; then
        echo "gen-symbols: no cudarc-0.19.* sources under $registry" >&2
        exit 2
    fi
    set -- "$src/src/driver/sys/mod.rs"
fi

ident='cu[A-Z][A-Za-z0-9_]*'
out=$(
    for f in "$@"; do
        [ -f "$f" ] || { echo "gen-symbols: $f: not a file" >&2; exit 2; }
        # -h: no file names; -o: only the match; each sed keeps just the identifier.
        grep -ohE "\bfn ${ident}[[:space:]]*\(" "$f" | sed -E "s/^fn (${ident}).*/\1/" || true
        grep -ohE "load::<_F>\(\"${ident}\"\)" "$f" | sed -E "s/.*\"(${ident})\".*/\1/" || true
        grep -ohE "b\"${ident}\\\\0\"" "$f" | sed -E "s/^b\"(${ident}).*/\1/" || true
    done | LC_ALL=C sort -u
)

# Sanity check: a parse that silently found nothing (or half of it) must not produce a stub
# that then fails to link 14 minutes into a build.
# (grep reads a here-string, not a pipe: with pipefail, `grep -q` closing a pipe early can
# kill the writer with SIGPIPE and fail the test spuriously.)
count=$(grep -c . <<<"$out" || true)
for must in cuInit cuDeviceGet cuCtxCreate_v2 cuModuleLoadData cuLaunchKernel cuMemAlloc_v2; do
    if ! grep -qx "$must" <<<"$out"; then
        echo "gen-symbols: parsed $count symbols but $must is missing; bindings format changed?" >&2
        exit 3
    fi
done
if [ "$count" -lt 300 ]; then
    echo "gen-symbols: only $count symbols parsed (cudarc 0.19 declares ~500); refusing" >&2
    exit 3
fi
# The header records where the list came from; scripts/setup-cuda.sh skips '#' lines.
src_names=$(for f in "$@"; do printf ' %s' "$(echo "$f" | grep -oE 'cudarc-[^/]+/.*' || echo "$f")"; done)
echo "# CUDA driver symbols declared by${src_names} ($count), from scripts/cuda-stub/gen-symbols.sh"
printf '%s\n' "$out"
