//! Reaching the store: directly, or through a running daemon's admin API when
//! the daemon holds the directory's lock (sled allows one process per directory).

use super::Global;
use super::exit::{self, fail};
use crate::admin_api::{
    self as api, Changed, EventRecord, Overview, SOCKET_FILE, Selection, SocketPath,
};
use crate::daemon::config::DaemonConfig;
use anyhow::Context as _;
use evspool::{OpenError, Queue, QueueConfig, Stats};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The store, local or through the daemon.
pub enum Access {
    Local(Queue),
    Remote(Remote),
}

/// A daemon's admin API: over its admin socket (the store's owner, no token),
/// or over TCP (`evspool top --url`, with `EVSPOOL_TOKEN`).
pub struct Remote {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    /// Where requests go, for messages: the socket's path or the URL.
    pub target: String,
    /// Whether this is TCP (a 404 on an admin route then means "no token set").
    tcp: bool,
    /// Keeps a directory handle open while a long socket path goes through it.
    _socket: Option<SocketPath>,
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
    // A lock held by a process that serves no admin socket is often one that
    // is closing the store right now (a daemon shutting down, a command just
    // finishing): give it a moment before saying the store is locked.
    let socket = api::socket_file(dir);
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    let mut opened = Queue::open(dir, cfg.clone());
    while matches!(opened, Err(OpenError::Locked { .. }))
        && !socket.exists()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(25)).await;
        opened = Queue::open(dir, cfg.clone());
    }
    match opened {
        Ok(q) => Ok(Access::Local(q)),
        Err(OpenError::Locked { holder, pid, .. }) => {
            if !socket.exists() {
                return Err(fail(
                    exit::LOCKED,
                    format!(
                        "store {} is locked by {holder}, which serves no admin API (no {SOCKET_FILE}); stop that process (one process per directory) and try again",
                        dir.display()
                    ),
                ));
            }
            let pid = pid.or_else(|| api::read_address(dir).map(|a| a.pid));
            let remote = Remote::socket(dir)?;
            match remote.stats().await {
                Ok(_) => Ok(Access::Remote(remote)),
                Err(e) => Err(fail(
                    exit::LOCKED,
                    format!(
                        "store {} is locked by {holder}, and its admin API on {} did not answer ({e:#}); if that process is hung, stop it{} and try again",
                        dir.display(),
                        socket.display(),
                        pid.map(|p| format!(" (kill {p})")).unwrap_or_default(),
                    ),
                )),
            }
        }
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

/// Connects to the admin socket at `path` and checks who serves it before a
/// byte is sent (`SO_PEERCRED`): this user's own daemon, or root's. Anyone
/// else (a process of another user that bound a socket where ours should be)
/// is refused with [`exit::UNTRUSTED`], naming the user.
///
/// The socket is in the store directory, which `Queue::open` has just found
/// to be this user's and writable by nobody else, so the socket cannot be
/// replaced between this check and the client's own connection.
pub fn check_peer(path: &Path, shown: &Path) -> anyhow::Result<()> {
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        // Not answering: the caller's request says so in its own words.
        Err(_) => return Ok(()),
    };
    let cred = rustix::net::sockopt::socket_peercred(&stream)
        .with_context(|| format!("cannot tell who serves {}", shown.display()))?;
    let me = rustix::process::geteuid().as_raw();
    let peer = cred.uid.as_raw();
    if peer == me || peer == 0 {
        return Ok(());
    }
    let name = evspool::owned::user_name(peer).unwrap_or_else(|| format!("uid {peer}"));
    Err(fail(
        exit::UNTRUSTED,
        format!(
            "refusing the admin socket {}: it is served by {name} (uid {peer}, pid {}), not by this user (uid {me}) or root; nothing was sent. Stop that process and remove the socket",
            shown.display(),
            cred.pid.as_raw_nonzero()
        ),
    ))
}

impl Remote {
    /// The admin API of the daemon holding the store in `dir`, over its socket.
    pub fn socket(dir: &Path) -> anyhow::Result<Self> {
        let path =
            SocketPath::for_store(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        check_peer(path.path(), &api::socket_file(dir))?;
        let client = Self::builder()
            .unix_socket(path.path())
            .build()
            .context("building the admin API client")?;
        Ok(Self {
            // The host is not used on a socket; it names the daemon in logs.
            base: "http://evspool".into(),
            client,
            token: None,
            target: api::socket_file(dir).display().to_string(),
            tcp: false,
            _socket: Some(path),
        })
    }

    /// The admin API at `url` over TCP, with the token from `EVSPOOL_TOKEN`.
    pub fn tcp(url: &str) -> anyhow::Result<Self> {
        let client = Self::builder()
            .build()
            .context("building the admin API client")?;
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            client,
            token: std::env::var(api::TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            target: url.to_string(),
            tcp: true,
            _socket: None,
        })
    }

    fn builder() -> reqwest::ClientBuilder {
        evspool::forward::sink::http::install_crypto_provider();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
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
        let resp = r
            .send()
            .await
            .with_context(|| format!("no answer from {}", self.target))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            if status == reqwest::StatusCode::UNAUTHORIZED {
                anyhow::bail!(
                    "the daemon refused the admin request (401): set EVSPOOL_TOKEN to its token"
                );
            }
            if status == reqwest::StatusCode::NOT_FOUND && self.tcp {
                anyhow::bail!(
                    "{} serves no admin API: a daemon serves it on TCP only with a token set (EVSPOOL_TOKEN); on its host, use --dir to reach it through its admin socket",
                    self.target
                );
            }
            anyhow::bail!("the daemon answered {status}: {}", text.trim());
        }
        serde_json::from_str(&text)
            .with_context(|| format!("unreadable admin answer: {}", text.trim()))
    }

    pub async fn stats(&self) -> anyhow::Result<Stats> {
        self.send(self.req(reqwest::Method::GET, api::STATS)).await
    }

    /// Everything `evspool top` draws.
    pub async fn overview(&self) -> anyhow::Result<Overview> {
        self.send(
            self.req(reqwest::Method::GET, api::OVERVIEW)
                .timeout(Duration::from_secs(5)),
        )
        .await
    }

    pub async fn events(
        &self,
        topic: &str,
        dead: bool,
        from: u64,
        n: usize,
    ) -> anyhow::Result<Vec<EventRecord>> {
        let r = self
            .req(reqwest::Method::GET, api::EVENTS)
            .query(&api::EventsQuery {
                topic: topic.to_string(),
                dead,
                from,
                n,
            });
        self.send(r).await
    }

    pub async fn replay(&self, sel: &Selection) -> anyhow::Result<Changed> {
        self.send(self.req(reqwest::Method::POST, api::REPLAY).json(sel))
            .await
    }

    pub async fn purge(&self, sel: &Selection) -> anyhow::Result<Changed> {
        self.send(self.req(reqwest::Method::POST, api::PURGE).json(sel))
            .await
    }

    pub async fn verify(&self) -> anyhow::Result<evspool::VerifyReport> {
        self.send(self.req(reqwest::Method::POST, api::VERIFY))
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

    pub async fn drain(&self, timeout: Duration) -> anyhow::Result<evspool::forward::DrainReport> {
        let r = self
            .req(reqwest::Method::POST, api::DRAIN)
            .query(&api::DrainQuery {
                timeout_ms: Some(timeout.as_millis() as u64),
            })
            .timeout(timeout + Duration::from_secs(10));
        self.send(r).await
    }
}
