//! What is on disk at any moment, checked by copying the live store's files (the
//! state a `kill -9` would leave) and opening the copy.

use evspool::{Queue, QueueConfig};
use std::path::Path;
use std::time::{Duration, Instant};

/// sled never flushes on its own during these tests: only the queue's flushes count.
fn config() -> QueueConfig {
    QueueConfig {
        commit_interval: Duration::from_millis(5),
        flush_interval: Duration::from_secs(3600),
        ..QueueConfig::default()
    }
}

/// Copies the sled files of a running store, as a `kill -9` would leave them.
/// Copies a directory tree (what `kill -9` leaves on disk, taken while live).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn crash_copy(q: &Queue, to: &Path) -> Queue {
    copy_dir(&q.dir().join("db"), &to.join("db"));
    // Body generation files after the database: what a crash leaves is never
    // older than the index records naming it.
    if q.dir().join("bodies").exists() {
        copy_dir(&q.dir().join("bodies"), &to.join("bodies"));
    }
    Queue::open(to, config()).unwrap()
}

#[tokio::test]
async fn an_event_a_consumer_can_lease_is_already_on_disk() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path().join("live"), config()).unwrap();
        // Metadata and an old event are flushed; the new one is only buffered.
        let _ = q.enqueue_durable("t", b"old".to_vec()).await.unwrap();
        let old = q.lease("t", 10).unwrap().unwrap();
        q.ack(old).unwrap();
        let seq = q
            .enqueue("t", format!("new {round}").into_bytes())
            .unwrap()
            .id()
            .unwrap()
            .seq();
        let deadline = Instant::now() + Duration::from_secs(5);
        let lease = loop {
            if let Some(l) = q.lease("t", 10).unwrap() {
                break l;
            }
            assert!(
                Instant::now() < deadline,
                "the buffered event was never committed"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(lease.events()[0].seq(), seq);
        let copy = crash_copy(&q, &dir.path().join("copy"));
        let seen: Vec<u64> = copy
            .peek("t", 0, 10)
            .unwrap()
            .iter()
            .map(|p| p.event.seq())
            .collect();
        assert!(
            seen.contains(&seq),
            "round {round}: seq {seq} was leased but a crash now would lose it (on disk: {seen:?})"
        );
        // And a restart after that crash would never hand the seq to another event.
        let next = copy
            .enqueue("t", b"after".to_vec())
            .unwrap()
            .id()
            .unwrap()
            .seq();
        assert!(next > seq, "round {round}: seq {next} reused after a crash");
        drop(lease);
    }
}

#[tokio::test]
async fn a_returned_durable_enqueue_and_a_returned_sync_are_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path().join("live"), config()).unwrap();
    let durable = q
        .enqueue_durable("t", b"durable".to_vec())
        .await
        .unwrap()
        .id()
        .unwrap()
        .seq();
    let copy = crash_copy(&q, &dir.path().join("copy1"));
    let seen: Vec<(u64, Vec<u8>)> = copy
        .peek("t", 0, 10)
        .unwrap()
        .iter()
        .map(|p| (p.event.seq(), p.event.payload.to_vec()))
        .collect();
    assert_eq!(seen, vec![(durable, b"durable".to_vec())]);
    assert_eq!(
        copy.instance_id(),
        q.instance_id(),
        "the copy is the same store"
    );
    drop(copy);

    let buffered: Vec<u64> = (0..5)
        .map(|i| {
            q.enqueue("u", vec![b'0' + i; 3])
                .unwrap()
                .id()
                .unwrap()
                .seq()
        })
        .collect();
    q.sync().await.unwrap();
    let copy = crash_copy(&q, &dir.path().join("copy2"));
    let seen: Vec<u64> = copy
        .peek("u", 0, 10)
        .unwrap()
        .iter()
        .map(|p| p.event.seq())
        .collect();
    assert_eq!(seen, buffered, "sync made every buffered event durable");
}

#[tokio::test]
async fn a_crash_with_zeros_written_ahead_of_a_body_file_loses_and_invents_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        fsync: true,
        ..config()
    };
    let q = Queue::open(dir.path().join("live"), cfg.clone()).unwrap();
    let payload = |i: usize| format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(280));
    let mut acked = Vec::new();
    for b in 0..30 {
        let batch: Vec<Vec<u8>> = (0..50).map(|i| payload(b * 50 + i).into_bytes()).collect();
        for o in q.enqueue_batch_durable("t", batch).await.unwrap() {
            acked.push(o.id().unwrap().seq());
        }
    }
    let bodies = q.dir().join("bodies/t");
    let files: Vec<_> = std::fs::read_dir(&bodies).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let len = files[0].metadata().unwrap().len();
    let size = q.stats().size_on_disk;
    // What kill -9 leaves now: a body file longer than its entries.
    let copy_dir_path = dir.path().join("copy");
    let copy = crash_copy(&q, &copy_dir_path);
    assert!(
        len > 30 * 50 * 300,
        "the body file is written ahead: {len} bytes"
    );
    let file = std::fs::read(files[0].path()).unwrap();
    assert!(
        file[file.len() - 4096..].iter().all(|b| *b == 0),
        "the body file ends in zeros written ahead of its entries"
    );
    assert!(size >= len, "disk usage {size} counts the zeros ({len})");
    let seen: Vec<u64> = copy
        .peek("t", 0, 5_000)
        .unwrap()
        .iter()
        .map(|p| p.event.seq())
        .collect();
    assert_eq!(seen, acked, "every acknowledged event, nothing else");
    assert_eq!(copy.stats().total.events, 1_500);
    // The copy goes on in a new generation; a clean close cuts its zeros.
    let more = copy
        .enqueue_batch_durable("t", (0..50).map(|i| payload(5_000 + i).into_bytes()))
        .await
        .unwrap();
    assert!(more.iter().all(|o| o.id().is_some()));
    copy.close();
    let again = Queue::open(&copy_dir_path, cfg.clone()).unwrap();
    assert_eq!(again.stats().total.events, 1_550);
    again.close();
    q.close();
    let entries_end = std::fs::read_dir(&bodies)
        .unwrap()
        .flatten()
        .map(|f| f.metadata().unwrap().len())
        .sum::<u64>();
    assert!(
        entries_end < len,
        "close cut the zeros: {entries_end} of {len}"
    );
}

/// The system calls `evspool send` makes to put one event in a new store
/// `<tmp>/a/b/store` with `fsync = true`, as `strace -f -y` prints them (file
/// descriptors with their paths): the directories made, and every sync.
fn sends_syscalls_into_a_new_store(tmp: &Path) -> (std::path::PathBuf, Vec<String>) {
    let config = tmp.join("evspool.toml");
    std::fs::write(&config, "[queue]\nfsync = true\n").unwrap();
    let store = tmp.join("a").join("b").join("store");
    let trace = tmp.join("trace");
    let run = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=mkdir,mkdirat,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(assert_cmd::cargo::cargo_bin("evspool"))
        .arg("--dir")
        .arg(&store)
        .arg("--config")
        .arg(&config)
        .args(["send", "--topic", "track", r#"{"event":"signup"}"#])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "strace could not run ({e}): this test reads the system calls of `evspool send`; install it (apt-get install strace), as .ci/run does"
            )
        });
    assert!(
        run.status.success(),
        "`strace evspool send` failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (store, lines)
}

#[test]
fn with_fsync_a_new_store_directory_and_its_new_parents_are_synced_before_the_first_event_is() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = tmp.path().canonicalize().unwrap();
    let (store, lines) = sends_syscalls_into_a_new_store(&tmp_path);
    // The event is acknowledged after its body file's first fdatasync.
    let first_body_sync = lines
        .iter()
        .position(|l| l.contains(".seg>)"))
        .unwrap_or_else(|| {
            panic!(
                "no fdatasync of a body file in the trace:\n{}",
                lines.join("\n")
            )
        });
    for made in [
        store.as_path(),
        store.parent().unwrap(),
        store.parent().unwrap().parent().unwrap(),
    ] {
        let made_call = format!("mkdir(\"{}\", 0700)", made.display());
        let mkdir = lines
            .iter()
            .position(|l| l.contains(&made_call) && l.trim_end().ends_with("= 0"))
            .unwrap_or_else(|| panic!("{} was not made:\n{}", made.display(), lines.join("\n")));
        let parent = format!("<{}>)", made.parent().unwrap().display());
        let parent_sync = lines
            .iter()
            .enumerate()
            .skip(mkdir)
            .find(|(_, l)| l.contains("fsync(") && l.contains(&parent))
            .map(|(i, _)| i);
        match parent_sync {
            Some(i) if i < first_body_sync => {}
            other => panic!(
                "{} was made at line {mkdir} of the trace, but its parent {} was not synced before the event's body file (line {first_body_sync}; parent sync: {other:?}):\n{}",
                made.display(),
                made.parent().unwrap().display(),
                lines.join("\n")
            ),
        }
    }
}
