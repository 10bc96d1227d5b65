//! Driving the real `evspool` binary: the daemon as a killable child, CLI
//! commands, the torture config, and HTTP helpers.
//!
//! Every child is owned by a guard that SIGKILLs and reaps it on drop, so no
//! process outlives a failed scenario. Every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test; `EVSPOOL_TORTURE_BIN` overrides it (e.g. a copy that
/// a rebuild cannot replace during a long soak).
pub fn bin() -> String {
    std::env::var("EVSPOOL_TORTURE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_evspool").into())
}

/// Environment variables the binary reads; removed so the host cannot steer a test.
const ENV: [&str; 9] = [
    "EVSPOOL_DIR",
    "EVSPOOL_CONFIG",
    "EVSPOOL_TOKEN",
    "EVSPOOL_SINK",
    "EVSPOOL_SINK_URL",
    "EVSPOOL_SINK_TOKEN",
    "EVSPOOL_SINK_SECRET",
    "EVSPOOL_LISTEN",
    "RUST_LOG",
];

/// `evspool --dir DIR --config CONFIG` with a clean environment.
pub fn evspool(dir: &Path, config: &Path) -> Command {
    let mut c = Command::new(bin());
    for v in ENV {
        c.env_remove(v);
    }
    c.env("RUST_LOG", "warn");
    c.arg("--dir").arg(dir).arg("--config").arg(config);
    c
}

/// Keeps the last 64 KiB of a child's output.
fn capture(r: impl Read + Send + 'static, buf: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut b = buf.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
            if b.len() > 128 * 1024 {
                let cut = b.len() - 64 * 1024;
                let cut = (cut..b.len()).find(|&i| b.is_char_boundary(i)).unwrap_or(0);
                b.drain(..cut);
            }
        }
    });
}

/// A child process SIGKILLed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning evspool");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        capture(child.stdout.take().unwrap(), stdout.clone());
        capture(child.stderr.take().unwrap(), stderr.clone());
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether it has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILL and reap. Returns `true` if the kill ended it (it was still running).
    pub async fn kill9(&mut self) -> bool {
        if self.exited().is_some() {
            return false;
        }
        self.child.kill().expect("SIGKILL");
        let status = self
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("a SIGKILLed child is reaped within 10 s");
        // It may have exited by itself just before the signal.
        status.signal() == Some(libc::SIGKILL)
    }

    /// SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: sending a signal to our own child process by its pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A running `evspool run`.
pub struct Daemon {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The store directory; the admin API is its `evspool.sock`.
    pub dir: PathBuf,
}

impl Daemon {
    /// Spawns the daemon without waiting for it to listen.
    pub fn spawn(dir: &Path, config: &Path) -> Proc {
        let mut c = evspool(dir, config);
        c.arg("run");
        Proc::spawn(c)
    }

    /// Waits (bounded) for `evspool listening on URL`.
    pub async fn listening(mut proc: Proc, dir: &Path) -> Daemon {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let found = proc.stdout.lock().unwrap().lines().find_map(|l| {
                l.strip_prefix("evspool listening on ")
                    .map(|u| u.trim().to_string())
            });
            if let Some(url) = found {
                return Daemon {
                    proc,
                    url,
                    dir: dir.to_path_buf(),
                };
            }
            if let Some(status) = proc.exited() {
                panic!(
                    "the daemon exited ({status}) before listening:\n{}",
                    proc.stderr()
                );
            }
            assert!(
                Instant::now() < until,
                "no `evspool listening on` line within 30 s; stderr:\n{}",
                proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn start(dir: &Path, config: &Path) -> Daemon {
        Self::listening(Self::spawn(dir, config), dir).await
    }

    /// `/admin/stats` as JSON, through the daemon's admin socket.
    pub async fn stats(&self) -> serde_json::Value {
        evspool::forward::sink::http::install_crypto_provider();
        let r = reqwest::Client::builder()
            .unix_socket(self.dir.join("evspool.sock"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an admin socket client")
            .get("http://evspool/admin/stats")
            .send()
            .await
            .expect("admin stats answers");
        assert_eq!(r.status(), 200, "admin stats");
        r.json().await.expect("stats JSON")
    }

    /// SIGTERM, then require exit 0 within `timeout`.
    pub async fn stop(mut self, timeout: Duration) {
        self.proc.sigterm();
        let status = self.proc.wait_exit(timeout).await;
        let stderr = self.proc.stderr();
        let status =
            status.unwrap_or_else(|| panic!("no exit within {timeout:?} of SIGTERM:\n{stderr}"));
        assert_eq!(status.code(), Some(0), "exit after SIGTERM:\n{stderr}");
    }
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
    let mut c = evspool(dir, config);
    c.args(args);
    let out = tokio::task::spawn_blocking(move || c.output().expect("running evspool"))
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A reqwest client for producers and admin calls.
pub fn client(timeout: Duration) -> reqwest::Client {
    evspool::forward::sink::http::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
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

/// A temporary directory holding `store/` and `evspool.toml`.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub config: PathBuf,
}

pub fn setup(config_text: &str) -> Setup {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    let config = tmp.path().join("evspool.toml");
    std::fs::write(&config, config_text).unwrap();
    Setup { tmp, dir, config }
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
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
