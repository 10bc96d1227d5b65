//! The `evspool` binary end to end: every subcommand's happy path and its bad
//! input, run as a child process (assert_cmd) on a temporary store directory.
//!
//! Stores are prepared through the public library API where the CLI cannot
//! produce the state itself (dead letters, a held lock, a large store).

use assert_cmd::Command;
use evspool::{Queue, QueueConfig, Settlement, Stats};
use evspool_testkit::collector::{Collector, Reply};
use evspool_testkit::daemon::ENV;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `evspool --dir DIR` with a clean environment and a bounded run time.
pub(crate) fn evspool(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("evspool").unwrap();
    for v in ENV {
        c.env_remove(v);
    }
    c.arg("--dir").arg(dir).timeout(Duration::from_secs(60));
    c
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(mut c: Command) -> Run {
    let out = c.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs and asserts the exit code, showing both streams when it differs.
fn run_expect(c: Command, code: i32) -> Run {
    let r = run(c);
    assert_eq!(
        r.code, code,
        "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
        r.stdout, r.stderr
    );
    r
}

fn stats(dir: &Path) -> Stats {
    let mut c = evspool(dir);
    c.args(["stats", "--json"]);
    let r = run_expect(c, 0);
    serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("stats --json is not a Stats object ({e}): {}", r.stdout))
}

/// Live (not yet delivered, not dead) events of `topic`.
fn live(s: &Stats, topic: &str) -> u64 {
    s.topics.get(topic).map_or(0, |t| {
        t.ready.events + t.retrying.events + t.leased.events + t.uncommitted.events
    })
}

fn dead(s: &Stats, topic: &str) -> u64 {
    s.topics.get(topic).map_or(0, |t| t.dead.events)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Fills `dir` through the library with `n` events `{"uid":"<prefix>-<i>"}` and closes it.
fn fill(dir: &Path, topic: &str, prefix: &str, n: usize) {
    rt().block_on(async {
        let q = Queue::open(dir, QueueConfig::default()).unwrap();
        for i in 0..n {
            let p = format!(r#"{{"uid":"{prefix}-{i}","pad":"{}"}}"#, "x".repeat(64));
            assert!(q.enqueue(topic, p.into_bytes()).unwrap().id().is_some());
        }
        q.sync().await.unwrap();
        q.close();
    });
}

/// Makes `dead_n` dead letters with reason "bad" (and delivers `ok_n` others) in `topic`.
fn make_dead_letters(dir: &Path, topic: &str, dead_n: usize, ok_n: usize) {
    rt().block_on(async {
        let q = Queue::open(dir, QueueConfig::default()).unwrap();
        for i in 0..dead_n + ok_n {
            let _ = q
                .enqueue_durable(topic, format!(r#"{{"uid":"d-{i}"}}"#).into_bytes())
                .await
                .unwrap();
        }
        let mut settled = 0;
        while let Some(lease) = q.lease(topic, 1000).unwrap() {
            let mut s = Settlement::delivered();
            for e in lease.events() {
                if settled < dead_n {
                    s = s.dead(e.seq(), "bad");
                }
                settled += 1;
            }
            q.settle(lease, s).unwrap();
        }
        assert_eq!(settled, dead_n + ok_n);
        q.close();
    });
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn uids(records: &[serde_json::Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["payload"]["uid"].as_str().unwrap().to_string())
        .collect()
}

fn assert_id_shape(id: &str) {
    assert!(
        !id.is_empty()
            && id.len() <= 36
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "event id {id:?} is not <=36 chars of [A-Za-z0-9-]"
    );
}

#[test]
fn send_from_arguments_and_stdin_is_counted_by_stats_and_stats_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");

    let mut c = evspool(&dir);
    c.args([
        "send",
        "--topic",
        "clicks",
        r#"{"uid":"a"}"#,
        r#"{"uid":"b"}"#,
    ]);
    let r = run_expect(c, 0);
    let ids: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(ids.len(), 2, "one id per event: {}", r.stdout);
    ids.iter().for_each(|id| assert_id_shape(id));

    let mut c = evspool(&dir);
    c.args(["--json", "send", "--topic", "clicks"])
        .write_stdin("{\"uid\":\"c\"}\n\n{\"uid\":\"d\"}\n{\"uid\":\"e\"}\n");
    let r = run_expect(c, 0);
    let sent = json_lines(&r.stdout);
    assert_eq!(sent.len(), 3, "stdin lines (blank skipped): {}", r.stdout);
    for s in &sent {
        assert_eq!(s["topic"], "clicks");
        assert_id_shape(s["id"].as_str().unwrap());
    }
    let all: BTreeSet<&str> = ids
        .iter()
        .copied()
        .chain(sent.iter().map(|s| s["id"].as_str().unwrap()))
        .collect();
    assert_eq!(all.len(), 5, "ids are unique");

    let s = stats(&dir);
    assert_eq!(live(&s, "clicks"), 5);
    assert_eq!(s.total.events, 5);
    assert_eq!(dead(&s, "clicks"), 0);

    let mut c = evspool(&dir);
    c.arg("stats");
    let r = run_expect(c, 0);
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with("clicks"))
        .unwrap_or_else(|| panic!("a row for the topic: {}", r.stdout));
    assert_eq!(
        row.split_whitespace().nth(1),
        Some("5"),
        "READY column: {row}"
    );
    assert!(r.stdout.contains("total        5 events"), "{}", r.stdout);
}

#[test]
fn send_refuses_bad_json_with_the_usage_exit_code_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut c = evspool(&dir);
    c.args(["send", "--topic", "t", r#"{"uid":"ok"}"#]);
    run_expect(c, 0);

    let mut c = evspool(&dir);
    c.args(["send", "--topic", "t", r#"{"uid":"ok2"}"#, r#"{"uid":"#]);
    let r = run_expect(c, 2);
    assert!(
        r.stderr.contains("argument 2"),
        "names the argument: {}",
        r.stderr
    );
    assert!(r.stderr.contains("invalid JSON"), "{}", r.stderr);

    let mut c = evspool(&dir);
    c.args(["send", "--topic", "t"])
        .write_stdin("{\"uid\":\"ok3\"}\n[1,2]\n");
    let r = run_expect(c, 2);
    assert!(r.stderr.contains("stdin:2"), "names the line: {}", r.stderr);
    assert!(r.stderr.contains("object"), "{}", r.stderr);

    let mut c = evspool(&dir);
    c.args(["send", "--topic", "bad topic!", r#"{"uid":"x"}"#]);
    run_expect(c, 2);

    // Nothing from a refused command was stored: all or nothing.
    assert_eq!(live(&stats(&dir), "t"), 1);
    assert_eq!(stats(&dir).total.events, 1);
}

#[test]
fn peek_shows_the_first_n_events_as_a_table_and_as_ndjson_without_removing_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "views", "v", 5);

    let mut c = evspool(&dir);
    c.args(["peek", "--json", "-n", "3", "--topic", "views"]);
    let r = run_expect(c, 0);
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), 3);
    for (i, rec) in recs.iter().enumerate() {
        assert_id_shape(rec["id"].as_str().unwrap());
        assert_eq!(rec["topic"], "views");
        assert_eq!(rec["payload"]["uid"], format!("v-{i}"));
        assert_eq!(rec["attempts"], 0);
        assert!(rec["seq"].is_u64());
    }

    let mut c = evspool(&dir);
    c.args(["peek", "-n", "2"]);
    let r = run_expect(c, 0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "header and two rows: {}", r.stdout);
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("PAYLOAD"),
        "{}",
        lines[0]
    );
    for (line, rec) in lines[1..].iter().zip(&recs) {
        let id = rec["id"].as_str().unwrap();
        assert!(
            line.starts_with(id) && line.contains("views"),
            "row for {id}: {line}"
        );
    }

    assert_eq!(live(&stats(&dir), "views"), 5, "peek removes nothing");
}

#[test]
fn export_writes_ndjson_to_stdout_and_a_file_and_import_of_it_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "a", "a", 30);
    fill(&dir, "b", "b", 20);

    let mut c = evspool(&dir);
    c.arg("export");
    let r = run_expect(c, 0);
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), 50);
    for rec in &recs {
        assert_id_shape(rec["id"].as_str().unwrap());
        assert!(rec["topic"] == "a" || rec["topic"] == "b", "{rec}");
        assert!(rec["payload"]["uid"].is_string(), "{rec}");
        assert!(rec["enqueued_at"].is_string(), "{rec}");
    }
    let expected: BTreeSet<String> = (0..30)
        .map(|i| format!("a-{i}"))
        .chain((0..20).map(|i| format!("b-{i}")))
        .collect();
    assert_eq!(uids(&recs), expected);
    let topic_of_b: Vec<_> = recs.iter().filter(|r| r["topic"] == "b").collect();
    assert!(
        topic_of_b
            .iter()
            .all(|r| r["payload"]["uid"].as_str().unwrap().starts_with("b-"))
    );

    let file = tmp.path().join("out.ndjson");
    let mut c = evspool(&dir);
    c.args(["export", "--topic", "b", "-o"]).arg(&file);
    let r = run_expect(c, 0);
    assert!(
        r.stdout.is_empty(),
        "data goes to the file, not stdout: {}",
        r.stdout
    );
    assert!(r.stderr.contains("exported 20 events"), "{}", r.stderr);
    let in_file = json_lines(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(in_file.len(), 20);
    assert!(in_file.iter().all(|r| r["topic"] == "b"));

    // Import into a fresh store keeps topics and payloads.
    let other = tmp.path().join("other");
    let mut c = evspool(&other);
    c.arg("import").arg(&file);
    let r = run_expect(c, 0);
    assert!(r.stdout.contains("imported 20 events"), "{}", r.stdout);
    let mut c = evspool(&other);
    c.args(["export", "--topic", "b"]);
    let back = json_lines(&run_expect(c, 0).stdout);
    assert_eq!(uids(&back), uids(&in_file));
    // Export leaves the source untouched.
    assert_eq!(stats(&dir).total.events, 50);
}

#[test]
fn import_skips_a_bad_line_naming_file_and_line_imports_the_rest_and_exits_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "t", "old", 3);
    let file = tmp.path().join("events.ndjson");
    std::fs::write(
        &file,
        "{\"uid\":\"n-0\"}\n{\"uid\":\"n-1\"}\n{\"uid\": nope}\n\n{\"uid\":\"n-2\"}\n",
    )
    .unwrap();
    let mut c = evspool(&dir);
    c.args(["import", "--topic", "t"]).arg(&file);
    let r = run_expect(c, 4);
    let at = format!("{}:3", file.display());
    assert!(r.stderr.contains(&at), "stderr names {at}: {}", r.stderr);
    assert!(
        r.stderr.contains("invalid JSON"),
        "and the reason: {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains(":1:") && !r.stderr.contains(":5:"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("imported 3 events; 1 line failed"),
        "{}",
        r.stdout
    );

    let s = stats(&dir);
    assert_eq!(live(&s, "t"), 6, "three old plus three good lines");
    let mut c = evspool(&dir);
    c.args(["export", "--topic", "t"]);
    let got = uids(&json_lines(&run_expect(c, 0).stdout));
    let want: BTreeSet<String> = ["old-0", "old-1", "old-2", "n-0", "n-1", "n-2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);

    // Bare objects without --topic are bad lines too, not a crash.
    let mut c = evspool(&dir);
    c.arg("import").arg(&file);
    let r = run_expect(c, 4);
    assert!(r.stderr.contains("needs --topic"), "{}", r.stderr);
}

#[test]
fn import_dash_reads_ndjson_from_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut c = evspool(&dir);
    c.args(["--json", "import", "--topic", "s", "-"])
        .write_stdin("{\"uid\":\"s-0\"}\n{\"uid\":\"s-1\"}\n{\"uid\":\"s-2\"}\n");
    let r = run_expect(c, 0);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["imported"], 3);
    assert_eq!(v["failed"], 0);
    assert_eq!(live(&stats(&dir), "s"), 3);
}

#[test]
fn replay_dry_run_counts_dead_letters_and_replay_moves_them_back_to_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_dead_letters(&dir, "t", 3, 2);
    let s = stats(&dir);
    assert_eq!((dead(&s, "t"), live(&s, "t")), (3, 0));

    let mut c = evspool(&dir);
    c.args(["peek", "--dead", "--json", "--topic", "t"]);
    let recs = json_lines(&run_expect(c, 0).stdout);
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| r["reason"] == "bad"), "{recs:?}");

    let mut c = evspool(&dir);
    c.args(["replay", "--topic", "t", "--dry-run"]);
    let r = run_expect(c, 0);
    assert!(
        r.stdout.contains("dry run: 3 events would be replayed"),
        "{}",
        r.stdout
    );
    let s = stats(&dir);
    assert_eq!(
        (dead(&s, "t"), live(&s, "t")),
        (3, 0),
        "dry run changes nothing"
    );

    let mut c = evspool(&dir);
    c.args(["--json", "replay", "--topic", "t"]);
    let r = run_expect(c, 0);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (v["matched"].as_u64(), v["replayed"].as_u64()),
        (Some(3), Some(3))
    );
    let s = stats(&dir);
    assert_eq!((dead(&s, "t"), live(&s, "t")), (0, 3));

    // The replayed events keep their payloads (and so their meaning).
    let mut c = evspool(&dir);
    c.args(["export", "--topic", "t"]);
    let got = uids(&json_lines(&run_expect(c, 0).stdout));
    assert_eq!(
        got,
        ["d-0", "d-1", "d-2"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[test]
fn purge_needs_yes_or_dry_run_and_only_yes_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "t", "p", 7);
    fill(&dir, "keep", "k", 2);

    let mut c = evspool(&dir);
    c.args(["purge", "--topic", "t"]);
    let r = run_expect(c, 2);
    assert!(
        r.stderr.contains("--yes") && r.stderr.contains("--dry-run"),
        "{}",
        r.stderr
    );
    assert_eq!(live(&stats(&dir), "t"), 7, "nothing deleted without --yes");

    let mut c = evspool(&dir);
    c.args(["purge", "--topic", "t", "--dry-run"]);
    let r = run_expect(c, 0);
    assert!(
        r.stdout.contains("dry run: 7 events would be purged"),
        "{}",
        r.stdout
    );
    assert_eq!(live(&stats(&dir), "t"), 7, "nothing deleted by --dry-run");

    let mut c = evspool(&dir);
    c.args(["purge", "--topic", "t", "--dry-run", "--yes"]);
    run_expect(c, 2);

    let mut c = evspool(&dir);
    c.args(["purge", "--topic", "t", "--yes"]);
    let r = run_expect(c, 0);
    assert!(r.stdout.contains("7 events purged"), "{}", r.stdout);
    let s = stats(&dir);
    assert_eq!(live(&s, "t"), 0);
    assert_eq!(live(&s, "keep"), 2, "other topics untouched");

    // Dead letters are purged separately.
    make_dead_letters(&dir, "d", 2, 0);
    let mut c = evspool(&dir);
    c.args(["purge", "--topic", "d", "--dead", "--yes"]);
    let r = run_expect(c, 0);
    assert!(r.stdout.contains("2 events purged"), "{}", r.stdout);
    assert_eq!(dead(&stats(&dir), "d"), 0);
}

#[test]
fn verify_exits_zero_on_a_clean_store_and_reports_every_chunk_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "t", "v", 120);
    let mut c = evspool(&dir);
    c.arg("verify");
    let r = run_expect(c, 0);
    assert!(r.stdout.contains("0 damaged"), "{}", r.stdout);
    let mut c = evspool(&dir);
    c.args(["verify", "--json"]);
    let v: serde_json::Value = serde_json::from_str(run_expect(c, 0).stdout.trim()).unwrap();
    assert!(
        v["checked"].as_u64().unwrap() >= 3,
        "120 events make >= 3 chunks of 50: {v}"
    );
    assert_eq!(v["quarantined"], 0);
    assert_eq!(live(&stats(&dir), "t"), 120);
}

#[test]
fn compact_reports_sizes_before_and_after_and_keeps_every_event() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "t", "c", 500);
    fill(&dir, "gone", "g", 2000);
    let mut c = evspool(&dir);
    c.args(["purge", "--topic", "gone", "--yes"]);
    run_expect(c, 0);

    let mut c = evspool(&dir);
    c.args(["compact", "--dry-run"]);
    let r = run_expect(c, 0);
    assert!(r.stdout.contains("on disk"), "{}", r.stdout);

    let mut c = evspool(&dir);
    c.arg("compact");
    let r = run_expect(c, 0);
    assert!(
        r.stdout.starts_with("compacted: ") && r.stdout.contains(" -> "),
        "{}",
        r.stdout
    );

    let mut c = evspool(&dir);
    c.args(["--json", "compact"]);
    let v: serde_json::Value = serde_json::from_str(run_expect(c, 0).stdout.trim()).unwrap();
    assert!(v["before_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["after_bytes"].as_u64().unwrap() > 0, "{v}");

    let s = stats(&dir);
    assert_eq!(live(&s, "t"), 500);
    assert_eq!(live(&s, "gone"), 0);
    let mut c = evspool(&dir);
    c.args(["export", "--topic", "t"]);
    let got = uids(&json_lines(&run_expect(c, 0).stdout));
    assert_eq!(got, (0..500).map(|i| format!("c-{i}")).collect());
}

/// Runs a command on a blocking thread so the in-process collector keeps serving.
async fn run_async(c: Command) -> Run {
    tokio::task::spawn_blocking(move || run(c)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_everything_to_an_http_collector_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let d = dir.clone();
    tokio::task::spawn_blocking(move || fill(&d, "t", "dr", 230))
        .await
        .unwrap();
    let collector = Collector::start().await;

    let mut c = evspool(&dir);
    c.args(["drain", "--sink", "http", "--sink-url"])
        .arg(format!("{}/ingest", collector.url))
        .args(["--timeout", "30s"]);
    let r = run_async(c).await;
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("230 delivered"), "{}", r.stdout);
    assert!(r.stdout.contains("0 still queued"), "{}", r.stdout);

    let got: BTreeSet<String> = collector
        .accepted()
        .iter()
        .map(|e| e["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, (0..230).map(|i| format!("dr-{i}")).collect());
    assert!(collector.requests().iter().all(|s| s.path == "/ingest"));
    let d = dir.clone();
    let s = tokio::task::spawn_blocking(move || stats(&d))
        .await
        .unwrap();
    assert_eq!(s.total.events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_against_a_dead_collector_gives_up_at_the_timeout_with_partial_exit_and_loses_nothing()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let d = dir.clone();
    tokio::task::spawn_blocking(move || fill(&d, "t", "dead", 120))
        .await
        .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = evspool(&dir);
    c.args(["drain", "--sink", "http", "--sink-url"])
        .arg(format!("http://127.0.0.1:{port}/ingest"))
        .args(["--timeout", "1s"]);
    let t0 = Instant::now();
    let r = run_async(c).await;
    assert_eq!(r.code, 4, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    assert!(r.stdout.contains("0 delivered"), "{}", r.stdout);
    assert!(r.stdout.contains("120 still queued"), "{}", r.stdout);
    let d = dir.clone();
    let s = tokio::task::spawn_blocking(move || stats(&d))
        .await
        .unwrap();
    assert_eq!(live(&s, "t"), 120, "nothing lost");
    assert_eq!(
        dead(&s, "t"),
        0,
        "nothing dead-lettered for a transient fault"
    );

    // And the same store drains once the collector is back.
    let collector = Collector::start().await;
    collector.respond(|_| Reply::ok());
    let mut c = evspool(&dir);
    c.args(["--json", "drain", "--sink", "http", "--sink-url"])
        .arg(format!("{}/ingest", collector.url));
    let r = run_async(c).await;
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["delivered"], 120);
    assert_eq!(v["complete"], true);
    assert_eq!(collector.accepted().len(), 120);
}

#[test]
fn every_reading_command_on_a_missing_directory_exits_1_naming_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no-such-store");
    let commands: &[&[&str]] = &[
        &["stats"],
        &["peek"],
        &["export"],
        &["verify"],
        &["compact"],
        &["replay", "--topic", "t"],
        &["purge", "--topic", "t", "--yes"],
        &[
            "drain",
            "--sink",
            "http",
            "--sink-url",
            "http://127.0.0.1:9/x",
        ],
    ];
    for args in commands {
        let mut c = evspool(&dir);
        c.args(*args);
        let r = run(c);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(&dir.display().to_string()),
            "{args:?} names the dir: {}",
            r.stderr
        );
    }
    assert!(!dir.exists(), "reading commands do not create a store");
}

#[test]
fn an_unknown_topic_exits_1_naming_the_topic_and_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "track", "u", 2);
    for args in [
        &["stats", "--topic", "trakc"][..],
        &["peek", "--topic", "trakc"],
        &["export", "--topic", "trakc"],
    ] {
        let mut c = evspool(&dir);
        c.args(args);
        let r = run(c);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("\"trakc\""), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("track"),
            "{args:?} lists known topics: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
}

#[test]
fn replay_and_purge_of_an_unknown_topic_exit_1_naming_the_topic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_dead_letters(&dir, "track", 1, 0);
    for args in [
        &["replay", "--topic", "trakc"][..],
        &["purge", "--topic", "trakc", "--yes"],
        &["purge", "--topic", "trakc", "--dead", "--yes"],
    ] {
        let mut c = evspool(&dir);
        c.args(args);
        let r = run(c);
        assert_eq!(
            r.code, 1,
            "{args:?}: a typo must not report success\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        assert!(r.stderr.contains("trakc"), "{args:?}: {}", r.stderr);
    }
    assert_eq!(dead(&stats(&dir), "track"), 1);
}

#[test]
fn usage_errors_exit_2_without_touching_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "t", "u", 1);
    for args in [
        &["stats", "--no-such-flag"][..],
        &["send"],
        &["peek", "-n", "many"],
        &["drain", "--timeout", "5 parsecs"],
        &["import"],
        &["frobnicate"],
    ] {
        let mut c = evspool(&dir);
        c.args(args);
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.is_empty(), "{args:?} says why");
    }
    let mut c = evspool(&dir);
    c.args(["drain"]);
    let r = run_expect(c, 2);
    assert!(
        r.stderr.contains("--sink"),
        "drain without a sink: {}",
        r.stderr
    );
    assert_eq!(live(&stats(&dir), "t"), 1);
}

#[test]
fn a_directory_locked_by_another_process_exits_3_naming_the_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    // Opened and filled by the holder itself: closing and reopening at once
    // can race with another test's fork, which briefly shares the lock's fd.
    let held = Queue::open(&dir, QueueConfig::default()).unwrap();
    let out = rt()
        .block_on(held.enqueue_durable("t", br#"{"uid":"l-0"}"#.to_vec()))
        .unwrap();
    assert!(out.id().is_some());
    let pid = format!("pid {}", std::process::id());
    for args in [
        &["stats"][..],
        &["peek"],
        &["send", "--topic", "t", "{\"uid\":\"x\"}"],
        &["purge", "--topic", "t", "--yes"],
        &["compact"],
    ] {
        let mut c = evspool(&dir);
        c.args(args);
        let r = run(c);
        assert_eq!(r.code, 3, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(&pid),
            "{args:?} names {pid}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("locked"), "{args:?}: {}", r.stderr);
    }
    held.close();
    drop(held);
    // Released: the store is usable again and nothing changed.
    assert_eq!(live(&stats(&dir), "t"), 1);
}

#[test]
fn export_into_a_pipe_closed_after_one_line_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fill(&dir, "t", "pipe", 20_000);
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("evspool"));
    for v in ENV {
        cmd.env_remove(v);
    }
    let mut child = cmd
        .arg("--dir")
        .arg(&dir)
        .arg("export")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(rec["payload"]["uid"], "pipe-0");
    drop(out); // `| head -1`: the reader goes away.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("export kept running after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn demo_finishes_and_reports_nothing_lost_as_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = evspool(&tmp.path().join("demo"));
    c.args(["demo", "--duration", "4s", "--rate", "2000"]);
    let r = run_expect(c, 0);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.trim() == "lost                 0"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("RESULT: nothing lost"), "{}", r.stdout);

    let mut c = evspool(&tmp.path().join("demo"));
    c.args(["--json", "demo", "--duration", "4s", "--rate", "2000"]);
    let r = run_expect(c, 0);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["lost"], 0, "{v}");
    let accepted = v["accepted"].as_u64().unwrap();
    assert!(accepted > 1000, "producers ran: {v}");
    assert!(v["delivered_unique"].as_u64().unwrap() >= accepted, "{v}");
    assert!(
        v["requests_503"].as_u64().unwrap() > 0,
        "the outage happened: {v}"
    );
}
