#!/usr/bin/env bash
# The reference of tests/llamafactory_parity_cli.rs: LLaMA-Factory itself trains limo's tiny
# random model (`limo init-model --shape tiny --dtype f32`) on CPU with
# tests/fixtures/llamafactory-parity/train.yaml, and this writes what it did beside the YAML:
#   tokenized.jsonl  LLaMA-Factory's tokenized rows (input_ids, labels), from its tokenized_path
#   log.jsonl        per step: step, loss, grad_norm, learning_rate (its trainer_state.json)
#   log-2ranks.jsonl the same with per_device_train_batch_size 1 on 2 processes (torchrun, gloo)
#   log-2ranks-sequences.jsonl  LIMO's split on 2 processes: one row per process and step, no
#                    accumulation, average_tokens_across_devices: false (every row weighs the same)
#   log-eval.jsonl   one process with val_size 0.2 (3 of the 11 rows held out), eval_strategy
#                    steps, eval_steps 2: the training steps, then {step, eval_loss} lines
#   meta.json        the versions and the command
#
#   bash scripts/llamafactory-parity.sh [PYTHON]   # PYTHON has llamafactory (pip install llamafactory)
#
# Needs a release build of limo (cargo build --release -p limo-cli); takes ~30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
FIX=tests/fixtures/llamafactory-parity
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
target/release/limo init-model --shape tiny --dtype f32 --out "$W/model" >/dev/null
mkdir -p "$W/data"
cp "$FIX/limo.json" "$FIX/dataset_info.json" "$W/data/"
fill() { sed "s#MODEL#$W/model#; s#DATA#$W/data#; s#OUT#$W/$1#" "$FIX/train.yaml"; }
fill tok-out >"$W/tok.yaml"
echo "tokenized_path: $W/tokenized" >>"$W/tok.yaml"
fill out >"$W/train.yaml"
fill out2 | sed 's/per_device_train_batch_size: 2/per_device_train_batch_size: 1/' >"$W/train2.yaml"
sed 's/gradient_accumulation_steps: 2/gradient_accumulation_steps: 1/; s#out2$#out3#' \
    "$W/train2.yaml" >"$W/train3.yaml"
echo "average_tokens_across_devices: false" >>"$W/train3.yaml"
fill out4 >"$W/train4.yaml"
printf 'val_size: 0.2\neval_strategy: steps\neval_steps: 2\nper_device_eval_batch_size: 1\n' \
    >>"$W/train4.yaml"
lf() { "$PY" -m llamafactory.cli train "$W/$1.yaml" >"$W/$1.log" 2>&1 || { tail -20 "$W/$1.log"; exit 1; }; }
lf tok
lf train
lf train4
# LLaMA-Factory starts torchrun from PATH: the one beside this python.
PATH="$(dirname "$(command -v "$PY")"):$PATH" FORCE_TORCHRUN=1 NPROC_PER_NODE=2 lf train2
PATH="$(dirname "$(command -v "$PY")"):$PATH" FORCE_TORCHRUN=1 NPROC_PER_NODE=2 lf train3
"$PY" - "$W" "$FIX" <<'PY'
import json, sys
import datasets, llamafactory, torch, transformers
work, fix = sys.argv[1], sys.argv[2]
rows = datasets.load_from_disk(f"{work}/tokenized")["train"]
with open(f"{fix}/tokenized.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps({"input_ids": r["input_ids"], "labels": r["labels"]}) + "\n")
keep = ("step", "loss", "grad_norm", "learning_rate")
runs = (("out", "log"), ("out2", "log-2ranks"), ("out3", "log-2ranks-sequences"),
        ("out4", "log-eval"))
for run, log in runs:
    state = json.load(open(f"{work}/{run}/trainer_state.json"))
    with open(f"{fix}/{log}.jsonl", "w") as f:
        for h in state["log_history"]:
            if "loss" in h:
                f.write(json.dumps({k: h[k] for k in keep}) + "\n")
        for h in state["log_history"]:
            if "eval_loss" in h:
                f.write(json.dumps({"step": h["step"], "eval_loss": h["eval_loss"]}) + "\n")
meta = {"llamafactory": llamafactory.__version__, "transformers": transformers.__version__,
        "torch": torch.__version__, "datasets": datasets.__version__,
        "command": "bash scripts/llamafactory-parity.sh", "device": "cpu, float32"}
json.dump(meta, open(f"{fix}/meta.json", "w"), indent=1)
PY
echo "wrote $FIX/tokenized.jsonl, log*.jsonl, meta.json"
