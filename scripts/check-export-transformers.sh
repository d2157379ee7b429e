#!/usr/bin/env bash
# What a user does next with a limo export: load it with Hugging Face transformers. Trains the
# embedded default for 2 steps with a small max_shard_size (a sharded export with its index),
# then, in a venv with pinned transformers (no torch: configs, tokenizers, templates and
# safetensors only), checks that
#   - AutoConfig reads config.json as a Qwen2Config of the trained shape;
#   - AutoTokenizer reads the tokenizer files, and apply_chat_template renders LIMO's prompt
#     in the Qwen2.5 format limo trains and evaluates with;
#   - model.safetensors.index.json maps every tensor to a shard that holds it, and the tensors
#     are exactly the names and shapes transformers' Qwen2ForCausalLM loads (no lm_head when
#     tied), in bf16.
# Usage: scripts/check-export-transformers.sh; LIMO_BIN picks the binary (default
# target/debug/limo), LIMO_HF_VENV the venv (default ~/.cache/limo-hf-venv, created on first
# use: ~300 MB from PyPI; needs python3 with venv). Exit 1 on any failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
limo=${LIMO_BIN:-target/debug/limo}
venv=${LIMO_HF_VENV:-$HOME/.cache/limo-hf-venv}
pins=(transformers==5.24.0 jinja2==3.1.6 safetensors==0.8.0 numpy==2.4.6)
# A stamp of the pins installed: a venv from other pins (or someone's own) is brought to these.
stamp="$venv/limo-pins"
if [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${pins[@]}"
    echo "${pins[*]}" >"$stamp"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$limo" train --set train.max_steps=2 --set "output.dir=\"$work/run\"" \
    --set 'output.max_shard_size="20MB"' >"$work/train.log" 2>&1; then
    cat "$work/train.log"
    exit 1
fi
"$venv/bin/python" - "$work/run/model" <<'PY'
import json, os, sys
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import AutoConfig, AutoTokenizer
from safetensors import safe_open

model = sys.argv[1]
failures = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)

cfg = AutoConfig.from_pretrained(model)
check(type(cfg).__name__ == "Qwen2Config", f"config.json is a Qwen2Config ({type(cfg).__name__})")
check((cfg.hidden_size, cfg.num_hidden_layers) == (128, 2), "the trained shape: hidden 128, 2 layers")

tok = AutoTokenizer.from_pretrained(model)
system = "Please reason step by step, and put your final answer within \\boxed{}."
messages = [{"role": "system", "content": system}, {"role": "user", "content": "What is 1+1?"}]
text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
want = ("<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
        "<|im_start|>assistant\n")
check(text == want, "apply_chat_template renders LIMO's prompt in the Qwen2.5 format")
check(tok.convert_tokens_to_ids("<|im_end|>") == 151645, "<|im_end|> is id 151645")

index_path = os.path.join(model, "model.safetensors.index.json")
check(os.path.exists(index_path), "a sharded export has model.safetensors.index.json")
weight_map = json.load(open(index_path))["weight_map"]
shapes, dtypes, misplaced = {}, set(), []
shards = sorted(set(weight_map.values()))
for shard in shards:
    with safe_open(os.path.join(model, shard), "np") as f:
        check(f.metadata().get("format") == "pt", f"{shard}: metadata format pt")
        for name in f.keys():
            if weight_map.get(name) != shard:
                misplaced.append(name)
            shapes[name] = list(f.get_slice(name).get_shape())
            dtypes.add(f.get_slice(name).get_dtype())
check(len(shards) > 1, f"{len(shards)} shards")
check(not misplaced and set(shapes) == set(weight_map),
      "the index maps every tensor to the shard that holds it" + (f": {misplaced}" if misplaced else ""))
check(dtypes == {"BF16"}, f"bf16 tensors ({sorted(dtypes)})")

h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
hd = h // cfg.num_attention_heads
q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
want = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
for l in range(cfg.num_hidden_layers):
    p = f"model.layers.{l}."
    want.update({
        p + "self_attn.q_proj.weight": [q, h], p + "self_attn.q_proj.bias": [q],
        p + "self_attn.k_proj.weight": [kv, h], p + "self_attn.k_proj.bias": [kv],
        p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.v_proj.bias": [kv],
        p + "self_attn.o_proj.weight": [h, q],
        p + "mlp.gate_proj.weight": [i, h], p + "mlp.up_proj.weight": [i, h],
        p + "mlp.down_proj.weight": [h, i],
        p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
    })
if not cfg.tie_word_embeddings:
    want["lm_head.weight"] = [v, h]
check(shapes == want, "names and shapes are Qwen2ForCausalLM's"
      + ("" if shapes == want else f": missing {sorted(set(want) - set(shapes))}, "
         f"extra {sorted(set(shapes) - set(want))}"))
if failures:
    sys.exit(f"{len(failures)} check(s) failed")
print("export read by transformers", __import__("transformers").__version__)
PY
