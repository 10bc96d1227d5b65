//! evspool: a durable, disk-backed store-and-forward queue for events.
//!
//! An application hands evspool events; evspool keeps them on local disk
//! (append-only body files, indexed in sled) and forwards them in batches to an HTTP collector or a NATS JetStream
//! stream, acknowledging on success
//! and retrying with backoff on failure. A collector outage neither loses data
//! nor slows the producer.
//!
//! # Guarantees
//!
//! 1. Producers never wait on the network: `enqueue` touches memory only,
//!    `enqueue_durable` memory and local disk.
//! 2. At-least-once, crash-safe: an event whose durable enqueue returned `Ok`
//!    is delivered at least once across `kill -9` and restart.
//! 3. Bounded disk: the queue never holds more than its ceiling; every event a
//!    policy drops is counted with a reason ([`DropReason`]).
//! 4. Stable event ids ([`EventId`]) that never change across retries,
//!    restarts or replays.
//! 5. Corruption is contained: a damaged entry costs exactly its own events,
//!    quarantined and counted, never its neighbours; opening a damaged store
//!    never panics.
//! 6. Owned files: a store is used only when the user running evspool owns
//!    its directory and nobody else can write to it
//!    ([`OpenError::Untrusted`]), and the files evspool opens at its top are
//!    never opened through a symlink ([`owned`]).
//!
//! # Durability levels
//!
//! - [`Queue::enqueue`] (*buffered*): returns at once. The event is written to
//!   its topic's body generation file at the next commit (`commit_interval`,
//!   100 ms); only then can it be leased (so nothing is ever delivered that a
//!   crash could erase). A crash loses at most the events of the last
//!   `commit_interval`.
//! - [`Queue::enqueue_durable`] and [`Queue::enqueue_batch_durable`]
//!   (*durable*): the producer appends its own entry to the topic's body file
//!   (concurrent producers of a topic share one write) and returns once it is
//!   there. Survives `kill -9` (the write is in the page cache; opening
//!   re-indexes entries whose sled records were not written yet). With
//!   `fsync = true` it returns after an `fdatasync` of that file (shared by
//!   every producer waiting), which survives power loss.
//!
//! # Using the library
//!
//! Add it without the `evspool` binary's crates (its CLI, HTTP server,
//! terminal UI and Prometheus exporter):
//!
//! ```toml
//! [dependencies]
//! evspool = { path = "…", default-features = false }            # queue, forwarder, HTTP sinks
//! # evspool = { path = "…", default-features = false, features = ["nats"] }   # + the JetStream sink
//! ```
//!
//! Features: `cli` (default) builds the binary and the crates only it needs;
//! `nats` (part of `cli`) the NATS JetStream sink (`NatsSink`);
//! `failpoints` compiles in the fail points the crate's own tests use.
//!
//! **Runtime.** The queue itself runs threads of its own (a committer, sled's
//! flusher), so [`Queue::enqueue`] works anywhere. [`Queue::enqueue_durable`]
//! and the other `async fn`s, [`Forwarder::spawn`] and the sinks need a
//! [tokio](https://tokio.rs) runtime with timers and I/O enabled
//! (`#[tokio::main]`, or `Builder::new_multi_thread().enable_all()`);
//! `Forwarder::spawn` panics outside one.
//!
//! **Logs.** The library logs through [`tracing`]: one line per change of a
//! topic's state (collector down, back, paused), storage errors at ERROR,
//! never one line per retry. Nothing is printed unless the application
//! installs a subscriber, e.g. with `tracing-subscriber`:
//! `tracing_subscriber::fmt().with_env_filter("evspool=info").init()`.
//! It reports metrics through the [`metrics`](https://docs.rs/metrics) facade
//! to the application's recorder, if any; [`describe_metrics`] gives them
//! their help text and [`METRICS`] lists them.
//!
//! # Architecture
//!
//! ```text
//! src/lib.rs          this map; the public surface is the flat `pub use` list below
//! src/config.rs       QueueConfig and its DEFAULT_* constants, validation
//! src/record.rs       record codec: format byte + bincode + CRC32; pure, fuzzed
//! src/event.rs        Event, EventId (stable ids)
//! src/secret.rs       Secret: credentials redacted in Debug, Display, logs
//! src/origin.rs       origin ids: the id an event keeps when it moves to another store
//! src/telemetry.rs    METRICS: every metric's name, kind and help text
//! src/error.rs        OpenError, QueueError
//! src/owned.rs        the store is used only when this user owns it; no-follow opens
//! src/ingest.rs       parsing ingest bodies (+ ingest/sendable.rs: lone surrogates)
//! src/queue/          the durable queue (format 4; see migrations-notes/)
//!   mod.rs            design essay, invariants, the file list by part
//!   handle.rs         Queue: clones, close, reopen
//!   shared.rs         the composition root: one open store's parts
//!   gate.rs, buffer.rs, ceiling.rs, reap.rs   parts: gate, buffered events,
//!                     accounting, drained files
//!   log/              topic logs: the one path bytes take to body files;
//!                     group appends, segments, entries, traces, the syncer
//!   index/            the in-memory index and the chunk state machine
//!   storage.rs        the only file that names sled; storage/: its keys,
//!                     errors, slot and the directory lock
//!   open/             opening: identity, recovery, rebuild, migration
//!   commit.rs, ops.rs the committer's rounds; applying queued sled writes
//!   enqueue.rs, lease.rs, settle.rs, dead.rs, purge.rs, resume.rs,
//!   stats.rs, verify.rs, compact.rs   the verbs (impl Queue)
//! src/forward/        delivery: worker pools per topic over the queue's public API
//!   mod.rs            delivery semantics, lifecycle, Forwarder, shutdown
//!   drain.rs          drain, and drain while delivery makes progress
//!   worker.rs         lease → send → one Delivery match → settle
//!   backoff.rs        full-jitter backoff, Retry-After
//!   breaker.rs        the shared circuit breaker (closed / open / half-open)
//!   health.rs         what the operator is told: one line per change of state
//!   queue_watch.rs    drops per reason per minute, the ceiling, the store
//!   sink/             the Sink trait and Delivery; http (+ body.rs: ids), mixpanel, segment, nats
//! src/ingest.rs       the daemon's body parsing (feature `cli`; not API)
//! src/main.rs, cli/, daemon/, admin_api/, demo.rs   the binary (feature `cli`)
//! ```
//!
//! **Architecture invariant:** `queue` knows nothing of HTTP or of worker
//! pools; only `queue/storage/` imports sled; bytes reach body files only
//! through a topic's log (`queue/log/`, over `queue/io.rs`). The
//! library never names a crate of the `cli` feature (clap, axum, hyper,
//! tower, ratatui, indicatif, the Prometheus exporter): `.ci/run` checks that
//! `cargo tree --no-default-features` lists none of them.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let dir = tempfile::tempdir().unwrap();
//! let queue = evspool::Queue::open(dir.path(), evspool::QueueConfig::default()).unwrap();
//! queue.enqueue_durable("track", br#"{"event":"signup"}"#.to_vec()).await.unwrap();
//! let lease = queue.lease("track", 50).unwrap().expect("one event is ready");
//! assert_eq!(lease.events()[0].payload.as_ref(), br#"{"event":"signup"}"#);
//! queue.ack(lease).unwrap();
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
mod error;
mod event;
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub mod faults;
pub mod forward;
// Parsing of the sidecar's request bodies (Mixpanel, Segment, NDJSON): the
// daemon's, not part of the library's API.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod ingest;
mod origin;
pub mod owned;
// The durable queue's modules. Everything an application uses is re-exported
// at the crate root; the rest is internal (public only for the crate's own
// tests, benches and binary) and may change in any release.
#[doc(hidden)]
pub mod queue;
// The chunk codec (internal; public for the fuzz targets and tests).
#[doc(hidden)]
pub mod record;
mod secret;
mod telemetry;

pub(crate) use queue::ceiling;

// The public surface, flat: what an application embedding evspool names.

// The queue.
pub use ceiling::DropReason;
pub use config::{Ceiling, ConfigError, Durability, OverflowPolicy, QueueConfig};
pub use error::{OpenError, QueueError, StorageError};
pub use event::{Event, EventId};
pub use origin::{
    Carried, DeliveryId, ORIGIN_ID_FIELD, carry_origin_id, is_valid_origin_id, origin_id,
};
pub use queue::{
    CeilingStats, CompactReport, DeadEvent, Enqueued, Lease, PeekedEvent, Queue, Readiness,
    SettleReport, Settlement, Stats, Topic, TopicStats, Usage, VerifyReport, compact,
};
pub use secret::Secret;
pub use telemetry::{METRICS, MetricInfo, MetricKind, describe_metrics};

// Forwarding.
pub use forward::backoff::BackoffConfig;
pub use forward::breaker::BreakerConfig;
pub use forward::sink::{BoxFuture, Delivery, Rejected, Sink};
pub use forward::{
    CollectorState, Condition, DrainReport, Forwarder, ForwarderHandle, HeldTopic, RouteConfig,
    RouteStats, ShutdownReport,
};

// The built-in sinks.
pub use forward::sink::http::{
    BodyFormat, HttpAuth, HttpClient, HttpClientConfig, HttpSink, HttpSinkConfig, build_client,
    install_crypto_provider,
};
pub use forward::sink::mixpanel::{Endpoint as MixpanelEndpoint, MixpanelConfig, MixpanelSink};
#[cfg(feature = "nats")]
pub use forward::sink::nats::{
    NatsAuth, NatsConnection, NatsSink, NatsSinkConfig, NatsStorage, NatsStream, NatsTls,
};
pub use forward::sink::segment::{SegmentConfig, SegmentSink};

/// The README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
