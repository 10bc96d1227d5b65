//! evspool's test kit: what its test binaries, benches and examples share,
//! as one dev-only crate (`publish = false`) instead of files included by
//! `#[path]` across `tests/`, `benches/` and `examples/`.
//!
//! - [`daemon`]: the `evspool` binary as a child process — the daemon
//!   harness (spawn, wait for `evspool listening on URL`, SIGTERM/SIGKILL,
//!   captured output), killed and reaped on drop.
//! - [`collector`]: the fake collector, an HTTP server that records the
//!   events it accepts and answers as the test says.
//! - [`fuzz_checks`]: the properties the fuzz targets check, which the
//!   corpus replay test re-checks under `cargo test`.
//! - [`ledger`]: the torture and power-loss suites' accounting (sent,
//!   acknowledged, delivered: lost, invented, duplicated).
//! - [`admin`]: a daemon's admin API through its owner-only socket.
//! - [`nats_server`]: a real `nats-server` with JetStream.
//! - [`bench`]: what the benches and `examples/perf_report.rs` share — the
//!   payloads, the peers (yaque, queue-file, SQLite), the same-run baselines,
//!   the durable goals, the sidecar and per-topic measurements.
//! - [`queue`]: `block_on` and leasing a topic's seqs in lease order, for
//!   tests that drive a queue from plain test functions.
//! - [`tls`]: a CA and a certificate for `127.0.0.1` it signed, for TLS tests.
//! - [`requires`]: what a test needs that `cargo test` cannot provide (root,
//!   tools), and how a test that cannot run shows up.
//!
//! It depends on evspool (the collector parses with the daemon's ingest
//! parsers); in evspool's tests, benches and examples that is the very crate
//! they link, so its types are theirs. The binary is never linked: the
//! harness runs it by path ([`daemon::cargo_bin`]).
//!
//! Every wait is bounded.

pub mod admin;
pub mod bench;
pub mod collector;
pub mod daemon;
pub mod fuzz_checks;
pub mod ledger;
pub mod nats_server;
pub mod queue;
pub mod requires;
pub mod tls;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A reqwest client for test traffic to a daemon or a collector: no proxy,
/// the given whole-request timeout.
pub fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    evspool::forward::sink::http::install_crypto_provider();
    reqwest::Client::builder().no_proxy().timeout(timeout)
}

/// An `http://127.0.0.1:PORT` that refuses every connection: the port is
/// bound but never listening, so no other test's or daemon's listener can
/// take it while the returned socket lives (a port bound and released at
/// once was taken by a daemon's own listener in one CI run).
pub fn refusing_origin() -> (String, tokio::net::TcpSocket) {
    let s = tokio::net::TcpSocket::new_v4().expect("a socket");
    s.bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind 127.0.0.1:0");
    let port = s.local_addr().expect("its address").port();
    (format!("http://127.0.0.1:{port}"), s)
}

/// [`client_builder`] with a 20 s timeout.
pub fn client() -> reqwest::Client {
    client_builder(Duration::from_secs(20)).build().unwrap()
}

/// Polls `f` every 20 ms until it holds (`true`) or `timeout` passes (`false`).
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A temporary directory holding `store/` (not created) and `evspool.toml`.
pub struct Setup {
    /// Removed on drop, with everything in it.
    pub tmp: tempfile::TempDir,
    /// `<tmp>/store`, the store directory.
    pub dir: PathBuf,
    /// `<tmp>/evspool.toml`.
    pub config: PathBuf,
}

/// A [`Setup`] whose config file holds `config_text`.
pub fn setup(config_text: &str) -> Setup {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("store");
    let config = tmp.path().join("evspool.toml");
    std::fs::write(&config, config_text).unwrap();
    Setup { tmp, dir, config }
}
