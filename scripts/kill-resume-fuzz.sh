#!/usr/bin/env bash
# Kills a `limo launch -- train` of several ranks (default two) at random moments, SIGKILL to a
# rank or to the launcher, resumes from `latest` each time, and checks what a cluster user
# relies on after a crash:
#   - after every kill: no process of the job is left, and `latest` names a complete checkpoint;
#   - after a stop signal (SIGNAL=mix): the same, and `latest` is the step the ranks say they
#     stopped after;
#   - at the end: losses and every rank's checkpoint file are bit-identical to an uninterrupted
#     run, and the checkpoints directory holds exactly `keep_last` checkpoints and no debris.
# The golden tiny model (tests/fixtures) on its six rows, a checkpoint after every step.
# Usage: scripts/kill-resume-fuzz.sh [rounds] (default 20); LIMO_BIN picks the binary
# (default target/debug/limo, what `cargo test` builds), SEED the random moments, STEPS the
# run's length (3000), NPROC the ranks (2), ACCUM train.grad_accum (1), OFFLOAD
# train.optimizer_offload (none), SAVE_STEPS output.save_steps (1), SIGNAL what is sent (KILL;
# TERM, INT, USR1 or HUP; mix: one of the five at random each round).
# Exit 1 on any failed check; prints the seed to rerun it.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
limo=${LIMO_BIN:-target/debug/limo}
steps=${STEPS:-3000}
nproc=${NPROC:-2}
seed=${SEED:-$$}
RANDOM=$seed
work=$(mktemp -d)
trap 'pkill -9 -f "$work/" 2>/dev/null || true; rm -rf "$work"' EXIT
golden=$PWD/tests/fixtures/golden/qwen2-tiny
echo "kill-resume fuzz: $rounds rounds, $nproc ranks, $steps steps, seed $seed, $limo"

fail() {
    echo "FAIL (seed $seed): $*" >&2
    exit 1
}

config() { # name
    cat >"$work/$1.toml" <<EOF
[model]
path = "$golden/model"
dtype = "f32"
[data]
path = "$golden/train/data.jsonl"
format = "tokenized"
[train]
lr = 1e-3
schedule = "cosine"
warmup_steps = 2
max_steps = $steps
batch_size = 1
grad_accum = ${ACCUM:-1}
optimizer_offload = "${OFFLOAD:-none}"
weight_decay = 0.01
max_grad_norm = 1.0
epochs = 1000
[output]
dir = "$work/$1"
export_dtype = "none"
save_steps = ${SAVE_STEPS:-1}
save_every_epoch = false
keep_last = 2
EOF
}

train() { # name [--resume latest]
    "$limo" launch --nproc-per-node "$nproc" -- train --config "$work/$1.toml" "${@:2}"
}

job_left() { pgrep -f "$work/fuzz.toml" >/dev/null; }

config ref
config fuzz
train ref >"$work/ref.log" 2>&1 || fail "the uninterrupted run failed: $(tail -3 "$work/ref.log")"
ckpts=$work/fuzz/checkpoints
kills=0
for round in $(seq "$rounds"); do
    # --resume auto, as a requeued job would: also when a kill left the first checkpoint
    # without `latest` (a start without --resume is refused over a run's checkpoints).
    resume=(--resume auto) start=0
    [ -f "$ckpts/latest" ] && start=$((10#$(sed 's/step-//' "$ckpts/latest")))
    # limo itself in the background (not through the shell function): $! is the launcher. A
    # script's background job starts with SIGINT ignored, and limo keeps an ignored signal
    # ignored (as nohup's SIGHUP must be): env restores it, so SIGINT is tested too.
    env --default-signal=INT "$limo" launch --nproc-per-node "$nproc" -- train \
        --config "$work/fuzz.toml" "${resume[@]}" >"$work/round-$round.log" 2>&1 &
    launcher=$!
    sleep "0.$((RANDOM % 9 + 1))$((RANDOM % 10))"
    mapfile -t ranks < <(pgrep -P "$launcher" || true)
    victim=$launcher what=launcher
    if [ $((RANDOM % 3)) != 0 ] && [ ${#ranks[@]} -gt 0 ]; then
        victim=${ranks[$((RANDOM % ${#ranks[@]}))]} what=rank
    fi
    signals=(KILL TERM INT USR1 HUP)
    case ${SIGNAL:-KILL} in
    mix) sig=${signals[$((RANDOM % 5))]} ;;
    *) sig=${SIGNAL:-KILL} ;;
    esac
    kill -s "$sig" "$victim" 2>/dev/null && kills=$((kills + 1))
    wait "$launcher" 2>/dev/null || true
    # A signal must end the job (stopped or killed), never be ignored: a round is at most 1 s
    # before its signal, far from 500 steps, so finishing from further back means it was.
    [ "$start" -lt $((steps - 500)) ] && grep -q "trained $steps steps" "$work/round-$round.log" &&
        fail "round $round: SIG$sig to the $what was ignored: the run went on to its end"
    # Ranks of a killed launcher get SIGTERM from the kernel (PR_SET_PDEATHSIG).
    for _ in $(seq 100); do job_left || break; sleep 0.1; done
    job_left && fail "round $round: processes of the job outlived the kill of its $what"
    if [ -f "$ckpts/latest" ]; then
        name=$(cat "$ckpts/latest")
        [ -f "$ckpts/$name/manifest.json" ] || [ -f "$ckpts/.$name.replaced/manifest.json" ] ||
            fail "round $round: latest names $name, which has no manifest"
    fi
    # A stop signal during the steps: every rank names the step it stopped after, and latest is it.
    stopped=$(grep -o "stopped [a-z ]*\(SIG[A-Z0-9]*\|stop signal\) after step [0-9]*" \
        "$work/round-$round.log" | sed 's/.* //' | sort -u || true)
    if [ -n "$stopped" ]; then
        [ "$(wc -l <<<"$stopped")" = 1 ] || fail "round $round: ranks stopped after different steps: $stopped"
        [ "$(grep -c "stopped [a-z ]*\(SIG[A-Z0-9]*\|stop signal\) after step" "$work/round-$round.log")" = "$nproc" ] ||
            fail "round $round: not every rank says it stopped: $(tail -5 "$work/round-$round.log")"
        [ "$(cat "$ckpts/latest")" = "$(printf 'step-%08d' "$stopped")" ] ||
            fail "round $round: stopped after step $stopped, but latest is $(cat "$ckpts/latest")"
    fi
    echo "round $round: SIG$sig to the $what${stopped:+, stopped after step $stopped}; $(ls -A "$ckpts" 2>/dev/null | tr '\n' ' ')"
    grep -q "trained $steps steps" "$work/round-$round.log" && break
done
train fuzz --resume auto >"$work/final.log" 2>&1 || fail "the final resume failed: $(tail -3 "$work/final.log")"

losses() { grep -o '"loss":[^,}]*' "$1"; }
[ "$(losses "$work/ref/metrics.jsonl" | wc -l)" = "$steps" ] || fail "the uninterrupted run logged $(losses "$work/ref/metrics.jsonl" | wc -l) losses"
cmp -s <(losses "$work/ref/metrics.jsonl") <(losses "$work/fuzz/metrics.jsonl") ||
    fail "losses differ from the uninterrupted run's"
last=$(printf 'step-%08d' "$steps")
for ((r = 0; r < nproc; r++)); do
    file=$(printf 'rank-%05d.safetensors' "$r")
    cmp -s "$work/ref/checkpoints/$last/$file" "$ckpts/$last/$file" ||
        fail "rank $r's final checkpoint differs from the uninterrupted run's"
done
left=$(ls -A "$ckpts" | tr '\n' ' ')
save=${SAVE_STEPS:-1}
[ "$left" = "latest $(printf 'step-%08d' $(((steps - 1) / save * save))) $last " ] ||
    fail "checkpoints left: $left(expected latest and the last two)"
echo "ok: $kills kills; $steps losses and every rank's last checkpoint bit-identical to the" \
    "uninterrupted run's; nothing left behind"
