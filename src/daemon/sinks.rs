//! Building sinks from configuration, with secrets from the environment.

use super::config::{SINK_SECRET_ENV, SINK_TOKEN_ENV, SinkConfig};
use anyhow::Context as _;
use evspool::forward::RouteConfig;
use evspool::forward::sink::Sink;
use evspool::forward::sink::http::{
    self, HttpAuth, HttpClientConfig, HttpSink, HttpSinkConfig, Secret,
};
use evspool::forward::sink::mixpanel::{Endpoint, MixpanelConfig, MixpanelSink};
use evspool::forward::sink::nats::{NatsAuth, NatsConnection, NatsSink, NatsSinkConfig};
use evspool::forward::sink::segment::{SegmentConfig, SegmentSink};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The outbound clients the sinks share: one HTTP client, and one NATS
/// connection per distinct set of connection settings (so topics sharing a
/// `[sink]` share one connection).
#[derive(Debug)]
pub struct Clients {
    http: reqwest::Client,
    nats: Mutex<Vec<NatsConnection>>,
}

impl Clients {
    /// The NATS connection for `cfg`: an existing one with the same settings, or a new one.
    fn nats(&self, cfg: &NatsSinkConfig) -> anyhow::Result<NatsConnection> {
        let mut conns = self.nats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conns.iter().find(|c| c.serves(cfg)) {
            return Ok(c.clone());
        }
        let c = NatsConnection::new(cfg)?;
        conns.push(c.clone());
        Ok(c)
    }
}

/// The shared outbound clients.
pub fn client(cfg: &HttpClientConfig) -> anyhow::Result<Clients> {
    Ok(Clients {
        http: http::build_client(cfg).context("building the HTTP client")?,
        nats: Mutex::new(Vec::new()),
    })
}

fn env_secret(name: &str) -> Secret {
    Secret(std::env::var(name).unwrap_or_default())
}

fn required_secret(name: &str, what: &str) -> anyhow::Result<Secret> {
    let s = env_secret(name);
    if s.is_empty() {
        anyhow::bail!("{what} needs {name} set");
    }
    Ok(s)
}

/// Builds the sink for `topic`, reading secrets from the environment.
pub fn build(topic: &str, cfg: &SinkConfig, clients: &Clients) -> anyhow::Result<Arc<dyn Sink>> {
    let client = &clients.http;
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
        SinkConfig::Nats(c) => {
            let mut c = NatsSinkConfig::clone(c);
            c.secret = match &c.auth {
                NatsAuth::Token => required_secret(SINK_TOKEN_ENV, "the nats sink's token auth")?,
                NatsAuth::UserPassword { .. } => {
                    required_secret(SINK_SECRET_ENV, "the nats sink's user_password auth")?
                }
                NatsAuth::None | NatsAuth::Creds { .. } => Secret::default(),
            };
            let conn = clients.nats(&c)?;
            Arc::new(NatsSink::new(conn, topic, &c)?)
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
        "nats" => {
            let mut c = NatsSinkConfig::default();
            if let Some(u) = url {
                c.servers = split_servers(u);
            }
            if std::env::var(SINK_TOKEN_ENV).is_ok_and(|t| !t.is_empty()) {
                c.auth = NatsAuth::Token;
            }
            SinkConfig::Nats(Box::new(c))
        }
        other => {
            anyhow::bail!("unknown sink {other:?} (expected http, mixpanel, segment or nats)")
        }
    })
}

/// Points an existing sink config at `url`.
pub fn set_url(cfg: &mut SinkConfig, url: &str) {
    match cfg {
        SinkConfig::Http(c) => c.url = url.to_string(),
        SinkConfig::Mixpanel(c) => c.api_host = url.to_string(),
        SinkConfig::Segment(c) => c.api_host = url.to_string(),
        SinkConfig::Nats(c) => c.servers = split_servers(url),
    }
}

/// `nats://a:4222,nats://b:4222` → both URLs.
fn split_servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
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
