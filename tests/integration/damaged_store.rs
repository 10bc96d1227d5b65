//! Damaged stores, systematically: sled's files and the body generation files
//! truncated at many lengths or deleted, bytes flipped at 64 offsets across
//! sled's data file and across a body file (each on a fresh copy of a
//! populated store), stale and garbage snapshots, broken metadata, and
//! directories that are not stores. For every case:
//!
//! - `Queue::open` never panics and never hangs (it runs on a thread under a
//!   deadline);
//! - it returns a clear error, or `Ok` — and then every event it delivers is
//!   byte-for-byte an event that was stored (a CRC never lets damage through),
//!   and what is missing is reported (quarantine, or sled's files moved aside
//!   and the index rebuilt from the body files);
//! - `evspool verify` (the binary) on another copy of the same damage exits
//!   0, 4 or 1 and prints what it found.
//!
//! Outcomes are counted and printed (`--nocapture`); see the report in the
//! README's fault matrix. Single cases already pinned in `queue_corruption`
//! (one flipped chunk byte, garbage over `conf` and `db`, a 5-byte `db`, a stale
//! `snap.*.generating`, a newer format, unrelated files) are not repeated.

use evspool::{Queue, QueueConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOPIC: &str = "t";
const EVENTS: u64 = 40;
/// The outcome that must never happen: an open that reports nothing while
/// events are missing. (With format 1, sled silently dropping the tail of its
/// own damaged log lost whole topics this way; since the index is rebuilt from
/// the body files at open, every case here either keeps every event or says
/// what it did.)
const SILENT_LOSS: &str = "opened, events missing without a report";
/// How long one open (plus draining what it opened) may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

fn config() -> QueueConfig {
    QueueConfig {
        chunk_max_events: 4,
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    }
}

fn payload(seq: u64) -> Vec<u8> {
    format!(
        "{{\"event\":\"e{seq}\",\"pad\":\"{}\"}}",
        "abcdefghij".repeat(seq as usize % 7 + 1)
    )
    .into_bytes()
}

/// A closed store with `EVENTS` events of `TOPIC` in chunks of 4.
async fn template() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let q = Queue::open(t.path(), config()).unwrap();
    for seq in 1..=EVENTS {
        let out = q.enqueue(TOPIC, payload(seq)).unwrap();
        assert_eq!(out.id().unwrap().seq(), seq);
    }
    q.sync().await.unwrap();
    q.close();
    drop(q);
    t
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// What opening a damaged store came to.
#[derive(Debug)]
enum Outcome {
    /// `open` returned this error.
    Refused(String),
    /// `open` returned `Ok`.
    Opened {
        recovered: Vec<String>,
        /// Every event leased and acked, in order.
        delivered: Vec<(u64, Vec<u8>)>,
        quarantined: u64,
    },
}

/// Opens `dir` on a thread; panics (failing the test) if open panicked or did
/// not finish within the deadline. Drains what it opened.
fn open_bounded(dir: &Path) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.to_path_buf();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(|| match Queue::open(&d, config()) {
            Err(e) => Outcome::Refused(e.to_string()),
            Ok(q) => {
                let recovered = q.stats().recovered;
                let mut delivered = Vec::new();
                for _ in 0..1000 {
                    match q.lease(TOPIC, 100) {
                        Ok(Some(lease)) => {
                            delivered.extend(
                                lease.events().iter().map(|e| (e.seq(), e.payload.to_vec())),
                            );
                            q.ack(lease).unwrap();
                        }
                        Ok(None) => break,
                        Err(e) => panic!("lease failed on an opened store: {e}"),
                    }
                }
                let quarantined = q.stats().quarantined_records;
                q.close();
                Outcome::Opened {
                    recovered,
                    delivered,
                    quarantined,
                }
            }
        });
        let _ = tx.send(result.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }));
    });
    match rx.recv_timeout(OPEN_DEADLINE) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => panic!("opening {} panicked: {panic}", dir.display()),
        Err(_) => panic!("opening {} hung for {OPEN_DEADLINE:?}", dir.display()),
    }
}

/// The class of an outcome, checking the invariants every class must hold.
fn classify(case: &str, outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Refused(msg) => {
            assert!(!msg.is_empty(), "{case}: an error says something");
            "refused with an error"
        }
        Outcome::Opened {
            recovered,
            delivered,
            quarantined,
        } => {
            for (seq, p) in delivered {
                assert!(
                    (1..=EVENTS).contains(seq) && *p == payload(*seq),
                    "{case}: a damaged event was delivered: seq {seq}, {:?}",
                    String::from_utf8_lossy(p)
                );
            }
            let seqs: Vec<u64> = delivered.iter().map(|(s, _)| *s).collect();
            let mut unique = seqs.clone();
            unique.dedup();
            assert_eq!(
                seqs, unique,
                "{case}: an event delivered twice in one drain"
            );
            if recovered
                .iter()
                .any(|r| r.contains("rebuilt from the body files"))
                && delivered.len() as u64 == EVENTS
            {
                "sled lost or damaged: index rebuilt from the body files, every event intact (reported)"
            } else if recovered.iter().any(|r| r.contains("moved to")) {
                "sled moved aside, events missing (reported)"
            } else if *quarantined > 0 {
                "opened, damaged chunks quarantined and reported"
            } else if delivered.len() as u64 == EVENTS && !recovered.is_empty() {
                "opened, every event intact, a repair reported"
            } else if delivered.len() as u64 == EVENTS {
                "opened clean, every event intact"
            } else if !recovered.is_empty() {
                "opened, events missing, a repair reported"
            } else {
                eprintln!(
                    "    {case}: opened without a report, {} of {EVENTS} events",
                    delivered.len()
                );
                SILENT_LOSS
            }
        }
    }
}

/// `evspool --dir DIR verify --json`: exit code and its JSON (if any).
fn verify(dir: &Path) -> (i32, serde_json::Value, String) {
    let out = crate::cli_e2e::evspool(dir)
        .args(["verify", "--json"])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        code,
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks `evspool verify` on a damaged copy: it exits 0 (nothing found), 4
/// (chunks quarantined) or 1 (refused, with a message), and prints what it found.
fn check_verify(case: &str, dir: &Path) -> String {
    let (code, json, stderr) = verify(dir);
    match code {
        0 | 4 => {
            assert!(json.is_object(), "{case}: verify printed {json} / {stderr}");
            let found = json["quarantined"].as_u64().unwrap();
            let recovered = json["recovered"].as_array().unwrap().len();
            assert_eq!(code == 4, found > 0, "{case}: exit {code} for {json}");
            if found > 0 {
                format!("verify exit 4: {found} chunk(s) quarantined")
            } else if recovered > 0 {
                format!("verify exit {code}: repaired at open")
            } else {
                format!("verify exit {code}: clean")
            }
        }
        1 => {
            assert!(stderr.starts_with("evspool: "), "{case}: {stderr}");
            "verify exit 1: refused with a message".into()
        }
        other => panic!("{case}: verify exited {other}: {stderr}"),
    }
}

fn tally(counts: &mut BTreeMap<String, usize>, key: impl Into<String>) {
    *counts.entry(key.into()).or_default() += 1;
}

fn print_tally(title: &str, counts: &BTreeMap<String, usize>) {
    eprintln!("{title}:");
    for (k, n) in counts {
        eprintln!("  {n:>3}  {k}");
    }
}

/// Runs one damage case on two fresh copies of `template`: the library open
/// (classified) and `evspool verify`.
fn damage_case(
    template: &Path,
    case: &str,
    damage: impl Fn(&Path),
    opens: &mut BTreeMap<String, usize>,
    verifies: &mut BTreeMap<String, usize>,
) -> &'static str {
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    copy_dir(template, &a);
    copy_dir(template, &b);
    damage(&a);
    damage(&b);
    let class = classify(case, &open_bounded(&a));
    tally(opens, class);
    // A second open finds a working store (whatever the first did about it).
    // The first queue's lock (ours, or sled's on db/db) may outlive its close
    // by a moment: only this process ever opens these copies.
    let mut again = open_bounded(&a);
    for _ in 0..100 {
        match &again {
            Outcome::Refused(e) if e.contains("is locked by") => {
                std::thread::sleep(Duration::from_millis(50));
                again = open_bounded(&a);
            }
            _ => break,
        }
    }
    match again {
        Outcome::Opened { .. } => {}
        Outcome::Refused(e) if class == "refused with an error" => {
            assert!(!e.is_empty());
        }
        Outcome::Refused(e) => panic!("{case}: opened once, then refused: {e}"),
    }
    tally(verifies, check_verify(case, &b));
    class
}

fn data_file(dir: &Path) -> PathBuf {
    dir.join("db").join("db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flipped_at_64_offsets_of_the_data_file_never_panic_hang_or_deliver_damage() {
    let t = template().await;
    let len = std::fs::metadata(data_file(t.path())).unwrap().len();
    assert!(len > 256, "a populated data file: {len} bytes");
    let (mut opens, mut verifies) = (BTreeMap::new(), BTreeMap::new());
    for i in 0..64u64 {
        // Spread over the file, off the even grid so headers and bodies both get hit.
        let offset = (i * len / 64 + i * 7) % len;
        let case = format!("byte {offset} of {len} flipped");
        damage_case(
            t.path(),
            &case,
            |d| {
                let p = data_file(d);
                let mut bytes = std::fs::read(&p).unwrap();
                bytes[offset as usize] ^= 0xff;
                std::fs::write(&p, bytes).unwrap();
            },
            &mut opens,
            &mut verifies,
        );
    }
    print_tally(
        &format!("64 flipped bytes in a {len}-byte data file, library open"),
        &opens,
    );
    print_tally("the same, evspool verify", &verifies);
    assert_eq!(opens.values().sum::<usize>(), 64);
    assert_eq!(verifies.values().sum::<usize>(), 64);
    assert_eq!(opens.get(SILENT_LOSS), None, "silent loss: {opens:?}");
}

/// The body generation files (`bodies/<topic>/<n>.seg`) of a store.
fn body_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else if e.path().extension().is_some_and(|x| x == "seg") {
                out.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("bodies"), &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flipped_at_64_offsets_of_a_body_file_quarantine_only_the_damaged_chunks() {
    let t = template().await;
    let files = body_files(t.path());
    assert_eq!(files.len(), 1, "one generation file: {files:?}");
    let rel = files[0].strip_prefix(t.path()).unwrap().to_path_buf();
    let len = std::fs::metadata(&files[0]).unwrap().len();
    let (mut opens, mut verifies) = (BTreeMap::new(), BTreeMap::new());
    for i in 0..64u64 {
        let offset = (i * len / 64 + i * 7) % len;
        let case = format!("byte {offset} of {len} of {} flipped", rel.display());
        damage_case(
            t.path(),
            &case,
            |d| {
                let p = d.join(&rel);
                let mut bytes = std::fs::read(&p).unwrap();
                bytes[offset as usize] ^= 0xff;
                std::fs::write(&p, bytes).unwrap();
            },
            &mut opens,
            &mut verifies,
        );
    }
    print_tally(
        &format!("64 flipped bytes in a {len}-byte body file, library open"),
        &opens,
    );
    print_tally("the same, evspool verify", &verifies);
    assert_eq!(opens.values().sum::<usize>(), 64);
    assert_eq!(opens.get(SILENT_LOSS), None, "silent loss: {opens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_missing_body_file_is_quarantined_and_reported_never_silent() {
    let t = template().await;
    let files = body_files(t.path());
    let rel = files[0].strip_prefix(t.path()).unwrap().to_path_buf();
    let len = std::fs::metadata(&files[0]).unwrap().len();
    let (mut opens, mut verifies) = (BTreeMap::new(), BTreeMap::new());
    let mut cases: Vec<Option<u64>> = [0, 1, 7, len / 4, len / 2, len - 1]
        .into_iter()
        .map(Some)
        .collect();
    cases.push(None);
    for to in &cases {
        let case = match to {
            Some(l) => format!("{} truncated to {l} of {len} bytes", rel.display()),
            None => format!("{} deleted", rel.display()),
        };
        let class = damage_case(
            t.path(),
            &case,
            |d| {
                let p = d.join(&rel);
                match to {
                    Some(l) => std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .unwrap()
                        .set_len(*l)
                        .unwrap(),
                    None => std::fs::remove_file(&p).unwrap(),
                }
            },
            &mut opens,
            &mut verifies,
        );
        eprintln!("  {case}: {class}");
    }
    print_tally("body file truncated or deleted, library open", &opens);
    print_tally("the same, evspool verify", &verifies);
    assert_eq!(opens.get(SILENT_LOSS), None, "silent loss: {opens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_files_truncated_at_many_lengths_never_panic_hang_or_deliver_damage() {
    let t = template().await;
    let len = std::fs::metadata(data_file(t.path())).unwrap().len();
    let conf_len = std::fs::metadata(t.path().join("db").join("conf"))
        .unwrap()
        .len();
    let (mut opens, mut verifies) = (BTreeMap::new(), BTreeMap::new());
    let mut cases: Vec<(String, u64)> = [0, 1, 7, 64, 511, len / 8, len / 4, len / 2, 3 * len / 4]
        .into_iter()
        .chain([len.saturating_sub(100), len - 1])
        .map(|l| ("db".to_string(), l))
        .collect();
    cases.extend([0, 1, conf_len / 2, conf_len - 1].map(|l| ("conf".to_string(), l)));
    for (file, to) in &cases {
        let case = format!("db/{file} truncated to {to} bytes");
        let class = damage_case(
            t.path(),
            &case,
            |d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("db").join(file))
                    .unwrap();
                f.set_len(*to).unwrap();
            },
            &mut opens,
            &mut verifies,
        );
        eprintln!("  {case}: {class}");
    }
    print_tally(
        &format!(
            "{} truncations (data file {len} bytes, conf {conf_len}), library open",
            cases.len()
        ),
        &opens,
    );
    print_tally("the same, evspool verify", &verifies);
    assert_eq!(opens.values().sum::<usize>(), cases.len());
    assert_eq!(opens.get(SILENT_LOSS), None, "silent loss: {opens:?}");
    // Cut to nothing (or to less than sled's header) is always noticed, and
    // the index is rebuilt from the body files with every event.
    assert!(
        opens
            .get("sled lost or damaged: index rebuilt from the body files, every event intact (reported)")
            .copied()
            .unwrap_or(0)
            >= 4,
        "{opens:?}"
    );
    assert_eq!(
        opens.get("sled moved aside, events missing (reported)"),
        None,
        "sled's damage never costs a queued event: {opens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_garbage_snapshots_and_broken_metadata_are_survived_or_refused_clearly() {
    let t = template().await;
    let (mut opens, mut verifies) = (BTreeMap::new(), BTreeMap::new());
    type Damage = Box<dyn Fn(&Path)>;
    let sled_meta = |value: Vec<u8>| -> Damage {
        Box::new(move |d: &Path| {
            let db = sled::Config::new()
                .path(d.join("db"))
                .segment_size(4 * 1024 * 1024)
                .open()
                .unwrap();
            let meta = db.open_tree("meta").unwrap();
            if value.is_empty() {
                meta.remove("format").unwrap();
            } else {
                meta.insert("format", value.clone()).unwrap();
            }
            db.flush().unwrap();
        })
    };
    let cases: Vec<(&str, Damage, &[&str])> = vec![
        (
            "a garbage complete snapshot snap.*",
            Box::new(|d: &Path| {
                std::fs::write(d.join("db").join("snap.00000000000F4240"), [0x42u8; 300]).unwrap()
            }),
            &[],
        ),
        (
            "an empty snapshot file",
            Box::new(|d: &Path| {
                std::fs::write(d.join("db").join("snap.0000000000000001"), b"").unwrap()
            }),
            &[],
        ),
        (
            "several stale snap.*.generating files",
            Box::new(|d: &Path| {
                for n in [
                    "snap.0000000000000010.generating",
                    "snap.0000000000000020.generating",
                ] {
                    std::fs::write(d.join("db").join(n), b"partial").unwrap();
                }
            }),
            &[],
        ),
        (
            "a stray blob file",
            Box::new(|d: &Path| {
                std::fs::create_dir_all(d.join("db").join("blobs")).unwrap();
                std::fs::write(d.join("db").join("blobs").join("99999"), [7u8; 100]).unwrap();
            }),
            &[],
        ),
        ("format 0 in meta", sled_meta(vec![0]), &[]),
        (
            "format 255 in meta",
            sled_meta(vec![255]),
            &["format 255", "upgrade"],
        ),
        ("a two-byte format in meta", sled_meta(vec![1, 0]), &[]),
        ("the format key deleted from meta", sled_meta(vec![]), &[]),
        (
            "the identity file deleted",
            Box::new(|d: &Path| std::fs::remove_file(d.join("evspool.id")).unwrap()),
            &[],
        ),
        (
            "the identity file garbled",
            Box::new(|d: &Path| std::fs::write(d.join("evspool.id"), [0xffu8; 40]).unwrap()),
            &[],
        ),
        (
            "the lock file replaced by a directory",
            Box::new(|d: &Path| {
                std::fs::remove_file(d.join("evspool.lock")).unwrap();
                std::fs::create_dir(d.join("evspool.lock")).unwrap();
            }),
            &["evspool.lock"],
        ),
    ];
    for (case, damage, needles) in &cases {
        let work = tempfile::tempdir().unwrap();
        let a = work.path().join("a");
        copy_dir(t.path(), &a);
        damage(&a);
        let outcome = open_bounded(&a);
        let class = classify(case, &outcome);
        if let Outcome::Refused(msg) = &outcome {
            for n in *needles {
                assert!(msg.contains(n), "{case}: {msg}");
            }
        }
        eprintln!(
            "  {case}: {class} {:?}",
            match &outcome {
                Outcome::Refused(m) => m.clone(),
                Outcome::Opened { recovered, .. } => recovered.join("; "),
            }
        );
        tally(&mut opens, class);
        let b = work.path().join("b");
        copy_dir(t.path(), &b);
        damage(&b);
        tally(&mut verifies, check_verify(case, &b));
    }
    print_tally("snapshot and metadata damage, library open", &opens);
    print_tally("the same, evspool verify", &verifies);
    assert_eq!(opens.get(SILENT_LOSS), None, "silent loss: {opens:?}");
}

#[test]
fn paths_that_are_not_stores_are_refused_clearly_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    // `db` is a file, not sled's directory.
    let a = tmp.path().join("db-is-a-file");
    std::fs::create_dir(&a).unwrap();
    std::fs::write(a.join("db"), b"not a directory").unwrap();
    // `db` holds random files and no sled database.
    let b = tmp.path().join("db-of-random-files");
    std::fs::create_dir_all(b.join("db")).unwrap();
    for i in 0..5u8 {
        std::fs::write(b.join("db").join(format!("junk{i}")), vec![i; 1000]).unwrap();
    }
    // `db` is a dangling symlink.
    let c = tmp.path().join("db-dangling-symlink");
    std::fs::create_dir(&c).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), c.join("db")).unwrap();
    // A directory of random binary files (no evspool names at all).
    let d = tmp.path().join("random-files");
    std::fs::create_dir(&d).unwrap();
    for i in 0..5u32 {
        let bytes: Vec<u8> = (0..4096u32)
            .map(|j| (j.wrapping_mul(2654435761) >> (i + 3)) as u8)
            .collect();
        std::fs::write(d.join(format!("{i:08x}.bin")), bytes).unwrap();
    }
    // A regular file where the directory should be.
    let e = tmp.path().join("a-file");
    std::fs::write(&e, b"hello").unwrap();
    for dir in [&a, &b, &c, &d, &e] {
        let before = listing(dir);
        let outcome = open_bounded(dir);
        let class = match &outcome {
            Outcome::Opened {
                delivered,
                quarantined,
                ..
            } => {
                assert!(delivered.is_empty() && *quarantined == 0, "{outcome:?}");
                "opened as a new, empty store"
            }
            Outcome::Refused(_) => classify(&dir.display().to_string(), &outcome),
        };
        let (code, _, stderr) = verify(dir);
        results.push(format!(
            "{}: {class} ({}); verify exit {code}",
            dir.file_name().unwrap().to_string_lossy(),
            match &outcome {
                Outcome::Refused(m) => m.clone(),
                Outcome::Opened { recovered, .. } => recovered.join("; "),
            }
        ));
        if let Outcome::Refused(msg) = &outcome {
            assert!(
                msg.contains(&dir.display().to_string()) || msg.contains("db"),
                "the error names the place: {msg}"
            );
            assert_eq!(code, 1, "{stderr}");
            assert!(
                stderr.starts_with("evspool: ") && stderr.len() > 20,
                "{stderr}"
            );
        }
        if dir == &d || dir == &e {
            assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
            assert_eq!(
                listing(dir),
                before,
                "nothing was created or moved in {}",
                dir.display()
            );
        }
    }
    for r in &results {
        eprintln!("  {r}");
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec!["<not a directory>".into()];
    };
    let mut v: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
