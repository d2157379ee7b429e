#!/usr/bin/env python3
"""Batched greedy generation on the GPU machine: transformers' `generate` (bf16, SDPA, its
dynamic KV cache) against limo's (`limo bench generate`: one packed prefill through our flash
attention, then KV-cache decode steps of the whole batch through kernels/decode_attention.cu),
the same shape, batch, prompt length and number of new tokens, in one call.

Runs on the GPU machine (torch and transformers installed, no network, no Rust). The model is
Qwen2.5-1.5B's configuration built in code (nothing downloaded) with random weights; both sides
generate exactly --new-tokens tokens per sequence (no stop token), greedy.

Usage:
    python3 scripts/gpu/generate_vs_transformers.py [--limo target/gpu/limo] [--batch 32]
        [--new-tokens 1024] [--prompt-tokens 128] [--shape 1.5b] [--json-out FILE]

Prints one JSON object: tokens/s of both (generated tokens of all sequences over the whole
`generate` call, prefill included), limo's over transformers' (`ratio`), and each side's details;
--json-out also writes it to a file. Without --limo only transformers is measured. A 1.5B model
at batch 32 with 1k new tokens is expected to take a minute or two per side on an H100/H200 (not
measured yet): run it as its own
device call (timeout_s ~300) or through scripts/gpu/check.sh's `generate` stage, which runs a
shorter generation to fit the visit's budget.
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

import torch

# The sibling script's search for the CUDA libraries of this torch (it needs torch >= 2.3).
from attention_vs_torch import torch_lib_path
from streamrun import run_streamed

# Qwen2.5-Instruct configurations (hidden, intermediate, layers, heads, kv heads, vocab, tied),
# as crates/limo-model/src/init.rs builds them for `limo bench generate --shape`.
SHAPES = {
    "tiny": (64, 128, 2, 4, 2, 151936, True),
    "0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
}


def qwen2_config(shape):
    from transformers import Qwen2Config

    h, i, layers, heads, kv, vocab, tied = SHAPES[shape]
    return Qwen2Config(
        hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
        tie_word_embeddings=tied, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=32768, initializer_range=0.02, use_sliding_window=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=0)


def run_transformers(shape, batch, prompt_tokens, new_tokens, seed):
    """Times `model.generate` (greedy, exactly new_tokens tokens); returns a result dict."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = qwen2_config(shape)
    t0 = time.perf_counter()
    # Parameters are created (and randomly initialized) on the GPU directly: a 1.5B model
    # initialized on the host would take longer than the generation.
    with torch.device("cuda"):
        try:  # transformers >= 4.56 names it dtype (5.x warns on torch_dtype)
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:
            model = AutoModelForCausalLM.from_config(
                config, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to(torch.bfloat16)  # a no-op, unless a version ignored the keyword
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    init_s = time.perf_counter() - t0
    gen = torch.Generator(device="cuda").manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, prompt_tokens), device="cuda",
                        generator=gen)
    mask = torch.ones_like(ids)

    def generate(n):
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, use_cache=True)

    generate(4)  # warm-up: cuBLAS handles, SDPA kernels, the allocator
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(new_tokens)
    torch.cuda.synchronize()
    total_s = time.perf_counter() - t0
    if tuple(out.shape) != (batch, prompt_tokens + new_tokens):
        sys.exit(f"transformers generated {tuple(out.shape)}, expected "
                 f"{(batch, prompt_tokens + new_tokens)}")
    import transformers

    return {
        "tokens_per_s": batch * new_tokens / total_s,
        "total_s": total_s,
        "init_s": init_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0),
    }


def run_limo(binary, shape, batch, prompt_tokens, new_tokens, seed, verify=False):
    """`limo bench generate` on the GPU; returns (its JSON report or None, transcript)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "generate.json")
        cmd = [binary, "bench", "generate", "--shape", shape, "--batch", str(batch),
               "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens),
               "--device", "cuda", "--dtype", "bf16", "--seed", str(seed), "--json", out]
        if verify:
            cmd.append("--verify")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(torch_lib_path() + [env.get("LD_LIBRARY_PATH", "")])
        returncode, output = run_streamed(cmd, env)
        text = f"$ {shlex.join(cmd)}\n{output.strip()}\n(exit {returncode})"
        if not os.path.exists(out):
            return None, text
        with open(out) as fh:
            report = json.load(fh)
        # A failed --verify still writes its report (speed and the check's numbers): keep it.
        if returncode != 0:
            report["exit_code"] = returncode
        return report, text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limo", default=None, help="path of the carried limo binary")
    ap.add_argument("--shape", default="1.5b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-transformers", action="store_true",
                    help="measure limo only (e.g. to rerun one side)")
    ap.add_argument("--json-out", default=None, help="also write the result here")
    ap.add_argument("--verify", action="store_true",
                    help="limo also checks its generation against the full forward (untimed)")
    args = ap.parse_args()
    if min(args.batch, args.prompt_tokens, args.new_tokens) < 1:
        sys.exit("--batch, --prompt-tokens and --new-tokens must be at least 1")
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch")

    result = {"shape": args.shape, "batch": args.batch, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "greedy": True, "dtype": "bf16"}

    def save():
        if args.json_out:
            with open(args.json_out, "w") as fh:
                fh.write(json.dumps(result, indent=2) + "\n")

    ok = True
    # limo first: its process owns the GPU alone (torch's allocator has not reserved memory yet).
    if args.limo:
        limo, transcript = run_limo(args.limo, args.shape, args.batch, args.prompt_tokens,
                                    args.new_tokens, args.seed, args.verify)
        print(transcript, file=sys.stderr)
        result["limo"] = limo
        result["limo_tokens_per_s"] = (limo or {}).get("tokens_per_s")
        ok = ok and limo is not None and "exit_code" not in limo
        # Kept even if the transformers half runs out of the stage's time.
        save()
    if not args.skip_transformers:
        result["transformers"] = run_transformers(args.shape, args.batch, args.prompt_tokens,
                                                  args.new_tokens, args.seed)
    a = (result.get("limo") or {}).get("tokens_per_s")
    b = (result.get("transformers") or {}).get("tokens_per_s")
    result["limo_tokens_per_s"] = a
    result["transformers_tokens_per_s"] = b
    result["ratio"] = a / b if a and b else None
    print(json.dumps(result, indent=2))
    save()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
