//! Queue configuration: plain structs with serde defaults, validated on open.
//!
//! Every default is a `DEFAULT_*` constant whose doc says why it has that value.
//! Durations and sizes are written in human units in TOML (`"30s"`, `"10GiB"`).

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Defaults to 50 events: Mixpanel's `/track` batch limit and the batch size of
/// the Ruby SDK's `BufferedConsumer`, so one chunk is usually one request.
pub const DEFAULT_CHUNK_MAX_EVENTS: usize = 50;
/// Defaults to 512 KiB: large enough for 50 events of 10 KiB, small enough that
/// a lease reads one chunk's span of its body file in one read, and a rewrite
/// after a partial settle copies little.
pub const DEFAULT_CHUNK_MAX_BYTES: ByteSize = ByteSize::kib(512);
/// Defaults to 1 MiB: Mixpanel rejects single events over 1 MB; anything larger
/// is almost certainly a producer bug and is refused at enqueue.
pub const DEFAULT_MAX_EVENT_BYTES: ByteSize = ByteSize::mib(1);
/// Defaults to 100 ms: buffered events reach their body files at most this late,
/// which bounds what a crash can lose while keeping one write per topic (and
/// one sled batch for the index) per many events.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Defaults to 500 ms: sled's own background flush (and `fsync`) period; the
/// index records and retry schedules of a commit round are on stable storage
/// at most this long after it (body files are written by the round itself).
/// Acks and dead letters do not wait for it: the committer flushes sled
/// within milliseconds of a settlement, so a `kill -9` re-sends only what was
/// in flight (a power cut can still take back this period of them).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Defaults to 64 MiB: sled's default of 1 GiB makes resident memory grow to it;
/// the queue reads each chunk about once, so a small cache costs little.
pub const DEFAULT_CACHE_CAPACITY: ByteSize = ByteSize::mib(64);
/// Defaults to 1 GiB of logical event bytes (body files hold each event once,
/// with a small header, until their generation drains; sled holds the index).
pub const DEFAULT_MAX_BYTES: ByteSize = ByteSize::gib(1);
/// Defaults to 10 million events, about a day of a busy app's tracking.
pub const DEFAULT_MAX_EVENTS: u64 = 10_000_000;
/// Defaults to 5 s under the `block` policy: long enough to ride out a burst,
/// short enough that a stuck producer notices.
pub const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Defaults to 5 minutes: a lease not settled by then (a wedged or crashed
/// worker) returns its events to the queue.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(300);
/// Defaults to 4 MiB: sealed chunks waiting for the committer; past this the
/// producer waits on local disk (never on the network). The committer starts a
/// round at a quarter of it, so rounds stay about 1 MiB: measured with 1M
/// queued events, 16 MiB gave 240 MiB peak RSS (sled holds each round's log
/// buffers and nodes) and 4 MiB 105–110 MiB with a faster fill.
pub const DEFAULT_MAX_PENDING_BYTES: ByteSize = ByteSize::mib(4);

/// Defaults to 128 body files with an open descriptor: far below the common
/// soft limit of 1,024 descriptors, whatever the number of topics. An idle
/// topic's file is closed and reopened on its next use (about 10 µs).
pub const DEFAULT_MAX_OPEN_FILES: usize = 128;

/// What the queue does with a new event when it is at its ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Refuse the event: `enqueue` returns `Err(QueueError::Full)` at once.
    Reject,
    /// Accept the call but discard the new event, counted as `ceiling_newest`.
    /// The default: the producer is never slowed or failed by the spool.
    #[default]
    DropNewest,
    /// Evict the oldest unleased events to make room, counted as `ceiling_oldest`.
    DropOldest,
    /// Wait up to `block_timeout` for space, then behave as `reject`.
    Block,
}

impl std::fmt::Display for OverflowPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reject => "reject",
            Self::DropNewest => "drop_newest",
            Self::DropOldest => "drop_oldest",
            Self::Block => "block",
        })
    }
}

impl std::str::FromStr for OverflowPolicy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(Self::Reject),
            "drop_newest" => Ok(Self::DropNewest),
            "drop_oldest" => Ok(Self::DropOldest),
            "block" => Ok(Self::Block),
            other => Err(ConfigError::Invalid {
                name: "policy".into(),
                reason: format!(
                    "unknown overflow policy {other:?} (expected reject, drop_newest, drop_oldest or block)"
                ),
            }),
        }
    }
}

/// The queue's ceiling: how much it may hold, and what happens at the limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ceiling {
    /// Most logical bytes (sum of payload sizes) the queue holds, dead letters excluded.
    pub max_bytes: ByteSize,
    /// Most events the queue holds, dead letters excluded.
    pub max_events: u64,
    /// What happens to a new event at the limit.
    pub policy: OverflowPolicy,
    /// How long `block` waits for space.
    #[serde(with = "humantime_serde")]
    pub block_timeout: Duration,
}

impl Default for Ceiling {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_events: DEFAULT_MAX_EVENTS,
            policy: OverflowPolicy::default(),
            block_timeout: DEFAULT_BLOCK_TIMEOUT,
        }
    }
}

/// How durable a buffered `enqueue` is; see the crate docs for what each level can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Return at once; durable after the next commit round (`commit_interval`).
    #[default]
    Buffered,
    /// Return after the event's chunk is written to its body file (survives `kill -9`).
    Durable,
}

/// Configuration of one queue (one store directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Most events in one stored chunk.
    pub chunk_max_events: usize,
    /// Most payload bytes in one stored chunk (a single larger event gets its own chunk).
    pub chunk_max_bytes: ByteSize,
    /// Largest single event accepted; larger ones get `QueueError::TooLarge`.
    pub max_event_bytes: ByteSize,
    /// How often open chunks are sealed and written to sled.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// sled's background flush period.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// `fdatasync` body files before a durable enqueue returns or a commit
    /// round counts as done (survives power loss), and sled's data file before
    /// anything that trusts it (a deleted body file, a swapped database).
    pub fsync: bool,
    /// sled's page cache size.
    pub cache_capacity: ByteSize,
    /// Disk ceiling and overflow policy.
    pub ceiling: Ceiling,
    /// Events older than this at lease time are dropped, counted as `max_age`.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// A lease not settled within this returns its events to the queue.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// Sealed chunks awaiting the committer before producers wait on local disk.
    pub max_pending_bytes: ByteSize,
    /// Most body files holding an open descriptor at once.
    pub max_open_files: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            chunk_max_events: DEFAULT_CHUNK_MAX_EVENTS,
            chunk_max_bytes: DEFAULT_CHUNK_MAX_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            fsync: false,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            ceiling: Ceiling::default(),
            max_age: None,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
        }
    }
}

impl QueueConfig {
    /// Checks every field; the error names the field and says what is wrong.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` for the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(name: &str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                name: name.into(),
                reason: reason.into(),
            })
        }
        if self.chunk_max_events == 0 || self.chunk_max_events > 100_000 {
            return invalid("chunk_max_events", "must be between 1 and 100000");
        }
        if self.chunk_max_bytes.as_u64() < 1024 {
            return invalid("chunk_max_bytes", "must be at least 1KiB");
        }
        if self.max_event_bytes.as_u64() == 0 || self.max_event_bytes.as_u64() > 64 * 1024 * 1024 {
            return invalid("max_event_bytes", "must be between 1B and 64MiB");
        }
        if self.commit_interval.is_zero() || self.commit_interval > Duration::from_secs(60) {
            return invalid("commit_interval", "must be between 1ms and 60s");
        }
        if self.flush_interval.is_zero() || self.flush_interval > Duration::from_secs(3600) {
            return invalid("flush_interval", "must be between 1ms and 1h");
        }
        if self.cache_capacity.as_u64() < 1024 * 1024 {
            return invalid("cache_capacity", "must be at least 1MiB");
        }
        if self.ceiling.max_bytes.as_u64() == 0 {
            return invalid("ceiling.max_bytes", "must be greater than 0");
        }
        if self.ceiling.max_events == 0 {
            return invalid("ceiling.max_events", "must be greater than 0");
        }
        if self.ceiling.max_bytes < self.max_event_bytes {
            return invalid(
                "ceiling.max_bytes",
                format!(
                    "must be at least max_event_bytes ({})",
                    self.max_event_bytes
                ),
            );
        }
        if let Some(age) = self.max_age
            && age < Duration::from_secs(1)
        {
            return invalid("max_age", "must be at least 1s");
        }
        if self.lease_timeout < Duration::from_millis(10) {
            return invalid("lease_timeout", "must be at least 10ms");
        }
        if self.max_pending_bytes < self.chunk_max_bytes {
            return invalid("max_pending_bytes", "must be at least chunk_max_bytes");
        }
        if !(4..=65_536).contains(&self.max_open_files) {
            return invalid("max_open_files", "must be between 4 and 65536");
        }
        Ok(())
    }
}

/// A configuration value is out of range or cannot be parsed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a value the queue cannot work with. Fix the named field.
    #[error("invalid config `{name}`: {reason}")]
    Invalid {
        /// The field, dotted for nested fields (`ceiling.max_bytes`).
        name: String,
        /// What is wrong with its value.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        QueueConfig::default().validate().unwrap();
    }

    #[test]
    fn validation_names_the_field_that_is_wrong() {
        let cfg = QueueConfig {
            chunk_max_events: 0,
            ..QueueConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("chunk_max_events"), "{err}");

        let mut cfg = QueueConfig::default();
        cfg.ceiling.max_bytes = ByteSize::b(10);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("ceiling.max_bytes"), "{err}");
    }

    #[test]
    fn toml_uses_human_units_and_rejects_unknown_keys() {
        let cfg: QueueConfig = toml::from_str(
            "commit_interval = \"250ms\"\n[ceiling]\nmax_bytes = \"10GiB\"\npolicy = \"drop_oldest\"\n",
        )
        .unwrap();
        assert_eq!(cfg.commit_interval, Duration::from_millis(250));
        assert_eq!(cfg.ceiling.max_bytes, ByteSize::gib(10));
        assert_eq!(cfg.ceiling.policy, OverflowPolicy::DropOldest);
        let err = toml::from_str::<QueueConfig>("comit_interval = \"1s\"").unwrap_err();
        assert!(err.to_string().contains("comit_interval"), "{err}");
    }

    #[test]
    fn policy_parses_from_its_display_name() {
        for p in [
            OverflowPolicy::Reject,
            OverflowPolicy::DropNewest,
            OverflowPolicy::DropOldest,
            OverflowPolicy::Block,
        ] {
            assert_eq!(p.to_string().parse::<OverflowPolicy>().unwrap(), p);
        }
        assert!("drop".parse::<OverflowPolicy>().is_err());
    }
}
