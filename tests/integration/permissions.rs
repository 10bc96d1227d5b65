//! The store is private: its directory (and every directory in it) is 0700 and
//! every file 0600, whoever creates them and whatever the umask. The library
//! chmods at open, close and compact; the binary also sets umask 077, so files
//! sled creates while the daemon runs are private from the start.
//!
//! (`queue_corruption::the_store_directory_is_0700_and_its_files_0600` covers a
//! library store after durable writes and close.)

use evspool::{Queue, QueueConfig};
use evspool_testkit::daemon::Evspool;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every directory and file (and socket) under `root` (itself included) whose
/// mode is not 0700 / 0600, and how many entries were checked.
fn loose_modes(root: &Path) -> (Vec<String>, usize) {
    fn walk(p: &Path, bad: &mut Vec<String>, seen: &mut usize) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return; // removed while we looked (sled renames snapshots)
        };
        *seen += 1;
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        let socket = std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type());
        if (meta.is_file() || meta.is_dir() || socket) && mode != want {
            bad.push(format!("{} is {mode:o}", p.display()));
        }
        if meta.is_dir() {
            let Ok(entries) = std::fs::read_dir(p) else {
                return;
            };
            for e in entries.flatten() {
                walk(&e.path(), bad, seen);
            }
        }
    }
    let (mut bad, mut seen) = (Vec::new(), 0);
    walk(root, &mut bad, &mut seen);
    (bad, seen)
}

fn assert_private(root: &Path, when: &str) -> usize {
    let (bad, seen) = loose_modes(root);
    assert!(bad.is_empty(), "{when}: {bad:#?}");
    assert!(seen >= 4, "{when}: the walk saw the store ({seen} entries)");
    seen
}

/// Runs `f` until it is not refused as locked by this very process: a closed
/// queue's lock can outlive `close` by a moment (its threads wind down).
fn retry_locked<T>(f: impl Fn() -> Result<T, evspool::OpenError>) -> T {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(evspool::OpenError::Locked { pid, .. })
                if pid == Some(std::process::id()) && Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

fn config() -> QueueConfig {
    QueueConfig {
        chunk_max_events: 8,
        ..QueueConfig::default()
    }
}

#[tokio::test]
async fn a_library_store_is_private_after_writes_sync_reopen_and_compact_whatever_was_there() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("spool");
    // A store directory (and sled directory) someone made world-readable.
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("db"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let q = Queue::open(&dir, config()).unwrap();
    for i in 0..2_000u32 {
        let _ = q
            .enqueue(
                "t",
                format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes(),
            )
            .unwrap();
    }
    q.sync().await.unwrap();
    let lease = q.lease("t", 100).unwrap().unwrap();
    let remaining = 2_000 - lease.events().len() as u64;
    q.ack(lease).unwrap();
    q.close();
    drop(q);
    let after_close = assert_private(&dir, "after writes, sync and close");

    // Loosen everything, as a restore from a backup might; opening tightens it.
    for entry in std::fs::read_dir(dir.join("db")).unwrap().flatten() {
        let mode = if entry.file_type().unwrap().is_dir() {
            0o777
        } else {
            0o666
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // The directory itself only as far as readable: one others can write is
    // refused untouched (`security_store`), not tightened.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let q = retry_locked(|| Queue::open(&dir, config()));
    assert_eq!(q.stats().total.events, remaining);
    assert_private(&dir, "after reopening a loosened store");
    q.close();
    drop(q);

    // Compaction writes a whole new database: private too.
    let report = retry_locked(|| evspool::compact(&dir, &config()));
    assert!(report.after_bytes > 0);
    let after_compact = assert_private(&dir, "after compact");
    let q = retry_locked(|| Queue::open(&dir, config()));
    assert_eq!(
        q.stats().total.events,
        remaining,
        "compact kept every event"
    );
    eprintln!(
        "permissions: {after_close} entries checked after close, {after_compact} after compact"
    );
}

/// The binary run under `umask 000`, so only evspool itself can make its
/// files private.
fn umask0() -> Evspool {
    Evspool::cargo().under(&["sh", "-c", "umask 000; exec \"$0\" \"$@\""])
}

/// `evspool --dir DIR ARGS` under `umask 000`.
fn evspool_umask0(dir: &Path, args: &[&str]) -> Command {
    let mut c = umask0().command(dir, None);
    c.args(args);
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_binary_under_umask_000_creates_only_private_files_while_running_and_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("store");
    let events: Vec<String> = (0..50).map(|i| format!("{{\"uid\":\"p{i}\"}}")).collect();
    let mut args = vec!["send", "--topic", "events"];
    args.extend(events.iter().map(String::as_str));
    run_ok(evspool_umask0(&dir, &args));
    assert_private(&dir, "after `evspool send`");

    let out = run_ok(evspool_umask0(&dir, &["compact"]));
    assert!(!out.is_empty());
    assert_private(&dir, "after `evspool compact`");

    let export = tmp.path().join("export.ndjson");
    run_ok(evspool_umask0(
        &dir,
        &["export", "-o", export.to_str().unwrap()],
    ));
    let mode = std::fs::metadata(&export).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "an export holds event data: owner-only");

    // The daemon: check while it runs (files sled creates as it goes, the
    // admin address file), then after SIGKILL.
    let config = tmp.path().join("evspool.toml");
    std::fs::write(
        &config,
        "active = false\n[server]\nlisten = \"127.0.0.1:0\"\n[queue]\ncommit_interval = \"10ms\"\n",
    )
    .unwrap();
    let d = umask0().start_blocking(&dir, Some(&config), &[], &[]);
    let addr = d.addr().to_string();
    let result = std::panic::catch_unwind(|| {
        let addr = addr.as_str();
        // Post a few batches over raw HTTP so sled writes while we look.
        for i in 0..20 {
            use std::io::{Read, Write};
            let body =
                format!("{{\"uid\":\"d{i}\",\"pad\":\"{}\"}}\n", "y".repeat(4096)).repeat(50);
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).unwrap();
            assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
        }
        let until = Instant::now() + Duration::from_secs(5);
        while !dir.join("evspool.admin").exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(dir.join("evspool.admin").exists());
        assert!(dir.join("evspool.sock").exists(), "the admin socket");
        assert_private(&dir, "while the daemon runs");
    });
    drop(d);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    assert_private(&dir, "after the daemon was killed");
}
