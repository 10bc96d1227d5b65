//! The sidecar daemon end to end: the real `evspool run` binary on
//! `127.0.0.1:0`, fed through every ingest route, forwarding to the support
//! collector; SIGKILL and restart, SIGTERM drain, limits, and the token.
//!
//! Every daemon is a child process owned by a [`Daemon`] guard that kills it on
//! drop, so no daemon outlives a failed test. Every wait is bounded.

use crate::cli_e2e::evspool;
use evspool::{Queue, QueueConfig, Stats};
use evspool_testkit::admin;
use evspool_testkit::collector::{Collector, Reply};
use evspool_testkit::daemon::{self, Daemon, start};
use evspool_testkit::{Setup, client, setup, wait_until};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A config file with short intervals so tests run in seconds.
pub(crate) fn config(top: &str, server: &str, sink_url: Option<&str>, extra: &str) -> String {
    let mut s = format!(
        r#"{top}
[server]
listen = "127.0.0.1:0"
shutdown_deadline = "20s"
{server}
[queue]
commit_interval = "10ms"

[forward]
flush_interval = "20ms"
flush_jitter = "0s"

[forward.backoff]
base = "50ms"
max = "500ms"

[forward.breaker]
open_for = "100ms"
open_max = "500ms"
"#
    );
    if let Some(u) = sink_url {
        s += &format!("\n[sink]\ntype = \"http\"\nurl = \"{u}\"\n");
    }
    s += extra;
    s
}

/// The daemon's `/metrics` page.
pub(crate) async fn metrics(d: &Daemon) -> String {
    metrics_at(&d.url).await
}

/// The `/metrics` page of the daemon at `url`.
pub(crate) async fn metrics_at(url: &str) -> String {
    client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of the samples of metric `name` on a `/metrics` page, over the
/// lines that carry every one of `labels` (e.g. `topic="events"`).
pub(crate) fn metric_sum(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A daemon on the default test config forwarding topic `events` to
/// `collector`'s `/ingest`, with its setup (which owns the store directory).
pub(crate) async fn daemon_for(collector: &Collector) -> (Setup, Daemon) {
    let s = setup(&config(
        "",
        "",
        Some(&format!("{}/ingest", collector.url)),
        "",
    ));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    (s, d)
}

/// `/admin/stats`: with a token over TCP, without one on the admin socket
/// (the only place a daemon without a token serves it).
pub(crate) async fn admin_stats(c: &reqwest::Client, d: &Daemon, token: Option<&str>) -> Stats {
    let Some(t) = token else {
        return serde_json::from_value(admin::get(&d.dir, "/admin/stats").await).unwrap();
    };
    let resp = c
        .get(format!("{}/admin/stats", d.url))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Live (not yet delivered, not dead) events of `topic`.
pub(crate) fn live(s: &Stats, topic: &str) -> u64 {
    s.topics.get(topic).map_or(0, |t| {
        t.ready.events + t.retrying.events + t.leased.events + t.uncommitted.events
    })
}

/// Every `uid` the collector accepted (top level or under `properties`).
pub(crate) fn accepted_uids(c: &Collector) -> BTreeSet<String> {
    c.accepted().iter().filter_map(uid_of).collect()
}

pub(crate) fn uid_of(e: &serde_json::Value) -> Option<String> {
    e.get("uid")
        .or_else(|| e.get("properties").and_then(|p| p.get("uid")))
        .or_else(|| e.get("$set").and_then(|p| p.get("uid")))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

const FORM: &str = "application/x-www-form-urlencoded";

/// Runs a CLI command on a blocking thread (the collector and daemon keep going).
pub(crate) async fn cli(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = evspool(dir);
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_events_as_object_array_and_ndjson_are_answered_202_with_ids_and_reach_the_collector()
 {
    let collector = Collector::start().await;
    let s = setup(&config("", "", None, ""));
    let sink_url = format!("{}/ingest", collector.url);
    let d = start(
        &s.dir,
        Some(&s.config),
        &[
            "--listen",
            "127.0.0.1:0",
            "--sink",
            "http",
            "--sink-url",
            &sink_url,
        ],
        &[],
    )
    .await;
    let c = client();
    let url = format!("{}/v1/events?topic=events", d.url);
    let bodies = [
        (r#"{"uid":"n-0","k":1}"#.to_string(), 1),
        (
            r#"[{"uid":"n-1"},{"uid":"n-2"},{"uid":"n-3"}]"#.to_string(),
            3,
        ),
        ("{\"uid\":\"n-4\"}\n\n{\"uid\":\"n-5\"}\n".to_string(), 2),
    ];
    let mut ids = BTreeSet::new();
    for (body, n) in bodies {
        let resp = c.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 202, "{body}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["accepted"], n, "{v}");
        let got = v["ids"].as_array().unwrap();
        assert_eq!(got.len(), n, "{v}");
        for id in got {
            let id = id.as_str().unwrap();
            assert!(
                id.len() <= 36 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{id}"
            );
            assert!(ids.insert(id.to_string()), "ids are unique: {id}");
        }
    }
    let want: BTreeSet<String> = (0..6).map(|i| format!("n-{i}")).collect();
    assert!(
        collector
            .wait_for(Duration::from_secs(20), |a| {
                a.iter().filter_map(uid_of).collect::<BTreeSet<_>>() == want
            })
            .await,
        "collector got {:?}; daemon stderr:\n{}",
        accepted_uids(&collector),
        d.stderr()
    );
    assert!(collector.requests().iter().all(|r| r.path == "/ingest"));
    // The payload is forwarded untouched.
    assert!(collector.accepted().iter().any(|e| e["k"] == 1));
    // An unknown topic is refused, not silently created.
    let resp = c
        .post(format!("{}/v1/events?topic=nope", d.url))
        .body(r#"{"uid":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixpanel_and_segment_routes_land_in_their_topics_and_reach_each_topics_sink() {
    let collector = Collector::start().await;
    let mut extra = String::new();
    for t in ["track", "engage", "groups", "import", "segment"] {
        extra += &format!(
            "\n[topics.{t}.sink]\ntype = \"http\"\nurl = \"{}/t/{t}\"\n",
            collector.url
        );
    }
    let s = setup(&config("", "", None, &extra));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let c = client();

    // /track with verbose=1: form `data=<urlencoded JSON array>`.
    let track = r#"[{"event":"Signed up","properties":{"token":"t","distinct_id":"u1","uid":"track-0"}},{"event":"Viewed","properties":{"token":"t","distinct_id":"u1","uid":"track-1"}}]"#;
    let resp = c
        .post(format!("{}/track?verbose=1&ip=0", d.url))
        .header("content-type", FORM)
        .body(form(&[("data", track)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"status": 1, "error": null}));

    // /track with base64 data (mixpanel-ruby, the JS library), not verbose: "1".
    let one = r#"{"event":"Paid","properties":{"token":"t","distinct_id":"u2","uid":"track-2"}}"#;
    let resp = c
        .post(format!("{}/track", d.url))
        .header("content-type", FORM)
        .body(form(&[("data", &b64(one))]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap().trim(), "1");

    // /engage and /groups, form-encoded.
    let engage = r#"[{"$token":"t","$distinct_id":"u1","$set":{"plan":"pro","uid":"engage-0"}}]"#;
    let groups =
        r#"{"$token":"t","$group_key":"company","$group_id":"acme","$set":{"uid":"groups-0"}}"#;
    for (path, data) in [("engage", engage), ("groups", groups)] {
        let resp = c
            .post(format!("{}/{path}?verbose=1", d.url))
            .header("content-type", FORM)
            .body(form(&[("data", &b64(data))]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["status"], 1, "{path}: {v}");
    }

    // /import with a JSON body (the HTTP API's own shape).
    let import = r#"[{"event":"Old","properties":{"time":1600000000,"distinct_id":"u3","$insert_id":"i1","uid":"import-0"}},{"event":"Old","properties":{"time":1600000001,"distinct_id":"u3","$insert_id":"i2","uid":"import-1"}}]"#;
    let resp = c
        .post(format!("{}/import?strict=1", d.url))
        .header("content-type", "application/json")
        .body(import)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["num_records_imported"], 2, "{v}");

    // Segment /v1/batch.
    let batch = r#"{"batch":[{"type":"track","event":"A","userId":"u","properties":{"uid":"segment-0"}},{"type":"identify","userId":"u","traits":{},"uid":"segment-1"}],"context":{"library":{"name":"analytics-node"}}}"#;
    let resp = c
        .post(format!("{}/v1/batch", d.url))
        .header("content-type", "application/json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["success"], true);

    // Each event reaches its topic's sink (the collector path names the topic).
    let want: BTreeSet<(String, String)> = [
        ("track", "track-0"),
        ("track", "track-1"),
        ("track", "track-2"),
        ("engage", "engage-0"),
        ("groups", "groups-0"),
        ("import", "import-0"),
        ("import", "import-1"),
        ("segment", "segment-0"),
        ("segment", "segment-1"),
    ]
    .iter()
    .map(|(t, u)| (format!("/t/{t}"), u.to_string()))
    .collect();
    let got = || -> BTreeSet<(String, String)> {
        collector
            .requests()
            .iter()
            .flat_map(|r| {
                r.events
                    .iter()
                    .filter_map(|e| uid_of(e).map(|u| (r.path.clone(), u)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || got() == want).await,
        "collector saw {:?}; daemon stderr:\n{}",
        got(),
        d.stderr()
    );
    // Segment's shared context was copied into each item.
    let seg = collector
        .requests()
        .into_iter()
        .find(|r| r.path == "/t/segment")
        .unwrap();
    assert!(
        seg.events
            .iter()
            .all(|e| e["context"]["library"]["name"] == "analytics-node")
    );
    // Delivered and acknowledged (the ack follows the collector's answer): nothing left.
    let until = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = admin_stats(&c, &d, None).await;
        if stats.total.events == 0 || Instant::now() >= until {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats.total.events, 0, "{stats:?}");
}

/// mixpanel-python posts `data=<JSON>&verbose=1&ip=0` and mixpanel-ruby
/// `data=<base64>&verbose=1` as the form body, and both parse the answer as
/// JSON and require `status == 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_mixpanel_sdk_requests_with_verbose_in_the_form_body_get_a_json_status_1() {
    let s = setup(&config("active = false", "", None, ""));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let c = client();
    let ev = r#"[{"event":"E","properties":{"token":"t","distinct_id":"u","time":1700000000,"$insert_id":"x1"}}]"#;
    let python = form(&[("data", ev), ("verbose", "1"), ("ip", "0")]);
    let ruby = form(&[("data", &b64(ev)), ("verbose", "1")]);
    let ruby_import = form(&[("data", &b64(ev)), ("verbose", "1"), ("api_key", "k")]);
    let cases = [
        ("python", "track", &python),
        ("ruby", "track", &ruby),
        ("python", "engage", &python),
        ("ruby", "engage", &ruby),
        ("python", "groups", &python),
        ("python", "import", &python),
        ("ruby", "import", &ruby_import),
    ];
    let mut failures = Vec::new();
    for (sdk, path, body) in cases {
        let resp = c
            .post(format!("{}/{path}", d.url))
            .header("content-type", FORM)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let ok = status == 200
            && parsed
                .as_ref()
                .is_some_and(|v| v.get("status") == Some(&serde_json::json!(1)));
        if !ok {
            failures.push(format!("{sdk} /{path}: {status} {text:?}"));
        }
    }
    // Every request was stored, whatever the answer.
    let stats = admin_stats(&c, &d, None).await;
    for (t, n) in [("track", 2), ("engage", 2), ("groups", 1), ("import", 2)] {
        assert_eq!(live(&stats, t), n, "{t}");
    }
    assert!(
        failures.is_empty(),
        "the SDK would raise on these answers (it reads `status` from a JSON object):\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_read_commands_go_through_the_admin_api_while_the_daemon_holds_the_store() {
    let s = setup(&config("active = false", "", None, ""));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let c = client();
    let track = r#"[{"event":"a","properties":{"uid":"t0"}},{"event":"b","properties":{"uid":"t1"}},{"event":"c","properties":{"uid":"t2"}}]"#;
    let resp = c
        .post(format!("{}/track?verbose=1", d.url))
        .header("content-type", FORM)
        .body(form(&[("data", track)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .post(format!("{}/v1/batch", d.url))
        .body(r#"{"batch":[{"type":"track","event":"s","userId":"u"},{"type":"track","event":"s2","userId":"u"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let (code, out, err) = cli(&s.dir, &["stats", "--json"], &[]).await;
    assert_eq!(code, 0, "stats through the admin API: {err}");
    let stats: Stats = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((live(&stats, "track"), live(&stats, "segment")), (3, 2));

    let (code, out, err) = cli(&s.dir, &["stats"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("total        5 events"), "{out}");

    let (code, out, err) = cli(&s.dir, &["--json", "peek", "--topic", "track"], &[]).await;
    assert_eq!(code, 0, "{err}");
    let uids: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            v["payload"]["properties"]["uid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(uids, ["t0", "t1", "t2"]);

    let (code, out, err) = cli(&s.dir, &["export", "--topic", "segment"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");

    let (code, out, err) = cli(
        &s.dir,
        &["send", "--topic", "events", r#"{"uid":"via-cli"}"#],
        &[],
    )
    .await;
    assert_eq!(code, 0, "send through the daemon: {err}");
    assert_eq!(out.lines().count(), 1, "{out}");

    let (code, out, err) = cli(&s.dir, &["verify"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = cli(&s.dir, &["purge", "--topic", "track", "--dry-run"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 events would be purged"), "{out}");

    // Compaction needs the store to itself: a clear "locked" answer.
    let (code, _, err) = cli(&s.dir, &["compact"], &[]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("stop the daemon"), "{err}");

    let stats = admin_stats(&c, &d, None).await;
    assert_eq!(
        (
            live(&stats, "track"),
            live(&stats, "segment"),
            live(&stats, "events")
        ),
        (3, 2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ndjson_line_is_a_400_naming_the_line_and_nothing_from_the_request_is_enqueued() {
    let s = setup(&config("active = false", "", None, ""));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let c = client();
    let body = "{\"uid\":\"a\"}\n{\"uid\":\"b\"}\n{\"uid\": oops}\n{\"uid\":\"d\"}\n";
    let resp = c
        .post(format!("{}/v1/events?topic=events", d.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("line 3"), "names the line: {msg}");

    let resp = c
        .post(format!("{}/v1/events?topic=events", d.url))
        .body("{\"uid\":\"a\"}\n[1]\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");

    let stats = admin_stats(&c, &d, None).await;
    assert_eq!(stats.total.events, 0, "all or nothing: {stats:?}");

    // The same daemon still accepts a good body.
    let resp = c
        .post(format!("{}/v1/events?topic=events", d.url))
        .body("{\"uid\":\"a\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(admin_stats(&c, &d, None).await.total.events, 1);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_and_a_gzip_bomb_are_413_and_neither_enqueues_anything() {
    let s = setup(&config(
        "active = false",
        "max_body = \"64KiB\"\nmax_decompressed = \"128KiB\"\nmax_events_per_request = 1000000",
        None,
        "",
    ));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let c = client();
    let url = format!("{}/v1/events?topic=events", d.url);
    let line = "{\"uid\":\"bomb\"}\n";

    // Over max_body on the wire.
    let big = line.repeat(100 * 1024 / line.len());
    let resp = c.post(&url).body(big).send().await.unwrap();
    assert_eq!(resp.status(), 413);

    // 4 MiB of valid NDJSON in a few KiB of gzip: past max_decompressed.
    let plain = line.repeat(4 * 1024 * 1024 / line.len());
    let bomb = gzip(plain.as_bytes());
    assert!(
        bomb.len() < 64 * 1024,
        "the bomb fits the body limit: {}",
        bomb.len()
    );
    let resp = c
        .post(&url)
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("decompress"), "{v}");

    // Also on a Mixpanel route.
    let resp = c
        .post(format!("{}/track", d.url))
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(gzip(plain.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    assert_eq!(admin_stats(&c, &d, None).await.total.events, 0);

    // A small gzip body is accepted.
    let resp = c
        .post(&url)
        .header("content-encoding", "gzip")
        .body(gzip(line.repeat(10).as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(admin_stats(&c, &d, None).await.total.events, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_missing_or_wrong_tokens_get_401_and_enqueue_nothing_and_the_token_never_leaks()
 {
    const TOKEN: &str = "tok-8f1c2a9e7d4b6e0f3a5c";
    let s = setup(&config("active = false", "", None, ""));
    let d = start(
        &s.dir,
        Some(&s.config),
        &["-v"],
        &[("EVSPOOL_TOKEN", TOKEN)],
    )
    .await;
    let c = client();
    let url = format!("{}/v1/events?topic=events", d.url);
    let body = r#"{"uid":"t"}"#;

    let resp = c.post(&url).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 401, "no token");
    let resp = c
        .post(&url)
        .bearer_auth("wrong")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "wrong token");
    let resp = c
        .post(&url)
        .bearer_auth(&TOKEN[..TOKEN.len() - 1])
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a prefix of the token");
    let resp = c
        .post(format!("{}/track?verbose=1", d.url))
        .header("content-type", FORM)
        .body(form(&[("data", r#"{"event":"x"}"#)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "mixpanel routes too");
    let resp = c
        .get(format!("{}/admin/stats", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the admin API too");

    assert_eq!(admin_stats(&c, &d, Some(TOKEN)).await.total.events, 0);

    let resp = c
        .post(&url)
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(admin_stats(&c, &d, Some(TOKEN)).await.total.events, 1);

    // The CLI reaches the daemon with the token from the environment.
    let (code, out, err) = cli(&s.dir, &["stats", "--json"], &[("EVSPOOL_TOKEN", TOKEN)]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN));

    // Health and metrics stay open; neither they nor the logs show the token.
    let resp = c.get(format!("{}/healthz", d.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let metrics = metrics(&d).await;
    assert!(!metrics.contains(TOKEN), "{metrics}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = d.stderr();
    assert!(
        !log.contains(TOKEN),
        "the token is in the daemon's log:\n{log}"
    );
    assert!(
        !log.contains("8f1c2a9e"),
        "part of the token is in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_beyond_loopback_without_a_token_is_refused_at_startup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut p = daemon::spawn(&dir, None, &["run", "--listen", "0.0.0.0:0"], &[]);
    let status = p.wait_exit(Duration::from_secs(20)).await;
    let Some(status) = status else {
        panic!("the daemon kept running on 0.0.0.0 without a token");
    };
    let (out, err) = (p.stdout(), p.stderr());
    assert!(!status.success(), "{status}");
    assert!(
        err.contains("0.0.0.0") && err.contains("EVSPOOL_TOKEN"),
        "{err}"
    );
    assert!(!out.contains("listening"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_under_the_reject_policy_answers_503_with_retry_after_and_enqueues_nothing() {
    let s = setup(&config(
        "active = false",
        "",
        None,
        "\n[queue.ceiling]\nmax_events = 5\npolicy = \"reject\"\n",
    ));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let c = client();
    let url = format!("{}/v1/events?topic=events", d.url);
    let resp = c
        .post(&url)
        .body(r#"[{"uid":"f0"},{"uid":"f1"},{"uid":"f2"},{"uid":"f3"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // Two more do not fit: the whole request is refused, none of it stored.
    let resp = c
        .post(&url)
        .body(r#"[{"uid":"f4"},{"uid":"f5"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s > 0), "{:?}", resp.headers());
    assert_eq!(admin_stats(&c, &d, None).await.total.events, 4);
    // One still fits.
    let resp = c.post(&url).body(r#"{"uid":"f6"}"#).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(admin_stats(&c, &d, None).await.total.events, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_with_an_unknown_key_is_refused_naming_the_line_and_key() {
    let s = setup(&config("", "max_bodyy = \"1MiB\"", None, ""));
    let mut p = daemon::spawn(&s.dir, Some(&s.config), &["run"], &[]);
    let status = p.wait_exit(Duration::from_secs(20)).await;
    let Some(status) = status else {
        panic!("the daemon started with an unknown config key");
    };
    let err = p.stderr();
    assert!(!status.success(), "{status}");
    // `max_bodyy` is on line 5 of the generated file.
    assert!(err.contains("line 5") && err.contains("max_bodyy"), "{err}");
    assert!(
        err.contains(&s.config.display().to_string()),
        "names the file: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_histograms_and_healthz_and_readyz_answer_200() {
    let collector = Collector::start().await;
    let (_store, d) = daemon_for(&collector).await;
    let c = client();
    let resp = c
        .post(format!("{}/v1/events?topic=events", d.url))
        .body(r#"[{"uid":"m0"},{"uid":"m1"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(
        collector
            .wait_for(Duration::from_secs(20), |a| a.len() == 2)
            .await
    );

    let resp = c.get(format!("{}/healthz", d.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c.get(format!("{}/readyz", d.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // Histograms are recorded as deliveries finish; poll (bounded) for the buckets.
    let until = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = metrics(&d).await;
        if m.contains("_bucket{") || Instant::now() >= until {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.contains("_bucket{"),
        "no histogram buckets in /metrics:\n{metrics}"
    );
    assert!(metrics.contains("# TYPE"), "{metrics}");
    assert!(
        metrics.contains("evspool_ingested_events_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_answered_202_survive_sigkill_mid_stream_and_reach_the_collector_after_restart() {
    let collector = Collector::start().await;
    collector.respond(|_| Reply::status(503).body("down"));
    let (s, mut d) = daemon_for(&collector).await;

    // Four producers post until the daemon dies; only 202s count.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let posted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..4 {
        let (acked, posted, url) = (
            acked.clone(),
            posted.clone(),
            format!("{}/v1/events?topic=events", d.url),
        );
        producers.push(tokio::spawn(async move {
            let c = client();
            for i in 0.. {
                let uids: Vec<String> = (0..5).map(|k| format!("k-{p}-{i}-{k}")).collect();
                let body: Vec<serde_json::Value> =
                    uids.iter().map(|u| serde_json::json!({"uid": u})).collect();
                posted.lock().unwrap().extend(uids.iter().cloned());
                match c.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 202 => acked.lock().unwrap().extend(uids),
                    Ok(r) => panic!("unexpected answer {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    assert!(
        wait_until(Duration::from_secs(20), || acked.lock().unwrap().len()
            >= 1000)
        .await,
        "producers stalled at {}",
        acked.lock().unwrap().len()
    );
    // Mid-stream: producers are still posting.
    assert!(producers.iter().all(|p| !p.is_finished()));
    d.proc.child.kill().unwrap();
    let status = d
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("SIGKILL ends it");
    assert!(!status.success());
    for p in producers {
        tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("producers stop once the daemon is gone")
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let posted = posted.lock().unwrap().clone();
    assert!(
        accepted_uids(&collector).is_empty(),
        "the collector was down: nothing delivered yet"
    );

    collector.respond(|_| Reply::ok());
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let ok = collector
        .wait_for(Duration::from_secs(40), |a| {
            a.iter()
                .filter_map(uid_of)
                .collect::<BTreeSet<_>>()
                .is_superset(&acked)
        })
        .await;
    let got = accepted_uids(&collector);
    let missing: Vec<&String> = acked.difference(&got).take(10).collect();
    assert!(
        ok,
        "{} of {} events answered 202 never reached the collector, e.g. {missing:?}; stderr:\n{}",
        acked.difference(&got).count(),
        acked.len(),
        d.stderr()
    );
    assert!(got.is_subset(&posted), "only posted events are delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_everything_to_the_collector_and_exits_zero() {
    let collector = Collector::start().await;
    collector.respond(|_| Reply::ok().delay(Duration::from_millis(300)));
    let (s, mut d) = daemon_for(&collector).await;
    let c = client();
    let mut want = BTreeSet::new();
    for r in 0..12 {
        let uids: Vec<String> = (0..50).map(|k| format!("s-{r}-{k}")).collect();
        let body: Vec<serde_json::Value> =
            uids.iter().map(|u| serde_json::json!({"uid": u})).collect();
        let resp = c
            .post(format!("{}/v1/events?topic=events", d.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        want.extend(uids);
    }
    let at_term = accepted_uids(&collector).len();
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(40)).await;
    let stderr = d.stderr();
    let status = status.unwrap_or_else(|| panic!("no exit within 40 s of SIGTERM:\n{stderr}"));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        at_term < want.len(),
        "the test must leave work for the drain (all {at_term} were already delivered)"
    );
    let got = accepted_uids(&collector);
    assert_eq!(
        want.difference(&got).count(),
        0,
        "{} of {} not delivered by the drain:\n{stderr}",
        want.difference(&got).count(),
        want.len()
    );
    assert!(
        !s.dir.join("evspool.admin").exists(),
        "the admin file is removed"
    );
    // Nothing left on disk.
    let q = Queue::open(&s.dir, QueueConfig::default()).unwrap();
    assert_eq!(q.stats().total.events, 0);
    q.close();
}
