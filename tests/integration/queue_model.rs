//! Model-based property test of the queue engine.
//!
//! Random sequences of enqueues, leases, acks, nacks, partial settlements,
//! releases, lease expiry, syncs and restarts run against a real queue on a
//! temp dir and, side by side, against a plain in-memory model: per topic an
//! ordered map of live events (seq -> payload, attempts) and one of dead
//! letters. After every step the queue's accounting, dead letters and leases
//! must equal the model; every leased event must be one the model holds (no
//! invention), with its bytes untouched; first deliveries of a topic come in
//! seq order. At the end everything still live is drained and must come out.

use evspool::{Lease, Queue, QueueConfig, QueueError, Settlement};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const TOPICS: [&str; 2] = ["track", "engage"];

#[derive(Clone, Debug)]
enum Op {
    /// A buffered enqueue of a payload padded by `pad` bytes.
    Enqueue {
        topic: usize,
        pad: usize,
    },
    /// A durable enqueue.
    EnqueueDurable {
        topic: usize,
        pad: usize,
    },
    /// A lease of up to `max` events, after a sync when `sync_first`.
    Lease {
        topic: usize,
        max: usize,
        sync_first: bool,
    },
    Ack(Index),
    /// A nack with no delay.
    Nack(Index),
    /// A per-event settlement: each event is delivered (0), dead (1) or retried (2),
    /// by cycling through `marks`.
    Settle {
        lease: Index,
        marks: Vec<u8>,
    },
    Release(Index),
    Expire,
    /// Close and reopen; outstanding leases are forgotten or dropped after the close.
    Restart {
        forget: bool,
    },
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..48usize).prop_map(|(topic, pad)| Op::Enqueue { topic, pad }),
        2 => (0..2usize, 0..48usize).prop_map(|(topic, pad)| Op::EnqueueDurable { topic, pad }),
        5 => (0..2usize, 1..9usize, any::<bool>())
            .prop_map(|(topic, max, sync_first)| Op::Lease { topic, max, sync_first }),
        3 => any::<Index>().prop_map(Op::Ack),
        2 => any::<Index>().prop_map(Op::Nack),
        2 => (any::<Index>(), proptest::collection::vec(0u8..3, 1..6))
            .prop_map(|(lease, marks)| Op::Settle { lease, marks }),
        1 => any::<Index>().prop_map(Op::Release),
        1 => Just(Op::Expire),
        1 => any::<bool>().prop_map(|forget| Op::Restart { forget }),
        1 => Just(Op::Sync),
    ]
}

#[derive(Debug, Clone)]
struct LiveEvent {
    payload: Vec<u8>,
    attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct DeadModel {
    payload: Vec<u8>,
    reason: String,
    attempts: u32,
}

#[derive(Default)]
struct TopicModel {
    live: BTreeMap<u64, LiveEvent>,
    dead: BTreeMap<u64, DeadModel>,
    /// Seqs handed out at least once (the first delivery is checked for FIFO order).
    delivered: BTreeSet<u64>,
    /// The last first delivery of a durable and of a buffered event: each
    /// kind is delivered in seq order (a durable event is indexed at once, so
    /// it may overtake buffered ones still waiting for their commit round).
    last_first_delivery: [u64; 2],
}

struct ModelLease {
    lease: Option<Lease>,
    topic: usize,
    seqs: Vec<u64>,
    /// Released by `expire_all_leases`; settling it must fail with `LeaseLost`.
    expired: bool,
}

struct Model {
    topics: [TopicModel; 2],
    leases: Vec<ModelLease>,
    /// The highest seq the queue ever returned (seqs never repeat, even across restarts).
    last_seq: u64,
    /// Every live event with a seq at or below this is known to be committed.
    committed_upto: u64,
    /// Events whose durable enqueue returned: written, leaseable at once.
    durable: BTreeSet<u64>,
    counter: u64,
    chunk_max_events: usize,
}

impl Model {
    /// Whether the event is known to be leaseable (it may be earlier).
    fn committed(&self, seq: u64) -> bool {
        seq <= self.committed_upto || self.durable.contains(&seq)
    }

    fn leased(&self, topic: usize) -> BTreeSet<u64> {
        self.leases
            .iter()
            .filter(|l| l.topic == topic && !l.expired)
            .flat_map(|l| l.seqs.iter().copied())
            .collect()
    }

    fn available(&self, topic: usize) -> Vec<u64> {
        let leased = self.leased(topic);
        self.topics[topic]
            .live
            .keys()
            .copied()
            .filter(|s| !leased.contains(s))
            .collect()
    }

    fn payload(&mut self, topic: usize, pad: usize) -> Vec<u8> {
        self.counter += 1;
        let mut p = format!("{}-{}-", TOPICS[topic], self.counter).into_bytes();
        p.extend(std::iter::repeat_n(b'x', pad));
        p
    }
}

fn config(chunk_max_events: usize, commit_ms: u64) -> QueueConfig {
    QueueConfig {
        chunk_max_events,
        commit_interval: Duration::from_millis(commit_ms),
        flush_interval: Duration::from_millis(50),
        cache_capacity: bytesize::ByteSize::mib(1),
        ..QueueConfig::default()
    }
}

fn open(dir: &Path, cfg: &QueueConfig) -> Queue {
    Queue::open(dir, cfg.clone()).expect("the store reopens")
}

/// Compares the queue's accounting, dead letters and instance id with the model.
fn check(q: &Queue, m: &Model, instance: &str) {
    assert_eq!(q.instance_id(), instance, "the instance id never changes");
    let stats = q.stats();
    let live_events: u64 = m.topics.iter().map(|t| t.live.len() as u64).sum();
    let live_bytes: u64 = m
        .topics
        .iter()
        .flat_map(|t| t.live.values())
        .map(|e| e.payload.len() as u64)
        .sum();
    assert_eq!(
        (stats.total.events, stats.total.bytes),
        (live_events, live_bytes),
        "stats().total equals the model's live events"
    );
    for (i, name) in TOPICS.iter().enumerate() {
        let t = &m.topics[i];
        let ts = stats.topics.get(*name).cloned().unwrap_or_default();
        let events =
            ts.ready.events + ts.retrying.events + ts.leased.events + ts.uncommitted.events;
        let bytes = ts.ready.bytes + ts.retrying.bytes + ts.leased.bytes + ts.uncommitted.bytes;
        let model_bytes: u64 = t.live.values().map(|e| e.payload.len() as u64).sum();
        assert_eq!(
            (events, bytes),
            (t.live.len() as u64, model_bytes),
            "{name}: ready + retrying + leased + uncommitted equals the live events ({ts:?})"
        );
        // Nacks use no delay, so nothing waits out a backoff.
        assert_eq!(ts.retrying.events, 0, "{name}: nothing is delayed");
        let leased = m.leased(i);
        let leased_bytes: u64 = leased.iter().map(|s| t.live[s].payload.len() as u64).sum();
        assert_eq!(
            (ts.leased.events, ts.leased.bytes),
            (leased.len() as u64, leased_bytes),
            "{name}: leased events are exactly those of outstanding leases"
        );
        let dead_bytes: u64 = t.dead.values().map(|d| d.payload.len() as u64).sum();
        assert_eq!(
            (ts.dead.events, ts.dead.bytes),
            (t.dead.len() as u64, dead_bytes),
            "{name}: dead letter accounting equals the model"
        );
        let dead: BTreeMap<u64, DeadModel> = q
            .dead_letters(name, 0, 100_000)
            .unwrap()
            .into_iter()
            .map(|d| {
                assert_eq!(d.id.instance(), instance);
                (
                    d.id.seq(),
                    DeadModel {
                        payload: d.payload.to_vec(),
                        reason: d.reason,
                        attempts: d.attempts,
                    },
                )
            })
            .collect();
        assert_eq!(dead, t.dead, "{name}: the dead letters are the model's");
    }
}

/// Checks a fresh lease against the model and records it.
fn take_lease(m: &mut Model, topic: usize, max: usize, lease: Option<Lease>, synced: bool) {
    let available = m.available(topic);
    let Some(lease) = lease else {
        // Committed events that nobody holds must be handed out.
        let committed: Vec<&u64> = available
            .iter()
            .filter(|s| synced || m.committed(**s))
            .collect();
        assert!(
            committed.is_empty(),
            "{}: lease returned nothing while committed events {committed:?} were available",
            TOPICS[topic]
        );
        return;
    };
    assert_eq!(lease.topic(), TOPICS[topic]);
    let seqs: Vec<u64> = lease.events().iter().map(|e| e.seq()).collect();
    assert!(!seqs.is_empty(), "a lease handed out is never empty");
    assert!(
        seqs.len() <= max.max(m.chunk_max_events),
        "a lease holds at most max events, or one chunk: {} > {max}",
        seqs.len()
    );
    // Whole chunks from the head: no leaseable event lies below the lease's
    // first (buffered events may still wait for their commit round; a chunk
    // of durable appends can span the seqs of buffered events committed after
    // it, so a lease is ordered by chunk, each kind in seq order).
    let first = *seqs.iter().min().unwrap();
    let skipped: Vec<u64> = available
        .iter()
        .copied()
        .filter(|s| *s < first && m.committed(*s))
        .collect();
    assert!(
        skipped.is_empty(),
        "{}: the lease {seqs:?} is not the head of the leaseable events: it skips {skipped:?}",
        TOPICS[topic]
    );
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seqs.len(),
        "{seqs:?}: an event twice in one lease"
    );
    assert!(
        seqs.iter().all(|s| available.contains(s)),
        "{}: the lease {seqs:?} holds an event not available",
        TOPICS[topic]
    );
    let t = &mut m.topics[topic];
    for e in lease.events() {
        let live = t
            .live
            .get(&e.seq())
            .unwrap_or_else(|| panic!("seq {} was invented or already gone", e.seq()));
        assert_eq!(
            e.payload.as_ref(),
            live.payload.as_slice(),
            "payload bytes untouched"
        );
        assert_eq!(e.attempts, live.attempts, "seq {} attempts", e.seq());
        assert!(
            e.id.to_string().len() <= 36,
            "ids fit Mixpanel's $insert_id"
        );
        if t.delivered.insert(e.seq()) {
            let kind = usize::from(m.durable.contains(&e.seq()));
            assert!(
                e.seq() > t.last_first_delivery[kind],
                "{}: first delivery of seq {} after seq {}: not FIFO",
                TOPICS[topic],
                e.seq(),
                t.last_first_delivery[kind]
            );
            t.last_first_delivery[kind] = e.seq();
        }
    }
    m.leases.push(ModelLease {
        lease: Some(lease),
        topic,
        seqs,
        expired: false,
    });
}

/// Removes the lease picked by `idx` from the model, if there is one.
fn pick(m: &mut Model, idx: &Index) -> Option<ModelLease> {
    if m.leases.is_empty() {
        return None;
    }
    let i = idx.index(m.leases.len());
    Some(m.leases.remove(i))
}

fn enqueued_seq(m: &mut Model, topic: usize, payload: Vec<u8>, out: evspool::Enqueued) -> u64 {
    let id = out
        .id()
        .expect("no ceiling in this test: every event is accepted");
    let seq = id.seq();
    assert!(
        seq > m.last_seq,
        "seqs increase and never repeat: {seq} after {}",
        m.last_seq
    );
    m.last_seq = seq;
    m.topics[topic].live.insert(
        seq,
        LiveEvent {
            payload,
            attempts: 0,
        },
    );
    seq
}

async fn step(slot: &mut Option<Queue>, m: &mut Model, op: &Op, dir: &Path, cfg: &QueueConfig) {
    let q = slot.as_ref().expect("the queue is open");
    match op {
        Op::Enqueue { topic, pad } => {
            let payload = m.payload(*topic, *pad);
            let out = q.enqueue(TOPICS[*topic], payload.clone()).unwrap();
            enqueued_seq(m, *topic, payload, out);
        }
        Op::EnqueueDurable { topic, pad } => {
            let payload = m.payload(*topic, *pad);
            let out = q
                .enqueue_durable(TOPICS[*topic], payload.clone())
                .await
                .unwrap();
            let seq = enqueued_seq(m, *topic, payload, out);
            // The durable event is written: leaseable now, never "uncommitted".
            m.durable.insert(seq);
            for (i, name) in TOPICS.iter().enumerate() {
                let buffered = m.topics[i]
                    .live
                    .keys()
                    .filter(|s| !m.committed(**s))
                    .count() as u64;
                let r = q.readiness(name);
                assert!(
                    r.uncommitted_events <= buffered,
                    "{name} after durable: {} uncommitted, at most {buffered} buffered events may be",
                    r.uncommitted_events
                );
            }
        }
        Op::Lease {
            topic,
            max,
            sync_first,
        } => {
            if *sync_first {
                q.sync().await.unwrap();
                m.committed_upto = m.last_seq;
            }
            let lease = q.lease(TOPICS[*topic], *max).unwrap();
            take_lease(m, *topic, *max, lease, *sync_first);
        }
        Op::Ack(idx) => {
            let Some(mut l) = pick(m, idx) else { return };
            let res = q.ack(l.lease.take().unwrap());
            if l.expired {
                assert!(matches!(res, Err(QueueError::LeaseLost { .. })), "{res:?}");
                return;
            }
            let report = res.unwrap();
            assert_eq!(report.delivered, l.seqs.len() as u64);
            assert_eq!((report.dead, report.retried), (0, 0));
            for s in &l.seqs {
                m.topics[l.topic].live.remove(s);
            }
        }
        Op::Nack(idx) => {
            let Some(mut l) = pick(m, idx) else { return };
            let res = q.nack(l.lease.take().unwrap(), Duration::ZERO, "http 503");
            if l.expired {
                assert!(matches!(res, Err(QueueError::LeaseLost { .. })), "{res:?}");
                return;
            }
            let report = res.unwrap();
            assert_eq!(report.retried, l.seqs.len() as u64);
            assert_eq!((report.delivered, report.dead), (0, 0));
            for s in &l.seqs {
                m.topics[l.topic].live.get_mut(s).unwrap().attempts += 1;
            }
        }
        Op::Settle { lease, marks } => {
            let Some(mut l) = pick(m, lease) else { return };
            let mut s = Settlement::delivered().retry_after(Duration::ZERO, "partial");
            let mut want = (0u64, 0u64, 0u64);
            for (i, seq) in l.seqs.iter().enumerate() {
                match marks[i % marks.len()] {
                    0 => want.0 += 1,
                    1 => {
                        s = s.dead(*seq, format!("bad field in {seq}"));
                        want.1 += 1;
                    }
                    _ => {
                        s = s.retry(*seq);
                        want.2 += 1;
                    }
                }
            }
            let res = q.settle(l.lease.take().unwrap(), s);
            if l.expired {
                assert!(matches!(res, Err(QueueError::LeaseLost { .. })), "{res:?}");
                return;
            }
            let report = res.unwrap();
            assert_eq!((report.delivered, report.dead, report.retried), want);
            let t = &mut m.topics[l.topic];
            for (i, seq) in l.seqs.iter().enumerate() {
                match marks[i % marks.len()] {
                    0 => {
                        t.live.remove(seq);
                    }
                    1 => {
                        let e = t.live.remove(seq).unwrap();
                        t.dead.insert(
                            *seq,
                            DeadModel {
                                payload: e.payload,
                                reason: format!("bad field in {seq}"),
                                attempts: e.attempts + 1,
                            },
                        );
                    }
                    _ => t.live.get_mut(seq).unwrap().attempts += 1,
                }
            }
        }
        Op::Release(idx) => {
            let Some(mut l) = pick(m, idx) else { return };
            q.release(l.lease.take().unwrap());
        }
        Op::Expire => {
            let outstanding = m.leases.iter().filter(|l| !l.expired).count();
            assert_eq!(
                q.expire_all_leases(),
                outstanding,
                "every outstanding lease expires"
            );
            for l in &mut m.leases {
                l.expired = true;
            }
        }
        Op::Restart { forget } => {
            let leases: Vec<Lease> = m
                .leases
                .drain(..)
                .filter_map(|mut l| l.lease.take())
                .collect();
            let leftover = if *forget {
                for l in leases {
                    std::mem::forget(l);
                }
                Vec::new()
            } else {
                leases
            };
            q.close();
            // One process per directory: the old handle goes before the reopen.
            drop(slot.take());
            *slot = Some(open(dir, cfg));
            // Dropping leases of a closed queue touches nothing.
            drop(leftover);
            // close() committed everything; the reopened store holds every live event.
            m.committed_upto = m.last_seq;
        }
        Op::Sync => {
            q.sync().await.unwrap();
            m.committed_upto = m.last_seq;
            for (i, name) in TOPICS.iter().enumerate() {
                assert_eq!(q.readiness(name).uncommitted_events, 0, "{name} after sync");
                // Every live event is committed now and can be read in place.
                let peeked = q.peek(name, 0, 100_000).unwrap();
                // By chunk, each kind in seq order (see `take_lease`): compared as sets.
                let mut seen: Vec<(u64, &[u8], bool)> = peeked
                    .iter()
                    .map(|p| (p.event.seq(), p.event.payload.as_ref(), p.leased))
                    .collect();
                seen.sort_by_key(|(s, _, _)| *s);
                let leased = m.leased(i);
                let want: Vec<(u64, &[u8], bool)> = m.topics[i]
                    .live
                    .iter()
                    .map(|(s, e)| (*s, e.payload.as_slice(), leased.contains(s)))
                    .collect();
                assert_eq!(seen, want, "{name}: peek shows every live event");
            }
        }
    }
}

/// Syncs, drops every lease, then leases and acks until nothing is left.
async fn drain(q: &Queue, m: &mut Model) {
    q.sync().await.unwrap();
    for l in m.leases.drain(..) {
        if let Some(lease) = l.lease {
            q.release(lease);
        }
    }
    for (i, name) in TOPICS.iter().enumerate() {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        while let Some(lease) = q.lease(name, 7).unwrap() {
            out.extend(lease.events().iter().map(|e| (e.seq(), e.payload.to_vec())));
            q.ack(lease).unwrap();
        }
        let want: Vec<(u64, Vec<u8>)> = m.topics[i]
            .live
            .iter()
            .map(|(s, e)| (*s, e.payload.clone()))
            .collect();
        // Redeliveries come by chunk (first deliveries were checked for
        // order in `take_lease`): compared as sets.
        out.sort_by_key(|(s, _)| *s);
        assert_eq!(out, want, "{name}: every unacked event comes out, once");
        m.topics[i].live.clear();
    }
    assert_eq!(q.stats().total.events, 0);
}

fn run(ops: Vec<Op>, chunk_max_events: usize, commit_ms: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let cfg = config(chunk_max_events, commit_ms);
        let mut slot = Some(open(&store, &cfg));
        let instance = slot.as_ref().unwrap().instance_id().to_string();
        let mut m = Model {
            topics: Default::default(),
            leases: Vec::new(),
            last_seq: 0,
            committed_upto: 0,
            durable: BTreeSet::new(),
            counter: 0,
            chunk_max_events,
        };
        for op in &ops {
            step(&mut slot, &mut m, op, &store, &cfg).await;
            check(slot.as_ref().unwrap(), &m, &instance);
        }
        let q = slot.take().unwrap();
        drain(&q, &mut m).await;
        check(&q, &m, &instance);
        q.close();
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_queue_behaves_like_a_fifo_model_across_leases_settlements_and_restarts(
        ops in proptest::collection::vec(op(), 10..60),
        chunk_max_events in 3..6usize,
        // Mostly a committer that runs between steps; sometimes one that only
        // commits when a chunk fills or someone syncs.
        commit_ms in prop_oneof![4 => 1..20u64, 1 => Just(60_000u64)],
    ) {
        run(ops, chunk_max_events, commit_ms);
    }
}
