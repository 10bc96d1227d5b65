//! Full disk: a small tmpfs mounted by the test fills up under the store.
//!
//! Mounting needs root: these tests are `#[ignore]`d, so a run without root
//! counts them as ignored; as root, `-- --include-ignored` runs them
//! (`.ci/run` does), and a mount that fails then fails the test. See
//! `evspool_testkit::requires`.
//!
//! What must hold: enqueue fails closed with an error naming the cause, reads
//! and leases keep working, every acknowledged event survives, and once space
//! returns a reopened store accepts events again — also after the process
//! holding the full store was killed with SIGKILL.

use super::daemon_e2e::config;
use evspool::{Queue, QueueConfig, QueueError};
use evspool_testkit::client;
use evspool_testkit::daemon::start;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB; fails the test, saying why, if it cannot.
    fn mount(mib: u64) -> Tmpfs {
        evspool_testkit::requires::root("mounting a tmpfs");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Tmpfs { dir },
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        panic!("full-disk test could not run: mounting a tmpfs failed ({why})");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a ballast file until writes fail; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn payload(i: usize) -> Vec<u8> {
    format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(1000)).into_bytes()
}

fn config_fast() -> QueueConfig {
    QueueConfig {
        commit_interval: Duration::from_millis(5),
        cache_capacity: bytesize::ByteSize::mib(4),
        ..QueueConfig::default()
    }
}

/// Leases and acks everything; returns the payloads in delivery order.
/// Leases and acks everything; returns the payloads in delivery order. Chunks
/// a failed delivery left delayed (the daemon's backoff) are waited for, up to
/// 10 s, so "not there yet" is never mistaken for "lost".
fn drain(q: &Queue, topic: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match q.lease(topic, 100).unwrap() {
            Some(lease) => {
                out.extend(lease.events().iter().map(|e| e.payload.to_vec()));
                q.ack(lease).unwrap();
            }
            None if q.readiness(topic).depth() > 0 && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            None => return out,
        }
    }
}

#[tokio::test]
#[ignore = "needs root: as root, run with `-- --include-ignored` (.ci/run does)"]
async fn a_full_disk_fails_closed_keeps_every_acknowledged_event_and_recovers_when_space_returns() {
    let fs = Tmpfs::mount(32);
    let store = fs.path().join("store");
    let q = Queue::open(&store, config_fast()).unwrap();
    let mut acked = Vec::new();
    for i in 0..200 {
        let _ = q.enqueue_durable("t", payload(i)).await.unwrap();
        acked.push(payload(i));
    }
    let ballast = fs.fill();

    // Keep enqueuing durably until the disk refuses; bounded (32 MiB of tmpfs
    // cannot hold 100k events of 1 KiB).
    let mut refusal = None;
    for i in 200..100_000 {
        match q.enqueue_durable("t", payload(i)).await {
            Ok(_) => acked.push(payload(i)),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("the full disk refused an event");
    let text = refusal.to_string();
    assert!(
        matches!(
            refusal,
            QueueError::FailedClosed { .. } | QueueError::Storage(_)
        ),
        "{refusal:?}"
    );
    assert!(
        text.contains("No space left on device"),
        "names the cause: {text}"
    );
    // Fails closed: the next event is refused at once, with the same cause.
    let again = q.enqueue("t", payload(0)).unwrap_err();
    assert!(
        matches!(again, QueueError::FailedClosed { .. }),
        "{again:?}"
    );
    assert!(
        again.to_string().contains("No space left on device"),
        "{again}"
    );
    let stats = q.stats();
    assert!(
        stats
            .failed_closed
            .as_deref()
            .is_some_and(|r| r.contains("No space left")),
        "stats say why: {:?}",
        stats.failed_closed
    );

    // Reads and leases keep working on the full disk.
    assert_eq!(q.peek("t", 0, 5).unwrap().len(), 5);
    let lease = q.lease("t", 50).unwrap().expect("a lease on a full disk");
    let got: Vec<Vec<u8>> = lease.events().iter().map(|e| e.payload.to_vec()).collect();
    assert_eq!(got, acked[..got.len()].to_vec());
    q.release(lease);

    // Space returns; the store reopens, holds every acknowledged event in
    // order, and accepts new ones.
    std::fs::remove_file(&ballast).unwrap();
    q.close();
    drop(q);
    let q = Queue::open(&store, config_fast()).unwrap();
    assert!(q.stats().failed_closed.is_none());
    let fresh = q.enqueue_durable("t", payload(1_000_000)).await;
    assert!(fresh.is_ok(), "accepts events again: {fresh:?}");
    let all = drain(&q, "t");
    assert!(all.len() > acked.len(), "{} > {}", all.len(), acked.len());
    assert_eq!(
        all[..acked.len()].to_vec(),
        acked,
        "every acknowledged event, in order"
    );
    assert_eq!(all.last().unwrap(), &payload(1_000_000));
    eprintln!(
        "full disk: {} events acknowledged before the disk filled; refused with: {text}",
        acked.len()
    );
}

#[tokio::test]
#[ignore = "needs root: as root, run with `-- --include-ignored` (.ci/run does)"]
async fn a_daemon_killed_on_a_full_disk_restarts_and_loses_no_event_it_answered_202() {
    let fs = Tmpfs::mount(32);
    let store = fs.path().join("store");
    let cfg_path = fs.path().join("evspool.toml");
    // Nothing is delivered: the sink points at a closed port.
    std::fs::write(&cfg_path, config("", "", Some("http://127.0.0.1:9/x"), "")).unwrap();
    let d = start(&store, Some(&cfg_path), &[], &[]).await;
    let c = client();
    let url = format!("{}/v1/events?topic=events", d.url);
    let post = |i: usize| {
        let body = format!("{{\"uid\":\"u-{i}\",\"pad\":\"{}\"}}", "y".repeat(1000));
        c.post(&url).body(body).send()
    };
    let mut answered = Vec::new();
    for i in 0..100 {
        assert_eq!(post(i).await.unwrap().status(), 202);
        answered.push(format!("u-{i}"));
    }
    let ballast = fs.fill();
    let mut refused = None;
    for i in 100..100_000 {
        let resp = post(i).await.unwrap();
        if resp.status() == 202 {
            answered.push(format!("u-{i}"));
        } else {
            refused = Some((resp.status(), resp.text().await.unwrap_or_default()));
            break;
        }
    }
    let (status, body) = refused.expect("the full disk made the daemon refuse a request");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("No space left on device"),
        "names the cause: {body}"
    );

    // SIGKILL while the disk is full, then start again on the still-full disk:
    // it must come up (reads work) or refuse with a clear error, never panic.
    drop(d);
    let stderr = {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("evspool"));
        let out = cmd
            .arg("--dir")
            .arg(&store)
            .arg("stats")
            .arg("--json")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!stderr.contains("panicked"), "{stderr}");
        // The store's ballast file gives sled the room to open on the full disk.
        assert!(out.status.success(), "opens on the full disk: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v["total"]["events"].as_u64().unwrap() >= answered.len() as u64,
            "{v}"
        );
        assert!(
            v["recovered"].to_string().contains("ballast"),
            "says it used the ballast: {v}"
        );
        stderr
    };

    // Space returns: every event answered 202 is in the store.
    std::fs::remove_file(&ballast).unwrap();
    let q = Queue::open(&store, config_fast()).unwrap();
    let mut uids = std::collections::BTreeSet::new();
    for p in drain(&q, "events") {
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        uids.insert(v["uid"].as_str().unwrap().to_string());
    }
    let missing: Vec<&String> = answered.iter().filter(|u| !uids.contains(*u)).collect();
    assert!(
        missing.is_empty(),
        "lost {} answered events: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let _ = q.enqueue_durable("events", b"{}".to_vec()).await.unwrap();
    eprintln!(
        "full disk (daemon): {} events answered 202 before the 503, all there after SIGKILL and restart; stats on the full disk: {}",
        answered.len(),
        if stderr.is_empty() {
            "opened via the ballast"
        } else {
            stderr.trim()
        }
    );
}

#[tokio::test]
#[ignore = "needs root: as root, run with `-- --include-ignored` (.ci/run does)"]
async fn with_fsync_a_disk_too_full_for_the_zeros_written_ahead_still_takes_the_events() {
    let fs = Tmpfs::mount(32);
    let store = fs.path().join("store");
    let cfg = QueueConfig {
        fsync: true,
        ..config_fast()
    };
    let q = Queue::open(&store, cfg.clone()).unwrap();
    let event = |i: usize| format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(10_000)).into_bytes();
    // 1 MiB written: the body file is written ahead by 1 MiB of zeros.
    let first: Vec<Vec<u8>> = (0..100).map(event).collect();
    let _ = q.enqueue_batch_durable("t", first.clone()).await.unwrap();
    let mut acked = first;
    let ballast = fs.fill();
    // 512 KiB free: less than the next 1 MiB of zeros, room for ~50 events.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&ballast)
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(512 * 1024)).unwrap();
    drop(f);
    let mut after_fill = 0usize;
    for b in 0..40 {
        let batch: Vec<Vec<u8>> = (0..10).map(|i| event(1_000 + b * 10 + i)).collect();
        match q.enqueue_batch_durable("t", batch.clone()).await {
            Ok(_) => {
                after_fill += batch.len();
                acked.extend(batch);
            }
            Err(_) => break,
        }
    }
    // 100 events fit in the zeros; past them only the entries' own bytes.
    assert!(
        after_fill >= 130,
        "only {after_fill} events of 10 KB were taken after the disk filled"
    );
    std::fs::remove_file(&ballast).unwrap();
    q.close();
    drop(q);
    let q = Queue::open(&store, cfg).unwrap();
    assert_eq!(drain(&q, "t"), acked, "every acknowledged event, in order");
    eprintln!("full disk with fsync: {after_fill} events taken after the disk filled");
}

#[tokio::test]
#[ignore = "needs root: as root, run with `-- --include-ignored` (.ci/run does)"]
async fn a_daemon_whose_disk_filled_accepts_and_delivers_again_once_there_is_room_without_a_restart()
 {
    use super::daemon_e2e::{accepted_uids, metric_sum, metrics};
    use evspool_testkit::collector::{Collector, Reply};
    use evspool_testkit::wait_until;
    let collector = Collector::start().await;
    // Down while the disk fills, so every event stays on disk.
    collector.respond(|_| Reply::status(503));
    let fs = Tmpfs::mount(48);
    let store = fs.path().join("store");
    let cfg_path = fs.path().join("evspool.toml");
    let sink = format!("{}/ingest", collector.url);
    std::fs::write(&cfg_path, config("", "", Some(&sink), "")).unwrap();
    let d = start(&store, Some(&cfg_path), &[], &[]).await;
    let c = client();
    let url = format!("{}/v1/events?topic=events", d.url);
    let post = |i: usize| {
        let body = format!("{{\"uid\":\"u-{i}\",\"pad\":\"{}\"}}", "y".repeat(1000));
        c.post(&url).body(body).send()
    };
    let mut answered = std::collections::BTreeSet::new();
    for i in 0..100 {
        assert_eq!(post(i).await.unwrap().status(), 202);
        answered.insert(format!("u-{i}"));
    }
    let ballast = fs.fill();
    let mut next = 100;
    loop {
        assert!(next < 100_000, "the full disk never refused a request");
        let resp = post(next).await.unwrap();
        next += 1;
        if resp.status() == 202 {
            answered.insert(format!("u-{}", next - 1));
        } else {
            assert_eq!(resp.status(), 503);
            break;
        }
    }
    // Still full: still refused, even after a few looks by the daemon.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(post(next).await.unwrap().status(), 503);
    next += 1;

    // Room again: within a few looks the daemon accepts events, unrestarted.
    std::fs::remove_file(&ballast).unwrap();
    let mut reopened_at = None;
    for _ in 0..150 {
        let resp = post(next).await.unwrap();
        next += 1;
        if resp.status() == 202 {
            answered.insert(format!("u-{}", next - 1));
            reopened_at = Some(next - 1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reopened_at.is_some(),
        "the daemon did not accept events within 15 s of the disk having room; stderr:\n{}",
        d.stderr()
    );
    assert_eq!(
        metric_sum(&metrics(&d).await, "evspool_store_reopens_total", &[]),
        1.0
    );
    // The collector comes back: every event answered 202 reaches it, those
    // from before the disk filled and after it reopened.
    collector.respond(|_| Reply::ok());
    let delivered = wait_until(Duration::from_secs(30), || {
        answered
            .iter()
            .all(|u| accepted_uids(&collector).contains(u))
    })
    .await;
    let got = accepted_uids(&collector);
    let missing: Vec<&String> = answered.iter().filter(|u| !got.contains(*u)).collect();
    assert!(
        delivered,
        "{} of {} answered events never delivered, e.g. {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "full disk, reopened in place: {} events answered 202, all delivered",
        answered.len()
    );
}
