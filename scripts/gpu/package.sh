#!/usr/bin/env bash
# On the development machine: everything one GPU visit needs, in target/gpu (ignored by git, so it
# travels as a `carry` path), and the exact device call that carries it.
#
#   1. `cargo build --release --features cuda -p limo-cli` in $CARGO_TARGET_DIR (default
#      target/cuda, the directory CI builds in, so after CI or a first build this is incremental);
#   2. a stripped copy, xz-compressed when that is needed to stay under the limit or asked for
#      (LIMO_GPU_XZ=1 always, 0 never; default auto): target/gpu/limo or target/gpu/limo.xz
#      (scripts/gpu/env.sh unpacks it there with python's lzma: the GPU machine may lack xz);
#   3. the PyTorch peer benchmark, ../shared/tools/peer/*.py (or $LIMO_PEER_SRC), copied to
#      target/gpu/peer/ (../shared does not travel);
#   4. target/gpu/MANIFEST: commit, build time, sizes, sha256 (check.sh prints it there);
#   5. what one call carries: the working tree that travels (git-tracked files plus untracked,
#      not ignored ones) plus target/gpu, in MiB; exits 1 above LIMO_GPU_LIMIT_MIB (default 48:
#      the tool's hard limit is 64 MiB per call, the rest is headroom for files others add).
set -euo pipefail
cd "$(dirname "$0")/../.."

limit_mib=${LIMO_GPU_LIMIT_MIB:-48}
gpu=target/gpu
peer_src=${LIMO_PEER_SRC:-../shared/tools/peer}

scripts/setup-cuda.sh >/dev/null
# shellcheck disable=SC1091
source "${LIMO_CUDA_DIR:-$HOME/.cache/limo-cuda}/env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
cargo build --release --features cuda -p limo-cli
bin="$CARGO_TARGET_DIR/release/limo"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
# Total bytes of the files named (NUL-separated) on stdin; names that no longer exist (deleted,
# not yet committed) count 0, a symbolic link its own size (it travels as a link).
sum_sizes() {
    { xargs -0 -r stat -c %s -- 2>/dev/null || true; } | awk '{ s += $1 } END { printf "%d\n", s }'
}

# The tree that travels with every call (not counting target/gpu).
tracked=$(git ls-files -z | sum_sizes)
untracked=$(git ls-files -z --others --exclude-standard | sum_sizes)
shared=0
if [ -d shared ]; then
    shared=$(find shared -type f -print0 | sum_sizes)
fi
tree=$((tracked + untracked + shared))

rm -rf "$gpu"
mkdir -p "$gpu"
strip -o "$gpu/limo" "$bin"
raw=$(stat -c %s "$bin")
stripped=$(stat -c %s "$gpu/limo")
sha=$(sha256sum "$gpu/limo" | cut -d' ' -f1)

if [ -d "$peer_src" ] && compgen -G "$peer_src/*.py" >/dev/null; then
    mkdir -p "$gpu/peer"
    cp "$peer_src"/*.py "$gpu/peer/"
    [ -f "$peer_src/README.md" ] && cp "$peer_src/README.md" "$gpu/peer/"
    peer_note="$(cd "$gpu/peer" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')"
else
    echo "package: warning: no PyTorch peer at $peer_src (set LIMO_PEER_SRC); check.sh's" \
        "step-1.5b stage will fail its peer half" >&2
    peer_note="none"
fi

# Compress when asked, or (auto) when the plain binary would not fit.
xz_mode=${LIMO_GPU_XZ:-auto}
others=$(find "$gpu" -type f ! -name limo -print0 | sum_sizes)
if [ "$xz_mode" = 1 ] ||
    { [ "$xz_mode" = auto ] && [ $((tree + stripped + others)) -gt $((limit_mib * 1048576)) ]; }; then
    xz -T0 -6 -f "$gpu/limo" # leaves target/gpu/limo.xz only
    binfile="$gpu/limo.xz"
else
    binfile="$gpu/limo"
fi
shipped=$(stat -c %s "$binfile")

{
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
    echo "nvcc: $(nvcc --version | tail -1)"
    echo "binary: $(basename "$binfile"), $raw bytes built, $stripped stripped, $shipped shipped"
    echo "sha256 (stripped limo): $sha"
    echo "peer: $peer_note"
} >"$gpu/MANIFEST"

carry=$(find "$gpu" -type f -print0 | sum_sizes)
total=$((tree + carry))
echo
echo "package: limo $(mib "$raw") MiB built, $(mib "$stripped") MiB stripped, $(mib "$shipped") MiB shipped ($binfile)"
echo "package: one call carries $(mib "$total") MiB (limit ${limit_mib} MiB; the tool's own: 64):"
echo "           tracked files      $(mib "$tracked") MiB"
echo "           untracked files    $(mib "$untracked") MiB (not ignored: they travel too)"
[ "$shared" -gt 0 ] && echo "           shared/            $(mib "$shared") MiB"
echo "           target/gpu (carry) $(mib "$carry") MiB: $(cd "$gpu" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')"
echo "carried_mib=$(mib "$total")"
if [ "$total" -gt $((limit_mib * 1048576)) ]; then
    echo "package: $(mib "$total") MiB is over the ${limit_mib} MiB limit: drop untracked files," \
        "or set LIMO_GPU_XZ=1" >&2
    exit 1
fi
cat <<EOF

The visit's first device call (scripts/gpu/README.md), then give_back:
  run(carry: ["target/gpu"], command: "bash scripts/gpu/check.sh --budget 330", timeout_s: 370)
The second: the summary's last line ("next: ..."), its --budget cut to what status leaves
(budget_left_s - 150 for a fresh machine), e.g.:
  run(carry: ["target/gpu"], command: "bash scripts/gpu/check.sh --only step-32b-w8,step-32b-off --budget 250", timeout_s: 290)
EOF
