#!/usr/bin/env python3
"""Builds corpus.jsonl (or argv[1]): {"prediction","reference","limo_reference","source","note","expected"?}.
reference      = what LIMO's eval.py uses (str(example["answer"])) -- both graders get THIS in the main run.
limo_reference = what limo's benchmark loader would use (value_text of choice_answer/answer) -- for the
                 pipeline-level side run only.
"""
import json, os, random, re, math, sys
from fractions import Fraction

random.seed(20250101)
HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(HERE, "../../crates/limo-eval")
DATA = os.environ.get("LIMO_EVAL_DATA", os.path.join(HERE, "../../../shared/data/eval"))
out = []


def add(pred, ref, source, note, expected=None, limo_ref=None):
    d = {"prediction": pred, "reference": ref, "limo_reference": limo_ref if limo_ref is not None else ref,
         "source": source, "note": note}
    if expected is not None:
        d["expected"] = expected
    out.append(d)


def box(x):
    return "Reasoning...\nSo the answer is $\\boxed{%s}$." % x


# ---------------------------------------------------------------- 1. limo's own tests
def rust_str(s, i):
    """parse a Rust "..." literal starting at s[i]=='"'; return (value, end)"""
    assert s[i] == '"'
    i += 1
    v = []
    while s[i] != '"':
        c = s[i]
        if c == '\\':
            n = s[i + 1]
            if n == '\n':  # line continuation: skip newline and leading ws
                i += 2
                while s[i] in ' \t\n':
                    i += 1
                continue
            v.append({'n': '\n', 't': '\t', '\\': '\\', '"': '"', "'": "'", '0': '\0'}.get(n, n))
            if n == 'u':
                m = re.match(r'u\{([0-9a-fA-F]+)\}', s[i + 1:])
                v[-1] = chr(int(m.group(1), 16))
                i += 1 + m.end()
                continue
            i += 2
        else:
            v.append(c)
            i += 1
    return ''.join(v), i + 1


def skip_ws(s, i):
    while s[i] in ' \t\n,':
        i += 1
    return i


src = open(f"{MAIN}/src/grader/tests.rs").read()
# is_equivalent("a", "b") with assert!(...) / assert!(!...)
for m in re.finditer(r'(!?)is_equivalent\(', src):
    i = skip_ws(src, m.end())
    if src[i] != '"':
        continue
    a, i = rust_str(src, i)
    i = skip_ws(src, i)
    if src[i] != '"':
        continue
    b, i = rust_str(src, i)
    add("\\boxed{%s}" % a, b, "limo_unit_is_equivalent", "tests.rs is_equivalent (bare answer, boxed here)",
        expected=(m.group(1) != '!'))
# normalize cases: (input, want)
nsec = src[src.index("fn normalize_forms"):src.index("fn numbers")]
i = 0
while True:
    j = nsec.find('("', i)
    if j < 0:
        break
    a, k = rust_str(nsec, j + 1)
    k = skip_ws(nsec, k)
    b, k = rust_str(nsec, k)
    add("\\boxed{%s}" % a, b, "limo_unit_normalize", "tests.rs normalize(input)==want, as a pair", expected=True)
    i = k
# extract cases: (text, Some("x"))
esec = src[src.index("fn extract_nested"):src.index("fn normalize_forms")]
for m in re.finditer(r'\(\s*"', esec):
    a, k = rust_str(esec, m.end() - 1)
    k = skip_ws(esec, k)
    if esec.startswith('Some(', k):
        b, _ = rust_str(esec, k + 5)
        add(a, b, "limo_unit_extract", "tests.rs extract_answer(text)==Some(want), as a pair", expected=True)

# fixture
for l in open(f"{MAIN}/tests/fixtures/grader_pairs.jsonl"):
    if not l.strip():
        continue
    d = json.loads(l)
    p = d["prediction"]
    src_tag = "limo_fixture"
    if "boxed" not in p and "fbox" not in p and not re.search(r"answer|答案", p, re.I):
        p = "\\boxed{%s}" % p
        src_tag = "limo_fixture_wrapped"
    add(p, d["reference"], src_tag, d["note"], expected=d["equivalent"])

# grader_pairs.rs extra literals
add("so \\boxed{\\frac{1}{2}}", "0.5", "limo_it", "grade_pairs_file", True)
add("\\boxed{7}", "8", "limo_it", "grade_pairs_file", False)
add("The answer is 27.", "27.0", "limo_it", "grade_pairs_file (no box)", True)
add("Let $x = \\frac{a}{b}$ with $\\boxed{2}$ as a guess.\n\nActually:\n$$\\boxed{\\left\\{1, \\frac{\\sqrt{5}}{2}\\right\\}}$$",
    "\\{\\frac{\\sqrt5}{2}, 1\\}", "limo_it", "extraction_on_responses", True)


# ---------------------------------------------------------------- 2. dataset-derived
def value_text(v):  # limo's loader stringification
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)
    if isinstance(v, list):
        return ", ".join(x for x in (value_text(e) for e in v) if x)
    if isinstance(v, dict):
        return ", ".join(x for x in (value_text(e) for e in v.values()) if x)


def fmt_num(x):
    s = ("%.10g" % x)
    return s


INT = re.compile(r'^-?\d+$')
FLOATR = re.compile(r'^-?\d+\.\d+$')
FRAC = re.compile(r'^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$')
SCI = re.compile(r'^(-?\d+(?:\.\d+)?)e([+-]?\d+)$')


def core_of(r):
    c = r.strip()
    if len(c) > 1 and c.startswith('$') and c.endswith('$'):
        c = c.strip('$').strip()
    return c


def numeric_value(c):
    try:
        if INT.match(c) or FLOATR.match(c) or SCI.match(c):
            return float(c)
        m = FRAC.match(c)
        if m:
            v = int(m.group(2)) / int(m.group(3))
            return -v if m.group(1) else v
    except Exception:
        pass
    return None


def variants(c, name, row):
    """list of (prediction_answer_text, note, expected_guess, wrapper)"""
    V = []
    v = numeric_value(c)
    if INT.match(c) or (name == 'amc'):
        n = int(float(c))
        V += [(str(n + 1), "int off by one", False), (str(n - 1) if n != 1 else "0", "int off by one (minus)", False),
              ("x = %d" % n, "x= prefix", True), ("%d \\text{ cm}" % n, "unit \\text{ cm}", True),
              ("%d^\\circ" % n, "degrees ^\\circ", True), ("%d \\text{ degrees}" % n, "unit degrees", True),
              ("%d.0" % n, "trailing .0", True), ("%d\\%%" % n, "int with \\%", None),
              ("%d.00005" % n, "int + 5e-5", None), ("%d.001" % n, "int + 1e-3", False),
              ("\\frac{%d}{1}" % n, "\\frac{n}{1}", True), ("%d \\text{ ways}" % n, "unit ways", True)]
        if abs(n) >= 1000:
            V += [("{:,}".format(n), "thousands comma", True), ("{:,}".format(n).replace(",", "{,}"), "thousands {,}", True),
                  ("{:,}".format(n).replace(",", ",\\!"), "thousands ,\\!", True)]
        if 0 < n <= 20:
            w = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"][n]
            V += [("\\text{%s}" % w, "word number", True)]
    m = FRAC.match(c)
    if m:
        s, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        val = a / b * (-1 if s else 1)
        V += [("%s%d/%d" % (s, a, b), "a/b", True), ("%s\\dfrac{%d}{%d}" % (s, a, b), "dfrac", True),
              ("%s\\frac%d%d" % (s, a, b) if a < 10 and b < 10 else "%s\\tfrac{%d}{%d}" % (s, a, b), "short frac/tfrac", True),
              ("%.6f" % val, "decimal 6dp", True), ("%.3f" % val, "decimal 3dp", None), ("%.2f" % val, "decimal 2dp", None),
              ("%s\\frac{%d}{%d}" % (s, b, a) if a != b else "%s\\frac{%d}{%d}" % (s, a + 1, b), "inverted frac", False),
              ("%s\\frac{%d}{%d}" % ("" if s else "-", a, b), "sign flipped", False),
              ("%s\\left(\\frac{%d}{%d}\\right)" % (s, a, b), "\\left( \\right)", True),
              ("%.6g\\%%" % (val * 100), "percent", None)]
        g = math.gcd(a, b)
        V += [("%s\\frac{%d}{%d}" % (s, 2 * a, 2 * b), "unreduced frac", True)]
    if FLOATR.match(c):
        x = float(c)
        V += [(fmt_num(x * 100) + "\\%", "decimal as percent", None), (fmt_num(x * 1.00005), "rel +5e-5", None),
              (fmt_num(x * 1.01), "rel +1%", False), (fmt_num(x + 0.00005), "abs +5e-5", None),
              ("%s \\text{ m}" % c, "unit \\text{ m}", True), (c + "0", "trailing zero", True)]
    ms = SCI.match(c)
    if ms:
        mant, ex = ms.group(1), int(ms.group(2))
        x = float(c)
        V += [("%s \\times 10^{%d}" % (mant, ex), "sci \\times 10^{}", True), (fmt_num(x * 1.5), "sci x1.5", False),
              ("%s \\cdot 10^{%d}" % (mant, ex), "sci \\cdot", True), (fmt_num(x * 1.00002), "sci rel 2e-5", None),
              ("%sE%d" % (mant, ex), "sci E", True), ("%s \\times 10^{%d}" % (mant, ex + 1), "sci wrong exponent", False)]
    if v is None and re.search(r'\\sqrt|\\pi|\\ln|\\log|\\frac', c) and not re.search(r'[a-zA-Z]\s*[=<>]|,', c):
        # symbolic constant? try evaluating with sympy-free crude approach: leave decimals to python side helper
        V += [(c.replace("\\frac", "\\dfrac"), "dfrac", True), ("\\left(%s\\right)" % c, "\\left( \\right)", True),
              ("%s+1" % c, "plus one", False), ("2\\left(%s\\right)" % c, "doubled", False),
              ("$%s$" % c, "inner $..$", True)]
        V += [("@DEC6@" + c, "decimal 6dp of symbolic", None), ("@DEC2@" + c, "decimal 2dp of symbolic", None)]
    if c.startswith(("(", "[", "\\left(", "\\left[")) and "," in c:
        inner = c
        V += [(c.replace(",", " , "), "tuple spaces", True), (c.replace("(", "\\left(").replace(")", "\\right)") if "\\left" not in c else c.replace("\\left", "").replace("\\right", ""), "tuple \\left toggled", True)]
        # reversed elements of a simple 2-tuple
        mt = re.match(r'^(\\left)?([(\[])(.*),(.*?)(\\right)?([)\]])$', c)
        if mt and mt.group(3).count(",") == 0 and "(" not in mt.group(3) + mt.group(4):
            V += [("%s%s,%s%s" % (mt.group(2), mt.group(4).strip(), mt.group(3).strip(), mt.group(6)), "tuple reversed", False),
                  ("%s, %s" % (mt.group(3).strip(), mt.group(4).strip()), "tuple without brackets", None),
                  ("[%s,%s]" % (mt.group(3).strip(), mt.group(4).strip()) if mt.group(2) == "(" else "(%s,%s)" % (mt.group(3).strip(), mt.group(4).strip()), "bracket type swapped", False)]
    elif "," in c and not c.startswith("\\begin") and "\\{" not in c and "{" != c[:1]:
        parts = [p.strip() for p in c.split(",")]
        if len(parts) >= 2 and all(parts):
            V += [(", ".join(reversed(parts)), "list reversed", True), (",".join(parts), "list no spaces", True),
                  (", ".join(parts[:-1]), "list missing last", False)]
    if c.startswith("{") or c.startswith("\\{"):
        inner = c.strip("\\{}") if c.startswith("\\{") else c[1:-1]
        parts = [p.strip() for p in inner.split(",")]
        V += [("\\{%s\\}" % ", ".join(reversed(parts)), "set reversed", True), (", ".join(parts), "set as bare list", None)]
    if "\\begin{pmatrix}" in c:
        V += [(c.replace("pmatrix", "bmatrix"), "bmatrix", True), (c.replace(" ", ""), "pmatrix no spaces", True)]
        cells = re.findall(r'(-?[\d/]+|-?\\frac\{-?\d+\}\{\d+\})', c[len("\\begin{pmatrix}"):-len("\\end{pmatrix}")])
        if cells and "&" not in c:
            V += [("(" + ", ".join(cells) + ")", "column vector as tuple", None)]
    if "\\cup" in c:
        V += [(c.replace("\\cup", "\\cup "), "cup spaced", True), (c.replace("\\infty", "+\\infty") if "-\\infty" not in c.split("\\cup")[-1] else c, "+infty", True),
              (c.replace(")", "]", 1), "one bracket changed", False)]
    if "\\infty" in c:
        V += [(c.replace("\\infty", "\\infty "), "infty spaced", True)]
    if "\\text{" in c:
        V += [(re.sub(r"\\text\{\s*([^}]*)\}", r"\1", c).strip(), "units/text dropped", None)]
    if "^\\circ" in c or "^{\\circ}" in c:
        V += [(c.replace("^\\circ", "").replace("^{\\circ}", ""), "degree sign dropped", True),
              (c.replace("^\\circ", " degrees").replace("^{\\circ}", " degrees"), "degrees word", True)]
    if re.match(r'^[a-zA-Z](_\{?\w+\}?)?\s*=', c) and c.count("=") == 1:
        lhs, rhs = c.split("=")
        V += [(rhs.strip(), "equation rhs only", None), ("%s = %s" % (rhs.strip(), lhs.strip()), "equation sides swapped", True)]
    if re.match(r'^-?\d*[a-zA-Z]', c) and re.search(r'[+-]', c[1:]) and "=" not in c and "\\" not in c:
        # polynomial-like e.g. -13x+3: reorder terms crude
        terms = re.findall(r'[+-]?[^+-]+', c)
        if len(terms) >= 2:
            rev = "".join(t if t[0] in "+-" else "+" + t for t in reversed(terms)).lstrip("+")
            V += [(rev, "terms reordered", True)]
    # choice datasets
    if name in ("gaokao", "kaoyan"):
        letter = row.get("choice_answer") or (c if re.match(r'^[A-E]$', c) else None)
        if not letter:
            m2 = re.match(r'^[（(]?([A-E])[）)]?[.．:]?', c)
            letter = m2.group(1) if m2 else None
        if letter:
            other = "ABCD"[("ABCD".index(letter) + 1) % 4] if letter in "ABCD" else "A"
            V += [(letter, "choice letter", True), ("(%s)" % letter, "choice (X)", True), ("\\text{(%s)}" % letter, "choice \\text{(X)}", True),
                  ("%s." % letter, "choice X.", True), (other, "other choice letter", False), ("(%s)" % other, "other choice (Y)", False),
                  ("\\text{Option %s}" % letter, "Option X", True)]
            content = re.sub(r'^[（(]?[A-E][）)]?[.．:]?\s*', '', c).strip()
            if content and content != c:
                V += [(content, "choice content only", None), ("%s. %s" % (letter, content), "letter+content", True),
                      ("%s. %s" % (other, content), "wrong letter + right content", None)]
    if name == "grade_school_math" and isinstance(row["answer"], (list, dict)):
        V += [(value_text(row["answer"]), "list as joined text", None)]
    # generic text answers
    if v is None and not V:
        V += [(c + " ", "trailing space", True), ("\\text{%s}" % c, "in \\text{}", True)]
    # generic wrong
    V += [("@WRONG@", "wrong answer (another row's reference)", False)]
    return V


datasets = [("aime", "aime"), ("amc", "amc23"), ("cn_math_2024", "cn_math_2024"), ("gaokao", "gaokao"),
            ("grade_school_math", "grade_school_math"), ("kaoyan", "kaoyan"), ("math", "math500"),
            ("minerva", "minerva"), ("olympiadbench", "olympiadbench")]
allrefs = {}
rows_by = {}
for f, name in datasets:
    rows = [json.loads(l) for l in open(f"{DATA}/{f}.jsonl")]
    rows_by[f] = rows
    allrefs[f] = [str(r["answer"]) for r in rows]

try:
    import sympy
    from latex2sympy2 import latex2sympy
except Exception:
    latex2sympy = None


def decimals(c, nd):
    try:
        x = float(latex2sympy(c).evalf())
        return ("%." + str(nd) + "f") % x
    except Exception:
        return None


for f, name in datasets:
    rows = rows_by[f]
    for idx, row in enumerate(rows):
        ref = str(row["answer"])  # LIMO: parse_ground_truth -> str(example["answer"])
        limo_ref = value_text(row.get("choice_answer")) or value_text(row["answer"]) if f == "gaokao" else value_text(row["answer"])
        c = core_of(ref)
        tag = f"data:{f}#{idx}"
        add(box(c), ref, tag, "exact reference boxed", True, limo_ref)
        V = variants(c, f, row)
        wrong = [x for x in V if x[2] is False]
        right = [x for x in V if x[2] is not False]
        pick = random.sample(right, min(len(right), 2)) + random.sample(wrong, min(len(wrong), 1))
        for (p, note, exp) in pick:
            if p == "@WRONG@":
                others = [r for r in allrefs[f] if core_of(r) != c]
                p = core_of(random.choice(others))
            elif p.startswith("@DEC"):
                nd = int(p[4]); p = decimals(p[6:], nd)
                if p is None:
                    continue
            style = random.random()
            if style < 0.75:
                pred = box(p)
            elif style < 0.85:
                pred = "Thus the final value is \\boxed{%s}" % p
            elif style < 0.92:
                pred = "Try \\boxed{%s}? No, recheck.\nTherefore $\\boxed{%s}$." % (core_of(random.choice(allrefs[f])), p)
                note += " [two boxes, last counts]"
            else:
                pred = "So the answer is $%s$." % p
                note += " [no box]"
            add(pred, ref, tag, note, exp, limo_ref)
        # one extra "last box wrong" per 10 rows
        if idx % 10 == 0:
            w = core_of(random.choice([r for r in allrefs[f] if core_of(r) != c] or ["0"]))
            add("We get \\boxed{%s} at first; but correcting, \\boxed{%s}." % (c, w), ref, tag, "two boxes, last wrong", False, limo_ref)

# ---------------------------------------------------------------- 3. hand-written tricky cases
T = [
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True), ("\\frac{\\sqrt2}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("6.283185", "2\\pi", True), ("6.28", "2\\pi", False), ("3.14159", "\\pi", True), ("3.14", "\\pi", False),
    ("0.7071", "\\frac{\\sqrt{2}}{2}", None), ("1.41421356", "\\sqrt{2}", True),
    ("0.5000001", "\\frac{1}{2}", True), ("0.50001", "\\frac12", None), ("0.5001", "\\frac12", False),
    ("100.005", "100", None), ("100.00005", "100", None), ("1000001", "1000000", False), ("1000000.5", "1000000", None),
    ("1e-5", "0.00001", True), ("2e-5", "1e-5", False), ("1.39 \\times 10^{-10}", "1.39e-10", True),
    ("1.5e-10", "1.39e-10", False), ("6.02 \\times 10^{23}", "6.02e23", True), ("6.03 \\times 10^{23}", "6.02e23", False),
    ("4 \\times 10^{33}", "4e33", True), ("3.61 \\times 10^2", "3.61e2", True), ("361", "3.61e2", True),
    ("\\{1, 2, 3\\}", "\\{3,2,1\\}", True), ("\\{1,2\\}", "\\{1,2,3\\}", False), ("1,2,3", "3, 2, 1", True),
    ("(1,2)", "(2,1)", False), ("[1,2]", "(1,2)", False), ("(1,2]", "(1,2)", False), ("[-1, 3)", "[-1,3)", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,+\\infty)", True), ("(-\\infty, 2]", "(-\\infty,2)", False),
    ("\\infty", "\\infty", True), ("-\\infty", "\\infty", False), ("\\infty", "+\\infty", True), ("\\text{infinity}", "\\infty", True),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
    ("\\begin{bmatrix} 0.5 \\\\ 1 \\end{bmatrix}", "\\begin{pmatrix} \\frac12 \\\\ 1 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)", None), ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "(1,2)", False),
    ("y = 2x + 1", "y=1+2x", True), ("2x - y + 1 = 0", "y = 2x + 1", True), ("y = 2x - 1", "y = 2x + 1", False),
    ("x^2 + y^2 = 1", "y^2 + x^2 = 1", True), ("x = 3", "3", True), ("3", "x=3", True), ("x=3", "y=3", None),
    ("k = 4", "4", True), ("n = 5", "5", True), ("a_n = 2n+1", "2n+1", None), ("f(x) = x^2", "x^2", None),
    ("-5", "-5", True), ("-5", "5", False), ("- 5", "-5", True), ("−5", "-5", None), ("-0", "0", True),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", True), ("-\\frac{1}{2}", "-0.5", True), ("\\frac{-1}{2}", "0.5", False),
    ("50\\%", "0.5", True), ("50\\%", "50", True), ("0.5", "50\\%", True), ("5\\%", "0.5", False), ("50", "0.5", None),
    ("\\$1,000", "1000", True), ("1,000,000", "1000000", True), ("1 000 000", "1000000", None), ("10{,}000", "10000", True),
    ("12\\text{ cm}^2", "12", True), ("12 \\mathrm{~cm}", "12", True), ("45^{\\circ}", "45", True), ("45 degrees", "45", True),
    ("\\frac{\\pi}{4}", "45^\\circ", None), ("30^\\circ", "\\frac{\\pi}{6}", None),
    ("2\\sqrt{3}", "\\sqrt{12}", True), ("\\sqrt{12}", "3.4641", True), ("2\\sqrt3", "2\\sqrt{3}", True),
    ("\\sqrt[3]{2}", "2^{1/3}", True), ("e^{2}", "\\exp(2)", True), ("\\ln 8", "3\\ln 2", True), ("\\log_2 8", "3", True),
    ("\\binom{5}{2}", "10", True), ("5!", "120", True), ("\\dfrac{10}{4}", "\\frac{5}{2}", True), ("2.5", "\\frac52", True),
    ("i", "\\sqrt{-1}", None), ("1+i", "i+1", True), ("1-i", "1+i", False), ("2i", "2j", None),
    ("x^2-1", "(x-1)(x+1)", True), ("x^2+1", "(x-1)(x+1)", False), ("\\frac{n(n+1)}{2}", "\\frac{n^2+n}{2}", True),
    ("3n", "$3 n$", True), ("n^2", "n*n", True), ("2^{n}", "2^n", True), ("2^{n+1}", "2\\cdot 2^n", True),
    ("\\text{A}", "A", True), ("A", "\\text{(A)}", True), ("(B)", "B", True), ("B", "C", False), ("b", "B", None),
    ("\\text{Yes}", "Yes", True), ("yes", "Yes", True), ("No", "Yes", False), ("\\text{even}", "\\text{odd}", False),
    ("3, 5", "5, 3", True), ("3 \\text{ and } 5", "3, 5", True), ("3 or 5", "3, 5", None),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}", None), ("\\pm 2", "2, -2", None),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True), ("(3, 1.5708)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\varnothing", "\\emptyset", True), ("\\emptyset", "\\{\\}", None), ("\\mathbb{R}", "(-\\infty,\\infty)", True),
    ("x \\in [1, 2]", "[1,2]", True), ("x \\le 2", "(-\\infty, 2]", None), ("x > 2", "(2, \\infty)", None),
    ("0.\\overline{3}", "\\frac{1}{3}", None), ("1/3", "0.333333", True), ("0.3333", "\\frac13", None),
    ("17", "17.0", True), ("17.", "17", True), ("017", "17", True), ("17.5", "17", False), ("1.7e1", "17", True),
    ("\\frac{1}{3} + \\frac{1}{3}", "\\frac{2}{3}", True), ("2/3", "\\frac{4}{6}", True), ("\\frac{4}{6}", "\\frac{2}{3}", True),
    ("10^{-3}", "0.001", True), ("1000", "10^3", True), ("1.0001", "1", None), ("0.0001", "0", None), ("0.00001", "0", None),
    ("1.00001", "1", None), ("123456.7", "123456", False), ("123456.01", "123456", None),
    ("\\frac{1}{10000}", "0", None), ("3\\times4", "12", True),
    # --- probes added after the first run
    ("\\lfloor n/3 \\rfloor", "0", False), ("|x|", "x", False), ("\\sqrt{x^2}", "x", False), ("|n-5|", "5-n", False),
    ("2\\lfloor\\frac{n}{5}\\rfloor", "\\lfloor\\frac{n}{5}\\rfloor", False), ("\\ln(x^2)", "2\\ln x", True),
    ("5", "500", False), ("1", "100", False), ("3", "300", False), ("0.36", "36", None), ("36", "0.36", None),
    ("1000000001", "1000000000", False), ("123456789012", "123456789000", False),
    ("five", "5", True), ("twenty-one", "21", True), ("one hundred", "100", True), ("\\text{twenty one}", "21", True),
    ("\\frac{1}{2}", "\\frac{1}{2}\\text{ cm}^2", True), ("\\sin x", "\\sin(x)", True), ("\\sin^2 x + \\cos^2 x", "1", True),
    ("e", "2.71828", True), ("(1,2),(3,4)", "(3,4),(1,2)", None), ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}2", True),
    ("a=4,b=1", "b=1,a=4", True), ("\\frac{1}{2}", "0.5\\text{ hours}", True),
    ("t^2+1", "s^2+1", False), ("a+1", "c+1", False), ("m+n", "h+n", False), ("2t", "2s", False), ("x+y", "x-y", False),
    ("\\boxed{3} and \\fbox{4}", "4", True), ("3 \\cdot 4", "12", True), ("3 \\div 4", "0.75", True),
]
for p, r, e in T:
    add(box(p), r, "tricky", "hand-written", e)

with open(sys.argv[1] if len(sys.argv) > 1 else "corpus.jsonl", "w") as fo:
    for i, d in enumerate(out):
        d = {"id": i, **d}
        fo.write(json.dumps(d, ensure_ascii=False) + "\n")
from collections import Counter
print(len(out), Counter(d["source"].split("#")[0] for d in out))
