//! Building sinks from configuration, with secrets from the environment.

use super::config::{SINK_SECRET_ENV, SINK_TOKEN_ENV, SinkConfig};
use anyhow::Context as _;
use evspool::forward::RouteConfig;
use evspool::forward::sink::Sink;
use evspool::forward::sink::http::{
    self, HttpAuth, HttpClientConfig, HttpSink, HttpSinkConfig, Secret,
};
use evspool::forward::sink::mixpanel::{Endpoint, MixpanelConfig, MixpanelSink};
use evspool::forward::sink::segment::{SegmentConfig, SegmentSink};
use std::sync::Arc;
use std::time::Duration;

/// The shared outbound client.
pub fn client(cfg: &HttpClientConfig) -> anyhow::Result<reqwest::Client> {
    http::build_client(cfg).context("building the HTTP client")
}

fn env_secret(name: &str) -> Secret {
    Secret(std::env::var(name).unwrap_or_default())
}

/// Builds the sink for `topic`, reading secrets from the environment.
pub fn build(
    topic: &str,
    cfg: &SinkConfig,
    client: &reqwest::Client,
) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(match cfg {
        SinkConfig::Http(c) => {
            let mut c = c.clone();
            if c.auth != HttpAuth::None {
                c.secret = env_secret(SINK_TOKEN_ENV);
                if c.secret.0.is_empty() {
                    anyhow::bail!("the http sink's auth needs {SINK_TOKEN_ENV} set");
                }
            }
            Arc::new(HttpSink::new(client.clone(), c)?)
        }
        SinkConfig::Mixpanel(c) => {
            let mut c = c.clone();
            c.token = env_secret(SINK_TOKEN_ENV);
            c.secret = env_secret(SINK_SECRET_ENV);
            let endpoint = c
                .endpoint
                .or_else(|| Endpoint::for_topic(topic))
                .unwrap_or(Endpoint::Track);
            Arc::new(MixpanelSink::new(client.clone(), c, endpoint)?)
        }
        SinkConfig::Segment(c) => {
            let mut c = c.clone();
            c.write_key = env_secret(SINK_TOKEN_ENV);
            Arc::new(SegmentSink::new(client.clone(), c)?)
        }
    })
}

/// A sink config from `--sink KIND --sink-url URL`.
pub fn from_flags(kind: &str, url: Option<&str>) -> anyhow::Result<SinkConfig> {
    Ok(match kind {
        "http" => {
            let Some(url) = url else {
                anyhow::bail!("--sink http needs --sink-url (the collector's endpoint)");
            };
            SinkConfig::Http(HttpSinkConfig {
                url: url.to_string(),
                auth: if std::env::var(SINK_TOKEN_ENV).is_ok_and(|t| !t.is_empty()) {
                    HttpAuth::Bearer
                } else {
                    HttpAuth::None
                },
                ..HttpSinkConfig::default()
            })
        }
        "mixpanel" => {
            let mut c = MixpanelConfig::default();
            if let Some(u) = url {
                c.api_host = u.to_string();
            }
            SinkConfig::Mixpanel(c)
        }
        "segment" => {
            let mut c = SegmentConfig::default();
            if let Some(u) = url {
                c.api_host = u.to_string();
            }
            SinkConfig::Segment(c)
        }
        other => anyhow::bail!("unknown sink {other:?} (expected http, mixpanel or segment)"),
    })
}

/// Points an existing sink config at `url`.
pub fn set_url(cfg: &mut SinkConfig, url: &str) {
    match cfg {
        SinkConfig::Http(c) => c.url = url.to_string(),
        SinkConfig::Mixpanel(c) => c.api_host = url.to_string(),
        SinkConfig::Segment(c) => c.api_host = url.to_string(),
    }
}

/// The demo's sink: Mixpanel's API at the demo collector.
pub fn demo_mixpanel(url: &str) -> anyhow::Result<SinkConfig> {
    Ok(SinkConfig::Mixpanel(MixpanelConfig {
        api_host: url.to_string(),
        endpoint: Some(Endpoint::Track),
        ..MixpanelConfig::default()
    }))
}

/// The demo's forwarding settings: everything scaled down to seconds.
pub fn demo_forwarding(f: &mut RouteConfig) {
    f.workers = 4;
    f.flush_interval = Duration::from_millis(200);
    f.flush_jitter = Duration::from_millis(100);
    f.backoff.base = Duration::from_millis(200);
    f.backoff.max = Duration::from_secs(2);
    f.breaker.failure_threshold = 5;
    f.breaker.open_for = Duration::from_millis(500);
    f.breaker.open_max = Duration::from_secs(2);
}
