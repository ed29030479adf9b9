//! CoreMQ: a RocketMQ-compatible message broker, thread-per-core on io_uring (glommio) with
//! direct I/O.
//!
//! Module map (see `../shared/DESIGN.md`): [`message`] holds the record codec and message ids;
//! [`store`] the per-shard DMA commitlog, consume queues, index, checkpoint, recovery and
//! retention.

pub mod admin;
pub mod blocks;
pub mod broker;
pub mod client;
pub mod config;
pub mod logging;
pub mod message;
pub mod namesrv;
pub mod protocol;
pub mod store;
