//! Looking at the queue without changing it: stats, readiness, topics, peek.

use super::handle::Queue;
use super::index::chunk::ChunkState;
use super::log::read::ChunkRead;
use super::log::read::read_chunk;
use super::topic::Topic;
use super::usage::Usage;
use crate::error::QueueError;
use crate::event::{Event, now_ms};
use crate::record;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A queued event as `peek` shows it, with its chunk's delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeekedEvent {
    /// The event.
    pub event: Event,
    /// Whether a consumer holds it right now.
    pub leased: bool,
    /// Not leased again before this time (ms since the epoch), after a failure.
    pub not_before_ms: Option<u64>,
    /// The last delivery failure, if any.
    pub last_error: Option<String>,
}

/// Readiness of a topic, for consumers deciding whether to lease or wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Events leaseable now.
    pub ready_events: u64,
    /// Events waiting for the committer (leaseable after the next commit).
    pub uncommitted_events: u64,
    /// When the next delayed chunk becomes due, if any.
    pub next_due_in: Option<Duration>,
    /// Events held by consumers.
    pub leased_events: u64,
    /// Events waiting out a retry backoff.
    pub retrying_events: u64,
}

impl Readiness {
    /// Every live event of the topic: ready, uncommitted, leased or retrying.
    pub fn depth(&self) -> u64 {
        self.ready_events + self.uncommitted_events + self.leased_events + self.retrying_events
    }
}

/// A point-in-time view of one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    /// Leaseable now (including retries whose backoff has passed).
    pub ready: Usage,
    /// Waiting out a retry backoff.
    pub retrying: Usage,
    /// Held by a consumer.
    pub leased: Usage,
    /// Accepted but not yet indexed (buffered, or written and waiting for
    /// the next commit round).
    pub uncommitted: Usage,
    /// In the dead-letter store.
    pub dead: Usage,
    /// Enqueue time of the oldest live event (ms since the epoch).
    pub oldest_enqueued_ms: Option<u64>,
    /// Age of the oldest live event in ms.
    pub oldest_age_ms: Option<u64>,
    /// Events dropped, by reason.
    pub drops: BTreeMap<String, u64>,
}

/// The ceiling as configured and how much of it is used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CeilingStats {
    /// The event limit.
    pub max_events: u64,
    /// The logical byte limit.
    pub max_bytes: u64,
    /// The overflow policy.
    pub policy: String,
    /// max(events/max_events, bytes/max_bytes) in percent, of what the
    /// ceiling counts (`stored`).
    pub used_percent: f64,
    /// What the ceiling counts: live events and dead letters, and their
    /// payload bytes with quarantine's.
    #[serde(default)]
    pub stored: Usage,
}

/// A point-in-time view of the whole queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The store's instance id (the first part of every event id).
    pub instance_id: String,
    /// On-disk format version.
    pub format: u8,
    /// Per topic.
    pub topics: BTreeMap<String, TopicStats>,
    /// Live events (everything not yet delivered, dead letters excluded).
    pub total: Usage,
    /// The ceiling and its use.
    pub ceiling: CeilingStats,
    /// Events dropped, by reason, all topics.
    pub drops: BTreeMap<String, u64>,
    /// Damaged records moved to quarantine.
    pub quarantined_records: u64,
    /// Bytes of quarantined records.
    pub quarantined_bytes: u64,
    /// What the store's files take on disk (sled and body files; see `compact`).
    pub size_on_disk: u64,
    /// Body files holding an open descriptor now (at most `max_open_files`).
    #[serde(default)]
    pub open_body_files: u64,
    /// Set when the queue refuses new events after a storage error.
    pub failed_closed: Option<String>,
    /// What opening had to repair (index rebuilt from the body files, stale
    /// snapshots, records pointing past the end of a body file, ...).
    pub recovered: Vec<String>,
}

impl Queue {
    /// How many events of `topic` are ready, uncommitted, or delayed.
    pub fn readiness(&self, topic: &str) -> Readiness {
        let shared = &self.shared();
        // Each part is read holding the next one's lock (the lock order,
        // `locking.rs`), as `stats` does: the committer moves sealed chunks
        // into a log and a log's entries into the index holding both, so an
        // event moving meanwhile is counted once, not in both places.
        let w = shared.buffer().lock();
        let mut uncommitted = w.open.get(topic).map_or(0, |c| c.events.len() as u64)
            + w.sealed
                .iter()
                .filter(|(t, _)| &**t == topic)
                .map(|(_, c)| c.events.len() as u64)
                .sum::<u64>();
        let log = shared.logs().existing(topic);
        let st = log.as_ref().map(|l| l.lock());
        drop(w);
        // Written entries a lease would index first count as ready (with
        // fsync, once synced).
        let mut indexable = 0;
        if let Some(st) = &st {
            indexable = if shared.cfg().fsync {
                st.unindexed
                    .iter()
                    .take_while(|a| a.end() <= st.synced())
                    .map(|a| a.index.events as u64)
                    .sum()
            } else {
                st.unindexed_usage.events
            };
            uncommitted += st.pending.events + st.unindexed_usage.events - indexable;
        }
        let mut index = shared.catalog().lock();
        drop(st);
        let now = now_ms();
        let Some(t) = index.topics.get_mut(topic) else {
            return Readiness {
                ready_events: indexable,
                uncommitted_events: uncommitted,
                ..Readiness::default()
            };
        };
        t.promote_due(now);
        Readiness {
            ready_events: t.ready_usage.events + indexable,
            uncommitted_events: uncommitted,
            next_due_in: t
                .next_due_ms()
                .map(|ms| Duration::from_millis(ms.saturating_sub(now))),
            leased_events: t.leased_usage.events + t.moving_usage.events,
            retrying_events: t.delayed_usage.events,
        }
    }

    /// A receiver that changes whenever events of `topic` may have become ready
    /// (a commit, a nack, a release). Consumers wait on it instead of polling.
    /// After [`Queue::reopen`] the receiver's `changed` fails (its store is
    /// gone): subscribe again. For a name no topic may have (see [`Topic`])
    /// the receiver's `changed` fails at once, and nothing is kept for it.
    pub fn subscribe(&self, topic: &str) -> watch::Receiver<u64> {
        if Topic::new(topic).is_err() {
            return watch::channel(0).1;
        }
        let topic: Arc<str> = Arc::from(topic);
        self.shared().catalog().waker(&topic).subscribe()
    }

    /// Names of every topic the store knows, sorted.
    pub fn topics(&self) -> Vec<String> {
        let shared = &self.shared();
        let mut names: Vec<String> = shared
            .catalog()
            .lock()
            .topics
            .keys()
            .map(|k| k.to_string())
            .collect();
        names.extend(shared.logs().all().iter().map(|l| l.topic.to_string()));
        names.extend(shared.buffer().lock().open.keys().map(|t| t.to_string()));
        names.sort();
        names.dedup();
        names
    }

    /// Reads up to `limit` queued events of `topic` from the head, without leasing them.
    ///
    /// Starts at the chunk with key ≥ `from_seq`; pass the last seen seq + 1 to page.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidTopic`] if `topic` is not a topic name;
    /// [`QueueError::Storage`] if a body file cannot be read.
    pub fn peek(
        &self,
        topic: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<PeekedEvent>, QueueError> {
        Topic::new(topic)?;
        let shared = &self.shared();
        // Durable events acknowledged a moment ago are shown too.
        super::commit::index_waiting(shared, topic);
        let infos = {
            let mut index = shared.catalog().lock();
            let Some(t) = index.topics.get_mut(topic) else {
                return Ok(Vec::new());
            };
            // The chunk containing from_seq may start before it.
            let start = t
                .chunks
                .last_at_or_before(from_seq)
                .filter(|(_, c)| c.index.last_seq >= from_seq)
                .map(|(k, _)| *k)
                .unwrap_or(from_seq);
            let mut n = 0;
            let infos: Vec<(u64, super::index::chunk::ChunkInfo)> = t
                .chunks
                .range_from(start)
                .take_while(|(_, c)| {
                    let go = n < limit;
                    n += c.index.events as usize;
                    go
                })
                .map(|(k, c)| (*k, c.clone()))
                .collect();
            // Pinned while read outside the lock (L3).
            for (_, c) in &infos {
                t.pin(c.index.body_gen);
            }
            infos
        };
        let log = shared.logs().existing(topic);
        let reads: Vec<Result<ChunkRead, QueueError>> = infos
            .iter()
            .map(|(k, c)| {
                read_chunk(shared.logs().bodies(), log.as_ref(), *k, &c.index)
                    .map_err(QueueError::from)
            })
            .collect();
        {
            let mut index = shared.catalog().lock();
            if let Some(t) = index.topics.get_mut(topic) {
                for (_, c) in &infos {
                    t.unpin(c.index.body_gen);
                }
            }
        }
        let mut out = Vec::new();
        for ((_, info), read) in infos.into_iter().zip(reads) {
            // Damaged entries are skipped (lease and verify quarantine them).
            for e in read?.events().filter(|e| e.seq >= from_seq) {
                if out.len() >= limit {
                    break;
                }
                out.push(PeekedEvent {
                    event: Event {
                        id: self.event_id(e.seq),
                        enqueued_at_ms: e.enqueued_at_ms,
                        attempts: info.attempts,
                        payload: Bytes::copy_from_slice(&e.payload),
                    },
                    leased: matches!(info.state, ChunkState::Leased(_)),
                    not_before_ms: (info.not_before_ms > 0).then_some(info.not_before_ms),
                    last_error: info.last_error.as_deref().cloned(),
                });
            }
        }
        Ok(out)
    }

    /// A point-in-time view of the queue.
    pub fn stats(&self) -> Stats {
        let shared = &self.shared();
        let now = now_ms();
        let mut topics: BTreeMap<String, TopicStats> = BTreeMap::new();
        {
            let w = shared.buffer().lock();
            let chunks = w.open.iter().chain(w.sealed.iter().map(|(t, c)| (t, c)));
            for (t, c) in chunks {
                let ts = topics.entry(t.to_string()).or_default();
                ts.uncommitted.add(c.events.len() as u64, c.bytes);
                if let Some(first) = c.events.first() {
                    let o = ts.oldest_enqueued_ms.get_or_insert(first.enqueued_at_ms);
                    *o = (*o).min(first.enqueued_at_ms);
                }
            }
            // Each topic's log and index are read together (the committer
            // moves entries from one to the other holding both), so every
            // event is counted once.
            let mut seen = std::collections::BTreeSet::new();
            for log in shared.logs().all() {
                let st = log.lock();
                let mut index = shared.catalog().lock();
                let u = st.pending;
                let v = st.unindexed_usage;
                if u.events + v.events > 0 {
                    let ts = topics.entry(log.topic.to_string()).or_default();
                    ts.uncommitted.add(u.events + v.events, u.bytes + v.bytes);
                    if let Some(o) = st.unindexed.first().map(|a| a.index.first_enqueued_ms) {
                        let cur = ts.oldest_enqueued_ms.get_or_insert(o);
                        *cur = (*cur).min(o);
                    }
                }
                if let Some(t) = index.topics.get_mut(log.topic.as_str()) {
                    topic_stats(topics.entry(log.topic.to_string()).or_default(), t, now);
                }
                seen.insert(log.topic.arc().clone());
            }
            let mut index = shared.catalog().lock();
            for (name, t) in index.topics.iter_mut().filter(|(n, _)| !seen.contains(*n)) {
                topic_stats(topics.entry(name.to_string()).or_default(), t, now);
            }
            fn topic_stats(ts: &mut TopicStats, t: &mut super::index::TopicIndex, now: u64) {
                t.promote_due(now);
                ts.ready = t.ready_usage;
                ts.retrying = t.delayed_usage;
                ts.leased = t.leased_usage;
                ts.leased.add(t.moving_usage.events, t.moving_usage.bytes);
                ts.dead = t.dead_usage;
                if let Some(o) = t.oldest_ms() {
                    let cur = ts.oldest_enqueued_ms.get_or_insert(o);
                    *cur = (*cur).min(o);
                }
            }
        }
        let mut drops_total: BTreeMap<String, u64> = BTreeMap::new();
        for ((topic, reason), n) in shared.ceiling().drops().snapshot() {
            *topics
                .entry(topic.to_string())
                .or_default()
                .drops
                .entry(reason.as_str().to_string())
                .or_default() += n;
            *drops_total.entry(reason.as_str().to_string()).or_default() += n;
        }
        for ts in topics.values_mut() {
            ts.oldest_age_ms = ts.oldest_enqueued_ms.map(|o| now.saturating_sub(o));
        }
        let (events, bytes) = shared.ceiling().totals().get();
        let (stored_events, stored_bytes) = shared.ceiling().totals().stored();
        let c = &shared.cfg().ceiling;
        let used = (stored_events as f64 / c.max_events as f64)
            .max(stored_bytes as f64 / c.max_bytes.as_u64() as f64)
            * 100.0;
        let (q_records, q_bytes, sled_size) = match shared.store().get() {
            Ok(store) => {
                let (r, b) = store.quarantine_usage();
                (r, b, store.size_on_disk())
            }
            Err(_) => (0, 0, 0),
        };
        Stats {
            instance_id: shared.instance().as_str().to_string(),
            format: record::FORMAT_VERSION,
            topics,
            total: Usage { events, bytes },
            ceiling: CeilingStats {
                max_events: c.max_events,
                max_bytes: c.max_bytes.as_u64(),
                policy: c.policy.to_string(),
                used_percent: (used * 100.0).round() / 100.0,
                stored: Usage::new(stored_events, stored_bytes),
            },
            drops: drops_total,
            quarantined_records: q_records,
            quarantined_bytes: q_bytes,
            size_on_disk: sled_size
                + shared
                    .logs()
                    .bodies()
                    .disk_bytes
                    .load(std::sync::atomic::Ordering::Relaxed),
            open_body_files: shared.logs().bodies().files.open_count() as u64,
            failed_closed: shared.gate().failed_reason(),
            recovered: shared.recovered().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Queue, QueueConfig};
    use std::sync::atomic::Ordering;

    fn counted(q: &Queue) -> u64 {
        q.shared()
            .logs()
            .bodies()
            .disk_bytes
            .load(Ordering::Relaxed)
    }

    fn on_disk(q: &Queue) -> u64 {
        super::super::open::dir_size(&q.shared().logs().bodies().root)
    }

    #[tokio::test]
    async fn the_body_bytes_counted_for_stats_match_the_files_through_appends_purges_and_reaping() {
        for fsync in [false, true] {
            body_bytes_match_the_files(QueueConfig {
                fsync,
                ..QueueConfig::default()
            })
            .await;
        }
    }

    async fn body_bytes_match_the_files(cfg: QueueConfig) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        for t in 0..5 {
            let topic = format!("t{t}");
            // Over 1 MiB each, so a drained current generation is replaced.
            let batch: Vec<String> = (0..120)
                .map(|i| format!("event {i} of {topic} {}", "x".repeat(9_000)))
                .collect();
            let _ = q.enqueue_batch_durable(&topic, batch).await.unwrap();
            let _ = q.enqueue(&topic, "one more").unwrap();
        }
        q.sync().await.unwrap();
        assert!(counted(&q) > 5 * 120 * 9_000);
        assert_eq!(counted(&q), on_disk(&q), "after appends");
        let before = on_disk(&q);
        assert_eq!(q.purge("t0").unwrap(), 121);
        while let Some(lease) = q.lease("t1", 50).unwrap() {
            q.ack(lease).unwrap();
        }
        // A drained current generation is left for a new one at the next
        // append, and then deleted.
        crate::queue::commit::reap(&q.shared(), true);
        for t in ["t0", "t1"] {
            let _ = q.enqueue_durable(t, "next").await.unwrap();
        }
        q.sync().await.unwrap();
        crate::queue::commit::reap(&q.shared(), true);
        assert!(on_disk(&q) < before, "reaping deleted files");
        assert_eq!(counted(&q), on_disk(&q), "after a purge, acks and reaping");
        q.close();
        drop(q);
        let q = Queue::open(dir.path(), cfg).unwrap();
        assert_eq!(counted(&q), on_disk(&q), "after reopening");
        let _ = q.enqueue_durable("t1", "after reopening").await.unwrap();
        assert_eq!(
            counted(&q),
            on_disk(&q),
            "after an append to a reopened topic"
        );
    }
}
