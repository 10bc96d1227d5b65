//! What a run of the simulation met: the report, and the coverage a long
//! run must reach.

use std::collections::BTreeMap;

/// What a run met, for the report and the coverage requirement.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    pub seeds: u64,
    pub lives: u64,
    pub steps: u64,
    pub crashes: u64,
    pub sled_losses: u64,
    pub flips: u64,
    pub index_damage: u64,
    pub acked: u64,
    pub delivered: u64,
    pub quarantined: u64,
    pub explained: u64,
    /// First deliveries checked for order (README guarantee 8), and those
    /// of them exempt: behind newer ones after an undone deletion.
    pub first_deliveries: u64,
    pub undeleted: u64,
    pub faults: BTreeMap<String, u64>,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        self.seeds += o.seeds;
        self.lives += o.lives;
        self.steps += o.steps;
        self.crashes += o.crashes;
        self.sled_losses += o.sled_losses;
        self.flips += o.flips;
        self.index_damage += o.index_damage;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.quarantined += o.quarantined;
        self.explained += o.explained;
        self.first_deliveries += o.first_deliveries;
        self.undeleted += o.undeleted;
        for (k, v) in &o.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} lives, {} steps, {} crashes, {} sled files lost, {} body bytes flipped, \
             {} index records damaged, {} faults injected, {} events acknowledged, \
             {} delivered, {} quarantined, {} accounted by policy or purge, lost 0, invented 0, \
             {} first deliveries in seq order ({} of them exempt: back after a deletion)",
            self.lives,
            self.steps,
            self.crashes,
            self.sled_losses,
            self.flips,
            self.index_damage,
            self.faults.values().sum::<u64>(),
            self.acked,
            self.delivered,
            self.quarantined,
            self.explained,
            self.first_deliveries,
            self.undeleted
        )
    }

    /// What the run should have met and did not.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (site, _) in crate::plan::SITES {
            let name = crate::plan::site_name(site);
            if self.faults.get(name).copied().unwrap_or(0) == 0 {
                out.push(format!("a fault at {name}"));
            }
        }
        for (what, n) in [
            ("a crash", self.crashes),
            ("a lost sled file", self.sled_losses),
            ("a flipped byte", self.flips),
            ("a damaged index record", self.index_damage),
        ] {
            if n == 0 {
                out.push(what.to_string());
            }
        }
        out
    }
}
