//! The store trusts only what it owns (DESIGN guarantee 8), as PostgreSQL
//! checks its data directory and OpenSSH its `StrictModes`.
//!
//! # What is checked
//!
//! - **OW1: the store directory belongs to the effective user** and is not
//!   writable by its group or by others; else [`OpenError::Untrusted`], before
//!   anything in it is read, created or changed. *Mechanism:* `fstat` of a
//!   descriptor opened on the directory ([`StoreDir::trusted`]), so the
//!   directory checked is the one used for the files below. A symlink in the
//!   store's own path is followed (as PostgreSQL allows a linked data
//!   directory): it is the directory at its end that must be ours.
//! - **OW2: its parent is not writable by others without the sticky bit**
//!   (a world-writable `/srv`, or a shared working directory, whose users could
//!   rename the store away and put their own in its place). `/tmp` (sticky) is
//!   fine. A parent writable by a *group* is not checked.
//! - **OW3: the files evspool opens at the top of the store are opened without
//!   following symlinks** — `evspool.lock`, `evspool.id`, `evspool.id.tmp`, the
//!   ballast, the daemon's `evspool.admin` — with `O_NOFOLLOW` relative to the
//!   directory's descriptor (`openat`); `ELOOP` (a planted link) is an error
//!   that names the file. *Mechanism:* [`StoreDir::open_file`].
//!
//! Not here: files below `bodies/` (the body-file layer opens those with
//! `O_NOFOLLOW`, `queue/io.rs`), and sled's own files under `db/` (sled opens
//! them by path; after OW1 nobody but the owner can have put a link there).

use crate::error::OpenError;
use rustix::fs::{Mode, OFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A store directory opened by descriptor; files in it are opened relative
/// to that descriptor, never through a symlink.
#[derive(Debug)]
pub struct StoreDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// How [`StoreDir::open_file`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only; the file must exist.
    Read,
    /// Read and write, created `0600` when missing, never truncated (the lock).
    ReadWriteCreate,
    /// Write only, created `0600` or truncated.
    WriteTruncate,
    /// Write only, created `0600`; an existing file (or link) is an error.
    WriteNew,
}

impl StoreDir {
    /// Opens `dir` without checking who owns it (for a path already checked,
    /// or one this process just created).
    ///
    /// # Errors
    ///
    /// `dir` cannot be opened as a directory.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: dir.to_path_buf(),
        })
    }

    /// Opens `dir` and checks that this user may trust it (OW1, OW2).
    ///
    /// # Errors
    ///
    /// [`OpenError::Untrusted`] naming the owner and the mode, or
    /// [`OpenError::Io`] when it cannot be opened or examined.
    pub fn trusted(dir: &Path) -> Result<Self, OpenError> {
        let io = |source: std::io::Error| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let this = Self::open(dir).map_err(io)?;
        let st = rustix::fs::fstat(&this.fd).map_err(|e| io(e.into()))?;
        check(dir, dir, st.st_uid, st.st_mode, Check::Store)?;
        if let Some(parent) = parent_of(dir) {
            let st = rustix::fs::stat(&parent).map_err(|e| OpenError::Io {
                path: parent.clone(),
                source: e.into(),
            })?;
            check(dir, &parent, st.st_uid, st.st_mode, Check::Parent)?;
        }
        Ok(this)
    }

    /// The directory's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` (one path component) in the directory without following
    /// a symlink (OW3). A new file is `0600`.
    ///
    /// # Errors
    ///
    /// The open fails; a symlink fails with `ELOOP` ("too many levels of
    /// symbolic links"), which the message names as a link.
    pub fn open_file(&self, name: &str, access: Access) -> std::io::Result<std::fs::File> {
        let base = OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let flags = match access {
            Access::Read => OFlags::RDONLY,
            Access::ReadWriteCreate => OFlags::RDWR | OFlags::CREATE,
            Access::WriteTruncate => OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            Access::WriteNew => OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        };
        let fd = rustix::fs::openat(&self.fd, name, base | flags, Mode::from_raw_mode(0o600))
            .map_err(|e| named(&self.path.join(name), e))?;
        let file = std::fs::File::from(fd);
        if access != Access::Read {
            // A file that was there already keeps its mode through O_CREAT:
            // make it owner-only (and refuse what is not a regular file).
            owner_only(&file).map_err(|e| named_io(&self.path.join(name), e))?;
        }
        Ok(file)
    }

    /// Reads `name` whole, without following a symlink; `None` if it is missing.
    ///
    /// # Errors
    ///
    /// As [`StoreDir::open_file`], or the read fails.
    pub fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read as _;
        let mut f = match self.open_file(name, Access::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(Some(out))
    }

    /// Writes `bytes` to `name` (`0600`, created or truncated), without
    /// following a symlink.
    ///
    /// # Errors
    ///
    /// As [`StoreDir::open_file`], or the write fails.
    pub fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        self.open_file(name, Access::WriteTruncate)?
            .write_all(bytes)
    }

    /// Renames `from` to `to`, both in the directory (a link named `to` is
    /// replaced, not followed).
    ///
    /// # Errors
    ///
    /// The rename fails.
    pub fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to)
            .map_err(|e| named(&self.path.join(from), e))
    }

    /// Removes the file `name` (a link is removed, not followed).
    ///
    /// # Errors
    ///
    /// The unlink fails (`NotFound` when it is not there).
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty()).map_err(Into::into)
    }

    /// Makes the directory itself `0700` (through its descriptor).
    pub fn restrict(&self) {
        let _ = rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(0o700));
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Creates (or truncates) a file at a path the user chose, such as
/// `export -o`: not through a symlink (OW3), and owner-only (`0600`) even when
/// it existed with a looser mode.
///
/// # Errors
///
/// The open fails (a symlink: `ELOOP`, named as a link), or the path is not a
/// regular file.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| named(path, e))?;
    let file = std::fs::File::from(fd);
    owner_only(&file).map_err(|e| named_io(path, e))?;
    Ok(file)
}

/// `fchmod 0600`, refusing what is not a regular file.
fn owner_only(file: &std::fs::File) -> std::io::Result<()> {
    let st = rustix::fs::fstat(file)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    if st.st_mode & 0o777 != 0o600 {
        rustix::fs::fchmod(file, Mode::from_raw_mode(0o600))?;
    }
    Ok(())
}

/// An errno with the path, and `ELOOP` said as what it means here.
fn named(path: &Path, e: rustix::io::Errno) -> std::io::Error {
    if e == rustix::io::Errno::LOOP {
        return std::io::Error::other(format!(
            "{} is a symbolic link; evspool does not follow links in its store (remove it)",
            path.display()
        ));
    }
    named_io(path, e.into())
}

fn named_io(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Store,
    Parent,
}

/// The parent of `dir` as it will be resolved (`.` for a bare name).
fn parent_of(dir: &Path) -> Option<PathBuf> {
    match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}

fn check(dir: &Path, path: &Path, uid: u32, mode: u32, what: Check) -> Result<(), OpenError> {
    let me = rustix::process::geteuid().as_raw();
    let reason = match what {
        Check::Store if uid != me => Some("it belongs to another user"),
        Check::Store if mode & 0o022 != 0 => Some("it is writable by its group or by others"),
        Check::Parent if mode & 0o002 != 0 && mode & 0o1000 == 0 => Some(
            "its parent directory is writable by others without the sticky bit, so they could replace the store",
        ),
        _ => None,
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(OpenError::Untrusted {
            dir: dir.to_path_buf(),
            path: path.to_path_buf(),
            owner_uid: uid,
            owner: user_name(uid).unwrap_or_else(|| format!("uid {uid}")),
            mode: mode & 0o7777,
            euid: me,
            reason,
        }),
    }
}

/// The name of user `uid` from `/etc/passwd`, if it is listed there.
pub fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn set_mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn a_group_or_world_writable_store_is_untrusted_and_named_with_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o700);
        StoreDir::trusted(&dir).unwrap();
        for m in [0o770, 0o702, 0o777] {
            set_mode(&dir, m);
            let err = StoreDir::trusted(&dir).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, OpenError::Untrusted { mode, .. } if mode == m),
                "{text}"
            );
            assert!(text.contains(&format!("{m:04o}")), "{text}");
        }
    }

    #[test]
    fn a_parent_writable_by_others_needs_the_sticky_bit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o700);
        set_mode(tmp.path(), 0o777);
        let err = StoreDir::trusted(&dir).unwrap_err();
        assert!(err.to_string().contains("sticky"), "{err}");
        set_mode(tmp.path(), 0o1777);
        StoreDir::trusted(&dir).unwrap();
        set_mode(tmp.path(), 0o700);
    }

    #[test]
    fn files_are_not_opened_through_links_and_existing_files_become_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let d = StoreDir::open(tmp.path()).unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("link")).unwrap();
        for access in [Access::Read, Access::ReadWriteCreate, Access::WriteTruncate] {
            let err = d.open_file("link", access).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        // O_EXCL never follows a link either: the name is taken.
        let err = d.open_file("link", Access::WriteNew).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        assert!(d.write("link", b"x").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let out = tmp.path().join("out");
        std::fs::write(&out, "old").unwrap();
        set_mode(&out, 0o644);
        drop(create_private_file(&out).unwrap());
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0);
        assert!(create_private_file(&tmp.path().join("link")).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn root_is_named_from_the_password_file() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }
}
