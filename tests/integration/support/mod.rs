//! Test servers on 127.0.0.1:0: a scriptable collector that records every
//! event it accepts, a raw TCP server for socket-level faults, and a real
//! `nats-server` with JetStream.

#![allow(dead_code)]

pub mod collector;
pub mod faults;
pub mod nats_server;
