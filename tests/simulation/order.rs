//! README guarantee 8, oldest first per topic, as the oracle checks it.
//!
//! A *first delivery* is the first ledger `L` line that holds an event's
//! token, in any life; every later lease of it (a retry, a release, a
//! crash's redelivery, a replayed dead letter, which keeps its seq) is a
//! redelivery and is not checked. Within one topic and one kind (durable:
//! `enqueue_durable` and batches; buffered: `enqueue`), first deliveries
//! must come in increasing seq order:
//!
//! - within one *epoch* (one queue, from its open to its close: a life, or
//!   the part of it between two `reopen`/`compact` steps), always. Retries
//!   and releases keep their seqs and are redeliveries; a durable event may
//!   overtake a buffered one, which is why the kinds are apart; damage found
//!   by `verify` or at open leaves the intact events in their place.
//! - across epochs, too, except for an event that a deletion may have taken
//!   and an open brought back: a purge that was shown it, or that took more
//!   than it was shown, or an eviction (`drop_oldest` with a ceiling in
//!   reach) or a `max_age` drop, in the epoch of the event delivered before
//!   it or later. A crash, or a close that met a fault, can lose such a
//!   deletion's sled writes and trace (the design errs toward redelivery),
//!   and the event comes back at its seq, behind events already delivered.
//!   Where sled's files were lost since, a rebuild without a trace brings
//!   back a deletion of any earlier epoch.
//!
//! Not exempt: an event that a failed commit round dropped (counted as
//! `storage_error`) and a later open brought back (nothing such a round
//! leaves behind may come back), a durable event that was not visible while
//! newer ones were leased, and the intact neighbours of a damaged entry
//! that a lease found. That lease quarantines the damaged entry and puts the
//! intact ones back as chunks of their own; it used to hand out the chunks
//! it picked after them too, so the neighbours were first delivered after
//! newer events (seed 2022, life 1, topic t0, durable: seq 90 first
//! delivered after seq 100; it replayed only now and then, as the chunks a
//! lease takes depend on the background threads' timing). Fixed: the lease
//! gives those chunks back (`queue/lease.rs`;
//! `engine_scenarios::a_lease_that_finds_damage_hands_out_nothing_newer_before_the_intact_events_it_put_back`).
//! A failure still names such a lease when one lies between the two
//! deliveries.

use std::collections::{BTreeSet, HashMap};

/// A place in the ledgers: (life, line).
pub type At = (u32, usize);
/// One queue's lifetime: (life, incarnation within the life).
pub type Epoch = (u32, u32);

/// Which producer call made an event (the child's `A` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `enqueue_durable` or `enqueue_batch_durable`.
    Durable,
    /// `enqueue`.
    Buffered,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "d" => Some(Kind::Durable),
            "b" => Some(Kind::Buffered),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Durable => "durable",
            Kind::Buffered => "buffered",
        }
    }
}

/// A first delivery.
#[derive(Clone, Debug)]
struct First {
    seq: u64,
    tok: String,
    at: At,
    epoch: Epoch,
}

/// A purge that may have taken events of `topic`: those in `seqs`, or any
/// (`None`: it took more than it was shown).
struct Purged {
    epoch: Epoch,
    topic: String,
    seqs: Option<BTreeSet<u64>>,
}

/// First deliveries of a seed, by topic and kind.
#[derive(Default)]
pub struct Order {
    seed: u64,
    /// The newest first delivery, over all epochs.
    last: HashMap<(String, Kind), First>,
    /// The newest first delivery of the current epoch.
    this_epoch: HashMap<(String, Kind), First>,
    epoch: Epoch,
    /// Lives whose configuration can evict (`drop_oldest` under a ceiling
    /// in reach) or drop past `max_age`.
    dropping_lives: BTreeSet<u32>,
    purges: Vec<Purged>,
    /// Lives before which sled's files were lost.
    sled_lost: BTreeSet<u32>,
    /// Where a lease found damage (the step's quarantine count rose).
    damage_leases: Vec<At>,
    /// The first out-of-order delivery found.
    found: Option<String>,
    /// First deliveries checked.
    pub checked: u64,
    /// First deliveries behind newer ones after a deletion that may have
    /// been undone (exempt).
    pub undeleted: u64,
}

impl Order {
    pub fn new(seed: u64) -> Self {
        Order {
            seed,
            ..Order::default()
        }
    }

    /// Life `life` begins (`sled_lost`: its store lost sled's files first).
    pub fn life_begins(&mut self, life: u32, sled_lost: bool) {
        let cfg = super::plan::config(self.seed, life);
        let evicts = cfg.ceiling.policy == evspool::OverflowPolicy::DropOldest
            && cfg.ceiling.max_events < 1_000_000;
        if evicts || cfg.max_age.is_some() {
            self.dropping_lives.insert(life);
        }
        if sled_lost {
            self.sled_lost.insert(life);
        }
    }

    /// A purge of `topic` in `epoch` was shown `seqs` and took `took` of
    /// them (`u64::MAX`: an error or a crash cut it).
    pub fn purge(&mut self, epoch: Epoch, topic: &str, seqs: &BTreeSet<u64>, took: u64) {
        if took == 0 {
            return;
        }
        let any = took != u64::MAX && took > seqs.len() as u64;
        self.purges.push(Purged {
            epoch,
            topic: topic.to_string(),
            seqs: (!any).then(|| seqs.clone()),
        });
    }

    /// The lease of the step ending at `at` found damage.
    pub fn lease_found_damage(&mut self, at: At) {
        self.damage_leases.push(at);
    }

    /// Whether a deletion may have taken `seq` of `topic` in an epoch from
    /// `from` on, before `to` (an open lies between it and `to`).
    fn undeleted(&self, topic: &str, seq: u64, from: Epoch, to: Epoch) -> bool {
        // A rebuild without sled can undo a deletion whose trace was lost,
        // of any epoch before.
        let from = if self.sled_lost.iter().any(|&l| from.0 < l && l <= to.0) {
            (0, 0)
        } else {
            from
        };
        let dropping = self
            .dropping_lives
            .range(from.0..=to.0)
            .any(|&l| from.max((l, 0)) < to);
        dropping
            || self.purges.iter().any(|p| {
                p.topic == topic
                    && from <= p.epoch
                    && p.epoch < to
                    && p.seqs.as_ref().is_none_or(|s| s.contains(&seq))
            })
    }

    /// The first delivery of `tok` (`seq`, of `topic` and `kind`), in the
    /// lease at `at` of the queue of `epoch`; `history` is what the ledgers
    /// said of it.
    #[allow(clippy::too_many_arguments)]
    pub fn first_delivery(
        &mut self,
        at: At,
        epoch: Epoch,
        topic: &str,
        kind: Kind,
        seq: u64,
        tok: &str,
        history: &[String],
    ) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.this_epoch.clear();
        }
        self.checked += 1;
        let key = (topic.to_string(), kind);
        let first = First {
            seq,
            tok: tok.to_string(),
            at,
            epoch,
        };
        let behind = |f: Option<&First>| f.filter(|f| f.seq >= seq).cloned();
        if let Some(before) = behind(self.this_epoch.get(&key)) {
            self.out_of_order(&first, &before, topic, kind, history);
            return;
        }
        if let Some(before) = behind(self.last.get(&key)) {
            if self.undeleted(topic, seq, before.epoch, epoch) {
                self.undeleted += 1;
            } else {
                self.out_of_order(&first, &before, topic, kind, history);
            }
            self.this_epoch.insert(key, first);
            return;
        }
        self.this_epoch.insert(key.clone(), first.clone());
        self.last.insert(key, first);
    }

    fn out_of_order(
        &mut self,
        now: &First,
        before: &First,
        topic: &str,
        kind: Kind,
        history: &[String],
    ) {
        if self.found.is_some() {
            return;
        }
        let damage = self
            .damage_leases
            .iter()
            .find(|d| before.at < **d && **d < now.at)
            .map_or(String::new(), |(life, line)| {
                format!(
                    "\n  note: the lease of the step ending at line {} of life {life} found \
                     a damaged entry; it puts the intact events of that chunk back and must \
                     give back the chunks it picked after it (`queue/lease.rs`)",
                    line + 1
                )
            });
        let place = |f: &First| {
            format!(
                "first leased at line {} of the ledger of life {} (queue {} of that life)",
                f.at.1 + 1,
                f.at.0,
                f.epoch.1 + 1
            )
        };
        self.found = Some(format!(
            "oldest first (README guarantee 8): seed {}, life {}, topic {topic}, {} events: \
             seq {} first delivered after seq {}\n  seq {} ({}): {}\n  seq {} ({}): {}{damage}\n  \
             {}: {}",
            self.seed,
            now.at.0,
            kind.name(),
            now.seq,
            before.seq,
            before.seq,
            before.tok,
            place(before),
            now.seq,
            now.tok,
            place(now),
            now.tok,
            history.join("; ")
        ));
    }

    /// The first out-of-order delivery, if any.
    pub fn verdict(&self) -> Result<(), String> {
        match &self.found {
            Some(msg) => Err(msg.clone()),
            None => Ok(()),
        }
    }
}
