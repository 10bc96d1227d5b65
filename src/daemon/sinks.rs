//! Building sinks from configuration, with secrets from the environment.

use super::config::{SINK_SECRET_ENV, SINK_TOKEN_ENV, SinkConfig};
use anyhow::Context as _;
use evspool::Event;
use evspool::forward::RouteConfig;
use evspool::forward::sink::http::{
    self, HttpAuth, HttpClientConfig, HttpSink, HttpSinkConfig, Secret,
};
use evspool::forward::sink::mixpanel::{Endpoint, MixpanelConfig, MixpanelSink};
use evspool::forward::sink::nats::{NatsAuth, NatsConnection, NatsSink, NatsSinkConfig};
use evspool::forward::sink::segment::{SegmentConfig, SegmentSink};
use evspool::forward::sink::{BoxFuture, Delivery, Sink};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The outbound clients the sinks share: one HTTP client, and one NATS
/// connection per distinct set of connection settings (so topics sharing a
/// `[sink]` share one connection).
#[derive(Debug)]
pub struct Clients {
    http: http::HttpClient,
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
        SinkConfig::Nats(c) => {
            let mut c = NatsSinkConfig::clone(c);
            c.secret = match &c.auth {
                NatsAuth::Token => required_secret(SINK_TOKEN_ENV, "the nats sink's token auth")?,
                NatsAuth::UserPassword { .. } => {
                    required_secret(SINK_SECRET_ENV, "the nats sink's user_password auth")?
                }
                NatsAuth::None | NatsAuth::Creds { .. } => Secret::default(),
            };
            let from = match &c.auth {
                NatsAuth::Token => format!("the daemon reads the token from {SINK_TOKEN_ENV}"),
                NatsAuth::UserPassword { .. } => {
                    format!("the daemon reads the password from {SINK_SECRET_ENV}")
                }
                NatsAuth::Creds { .. } => "check the creds file named in the config".to_string(),
                NatsAuth::None => "the server wants credentials: set `auth` in [sink]".to_string(),
            };
            let conn = clients.nats(&c)?;
            (Arc::new(NatsSink::new(conn, topic, &c)?), from)
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

    fn peer(&self) -> &str {
        self.inner.peer()
    }

    fn config_fault_hint(&self, status: Option<u16>, reason: &str) -> String {
        let hint = self.inner.config_fault_hint(status, reason);
        if self.inner.is_credentials_fault(status, reason) {
            format!("{hint} ({})", self.from)
        } else {
            hint
        }
    }

    fn is_credentials_fault(&self, status: Option<u16>, reason: &str) -> bool {
        self.inner.is_credentials_fault(status, reason)
    }

    fn duplicate_window(&self) -> Option<std::time::Duration> {
        self.inner.duplicate_window()
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
