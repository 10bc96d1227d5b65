//! Printing: data on stdout (tables or `--json`), diagnostics on stderr.

use serde::Serialize;
use std::io::Write;

/// Writes one JSON value as a line on stdout.
pub fn json_line<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    // `From` hands back serde_json's underlying I/O error (a broken pipe stays one).
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

/// A count with its noun, singular for one: `1 event`, `3 events`, `0 lines`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Human bytes: `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// Human duration from ms, to its two largest units: `3m 12s`, `2days 4h`.
pub fn age(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) => {
            let secs = ms / 1000;
            if secs == 0 {
                format!("{ms}ms")
            } else {
                humantime::format_duration(std::time::Duration::from_secs(secs))
                    .to_string()
                    .split(' ')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    }
}

/// The columns of the terminal on stdout (`stdout`) or stderr, else `$COLUMNS`,
/// else 80.
pub fn terminal_width(stdout: bool) -> usize {
    let size = if stdout {
        terminal_size::terminal_size_of(std::io::stdout())
    } else {
        terminal_size::terminal_size_of(std::io::stderr())
    };
    size.map(|(w, _)| w.0 as usize)
        .filter(|w| *w > 0)
        .or_else(|| {
            std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.trim().parse().ok())
                .filter(|w| *w > 0)
        })
        .unwrap_or(80)
}

/// The narrowest a shrunk column gets.
const MIN_COLUMN: usize = 8;

/// `s` cut to `width` characters, ending in `…` when cut.
pub fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// A cell on one line: line breaks shown as `\n` and `\r`, tabs as a
/// space, other control characters as `�` (a pretty-printed payload, a
/// multi-line error), so each row stays one line.
fn one_line(cell: &str) -> String {
    let mut out = String::with_capacity(cell.len());
    for c in cell.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Prints rows as an aligned table at most `width` columns wide: when it
/// would be wider, the `flexible` columns (indexes) give up characters,
/// widest first, down to 8, and their cells end in `…` where cut. Every row
/// is one line (see `one_line`).
pub fn table_fit(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
    width: usize,
    flexible: &[usize],
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| one_line(c)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let total = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    let mut excess = total.saturating_sub(width);
    while excess > 0 {
        let widest = flexible
            .iter()
            .copied()
            .filter(|&i| i < widths.len() && widths[i] > MIN_COLUMN)
            .max_by_key(|&i| widths[i]);
        let Some(i) = widest else { break };
        widths[i] -= 1;
        excess -= 1;
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let c = truncate(c, w);
            if i + 1 == cells.len() {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, header.to_vec())?;
    for row in rows {
        line(out, row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// The progress bar or spinner drawn on stderr now, if any: log lines are
/// written above it instead of through it.
static LIVE: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Shows log lines above `bar` until the guard is dropped.
pub fn live(bar: &indicatif::ProgressBar) -> LiveGuard {
    *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    LiveGuard
}

/// Ends [`live`].
pub struct LiveGuard;

impl Drop for LiveGuard {
    fn drop(&mut self) {
        *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Where log lines go: stderr, above the live progress bar if one is drawn.
/// Each log line arrives in one `write` call.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().lock().write_all(buf))?,
            None => std::io::stderr().lock().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_table_shrinks_its_flexible_columns_to_the_width() {
        let rows = vec![vec![
            "3f9a0c12be45-1042".to_string(),
            "connect error: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)".to_string(),
            r#"{"event":"page_view","properties":{"distinct_id":"user-1","path":"/pricing"}}"#.to_string(),
        ]];
        let mut out = Vec::new();
        table_fit(
            &mut out,
            &["ID", "LAST ERROR", "PAYLOAD"],
            &rows,
            80,
            &[1, 2],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(
            text.contains("3f9a0c12be45-1042"),
            "fixed columns are kept whole"
        );
        assert!(text.contains("connect error: err"), "{text}");
        assert!(text.contains('…'), "{text}");
        assert_eq!(
            age(Some(2 * 86_400_000 + 4 * 3_600_000 + 61_000)),
            "2days 4h"
        );
        assert_eq!(age(Some(192_000)), "3m 12s");
        assert_eq!(age(Some(250)), "250ms");
        // Narrow tables are left alone.
        let mut out = Vec::new();
        table_fit(
            &mut out,
            &["A", "B"],
            &[vec!["x".into(), "y".into()]],
            80,
            &[1],
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A  B\nx  y\n");
    }

    #[test]
    fn every_row_stays_on_one_line() {
        let mut out = Vec::new();
        table_fit(
            &mut out,
            &["ID", "PAYLOAD"],
            &[vec!["a-1".into(), "{\n  \"x\": 1\r\n}\t\u{1}".into()]],
            80,
            &[1],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID   PAYLOAD\na-1  {\\n  \"x\": 1\\r\\n} \u{fffd}\n"
        );
    }

    #[test]
    fn one_is_singular_every_other_count_plural() {
        assert_eq!(count(1, "event"), "1 event");
        assert_eq!(count(0, "event"), "0 events");
        assert_eq!(count(2, "line"), "2 lines");
    }
}
