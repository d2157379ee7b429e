#!/usr/bin/env python3
"""Where a training step's GPU time goes, kernel by kernel: Nsight Compute's duration of every
launch of the timed step (`ncu --profile-from-start off --metrics gpu__time_duration.sum` over
`limo bench step --profile-range`, then `ncu --import R --page raw --csv --print-units base`),
summed by kernel name and by kind (cuBLAS matmuls, flash attention, limo's other kernels,
candle's element-wise and copy kernels, NCCL). ncu runs the launches one at a time, so the sum
is the step's kernel time without overlap. The last line printed is the summary row's key.
Exit 1 when no launch could be read.

    python3 scripts/gpu/step_kernels.py logs/step-kernels.csv
"""
import csv
import re
import sys

TO_MS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0,
         "second": 1e3, "s": 1e3}
METRIC = "gpu__time_duration.sum"

# (kind, pattern on the kernel's name), first match wins.
KINDS = [
    ("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|cublas|splitk|gemv", re.I)),
    ("attention", re.compile(r"^flash_")),
    ("communication", re.compile(r"nccl", re.I)),
    # kernels/*.cu's entry points other than flash_*
    ("limo", re.compile(r"^(rms_norm|add_rms_norm|swiglu|rope_|qkv_rope_append|softmax_xent|"
                        r"adamw|embedding_bwd|sum_squares|add_into|cast_into|decode_attn|"
                        r"kv_cache_write)")),
]


def number(text):
    try:
        return float(str(text).replace(",", ""))
    except (TypeError, ValueError):
        return None


def kind(name):
    for k, pattern in KINDS:
        if pattern.search(name):
            return k
    return "candle"


def launches(path):
    """[(kernel name, ms)] from the raw page (a metric column, a units row under the header)
    or from the details page's long form (Metric Name / Metric Unit / Metric Value rows)."""
    with open(path, newline="", errors="replace") as fh:
        lines = [line for line in fh if line.startswith('"')]
    rows = list(csv.reader(lines))
    if not rows:
        return []
    head = rows[0]
    out = []
    if METRIC in head:
        col, name = head.index(METRIC), head.index("Kernel Name")
        launch = head.index("ID") if "ID" in head else None
        unit = "nsecond"
        for row in rows[1:]:
            if len(row) <= max(col, name):
                continue
            # The units row: no launch id (or, without an ID column, no number).
            no_id = not row[launch].strip() if launch is not None else number(row[col]) is None
            if no_id:
                unit = row[col].strip() or unit
                continue
            value = number(row[col])
            if value is not None:
                out.append((row[name], value * TO_MS.get(unit, 1e-6)))
        return out
    if "Metric Name" in head:
        at = {h: i for i, h in enumerate(head)}
        for row in rows[1:]:
            if len(row) < len(head) or row[at["Metric Name"]] not in (METRIC, "Duration"):
                continue
            value = number(row[at["Metric Value"]])
            scale = TO_MS.get(row[at["Metric Unit"]].strip())
            if value is not None and scale is not None:
                out.append((row[at["Kernel Name"]], value * scale))
    return out


def short(name, width=60):
    name = name.split("(")[0].strip()
    return name if len(name) <= width else name[:width - 3] + "..."


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    got = launches(sys.argv[1])
    if not got:
        print(f"no kernel durations in {sys.argv[1]}")
        sys.exit(1)
    total = sum(ms for _, ms in got)
    by_name, by_kind = {}, {}
    for name, ms in got:
        n, t = by_name.get(short(name), (0, 0.0))
        by_name[short(name)] = (n + 1, t + ms)
        n, t = by_kind.get(kind(name), (0, 0.0))
        by_kind[kind(name)] = (n + 1, t + ms)
    print(f"{len(got)} launches, {total:.2f} ms of kernel time (one at a time, no overlap)")
    print(f"{'kind':<16}{'launches':>9}{'ms':>11}{'share':>8}")
    for k, (n, t) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"{k:<16}{n:>9}{t:>11.3f}{100 * t / total:>7.1f}%")
    print()
    print(f"{'kernel':<62}{'kind':<14}{'launches':>9}{'ms':>11}{'share':>8}")
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])
    for name, (n, t) in ranked[:40]:
        print(f"{name:<62}{kind(name):<14}{n:>9}{t:>11.3f}{100 * t / total:>7.1f}%")
    kinds = ", ".join(f"{k} {100 * t / total:.0f}%" for k, (n, t) in
                      sorted(by_kind.items(), key=lambda kv: -kv[1][1]))
    top = "; ".join(f"{short(name, 40)} {100 * t / total:.1f}%" for name, (n, t) in ranked[:3])
    print(f"step-kernels: {len(got)} launches, {total:.1f} ms; {kinds}; top: {top}")


if __name__ == "__main__":
    main()
