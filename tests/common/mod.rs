//! Helpers shared by the store tests.
#![allow(dead_code)]

use bytes::Bytes;
use coremq::message::properties;
use coremq::store::{CommitLogOffset, PutMessage, Store, StoreConfig};
use std::path::Path;

/// A small-footprint config: small segments, queue and index files, 1 MiB io_memory.
pub fn small_config(root: &Path, shards: usize) -> StoreConfig {
    let mut c = StoreConfig::new(root);
    c.shards = shards;
    c.pin_shards = false;
    c.segment_size = 256 * 1024;
    c.cq_entries_per_file = 100;
    c.index_slots = 1000;
    c.index_max_entries = 400;
    c.max_message_size = 64 * 1024;
    c.max_unflushed_bytes = 1 << 20;
    c.tail_cache_bytes = 64 * 1024;
    c.flush_interval_ms = 50;
    c.flush_cq_interval_ms = 50;
    c.clean_resource_interval_ms = 3_600_000;
    c.delete_files_interval_ms = 1;
    c.retention.set_delete_when(&[]);
    c
}

pub fn msg(
    topic: &str,
    queue_id: u32,
    body: &[u8],
    tag: &str,
    keys: &str,
    uniq: &str,
) -> PutMessage {
    let mut props = Vec::new();
    if !tag.is_empty() {
        properties::push(&mut props, "TAGS", tag);
    }
    if !keys.is_empty() {
        properties::push(&mut props, "KEYS", keys);
    }
    if !uniq.is_empty() {
        properties::push(&mut props, "UNIQ_KEY", uniq);
    }
    PutMessage {
        topic: topic.into(),
        queue_id,
        flag: 0,
        body: Bytes::copy_from_slice(body),
        properties: props.into(),
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000,
        born_host: "127.0.0.1:40000".parse().unwrap(),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
    }
}

pub fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_lite::future::block_on(f)
}

/// Collects every message body of a queue, from offset 0.
pub fn read_all(store: &Store, topic: &str, queue_id: u32) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let r = block(store.get_messages(topic, queue_id, off, 32, None)).unwrap();
        if r.messages.is_empty() && r.next_begin_offset <= off {
            break;
        }
        for m in &r.messages {
            let rec = coremq::message::MessageRecord::decode(m).unwrap();
            out.push(rec.body);
        }
        off = r.next_begin_offset;
        if off >= r.max_offset {
            break;
        }
    }
    out
}
pub mod remoting;

/// The numbered segment files of a shard's commitlog directory, as (base, inode): not the
/// spares expired segments are kept as for reuse.
pub fn segment_files(dir: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let base = coremq::store::offset::parse_file_name(&e.file_name().to_string_lossy())?;
            Some((base, e.metadata().ok()?.ino()))
        })
        .collect()
}

/// Path of the segment (of `seg` bytes) holding `off` under store `root`, and the offset
/// inside it.
pub fn segment_file(root: &Path, off: CommitLogOffset, seg: u64) -> (std::path::PathBuf, u64) {
    let base = off.pos() / seg * seg;
    (
        root.join("commitlog")
            .join(off.shard().index().to_string())
            .join(format!("{base:020}")),
        off.pos() - base,
    )
}
