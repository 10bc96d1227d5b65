//! Leaving fail-closed without a restart: a store that failed closed because
//! its file system filled up is reopened in place ([`Queue::reopen`]) once
//! that file system has room again.
//!
//! Checked every [`EVERY`]; "room" is [`ROOM`] bytes free to this user. Other
//! causes (an I/O error of the disk, say) wait for an operator: a restart.

use super::AppState;
use evspool::Queue;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

/// How often a failed-closed store is looked at.
pub(crate) const EVERY: Duration = Duration::from_secs(2);

/// Free bytes a full file system must have again before the store reopens:
/// twice sled's 8 MiB ballast, so the reopen itself cannot fill it again.
pub(crate) const ROOM: u64 = 16 * 1024 * 1024;

/// Whether a fail-closed reason says the file system was full.
fn disk_full(reason: &str) -> bool {
    reason.contains("No space left") || reason.contains("os error 28")
}

/// Bytes free to this user on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Watches the daemon's queue (until the state is dropped or the task
/// aborted) and reopens it once its full file system has room again.
pub(crate) async fn reopen_when_room(state: Weak<AppState>, dir: PathBuf) {
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(state) = state.upgrade() else { return };
        let queue = state.queue.clone();
        drop(state);
        if reopen_if_room(&queue, free_bytes(&dir)).await == Reopen::Stopped {
            return;
        }
    }
}

/// What one look at a queue did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reopen {
    /// The queue is open, failed for a cause other than a full disk, or its
    /// disk has no room yet.
    Waiting,
    /// The queue was reopened and accepts events again.
    Reopened,
    /// Reopening failed; tried again at the next look.
    Failed,
    /// The runtime is shutting down.
    Stopped,
}

/// Reopens `queue` if it failed closed on a full disk and `free` bytes are
/// at least [`ROOM`].
pub(crate) async fn reopen_if_room(queue: &Queue, free: Option<u64>) -> Reopen {
    let Some(reason) = queue.stats().failed_closed else {
        return Reopen::Waiting;
    };
    if !disk_full(&reason) || free.is_none_or(|b| b < ROOM) {
        return Reopen::Waiting;
    }
    let dir = queue.dir().to_path_buf();
    let q = queue.clone();
    match tokio::task::spawn_blocking(move || q.reopen()).await {
        Ok(Ok(())) => {
            ::metrics::counter!("evspool_store_reopens_total").increment(1);
            tracing::info!(dir = %dir.display(), "The file system has room again: the store was reopened and accepts events.");
            Reopen::Reopened
        }
        Ok(Err(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "Reopening the store failed; trying again later.");
            Reopen::Failed
        }
        // A panic inside `reopen` (a bug) is a failed reopen, tried again
        // at the next look: taken for a shutdown, it ended this task and
        // the store stayed closed until a restart.
        Err(e) if e.is_panic() => {
            tracing::error!(dir = %dir.display(), "Reopening the store panicked; trying again later.");
            Reopen::Failed
        }
        Err(_) => Reopen::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fault hook is process-wide: tests that install one take turns, or one
    /// test's `clear` removes the other's hook mid-write.
    static FAULT_HOOK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[test]
    fn only_a_full_disk_is_waited_out() {
        assert!(disk_full(
            "storage append chunk failed: No space left on device (os error 28)"
        ));
        assert!(!disk_full(
            "storage fdatasync body generation failed: Input/output error (os error 5)"
        ));
    }

    #[tokio::test]
    async fn a_reopen_that_panics_is_tried_again_not_taken_for_a_shutdown() {
        let _turn = FAULT_HOOK.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), evspool::QueueConfig::default()).unwrap();
        let root = dir.path().to_path_buf();
        evspool::faults::install(move |site, path: &Path| {
            (site == evspool::faults::Site::Write && path.starts_with(&root))
                .then_some(evspool::faults::Fault::Error(28))
        });
        let refused = q.enqueue_durable("t", "{}").await;
        evspool::faults::clear();
        assert!(refused.is_err(), "{refused:?}");
        let reason = q.stats().failed_closed.expect("failed closed");
        assert!(disk_full(&reason), "{reason}");
        fail::cfg("queue::reopen", "1*panic(a bug in reopen)").unwrap();
        let first = reopen_if_room(&q, Some(ROOM)).await;
        fail::remove("queue::reopen");
        assert_eq!(first, Reopen::Failed);
        assert_eq!(reopen_if_room(&q, Some(ROOM)).await, Reopen::Reopened);
        let _ = q.enqueue_durable("t", "{}").await.unwrap();
        q.close();
    }

    #[test]
    fn free_bytes_are_read_from_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|b| b > 0));
    }

    async fn failed_closed_by(errno: i32) -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), evspool::QueueConfig::default()).unwrap();
        // Only this store's files: other tests of the binary run alongside.
        let mine = dir.path().to_path_buf();
        evspool::faults::install(move |site, path: &Path| {
            (site == evspool::faults::Site::Write && path.starts_with(&mine))
                .then_some(evspool::faults::Fault::Error(errno))
        });
        let refused = q.enqueue_durable("t", b"{}".to_vec()).await;
        evspool::faults::clear();
        assert!(refused.is_err(), "{refused:?}");
        assert!(q.stats().failed_closed.is_some());
        (dir, q)
    }

    #[tokio::test]
    async fn a_store_full_disk_failure_is_reopened_once_there_is_room_and_no_other() {
        let _turn = FAULT_HOOK.lock().await;
        let (_dir, q) = failed_closed_by(libc::EIO).await;
        assert_eq!(reopen_if_room(&q, Some(u64::MAX)).await, Reopen::Waiting);
        assert!(
            q.stats().failed_closed.is_some(),
            "an I/O error waits for an operator"
        );
        q.close();

        let (_dir, q) = failed_closed_by(libc::ENOSPC).await;
        assert_eq!(reopen_if_room(&q, Some(ROOM - 1)).await, Reopen::Waiting);
        assert_eq!(reopen_if_room(&q, None).await, Reopen::Waiting);
        assert!(q.stats().failed_closed.is_some());
        assert_eq!(reopen_if_room(&q, Some(ROOM)).await, Reopen::Reopened);
        assert_eq!(q.stats().failed_closed, None);
        let accepted = q.enqueue_durable("t", b"{\"n\":1}".to_vec()).await.unwrap();
        assert!(accepted.id().is_some());
        assert_eq!(q.stats().total.events, 1);
        assert_eq!(
            reopen_if_room(&q, Some(ROOM)).await,
            Reopen::Waiting,
            "an open store is left alone"
        );
        q.close();
    }
}
