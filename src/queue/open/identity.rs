//! The store's identity file, `<dir>/evspool.id`: its instance id, kept
//! outside sled so that losing sled's files never changes an event's id.
//!
//! ```text
//! evspool store
//! instance <12 hex digits>
//! ```
//!
//! Written once, when the store is created (or first opened by a build that
//! has this file), through a temporary file that is synced and renamed, with
//! the directory synced after: it is on disk before anything that depends on
//! it. Every body file's header repeats the instance id (`queue/log/segment.rs`),
//! so even without this file a rebuild keeps the ids.

use crate::owned::{Access, StoreDir};
use std::io::Write;
use std::path::Path;

pub(crate) const IDENTITY_FILE: &str = "evspool.id";
const FIRST_LINE: &str = "evspool store";

/// The instance id recorded in `dir`, if the file is there and readable.
pub(crate) fn read(dir: &Path) -> Result<Option<String>, String> {
    let path = dir.join(IDENTITY_FILE);
    let text = match read_nofollow(dir) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("{} could not be read: {e}", path.display())),
    };
    let mut lines = text.lines();
    if lines.next() != Some(FIRST_LINE) {
        return Err(format!(
            "{} is not an evspool identity file",
            path.display()
        ));
    }
    match lines
        .find_map(|l| l.strip_prefix("instance "))
        .map(str::trim)
    {
        Some(id) if valid_instance(id) => Ok(Some(id.to_string())),
        _ => Err(format!("{} holds no valid instance id", path.display())),
    }
}

/// Whether `id` can be an instance id (an event id's first part).
pub(crate) fn valid_instance(id: &str) -> bool {
    !id.is_empty() && id.len() <= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Writes the identity file durably (temp file, fsync, rename, fsync dir).
pub(crate) fn write(dir: &Path, instance: &str) -> std::io::Result<()> {
    write_nofollow(dir, &format!("{FIRST_LINE}\ninstance {instance}\n"))?;
    crate::queue::io::sync_dir(dir)
}

/// The identity file's text, read without following a symlink
/// (`crate::owned`, OW3); `None` when it is missing.
fn read_nofollow(dir: &Path) -> std::io::Result<Option<String>> {
    let Some(bytes) = StoreDir::open(dir)?.read(IDENTITY_FILE)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| std::io::Error::other("not UTF-8"))
}

/// Writes `text` to `evspool.id.tmp`, syncs it and renames it over
/// `evspool.id`, all relative to the directory's descriptor and without
/// following a symlink at either name (`crate::owned`, OW3).
fn write_nofollow(dir: &Path, text: &str) -> std::io::Result<()> {
    let tmp = format!("{IDENTITY_FILE}.tmp");
    let d = StoreDir::open(dir)?;
    // A link planted at the temporary name is removed, never written through.
    if std::fs::symlink_metadata(dir.join(&tmp)).is_ok_and(|m| m.file_type().is_symlink()) {
        d.remove(&tmp)?;
    }
    let mut f = d.open_file(&tmp, Access::WriteTruncate)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    d.rename(&tmp, IDENTITY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_round_trips_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), "0123456789ab").unwrap();
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some("0123456789ab"));
        std::fs::write(dir.path().join(IDENTITY_FILE), "garbage").unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.contains("evspool.id"), "{err}");
    }
}
