//! One linked integration binary (keeps link time down on 2 cores).

mod admin_access;
mod cli_e2e;
mod daemon_e2e;
mod daemon_hostile;
mod damaged_store;
mod forward_faults;
mod forward_lifecycle;
mod forward_mixpanel;
mod forward_rejects;
mod full_disk;
mod fuzz_corpus;
mod nats_sink;
mod operator;
mod permissions;
mod queue_basics;
mod queue_ceiling;
mod queue_concurrent;
mod queue_corruption;
mod queue_durability;
mod queue_generations;
mod queue_model;
mod queue_rebuild;
mod secrets;
mod support;
mod top_e2e;
