//! Building sinks from configuration, with secrets from the environment.

use super::config::{SINK_SECRET_ENV, SINK_TOKEN_ENV, SinkConfig};
use anyhow::Context as _;
use evspool::Event;
use evspool::forward::RouteConfig;
use evspool::forward::sink::http::{
    self, HttpAuth, HttpClientConfig, HttpSink, HttpSinkConfig, Secret,
};
use evspool::forward::sink::mixpanel::{Endpoint, MixpanelConfig, MixpanelSink};
use evspool::forward::sink::segment::{SegmentConfig, SegmentSink};
use evspool::forward::sink::{BoxFuture, Delivery, Sink};
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
    let (sink, from): (Arc<dyn Sink>, String) = match cfg {
        SinkConfig::Http(c) => {
            let mut c = c.clone();
            let from = if c.auth != HttpAuth::None {
                c.secret = env_secret(SINK_TOKEN_ENV);
                if c.secret.0.is_empty() {
                    anyhow::bail!("the http sink's auth needs {SINK_TOKEN_ENV} set");
                }
                format!("the daemon reads the secret from {SINK_TOKEN_ENV}")
            } else if c
                .headers
                .keys()
                .any(|k| evspool::forward::sink::http::is_credential_header(k))
            {
                "they are in the config file's [sink] headers".to_string()
            } else {
                format!(
                    "with `--sink http`, setting {SINK_TOKEN_ENV} sends it as a bearer token; or set `auth` in the config file"
                )
            };
            (Arc::new(HttpSink::new(client.clone(), c)?), from)
        }
        SinkConfig::Mixpanel(c) => {
            let mut c = c.clone();
            c.token = env_secret(SINK_TOKEN_ENV);
            c.secret = env_secret(SINK_SECRET_ENV);
            let endpoint = c
                .endpoint
                .or_else(|| Endpoint::for_topic(topic))
                .unwrap_or(Endpoint::Track);
            let from = format!(
                "the daemon reads the project token from {SINK_TOKEN_ENV} and the service account's secret from {SINK_SECRET_ENV}"
            );
            (
                Arc::new(MixpanelSink::new(client.clone(), c, endpoint)?),
                from,
            )
        }
        SinkConfig::Segment(c) => {
            let mut c = c.clone();
            c.write_key = env_secret(SINK_TOKEN_ENV);
            let from = format!("the daemon reads the write key from {SINK_TOKEN_ENV}");
            (Arc::new(SegmentSink::new(client.clone(), c)?), from)
        }
    };
    Ok(Arc::new(CredentialsFrom { inner: sink, from }))
}

/// A sink whose configuration-fault hints also say where the daemon takes
/// the credentials from (the library's sinks do not know the environment).
struct CredentialsFrom {
    inner: Arc<dyn Sink>,
    from: String,
}

impl Sink for CredentialsFrom {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn max_batch_events(&self) -> usize {
        self.inner.max_batch_events()
    }

    fn max_batch_bytes(&self) -> u64 {
        self.inner.max_batch_bytes()
    }

    fn max_event_bytes(&self) -> u64 {
        self.inner.max_event_bytes()
    }

    fn send<'a>(&'a self, batch: &'a [Event]) -> BoxFuture<'a, Delivery> {
        self.inner.send(batch)
    }

    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }

    fn config_fault_hint(&self, status: Option<u16>) -> String {
        let hint = self.inner.config_fault_hint(status);
        match status {
            Some(401 | 403) => format!("{hint} ({})", self.from),
            _ => hint,
        }
    }
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
