//! Test servers of this binary only: a raw TCP server for socket-level
//! faults. The daemon harness, the collector, `nats-server` and the admin
//! client are shared with the other suites, benches and examples:
//! `evspool_testkit` (testkit/).

#![allow(dead_code)]

pub mod faults;
