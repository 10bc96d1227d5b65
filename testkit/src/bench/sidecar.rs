//! The sidecar's ingest rate against a floor measured in the same run.
//!
//! A load generator keeps 16 keep-alive connections busy with
//! `POST /v1/events` requests of 50 NDJSON events (300 bytes each), each
//! connection sending its next request when the previous one was answered.
//! It drives, in turn:
//!
//! - **the daemon**: the release `evspool run` binary on a fresh store, ingest
//!   only (`active = false`: nothing is forwarded), the default durable topic
//!   `events`, `fsync` as the row says; a 202 means the request's 50 events are
//!   written (and synced with `fsync = true`);
//! - **the floor**: a minimal axum/hyper server in a child process that appends
//!   each request body to one file with one `write` (`O_APPEND`) and, with
//!   `fsync`, `fdatasync`s it before answering 202 — the least any server
//!   promising the same could do, with no parsing, ids or index.
//!
//! Both run in their own process on the same machine as the load generator,
//! so the 2 cores are shared alike. Rows alternate (daemon, floor) per round.

use super::thousands;
use bytes::Bytes;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The child-process name of the floor server.
pub const FLOOR_CHILD: &str = "sidecar-floor";
/// The floor child's store directory and sync policy.
const FLOOR_DIR_ENV: &str = "EVSPOOL_REPORT_FLOOR_DIR";
const FLOOR_FSYNC_ENV: &str = "EVSPOOL_REPORT_FLOOR_FSYNC";
/// Keep-alive connections of the load generator.
pub const CONNECTIONS: usize = 16;
/// Events per request.
pub const EVENTS_PER_REQUEST: usize = 50;

/// How much each round sends.
#[derive(Clone, Debug)]
pub struct SidecarSizes {
    /// Requests per connection per timed run.
    pub requests_per_connection: usize,
    /// Rounds (the table shows medians).
    pub rounds: usize,
}

impl SidecarSizes {
    /// `--quick`.
    pub fn quick() -> SidecarSizes {
        SidecarSizes {
            requests_per_connection: 40,
            rounds: 3,
        }
    }

    /// The default.
    pub fn full() -> SidecarSizes {
        SidecarSizes {
            requests_per_connection: 120,
            rounds: 5,
        }
    }
}

/// Ingest rates (events per second) of every round.
#[derive(Debug, Default)]
pub struct SidecarRates {
    /// `(fsync, daemon rates, floor rates)`.
    pub rows: Vec<(bool, Vec<f64>, Vec<f64>)>,
}

/// A server child process, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `child`'s stdout until its `listening on http://…` line; keeps
/// draining the rest in a thread so the child never blocks on a full pipe.
fn listening(mut child: Child, what: &str) -> Server {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(at) = l.find("listening on http://") {
                    break l[at + "listening on ".len()..].trim().to_string();
                }
            }
            _ => {
                let status = child.wait().expect("wait for server");
                panic!("{what} exited ({status}) before listening");
            }
        }
        assert!(Instant::now() < deadline, "{what} did not listen in 60 s");
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

/// The release (or debug, like this binary) `evspool` binary beside this
/// example's directory, built first if missing or older than this binary.
pub fn evspool_binary() -> PathBuf {
    let me = std::env::current_exe().expect("own executable");
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/examples/<me>");
    let bin = profile_dir.join("evspool");
    let stale = match (std::fs::metadata(&bin), std::fs::metadata(&me)) {
        (Ok(b), Ok(m)) => b.modified().ok() < m.modified().ok(),
        _ => true,
    };
    if stale {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        eprintln!("  building the evspool binary for the sidecar rows");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", "evspool", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bin evspool failed");
    }
    bin
}

fn start_daemon(bin: &Path, dir: &Path, fsync: bool) -> Server {
    let config = dir.join("evspool.toml");
    std::fs::write(
        &config,
        format!(
            "active = false\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n[queue]\nfsync = {fsync}\n"
        ),
    )
    .expect("write daemon config");
    let child = Command::new(bin)
        .arg("--dir")
        .arg(dir.join("store"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("EVSPOOL_DIR")
        .env_remove("EVSPOOL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start evspool run");
    listening(child, "evspool run")
}

fn start_floor(child_env: &str, dir: &Path, fsync: bool) -> Server {
    let child = Command::new(std::env::current_exe().expect("own executable"))
        .env(child_env, FLOOR_CHILD)
        .env(FLOOR_DIR_ENV, dir)
        .env(FLOOR_FSYNC_ENV, if fsync { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the floor server");
    listening(child, "the floor server")
}

/// The floor server (run in a child process): appends each body with one
/// `write` and, with `fsync`, `fdatasync`s before answering 202.
pub fn floor_child() {
    let dir = PathBuf::from(std::env::var_os(FLOOR_DIR_ENV).expect("floor dir"));
    let fsync = std::env::var(FLOOR_FSYNC_ENV).is_ok_and(|v| v == "1");
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("floor.log"))
            .expect("open the floor's file"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let app = axum::Router::new().route(
            "/v1/events",
            axum::routing::post(move |body: axum::body::Bytes| {
                let file = file.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        (&*file).write_all(&body).expect("append body");
                        if fsync {
                            file.sync_data().expect("fdatasync");
                        }
                    })
                    .await
                    .expect("append task");
                    (axum::http::StatusCode::ACCEPTED, "{\"accepted\":true}")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the floor server");
        println!(
            "floor listening on http://{}",
            listener.local_addr().expect("local addr")
        );
        axum::serve(listener, app).await.expect("serve");
    });
}

/// One 50-event NDJSON body.
fn body() -> Bytes {
    let mut b = Vec::new();
    for i in 0..EVENTS_PER_REQUEST {
        b.extend_from_slice(&super::payload(i));
        b.push(b'\n');
    }
    Bytes::from(b)
}

/// Sends `per` requests on each of [`CONNECTIONS`] keep-alive connections to
/// `url`; every answer must be a 202. Returns events per second.
fn load(rt: &tokio::runtime::Runtime, url: &str, per: usize) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .expect("http client");
    let endpoint = format!("{url}/v1/events");
    let body = body();
    let run = |n: usize| {
        let (client, endpoint, body) = (client.clone(), endpoint.clone(), body.clone());
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..CONNECTIONS {
                let (client, endpoint, body) = (client.clone(), endpoint.clone(), body.clone());
                tasks.spawn(async move {
                    for _ in 0..n {
                        let r = client
                            .post(&endpoint)
                            .header("content-type", "application/x-ndjson")
                            .body(body.clone())
                            .send()
                            .await
                            .expect("post events");
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        assert_eq!(status, 202, "{endpoint}: {text}");
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("connection task");
            }
        })
    };
    // Warm-up: open the connections, fault in the servers' paths.
    run(2);
    let start = Instant::now();
    run(per);
    (CONNECTIONS * per * EVENTS_PER_REQUEST) as f64 / start.elapsed().as_secs_f64()
}

/// Measures the daemon and the floor, `fsync` off then on.
pub fn measure(child_env: &str, sizes: &SidecarSizes) -> SidecarRates {
    let bin = evspool_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut out = SidecarRates::default();
    for fsync in [false, true] {
        let (mut daemon, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..sizes.rounds {
            let dir = super::temp_dir();
            let server = start_daemon(&bin, dir.path(), fsync);
            daemon.push(load(&rt, &server.url, sizes.requests_per_connection));
            drop(server);
            let dir = super::temp_dir();
            let server = start_floor(child_env, dir.path(), fsync);
            floor.push(load(&rt, &server.url, sizes.requests_per_connection));
        }
        eprintln!(
            "  sidecar fsync={fsync}: daemon {:?} floor {:?}",
            daemon.iter().map(|r| thousands(*r)).collect::<Vec<_>>(),
            floor.iter().map(|r| thousands(*r)).collect::<Vec<_>>()
        );
        out.rows.push((fsync, daemon, floor));
    }
    out
}

/// The sidecar table.
pub fn table(rates: &SidecarRates) -> String {
    let mut out = String::from(
        "| sidecar ingest, 16 connections, 50-event NDJSON | daemon ev/s | floor ev/s | ratio | target | |\n\
         |---|---:|---:|---:|---|---|\n",
    );
    for (fsync, daemon, floor) in &rates.rows {
        let d = super::peers::median(daemon).unwrap_or(0.0);
        let f = super::peers::median(floor).unwrap_or(0.0);
        let ratio = d / f;
        out.push_str(&format!(
            "| `fsync = {fsync}` (a 202 survives {}) | {} | {} | {ratio:.2}× | ≥ 0.50× | {} |\n",
            if *fsync { "power loss" } else { "kill -9" },
            thousands(d),
            thousands(f),
            if ratio >= 0.5 { "met" } else { "**missed**" }
        ));
    }
    out.push_str(
        "\nThe daemon: `evspool run` (release), ingest only (`active = false`), durable topic \
         `events`. The floor: a minimal axum/hyper server appending each body with one `write` \
         and the same sync policy. Medians of the rounds; each round a fresh store.\n",
    );
    out
}
