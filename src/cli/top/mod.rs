//! `evspool top`: a live terminal view of a running daemon, as `vector top`
//! is for Vector.
//!
//! Reads `GET /admin/overview` once per `--interval` (1 s), through the
//! daemon's admin socket in `--dir` (the store's owner, no token), or over TCP
//! with `--url` (the daemon must have a token; it is read from
//! `EVSPOOL_TOKEN`). A refresh that fails keeps the last answer on screen under
//! a red line saying why, and the next refresh tries again. `q`, Esc or Ctrl-C
//! quits.
//!
//! The requests run on a task of their own, so a slow daemon never delays a
//! key press; keys are read on a thread (crossterm's reads block).

mod view;

#[cfg(test)]
mod tests;

use super::Global;
use super::access::Remote;
use super::exit::{self, fail};
use crate::admin_api::Overview;
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use std::io::IsTerminal as _;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Reach the daemon over TCP at this URL instead of its admin socket in
    /// --dir (e.g. http://127.0.0.1:8787); needs the daemon's token in EVSPOOL_TOKEN.
    #[arg(long)]
    pub url: Option<String>,
    /// How often to refresh.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// The latest refresh: an overview, or why there is none.
type Fetched = Option<Result<Overview, String>>;

pub async fn top(g: &Global, a: TopArgs) -> anyhow::Result<u8> {
    if a.interval < Duration::from_millis(100) || a.interval > Duration::from_secs(3600) {
        return Err(fail(
            exit::USAGE,
            format!(
                "--interval {} is out of range: give 100ms to 1h",
                humantime::format_duration(a.interval)
            ),
        ));
    }
    if !std::io::stdout().is_terminal() {
        return Err(fail(
            exit::USAGE,
            "evspool top draws on a terminal, and stdout is not one; for scripts use `evspool stats --json`",
        ));
    }
    let remote = match &a.url {
        Some(url) => Remote::tcp(url)?,
        None => {
            let socket = crate::admin_api::socket_file(&g.dir);
            if !socket.exists() {
                return Err(fail(
                    exit::ERROR,
                    format!(
                        "no daemon is running on {}: {} does not exist (start one with `evspool run`, or pass --url to reach one over TCP)",
                        g.dir.display(),
                        socket.display()
                    ),
                ));
            }
            Remote::socket(&g.dir)?
        }
    };
    // The first answer before taking over the terminal: a daemon that is not
    // there is an error message, not an empty screen.
    let first = remote.overview().await.map_err(|e| {
        let message = match (&a.url, gone(&e)) {
            (None, true) => format!(
                "no daemon is running on {}: nothing answers on {} (a daemon stopped at once, by a second signal or a kill, leaves its socket behind; start one with `evspool run`, or pass --url to reach one over TCP)",
                g.dir.display(),
                remote.target
            ),
            (Some(url), true) => format!("no daemon is running at {url}: nothing answers there"),
            (_, false) => format!("{e:#}"),
        };
        fail(exit::ERROR, message)
    })?;
    let source = remote.target.clone();
    let (tx, rx) = watch::channel::<Fetched>(Some(Ok(first)));
    let fetcher = tokio::spawn(fetch_every(remote, a.interval, tx));
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            fetcher.abort();
            return Err(anyhow::Error::new(e).context("cannot take over the terminal"));
        }
    };
    let result = show(&mut terminal, &source, a.interval, rx).await;
    ratatui::restore();
    fetcher.abort();
    result.map(|()| exit::OK)
}

/// Whether `e` says nothing listens where the daemon was: its socket refuses
/// connections or is gone (the daemon exited), or a TCP port refuses them.
fn gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        }) || {
            let text = c.to_string();
            text.contains("Connection refused") || text.contains("No such file or directory")
        }
    })
}

/// Fetches an overview every `interval` into `tx` until the receiver is gone.
async fn fetch_every(remote: Remote, interval: Duration, tx: watch::Sender<Fetched>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let got = remote.overview().await.map_err(|e| {
            if gone(&e) {
                format!(
                    "no daemon is running: nothing answers on {} (the daemon stopped; the last answer stays on screen)",
                    remote.target
                )
            } else {
                format!("{e:#}")
            }
        });
        if tx.send(Some(got)).is_err() {
            return;
        }
    }
}

/// Draws every refresh and every resize until a quit key.
async fn show(
    terminal: &mut ratatui::DefaultTerminal,
    source: &str,
    interval: Duration,
    mut fetched: watch::Receiver<Fetched>,
) -> anyhow::Result<()> {
    let mut keys = key_events();
    let mut last: Option<Overview> = None;
    let mut error: Option<String> = None;
    loop {
        match fetched.borrow_and_update().clone() {
            Some(Ok(o)) => {
                last = Some(o);
                error = None;
            }
            Some(Err(e)) => error = Some(e),
            None => {}
        }
        terminal.draw(|frame| {
            view::render(
                frame,
                &view::Screen {
                    source,
                    overview: last.as_ref(),
                    error: error.as_deref(),
                    interval,
                },
            )
        })?;
        tokio::select! {
            changed = fetched.changed() => if changed.is_err() { return Ok(()) },
            ev = keys.recv() => match ev {
                None => return Ok(()),
                Some(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                // A resize (or anything else) just redraws.
                Some(_) => {}
            },
        }
    }
}

/// Terminal events from a thread: crossterm's reads block. The thread ends
/// when the receiver is dropped (checked every 100 ms) or reading fails.
fn key_events() -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if tx.blocking_send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {
                    if tx.is_closed() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    rx
}
