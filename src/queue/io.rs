//! Where the queue meets the file system: every open, write, `fdatasync`,
//! truncate, rename, unlink and read of a body file or of the store's
//! directories goes through this module, so that
//!
//! - every I/O error is classified in one place ([`errno_is_transient`]): running
//!   out of descriptors or memory, or an interrupted or would-block call,
//!   fails that call only — it is retried or reported, never sticks and never
//!   fails the store closed; anything else (EIO, ENOSPC, EROFS, …) is fatal
//!   for what the call covered;
//! - body files are never opened through a symbolic link (`O_NOFOLLOW`);
//! - a test build (the `failpoints` feature) can inject a fault at every
//!   site ([`crate::faults`]): an error, a short write followed by an error,
//!   or a crash of the process right there. The seeded fault simulation
//!   (`tests/simulation.rs`) drives it.
//!
//! # Invariants
//!
//! - IO1: no body-file I/O of the queue bypasses this module (its callers are
//!   the body-file layer in `log/`, and the directory creates and syncs of
//!   `open/`, `compact.rs` and `storage/`), so a fault injected here reaches
//!   every path a real one would.
//! - IO2: [`errno_is_transient`] is the only classification; `StorageError`
//!   carries its answer.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

/// The I/O sites a fault can be injected at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Site {
    /// Opening an existing body file.
    Open,
    /// Creating a new body file.
    Create,
    /// `pwrite`/`writev` of entries (and zeros written ahead).
    Write,
    /// `fdatasync` of a body file.
    Sync,
    /// `ftruncate` of a body file (cutting a failed write or the zeros).
    Truncate,
    /// Reading a body file.
    Read,
    /// Deleting a drained body file.
    Unlink,
    /// Renaming a file or directory (compaction's swap).
    Rename,
    /// `fsync` of a directory (new files' entries, deletions).
    SyncDir,
    /// Creating a directory.
    CreateDir,
}

impl Site {}

/// Whether an I/O error (its OS error number) fails only the call that met
/// it: out of descriptors (EMFILE, ENFILE) or memory (ENOMEM), a call that
/// would block (EAGAIN) or was interrupted (EINTR). The one classification
/// every site uses (IO2), through `StorageError::is_transient`.
pub(crate) fn errno_is_transient(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR)
    )
}

/// Whether an error means this process ran out of file descriptors (the
/// descriptor budget closes idle body files and tries once more).
pub(crate) fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// What an injected fault does (test builds); nothing in other builds.
#[cfg(feature = "failpoints")]
use crate::faults::Fault;

/// No fault can be injected without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[derive(Clone, Copy)]
enum Fault {}

#[cfg(not(feature = "failpoints"))]
impl Fault {
    fn into_error(self) -> io::Error {
        match self {}
    }

    fn short_len(self, _len: usize) -> Option<usize> {
        match self {}
    }
}

/// Asks the fault hook (test builds only) whether `site` fails for `path`.
#[inline]
fn fault(site: Site, path: &Path) -> Option<Fault> {
    #[cfg(feature = "failpoints")]
    {
        crate::faults::decide(site, path)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (site, path);
        None
    }
}

/// Applies an injected fault that is not a short write: an error, or a crash.
fn inject(site: Site, path: &Path) -> io::Result<()> {
    match fault(site, path) {
        None => Ok(()),
        Some(f) => Err(f.into_error()),
    }
}

/// Opens an existing body file for reading and writing, never through a
/// symbolic link.
pub(crate) fn open_rw(path: &Path) -> io::Result<File> {
    inject(Site::Open, path)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates a new body file (0600); fails if anything is at `path`.
pub(crate) fn create_new(path: &Path) -> io::Result<File> {
    inject(Site::Create, path)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes every byte of `parts`, in order, at `offset`.
pub(crate) fn write_at(file: &File, path: &Path, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    match fault(Site::Write, path) {
        None => {}
        Some(f) => {
            // A short write leaves a prefix on disk, as a full disk or a
            // crash in the middle of a write would.
            if let Some(keep) = f.short_len(len) {
                let mut left = keep;
                let mut at = offset;
                for p in parts {
                    let n = p.len().min(left);
                    if n == 0 {
                        break;
                    }
                    file.write_all_at(&p[..n], at)?;
                    at += n as u64;
                    left -= n;
                }
            }
            return Err(f.into_error());
        }
    }
    match parts {
        // One buffer: one `pwrite`, no seek.
        [one] => file.write_all_at(one, offset),
        _ => write_all_vectored_at(file, parts, offset),
    }
}

/// `fdatasync`s a file.
pub(crate) fn sync_data(file: &File, path: &Path) -> io::Result<()> {
    inject(Site::Sync, path)?;
    file.sync_data()
}

/// Cuts a file to `len` bytes.
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> io::Result<()> {
    inject(Site::Truncate, path)?;
    file.set_len(len)
}

/// The length of an open file.
pub(crate) fn len(file: &File, path: &Path) -> io::Result<u64> {
    inject(Site::Read, path)?;
    file.metadata().map(|m| m.len())
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns
/// how many bytes were read.
pub(crate) fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    inject(Site::Read, path)?;
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads `len` bytes at `offset` into a new buffer, fewer if the file ends
/// first; the buffer is not zeroed first (rustix reads into its spare
/// capacity: zeroing a chunk's span was ~5 % of a drain).
pub(crate) fn read_vec_at(
    file: &File,
    path: &Path,
    len: usize,
    offset: u64,
) -> io::Result<Vec<u8>> {
    inject(Site::Read, path)?;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The allocation may hold more than asked for: keep the span alone.
    buf.truncate(len);
    Ok(buf)
}

/// Deletes a file.
pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    inject(Site::Unlink, path)?;
    std::fs::remove_file(path)
}

/// Renames `from` to `to`.
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    inject(Site::Rename, from)?;
    std::fs::rename(from, to)
}

/// `fsync`s a directory, making the entries created, renamed or deleted in
/// it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    inject(Site::SyncDir, dir)?;
    File::open(dir)?.sync_all()
}

/// Makes one directory (0700).
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    inject(Site::CreateDir, dir)?;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Writes every byte of `parts`, in order, at `offset`: one `writev` per call
/// from the slices where they are, retried after short writes and interrupts.
/// Writes to a segment are serialized by its topic's log lock and reads use
/// `pread`, so moving the file's cursor here disturbs nobody.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    use std::io::{IoSlice, Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut bufs = &mut slices[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match f.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "writev wrote nothing",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes `dir` and its missing parents (0700); with `sync`, fsyncs the parent of
/// every directory it created, so the new entries survive power loss.
/// A relative `dir` of one component has the current directory as parent.
pub(crate) fn create_dirs(dir: &Path, sync: bool) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    if let Some(parent) = parent {
        create_dirs(parent, sync)?;
    }
    match create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    if sync && let Some(parent) = parent {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_memory_and_interrupts_are_transient_and_the_rest_is_not() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EAGAIN,
            libc::EINTR,
        ] {
            assert!(errno_is_transient(Some(errno)), "{errno}");
        }
        for errno in [
            libc::EIO,
            libc::ENOSPC,
            libc::EROFS,
            libc::EBADF,
            libc::EDQUOT,
        ] {
            assert!(!errno_is_transient(Some(errno)), "{errno}");
        }
        assert!(!errno_is_transient(
            io::Error::other("no errno").raw_os_error()
        ));
    }

    #[test]
    fn a_body_file_is_never_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"someone else's").unwrap();
        let link = dir.path().join("1.seg");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_rw(&link).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        let made = dir.path().join("2.seg");
        std::os::unix::fs::symlink(&target, &made).unwrap();
        assert!(create_new(&made).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"someone else's");
    }
}
