//! The eight scenarios the review of format 3 reproduced (issue 20), each as
//! a test: damage of one index record or one body entry, running out of
//! descriptors between a write and its `fdatasync`, a durable call racing
//! `close`, a rotation whose new file cannot be made, and rebuilds without
//! sled after replays and deletions.
//!
//! The tests change process-wide state (fail points, the soft
//! `RLIMIT_NOFILE`), so they live in their own binary and take turns.

use evspool::{Ceiling, OverflowPolicy, Queue, QueueConfig, QueueError, Settlement};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the turn and a fail-point scenario for one test.
struct Turn {
    _scenario: fail::FailScenario<'static>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn turn() -> Turn {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Turn {
        _scenario: fail::FailScenario::setup(),
        _serial: serial,
    }
}

const TOPIC: &str = "t";

fn config() -> QueueConfig {
    QueueConfig {
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn payload(i: u64) -> String {
    format!("{{\"n\":{i}}}")
}

/// Every queued event of `topic` (seq → payload), by leasing everything and
/// releasing it; panics if a seq is handed out twice.
fn queued(q: &Queue, topic: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut leases = Vec::new();
    while let Some(l) = q.lease(topic, 1000).unwrap() {
        for e in l.events() {
            let p = String::from_utf8(e.payload.to_vec()).unwrap();
            assert!(
                out.insert(e.seq(), p).is_none(),
                "seq {} handed out twice",
                e.seq()
            );
        }
        leases.push(l);
    }
    for l in leases {
        q.release(l);
    }
    out
}

/// One entry of a body file: its offset, first seq and record length.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    seq: u64,
    len: u64,
}

/// The entries of a body file (40-byte file header, 16-byte entry headers).
fn entries(path: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 40usize;
    while at + 16 <= bytes.len() {
        let seq = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        if len == 0 || at + 16 + len > bytes.len() {
            break;
        }
        out.push(Entry {
            offset: at as u64,
            seq,
            len: len as u64,
        });
        at += 16 + len;
    }
    out
}

fn body_file(dir: &Path, topic: &str, generation: u32) -> PathBuf {
    dir.join("bodies")
        .join(topic)
        .join(format!("{generation}.seg"))
}

fn generations(dir: &Path, topic: &str) -> Vec<u32> {
    let mut gens: Vec<u32> = std::fs::read_dir(dir.join("bodies").join(topic))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()
        })
        .collect();
    gens.sort_unstable();
    gens
}

/// Flips one byte inside the record of the entry whose first seq is `seq`.
fn damage_entry(dir: &Path, topic: &str, seq: u64) {
    for g in generations(dir, topic) {
        let path = body_file(dir, topic, g);
        if let Some(e) = entries(&path).into_iter().find(|e| e.seq == seq) {
            let mut bytes = std::fs::read(&path).unwrap();
            let at = (e.offset + 16 + e.len / 2) as usize;
            bytes[at] ^= 0x5a;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("no entry starts with seq {seq}");
}

fn lose_sled(dir: &Path) {
    std::fs::remove_dir_all(dir.join("db")).unwrap();
}

/// Opens sled's database of a closed store directly.
fn sled_db(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir.join("db"))
        .segment_size(4 * 1024 * 1024)
        .open()
        .unwrap()
}

fn index_key(topic: &str, seq: u64) -> Vec<u8> {
    let mut k = topic.as_bytes().to_vec();
    k.push(0);
    k.push(b'I');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Ten durable calls, each its own entry, indexed as one coalesced chunk.
fn ten_durable_events(q: &Queue, rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        for i in 1..=10u64 {
            let id = q.enqueue_durable(TOPIC, payload(i)).await.unwrap();
            assert_eq!(id.id().unwrap().seq(), i);
        }
        q.sync().await.unwrap();
    });
}

/// Scenario 1: the index record of a chunk coalesced from ten durable
/// entries is damaged; open must bring back all ten events, not one.
#[test]
fn a_damaged_index_record_of_a_coalesced_chunk_is_repaired_with_every_entry_of_its_span() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        ten_durable_events(&q, &rt);
        q.close();
    }
    {
        let db = sled_db(dir.path());
        let index = db.open_tree("index").unwrap();
        let key = index_key(TOPIC, 1);
        let mut rec = index.get(&key).unwrap().expect("one chunk, key 1").to_vec();
        let mid = rec.len() / 2;
        rec[mid] ^= 0xff;
        index.insert(&key, rec).unwrap();
        assert_eq!(
            index.scan_prefix(b"t\0I").count(),
            1,
            "the ten entries are indexed as one chunk"
        );
        db.flush().unwrap();
    }
    let q = Queue::open(dir.path(), config()).unwrap();
    let got = queued(&q, TOPIC);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "every event of the damaged record's span"
    );
    assert_eq!(q.stats().total.events, 10);
    assert!(!q.verify().unwrap().drifted());
    q.close();
    // And the repair was persisted whole: a second open sees the same.
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(queued(&q, TOPIC).len(), 10);
}

/// Scenario 3: one flipped byte in seq 5's entry costs seq 5 only; lease
/// delivers the nine intact entries of the same chunk.
#[test]
fn one_damaged_entry_of_a_coalesced_chunk_costs_only_its_own_events_at_lease() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        ten_durable_events(&q, &rt);
        q.close();
    }
    damage_entry(dir.path(), TOPIC, 5);
    let q = Queue::open(dir.path(), config()).unwrap();
    let mut delivered = BTreeSet::new();
    while let Some(l) = q.lease(TOPIC, 50).unwrap() {
        delivered.extend(l.events().iter().map(|e| e.seq()));
        q.ack(l).unwrap();
    }
    let want: BTreeSet<u64> = (1..=10).filter(|s| *s != 5).collect();
    assert_eq!(delivered, want, "the nine intact events are delivered");
    let stats = q.stats();
    assert_eq!(stats.quarantined_records, 1, "the damaged entry, once");
    assert_eq!(stats.total.events, 0);
    assert!(!q.verify().unwrap().drifted());
}

/// Scenario 3, through `verify`: the damaged entry is quarantined, the nine
/// others stay queued.
#[test]
fn verify_quarantines_only_the_damaged_entry_of_a_coalesced_chunk() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        ten_durable_events(&q, &rt);
        q.close();
    }
    damage_entry(dir.path(), TOPIC, 5);
    let q = Queue::open(dir.path(), config()).unwrap();
    let report = q.verify().unwrap();
    assert_eq!(report.quarantined, 1);
    assert!(!report.drifted(), "{report:?}");
    let got = queued(&q, TOPIC);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=10).filter(|s| *s != 5).collect::<Vec<_>>()
    );
    assert_eq!(q.stats().total.events, 9);
}

/// The soft descriptor limit, lowered for a scope.
struct FdLimit {
    soft: u64,
}

impl FdLimit {
    fn get() -> (u64, u64) {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) },
            0,
            "getrlimit"
        );
        (r.rlim_cur, r.rlim_max)
    }

    fn set(soft: u64) {
        let (_, hard) = Self::get();
        let r = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given.
        assert_eq!(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) },
            0,
            "setrlimit"
        );
    }

    /// Lowers the soft limit so that no more descriptors can be opened, even
    /// after `slack` are closed.
    fn exhaust(slack: u64) -> FdLimit {
        let (soft, _) = Self::get();
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        Self::set(open.saturating_sub(slack + 1));
        FdLimit { soft }
    }
}

impl Drop for FdLimit {
    fn drop(&mut self) {
        Self::set(self.soft);
    }
}

/// A fail point that stops the first thread reaching it until opened.
struct Gate {
    name: &'static str,
    state: Arc<(Mutex<(usize, bool)>, Condvar)>,
}

impl Gate {
    fn arm(name: &'static str) -> Gate {
        let state: Arc<(Mutex<(usize, bool)>, Condvar)> = Arc::default();
        let s = state.clone();
        fail::cfg_callback(name, move || {
            let (m, cv) = &*s;
            let mut g = m.lock().unwrap();
            g.0 += 1;
            cv.notify_all();
            if g.0 > 1 {
                return;
            }
            while !g.1 {
                g = cv.wait(g).unwrap();
            }
        })
        .unwrap();
        Gate { name, state }
    }

    /// Waits until `n` threads reached the gate.
    fn wait_hits(&self, n: usize) {
        let (m, cv) = &*self.state;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = m.lock().unwrap();
        while g.0 < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} reached {} times, not {n}",
                self.name,
                g.0
            );
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    fn open(&self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap().1 = true;
        cv.notify_all();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
        fail::remove(self.name);
    }
}

/// Scenario 2: the descriptor budget closed a generation's descriptor
/// between its write and its sync, and reopening it for the `fdatasync` fails
/// with EMFILE. That is transient: the producer's sync is retried and it gets
/// `Ok` once descriptors are back, the store does not fail closed, later
/// durable calls on the topic succeed, and the event is leasable.
#[test]
fn running_out_of_descriptors_before_a_sync_is_transient_for_the_producer_topic_and_store() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        fsync: true,
        max_open_files: 4,
        ..config()
    };
    let q = Queue::open(dir.path(), cfg).unwrap();
    let gate = Gate::arm("queue::sync::before_sync");
    let producer = {
        let q = q.clone();
        rt.spawn(async move { q.enqueue_durable(TOPIC, payload(1)).await })
    };
    gate.wait_hits(1);
    // Other topics' files push the first topic's idle descriptor out.
    for t in ["b", "c", "d", "e", "f", "g"] {
        let _ = q.enqueue(t, payload(0)).unwrap();
    }
    rt.block_on(q.sync()).unwrap();
    assert!(q.stats().open_body_files <= 4);
    {
        let _limit = FdLimit::exhaust(8);
        gate.open();
        // The syncer tries (and fails) at least once while descriptors are out.
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), producer).await })
        .expect("the producer returns once descriptors are back")
        .unwrap();
    let id = out.expect("a transient failure is retried, not reported as fatal");
    assert_eq!(id.id().unwrap().seq(), 1);
    assert_eq!(q.stats().failed_closed, None, "the store stays open");
    let later = rt
        .block_on(q.enqueue_durable(TOPIC, payload(2)))
        .expect("later durable calls on the topic succeed");
    let later = later.id().unwrap().seq();
    rt.block_on(q.sync()).unwrap();
    let got = queued(&q, TOPIC);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, later]);
}

/// Scenario 2 (c): a commit round whose sync failed for lack of descriptors
/// leaves its buffered events unsynced; a later `sync` must not return `Ok`
/// before they are synced and leasable.
#[test]
fn sync_never_returns_ok_for_buffered_events_a_failed_sync_left_unsynced() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        fsync: true,
        max_open_files: 4,
        ..config()
    };
    let q = Queue::open(dir.path(), cfg).unwrap();
    let _ = q.enqueue(TOPIC, payload(1)).unwrap();
    // The round writes topic t and stops before syncing it.
    let gate = Gate::arm("queue::commit::before_sync");
    let first = {
        let q = q.clone();
        rt.spawn(async move { q.sync().await })
    };
    gate.wait_hits(1);
    // Meanwhile other topics' new files push t's idle descriptor out.
    rt.block_on(async {
        for t in ["u", "v", "w", "x", "y", "z"] {
            let _ = q.enqueue_durable(t, payload(0)).await.unwrap();
        }
    });
    assert!(q.stats().open_body_files <= 4);
    {
        let _limit = FdLimit::exhaust(8);
        gate.open();
        std::thread::sleep(Duration::from_millis(300));
    }
    let first = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), first).await })
        .expect("sync returns")
        .unwrap();
    // Whatever the first sync said, a later Ok means every buffered event
    // before it is synced and leasable.
    let second =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), q.sync()).await });
    match (first, second) {
        (_, Ok(Ok(()))) => {
            assert_eq!(
                queued(&q, TOPIC).keys().copied().collect::<Vec<_>>(),
                vec![1],
                "sync returned Ok: the event is leasable"
            );
        }
        (first, second) => panic!("sync did not recover: first {first:?}, second {second:?}"),
    }
    assert_eq!(q.stats().failed_closed, None);
}

/// Scenario 4: a durable producer waiting for room under `block` when
/// `close()` runs ends `Closed`, never `Ok`, and nothing reaches a body file
/// after `close()` returned.
#[test]
fn a_durable_call_waiting_for_room_ends_closed_when_the_queue_closes() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        ceiling: Ceiling {
            max_events: 2,
            policy: OverflowPolicy::Block,
            block_timeout: Duration::from_secs(30),
            ..Ceiling::default()
        },
        commit_interval: Duration::from_millis(10),
        ..config()
    };
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    rt.block_on(async {
        for i in 1..=2 {
            let _ = q.enqueue_durable(TOPIC, payload(i)).await.unwrap();
        }
        q.sync().await.unwrap();
    });
    let lease = q.lease(TOPIC, 10).unwrap().unwrap();
    let waiting = {
        let q = q.clone();
        rt.spawn(async move { q.enqueue_durable(TOPIC, payload(3)).await })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiting.is_finished(), "the producer waits for room");
    q.close();
    let sizes = |d: &Path| -> Vec<(u32, u64)> {
        generations(d, TOPIC)
            .into_iter()
            .map(|g| (g, std::fs::metadata(body_file(d, TOPIC, g)).unwrap().len()))
            .collect()
    };
    let at_close = sizes(dir.path());
    // Room appears after close (a late ack): the producer must not write.
    let acked = q.ack(lease);
    let out = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), waiting).await })
        .expect("the waiting producer returns")
        .unwrap();
    assert!(
        matches!(out, Err(QueueError::Closed)),
        "a call in flight at close ends Closed: {out:?}"
    );
    assert_eq!(sizes(dir.path()), at_close, "no byte after close");
    assert!(
        matches!(acked, Err(QueueError::Closed)),
        "settling after close: {acked:?}"
    );
    // The reopened store holds the two events, each once, and a new id.
    let q2 = Queue::open(dir.path(), cfg).unwrap();
    let got = queued(&q2, TOPIC);
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        vec![(1, payload(1)), (2, payload(2))]
    );
}

/// Scenario 5: a rotation syncs the old generation, then cannot create the
/// new file (EMFILE). A producer whose entry that sync covered is woken with
/// `Ok`, and its event is delivered.
#[test]
fn a_producer_whose_entry_a_failed_rotation_synced_is_woken() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        fsync: true,
        max_open_files: 4,
        ..config()
    };
    let q = Queue::open(dir.path(), cfg).unwrap();
    // Generation 1 exists (its header synced) before the race.
    let _ = rt.block_on(q.enqueue_durable(TOPIC, payload(1))).unwrap();
    let gate = Gate::arm("queue::sync::before_sync");
    let first = {
        let q = q.clone();
        rt.spawn(async move { q.enqueue_durable(TOPIC, payload(2)).await })
    };
    gate.wait_hits(1);
    let second = {
        let _limit = FdLimit::exhaust(8);
        fail::cfg("queue::generation::force_rotate", "1*return").unwrap();
        let second = rt.block_on(q.enqueue_durable(TOPIC, payload(3)));
        fail::remove("queue::generation::force_rotate");
        second
    };
    assert!(second.is_err(), "the rotating write failed: {second:?}");
    gate.open();
    let first = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), first).await })
        .expect("the producer is woken")
        .unwrap();
    assert_eq!(first.unwrap().id().unwrap().seq(), 2);
    rt.block_on(q.sync()).unwrap();
    let got = queued(&q, TOPIC);
    assert!(got.contains_key(&1) && got.contains_key(&2), "{got:?}");
}

/// Builds the state of scenarios 6 and 7: generation 1 holds chunks 1-4 and
/// 9-12 (the second stays queued), generation 2 chunk 5-8. Seqs `dead` are
/// dead-lettered, the rest of 1-8 acked, generation 2 is deleted, then the
/// dead letters are replayed as one entry; then sled is lost.
fn replay_after_drain(dead: [u64; 2]) -> (tempfile::TempDir, QueueConfig) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 4,
        ..config()
    };
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        for i in 1..=4 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        rt.block_on(q.sync()).unwrap();
        for i in 9..=12 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        rt.block_on(q.sync()).unwrap();
        q.close();
    }
    // Seqs 1-8 in chunks 1-4 (generation 1) and 5-8 (generation 2).
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        let ids: Vec<u64> = (5..=8)
            .map(|i| q.enqueue(TOPIC, payload(i)).unwrap().id().unwrap().seq())
            .collect();
        assert_eq!(ids, vec![9, 10, 11, 12], "seqs follow the first life's");
        rt.block_on(q.sync()).unwrap();
        q.close();
    }
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    // Chunk keys: 1 (seqs 1-4), 5 (seqs 5-8, payloads 9-12), 9 (seqs 9-12, payloads 5-8).
    let mut settled = 0;
    while let Some(l) = q.lease(TOPIC, 4).unwrap() {
        let first = l.events()[0].seq();
        if first == 5 {
            // Stays queued: keeps generation 1 alive.
            q.release(l);
            break;
        }
        let mut s = Settlement::delivered();
        for e in l.events() {
            if dead.contains(&e.seq()) {
                s = s.dead(e.seq(), "bad");
            }
        }
        q.settle(l, s).unwrap();
        settled += 1;
    }
    let _ = settled;
    // Make sure chunk 9 (generation 2) is settled too.
    let mut rest = Vec::new();
    while let Some(l) = q.lease(TOPIC, 4).unwrap() {
        let first = l.events()[0].seq();
        if first == 9 {
            let mut s = Settlement::delivered();
            for e in l.events() {
                if dead.contains(&e.seq()) {
                    s = s.dead(e.seq(), "bad");
                }
            }
            q.settle(l, s).unwrap();
        } else {
            rest.push(l);
        }
    }
    for l in rest {
        q.release(l);
    }
    assert_eq!(q.dead_letters(TOPIC, 0, 10).unwrap().len(), 2);
    q.close();
    // Reopening deletes the drained generation; then the replay.
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    assert_eq!(q.replay_dead(TOPIC, |_| true).unwrap(), 2);
    rt.block_on(q.sync()).unwrap();
    q.close();
    (dir, cfg)
}

/// Scenario 6: a replay entry whose first seq is already a chunk key is not
/// skipped by a rebuild: every replayed event comes back.
#[test]
fn a_rebuild_keeps_every_event_of_a_replay_entry_whose_first_seq_is_a_chunk_key() {
    let _t = turn();
    let (dir, cfg) = replay_after_drain([1, 10]);
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), cfg).unwrap();
    let got = queued(&q, TOPIC);
    for s in [1, 10] {
        assert!(got.contains_key(&s), "replayed seq {s} is queued: {got:?}");
    }
    for s in 5..=8 {
        assert!(got.contains_key(&s), "never settled seq {s} is queued");
    }
}

/// Scenario 7: a rebuild puts every event in exactly one chunk, so a later
/// partial settle of both chunks works.
#[test]
fn a_rebuild_puts_every_replayed_event_in_exactly_one_chunk() {
    let _t = turn();
    let (dir, cfg) = replay_after_drain([3, 10]);
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), cfg).unwrap();
    // `queued` panics if a seq is handed out twice.
    let got = queued(&q, TOPIC);
    for s in [3, 10] {
        assert!(got.contains_key(&s), "replayed seq {s} is queued: {got:?}");
    }
    let total = q.stats().total.events;
    assert_eq!(total, got.len() as u64, "totals count each event once");
    // Partial settles of every lease: retry seq 3, ack the rest.
    while let Some(l) = q.lease(TOPIC, 1000).unwrap() {
        let keep = l.events().iter().any(|e| e.seq() == 3);
        let s = if keep {
            Settlement::delivered()
                .retry(3)
                .retry_after(Duration::from_secs(3600), "later")
        } else {
            Settlement::delivered()
        };
        q.settle(l, s).unwrap();
    }
    assert_eq!(q.stats().total.events, 1, "seq 3 stays, once");
    assert!(!q.verify().unwrap().drifted());
}

/// Scenario 8: events removed by a purge never come back in a rebuild.
#[test]
fn a_rebuild_never_brings_back_purged_events() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 4,
        ..config()
    };
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        for i in 1..=12 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        rt.block_on(q.sync()).unwrap();
        // Seqs 1-4 stay leased (not purged); 5-12 are purged.
        let held = q.lease(TOPIC, 4).unwrap().unwrap();
        assert_eq!(q.purge(TOPIC).unwrap(), 8);
        q.release(held);
        q.close();
    }
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), cfg).unwrap();
    assert_eq!(
        queued(&q, TOPIC).keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "only the events never purged"
    );
}

/// Scenario 8: dead letters purged never come back in a rebuild, as
/// events or as dead letters; dead letters not purged stay dead letters.
#[test]
fn a_rebuild_never_brings_back_purged_dead_letters_and_keeps_the_others() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 4,
        ..config()
    };
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        for i in 1..=8 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        rt.block_on(q.sync()).unwrap();
        // 1-4 dead-lettered, 5-8 queued.
        let l = q.lease(TOPIC, 4).unwrap().unwrap();
        let mut s = Settlement::delivered();
        for e in l.events() {
            s = s.dead(e.seq(), "rejected");
        }
        q.settle(l, s).unwrap();
        // Dead letters 1 and 2 purged; 3 and 4 stay.
        assert_eq!(q.purge_dead(TOPIC, |d| d.id.seq() <= 2).unwrap(), 2);
        q.close();
    }
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), cfg).unwrap();
    assert_eq!(
        queued(&q, TOPIC).keys().copied().collect::<Vec<_>>(),
        vec![5, 6, 7, 8],
        "purged and dead-lettered events are not queued again"
    );
    let dead: Vec<u64> = q
        .dead_letters(TOPIC, 0, 100)
        .unwrap()
        .iter()
        .map(|d| d.id.seq())
        .collect();
    assert_eq!(dead, vec![3, 4], "the dead letters not purged are kept");
    let reasons: Vec<String> = q
        .dead_letters(TOPIC, 0, 100)
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    assert!(reasons.iter().all(|r| r == "rejected"), "{reasons:?}");
}

/// Scenario 8: events evicted by `drop_oldest` and events dropped past
/// `max_age` never come back in a rebuild (their body file stays, holding
/// events still queued).
#[test]
fn a_rebuild_never_brings_back_events_evicted_or_expired() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 4,
        ceiling: Ceiling {
            max_events: 8,
            policy: OverflowPolicy::DropOldest,
            ..Ceiling::default()
        },
        ..config()
    };
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        for i in 1..=8 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        rt.block_on(q.sync()).unwrap();
        // 5-8 will be past max_age in the next life, 9-12 not.
        std::thread::sleep(Duration::from_millis(1200));
        // Four more evict chunk 1-4.
        for i in 9..=12 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        rt.block_on(q.sync()).unwrap();
        assert_eq!(
            q.stats().drops.get("ceiling_oldest").copied(),
            Some(4),
            "{:?}",
            q.stats().drops
        );
        q.close();
    }
    // A life with max_age: 5-8, older than 1 s, are dropped at lease.
    {
        let aged = QueueConfig {
            max_age: Some(Duration::from_secs(1)),
            ..cfg.clone()
        };
        let q = Queue::open(dir.path(), aged).unwrap();
        let l = q.lease(TOPIC, 100).unwrap().unwrap();
        assert_eq!(
            l.events().iter().map(|e| e.seq()).collect::<Vec<_>>(),
            vec![9, 10, 11, 12]
        );
        q.release(l);
        assert_eq!(q.stats().drops.get("max_age").copied(), Some(4));
        q.close();
    }
    assert_eq!(
        generations(dir.path(), TOPIC).first(),
        Some(&1),
        "the body file holding every event stays"
    );
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), cfg).unwrap();
    let got = queued(&q, TOPIC);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        vec![9, 10, 11, 12],
        "evicted (1-4) and expired (5-8) events stay gone"
    );
}
