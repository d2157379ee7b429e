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
use std::io::{BufRead, BufReader, BufWriter, Write};
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
/// prediction may be a full response or a bare answer.
pub fn extract_or_raw(text: &str) -> String {
    extract_answer(text).unwrap_or_else(|| text.trim().to_string())
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
    let mut ans: &str = if let Some(inner) = line.strip_prefix("$$") {
        inner.split("$$").next().unwrap_or("")
    } else if let Some(inner) = line.strip_prefix('$') {
        inner.split('$').next().unwrap_or("")
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
// Normalization
// ------------------------------------------------------------------------------------------

/// Canonical form of an answer: the boxed content if boxed; no `$`, `\left`/`\right`, spacing
/// macros, `\text{}`-like wrappers (contents kept), degree signs, unit words after a number,
/// thousands separators, trailing period, leading `x =`, whitespace; `\dfrac` -> `\frac`,
/// `\frac12` -> `\frac{1}{2}`, `\sqrt2` -> `\sqrt{2}`, `\cdot`/`\times` -> `*`, `\div` -> `/`,
/// `.5` -> `0.5`, `3.0` -> `3`, `\%` -> `%` (kept: [`is_equivalent`] reads it as a percent).
pub fn normalize(answer: &str) -> String {
    normalize_parts(answer).0
}

/// The normalized text and the variable of a leading `x =` that was stripped, if any.
fn normalize_parts(answer: &str) -> (String, Option<String>) {
    let mut s = answer.trim().to_string();
    if s.contains("\\boxed") || s.contains("\\fbox") {
        if let Some(b) = last_boxed(&s) {
            s = b;
        }
    }
    s = s
        .replace("°C", "")
        .replace("°F", "")
        .replace("^{\\circ}C", "");
    s = map_unicode(&s);
    s = unwrap_macros(&s);
    s = s.replace(",\\!", "{,}");
    s = simplify_escapes(&s);
    s = s.replace('$', "");
    s = s
        .replace("^{\\circ}", "")
        .replace("^\\circ", "")
        .replace("^{\\degree}", "");
    s = map_commands(&s);
    s = array_to_pmatrix(&s);
    s = s.replace("bmatrix", "pmatrix");
    s = conjunctions_to_commas(&s);
    s = fix_frac_sqrt(&s);
    s = remove_units(&s);
    s = remove_thousands(s.trim());
    if let Some(n) = word_number(s.trim()) {
        s = n.to_string();
    }
    s = remove_spaces(&s);
    s = s.replace("{,}", "");
    while s.contains(",,") {
        s = s.replace(",,", ",");
    }
    s = s.trim_matches(',').to_string();
    s = s.trim_end_matches(['.', ';']).to_string();
    s = infinities(&s);
    let (rest, var) = strip_leading_variable(&s);
    s = rest;
    s = fix_decimals(&s);
    s = strip_outer_grouping(&s);
    s = s.trim_end_matches('.').to_string();
    (s, var)
}

fn map_unicode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '（' => out.push('('),
            '）' => out.push(')'),
            '，' | '、' => out.push(','),
            '：' => out.push(':'),
            '．' | '。' => out.push('.'),
            '；' => out.push(';'),
            '＝' => out.push('='),
            '％' => out.push('%'),
            '＋' => out.push('+'),
            '−' | '–' | '—' | '－' => out.push('-'),
            '×' | '·' | '⋅' | '∗' => out.push_str("\\cdot "),
            '÷' => out.push_str("\\div "),
            'π' => out.push_str("\\pi "),
            '∞' => out.push_str("\\infty "),
            '√' => out.push_str("\\sqrt"),
            '≤' | '⩽' => out.push_str("\\le "),
            '≥' | '⩾' => out.push_str("\\ge "),
            '≠' => out.push_str("\\ne "),
            '∪' => out.push_str("\\cup "),
            '∩' => out.push_str("\\cap "),
            '∈' => out.push_str("\\in "),
            '²' => out.push_str("^2"),
            '³' => out.push_str("^3"),
            '°' => {}
            '\u{3000}' | '\n' | '\r' | '\t' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// A `\command`'s name at byte `i` of `s` (which holds `\`), and the byte index after it.
fn command_at(s: &str, i: usize) -> (&str, usize) {
    let b = s.as_bytes();
    let mut j = i + 1;
    while j < b.len() && b[j].is_ascii_alphabetic() {
        j += 1;
    }
    (&s[i + 1..j], j)
}

/// `\text{X}`, `\mbox{X}`, `\mathrm{X}`, ... -> `X` (also nested).
fn unwrap_macros(s: &str) -> String {
    const NAMES: [&str; 16] = [
        "text",
        "textbf",
        "textit",
        "textrm",
        "textnormal",
        "mbox",
        "hbox",
        "mathrm",
        "mathbf",
        "mathit",
        "mathsf",
        "mathtt",
        "boldsymbol",
        "bm",
        "operatorname",
        "overline",
    ];
    let mut cur = s.to_string();
    for _ in 0..8 {
        let mut out = String::with_capacity(cur.len());
        let mut changed = false;
        let mut i = 0;
        while i < cur.len() {
            let c = cur[i..].chars().next().unwrap_or(' ');
            if c != '\\' {
                out.push(c);
                i += c.len_utf8();
                continue;
            }
            let (name, end) = command_at(&cur, i);
            if name.is_empty() {
                out.push('\\');
                if let Some(n) = cur[i + 1..].chars().next() {
                    out.push(n);
                    i += 1 + n.len_utf8();
                } else {
                    i += 1;
                }
                continue;
            }
            if NAMES.contains(&name) {
                let after = end + (cur[end..].len() - cur[end..].trim_start_matches(' ').len());
                if let Some((inner, len)) = brace_group(&cur[after..]) {
                    out.push_str(inner);
                    i = after + len;
                    changed = true;
                    continue;
                }
            }
            out.push_str(&cur[i..end]);
            i = end;
        }
        cur = out;
        if !changed {
            break;
        }
    }
    cur
}

/// Spacing macros and `~` -> space; `\left`, `\right`, `\big`..., `\displaystyle` dropped;
/// `\{` `\}` `\%` `\(` `\)` `\[` `\]` `\$` resolved; `\\` kept.
fn simplify_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i..].chars().next().unwrap_or(' ');
        if c == '~' {
            out.push(' ');
            i += 1;
            continue;
        }
        if c != '\\' {
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let next = s[i + 1..].chars().next();
        match next {
            None => {
                i += 1;
            }
            Some('\\') => {
                out.push_str("\\\\");
                i += 2;
            }
            Some('!' | ',' | ';' | ':' | ' ' | '>') => {
                out.push(' ');
                i += 2;
            }
            Some('{') => {
                out.push('{');
                i += 2;
            }
            Some('}') => {
                out.push('}');
                i += 2;
            }
            Some('%') => {
                out.push('%');
                i += 2;
            }
            Some('(' | ')' | '[' | ']' | '$') => {
                i += 2;
            }
            Some(n) if n.is_ascii_alphabetic() => {
                let (name, end) = command_at(s, i);
                match name {
                    "left" | "right" | "bigl" | "bigr" | "Bigl" | "Bigr" | "biggl" | "biggr"
                    | "Biggl" | "Biggr" | "big" | "Big" | "bigg" | "Bigg" => {
                        i = end;
                        if s[i..].starts_with('.') {
                            i += 1;
                        }
                    }
                    "displaystyle" | "textstyle" | "scriptstyle" | "limits" | "nolimits"
                    | "hline" => {
                        out.push(' ');
                        i = end;
                    }
                    "quad" | "qquad" | "enspace" | "thinspace" => {
                        out.push(' ');
                        i = end;
                    }
                    _ => {
                        out.push_str(&s[i..end]);
                        i = end;
                    }
                }
            }
            Some(n) => {
                out.push('\\');
                out.push(n);
                i += 1 + n.len_utf8();
            }
        }
    }
    out
}

/// Command renames: `\dfrac` -> `\frac`, `\leq` -> `\le`, `\cdot` -> `*`, ...
fn map_commands(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i..].chars().next().unwrap_or(' ');
        if c != '\\' {
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let (name, end) = command_at(s, i);
        if name.is_empty() {
            // `\\` or `\<symbol>`: copy both characters
            out.push('\\');
            if let Some(n) = s[i + 1..].chars().next() {
                out.push(n);
                i += 1 + n.len_utf8();
            } else {
                i += 1;
            }
            continue;
        }
        let repl: Option<&str> = match name {
            "dfrac" | "tfrac" | "cfrac" => Some("\\frac"),
            "dbinom" | "tbinom" => Some("\\binom"),
            "neq" => Some("\\ne"),
            "leq" | "leqslant" | "leqq" => Some("\\le"),
            "geq" | "geqslant" | "geqq" => Some("\\ge"),
            "circ" | "degree" => Some(""),
            "cdot" | "times" | "ast" => Some("*"),
            "div" => Some("/"),
            "prime" => Some("'"),
            "mid" | "vert" | "lvert" | "rvert" => Some("|"),
            "varnothing" => Some("\\emptyset"),
            "infin" => Some("\\infty"),
            "lbrace" => Some("{"),
            "rbrace" => Some("}"),
            "colon" => Some(":"),
            "varepsilon" => Some("\\epsilon"),
            "varphi" => Some("\\phi"),
            "vartheta" => Some("\\theta"),
            "dots" | "ldots" | "cdots" => Some("\\dots"),
            _ => None,
        };
        match repl {
            Some(r) => {
                out.push_str(r);
                // `\cdot2` must not glue: a replacement by a symbol ends the command
            }
            None => out.push_str(&s[i..end]),
        }
        i = end;
    }
    out
}

/// `\begin{array}{cc}` -> `\begin{pmatrix}`, `\end{array}` -> `\end{pmatrix}`.
fn array_to_pmatrix(s: &str) -> String {
    if !s.contains("\\begin{array}") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("\\begin{array}") {
        out.push_str(&rest[..pos]);
        out.push_str("\\begin{pmatrix}");
        rest = &rest[pos + "\\begin{array}".len()..];
        let t = rest.trim_start();
        if let Some((_, len)) = brace_group(t) {
            rest = &t[len..];
        }
    }
    out.push_str(rest);
    out.replace("\\end{array}", "\\end{pmatrix}")
}

fn is_word_boundary(c: Option<char>) -> bool {
    c.is_none_or(|c| !c.is_alphanumeric() && c != '\\' && c != '_')
}

/// 或 / 和 / 及 / 以及 and the words "and", "or" -> `,` (multiple answers).
fn conjunctions_to_commas(s: &str) -> String {
    let mut t = s.replace("以及", ",").replace(['或', '和', '及'], ",");
    for word in ["and", "or"] {
        let mut out = String::with_capacity(t.len());
        let mut i = 0;
        while i < t.len() {
            if t[i..].starts_with(word) {
                let before = t[..i].chars().next_back();
                let after = t[i + word.len()..].chars().next();
                if is_word_boundary(before) && is_word_boundary(after) && before != Some('\\') {
                    out.push(',');
                    i += word.len();
                    continue;
                }
            }
            let c = t[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
        t = out;
    }
    t
}

/// A macro argument at byte `i` (spaces skipped): a brace group's content, a `\command`, or one
/// character. Returns the argument text and the byte index after it.
fn macro_arg(s: &str, i: usize, depth: usize) -> Option<(String, usize)> {
    let start = i + (s[i..].len() - s[i..].trim_start_matches(' ').len());
    let c = s[start..].chars().next()?;
    match c {
        '{' => {
            let (inner, len) = brace_group(&s[start..])?;
            Some((fix_frac_sqrt_at(inner, depth + 1), start + len))
        }
        '\\' => {
            let (name, end) = command_at(s, start);
            if name.is_empty() {
                None
            } else {
                Some((s[start..end].to_string(), end))
            }
        }
        '}' | '^' | '_' | '&' => None,
        _ => Some((c.to_string(), start + c.len_utf8())),
    }
}

/// `\frac12` -> `\frac{1}{2}`, `\frac 59` -> `\frac{5}{9}`, `\frac{270}7` -> `\frac{270}{7}`,
/// `\sqrt2` -> `\sqrt{2}`, `\binom` likewise; recursively inside groups.
fn fix_frac_sqrt(s: &str) -> String {
    fix_frac_sqrt_at(s, 0)
}

fn fix_frac_sqrt_at(s: &str, depth: usize) -> String {
    if depth > 32 {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < s.len() {
        let c = s[i..].chars().next().unwrap_or(' ');
        if c != '\\' {
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let (name, end) = command_at(s, i);
        match name {
            "frac" | "binom" => {
                if let Some((a, e1)) = macro_arg(s, end, depth) {
                    if let Some((b, e2)) = macro_arg(s, e1, depth) {
                        out.push('\\');
                        out.push_str(name);
                        out.push_str(&format!("{{{a}}}{{{b}}}"));
                        i = e2;
                        continue;
                    }
                }
                out.push_str(&s[i..end]);
                i = end;
            }
            "sqrt" => {
                let mut j = end;
                out.push_str("\\sqrt");
                let t = &s[j..];
                let trimmed = t.trim_start_matches(' ');
                if trimmed.starts_with('[') {
                    if let Some(close) = trimmed.find(']') {
                        out.push_str(&trimmed[..=close]);
                        j += t.len() - trimmed.len() + close + 1;
                    }
                }
                if let Some((a, e)) = macro_arg(s, j, depth) {
                    out.push_str(&format!("{{{a}}}"));
                    i = e;
                } else {
                    i = j;
                }
            }
            "" => {
                out.push('\\');
                if let Some(n) = s[i + 1..].chars().next() {
                    out.push(n);
                    i += 1 + n.len_utf8();
                } else {
                    i += 1;
                }
            }
            _ => {
                out.push_str(&s[i..end]);
                i = end;
            }
        }
    }
    out
}

/// Unit words removed when they follow a number (or a closing `}` / `)`), with an optional
/// `^2` / `^3`. Longest first so that "平方米" goes before "米".
const UNITS: &[&str] = &[
    "centimeters",
    "centimetres",
    "millimeters",
    "kilometers",
    "kilometres",
    "kilograms",
    "centimeter",
    "millimeter",
    "kilometer",
    "kilogram",
    "平方厘米",
    "立方厘米",
    "平方千米",
    "千米/时",
    "students",
    "degrees",
    "dollars",
    "minutes",
    "seconds",
    "gallons",
    "ounces",
    "meters",
    "metres",
    "inches",
    "pounds",
    "liters",
    "litres",
    "people",
    "points",
    "square",
    "cubic",
    "degree",
    "dollar",
    "minute",
    "second",
    "gallon",
    "ounce",
    "meter",
    "metre",
    "grams",
    "hours",
    "miles",
    "yards",
    "units",
    "cents",
    "years",
    "weeks",
    "months",
    "month",
    "inch",
    "feet",
    "foot",
    "yard",
    "mile",
    "hour",
    "gram",
    "unit",
    "cent",
    "year",
    "week",
    "days",
    "ways",
    "mins",
    "secs",
    "km/h",
    "m/s",
    "kmh",
    "mph",
    "day",
    "way",
    "min",
    "sec",
    "hrs",
    "lbs",
    "deg",
    "cm",
    "mm",
    "km",
    "kg",
    "mg",
    "ml",
    "mL",
    "ft",
    "hr",
    "lb",
    "oz",
    "sq",
    "平方米",
    "立方米",
    "厘米",
    "毫米",
    "千米",
    "公里",
    "千克",
    "公斤",
    "小时",
    "分钟",
    "毫升",
    "米",
    "克",
    "吨",
    "升",
    "元",
    "个",
    "人",
    "天",
    "秒",
    "岁",
    "度",
    "块",
    "页",
    "本",
    "只",
    "条",
    "次",
    "种",
    "份",
    "辆",
    "张",
    "名",
    "棵",
    "根",
    "支",
    "朵",
    "颗",
    "位",
];
/// Single-letter units: only after a number and a space, at the very end.
const SHORT_UNITS: &[&str] = &["m", "g", "s", "h", "K", "L"];

fn remove_units(s: &str) -> String {
    let mut cur = s.to_string();
    // "percent" is a percent sign
    cur = replace_word(&cur, "percent", "%");
    for _ in 0..6 {
        let before = cur.clone();
        for unit in UNITS {
            cur = remove_unit(&cur, unit, false);
        }
        for unit in SHORT_UNITS {
            cur = remove_unit(&cur, unit, true);
        }
        cur = remove_ordinal(&cur);
        if cur == before {
            break;
        }
    }
    cur
}

fn replace_word(s: &str, word: &str, repl: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(word)
            && is_word_boundary(s[..i].chars().next_back())
            && is_word_boundary(s[i + word.len()..].chars().next())
        {
            out.push_str(repl);
            i += word.len();
            continue;
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The length of a power suffix (`^2`, `^{3}`) at the start of `s`, or 0.
fn power_suffix_len(s: &str) -> usize {
    for p in ["^{2}", "^{3}", "^2", "^3"] {
        if s.starts_with(p) {
            return p.len();
        }
    }
    0
}

fn remove_unit(s: &str, unit: &str, short: bool) -> String {
    let cjk = unit.chars().next().is_some_and(|c| !c.is_ascii());
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(unit) {
            let head = &s[..i];
            let trimmed = head.trim_end_matches(' ');
            let spaced = trimmed.len() != head.len();
            let prev = trimmed.chars().next_back();
            let number_before = prev.is_some_and(|c| c.is_ascii_digit() || c == '}' || c == ')');
            let after_idx = i + unit.len();
            let after = s[after_idx..].chars().next();
            let ok_after = if cjk {
                true
            } else {
                after.is_none_or(|c| !c.is_ascii_alphanumeric())
            };
            let prev_raw = head.chars().next_back();
            let glued_to_letter = prev_raw.is_some_and(|c| c.is_ascii_alphabetic() || c == '\\');
            let ok = if short {
                spaced && number_before && {
                    let p = power_suffix_len(&s[after_idx..]);
                    s[after_idx + p..].trim().is_empty()
                }
            } else {
                number_before && ok_after && !glued_to_letter
            };
            if ok {
                // drop the spaces before the unit too
                out.truncate(out.len() - (head.len() - trimmed.len()).min(out.len()));
                i = after_idx + power_suffix_len(&s[after_idx..]);
                continue;
            }
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// `5th`, `2nd`, `4^{th}`, `4^{\text{th}}` -> the number.
fn remove_ordinal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let prev_digit = out.chars().next_back().is_some_and(|c| c.is_ascii_digit());
        if prev_digit {
            let mut matched = 0;
            for suf in ["^{th}", "^{st}", "^{nd}", "^{rd}", "th", "st", "nd", "rd"] {
                if s[i..].starts_with(suf) && is_word_boundary(s[i + suf.len()..].chars().next()) {
                    matched = suf.len();
                    break;
                }
            }
            if matched > 0 {
                i += matched;
                continue;
            }
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// `1,000` / `-12,345.5` (commas grouping digits in threes, no spaces) -> `1000`.
fn remove_thousands(s: &str) -> String {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    let groups: Vec<&str> = int.split(',').collect();
    let grouped = groups.len() >= 2
        && (1..=3).contains(&groups[0].len())
        && groups
            .iter()
            .all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if grouped {
        s.replace(',', "")
    } else {
        s.to_string()
    }
}

fn word_number(s: &str) -> Option<u32> {
    const WORDS: [&str; 21] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    let l = s.to_ascii_lowercase();
    WORDS.iter().position(|w| *w == l).map(|p| p as u32)
}

/// All whitespace out, but one space kept between a command name and a letter (`\cot x`).
fn remove_spaces(s: &str) -> String {
    // 0: plain text, 1: right after a `\`, 2: inside a command name
    let mut state = 0u8;
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if state == 2 && chars.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                out.push(' ');
            }
            state = 0;
            continue;
        }
        state = match (c, state) {
            ('\\', 1) => 0,
            ('\\', _) => 1,
            (c, 1 | 2) if c.is_ascii_alphabetic() => 2,
            _ => 0,
        };
        out.push(c);
    }
    out
}

/// `+\infty` -> `\infty`; `(-\infty,\infty)` -> `\mathbb{R}`; `{}` -> `\emptyset`.
fn infinities(s: &str) -> String {
    let mut t = s.replace("+\\infty", "\\infty");
    // `a+\infty` would have been odd anyway; keep `x+\infty` untouched is not worth a rule
    t = t.replace("(-\\infty,\\infty)", "\\mathbb{R}");
    if t == "{}" {
        t = "\\emptyset".to_string();
    }
    t
}

/// `x=5` -> (`5`, `x`); `x\in[1,2]` -> `[1,2]`. Only a single-letter (or subscripted / Greek)
/// variable on the left of the only `=`.
fn strip_leading_variable(s: &str) -> (String, Option<String>) {
    if s.matches('=').count() == 1 {
        let (lhs, rhs) = s.split_once('=').unwrap_or((s, ""));
        if !rhs.is_empty() && is_simple_variable(lhs) && !rhs.starts_with(['=', '<', '>']) {
            return (rhs.to_string(), Some(lhs.to_string()));
        }
    }
    if let Some(pos) = s.find("\\in") {
        let after = s[pos + 3..].chars().next();
        if !after.is_some_and(|c| c.is_ascii_alphabetic()) && is_simple_variable(&s[..pos]) {
            return (s[pos + 3..].to_string(), Some(s[..pos].to_string()));
        }
    }
    (s.to_string(), None)
}

fn is_simple_variable(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b[0] == b'\\' {
        let (name, end) = command_at(s, 0);
        return end == s.len() && GREEK.contains(&name);
    }
    if !b[0].is_ascii_alphabetic() {
        return false;
    }
    let rest = &s[1..];
    rest.is_empty()
        || (rest.len() == 2 && rest.starts_with('_') && b[2].is_ascii_alphanumeric())
        || (rest.starts_with("_{")
            && rest.ends_with('}')
            && rest.len() <= 8
            && rest[2..rest.len() - 1]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric()))
}

/// `.5` -> `0.5`, `3.0` / `3.00` / `3.` -> `3`.
fn fix_decimals(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 2);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '.' {
            let prev_digit = i > 0 && chars[i - 1].is_ascii_digit();
            let next_digit = chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
            if !prev_digit && next_digit {
                out.push_str("0.");
                i += 1;
                continue;
            }
            if prev_digit {
                let mut j = i + 1;
                while j < chars.len() && chars[j] == '0' {
                    j += 1;
                }
                if !chars.get(j).is_some_and(|c| c.is_ascii_digit()) && chars.get(j) != Some(&'.') {
                    i = j;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `{5}` -> `5` (a group, not a set: no top-level comma); `(5)`, `(C)` -> the alphanumeric inside.
fn strip_outer_grouping(s: &str) -> String {
    let mut cur = s.to_string();
    for _ in 0..8 {
        match enclosed(&cur) {
            Some(('{', inner, '}'))
                if split_top(inner, &[',', ';']).len() == 1 && !inner.is_empty() =>
            {
                cur = inner.to_string();
            }
            Some(('(', inner, ')')) | Some(('[', inner, ']'))
                if !inner.is_empty() && inner.chars().all(|c| c.is_alphanumeric())
                    || matrix_cells(inner).is_some() =>
            {
                cur = inner.to_string();
            }
            _ => break,
        }
    }
    cur
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
    if let Some(result) = compare_equations(&p, &r) {
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
// Expressions
// ------------------------------------------------------------------------------------------

const GREEK: [&str; 34] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
    "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Upsilon", "Phi", "Psi", "Omega", "hbar",
    "ell",
];

#[derive(Clone, Copy, Debug)]
enum Fun {
    Sin,
    Cos,
    Tan,
    Cot,
    Sec,
    Csc,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    Lg,
    Exp,
    Floor,
    Ceil,
}

impl Fun {
    fn from_name(name: &str) -> Option<Fun> {
        Some(match name {
            "sin" => Fun::Sin,
            "cos" => Fun::Cos,
            "tan" | "tg" => Fun::Tan,
            "cot" | "ctg" => Fun::Cot,
            "sec" => Fun::Sec,
            "csc" => Fun::Csc,
            "arcsin" => Fun::Asin,
            "arccos" => Fun::Acos,
            "arctan" => Fun::Atan,
            "sinh" => Fun::Sinh,
            "cosh" => Fun::Cosh,
            "tanh" => Fun::Tanh,
            "ln" => Fun::Ln,
            "lg" => Fun::Lg,
            "exp" => Fun::Exp,
            _ => return None,
        })
    }

    fn apply(self, x: f64) -> f64 {
        match self {
            Fun::Sin => x.sin(),
            Fun::Cos => x.cos(),
            Fun::Tan => x.tan(),
            Fun::Cot => 1.0 / x.tan(),
            Fun::Sec => 1.0 / x.cos(),
            Fun::Csc => 1.0 / x.sin(),
            Fun::Asin => x.asin(),
            Fun::Acos => x.acos(),
            Fun::Atan => x.atan(),
            Fun::Sinh => x.sinh(),
            Fun::Cosh => x.cosh(),
            Fun::Tanh => x.tanh(),
            Fun::Ln => x.ln(),
            Fun::Lg => x.log10(),
            Fun::Exp => x.exp(),
            Fun::Floor => x.floor(),
            Fun::Ceil => x.ceil(),
        }
    }
}

#[derive(Clone, Debug)]
enum Node {
    Num(f64),
    Var(String),
    Neg(Box<Node>),
    Bin(char, Box<Node>, Box<Node>),
    Call(Fun, Box<Node>),
    /// index, radicand
    Root(Box<Node>, Box<Node>),
    /// base, argument
    Log(Box<Node>, Box<Node>),
    Fact(Box<Node>),
    Binom(Box<Node>, Box<Node>),
}

impl Node {
    fn vars(&self, out: &mut BTreeSet<String>) {
        match self {
            Node::Num(_) => {}
            Node::Var(v) => {
                out.insert(v.clone());
            }
            Node::Neg(a) | Node::Call(_, a) | Node::Fact(a) => a.vars(out),
            Node::Bin(_, a, b) | Node::Root(a, b) | Node::Log(a, b) | Node::Binom(a, b) => {
                a.vars(out);
                b.vars(out);
            }
        }
    }

    fn eval(&self, env: &dyn Fn(&str) -> f64) -> f64 {
        match self {
            Node::Num(x) => *x,
            Node::Var(v) => env(v),
            Node::Neg(a) => -a.eval(env),
            Node::Bin(op, a, b) => {
                let (x, y) = (a.eval(env), b.eval(env));
                match op {
                    '+' => x + y,
                    '-' => x - y,
                    '*' => x * y,
                    '/' => x / y,
                    '^' => x.powf(y),
                    _ => f64::NAN,
                }
            }
            Node::Call(f, a) => f.apply(a.eval(env)),
            Node::Root(n, a) => {
                let (n, x) = (n.eval(env), a.eval(env));
                if x < 0.0 && n.fract() == 0.0 && (n as i64) % 2 != 0 {
                    -(-x).powf(1.0 / n)
                } else {
                    x.powf(1.0 / n)
                }
            }
            Node::Log(b, a) => a.eval(env).ln() / b.eval(env).ln(),
            Node::Fact(a) => {
                let x = a.eval(env);
                if x.fract() != 0.0 || !(0.0..=170.0).contains(&x) {
                    return f64::NAN;
                }
                (1..=x as u32).fold(1.0, |acc, k| acc * k as f64)
            }
            Node::Binom(n, k) => {
                let (n, k) = (n.eval(env), k.eval(env));
                if n.fract() != 0.0 || k.fract() != 0.0 || k < 0.0 || n < 0.0 || k > n || n > 1e6 {
                    return f64::NAN;
                }
                let k = k.min(n - k) as u64;
                (0..k).fold(1.0, |acc, i| acc * (n - i as f64) / (i as f64 + 1.0))
            }
        }
    }
}

/// The value of variable `name` at evaluation point `k`: fixed pseudo-random numbers in
/// (0.6, 2.3), different per name.
fn var_value(name: &str, k: usize) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([k as u8, 0x5a]) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    0.6 + (h % 10_007) as f64 / 10_007.0 * 1.7
}

/// Whether two expressions are equal: their values (constants), or their values at three points
/// (free variables). `None` when a value is not finite.
fn exprs_equal(a: &Node, b: &Node) -> Option<bool> {
    let mut vars = BTreeSet::new();
    a.vars(&mut vars);
    b.vars(&mut vars);
    let points = if vars.is_empty() { 1 } else { 3 };
    for k in 0..points {
        let env = |name: &str| var_value(name, k);
        let (x, y) = (a.eval(&env), b.eval(&env));
        if !x.is_finite() || !y.is_finite() {
            return None;
        }
        if !close(x, y) {
            return Some(false);
        }
    }
    Some(true)
}

/// A trailing `%` read off, then the expression.
fn parse_with_percent(s: &str) -> Option<(Node, bool)> {
    let (body, pct) = match s.strip_suffix('%') {
        Some(b) => (b, true),
        None => (s, false),
    };
    Some((parse_expression(body)?, pct))
}

/// A normalized answer as an expression; `None` for text, sets, relations, ...
fn parse_expression(s: &str) -> Option<Node> {
    if s.is_empty() || s.len() > MAX_EVAL_CHARS {
        return None;
    }
    if let Some(n) = mixed_number(s) {
        return Some(Node::Num(n));
    }
    if has_word(s) {
        return None;
    }
    let mut p = Parser {
        s: s.chars().collect(),
        i: 0,
        depth: 0,
    };
    let node = p.expr()?;
    (p.i == p.s.len()).then_some(node)
}

/// `7\frac{3}{11}` -> 7 + 3/11 (integer part and a proper fraction of integers).
fn mixed_number(s: &str) -> Option<f64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let pos = body.find("\\frac{")?;
    let int = &body[..pos];
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = body[pos + 6..].strip_suffix('}')?;
    let (a, b) = rest.split_once("}{")?;
    if a.is_empty() || b.is_empty() || !a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (i, a, b): (f64, f64, f64) = (int.parse().ok()?, a.parse().ok()?, b.parse().ok()?);
    if b == 0.0 || a >= b {
        return None;
    }
    let v = i + a / b;
    Some(if neg { -v } else { v })
}

/// Three or more letters in a row outside a `\command`: a word, not a product of variables.
fn has_word(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut run = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 1;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            run = 0;
            continue;
        }
        if b[i].is_ascii_alphabetic() {
            run += 1;
            if run >= 3 {
                return true;
            }
        } else {
            run = 0;
        }
        i += 1;
    }
    false
}

struct Parser {
    s: Vec<char>,
    i: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// The command name at the cursor (which is on `\`), without consuming it.
    fn command_name(&self) -> String {
        self.s[self.i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect()
    }

    fn eat_command(&mut self, name: &str) -> bool {
        if self.peek() == Some('\\') && self.command_name() == name {
            self.i += 1 + name.len();
            self.eat(' ');
            true
        } else {
            false
        }
    }

    /// Whether the next token starts a factor (for implicit multiplication).
    fn starts_factor(&self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_digit() || c.is_ascii_alphabetic() => true,
            Some('.' | '(' | '[' | '{') => true,
            Some('\\') => {
                let name = self.command_name();
                matches!(
                    name.as_str(),
                    "frac" | "sqrt" | "pi" | "binom" | "lfloor" | "lceil" | "log"
                ) || Fun::from_name(&name).is_some()
                    || GREEK.contains(&name.as_str())
            }
            _ => false,
        }
    }

    fn next_is_function(&self) -> bool {
        self.peek() == Some('\\') && {
            let name = self.command_name();
            Fun::from_name(&name).is_some() || name == "log"
        }
    }

    fn expr(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_PARSE_DEPTH {
            return None;
        }
        let mut lhs = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.i += 1;
            let rhs = self.term()?;
            lhs = Node::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Some(lhs)
    }

    fn term(&mut self) -> Option<Node> {
        let mut lhs = self.unary()?;
        loop {
            match self.peek() {
                Some(op @ ('*' | '/')) => {
                    self.i += 1;
                    let rhs = self.unary()?;
                    lhs = Node::Bin(op, Box::new(lhs), Box::new(rhs));
                }
                _ if self.starts_factor() => {
                    let rhs = self.power()?;
                    lhs = Node::Bin('*', Box::new(lhs), Box::new(rhs));
                }
                _ => break,
            }
        }
        Some(lhs)
    }

    fn unary(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_PARSE_DEPTH {
            return None;
        }
        let node = if self.eat('-') {
            Node::Neg(Box::new(self.unary()?))
        } else if self.eat('+') {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Some(node)
    }

    fn power(&mut self) -> Option<Node> {
        let base = self.postfix()?;
        if self.eat('^') {
            let exp = self.exponent()?;
            return Some(Node::Bin('^', Box::new(base), Box::new(exp)));
        }
        Some(base)
    }

    /// The exponent after `^`: a group, a signed exponent, or one factor (right-associative).
    fn exponent(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_PARSE_DEPTH {
            return None;
        }
        let node = if self.eat('-') {
            Node::Neg(Box::new(self.exponent()?))
        } else if self.eat('+') {
            self.exponent()?
        } else {
            let base = self.postfix()?;
            if self.eat('^') {
                Node::Bin('^', Box::new(base), Box::new(self.exponent()?))
            } else {
                base
            }
        };
        self.depth -= 1;
        Some(node)
    }

    fn postfix(&mut self) -> Option<Node> {
        let mut node = self.primary()?;
        while self.eat('!') {
            node = Node::Fact(Box::new(node));
        }
        Some(node)
    }

    fn group(&mut self, open: char, close: char) -> Option<Node> {
        if !self.eat(open) {
            return None;
        }
        let node = self.expr()?;
        self.eat(close).then_some(node)
    }

    fn primary(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_PARSE_DEPTH {
            return None;
        }
        let node = self.primary_inner();
        self.depth -= 1;
        node
    }

    fn primary_inner(&mut self) -> Option<Node> {
        match self.peek()? {
            c if c.is_ascii_digit() || c == '.' => self.number(),
            '(' => self.group('(', ')'),
            '[' => self.group('[', ']'),
            '{' => self.group('{', '}'),
            '\\' => self.command(),
            c if c.is_ascii_alphabetic() => {
                self.i += 1;
                if c == 'e' && self.peek() != Some('_') {
                    return Some(Node::Num(std::f64::consts::E));
                }
                let mut name = c.to_string();
                if self.eat('_') {
                    match self.peek()? {
                        '{' => {
                            let start = self.i;
                            let mut depth = 0;
                            while let Some(ch) = self.peek() {
                                self.i += 1;
                                if ch == '{' {
                                    depth += 1;
                                } else if ch == '}' {
                                    depth -= 1;
                                    if depth == 0 {
                                        break;
                                    }
                                }
                            }
                            if depth != 0 {
                                return None;
                            }
                            name.push('_');
                            name.extend(&self.s[start..self.i]);
                        }
                        ch if ch.is_ascii_alphanumeric() => {
                            self.i += 1;
                            name.push('_');
                            name.push(ch);
                        }
                        _ => return None,
                    }
                }
                Some(Node::Var(name))
            }
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Node> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.eat('.') {
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        // scientific notation: 4.5e33, 1e-5
        if matches!(self.peek(), Some('e' | 'E')) {
            let j = self.i + 1;
            let k = if matches!(self.s.get(j), Some('+' | '-')) {
                j + 1
            } else {
                j
            };
            if self.s.get(k).is_some_and(|c| c.is_ascii_digit()) {
                self.i = k;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
            }
        }
        let text: String = self.s[start..self.i].iter().collect();
        let text = if text.starts_with('.') {
            format!("0{text}")
        } else {
            text
        };
        let text = text.strip_suffix('.').map(str::to_string).unwrap_or(text);
        text.parse::<f64>().ok().map(Node::Num)
    }

    /// The argument of a braced-or-not macro argument (`\sqrt{2}`, `\sqrt2`).
    fn group_or_atom(&mut self) -> Option<Node> {
        match self.peek()? {
            '{' => self.group('{', '}'),
            c if c.is_ascii_digit() => {
                self.i += 1;
                Some(Node::Num(c.to_digit(10)? as f64))
            }
            _ => self.primary(),
        }
    }

    /// A function's argument: `(x)`, `{x}`, or an implicit product of powers (`\sin 2x`).
    fn function_argument(&mut self) -> Option<Node> {
        if matches!(self.peek(), Some('(' | '[' | '{')) {
            return self.postfix();
        }
        let mut node = self.power()?;
        while self.starts_factor() && !self.next_is_function() {
            let rhs = self.power()?;
            node = Node::Bin('*', Box::new(node), Box::new(rhs));
        }
        Some(node)
    }

    fn command(&mut self) -> Option<Node> {
        let name = self.command_name();
        self.i += 1 + name.len();
        self.eat(' ');
        match name.as_str() {
            "frac" => {
                let a = self.group_or_atom()?;
                let b = self.group_or_atom()?;
                Some(Node::Bin('/', Box::new(a), Box::new(b)))
            }
            "sqrt" => {
                let index = if self.peek() == Some('[') {
                    self.group('[', ']')?
                } else {
                    Node::Num(2.0)
                };
                let a = self.group_or_atom()?;
                Some(Node::Root(Box::new(index), Box::new(a)))
            }
            "pi" => Some(Node::Num(std::f64::consts::PI)),
            "binom" => {
                let n = self.group_or_atom()?;
                let k = self.group_or_atom()?;
                Some(Node::Binom(Box::new(n), Box::new(k)))
            }
            "lfloor" | "lceil" => {
                let inner = self.expr()?;
                let close = if name == "lfloor" { "rfloor" } else { "rceil" };
                if !self.eat_command(close) {
                    return None;
                }
                let f = if name == "lfloor" {
                    Fun::Floor
                } else {
                    Fun::Ceil
                };
                Some(Node::Call(f, Box::new(inner)))
            }
            "log" => {
                let base = if self.eat('_') {
                    Some(self.group_or_atom()?)
                } else {
                    None
                };
                let power = if self.eat('^') {
                    Some(self.exponent()?)
                } else {
                    None
                };
                let arg = self.function_argument()?;
                let node = match base {
                    Some(b) => Node::Log(Box::new(b), Box::new(arg)),
                    None => Node::Call(Fun::Ln, Box::new(arg)),
                };
                Some(match power {
                    Some(p) => Node::Bin('^', Box::new(node), Box::new(p)),
                    None => node,
                })
            }
            n if GREEK.contains(&n) => Some(Node::Var(format!("\\{n}"))),
            n => {
                let f = Fun::from_name(n)?;
                let power = if self.eat('^') {
                    Some(self.exponent()?)
                } else {
                    None
                };
                let arg = self.function_argument()?;
                let node = Node::Call(f, Box::new(arg));
                Some(match power {
                    // \sin^{-1} is arcsin
                    Some(Node::Neg(ref one)) if matches!(**one, Node::Num(x) if x == 1.0) => {
                        let inv = match f {
                            Fun::Sin => Fun::Asin,
                            Fun::Cos => Fun::Acos,
                            Fun::Tan => Fun::Atan,
                            _ => {
                                return Some(Node::Bin(
                                    '^',
                                    Box::new(node),
                                    Box::new(Node::Num(-1.0)),
                                ))
                            }
                        };
                        match node {
                            Node::Call(_, a) => Node::Call(inv, a),
                            other => other,
                        }
                    }
                    Some(p) => Node::Bin('^', Box::new(node), Box::new(p)),
                    None => node,
                })
            }
        }
    }
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
/// Errors name the file and the line.
pub fn grade_pairs(input: &Path, output: &Path) -> Result<(usize, usize)> {
    let file = File::open(input).with_context(|| format!("{}: cannot open", input.display()))?;
    let out =
        File::create(output).with_context(|| format!("{}: cannot create", output.display()))?;
    let mut out = BufWriter::new(out);
    let (mut correct, mut total) = (0, 0);
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line_no = n + 1;
        let line =
            line.with_context(|| format!("{}: line {line_no}: cannot read", input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut obj: serde_json::Map<String, Value> = serde_json::from_str(&line).map_err(|e| {
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
    out.flush()
        .with_context(|| format!("{}: cannot write", output.display()))?;
    Ok((correct, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_nested_last_fbox_and_none() {
        assert_eq!(
            extract_answer("so \\boxed{\\frac{1}{2}}.").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            extract_answer("\\boxed{\\{1,\\{2\\}\\}} x").as_deref(),
            Some("\\{1,\\{2\\}\\}")
        );
        assert_eq!(
            extract_answer("\\boxed{a_{b^{c}}}").as_deref(),
            Some("a_{b^{c}}")
        );
        assert_eq!(
            extract_answer("first \\boxed{1} then \\boxed{2}").as_deref(),
            Some("2")
        );
        assert_eq!(
            extract_answer("\\boxed{3} and \\fbox{4}").as_deref(),
            Some("4")
        );
        assert_eq!(extract_answer("$\\boxed 5$").as_deref(), Some("5"));
        assert_eq!(extract_answer("\\boxed{7.}").as_deref(), Some("7"));
        assert_eq!(
            extract_answer("The answer is $\\frac{3}{4}$.").as_deref(),
            Some("\\frac{3}{4}")
        );
        assert_eq!(
            extract_answer("Final Answer: The final answer is 12. I hope it is correct.")
                .as_deref(),
            Some("12")
        );
        assert_eq!(extract_answer("final answer: 3.5").as_deref(), Some("3.5"));
        assert_eq!(extract_answer("所以答案是 6。").as_deref(), Some("6"));
        assert_eq!(extract_answer("no answer here"), None);
        assert_eq!(extract_answer("\\boxed{}"), None);
        assert_eq!(extract_answer("\\boxed{1"), Some("1".to_string()));
    }

    #[test]
    fn normalize_forms() {
        let cases = [
            ("$\\dfrac{3}{4}$", "\\frac{3}{4}"),
            ("\\frac12", "\\frac{1}{2}"),
            ("\\frac 59", "\\frac{5}{9}"),
            ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
            ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
            ("90^\\circ", "90"),
            ("45°", "45"),
            ("10,\\!080", "10080"),
            ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
            ("1,000", "1000"),
            ("1,00", "1,00"),
            ("x = 5", "5"),
            ("\\text{Evelyn}", "Evelyn"),
            ("5.4 \\text{ cents}", "5.4"),
            ("864 \\mbox{ inches}^2", "864"),
            ("15\\mbox{ cm}^2", "15"),
            ("\\$32,\\!348", "32348"),
            ("62.5\\%", "62.5%"),
            (".0000672", "0.0000672"),
            ("3.00", "3"),
            ("11\\sqrt2", "11\\sqrt{2}"),
            ("2 \\cdot 3", "2*3"),
            ("2\\times 10^{5}", "2*10^{5}"),
            ("7.", "7"),
            ("\\text{(C)}", "C"),
            ("（B）", "B"),
            ("-3 m", "-3"),
            ("6m", "6m"),
            ("24 岁", "24"),
            ("five", "5"),
            ("x \\in [-2,7]", "[-2,7]"),
            ("[0, +∞)", "[0,\\infty)"),
            ("1, 2, 3, 或 6", "1,2,3,6"),
            ("\\{1,2\\}", "{1,2}"),
            (
                "\\begin{array}{cc} 1 & 2 \\end{array}",
                "\\begin{pmatrix}1&2\\end{pmatrix}",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "normalize({input:?})");
        }
    }

    #[test]
    fn numbers() {
        assert!(is_equivalent("0.5", "\\frac{1}{2}"));
        assert!(is_equivalent("1/2", "\\frac12"));
        assert!(is_equivalent("7 \\frac{3}{11}", "\\frac{80}{11}"));
        assert!(is_equivalent("50%", "0.5"));
        assert!(is_equivalent("50\\%", "50"));
        assert!(is_equivalent("0.625", "62.5%"));
        assert!(!is_equivalent("0.5", "50"));
        assert!(is_equivalent("4.5 \\times 10^{33}", "4.5e33"));
        assert!(is_equivalent("27", "27.0"));
        assert!(!is_equivalent("3986730", "3986729"));
        assert!(is_equivalent("0.33333", "\\frac{1}{3}"));
        assert!(!is_equivalent("0.33", "\\frac{1}{3}"));
        assert!(is_equivalent("2\\sqrt{3}", "\\sqrt{12}"));
        assert!(is_equivalent("3\\pi", "\\frac{6\\pi}{2}"));
        assert!(is_equivalent("-1/3", "-1./3"));
        assert!(is_equivalent("0", "0.0"));
        assert!(!is_equivalent("1", "0"));
    }

    #[test]
    fn choices() {
        assert!(is_equivalent("C", "C"));
        assert!(is_equivalent("(C)", "C"));
        assert!(is_equivalent("C.", "C"));
        assert!(is_equivalent("C. \\{x \\mid -3<x<4\\}", "C"));
        assert!(is_equivalent("\\text{(B)}", "B"));
        assert!(is_equivalent("B", "\\text{(B)}"));
        assert!(!is_equivalent("D", "C"));
        assert!(!is_equivalent("5", "C"));
        assert!(is_equivalent("C", "C. {x \\mid-3<x<4}"));
        assert!(is_equivalent("A: 5", "5"));
    }

    #[test]
    fn intervals_tuples_sets() {
        assert!(is_equivalent("(1,2]", "(1, 2]"));
        assert!(!is_equivalent("(1,2)", "(1,2]"));
        assert!(!is_equivalent("[1,2]", "(1,2)"));
        assert!(is_equivalent("(0.5, -0.5)", "(\\frac{1}{2}, -\\frac12)"));
        assert!(!is_equivalent("(2,1)", "(1,2)"));
        assert!(is_equivalent("2, 1", "1,2"));
        assert!(is_equivalent("\\{3,1,2\\}", "{1,2,3}"));
        assert!(is_equivalent(
            "(-\\infty, 0) \\cup (1, \\infty)",
            "(-\\infty,0)\\cup(1,+\\infty)"
        ));
        assert!(is_equivalent(
            "1+\\sqrt{19}, 1-\\sqrt{19}",
            "1 \\pm \\sqrt{19}"
        ));
        assert!(is_equivalent(
            "\\begin{pmatrix} -0.5 \\\\ 1 \\end{pmatrix}",
            "\\begin{pmatrix} -1/2 \\\\ 1 \\end{pmatrix}"
        ));
        assert!(is_equivalent(
            "(-1/3, 2/3)",
            "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}"
        ));
    }

    #[test]
    fn symbolic() {
        assert!(is_equivalent("2(k+1)", "2k+2"));
        assert!(is_equivalent("-q+p", "p - q"));
        assert!(!is_equivalent("p + q", "p - q"));
        assert!(is_equivalent("\\frac{n(n+1)}{2}", "\\frac{n^2+n}{2}"));
        assert!(is_equivalent("y = 2x+3", "y=3+2x"));
        assert!(!is_equivalent("x = 2", "y = 2"));
        assert!(is_equivalent("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0"));
        assert!(is_equivalent("\\ln 4", "2\\ln 2"));
        assert!(is_equivalent("\\sin^2 x + \\cos^2 x", "1"));
        assert!(!is_equivalent("\\text{odd}", "\\text{even}"));
        assert!(!is_equivalent("east", "seat"));
    }
}
