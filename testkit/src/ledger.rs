//! Accounting for the torture and power-loss suites: what producers sent,
//! what the daemon acknowledged (with the ids it returned), and what the
//! collector received.

use std::collections::{HashMap, HashSet};

/// One event as the collector accepted it.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The producer's marker (`m` in the payload).
    pub marker: String,
    /// The `messageId` the sink stamped: the event's stable id.
    pub id: String,
}

impl Delivered {
    /// The marker and `messageId` of `event` (`<none>` for either that is missing).
    pub fn of(event: &serde_json::Value) -> Delivered {
        let field = |k: &str| {
            event
                .get(k)
                .and_then(|m| m.as_str())
                .unwrap_or("<none>")
                .to_string()
        };
        Delivered {
            marker: field("m"),
            id: field("messageId"),
        }
    }
}

/// What a scenario measured; printed as one line.
#[derive(Default, Debug, Clone)]
pub struct Summary {
    pub kills: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub lost: u64,
    pub invented: u64,
    pub duplicates: u64,
    /// Anything scenario-specific worth printing.
    pub notes: String,
}

/// Producers' side of the books.
#[derive(Default)]
pub struct Ledger {
    /// Every marker a producer put in a request (before sending).
    pub posted: HashSet<String>,
    /// Marker → id, for events in requests answered 202 (or enqueued by a command
    /// that reported success).
    pub acked: HashMap<String, String>,
}

/// The comparison of a ledger with the collector's deliveries.
pub struct Books {
    pub delivered: u64,
    pub lost: Vec<String>,
    pub invented: Vec<String>,
    pub duplicates: u64,
    /// Duplicates that arrived under another id than the first copy (counted in `invented` too).
    pub instances: HashSet<String>,
}

impl Ledger {
    /// Compares with the deliveries: lost = acked and never delivered; invented =
    /// delivered but never posted, or under an id other than the one the daemon
    /// returned, or the same marker under two ids; duplicates = extra copies.
    pub fn books(&self, deliveries: &[Delivered]) -> Books {
        let mut id_of: HashMap<&str, &str> = HashMap::new();
        let mut invented = Vec::new();
        let mut instances = HashSet::new();
        for d in deliveries {
            if let Some((inst, _)) = d.id.rsplit_once('-') {
                instances.insert(inst.to_string());
            }
            if !self.posted.contains(&d.marker) {
                invented.push(format!("{} ({}) was never posted", d.marker, d.id));
                continue;
            }
            if let Some(want) = self.acked.get(&d.marker)
                && want != &d.id
            {
                invented.push(format!(
                    "{} delivered as {} but acknowledged as {want}",
                    d.marker, d.id
                ));
            }
            match id_of.insert(&d.marker, &d.id) {
                Some(prev) if prev != d.id => invented.push(format!(
                    "{} delivered under two ids: {prev} and {}",
                    d.marker, d.id
                )),
                _ => {}
            }
        }
        let lost: Vec<String> = self
            .acked
            .keys()
            .filter(|m| !id_of.contains_key(m.as_str()))
            .cloned()
            .collect();
        Books {
            delivered: id_of.len() as u64,
            lost,
            invented,
            duplicates: (deliveries.len() - id_of.len()) as u64,
            instances,
        }
    }
}

impl Books {
    /// Fills the summary's counts and returns the problems (empty when sound).
    pub fn judge(&self, s: &mut Summary) -> Vec<String> {
        s.delivered = self.delivered;
        s.lost = self.lost.len() as u64;
        s.invented = self.invented.len() as u64;
        s.duplicates = self.duplicates;
        let mut problems = Vec::new();
        if !self.lost.is_empty() {
            let mut l = self.lost.clone();
            l.sort();
            l.truncate(10);
            problems.push(format!(
                "{} acknowledged events never reached the collector, e.g. {l:?}",
                self.lost.len()
            ));
        }
        if !self.invented.is_empty() {
            problems.push(format!(
                "{} invented deliveries, e.g. {:?}",
                self.invented.len(),
                &self.invented[..self.invented.len().min(10)]
            ));
        }
        if self.instances.len() > 1 {
            problems.push(format!(
                "ids from {} store instances {:?}: the instance id must survive restarts",
                self.instances.len(),
                self.instances
            ));
        }
        problems
    }
}
