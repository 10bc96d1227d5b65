//! [`Usage`]: a count of events and their payload bytes, the unit of every
//! account the queue keeps (per state, per topic, totals).

use serde::{Deserialize, Serialize};

/// A count of events and their payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Events.
    pub events: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl Usage {
    pub(crate) fn new(events: u64, bytes: u64) -> Self {
        Self { events, bytes }
    }

    pub(crate) fn add(&mut self, events: u64, bytes: u64) {
        self.events += events;
        self.bytes += bytes;
    }

    /// Subtracts; going below zero is an accounting bug (debug assertion).
    pub(crate) fn sub(&mut self, events: u64, bytes: u64) {
        debug_assert!(
            self.events >= events && self.bytes >= bytes,
            "usage below zero: {self:?} - ({events}, {bytes})"
        );
        self.events = self.events.saturating_sub(events);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}
