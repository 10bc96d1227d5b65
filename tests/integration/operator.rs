//! The operator's view of the real `evspool run` binary: what it logs when
//! the collector is down (once per change, not per retry), how fast it stops
//! with the collector down and what it keeps, a second signal, resuming at
//! once after a restart, no colour codes in a log file, and messages naming
//! what the user typed. Child processes on `127.0.0.1:0`; every wait bounded.

use crate::cli_e2e::evspool;
use crate::daemon_e2e::{accepted_uids, cli, config, daemon_for, metric_sum, metrics, uid_of};
use evspool::{Queue, QueueConfig};
use evspool_testkit::collector::{Collector, Reply};
use evspool_testkit::daemon::{Daemon, start};
use evspool_testkit::{client, setup, wait_until};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A URL on a port nothing listens on (bound, then released).
fn closed_port_url() -> (String, tokio::net::TcpSocket) {
    let (origin, port) = evspool_testkit::refusing_origin();
    (format!("{origin}/ingest"), port)
}

/// Posts `n` events `{"uid": "<prefix>-<i>"}` to topic `events`, 50 per
/// request; returns the uids and the ids the 202 answers gave them.
async fn post(d: &Daemon, prefix: &str, n: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let c = client();
    let (mut uids, mut ids) = (BTreeSet::new(), BTreeSet::new());
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<String> = chunk.iter().map(|i| format!("{prefix}-{i}")).collect();
        let body: Vec<serde_json::Value> = batch
            .iter()
            .map(|u| serde_json::json!({ "uid": u }))
            .collect();
        let resp = c
            .post(format!("{}/v1/events?topic=events", d.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let v: serde_json::Value = resp.json().await.unwrap();
        ids.extend(
            v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_string()),
        );
        uids.extend(batch);
    }
    (uids, ids)
}

/// Log lines (of the daemon's stderr) from the first containing `from` on.
fn lines_from(stderr: &str, from: &str) -> Vec<String> {
    stderr
        .lines()
        .skip_while(|l| !l.contains(from))
        .map(str::to_string)
        .collect()
}

/// `evspool_requests_total{outcome="retry",topic="events"}` from `/metrics`.
async fn failed_requests(d: &Daemon) -> u64 {
    let page = metrics(d).await;
    metric_sum(
        &page,
        "evspool_requests_total",
        &[r#"outcome="retry""#, r#"topic="events""#],
    ) as u64
}

/// The stable ids of every event of topic `events` in `dir`'s store, and the
/// earliest time any of them may be retried (0 for one never delayed).
fn stored(dir: &std::path::Path) -> (BTreeSet<String>, u64) {
    let q = Queue::open(dir, QueueConfig::default()).unwrap();
    let peeked = q.peek("events", 0, 1_000_000).unwrap();
    let ids = peeked.iter().map(|p| p.event.id.to_string()).collect();
    let not_before = peeked
        .iter()
        .map(|p| p.not_before_ms.unwrap_or(0))
        .min()
        .unwrap_or(0);
    q.close();
    (ids, not_before)
}

const UNREACHABLE: &str = "Collector unreachable";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_is_a_warn_naming_it_within_seconds_then_a_few_lines_a_minute_at_most() {
    let (url, _closed) = closed_port_url();
    let s = setup(&config("", "", Some(&url), ""));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let t0 = Instant::now();
    post(&d, "w", 20).await;

    assert!(
        wait_until(Duration::from_secs(5), || d.stderr().contains(UNREACHABLE)).await,
        "no WARN within 5 s of the first events; stderr:\n{}",
        d.stderr()
    );
    let warned = t0.elapsed();
    let first = lines_from(&d.stderr(), UNREACHABLE)[0].clone();
    assert!(first.contains("WARN"), "{first}");
    assert!(
        first.contains(&url),
        "the line names the collector: {first}"
    );
    assert_eq!(
        first.matches(&url).count(),
        1,
        "named once (the cause leaves the URL out): {first}"
    );
    assert!(
        first.contains("Connection refused"),
        "the line gives the cause: {first}"
    );

    // The changes that follow (breaker open, half-open) come within a second
    // or two; then a bounded window of the outage: retries go on (a probe
    // every 100-500 ms), the log stays silent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (lines_before, failed_before) = (
        lines_from(&d.stderr(), UNREACHABLE).len(),
        failed_requests(&d).await,
    );
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let retries = failed_requests(&d).await - failed_before;
    let lines = lines_from(&d.stderr(), UNREACHABLE);
    let in_window = lines.len() - lines_before;
    println!(
        "first WARN {warned:?} after the first events; {lines_before} lines for the changes; then {in_window} lines in {window:?} ({:.0}/min) while {retries} requests failed",
        in_window as f64 * 60.0 / window.as_secs_f64()
    );
    assert!(
        retries >= 10,
        "the collector must have been retried all along: {retries} failed requests"
    );
    // At most one line in 10 s (a few a minute), whatever the retry rate.
    assert!(
        in_window <= 1,
        "{in_window} lines in {window:?} for {retries} failed requests:\n{}",
        lines.join("\n")
    );
    // In all: the WARN, "breaker open" and "half-open": one line per change.
    assert!(lines.len() <= 3, "{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("Breaker open")),
        "{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_collector_down_exits_zero_at_once_and_the_backlog_is_on_disk_at_the_next_start()
 {
    let (closed, _port) = closed_port_url();
    let s = setup(&config("", "", Some(&closed), ""));
    let mut d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let (_, ids) = post(&d, "t", 120).await;
    assert!(
        wait_until(Duration::from_secs(5), || d.stderr().contains(UNREACHABLE)).await,
        "{}",
        d.stderr()
    );

    let t = Instant::now();
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(30)).await;
    let took = t.elapsed();
    let stderr = d.stderr();
    println!("exit {status:?} {took:?} after SIGTERM with the collector down");
    let status = status.unwrap_or_else(|| panic!("no exit within 30 s:\n{stderr}"));
    assert_eq!(status.code(), Some(0), "{stderr}");
    // The deadline is 20 s: a dead collector is not waited for.
    assert!(took <= Duration::from_secs(2), "took {took:?}:\n{stderr}");
    let stop = lines_from(&stderr, "Stopping");
    assert!(
        stop.iter().any(|l| l.contains("topic=events")
            && l.contains("events=120")
            && l.contains("collector unreachable")),
        "the log says which topic keeps how many events, and why:\n{stderr}"
    );
    assert!(
        stop.iter().any(|l| l.contains("events_on_disk=120")),
        "{stderr}"
    );

    // The next start finds every event, under the ids the 202s gave.
    let (on_disk, _) = stored(&s.dir);
    assert_eq!(on_disk, ids, "the backlog on disk at the next start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_while_a_slow_collector_is_still_draining() {
    let collector = Collector::start().await;
    collector.respond(|_| Reply::ok().delay(Duration::from_millis(800)));
    let (s, mut d) = daemon_for(&collector).await;
    let (uids, ids) = post(&d, "s", 1000).await;
    assert!(
        wait_until(Duration::from_secs(10), || !collector.accepted().is_empty()).await,
        "the collector takes events"
    );

    d.sigterm();
    // The drain makes progress (the collector accepts, slowly): it goes on.
    assert!(
        wait_until(Duration::from_secs(10), || d.stderr().contains("Stopping")).await,
        "{}",
        d.stderr()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        d.wait_exit(Duration::ZERO).await.is_none(),
        "the first signal drains while delivery progresses:\n{}",
        d.stderr()
    );

    let t = Instant::now();
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(10)).await;
    let took = t.elapsed();
    let stderr = d.stderr();
    println!("exit {status:?} {took:?} after the second signal");
    let status = status.unwrap_or_else(|| panic!("no exit within 10 s:\n{stderr}"));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    assert!(stderr.contains("Second signal: exiting now"), "{stderr}");
    let delivered = accepted_uids(&collector);
    assert!(
        delivered.len() < uids.len(),
        "the test must stop the drain half-way ({} of {} delivered)",
        delivered.len(),
        uids.len()
    );

    // Nothing lost: what was not delivered is on disk, under its id.
    let (on_disk, _) = stored(&s.dir);
    let delivered_ids = collector.accepted().len();
    assert!(on_disk.is_subset(&ids));
    let undelivered: BTreeSet<&String> = uids.difference(&delivered).collect();
    assert!(
        on_disk.len() >= undelivered.len(),
        "{} undelivered events, {} on disk ({delivered_ids} accepted)",
        undelivered.len(),
        on_disk.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_with_the_collector_back_events_waiting_out_a_backoff_go_at_once() {
    let collector = Collector::start().await;
    // The collector asks for two minutes: the backoff saved with the events.
    collector.respond(|_| Reply::status(503).header("retry-after", "120"));
    // Default linger (5 s + up to 1 s): events made due must not wait for it either.
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[queue]
commit_interval = "10ms"
[sink]
type = "http"
url = "{}/ingest"
"#,
        collector.url
    );
    let s = setup(&text);
    let mut d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let (uids, ids) = post(&d, "r", 50).await;
    assert!(
        wait_until(Duration::from_secs(10), || !collector.requests().is_empty()).await,
        "a full batch goes at once: {}",
        d.stderr()
    );
    // The stop waits for the batch in flight to be settled, then keeps it.
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", d.stderr());
    let (on_disk, not_before) = stored(&s.dir);
    assert_eq!(on_disk, ids);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        not_before > now_ms + 60_000,
        "every event waits out the saved backoff, over a minute away: {not_before} vs now {now_ms}"
    );

    collector.respond(|_| Reply::ok());
    let t = Instant::now();
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let ok = collector
        .wait_for(Duration::from_secs(10), |a| {
            a.iter()
                .filter_map(uid_of)
                .collect::<BTreeSet<_>>()
                .is_superset(&uids)
        })
        .await;
    let took = t.elapsed();
    println!("delivered {took:?} after spawning the restarted daemon (saved backoff: 120 s)");
    assert!(ok, "not delivered within 10 s:\n{}", d.stderr());
    assert!(took <= Duration::from_secs(2), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_log_has_no_colour_codes_when_stderr_is_not_a_terminal() {
    let (closed, _port) = closed_port_url();
    let s = setup(&config("", "", Some(&closed), ""));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    post(&d, "c", 5).await;
    assert!(
        wait_until(Duration::from_secs(5), || d.stderr().contains(UNREACHABLE)).await,
        "{}",
        d.stderr()
    );
    let stderr = d.stderr();
    assert!(stderr.contains(" WARN "), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in a log that is not a terminal:\n{stderr:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_as_dir_and_a_bad_sink_url_are_reported_as_the_user_typed_them() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let (code, _, stderr) = cli(&file, &["stats"], &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--dir {} is a file, not an evspool store directory",
            file.display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("create one"),
        "`run` refuses a file: no suggestion that it creates a store there:\n{stderr}"
    );

    let dir = tmp.path().join("store");
    for args in [
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--sink-url",
            "collector:9000",
        ][..],
        &["run", "--sink", "http", "--sink-url", "collector:9000"][..],
        &[
            "drain",
            "--sink",
            "mixpanel",
            "--sink-url",
            "collector:9000",
        ][..],
    ] {
        let out = evspool(&dir).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--sink-url")
                && stderr.contains("collector:9000")
                && stderr.contains("not an http:// or https:// URL"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("topic \"track\"") && !stderr.contains("config `url`"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.exists(), "a refused command creates nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_is_one_error_saying_what_to_check_and_where_the_daemon_reads_it() {
    const TOKEN: &str = "tok-operator-3141";
    let collector = Collector::start().await;
    collector.respond(|_| Reply::status(401).body("bad token"));
    let s = setup(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[queue]
commit_interval = "10ms"
[forward]
flush_interval = "20ms"
config_fault_probe = "200ms"
[sink]
type = "http"
url = "{}/ingest?api_key=k-2718"
auth = "bearer"
"#,
        collector.url
    ));
    let d = start(
        &s.dir,
        Some(&s.config),
        &[],
        &[("EVSPOOL_SINK_TOKEN", TOKEN)],
    )
    .await;
    post(&d, "a", 10).await;
    assert!(
        wait_until(Duration::from_secs(5), || collector.requests().len() >= 3).await,
        "probes go on: {}",
        d.stderr()
    );
    let stderr = d.stderr();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Collector refused the configuration"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one line for {} probes:\n{stderr}",
        collector.requests().len()
    );
    let e = errors[0];
    for want in [
        "ERROR",
        "status=401",
        "bad token",
        "check the sink's bearer token",
        "EVSPOOL_SINK_TOKEN",
        "/ingest?…",
    ] {
        assert!(e.contains(want), "{want:?} missing from: {e}");
    }
    assert!(
        !stderr.contains(TOKEN) && !stderr.contains("k-2718"),
        "a secret reached the log:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_at_the_ceiling_are_one_warning_with_counts_per_reason() {
    let (closed, _port) = closed_port_url();
    let s = setup(&config(
        "",
        "",
        Some(&closed),
        "\n[queue.ceiling]\nmax_events = 20\npolicy = \"drop_newest\"\n",
    ));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    post(&d, "x", 50).await;
    post(&d, "y", 50).await;
    assert!(
        wait_until(Duration::from_secs(5), || d
            .stderr()
            .contains("Queue at its ceiling"))
        .await,
        "{}",
        d.stderr()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stderr = d.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("dropped")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("policy=drop_newest")
            && lines[0].contains("dropped=ceiling_newest="),
        "{}",
        lines[0]
    );
    // The count is what the queue counted by then: all 80 in one round, or the
    // first of them (a later round's are summed per minute).
    let n: u64 = lines[0]
        .split("dropped=ceiling_newest=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((1..=80).contains(&n), "{}", lines[0]);
}
