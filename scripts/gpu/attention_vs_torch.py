#!/usr/bin/env python3
"""Attention timings on the GPU machine: torch's scaled_dot_product_attention (flash and cuDNN
backends) against limo's FlashAttention-2 kernels (kernels/flash_attention.cu), same shapes.

Runs on the GPU machine (torch installed, no network, no Rust). Shapes are the LIMO recipe's:
16k tokens, causal, bf16, Qwen2.5-32B attention (40 query / 8 kv heads, head_dim 128), a
12/2-head hd128 model, a 14/2-head hd64 model (Qwen2.5-0.5B), each as one 16k document and as
packed documents.

Usage:
    python3 scripts/gpu/attention_vs_torch.py [--iters 20] [--limo ./limo | --limo-cmd TEMPLATE]
        [--shapes 40/8:128:1,12/2:128:1] [--json-out FILE]

`--shapes` keeps only the listed shapes, each `Q/KV:HEAD_DIM:DOCS` (default: all five below);
`--json-out` also writes every timing (torch rows, and the limo rows parsed from its output) as
JSON, which scripts/gpu/check.sh reads for its summary.

The torch side needs nothing else. The limo side: our kernels have no Python binding, they run
from the `limo` binary built on the development machine and carried here (docs/CUDA.md:
`CARGO_TARGET_DIR=/tmp/cuda-target cargo build --release --features cuda -p limo-cli`, strip
it, carry it in the working tree). `limo bench kernels --op attention` (crates/limo-cli/src/
cmd_bench.rs) times flash_attention_forward and both backward variants with CUDA events; on a
compute capability 9.x GPU (H100/H200) it also times each forward and atomic backward kernel
explicitly, the sm80
one (mma.sync, kernels/flash_attention.cu) and the Hopper one (wgmma + TMA,
kernels/flash_attention_sm90.cu, the default there), and this script reports both side by side.
`--limo ./limo` runs, once per shape,

    ./limo bench kernels --op attention --tokens {tokens} --q-heads {q_heads} \
        --kv-heads {kv_heads} --head-dim {head_dim} --docs {docs}

({docs} = number of equal-length documents); `--limo-cmd TEMPLATE` takes any other command
line with those placeholders. The script runs it once per shape
with LD_LIBRARY_PATH pointing at the CUDA 13 libraries of this torch install (libcuda.so.1
comes from the driver) and prints its output under the torch numbers. Without --limo-cmd only
the torch side is measured.

FLOP counts follow the FlashAttention papers: a causal forward is 4 * H * D * sum(L_doc^2) / 2
(two matmuls, half the square), the backward 2.5x the forward (five matmuls, one of them the
recomputed S).
"""

import argparse
import json
import os
import re
import shlex
import sys

import torch
import torch.nn.functional as F

from streamrun import run_streamed

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3
    sys.exit("this script needs torch >= 2.3 (torch.nn.attention.sdpa_kernel)")


SHAPES = [
    # (name, tokens, q_heads, kv_heads, head_dim, docs)
    ("32B 40/8 hd128, one doc", 16384, 40, 8, 128, 1),
    ("32B 40/8 hd128, 8 docs", 16384, 40, 8, 128, 8),
    ("12/2 hd128, one doc", 16384, 12, 2, 128, 1),
    ("12/2 hd128, 8 docs", 16384, 12, 2, 128, 8),
    ("0.5B 14/2 hd64, one doc", 16384, 14, 2, 64, 1),
]

BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]


def causal_fwd_flops(tokens, q_heads, head_dim, docs):
    length = tokens // docs
    return 4.0 * q_heads * head_dim * docs * length * length / 2.0


def time_ms(fn, iters, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def make_inputs(tokens, q_heads, kv_heads, head_dim, docs):
    """Packed equal-length documents as a batch: SDPA has no cu_seqlens, so `docs` documents of
    tokens/docs tokens are [docs, heads, L, D] (the same FLOPs and masking as limo's packed
    layout with equal lengths). Keys and values are repeated to the query heads when the backend
    cannot take grouped-query inputs (enable_gqa)."""
    length = tokens // docs
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(heads):
        return torch.randn(docs, heads, length, head_dim, device="cuda", dtype=torch.bfloat16,
                           generator=g)

    q, k, v = rnd(q_heads), rnd(kv_heads), rnd(kv_heads)
    do = rnd(q_heads)
    return q, k, v, do


def run_sdpa(backend, q, k, v, do, iters):
    """(forward ms, forward+backward ms, how GQA was handled) or raises."""
    group = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5
    gqa_note = "enable_gqa"
    with sdpa_kernel([backend]):
        try:
            F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
            kk, vv, extra = k, v, {"enable_gqa": True}
        except (RuntimeError, TypeError):
            kk = k.repeat_interleave(group, dim=1)
            vv = v.repeat_interleave(group, dim=1)
            extra = {}
            gqa_note = "kv repeated"
        qg = q.detach().requires_grad_(True)
        kg = kk.detach().requires_grad_(True)
        vg = vv.detach().requires_grad_(True)

        def fwd():
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=scale, **extra)

        def fwd_bwd():
            out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, scale=scale, **extra)
            out.backward(do)

        with torch.no_grad():
            f_ms = time_ms(fwd, iters)
        fb_ms = time_ms(fwd_bwd, iters)
    return f_ms, fb_ms, gqa_note


def torch_lib_path():
    """Directories of the CUDA libraries that ship with this torch (nvidia-* wheels)."""
    dirs = []
    for entry in sys.path:
        base = os.path.join(entry, "nvidia")
        if not os.path.isdir(base):
            continue
        for root, _subdirs, files in os.walk(base):
            if os.path.basename(root) == "lib" and any(".so" in f for f in files):
                dirs.append(root)
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    if os.path.isdir(torch_lib):
        dirs.append(torch_lib)
    return dirs


# A result line of `limo bench kernels`: the kernel name padded to 26 columns, the shape, then
# "<median> ms  <rate> TFLOP/s".
LIMO_ROW = re.compile(r"\s([0-9.]+) ms\s+([0-9.]+) TFLOP/s\s*$")


def run_limo(template, tokens, q_heads, kv_heads, head_dim, docs):
    """(printable transcript, exit status, parsed rows [{kernel, ms, tflops}])."""
    cmd = template.format(tokens=tokens, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim,
                          docs=docs)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(torch_lib_path() + [env.get("LD_LIBRARY_PATH", "")])
    returncode, text = run_streamed(shlex.split(cmd), env)
    rows = []
    for line in text.splitlines():
        m = LIMO_ROW.search(line)
        if line.startswith("flash_attention") and m:
            rows.append({"kernel": line[:26].strip(), "ms": float(m.group(1)),
                         "tflops": float(m.group(2))})
    return f"$ {cmd}\n{text.strip()}\n(exit {returncode})", returncode, rows


def parse_shapes(spec):
    """`Q/KV:HD:DOCS,...` -> the matching entries of SHAPES (an error for one not listed)."""
    wanted = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)/(\d+):(\d+):(\d+)\s*", item)
        if not m:
            sys.exit(f"--shapes: {item!r} is not Q/KV:HEAD_DIM:DOCS (e.g. 40/8:128:1)")
        key = tuple(int(g) for g in m.groups())
        found = [s for s in SHAPES if (s[2], s[3], s[4], s[5]) == key]
        if not found:
            known = ", ".join(f"{s[2]}/{s[3]}:{s[4]}:{s[5]}" for s in SHAPES)
            sys.exit(f"--shapes: no shape {item.strip()} (known: {known})")
        wanted += found
    return wanted


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--limo", default=None, help="path of the carried limo binary")
    ap.add_argument("--limo-cmd", default=None,
                    help="command template for `limo bench kernels --op attention` (see the top)")
    ap.add_argument("--shapes", default=None,
                    help="only these shapes, Q/KV:HEAD_DIM:DOCS,... (e.g. 40/8:128:1,12/2:128:1)")
    ap.add_argument("--json-out", default=None, help="also write all timings here as JSON")
    args = ap.parse_args()
    shapes = parse_shapes(args.shapes) if args.shapes else SHAPES
    if args.limo and not args.limo_cmd:
        args.limo_cmd = (shlex.quote(args.limo) + " bench kernels --op attention --tokens {tokens}"
                         " --q-heads {q_heads} --kv-heads {kv_heads} --head-dim {head_dim}"
                         " --docs {docs}")
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
          f"cuDNN {torch.backends.cudnn.version()}")
    print("bf16, causal; TFLOP/s = causal FLOPs / time (bwd = 2.5 x fwd FLOPs)\n")
    header = f"{'shape':28} {'backend':7} {'fwd ms':>8} {'fwd TF/s':>9} {'f+b ms':>8} {'f+b TF/s':>9}  gqa"
    print(header)
    print("-" * len(header))
    results = []
    failed = False
    for name, tokens, hq, hkv, hd, docs in shapes:
        entry = {"shape": name, "tokens": tokens, "q_heads": hq, "kv_heads": hkv, "head_dim": hd,
                 "docs": docs, "torch": {}, "limo": None}
        results.append(entry)
        flops = causal_fwd_flops(tokens, hq, hd, docs)
        q, k, v, do = make_inputs(tokens, hq, hkv, hd, docs)
        for bname, backend in BACKENDS:
            try:
                f_ms, fb_ms, note = run_sdpa(backend, q, k, v, do, args.iters)
            except RuntimeError as e:  # backend unavailable for this shape / build
                first = str(e).strip().splitlines()[0][:60] if str(e).strip() else "error"
                print(f"{name:28} {bname:7} {'n/a':>8} {'':>9} {'':>8} {'':>9}  {first}")
                entry["torch"][bname] = {"error": first}
                continue
            print(f"{name:28} {bname:7} {f_ms:8.3f} {flops / f_ms / 1e9:9.1f} "
                  f"{fb_ms:8.3f} {3.5 * flops / fb_ms / 1e9:9.1f}  {note}")
            entry["torch"][bname] = {"fwd_ms": f_ms, "fwd_tflops": flops / f_ms / 1e9,
                                     "fwd_bwd_ms": fb_ms, "fwd_bwd_tflops": 3.5 * flops / fb_ms / 1e9,
                                     "gqa": note}
        del q, k, v, do
        torch.cuda.empty_cache()
        if args.limo_cmd:
            text, rc, rows = run_limo(args.limo_cmd, tokens, hq, hkv, hd, docs)
            print(text)
            entry["limo"] = {"exit": rc, "rows": rows}
            kernels = {r["kernel"]: r for r in rows}
            for way in ("fwd", "bwd"):
                sm80 = kernels.get(f"flash_attention {way} sm80")
                sm90 = kernels.get(f"flash_attention {way} sm90")
                if sm80 and sm90:
                    print(f"{name:28} limo {way} sm80 {sm80['ms']:8.3f} ms {sm80['tflops']:6.1f} "
                          f"TF/s, sm90 {sm90['ms']:8.3f} ms {sm90['tflops']:6.1f} TF/s "
                          f"(sm90/sm80 {sm80['ms'] / sm90['ms']:.2f}x)")
                    entry["limo"][f"{way}_paths"] = {"sm80": sm80, "sm90": sm90}
                elif rc == 0:
                    print(f"{name:28} limo {way}: one path only (the sm90 kernels need a 9.x GPU)")
            failed |= rc != 0
    if not args.limo_cmd:
        print("\nlimo side not run: pass --limo ./limo (see the top of this script)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                       "shapes": results}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
