//! Driving the real `evspool` binary the torture way (through the shared
//! harness, `evspool_testkit::daemon`): which binary, CLI commands, the
//! torture config, and an HTTP client.

use evspool_testkit::daemon::{Daemon, Evspool, Proc};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The binary under test, `RUST_LOG=warn`, the last 64 KiB of output kept:
/// `EVSPOOL_TORTURE_BIN` overrides the binary (e.g. a copy that a rebuild
/// cannot replace during a long soak).
pub fn ev() -> Evspool {
    Evspool::torture()
}

/// `evspool --dir DIR --config CONFIG` with a clean environment.
pub fn evspool(dir: &Path, config: &Path) -> Command {
    ev().command(dir, Some(config))
}

/// Spawns the daemon without waiting for it to listen.
pub fn spawn(dir: &Path, config: &Path) -> Proc {
    ev().spawn_run(dir, Some(config), &[], &[])
}

/// Starts the daemon and waits (bounded, 30 s) for it to listen.
pub async fn start(dir: &Path, config: &Path) -> Daemon {
    ev().start(dir, Some(config), &[], &[]).await
}

/// Waits (bounded, 30 s) for a [`spawn`]ed daemon to listen.
pub async fn listening(proc: Proc, dir: &Path) -> Daemon {
    Daemon::listening(proc, dir, Duration::from_secs(30)).await
}

/// Live (not delivered, not dead) events of `topic` in a stats document.
pub fn live(stats: &serde_json::Value, topic: &str) -> u64 {
    let t = &stats["topics"][topic];
    ["ready", "retrying", "leased", "uncommitted"]
        .iter()
        .map(|k| t[k]["events"].as_u64().unwrap_or(0))
        .sum()
}

/// Runs a CLI command to completion on a blocking thread: (exit code, stdout, stderr).
pub async fn cli(dir: &Path, config: &Path, args: &[&str]) -> (i32, String, String) {
    ev().run(dir, Some(config), args).await
}

/// A reqwest client for producers and admin calls.
pub fn client(timeout: Duration) -> reqwest::Client {
    evspool_testkit::client_builder(timeout)
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

/// Knobs of the torture config.
pub struct Cfg<'a> {
    pub collector: &'a str,
    pub workers: usize,
    pub batch_size: usize,
    pub extra_queue: &'a str,
}

/// A daemon config with short intervals, forwarding to the collector's Segment API.
pub fn config_text(c: &Cfg<'_>) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
shutdown_deadline = "10s"

[queue]
commit_interval = "10ms"
flush_interval = "100ms"
{extra}

[http]
timeout = "5s"
connect_timeout = "1s"

[sink]
type = "segment"
api_host = "{url}"

[forward]
workers = {workers}
batch_size = {batch}
flush_interval = "20ms"
flush_jitter = "0s"
config_fault_probe = "200ms"

[forward.backoff]
base = "20ms"
max = "200ms"

[forward.breaker]
failure_threshold = 5
open_for = "100ms"
open_max = "300ms"
"#,
        extra = c.extra_queue,
        url = c.collector,
        workers = c.workers,
        batch = c.batch_size,
    )
}

/// `evspool export` of a topic: marker → (id, whole record), in file order.
pub async fn export(
    dir: &Path,
    config: &Path,
    topic: &str,
    dead: bool,
) -> Vec<(String, String, serde_json::Value)> {
    let mut args = vec!["export", "--topic", topic];
    if dead {
        args.push("--dead");
    }
    let (code, out, err) = cli(dir, config, &args).await;
    assert_eq!(code, 0, "evspool export failed: {err}");
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("export NDJSON");
            let id = v["id"].as_str().expect("id").to_string();
            let marker = v["payload"]["m"].as_str().unwrap_or("<none>").to_string();
            (marker, id, v)
        })
        .collect()
}
