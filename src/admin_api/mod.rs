//! The admin API's contract: the routes, the wire types and the files a
//! running daemon leaves in its store directory. The daemon (`src/daemon/`)
//! serves it and the CLI (`src/cli/`) calls it; both import this module and
//! neither imports the other's admin code.
//!
//! # Transports
//!
//! - **The admin socket** `<dir>/evspool.sock` ([`SOCKET_FILE`]): a Unix
//!   domain socket inside the store directory, created `0600` in a `0700`
//!   directory, so only the store's owner (and root) can connect. It serves
//!   every admin route and ingest, and asks for no token: the file system
//!   already decided who may connect. The CLI uses it whenever a daemon holds
//!   the store.
//! - **TCP** (`server.listen`): ingest, `/metrics`, `/healthz` and `/readyz`
//!   for anyone who can reach the port (loopback by default). The admin routes
//!   are served on TCP only when a token is set (`EVSPOOL_TOKEN`), and then
//!   only to requests that present it; without a token they answer 404 there.
//!
//! # Routes
//!
//! | route | answer |
//! |---|---|
//! | `GET /admin/stats` | [`evspool::Stats`] |
//! | `GET /admin/forward` | per topic [`evspool::forward::RouteStats`] |
//! | `GET /admin/overview` | [`Overview`]: what `evspool top` draws |
//! | `GET /admin/events?topic=&dead=&from=&n=` | a list of [`EventRecord`] |
//! | `POST /admin/replay` ([`Selection`]) | [`Changed`] |
//! | `POST /admin/purge` ([`Selection`]) | [`Changed`] |
//! | `POST /admin/verify` | `[checked, quarantined]` |
//! | `POST /admin/drain?timeout_ms=` | [`evspool::forward::DrainReport`] |
//!
//! # Files in the store directory
//!
//! - [`ADMIN_FILE`] (`evspool.admin`, `0600`): [`AdminAddress`] as JSON,
//!   written once the daemon listens, removed when it stops. A stale one
//!   (after `kill -9`) is harmless: the store's lock tells whether a daemon
//!   runs, and the next daemon overwrites it.
//! - [`SOCKET_FILE`] (`evspool.sock`, `0600`): the admin socket. A stale one is
//!   removed by the next daemon, which holds the store's lock before binding.

mod endpoint;
mod overview;
mod records;
mod selection;

pub use endpoint::{
    ADMIN_FILE, AdminAddress, SOCKET_FILE, SocketPath, fallback_dir, read_address, socket_file,
};
pub use overview::{HISTORY_SECONDS, Overview, RateHistory};
pub use records::EventRecord;
pub(crate) use records::now_ms;
pub use selection::{Changed, Selection};

/// The environment variable holding the daemon's bearer token: it opens the
/// admin API on TCP and, once set, guards ingest there too.
pub const TOKEN_ENV: &str = "EVSPOOL_TOKEN";

/// `GET`: the queue's [`evspool::Stats`].
pub const STATS: &str = "/admin/stats";
/// `GET`: per-topic forwarding counters and collector state.
pub const FORWARD: &str = "/admin/forward";
/// `GET`: the [`Overview`] `evspool top` draws.
pub const OVERVIEW: &str = "/admin/overview";
/// `GET`: a page of queued events or dead letters.
pub const EVENTS: &str = "/admin/events";
/// `POST`: move dead letters back to the queue.
pub const REPLAY: &str = "/admin/replay";
/// `POST`: delete queued events or dead letters.
pub const PURGE: &str = "/admin/purge";
/// `POST`: decode every stored chunk.
pub const VERIFY: &str = "/admin/verify";
/// `POST`: forward everything now and report.
pub const DRAIN: &str = "/admin/drain";

/// The query of [`EVENTS`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EventsQuery {
    /// The topic.
    pub topic: String,
    /// Dead letters instead of queued events.
    #[serde(default)]
    pub dead: bool,
    /// The first seq to return.
    #[serde(default)]
    pub from: u64,
    /// At most this many (the daemon caps it at 10,000).
    #[serde(default = "default_page")]
    pub n: usize,
}

fn default_page() -> usize {
    10
}

/// The query of [`DRAIN`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrainQuery {
    /// Give up after this many ms (default 30 s, at most an hour).
    pub timeout_ms: Option<u64>,
}
