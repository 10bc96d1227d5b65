//! Forwarding: a pool of tokio workers per topic drains the queue into a sink.
//!
//! # Delivery semantics
//!
//! At-least-once. A worker leases up to `batch_size` events, sends them, and
//! settles the lease by the sink's [`Delivery`](sink::Delivery) outcome:
//!
//! | outcome | what happens |
//! |---|---|
//! | `Delivered` | ack: the events are deleted |
//! | `Retry` (timeout, connect error, reset, 408, 429, 5xx, unreadable 2xx) | nack with backoff (full jitter, 2 s doubling to 60 s) or the collector's `Retry-After`; attempts persisted; the breaker counts a failure |
//! | `Split` (413, over the byte cap) | send each half; a single event → dead letter `too_large` |
//! | `Partial` (per-record errors) | dead-letter only the refused events, with the collector's reason; ack the rest |
//! | `Reject` (400 without detail) | bisect until the poison events are isolated; dead-letter only them |
//! | `ConfigFault` (401, 403, 404, 3xx; for NATS a missing stream, denied permissions, refused credentials) | keep every event; pause the topic, ERROR once with what to check, probe every `config_fault_probe` |
//!
//! No transient or configuration fault ever drops or dead-letters an event.
//!
//! # What the operator is told
//!
//! One line per change of a topic's state, never one per retry (`health`):
//! collector unreachable or failing and back, breaker open and half-open, a
//! 429 pause with its length, a configuration fault with what to check, and
//! reminders at growing intervals while a fault lasts. Once a second the
//! forwarder also looks at the queue (`queue_watch`): events dropped, per
//! reason per minute (the ceiling, `max_age`), the ceiling reached under
//! `reject`/`block`, and the store accepting events again after failing closed.
//!
//! # Lifecycle
//!
//! - Linger: when fewer than `batch_size` events are ready, a worker waits up to
//!   `flush_interval` plus a random jitter up to `flush_jitter` for more, so
//!   requests are full and several workers do not fire in lockstep.
//! - Breaker: one per topic, shared by its workers. After consecutive transient
//!   failures it opens; while open exactly one probe batch is in flight; a
//!   success closes it. A 429 `Retry-After` pauses every worker of the topic.
//! - Resume at once: when a topic delivers again after a failure (a probe or a
//!   batch succeeds and the breaker closes), every chunk still waiting out a
//!   backoff is made due ([`Queue::retry_now`]) and sent without linger. At
//!   spawn, chunks waiting out a backoff from before (a restart) are made due
//!   too, behind a half-open breaker: one probe batch finds out whether the
//!   collector is back before the other workers send.
//! - [`ForwarderHandle::drain`] sends everything now (no linger) and reports.
//! - [`ForwarderHandle::drain_while_progressing`] does the same but stops each
//!   topic as soon as it cannot make progress (collector unreachable, breaker
//!   open, rate-limited, paused, only backoffs left): what a daemon does on
//!   SIGTERM, so a stop never waits on a dead collector.
//! - [`ForwarderHandle::shutdown`] stops leasing, lets in-flight batches finish
//!   until the deadline, then cancels the rest; a cancelled batch's lease is
//!   released (its events stay queued). Nothing unacknowledged is ever deleted.
//!
//! **Architecture invariant:** this module knows the queue's public API only;
//! it never names the storage engine.

pub mod backoff;
pub mod breaker;
mod drain;
mod health;
mod queue_watch;
pub mod sink;
mod status;
mod worker;

pub use drain::{DrainReport, HeldTopic};
pub use health::Condition;
pub use status::CollectorState;

pub use worker::TOO_LARGE;

use crate::config::ConfigError;
use crate::queue::Queue;
use backoff::{Backoff, BackoffConfig};
use breaker::{Breaker, BreakerConfig};
use serde::{Deserialize, Serialize};
use sink::Sink;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Defaults to 4 workers per topic: enough to overlap request latency on 2 cores.
pub const DEFAULT_WORKERS: usize = 4;
/// Defaults to 50 events: Mixpanel's `/track` limit and the Ruby SDK's buffer size.
pub const DEFAULT_BATCH_SIZE: usize = 50;
/// Defaults to 5 s: the linger of Mixpanel's batcher; a partial batch waits at most this.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Defaults to 1 s of random extra linger, so workers and hosts do not flush in lockstep.
pub const DEFAULT_FLUSH_JITTER: Duration = Duration::from_secs(1);
/// Defaults to 60 s: a misconfigured token will not fix itself quickly; probe slowly.
pub const DEFAULT_CONFIG_FAULT_PROBE: Duration = Duration::from_secs(60);

/// How one topic is forwarded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Concurrent workers (in-flight requests) for the topic.
    pub workers: usize,
    /// Most events per lease (capped by the sink's own limit).
    pub batch_size: usize,
    /// Longest a partial batch lingers before it is sent.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Random extra linger, up to this much.
    #[serde(with = "humantime_serde")]
    pub flush_jitter: Duration,
    /// Retry backoff.
    pub backoff: BackoffConfig,
    /// The topic's circuit breaker.
    pub breaker: BreakerConfig,
    /// Probe interval while the topic is paused by a configuration fault.
    #[serde(with = "humantime_serde")]
    pub config_fault_probe: Duration,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            workers: DEFAULT_WORKERS,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            flush_jitter: DEFAULT_FLUSH_JITTER,
            backoff: BackoffConfig::default(),
            breaker: BreakerConfig::default(),
            config_fault_probe: DEFAULT_CONFIG_FAULT_PROBE,
        }
    }
}

impl RouteConfig {
    /// The longest a failed batch can wait for its next attempt while the
    /// forwarder runs: the largest of `backoff.max`, `breaker.open_max` and
    /// `config_fault_probe`. A sink that deduplicates within a window (a
    /// JetStream stream's `duplicate_window`) needs a longer window than this.
    pub fn longest_retry_gap(&self) -> Duration {
        self.backoff
            .max
            .max(self.breaker.open_max)
            .max(self.config_fault_probe)
    }

    /// Checks every field; the error names the field.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` for the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, reason: &str| {
            Err(ConfigError::Invalid {
                name: name.into(),
                reason: reason.into(),
            })
        };
        if self.workers == 0 || self.workers > 1024 {
            return invalid("workers", "must be between 1 and 1024");
        }
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return invalid("batch_size", "must be between 1 and 100000");
        }
        if self.flush_interval > Duration::from_secs(3600) {
            return invalid("flush_interval", "must be at most 1h");
        }
        if self.flush_jitter > Duration::from_secs(3600) {
            return invalid("flush_jitter", "must be at most 1h");
        }
        if self.config_fault_probe.is_zero() {
            return invalid("config_fault_probe", "must be greater than 0");
        }
        self.backoff.validate()?;
        self.breaker.validate()?;
        Ok(())
    }
}

/// One topic, its sink and its settings.
pub(crate) struct Route {
    pub(crate) topic: Arc<str>,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) config: RouteConfig,
}

impl Route {
    pub(crate) fn batch_size(&self) -> usize {
        self.config
            .batch_size
            .min(self.sink.max_batch_events())
            .max(1)
    }
}

/// Counters of one topic's forwarding.
#[derive(Default)]
pub(crate) struct TopicCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// Leases taken and not yet counted.
    pub(crate) inflight: AtomicU64,
}

/// State shared by one topic's workers.
pub(crate) struct TopicShared {
    pub(crate) breaker: Breaker,
    pub(crate) backoff: Backoff,
    pub(crate) draining: AtomicBool,
    pub(crate) drain_signal: watch::Sender<u64>,
    pub(crate) stats: TopicCounters,
    /// The collector's state and last error, for `stats()`.
    pub(crate) status: status::StatusCell,
    /// Set when retries were made due at once (a recovery, a restart): workers
    /// send them without linger until nothing is ready.
    pub(crate) resume: AtomicBool,
    /// The collector's condition and what the operator was told (`health`).
    health: Mutex<health::Health>,
    /// The sink's endpoint, for log lines (no credentials).
    collector: String,
    /// What log lines call the sink's other end (`Sink::peer`).
    peer: String,
    topic: Arc<str>,
}

impl TopicShared {
    /// Runs `f` on the topic's health under its lock.
    pub(crate) fn with_health<R>(&self, f: impl FnOnce(&mut health::Health) -> R) -> R {
        f(&mut self.health.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Logs what `health` decided the operator should hear.
    pub(crate) fn emit(&self, notices: &[health::Notice]) {
        for n in notices {
            health::emit(&self.topic, &self.collector, &self.peer, n);
        }
    }

    /// Why the topic cannot make progress now, if it cannot: its collector's
    /// bad condition, or its breaker being open.
    fn held(&self) -> Option<&'static str> {
        match self.with_health(|h| h.condition()) {
            Condition::Up => match self.breaker.state_name() {
                "closed" => None,
                _ => Some("breaker open"),
            },
            Condition::Unreachable => Some("collector unreachable"),
            Condition::Failing => Some("collector failing"),
            Condition::RateLimited => Some("collector rate-limiting"),
            Condition::Paused => Some("paused by a configuration fault"),
        }
    }
}

/// Builds and starts the worker pools.
pub struct Forwarder {
    queue: Queue,
    routes: Vec<Route>,
    active: bool,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field(
                "topics",
                &self.routes.iter().map(|r| &*r.topic).collect::<Vec<_>>(),
            )
            .field("active", &self.active)
            .finish()
    }
}

impl Forwarder {
    /// A forwarder over `queue` with no routes yet.
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            routes: Vec::new(),
            active: true,
        }
    }

    /// Forwards `topic` to `sink` with `config`.
    ///
    /// Logs a WARN when the sink deduplicates within a window
    /// ([`Sink::duplicate_window`]) shorter than
    /// [`RouteConfig::longest_retry_gap`]: a retry that late would be stored twice.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` for an invalid topic name or config, or a topic routed twice.
    pub fn route(
        mut self,
        topic: &str,
        sink: Arc<dyn Sink>,
        config: RouteConfig,
    ) -> Result<Self, ConfigError> {
        crate::queue::Topic::new(topic).map_err(|e| ConfigError::Invalid {
            name: "topic".into(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        if self.routes.iter().any(|r| &*r.topic == topic) {
            return Err(ConfigError::Invalid {
                name: "topic".into(),
                reason: format!("topic {topic:?} is routed twice"),
            });
        }
        if let Some(window) = sink.duplicate_window() {
            let gap = config.longest_retry_gap();
            if window < gap {
                tracing::warn!(
                    topic,
                    duplicate_window = %health::human(window),
                    longest_retry_gap = %health::human(gap),
                    "The sink's duplicate window is shorter than the longest gap between a send and its retry (backoff.max, breaker.open_max, config_fault_probe): a redelivery that late is stored twice. Raise the window or lower those."
                );
            }
        }
        self.routes.push(Route {
            topic: Arc::from(topic),
            sink,
            config,
        });
        Ok(self)
    }

    /// With `false`, events are accepted and stored but nothing is sent
    /// (e.g. in development environments).
    pub fn active(mut self, active: bool) -> Self {
        self.active = active;
        self
    }

    /// Starts the workers on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(self) -> ForwarderHandle {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut topics = Vec::new();
        let mut tasks = Vec::new();
        for route in self.routes {
            let route = Arc::new(route);
            let shared = Arc::new(TopicShared {
                breaker: Breaker::new(route.config.breaker.clone()),
                backoff: Backoff::new(route.config.backoff.clone()),
                draining: AtomicBool::new(false),
                drain_signal: watch::channel(0).0,
                stats: TopicCounters::default(),
                status: Default::default(),
                resume: AtomicBool::new(false),
                health: Mutex::new(health::Health::default()),
                collector: route.sink.endpoint(),
                peer: route.sink.peer().to_string(),
                topic: route.topic.clone(),
            });
            if self.active {
                // Backoffs from before a restart are not waited out: one probe
                // batch tells at once whether the collector is back.
                let due = self.queue.retry_now(&route.topic);
                if due > 0 {
                    shared.breaker.probe_first();
                    shared.resume.store(true, Ordering::Release);
                    tracing::info!(
                        topic = %route.topic,
                        events = due,
                        "Events that were waiting out a retry are due now; one probe batch goes first."
                    );
                }
                for _ in 0..route.config.workers {
                    let w = worker::Worker {
                        queue: self.queue.clone(),
                        route: route.clone(),
                        topic: shared.clone(),
                        shutdown: shutdown_rx.clone(),
                        rng: fastrand::Rng::new(),
                    };
                    tasks.push(tokio::spawn(w.run()));
                }
            }
            topics.push((route, shared));
        }
        let gauges = tokio::spawn(monitor(
            self.queue.clone(),
            topics
                .iter()
                .map(|(r, t)| (r.topic.clone(), t.clone()))
                .collect(),
            shutdown_rx,
        ));
        if self.active {
            tracing::info!(topics = topics.len(), "Forwarder started.");
        } else {
            tracing::info!(
                topics = topics.len(),
                "Forwarder inactive: events are stored, not sent."
            );
        }
        ForwarderHandle {
            queue: self.queue,
            topics,
            shutdown: shutdown_tx,
            tasks: Mutex::new(tasks),
            gauges,
        }
    }
}

/// Keeps queue-depth gauges current, and tells the operator about drops,
/// the ceiling and the store (`queue_watch`).
async fn monitor(
    queue: Queue,
    topics: Vec<(Arc<str>, Arc<TopicShared>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watch = queue_watch::QueueWatch::new(&queue.stats(), Instant::now());
    loop {
        let stats = queue.stats();
        for notice in watch.observe(&stats, Instant::now()) {
            queue_watch::emit(&notice);
        }
        for (t, shared) in &topics {
            let breaker = match shared.breaker.state_name() {
                "closed" => 0.0,
                "half_open" => 1.0,
                _ => 2.0,
            };
            metrics::gauge!("evspool_breaker_state", "topic" => t.to_string()).set(breaker);
        }
        for t in topics.iter().map(|(t, _)| t) {
            if let Some(ts) = stats.topics.get(&**t) {
                let depth =
                    ts.ready.events + ts.retrying.events + ts.leased.events + ts.uncommitted.events;
                metrics::gauge!("evspool_queue_events", "topic" => t.to_string()).set(depth as f64);
                metrics::gauge!("evspool_dead_events", "topic" => t.to_string())
                    .set(ts.dead.events as f64);
                metrics::gauge!("evspool_oldest_event_age_seconds", "topic" => t.to_string())
                    .set(ts.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
            }
        }
        metrics::gauge!("evspool_queue_bytes").set(stats.total.bytes as f64);
        metrics::gauge!("evspool_size_on_disk_bytes").set(stats.size_on_disk as f64);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One topic's forwarding counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    /// Events acknowledged by the collector.
    pub delivered: u64,
    /// Events moved to dead letters.
    pub dead: u64,
    /// Event deliveries that will be retried (an event retried twice counts twice).
    pub retried: u64,
    /// Requests sent.
    pub requests: u64,
    /// The breaker's state (`closed`, `open`, `half_open`).
    pub breaker: String,
    /// Whether the topic is paused by a configuration fault.
    pub paused: bool,
    /// The collector as the last requests found it.
    #[serde(default)]
    pub collector: CollectorState,
    /// When `collector` entered its state, ms since the epoch.
    #[serde(default)]
    pub collector_since_ms: Option<u64>,
    /// The last transient failure, configuration fault or refusal, as the sink reported it.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When `last_error` happened, ms since the epoch.
    #[serde(default)]
    pub last_error_at_ms: Option<u64>,
    /// The collector's condition as the operator was told of it
    /// (`up`, `unreachable`, `failing`, `rate_limited`, `paused`).
    #[serde(default)]
    pub condition: String,
}

/// What `shutdown` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    /// Workers that finished their in-flight batch before the deadline.
    pub finished: usize,
    /// Workers cancelled at the deadline; their leases were released (events kept).
    pub cancelled: usize,
}

/// A running forwarder.
pub struct ForwarderHandle {
    queue: Queue,
    topics: Vec<(Arc<Route>, Arc<TopicShared>)>,
    shutdown: watch::Sender<bool>,
    /// The workers; `shutdown` waits for them until its deadline.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Keeps the queue-depth and breaker gauges current; stops with the workers.
    gauges: JoinHandle<()>,
}

impl std::fmt::Debug for ForwarderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwarderHandle")
            .field(
                "topics",
                &self
                    .topics
                    .iter()
                    .map(|(r, _)| &*r.topic)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ForwarderHandle {
    /// Counters, collector state and last error per topic.
    pub fn stats(&self) -> BTreeMap<String, RouteStats> {
        self.topics
            .iter()
            .map(|(r, t)| {
                let status = t.status.get();
                (
                    r.topic.to_string(),
                    RouteStats {
                        delivered: t.stats.delivered.load(Ordering::Relaxed),
                        dead: t.stats.dead.load(Ordering::Relaxed),
                        retried: t.stats.retried.load(Ordering::Relaxed),
                        requests: t.stats.requests.load(Ordering::Relaxed),
                        breaker: t.breaker.state_name().to_string(),
                        paused: t.with_health(|h| h.condition()) == Condition::Paused,
                        condition: t.with_health(|h| h.condition()).as_str().to_string(),
                        collector: status.state,
                        collector_since_ms: status.since_ms,
                        last_error: status.last_error,
                        last_error_at_ms: status.last_error_at_ms,
                    },
                )
            })
            .collect()
    }

    /// Live events of the routed topics, plus batches whose outcome is still
    /// being counted (so a drain never ends between a settle and its count).
    fn remaining(&self) -> (u64, u64) {
        let depth = self
            .topics
            .iter()
            .map(|(r, _)| self.queue.readiness(&r.topic).depth())
            .sum();
        let inflight = self
            .topics
            .iter()
            .map(|(_, t)| t.stats.inflight.load(Ordering::Acquire))
            .sum();
        (depth, inflight)
    }

    fn totals(&self) -> (u64, u64, u64) {
        self.topics.iter().fold((0, 0, 0), |acc, (_, t)| {
            (
                acc.0 + t.stats.delivered.load(Ordering::Relaxed),
                acc.1 + t.stats.dead.load(Ordering::Relaxed),
                acc.2 + t.stats.retried.load(Ordering::Relaxed),
            )
        })
    }

    /// Stops leasing, lets in-flight batches finish until `deadline`, then
    /// cancels the rest, releasing their leases. Never deletes an
    /// unacknowledged event. Flushes the queue before returning.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future leaves workers running until the
    /// runtime stops; their leases are then released as the runtime drops them.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let until = tokio::time::Instant::now() + deadline;
        let mut report = ShutdownReport::default();
        for mut task in tasks {
            match tokio::time::timeout_at(until, &mut task).await {
                Ok(_) => report.finished += 1,
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    report.cancelled += 1;
                }
            }
        }
        let _ = self.queue.sync().await;
        tracing::info!(
            finished = report.finished,
            cancelled = report.cancelled,
            "Forwarder stopped."
        );
        report
    }
}

impl Drop for ForwarderHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.gauges.abort();
    }
}
