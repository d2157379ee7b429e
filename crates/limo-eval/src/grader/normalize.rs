//! Normalization of an answer before comparison, LIMO's rules (and Qwen2.5-Math's before it):
//! LaTeX wrappers and spacing out, commands renamed, fractions and roots braced, units and ordinals
//! (units.rs),
//! thousands separators and a leading `x =` removed, decimals canonical.

use super::*;

/// Canonical form of an answer: the boxed content if boxed; no `$`, `\left`/`\right`, spacing
/// macros, `\text{}`-like wrappers (contents kept), degree signs, unit words after a number,
/// thousands separators, trailing period, leading `x =`, whitespace; `\dfrac` -> `\frac`,
/// `\frac12` -> `\frac{1}{2}`, `\sqrt2` -> `\sqrt{2}`, `\cdot`/`\times` -> `*`, `\div` -> `/`,
/// `.5` -> `0.5`, `3.0` -> `3`, `\%` -> `%` (kept: [`is_equivalent`] reads it as a percent).
pub fn normalize(answer: &str) -> String {
    normalize_parts(answer).0
}

/// The normalized text and the variable of a leading `x =` that was stripped, if any.
pub(super) fn normalize_parts(answer: &str) -> (String, Option<String>) {
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
    s = remove_trailing_text(&s);
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
    if s.trim().eq_ignore_ascii_case("infinity") {
        s = "\\infty".to_string();
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

pub(super) fn map_unicode(s: &str) -> String {
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
pub(super) fn command_at(s: &str, i: usize) -> (&str, usize) {
    let b = s.as_bytes();
    let mut j = i + 1;
    while j < b.len() && b[j].is_ascii_alphabetic() {
        j += 1;
    }
    (&s[i + 1..j], j)
}

/// `s` rewritten left to right: at each byte `i`, `step(i, out)` either writes what replaces the
/// text starting there and returns the byte after it (always past `i`), or returns `None` and the
/// character at `i` is copied. Every scanner below is one such step.
pub(super) fn rewrite(
    s: &str,
    mut step: impl FnMut(usize, &mut String) -> Option<usize>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match step(i, &mut out) {
            Some(next) => {
                debug_assert!(next > i, "a rewrite step must consume text");
                i = next;
            }
            None => {
                let c = s[i..].chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The `\` at byte `i` and the character after it (if any), copied; the byte after them.
pub(super) fn escape_at(s: &str, i: usize, out: &mut String) -> usize {
    out.push('\\');
    match s[i + 1..].chars().next() {
        Some(n) => {
            out.push(n);
            i + 1 + n.len_utf8()
        }
        None => i + 1,
    }
}

/// `\text{X}`, `\mbox{X}`, `\mathrm{X}`, ... -> `X` (also nested).
pub(super) fn unwrap_macros(s: &str) -> String {
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
pub(super) fn simplify_escapes(s: &str) -> String {
    rewrite(s, |i, out| {
        if s[i..].starts_with('~') {
            out.push(' ');
            return Some(i + 1);
        }
        if !s[i..].starts_with('\\') {
            return None;
        }
        let Some(next) = s[i + 1..].chars().next() else {
            return Some(i + 1); // a trailing `\` goes
        };
        Some(match next {
            '\\' => {
                out.push_str("\\\\");
                i + 2
            }
            '!' | ',' | ';' | ':' | ' ' | '>' => {
                out.push(' ');
                i + 2
            }
            '{' | '}' | '%' => {
                out.push(next);
                i + 2
            }
            '(' | ')' | '[' | ']' | '$' => i + 2,
            n if n.is_ascii_alphabetic() => {
                let (name, end) = command_at(s, i);
                match name {
                    "left" | "right" | "bigl" | "bigr" | "Bigl" | "Bigr" | "biggl" | "biggr"
                    | "Biggl" | "Biggr" | "big" | "Big" | "bigg" | "Bigg" => {
                        end + usize::from(s[end..].starts_with('.'))
                    }
                    "displaystyle" | "textstyle" | "scriptstyle" | "limits" | "nolimits"
                    | "hline" | "quad" | "qquad" | "enspace" | "thinspace" => {
                        out.push(' ');
                        end
                    }
                    _ => {
                        out.push_str(&s[i..end]);
                        end
                    }
                }
            }
            _ => escape_at(s, i, out),
        })
    })
}

/// Command renames: `\dfrac` -> `\frac`, `\leq` -> `\le`, `\cdot` -> `*`, ...
pub(super) fn map_commands(s: &str) -> String {
    rewrite(s, |i, out| {
        if !s[i..].starts_with('\\') {
            return None;
        }
        let (name, end) = command_at(s, i);
        if name.is_empty() {
            // `\\` or `\<symbol>`: copy both characters
            return Some(escape_at(s, i, out));
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
        // `\cdot2` must not glue: a replacement by a symbol ends the command
        out.push_str(repl.unwrap_or(&s[i..end]));
        Some(end)
    })
}

/// `\begin{array}{cc}` -> `\begin{pmatrix}`, `\end{array}` -> `\end{pmatrix}`.
pub(super) fn array_to_pmatrix(s: &str) -> String {
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

pub(super) fn is_word_boundary(c: Option<char>) -> bool {
    c.is_none_or(|c| !c.is_alphanumeric() && c != '\\' && c != '_')
}

/// 或 / 和 / 及 / 以及 and the words "and", "or" -> `,` (multiple answers).
pub(super) fn conjunctions_to_commas(s: &str) -> String {
    let t = s.replace("以及", ",").replace(['或', '和', '及'], ",");
    // a word boundary is never `\`: `\and` stays
    replace_word(&replace_word(&t, "and", ","), "or", ",")
}

/// A macro argument at byte `i` (spaces skipped): a brace group's content, a `\command`, or one
/// character. Returns the argument text and the byte index after it.
pub(super) fn macro_arg(s: &str, i: usize, depth: usize) -> Option<(String, usize)> {
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
pub(super) fn fix_frac_sqrt(s: &str) -> String {
    fix_frac_sqrt_at(s, 0)
}

pub(super) fn fix_frac_sqrt_at(s: &str, depth: usize) -> String {
    if depth > 32 {
        return s.to_string();
    }
    rewrite(s, |i, out| {
        if !s[i..].starts_with('\\') {
            return None;
        }
        let (name, end) = command_at(s, i);
        Some(match name {
            "frac" | "binom" => {
                let args = macro_arg(s, end, depth)
                    .and_then(|(a, e1)| macro_arg(s, e1, depth).map(|(b, e2)| (a, b, e2)));
                match args {
                    Some((a, b, e2)) => {
                        out.push_str(&format!("\\{name}{{{a}}}{{{b}}}"));
                        e2
                    }
                    None => {
                        out.push_str(&s[i..end]);
                        end
                    }
                }
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
                match macro_arg(s, j, depth) {
                    Some((a, e)) => {
                        out.push_str(&format!("{{{a}}}"));
                        e
                    }
                    None => j,
                }
            }
            "" => escape_at(s, i, out),
            _ => {
                out.push_str(&s[i..end]);
                end
            }
        })
    })
}

/// `1,000` / `-12,345.5` (commas grouping digits in threes, no spaces) -> `1000`.
pub(super) fn remove_thousands(s: &str) -> String {
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

pub(super) fn word_number(s: &str) -> Option<u64> {
    const ONES: [&str; 20] = [
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
    ];
    const TENS: [&str; 8] = [
        "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    // "twenty-one", "one hundred and five", "two thousand three": the whole answer in words.
    let l = s.to_ascii_lowercase();
    let words: Vec<&str> = l
        .split([' ', '-'])
        .filter(|w| !w.is_empty() && *w != "and")
        .collect();
    if words.is_empty() || words.len() > 12 {
        return None;
    }
    let (mut total, mut group) = (0u64, 0u64);
    for w in words {
        if let Some(n) = ONES.iter().position(|x| *x == w) {
            group += n as u64;
        } else if let Some(n) = TENS.iter().position(|x| *x == w) {
            group += 20 + 10 * n as u64;
        } else if w == "hundred" {
            group = group.max(1) * 100;
        } else if let Some(scale) = match w {
            "thousand" => Some(1_000),
            "million" => Some(1_000_000),
            _ => None,
        } {
            total += group.max(1) * scale;
            group = 0;
        } else {
            return None;
        }
    }
    Some(total + group)
}

/// All whitespace out, but one space kept between a command name and a letter (`\cot x`).
pub(super) fn remove_spaces(s: &str) -> String {
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
pub(super) fn infinities(s: &str) -> String {
    let mut t = s.replace("+\\infty", "\\infty");
    // `a+\infty` would have been odd anyway; keep `x+\infty` untouched is not worth a rule
    t = t.replace("(-\\infty,\\infty)", "\\mathbb{R}");
    if t == "{}" {
        t = "\\emptyset".to_string();
    }
    t
}

/// `x=5` and `5=x` -> (`5`, `x`); `x\in[1,2]` -> `[1,2]`. Only a single-letter (or subscripted /
/// Greek) variable on one side of the only `=` (the left one when both are).
pub(super) fn strip_leading_variable(s: &str) -> (String, Option<String>) {
    if s.matches('=').count() == 1 {
        let (lhs, rhs) = s.split_once('=').unwrap_or((s, ""));
        if !rhs.is_empty() && is_simple_variable(lhs) && !rhs.starts_with(['=', '<', '>']) {
            return (rhs.to_string(), Some(lhs.to_string()));
        }
        // `5 = x`, `k+4 = n`: the variable written last
        if !lhs.is_empty() && is_simple_variable(rhs) && !lhs.ends_with(['!', '<', '>']) {
            return (lhs.to_string(), Some(rhs.to_string()));
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

pub(super) fn is_simple_variable(s: &str) -> bool {
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
pub(super) fn fix_decimals(s: &str) -> String {
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
pub(super) fn strip_outer_grouping(s: &str) -> String {
    let mut cur = s.to_string();
    for _ in 0..8 {
        match enclosed(&cur) {
            Some(('{', inner, '}'))
                if split_top(inner, &[',', ';']).len() == 1 && !inner.is_empty() =>
            {
                cur = inner.to_string();
            }
            // One value in parentheses (`\left(3\frac{5}{11}\right)`); a comma makes a tuple.
            Some(('(', inner, ')'))
                if !inner.is_empty() && split_top(inner, &[',', ';']).len() == 1 =>
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
