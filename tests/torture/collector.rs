//! The recording collector, the torture way: `evspool_testkit`'s collector
//! on its Segment-style `POST /v1/batch` (the daemon's Segment sink sends each
//! event's stable id as `messageId`, so a redelivery shows up as the same
//! marker with the same id; see `Collector::deliveries`), keeping only the
//! accepted events (soaks accept millions), answering Segment's
//! `{"success":true}`.
//!
//! Events are recorded when the request arrives, before the configured delay
//! (`Reply::hold`): a daemon killed while it waits for the answer has
//! delivered the batch without knowing it, which is exactly the window that
//! makes at-least-once produce duplicates.

use evspool_testkit::collector::{Collector, Keep, Reply};
use std::time::Duration;

/// Segment's answer, after `hold`.
fn reply(hold: Duration) -> Reply {
    Reply::ok()
        .header("content-type", "application/json")
        .body(r#"{"success":true}"#)
        .hold(hold)
}

/// Starts an accepting collector on a free loopback port.
pub async fn start_collector() -> Collector {
    let c = Collector::start_keeping(Keep::Events).await;
    c.respond(|_| reply(Duration::ZERO));
    c
}

/// Answers every request this much later (events are recorded first).
pub fn set_collector_delay(c: &Collector, d: Duration) {
    c.respond(move |_| reply(d));
}
