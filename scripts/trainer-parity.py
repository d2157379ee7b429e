#!/usr/bin/env python3
"""The reference run of tests/trainer_parity_cli.rs: transformers' Trainer (with accelerate's
data loader) fine-tunes the golden tiny Qwen2 in float64 on CPU, and the run is written out for
limo to reproduce step by step.

    python3 scripts/trainer-parity.py OUT_DIR [WEIGHT_DECAY [VAL_SIZE EVAL_STEPS]]
    # needs torch, transformers, accelerate, numpy (and datasets with VAL_SIZE)

OUT_DIR gets data.jsonl (13 tokenized rows of different lengths and target counts), log.jsonl
(per optimizer step: step, lr of the update, grad_norm before clipping, loss as the Trainer
logs it, rows of the step) and final.safetensors (the float64 weights after the run), plus
meta.json (versions and arguments). The settings exercise what a LLaMA-Factory run relies on:
torch's shuffle (seed 42 + epoch), an epoch's short last step (13 rows, 2 per micro-batch, 2
micro-batches per step: the 4th step of each epoch has one micro-batch of one row), the loss
averaged over all target tokens of a step (num_items_in_batch), cosine with a warmup share,
AdamW, clipping at 1.0. Weight decay is 0 unless WEIGHT_DECAY is given
(tests/fixtures/trainer-parity-decay: 0.1, where transformers 4.53 on leaves the biases and
norm weights undecayed, limo's train.no_decay = "biases_and_norms"). With VAL_SIZE the rows
are split as LLaMA-Factory splits them (datasets' train_test_split(VAL_SIZE, seed 42)), the
Trainer trains on the train split and logs eval_loss every EVAL_STEPS steps over the test split
with one row per eval batch (tests/fixtures/trainer-parity-eval: 0.2 and 2).
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from torch.utils.data import Dataset
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "tests", "fixtures", "golden", "qwen2-tiny", "model")
ARGS = dict(
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    num_train_epochs=3,
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    warmup_steps=0.1,  # transformers 5: a share of the steps below 1 (warmup_ratio before)
    weight_decay=0.0,
    max_grad_norm=1.0,
    seed=42,
)


def float64_throughout(model):
    """transformers rounds through float32 in a float64 model: the rotary tables, RMSNorm, the
    attention softmax and the loss (its logits). limo computes in the model's dtype
    (docs/ARCHITECTURE.md), as the goldens of tests/fixtures did, so here those four stay in
    float64 too; else the run differs from limo's at ~1e-7 from rounding alone."""
    from torch import nn
    from transformers.loss import loss_utils
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    def rms_norm(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key = qwen2.repeat_kv(key, module.num_key_value_groups)
        value = qwen2.repeat_kv(value, module.num_key_value_groups)
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = nn.functional.softmax(weights, dim=-1)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    def causal_lm_loss(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, **kw):
        labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].reshape(-1)
        return loss_utils.fixed_cross_entropy(
            logits.reshape(-1, vocab_size), labels, num_items_in_batch, ignore_index
        )

    qwen2.Qwen2RMSNorm.forward = rms_norm
    qwen2.eager_attention_forward = attention
    loss_utils.LOSS_MAPPING["ForCausalLM"] = causal_lm_loss
    rotary = model.model.rotary_emb
    base = rotary.config.rope_parameters["rope_theta"]
    dim = rotary.inv_freq.numel() * 2
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))

    def forward(x, position_ids):
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    rotary.forward = forward


def rows():
    rng = np.random.default_rng(7)
    out = []
    for _ in range(13):
        n = int(rng.integers(10, 29))
        prompt = int(rng.integers(2, 8))
        ids = [int(i) for i in rng.integers(0, 512, n)]
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


class Rows(Dataset):
    """The rows of data.jsonl at `indices` (all of them by default), in that order."""

    def __init__(self, rows, indices=None):
        self.rows = rows
        self.indices = list(range(len(rows))) if indices is None else list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return dict(self.rows[self.indices[i]], index=self.indices[i])


def collate(batch):
    # Right padding with labels -100 and a zero attention mask: limo does not pad, and in
    # float64 the padding changes nothing the test can see.
    n = max(len(b["input_ids"]) for b in batch)
    pad = lambda xs, v: [x + [v] * (n - len(x)) for x in xs]
    ids = [b["input_ids"] for b in batch]
    return {
        "input_ids": torch.tensor(pad(ids, 0)),
        "labels": torch.tensor(pad([b["labels"] for b in batch], -100)),
        "attention_mask": torch.tensor(pad([[1] * len(x) for x in ids], 0)),
        "rows": [b["index"] for b in batch],
    }


class Log(TrainerCallback):
    def __init__(self):
        self.steps, self.rows = [], []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
        self.steps.append({"step": state.global_step + 1, "lr": optimizer.param_groups[0]["lr"]})

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "grad_norm" in logs:
            step = self.steps[state.global_step - 1]
            step["grad_norm"] = float(logs["grad_norm"])
            step["loss"] = float(logs["loss"])
        if logs and "eval_loss" in logs:
            self.steps[state.global_step - 1]["eval_loss"] = float(logs["eval_loss"])


class RowTrainer(Trainer):
    def __init__(self, *a, parity_log=None, **kw):
        super().__init__(*a, **kw)
        self.parity_log = parity_log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs.pop("rows")
        if model.training:
            self.parity_log.rows.append((self.state.global_step + 1, rows))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main():
    out = sys.argv[1]
    if len(sys.argv) > 2:
        ARGS["weight_decay"] = float(sys.argv[2])
    train_rows, eval_rows = None, None
    if len(sys.argv) > 3:
        import datasets

        val_size, eval_steps = float(sys.argv[3]), int(sys.argv[4])
        split = datasets.Dataset.from_dict({"i": list(range(13))}).train_test_split(
            test_size=val_size, seed=ARGS["seed"]
        )
        train_rows, eval_rows = list(split["train"]["i"]), list(split["test"]["i"])
        ARGS.update(eval_strategy="steps", eval_steps=eval_steps, per_device_eval_batch_size=1)
    os.makedirs(out, exist_ok=True)
    data = rows()
    with open(os.path.join(out, "data.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in data)
    model = AutoModelForCausalLM.from_pretrained(
        MODEL, dtype=torch.float64, attn_implementation="eager"
    )
    float64_throughout(model)
    log = Log()
    args = TrainingArguments(
        output_dir=os.path.join(out, "trainer"),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        **ARGS,
    )
    trainer = RowTrainer(
        model=model, args=args, train_dataset=Rows(data, train_rows), data_collator=collate,
        eval_dataset=None if eval_rows is None else Rows(data, eval_rows),
        callbacks=[log], parity_log=log,
    )
    trainer.train()
    for step, rows_of in log.rows:
        log.steps[step - 1].setdefault("rows", []).extend(rows_of)
    with open(os.path.join(out, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in log.steps)
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to the embedding
    save_file(state, os.path.join(out, "final.safetensors"))
    meta = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": __import__("accelerate").__version__,
        "args": ARGS,
        "datasets": __import__("datasets").__version__ if eval_rows is not None else None,
        "command": "python3 scripts/trainer-parity.py " + " ".join(sys.argv[1:]),
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
