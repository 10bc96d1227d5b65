//! Making a topic's retries due at once, when its collector is known to
//! deliver again ([`Queue::retry_now`]).
//!
//! Only the in-memory index changes (the `make_due` transition in
//! `queue/index/chunk.rs`): a chunk's persisted retry record keeps its attempts,
//! last error and not-before time. So a restart before the chunk is leased
//! delays it again until that time (or the next call).

use super::handle::Queue;

impl Queue {
    /// Makes every chunk of `topic` that waits out a retry backoff ready now,
    /// wakes the consumers waiting on [`Queue::subscribe`], and returns how
    /// many events that made leaseable (0 for an unknown topic or when none
    /// were waiting).
    ///
    /// A forwarder calls it when a topic delivers again (a probe or a batch
    /// succeeded) and when it starts, so events that failed during an outage
    /// go out as soon as the collector is back instead of after their backoff.
    pub fn retry_now(&self, topic: &str) -> u64 {
        let shared = self.shared();
        let mut index = shared.catalog().lock();
        let Some(t) = index.topics.get_mut(topic) else {
            return 0;
        };
        let n = t.make_due();
        if n > 0 {
            t.wake();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use crate::{Queue, QueueConfig};
    use std::time::Duration;

    #[tokio::test]
    async fn retry_now_makes_delayed_events_leaseable_at_once_and_wakes_consumers() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), QueueConfig::default()).unwrap();
        for i in 0..3 {
            let _ = q
                .enqueue_durable("t", format!("{{\"n\":{i}}}"))
                .await
                .unwrap();
        }
        let lease = q.lease("t", 50).unwrap().unwrap();
        q.nack(lease, Duration::from_secs(3600), "http 503")
            .unwrap();
        assert!(q.lease("t", 50).unwrap().is_none(), "delayed for an hour");
        assert_eq!(q.readiness("t").retrying_events, 3);
        let mut rx = q.subscribe("t");
        rx.borrow_and_update();

        assert_eq!(q.retry_now("t"), 3);
        assert!(rx.has_changed().unwrap(), "waiting consumers are woken");
        let r = q.readiness("t");
        assert_eq!((r.ready_events, r.retrying_events), (3, 0));
        let lease = q.lease("t", 50).unwrap().expect("leaseable now");
        assert_eq!(lease.len(), 3);
        assert!(
            lease.events().iter().all(|e| e.attempts == 1),
            "attempts kept"
        );
        q.ack(lease).unwrap();

        assert_eq!(q.retry_now("t"), 0, "nothing waiting");
        assert_eq!(q.retry_now("unknown"), 0);
        q.close();
    }
}
