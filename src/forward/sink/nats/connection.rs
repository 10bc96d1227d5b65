//! [`NatsConnection`]: one lazily dialled NATS client shared by the sinks of
//! several topics, and the faults the server reports asynchronously
//! (authorization and permissions violations arrive as `-ERR`, not as a
//! publish's answer).

use super::config::{NatsAuth, NatsSinkConfig};
use crate::config::ConfigError;
use crate::forward::sink::Delivery;
use async_nats::jetstream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// Faults the server reports asynchronously (`-ERR`), seen by every sink of a connection.
#[derive(Default)]
pub(super) struct Faults {
    /// The last authorization or permissions violation; bumped on each one.
    pub(super) last: std::sync::Mutex<Option<String>>,
    /// Set by an authorization violation, cleared when a connection succeeds.
    pub(super) auth_failed: AtomicBool,
}

pub(super) struct Connected {
    pub(super) js: jetstream::Context,
}

pub(super) struct Shared {
    pub(super) cfg: NatsSinkConfig,
    state: tokio::sync::Mutex<Option<Arc<Connected>>>,
    pub(super) faults: Arc<Faults>,
    pub(super) fault_seq: watch::Sender<u64>,
}

/// One lazily connected NATS client, shared by the sinks of several topics.
#[derive(Clone)]
pub struct NatsConnection {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConnection")
            .field("servers", &self.shared.cfg.servers)
            .field("auth", &self.shared.cfg.auth)
            .field("secret", &self.shared.cfg.secret)
            .finish_non_exhaustive()
    }
}

/// A failed attempt, already an outcome.
pub(super) type Failed = Delivery;

pub(super) fn retry(reason: String) -> Delivery {
    Delivery::Retry {
        after: None,
        reason,
    }
}

pub(super) fn config_fault(reason: String) -> Delivery {
    Delivery::ConfigFault {
        status: None,
        reason,
    }
}

pub(super) const CHECK_CREDENTIALS: &str = "check the user and password (EVSPOOL_SINK_SECRET), the token (EVSPOOL_SINK_TOKEN) or the creds file";

impl NatsConnection {
    /// A connection for `cfg` (validated); nothing is dialled until the first send.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` naming the bad field.
    pub fn new(cfg: &NatsSinkConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                cfg: cfg.clone(),
                state: tokio::sync::Mutex::new(None),
                faults: Arc::default(),
                fault_seq: watch::channel(0).0,
            }),
        })
    }

    /// Whether a sink configured with `cfg` can use this connection.
    pub fn serves(&self, cfg: &NatsSinkConfig) -> bool {
        self.shared.cfg.same_connection(cfg)
    }

    async fn options(&self) -> Result<async_nats::ConnectOptions, Failed> {
        let cfg = &self.shared.cfg;
        let mut o = match &cfg.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::Token => {
                async_nats::ConnectOptions::with_token(cfg.secret.expose().to_string())
            }
            NatsAuth::UserPassword { user } => async_nats::ConnectOptions::with_user_and_password(
                user.clone(),
                cfg.secret.expose().to_string(),
            ),
            NatsAuth::Creds { file } => async_nats::ConnectOptions::with_credentials_file(file)
                .await
                .map_err(|e| {
                    config_fault(format!(
                        "nats: cannot read the creds file {}: {e}",
                        file.display()
                    ))
                })?,
        };
        if let Some(tls) = &cfg.tls {
            o = o.require_tls(tls.required);
            if let Some(ca) = &tls.ca_file {
                o = o.add_root_certificates(ca.clone());
            }
            if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
                o = o.add_client_certificate(c.clone(), k.clone());
            }
        }
        let faults = self.shared.faults.clone();
        let seq = self.shared.fault_seq.clone();
        let servers = cfg.servers.join(",");
        Ok(o.name(&cfg.client_name)
            .connection_timeout(cfg.connect_timeout)
            .request_timeout(Some(cfg.ack_timeout))
            .event_callback(move |event| {
                let (faults, seq, servers) = (faults.clone(), seq.clone(), servers.clone());
                async move { on_event(event, &faults, &seq, &servers) }
            }))
    }

    /// The connected JetStream context, connecting first if needed.
    pub(super) async fn connected(&self) -> Result<Arc<Connected>, Failed> {
        let mut state = self.shared.state.lock().await;
        if let Some(c) = &*state {
            return Ok(c.clone());
        }
        let cfg = &self.shared.cfg;
        let options = self.options().await?;
        let servers: Vec<async_nats::ServerAddr> =
            cfg.servers.iter().filter_map(|s| s.parse().ok()).collect();
        if servers.is_empty() {
            return Err(config_fault("nats: no server URL could be parsed".into()));
        }
        let bound = cfg.connect_timeout * (servers.len() as u32 + 1);
        let client = match tokio::time::timeout(bound, options.connect(servers)).await {
            Err(_) => {
                return Err(retry(format!(
                    "nats: connecting timed out after {} ms",
                    bound.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(classify_connect_error(&e)),
            Ok(Ok(c)) => c,
        };
        self.shared
            .faults
            .auth_failed
            .store(false, Ordering::Release);
        // "Connected to NATS." is logged once, by the client's connect
        // event (which a reconnect fires too).
        let js = jetstream::ContextBuilder::new()
            .timeout(cfg.ack_timeout)
            .build(client);
        let c = Arc::new(Connected { js });
        *state = Some(c.clone());
        Ok(c)
    }
}

fn classify_connect_error(e: &async_nats::ConnectError) -> Delivery {
    use async_nats::ConnectErrorKind as K;
    let text = error_chain(e);
    match e.kind() {
        K::AuthorizationViolation | K::Authentication => config_fault(format!(
            "nats: authorization failed ({text}): {CHECK_CREDENTIALS}"
        )),
        K::Tls => config_fault(format!(
            "nats: TLS setup failed ({text}): check [sink.tls] (ca_file, cert_file, key_file) and the server's certificate"
        )),
        K::ServerParse => config_fault(format!("nats: bad server address ({text})")),
        K::Io if is_tls_failure(e) => config_fault(format!(
            "nats: the TLS handshake failed ({text}): check [sink.tls] ca_file (the CA that signed the server's certificate) and that the server URL's host is in the certificate"
        )),
        K::Dns | K::TimedOut | K::Io | K::MaxReconnects => {
            retry(format!("nats: cannot connect ({text})"))
        }
    }
}

/// Whether a connect error is a refused TLS handshake (an unknown CA, a name
/// mismatch, an expired certificate): rustls' error, wrapped in an I/O error
/// by the client. A configuration fault, not a network one.
fn is_tls_failure(e: &async_nats::ConnectError) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        src = s.source();
    }
    false
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg
}

fn on_event(event: async_nats::Event, faults: &Faults, seq: &watch::Sender<u64>, servers: &str) {
    use async_nats::{Event, ServerError};
    match event {
        Event::Connected => {
            faults.auth_failed.store(false, Ordering::Release);
            tracing::info!(servers, "Connected to NATS.");
        }
        Event::Disconnected => {
            tracing::warn!(
                servers,
                "NATS connection lost; reconnecting (unacked events are retried)."
            );
        }
        Event::ServerError(ServerError::AuthorizationViolation) => {
            faults.auth_failed.store(true, Ordering::Release);
            *faults.last.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("authorization violation".into());
            seq.send_modify(|s| *s += 1);
        }
        Event::ServerError(ServerError::Other(text))
            if text.to_ascii_lowercase().contains("permissions violation") =>
        {
            *faults.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
            seq.send_modify(|s| *s += 1);
        }
        other => tracing::debug!(servers, event = %other, "NATS client event."),
    }
}
