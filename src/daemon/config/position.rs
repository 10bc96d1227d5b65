//! Where in the config file an error is: its line, column and section.
//!
//! toml points at the value whose deserialization failed. A `[sink]` table is
//! an internally tagged enum (`type = "http"`, ...), which serde reads whole
//! before choosing the variant, so an error inside it (a misspelt key in
//! `[sink]` or in `[topics.x.sink.stream]`) comes back pointing at the
//! section's header. Here the error is placed again: at the line of the key it
//! names (or of the value it quotes) within that section and its subsections,
//! and the message names the section either way.

/// One `[header]` section of the file: its dotted name and its lines.
struct Section {
    name: String,
    /// 0-based index of the header line (0 for the top level, which has none).
    header: usize,
    /// 0-based index one past its last line.
    end: usize,
}

fn sections(lines: &[&str]) -> Vec<Section> {
    let mut out = vec![Section {
        name: String::new(),
        header: 0,
        end: lines.len(),
    }];
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if let Some(name) = header_name(t) {
            if let Some(last) = out.last_mut() {
                last.end = i;
            }
            out.push(Section {
                name,
                header: i,
                end: lines.len(),
            });
        }
    }
    out
}

/// `[a.b]` or `[[a.b]]` → `a.b` (spaces around dots and quotes kept as written,
/// less the outer whitespace).
fn header_name(line: &str) -> Option<String> {
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.split_once("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.split_once(']')))?
        .0;
    let name: Vec<&str> = inner.split('.').map(str::trim).collect();
    Some(name.join("."))
}

/// The key a line assigns (`key = ...`, `"key" = ...`, `key.sub = ...`), if any.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let first = key.split('.').next()?.trim();
    Some(first.trim_matches('"').trim_matches('\''))
}

/// The key or quoted value an error message is about.
enum Clue {
    Key(String),
    Text(String),
}

fn clue(message: &str) -> Option<Clue> {
    for marker in ["unknown field `", "unknown variant `", "missing field `"] {
        if let Some(rest) = message.split_once(marker) {
            let name = rest.1.split('`').next()?;
            return Some(if marker.starts_with("unknown variant") {
                Clue::Text(format!("\"{name}\""))
            } else {
                Clue::Key(name.to_string())
            });
        }
    }
    // `invalid value: string "5x", expected ...`
    let rest = message.split_once("string \"")?.1;
    let value = rest.split('"').next()?;
    Some(Clue::Text(format!("\"{value}\"")))
}

/// The error at byte `offset` of `text` (toml's span start), placed again:
/// `[section] line L, column C: message`.
pub fn describe(text: &str, offset: Option<usize>, message: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let (mut line, mut col) = offset.map_or((0, 0), |o| line_col(text, o));
    let all = sections(&lines);
    // The section holding 1-based `line`: the last one starting at or before it.
    let at = |line: usize| {
        all.iter()
            .rev()
            .find(|s| s.name.is_empty() || s.header < line)
    };
    let mut section = at(line).map(|s| s.name.clone()).unwrap_or_default();
    // An error placed on a section's header line: look for what it names in
    // that section and in its subsections.
    let on_header = line > 0
        && lines
            .get(line - 1)
            .is_some_and(|l| header_name(l.trim()).is_some());
    if on_header && let Some(c) = clue(message) {
        let prefix = section.clone();
        let candidates = all
            .iter()
            .filter(|s| s.name == prefix || s.name.starts_with(&format!("{prefix}.")));
        'search: for s in candidates {
            for (i, l) in lines.iter().enumerate().take(s.end).skip(s.header + 1) {
                let found = match &c {
                    Clue::Key(k) => key_of(l) == Some(k.as_str()),
                    Clue::Text(t) => l.find(t.as_str()).is_some(),
                };
                if found {
                    let indent = match &c {
                        Clue::Key(k) => l.find(k.as_str()).unwrap_or(0),
                        Clue::Text(t) => l.find(t.as_str()).unwrap_or(0),
                    };
                    line = i + 1;
                    col = indent + 1;
                    section = s.name.clone();
                    break 'search;
                }
            }
        }
    }
    if section.is_empty() {
        format!("line {line}, column {col}: {message}")
    } else {
        format!("[{section}] line {line}, column {col}: {message}")
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}
