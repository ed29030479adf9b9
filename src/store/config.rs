//! Store configuration, with RocketMQ's property names and defaults (reference §8.4).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use super::error::{Result, StoreError};

/// `flushDiskType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushDiskType {
    /// Acknowledge once the record is in the shard's write buffer; flush on an interval.
    AsyncFlush,
    /// Acknowledge after the record is durable (group commit: one `O_DSYNC` write per round).
    SyncFlush,
}

impl FlushDiskType {
    /// The property value, as `conf/*.properties` spell it.
    pub fn name(self) -> &'static str {
        match self {
            FlushDiskType::AsyncFlush => "ASYNC_FLUSH",
            FlushDiskType::SyncFlush => "SYNC_FLUSH",
        }
    }
}

impl std::str::FromStr for FlushDiskType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        [FlushDiskType::AsyncFlush, FlushDiskType::SyncFlush]
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!("unknown flushDiskType {s:?} (expected ASYNC_FLUSH or SYNC_FLUSH)")
            })
    }
}

/// Milliseconds since the epoch. Injected so retention can be tested without waiting days.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// Retention settings that may change while the store runs (UPDATE_BROKER_CONFIG). Every
/// shard reads them at each retention tick.
#[derive(Debug)]
pub struct Retention {
    /// Bit `h` set: hour `h` (local time) is a `deleteWhen` hour.
    delete_when: AtomicU32,
    file_reserved_hours: AtomicU64,
    disk_max_used_space_ratio: AtomicU8,
}

impl Retention {
    /// `delete_when` hours (0–23; others are ignored), `fileReservedTime` in hours,
    /// `diskMaxUsedSpaceRatio` in percent.
    pub fn new(delete_when: &[u8], file_reserved_hours: u64, disk_ratio: u8) -> Arc<Retention> {
        let r = Retention {
            delete_when: AtomicU32::new(0),
            file_reserved_hours: AtomicU64::new(file_reserved_hours),
            disk_max_used_space_ratio: AtomicU8::new(disk_ratio),
        };
        r.set_delete_when(delete_when);
        Arc::new(r)
    }
    /// `deleteWhen` hours, ascending.
    pub fn delete_when(&self) -> Vec<u8> {
        let bits = self.delete_when.load(Ordering::Relaxed);
        (0..24u8).filter(|h| bits & (1 << h) != 0).collect()
    }
    pub fn is_delete_hour(&self, hour: u8) -> bool {
        hour < 24 && self.delete_when.load(Ordering::Relaxed) & (1 << hour) != 0
    }
    pub fn set_delete_when(&self, hours: &[u8]) {
        let bits = hours
            .iter()
            .filter(|h| **h < 24)
            .fold(0u32, |b, h| b | (1 << h));
        self.delete_when.store(bits, Ordering::Relaxed);
    }
    pub fn file_reserved_hours(&self) -> u64 {
        self.file_reserved_hours.load(Ordering::Relaxed)
    }
    pub fn set_file_reserved_hours(&self, hours: u64) {
        self.file_reserved_hours.store(hours, Ordering::Relaxed);
    }
    pub fn disk_max_used_space_ratio(&self) -> u8 {
        self.disk_max_used_space_ratio.load(Ordering::Relaxed)
    }
    pub fn set_disk_max_used_space_ratio(&self, percent: u8) {
        self.disk_max_used_space_ratio
            .store(percent, Ordering::Relaxed);
    }
}

/// Everything the store needs; [`StoreConfig::new`] gives upstream's defaults.
#[derive(Clone)]
pub struct StoreConfig {
    /// `storePathRootDir` (default `~/store`).
    pub root: PathBuf,
    /// `storePathCommitLog` (default `<root>/commitlog`); holds one directory per shard.
    pub commitlog_dir: PathBuf,
    /// Number of shards (executors); 0 means one per available core.
    pub shards: usize,
    /// Pin shard `i` to the `i`-th CPU of the process's affinity mask (round robin).
    pub pin_shards: bool,
    /// `mappedFileSizeCommitLog`, a multiple of 4 KiB.
    pub segment_size: u64,
    /// Entries per consume-queue file (`mappedFileSizeConsumeQueue / 20`).
    pub cq_entries_per_file: u64,
    /// `maxMessageSize`.
    pub max_message_size: usize,
    /// `flushDiskType`.
    pub flush_disk_type: FlushDiskType,
    /// `flushIntervalCommitLog` in ms.
    pub flush_interval_ms: u64,
    /// `flushIntervalConsumeQueue` in ms (also the checkpoint interval).
    pub flush_cq_interval_ms: u64,
    /// `flushConsumeQueueLeastPages`: a consume queue is synced on a regular flush once this
    /// many 4 KiB pages of it were written since its last sync (its entries are written to
    /// the page cache every flush regardless).
    pub flush_cq_least_pages: u32,
    /// `flushConsumeQueueThoroughInterval` in ms: every queue with anything unsynced is synced
    /// at least this often. Until then the checkpoint's consume-queue position stays at the
    /// oldest unsynced entry (recovery after a crash re-dispatches from there).
    pub flush_cq_thorough_interval_ms: u64,
    /// `syncFlushTimeout` in ms: a SYNC_FLUSH send not durable by then is answered
    /// `FLUSH_DISK_TIMEOUT` (the message stays stored). Checked by a watchdog ticking four
    /// times per timeout, so the answer comes between 1 and 1.25 timeouts.
    pub sync_flush_timeout_ms: u64,
    /// Unflushed bytes that trigger a DMA write in ASYNC_FLUSH (no sooner than
    /// `commit_interval_ms` after the last). The default, 1, writes whatever there is:
    /// acknowledged data then survives a process crash (SIGKILL) after about one commit
    /// interval; `fdatasync` still runs every `flushIntervalCommitLog`. Larger values batch
    /// more and widen that window.
    pub flush_trigger_bytes: u64,
    /// `commitIntervalCommitLog` in ms: in ASYNC_FLUSH, the least time between two DMA
    /// writes of the commitlog (a full write piece goes at once). Upstream commits its
    /// transient store pool every 200 ms; here the default is 1 ms, which bounds what a
    /// SIGKILL can lose to about 1 ms of acknowledged sends plus any write still queued in the
    /// kernel (longer when the disk stalls), while a write (a virtio kick and a filesystem
    /// call, ~5 µs of CPU) then covers dozens of records instead of a few.
    /// 0 writes as soon as anything is unflushed.
    pub commit_interval_ms: u64,
    /// Largest single DMA write.
    pub max_write_bytes: u64,
    /// `warmMapedFileEnable`: zero each commitlog segment (and `fdatasync` it) before the
    /// records reach it, so appends land in blocks the filesystem already maps as written
    /// and a durable write commits no extent conversion (`CommitLog::run_warmer`). A new
    /// store zeroes its first segment while it opens. `None` turns it on for `SYNC_FLUSH`,
    /// where every acknowledgement waits for a durable write.
    pub warm_segments: Option<bool>,
    /// Retention keeps expired segments as spares (renamed `spare`, `spare.1`, …, up to
    /// `spare_segments` a shard) and new segments take them: their blocks are written
    /// already, so records go in without zeros written first or extent conversions (a new
    /// segment's price), and deletion is a rename. Expired segments past that are deleted.
    pub reuse_segments: bool,
    /// Most expired segments a shard keeps for reuse (`spareCommitLogSegments`, default 1).
    /// One covers a shard that fills at most one segment per retention pass
    /// (`clean_resource_interval_ms`); set it to as many as a shard fills per pass. Each
    /// holds a segment's disk space until a new segment takes it.
    pub spare_segments: usize,
    /// When warming: how far the next segment's zeros stay ahead of the tail's offset in its
    /// own segment (the zeros keep pace with the appends, a little ahead).
    pub warm_ahead_bytes: u64,
    /// Unflushed bytes per shard past which appenders wait (backpressure).
    pub max_unflushed_bytes: u64,
    /// Recently written bytes kept in memory per shard for reads (beyond the unflushed tail).
    pub tail_cache_bytes: u64,
    /// Largest span of commitlog read with one DMA read when serving a queue read.
    pub read_ahead_bytes: u64,
    /// `messageIndexEnable`.
    pub message_index_enable: bool,
    /// `maxHashSlotNum`.
    pub index_slots: u32,
    /// `maxIndexNum`.
    pub index_max_entries: u32,
    /// `maxMsgsNumBatch`: cap of a query by key.
    pub max_msgs_num_batch: usize,
    /// `deleteWhen`, `fileReservedTime`, `diskMaxUsedSpaceRatio`: shared by every clone of
    /// this config (so every shard), and changeable while the store runs.
    pub retention: Arc<Retention>,
    /// `cleanResourceInterval` in ms.
    pub clean_resource_interval_ms: u64,
    /// Pause between two file deletions, so deletion never stalls appends
    /// (`deletePhysicFilesInterval`).
    pub delete_files_interval_ms: u64,
    /// Host and port written in STOREHOSTADDRESS and msgIds (`brokerIP1:listenPort`).
    pub store_host: SocketAddr,
    /// glommio `io_memory` per executor; `ulimit -l` bounds it (see DESIGN platform notes).
    pub io_memory: usize,
    /// How long an idle shard polls for work before it sleeps (µs; `shardSpinMicros`, default
    /// 50). Waking a sleeping shard costs a scheduler round trip (on a VM, a VM exit too),
    /// and a request that hops to another shard can pay it twice; polling a little longer
    /// keeps that off the path of closely spaced requests, at the price of up to that much
    /// CPU after each burst. 0 never polls (for hosts where idle CPU is billed).
    pub spin_before_park_us: u64,
    /// Source of store timestamps and retention ages.
    pub clock: Clock,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("root", &self.root)
            .field("shards", &self.shards)
            .field("segment_size", &self.segment_size)
            .field("flush_disk_type", &self.flush_disk_type)
            .finish_non_exhaustive()
    }
}

impl StoreConfig {
    /// Upstream defaults, rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> StoreConfig {
        let root = root.into();
        StoreConfig {
            commitlog_dir: root.join("commitlog"),
            root,
            shards: 0,
            pin_shards: true,
            segment_size: 1 << 30,
            cq_entries_per_file: 300_000,
            max_message_size: 4 * 1024 * 1024,
            flush_disk_type: FlushDiskType::AsyncFlush,
            flush_interval_ms: 500,
            flush_cq_interval_ms: 1000,
            flush_cq_least_pages: 2,
            flush_cq_thorough_interval_ms: 60_000,
            sync_flush_timeout_ms: 5000,
            flush_trigger_bytes: 1,
            commit_interval_ms: 1,
            max_write_bytes: 1 << 20,
            warm_segments: None,
            reuse_segments: true,
            spare_segments: 1,
            warm_ahead_bytes: 4 << 20,
            max_unflushed_bytes: 64 << 20,
            tail_cache_bytes: 256 << 20,
            read_ahead_bytes: 1 << 20,
            message_index_enable: true,
            index_slots: 5_000_000,
            index_max_entries: 20_000_000,
            max_msgs_num_batch: 64,
            retention: Retention::new(&[4], 72, 75),
            clean_resource_interval_ms: 10_000,
            delete_files_interval_ms: 100,
            store_host: SocketAddr::from(([127, 0, 0, 1], 10911)),
            io_memory: 1 << 20,
            spin_before_park_us: 50,
            clock: system_clock(),
        }
    }

    /// The shard count in force: the configured one, or one per available core.
    pub fn effective_shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// Whether commitlog segments are opened `O_DSYNC` (SYNC_FLUSH): a completed write is
    /// durable, so no `fdatasync` follows it.
    pub fn dsync_segments(&self) -> bool {
        self.flush_disk_type == FlushDiskType::SyncFlush
    }

    /// How many expired segments a shard keeps for reuse (0 without `reuse_segments`).
    pub fn max_spares(&self) -> usize {
        match self.reuse_segments {
            true => self.spare_segments,
            false => 0,
        }
    }

    /// Whether the commitlog writes zeros ahead of its tail (see `warm_segments`).
    pub fn warms_segments(&self) -> bool {
        self.warm_segments
            .unwrap_or(self.flush_disk_type == FlushDiskType::SyncFlush)
            && self.warm_ahead_bytes > 0
    }

    /// Checks values that would break invariants later.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::Config(m));
        if self.segment_size < 64 * 1024 || self.segment_size % super::dma::ALIGN != 0 {
            return bad(format!(
                "mappedFileSizeCommitLog {} must be a multiple of 4096 and at least 65536",
                self.segment_size
            ));
        }
        if (self.max_message_size as u64) + 8 > self.segment_size {
            return bad(format!(
                "maxMessageSize {} does not fit a commitlog segment of {}",
                self.max_message_size, self.segment_size
            ));
        }
        if self.cq_entries_per_file == 0 {
            return bad("mappedFileSizeConsumeQueue must hold at least one entry".into());
        }
        if self.index_slots == 0 || self.index_max_entries < 2 {
            return bad("maxHashSlotNum must be > 0 and maxIndexNum > 1".into());
        }
        if self.effective_shards() > super::offset::MAX_SHARDS {
            return bad(format!(
                "at most {} shards are supported",
                super::offset::MAX_SHARDS
            ));
        }
        if self.max_write_bytes < super::dma::ALIGN || self.max_write_bytes % super::dma::ALIGN != 0
        {
            return bad("max write size must be a multiple of 4096".into());
        }
        Ok(())
    }
}

/// Parses `deleteWhen`: hours separated by `;`, each 0..=23.
pub fn parse_delete_when(s: &str) -> std::result::Result<Vec<u8>, String> {
    s.split(';')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| match h.parse::<u8>() {
            Ok(v) if v < 24 => Ok(v),
            _ => Err(format!(
                "bad deleteWhen hour {h:?} (expected 00..23, ';'-separated)"
            )),
        })
        .collect()
}

/// Writes `deleteWhen` as [`parse_delete_when`] reads it: `04;16`.
pub fn format_delete_when(hours: &[u8]) -> String {
    hours
        .iter()
        .map(|h| format!("{h:02}"))
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_settings_are_shared_by_clones_and_change_live() {
        let a = StoreConfig::new(std::path::Path::new("/tmp/x"));
        let b = a.clone();
        assert_eq!(a.retention.delete_when(), vec![4]);
        assert!(a.retention.is_delete_hour(4) && !a.retention.is_delete_hour(5));
        b.retention.set_delete_when(&[23, 0, 16, 24, 99]);
        assert_eq!(a.retention.delete_when(), vec![0, 16, 23]);
        assert!(!a.retention.is_delete_hour(24));
        b.retention.set_file_reserved_hours(0);
        b.retention.set_disk_max_used_space_ratio(90);
        assert_eq!(a.retention.file_reserved_hours(), 0);
        assert_eq!(a.retention.disk_max_used_space_ratio(), 90);
    }

    #[test]
    fn delete_when_forms() {
        assert_eq!(format_delete_when(&[4, 16]), "04;16");
        assert_eq!(
            parse_delete_when(&format_delete_when(&[0, 9, 23])).unwrap(),
            vec![0, 9, 23]
        );
        assert_eq!(format_delete_when(&[]), "");
        assert_eq!(parse_delete_when("04").unwrap(), vec![4]);
        assert_eq!(parse_delete_when("04;16").unwrap(), vec![4, 16]);
        assert!(parse_delete_when("25").is_err());
        assert!(parse_delete_when("x").is_err());
    }

    #[test]
    fn defaults_validate() {
        StoreConfig::new("/tmp/x").validate().unwrap();
        let mut c = StoreConfig::new("/tmp/x");
        c.segment_size = 1000;
        assert!(c.validate().is_err());
    }
}
