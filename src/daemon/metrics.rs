//! Prometheus metrics: the recorder the library's `metrics` calls report to.

use axum::extract::State;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

/// Renders the metrics page.
#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets for request and delivery durations, in seconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

impl Metrics {
    /// Installs the global recorder once (later calls reuse it).
    pub fn install() -> Self {
        let handle = HANDLE.get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
                .ok()
                .and_then(|b| b.install_recorder().ok())
        });
        // `# HELP` text for every metric (the exporter prints it once a
        // metric has a sample).
        evspool::describe_metrics();
        Self {
            handle: handle.clone(),
        }
    }
}

/// `GET /metrics`.
pub async fn render(State(state): State<Arc<super::AppState>>) -> impl IntoResponse {
    let body = state
        .metrics
        .handle
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], body)
}
