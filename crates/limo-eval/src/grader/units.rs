//! Units, `percent` and ordinals after a number, removed before comparison (`12 cm` -> `12`,
//! `5 percent` -> `5%`, `4^{th}` -> `4`), English and Chinese.

use super::*;

/// Unit words removed when they follow a number (or a closing `}` / `)`), with an optional
/// `^2` / `^3`. Longest first so that "平方米" goes before "米".
pub(super) const UNITS: &[&str] = &[
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
    "hectares",
    "soldiers",
    "students",
    "hectare",
    "monkeys",
    "soldier",
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
    "apples",
    "rupees",
    "monkey",
    "rounds",
    "apple",
    "rupee",
    "coins",
    "tiles",
    "cubes",
    "marks",
    "acres",
    "women",
    "woman",
    "coin",
    "tile",
    "cube",
    "mark",
    "acre",
    "toys",
    "pies",
    "ohms",
    "kmph",
    "toy",
    "pie",
    "ohm",
    "men",
    "man",
    "yrs",
    "gal",
    "yr",
    "am",
    "pm",
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
pub(super) const SHORT_UNITS: &[&str] = &["m", "g", "s", "h", "K", "L"];

/// A `\text{...}` (or `\mbox`, `\textrm`, `\textnormal`) of words ending the answer after a
/// number, a `}` or a `)`: a unit or a description (`12 \text{ red balls}`, `10\text{ boxes}`),
/// dropped as LIMO drops a trailing `\text{}`. Only words go: `\text{ (B)}`, a number inside, or
/// a whole answer in `\text{}` stays.
pub(super) fn remove_trailing_text(s: &str) -> String {
    let t = s.trim_end();
    let Some(open) = t.rfind('\\') else {
        return s.to_string();
    };
    let (name, end) = command_at(t, open);
    if !["text", "mbox", "textrm", "textnormal"].contains(&name) {
        return s.to_string();
    }
    let at = end + (t[end..].len() - t[end..].trim_start_matches(' ').len());
    let Some((inner, len)) = brace_group(&t[at..]) else {
        return s.to_string();
    };
    let words = inner.trim();
    let only_words = words.chars().any(|c| c.is_ascii_alphabetic())
        && words
            .chars()
            .all(|c| c.is_ascii_alphabetic() || matches!(c, ' ' | '-' | '\'' | '.'));
    let before = t[..open].trim_end();
    let after_number = before
        .chars()
        .next_back()
        .is_some_and(|c| c.is_ascii_digit() || c == '}' || c == ')');
    if at + len == t.len() && only_words && after_number {
        before.to_string()
    } else {
        s.to_string()
    }
}

pub(super) fn remove_units(s: &str) -> String {
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

pub(super) fn replace_word(s: &str, word: &str, repl: &str) -> String {
    rewrite(s, |i, out| {
        let hit = s[i..].starts_with(word)
            && is_word_boundary(s[..i].chars().next_back())
            && is_word_boundary(s[i + word.len()..].chars().next());
        hit.then(|| {
            out.push_str(repl);
            i + word.len()
        })
    })
}

/// The length of a power suffix (`^2`, `^{3}`) at the start of `s`, or 0.
pub(super) fn power_suffix_len(s: &str) -> usize {
    for p in ["^{2}", "^{3}", "^2", "^3"] {
        if s.starts_with(p) {
            return p.len();
        }
    }
    0
}

pub(super) fn remove_unit(s: &str, unit: &str, short: bool) -> String {
    let cjk = unit.chars().next().is_some_and(|c| !c.is_ascii());
    rewrite(s, |i, out| {
        if !s[i..].starts_with(unit) {
            return None;
        }
        let head = &s[..i];
        let trimmed = head.trim_end_matches(' ');
        let spaced = trimmed.len() != head.len();
        let prev = trimmed.chars().next_back();
        let number_before = prev.is_some_and(|c| c.is_ascii_digit() || c == '}' || c == ')');
        let after_idx = i + unit.len();
        let after = s[after_idx..].chars().next();
        let ok_after = cjk || after.is_none_or(|c| !c.is_ascii_alphanumeric());
        let prev_raw = head.chars().next_back();
        let glued_to_letter = prev_raw.is_some_and(|c| c.is_ascii_alphabetic() || c == '\\');
        let power = power_suffix_len(&s[after_idx..]);
        let ok = if short {
            spaced && number_before && s[after_idx + power..].trim().is_empty()
        } else {
            number_before && ok_after && !glued_to_letter
        };
        ok.then(|| {
            // drop the spaces before the unit too
            out.truncate(out.len() - (head.len() - trimmed.len()).min(out.len()));
            after_idx + power
        })
    })
}

/// `5th`, `2nd`, `4^{th}`, `4^{\text{th}}` -> the number.
pub(super) fn remove_ordinal(s: &str) -> String {
    const SUFFIXES: [&str; 8] = ["^{th}", "^{st}", "^{nd}", "^{rd}", "th", "st", "nd", "rd"];
    rewrite(s, |i, out| {
        if !out.chars().next_back().is_some_and(|c| c.is_ascii_digit()) {
            return None;
        }
        let at_boundary = |suf: &&str| is_word_boundary(s[i + suf.len()..].chars().next());
        let suffix = SUFFIXES
            .iter()
            .find(|suf| s[i..].starts_with(**suf) && at_boundary(suf))?;
        Some(i + suffix.len())
    })
}
