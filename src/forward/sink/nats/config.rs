//! The NATS sink's settings: servers, subject template, authentication, TLS,
//! and the optional stream to create. Validation names the field and never
//! echoes a secret (a server URL with `user:password@` is refused without
//! being repeated).

use crate::config::ConfigError;
use crate::secret::Secret;
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Defaults to `evspool.{topic}`: one subject per topic under one prefix, so a
/// single stream with subject `evspool.>` captures every topic.
pub const DEFAULT_SUBJECT: &str = "evspool.{topic}";
/// Defaults to `nats://127.0.0.1:4222`: a server on the same host, the usual leaf-node setup.
pub const DEFAULT_SERVER: &str = "nats://127.0.0.1:4222";
/// Defaults to 5 s per ack: JetStream acks in well under a millisecond on a
/// healthy server; longer than this means the server or the route is in trouble.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Defaults to 5 s to connect: a server that has not answered by then is down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Defaults to 1000 events per batch (the route's `batch_size` caps it; raise
/// both for throughput: publishes are pipelined, so larger batches cost nothing
/// per event).
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 1000;
/// Defaults to 16 MiB of payload per batch: far above what 1000 typical events
/// weigh, so `max_batch_events` decides; it bounds the memory one batch of
/// large events holds while its publishes are in flight.
pub const DEFAULT_MAX_BATCH_BYTES: ByteSize = ByteSize::mib(16);
/// Defaults to `evspool`: how the connection shows in the server's monitoring
/// (`nats server report connections`, `/connz`).
pub const DEFAULT_CLIENT_NAME: &str = "evspool";
/// Defaults to 2 minutes: JetStream's own default `duplicate_window`. Raise it
/// to cover the longest time between a first publish and its redelivery
/// (see the README's "Deduplication window").
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// NATS' hard cap on `max_payload` (64 MiB): no server accepts more. The
/// server's own `max_payload` (1 MiB by default) is checked per message.
pub const MAX_EVENT_BYTES: ByteSize = ByteSize::mib(64);

/// How the sink authenticates. Secrets are never in the config file: the
/// daemon fills [`NatsSinkConfig::secret`] from the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A token (the secret).
    Token,
    /// A user name with the secret as password.
    UserPassword {
        /// The user name.
        user: String,
    },
    /// A `.creds` file (user JWT and nkey seed), as `nsc` writes it. Keep it 0600.
    Creds {
        /// Path to the file.
        file: PathBuf,
    },
}

/// TLS to the server (rustls). A `tls://` server URL requires TLS too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsTls {
    /// Refuse a server that does not offer TLS.
    pub required: bool,
    /// PEM file of extra root certificates to trust (a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// Where a stream stores messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsStorage {
    /// Files on the server's disk: survives a server restart.
    #[default]
    File,
    /// Memory only: lost when the server stops.
    Memory,
}

/// A stream for evspool to create when it does not exist yet. An existing
/// stream of that name is used as it is, never changed (a WARN says so when
/// its duplicate window is shorter than the one configured here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsStream {
    /// The stream's name (no spaces, `.`, `*` or `>`).
    pub name: String,
    /// Subjects it captures (default: the sink's subject with `{topic}` as a
    /// wildcard, e.g. `evspool.>`).
    pub subjects: Vec<String>,
    /// File or memory storage.
    pub storage: NatsStorage,
    /// How long JetStream remembers a `Nats-Msg-Id`: a redelivery within this
    /// window is dropped as a duplicate, a later one is stored again. The
    /// server keeps every id of the window in memory.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Copies kept in a cluster (1 on a single server).
    pub replicas: usize,
}

impl Default for NatsStream {
    fn default() -> Self {
        Self {
            name: "EVSPOOL".into(),
            subjects: Vec::new(),
            storage: NatsStorage::File,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            replicas: 1,
        }
    }
}

/// The NATS sink's settings. `Debug` redacts the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`), tried in order;
    /// the client also learns the cluster's other servers. No credentials in
    /// URLs: they would end up in logs.
    pub servers: Vec<String>,
    /// The subject per topic; `{topic}` is replaced by the topic's name.
    pub subject: String,
    /// Authentication.
    pub auth: NatsAuth,
    /// The token or password (from the environment, never the file).
    #[serde(skip)]
    pub secret: Secret,
    /// TLS settings.
    pub tls: Option<NatsTls>,
    /// Create this stream if it does not exist.
    pub stream: Option<NatsStream>,
    /// How long to wait for a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for each publish's ack.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Most events per batch (the route's `batch_size` caps it too).
    pub max_batch_events: usize,
    /// Most payload bytes per batch; a larger batch is split before it is sent.
    pub max_batch_bytes: ByteSize,
    /// The connection's name, shown by the server's monitoring (`/connz`).
    pub client_name: String,
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        Self {
            servers: vec![DEFAULT_SERVER.into()],
            subject: DEFAULT_SUBJECT.into(),
            auth: NatsAuth::None,
            secret: Secret::default(),
            tls: None,
            stream: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            client_name: DEFAULT_CLIENT_NAME.into(),
        }
    }
}

pub(super) fn invalid(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        reason: reason.into(),
    }
}

/// Whether `s` is a valid subject to publish to: dot-separated non-empty
/// tokens of printable characters, no wildcards.
pub(super) fn valid_publish_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && t.chars().all(|c| !c.is_whitespace() && !c.is_control())
        })
}

impl NatsSinkConfig {
    /// Checks every field; the error names the field (never a secret).
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` for the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(invalid("servers", "needs at least one nats:// URL"));
        }
        for (i, s) in self.servers.iter().enumerate() {
            let field = format!("servers[{i}]");
            let rest = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .find_map(|p| s.strip_prefix(p));
            let Some(rest) = rest else {
                return Err(invalid(
                    &field,
                    "must start with nats://, tls://, ws:// or wss://",
                ));
            };
            // Do not echo the URL: it may carry a password.
            if rest.split('/').next().unwrap_or("").contains('@') {
                return Err(invalid(
                    &field,
                    "carries credentials (user:password@); they would show in logs: set auth and pass the secret in the environment instead",
                ));
            }
            if rest.is_empty() || rest.starts_with(':') {
                return Err(invalid(&field, "has no host"));
            }
        }
        let probe = self.subject.replace("{topic}", "t");
        if !valid_publish_subject(&probe) {
            return Err(invalid(
                "subject",
                format!(
                    "{:?} is not a subject to publish to (dot-separated tokens, no spaces, no * or >)",
                    self.subject
                ),
            ));
        }
        if self.ack_timeout.is_zero() {
            return Err(invalid("ack_timeout", "must be greater than 0"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be greater than 0"));
        }
        if self.max_batch_events == 0 {
            return Err(invalid("max_batch_events", "must be at least 1"));
        }
        if self.max_batch_bytes.as_u64() == 0 {
            return Err(invalid("max_batch_bytes", "must be greater than 0"));
        }
        match &self.auth {
            NatsAuth::UserPassword { user } if user.is_empty() => {
                return Err(invalid("auth.user_password.user", "must not be empty"));
            }
            NatsAuth::Creds { file } if file.as_os_str().is_empty() => {
                return Err(invalid("auth.creds.file", "must not be empty"));
            }
            _ => {}
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(invalid(
                "tls",
                "cert_file and key_file go together (a client certificate needs its key)",
            ));
        }
        if let Some(st) = &self.stream {
            let bad = st.name.is_empty()
                || st
                    .name
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
            if bad {
                return Err(invalid(
                    "stream.name",
                    format!(
                        "{:?} is not a stream name (no spaces, '.', '*', '>', slashes)",
                        st.name
                    ),
                ));
            }
            if st.duplicate_window.is_zero() {
                return Err(invalid(
                    "stream.duplicate_window",
                    "must be greater than 0: it is what absorbs redeliveries",
                ));
            }
            if st.replicas == 0 || st.replicas > 5 {
                return Err(invalid("stream.replicas", "must be between 1 and 5"));
            }
        }
        Ok(())
    }

    /// The subject `topic`'s events are published to.
    pub fn subject_for(&self, topic: &str) -> String {
        self.subject.replace("{topic}", topic)
    }

    /// The subjects a created stream captures: the configured ones, else the
    /// subject template with `{topic}` as a wildcard (`>` when it ends the
    /// subject, so topics with dots are captured too).
    pub fn stream_subjects(&self) -> Vec<String> {
        match &self.stream {
            Some(s) if !s.subjects.is_empty() => s.subjects.clone(),
            _ => match self.subject.strip_suffix("{topic}") {
                Some(prefix) => vec![format!("{}>", prefix.replace("{topic}", "*"))],
                None => vec![self.subject.replace("{topic}", "*")],
            },
        }
    }

    /// Whether `other` can share this configuration's connection.
    pub(super) fn same_connection(&self, other: &Self) -> bool {
        self.servers == other.servers
            && self.auth == other.auth
            && self.secret == other.secret
            && self.tls == other.tls
            && self.connect_timeout == other.connect_timeout
            && self.ack_timeout == other.ack_timeout
            && self.client_name == other.client_name
    }
}
