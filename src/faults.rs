//! Fault injection at the queue's I/O sites, for tests (compiled only with
//! the `failpoints` feature, which the test, bench and example builds turn
//! on; never in a release build of the library or the binary).
//!
//! A test installs a hook; every body-file open, create, write, `fdatasync`,
//! truncate, read, unlink, rename, directory sync and directory creation
//! asks it first (`queue/io.rs`) and fails as it says: with an error number,
//! with a short write (a prefix of the bytes reaches the file, then the
//! error), or by crashing the process on the spot (`abort`, as `kill -9`
//! would: no destructor runs). The hook sees the site and the path, so a
//! seeded test decides the same way for the same sequence of calls.
//!
//! The hook is process-wide: tests that install one run in their own binary,
//! one at a time.

use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::queue::io::Site;

/// What an I/O call does instead of its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with this `errno` (EIO, ENOSPC, EMFILE, ...), touching nothing.
    Error(i32),
    /// Writes `per_mille`/1000 of the bytes (always fewer than all), then
    /// fails with `errno`. Sites other than writes treat it as [`Fault::Error`].
    Short {
        /// The error number the call fails with.
        errno: i32,
        /// How much of the write reaches the file, in thousandths.
        per_mille: u16,
    },
    /// Aborts the process before the call.
    Crash,
}

impl Fault {
    /// The error the failed call returns.
    pub(crate) fn into_error(self) -> io::Error {
        match self {
            Fault::Error(errno) | Fault::Short { errno, .. } => io::Error::from_raw_os_error(errno),
            Fault::Crash => std::process::abort(),
        }
    }

    /// For a short write of `len` bytes: how many reach the file.
    pub(crate) fn short_len(self, len: usize) -> Option<usize> {
        match self {
            Fault::Short { per_mille, .. } if len > 0 => {
                Some((len * per_mille.min(1000) as usize / 1000).min(len - 1))
            }
            _ => None,
        }
    }
}

type Hook = Box<dyn FnMut(Site, &Path) -> Option<Fault> + Send>;

static INSTALLED: AtomicBool = AtomicBool::new(false);
static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// Held by a unit test for as long as its hook is installed: there is one
/// hook per process, and unit tests run on parallel threads.
#[cfg(test)]
pub(crate) static TEST_HOOK: Mutex<()> = Mutex::new(());

/// Installs `hook`, replacing any other; every I/O site asks it from now on.
pub fn install(hook: impl FnMut(Site, &Path) -> Option<Fault> + Send + 'static) {
    *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    INSTALLED.store(true, Ordering::Release);
}

/// Removes the hook: I/O works normally again.
pub fn clear() {
    INSTALLED.store(false, Ordering::Release);
    *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Asks the hook about one call (`queue/io.rs`). A crash happens here.
pub(crate) fn decide(site: Site, path: &Path) -> Option<Fault> {
    if !INSTALLED.load(Ordering::Acquire) {
        return None;
    }
    let f = HOOK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|h| h(site, path));
    if f == Some(Fault::Crash) {
        std::process::abort();
    }
    f
}
