//! Draining: sending everything now, without linger, and reporting what it
//! achieved — until every topic is empty or a timeout ([`ForwarderHandle::drain`],
//! `evspool drain`), or only while delivery makes progress
//! ([`ForwarderHandle::drain_while_progressing`], a daemon asked to stop).

use super::{ForwarderHandle, Route, TopicShared};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A topic a drain stopped before it was empty, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTopic {
    /// Live events of the topic when the drain stopped (they stay queued).
    pub events: u64,
    /// Why it could not make progress (`collector unreachable`, `breaker
    /// open`, `collector rate-limiting`, `paused by a configuration fault`,
    /// `waiting out retry backoffs`, `deadline`).
    pub reason: String,
}

/// What `drain` achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Events delivered during the drain.
    pub delivered: u64,
    /// Events dead-lettered during the drain.
    pub dead: u64,
    /// Event retries during the drain.
    pub retried: u64,
    /// Events still queued (not dead) when it ended.
    pub remaining: u64,
    /// Whether every routed topic was empty at the end.
    pub complete: bool,
    /// How long it took, in ms.
    pub elapsed_ms: u64,
    /// Topics stopped before they were empty
    /// ([`ForwarderHandle::drain_while_progressing`] only), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, HeldTopic>,
}

/// Ends the drain mode of every topic when a drain ends or is dropped.
struct Reset<'a>(&'a [(Arc<Route>, Arc<TopicShared>)]);

impl Drop for Reset<'_> {
    fn drop(&mut self) {
        for (_, t) in self.0 {
            t.draining.store(false, Ordering::Release);
        }
    }
}

impl ForwarderHandle {
    /// Puts every topic in drain mode (no linger) until the guard drops.
    fn start_draining(&self) -> Reset<'_> {
        for (_, t) in &self.topics {
            t.draining.store(true, Ordering::Release);
            t.drain_signal.send_modify(|g| *g += 1);
        }
        Reset(&self.topics)
    }

    /// Sends everything now — no linger — until every routed topic is empty or
    /// `timeout` passes, and reports. Retries still wait out their backoff.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future ends the drain mode; nothing is lost.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let before = self.totals();
        let _reset = self.start_draining();
        let _ = self.queue.sync().await;
        let (mut remaining, mut inflight) = self.remaining();
        while (remaining > 0 || inflight > 0) && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(5)).await;
            (remaining, inflight) = self.remaining();
        }
        self.report(started, before, remaining, BTreeMap::new())
    }

    /// Like [`ForwarderHandle::drain`], but stops each topic as soon as it
    /// cannot make progress, and every topic at `deadline`: a topic whose
    /// collector is unreachable, failing, rate-limiting or refusing the
    /// configuration, whose breaker is open, or which has nothing left but
    /// events waiting out a retry backoff, stops at once. The report's `held`
    /// names each topic stopped with events left, how many and why; those
    /// events stay queued. This is the drain of a daemon asked to stop.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`ForwarderHandle::drain`].
    pub async fn drain_while_progressing(&self, deadline: Duration) -> DrainReport {
        let started = Instant::now();
        let before = self.totals();
        let _reset = self.start_draining();
        let _ = self.queue.sync().await;
        // Per topic: None while it drains, Some(reason) once it stopped.
        let mut stopped: Vec<Option<&'static str>> = vec![None; self.topics.len()];
        loop {
            let mut draining = false;
            for ((route, t), stop) in self.topics.iter().zip(stopped.iter_mut()) {
                if stop.is_some() {
                    continue;
                }
                let r = self.queue.readiness(&route.topic);
                let inflight = t.stats.inflight.load(Ordering::Acquire);
                if r.depth() == 0 && inflight == 0 {
                    *stop = Some("");
                } else if let Some(reason) = t.held() {
                    *stop = Some(reason);
                } else if r.ready_events == 0
                    && r.uncommitted_events == 0
                    && r.leased_events == 0
                    && inflight == 0
                {
                    *stop = Some("waiting out retry backoffs");
                } else if started.elapsed() >= deadline {
                    *stop = Some("deadline");
                } else {
                    draining = true;
                }
            }
            if !draining {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut held = BTreeMap::new();
        let mut remaining = 0;
        for ((route, _), stop) in self.topics.iter().zip(&stopped) {
            let events = self.queue.readiness(&route.topic).depth();
            remaining += events;
            if events > 0 {
                let reason = match stop {
                    Some(r) if !r.is_empty() => r,
                    _ => "deadline",
                };
                held.insert(
                    route.topic.to_string(),
                    HeldTopic {
                        events,
                        reason: reason.to_string(),
                    },
                );
            }
        }
        self.report(started, before, remaining, held)
    }

    /// A drain's report: what was delivered, dead-lettered and retried since
    /// `before` (the totals when it started), and what is left.
    fn report(
        &self,
        started: Instant,
        before: (u64, u64, u64),
        remaining: u64,
        held: BTreeMap<String, HeldTopic>,
    ) -> DrainReport {
        let after = self.totals();
        DrainReport {
            delivered: after.0 - before.0,
            dead: after.1 - before.1,
            retried: after.2 - before.2,
            remaining,
            complete: remaining == 0,
            elapsed_ms: started.elapsed().as_millis() as u64,
            held,
        }
    }
}
