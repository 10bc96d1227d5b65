//! Hostile clients against the real `evspool run` binary: bodies that are
//! malformed, huge, deep, numerous or slow, and wrong credentials. Each case
//! asserts the status, the message text, that nothing from the request was
//! enqueued (checked through the admin API and, after SIGKILL, with
//! `evspool stats --json` on the store itself), and where it matters that the
//! daemon's peak memory (`VmHWM` of the child) stayed bounded.
//!
//! Cases already pinned in `daemon_e2e` are not repeated here: a bad NDJSON
//! line (`a_bad_ndjson_line_*`), an oversize body and a small gzip bomb
//! (`an_oversize_body_and_a_gzip_bomb_*`), missing/wrong/prefix tokens and the
//! token never logged (`with_a_token_*`), a non-loopback bind without a token
//! (`listening_beyond_loopback_*`).

use crate::cli_e2e::evspool;
use crate::daemon_e2e::metrics_at;
use evspool_testkit::daemon::{self, Daemon, Evspool};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generous bound on the daemon's peak RSS after hostile requests.
const MAX_HWM_KIB: u64 = 300 * 1024;

/// SIGKILL, then `evspool stats --json` on the store: what is really on disk.
fn kill_and_stats(d: Daemon, dir: &Path) -> serde_json::Value {
    drop(d);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let out = evspool(dir).args(["stats", "--json"]).output().unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        // sled's lock may outlive the process by a moment.
        assert!(
            Instant::now() < until,
            "evspool stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

/// A store directory and a config with `server` lines under `[server]`.
fn setup(server: &str, extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let config = tmp.path().join("evspool.toml");
    std::fs::write(
        &config,
        format!(
            "active = false\n[server]\nlisten = \"127.0.0.1:0\"\nshutdown_deadline = \"2s\"\n{server}\n[queue]\ncommit_interval = \"10ms\"\n{extra}"
        ),
    )
    .unwrap();
    Setup {
        _tmp: tmp,
        dir,
        config,
    }
}

/// Starts the daemon and waits (bounded) for its `listening on` line.
fn start(s: &Setup, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
    Evspool::cargo().start_blocking(&s.dir, Some(&s.config), args, envs)
}

fn client() -> reqwest::Client {
    evspool_testkit::client_builder(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Posts `body` and returns the status and the body's `error` field (or text).
async fn post(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut r = c.post(url).body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(text);
    (status, msg)
}

/// Posts `body` over a raw connection (`Connection: close`), writing on
/// another thread and ignoring write errors (the daemon may answer and close
/// before the body is sent); returns the status and the `error` field.
fn raw_post(addr: &str, path: &str, body: &[u8], chunked: bool) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n{framing}\r\nConnection: close\r\n\r\n");
    let mut w = s.try_clone().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        for part in body.chunks(64 * 1024) {
            let ok = if chunked {
                write!(w, "{:x}\r\n", part.len())
                    .and_then(|()| w.write_all(part))
                    .and_then(|()| w.write_all(b"\r\n"))
            } else {
                w.write_all(part)
            };
            if ok.is_err() {
                return;
            }
        }
        if chunked {
            let _ = w.write_all(b"0\r\n\r\n");
        }
    });
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let msg = serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.clone());
    (status, msg)
}

/// Total events in the store, via the admin API: with a token over TCP,
/// without one on the admin socket.
async fn admin_total(c: &reqwest::Client, d: &Daemon, token: Option<&str>) -> u64 {
    let v: serde_json::Value = match token {
        Some(t) => c
            .get(format!("{}/admin/stats", d.url))
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
        None => evspool_testkit::admin::get(&d.dir, "/admin/stats").await,
    };
    v["total"]["events"].as_u64().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_deep_nesting_are_400s_saying_what_and_where_and_enqueue_nothing() {
    let s = setup("", "");
    let d = start(&s, &[], &[]);
    let c = client();
    let events = format!("{}/v1/events", d.url);

    // Invalid UTF-8 inside a string on line 2 of an NDJSON body.
    let mut body = b"{\"uid\":\"ok\"}\n{\"uid\":\"".to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(b"\"}\n");
    let (status, msg) = post(&c, &events, &[], body).await;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("line 2"), "names the line: {msg}");
    assert!(msg.contains("UTF-8"), "says what is wrong: {msg}");

    // Invalid UTF-8 in an array, as a Mixpanel JSON body and in a Segment batch.
    let mut arr = b"[{\"a\":1},\n{\"b\":\"x".to_vec();
    arr.push(0xc3);
    arr.extend_from_slice(b"\"}]");
    for url in [
        format!("{}/v1/events", d.url),
        format!("{}/track?verbose=1", d.url),
    ] {
        let (status, msg) = post(
            &c,
            &url,
            &[("content-type", "application/json")],
            arr.clone(),
        )
        .await;
        assert_eq!(status, 400, "{url}: {msg}");
        assert!(
            msg.contains("UTF-8") && msg.contains("line 2"),
            "{url}: {msg}"
        );
    }
    let mut seg = b"{\"batch\":[{\"type\":\"track\",\"event\":\"".to_vec();
    seg.push(0x80);
    seg.extend_from_slice(b"\"}]}");
    let (status, msg) = post(&c, &format!("{}/v1/batch", d.url), &[], seg).await;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("UTF-8") && msg.contains("line 1"), "{msg}");

    // Nesting 100 000 deep (and just past the 64 limit) is refused before any parser recurses.
    for depth in [65usize, 100_000] {
        let deep = format!(
            "{{\"uid\":\"deep\",\"p\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let (status, msg) = post(&c, &events, &[], deep.clone().into_bytes()).await;
        assert_eq!(status, 400, "depth {depth}: {msg}");
        assert!(msg.contains("nested deeper than 64 levels"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
        let (status, msg) = post(
            &c,
            &format!("{}/v1/batch", d.url),
            &[],
            format!("{{\"batch\":[{deep}]}}").into_bytes(),
        )
        .await;
        assert_eq!(status, 400, "segment depth {depth}: {msg}");
        assert!(msg.contains("nested deeper than 64 levels"), "{msg}");
    }
    // 64 deep is still accepted.
    let ok = format!(
        "{{\"uid\":\"d\",\"p\":{}{}}}",
        "[".repeat(63),
        "]".repeat(63)
    );
    let (status, msg) = post(&c, &events, &[], ok.into_bytes()).await;
    assert_eq!(status, 202, "{msg}");
    assert_eq!(admin_total(&c, &d, None).await, 1, "only the good body");
    let stats = kill_and_stats(d, &s.dir);
    assert_eq!(stats["total"]["events"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_tiny_events_in_one_request_are_413_naming_the_limit_and_memory_stays_bounded() {
    let s = setup("", "");
    let d = start(&s, &[], &[]);
    let c = client();
    let hwm_idle = d.vm_hwm_kib();
    let million = 1_000_000;

    // NDJSON, 3 MB: under max_body (5 MiB); stops counting at the limit.
    let nd = "{}\n".repeat(million).into_bytes();
    let (status, msg) = post(&c, &format!("{}/v1/events", d.url), &[], nd.clone()).await;
    assert_eq!(status, 413, "{msg}");
    assert!(
        msg.contains("10001 or more events in one request; the limit is 10000"),
        "{msg}"
    );
    // A JSON array, gzip-compressed.
    let arr = format!("[{}{{}}]", "{},".repeat(million - 1)).into_bytes();
    let (status, msg) = post(
        &c,
        &format!("{}/v1/events", d.url),
        &[("content-encoding", "gzip")],
        gzip(&arr),
    )
    .await;
    assert_eq!(status, 413, "{msg}");
    assert!(msg.contains("the limit is 10000"), "{msg}");
    // A Segment batch of a million, gzip-compressed to a few KiB.
    let seg = format!("{{\"batch\":[{}{{}}]}}", "{},".repeat(million - 1)).into_bytes();
    let (status, msg) = post(
        &c,
        &format!("{}/v1/batch", d.url),
        &[("content-encoding", "gzip")],
        gzip(&seg),
    )
    .await;
    assert_eq!(status, 413, "{msg}");
    assert!(msg.contains("the limit is 10000"), "{msg}");
    // The worst case the limits allow: 20 MiB decompressed of `{},` (7 million).
    let n = 20 * 1024 * 1024 / 3 - 8;
    let worst = format!("[{}{{}}]", "{},".repeat(n)).into_bytes();
    let (status, msg) = post(
        &c,
        &format!("{}/v1/events", d.url),
        &[("content-encoding", "gzip")],
        gzip(&worst),
    )
    .await;
    assert_eq!(status, 413, "{msg}");
    let worst = format!("{{\"batch\":[{}{{}}]}}", "{},".repeat(n - 4)).into_bytes();
    let (status, msg) = post(
        &c,
        &format!("{}/v1/batch", d.url),
        &[("content-encoding", "gzip")],
        gzip(&worst),
    )
    .await;
    assert_eq!(status, 413, "segment, 7 million: {msg}");
    let (status, msg) = post(
        &c,
        &format!("{}/track", d.url),
        &[
            ("content-encoding", "gzip"),
            ("content-type", "application/json"),
        ],
        gzip(&nd),
    )
    .await;
    assert_eq!(status, 413, "mixpanel: {msg}");

    let hwm = d.vm_hwm_kib();
    eprintln!("daemon VmHWM: idle {hwm_idle} KiB, after a million-event requests {hwm} KiB");
    assert!(hwm < MAX_HWM_KIB, "peak RSS {hwm} KiB");
    // The limit itself is fine: 10 000 events are accepted in one request.
    let (status, msg) = post(
        &c,
        &format!("{}/v1/events", d.url),
        &[],
        "{}\n".repeat(10_000).into_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{msg}");
    assert_eq!(admin_total(&c, &d, None).await, 10_000);
    let stats = kill_and_stats(d, &s.dir);
    assert_eq!(stats["total"]["events"], 10_000, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_and_a_gigabyte_gzip_bomb_are_413s_naming_the_limit_with_bounded_memory() {
    let s = setup("", "");
    let d = start(&s, &[], &[]);
    let c = client();
    // 6 MiB on the wire, over the 5 MiB max_body: announced with
    // Content-Length, and streamed chunked without one. The daemon answers
    // before reading it all, so a raw client that keeps writing is used.
    let line = "{\"uid\":\"big\"}\n";
    let big = line.repeat(6 * 1024 * 1024 / line.len()).into_bytes();
    for chunked in [false, true] {
        let (status, msg) = raw_post(d.addr(), "/v1/events", &big, chunked);
        assert_eq!(status, 413, "chunked {chunked}: {msg}");
        assert!(
            msg.contains("larger than 5.0 MiB (server.max_body)"),
            "{msg}"
        );
    }

    // 1 GiB of zeros in ~1 MiB of gzip (1024 gzip members of 1 MiB each, as
    // `cat a.gz b.gz` makes): decompression stops at 20 MiB.
    let member = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        enc.finish().unwrap()
    };
    let bomb = member.repeat(1024);
    assert!(bomb.len() < 5 * 1024 * 1024, "{}", bomb.len());
    for route in ["/v1/events", "/v1/batch", "/import"] {
        let (status, msg) = post(
            &c,
            &format!("{}{route}", d.url),
            &[("content-encoding", "gzip")],
            bomb.clone(),
        )
        .await;
        assert_eq!(status, 413, "{route}: {msg}");
        assert!(
            msg.contains("decompresses to more than 20971520 bytes"),
            "{route}: {msg}"
        );
    }
    let hwm = d.vm_hwm_kib();
    eprintln!("daemon VmHWM after three 1 GiB gzip bombs: {hwm} KiB");
    assert!(hwm < MAX_HWM_KIB, "peak RSS {hwm} KiB");
    assert_eq!(admin_total(&c, &d, None).await, 0);
    let stats = kill_and_stats(d, &s.dir);
    assert_eq!(stats["total"]["events"], 0, "{stats}");
}

/// Reads from `stream` until EOF or error; returns what came and when it ended.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let t0 = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(t0.elapsed()),
                );
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(t0.elapsed()),
                );
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), None)
}

/// Sends `head`, then `bytes` one at a time every `gap` until the server
/// closes the connection or `limit` passes; returns how long the server let it
/// go on (`limit` or more: never cut off) and what it answered.
fn trickle(
    addr: &str,
    head: &[u8],
    bytes: &[u8],
    gap: Duration,
    limit: Duration,
) -> (Duration, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head).unwrap();
    s.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    'outer: for b in bytes.iter().cycle() {
        if t0.elapsed() > limit {
            break;
        }
        if s.write(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(gap);
        loop {
            match s.read(&mut buf) {
                Ok(0) => break 'outer,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break 'outer,
            }
        }
    }
    let elapsed = t0.elapsed();
    s.set_nonblocking(false).unwrap();
    let (rest, _) = read_until_closed(&mut s, Duration::from_secs(2));
    got.extend_from_slice(rest.as_bytes());
    (elapsed, String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_cut_off_at_the_request_timeout_while_others_are_served() {
    let s = setup("request_timeout = \"2s\"", "");
    let d = start(&s, &[], &[]);
    let addr = d.addr().to_string();

    // Three trickling clients: headers that never end, a body that never
    // ends, and a connection that is opened and never written to.
    let a = addr.clone();
    let headers = std::thread::spawn(move || {
        trickle(
            &a,
            format!("POST /v1/events HTTP/1.1\r\nHost: {a}\r\n").as_bytes(),
            b"X-Slow: aaaaaaaaaaaaaaaa\r\n",
            Duration::from_millis(100),
            Duration::from_secs(20),
        )
    });
    let a = addr.clone();
    let body = std::thread::spawn(move || {
        trickle(
            &a,
            format!("POST /v1/events HTTP/1.1\r\nHost: {a}\r\nContent-Length: 100000\r\n\r\n{{\"uid\":\"")
                .as_bytes(),
            b"x",
            Duration::from_millis(100),
            Duration::from_secs(20),
        )
    });
    let a = addr.clone();
    let silent = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&a).unwrap();
        let (text, closed) = read_until_closed(&mut s, Duration::from_secs(20));
        (closed, text)
    });

    // Meanwhile everyone else is served, promptly.
    let c = client();
    let t0 = Instant::now();
    let mut served = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let start = Instant::now();
        let (status, msg) = post(
            &c,
            &format!("{}/v1/events", d.url),
            &[],
            format!("{{\"uid\":\"fast{served}\"}}").into_bytes(),
        )
        .await;
        assert_eq!(status, 202, "{msg}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (head_time, head_text) = tokio::task::spawn_blocking(move || headers.join().unwrap())
        .await
        .unwrap();
    let (body_time, body_text) = tokio::task::spawn_blocking(move || body.join().unwrap())
        .await
        .unwrap();
    let (silent_closed, _) = tokio::task::spawn_blocking(move || silent.join().unwrap())
        .await
        .unwrap();
    eprintln!(
        "slow headers cut after {head_time:?} ({:?}), slow body after {body_time:?} ({:?}), silent after {silent_closed:?}; {served} fast requests served",
        head_text.lines().next(),
        body_text.lines().next()
    );
    assert!(served >= 10, "{served}");
    assert!(
        head_time < Duration::from_secs(6),
        "trickled headers were allowed {head_time:?}"
    );
    assert!(
        body_time < Duration::from_secs(6),
        "a trickled body was allowed {body_time:?}"
    );
    assert!(
        body_text.starts_with("HTTP/1.1 408"),
        "a slow body gets 408: {body_text:?}"
    );
    assert!(
        silent_closed.is_some_and(|t| t < Duration::from_secs(6)),
        "a silent connection was held {silent_closed:?}"
    );
    let c2 = client();
    assert_eq!(admin_total(&c2, &d, None).await, served as u64);
    let stats = kill_and_stats(d, &s.dir);
    assert_eq!(
        stats["total"]["events"], served as u64,
        "nothing from the slow clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_missing_tokens_get_401_with_a_message_on_every_route_and_change_nothing() {
    const TOKEN: &str = "hostile-tok-51f0c9d2b7";
    let s = setup("", "");
    let d = start(&s, &[], &[("EVSPOOL_TOKEN", TOKEN)]);
    let c = client();
    let (status, msg) = post(
        &c,
        &format!("{}/v1/events", d.url),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        b"{\"uid\":\"kept\"}".to_vec(),
    )
    .await;
    assert_eq!(status, 202, "{msg}");

    use base64::Engine as _;
    let basic_wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:nope")
    );
    let wrong = [
        vec![],
        vec![("authorization", "Bearer nope".to_string())],
        vec![("authorization", format!("Bearer {TOKEN}x"))],
        vec![("authorization", format!("bearer{TOKEN}"))],
        vec![("authorization", basic_wrong)],
        vec![("authorization", "Basic !!!not-base64".to_string())],
    ];
    let routes = [
        "/v1/events",
        "/track",
        "/import",
        "/v1/batch",
        "/v1/track",
        "/admin/purge?topic=events&yes=true",
        "/admin/replay?topic=events",
    ];
    let mut refused = 0;
    for headers in &wrong {
        for route in routes {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, msg) = post(
                &c,
                &format!("{}{route}", d.url),
                &h,
                b"{\"uid\":\"intruder\",\"batch\":[{\"uid\":\"intruder\"}]}".to_vec(),
            )
            .await;
            assert_eq!(status, 401, "{route} {headers:?}: {msg}");
            assert_eq!(
                msg, "missing or wrong token (Authorization: Bearer <token>)",
                "{route}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, wrong.len() * routes.len());
    // Nothing was enqueued and nothing purged.
    assert_eq!(admin_total(&c, &d, Some(TOKEN)).await, 1);
    let metrics = metrics_at(&d.url).await;
    let unauthorized: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("evspool_unauthorized_requests_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0);
    assert_eq!(unauthorized as usize, refused, "every refusal is counted");
    let log = d.stderr();
    let stats = kill_and_stats(d, &s.dir);
    assert_eq!(stats["total"]["events"], 1, "{stats}");
    assert!(!log.contains(TOKEN), "{log}");
}

/// Runs `evspool run --listen ADDR` and returns (exit status or None if still
/// running after `wait`, stdout, stderr); kills it if it is still running.
fn run_bind(listen: &str, token: Option<&str>, wait: Duration) -> (Option<i32>, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let envs: Vec<(&str, &str)> = token.map(|t| ("EVSPOOL_TOKEN", t)).into_iter().collect();
    let mut p = daemon::spawn(
        &tmp.path().join("store"),
        None,
        &["run", "--listen", listen],
        &envs,
    );
    let until = Instant::now() + wait;
    let code = loop {
        if let Some(s) = p.exited() {
            break Some(s.code().unwrap_or(-1));
        }
        if Instant::now() >= until || p.stdout.lock().unwrap().contains("listening on") {
            let _ = p.child.kill();
            let _ = p.child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    (code, p.stdout(), p.stderr())
}

#[test]
fn a_non_loopback_bind_is_refused_with_an_empty_token_and_allowed_with_one() {
    // IPv6 wildcard and an empty token are refused like 0.0.0.0 without one.
    for (listen, token) in [("[::]:0", None), ("0.0.0.0:0", Some(""))] {
        let (code, out, err) = run_bind(listen, token, Duration::from_secs(20));
        assert_eq!(code, Some(1), "{listen} {token:?}: {out}{err}");
        assert!(
            err.contains("refusing to listen on") && err.contains("without a token"),
            "{err}"
        );
        assert!(err.contains("EVSPOOL_TOKEN"), "{err}");
        assert!(!out.contains("listening"), "{out}");
    }
    // Loopback needs no token; a token allows the wildcard (it is killed at once).
    let (code, out, _) = run_bind("127.0.0.1:0", None, Duration::from_secs(20));
    assert_eq!(code, None, "{out}");
    assert!(
        out.contains("evspool listening on http://127.0.0.1:"),
        "{out}"
    );
    let (code, out, err) = run_bind("0.0.0.0:0", Some("bind-tok-77aa"), Duration::from_secs(20));
    assert_eq!(code, None, "{err}");
    assert!(
        out.contains("evspool listening on http://0.0.0.0:"),
        "{out}"
    );
}
