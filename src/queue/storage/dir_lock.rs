//! The directory lock: one process per store (sled's own lock is taken
//! later, by sled), and the set of stores this process has open.
//!
//! The lock file holds the holder's pid, so a refused open names it. A
//! [`DirLock`] is the lock held for one open of the store: it lets the
//! directory go (and leaves the set) when it is released or dropped.

use crate::error::OpenError;
use crate::owned::{Access, StoreDir};
use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub(crate) const LOCK_FILE: &str = "evspool.lock";

/// The lock of a store this process has open.
pub(crate) struct DirLock {
    _file: std::fs::File,
    dir: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` and records the store as open here.
    pub(crate) fn take(dir: &Path) -> Result<DirLock, OpenError> {
        let file = take_lock(dir)?;
        opened_here(dir);
        Ok(DirLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        closed_here(&self.dir);
    }
}

/// Stores this process has open (canonical paths): a lock held under our own
/// pid on a store not in this set is a child we forked and that has not
/// exec'd yet (it shares the lock's descriptor until then), not an owner.
static OPEN_HERE: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// Records that this process opened the store in `dir`.
fn opened_here(dir: &Path) {
    OPEN_HERE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(canonical(dir));
}

/// Records that this process let the store in `dir` go.
fn closed_here(dir: &Path) {
    OPEN_HERE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&canonical(dir));
}

fn is_open_here(dir: &Path) -> bool {
    OPEN_HERE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&canonical(dir))
}

/// Takes the directory lock and writes our pid into the lock file.
///
/// A lock held under our own pid on a store this process does not have open
/// is a forked child's inherited descriptor, gone at its `exec`: retried for
/// up to 2 s. Held by another process, or open here: `Locked` at once.
pub(crate) fn take_lock(dir: &Path) -> Result<std::fs::File, OpenError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match try_lock(dir) {
            Err(OpenError::Locked { pid: Some(pid), .. })
                if pid == std::process::id()
                    && !is_open_here(dir)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn try_lock(dir: &Path) -> Result<std::fs::File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let mut file = StoreDir::trusted(dir)?
        .open_file(LOCK_FILE, Access::ReadWriteCreate)
        .map_err(|source| OpenError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.trim().parse::<u32>().ok();
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
                holder: pid.map_or_else(|| "another process".into(), |p| format!("pid {p}")),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(OpenError::Io { path, source }),
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    let _ = file.sync_data();
    Ok(file)
}
