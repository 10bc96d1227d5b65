//! Reaching the store: directly, or through a running daemon's admin API when
//! the daemon holds the directory's lock (sled allows one process per directory).

use super::Global;
use super::exit::{self, fail};
use super::output::EventRecord;
use crate::daemon::config::DaemonConfig;
use anyhow::Context as _;
use evspool::{OpenError, Queue, QueueConfig, Stats};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file a running daemon writes into the store directory so the CLI can find it.
pub const ADMIN_FILE: &str = "evspool.admin";

/// What a daemon advertises in [`ADMIN_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminAddress {
    /// Base URL of the daemon, e.g. `http://127.0.0.1:8787`.
    pub url: String,
    /// The daemon's pid.
    pub pid: u32,
}

/// The store, local or through the daemon.
pub enum Access {
    Local(Queue),
    Remote(Remote),
}

/// A daemon's admin API.
pub struct Remote {
    pub base: String,
    client: reqwest::Client,
    token: Option<String>,
}

/// Loads the config file named by `--config`, or the defaults.
pub fn load_config(g: &Global) -> anyhow::Result<DaemonConfig> {
    match &g.config {
        Some(path) => DaemonConfig::load(path),
        None => Ok(DaemonConfig::default()),
    }
}

/// Whether `dir` already holds a store.
pub fn store_exists(dir: &Path) -> bool {
    dir.join("db").is_dir() || dir.join("evspool.lock").is_file()
}

/// Opens the store for a command. `create`: whether a missing store may be created.
pub async fn open(g: &Global, create: bool) -> anyhow::Result<Access> {
    if !create && g.dir.exists() && !g.dir.is_dir() {
        return Err(fail(
            exit::ERROR,
            format!(
                "--dir {} is a file, not an evspool store directory; pass --dir (or set EVSPOOL_DIR) to the store's directory",
                g.dir.display()
            ),
        ));
    }
    if !create && !store_exists(&g.dir) {
        return Err(fail(
            exit::ERROR,
            format!(
                "no evspool store at {} (pass --dir or set EVSPOOL_DIR; `evspool send` or `evspool run` create one)",
                g.dir.display()
            ),
        ));
    }
    let cfg = load_config(g)?;
    open_with(&g.dir, cfg.queue).await
}

/// Opens `dir` with `cfg`, falling back to the daemon's admin API when locked.
/// How long a command waits for a lock held by a process without an admin API.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(750);

pub async fn open_with(dir: &Path, cfg: QueueConfig) -> anyhow::Result<Access> {
    // A lock held by a process that advertises no admin API is often one that
    // is closing the store right now (a daemon shutting down, a command just
    // finishing): give it a moment before saying the store is locked.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    let mut opened = Queue::open(dir, cfg.clone());
    while matches!(opened, Err(OpenError::Locked { .. }))
        && !dir.join(ADMIN_FILE).exists()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        opened = Queue::open(dir, cfg.clone());
    }
    match opened {
        Ok(q) => Ok(Access::Local(q)),
        Err(OpenError::Locked { holder, .. }) => {
            let addr = std::fs::read_to_string(dir.join(ADMIN_FILE))
                .ok()
                .and_then(|s| serde_json::from_str::<AdminAddress>(&s).ok());
            let Some(addr) = addr else {
                return Err(fail(
                    exit::LOCKED,
                    format!(
                        "store {} is locked by {holder}, which advertises no admin API; stop that process (one process per directory) and try again",
                        dir.display()
                    ),
                ));
            };
            let remote = Remote::new(addr.url.clone())?;
            match remote.stats().await {
                Ok(_) => Ok(Access::Remote(remote)),
                Err(e) => Err(fail(
                    exit::LOCKED,
                    format!(
                        "store {} is locked by {holder}, and its admin API at {} did not answer ({e:#}); if that process is hung, stop it (kill {}) and try again",
                        dir.display(),
                        addr.url,
                        addr.pid
                    ),
                )),
            }
        }
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

/// A replay or purge selection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    /// The topic.
    pub topic: String,
    /// Dead letters (true) or queued events (false; purge only).
    #[serde(default)]
    pub dead: bool,
    /// Only dead letters whose reason contains this.
    #[serde(default)]
    pub reason: Option<String>,
    /// Only events with seq ≥ this.
    #[serde(default)]
    pub from_seq: Option<u64>,
    /// Only events with seq ≤ this.
    #[serde(default)]
    pub to_seq: Option<u64>,
    /// Count only.
    #[serde(default)]
    pub dry_run: bool,
}

impl Selection {
    pub fn matches(&self, seq: u64, reason: &str) -> bool {
        self.from_seq.is_none_or(|f| seq >= f)
            && self.to_seq.is_none_or(|t| seq <= t)
            && self.reason.as_deref().is_none_or(|r| reason.contains(r))
    }
}

/// How many events a selection matched and how many were changed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Changed {
    pub matched: u64,
    pub changed: u64,
}

/// Counts the dead letters a selection matches, changing nothing.
fn count_dead(q: &Queue, sel: &Selection) -> anyhow::Result<Changed> {
    let mut matched = 0;
    let mut from = 0;
    loop {
        let page = q.dead_letters(&sel.topic, from, 1000)?;
        let Some(last) = page.last() else { break };
        from = last.id.seq() + 1;
        matched += page
            .iter()
            .filter(|d| sel.matches(d.id.seq(), &d.reason))
            .count() as u64;
    }
    Ok(Changed {
        matched,
        changed: 0,
    })
}

fn changed(n: u64) -> Changed {
    Changed {
        matched: n,
        changed: n,
    }
}

/// Replays dead letters on a local queue.
pub fn replay_local(q: &Queue, sel: &Selection) -> anyhow::Result<Changed> {
    if sel.dry_run {
        return count_dead(q, sel);
    }
    Ok(changed(q.replay_dead(&sel.topic, |d| {
        sel.matches(d.id.seq(), &d.reason)
    })?))
}

/// Purges on a local queue.
pub fn purge_local(q: &Queue, sel: &Selection) -> anyhow::Result<Changed> {
    if sel.dead {
        if sel.dry_run {
            return count_dead(q, sel);
        }
        return Ok(changed(
            q.purge_dead(&sel.topic, |d| sel.matches(d.id.seq(), &d.reason))?,
        ));
    }
    let stats = q.stats();
    let queued = stats
        .topics
        .get(&sel.topic)
        .map(|t| t.ready.events + t.retrying.events)
        .unwrap_or(0);
    if sel.dry_run {
        return Ok(Changed {
            matched: queued,
            changed: 0,
        });
    }
    Ok(changed(q.purge(&sel.topic)?))
}

/// Reads events (or dead letters) of a topic from a local queue, from `from`, at most `n`.
pub fn events_local(
    q: &Queue,
    topic: &str,
    dead: bool,
    from: u64,
    n: usize,
) -> anyhow::Result<Vec<EventRecord>> {
    Ok(if dead {
        q.dead_letters(topic, from, n)?
            .iter()
            .map(|d| EventRecord::from_dead(topic, d))
            .collect()
    } else {
        q.peek(topic, from, n)?
            .iter()
            .map(|p| EventRecord::from_peeked(topic, p))
            .collect()
    })
}

impl Remote {
    fn new(base: String) -> anyhow::Result<Self> {
        let client = evspool::forward::sink::http::build_client(&Default::default())
            .context("building the admin API client")?;
        Ok(Self {
            base,
            client,
            token: std::env::var("EVSPOOL_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        r: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = r.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            if status == reqwest::StatusCode::UNAUTHORIZED {
                anyhow::bail!(
                    "the daemon refused the admin request (401): set EVSPOOL_TOKEN to its token"
                );
            }
            anyhow::bail!("the daemon answered {status}: {}", text.trim());
        }
        serde_json::from_str(&text)
            .with_context(|| format!("unreadable admin answer: {}", text.trim()))
    }

    pub async fn stats(&self) -> anyhow::Result<Stats> {
        self.send(self.req(reqwest::Method::GET, "/admin/stats"))
            .await
    }

    pub async fn events(
        &self,
        topic: &str,
        dead: bool,
        from: u64,
        n: usize,
    ) -> anyhow::Result<Vec<EventRecord>> {
        let r = self.req(reqwest::Method::GET, "/admin/events").query(&[
            ("topic", topic.to_string()),
            ("dead", dead.to_string()),
            ("from", from.to_string()),
            ("n", n.to_string()),
        ]);
        self.send(r).await
    }

    pub async fn replay(&self, sel: &Selection) -> anyhow::Result<Changed> {
        self.send(self.req(reqwest::Method::POST, "/admin/replay").json(sel))
            .await
    }

    pub async fn purge(&self, sel: &Selection) -> anyhow::Result<Changed> {
        self.send(self.req(reqwest::Method::POST, "/admin/purge").json(sel))
            .await
    }

    pub async fn verify(&self) -> anyhow::Result<(u64, u64)> {
        self.send(self.req(reqwest::Method::POST, "/admin/verify"))
            .await
    }

    pub async fn enqueue(
        &self,
        topic: &str,
        payloads: Vec<Vec<u8>>,
    ) -> anyhow::Result<Vec<String>> {
        let mut body = Vec::new();
        for p in payloads {
            body.extend_from_slice(&p);
            body.push(b'\n');
        }
        #[derive(Deserialize)]
        struct Accepted {
            ids: Vec<String>,
        }
        let r = self
            .req(reqwest::Method::POST, "/v1/events")
            .query(&[("topic", topic)])
            .header("content-type", "application/x-ndjson")
            .body(body);
        let a: Accepted = self.send(r).await?;
        Ok(a.ids)
    }

    pub async fn drain(
        &self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<evspool::forward::DrainReport> {
        let r = self
            .req(reqwest::Method::POST, "/admin/drain")
            .query(&[("timeout_ms", timeout.as_millis().to_string())])
            .timeout(timeout + std::time::Duration::from_secs(10));
        self.send(r).await
    }
}
