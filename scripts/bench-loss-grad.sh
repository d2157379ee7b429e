#!/usr/bin/env bash
# Times `limo debug loss-grad` (forward + backward of one batch, CPU reference) on a random
# Qwen2.5-shaped checkpoint. Usage: scripts/bench-loss-grad.sh [SHAPE] [LAYERS] [TOKENS] [DTYPE]
# Example: scripts/bench-loss-grad.sh 0.5b 2 256 f32
set -euo pipefail
shape=${1:-0.5b}
layers=${2:-2}
tokens=${3:-256}
dtype=${4:-f32}
cd "$(dirname "$0")/.."
cargo build --release -q -p limo-cli
limo=target/release/limo
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

/usr/bin/time -f "init-model: %e s, %M KiB peak RSS" \
    "$limo" init-model --shape "$shape" --layers "$layers" --out "$work/model" >/dev/null
# One row of pseudo-random token ids; the first quarter is prompt (not targets).
ids=$(awk -v n="$tokens" 'BEGIN { s = 1; for (i = 0; i < n; i++) { s = (s * 48271) % 2147483647; printf "%s%d", (i ? "," : ""), s % 150000 } }')
labels=$(awk -v n="$tokens" -v ids="$ids" 'BEGIN { split(ids, a, ","); for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? "," : ""), (i <= n / 4 ? -100 : a[i]) }')
echo "{\"input_ids\": [[${ids}]], \"labels\": [[${labels}]]}" >"$work/batch.json"
/usr/bin/time -f "loss-grad: %e s, %M KiB peak RSS" \
    "$limo" debug loss-grad --model "$work/model" --batch "$work/batch.json" --out "$work/grads.safetensors" --dtype "$dtype"
