//! `evspool top` end to end: the real binary in a real pseudo-terminal (a
//! detached tmux session, 120x40), against a live daemon whose collector goes
//! down and comes back. The screen is read with `tmux capture-pane`.
//!
//! tmux must be installed (`.ci/run` installs it); without it the test fails
//! saying so rather than passing without having run.

use crate::daemon_e2e::config;
use evspool_testkit::client;
use evspool_testkit::collector::{Collector, Reply};
use evspool_testkit::daemon::start;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A tmux server of our own (its own socket name and config), killed on drop.
struct Tmux {
    socket: String,
    conf: tempfile::NamedTempFile,
    /// Where the shell running top writes top's exit status.
    status: tempfile::TempDir,
}

impl Tmux {
    fn new() -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "tmux is not available ({other:?}): this test drives `evspool top` in a pseudo-terminal through tmux; install it (apt-get install tmux), as .ci/run does"
            ),
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // Keep a pane whose program exited (to read its last words and exit
        // status); no status bar, so the program has all 40 rows.
        let conf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(conf.path(), "set -g remain-on-exit on\nset -g status off\n").unwrap();
        Tmux {
            conf,
            status: tempfile::tempdir().unwrap(),
            socket: format!(
                "evspool-top-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new("tmux");
        for v in evspool_testkit::daemon::ENV {
            c.env_remove(v);
        }
        c.env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env("TERM", "xterm-256color")
            .arg("-f")
            .arg(self.conf.path())
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts `evspool --dir DIR top` in a detached 120x40 session named `top`,
    /// under a shell that writes its exit status to a file: tmux 3.3a does not
    /// always reap a pane's process (it stays a zombie, `pane_dead_status`
    /// empty), so the status is taken from the shell that waited for it.
    fn start_top(&self, dir: &Path) {
        let bin = assert_cmd::cargo::cargo_bin("evspool");
        let script = format!(
            "\"$@\"; echo $? > {}.tmp && mv {}.tmp {}",
            self.status_path().display(),
            self.status_path().display(),
            self.status_path().display()
        );
        let out = self.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "40",
            "sh",
            "-c",
            &script,
            "sh",
            bin.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
            "top",
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The screen (and what scrolled off it), one string per line, wrapped
    /// lines joined.
    fn screen(&self) -> Vec<String> {
        let out = self.run(&["capture-pane", "-p", "-J", "-S", "-100", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn status_path(&self) -> std::path::PathBuf {
        self.status.path().join("status")
    }

    /// top's exit status, once it has exited.
    fn exit_status(&self) -> Option<String> {
        std::fs::read_to_string(self.status_path())
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Whether top has exited (the shell that ran it wrote its status).
    fn exited(&self) -> bool {
        self.exit_status().is_some()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The `events` topic's row as top draws it: (READY, the collector column's
/// first line, the same of its second line), read by the header's columns.
fn events_row(screen: &[String]) -> Option<(u64, String, String)> {
    let header = screen
        .iter()
        .find(|l| l.trim_start().starts_with("TOPIC"))?;
    let y = screen.iter().position(|l| l.starts_with("events "))?;
    let col = |name: &str, right_aligned: bool| -> (usize, usize) {
        let at = header.find(name).unwrap();
        let (mut from, to) = (at, at + name.len());
        if right_aligned {
            while from > 0 && header.as_bytes()[from - 1] == b' ' {
                from -= 1;
            }
        }
        (from, to)
    };
    let chars = |line: &str, (from, to): (usize, usize)| -> String {
        line.chars()
            .skip(from)
            .take(to - from)
            .collect::<String>()
            .trim()
            .to_string()
    };
    let (cf, _) = col("COLLECTOR", false);
    let (ready_from, _) = col("READY", true);
    let collector = (cf, ready_from);
    let ready = chars(&screen[y], col("READY", true)).replace(',', "");
    Some((
        ready.parse().ok()?,
        chars(&screen[y], collector),
        chars(screen.get(y + 1)?, collector),
    ))
}

/// Polls the screen (bounded) until `pred` holds on the events row; returns
/// that screen, or panics with the last one.
async fn wait_screen(
    tmux: &Tmux,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&(u64, String, String), &[String]) -> bool,
) -> Vec<String> {
    let until = Instant::now() + timeout;
    loop {
        let s = tmux.screen();
        if let Some(row) = events_row(&s)
            && pred(&row, &s)
        {
            return s;
        }
        assert!(
            Instant::now() < until,
            "top never showed {what} within {timeout:?}; last screen:\n{}",
            s.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_in_a_terminal_shows_ready_growing_and_the_collector_down_during_an_outage_then_up() {
    let tmux = Tmux::new();
    let collector = Collector::start().await;
    collector.respond(|_| Reply::status(503).body("collector overloaded"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let cfg = tmp.path().join("evspool.toml");
    std::fs::write(
        &cfg,
        config("", "", Some(&format!("{}/ingest", collector.url)), ""),
    )
    .unwrap();
    let d = start(&dir, Some(&cfg), &[], &[]).await;
    tmux.start_top(&dir);

    // A producer posts 10 events every 100 ms for as long as the test runs.
    let url = format!("{}/v1/events?topic=events", d.url);
    let producer = tokio::spawn(async move {
        let c = client();
        for i in 0u64.. {
            let body: Vec<serde_json::Value> = (0..10)
                .map(|k| serde_json::json!({"uid": format!("top-{i}-{k}")}))
                .collect();
            let r = c.post(&url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 202);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // The outage: the collector answers 503. Top says so, and READY grows.
    let first = wait_screen(
        &tmux,
        "the collector down",
        Duration::from_secs(20),
        |r, _| r.1.starts_with("down") && r.0 > 0,
    )
    .await;
    let (ready_before, ..) = events_row(&first).unwrap();
    let during = wait_screen(&tmux, "READY growing", Duration::from_secs(20), |r, _| {
        r.0 >= ready_before + 20 && r.1.starts_with("down")
    })
    .await;
    let text = during.join("\n");
    assert!(
        text.contains("last error") && text.contains("http 503"),
        "the last error is on screen:\n{text}"
    );
    assert!(
        during
            .iter()
            .any(|l| l.starts_with("events ") && l.contains("in ")),
        "{text}"
    );
    assert!(
        text.chars().any(|c| ('▂'..='█').contains(&c)),
        "the in-rate sparkline rises:\n{text}"
    );

    // The collector comes back: top shows it up, and the backlog drains.
    collector.respond(|_| Reply::ok());
    let after = wait_screen(
        &tmux,
        "the collector up and the queue drained",
        Duration::from_secs(30),
        |r, _| r.1.starts_with("up") && r.0 < 50,
    )
    .await;
    let row = after.iter().position(|l| l.starts_with("events ")).unwrap();
    assert!(
        after[row + 1].contains("out ") && !after[row + 1].contains("out 0/s"),
        "the out rate is no longer zero:\n{}",
        after.join("\n")
    );
    producer.abort();

    // `q` quits, and the terminal is given back.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let until = Instant::now() + Duration::from_secs(10);
    while !tmux.exited() {
        assert!(
            Instant::now() < until,
            "top did not quit on q:\n{}",
            tmux.screen().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tmux.exit_status().as_deref(), Some("0"), "top exits 0 on q");
}

#[test]
fn top_without_a_running_daemon_says_so_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let tmux = Tmux::new();
    tmux.start_top(tmp.path());
    let until = Instant::now() + Duration::from_secs(20);
    while !tmux.exited() {
        assert!(Instant::now() < until, "{}", tmux.screen().join("\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = tmux.screen().join("\n");
    assert!(
        text.contains("no daemon is running on") && text.contains("evspool.sock"),
        "{text}"
    );
    assert_eq!(tmux.exit_status().as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_after_a_daemon_stopped_at_once_says_no_daemon_is_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let cfg = tmp.path().join("evspool.toml");
    std::fs::write(&cfg, config("", "", None, "")).unwrap();
    let d = start(&dir, Some(&cfg), &[], &[]).await;
    // Killed at once (as by a second signal): its socket file stays behind.
    drop(d);
    assert!(dir.join("evspool.sock").exists());
    let tmux = Tmux::new();
    tmux.start_top(&dir);
    let until = Instant::now() + Duration::from_secs(20);
    while !tmux.exited() {
        assert!(Instant::now() < until, "{}", tmux.screen().join("\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = tmux.screen().join("\n");
    assert!(
        text.contains("no daemon is running on") && text.contains("nothing answers on"),
        "{text}"
    );
    assert!(!text.contains("Connection refused"), "{text}");
    assert_eq!(tmux.exit_status().as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_says_no_daemon_is_running_when_its_daemon_goes_away() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let cfg = tmp.path().join("evspool.toml");
    std::fs::write(&cfg, config("", "", None, "")).unwrap();
    let d = start(&dir, Some(&cfg), &[], &[]).await;
    let tmux = Tmux::new();
    tmux.start_top(&dir);
    let wait = |what: &'static str, pred: fn(&str) -> bool| {
        let tmux = &tmux;
        async move {
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                let text = tmux.screen().join("\n");
                if pred(&text) {
                    return text;
                }
                assert!(Instant::now() < until, "top never showed {what}:\n{text}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait("its first answer", |t| {
        t.contains("evspool top ·") && t.contains("TOPIC")
    })
    .await;
    drop(d); // SIGKILL: nothing answers on the socket any more.
    let text = wait("that the daemon is gone", |t| {
        t.contains("no daemon is running")
    })
    .await;
    assert!(text.contains("nothing answers on"), "{text}");
    assert!(!text.contains("Connection refused"), "{text}");
    tmux.run(&["send-keys", "-t", "top", "q"]);
}
