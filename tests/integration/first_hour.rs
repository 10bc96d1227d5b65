//! What a newcomer meets in the first hour (issue 23), end to end with the
//! real binary: a backlog moved to another host keeps its bytes and the ids
//! its collector deduplicates on; `peek -n` counts in total; counts read as
//! English; a failed start leaves nothing behind; `/metrics` passes
//! `promtool check metrics`; NDJSON errors name the broken line; the NATS
//! sink warns about a duplicate window shorter than its retries.

use crate::cli_e2e::evspool;
use crate::daemon_e2e::{cli, config, metrics};
use evspool::{Queue, QueueConfig};
use evspool_testkit::collector::Collector;
use evspool_testkit::daemon::{self, start};
use evspool_testkit::requires;
use evspool_testkit::{client, setup, wait_until};
use std::collections::BTreeMap;
use std::time::Duration;

/// Payloads whose bytes a re-serialization would change: key order, a
/// 30-digit integer, `1.10`, an exponent, spacing.
fn tricky(i: usize) -> String {
    format!(
        r#"{{"uid":"m-{i}","z":1,"a":2,"big":123456789012345678901234567890,"x":1.10,"e":1E+2, "s" : "ü\u00e9"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_moved_to_another_hosts_daemon_keeps_every_byte_and_the_ids_its_collector_saw() {
    let tmp = tempfile::tempdir().unwrap();
    // Host A: a store with a backlog (the collector never took it).
    let a = tmp.path().join("host-a");
    let mut ids = BTreeMap::new();
    {
        let q = Queue::open(&a, QueueConfig::default()).unwrap();
        for i in 0..40 {
            match q
                .enqueue_durable("events", tricky(i).into_bytes())
                .await
                .unwrap()
            {
                evspool::Enqueued::Accepted(id) => ids.insert(format!("m-{i}"), id.to_string()),
                other => panic!("{other:?}"),
            };
        }
        q.close();
    }
    // `export` writes every payload byte for byte.
    let file = tmp.path().join("backlog.ndjson");
    let (code, _, err) = cli(&a, &["export", "-o", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("exported 40 events"), "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 40);
    for i in 0..40 {
        assert!(
            text.contains(&format!(r#""payload":{}"#, tricky(i))),
            "payload {i} is not byte for byte in the export:\n{text}"
        );
    }

    // Host B: a daemon forwarding to its collector; the backlog is imported
    // through it (its admin socket) while it runs.
    let collector = Collector::start().await;
    let b = setup(&config(
        "",
        "",
        Some(&format!("{}/ingest", collector.url)),
        "",
    ));
    let d = start(&b.dir, Some(&b.config), &[], &[]).await;
    let (code, out, err) = cli(&b.dir, &["import", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("imported 40 events; 0 lines failed"), "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || collector.accepted().len() >= 40).await,
        "the collector got {} of 40:\n{}",
        collector.accepted().len(),
        d.stderr()
    );
    // The collector sees host A's ids, so copies host A delivered before the
    // move would be deduplicated; and every other byte as host A stored it.
    let mut seen = BTreeMap::new();
    for e in collector.accepted() {
        let uid = e["uid"].as_str().unwrap().to_string();
        seen.insert(uid, e["evspool_id"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ids, "the ids the collector saw are host A's");
    let bodies: String = collector
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    for i in 0..40 {
        let sent = format!(
            r#"{{"evspool_id":"{}",{}"#,
            ids[&format!("m-{i}")],
            &tricky(i)[1..]
        );
        assert!(
            bodies.contains(&sent),
            "event {i} as sent: {sent}\nin:\n{bodies}"
        );
    }
    // A second import of the same file (a move retried) reaches the
    // collector under the same ids: its deduplication absorbs it.
    let (code, out, err) = cli(&b.dir, &["import", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(Duration::from_secs(30), || collector.accepted().len() >= 80).await,
        "{}",
        d.stderr()
    );
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for e in collector.accepted() {
        *copies
            .entry(e["evspool_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(copies.len(), 40, "still 40 distinct ids: {copies:?}");
    assert!(copies.values().all(|n| *n == 2), "{copies:?}");
}

#[test]
fn an_export_of_any_bytes_imports_back_byte_for_byte_and_peek_n_counts_in_total() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let payloads: Vec<Vec<u8>> = vec![
        tricky(0).into_bytes(),
        b"{\n  \"pretty\": [1, 2]\n}\n".to_vec(),
        b"plain text, not JSON".to_vec(),
        vec![0xff, 0x00, 0xfe, b'{'],
        br#"[1,2,3]"#.to_vec(),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = Queue::open(&a, QueueConfig::default()).unwrap();
        for p in &payloads {
            let _ = q.enqueue_durable("one", p.clone()).await.unwrap();
        }
        for i in 0..4 {
            let _ = q
                .enqueue_durable("two", format!(r#"{{"n":{i}}}"#).into_bytes())
                .await
                .unwrap();
        }
        q.close();
    });
    // `peek -n 3` shows three events in all, not three per topic: the oldest.
    let out = evspool(&a)
        .args(["--json", "peek", "-n", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines().all(|l| l.contains(r#""topic":"one""#)),
        "{text}"
    );
    let out = evspool(&a).args(["peek", "-n", "7"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1 + 7, "a header and 7 rows:\n{text}");

    let file = tmp.path().join("one.ndjson");
    let out = evspool(&a)
        .args(["export", "--topic", "one", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let b = tmp.path().join("b");
    let out = evspool(&b).arg("import").arg(&file).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 exported events: not JSON objects"),
        "the events that could not carry their id are counted: {err}"
    );
    let q = Queue::open(&b, QueueConfig::default()).unwrap();
    let lease = q.lease("one", 100).unwrap().unwrap();
    let got: Vec<Vec<u8>> = lease.events().iter().map(|e| e.payload.to_vec()).collect();
    let a_ids: Vec<String> = {
        let text = std::fs::read_to_string(&file).unwrap();
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(got.len(), payloads.len());
    for ((got, want), id) in got.iter().zip(&payloads).zip(&a_ids) {
        if want.first() == Some(&b'{') && serde_json::from_slice::<serde_json::Value>(want).is_ok()
        {
            // A JSON object carries its first id, inserted first; the rest
            // of its bytes unchanged.
            let mut expected = format!(r#"{{"evspool_id":"{id}","#).into_bytes();
            expected.extend_from_slice(&want[1..]);
            assert_eq!(got, &expected, "{}", String::from_utf8_lossy(got));
        } else {
            assert_eq!(got, want, "byte for byte");
        }
    }
}

#[test]
fn replaying_one_dead_letter_says_one_event() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = Queue::open(&dir, QueueConfig::default()).unwrap();
        let _ = q
            .enqueue_durable("t", br#"{"a":1}"#.to_vec())
            .await
            .unwrap();
        let lease = q.lease("t", 10).unwrap().unwrap();
        let seq = lease.events()[0].seq();
        q.settle(lease, evspool::Settlement::delivered().dead(seq, "bad"))
            .unwrap();
        q.close();
    });
    let out = evspool(&dir)
        .args(["replay", "--topic", "t"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "1 event replayed", "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_busy_port_fails_and_leaves_no_store_directory() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new-store");
    let mut p = daemon::spawn(
        &dir,
        None,
        &["run", "--listen", &format!("127.0.0.1:{port}")],
        &[],
    );
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("still running after 60 s: {}", p.stderr()));
    let err = p.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        !dir.exists(),
        "the failed start left {} behind: {:?}",
        dir.display(),
        std::fs::read_dir(&dir).map(|d| d.count())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_has_help_text_and_promtool_accepts_the_page() {
    let collector = Collector::start().await;
    let s = setup(&config(
        "",
        "",
        Some(&format!("{}/ingest", collector.url)),
        "",
    ));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let c = client();
    let r = c
        .post(format!("{}/v1/events?topic=events", d.url))
        .body("{\"a\":1}\n{\"a\":2}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(wait_until(Duration::from_secs(20), || collector.accepted().len() >= 2).await);
    // The gauges are refreshed once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let page = metrics(&d).await;
    let types: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(types.len() >= 10, "{page}");
    for name in &types {
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > name.len() + 12),
            "{name} has no help text:\n{page}"
        );
    }
    if !requires::has_tool("promtool") {
        assert!(
            !requires::everything_required(),
            "promtool is missing (Debian's `prometheus` package; .ci/run installs it)"
        );
        eprintln!("promtool is not installed: checked # HELP and # TYPE here only");
        return;
    }
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    p.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- page:\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_body_broken_on_its_second_line_is_refused_naming_line_2() {
    let s = setup(&config("", "", None, ""));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let r = client()
        .post(format!("{}/v1/events?topic=events", d.url))
        .body("{\"a\":1}\n{\"b\":\n{\"c\":3}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("line 2, column 5"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_duplicate_window_shorter_than_the_longest_retry_gap_is_warned_about() {
    // No server is needed: the sink connects on its first send.
    let s = setup(&config(
        "",
        "",
        None,
        "\n[topics.fleet.sink]\ntype = \"nats\"\nservers = [\"nats://127.0.0.1:9\"]\n[topics.fleet.sink.stream]\nname = \"S\"\nduplicate_window = \"30s\"\n[topics.fleet.forward.backoff]\nmax = \"90s\"\n",
    ));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    assert!(
        wait_until(Duration::from_secs(10), || d
            .stderr()
            .contains("duplicate window"))
        .await,
        "{}",
        d.stderr()
    );
    let log = d.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("duplicate window is shorter"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("WARN") && line.contains("topic=\"fleet\""),
        "{line}"
    );
    assert!(
        line.contains("duplicate_window=30s") && line.contains("longest_retry_gap=1m 30s"),
        "{line}"
    );
    // The default window (2m) covers the default retry gaps (60s): no warning.
    let s = setup(&config(
        "",
        "",
        None,
        "\n[topics.fleet.sink]\ntype = \"nats\"\nservers = [\"nats://127.0.0.1:9\"]\n[topics.fleet.sink.stream]\nname = \"S\"\n",
    ));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !d.stderr().contains("duplicate window is shorter"),
        "{}",
        d.stderr()
    );
}
