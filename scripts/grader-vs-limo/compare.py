#!/usr/bin/env python3
"""compare.py out_limo.jsonl out_py.jsonl [-> disagreements.jsonl]; prints counts and disagreement lines grouped by note."""
import json, sys
from collections import Counter, defaultdict

L = {}
for l in open(sys.argv[1]):
    d = json.loads(l); L[d["id"]] = d
P = {}
for l in open(sys.argv[2]):
    d = json.loads(l); P[d["id"]] = d
ids = sorted(set(L) & set(P))
agree = 0
lt_pf, lf_pt = [], []
crashes, touts = [], []
for i in ids:
    l, p = L[i], P[i]
    if p["py_error"]:
        crashes.append(i)
    if p["py_timeouts"]:
        touts.append(i)
    if l["correct"] == p["py_correct"]:
        agree += 1
    elif l["correct"]:
        lt_pf.append(i)
    else:
        lf_pt.append(i)
print(f"total {len(ids)}  agree {agree}  disagree {len(lt_pf)+len(lf_pt)}  (limo T / LIMO F) {len(lt_pf)}  (limo F / LIMO T) {len(lf_pt)}")
print(f"python crashes {len(crashes)}  pairs with >=1 python timeout {len(touts)}")
exp = [i for i in ids if "expected" in L[i]]
print("vs 'expected' labels: limo agrees", sum(L[i]["correct"] == L[i]["expected"] for i in exp), "LIMO agrees",
      sum(P[i]["py_correct"] == L[i]["expected"] for i in exp), "of", len(exp))
with open(sys.argv[3] if len(sys.argv) > 3 else "disagreements.jsonl", "w") as f:
    for kind, lst in (("limoT_LIMOF", lt_pf), ("limoF_LIMOT", lf_pt)):
        for i in lst:
            l, p = L[i], P[i]
            f.write(json.dumps({"kind": kind, "id": i, "source": l["source"], "note": l["note"],
                                "prediction": l["prediction"], "reference": l["reference"],
                                "limo_extracted": l["extracted"], "py_extracted": p["py_extracted"],
                                "py_timeouts": p["py_timeouts"], "py_error": p["py_error"],
                                "expected": l.get("expected")}, ensure_ascii=False) + "\n")
for kind, lst in (("limo T / LIMO F", lt_pf), ("limo F / LIMO T", lf_pt)):
    c = Counter(L[i]["note"].split(" [")[0] if not L[i]["source"].startswith(("limo", "tricky")) else L[i]["source"] for i in lst)
    print("==", kind, c.most_common())
