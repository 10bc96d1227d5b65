//! The daemon harness: the real `evspool` binary as a child process.
//!
//! [`Evspool`] says which binary runs and how (a command prefix, `RUST_LOG`,
//! how much output to keep); [`Proc`] is any child it spawned, its stdout and
//! stderr collected on threads, SIGKILLed and reaped on drop, so no process
//! outlives a failed test; [`Daemon`] is an `evspool run` that printed its
//! `evspool listening on URL` line. Every child starts with a clean
//! environment: none of the variables the binary reads ([`ENV`]), no
//! `NO_COLOR`. Every wait is bounded.
//!
//! ```no_run
//! # async fn f(dir: &std::path::Path, config: &std::path::Path) {
//! use evspool_testkit::daemon;
//! let d = daemon::start(dir, Some(config), &[], &[]).await; // cargo's evspool
//! println!("{} (pid {})", d.url, d.pid());
//! d.stop(std::time::Duration::from_secs(20)).await; // SIGTERM, exit 0
//! # }
//! ```

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variables the binary reads; removed so the host cannot steer a test.
pub const ENV: [&str; 9] = [
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

/// What `evspool run` prints on stdout once it listens, before its URL.
pub const LISTENING: &str = "evspool listening on ";

/// The `evspool` binary cargo built for the running test or bench
/// (`CARGO_BIN_EXE_evspool`, as `assert_cmd` finds it).
pub fn cargo_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("evspool")
}

/// How tests run the binary: which one, through what prefix, with what
/// `RUST_LOG`, keeping how much of its output, waiting how long for it to
/// listen. Cheap to clone; the builders consume and return it.
#[derive(Clone, Debug)]
pub struct Evspool {
    bin: PathBuf,
    prefix: Vec<OsString>,
    rust_log: Option<String>,
    keep_tail: Option<usize>,
    listen_timeout: Duration,
}

impl Evspool {
    /// `bin`, no prefix, `RUST_LOG` unset, all output kept, 30 s to listen.
    pub fn new(bin: impl Into<PathBuf>) -> Evspool {
        Evspool {
            bin: bin.into(),
            prefix: Vec::new(),
            rust_log: None,
            keep_tail: None,
            listen_timeout: Duration::from_secs(30),
        }
    }

    /// [`Evspool::new`] on [`cargo_bin`].
    pub fn cargo() -> Evspool {
        Evspool::new(cargo_bin())
    }

    /// The torture and power-loss suites' way: `EVSPOOL_TORTURE_BIN` if set
    /// (e.g. a copy that a rebuild cannot replace during a long soak), else
    /// [`cargo_bin`]; `RUST_LOG=warn`; the last 64 KiB of output kept.
    pub fn torture() -> Evspool {
        let bin = std::env::var_os("EVSPOOL_TORTURE_BIN").map_or_else(cargo_bin, PathBuf::from);
        Evspool::new(bin).rust_log("warn").keep_tail()
    }

    /// The binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs the binary through `prefix` (e.g. `prlimit --nofile=1024`, or
    /// `sh -c 'umask 000; exec "$0" "$@"'`), which gets the binary's path as
    /// its next argument and must exec it (so the child's pid is evspool's).
    pub fn under(mut self, prefix: &[&str]) -> Evspool {
        self.prefix = prefix.iter().map(OsString::from).collect();
        self
    }

    /// Sets `RUST_LOG` for every child (otherwise it is removed).
    pub fn rust_log(mut self, filter: &str) -> Evspool {
        self.rust_log = Some(filter.to_string());
        self
    }

    /// Keeps only the last 64–128 KiB of each output stream (long soaks).
    pub fn keep_tail(mut self) -> Evspool {
        self.keep_tail = Some(64 * 1024);
        self
    }

    /// How long [`Evspool::start`] waits for the listening line (default 30 s).
    pub fn listen_timeout(mut self, timeout: Duration) -> Evspool {
        self.listen_timeout = timeout;
        self
    }

    /// `[PREFIX] evspool --dir DIR [--config FILE]` with a clean environment.
    pub fn command(&self, dir: &Path, config: Option<&Path>) -> Command {
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        for v in ENV {
            cmd.env_remove(v);
        }
        // Colour in logs depends on it; tests see the default.
        cmd.env_remove("NO_COLOR");
        if let Some(filter) = &self.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        cmd.arg("--dir").arg(dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd
    }

    /// Spawns [`Evspool::command`] with `args`, plus `envs`, collecting its output.
    pub fn spawn(
        &self,
        dir: &Path,
        config: Option<&Path>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = self.command(dir, config);
        cmd.args(args).envs(envs.iter().copied());
        self.spawn_command(cmd)
    }

    /// Spawns `cmd` (made by [`Evspool::command`]), keeping output as configured.
    pub fn spawn_command(&self, cmd: Command) -> Proc {
        Proc::spawn_keeping(cmd, self.keep_tail)
    }

    /// Spawns `evspool ... run ARGS` without waiting for it to listen.
    pub fn spawn_run(
        &self,
        dir: &Path,
        config: Option<&Path>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Proc {
        let mut run = vec!["run"];
        run.extend_from_slice(args);
        self.spawn(dir, config, &run, envs)
    }

    /// Runs `evspool --dir DIR [--config FILE] ARGS` to completion on a
    /// blocking thread: (exit code, stdout, stderr).
    pub async fn run(
        &self,
        dir: &Path,
        config: Option<&Path>,
        args: &[&str],
    ) -> (i32, String, String) {
        let mut c = self.command(dir, config);
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

    /// Starts `evspool --dir DIR [--config FILE] run ARGS`, plus `envs`, and
    /// waits (bounded) for its listening line.
    pub async fn start(
        &self,
        dir: &Path,
        config: Option<&Path>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Daemon {
        let proc = self.spawn_run(dir, config, args, envs);
        Daemon::listening(proc, dir, self.listen_timeout).await
    }

    /// [`Evspool::start`] for code outside a runtime (sleeps the thread).
    pub fn start_blocking(
        &self,
        dir: &Path,
        config: Option<&Path>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Daemon {
        let proc = self.spawn_run(dir, config, args, envs);
        Daemon::listening_blocking(proc, dir, self.listen_timeout)
    }
}

/// [`Evspool::spawn`] of [`cargo_bin`].
pub fn spawn(dir: &Path, config: Option<&Path>, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    Evspool::cargo().spawn(dir, config, args, envs)
}

/// [`Evspool::start`] of [`cargo_bin`].
pub async fn start(
    dir: &Path,
    config: Option<&Path>,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Daemon {
    Evspool::cargo().start(dir, config, args, envs).await
}

/// Collects a child's output lines into `buf`; with `tail`, keeps only the
/// last `tail` bytes or so (trimmed once it doubles).
fn capture(
    r: impl Read + Send + 'static,
    buf: Arc<Mutex<String>>,
    tail: Option<usize>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut b = buf.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
            if let Some(keep) = tail
                && b.len() > 2 * keep
            {
                let cut = b.len() - keep;
                let cut = (cut..b.len()).find(|&i| b.is_char_boundary(i)).unwrap_or(0);
                b.drain(..cut);
            }
        }
    })
}

/// A child process whose stdout and stderr are collected on threads;
/// SIGKILLed and reaped on drop.
pub struct Proc {
    /// The child (its pipes are taken).
    pub child: Child,
    /// Everything it wrote on stdout so far (see [`Evspool::keep_tail`]).
    pub stdout: Arc<Mutex<String>>,
    /// Everything it wrote on stderr so far.
    pub stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Spawns `cmd` (stdin null, stdout and stderr piped and collected in full).
    pub fn spawn(cmd: Command) -> Proc {
        Proc::spawn_keeping(cmd, None)
    }

    fn spawn_keeping(mut cmd: Command, tail: Option<usize>) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            capture(child.stdout.take().unwrap(), stdout.clone(), tail),
            capture(child.stderr.take().unwrap(), stderr.clone(), tail),
        ];
        Proc {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The URL of the daemon's listening line, once it printed one.
    pub fn listening_url(&self) -> Option<String> {
        listening_url(&self.stdout.lock().unwrap())
    }

    /// Whether it has exited on its own (then its output is complete, bounded
    /// by 5 s, as [`Proc::wait_exit`] leaves it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("try_wait")?;
        self.drain_output();
        Some(status)
    }

    /// Waits (bounded, 5 s) for the output threads once the child has exited,
    /// so what it wrote last is in [`Proc::stdout`] and [`Proc::stderr`].
    fn drain_output(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
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
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`Proc::wait_exit`] for code outside a runtime (sleeps the thread).
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Peak resident memory of the process so far (`VmHWM`), in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        vm_hwm_kib(self.pid())
    }
}

/// Peak resident memory (`VmHWM`) of process `pid` so far, in KiB.
pub fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// The URL on the first `evspool listening on URL` line of `stdout`.
pub fn listening_url(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(LISTENING).map(|u| u.trim().to_string()))
}

/// A running `evspool run` that printed its listening line; SIGKILLed and
/// reaped on drop (its [`Proc`]).
pub struct Daemon {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The store directory (its admin socket is `evspool.sock` there).
    pub dir: PathBuf,
}

/// What a look at a starting daemon found.
enum Start {
    Listening(String),
    Waiting,
}

impl Daemon {
    /// Waits (bounded) for `proc`, an `evspool run` on store `dir`, to print
    /// its listening line; panics with its stderr if it exits first or takes
    /// longer than `timeout`. The URL must be on loopback.
    pub async fn listening(mut proc: Proc, dir: &Path, timeout: Duration) -> Daemon {
        let until = Instant::now() + timeout;
        loop {
            if let Start::Listening(url) = Daemon::look(&mut proc, until, timeout) {
                return Daemon::new(proc, url, dir);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`Daemon::listening`] for code outside a runtime (sleeps the thread).
    pub fn listening_blocking(mut proc: Proc, dir: &Path, timeout: Duration) -> Daemon {
        let until = Instant::now() + timeout;
        loop {
            if let Start::Listening(url) = Daemon::look(&mut proc, until, timeout) {
                return Daemon::new(proc, url, dir);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn look(proc: &mut Proc, until: Instant, timeout: Duration) -> Start {
        if let Some(url) = proc.listening_url() {
            return Start::Listening(url);
        }
        if let Some(status) = proc.exited() {
            panic!(
                "the daemon exited ({status}) before listening:\n{}",
                proc.stderr()
            );
        }
        assert!(
            Instant::now() < until,
            "no `evspool listening on` line within {timeout:?}; stderr:\n{}",
            proc.stderr()
        );
        Start::Waiting
    }

    fn new(proc: Proc, url: String, dir: &Path) -> Daemon {
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Daemon {
            proc,
            url,
            dir: dir.to_path_buf(),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Its stderr (its log) so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        self.proc.sigterm();
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout).await
    }

    /// SIGTERM, then requires exit 0 within `timeout`.
    pub async fn stop(mut self, timeout: Duration) {
        self.proc.sigterm();
        let status = self.proc.wait_exit(timeout).await;
        let stderr = self.proc.stderr();
        let status =
            status.unwrap_or_else(|| panic!("no exit within {timeout:?} of SIGTERM:\n{stderr}"));
        assert_eq!(status.code(), Some(0), "exit after SIGTERM:\n{stderr}");
    }

    /// `/admin/stats` as JSON, through the daemon's admin socket.
    pub async fn stats(&self) -> serde_json::Value {
        crate::admin::get(&self.dir, "/admin/stats").await
    }

    /// Peak resident memory of the daemon so far (`VmHWM`), in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        self.proc.vm_hwm_kib()
    }
}
