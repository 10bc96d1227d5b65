//! sled's directory: why it could not be opened, and facts read from the
//! file system before or instead of opening sled.

use super::error::StorageError;
use std::path::Path;

/// Whether sled's directory holds no data: no data file (or an empty one)
/// and no blobs, as after a first open cut short while sled wrote its
/// `conf` (two writes, before any data file).
pub(crate) fn holds_no_data(db_path: &Path) -> bool {
    let data_empty =
        std::fs::symlink_metadata(db_path.join("db")).map_or(true, |m| m.is_file() && m.len() == 0);
    let no_blobs =
        std::fs::read_dir(db_path.join("blobs")).map_or(true, |mut d| d.next().is_none());
    data_empty && no_blobs
}

/// Moves stale `snap.*.generating` files (left by a crash during a snapshot)
/// into `aside`, returning how many were moved.
pub(crate) fn move_stale_snapshots(db_path: &Path, aside: &Path) -> std::io::Result<usize> {
    let mut moved = 0;
    let Ok(entries) = std::fs::read_dir(db_path) else {
        return Ok(0);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::create_dir_all(aside)?;
            std::fs::rename(entry.path(), aside.join(&*name))?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// `fdatasync`s sled's data file and blobs in sled's directory `dir`.
pub(super) fn sync_data_files(dir: &Path) -> Result<(), StorageError> {
    let sync = |path: &Path| -> Result<(), StorageError> {
        std::fs::OpenOptions::new()
            .read(true)
            .open(path)
            .and_then(|f| crate::queue::io::sync_data(&f, path))
            .map_err(|e| StorageError::io("fdatasync", e))
    };
    sync(&dir.join("db"))?;
    // sled writes blobs (fragments over a quarter segment) to their own
    // files and never syncs them; power-loss safety needs them synced too.
    if let Ok(blobs) = std::fs::read_dir(dir.join("blobs")) {
        for entry in blobs.flatten() {
            match sync(&entry.path()) {
                // A blob sled deleted meanwhile is no longer needed.
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Why the sled database could not be opened.
pub(crate) enum OpenFailure {
    /// Another process holds sled's lock on the data file.
    Locked(String),
    /// The files are damaged: open panicked or sled reported corruption.
    Damaged(String),
    /// Any other I/O error (permissions, missing directory, ...).
    Io(std::io::Error),
}
