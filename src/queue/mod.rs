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
//! with the same ids (`recover.rs`).
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
//!    `commit_interval` (`commit.rs`).
//! 2. A durable enqueue appends its own entry to the topic's log under the
//!    log's lock and returns once written (`fsync`: once a group `fdatasync`
//!    covers it, `sync.rs`).
//! 3. Each commit round indexes every new entry: contiguous entries become
//!    one chunk (a `commit` transition), leaseable at once.
//! 4. Every change of a chunk's state is a transition in `chunk.rs`, checked
//!    and committed under the index lock, with its sled writes queued in
//!    order; the committer applies them in one batch per round (`ops.rs`).
//! 5. A body file is deleted whole once nothing needs it, after the sled
//!    writes that stopped naming it are flushed (`reap.rs`).
//!
//! # Files
//!
//! ```text
//! mod.rs        this essay; Queue, Enqueued, open/close
//! shared.rs     the shared state, who owns what, lock order
//! index.rs      the in-memory index and per-state accounting (L1–L4)
//! chunk.rs      the chunk state machine: every transition (T1–T4)
//! log.rs        a topic's log: appends, generations, checkpoint, the write
//!               gate, sync positions (G1–G8)
//! group.rs      durable producers of a topic sharing one write (W1–W5)
//! segment.rs    body file format and the descriptor budget (S1–S5)
//! entry.rs      an entry's header and kinds; reading runs of entries past
//!               damage (E1–E3)
//! io.rs         every body-file I/O call: one error classification, no
//!               symlinks, fault injection for tests (IO1–IO2)
//! read.rs       reading a chunk back entry by entry; damage contained
//! trace.rs      traces of what left the queue other than by an ack (TR1–TR3)
//! sync.rs       group fdatasync for durable producers; transient retries
//! commit.rs     buffered events and the committer's rounds
//! ops.rs        applying queued sled writes (after the traces they record)
//! enqueue.rs    enqueue paths and ceiling policies
//! ceiling.rs    totals, drop reasons, waiting for space (C1–C3)
//! lease.rs      leases, max_age and damage at lease
//! settle.rs     ack, nack, settle
//! dead.rs       dead letters: list, replay, purge
//! purge.rs      purging queued events
//! stats.rs      stats, readiness, topics, peek
//! verify.rs     verify: decode everything, recount, repair drift
//! compact.rs    moving bodies to fresh files; rewriting sled
//! reap.rs       deleting drained body files, carrying their traces forward
//! resume.rs     making a topic's retries due at once (delivery works again)
//! open.rs       directory, lock, sled open and damage
//! identity.rs   the instance id file
//! recover.rs    rebuilding the index at open
//! rebuild.rs    what a topic's body files say is queued, read whole (RB1–RB3)
//! migrate.rs    formats 1, 2 and 3 to 4
//! storage.rs    the only file that names sled
//! ```
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
//! - I2 (every transition atomic): a chunk changes state only in `chunk.rs`,
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
mod settle;
mod shared;
mod stats;
pub(crate) mod store;
mod topic;
mod usage;
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
