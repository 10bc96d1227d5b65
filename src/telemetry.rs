//! The metrics evspool reports, through the [`metrics`] facade.
//!
//! The library records counters, gauges and histograms with the `metrics`
//! crate's macros; they go to whatever recorder the application installed
//! (the `evspool run` daemon serves them as Prometheus text on `/metrics`),
//! and cost nothing without one. [`describe_metrics`] gives each its help
//! text and unit; call it once after installing a recorder, so an exporter
//! can print `# HELP` lines.

/// What kind of metric a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever increases (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution (durations, in seconds).
    Histogram,
}

/// One metric: its name, kind, labels and help text.
#[derive(Clone, Copy, Debug)]
pub struct MetricInfo {
    /// The metric's name.
    pub name: &'static str,
    /// Its kind.
    pub kind: MetricKind,
    /// The labels it carries.
    pub labels: &'static [&'static str],
    /// What it counts or measures (the `# HELP` text).
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricInfo {
    MetricInfo {
        name,
        kind,
        labels,
        help,
    }
}

use MetricKind::{Counter, Gauge, Histogram};

/// Every metric the library and the daemon report.
pub const METRICS: &[MetricInfo] = &[
    // The queue.
    m(
        "evspool_events_committed_total",
        Counter,
        &["topic"],
        "Events written to their topic's body file by a commit round.",
    ),
    m(
        "evspool_events_leased_total",
        Counter,
        &["topic"],
        "Events handed out in leases (each delivery attempt counts).",
    ),
    m(
        "evspool_events_acked_total",
        Counter,
        &["topic"],
        "Events acknowledged and deleted from the queue.",
    ),
    m(
        "evspool_events_retried_total",
        Counter,
        &["topic"],
        "Events put back to wait out a retry backoff.",
    ),
    m(
        "evspool_events_dead_lettered_total",
        Counter,
        &["topic"],
        "Events moved to the dead letters (refused for good by the collector).",
    ),
    m(
        "evspool_events_dropped_total",
        Counter,
        &["topic", "reason"],
        "Events dropped by the ceiling policy or max_age, by reason.",
    ),
    m(
        "evspool_chunks_quarantined_total",
        Counter,
        &["topic"],
        "Damaged chunks moved to quarantine (their events are lost, counted).",
    ),
    m(
        "evspool_index_writes_total",
        Counter,
        &[],
        "Records written to the sled index.",
    ),
    m(
        "evspool_connections_open",
        Gauge,
        &[],
        "Connections the daemon holds open now.",
    ),
    m(
        "evspool_connections_refused_total",
        Counter,
        &[],
        "Connections answered 503 and closed at the connection cap (server.max_connections).",
    ),
    m(
        "evspool_connections_idle_closed_total",
        Counter,
        &[],
        "Connections closed after request_timeout with no request in flight.",
    ),
    m(
        "evspool_accept_errors_total",
        Counter,
        &[],
        "Failed accepts (out of descriptors, say); the accept loop backs off.",
    ),
    m(
        "evspool_requests_refused_total",
        Counter,
        &["reason"],
        "Requests refused before they were read: reason memory_budget (503) or origin (403).",
    ),
    m(
        "evspool_purged_events_total",
        Counter,
        &["topic", "kind"],
        "Events purged by an operator: kind queued, or dead (dead letters).",
    ),
    m(
        "evspool_index_rebuilds_total",
        Counter,
        &[],
        "Opens that rebuilt the index from the body files.",
    ),
    m(
        "evspool_phantom_events_total",
        Counter,
        &[],
        "Index records found pointing past the end of their body file at open, removed.",
    ),
    m(
        "evspool_store_moved_aside_total",
        Counter,
        &[],
        "Opens that moved a damaged sled database aside and rebuilt it.",
    ),
    m(
        "evspool_accounting_repairs_total",
        Counter,
        &[],
        "Verify runs that found the event and byte counters drifted and repaired them.",
    ),
    m(
        "evspool_accounting_underflows_total",
        Counter,
        &[],
        "Counter decrements that would have gone below zero (a bug; logged at ERROR).",
    ),
    m(
        "evspool_transient_write_errors_total",
        Counter,
        &[],
        "Writes that failed for a transient reason (out of file descriptors, memory); the store stays open.",
    ),
    m(
        "evspool_store_reopens_total",
        Counter,
        &[],
        "Times the daemon reopened a store that had failed closed on a full disk, once the disk had room again.",
    ),
    m(
        "evspool_failed_closed",
        Gauge,
        &[],
        "1 while the store refuses new events after a lasting write error (e.g. a full disk), else 0.",
    ),
    // Forwarding.
    m(
        "evspool_events_sent_total",
        Counter,
        &["topic"],
        "Events delivered to the collector and acknowledged.",
    ),
    m(
        "evspool_requests_total",
        Counter,
        &["topic", "outcome"],
        "Sends to the collector, by outcome (delivered, retry, split, partial, reject, config_fault).",
    ),
    m(
        "evspool_request_duration_seconds",
        Histogram,
        &["topic"],
        "Time one send to the collector took, in seconds.",
    ),
    m(
        "evspool_delivery_seconds",
        Histogram,
        &["topic"],
        "Time from lease to settle for one batch, retries and splits included, in seconds.",
    ),
    m(
        "evspool_breaker_state",
        Gauge,
        &["topic"],
        "The topic's circuit breaker: 0 closed, 1 half-open, 2 open.",
    ),
    m(
        "evspool_topic_paused",
        Gauge,
        &["topic"],
        "1 while the topic is paused by a configuration fault (401, 403, 404, a redirect; a NATS setup fault), else 0.",
    ),
    m(
        "evspool_queue_events",
        Gauge,
        &["topic"],
        "Events in the queue (ready, retrying, leased and not yet committed).",
    ),
    m(
        "evspool_dead_events",
        Gauge,
        &["topic"],
        "Dead letters held (events refused for good, replayable).",
    ),
    m(
        "evspool_oldest_event_age_seconds",
        Gauge,
        &["topic"],
        "Age of the oldest queued event, in seconds (0 when none).",
    ),
    m(
        "evspool_queue_bytes",
        Gauge,
        &[],
        "Payload bytes held (queued, dead letters, quarantine): what the ceiling counts.",
    ),
    m(
        "evspool_size_on_disk_bytes",
        Gauge,
        &[],
        "The store's size on disk (body files and sled), in bytes.",
    ),
    m(
        "evspool_nats_duplicate_acks_total",
        Counter,
        &["topic"],
        "Publishes JetStream acknowledged as duplicates (redeliveries it dropped).",
    ),
    // The daemon.
    m(
        "evspool_ingested_events_total",
        Counter,
        &["topic"],
        "Events accepted by the sidecar's ingest routes.",
    ),
    m(
        "evspool_unauthorized_requests_total",
        Counter,
        &[],
        "Requests refused for a missing or wrong token.",
    ),
];

/// Gives every metric in [`METRICS`] its help text (and histograms their
/// unit, seconds) in the installed recorder. Call it once, after installing
/// one; before, it does nothing.
pub fn describe_metrics() {
    for info in METRICS {
        match info.kind {
            MetricKind::Counter => metrics::describe_counter!(info.name, info.help),
            MetricKind::Gauge => metrics::describe_gauge!(info.name, info.help),
            MetricKind::Histogram => {
                metrics::describe_histogram!(info.name, metrics::Unit::Seconds, info.help)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `"evspool_…"` name in a `counter!`, `gauge!` or `histogram!`
    /// call in the crate's sources, with the macro's kind.
    fn used() -> Vec<(String, MetricKind)> {
        let mut out = Vec::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![root];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                for (macro_name, kind) in [
                    ("counter!(", Counter),
                    ("gauge!(", Gauge),
                    ("histogram!(", Histogram),
                ] {
                    for (i, _) in text.match_indices(macro_name) {
                        let rest = text[i + macro_name.len()..].trim_start();
                        if let Some(name) = rest.strip_prefix("\"evspool_") {
                            let name = name.split('"').next().unwrap_or("");
                            out.push((format!("evspool_{name}"), kind));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_metric_reported_has_help_text_and_the_right_kind() {
        let used = used();
        assert!(used.len() >= 25, "found only {used:?}");
        for (name, kind) in &used {
            let info = METRICS
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} is reported but not in METRICS"));
            assert_eq!(info.kind, *kind, "{name}");
        }
        for info in METRICS {
            assert!(
                used.iter().any(|(n, _)| n == info.name),
                "{} is in METRICS but nothing reports it",
                info.name
            );
            assert!(
                info.help.ends_with('.') && info.help.len() > 20,
                "{}",
                info.name
            );
            assert_eq!(
                info.name.ends_with("_total"),
                info.kind == Counter,
                "{}: counters, and only counters, end in _total",
                info.name
            );
        }
    }
}
