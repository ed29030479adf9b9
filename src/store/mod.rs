//! The storage engine: per-shard DMA commitlog, consume queues, index files, checkpoint,
//! recovery and retention (reference §5–§8).
//!
//! Shape: the store runs one glommio executor per shard. A shard owns the (topic, queueId)
//! pairs that hash to it, its own commitlog directory `commitlog/<shard>/`, the consume queues
//! of its queues and its own index directory `index/<shard>/`. A [`CommitLogOffset`] carries
//! the shard in its high bits, so every stored offset resolves to one record.

pub mod commitlog;
pub mod config;
pub mod consume_queue;
pub mod dma;
pub mod error;
pub mod format;
pub mod index;
pub mod notify;
pub mod offset;
pub mod runtime;
pub mod shard;

pub use config::{FlushDiskType, StoreConfig};
pub use error::{Result, StoreError};
pub use offset::{CommitLogOffset, ShardId};
pub use runtime::{Router, ShardService, Store};
pub use shard::{
    GetResult, GetStatus, PutMessage, PutResult, RetentionReport, ShardStats, VerifyReport,
};

/// Deterministic body of message `i` of queue `q`, `size` bytes: what `coremq-store append`
/// writes, so tests and tools can check stored bytes without keeping copies.
pub fn pattern_body(q: u32, i: u64, size: usize) -> Vec<u8> {
    let seed = format!("q{q}-i{i}-");
    seed.bytes().cycle().take(size.max(seed.len())).collect()
}

/// Runs `f` to completion on a fresh executor with 1 MiB of I/O memory (unit tests of
/// pieces that need glommio's file I/O).
#[cfg(test)]
pub(crate) fn run_on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}
