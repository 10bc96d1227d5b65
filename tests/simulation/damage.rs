//! Between two lives of a seed: what the parent does to the closed store
//! (sled's files lost, an index record damaged, a body byte flipped), and
//! which events a flip may cost.

use super::{Coverage, Oracle};
use crate::child::token_of;
use std::path::{Path, PathBuf};

/// Between two lives: sled's files lost, or one byte of a body file flipped.
pub(super) fn damage(
    r: &mut fastrand::Rng,
    dir: &Path,
    o: &mut Oracle,
    cov: &mut Coverage,
) -> Result<(), String> {
    if r.u32(0..100) < 20 && dir.join("db").exists() {
        std::fs::remove_dir_all(dir.join("db")).map_err(|e| e.to_string())?;
        cov.sled_losses += 1;
    }
    if r.u32(0..100) < 15 && damage_index_record(r, dir) {
        cov.index_damage += 1;
    }
    if r.u32(0..100) < 25 {
        let files = body_files(dir);
        if files.is_empty() {
            return Ok(());
        }
        let path = &files[r.usize(0..files.len())];
        let mut bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        if bytes.is_empty() {
            return Ok(());
        }
        // A fifth of the flips hit the file header or the first entry's
        // header: the layout, the salt, the magic.
        let at = if r.u32(0..5) == 0 {
            r.usize(0..bytes.len().min(56))
        } else {
            r.usize(0..bytes.len())
        };
        // Whose events the flip may cost: the entry it lands in.
        let (toks, gone) = tokens_at(&bytes, at);
        o.gone_untraced.extend(gone);
        for tok in toks {
            if let Some(t) = o.toks.get_mut(&tok) {
                t.damaged = true;
                t.history
                    .push(format!("its entry damaged at {}:{at}", path.display()));
            }
        }
        bytes[at] ^= 1 << r.u32(0..8);
        std::fs::write(path, bytes).map_err(|e| e.to_string())?;
        cov.flips += 1;
    }
    Ok(())
}

/// Flips a byte in the value of one chunk index record in sled (the store
/// is closed): a repair from the body files must bring its chunk back whole.
fn damage_index_record(r: &mut fastrand::Rng, dir: &Path) -> bool {
    let Ok(db) = sled::Config::new()
        .path(dir.join("db"))
        .segment_size(4 * 1024 * 1024)
        .open()
    else {
        return false;
    };
    let Ok(index) = db.open_tree("index") else {
        return false;
    };
    let keys: Vec<sled::IVec> = index
        .iter()
        .keys()
        .flatten()
        .filter(|k| {
            k.iter()
                .position(|b| *b == 0)
                .is_some_and(|nul| k.get(nul + 1) == Some(&b'I') && k.len() == nul + 10)
        })
        .collect();
    if keys.is_empty() {
        return false;
    }
    let key = &keys[r.usize(0..keys.len())];
    let Ok(Some(mut value)) = index.get(key).map(|v| v.map(|v| v.to_vec())) else {
        return false;
    };
    let at = r.usize(0..value.len());
    value[at] ^= 1 << r.u32(0..8);
    index.insert(key, value).is_ok() && db.flush().is_ok()
}

fn body_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(topics) = std::fs::read_dir(dir.join("bodies")) {
        for t in topics.flatten() {
            if let Ok(files) = std::fs::read_dir(t.path()) {
                out.extend(files.flatten().map(|f| f.path()));
            }
        }
    }
    out.sort();
    out
}

/// The tokens of the entry holding byte `at` of a body file (walking its
/// 16-byte entry headers from offset 40), events and dead letters alike,
/// and, for a trace entry, the seqs it names gone.
fn tokens_at(bytes: &[u8], at: usize) -> (Vec<String>, Vec<u64>) {
    let mut pos = 40usize;
    while pos + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        if len == 0 || pos + 16 + len > bytes.len() {
            break;
        }
        let end = pos + 16 + len;
        if at >= pos && at < end {
            let rec = &bytes[pos + 16..end];
            if let Ok(events) = evspool::record::decode_chunk(rec) {
                return (
                    events.iter().map(|e| token_of(e.payload)).collect(),
                    Vec::new(),
                );
            }
            if let Ok(trace) = evspool::record::decode_trace(rec) {
                let gone = trace.gone.iter().flat_map(|&(lo, hi)| lo..=hi).collect();
                return (
                    trace.dead.iter().map(|d| token_of(&d.payload)).collect(),
                    gone,
                );
            }
            return (Vec::new(), Vec::new());
        }
        pos = end;
    }
    (Vec::new(), Vec::new())
}
