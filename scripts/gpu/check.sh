#!/usr/bin/env bash
# shellcheck disable=SC2317  # stage_*/key_* are called by name: "stage_${s//[-.]/_}"
# The whole GPU visit in one device call (scripts/gpu/README.md). Runs from the repository root
# on the GPU machine, with target/gpu carried (scripts/gpu/package.sh): prints the machine, then
# runs the stages below, each under its own timeout with its own log, going on after a stage
# fails or times out, and ends with ONE summary table (stdout and $OUT/summary.txt).
#
#   bash scripts/gpu/check.sh                      # every stage: fits one call of timeout_s 590
#   bash scripts/gpu/check.sh --only doctor,step-1.5b
#   bash scripts/gpu/check.sh --dry-run [--only ...]   # the plan and the timeout sum; runs nothing
#
# Stages (the --only keys), in order, with their timeouts in seconds (scripts/gpu/README.md has
# the details):
#   doctor 40       limo doctor --quick: every kernel against the CPU reference, the flash path
#                   held at sm80; then the bf16 attention rows with the Hopper kernels
#   kernels 35      limo bench kernels: kernel timings at Qwen2.5-32B shapes
#   attention 45    attention_vs_torch.py: torch SDPA vs our flash attention, 16k tokens, hd128,
#                   causal, 40/8 and 12/2 heads
#   step-1.5b 85    limo bench step 1.5b at 16k tokens, and the PyTorch peer (fp32 master, then
#                   bf16 state) on the same shape: tokens/s and their ratio
#   generate 25     generate_vs_transformers.py: greedy generation of the 1.5b shape, batch 32,
#                   64-token prompts, 128 new tokens, tokens/s; limo's --verify against the
#                   full forward
#   loss-parity 50  loss of one batch on a 2-layer 1.5b model: CPU f32 vs GPU bf16, within 1e-2;
#                   every gradient's relative L2 too (reported; fails only above 0.25)
#   step-32b-w8 95  limo bench step 32b as rank 0 of a simulated world of 8, 2 micro-batches
#                   per step, optimizer on the GPU, uncapped (limo plan: ~118 GiB)
#   step-32b-off 95 the same rank with train.optimizer_offload = "cpu" under an 80 GiB cap
#                   (exit 3 = out of device memory: status OOM)
#   nccl 15         limo launch --nproc-per-node 1 -- comm-check --nccl
#   train 25        a 30-step bf16 `limo train` of the embedded tiny config at head_dim 64
#                   (deterministic dQ), checkpoints at 20 and 30: the loss must fall
#   resume *        (at most 30 s) `limo train --resume 20` of train's run: steps 21-30 against
#                   the uninterrupted run's (bit-exact expected; fails above 1e-2)
#   generate-1k *   generate at full length (128-token prompts, 1024 new tokens) if at least
#                   120 s of the 540 are left (else `skipped`); a timeout fails nothing
#   profile *       (at most 90 s, if 60 are left) Nsight Compute's counters for each flash
#                   kernel at 16k tokens, 40/8 heads (scripts/gpu/profile.sh); never a failure
#   sanitize *      (at most 90 s, if 60 are left) compute-sanitizer memcheck over `limo doctor
#                   --quick`; `skipped` where the sanitizer is missing or cannot run (gVisor)
#   recompute *     (at most 45 s, if 30 are left) step-1.5b's limo run again with
#                   train.recompute_attention = true
#   eval *          (at most 30 s, if 20 are left) `limo eval --device cuda` of train's export:
#                   4 aime problems, 64 new tokens; the run must end with its summary
# Elastic stages (*) run on what is left of the 540 s when they start, and stand down when an
# earlier stage failed (the device time is then worth more as a rerun). The timeouts are
# estimates (no stage has run on a GPU yet): the fixed ones sum to 510 s, 540 s with the machine
# section (a fresh H200's PTX JIT included), so a 590 s call has room for the transfers.
# --dry-run prints `budget: ... total=N limit=540` and exits 1 when over.
#
# Results in $OUT (default ./check-out; the device tool sets it), at most 8 files, as the tool
# returns no more: summary.txt, logs.tar.gz (logs/machine.txt, logs/<stage>.log, small JSONs),
# step-1.5b.json, peer-1.5b-{fp32,bf16}.json, step-32b-{w8,off}.json, attention.json.
# Scratch (models, run directories): $LIMO_CHECK_WORK, default a new /tmp/limo-check.XXXXXX.
# Exit status: 0 when every stage run is ok, OOM or skipped (or an elastic one timed out), 1
# when one failed or a fixed one timed out, 2 on bad arguments.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

STAGES=(doctor kernels attention step-1.5b generate loss-parity step-32b-w8 step-32b-off nccl train
    resume generate-1k profile sanitize recompute eval)
declare -A TIMEOUT=(
    [doctor]=40 [kernels]=35 [attention]=45 [step-1.5b]=85 [generate]=25 [loss-parity]=50
    [step-32b-w8]=95 [step-32b-off]=95 [nccl]=15 [train]=25 [resume]=0 [generate-1k]=0
    [profile]=0 [sanitize]=0 [recompute]=0 [eval]=0
)
# Elastic stages have no timeout of their own (0 above, not in the sum): each runs until the
# run's LIMIT_S deadline, and only if at least this many seconds are left when it starts.
declare -A ELASTIC_MIN=([resume]=20 [generate-1k]=120 [profile]=60 [sanitize]=60 [recompute]=30
    [eval]=20)
# ... and at most this many (the rest stays for the stages after it).
declare -A ELASTIC_MAX=([resume]=30 [profile]=90 [sanitize]=90 [recompute]=45 [eval]=30)
MACHINE_S=30  # the machine section: unpacking, nvidia-smi, torch, ldd
LIMIT_S=540

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

DRY=0
ONLY=""
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --only)
            [ $# -ge 2 ] || { echo "check.sh: --only needs a comma-separated list of stages" >&2; exit 2; }
            ONLY=$2
            shift
            ;;
        --only=*) ONLY=${1#--only=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "check.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

SELECTED=()
if [ -n "$ONLY" ]; then
    IFS=, read -r -a wanted <<<"$ONLY"
    for w in "${wanted[@]}"; do
        if [ -z "$w" ] || [ -z "${TIMEOUT[$w]+x}" ]; then
            echo "check.sh: no stage '$w' (stages: ${STAGES[*]})" >&2
            exit 2
        fi
    done
    for s in "${STAGES[@]}"; do # keep the canonical order
        for w in "${wanted[@]}"; do [ "$s" = "$w" ] && SELECTED+=("$s") && break; done
    done
else
    SELECTED=("${STAGES[@]}")
fi

OUT=${OUT:-$PWD/check-out}
if [ "$DRY" = 1 ]; then
    W=${LIMO_CHECK_WORK:-/tmp/limo-check.XXXXXX}
else
    W=${LIMO_CHECK_WORK:-$(mktemp -d /tmp/limo-check.XXXXXX)}
fi
LOGS=$W/logs
# The run takes it from env.sh (which may unpack target/gpu/limo.xz).
[ "$DRY" = 1 ] && LIMO_BIN=${LIMO_BIN:-target/gpu/limo}
PEER=${LIMO_PEER_DIR:-$PWD/target/gpu/peer}
export PYTHONUNBUFFERED=1

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

# ---- one command of a stage ---------------------------------------------------------------------
# x [--stdout FILE] CMD ARG...: runs CMD under what is left of the stage's timeout (its whole
# process group is killed at the deadline), output appended to the stage's log (with --stdout,
# stdout goes to FILE and then to the log too). Records a timeout and the first failure for the
# stage. In --dry-run it prints the command instead.
STAGE_LOG=/dev/null
STAGE_DEADLINE=0
STAGE_RC=0
STAGE_TIMEDOUT=0
x() {
    local stdout=""
    if [ "$1" = --stdout ]; then
        stdout=$2
        shift 2
    fi
    if [ "$DRY" = 1 ]; then
        printf '      $'; printf ' %q' "$@"
        [ -n "$stdout" ] && printf ' > %q' "$stdout"
        printf '\n'; return 0
    fi
    local left rc
    left=$((STAGE_DEADLINE - $(now_ms)))
    { printf '$'; printf ' %q' "$@"; printf '\n'; } >>"$STAGE_LOG"
    if [ "$left" -le 0 ]; then
        echo "(not run: the stage is out of time)" >>"$STAGE_LOG"
        STAGE_TIMEDOUT=1
        [ "$STAGE_RC" = 0 ] && STAGE_RC=124
        return 124
    fi
    left=$(awk -v ms="$left" 'BEGIN { printf "%.3f", ms / 1000 }')
    if [ -n "$stdout" ]; then
        timeout -k 5 "$left" "$@" >"$stdout" 2>>"$STAGE_LOG"
        rc=$?
        cat "$stdout" >>"$STAGE_LOG" 2>/dev/null
    else
        timeout -k 5 "$left" "$@" >>"$STAGE_LOG" 2>&1
        rc=$?
    fi
    echo "(exit $rc)" >>"$STAGE_LOG"
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && STAGE_TIMEDOUT=1
    [ "$rc" != 0 ] && [ "$STAGE_RC" = 0 ] && STAGE_RC=$rc
    return "$rc"
}

# In --dry-run, a line of explanation in the plan; otherwise a line in the stage's log.
note() { if [ "$DRY" = 1 ]; then echo "      # $*"; else echo "# $*" >>"$STAGE_LOG"; fi; }

# py 'PYTHON' ARG...: prints what the snippet prints, with j(path, key) reading a JSON file
# defensively (None when the file or key is missing; "a.b" also walks nested objects) and
# f(value, fmt) formatting None as "?". Prints "?" if the snippet itself fails.
PY_PRELUDE='
import json, sys
def j(path, key):
    try:
        with open(path) as fh:
            v = json.load(fh)
    except Exception:
        return None
    if isinstance(v, dict) and key in v:
        return v[key]
    for k in key.split("."):
        if isinstance(v, dict) and k in v:
            v = v[k]
        else:
            return None
    return v
def num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
def f(v, fmt="{:.0f}"):
    try:
        return fmt.format(v) if num(v) is not None else "?"
    except Exception:
        return "?"
'
py() {
    local code=$1 out
    shift
    out=$(python3 -c "$PY_PRELUDE
$code" "$@" 2>/dev/null)
    printf '%s\n' "${out:-?}"
}

# ---- the stages -------------------------------------------------------------------------------
# Each stage_X runs its commands through x; key_X prints the summary's key number(s) afterwards.
# A stage may set STAGE_OOM=1 (bench step's exit 3) or STAGE_CHECK_FAILED=1 (a check of its own).

stage_doctor() {
    # Two runs, so that a fault or hang in a Hopper kernel (new to silicon) cannot hide the other
    # kernels' rows: every kernel with the flash path held at sm80 (no sm90 rows), then the bf16
    # attention rows with both kernels and sm90 against sm80 on one 16k-token document.
    # Failed outputs go to logs/doctor-failures: the tensors, the seed, where the errors are.
    local dump=(--dump "$LOGS/doctor-failures" --dump-mib 6)
    x env LIMO_FLASH_PATH=sm80 "$LIMO_BIN" doctor --quick "${dump[@]}"
    x "$LIMO_BIN" doctor --quick --only attention,attention_16k --dtype bf16 "${dump[@]}"
    local hopper=$?
    [ "$DRY" = 1 ] && note "the later stages hold LIMO_FLASH_PATH=sm80 unless both sm90 kernels passed"
    # Unless that run passed whole (no hang, no sm90 row failed or errored) with an `ok` row for
    # each Hopper kernel, later stages take sm80: one bad kernel must not cost the visit's numbers.
    if [ "$DRY" != 1 ] && { [ "$hopper" != 0 ] ||
        ! grep -Eq '^attention fwd \(sm90\) .* ok$' "$STAGE_LOG" ||
        ! grep -Eq '^attention bwd \(sm90\) .* ok$' "$STAGE_LOG" ||
        grep -Eq '^attention (fwd|bwd) \(sm90\)(,|.* FAIL)' "$STAGE_LOG"; }; then
        export LIMO_FLASH_PATH=sm80
        echo "# the sm90 attention kernels did not pass their checks: the later stages run with LIMO_FLASH_PATH=sm80" |
            tee -a "$STAGE_LOG"
    fi
}
# The stage log's last line from a command (not x's), shortened, without tracing's prefix.
lastline() {
    grep -v -e '^(exit [0-9]*)$' -e '^(not run: ' -e '^\$ ' -e '^# ' "$STAGE_LOG" | grep . |
        tail -1 | sed -E 's/^[0-9T:.-]+Z +[A-Z]+ [a-z0-9_:]+: //' | cut -c1-110
}

key_doctor() { # each run's last line, or what it printed last
    awk '/^\$ / { if (run) print run ": " (end ? end : last); end = last = ""
                  run = /LIMO_FLASH_PATH=sm80/ ? "flash held at sm80" : "attention bf16" }
         /^(all [0-9]+ checks passed|error: .*checks failed)/ { end = $0; sub(/^error: /, "", end) }
         !/^(\(exit|\(not run|# |  where: )/ && NF { last = substr($0, 1, 60) }
         END { if (run) print run ": " (end ? end : last) }' "$STAGE_LOG" | paste -sd';' - |
        sed 's/;/; /g'
}

stage_kernels() { x "$LIMO_BIN" bench kernels; }
key_kernels() {
    awk '/ ms  / && / (GB|TFLOP)\/s/ { n++ }
         /^flash_attention forward/ && !fa { fa = $(NF-1) " TFLOP/s" }
         /^rms_norm/ && !rn { rn = $(NF-1) " GB/s" }
         END { printf "%d timings; rms_norm %s, attn fwd %s\n", n, rn ? rn : "?", fa ? fa : "?" }' \
        "$STAGE_LOG"
}

stage_attention() {
    x python3 scripts/gpu/attention_vs_torch.py --shapes 40/8:128:1,12/2:128:1 --iters 10 \
        --limo "$LIMO_BIN" --json-out "$OUT/attention.json"
}
key_attention() {
    py '
d = j(sys.argv[1], "shapes") or []
parts = []
for s in d:
    if not isinstance(s, dict):
        continue
    fl = ((s.get("torch") or {}).get("flash") or {}).get("fwd_tflops")
    rows = ((s.get("limo") or {}).get("rows")) or []
    lf = next((r.get("tflops") for r in rows if r.get("kernel") == "flash_attention forward"), None)
    parts.append("%s/%s fwd limo %s torch %s" % (s.get("q_heads"), s.get("kv_heads"), f(lf), f(fl)))
print("; ".join(parts) + " TF/s" if parts else "?")
' "$OUT/attention.json"
}

stage_step_1_5b() {
    x "$LIMO_BIN" bench step --device cuda --shape 1.5b --tokens 16384 --docs 1 --dtype bf16 \
        --warmup 2 --steps 5 --json "$OUT/step-1.5b.json"
    [ $? = 3 ] && STAGE_OOM=1
    if [ "$DRY" = 1 ] || [ -f "$PEER/gpu_peer_bench.py" ]; then
        note "the PyTorch peer (HF transformers Qwen2, SDPA flash, fused AdamW), like for like first"
        x python3 "$PEER/gpu_peer_bench.py" --config 1.5b --seq 16384 --steps 5 --warmup 2 \
            --master-fp32 --json-out "$OUT/peer-1.5b-fp32.json"
        x python3 "$PEER/gpu_peer_bench.py" --config 1.5b --seq 16384 --steps 5 --warmup 2 \
            --json-out "$OUT/peer-1.5b-bf16.json"
    else
        note "no peer at $PEER (package.sh copies ../shared/tools/peer there)"
        STAGE_CHECK_FAILED=1
    fi
}
key_step_1_5b() {
    py '
a = num(j(sys.argv[1], "tokens_per_s"))
b = num(j(sys.argv[2], "tokens_per_s"))
c = num(j(sys.argv[3], "tokens_per_s"))
r = a / b if a is not None and b else None
print("limo %s tok/s (mfu %s), peer %s (fp32 master) / %s (bf16) tok/s, limo/peer %s"
      % (f(a), f(j(sys.argv[1], "mfu"), "{:.3f}"), f(b), f(c), f(r, "{:.2f}")))
' "$OUT/step-1.5b.json" "$OUT/peer-1.5b-fp32.json" "$OUT/peer-1.5b-bf16.json"
}

stage_recompute() {
    note "the default keeps each layer's attention output; this run recomputes it (docs/PLAN.md)"
    x "$LIMO_BIN" bench step --device cuda --shape 1.5b --tokens 16384 --docs 1 --dtype bf16 \
        --set train.recompute_attention=true --warmup 1 --steps 3 \
        --json "$LOGS/step-1.5b-recompute.json"
    [ $? = 3 ] && STAGE_OOM=1
}
key_recompute() {
    py '
a = num(j(sys.argv[1], "tokens_per_s"))
b = num(j(sys.argv[2], "tokens_per_s"))
r = a / b if a is not None and b else None
print("attention kept %s tok/s (step-1.5b), recomputed %s tok/s: kept/recomputed %s"
      % (f(a), f(b), f(r, "{:.3f}")))
' "$OUT/step-1.5b.json" "$LOGS/step-1.5b-recompute.json"
}

stage_generate() {
    note "short enough for the visit's budget; the 1k-token measurement: scripts/gpu/README.md"
    x python3 scripts/gpu/generate_vs_transformers.py --limo "$LIMO_BIN" --shape 1.5b \
        --batch 32 --prompt-tokens 64 --new-tokens 128 --verify --json-out "$LOGS/generate.json"
}
key_generate() {
    py '
p = sys.argv[1]
v = j(p, "limo.verify") or {}
check = "" if not v else ", vs full forward rel %s gap %s sd %s" % (
    f(v.get("max_rel_l2"), "{:.1e}"), f(v.get("max_gap_sd"), "{:.2f}"),
    "ok" if v.get("passed") else "FAIL")
print("limo %s tok/s (%s ms/step), transformers %s tok/s, limo/transformers %s%s" % (
    f(j(p, "limo_tokens_per_s")), f(j(p, "limo.ms_per_step"), "{:.1f}"),
    f(j(p, "transformers_tokens_per_s")), f(j(p, "ratio"), "{:.2f}"), check))
' "${1:-$LOGS/generate.json}"
}

stage_generate_1k() {
    note "issue #16's measurement: batch 32, 128-token prompts, 1024 new tokens, both sides"
    x python3 scripts/gpu/generate_vs_transformers.py --limo "$LIMO_BIN" --shape 1.5b \
        --batch 32 --prompt-tokens 128 --new-tokens 1024 --json-out "$LOGS/generate-1k.json"
}
key_generate_1k() { key_generate "$LOGS/generate-1k.json"; }

# A diagnosis, not a check: without counters (gVisor) or with ncu failing it is `skipped`.
stage_profile() {
    local secs=LEFT-15 # 15 s of the stage for the report's tables
    [ "$DRY" = 1 ] || secs=$(((STAGE_DEADLINE - $(now_ms)) / 1000 - 15))
    x bash scripts/gpu/profile.sh "$LIMO_BIN" "$W" "$LOGS" "$secs" || [ "$STAGE_TIMEDOUT" = 1 ] ||
        STAGE_SKIPPED=1
}
key_profile() { grep -h -e '^profile: ' -e '^no ' "$STAGE_LOG" | tail -1 | cut -c1-200; }

# memcheck reports each bad access as it happens (a run cut short still counts); exit 99: found.
stage_sanitize() {
    if [ "$DRY" != 1 ] && ! command -v compute-sanitizer >/dev/null; then
        note "no compute-sanitizer on PATH"
        STAGE_SKIPPED=1
        return
    fi
    x compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 50 \
        "$LIMO_BIN" doctor --quick
    local rc=$?
    # Anything but a finished run (0), errors (99) or the deadline is the sanitizer itself
    # failing to attach (it needs hardware access gVisor does not give): not a finding.
    if [ "$DRY" != 1 ] && [ "$rc" != 0 ] && [ "$rc" != 99 ] && [ "$STAGE_TIMEDOUT" = 0 ] &&
        ! grep -q '^========= ERROR SUMMARY' "$STAGE_LOG"; then
        STAGE_SKIPPED=1
    fi
}
key_sanitize() {
    if [ "${STAGE_SKIPPED:-0}" = 1 ]; then
        lastline | grep . || echo "no compute-sanitizer on PATH"
        return
    fi
    grep -o 'ERROR SUMMARY: .*' "$STAGE_LOG" | tail -1 | grep . ||
        echo "$(grep -c -e '^========= Invalid' -e '^========= Misaligned' -e '^========= Out of range'             "$STAGE_LOG") bad accesses reported before the deadline"
}

stage_loss_parity() {
    x "$LIMO_BIN" init-model --shape 1.5b --layers 2 --dtype f32 --out "$W/m15"
    note "batch: 2 rows of 512 random token ids < 151936, labels = ids with the first 64 = -100"
    x python3 - "$W/batch.json" <<'PY'
import json, random, sys
rng = random.Random(1234)
ids = [[rng.randrange(151936) for _ in range(512)] for _ in range(2)]
labels = [[-100] * 64 + row[64:] for row in ids]
with open(sys.argv[1], "w") as fh:
    json.dump({"input_ids": ids, "labels": labels}, fh)
PY
    x --stdout "$LOGS/loss-cpu.json" "$LIMO_BIN" debug loss-grad --model "$W/m15" \
        --batch "$W/batch.json" --out "$W/cpu.safetensors" --dtype f32
    x --stdout "$LOGS/loss-gpu.json" "$LIMO_BIN" debug loss-grad --model "$W/m15" \
        --batch "$W/batch.json" --out "$W/gpu.safetensors" --device cuda --dtype bf16
    [ "$STAGE_RC" = 0 ] || return
    note "pass: |gpu - cpu| / |cpu| <= 1e-2 (the last JSON line with \"loss\" of each)"
    x python3 - "$LOGS/loss-cpu.json" "$LOGS/loss-gpu.json" "$LOGS/loss-parity.json" <<'PY' ||
import json, sys
def loss(path):
    for line in reversed(open(path).read().splitlines()):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict) and "loss" in v:
            return float(v["loss"])
    raise SystemExit(f"{path}: no JSON line with a loss")
cpu, gpu = loss(sys.argv[1]), loss(sys.argv[2])
rel = abs(gpu - cpu) / abs(cpu)
ok = rel <= 1e-2
json.dump({"cpu_f32": cpu, "gpu_bf16": gpu, "rel": rel, "ok": ok}, open(sys.argv[3], "w"))
print(f"loss cpu f32 {cpu:.6f}, gpu bf16 {gpu:.6f}, rel {rel:.2e}: {'ok' if ok else 'FAIL (> 1e-2)'}")
sys.exit(0 if ok else 1)
PY
        STAGE_CHECK_FAILED=1
    note "gradients too: relative L2 of every grad.* of the GPU bf16 run against the CPU f32 run;"
    note "reported, failing only above 0.25 (broken, not bf16 rounding)"
    x python3 - "$W/cpu.safetensors" "$W/gpu.safetensors" "$LOGS/grad-parity.json" <<'PY' ||
import json, sys
# Only a comparison that ran and found a broken gradient fails the stage: a problem of this
# script itself (a module missing, an API changed) is printed and passes.
try:
    from safetensors.torch import load_file
    cpu, gpu = load_file(sys.argv[1]), load_file(sys.argv[2])
    rows = []
    for name in sorted(k for k in cpu if k.startswith("grad.")):
        a, b = gpu[name].double(), cpu[name].double()
        rows.append((float((a - b).norm() / b.norm().clamp_min(1e-300)), name))
except Exception as e:
    print(f"gradients not compared: {type(e).__name__}: {e}")
    sys.exit(0)
rows.sort(reverse=True)
worst = rows[0] if rows else (0.0, "none")
ok = worst[0] <= 0.25
json.dump({"grads": len(rows), "max_rel": worst[0], "worst": worst[1],
           "top": rows[:5], "ok": ok}, open(sys.argv[3], "w"))
print(f"grads gpu bf16 vs cpu f32: {len(rows)} tensors, max rel L2 {worst[0]:.2e} ({worst[1]})"
      + ("" if ok else ": FAIL (> 0.25)"))
for rel, name in rows[:5]:
    print(f"  {rel:.2e}  {name}")
sys.exit(0 if ok else 1)
PY
        STAGE_CHECK_FAILED=1
}
key_loss_parity() {
    py '
p, g = sys.argv[1], sys.argv[2]
print("cpu %s gpu %s rel %s; grads max rel %s (%s)" % (
    f(j(p, "cpu_f32"), "{:.5f}"), f(j(p, "gpu_bf16"), "{:.5f}"), f(j(p, "rel"), "{:.1e}"),
    f(j(g, "max_rel"), "{:.1e}"), j(g, "worst") or "?"))
' "$LOGS/loss-parity.json" "$LOGS/grad-parity.json"
}

ACCUM_32B=(--set train.grad_accum=2 --set train.loss_average=sequences) # as the recipe on 8 GPUs
stage_step_32b_w8() {
    x "$LIMO_BIN" bench step --device cuda --shape 32b --tokens 16384 --docs 1 --dtype bf16 \
        --simulate-world 8 --rank 0 "${ACCUM_32B[@]}" --warmup 1 --steps 1 \
        --json "$OUT/step-32b-w8.json"
    [ $? = 3 ] && STAGE_OOM=1
    note "exit 3 = out of device memory (one line with the plan's estimate): status OOM"
}
key_step_32b_w8() { key_step_32b "$OUT/step-32b-w8.json"; }

stage_step_32b_off() {
    x "$LIMO_BIN" bench step --device cuda --shape 32b --tokens 16384 --docs 1 --dtype bf16 \
        --simulate-world 8 --rank 0 --mem-cap 80GiB --set train.optimizer_offload=cpu \
        "${ACCUM_32B[@]}" --warmup 1 --steps 1 --json "$OUT/step-32b-off.json"
    [ $? = 3 ] && STAGE_OOM=1
    note "exit 3 = out of device memory (one line with the plan's estimate): status OOM"
}
key_step_32b_off() { key_step_32b "$OUT/step-32b-off.json"; }

key_step_32b() {
    if [ "${STAGE_OOM:-0}" = 1 ]; then
        lastline
        return
    fi
    py '
p = sys.argv[1]
print("%s tok/s, step %s s, mfu %s, peak %s GiB (plan %s)" % (
    f(j(p, "tokens_per_s")), f(j(p, "step_s.median"), "{:.2f}"), f(j(p, "mfu"), "{:.3f}"),
    f(j(p, "peak_mem.allocator_high_gib"), "{:.1f}"), f(j(p, "peak_mem.plan_estimate_gib"), "{:.1f}")))
' "$1"
}

NCCL_CMD=(launch --nproc-per-node 1 -- comm-check --nccl --iterations 100 --timeout 15)
stage_nccl() {
    x "$LIMO_BIN" "${NCCL_CMD[@]}" && return
    [ "$STAGE_TIMEDOUT" = 1 ] && return
    # NCCL >= 2.19 allocates its buffers with cuMem*, which a sandboxed runtime (gVisor) may
    # refuse: one retry without, so a failure says whether that is the cause. A pass only
    # this way still fails the stage, its key names the fix.
    note "retry: NCCL_CUMEM_ENABLE=0 (NCCL's cuMem buffers off), NCCL_DEBUG=WARN"
    if x env NCCL_CUMEM_ENABLE=0 NCCL_DEBUG=WARN "$LIMO_BIN" "${NCCL_CMD[@]}"; then
        echo "# NCCL worked only with NCCL_CUMEM_ENABLE=0" >>"$STAGE_LOG"
        STAGE_RC=0 # the summary's key then comes from key_nccl, which says so
        STAGE_CHECK_FAILED=1
    fi
}
key_nccl() {
    local line
    line=$(grep -o 'comm-check: rank 0 world 1 .*' "$STAGE_LOG" | tail -1)
    if [ -z "$line" ]; then
        lastline
    elif grep -q 'worked only with NCCL_CUMEM_ENABLE=0' "$STAGE_LOG"; then
        echo "$line (only with NCCL_CUMEM_ENABLE=0)"
    else
        echo "$line"
    fi
}

# The tiny shape at head_dim 64 (2 heads, 1 kv head) runs the flash kernels in bf16; the
# deterministic dQ makes a resumed run comparable to the bit.
TRAIN_SHAPE='hidden_size=128,intermediate_size=384,num_attention_heads=2,num_key_value_heads=1'
TRAIN_SET=(--set 'model.device="cuda"' --set 'model.dtype="bf16"'
    --set "model.init_overrides={$TRAIN_SHAPE,num_hidden_layers=2}" --set train.max_steps=30
    --set output.save_steps=20 --set output.keep_last=2 --set output.eval_examples=0
    --set "output.dir=\"$W/train\"")
stage_train() {
    x env LIMO_FLASH_DETERMINISTIC=1 "$LIMO_BIN" train "${TRAIN_SET[@]}" || return
    [ "$DRY" = 1 ] || cp "$W/train/metrics.jsonl" "$LOGS/train-metrics.jsonl"
    note "pass: the last step's loss is below the first's (metrics.jsonl)"
    x python3 - "$W/train/metrics.jsonl" "$LOGS/train.json" <<'PY' ||
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
first, last = rows[0]["loss"], rows[-1]["loss"]
ok = last < first
json.dump({"steps": len(rows), "loss_first": first, "loss_last": last, "ok": ok,
           "tokens_per_second_last": rows[-1].get("tokens_per_second")}, open(sys.argv[2], "w"))
print(f"{len(rows)} steps, loss {first:.4f} -> {last:.4f}: {'falls' if ok else 'does NOT fall'}")
sys.exit(0 if ok else 1)
PY
        STAGE_CHECK_FAILED=1
}
key_train() {
    py '
p = sys.argv[1]
print("loss %s -> %s over %s steps" % (f(j(p, "loss_first"), "{:.3f}"), f(j(p, "loss_last"), "{:.3f}"),
                                       f(j(p, "steps"))))
' "$LOGS/train.json"
}

stage_eval() {
    x "$LIMO_BIN" eval --model "$W/train/model" --device cuda --benchmarks aime --limit 4 \
        --max-new-tokens 64 --batch-size 4 --out "$W/eval" || return
    [ "$DRY" = 1 ] || cp "$W/eval/summary.json" "$LOGS/eval-summary.json"
}
key_eval() {
    py 'p = sys.argv[1]
print("%s responses, %s tok/s over the batch" % (f(j(p, "generated")),
      f(j(p, "throughput_tokens_per_s"), "{:.1f}")))' "$LOGS/eval-summary.json"
}

stage_resume() {
    if [ "$DRY" != 1 ] && { ! [ -f "$W/train/checkpoints/step-00000020/manifest.json" ] ||
        ! [ -f "$LOGS/train-metrics.jsonl" ]; }; then
        echo "# skipped: no checkpoint of the train stage at step 20 (run train first)" >>"$STAGE_LOG"
        STAGE_SKIPPED=1
        return
    fi
    x env LIMO_FLASH_DETERMINISTIC=1 "$LIMO_BIN" train "${TRAIN_SET[@]}" --resume 20 || return
    note "pass: steps 21-30 resumed lose what the uninterrupted run lost (to 1e-2; bits expected)"
    x python3 - "$LOGS/train-metrics.jsonl" "$W/train/metrics.jsonl" "$LOGS/resume.json" <<'PY' ||
import json, sys
def steps(path):
    return {r["step"]: r for r in (json.loads(l) for l in open(path) if l.strip())}
whole, resumed = steps(sys.argv[1]), steps(sys.argv[2])
later = [s for s in sorted(whole) if s > 20]
missing = [s for s in later if s not in resumed]
diffs = [abs(whole[s]["loss"] - resumed[s]["loss"]) for s in later if s in resumed]
bits = not missing and all(whole[s]["loss"] == resumed[s]["loss"] and
                           whole[s].get("grad_norm") == resumed[s].get("grad_norm") for s in later)
worst = max(diffs, default=float("nan"))
ok = bool(later) and not missing and worst <= 1e-2
json.dump({"steps": later, "missing": missing, "max_abs_loss_diff": worst, "bit_exact": bits,
           "ok": ok}, open(sys.argv[3], "w"))
print(f"steps {later[0] if later else '?'}-{later[-1] if later else '?'} resumed from step 20: "
      f"max |loss diff| {worst:.3g}, {'bit-exact' if bits else 'not bit-exact'}"
      + (f", missing steps {missing}" if missing else ""))
sys.exit(0 if ok else 1)
PY
        STAGE_CHECK_FAILED=1
}
key_resume() {
    if ! [ -f "$LOGS/resume.json" ] && grep -q '^# skipped:' "$STAGE_LOG"; then
        grep '^# skipped:' "$STAGE_LOG" | head -1 | sed 's/^# //'
        return
    fi
    py '
p = sys.argv[1]
print("max loss diff %s over steps 21-30, bit-exact %s" % (f(j(p, "max_abs_loss_diff"), "{:.3g}"),
                                                             j(p, "bit_exact")))
' "$LOGS/resume.json"
}

# ---- the plan (--dry-run) ---------------------------------------------------------------------
stage_sum=0
for s in "${SELECTED[@]}"; do stage_sum=$((stage_sum + TIMEOUT[$s])); done
total=$((stage_sum + MACHINE_S))

if [ "$DRY" = 1 ]; then
    echo "check.sh --dry-run: the plan (nothing is run)"
    echo "  OUT=$OUT  LIMO_BIN=$LIMO_BIN  work=$W  peer=$PEER"
    echo "  machine (${MACHINE_S} s): source scripts/gpu/env.sh (unpacks target/gpu/limo.xz), nvidia-smi," \
        "torch version, target/gpu/MANIFEST, ldd \$LIMO_BIN (a 'not found' library fails it)"
    for s in "${SELECTED[@]}"; do
        if [ -n "${ELASTIC_MIN[$s]+x}" ]; then
            printf '  %-12s what is left of the %d s (runs if >= %d s%s)   log %s\n' "$s" \
                "$LIMIT_S" "${ELASTIC_MIN[$s]}" "${ELASTIC_MAX[$s]+, at most ${ELASTIC_MAX[$s]} s}" \
                "logs/$s.log"
        else
            printf '  %-12s timeout %3d s   log %s\n' "$s" "${TIMEOUT[$s]}" "logs/$s.log"
        fi
        STAGE_OOM=0
        STAGE_CHECK_FAILED=0
        "stage_${s//[-.]/_}"
    done
    echo "budget: stages=$stage_sum machine=$MACHINE_S total=$total limit=$LIMIT_S"
    if [ "$total" -gt "$LIMIT_S" ]; then
        echo "check.sh: the timeouts sum to $total s, over the $LIMIT_S s budget" >&2
        exit 1
    fi
    exit 0
fi

# ---- the run ------------------------------------------------------------------------------------
exec 2>&1 # one stream, in order: the device tool returns the tail of stdout and stderr together
mkdir -p "$OUT" "$LOGS" || exit 1
ROWS=()  # "stage|status|seconds|key"
FAILED=0

pack() { # the tool returns files of up to 16 MiB: the doctor's tensors go first if over
    if command -v tar >/dev/null; then
        tar -czf "$OUT/logs.tar.gz" -C "$W" logs 2>/dev/null
        [ "$(stat -c %s "$OUT/logs.tar.gz")" -gt $((15 << 20)) ] &&
            tar -czf "$OUT/logs.tar.gz" --exclude='*.safetensors' -C "$W" logs 2>/dev/null
    else
        (cd "$W" && python3 -m tarfile -c "$OUT/logs.tar.gz" logs >/dev/null 2>&1)
    fi
}

summary() {
    {
        echo "limo GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ): ${GPU_LINE:-GPU ?}"
        [ -n "${BUILD_LINE:-}" ] && echo "$BUILD_LINE"
        printf '%-12s %-7s %7s  %s\n' stage status seconds key
        printf '%-12s %-7s %7s  %s\n' ------------ ------- ------- ---
        local r stage status sec key
        for r in "${ROWS[@]}"; do
            IFS='|' read -r stage status sec key <<<"$r"
            printf '%-12s %-7s %7s  %s\n' "$stage" "$status" "$sec" "$key"
        done
    } >"$OUT/summary.txt"
}

# -- the machine
STAGE_LOG=$LOGS/machine.txt
t0=$(now_ms)
RUN_DEADLINE=$((t0 + LIMIT_S * 1000)) # the elastic stages' end
machine_status=ok
machine_problem=""
{
    echo "== machine: $(hostname) $(uname -srm), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    [ -f target/gpu/MANIFEST ] && sed 's/^/build: /' target/gpu/MANIFEST
} | tee -a "$STAGE_LOG"
# shellcheck disable=SC1091
if ! source scripts/gpu/env.sh 2>"$W/env.err"; then
    machine_status=FAIL
    machine_problem="env.sh: $(tail -1 "$W/env.err")"
fi
LIMO_BIN=${LIMO_BIN:-$PWD/target/gpu/limo}
tee -a "$STAGE_LOG" <"$W/env.err" >&2
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >>"$STAGE_LOG"
{
    timeout 10 nvidia-smi || echo "nvidia-smi failed"
    # The binary is built against glibc 2.34+ (Debian 12 here); an older host cannot start it.
    echo "host glibc: $(ldd --version 2>/dev/null | head -1)"
    timeout 15 python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU visible to torch)")' ||
        echo "torch: could not import or query"
} 2>&1 | tee -a "$STAGE_LOG"
# The two ceilings every rate here is read against: a bf16 matmul and a device copy.
CEILINGS=$(timeout 20 python3 scripts/gpu/ceilings.py 2>>"$STAGE_LOG")
CEILINGS=${CEILINGS:-ceilings: ?}
echo "$CEILINGS" | tee -a "$STAGE_LOG"
GPU_LINE=$(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader 2>/dev/null | head -1)
GPU_LINE=${GPU_LINE:-GPU ?}
BUILD_LINE=$(grep -E '^(commit|binary):' target/gpu/MANIFEST 2>/dev/null | tr '\n' ' ')
if [ -x "$LIMO_BIN" ]; then
    echo "ldd $LIMO_BIN:" | tee -a "$STAGE_LOG"
    lddout=$(timeout 10 ldd "$LIMO_BIN" 2>&1)
    printf '%s\n' "$lddout" | tee -a "$STAGE_LOG"
    # whole lines: a too-old glibc reads "...: version `GLIBC_2.34' not found (required by ...)"
    missing=$(printf '%s\n' "$lddout" | grep 'not found' | sed 's/^[[:space:]]*//' | tr '\n' ' ' |
        cut -c1-200)
    if [ -n "$missing" ]; then
        machine_status=FAIL
        machine_problem="libraries not found: $missing"
    fi
else
    machine_status=FAIL
    machine_problem=${machine_problem:-"no binary at $LIMO_BIN"}
fi
if [ "$machine_status" = FAIL ]; then
    echo "MACHINE: FAIL: $machine_problem (every stage that runs limo will fail)" | tee -a "$STAGE_LOG"
    FAILED=1
fi
ROWS+=("machine|$machine_status|$(secs $(($(now_ms) - t0)))|${machine_problem:-$GPU_LINE; $CEILINGS}")
summary
pack

# -- the stages
for s in "${SELECTED[@]}"; do
    STAGE_LOG=$LOGS/$s.log
    : >"$STAGE_LOG"
    STAGE_RC=0
    STAGE_TIMEDOUT=0
    STAGE_OOM=0
    STAGE_CHECK_FAILED=0
    STAGE_SKIPPED=0
    t0=$(now_ms)
    if [ -n "${ELASTIC_MIN[$s]+x}" ]; then
        left_s=$(((RUN_DEADLINE - t0) / 1000))
        [ "$left_s" -lt 0 ] && left_s=0
        # After a failure the device time is worth more as a rerun once it is fixed (a new
        # machine needs 4 minutes of the session's 15 left): the elastic stages then stand down
        # (`--only` them to run them anyway).
        key=""
        if [ "$FAILED" = 1 ] && [ -z "$ONLY" ]; then
            key="not run: an earlier stage failed (the device time is kept for a rerun)"
        elif [ "$left_s" -lt "${ELASTIC_MIN[$s]}" ]; then
            key="not run: $left_s s left of the $LIMIT_S s, it needs ${ELASTIC_MIN[$s]}"
        fi
        if [ -n "$key" ]; then
            echo "== $s: skipped ($key)"
            echo "# $key" >"$STAGE_LOG"
            ROWS+=("$s|skipped|0.0|$key")
            summary
            pack
            continue
        fi
        STAGE_DEADLINE=$RUN_DEADLINE
        if [ -n "${ELASTIC_MAX[$s]+x}" ] && [ "$left_s" -gt "${ELASTIC_MAX[$s]}" ]; then
            left_s=${ELASTIC_MAX[$s]}
            STAGE_DEADLINE=$((t0 + left_s * 1000))
        fi
    else
        left_s=${TIMEOUT[$s]}
        STAGE_DEADLINE=$((t0 + TIMEOUT[$s] * 1000))
    fi
    echo "== $s (timeout $left_s s, log logs/$s.log)"
    "stage_${s//[-.]/_}"
    sec=$(secs $(($(now_ms) - t0)))
    if [ "$STAGE_SKIPPED" = 1 ]; then
        status=skipped
    elif [ "$STAGE_TIMEDOUT" = 1 ]; then
        status=timeout
    elif [ "$STAGE_OOM" = 1 ]; then
        status=OOM
    elif [ "$STAGE_RC" != 0 ] || [ "$STAGE_CHECK_FAILED" = 1 ]; then
        status=FAIL
    else
        status=ok
    fi
    key=$("key_${s//[-.]/_}" 2>/dev/null | head -1)
    # A failed command's own words say more than a key with nothing in it (the doctor's key
    # quotes each of its runs already).
    case $status in
        FAIL | timeout) [ "$STAGE_RC" != 0 ] && [ "$s" != doctor ] && key="$(lastline) [exit $STAGE_RC]" ;;
    esac
    key=$(printf '%s' "${key:-?}" | tr '|' '/')
    case $status in
        ok | OOM | skipped) ;;
        timeout) # an elastic stage that ran out of what was left fails nothing
            if [ -n "${ELASTIC_MIN[$s]+x}" ]; then
                echo "   (elastic: it had $left_s s)"
            else
                FAILED=1
            fi
            ;;
        *)
            FAILED=1
            echo "   last lines of logs/$s.log:"
            tail -n 6 "$STAGE_LOG" | cut -c1-160 | sed 's/^/   | /'
            ;;
    esac
    echo "   $status in $sec s: $key"
    ROWS+=("$s|$status|$sec|$key")
    summary
    pack
done

# The large scratch files (a 1.3 GB model, gradients) go; logs stay (and are in $OUT).
if [ -z "${LIMO_CHECK_WORK:-}" ]; then
    rm -rf "$W/m15" "$W/train" "$W/cpu.safetensors" "$W/gpu.safetensors"
fi

echo
cat "$OUT/summary.txt"
exit "$FAILED"
