//! One worker: lease → send → ack | nack | split | dead-letter.
//!
//! Every [`Delivery`] a sink can report is handled in [`Worker::send_range`]'s
//! one `match`; the outcomes of a batch (which may have been split or bisected
//! into several requests) are gathered into one [`Settlement`] and applied to
//! the queue in one atomic write.
//!
//! A sink that panics while sending (a bug in it) does not end the worker:
//! the batch counts as a transient failure (`Retry`, with the panic's
//! message as the reason), so its events are retried with backoff, the
//! breaker and health see a failure, and the worker's lease and in-flight
//! count are settled as for any other outcome. Before, the panic ended the
//! worker's task: the topic had one worker fewer for good, and a `drain`
//! waited out its timeout for the batch's in-flight count.

use super::sink::{Delivery, Sink};
use super::{Route, TopicShared};
use crate::{Event, Lease, Queue, Settlement};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The reason recorded for events too large for the sink.
pub const TOO_LARGE: &str = "too_large";

/// What the requests for one lease came to, event by event.
#[derive(Default, Debug)]
pub(crate) struct Gathered {
    pub(crate) dead: Vec<(u64, String)>,
    pub(crate) retry: Vec<u64>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) retry_reason: String,
    pub(crate) delivered: u64,
    pub(crate) transient: bool,
    pub(crate) config_fault: Option<(Option<u16>, String)>,
    pub(crate) requests: u64,
}

impl Gathered {
    fn retry_all(&mut self, events: &[Event], after: Option<Duration>, reason: &str) {
        self.retry.extend(events.iter().map(Event::seq));
        if let Some(a) = after {
            self.retry_after = Some(self.retry_after.map_or(a, |b| b.max(a)));
        }
        if self.retry_reason.is_empty() {
            self.retry_reason = reason.to_string();
        }
    }
}

pub(crate) struct Worker {
    pub(crate) queue: Queue,
    pub(crate) route: Arc<Route>,
    pub(crate) topic: Arc<TopicShared>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) rng: fastrand::Rng,
}

impl Worker {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps for `d`, waking early on shutdown. Returns false when shutting down.
    async fn pause(&mut self, d: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        let mut sd = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = sd.wait_for(|s| *s) => false,
        }
    }

    pub(crate) async fn run(mut self) {
        let topic = self.route.topic.clone();
        let batch = self.route.batch_size();
        let mut ready_rx = self.queue.subscribe(&topic);
        let mut linger_until: Option<Instant> = None;
        loop {
            if self.stopping() {
                return;
            }
            // The topic's breaker (and pauses after 429 or a config fault) comes first.
            let permit = self.topic.breaker.acquire(Instant::now());
            let probe = match permit {
                super::breaker::Permit::Allowed => false,
                super::breaker::Permit::Probe => true,
                super::breaker::Permit::Wait(d) => {
                    if !self.pause(d.min(Duration::from_secs(1))).await {
                        return;
                    }
                    continue;
                }
            };
            let readiness = self.queue.readiness(&topic);
            let draining = self.topic.draining.load(Ordering::Acquire);
            // Events made due by a recovery are old already: no linger for them.
            let resuming = self.topic.resume.load(Ordering::Acquire);
            if resuming && readiness.ready_events == 0 {
                self.topic.resume.store(false, Ordering::Release);
            }
            let mut lease = None;
            if readiness.ready_events > 0 {
                let full = readiness.ready_events >= batch as u64;
                let lingered = linger_until.is_some_and(|t| Instant::now() >= t);
                if full || lingered || draining || resuming {
                    // Counted before the lease exists, so a drain never sees
                    // an empty queue while this batch's outcome is uncounted.
                    self.topic.stats.inflight.fetch_add(1, Ordering::AcqRel);
                    lease = match self.queue.lease(&topic, batch) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(topic = %topic, error = %e, "Lease failed.");
                            None
                        }
                    };
                    if lease.is_none() {
                        self.topic.stats.inflight.fetch_sub(1, Ordering::AcqRel);
                    }
                } else if linger_until.is_none() {
                    let jitter = self.route.config.flush_jitter;
                    let extra = if jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(self.rng.u64(0..=jitter.as_millis() as u64))
                    };
                    linger_until = Some(Instant::now() + self.route.config.flush_interval + extra);
                }
            }
            let Some(lease) = lease else {
                if probe {
                    // Nothing to probe with: hand the probe back.
                    self.topic.breaker.abandon_probe();
                }
                // Wait for new events, the linger deadline, a due retry, or shutdown.
                let mut wait = Duration::from_secs(1);
                if let Some(t) = linger_until {
                    wait = wait.min(t.saturating_duration_since(Instant::now()));
                }
                if let Some(due) = readiness.next_due_in {
                    wait = wait.min(due + Duration::from_millis(1));
                }
                if readiness.uncommitted_events > 0 {
                    wait = wait.min(self.queue.config().commit_interval);
                }
                let mut sd = self.shutdown.clone();
                let mut drain_rx = self.topic.drain_signal.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    changed = ready_rx.changed() => {
                        // The store was reopened (`Queue::reopen`): its old
                        // counter is gone; wait on the new one.
                        if changed.is_err() {
                            ready_rx = self.queue.subscribe(&topic);
                        }
                    }
                    _ = drain_rx.changed() => {}
                    _ = sd.wait_for(|s| *s) => return,
                }
                continue;
            };
            linger_until = None;
            if probe {
                let notices = self.topic.with_health(|h| h.probing());
                self.topic.emit(&notices);
            }
            self.deliver(lease).await;
            self.topic.stats.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Sends one lease (splitting or bisecting as the sink asks) and settles it.
    pub(crate) async fn deliver(&mut self, lease: Lease) {
        let topic = self.route.topic.clone();
        let mut g = Gathered::default();
        let started = Instant::now();
        self.send_range(lease.events(), &mut g).await;
        metrics::histogram!("evspool_delivery_seconds", "topic" => topic.to_string())
            .record(started.elapsed().as_secs_f64());
        let attempts = lease.events().iter().map(|e| e.attempts).max().unwrap_or(0);
        let now = Instant::now();
        self.topic.status.observe(&g, crate::event::now_ms());
        let probe_every = self.route.config.config_fault_probe;
        let delay = self
            .topic
            .backoff
            .delay(attempts, g.retry_after, &mut self.rng);
        // A configuration fault pauses the topic and probes it every
        // `config_fault_probe`, as documented: not at the backoff's growing,
        // jittered pace (with a probe shorter than the backoff, probes came
        // seconds apart at random).
        let delay = if g.config_fault.is_some() {
            probe_every
        } else {
            delay
        };
        // The breaker, pauses, and what the operator is told (forward::health).
        let mut notices = Vec::new();
        if let Some((status, reason)) = &g.config_fault {
            let check = self.route.sink.config_fault_hint(*status, reason);
            notices = self
                .topic
                .with_health(|h| h.config_fault(*status, reason, &check, probe_every, now));
            self.topic.breaker.pause_until(now + probe_every);
        } else if g.transient {
            let opened = self.topic.breaker.record_failure(now);
            let reason = g.retry_reason.as_str();
            notices = self.topic.with_health(|h| {
                let mut n = if reason.starts_with("http 429") {
                    h.rate_limited(g.retry_after.unwrap_or(delay), reason, now)
                } else {
                    h.failed(reason, now)
                };
                if let Some(open_for) = opened {
                    n.extend(h.breaker_opened(open_for, now));
                }
                n
            });
        } else if self.topic.breaker.record_success(now) {
            // A bad condition is over only once the breaker closes (a success
            // from a request sent before a pause does not count).
            let (recovered, mut n) = self.topic.with_health(|h| h.delivered(now));
            if recovered {
                // Resume at once: what failed before waits no longer.
                let due = self.queue.retry_now(&topic);
                self.topic.resume.store(true, Ordering::Release);
                for notice in &mut n {
                    if let super::health::Notice::Back { due: d, .. } = notice {
                        *d = due;
                    }
                }
            }
            notices = n;
        }
        self.topic.emit(&notices);
        if let Some(after) = g.retry_after {
            // A collector's Retry-After pauses every worker of the topic.
            self.topic.breaker.pause_until(now + after);
        }
        let mut s = Settlement::delivered().retry_after(delay, g.retry_reason.clone());
        for seq in &g.retry {
            s = s.retry(*seq);
        }
        for (seq, reason) in &g.dead {
            s = s.dead(*seq, reason.clone());
        }
        let stats = &self.topic.stats;
        stats.requests.fetch_add(g.requests, Ordering::Relaxed);
        match self.queue.settle(lease, s) {
            Ok(report) => {
                stats
                    .delivered
                    .fetch_add(report.delivered, Ordering::Relaxed);
                stats.dead.fetch_add(report.dead, Ordering::Relaxed);
                stats.retried.fetch_add(report.retried, Ordering::Relaxed);
                metrics::counter!("evspool_events_sent_total", "topic" => topic.to_string())
                    .increment(report.delivered);
                if report.dead > 0 {
                    tracing::warn!(
                        topic = %topic,
                        dead = report.dead,
                        reason = %g.dead.first().map(|d| d.1.as_str()).unwrap_or_default(),
                        "Events moved to dead letters."
                    );
                }
                if report.retried > 0 {
                    tracing::debug!(
                        topic = %topic,
                        retried = report.retried,
                        delay_ms = delay.as_millis() as u64,
                        reason = %g.retry_reason,
                        "Batch will be retried."
                    );
                }
            }
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "Settling a batch failed; its events will be delivered again.");
            }
        }
    }

    /// Sends `events`, recursing on halves for splits and bisection.
    fn send_range<'a>(
        &'a mut self,
        events: &'a [Event],
        g: &'a mut Gathered,
    ) -> super::sink::BoxFuture<'a, ()> {
        Box::pin(async move {
            if events.is_empty() {
                return;
            }
            let sink: &Arc<dyn Sink> = &self.route.sink;
            // Events the sink can never take are dead before any request.
            let max_event = sink.max_event_bytes();
            if events.iter().any(|e| e.payload.len() as u64 > max_event) {
                let mut fit = Vec::new();
                for e in events {
                    if e.payload.len() as u64 > max_event {
                        g.dead.push((
                            e.seq(),
                            format!("{TOO_LARGE}: {} bytes over the sink's {max_event}-byte event limit", e.payload.len()),
                        ));
                    } else {
                        fit.push(e.clone());
                    }
                }
                // Owned copies: the recursion needs a slice that lives long enough.
                let fit: Vec<Event> = fit;
                return self.send_owned(fit, g).await;
            }
            let bytes: u64 = events.iter().map(|e| e.payload.len() as u64).sum();
            if events.len() > 1
                && (events.len() > sink.max_batch_events() || bytes > sink.max_batch_bytes())
            {
                let (a, b) = events.split_at(events.len() / 2);
                self.send_range(a, g).await;
                self.send_range(b, g).await;
                return;
            }
            g.requests += 1;
            let started = Instant::now();
            // `send` itself runs inside the first poll, so a panic before it
            // returns its future is caught too.
            let outcome = match unwind_safe(async { sink.send(events).await }).await {
                Ok(outcome) => outcome,
                Err(why) => {
                    // A bug in the sink, not a verdict on the events: they are
                    // retried with backoff, and the worker goes on.
                    tracing::error!(topic = %self.route.topic, sink = sink.name(), panic = %why, "The sink panicked while sending a batch; its events will be retried.");
                    Delivery::Retry {
                        after: None,
                        reason: format!("the sink panicked: {why}"),
                    }
                }
            };
            let topic = self.route.topic.to_string();
            metrics::histogram!("evspool_request_duration_seconds", "topic" => topic.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("evspool_requests_total", "topic" => topic, "outcome" => outcome.label())
                .increment(1);
            match outcome {
                Delivery::Delivered => g.delivered += events.len() as u64,
                Delivery::Retry { after, reason } => {
                    g.transient = true;
                    g.retry_all(events, after, &reason);
                }
                Delivery::Split { reason } => {
                    if events.len() == 1 {
                        g.dead
                            .push((events[0].seq(), format!("{TOO_LARGE}: {reason}")));
                    } else {
                        let (a, b) = events.split_at(events.len() / 2);
                        self.send_range(a, g).await;
                        self.send_range(b, g).await;
                    }
                }
                Delivery::Partial {
                    rejected,
                    retry,
                    after,
                    reason,
                } => {
                    let mut handled = vec![false; events.len()];
                    for r in rejected {
                        if let Some(e) = events.get(r.index)
                            && !handled[r.index]
                        {
                            handled[r.index] = true;
                            g.dead.push((e.seq(), r.reason));
                        }
                    }
                    let mut retried = Vec::new();
                    for i in retry {
                        if let Some(e) = events.get(i)
                            && !handled[i]
                        {
                            handled[i] = true;
                            retried.push(e.clone());
                        }
                    }
                    if !retried.is_empty() {
                        g.transient = true;
                        g.retry_all(&retried, after, &reason);
                    }
                    g.delivered += handled.iter().filter(|h| !**h).count() as u64;
                }
                Delivery::Reject { reason } => {
                    if events.len() == 1 {
                        g.dead.push((events[0].seq(), reason));
                    } else {
                        // No per-record detail: bisect to isolate the poison events.
                        let (a, b) = events.split_at(events.len() / 2);
                        self.send_range(a, g).await;
                        self.send_range(b, g).await;
                    }
                }
                Delivery::ConfigFault { status, reason } => {
                    g.retry_all(events, None, &reason);
                    g.config_fault = Some((status, reason));
                }
            }
        })
    }

    fn send_owned<'a>(
        &'a mut self,
        events: Vec<Event>,
        g: &'a mut Gathered,
    ) -> super::sink::BoxFuture<'a, ()> {
        Box::pin(async move {
            let events = events;
            self.send_range(&events, g).await;
        })
    }
}

/// Runs `fut`, turning a panic inside a poll of it into `Err` with the
/// panic's message (the future is not polled again).
async fn unwind_safe<F: std::future::Future>(fut: F) -> Result<F::Output, String> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic
                .downcast_ref::<&str>()
                .map(|m| m.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string()))),
        }
    })
    .await
}
