#!/usr/bin/env bash
# shellcheck disable=SC2317  # stage_*/key_* are called by name: "stage_${s//[-.]/_}"
# A GPU visit's checks (scripts/gpu/README.md). Runs from the repository root on the GPU
# machine, with target/gpu carried (scripts/gpu/package.sh): prints the machine, then runs the
# stages below in order, each under its own timeout with its own log, going on after a stage
# fails or times out, and ends with ONE summary table (stdout and $OUT/summary.txt) whose last
# line names what a next call should run.
#
#   bash scripts/gpu/check.sh --budget 330         # the visit's first call (timeout_s 370)
#   bash scripts/gpu/check.sh --only a,b --budget N    # a later call: the stages it names
#   bash scripts/gpu/check.sh --dry-run [--budget N] [--only ...]   # the plan; runs nothing
#
# --budget S (default 540): the call's seconds, the machine section included. A stage with a
# timeout runs only if its whole timeout fits in what is left (else `skipped`, and named on the
# summary's `next:` line); a stage that ends early leaves its time to the later ones. A session
# has 15 minutes of device time, a fresh machine takes one or two to start and none starts with
# under 4 left: a first call of ~330 s leaves room for a second after a fix.
#
# Stages (the --only keys), in order, with their timeouts in seconds (scripts/gpu/README.md has
# the details); correctness first, as nothing here has run on a GPU before:
#   doctor 40       limo doctor --quick: every kernel against the CPU reference, the flash path
#                   held at sm80; then the bf16 attention rows with the Hopper kernels
#   loss-parity 50  loss of one batch on a 2-layer 1.5b model: CPU f32 vs GPU bf16, within 1e-2;
#                   every gradient's relative L2 too (reported; fails only above 0.25)
#   train 25        a 30-step bf16 `limo train` of the embedded tiny config at head_dim 64
#                   (deterministic dQ), checkpoints at 20 and 30: the loss must fall
#   resume 30       `limo train --resume 20` of train's run: steps 21-30 against the
#                   uninterrupted run's (bit-exact expected; fails above 1e-2)
#   eval 30         `limo eval --device cuda` of train's export: 4 aime problems, 64 new tokens;
#                   the run must end with its summary
#   step-1.5b 85    limo bench step 1.5b at 16k tokens, and the PyTorch peer (fp32 master, then
#                   bf16 state) on the same shape: tokens/s and their ratio
#   attention 45    attention_vs_torch.py: torch SDPA vs our flash attention, 16k tokens, hd128,
#                   causal, 40/8 and 12/2 heads
#   kernels 35      limo bench kernels: kernel timings at Qwen2.5-32B shapes
#   generate 25     generate_vs_transformers.py: greedy generation of the 1.5b shape, batch 32,
#                   64-token prompts, 128 new tokens, tokens/s; limo's --verify against the
#                   full forward
#   step-32b-w8 95  limo bench step 32b as rank 0 of a simulated world of 8, 2 micro-batches
#                   per step, optimizer on the GPU, uncapped (limo plan: ~111.5 GiB)
#   step-32b-off 95 the same rank with train.optimizer_offload = "cpu" under an 80 GiB cap
#                   (exit 3 = out of device memory: status OOM)
#   nccl 15         limo launch --nproc-per-node 1 -- comm-check --nccl
#   generate-1k *   generate at full length (128-token prompts, 1024 new tokens) if at least
#                   120 s of the budget are left (else `skipped`); a timeout fails nothing
#   profile *       (at most 90 s, if 60 are left) Nsight Compute's counters for each flash
#                   kernel at 16k tokens, 40/8 heads (scripts/gpu/profile.sh); never a failure
#   sanitize *      (at most 90 s, if 60 are left) compute-sanitizer memcheck over `limo doctor
#                   --quick`; `skipped` where the sanitizer is missing or cannot run (gVisor)
#   step-kernels *  (at most 120 s, if 60 are left) Nsight Compute's duration of every kernel
#                   of one step-1.5b step (4 layers), by kernel and by kind
#   no-ckpt *       (at most 45 s, if 30 are left) step-1.5b's limo run again with
#                   activation_checkpointing = "auto" (1.5B at 16k fits an H200 without it)
#   loss-chunk *    (at most 75 s, if 40 are left) no-ckpt's run with train.loss_chunk 4096
#                   and 16384 (the default 1024)
#   recompute *     (at most 45 s, if 30 are left) step-1.5b's limo run again with
#                   train.recompute_attention = true
# Elastic stages (*) run on what is left of the budget when they start, and stand down when an
# earlier stage FAILED (a fix and a rerun are then worth more); a timeout does not stop them
# (the timeouts are estimates: no stage has run on a GPU yet). The machine section (~60 s:
# unpacking, nvidia-smi, torch, ldd, the ceilings, candle's PTX compiled once by
# `limo debug warm-jit` into the driver's cache) counts against the budget.
#
# Results in $OUT (default ./check-out; the device tool sets it), at most 8 files, as the tool
# returns no more: summary.txt, logs.tar.gz (logs/machine.txt, logs/<stage>.log, small JSONs),
# step-1.5b.json, peer-1.5b-{fp32,bf16}.json, step-32b-{w8,off}.json, attention.json.
# Scratch (models, run directories): $LIMO_CHECK_WORK, default a new /tmp/limo-check.XXXXXX.
# Exit status: 0 when every stage run is ok, OOM or skipped (or an elastic one timed out), 1
# when one failed or a fixed one timed out, 2 on bad arguments.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

STAGES=(doctor loss-parity train resume eval step-1.5b attention kernels generate step-32b-w8
    step-32b-off nccl generate-1k profile sanitize step-kernels no-ckpt loss-chunk recompute)
declare -A TIMEOUT=(
    [doctor]=40 [loss-parity]=50 [train]=25 [resume]=30 [eval]=30 [step-1.5b]=85 [attention]=45
    [kernels]=35 [generate]=25 [step-32b-w8]=95 [step-32b-off]=95 [nccl]=15 [generate-1k]=0
    [profile]=0 [sanitize]=0 [step-kernels]=0 [no-ckpt]=0 [loss-chunk]=0 [recompute]=0
)
# Elastic stages have no timeout of their own (0 above): each runs until the budget's end, and
# only if at least this many seconds are left when it starts ...
declare -A ELASTIC_MIN=([generate-1k]=120 [profile]=60 [sanitize]=60 [step-kernels]=60 [no-ckpt]=30
    [loss-chunk]=40 [recompute]=30)
# ... and at most this many (the rest stays for the stages after it).
declare -A ELASTIC_MAX=([profile]=90 [sanitize]=90 [step-kernels]=120 [no-ckpt]=45 [loss-chunk]=75
    [recompute]=45)
MACHINE_S=60  # the machine section's estimate (--dry-run's plan): unpacking, nvidia-smi, torch,
              # ldd, the ceilings, candle's PTX JIT
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
        --budget)
            [ $# -ge 2 ] || { echo "check.sh: --budget needs a number of seconds" >&2; exit 2; }
            LIMIT_S=$2
            shift
            ;;
        --budget=*) LIMIT_S=${1#--budget=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "check.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if ! [[ "$LIMIT_S" =~ ^[0-9]{1,6}$ ]] || [ $((10#$LIMIT_S)) -lt 1 ]; then
    echo "check.sh: --budget $LIMIT_S: a whole number of seconds, at least 1" >&2
    exit 2
fi
LIMIT_S=$((10#$LIMIT_S)) # "0330" is 330 s, not octal

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

# ---- the stages (stage_X, key_X) --------------------------------------------------------------
# shellcheck source=scripts/gpu/check-stages.sh
source scripts/gpu/check-stages.sh || exit 2

# ---- the plan (--dry-run) ---------------------------------------------------------------------
# At worst every stage takes its whole timeout (an elastic one what it may): which stages the
# budget then runs, and which wait for a next call.
if [ "$DRY" = 1 ]; then
    echo "check.sh --dry-run: the plan (nothing is run)"
    echo "  OUT=$OUT  LIMO_BIN=$LIMO_BIN  work=$W  peer=$PEER"
    echo "  machine (~${MACHINE_S} s): source scripts/gpu/env.sh (unpacks target/gpu/limo.xz), nvidia-smi," \
        "torch version, target/gpu/MANIFEST, ldd \$LIMO_BIN (a 'not found' library fails it)," \
        "ceilings.py, limo debug warm-jit"
    used=$MACHINE_S
    runs=()
    later=()
    for s in "${SELECTED[@]}"; do
        left=$((LIMIT_S - used))
        if [ -n "${ELASTIC_MIN[$s]+x}" ]; then
            printf '  %-12s what is left of the %d s (runs if >= %d s%s)   log %s\n' "$s" \
                "$LIMIT_S" "${ELASTIC_MIN[$s]}" "${ELASTIC_MAX[$s]+, at most ${ELASTIC_MAX[$s]} s}" \
                "logs/$s.log"
            if [ "$left" -ge "${ELASTIC_MIN[$s]}" ]; then
                take=${ELASTIC_MAX[$s]:-$left}
                [ "$take" -gt "$left" ] && take=$left
                used=$((used + take))
                runs+=("$s")
            else
                later+=("$s")
            fi
        else
            printf '  %-12s timeout %3d s   log %s\n' "$s" "${TIMEOUT[$s]}" "logs/$s.log"
            if [ "$left" -ge "${TIMEOUT[$s]}" ]; then
                used=$((used + TIMEOUT[$s]))
                runs+=("$s")
            else
                later+=("$s")
            fi
        fi
        STAGE_OOM=0
        STAGE_CHECK_FAILED=0
        "stage_${s//[-.]/_}"
    done
    echo "budget: limit=$LIMIT_S machine=$MACHINE_S worst-case runs: $(IFS=,; echo "${runs[*]}") ($used s)"
    echo "next: $(IFS=,; echo "${later[*]:-none}")"
    exit 0
fi

# ---- the run ------------------------------------------------------------------------------------
exec 2>&1 # one stream, in order: the device tool returns the tail of stdout and stderr together
mkdir -p "$OUT" "$LOGS" || exit 1
ROWS=()  # "stage|status|seconds|key"
FAILED=0 # a stage failed or a fixed one timed out: exit 1
BROKEN=0 # a stage failed (not a timeout): the elastic stages stand down
NEXT=()  # fixed stages the budget left out, that failed or timed out (next_line adds more)
declare -A REACHED=() # stages with a row in the summary
MACHINE_TOOK=0 # the machine section's seconds

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
        next_line
    } >"$OUT/summary.txt"
}

# The summary's last line, the command of a next call: the fixed stages that failed, timed out
# or did not fit, those not reached yet (a call cut short keeps this line as it was after its
# last stage), and train where resume or eval is named (they need its run, made in the same
# call). Its budget: their timeouts, the machine section (this call's, or the estimate) and 30 s.
next_line() {
    local -A want=()
    local s n need list=()
    for s in "${NEXT[@]+"${NEXT[@]}"}"; do want[$s]=1; done
    for s in "${SELECTED[@]}"; do
        [ -z "${ELASTIC_MIN[$s]+x}" ] && [ -z "${REACHED[$s]+x}" ] && want[$s]=1
    done
    [ -n "${want[resume]+x}${want[eval]+x}" ] && want[train]=1
    need=$((MACHINE_TOOK > MACHINE_S ? MACHINE_TOOK : MACHINE_S))
    need=$((need + 30))
    for s in "${STAGES[@]}"; do
        [ -n "${want[$s]+x}" ] || continue
        list+=("$s")
        need=$((need + TIMEOUT[$s]))
    done
    if [ "${#list[@]}" = 0 ]; then
        echo "next: nothing (every stage selected ran)"
        return
    fi
    n=$(IFS=,; echo "${list[*]}")
    echo "next: bash scripts/gpu/check.sh --only $n --budget $need (timeout_s $((need + 40)))"
}

# -- the machine
STAGE_LOG=$LOGS/machine.txt
t0=$(now_ms)
RUN_DEADLINE=$((t0 + LIMIT_S * 1000)) # the budget's end
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
# candle's PTX, compiled once now (all modules in parallel) into the driver's cache
# (CUDA_CACHE_PATH, env.sh), so that the doctor's 40 s are not spent on it.
JIT_LINE=""
if [ "$machine_status" = ok ]; then
    jitout=$(timeout -k 5 45 "$LIMO_BIN" debug warm-jit 2>&1)
    printf '%s\n' "$jitout" >>"$STAGE_LOG"
    JIT_LINE=$(printf '%s\n' "$jitout" | grep '^jit: ' | tail -1)
    JIT_LINE=${JIT_LINE:-"jit: warm-jit failed: $(printf '%s\n' "$jitout" | tail -1 | cut -c1-100)"}
    echo "$JIT_LINE; cache ${CUDA_CACHE_PATH:-?}: $(du -sh "${CUDA_CACHE_PATH:-/nonexistent}" 2>/dev/null |
        cut -f1)" | tee -a "$STAGE_LOG"
fi
if [ "$machine_status" = FAIL ]; then
    echo "MACHINE: FAIL: $machine_problem (every stage that runs limo will fail)" | tee -a "$STAGE_LOG"
    FAILED=1
    BROKEN=1
fi
MACHINE_TOOK=$(((($(now_ms) - t0) + 999) / 1000))
ROWS+=("machine|$machine_status|$(secs $(($(now_ms) - t0)))|${machine_problem:-$GPU_LINE; $CEILINGS${JIT_LINE:+; ${JIT_LINE#jit: }}}")
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
    STAGE_WAITS=0 # skipped for want of an earlier stage's output (resume, eval without train)
    t0=$(now_ms)
    left_s=$(((RUN_DEADLINE - t0) / 1000))
    [ "$left_s" -lt 0 ] && left_s=0
    key=""
    if [ -n "${ELASTIC_MIN[$s]+x}" ]; then
        # After a failure the device time is worth more as a rerun once it is fixed (a new
        # machine needs 4 minutes of the session's 15 left): the elastic stages then stand down
        # (`--only` them to run them anyway).
        if [ "$BROKEN" = 1 ] && [ -z "$ONLY" ]; then
            key="not run: an earlier stage failed (the device time is kept for a rerun)"
        elif [ "$left_s" -lt "${ELASTIC_MIN[$s]}" ]; then
            key="not run: $left_s s left of the $LIMIT_S s, it needs ${ELASTIC_MIN[$s]}"
        fi
    elif [ "$left_s" -lt "${TIMEOUT[$s]}" ]; then
        key="not run: $left_s s left of the $LIMIT_S s budget, its timeout is ${TIMEOUT[$s]}"
    fi
    if [ -n "$key" ]; then
        echo "== $s: skipped ($key)"
        echo "# $key" >"$STAGE_LOG"
        ROWS+=("$s|skipped|0.0|$key")
        REACHED[$s]=1
        [ -z "${ELASTIC_MIN[$s]+x}" ] && NEXT+=("$s") # the elastic ones are extras: --only them
        summary
        pack
        continue
    fi
    if [ -n "${ELASTIC_MIN[$s]+x}" ]; then
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
        [ "$STAGE_WAITS" = 1 ] && NEXT+=("$s") # next_line adds train, whose run it needs
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
                NEXT+=("$s")
            fi
            ;;
        *)
            FAILED=1
            BROKEN=1
            [ -z "${ELASTIC_MIN[$s]+x}" ] && NEXT+=("$s")
            echo "   last lines of logs/$s.log:"
            tail -n 6 "$STAGE_LOG" | cut -c1-160 | sed 's/^/   | /'
            ;;
    esac
    echo "   $status in $sec s: $key"
    ROWS+=("$s|$status|$sec|$key")
    REACHED[$s]=1
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
