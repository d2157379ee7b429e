//! The rule-based answer grader, modelled on LIMO's `eval/utils/grader.py`, `parser.py` and
//! `math_normalization.py` (themselves from the Qwen2.5-Math / ToRA / MATH evaluations), written
//! anew: there is no sympy here, so symbolic equivalence is decided by evaluating both sides
//! numerically (free variables at a few fixed points).
//!
//! - [`extract_answer`]: the last `\boxed{..}` / `\fbox{..}` of a response (nested braces), else
//!   "the answer is X" / "final answer: X".
//! - [`normalize`]: LaTeX and unit clean-up into a canonical string.
//! - [`is_equivalent`]: string, choice-letter, list / tuple / interval / set / matrix, equation and
//!   numeric or symbolic equivalence.
//! - [`grade_pairs`]: `{"prediction", "reference"}` JSONL in, the same lines with `"extracted"`
//!   and `"correct"` out (`limo eval grade`).
//!
//! Nothing here panics on any input: recursion and expression sizes are bounded.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Deepest recursion of [`is_equivalent`] into lists, tuples and choice contents.
const MAX_DEPTH: usize = 6;
/// Longest normalized string handed to the expression evaluator.
const MAX_EVAL_CHARS: usize = 2000;
/// Deepest nesting the expression parser follows.
const MAX_PARSE_DEPTH: usize = 200;
/// Most elements compared in one list / set.
const MAX_ITEMS: usize = 256;
/// Relative tolerance of numeric equality.
const REL_TOL: f64 = 1e-4;
/// Absolute tolerance when one side is exactly zero.
const ABS_TOL_AT_ZERO: f64 = 1e-8;

mod expr;
mod normalize;
mod units;
use expr::*;
pub use normalize::normalize;
use normalize::*;
use units::*;

// ------------------------------------------------------------------------------------------
// Extraction
// ------------------------------------------------------------------------------------------

/// The final answer of a model response: the content of the LAST `\boxed{...}` or `\fbox{...}`
/// (nested braces; `\boxed 5` without braces too); else what follows the last "the answer is",
/// "final answer is", "final answer:" (or 答案是 / 答案为); else `None`.
pub fn extract_answer(text: &str) -> Option<String> {
    last_boxed(text).or_else(|| answer_phrase(text))
}

/// [`extract_answer`], or the whole text (trimmed) when it has no box and no answer phrase: a
/// prediction may be a full response or a bare answer. Only empty boxes extract nothing: `""`.
pub fn extract_or_raw(text: &str) -> String {
    extract_answer(text).unwrap_or_else(|| {
        let boxed = text.contains("\\boxed") || text.contains("\\fbox");
        if boxed { "" } else { text.trim() }.to_string()
    })
}

fn last_boxed(text: &str) -> Option<String> {
    let mut starts: Vec<(usize, usize)> = Vec::new();
    for kw in ["\\boxed", "\\fbox"] {
        starts.extend(text.match_indices(kw).map(|(i, _)| (i, kw.len())));
    }
    starts.sort_unstable();
    for &(i, n) in starts.iter().rev() {
        if let Some(content) = boxed_content(&text[i + n..]) {
            let content = clean_extracted(&content);
            if !content.is_empty() {
                return Some(content);
            }
        }
    }
    None
}

/// What a `\boxed` keyword boxes, given the text right after the keyword.
fn boxed_content(rest: &str) -> Option<String> {
    let t = rest.trim_start_matches([' ', '\t']);
    let first = t.chars().next()?;
    if first == '{' {
        return Some(match brace_group(t) {
            Some((inner, _)) => inner.to_string(),
            // unbalanced: everything after the brace, as LIMO does
            None => t[1..].to_string(),
        });
    }
    let spaced = t.len() != rest.len();
    if spaced || first.is_ascii_digit() || first == '-' {
        // `\boxed 5`: one token
        let end = t
            .find(|c: char| c == '$' || c.is_whitespace())
            .unwrap_or(t.len());
        return Some(t[..end].to_string());
    }
    None // `\boxedfoo`: another macro
}

/// LIMO's post-processing of an extracted answer: no line breaks, no leading `:`, no trailing
/// `.` or `/`.
fn clean_extracted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    let t = out.trim();
    let t = t.strip_prefix(':').unwrap_or(t).trim();
    t.trim_end_matches(['.', '/']).trim().to_string()
}

fn answer_phrase(text: &str) -> Option<String> {
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` index `text`
    let lower = text.to_ascii_lowercase();
    let patterns = [
        "final answer is",
        "final answer:",
        "the answer is",
        "answer is:",
        "答案是",
        "答案为",
        "答案：",
    ];
    let mut best: Option<usize> = None;
    for p in patterns {
        if let Some(i) = lower.rfind(p) {
            let end = i + p.len();
            if best.is_none_or(|b| end > b) {
                best = Some(end);
            }
        }
    }
    let rest = &text[best?..];
    let rest =
        rest.trim_start_matches(|c: char| c == ':' || c == '：' || c == '*' || c.is_whitespace());
    let line = rest.split('\n').next().unwrap_or("");
    let joined: String;
    let mut ans: &str = if let Some(inner) = line.strip_prefix("$$") {
        inner.split("$$").next().unwrap_or("")
    } else if line.starts_with('$') {
        joined = inline_math_run(line);
        &joined
    } else if let Some(inner) = line.strip_prefix("\\(") {
        inner.split("\\)").next().unwrap_or("")
    } else if let Some(inner) = line.strip_prefix("\\[") {
        inner.split("\\]").next().unwrap_or("")
    } else {
        let cut = [line.find(". "), line.find('。')]
            .into_iter()
            .flatten()
            .min();
        &line[..cut.unwrap_or(line.len())]
    };
    ans = ans.trim().trim_end_matches(['.', '*', '。']).trim();
    (!ans.is_empty()).then(|| ans.to_string())
}

/// The contents of `$a$, $b$ and $c$` at the start of `line`, joined by commas (an escaped `\$`
/// is a dollar sign inside).
fn inline_math_run(line: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = line;
    while let Some(inner) = rest.strip_prefix('$').filter(|r| !r.starts_with('$')) {
        let mut end = None;
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match c {
                '$' if !escaped => {
                    end = Some(i);
                    break;
                }
                '\\' => escaped = !escaped,
                _ => escaped = false,
            }
        }
        let Some(end) = end else {
            parts.push(inner);
            break;
        };
        parts.push(&inner[..end]);
        let after = inner[end + 1..].trim_start_matches([' ', ',', ';']);
        rest = ["and ", "or "]
            .iter()
            .find_map(|w| after.strip_prefix(w))
            .unwrap_or(after)
            .trim_start();
    }
    parts.join(", ")
}

/// The content of the brace group `s` starts with, and the byte length of the whole group.
/// Escaped braces (`\{`, `\}`) do not count.
fn brace_group(s: &str) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    if b.first() != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[1..i], i + 1));
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

// ------------------------------------------------------------------------------------------
// Structure helpers
// ------------------------------------------------------------------------------------------

/// `s` wholly inside one bracket pair (`(..)`, `[..]`, `(..]`, `[..)`, `{..}`): the brackets and
/// the balanced inside.
fn enclosed(s: &str) -> Option<(char, &str, char)> {
    let first = s.chars().next()?;
    let last = s.chars().next_back()?;
    if s.len() < 2 || !"([{".contains(first) || !")]}".contains(last) {
        return None;
    }
    if (first == '{') != (last == '}') {
        return None;
    }
    let inner = &s[1..s.len() - 1];
    let mut depth: i64 = 0;
    for c in inner.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    (depth == 0).then_some((first, inner, last))
}

/// `s` split at the separators that are outside every bracket pair.
fn split_top<'a>(s: &'a str, seps: &[char]) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let mut depth: i64 = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if depth <= 0 && seps.contains(&c) => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `s` split at a top-level multi-character separator such as `\cup`.
fn split_top_str<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let mut depth: i64 = 0;
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        let c = s[i..].chars().next().unwrap_or(' ');
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        if depth <= 0 && s[i..].starts_with(sep) {
            let after = s[i + sep.len()..].chars().next();
            if !after.is_some_and(|c| c.is_ascii_alphabetic()) {
                parts.push(&s[start..i]);
                i += sep.len();
                start = i;
                continue;
            }
        }
        i += c.len_utf8();
    }
    parts.push(&s[start..]);
    parts
}

/// The cells of a `\begin{pmatrix}..\end{pmatrix}` (rows by `\\`, cells by `&`).
fn matrix_cells(s: &str) -> Option<Vec<Vec<String>>> {
    let inner = s
        .strip_prefix("\\begin{pmatrix}")?
        .strip_suffix("\\end{pmatrix}")?;
    let rows: Vec<Vec<String>> = inner
        .split("\\\\")
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| r.split('&').map(|c| c.trim().to_string()).collect())
        .collect();
    (!rows.is_empty()).then_some(rows)
}

/// Elements of a set-like answer: a `{..}` set's or a bare list's items (split at top-level `,`
/// and `;`), each `a \pm b` expanded into `a+b` and `a-b`.
fn set_items(s: &str) -> Vec<String> {
    let inner = match enclosed(s) {
        Some(('{', inner, '}')) => inner,
        _ => s,
    };
    let mut items = Vec::new();
    for item in split_top(inner, &[',', ';']) {
        if item.is_empty() {
            continue;
        }
        let pm = item.matches("\\pm").count() + item.matches("\\mp").count();
        if pm == 1 {
            let plus = item.replacen("\\pm", "+", 1).replacen("\\mp", "-", 1);
            let minus = item.replacen("\\pm", "-", 1).replacen("\\mp", "+", 1);
            items.push(plus);
            items.push(minus);
        } else {
            items.push(item.to_string());
        }
    }
    items
}

// ------------------------------------------------------------------------------------------
// Choices
// ------------------------------------------------------------------------------------------

fn choice_letter(c: char, lowercase_ok: bool) -> Option<char> {
    if ('A'..='E').contains(&c) {
        Some(c)
    } else if lowercase_ok && ('a'..='e').contains(&c) {
        Some(c.to_ascii_uppercase())
    } else {
        None
    }
}

/// A bare choice: `C`, `(C)`, `C.`, `C)`, `C:`, `[C]`, `{C}`, `**C**`.
fn choice_only(s: &str, lowercase_ok: bool) -> Option<char> {
    let t = s.trim_matches('*');
    let c: Vec<char> = t.chars().collect();
    match c.as_slice() {
        [x] | ['(', x, ')'] | ['[', x, ']'] | ['{', x, '}'] | [x, '.' | ')' | ':' | ','] => {
            choice_letter(*x, lowercase_ok)
        }
        ['(', x, ')', '.' | ':'] => choice_letter(*x, lowercase_ok),
        _ => None,
    }
}

/// A choice with its content: `C.{x|..}`, `C:5`, `C)5`, `(C)5` -> (`C`, content).
fn choice_with_content(s: &str) -> Option<(char, String)> {
    let t = s.trim_start_matches('*');
    let c: Vec<char> = t.chars().collect();
    let (letter, skip) = match c.as_slice() {
        ['(', x, ')', ..] => (*x, 3),
        [x, '.' | ':' | ')', ..] => (*x, 2),
        _ => return None,
    };
    let letter = choice_letter(letter, false)?;
    let content: String = c[skip..].iter().collect();
    let content = content.trim_matches('*').to_string();
    (!content.is_empty()).then_some((letter, content))
}

/// The letter a prediction chooses, if it reads as a choice.
fn predicted_choice(p: &str) -> Option<char> {
    let mut t = p.trim_matches('*').to_string();
    for prefix in ["option", "choice", "answer", "选项", "选"] {
        if t.to_ascii_lowercase().starts_with(prefix) {
            t = t[prefix.len()..].trim_start_matches(':').to_string();
            break;
        }
    }
    for suffix in ["选项", "项"] {
        if let Some(x) = t.strip_suffix(suffix) {
            t = x.to_string();
            break;
        }
    }
    choice_only(&t, true).or_else(|| choice_with_content(&t).map(|(l, _)| l))
}

// ------------------------------------------------------------------------------------------
// Equivalence
// ------------------------------------------------------------------------------------------

/// Whether `prediction` (a bare answer: see [`extract_or_raw`]) answers like `reference`:
/// equal normalized strings (case-insensitive); choice letters (when the reference is a letter);
/// tuples and intervals element by element in order with the same brackets; sets and bare
/// comma lists as multisets (like LIMO, which sorts them); `\cup` pieces and matrices cell by
/// cell; equations `l = r` up to sign; numbers (integers exactly, otherwise relative tolerance
/// 1e-4; a percent may stand for its hundredth) and expressions with `\frac`, `\sqrt`, `\pi`,
/// powers, functions and free variables by numeric evaluation. Never panics.
pub fn is_equivalent(prediction: &str, reference: &str) -> bool {
    equiv(prediction, reference, 0)
}

fn equiv(p_raw: &str, r_raw: &str, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let (p, p_var) = normalize_parts(p_raw);
    let (r, r_var) = normalize_parts(r_raw);
    if p.is_empty() || r.is_empty() {
        return false;
    }
    if let (Some(a), Some(b)) = (&p_var, &r_var) {
        if a != b {
            return false; // `x=1` is not `y=1`
        }
    }
    if p.to_lowercase() == r.to_lowercase() {
        return true;
    }
    // choices
    if let Some(letter) = choice_only(&r, false) {
        return predicted_choice(&p) == Some(letter);
    }
    if let Some((letter, content)) = choice_with_content(&r) {
        if let Some(l) = predicted_choice(&p) {
            return l == letter;
        }
        return equiv(&p, &content, depth + 1);
    }
    if let Some((_, content)) = choice_with_content(&p) {
        if equiv(&content, &r, depth + 1) {
            return true;
        }
    }
    if let Some(result) = compare_structured(&p, &r, depth) {
        return result;
    }
    // `y = 2x+1`, its `y =` stripped, against an equation `2x - y + 1 = 0`
    let as_equation = |s: &str, var: &Option<String>, other: &str| match var {
        Some(v) if other.contains('=') && !s.contains('=') => format!("{v}={s}"),
        _ => s.to_string(),
    };
    let (pe, re) = (as_equation(&p, &p_var, &r), as_equation(&r, &r_var, &p));
    if let Some(result) = compare_equations(&pe, &re) {
        return result;
    }
    if let Some(result) = compare_values(&p, &r) {
        return result;
    }
    // last resort: the strings without grouping braces
    let strip = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '{' && *c != '}')
            .collect::<String>()
            .to_lowercase()
    };
    strip(&p) == strip(&r)
}

fn all_equiv(a: &[String], b: &[String], depth: usize) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equiv(x, y, depth + 1))
}

fn multiset_equiv(a: &[String], b: &[String], depth: usize) -> bool {
    if a.len() != b.len() || a.len() > MAX_ITEMS {
        return false;
    }
    let mut used = vec![false; b.len()];
    'outer: for x in a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && equiv(x, y, depth + 1) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

fn owned(v: Vec<&str>) -> Vec<String> {
    v.into_iter().map(str::to_string).collect()
}

/// Matrices, unions, tuples / intervals, sets and lists; `None` when neither side is one.
fn compare_structured(p: &str, r: &str, depth: usize) -> Option<bool> {
    let pm = matrix_cells(p);
    let rm = matrix_cells(r);
    match (&pm, &rm) {
        (Some(a), Some(b)) => {
            return Some(
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| all_equiv(x, y, depth)),
            );
        }
        (Some(m), None) | (None, Some(m)) => {
            // a column or row vector against a tuple
            let other = if pm.is_some() { r } else { p };
            let flat: Vec<String> = if m.iter().all(|row| row.len() == 1) {
                m.iter().map(|row| row[0].clone()).collect()
            } else if m.len() == 1 {
                m[0].clone()
            } else {
                return Some(false);
            };
            return Some(match enclosed(other) {
                Some(('(', inner, ')')) => {
                    all_equiv(&flat, &owned(split_top(inner, &[','])), depth)
                }
                _ => false,
            });
        }
        (None, None) => {}
    }
    let pu = split_top_str(p, "\\cup");
    let ru = split_top_str(r, "\\cup");
    if pu.len() > 1 || ru.len() > 1 {
        return Some(pu.len() <= MAX_ITEMS && all_equiv(&owned(pu), &owned(ru), depth));
    }
    let tuple = |s: &str| match enclosed(s) {
        Some((o, inner, c)) if o != '{' => {
            let items = split_top(inner, &[',']);
            (items.len() >= 2).then(|| (o, owned(items), c))
        }
        _ => None,
    };
    let pt = tuple(p);
    let rt = tuple(r);
    if let (Some((po, pi, pc)), Some((ro, ri, rc))) = (&pt, &rt) {
        return Some(po == ro && pc == rc && pi.len() <= MAX_ITEMS && all_equiv(pi, ri, depth));
    }
    let pi = set_items(p);
    let ri = set_items(r);
    if pi.len() >= 2 || ri.len() >= 2 {
        return Some(multiset_equiv(&pi, &ri, depth));
    }
    None
}

fn split_equation(s: &str) -> Option<(&str, &str)> {
    if s.matches('=').count() != 1
        || s.contains(['<', '>'])
        || s.contains("\\le")
        || s.contains("\\ge")
    {
        return None;
    }
    s.split_once('=')
}

/// Two equations `a = b` and `c = d`: `a - b` equals `c - d` or `d - c` as functions.
fn compare_equations(p: &str, r: &str) -> Option<bool> {
    let (pl, pr) = split_equation(p)?;
    let (rl, rr) = split_equation(r)?;
    let dp = Node::Bin(
        '-',
        Box::new(parse_expression(pl)?),
        Box::new(parse_expression(pr)?),
    );
    let dr = Node::Bin(
        '-',
        Box::new(parse_expression(rl)?),
        Box::new(parse_expression(rr)?),
    );
    let neg = Node::Neg(Box::new(dr.clone()));
    Some(exprs_equal(&dp, &dr) == Some(true) || exprs_equal(&dp, &neg) == Some(true))
}

/// Numbers and expressions; `None` when either side does not parse or evaluate.
fn compare_values(p: &str, r: &str) -> Option<bool> {
    let (pe, p_pct) = parse_with_percent(p)?;
    let (re, r_pct) = parse_with_percent(r)?;
    let same = exprs_equal(&pe, &re)?;
    if same {
        return Some(true);
    }
    if p_pct || r_pct {
        let no_vars = |n: &Node| {
            let mut v = BTreeSet::new();
            n.vars(&mut v);
            v.is_empty()
        };
        if no_vars(&pe) && no_vars(&re) {
            let pv = pe.eval(&|_| f64::NAN);
            let rv = re.eval(&|_| f64::NAN);
            if (p_pct && close(pv / 100.0, rv)) || (r_pct && close(pv, rv / 100.0)) {
                return Some(true);
            }
        }
    }
    Some(false)
}

fn close(a: f64, b: f64) -> bool {
    if !a.is_finite() || !b.is_finite() {
        return false;
    }
    if a == b {
        return true;
    }
    let integral = |x: f64| x.fract() == 0.0 && x.abs() < 1e15;
    if integral(a) && integral(b) {
        return false; // distinct integers: no tolerance (AIME, olympiad counts)
    }
    let d = (a - b).abs();
    if a == 0.0 || b == 0.0 {
        return d <= ABS_TOL_AT_ZERO;
    }
    d <= REL_TOL * a.abs().max(b.abs())
}

// ------------------------------------------------------------------------------------------
// Pairs file
// ------------------------------------------------------------------------------------------

/// A JSON value as answer text: strings trimmed, integral numbers without `.0`, arrays and
/// objects as their values joined with `, `.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
                    _ => n.to_string(),
                }
            }
        }
        Value::Array(a) => join_values(a.iter()),
        Value::Object(o) => join_values(o.values()),
    }
}

fn join_values<'a>(it: impl Iterator<Item = &'a Value>) -> String {
    it.map(value_text)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Grades a JSONL file of `{"prediction": .., "reference": ..}` lines (a prediction is a full
/// response or a bare answer: see [`extract_or_raw`]) and writes each line back with
/// `"extracted"` and `"correct"` added. Blank lines are skipped. Returns (correct, graded).
/// Errors name the file and the line. `output` is written whole or not at all: a failed grading
/// (a bad line, a full disk) leaves the file that was there, or none.
pub fn grade_pairs(input: &Path, output: &Path) -> Result<(usize, usize)> {
    // Creating the output truncates it: the pairs would be gone before they were read.
    if same_file(input, output) {
        bail!(
            "{}: the output is the pairs file {} itself; writing it would erase the pairs \
             (give another output file)",
            output.display(),
            input.display()
        );
    }
    let file = File::open(input).with_context(|| format!("{}: cannot open", input.display()))?;
    // Written whole or not at all: an error (a bad line, a full disk) leaves the old file.
    let mut out = crate::AtomicFile::create(output)
        .with_context(|| format!("{}: cannot create", output.display()))?;
    let (mut correct, mut total) = (0, 0);
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line_no = n + 1;
        let line =
            line.with_context(|| format!("{}: line {line_no}: cannot read", input.display()))?;
        // A byte-order mark (Windows editors, Python's utf-8-sig), as `limo eval --data` takes.
        let line = match n {
            0 => line.strip_prefix('\u{feff}').unwrap_or(&line),
            _ => &line,
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut obj: serde_json::Map<String, Value> = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "{}: line {line_no}: not a JSON object: {e}",
                input.display()
            )
        })?;
        let field = |obj: &serde_json::Map<String, Value>, key: &str| -> Result<String> {
            match obj.get(key) {
                None | Some(Value::Null) => {
                    bail!("{}: line {line_no}: no \"{key}\"", input.display())
                }
                Some(v) => Ok(value_text(v)),
            }
        };
        let prediction = field(&obj, "prediction")?;
        let reference = field(&obj, "reference")?;
        if reference.is_empty() {
            bail!("{}: line {line_no}: empty \"reference\"", input.display());
        }
        let extracted = extract_or_raw(&prediction);
        let ok = is_equivalent(&extracted, &reference);
        total += 1;
        correct += usize::from(ok);
        obj.insert("extracted".into(), Value::String(extracted));
        obj.insert("correct".into(), Value::Bool(ok));
        serde_json::to_writer(&mut out, &obj)
            .and_then(|_| out.write_all(b"\n").map_err(serde_json::Error::io))
            .with_context(|| format!("{}: cannot write", output.display()))?;
    }
    if total == 0 {
        bail!("{}: no pairs (one JSON object per line)", input.display());
    }
    out.commit()
        .with_context(|| format!("{}: cannot write", output.display()))?;
    Ok((correct, total))
}

/// Whether `a` and `b` are one existing file, however spelled: through a symlink, `./`, `..`,
/// or (on Unix) a hard link.
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
    }
}

#[cfg(test)]
mod tests;
