//! Review of issue 21 (the cut of `src/queue` into owned parts, and `Topic`):
//! behaviour that changed in the move, each as a test that fails on the
//! branch `issue-21`.

use evspool::record::{self, ChunkIndex, StoredEvent};
use evspool::{Queue, QueueConfig, QueueError};
use std::path::Path;
use std::time::Duration;

fn config() -> QueueConfig {
    QueueConfig {
        commit_interval: Duration::from_millis(20),
        ..QueueConfig::default()
    }
}

fn sled_open(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sled::Config::new()
            .path(dir.join("db"))
            .segment_size(4 * 1024 * 1024)
            .open()
        {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("sled open: {e}"),
        }
    }
}

/// Re-frames a record of this build as format 1 (same body, recomputed CRC).
fn as_format_1(rec: &[u8], body_trim: usize) -> Vec<u8> {
    let body = &rec[1..rec.len() - 4 - body_trim];
    let mut out = vec![1u8];
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn legacy_key(kind: u8, seq: u64) -> Vec<u8> {
    let mut k = vec![kind];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Writes a format-1 store (as a 0.1 build left it) holding six events of
/// `topic` (seqs 1..=6, two chunks, bodies inside sled).
fn write_format_1_store(dir: &Path, topic: &str) {
    {
        let q = Queue::open(dir, config()).unwrap();
        q.close();
    }
    let payloads: Vec<Vec<u8>> = (1..=6u64)
        .map(|i| format!("{{\"v1\":{i}}}").into_bytes())
        .collect();
    let db = sled_open(dir);
    db.open_tree("meta")
        .unwrap()
        .insert("format", &[1u8])
        .unwrap();
    let tree = db.open_tree(format!("topic/{topic}")).unwrap();
    for first in [1u64, 4] {
        let events: Vec<StoredEvent<'_>> = (first..first + 3)
            .map(|seq| StoredEvent {
                seq,
                enqueued_at_ms: 1_700_000_000_000 + seq,
                payload: &payloads[seq as usize - 1],
            })
            .collect();
        let chunk = as_format_1(&record::encode_chunk(&events), 0);
        let idx = ChunkIndex {
            events: 3,
            bytes: events.iter().map(|e| e.payload.len() as u64).sum(),
            last_seq: first + 2,
            first_enqueued_ms: 1_700_000_000_000 + first,
            body_gen: 0,
            body_offset: 0,
            body_len: 0,
        };
        // Format 1 had no body_gen: drop its varint (one 0 byte) from the body.
        let index = as_format_1(&record::encode_index(&idx), 1);
        tree.insert(legacy_key(b'C', first), chunk).unwrap();
        tree.insert(legacy_key(b'I', first), index).unwrap();
    }
    tree.insert("H", &7u64.to_be_bytes()).unwrap();
    db.flush().unwrap();
}

/// Formats 1 and 2 accepted the topic names `.` and `..` (`validate_topic`
/// of commit eb550b8 checked length and characters only; the `.`/`..` rule
/// came with format 3). Before issue 21 the migration moved such a topic's
/// events like any other's; now `migrate` skips the tree ("a legacy topic
/// tree with a name no topic may have is left unmigrated"), records format
/// 4 and opens: the six accepted events are silently gone (no drop counted,
/// nothing in `stats`, only an ERROR line). An open that cannot migrate
/// them must refuse, or keep them.
#[test]
fn a_format_1_topic_named_dot_is_not_lost_by_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    write_format_1_store(dir.path(), ".");
    match Queue::open(dir.path(), config()) {
        Err(e) => eprintln!("refused (acceptable): {e}"),
        Ok(q) => {
            let stats = q.stats();
            let dropped: u64 = stats.drops.values().sum();
            assert!(
                stats.total.events == 6 || dropped == 6,
                "six events of topic \".\" accepted by a 0.1 build: total {:?}, drops {:?}, recovered {:?}",
                stats.total,
                stats.drops,
                stats.recovered
            );
            q.close();
        }
    }
}

/// The README of issue 21: "every call checks its topic and answers
/// `QueueError::InvalidTopic` naming what is wrong". `enqueue`, `lease` and
/// `replay_dead` do; `purge`, `purge_dead`, `dead_letters` and `peek` take
/// any string (a path, an empty name, a NUL) and answer `Ok`. Not a change
/// from before issue 21 (they never checked), but the new contract says
/// otherwise, and `replay_dead` and `purge_dead` of one name now disagree.
#[test]
fn every_call_refuses_a_name_no_topic_may_have() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config()).unwrap();
    let invalid = |r: Result<(), QueueError>, call: &str, name: &str| {
        assert!(
            matches!(r, Err(QueueError::InvalidTopic { .. })),
            "{call}({name:?}) answered {r:?}, not InvalidTopic"
        );
    };
    for name in ["../x", "", "a\0b"] {
        invalid(q.enqueue(name, b"{}".to_vec()).map(|_| ()), "enqueue", name);
        invalid(q.lease(name, 1).map(|_| ()), "lease", name);
        invalid(q.replay_dead(name, |_| true).map(|_| ()), "replay_dead", name);
        invalid(q.purge_dead(name, |_| true).map(|_| ()), "purge_dead", name);
        invalid(q.purge(name).map(|_| ()), "purge", name);
        invalid(q.dead_letters(name, 0, 10).map(|_| ()), "dead_letters", name);
        invalid(q.peek(name, 0, 10).map(|_| ()), "peek", name);
    }
    q.close();
}
