//! Test servers on 127.0.0.1:0: a scriptable collector that records every
//! event it accepts, a raw TCP server for socket-level faults, a real
//! `nats-server` with JetStream, and a client for a daemon's admin socket.

#![allow(dead_code)]

pub mod admin;
pub mod collector;
pub mod faults;
pub mod nats_server;
pub mod requires;
