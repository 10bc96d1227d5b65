//! Printing: data on stdout (tables or `--json`), diagnostics on stderr.

use serde::Serialize;
use std::io::Write;

/// Writes one JSON value as a line on stdout.
pub fn json_line<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    // `From` hands back serde_json's underlying I/O error (a broken pipe stays one).
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

/// Human bytes: `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// Human duration from ms: `3m 12s`.
pub fn age(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) => {
            let secs = ms / 1000;
            if secs == 0 {
                format!("{ms}ms")
            } else {
                humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
            }
        }
    }
}

/// Prints rows as an aligned table.
pub fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
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
