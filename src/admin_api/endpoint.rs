//! Where a running daemon can be reached: the address file and the admin
//! socket in the store directory.

use serde::{Deserialize, Serialize};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// The file a running daemon writes into the store directory (`0600`).
pub const ADMIN_FILE: &str = "evspool.admin";

/// The admin socket in the store directory (`0600`, in the `0700` directory).
pub const SOCKET_FILE: &str = "evspool.sock";

/// What a daemon advertises in [`ADMIN_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminAddress {
    /// Base URL of the daemon's TCP listener (ingest), e.g. `http://127.0.0.1:8787`.
    pub url: String,
    /// The daemon's pid.
    pub pid: u32,
    /// Where the admin socket is when the store's file system cannot hold one
    /// (some FUSE and network file systems): in [`fallback_dir`]. Absent: it
    /// is `<dir>/evspool.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// The admin socket of the store in `dir`: where its daemon says it is, or
/// `<dir>/evspool.sock`.
pub fn socket_file(dir: &Path) -> PathBuf {
    read_address(dir)
        .and_then(|a| a.socket)
        .unwrap_or_else(|| dir.join(SOCKET_FILE))
}

/// The [`AdminAddress`] in the store directory `dir`, read without following
/// a symlink (`evspool::owned`, OW3); `None` when missing or unreadable.
pub fn read_address(dir: &Path) -> Option<AdminAddress> {
    let bytes = evspool::owned::StoreDir::open(dir)
        .ok()?
        .read(ADMIN_FILE)
        .ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Where a daemon puts its admin socket when the store directory cannot hold
/// one: `$XDG_RUNTIME_DIR/evspool`, else `/tmp/evspool-<uid>`; the daemon
/// creates it `0700` and refuses it unless this user owns it and nobody else
/// can enter it.
pub fn fallback_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_dir() => Path::new(&d).join("evspool"),
        _ => {
            use std::os::unix::fs::MetadataExt as _;
            let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
            PathBuf::from(format!("/tmp/evspool-{uid}"))
        }
    }
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes on
/// Linux, one of them the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A path to bind or connect the admin socket of a store directory by.
///
/// A socket address holds at most 107 bytes of path. For a store directory
/// deeper than that, the path goes through `/proc/self/fd/N/` of an open
/// handle on the directory, which this value keeps open for as long as it
/// lives (keep it alive as long as the listener or client that uses it).
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    _dir: Option<std::fs::File>,
}

impl SocketPath {
    /// The admin socket of the store in `dir`.
    ///
    /// # Errors
    ///
    /// Opening `dir` fails (only tried when its socket path is too long).
    pub fn in_dir(dir: &Path) -> std::io::Result<Self> {
        let direct = dir.join(SOCKET_FILE);
        if direct.as_os_str().len() <= MAX_SOCKET_PATH {
            return Ok(Self {
                path: direct,
                _dir: None,
            });
        }
        let handle = std::fs::File::open(dir)?;
        let path = PathBuf::from(format!(
            "/proc/self/fd/{}/{SOCKET_FILE}",
            handle.as_raw_fd()
        ));
        Ok(Self {
            path,
            _dir: Some(handle),
        })
    }

    /// The admin socket of the store in `dir`, wherever its daemon put it
    /// ([`socket_file`]).
    ///
    /// # Errors
    ///
    /// As [`SocketPath::in_dir`].
    pub fn for_store(dir: &Path) -> std::io::Result<Self> {
        let file = socket_file(dir);
        match file.parent() {
            Some(parent) if file.file_name() == Some(std::ffi::OsStr::new(SOCKET_FILE)) => {
                Self::in_dir(parent)
            }
            _ => Ok(Self {
                path: file,
                _dir: None,
            }),
        }
    }

    /// A socket at `file` (a short path, such as one in [`fallback_dir`]).
    pub fn at(file: PathBuf) -> Self {
        Self {
            path: file,
            _dir: None,
        }
    }

    /// The path to hand to `bind` or `connect`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_directory_uses_the_socket_path_itself() {
        let p = SocketPath::in_dir(Path::new("/var/lib/evspool")).unwrap();
        assert_eq!(p.path(), Path::new("/var/lib/evspool/evspool.sock"));
    }

    #[test]
    fn a_deep_directory_goes_through_an_open_handle_that_resolves_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let p = SocketPath::in_dir(&deep).unwrap();
        assert!(p.path().as_os_str().len() <= MAX_SOCKET_PATH, "{p:?}");
        assert!(p.path().starts_with("/proc/self/fd/"), "{p:?}");
        std::fs::write(deep.join(SOCKET_FILE), b"x").unwrap();
        assert_eq!(std::fs::read(p.path()).unwrap(), b"x");
    }
}
