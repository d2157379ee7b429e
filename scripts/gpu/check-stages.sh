# shellcheck shell=bash
# shellcheck disable=SC2317  # stage_*/key_* are called by name: "stage_${s//[-.]/_}"
# check.sh's stages, sourced by it (kept apart so that neither file passes 800 lines): each
# stage_X runs its commands through check.sh's x (under the stage's timeout, logged); key_X
# prints the summary's key number(s) afterwards. They read check.sh's globals (LIMO_BIN, W, LOGS,
# OUT, PEER, DRY, STAGE_LOG, STAGE_DEADLINE). A stage may set STAGE_OOM=1 (bench step's exit 3),
# STAGE_CHECK_FAILED=1 (a check of its own), STAGE_SKIPPED=1 and STAGE_WAITS=1 (skipped for want
# of an earlier stage's output).

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

stage_no_ckpt() {
    note "activation_checkpointing = auto: on an H200 the plan checkpoints no layer (docs/PLAN.md)"
    x "$LIMO_BIN" bench step --device cuda --shape 1.5b --tokens 16384 --docs 1 --dtype bf16 \
        --set train.activation_checkpointing=auto --warmup 1 --steps 3 \
        --json "$LOGS/step-1.5b-no-ckpt.json"
    [ $? = 3 ] && STAGE_OOM=1
}
key_no_ckpt() {
    py '
a = num(j(sys.argv[1], "tokens_per_s"))
b = num(j(sys.argv[2], "tokens_per_s"))
r = b / a if a is not None and b is not None and a else None
print("checkpointing %s tok/s (step-1.5b), auto (%s layers) %s tok/s (mfu %s, peak %s GiB): auto/checkpointing %s"
      % (f(a), f(j(sys.argv[2], "checkpointed_layers")), f(b), f(j(sys.argv[2], "mfu"), "{:.3f}"),
         f(j(sys.argv[2], "peak_mem.allocator_high_gib"), "{:.1f}"), f(r, "{:.3f}")))
' "$OUT/step-1.5b.json" "$LOGS/step-1.5b-no-ckpt.json"
}

stage_loss_chunk() {
    note "loss chunk 1024 (the default; no-ckpt's run when it left one), 4096, 16384"
    local c
    # The default chunk's run is no-ckpt's; without it (--only, or its timeout) it runs here.
    for c in 1024 4096 16384; do
        [ "$c" = 1024 ] && [ -s "$LOGS/step-1.5b-no-ckpt.json" ] && continue
        x "$LIMO_BIN" bench step --device cuda --shape 1.5b --tokens 16384 --docs 1 --dtype bf16 \
            --set train.activation_checkpointing=auto --set train.loss_chunk=$c --warmup 1 \
            --steps 2 --json "$LOGS/step-1.5b-chunk-$c.json"
        case $? in
            0) ;;
            3) STAGE_OOM=1; return ;;
            *) return ;;
        esac
        [ "$DRY" != 1 ] && [ "$c" = 1024 ] &&
            cp "$LOGS/step-1.5b-chunk-1024.json" "$LOGS/step-1.5b-no-ckpt.json"
    done
    return 0
}
key_loss_chunk() {
    py '
base = num(j(sys.argv[1], "tokens_per_s"))
parts = ["chunk 1024 %s tok/s" % f(base)]
for c, path in (("4096", sys.argv[2]), ("16384", sys.argv[3])):
    t = num(j(path, "tokens_per_s"))
    r = t / base if t is not None and base else None
    parts.append("%s %s tok/s (%s, peak %s GiB)" % (c, f(t), f(r, "{:.3f}"),
                 f(j(path, "peak_mem.allocator_high_gib"), "{:.1f}")))
print("; ".join(parts))
' "$LOGS/step-1.5b-no-ckpt.json" "$LOGS/step-1.5b-chunk-4096.json" "$LOGS/step-1.5b-chunk-16384.json"
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

stage_step_kernels() {
    local secs=LEFT-10 # 10 s of the stage for the import and the tables
    [ "$DRY" = 1 ] || secs=$(((STAGE_DEADLINE - $(now_ms)) / 1000 - 10))
    x bash scripts/gpu/step_kernels.sh "$LIMO_BIN" "$W" "$LOGS" "$secs" ||
        [ "$STAGE_TIMEDOUT" = 1 ] || STAGE_SKIPPED=1
}
key_step_kernels() { grep -h -e '^step-kernels: ' -e '^no ' "$STAGE_LOG" | tail -1 | cut -c1-200; }

# memcheck reports each bad access as it happens (a run cut short still counts); exit 99: found.
stage_sanitize() {
    local sanitizer
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
        /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
    if [ "$DRY" != 1 ] && [ -z "$sanitizer" ]; then
        note "no compute-sanitizer on PATH or in /usr/local/cuda"
        STAGE_SKIPPED=1
        return
    fi
    x "${sanitizer:-compute-sanitizer}" --tool memcheck --error-exitcode 99 --print-limit 50 \
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
        lastline | grep . || echo "no compute-sanitizer on PATH or in /usr/local/cuda"
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
# The plan estimates what the run holds on the device (context, workspaces and the pool
# reserve included), so that is the figure it is judged against; the allocator peak is tensors.
run, plan = num(j(p, "peak_mem.process_gib")), num(j(p, "peak_mem.plan_estimate_gib"))
off = "%+.1f%%" % (100 * (plan / run - 1)) if run and plan else "?"
print("%s tok/s, step %s s, mfu %s, peak %s GiB, device %s GiB (plan %s: %s)" % (
    f(j(p, "tokens_per_s")), f(j(p, "step_s.median"), "{:.2f}"), f(j(p, "mfu"), "{:.3f}"),
    f(j(p, "peak_mem.allocator_high_gib"), "{:.1f}"), f(run, "{:.1f}"), f(plan, "{:.1f}"), off))
' "$1"
}

# comm-check's own timeout (6 s) leaves the stage's 15 s room for the retry below.
NCCL_CMD=(launch --nproc-per-node 1 -- comm-check --nccl --iterations 100 --timeout 6)
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
    --set "output.dir=\"$W/train\"" --set output.overwrite=true)
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
    if [ "$DRY" != 1 ] && ! [ -f "$W/train/model/config.json" ]; then
        echo "# skipped: no model exported by the train stage (run train first)" >>"$STAGE_LOG"
        STAGE_SKIPPED=1
        STAGE_WAITS=1
        return
    fi
    x "$LIMO_BIN" eval --model "$W/train/model" --device cuda --benchmarks aime --limit 4 \
        --max-new-tokens 64 --batch-size 4 --out "$W/eval" || return
    [ "$DRY" = 1 ] || cp "$W/eval/summary.json" "$LOGS/eval-summary.json"
}
key_eval() {
    grep '^# skipped:' "$STAGE_LOG" | head -1 | sed 's/^# //' | grep . && return
    py 'p = sys.argv[1]
print("%s responses, %s tok/s over the batch" % (f(j(p, "generated")),
      f(j(p, "throughput_tokens_per_s"), "{:.1f}")))' "$LOGS/eval-summary.json"
}

stage_resume() {
    if [ "$DRY" != 1 ] && { ! [ -f "$W/train/checkpoints/step-00000020/manifest.json" ] ||
        ! [ -f "$LOGS/train-metrics.jsonl" ]; }; then
        echo "# skipped: no checkpoint of the train stage at step 20 (run train first)" >>"$STAGE_LOG"
        STAGE_SKIPPED=1
        STAGE_WAITS=1
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
