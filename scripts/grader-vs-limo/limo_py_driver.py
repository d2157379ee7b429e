#!/usr/bin/env python3
"""LIMO's own grading pipeline (GAIR-NLP/LIMO eval/eval.py, lines 'check correct...'):
    gt_ans = parse_ground_truth(d, data_name)[1]            # str(example["answer"])
    pred   = extract_answer(generated_response, data_name)  # last \\boxed{...}, else ""
    ok     = check_is_correct(pred, gt_ans)                 # math_equal(strip_string(pred), strip_string(gt), timeout=True)
applied to corpus lines {"prediction","reference"}; writes the line + "py_extracted","py_correct","py_timeouts","py_error".
Usage: venv/bin/python limo_py_driver.py corpus.jsonl out_py.jsonl [--timeout 3] [--only-ids 1,2,3]
"""
import sys, os, json, time, argparse, multiprocessing, traceback

sys.path.insert(0, os.path.join(os.environ["LIMO_REPO"], "eval"))
from utils.parser import extract_answer, strip_string  # noqa: E402
import utils.grader as G  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("inp")
ap.add_argument("out")
ap.add_argument("--timeout", type=float, default=3.0)  # LIMO: call_with_timeout(..., timeout=3)
ap.add_argument("--only-ids", default=None)
args = ap.parse_args()

TIMEOUTS = [0]


def call_with_timeout(func, *a, timeout=None, **kw):
    # identical to LIMO's utils/grader.py call_with_timeout, plus counting timeouts
    timeout = args.timeout if timeout is None else timeout
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=func, args=a + (q,), kwargs=kw)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.terminate()
        p.join()
        TIMEOUTS[0] += 1
        return False
    return q.get()


G.call_with_timeout = call_with_timeout

only = set(int(x) for x in args.only_ids.split(",")) if args.only_ids else None
t0 = time.time()
n = 0
with open(args.inp) as fi, open(args.out, "w") as fo:
    for line in fi:
        if not line.strip():
            continue
        d = json.loads(line)
        if only is not None and d["id"] not in only:
            continue
        TIMEOUTS[0] = 0
        err = None
        try:
            pred = extract_answer(d["prediction"], "math")
            ok = G.check_is_correct(pred, d["reference"])
        except Exception as e:  # a crash: LIMO's eval.py would die here
            pred, ok, err = None, False, "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
        d["py_extracted"] = pred
        d["py_correct"] = bool(ok)
        d["py_timeouts"] = TIMEOUTS[0]
        d["py_error"] = err
        fo.write(json.dumps(d, ensure_ascii=False) + "\n")
        fo.flush()
        n += 1
        if n % 500 == 0:
            print(n, "pairs", round(time.time() - t0), "s", file=sys.stderr, flush=True)
print("done", n, "pairs in", round(time.time() - t0), "s", file=sys.stderr)
