//! Config errors on one line, naming the key (or the line and column of a syntax error).

/// `section.key: ` of the TOML line holding byte `offset` (empty when there is none), so that
/// a type error names the field like an unknown-key error does.
pub(super) fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        // A missing field is blamed on its table, spanned from its header: `[[data.also]]`.
        let header = line.trim().trim_start_matches('[').trim_end_matches(']');
        return match line.trim_start().starts_with('[') {
            true => format!("{}: ", header.trim()),
            false => String::new(),
        };
    };
    let section = before[..line_start]
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        .map(|s| format!("{s}."))
        .unwrap_or_default();
    format!("{section}{}: ", key.trim())
}

/// A TOML syntax error on one line: `FILE: line L, column C: what` (toml's own message draws the
/// line over several).
pub(super) fn syntax_error(text: &str, origin: &str, e: &toml::de::Error) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow::anyhow!("{origin}: {}", e.message().trim());
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    let what = e.message().trim().replace('\n', "; ");
    anyhow::anyhow!("{origin}: line {line}, column {column}: {what}")
}
