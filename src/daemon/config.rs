//! The daemon's TOML configuration: `[server]`, `[queue]`, `[http]`, `[sink]`,
//! `[forward]` and `[topics.<name>]`. Unknown keys are errors naming the line
//! and key. Secrets are never in the file: they come from the environment.

mod position;

use anyhow::Context as _;
use bytesize::ByteSize;
use evspool::forward::RouteConfig;
use evspool::forward::sink::http::{HttpClientConfig, HttpSinkConfig};
use evspool::forward::sink::mixpanel::MixpanelConfig;
use evspool::forward::sink::nats::NatsSinkConfig;
use evspool::forward::sink::segment::SegmentConfig;
use evspool::{Durability, QueueConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Defaults to 127.0.0.1:8787: loopback only, so nothing off the host can post.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Defaults to 5 MiB per request body: a few thousand events; larger is a 413.
pub const DEFAULT_MAX_BODY: ByteSize = ByteSize::mib(5);
/// Defaults to 20 MiB decompressed: gzip of JSON compresses ~4-10x; a bomb stops here.
pub const DEFAULT_MAX_DECOMPRESSED: ByteSize = ByteSize::mib(20);
/// Defaults to 10,000 events per request: bounds memory per request.
pub const DEFAULT_MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// Defaults to 256 requests in flight; more wait (bounded memory under load).
pub const DEFAULT_CONCURRENCY: usize = 256;
/// Defaults to 30 s: a client slower than this to send its request is cut off.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Defaults to 128 MiB for request bodies and their decompression across all
/// requests: with sled's 64 MiB cache and the daemon's own ~40 MiB, the
/// daemon stays under 256 MiB whatever clients send (measured: 256
/// concurrent 19 MiB gzip bodies).
pub const DEFAULT_MEMORY_BUDGET: ByteSize = ByteSize::mib(128);
/// Defaults to 30 s: SIGTERM drains this long, then releases what is left (kept on disk).
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
/// The environment variable holding the daemon's bearer token.
pub use crate::admin_api::TOKEN_ENV;
/// The environment variable holding the sink's token (Mixpanel project token,
/// Segment write key, the HTTP sink's bearer token, or the NATS token).
pub const SINK_TOKEN_ENV: &str = "EVSPOOL_SINK_TOKEN";
/// The environment variable holding the sink's secret (Mixpanel service
/// account secret, the HTTP sink's basic-auth password, or the NATS user's password).
pub const SINK_SECRET_ENV: &str = "EVSPOOL_SINK_SECRET";

/// The local HTTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. A non-loopback address requires a token.
    pub listen: SocketAddr,
    /// Largest request body (compressed size).
    pub max_body: ByteSize,
    /// Largest decompressed request body.
    pub max_decompressed: ByteSize,
    /// Most events in one request.
    pub max_events_per_request: usize,
    /// Most requests handled at once.
    pub concurrency: usize,
    /// Most TCP connections open at once; beyond it a connection is answered
    /// 503 and closed. Default: derived from the descriptor limit (the soft
    /// limit, raised to the hard one, less the store's files and 256).
    pub max_connections: Option<usize>,
    /// Memory for request bodies and their decompression across all requests;
    /// a request beyond it waits up to 2 s, then gets 503 with Retry-After.
    pub memory_budget: ByteSize,
    /// `Host` values accepted besides the listen address (and, on loopback,
    /// `localhost`): e.g. `"spool.internal:8787"`; `"*"` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Web origins whose pages may post here (browser SDKs), e.g.
    /// `"https://app.example.com"`; `"*"` accepts any. Others are refused.
    pub allowed_origins: Vec<String>,
    /// Longest a request may take to arrive and be handled.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long SIGTERM drains before releasing the rest.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            max_body: DEFAULT_MAX_BODY,
            max_decompressed: DEFAULT_MAX_DECOMPRESSED,
            max_events_per_request: DEFAULT_MAX_EVENTS_PER_REQUEST,
            concurrency: DEFAULT_CONCURRENCY,
            max_connections: None,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            shutdown_deadline: DEFAULT_SHUTDOWN_DEADLINE,
        }
    }
}

/// Where a topic's events go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Any JSON endpoint.
    Http(HttpSinkConfig),
    /// Mixpanel's ingestion API.
    Mixpanel(MixpanelConfig),
    /// Segment's batch API.
    Segment(SegmentConfig),
    /// A NATS JetStream stream (one subject per topic). Boxed: it is the largest.
    Nats(Box<NatsSinkConfig>),
}

/// One topic's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// The topic's sink (default: the `[sink]` section).
    pub sink: Option<SinkConfig>,
    /// Forwarding settings (default: the `[forward]` section).
    pub forward: Option<RouteConfig>,
    /// Whether ingest answers after the durable commit (`durable`, default) or at once.
    pub durability: Option<Durability>,
}

/// The whole daemon configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Store directory (the `--dir` flag and `EVSPOOL_DIR` override it).
    pub dir: Option<PathBuf>,
    /// The local HTTP server.
    pub server: ServerConfig,
    /// The queue.
    pub queue: QueueConfig,
    /// The outbound HTTP client shared by every sink.
    pub http: HttpClientConfig,
    /// The default sink for every topic.
    pub sink: Option<SinkConfig>,
    /// Default forwarding settings for every topic.
    pub forward: RouteConfig,
    /// Store and send nothing (`false` keeps events on disk only).
    pub active: bool,
    /// Per-topic settings. The built-in topics (`track`, `engage`, `groups`,
    /// `import`, `segment`, `events`) always exist.
    pub topics: BTreeMap<String, TopicConfig>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            dir: None,
            server: ServerConfig::default(),
            queue: QueueConfig::default(),
            http: HttpClientConfig::default(),
            sink: None,
            forward: RouteConfig::default(),
            active: true,
            topics: BTreeMap::new(),
        }
    }
}

/// The topics every daemon serves, fed by the compatible ingest routes.
pub const BUILTIN_TOPICS: [&str; 6] = ["track", "engage", "groups", "import", "segment", "events"];

impl DaemonConfig {
    /// Reads and validates a TOML file; errors name the file, line and key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: DaemonConfig = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(position::describe(
                text,
                e.span().map(|s| s.start),
                e.message()
            ))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.queue.validate().context("[queue]")?;
        self.forward.validate().context("[forward]")?;
        for (name, t) in &self.topics {
            evspool::Topic::new(name).with_context(|| format!("[topics.{name}]"))?;
            if let Some(f) = &t.forward {
                f.validate()
                    .with_context(|| format!("[topics.{name}.forward]"))?;
            }
        }
        if let Some(SinkConfig::Nats(n)) = &self.sink {
            n.validate().context("[sink]")?;
        }
        for (name, t) in &self.topics {
            if let Some(SinkConfig::Nats(n)) = &t.sink {
                n.validate()
                    .with_context(|| format!("[topics.{name}.sink]"))?;
            }
        }
        if self.server.concurrency == 0 {
            anyhow::bail!("[server] concurrency: must be at least 1");
        }
        if self.server.max_events_per_request == 0 {
            anyhow::bail!("[server] max_events_per_request: must be at least 1");
        }
        if self.server.max_body.as_u64() == 0 {
            anyhow::bail!(
                "[server] max_body: must be at least 1 byte (0 would refuse every request); the default is {DEFAULT_MAX_BODY}"
            );
        }
        if self.server.max_decompressed < self.server.max_body {
            anyhow::bail!("[server] max_decompressed: must be at least max_body");
        }
        if self.server.max_connections == Some(0) {
            anyhow::bail!(
                "[server] max_connections: must be at least 1 (leave it out to derive it from the descriptor limit)"
            );
        }
        if self.server.memory_budget < self.server.max_body * 2u64
            || self.server.memory_budget < self.server.max_decompressed * 2u64
        {
            anyhow::bail!(
                "[server] memory_budget: {} is less than twice max_body ({}) or max_decompressed ({}): a request of the largest allowed size could never be served",
                self.server.memory_budget,
                self.server.max_body,
                self.server.max_decompressed
            );
        }
        if self.server.request_timeout.is_zero() {
            anyhow::bail!("[server] request_timeout: must be more than 0s");
        }
        Ok(())
    }

    /// Every topic the daemon serves.
    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = BUILTIN_TOPICS.iter().map(|s| s.to_string()).collect();
        for k in self.topics.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        names
    }

    /// The sink for `topic`, if any.
    pub fn sink_for(&self, topic: &str) -> Option<&SinkConfig> {
        self.topics
            .get(topic)
            .and_then(|t| t.sink.as_ref())
            .or(self.sink.as_ref())
    }

    /// Forwarding settings for `topic`.
    pub fn forward_for(&self, topic: &str) -> RouteConfig {
        self.topics
            .get(topic)
            .and_then(|t| t.forward.clone())
            .unwrap_or_else(|| self.forward.clone())
    }

    /// Whether ingest into `topic` waits for the durable commit.
    pub fn durable(&self, topic: &str) -> bool {
        self.topics
            .get(topic)
            .and_then(|t| t.durability)
            .unwrap_or(Durability::Durable)
            == Durability::Durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../examples/evspool.toml");
        let cfg = DaemonConfig::parse(text).unwrap();
        assert!(cfg.sink.is_some());
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_line() {
        let err = DaemonConfig::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("[server] line 3, column 1: "), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn a_typo_inside_a_sink_section_names_its_line_and_section() {
        // A `[sink]` table is read whole (its `type` picks the variant), so
        // toml alone points at the header, line 1.
        let text = "[sink]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\nformt = \"json\"\n";
        let err = DaemonConfig::parse(text).unwrap_err().to_string();
        assert!(err.starts_with("[sink] line 4, column 1: "), "{err}");
        assert!(err.contains("formt"), "{err}");
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n\n[topics.x.sink]\ntype = \"nats\"\n\n[topics.x.sink.stream]\nname = \"S\"\n  duplicate_windw = \"1h\"\n";
        let err = DaemonConfig::parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("[topics.x.sink.stream] line 9, column 3: "),
            "{err}"
        );
        assert!(err.contains("duplicate_windw"), "{err}");
        // A bad value is found by its text.
        let text = "[sink]\ntype = \"nats\"\n[sink.stream]\nstorage = \"tape\"\n";
        let err = DaemonConfig::parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("[sink.stream] line 4, column 11: "),
            "{err}"
        );
    }

    #[test]
    fn debug_output_of_the_whole_config_redacts_credential_headers() {
        let cfg = DaemonConfig::parse(
            "[sink]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\nheaders = { Authorization = \"Bearer cfg-secret-91\", X-Api-Key = \"cfg-key-92\" }\n[topics.t.sink]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\nheaders = { X-Auth-Token = \"cfg-tok-93\" }\n",
        )
        .unwrap();
        for text in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            for s in ["cfg-secret-91", "cfg-key-92", "cfg-tok-93"] {
                assert!(!text.contains(s), "{text}");
            }
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    #[test]
    fn a_nats_sink_is_read_from_toml_and_its_bad_fields_are_named_with_the_section() {
        use evspool::forward::sink::nats::{NatsAuth, NatsStorage};
        let cfg = DaemonConfig::parse(
            "[sink]\ntype = \"nats\"\nservers = [\"nats://10.0.0.1:4222\", \"tls://10.0.0.2:4222\"]\nsubject = \"spool.{topic}\"\nauth = { user_password = { user = \"evspool\" } }\nack_timeout = \"2s\"\n[sink.tls]\nca_file = \"/etc/ca.pem\"\n[sink.stream]\nname = \"SPOOL\"\nstorage = \"memory\"\nduplicate_window = \"6h\"\n",
        )
        .unwrap();
        let Some(SinkConfig::Nats(n)) = &cfg.sink else {
            panic!("{:?}", cfg.sink)
        };
        assert_eq!(n.servers.len(), 2);
        assert_eq!(n.subject_for("track"), "spool.track");
        assert_eq!(
            n.auth,
            NatsAuth::UserPassword {
                user: "evspool".into()
            }
        );
        assert_eq!(n.ack_timeout, Duration::from_secs(2));
        let st = n.stream.as_ref().unwrap();
        assert_eq!(st.storage, NatsStorage::Memory);
        assert_eq!(st.duplicate_window, Duration::from_secs(6 * 3600));
        assert_eq!(n.stream_subjects(), vec!["spool.>".to_string()]);
        let err =
            DaemonConfig::parse("[topics.t.sink]\ntype = \"nats\"\nsubject = \"a b.{topic}\"\n")
                .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("[topics.t.sink]") && text.contains("subject"),
            "{text}"
        );
        let err = DaemonConfig::parse("[sink]\ntype = \"nats\"\npassword = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("password"), "{err:#}");
    }

    #[test]
    fn a_zero_max_body_and_a_budget_too_small_for_it_are_refused_by_name() {
        let err = DaemonConfig::parse("[server]\nmax_body = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("max_body"), "{err:#}");
        let err = DaemonConfig::parse("[server]\nmemory_budget = \"1MiB\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("memory_budget"), "{err:#}");
        let err = DaemonConfig::parse("[server]\nmax_connections = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("max_connections"), "{err:#}");
        let cfg = DaemonConfig::parse(
            "[server]\nmax_connections = 50\nallowed_origins = [\"https://a.example\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.server.max_connections, Some(50));
    }

    #[test]
    fn human_units_are_read_and_invalid_values_named() {
        let cfg = DaemonConfig::parse(
            "[queue.ceiling]\nmax_bytes = \"2GiB\"\n[server]\nshutdown_deadline = \"10s\"\n",
        )
        .unwrap();
        assert_eq!(cfg.queue.ceiling.max_bytes, ByteSize::gib(2));
        assert_eq!(cfg.server.shutdown_deadline, Duration::from_secs(10));
        let err = DaemonConfig::parse("[queue]\nchunk_max_events = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("chunk_max_events"), "{err:#}");
    }
}
