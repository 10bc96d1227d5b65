//! The durable queue: events in append-only body files, indexed in memory and
//! in sled, leased to consumers in chunks (format 4).
//!
//! # Design constraints
//!
//! Measured on our 2-core machines, sled 0.34.7 costs about 6 µs per key
//! operation and rewrites whole leaves, so one key per event caps a queue near
//! 150k events/s and values kept inside sled are written ~4 times. So the
//! bytes go to append-only *body files* (`bodies/<topic>/<g>.seg`), written
//! once, and the unit of indexing, leasing and acknowledgement is the *chunk*:
//! a span of whole entries of one body file, up to `chunk_max_events` events.
//! sled keeps only small records: the chunk index, retry schedules, dead
//! letters, each topic's seq high-water and checkpoint, and quarantine.
//!
//! **The body files are the truth; sled is a rebuildable index.** Every entry
//! carries its seqs, enqueue times and a CRC; every body file's header carries
//! the store's instance id and seq high-water. Opening a store whose sled
//! files are missing, empty or damaged rebuilds the index from the body files
//! with the same ids (`open/recover.rs`).
//!
//! # How it operates
//!
//! ```text
//!  enqueue ─▶ open chunk (memory) ─seal─▶ committer ─┐
//!                                                    ├─append─▶ topic log ─▶ body file
//!  enqueue_durable ─────────────────────────────────┘   (one lock per topic; fsync: group sync)
//!                                                                │
//!  committer round: index new entries ─▶ in-memory index ─▶ queued sled writes ─▶ one sled batch
//!                                              │
//!         lease(≤ batch) ◀── Ready ◀───────────┘      ack / nack / settle / evict / purge /
//!                                                     replay / compact: transitions (chunk.rs)
//! ```
//!
//! 1. A buffered `enqueue` takes a seq and joins its topic's open chunk, in
//!    memory (`enqueue.rs`). The committer seals and appends open chunks every
//!    `commit_interval` (`commit.rs`, over `buffer.rs`).
//! 2. A durable enqueue appends its own entry to the topic's log under the
//!    log's lock and returns once written (`fsync`: once a group `fdatasync`
//!    covers it, `log/syncer.rs`).
//! 3. Each commit round indexes every new entry: contiguous entries become
//!    one chunk (a `commit` transition), leaseable at once.
//! 4. Every change of a chunk's state is a transition in `index/chunk.rs`, checked
//!    and committed under the index lock, with its sled writes queued in
//!    order; the committer applies them in one batch per round (`ops.rs`).
//! 5. A body file is deleted whole once nothing needs it, after the sled
//!    writes that stopped naming it are flushed (`reap.rs`).
//!
//! # Files
//!
//! The engine's nouns own its state; the verbs are thin `impl Queue` blocks
//! over them. Each part's fields are private; the composition root
//! (`shared.rs`) holds one of each; the lock order, by part, is in
//! `locking.rs`.
//!
//! ```text
//! mod.rs          this essay; the public re-exports
//! handle.rs       Queue: its clones, one open of the store, close, reopen
//! shared.rs       Shared: the composition root of one open store's parts
//! locking.rs      the lock order, by part; taking a mutex
//! topic.rs        Topic: a name checked once, safe to join to a path;
//!                 per-topic dead-letter locks
//! usage.rs        Usage: events and bytes, the unit of every account
//! seq_map.rs      SeqMap: a dense map by seq, a topic's chunks (SM1-SM3)
//! vec_map.rs      VecMap: a small map as a sorted vector (V1)
//!
//! parts (each owns its state)
//! gate.rs         Gate: open, closing, failing closed and why
//! buffer.rs       Buffer: buffered events (open and sealed chunks), the
//!                 committer's wake-up and completed rounds
//! ceiling.rs      Ceiling: totals, drop counters, waiting for room (C1-C4)
//! reap.rs         Reaper: drained generations to delete, carrying traces
//! log/            Logs: where bytes reach disk
//!   mod.rs        TopicLog: a topic's log, the one path to its body files
//!                 (G1-G8)
//!   logs.rs       Logs: every topic's log, the body files, the syncer
//!   bodies.rs     Bodies: paths, descriptor budget, seq counter, write gate
//!   appended.rs   what an append takes and gives; coalescing into chunks
//!   group.rs      durable producers of a topic sharing one write (W1-W5)
//!   syncer.rs     group fdatasync for durable producers; dirty/unsynced marks
//!   sync_mark.rs  the synced position producers wait on (SW1-SW2)
//!   segment.rs    body file format and the descriptor budget (S1-S5)
//!   entry.rs      entry headers and kinds; reading past damage (E1-E3)
//!   read.rs       a chunk read back entry by entry; damage contained
//!   trace.rs      traces of what left the queue other than by an ack (TR1-TR4)
//! index/          Catalog: the in-memory index behind one mutex
//!   mod.rs        Index, TopicIndex: chunks by topic and state, usage,
//!                 generations in use, leases, queued sled writes (L1-L4)
//!   chunk.rs      the chunk state machine: every transition (T1-T4)
//! storage.rs      Store: sled, the only file that names it (DESIGN.md):
//!                 the index, dead-letter and meta trees
//! storage/
//!   batch.rs      keys of the index tree; WriteBatch (plain writes)
//!   error.rs      StorageError
//!   slot.rs       StoreSlot: sled until close, the apply lock, the dir lock
//!   dir_lock.rs   the directory lock; the stores this process has open
//! io.rs           every body-file I/O call: error classes, no symlinks,
//!                 faults for tests (IO1-IO2)
//!
//! procedures over several parts
//! commit.rs       the committer's rounds; driving the reaper
//! ops.rs          applying queued sled writes (after their traces)
//! quarantine.rs   keeping damaged bytes aside
//! open/           opening a store: directory, lock, sled and its damage
//!   identity.rs   the instance id file
//!   recover.rs    loading or rebuilding the index at open
//!   rebuild.rs    what a topic's body files say is queued (RB1-RB3)
//!   migrate.rs    formats 1, 2 and 3 to 4
//!
//! verbs (impl Queue)
//! enqueue.rs      enqueue paths and ceiling policies
//! lease.rs        leases, max_age and damage at lease
//! settle.rs       ack, nack, settle
//! dead.rs         dead letters: read, replay, purge
//! purge.rs        purging queued events
//! resume.rs       making a topic's retries due at once
//! stats.rs        stats, readiness, topics, peek
//! verify.rs       verify: decode everything, recount, repair drift
//! compact.rs      moving bodies to fresh files; rewriting sled
//! ```
//!
//! `tests/architecture.rs` checks the shape: the parts of each directory
//! import one another without a circle, at most 8 imports name an item of
//! an ancestor module, no file passes 700 lines, and `Shared` has no field
//! that is not private.
//!
//! # Invariants
//!
//! - I1 (no loss): an event whose durable enqueue returned `Ok` is in an
//!   entry of its topic's body file, and stays queued until it is acked,
//!   dead-lettered, or dropped by a counted policy. *Mechanism*: the producer
//!   returns after its own write (and sync); open adopts every new entry from
//!   the topic's checkpoint on that no index record covers (G3); a body file
//!   is deleted only after sled has flushed the removal of every index record
//!   naming it, and never while an entry in it waits to be indexed (G2).
//! - I2 (every transition atomic): a chunk changes state only in `index/chunk.rs`,
//!   under the index lock, after checking its current state; work outside the
//!   lock is bracketed by a lease or a claim (T1).
//! - I3 (ids are never reused): open resumes seqs above every seq named by an
//!   index record, a dead letter, a high-water, a scanned entry or a body
//!   file header. A crash can lose buffered events still in memory and their
//!   seqs may be handed out again, but only seqs no consumer saw: nothing is
//!   indexed before its entry is written (with `fsync`, synced).
//! - I4 (at-least-once): leases are memory only; a crash or reopen makes every
//!   indexed chunk ready again; a lease past `lease_timeout` is released.
//! - I5 (exact accounting): totals change only in transitions and never wrap
//!   (C1); `verify` recounts and repairs.
//! - I6 (contained damage): an entry failing its CRC (or bytes that are no
//!   valid entry) is quarantined and counted alone; the intact entries of its
//!   chunk stay queued as chunks of their own (`split_damaged`), readers go
//!   past damage to the next valid entry (E2), opening never panics, and
//!   sled's damage costs only what sled alone knew (README: "What a lost
//!   sled file costs").
//! - I7 (a failed write leaves nothing): a write that fails is truncated back
//!   (G4) and its producer gets the error; a commit round whose write failed
//!   drops its buffered events, counted, and fails `sync`.
//! - I8 (close is final): after `close` returns no byte reaches a body file,
//!   and no call in flight returns `Ok` for an event it had not written (G7).
//! - I9 (a rebuild is exact but for acks): every removal other than an ack
//!   leaves a trace in the topic's log before sled records it (TR1), so a
//!   rebuild without sled brings back no gone event, restores dead letters
//!   and puts every event in exactly one chunk (RB1–RB2).
//! - I10 (one classification of I/O errors): transient errors (descriptors,
//!   memory, EINTR, EAGAIN) fail one call and stick nowhere; a failed
//!   `fdatasync` poisons its log and is never followed by an `Ok` for what
//!   it covered (IO2, G8).

mod buffer;
pub(crate) mod ceiling;
mod commit;
mod compact;
mod dead;
mod enqueue;
mod gate;
mod handle;
mod index;
pub(crate) mod io;
mod lease;
mod locking;
mod log;
mod open;
mod ops;
mod purge;
mod quarantine;
mod reap;
mod resume;
mod seq_map;
mod settle;
mod shared;
mod stats;
pub(crate) mod storage;
mod topic;
mod usage;
mod vec_map;
mod verify;

pub use compact::{CompactReport, compact};
pub use dead::DeadEvent;
pub use enqueue::Enqueued;
pub use handle::Queue;
pub use lease::Lease;
pub use open::store_size;
pub use quarantine::QUARANTINE_MAX_BYTES;
pub use settle::{SettleReport, Settlement};
pub use stats::{CeilingStats, PeekedEvent, Readiness, Stats, TopicStats};
pub use topic::{MAX_TOPIC_LEN, Topic};
pub use usage::Usage;
pub use verify::VerifyReport;
