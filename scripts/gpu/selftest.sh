#!/usr/bin/env bash
# check.sh's real run (not --dry-run) on this machine, without a GPU: a fake `limo`, fake GPU
# python scripts (torch's side), a fake nvidia-smi and a fake ncu stand in for the GPU machine,
# so that a shell mistake in a stage, a key or the budget logic shows here and not in a GPU
# visit's call. Eight visits: one where everything passes, one where the sm90 kernels fail the
# doctor and the 32B rank with offload runs out of memory, one where they disagree with sm80 only
# on a 16k document, one where that check hangs, one whose budget leaves stages to the next call,
# one with resume and eval but no train, one killed mid-stage (the device tool's limit), one
# (profile only) where ncu has no counters. Each run's summary is checked; CI runs this.
#   bash scripts/gpu/selftest.sh        # exit 0 when all eight visits end as expected
set -uo pipefail
# No `| grep -q` below: grep -q exits at the first match, the writer then dies of SIGPIPE and
# pipefail fails the pipeline (1 CI run in 3 reported logs.tar.gz without logs/doctor.log).
cd "$(dirname "$0")/../.." || exit 2
T=$(mktemp -d /tmp/limo-check-selftest.XXXXXX)
[ -n "${SELFTEST_KEEP:-}" ] || trap 'rm -rf "$T"' EXIT
REAL_PY=$(command -v python3) || { echo "selftest: no python3" >&2; exit 2; }
mkdir -p "$T/bin" "$T/site/nvidia/cublas/lib" "$T/peer"
touch "$T/site/nvidia/cublas/lib/libcublas.so.13" "$T/peer/gpu_peer_bench.py"

# -- the fake limo: records each call (with LIMO_FLASH_PATH) and answers as the real one would
cat >"$T/bin/limo" <<'EOF'
#!/usr/bin/env bash
echo "LIMO_FLASH_PATH=${LIMO_FLASH_PATH:-} $*" >>"$FAKE_CALLS"
arg() { # the value after flag $1
    local want=$1
    shift
    while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done
}
row() { printf '%-28s %-46s %-5s %-15s %10s %8s  %s\n' "$@"; }
case "$1 ${2:-}" in
    "doctor --quick")
        if [[ "$*" == *"--only attention,attention_16k"* ]]; then
            row "attention fwd (sm80)" "384 tokens 40/8x128, 1 docs" bf16 out 1.0e-03 1e-02 ok
            if [ "${FAKE_SM90:-ok}" = fail ]; then
                row "attention fwd (sm90)" "384 tokens 40/8x128, 1 docs" bf16 out 9.1e-01 1e-02 FAIL
                echo "  where: 24576 of 1966080 elements (1.25%) off; axis 0 of 384: 64-127"
                row "attention bwd (sm90)" "384 tokens 40/8x128, 1 docs" bf16 dq 1.0e-03 1e-02 ok
                echo "error: 1 of 3 checks failed" >&2
                exit 1
            fi
            row "attention fwd (sm90)" "384 tokens 40/8x128, 1 docs" bf16 out 1.0e-03 1e-02 ok
            row "attention bwd (sm90)" "384 tokens 40/8x128, 1 docs" bf16 dq 1.0e-03 1e-02 ok
            # Cut by the stage's deadline in the 16k-token check, after the small sm90 rows passed.
            [ "${FAKE_SM90:-ok}" = hang ] && exit 124
            if [ "${FAKE_SM90:-ok}" = long ]; then # only the 16k-token agreement with sm80
                row "attention fwd (sm90) = sm80" "16384 tokens 12/2x128, 1 doc" bf16 out 5.0e-01 1e-02 FAIL
                echo "error: 1 of 4 checks failed" >&2
                exit 1
            fi
            row "attention fwd (sm90) = sm80" "16384 tokens 12/2x128, 1 doc" bf16 out 3.0e-03 1e-02 ok
            echo "all 4 checks passed"
        else
            row rms_norm 512x1536 f32 y 1.0e-07 1e-04 ok
            echo "all 118 checks passed"
        fi
        ;;
    "bench kernels")
        echo "rms_norm fwd                16384x5120 bf16     0.110 ms  3050.0 GB/s"
        echo "flash_attention forward     16384 40/8x128      6.000 ms   458.0 TFLOP/s"
        ;;
    "bench step")
        json=$(arg --json "$@")
        [ "${FAKE_STEP:-}" = hang ] && exec sleep 20 # the device tool's kill comes first
        if [ "${FAKE_OOM:-}" = yes ] && [[ "$*" == *optimizer_offload* ]]; then
            echo "error: out of device memory (plan: 51.1 GiB)" >&2
            exit 3
        fi
        echo '{"tokens_per_s": 30000, "mfu": 0.45, "step_s": {"median": 0.55}, "checkpointed_layers": 0,
               "peak_mem": {"allocator_high_gib": 60.5, "process_gib": 58.0, "plan_estimate_gib": 62.1}}' >"$json"
        ;;
    "init-model --shape") mkdir -p "$(arg --out "$@")" ;;
    "debug warm-jit")
        echo "jit binary          1234 KiB of PTX     3.10 s"
        echo "jit: 11 candle modules loaded in 3.20 s (wall, in parallel)"
        ;;
    "debug loss-grad")
        [ "$(arg --dtype "$@")" = bf16 ] && echo '{"loss": 11.95}' || echo '{"loss": 11.93}'
        ;;
    "launch --nproc-per-node")
        echo "comm-check: rank 0 world 1 iterations 100 checksum 00000000deadbeef ok"
        ;;
    "train --set")
        dir=$(printf '%s\n' "$@" | sed -n 's/^output.dir="\(.*\)"$/\1/p')
        mkdir -p "$dir/checkpoints/step-00000020" "$dir/checkpoints/step-00000030" "$dir/model"
        echo '{}' >"$dir/checkpoints/step-00000020/manifest.json"
        echo '{}' >"$dir/model/config.json"
        : >"$dir/metrics.jsonl"
        for s in $(seq 1 30); do
            echo "{\"step\": $s, \"loss\": $((40 - s)).5, \"grad_norm\": 1.0}" >>"$dir/metrics.jsonl"
        done
        ;;
    "eval --model")
        m=$(arg --model "$@")
        [ -d "$m" ] || { echo "error: model $m: no config.json" >&2; exit 1; }
        mkdir -p "$(arg --out "$@")"
        echo '{"generated": 4, "throughput_tokens_per_s": 812.5}' >"$(arg --out "$@")/summary.json"
        ;;
    *) echo "fake limo: unexpected call: $*" >&2; exit 9 ;;
esac
EOF

# -- python3: the GPU scripts (torch, transformers) answer with fixed results; the rest (the
# summary's JSON readers, the stages' own checks) is the real python.
cat >"$T/bin/python3" <<EOF
#!/usr/bin/env bash
out() { while [ \$# -gt 0 ]; do [ "\$1" = --json-out ] && { echo "\$2"; return; }; shift; done; }
case "\${1:-}" in
    scripts/gpu/ceilings.py) echo "ceilings: bf16 matmul 788 TFLOP/s, copy 4.30 TB/s"; exit 0 ;;
    scripts/gpu/attention_vs_torch.py)
        echo '{"shapes": [{"q_heads": 40, "kv_heads": 8, "torch": {"flash": {"fwd_tflops": 400}},
               "limo": {"rows": [{"kernel": "flash_attention forward", "tflops": 458}]}}]}' \
            >"\$(out "\$@")"
        exit 0 ;;
    scripts/gpu/generate_vs_transformers.py)
        echo '{"limo_tokens_per_s": 5000, "transformers_tokens_per_s": 1500, "ratio": 3.33,
               "limo": {"ms_per_step": 6.4, "verify": {"max_rel_l2": 0.01, "max_gap_sd": 0.1,
               "passed": true}}}' >"\$(out "\$@")"
        exit 0 ;;
    */gpu_peer_bench.py)
        [[ "\$*" == *--master-fp32* ]] && tps=20000 || tps=22000
        echo "{\"tokens_per_s\": \$tps}" >"\$(out "\$@")"
        exit 0 ;;
    -c) [[ "\${2:-}" == "import torch;"* ]] && { echo "torch 2.11.0 (fake)"; exit 0; } ;;
esac
exec "$REAL_PY" "\$@"
EOF
cat >"$T/bin/nvidia-smi" <<'EOF'
#!/usr/bin/env bash
echo "NVIDIA H200 (fake), 580.00, 143771 MiB"
EOF
# -- ncu (Nsight Compute): runs the profiled command, then answers --import with a details page
# in its CSV form (two launches of one kernel, the doctor's small one first) or as text.
cat >"$T/bin/ncu" <<'EOF'
#!/usr/bin/env bash
case " $* " in
    *" --version "*) echo "NVIDIA (R) Nsight Compute Command Line Profiler"; echo "Version 2025.3.1.0 (fake)"; exit 0 ;;
    *" --list-sections "*)
        printf '%s\n' "Identifier  Display Name  Filename" SpeedOfLight Occupancy WarpStateStats
        exit 0 ;;
    *" --import "*" --csv "*)
        echo '==PROF== Connected to process 1 (fake)'
        echo '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'
        k() { echo "\"$1\",\"1\",\"limo\",\"h\",\"$2\",\"1\",\"7\",\"(384, 1, 1)\",\"$3\",\"0\",\"9.0\",\"$4\",\"$5\",\"$6\",\"$7\""; }
        k 0 flash_bwd_sm90_bf16_hd128 "(5, 40, 1)" "GPU Speed Of Light Throughput" Duration nsecond "512,000"
        k 1 flash_bwd_sm90_bf16_hd128 "(128, 40, 1)" "GPU Speed Of Light Throughput" Duration nsecond "21,500,000"
        k 1 flash_bwd_sm90_bf16_hd128 "(128, 40, 1)" "GPU Speed Of Light Throughput" "Compute (SM) Throughput" % 62.4
        k 1 flash_bwd_sm90_bf16_hd128 "(128, 40, 1)" "GPU Speed Of Light Throughput" "Memory Throughput" % 31.2
        k 1 flash_bwd_sm90_bf16_hd128 "(128, 40, 1)" "Occupancy" "Achieved Occupancy" % 18.7
        k 1 flash_bwd_sm90_bf16_hd128 "(128, 40, 1)" "GPU Speed Of Light Throughput" "" "" ""
        k 2 flash_fwd_sm90_bf16_hd128 "(128, 40, 1)" "GPU Speed Of Light Throughput" Duration usecond "7,900"
        k 2 flash_fwd_sm90_bf16_hd128 "(128, 40, 1)" "GPU Speed Of Light Throughput" "Compute (SM) Throughput" % 71
        k 2 flash_fwd_sm90_bf16_hd128 "(128, 40, 1)" "GPU Speed Of Light Throughput" "Memory Throughput" % 12
        exit 0 ;;
    *" --import "*) echo "  flash_fwd_sm90_bf16_hd128 (128, 40, 1)x(384, 1, 1), Context 1, Stream 7"; exit 0 ;;
esac
if [ "${FAKE_NCU:-ok}" = nocounters ]; then
    echo "==ERROR== Failed to initialize the profiler: LibraryNotLoaded"
    exit 1
fi
rep=""
while [ $# -gt 0 ] && [[ "$1" != */limo ]]; do
    [ "$1" = --export ] && rep=$2.ncu-rep
    shift
done
"$@"
rc=$?
[ -n "$rep" ] && echo fake >"$rep"
exit $rc
EOF
chmod +x "$T/bin/"*

FAILS=0
# visit NAME EXPECTED_EXIT [--only=STAGES] [--budget=S] [--kill-after=S] [VAR=VALUE ...]:
# check.sh under the fakes (killed after S seconds, as the device tool kills a call at its
# limit); its summary in $T/NAME.txt
visit() {
    local name=$1 want=$2 rc only=() killer=()
    shift 2
    while [[ "${1:-}" == --only=* || "${1:-}" == --budget=* || "${1:-}" == --kill-after=* ]]; do
        case $1 in
            --kill-after=*) killer=(timeout "${1#--kill-after=}") ;;
            *) only+=("$1") ;;
        esac
        shift
    done
    rm -rf "$T/out" "$T/work"
    env "$@" PATH="$T/bin:$PATH" PYTHONPATH="$T/site" LIMO_BIN="$T/bin/limo" \
        LIMO_PEER_DIR="$T/peer" OUT="$T/out" LIMO_CHECK_WORK="$T/work" FAKE_CALLS="$T/$name.calls" \
        "${killer[@]}" bash scripts/gpu/check.sh "${only[@]}" >"$T/$name.log" 2>&1
    rc=$?
    cp "$T/out/summary.txt" "$T/$name.txt" 2>/dev/null
    if [ "$rc" != "$want" ]; then
        echo "selftest $name: check.sh exited $rc, expected $want; its output ends:" >&2
        tail -20 "$T/$name.log" >&2
        FAILS=$((FAILS + 1))
    fi
}
# expect NAME STAGE STATUS [KEY_PART]: the summary row of STAGE has STATUS (and KEY_PART)
expect() {
    local row
    row=$(awk -v s="$2" '$1 == s' "$T/$1.txt" 2>/dev/null)
    if [ "$(awk '{ print $2 }' <<<"$row")" != "$3" ] || [[ "$row" != *"${4:-}"* ]]; then
        echo "selftest $1: stage $2: expected $3${4:+ with \"$4\"}, got: ${row:-no row}" >&2
        FAILS=$((FAILS + 1))
    fi
}

visit pass 0
expect pass machine ok "NVIDIA H200 (fake)"
expect pass doctor ok "flash held at sm80: all 118 checks passed; attention bf16: all 4 checks passed"
expect pass kernels ok "2 timings; rms_norm 3050.0 GB/s, attn fwd 458.0 TFLOP/s"
expect pass attention ok "40/8 fwd limo 458 torch 400 TF/s"
expect pass step-1.5b ok "limo 30000 tok/s (mfu 0.450), peer 20000 (fp32 master) / 22000 (bf16) tok/s, limo/peer 1.50"
expect pass generate ok "limo 5000 tok/s (6.4 ms/step), transformers 1500 tok/s, limo/transformers 3.33"
expect pass loss-parity ok "cpu 11.93000 gpu 11.95000 rel 1.7e-03"
expect pass step-32b-w8 ok "30000 tok/s, step 0.55 s, mfu 0.450, peak 60.5 GiB, device 58.0 GiB (plan 62.1: +7.1%)"
expect pass step-32b-off ok
expect pass nccl ok "checksum 00000000deadbeef ok"
expect pass train ok "loss 39.500 -> 10.500 over 30 steps"
expect pass resume ok "max loss diff 0 over steps 21-30, bit-exact True"
expect pass generate-1k ok "limo 5000 tok/s"
expect pass profile ok "profile: 2 kernels of 3 launches; bwd_sm90_bf16_hd128 21.50 ms SM 62% mem 31%; fwd_sm90_bf16_hd128 7.90 ms SM 71% mem 12%"
grep -q '^bwd_sm90_bf16_hd128  (128, 40, 1)  (384, 1, 1)  21.500  *62  *31 .* 18.7 ' \
    "$T/work/logs/profile.log" ||
    { echo "selftest pass: no table row for the longest bwd launch in profile.log" >&2; FAILS=$((FAILS + 1)); }
grep -q -- '--op attention --docs 1 --warmup 0 --repeats 1 --rotate 1$' "$T/pass.calls" ||
    { echo "selftest pass: ncu did not run limo bench kernels --op attention" >&2; FAILS=$((FAILS + 1)); }
expect pass sanitize skipped
expect pass step-kernels ok "step-kernels: 3 launches, 29.9 ms; attention 100%; top: flash_bwd_sm90_bf16_hd128 73.6%; flash_fwd_sm90_bf16_hd128 26.4%"
grep -q -- 'bench step --device cuda --shape 1.5b --layers 4 .* --profile-range$' "$T/pass.calls" ||
    { echo "selftest pass: step-kernels did not run limo bench step --profile-range" >&2; FAILS=$((FAILS + 1)); }
expect pass no-ckpt ok "checkpointing 30000 tok/s (step-1.5b), auto (0 layers) 30000 tok/s (mfu 0.450, peak 60.5 GiB): auto/checkpointing 1.000"
expect pass loss-chunk ok "chunk 1024 30000 tok/s; 4096 30000 tok/s (1.000, peak 60.5 GiB); 16384 30000 tok/s (1.000, peak 60.5 GiB)"
expect pass recompute ok "kept/recomputed 1.000"
expect pass eval ok "4 responses, 812.5 tok/s over the batch"
expect pass machine ok "11 candle modules loaded in 3.20 s"
grep -q '^next: nothing' "$T/pass.txt" ||
    { echo "selftest pass: the summary's next line is not 'nothing'" >&2; FAILS=$((FAILS + 1)); }
# The sm90 kernels passed: nothing after the doctor's first run held the flash path at sm80.
if grep -v ' doctor --quick --dump' "$T/pass.calls" | grep '^LIMO_FLASH_PATH=sm80' >/dev/null; then
    echo "selftest pass: a stage ran with LIMO_FLASH_PATH=sm80 though sm90 passed" >&2
    FAILS=$((FAILS + 1))
fi
tar -tzf "$T/out/logs.tar.gz" 2>/dev/null | grep '^logs/doctor.log$' >/dev/null ||
    { echo "selftest pass: logs.tar.gz has no logs/doctor.log" >&2; FAILS=$((FAILS + 1)); }

visit fail 1 FAKE_SM90=fail FAKE_OOM=yes
expect fail doctor FAIL "attention bf16: 1 of 3 checks failed"
expect fail step-32b-off OOM "out of device memory"
expect fail train ok
expect fail generate-1k skipped "not run: an earlier stage failed"
expect fail profile skipped "not run: an earlier stage failed"
expect fail no-ckpt skipped "not run: an earlier stage failed"
expect fail loss-chunk skipped "not run: an earlier stage failed"
expect fail recompute skipped "not run: an earlier stage failed"
expect fail eval ok
grep -q '^next: bash scripts/gpu/check.sh --only doctor --budget 130 (timeout_s 170)$' "$T/fail.txt" ||
    { echo "selftest fail: the next line does not name the doctor alone" >&2; FAILS=$((FAILS + 1)); }
# After the failed sm90 row every later limo call holds the sm80 kernels.
if grep -v -e ' doctor --quick' -e ' debug warm-jit' "$T/fail.calls" | grep -v '^LIMO_FLASH_PATH=sm80 ' >/dev/null; then
    echo "selftest fail: a stage after the doctor ran without LIMO_FLASH_PATH=sm80" >&2
    FAILS=$((FAILS + 1))
fi

# sm90 agreeing at 384 tokens but not with sm80 on one 16k-token document: sm80 from then on.
visit long 1 FAKE_SM90=long
expect long doctor FAIL "attention bf16: 1 of 4 checks failed"
if grep -v -e ' doctor --quick' -e ' debug warm-jit' "$T/long.calls" | grep -v '^LIMO_FLASH_PATH=sm80 ' >/dev/null; then
    echo "selftest long: a stage after the doctor ran without LIMO_FLASH_PATH=sm80" >&2
    FAILS=$((FAILS + 1))
fi

# ... or hanging there: no sm90 either.
visit hang 1 FAKE_SM90=hang
expect hang doctor timeout
if grep -v -e ' doctor --quick' -e ' debug warm-jit' "$T/hang.calls" | grep -v '^LIMO_FLASH_PATH=sm80 ' >/dev/null; then
    echo "selftest hang: a stage after the doctor ran without LIMO_FLASH_PATH=sm80" >&2
    FAILS=$((FAILS + 1))
fi

# A first call's budget: the stages whose timeout no longer fits are left to the next call, in
# order (the fakes take no time, so 80 s hold the doctor, loss-parity, train ... but not
# step-1.5b's 85 s, nor generate-1k's 120 s minimum); nothing fails.
visit budget 0 --budget=80
expect budget doctor ok
expect budget eval ok
expect budget step-1.5b skipped "its timeout is 85"
expect budget step-32b-off skipped "its timeout is 95"
expect budget generate ok
expect budget generate-1k skipped "it needs 120"
grep -q '^next: bash scripts/gpu/check.sh --only step-1.5b,step-32b-w8,step-32b-off --budget 365 (timeout_s 405)$' "$T/budget.txt" ||
    { echo "selftest budget: wrong next line: $(grep '^next' "$T/budget.txt")" >&2; FAILS=$((FAILS + 1)); }
# ... and resume and eval without train's run name train for the next call too.
visit notrain 0 --only=resume,eval --budget=100
expect notrain resume skipped "no checkpoint of the train stage"
expect notrain eval skipped "no model exported by the train stage"
grep -q '^next: bash scripts/gpu/check.sh --only train,resume,eval --budget 175 (timeout_s 215)$' "$T/notrain.txt" ||
    { echo "selftest notrain: wrong next line: $(grep '^next' "$T/notrain.txt")" >&2; FAILS=$((FAILS + 1)); }

# A call killed in step-1.5b (the device tool's limit): the summary written after eval names
# step-1.5b and every fixed stage after it for the next call.
visit killed 124 --kill-after=6 FAKE_STEP=hang
expect killed eval ok
grep -q '^next: bash scripts/gpu/check.sh --only step-1.5b,attention,kernels,generate,step-32b-w8,step-32b-off,nccl --budget 485 (timeout_s 525)$' "$T/killed.txt" ||
    { echo "selftest killed: wrong next line: $(grep '^next' "$T/killed.txt")" >&2; FAILS=$((FAILS + 1)); }

# A machine whose counters ncu cannot read (gVisor): a skip that says why, not a failure.
visit nocounters 0 --only=profile,step-kernels FAKE_NCU=nocounters
expect nocounters profile skipped "no report (ncu exit 1): ==ERROR== Failed to initialize the profiler: LibraryNotLoaded"
expect nocounters step-kernels skipped "no report (ncu exit 1): ==ERROR== Failed to initialize the profiler: LibraryNotLoaded"

# step_kernels.py on ncu's raw page (a metric column, a units row), which the fake does not print.
{
    echo '"ID","Kernel Name","Grid Size","gpu__time_duration.sum"'
    echo '"","","","usecond"'
    echo '"0","nvjet_tst_256x128_64x4_NTT","(8, 66, 1)","1,200"'
    echo '"1","ucopy_bf16","(96, 1, 1)","300"'
    echo '"2","rms_norm_fwd_bf16","(16384, 1, 1)","500"'
} >"$T/raw.csv"
python3 scripts/gpu/step_kernels.py "$T/raw.csv" | tail -1 |
    grep -qx 'step-kernels: 3 launches, 2.0 ms; matmul 60%, limo 25%, candle 15%; top: nvjet_tst_256x128_64x4_NTT 60.0%; rms_norm_fwd_bf16 25.0%; ucopy_bf16 15.0%' ||
    { echo "selftest: step_kernels.py misread a raw page" >&2; FAILS=$((FAILS + 1)); }

if [ "$FAILS" != 0 ]; then
    echo "selftest: $FAILS problems; the summaries:" >&2
    cat "$T/pass.txt" "$T/fail.txt" "$T/long.txt" "$T/hang.txt" "$T/budget.txt" "$T/notrain.txt" \
        "$T/killed.txt" "$T/nocounters.txt" >&2 2>/dev/null
    exit 1
fi
echo "selftest: check.sh's real run under fakes: eight visits as expected (all stages ok; sm90 failing at 384 and 16k tokens or hanging, and an OOM, handled; a short budget leaving stages to the next call; a call killed mid-stage; ncu without counters skipped)"
