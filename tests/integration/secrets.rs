//! Secrets never leak: the daemon's token, the sinks' credentials (HTTP bearer
//! token, Mixpanel service-account secret and project token, Segment write
//! key) and credential headers from the config file appear in no log line (at
//! `-vv` with `RUST_LOG=trace`), no metric, no error message and no `Debug`
//! output, while the daemon is attacked with wrong tokens, its collector
//! answers 401, a real `nats-server` refuses the NATS sink's user (whose
//! password is the sink secret) permission to publish, and its configuration
//! is wrong.

use crate::daemon_e2e::metrics_at;
use evspool::Secret;
use evspool::forward::sink::http::{HttpAuth, HttpSinkConfig};
use evspool::forward::sink::mixpanel::MixpanelConfig;
use evspool::forward::sink::nats::{NatsAuth, NatsSinkConfig};
use evspool::forward::sink::segment::SegmentConfig;
use evspool_testkit::collector::{Collector, Reply};
use evspool_testkit::daemon::{self, Daemon, Proc};
use evspool_testkit::nats_server::NatsServer;
use std::path::Path;
use std::time::{Duration, Instant};

const DAEMON_TOKEN: &str = "dmn-tok-Q7v2Lk9wX3";
const SINK_TOKEN: &str = "snk-tok-R8p4Mz1yB6";
const SINK_SECRET: &str = "snk-sec-T5n0Hc2vD8";
const HEADER_SECRET: &str = "hdr-key-U3m7Jf6qE1";
const WRONG_TOKEN: &str = "wrong-tok-Z9z9z9z9";

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Every secret, and the forms it takes on the wire (basic-auth base64).
fn forbidden() -> Vec<String> {
    vec![
        DAEMON_TOKEN.into(),
        SINK_TOKEN.into(),
        SINK_SECRET.into(),
        HEADER_SECRET.into(),
        WRONG_TOKEN.into(),
        b64(&format!("svc-user:{SINK_SECRET}")),
        b64(&format!("{SINK_TOKEN}:")),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for s in forbidden() {
        assert!(
            !text.contains(&s),
            "{what} contains the secret {s:?}:\n{}",
            &text[text.find(&s).unwrap().saturating_sub(300)..]
                .chars()
                .take(600)
                .collect::<String>()
        );
    }
}

fn spawn(dir: &Path, config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    daemon::spawn(dir, Some(config), args, envs)
}

fn all_envs() -> Vec<(&'static str, &'static str)> {
    vec![
        ("EVSPOOL_TOKEN", DAEMON_TOKEN),
        ("EVSPOOL_SINK_TOKEN", SINK_TOKEN),
        ("EVSPOOL_SINK_SECRET", SINK_SECRET),
        ("RUST_LOG", "trace"),
    ]
}

fn config_text(collector: &str, nats: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
shutdown_deadline = "1s"

[queue]
commit_interval = "10ms"

[forward]
flush_interval = "20ms"
flush_jitter = "0s"
config_fault_probe = "200ms"

[forward.backoff]
base = "50ms"
max = "200ms"

[sink]
type = "http"
url = "{collector}/ingest"
auth = "bearer"
headers = {{ "X-Api-Key" = "{HEADER_SECRET}", "X-Team" = "blue" }}

[topics.import.sink]
type = "mixpanel"
api_host = "{collector}"
service_account = "svc-user"
project_id = "4242"

[topics.segment.sink]
type = "segment"
api_host = "{collector}"

[topics.natsy.sink]
type = "nats"
servers = ["{nats}"]
auth = {{ user_password = {{ user = "evspool" }} }}
ack_timeout = "1s"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_metrics_or_errors_under_trace_logging_wrong_tokens_and_collector_401s()
 {
    let collector = Collector::start().await;
    collector.respond(|_| Reply::status(401).body("{\"error\":\"unauthorized\"}"));
    // The NATS user's password is the sink secret: the connection succeeds
    // (the secret is really used), then publishing is denied.
    let nats = NatsServer::start_with(&format!(
        "authorization {{ users = [ {{ user: evspool, password: \"{SINK_SECRET}\", permissions: {{ publish: {{ allow: [\"other.>\"] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }} ] }}"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let config = tmp.path().join("evspool.toml");
    std::fs::write(&config, config_text(&collector.url, &nats.url())).unwrap();
    let d = Daemon::listening(
        spawn(&dir, &config, &["-vv", "run"], &all_envs()),
        &dir,
        Duration::from_secs(30),
    )
    .await;
    let url = d.url.clone();
    evspool::forward::sink::http::install_crypto_provider();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();

    // Wrong tokens, every way they can be presented.
    for auth in [
        format!("Bearer {WRONG_TOKEN}"),
        format!("Basic {}", b64(&format!("{WRONG_TOKEN}:"))),
        format!("Basic {}", b64(&format!("user:{WRONG_TOKEN}"))),
        format!("Bearer {DAEMON_TOKEN}-not"),
    ] {
        let resp = c
            .post(format!("{url}/v1/events"))
            .header("authorization", auth)
            .body("{\"uid\":\"x\"}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_clean("a 401 body", &resp.text().await.unwrap());
    }
    // Good requests to each sink's topic: each sink then meets a 401.
    for (path, body) in [
        ("/v1/events?topic=events", "{\"uid\":\"h1\"}".to_string()),
        (
            "/import",
            "[{\"event\":\"e\",\"properties\":{\"distinct_id\":\"u\",\"time\":1700000000}}]"
                .to_string(),
        ),
        (
            "/v1/batch",
            "{\"batch\":[{\"type\":\"track\",\"event\":\"s\",\"userId\":\"u\"}]}".to_string(),
        ),
        ("/v1/events?topic=natsy", "{\"uid\":\"n1\"}".to_string()),
    ] {
        let resp = c
            .post(format!("{url}{path}"))
            .bearer_auth(DAEMON_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        assert_clean("an ingest answer", &resp.text().await.unwrap());
    }
    // Wait until every sink has been refused at least twice (a send and a probe).
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let reqs = collector.requests();
        let count = |p: &str| reqs.iter().filter(|r| r.path.starts_with(p)).count();
        if count("/ingest") >= 2 && count("/import") >= 2 && count("/v1/batch") >= 2 {
            // The secrets were really used: they are on the wire to the collector.
            let auth = |p: &str| {
                reqs.iter()
                    .find(|r| r.path.starts_with(p))
                    .and_then(|r| r.headers.get("authorization"))
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            assert_eq!(auth("/ingest"), format!("Bearer {SINK_TOKEN}"));
            assert_eq!(
                auth("/import"),
                format!("Basic {}", b64(&format!("svc-user:{SINK_SECRET}")))
            );
            assert_eq!(
                auth("/v1/batch"),
                format!("Basic {}", b64(&format!("{SINK_TOKEN}:")))
            );
            let ingest = reqs.iter().find(|r| r.path.starts_with("/ingest")).unwrap();
            assert_eq!(
                ingest.headers.get("x-api-key").unwrap().to_str().unwrap(),
                HEADER_SECRET
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "sinks were not all refused: {:?}",
            reqs.iter().map(|r| r.path.clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = metrics_at(&url).await;
    assert!(
        metrics.contains("evspool_unauthorized_requests_total"),
        "{metrics}"
    );
    assert_clean("/metrics", &metrics);
    let stats = c
        .get(format!("{url}/admin/stats"))
        .bearer_auth(DAEMON_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_clean("/admin/stats", &stats);
    let forward = c
        .get(format!("{url}/admin/forward"))
        .bearer_auth(DAEMON_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        forward.contains("\"paused\":true"),
        "the 401 paused the topics: {forward}"
    );
    assert_clean("/admin/forward", &forward);
    // The NATS sink connected with the secret, was denied, and paused.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let f: serde_json::Value = c
            .get(format!("{url}/admin/forward"))
            .bearer_auth(DAEMON_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if f["natsy"]["paused"] == serde_json::json!(true) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the nats topic was not paused: {f}\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = d.stderr();
    let out = d.proc.stdout();
    eprintln!(
        "secrets: {} bytes of trace log, {} bytes of metrics checked for {} secret forms",
        log.len(),
        metrics.len(),
        forbidden().len()
    );
    assert!(
        log.len() > 10_000,
        "trace logging was on: {} bytes",
        log.len()
    );
    assert!(log.contains("401"), "the collector's 401 is logged");
    assert!(
        log.contains("Permissions Violation"),
        "the NATS refusal is logged"
    );
    assert_clean("the daemon's stderr", &log);
    assert_clean("the daemon's stdout", &out);
}

/// Runs the binary to completion (bounded) and returns its exit code and output.
fn run(dir: &Path, config: &Path, args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut d = spawn(dir, config, args, envs);
    let code = d
        .wait_exit_blocking(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running: {args:?}"))
        .code();
    let text = format!("{}{}", d.stdout(), d.stderr());
    (code, text)
}

#[test]
fn config_errors_and_cli_failures_name_the_problem_but_never_a_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    // One queued event, so the drain below has something to fail to send.
    let out = crate::cli_e2e::evspool(&dir)
        .args(["send", "--topic", "events", "{\"uid\":\"q\"}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        // A secret pasted into the file where it is not accepted.
        (
            "secret in the file",
            format!("[sink]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"{SINK_SECRET}\"\n"),
            vec!["-vv", "run"],
            "secret",
        ),
        (
            "token in the file",
            format!("[server]\ntoken = \"{DAEMON_TOKEN}\"\n"),
            vec!["-vv", "run"],
            "token",
        ),
        // A credential header beside an invalid value.
        (
            "bad value beside a credential header",
            format!(
                "[sink]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\nheaders = {{ Authorization = \"Bearer {HEADER_SECRET}\" }}\nmax_batch_events = \"many\"\n"
            ),
            vec!["-vv", "run"],
            // Inside the tagged [sink] table serde loses the key's name and line.
            "expected usize",
        ),
        // Bearer auth configured, token missing from the environment.
        (
            "bearer auth without a sink token",
            "[server]\nlisten = \"127.0.0.1:0\"\n[sink]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\nauth = \"bearer\"\n".to_string(),
            vec!["-vv", "run"],
            "EVSPOOL_SINK_TOKEN",
        ),
        // Non-loopback bind with every secret set but the daemon token empty.
        (
            "refused bind",
            "[server]\nlisten = \"0.0.0.0:0\"\n".to_string(),
            vec!["-vv", "run"],
            "refusing to listen",
        ),
        // A NATS server URL with a password in it: refused without echoing it.
        (
            "nats url with credentials",
            format!("[sink]\ntype = \"nats\"\nservers = [\"nats://evspool:{SINK_SECRET}@127.0.0.1:4222\"]\n"),
            vec!["-vv", "run"],
            "servers[0]",
        ),
        // NATS user/password auth without the password in the environment.
        (
            "nats password missing",
            "[server]\nlisten = \"127.0.0.1:0\"\n[sink]\ntype = \"nats\"\nauth = { user_password = { user = \"evspool\" } }\n".to_string(),
            vec!["-vv", "run"],
            "EVSPOOL_SINK_SECRET",
        ),
        // A drain to a collector that is not there.
        (
            "drain to a closed port",
            "[sink]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/ingest\"\nauth = \"bearer\"\n".to_string(),
            vec!["-vv", "drain", "--timeout", "1s"],
            "1 still queued",
        ),
    ];
    for (name, text, args, needle) in cases {
        let config = tmp.path().join("bad.toml");
        std::fs::write(&config, &text).unwrap();
        let mut envs = all_envs();
        if name == "bearer auth without a sink token" {
            envs.retain(|(k, _)| *k != "EVSPOOL_SINK_TOKEN");
        }
        if name == "nats password missing" {
            envs.retain(|(k, _)| *k != "EVSPOOL_SINK_SECRET");
        }
        if name == "refused bind" {
            envs.retain(|(k, _)| *k != "EVSPOOL_TOKEN");
        }
        let (code, out) = run(&dir, &config, &args, &envs);
        assert_ne!(code, Some(0), "{name}: {out}");
        assert!(
            out.contains(needle),
            "{name}: the message names {needle:?}: {out}"
        );
        assert_clean(name, &out);
    }
}

#[test]
fn debug_output_of_every_sink_config_redacts_its_secrets() {
    let mut http = HttpSinkConfig {
        url: "https://collector.example/ingest".into(),
        auth: HttpAuth::Bearer,
        secret: Secret::new(SINK_TOKEN),
        ..HttpSinkConfig::default()
    };
    http.headers
        .insert("Authorization".into(), format!("Bearer {HEADER_SECRET}"));
    http.headers.insert("X-Team".into(), "blue".into());
    let mixpanel = MixpanelConfig {
        token: Secret::new(SINK_TOKEN),
        service_account: Some("svc-user".into()),
        secret: Secret::new(SINK_SECRET),
        ..MixpanelConfig::default()
    };
    let segment = SegmentConfig {
        write_key: Secret::new(SINK_TOKEN),
        ..SegmentConfig::default()
    };
    let nats = NatsSinkConfig {
        auth: NatsAuth::UserPassword {
            user: "evspool".into(),
        },
        secret: Secret::new(SINK_SECRET),
        ..NatsSinkConfig::default()
    };
    let nats_token = NatsSinkConfig {
        auth: NatsAuth::Token,
        secret: Secret::new(SINK_TOKEN),
        ..NatsSinkConfig::default()
    };
    for text in [
        format!("{http:?}"),
        format!("{http:#?}"),
        format!("{mixpanel:?}"),
        format!("{mixpanel:#?}"),
        format!("{segment:?}"),
        format!("{segment:#?}"),
        format!("{nats:?}"),
        format!("{nats_token:#?}"),
        format!(
            "{:?}",
            evspool::forward::sink::nats::NatsSink::standalone("t", &nats).unwrap()
        ),
        format!("{}", Secret::new(SINK_SECRET)),
    ] {
        assert_clean("Debug output", &text);
        assert!(text.contains("<redacted>"), "{text}");
    }
    assert!(
        format!("{http:?}").contains("blue"),
        "other headers still show"
    );
    // Serializing a config never writes a secret from the environment either
    // (headers are the file's own values and serialize as written).
    let json = serde_json::to_string(&(&http, &mixpanel, &segment, &nats, &nats_token)).unwrap();
    for s in [SINK_TOKEN, SINK_SECRET] {
        assert!(!json.contains(s), "{json}");
    }
}
