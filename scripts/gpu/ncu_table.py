#!/usr/bin/env python3
"""One row per kernel from Nsight Compute's details page as CSV (`ncu --import R --csv --page
details --print-units base`): duration and what bounds it (SM and memory throughput as % of the
card's peak, occupancy, issue rate, warp latency). A kernel profiled more than once (the doctor's
path check runs the same kernels on a small document first) keeps its longest launch. The last
line printed is the summary row's key. Exit 1 when no kernel row could be read.

    python3 scripts/gpu/ncu_table.py logs/profile.csv
"""
import csv
import sys

# (column, section-independent metric name as ncu prints it, format)
COLUMNS = [
    ("SM%", "Compute (SM) Throughput", "{:.0f}"),
    ("mem%", "Memory Throughput", "{:.0f}"),
    ("DRAM%", "DRAM Throughput", "{:.0f}"),
    ("L1%", "L1/TEX Cache Throughput", "{:.0f}"),
    ("L2%", "L2 Cache Throughput", "{:.0f}"),
    ("regs", "Registers Per Thread", "{:.0f}"),
    ("occ%", "Achieved Occupancy", "{:.1f}"),
    ("ipc", "Executed Ipc Active", "{:.2f}"),
    ("issue%", "Issue Slots Busy", "{:.0f}"),
    ("cyc/inst", "Warp Cycles Per Issued Instruction", "{:.1f}"),
    ("elig%", "One or More Eligible", "{:.0f}"),
]
TO_MS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0,
         "second": 1e3, "s": 1e3}


def number(text):
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def read(path):
    """{launch id: {"name", "grid", "block", "ms", metric name: value}} from the CSV rows."""
    with open(path, newline="", errors="replace") as fh:
        # ncu's own messages (==PROF==, ==WARNING==) may share the file: the table's lines are
        # the quoted ones.
        lines = [line for line in fh if line.startswith('"')]
    launches = {}
    for row in csv.DictReader(lines):
        launch = row.get("ID")
        metric = (row.get("Metric Name") or "").strip()
        if launch is None or not metric:
            continue
        k = launches.setdefault(launch, {"name": row.get("Kernel Name", "?"),
                                         "grid": row.get("Grid Size", "?"),
                                         "block": row.get("Block Size", "?")})
        value = number(row.get("Metric Value"))
        if metric == "Duration":
            scale = TO_MS.get((row.get("Metric Unit") or "").strip())
            if value is not None and scale is not None:
                k["ms"] = value * scale
        elif value is not None:
            k.setdefault(metric, value)
    return launches


def short(name):
    """flash_bwd_sm90_bf16_hd128(...) -> bwd_sm90_bf16_hd128"""
    name = name.split("(")[0]
    return name[len("flash_"):] if name.startswith("flash_") else name


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    launches = read(sys.argv[1])
    longest = {}
    for k in launches.values():
        best = longest.get(k["name"])
        if best is None or k.get("ms", -1) > best.get("ms", -1):
            longest[k["name"]] = k
    kernels = sorted(longest.values(), key=lambda k: -k.get("ms", 0))
    if not kernels:
        print(f"no kernel rows in {sys.argv[1]}")
        sys.exit(1)
    head = ["kernel", "grid", "block", "ms"] + [c[0] for c in COLUMNS]
    rows = []
    for k in kernels:
        cells = [short(k["name"]), k["grid"], k["block"],
                 "?" if "ms" not in k else f"{k['ms']:.3f}"]
        cells += ["?" if k.get(m) is None else fmt.format(k[m]) for _, m, fmt in COLUMNS]
        rows.append(cells)
    width = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, width))))
    key = "; ".join(
        f"{short(k['name'])} {k.get('ms', 0):.2f} ms SM {k.get('Compute (SM) Throughput', 0):.0f}%"
        f" mem {k.get('Memory Throughput', 0):.0f}%" for k in kernels[:2])
    print(f"profile: {len(kernels)} kernels of {len(launches)} launches; {key}")


if __name__ == "__main__":
    main()
