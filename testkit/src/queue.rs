//! Small helpers for tests that drive a [`Queue`] from plain (non-async)
//! test functions: `block_on`, a topic's seqs in lease order, an accepted
//! event's seq.

use evspool::{Enqueued, Queue};
use std::future::Future;

/// Runs `f` to completion on a fresh current-thread runtime.
///
/// # Panics
///
/// If the runtime cannot be built.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// Leases everything ready in `topic`, `max` events a lease, then releases
/// it all; returns the seqs in the order they were leased.
///
/// # Panics
///
/// If a lease fails.
pub fn leased_seqs(q: &Queue, topic: &str, max: usize) -> Vec<u64> {
    let mut order = Vec::new();
    let mut leases = Vec::new();
    while let Some(l) = q.lease(topic, max).expect("lease") {
        order.extend(l.events().iter().map(|e| e.seq()));
        leases.push(l);
    }
    for l in leases {
        q.release(l);
    }
    order
}

/// The seq of an accepted event.
///
/// # Panics
///
/// If the event was not accepted.
pub fn accepted_seq(e: &Enqueued) -> u64 {
    match e {
        Enqueued::Accepted(id) => id.seq(),
        other => panic!("enqueue not accepted: {other:?}"),
    }
}
