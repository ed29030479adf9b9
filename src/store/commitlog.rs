//! One shard's commitlog: preallocated segment files `commitlog/<shard>/<20-digit position>`
//! written with DMA (`O_DIRECT`), an in-memory tail cache, and a flusher task.
//!
//! Invariants (one writer: the shard's executor; no borrow is held across an await):
//! - `durable <= flushed <= written`. `written` is the end of the last appended record;
//!   `flushed` the end of what DMA writes have completed; `durable` what `fdatasync` covered.
//! - The tail cache holds every byte at or past `align_down(flushed)`: the flusher rewrites the
//!   partial last page from it, and reads of unflushed data are served from it. Older cached
//!   bytes are evicted past `tail_cache_bytes`.
//! - Records never span segments: a record that does not fit (`len + 8 > remaining`) is
//!   preceded by an 8-byte blank record (reference §5.2) and starts the next segment.
//! - `ASYNC_FLUSH` appends complete at `written`; `SYNC_FLUSH` appends at `durable`, and one
//!   flush round covers every append waiting (group commit). SYNC_FLUSH segments are
//!   `O_DSYNC`, so a round is just its writes; ASYNC_FLUSH rounds `fdatasync` on an interval.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use glommio::io::{DmaFile, OpenOptions};

use super::config::{FlushDiskType, StoreConfig};
use super::dma::{align_down, align_up, DmaPool, ALIGN};
use super::error::{check_written, io_err, Result, StoreError};
use super::notify::Notify;
use super::offset::{file_name, parse_file_name, CommitLogOffset, ShardId};
use crate::blocks::BlockPool;
use crate::message::record::{self, RecordMeta, RecordView, BLANK_MAGIC};

/// Most bytes one flush round writes.
const ROUND_MAX: u64 = 8 << 20;
/// Flush watchdog ticks per `syncFlushTimeout`: a SYNC_FLUSH wait times out within a quarter
/// of it past it.
const WATCHDOG_TICKS: u64 = 4;

/// One preallocated segment file.
pub struct Segment {
    /// Shard-local position of the segment's first byte (also its file name).
    pub base: u64,
    pub file: Rc<DmaFile>,
    pub path: PathBuf,
    /// Made from an expired segment (`reuse_segments`): every block is written already, with
    /// older records past whatever this one's hold.
    pub reused: bool,
}

/// File name of a shard's first spare segment: an expired one kept for a new segment. The
/// others (`StoreConfig::spare_segments`) are `spare.1`, `spare.2`, … ([`spare_name`]).
pub const SPARE: &str = "spare";

/// File name of a shard's spare number `i` (from 0).
pub fn spare_name(i: usize) -> String {
    match i {
        0 => SPARE.to_string(),
        _ => format!("{SPARE}.{i}"),
    }
}

/// The spare number a file name is, if it is one.
fn parse_spare_name(name: &str) -> Option<usize> {
    match name.strip_prefix(SPARE)? {
        "" => Some(0),
        rest => rest.strip_prefix('.')?.parse().ok().filter(|i| *i > 0),
    }
}

/// Recently written bytes, as runs of whole records keyed by their position.
#[derive(Default)]
struct TailCache {
    runs: VecDeque<(u64, Bytes)>,
    bytes: u64,
}

impl TailCache {
    fn push(&mut self, pos: u64, b: Bytes) {
        self.bytes += b.len() as u64;
        self.runs.push_back((pos, b));
    }

    #[cfg(test)]
    fn start(&self) -> Option<u64> {
        self.runs.front().map(|r| r.0)
    }

    /// `len` bytes at `pos` if one cached run holds all of them.
    fn get(&self, pos: u64, len: usize) -> Option<Bytes> {
        let i = self.runs.partition_point(|r| r.0 <= pos).checked_sub(1)?;
        let (start, b) = self.runs.get(i)?;
        let off = (pos - start) as usize;
        (off + len <= b.len()).then(|| b.slice(off..off + len))
    }

    /// Copies cached bytes of `[pos, pos + dst.len())` into `dst`; gaps become zeros.
    fn copy_into(&self, pos: u64, dst: &mut [u8]) {
        let end = pos + dst.len() as u64;
        let first = self.runs.partition_point(|r| r.0 + r.1.len() as u64 <= pos);
        // Zero only what no run covers (the bytes are written, so they must be defined).
        let mut filled = pos;
        for (start, b) in self.runs.range(first..) {
            if *start >= end {
                break;
            }
            let from = pos.max(*start);
            let to = end.min(start + b.len() as u64);
            dst[(filled - pos) as usize..(from - pos) as usize].fill(0);
            dst[(from - pos) as usize..(to - pos) as usize]
                .copy_from_slice(&b[(from - start) as usize..(to - start) as usize]);
            filled = to;
        }
        dst[(filled - pos) as usize..].fill(0);
    }

    /// The longest run of whole pages from `p` (page-aligned) to at most `limit` that cached
    /// runs hold back to back in memory, with each byte's address and position equal modulo
    /// the page: the flusher writes it straight from the cache, without a copy. Returns its
    /// address, its length and the runs holding its memory.
    fn direct_span(&self, p: u64, limit: u64) -> Option<(*const u8, usize, Vec<Bytes>)> {
        let i = self.runs.partition_point(|r| r.0 <= p).checked_sub(1)?;
        let (start, b) = &self.runs[i];
        let off = (p - start) as usize;
        if off >= b.len() || (b.as_ptr() as u64 + off as u64) % ALIGN != 0 {
            return None;
        }
        let mut end = start + b.len() as u64;
        let mut mem_end = b.as_ptr() as usize + b.len();
        let mut keep = vec![b.clone()];
        for (s, b) in self.runs.range(i + 1..) {
            if end >= limit || *s != end || b.as_ptr() as usize != mem_end {
                break;
            }
            end += b.len() as u64;
            mem_end += b.len();
            keep.push(b.clone());
        }
        let e = align_down(end.min(limit));
        (e > p).then(|| (b[off..].as_ptr(), (e - p) as usize, keep))
    }

    /// End of the cached data that lies below `limit`.
    fn data_end_below(&self, limit: u64) -> Option<u64> {
        let i = self.runs.partition_point(|r| r.0 < limit).checked_sub(1)?;
        self.runs
            .get(i)
            .map(|(s, b)| (s + b.len() as u64).min(limit))
    }

    /// Drops whole runs ending at or before `keep_from` while over `cap` bytes.
    fn evict(&mut self, keep_from: u64, cap: u64) {
        while self.bytes > cap {
            match self.runs.front() {
                Some((s, b)) if s + b.len() as u64 <= keep_from => {
                    self.bytes -= b.len() as u64;
                    self.runs.pop_front();
                }
                _ => break,
            }
        }
    }
}

/// Size of one encode block: runs are split off it until it is full.
const CHUNK_BLOCK: usize = 1 << 20;

/// Recycles encode blocks once the tail cache has let go of every run cut from them
/// ([`BlockPool`]). Past the cache's first fill the reuse took page faults from 2.8-3.0k/s to
/// 0.9-1.9k/s (bench/README.md, session 8); the pool holds no more than the cache and the
/// unflushed tail would anyway, plus 8 blocks.
struct ChunkPool(BlockPool);

impl ChunkPool {
    fn new(bytes: u64) -> Self {
        // The cache and the unflushed tail, plus a few blocks still pinned by readers.
        ChunkPool(BlockPool::new(
            CHUNK_BLOCK,
            (bytes / CHUNK_BLOCK as u64) as usize + 8,
        ))
    }

    /// A block with room for `len` bytes: a kept one if nothing uses it any more.
    fn take(&mut self, len: usize) -> BytesMut {
        if len > CHUNK_BLOCK {
            return BytesMut::with_capacity(len);
        }
        self.0.take(|| BytesMut::with_capacity(CHUNK_BLOCK)).0
    }
}

struct WriteState {
    written: u64,
    flushed: u64,
    durable: u64,
    cache: TailCache,
    /// Encode buffer; appended runs are split off it and frozen into the cache.
    chunk: BytesMut,
    /// Encode blocks, oldest first, for reuse (see [`ChunkPool`]).
    pool: ChunkPool,
    /// A failed flush: the shard refuses further writes instead of acknowledging lost data.
    error: Option<String>,
    closing: bool,
    /// STORETIMESTAMP of the last durable record, for the checkpoint.
    durable_store_ts: i64,
    written_store_ts: i64,
    /// Segment space below this has been written (data or warming zeros).
    zeroed: u64,
    /// A warming write in flight, `[start, end)`: data writes there wait for it.
    zeroing: Option<(u64, u64)>,
    /// The warmer stopped on an error.
    warming_failed: bool,
    /// Ticks of the flush watchdog ([`CommitLog::run_flush_watchdog`]), the clock that
    /// SYNC_FLUSH waits time out by.
    ticks: u64,
}

/// Where one appended record landed.
#[derive(Debug, Clone)]
pub struct Appended {
    pub offset: CommitLogOffset,
    pub size: u32,
    /// The encoded record, shared with the tail cache.
    pub record: Bytes,
}

/// What the caller asks to append; the commitlog fills PHYSICALOFFSET and STORETIMESTAMP.
pub struct AppendItem<'a> {
    pub meta: RecordMeta,
    pub body: &'a [u8],
    pub topic: &'a [u8],
    pub properties: &'a [u8],
}

/// A shard's commitlog. Lives on one executor (`Rc`).
pub struct CommitLog {
    shard: ShardId,
    dir: PathBuf,
    seg_size: u64,
    cfg: StoreConfig,
    segments: RefCell<Vec<Rc<Segment>>>,
    st: RefCell<WriteState>,
    /// Signalled whenever flushed, durable, zeroing, error or closing change (appenders
    /// waiting for durability or room wait here).
    changed: Notify,
    /// Signalled by every append, and with `changed` on error and closing (the flusher and
    /// the warmer wait here). Apart, so an append does not wake every waiting appender.
    appended: Notify,
    /// Signalled on error and closing only (the flush watchdog waits here).
    stopping: Notify,
    /// A segment being created ahead of need.
    next_segment: RefCell<Option<glommio::task::JoinHandle<Result<Rc<Segment>>>>>,
    /// Write buffers of `max_write_bytes` (a round's full pieces), reused across rounds.
    pool: DmaPool,
    /// Bytes written by the flusher, for stats.
    bytes_flushed: Cell<u64>,
    /// Where the log starts when no segment exists yet (segments are created by the flusher).
    empty_start: Cell<u64>,
    /// The shard's spare segments ([`spare_name`]), for the next new segments to take (the
    /// last first).
    spares: RefCell<Vec<PathBuf>>,
}

/// Result of opening (and possibly recovering) a commitlog.
pub struct OpenedLog {
    pub log: Rc<CommitLog>,
    /// Position the recovery scan started at (equal to the end on a clean open).
    pub scanned_from: u64,
}

/// Runs `f` on the executor's blocking-thread pool (file-system calls, large page-faulting work).
pub(super) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}

/// Lists `dir`'s entries whose names parse with `parse`, sorted. Runs off the executor.
pub async fn list_numbered(dir: &Path, parse: fn(&str) -> Option<u64>) -> Result<Vec<u64>> {
    let d = dir.to_path_buf();
    blocking(move || -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("listing", &d)(e)),
        };
        for ent in rd {
            let ent = ent.map_err(io_err("listing", &d))?;
            match ent.file_name().to_str().and_then(parse) {
                Some(v) => out.push(v),
                None => log::warn!(
                    "ignoring unexpected file {} in {}",
                    ent.file_name().to_string_lossy(),
                    d.display()
                ),
            }
        }
        out.sort_unstable();
        Ok(out)
    })
    .await
}

pub async fn create_dir_all(dir: &Path) -> Result<()> {
    let d = dir.to_path_buf();
    blocking(move || std::fs::create_dir_all(&d).map_err(io_err("creating directory", &d))).await
}

/// Renames `from` to `to` and syncs their directory, so the new name is durable before
/// anything is written under it.
async fn rename_durably(from: PathBuf, to: PathBuf) -> Result<()> {
    blocking(move || {
        std::fs::rename(&from, &to).map_err(io_err("renaming", &from))?;
        let dir = to.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing directory", dir))
    })
    .await
}

/// Opens (with `create`, creating and preallocating) the segment at `base`; with `spare`, that
/// spare file becomes it. With `dsync` the file is `O_DSYNC`: each write completes
/// only once durable, so SYNC_FLUSH needs no separate `fdatasync` (one device round trip per
/// flush round instead of two).
async fn open_segment(
    dir: &Path,
    base: u64,
    size: u64,
    create: bool,
    dsync: bool,
    spare: Option<PathBuf>,
) -> Result<Rc<Segment>> {
    let path = dir.join(file_name(base));
    let reuse = spare.is_some();
    if let Some(spare) = spare {
        rename_durably(spare, path.clone()).await?;
        log::info!("reusing an expired segment as {}", path.display());
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(create);
    if dsync {
        opts.custom_flags(libc::O_DSYNC);
    }
    let file = opts
        .dma_open(&path)
        .await
        .map_err(io_err("opening segment", &path))?;
    if create {
        let cur = file
            .file_size()
            .await
            .map_err(io_err("sizing segment", &path))?;
        if cur < size {
            // Preallocated so writes never extend the file (no metadata in fdatasync).
            file.pre_allocate(size, false)
                .await
                .map_err(io_err("preallocating segment", &path))?;
        }
    }
    Ok(Rc::new(Segment {
        base,
        file: Rc::new(file),
        path,
        reused: reuse,
    }))
}

/// How far the warmer zeroes: through the end of the tail's segment if that is not zeroed
/// yet, else into the next segment as far as the tail is into its own, plus `lead`.
fn warm_goal(zeroed: u64, written: u64, seg: u64, lead: u64) -> u64 {
    let next_base = (written / seg + 1) * seg;
    match zeroed < next_base {
        true => next_base,
        false => (next_base + written % seg + lead).min(next_base + seg),
    }
}

/// Where the next warming write starts: past what is warmed, and never below the end of the
/// page holding `written` (the flusher may already have written that partial page, and would
/// not rewrite it before the next append).
fn warm_start(zeroed: u64, written: u64) -> u64 {
    zeroed.max(align_up(written))
}

impl CommitLog {
    pub fn shard(&self) -> ShardId {
        self.shard
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn segment_size(&self) -> u64 {
        self.seg_size
    }
    pub fn written(&self) -> u64 {
        self.st.borrow().written
    }
    pub fn flushed(&self) -> u64 {
        self.st.borrow().flushed
    }
    pub fn durable(&self) -> u64 {
        self.st.borrow().durable
    }
    pub fn durable_store_ts(&self) -> i64 {
        self.st.borrow().durable_store_ts
    }
    pub fn bytes_flushed(&self) -> u64 {
        self.bytes_flushed.get()
    }
    /// First position still stored.
    pub fn min_pos(&self) -> u64 {
        let segs = self.segments.borrow();
        segs.first()
            .map(|s| s.base)
            .unwrap_or_else(|| self.empty_start.get())
    }
    /// Segments currently on disk (for retention and stats).
    pub fn segments(&self) -> Vec<Rc<Segment>> {
        self.segments.borrow().clone()
    }

    /// Opens the shard's log. `start_pos` is the checkpointed end; with `recover_from` set,
    /// the log is scanned from the start of the segment holding that position, each record
    /// is verified and handed to `visit`, and a torn or corrupt tail is truncated.
    pub async fn open(
        shard: ShardId,
        cfg: &StoreConfig,
        start_pos: Option<u64>,
        recover_from: Option<u64>,
        visit: &mut dyn FnMut(u64, &RecordView<'_>, &Bytes),
    ) -> Result<OpenedLog> {
        let dir = cfg.commitlog_dir.join(shard.index().to_string());
        create_dir_all(&dir).await?;
        let seg_size = cfg.segment_size;
        let dsync = cfg.dsync_segments();
        let bases = list_numbered(&dir, parse_file_name).await?;
        let mut segments = Vec::with_capacity(bases.len());
        for b in bases {
            if b % seg_size != 0 {
                return Err(StoreError::Corruption {
                    file: dir.join(file_name(b)),
                    offset: 0,
                    reason: format!(
                        "segment name is not a multiple of mappedFileSizeCommitLog {seg_size} \
                         (was the segment size changed?)"
                    ),
                });
            }
            segments.push(open_segment(&dir, b, seg_size, false, dsync, None).await?);
        }
        let log = Rc::new(CommitLog {
            shard,
            dir,
            seg_size,
            cfg: cfg.clone(),
            segments: RefCell::new(segments),
            st: RefCell::new(WriteState {
                written: 0,
                flushed: 0,
                durable: 0,
                cache: TailCache::default(),
                chunk: BytesMut::new(),
                pool: ChunkPool::new(cfg.tail_cache_bytes + cfg.max_unflushed_bytes),
                error: None,
                closing: false,
                durable_store_ts: 0,
                written_store_ts: 0,
                zeroed: 0,
                zeroing: None,
                warming_failed: false,
                ticks: 0,
            }),
            changed: Notify::default(),
            appended: Notify::default(),
            stopping: Notify::default(),
            next_segment: RefCell::new(None),
            // Enough for every piece of one round in flight.
            pool: DmaPool::new(
                cfg.max_write_bytes as usize,
                (ROUND_MAX / cfg.max_write_bytes.max(1)) as usize + 1,
            ),
            bytes_flushed: Cell::new(0),
            empty_start: Cell::new(0),
            spares: RefCell::new(Vec::new()),
        });
        // Spares kept by an earlier run are used if they still fit the segment size and the
        // number kept; the others are deleted.
        let dir = log.dir.clone();
        let keep = cfg.max_spares();
        let spares = blocking(move || {
            let mut found: Vec<(usize, PathBuf, u64)> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let i = parse_spare_name(&e.file_name().to_string_lossy())?;
                    Some((i, e.path(), e.metadata().ok()?.len()))
                })
                .collect();
            found.sort();
            let mut kept = Vec::new();
            for (_, path, len) in found {
                if len == seg_size && kept.len() < keep {
                    kept.push(path);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
            kept
        })
        .await;
        *log.spares.borrow_mut() = spares;
        let (first, last_end) = {
            let segs = log.segments.borrow();
            (
                segs.first().map(|s| s.base),
                segs.last().map(|s| s.base + seg_size),
            )
        };
        let (end, scanned_from) = match (first, recover_from, start_pos) {
            (None, _, cp) => {
                // Nothing on disk: never reuse offsets a checkpoint says were handed out.
                let p = cp.unwrap_or(0).div_ceil(seg_size) * seg_size;
                (p, p)
            }
            (Some(first), None, Some(cp)) => {
                let end = cp.clamp(first, last_end.unwrap_or(first));
                (end, end)
            }
            (Some(first), rf, _) => {
                let from = rf.unwrap_or(first).max(first);
                let from = from / seg_size * seg_size;
                (log.recover(from, visit).await?, from)
            }
        };
        log.reset_tail(end).await?;
        Ok(OpenedLog { log, scanned_from })
    }

    /// Makes `end` the write position: reads back its partial page into the cache so the
    /// next DMA write rewrites that page whole.
    async fn reset_tail(&self, end: u64) -> Result<()> {
        let page = align_down(end);
        let mut cache = TailCache::default();
        if page < end {
            if let Some(seg) = self.segment_at(page) {
                let n = (end - page) as usize;
                let rr = seg
                    .file
                    .read_at_aligned(page - seg.base, align_up(n as u64) as usize)
                    .await
                    .map_err(io_err("reading tail page", &seg.path))?;
                if rr.len() < n {
                    return Err(StoreError::Corruption {
                        file: seg.path.clone(),
                        offset: page - seg.base,
                        reason: format!("short read of the tail page: {} < {n}", rr.len()),
                    });
                }
                cache.push(page, Bytes::copy_from_slice(&rr[..n]));
            }
        }
        self.empty_start.set(end);
        let mut st = self.st.borrow_mut();
        st.written = end;
        st.flushed = end;
        st.durable = end;
        // Segments are zeroed whole before records reach them (`run_warmer`): the rest of the
        // tail's segment is taken as zeroed, not zeroed again at once (a burst that rounds
        // would queue behind). A segment that was not (written by an older version, or
        // overtaken by the records) is only slower to append to.
        st.zeroed = end.div_ceil(self.seg_size) * self.seg_size;
        st.cache = cache;
        Ok(())
    }

    fn segment_at(&self, pos: u64) -> Option<Rc<Segment>> {
        let segs = self.segments.borrow();
        let i = segs.partition_point(|s| s.base <= pos).checked_sub(1)?;
        let s = segs.get(i)?;
        (pos < s.base + self.seg_size).then(|| s.clone())
    }

    /// Scans from `from` (a segment base) to the last valid record; truncates a torn or
    /// corrupt tail; returns the end.
    async fn recover(
        &self,
        from: u64,
        visit: &mut dyn FnMut(u64, &RecordView<'_>, &Bytes),
    ) -> Result<u64> {
        let started = Instant::now();
        log::info!(
            "shard {}: recovering commitlog from position {from}",
            self.shard
        );
        let (end, records, bad) = self.scan(from, u64::MAX, visit).await?;
        if let Some((seg, reason)) = bad {
            if let Some(reason) = reason {
                // A whole record of another position is what a reused segment holds past its
                // tail (`reuse_segments`); said so, since the log cannot tell it from damage.
                let hint = match reason.starts_with("PHYSICALOFFSET") {
                    true => " (in a reused segment: its older records, past the tail)",
                    false => "",
                };
                log::warn!(
                    "shard {}: commitlog {} offset {}: invalid record ({reason}){hint}; \
                     truncating the log at position {end}",
                    self.shard,
                    seg.path.display(),
                    end - seg.base
                );
            }
            self.truncate_after(&seg, end).await?;
        }
        log::info!(
            "shard {}: commitlog recovered: {records} record(s) verified, end at {end}, in {:?}",
            self.shard,
            started.elapsed()
        );
        Ok(end)
    }

    /// Reads and verifies records (magic, sizes, body CRC, PHYSICALOFFSET) from `from` (a
    /// segment base) until `to` or the first invalid record. Returns the end position, the
    /// number of records, and where the scan stopped short: the segment, and the reason
    /// (`None` when the stop is at never-written zeros).
    #[allow(clippy::type_complexity)]
    pub async fn scan(
        &self,
        from: u64,
        to: u64,
        visit: &mut dyn FnMut(u64, &RecordView<'_>, &Bytes),
    ) -> Result<(u64, u64, Option<(Rc<Segment>, Option<String>)>)> {
        let segs: Vec<Rc<Segment>> = self
            .segments
            .borrow()
            .iter()
            .filter(|s| s.base + self.seg_size > from)
            .cloned()
            .collect();
        let window = (self.cfg.max_message_size as u64 + 64 * 1024).max(8 << 20);
        let mut pos = from;
        let mut records = 0u64;
        let mut last_log = Instant::now();
        'segments: for seg in &segs {
            if pos < seg.base {
                // A blank record sent us here, or an earlier segment ended exactly full.
                pos = seg.base;
            }
            let seg_end = seg.base + self.seg_size;
            let mut buf = Bytes::new();
            let mut buf_pos = pos;
            loop {
                if pos >= to {
                    break 'segments;
                }
                if pos + 8 > seg_end {
                    pos = seg_end;
                    continue 'segments;
                }
                if last_log.elapsed() > Duration::from_secs(5) {
                    log::info!(
                        "shard {}: scanning commitlog: at position {pos}, {records} record(s)",
                        self.shard
                    );
                    last_log = Instant::now();
                }
                if pos + 8 > buf_pos + buf.len() as u64 {
                    (buf, buf_pos) = self.read_window(seg, pos, window).await?;
                }
                let at = (pos - buf_pos) as usize;
                let (total, magic) = record::peek_header(&buf[at..]).unwrap_or((0, 0));
                if magic == BLANK_MAGIC && total as i64 == (seg_end - pos) as i64 {
                    pos = seg_end;
                    continue 'segments;
                }
                let total_ok = total > 0 && (total as u64) <= seg_end - pos;
                if total_ok && pos + total as u64 > buf_pos + buf.len() as u64 {
                    (buf, buf_pos) = self.read_window(seg, pos, window).await?;
                }
                let at = (pos - buf_pos) as usize;
                let verdict = RecordView::parse(&buf[at..])
                    .map_err(|e| e.to_string())
                    .and_then(|v| v.verify_crc().map(|_| v).map_err(|e| e.to_string()))
                    .and_then(|v| {
                        let expect = CommitLogOffset::new(self.shard, pos).as_i64();
                        if v.meta.physical_offset == expect {
                            Ok(v)
                        } else {
                            Err(format!(
                                "PHYSICALOFFSET {} is not this position ({expect})",
                                v.meta.physical_offset
                            ))
                        }
                    });
                match verdict {
                    Ok(v) => {
                        let whole = buf.slice(at..at + v.total_size);
                        visit(pos, &v, &whole);
                        pos += v.total_size as u64;
                        records += 1;
                    }
                    Err(reason) => {
                        let zeros = buf[at..].iter().take(8).all(|b| *b == 0);
                        return Ok((
                            pos,
                            records,
                            Some((seg.clone(), (!zeros).then_some(reason))),
                        ));
                    }
                }
            }
        }
        Ok((pos, records, None))
    }

    async fn read_window(&self, seg: &Segment, pos: u64, window: u64) -> Result<(Bytes, u64)> {
        let start = align_down(pos);
        let end = (start + window).min(seg.base + self.seg_size);
        let rr = seg
            .file
            .read_at_aligned(start - seg.base, (end - start) as usize)
            .await
            .map_err(io_err("reading segment", &seg.path))?;
        Ok((Bytes::copy_from_slice(&rr), start))
    }

    /// After a torn or corrupt tail at `pos` in `seg`: zero the region a lost flush round
    /// could have touched (so stale records cannot reappear after a later crash) and drop
    /// later segments, which can only hold data from beyond the truncation.
    async fn truncate_after(&self, seg: &Rc<Segment>, pos: u64) -> Result<()> {
        let seg_end = seg.base + self.seg_size;
        let page = align_down(pos);
        let dirty = self.cfg.max_unflushed_bytes + 4 * self.cfg.max_write_bytes;
        let end = align_up(pos + dirty).min(seg_end);
        let keep = (pos - page) as usize;
        let head = if keep > 0 {
            let rr = seg
                .file
                .read_at_aligned(page - seg.base, 4096)
                .await
                .map_err(io_err("reading tail page", &seg.path))?;
            rr.get(..keep).map(<[u8]>::to_vec).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut p = page;
        while p < end {
            let n = (end - p).min(self.cfg.max_write_bytes);
            let mut buf = seg.file.alloc_dma_buffer(n as usize);
            buf.as_bytes_mut().fill(0);
            if p == page {
                buf.as_bytes_mut()[..head.len()].copy_from_slice(&head);
            }
            let r = seg.file.write_at(buf, p - seg.base).await;
            check_written(r, n as usize, "zeroing torn tail", &seg.path)?;
            p += n;
        }
        seg.file
            .fdatasync()
            .await
            .map_err(io_err("syncing segment", &seg.path))?;
        let later: Vec<Rc<Segment>> = {
            let mut segs = self.segments.borrow_mut();
            let i = segs.partition_point(|s| s.base <= seg.base);
            segs.split_off(i)
        };
        for s in later {
            log::warn!(
                "shard {}: removing segment {} past the truncated tail",
                self.shard,
                s.path.display()
            );
            s.file
                .remove()
                .await
                .map_err(io_err("removing segment", &s.path))?;
        }
        Ok(())
    }

    /// Waits until at least `bytes` are unflushed, or the log is closing, for at most
    /// `timeout` (the ASYNC_FLUSH flusher's waits).
    async fn unflushed_at_least(&self, bytes: u64, timeout: Duration) {
        futures_lite::future::or(
            self.appended.wait_until(|| {
                let st = self.st.borrow();
                st.written - st.flushed >= bytes || st.closing
            }),
            glommio::timer::sleep(timeout),
        )
        .await;
    }

    /// Waits while the unflushed tail is over its cap (ASYNC_FLUSH backpressure).
    pub async fn wait_for_room(&self) -> Result<()> {
        let cap = self.cfg.max_unflushed_bytes;
        self.changed
            .wait_until(|| {
                let st = self.st.borrow();
                st.written - st.flushed < cap || st.error.is_some() || st.closing
            })
            .await;
        self.check_writable()
    }

    fn check_writable(&self) -> Result<()> {
        let st = self.st.borrow();
        if let Some(e) = &st.error {
            return Err(StoreError::FlushFailed(e.clone()));
        }
        if st.closing {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Appends records at the tail, synchronously (no await): they are readable at once and
    /// durable after the flusher's next round. `store_ts` becomes every STORETIMESTAMP.
    pub fn append(&self, items: &[AppendItem<'_>], store_ts: i64) -> Result<Vec<Appended>> {
        self.check_writable()?;
        // Validate every item first so a bad one leaves the log untouched.
        for it in items {
            if it.topic.len() > i16::MAX as usize || it.properties.len() > i16::MAX as usize {
                return Err(StoreError::BadMessage(format!(
                    "topic ({} bytes) or properties ({} bytes) over 32767 bytes",
                    it.topic.len(),
                    it.properties.len()
                )));
            }
        }
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let mut out = Vec::with_capacity(items.len());
        // Records of the run being encoded: (position, length, start in the chunk).
        let mut open: Vec<(u64, u64, usize)> = Vec::with_capacity(items.len());
        let mut run_start = st.written;
        for it in items {
            let len = record::encoded_len(
                it.body.len(),
                it.topic.len(),
                it.properties.len(),
                &it.meta.born_host,
                &self.cfg.store_host,
            ) as u64;
            let seg_end = (st.written / self.seg_size + 1) * self.seg_size;
            if len + 8 > seg_end - st.written {
                // Blank record, then the record opens the next segment (reference §5.2).
                if st.chunk.capacity() - st.chunk.len() < 8 {
                    self.seal_run(st, run_start, &mut open, &mut out);
                    run_start = st.written;
                    st.chunk = st.pool.take(8);
                }
                st.chunk.put_i32((seg_end - st.written) as i32);
                st.chunk.put_i32(BLANK_MAGIC);
                st.written = seg_end;
                self.seal_run(st, run_start, &mut open, &mut out);
                run_start = seg_end;
            }
            let pos = st.written;
            let meta = RecordMeta {
                physical_offset: CommitLogOffset::new(self.shard, pos).as_i64(),
                store_timestamp: store_ts,
                store_host: self.cfg.store_host,
                ..it.meta
            };
            // A record goes where its address equals its position modulo the page, so the
            // flusher can write whole pages from the cache (`TailCache::direct_span`); that
            // holds by itself while runs follow each other in one block.
            let pad = |c: &BytesMut| {
                (pos.wrapping_sub(c.as_ptr() as u64 + c.len() as u64) % ALIGN) as usize
            };
            if pad(&st.chunk) != 0 || st.chunk.capacity() - st.chunk.len() < len as usize {
                // A run lies within one block: seal what this one holds, go on in the next.
                self.seal_run(st, run_start, &mut open, &mut out);
                run_start = pos;
                if st.chunk.capacity() < pad(&st.chunk) + len as usize {
                    st.chunk = st.pool.take(len as usize + ALIGN as usize);
                }
                let n = pad(&st.chunk);
                st.chunk.put_bytes(0, n);
                st.chunk.advance(n);
            }
            let at = st.chunk.len();
            record::encode(&mut st.chunk, &meta, it.body, it.topic, it.properties)
                .map_err(|e| StoreError::BadMessage(e.to_string()))?;
            st.written += len;
            open.push((pos, len, at));
        }
        self.seal_run(st, run_start, &mut open, &mut out);
        st.written_store_ts = store_ts;
        drop(guard);
        self.appended.notify_all();
        Ok(out)
    }

    /// Freezes the encoded bytes into a cached run and hands out each record's slice of it.
    fn seal_run(
        &self,
        st: &mut WriteState,
        run_start: u64,
        open: &mut Vec<(u64, u64, usize)>,
        out: &mut Vec<Appended>,
    ) {
        let run = st.chunk.split().freeze();
        for (pos, len, at) in open.drain(..) {
            out.push(Appended {
                offset: CommitLogOffset::new(self.shard, pos),
                size: len as u32,
                record: run.slice(at..at + len as usize),
            });
        }
        if !run.is_empty() {
            st.cache.push(run_start, run);
        }
    }

    /// Waits until everything below `end` is durable (SYNC_FLUSH acknowledgement), for
    /// `syncFlushTimeout` to 1.25 × that, counted in the watchdog's ticks: a timer for each
    /// waiter put a timer-tree insert and remove into every SYNC_FLUSH append (~1.5 % of a
    /// shard's CPU at 64 appenders). Without [`CommitLog::run_flush_watchdog`] running (a
    /// SYNC_FLUSH shard runs it) a wait never times out.
    pub async fn wait_durable(&self, end: u64) -> Result<()> {
        let start = self.st.borrow().ticks;
        // Over WATCHDOG_TICKS whole tick periods have passed once the count moved by one more.
        let expired = |st: &WriteState| st.ticks > start + WATCHDOG_TICKS;
        self.changed
            .wait_until(|| {
                let st = self.st.borrow();
                st.durable >= end || st.error.is_some() || st.closing || expired(&st)
            })
            .await;
        let st = self.st.borrow();
        if st.durable >= end {
            return Ok(());
        }
        if let Some(e) = &st.error {
            return Err(StoreError::FlushFailed(e.clone()));
        }
        if st.closing {
            return Err(StoreError::Closed);
        }
        Err(StoreError::FlushTimeout(self.cfg.sync_flush_timeout_ms))
    }

    /// The clock of SYNC_FLUSH waits: ticks `WATCHDOG_TICKS` times per `syncFlushTimeout`,
    /// waking the waiters while anything written is not yet durable, so one that has waited
    /// its time sees it. Runs until [`CommitLog::close`] or a flush error.
    pub async fn run_flush_watchdog(self: Rc<Self>) {
        let period = Duration::from_millis(self.cfg.sync_flush_timeout_ms / WATCHDOG_TICKS)
            .max(Duration::from_millis(1));
        let stop = || {
            let st = self.st.borrow();
            st.closing || st.error.is_some()
        };
        while !stop() {
            futures_lite::future::or(
                glommio::timer::sleep(period),
                self.stopping.wait_until(stop),
            )
            .await;
            let mut st = self.st.borrow_mut();
            st.ticks += 1;
            let waiting = st.durable < st.written;
            drop(st);
            if waiting {
                self.changed.notify_all();
            }
        }
    }

    /// `[pos, pos + len)` from the tail cache, if it holds it whole.
    pub fn cached(&self, pos: u64, len: usize) -> Option<Bytes> {
        self.st.borrow().cache.get(pos, len)
    }

    /// Reads `len` bytes at shard position `pos`: from the tail cache when there, else with an
    /// aligned DMA read of the segment.
    pub async fn read(&self, pos: u64, len: usize) -> Result<Bytes> {
        if let Some(b) = self.cached(pos, len) {
            return Ok(b);
        }
        let flushed = self.st.borrow().flushed;
        let seg = match self.segment_at(pos) {
            Some(s) if pos + len as u64 <= flushed.max(s.base) => s,
            _ => {
                return Err(StoreError::OffsetNotFound(
                    CommitLogOffset::new(self.shard, pos).to_string(),
                ))
            }
        };
        if pos + len as u64 > seg.base + self.seg_size {
            return Err(StoreError::OffsetNotFound(format!(
                "{} (+{len} crosses a segment end)",
                CommitLogOffset::new(self.shard, pos)
            )));
        }
        let rr = seg
            .file
            .read_at(pos - seg.base, len)
            .await
            .map_err(io_err("reading segment", &seg.path))?;
        if rr.len() < len {
            return Err(StoreError::Corruption {
                file: seg.path.clone(),
                offset: pos - seg.base,
                reason: format!("short read: {} of {len} bytes", rr.len()),
            });
        }
        Ok(Bytes::copy_from_slice(&rr[..len]))
    }

    /// Path and in-segment offset of a position (for error messages).
    pub fn locate(&self, pos: u64) -> (PathBuf, u64) {
        match self.segment_at(pos) {
            Some(s) => (s.path.clone(), pos - s.base),
            None => (
                self.dir
                    .join(file_name(pos / self.seg_size * self.seg_size)),
                0,
            ),
        }
    }

    /// Gets (creating and preallocating if needed) the segment starting at `base`, and starts
    /// creating the one after it in the background.
    async fn segment_for_write(&self, base: u64) -> Result<Rc<Segment>> {
        if let Some(s) = self.segment_at(base) {
            return Ok(s);
        }
        let pending = self.next_segment.borrow_mut().take();
        let dsync = self.cfg.dsync_segments();
        let open_here = || {
            let spare = self.spares.borrow_mut().pop();
            open_segment(&self.dir, base, self.seg_size, true, dsync, spare)
        };
        let seg = match pending {
            Some(h) => match h.await {
                Some(Ok(s)) if s.base == base => s,
                _ => open_here().await?,
            },
            None => open_here().await?,
        };
        {
            let mut segs = self.segments.borrow_mut();
            let i = segs.partition_point(|s| s.base < base);
            if let Some(s) = segs.get(i).filter(|s| s.base == base) {
                // The flusher and the warmer both opened it; keep the first.
                return Ok(s.clone());
            }
            segs.insert(i, seg.clone());
        }
        let dir = self.dir.clone();
        let (next, size) = (base + self.seg_size, self.seg_size);
        let spare = self.spares.borrow_mut().pop();
        let h = glommio::spawn_local(async move {
            open_segment(&dir, next, size, true, dsync, spare).await
        })
        .detach();
        *self.next_segment.borrow_mut() = Some(h);
        Ok(seg)
    }

    /// Writes `[align_down(flushed), target)` with DMA, in pieces of at most
    /// `max_write_bytes`, all in flight at once. Returns the segments touched.
    ///
    /// Without `O_DSYNC`, whole pages go straight from the tail cache's memory and only a
    /// page the cache does not hold whole in place (the partial last one, one spanning two
    /// encode blocks) is copied into a DMA buffer: the copy was ~10 % of a shard's time
    /// under batches. A page is never written from memory an appender may still change, so
    /// a checksumming layer below never sees a buffer change under a write. `O_DSYNC`
    /// segments keep one copied write per piece: each write there costs a device flush.
    async fn write_through(&self, target: u64) -> Result<Vec<Rc<Segment>>> {
        let mut p = align_down(self.st.borrow().flushed);
        let mut tasks = Vec::new();
        let mut touched: Vec<Rc<Segment>> = Vec::new();
        let direct = !self.cfg.dsync_segments();
        while p < target {
            let seg_base = p / self.seg_size * self.seg_size;
            let seg_end = seg_base + self.seg_size;
            // Past a blank record the rest of the segment holds no data: skip it.
            let data_end = self
                .st
                .borrow()
                .cache
                .data_end_below(seg_end.min(target))
                .unwrap_or(p);
            if data_end <= p {
                p = seg_end;
                continue;
            }
            let mut q = data_end.min(p + self.cfg.max_write_bytes);
            let span = match direct {
                true => self.st.borrow().cache.direct_span(p, q),
                false => None,
            };
            if let Some((_, n, _)) = &span {
                q = p + *n as u64;
            } else if direct && q > p + ALIGN {
                // Copy one page; a span may start again at the next.
                q = p + ALIGN;
            }
            let end = align_up(q);
            // Never race a warming write of the same blocks: its zeros could land last.
            self.changed
                .wait_until(|| match self.st.borrow().zeroing {
                    Some((zs, ze)) => ze <= p || zs >= end,
                    None => true,
                })
                .await;
            let seg = self.segment_for_write(seg_base).await?;
            if touched.last().map(|s| s.base) != Some(seg.base) {
                touched.push(seg.clone());
            }
            let len = (end - p) as usize;
            let file = seg.file.clone();
            let path = seg.path.clone();
            let at = p - seg.base;
            match span {
                Some((ptr, n, keep)) => tasks.push(glommio::spawn_local(async move {
                    // SAFETY: `keep` holds the runs whose memory `ptr..ptr + n` is; they are
                    // frozen (an appender only writes past `written`, beyond every whole page
                    // of the span), and `direct_span` checked the page alignment.
                    let r = unsafe { file.write_external_at(ptr, n, Box::new(keep), at) }.await;
                    check_written(r, n, "writing segment", path)?;
                    Ok((n as u64, None))
                })),
                None => {
                    let mut buf = self.pool.get(&seg.file, len);
                    self.st.borrow().cache.copy_into(p, buf.as_bytes_mut());
                    // Let appenders run between copies.
                    futures_lite::future::yield_now().await;
                    tasks.push(glommio::spawn_local(async move {
                        // Shared with the write, so the buffer comes back for the pool.
                        let buf = Rc::new(buf);
                        let n = file.write_rc_at(buf.clone(), at).await;
                        let back = Rc::try_unwrap(buf).ok();
                        check_written(n, len, "writing segment", path)?;
                        Ok((len as u64, back))
                    }));
                }
            }
            p = q;
        }
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok((n, back)) => {
                    self.bytes_flushed.set(self.bytes_flushed.get() + n);
                    if let Some(b) = back {
                        self.pool.put(b);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(touched),
        }
    }

    /// The flusher: runs until [`CommitLog::close`]. One round = DMA writes of everything
    /// written so far, then, when the interval elapsed, one fdatasync per segment (SYNC_FLUSH
    /// writes are `O_DSYNC`, durable when they complete).
    pub async fn run_flusher(self: Rc<Self>) {
        let interval = Duration::from_millis(self.cfg.flush_interval_ms.max(1));
        let sync_mode = self.cfg.flush_disk_type == FlushDiskType::SyncFlush;
        let mut last_sync = Instant::now();
        let mut last_write = last_sync;
        let dsync = self.cfg.dsync_segments();
        // Segments written since their last fdatasync (never any for O_DSYNC segments).
        let mut unsynced: Vec<Rc<Segment>> = Vec::new();
        loop {
            if sync_mode {
                self.appended
                    .wait_until(|| {
                        let st = self.st.borrow();
                        st.written > st.durable || st.closing
                    })
                    .await;
                // Appenders woken by the last round are queued behind us: let them append
                // first, so this round commits them all instead of just the first one.
                futures_lite::future::yield_now().await;
            } else {
                let left = interval.saturating_sub(last_sync.elapsed());
                self.unflushed_at_least(self.cfg.flush_trigger_bytes.max(1), left)
                    .await;
                // Coalesce: at most one write per commit interval, unless a full write
                // piece is waiting.
                let gap = Duration::from_millis(self.cfg.commit_interval_ms);
                let wait = gap.saturating_sub(last_write.elapsed());
                if !wait.is_zero() {
                    self.unflushed_at_least(self.cfg.max_write_bytes.max(1), wait)
                        .await;
                }
                // Let queued appends join this round (rounds batch themselves under load).
                futures_lite::future::yield_now().await;
            }
            last_write = Instant::now();
            // A round writes at most ROUND_MAX: a long copy into DMA buffers would keep
            // appenders off the core; the next round follows at once.
            let (target, closing, store_ts) = {
                let st = self.st.borrow();
                let cap = align_down(st.flushed) + ROUND_MAX.max(self.cfg.max_write_bytes);
                (st.written.min(cap), st.closing, st.written_store_ts)
            };
            let result = async {
                if target > self.st.borrow().flushed {
                    for s in self.write_through(target).await? {
                        if !dsync && !unsynced.iter().any(|u| u.base == s.base) {
                            unsynced.push(s);
                        }
                    }
                    let mut st = self.st.borrow_mut();
                    st.flushed = target;
                    let keep_from = align_down(target);
                    let cap = self.cfg.tail_cache_bytes;
                    st.cache.evict(keep_from, cap);
                }
                let due = sync_mode || closing || last_sync.elapsed() >= interval;
                if due && self.st.borrow().durable < target {
                    for s in unsynced.drain(..) {
                        s.file
                            .fdatasync()
                            .await
                            .map_err(io_err("syncing segment", &s.path))?;
                    }
                    let mut st = self.st.borrow_mut();
                    st.durable = target;
                    if target == st.written {
                        st.durable_store_ts = store_ts;
                    }
                }
                if due {
                    last_sync = Instant::now();
                }
                Ok::<(), StoreError>(())
            }
            .await;
            if let Err(e) = result {
                log::error!(
                    "shard {}: commitlog flush failed, refusing further writes: {e}",
                    self.shard
                );
                self.st.borrow_mut().error = Some(e.to_string());
                self.wake_all();
                return;
            }
            self.changed.notify_all();
            let st = self.st.borrow();
            if st.closing && st.durable >= st.written {
                return;
            }
        }
    }

    /// Zeroes segments before records reach them, in the background, so data writes land in
    /// blocks the filesystem already maps as written. Runs until [`CommitLog::close`].
    ///
    /// Why the *next* segment: on ext4 a durable write (`O_DSYNC`, `fdatasync`) commits the
    /// journal whenever its file has an extent conversion not yet committed, and writing zeros
    /// converts extents. Zeros written into the segment being appended to, however far ahead
    /// of the data, put a journal commit into nearly every SYNC_FLUSH round; zeros written
    /// into the next segment (another file) do not. So while records go into one segment, the
    /// next is zeroed, paced to stay `warm_ahead_bytes` ahead of the tail's offset in its own
    /// segment: zero writes then come a chunk at a time, between rounds, not as a burst that
    /// rounds would queue behind. A new store's first segment is zeroed whole, while the
    /// store opens ([`CommitLog::wait_warmed`]); after a restart the rest of the tail's
    /// segment is taken as zeroed (see `reset_tail`).
    pub async fn run_warmer(self: Rc<Self>) {
        // Writes through a handle without O_DSYNC (an O_DSYNC write would flush the device
        // cache for zeros); one fdatasync at each segment's end commits their conversions.
        const CHUNK: u64 = 256 << 10;
        let seg = self.seg_size;
        let lead = self.cfg.warm_ahead_bytes.max(CHUNK);
        let next = |st: &WriteState| warm_start(st.zeroed, st.written);
        let goal = |st: &WriteState| warm_goal(st.zeroed, st.written, seg, lead);
        let mut zeros: Option<Rc<glommio::io::DmaBuffer>> = None;
        // The segment being zeroed, opened without O_DSYNC: (base, file).
        let mut handle: Option<(u64, DmaFile)> = None;
        loop {
            self.appended
                .wait_until(|| {
                    let st = self.st.borrow();
                    st.closing || st.error.is_some() || next(&st) < goal(&st)
                })
                .await;
            let (start, end) = {
                let mut st = self.st.borrow_mut();
                if st.closing || st.error.is_some() {
                    break;
                }
                let start = next(&st);
                let seg_end = (start / seg + 1) * seg;
                let end = (start + CHUNK).min(seg_end);
                // Claimed before any await: the flusher waits for it, and `written` may
                // grow into it meanwhile.
                st.zeroing = Some((start, end));
                (start, end)
            };
            let seg_base = start / seg * seg;
            let result = async {
                let s = self.segment_for_write(seg_base).await?;
                if s.reused {
                    // Written whole before: nothing to zero.
                    return Ok(seg_base + seg);
                }
                if handle.as_ref().map(|h| h.0) != Some(seg_base) {
                    if let Some((_, old)) = handle.take() {
                        old.close().await.ok();
                    }
                    let file = OpenOptions::new()
                        .write(true)
                        .dma_open(&s.path)
                        .await
                        .map_err(io_err("opening segment", &s.path))?;
                    handle = Some((seg_base, file));
                }
                let file = &handle.as_ref().expect("opened above").1;
                let len = (end - start) as usize;
                // One buffer of zeros serves every full chunk.
                let buf = match &zeros {
                    Some(z) if len == CHUNK as usize => Rc::clone(z),
                    _ => {
                        let mut b = file.alloc_dma_buffer(len);
                        b.as_bytes_mut().fill(0);
                        let b = Rc::new(b);
                        if len == CHUNK as usize {
                            zeros = Some(b.clone());
                        }
                        b
                    }
                };
                let r = file.write_rc_at(buf, start - s.base).await;
                check_written(r, len, "warming segment", &s.path)?;
                if end % seg == 0 {
                    file.fdatasync()
                        .await
                        .map_err(io_err("syncing segment", &s.path))?;
                }
                Ok::<u64, StoreError>(end)
            }
            .await;
            {
                let mut st = self.st.borrow_mut();
                st.zeroing = None;
                match &result {
                    Ok(upto) => st.zeroed = st.zeroed.max(*upto),
                    Err(_) => st.warming_failed = true,
                }
            }
            self.changed.notify_all();
            if let Err(e) = result {
                // Not fatal: appends still work on unwarmed blocks, only slower.
                log::warn!("shard {}: stopping segment warming: {e}", self.shard);
                break;
            }
        }
        if let Some((_, file)) = handle {
            file.close().await.ok();
        }
    }

    /// Waits until the segment holding the tail is zeroed whole, or warming stopped. A new
    /// store's shards wait here while they open, so that the first segment's records too
    /// land in written blocks.
    pub async fn wait_warmed(&self) {
        self.changed
            .wait_until(|| {
                let st = self.st.borrow();
                let seg_end = (st.written / self.seg_size + 1) * self.seg_size;
                st.zeroed >= seg_end || st.warming_failed || st.closing || st.error.is_some()
            })
            .await;
    }

    /// Stops accepting appends and waits for the flusher to make everything durable.
    pub async fn close(&self) -> Result<()> {
        self.st.borrow_mut().closing = true;
        self.wake_all();
        self.changed
            .wait_until(|| {
                let st = self.st.borrow();
                st.durable >= st.written || st.error.is_some()
            })
            .await;
        if let Some(e) = &self.st.borrow().error {
            return Err(StoreError::FlushFailed(e.clone()));
        }
        Ok(())
    }

    /// Removes the oldest segment if it is not the active one; returns its path.
    pub fn detach_oldest(&self) -> Option<Rc<Segment>> {
        let written = self.written();
        let mut segs = self.segments.borrow_mut();
        let first = segs.first()?;
        // The active segment (holding `written`) and anything after it stay.
        if first.base + self.seg_size > written || segs.len() < 2 {
            return None;
        }
        Some(segs.remove(0))
    }

    /// Keeps an expired segment, detached by [`CommitLog::detach_oldest`], as a spare for a
    /// new segment (`reuse_segments`), if the shard has fewer than `spare_segments` and no
    /// reader holds it. `false`: not kept, the caller deletes it.
    pub async fn retire(&self, seg: Rc<Segment>) -> Result<bool> {
        if self.spares.borrow().len() >= self.cfg.max_spares() {
            return Ok(false);
        }
        // A read in flight still holds it: its bytes must not change under the read.
        let Ok(seg) = Rc::try_unwrap(seg) else {
            return Ok(false);
        };
        let Ok(file) = Rc::try_unwrap(seg.file) else {
            return Ok(false);
        };
        let size = file
            .file_size()
            .await
            .map_err(io_err("sizing", &seg.path))?;
        file.close().await.map_err(io_err("closing", &seg.path))?;
        if size != self.seg_size {
            return Ok(false);
        }
        // The first name no spare has. Offered only once renamed: a segment created meanwhile
        // must not take a spare that is not there yet. (Retention, the only caller, retires
        // one segment at a time.)
        let to = (0..)
            .map(|i| self.dir.join(spare_name(i)))
            .find(|p| !self.spares.borrow().contains(p))
            .expect("a free spare name");
        rename_durably(seg.path.clone(), to.clone()).await?;
        self.spares.borrow_mut().push(to);
        Ok(true)
    }

    /// Wakes every waiter (each re-checks its condition).
    pub fn wake_all(&self) {
        self.changed.notify_all();
        self.appended.notify_all();
        self.stopping.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYNC_FLUSH wait gives up after `syncFlushTimeout` by the watchdog's ticks (no timer
    /// of its own), and a wait that the flusher answers in time succeeds.
    #[test]
    fn sync_wait_times_out_by_the_watchdog_and_succeeds_once_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        crate::store::run_on_executor(move || async move {
            let mut cfg = StoreConfig::new(&root);
            cfg.flush_disk_type = FlushDiskType::SyncFlush;
            cfg.segment_size = 1 << 20;
            cfg.warm_segments = Some(false);
            cfg.sync_flush_timeout_ms = 40;
            let shard = ShardId::new(0).unwrap();
            let log = CommitLog::open(shard, &cfg, Some(0), None, &mut |_, _, _| {})
                .await
                .unwrap()
                .log;
            glommio::spawn_local(log.clone().run_flush_watchdog()).detach();
            let item = AppendItem {
                meta: RecordMeta {
                    queue_id: 0,
                    flag: 0,
                    queue_offset: 0,
                    physical_offset: 0,
                    sys_flag: 0,
                    born_timestamp: 1,
                    born_host: "127.0.0.1:1".parse().unwrap(),
                    store_timestamp: 0,
                    store_host: "127.0.0.1:2".parse().unwrap(),
                    reconsume_times: 0,
                    prepared_transaction_offset: 0,
                },
                body: b"hello",
                topic: b"T",
                properties: b"",
            };
            let a = log.append(std::slice::from_ref(&item), 2).unwrap();
            let end = a[0].offset.pos() + a[0].size as u64;
            // No flusher runs yet: the wait must time out, and not before its time.
            let t = Instant::now();
            let r = glommio::timer::timeout(Duration::from_secs(2), async {
                Ok(log.wait_durable(end).await)
            })
            .await
            .expect("the wait never timed out");
            let waited = t.elapsed();
            assert!(matches!(r, Err(StoreError::FlushTimeout(40))), "{r:?}");
            assert!(waited >= Duration::from_millis(40), "{waited:?}");
            assert!(waited < Duration::from_millis(1000), "{waited:?}");
            glommio::spawn_local(log.clone().run_flusher()).detach();
            log.wait_durable(end).await.unwrap();
            assert!(log.durable() >= end);
            log.close().await.unwrap();
        });
    }

    #[test]
    fn warming_finishes_the_tail_segment_then_keeps_pace_in_the_next() {
        let (seg, lead) = (100 << 20, 4 << 20);
        // A tail segment not zeroed (a new store, an older version's): all of it, at once.
        assert_eq!(warm_goal(0, 0, seg, lead), seg);
        assert_eq!(warm_goal(10 << 20, 5 << 20, seg, lead), seg);
        // Then the next segment, as far as the tail is into its own, plus the lead.
        assert_eq!(warm_goal(seg, 0, seg, lead), seg + lead);
        assert_eq!(
            warm_goal(seg + (8 << 20), 30 << 20, seg, lead),
            seg + (34 << 20)
        );
        // Never past the next segment's end.
        assert_eq!(warm_goal(seg + (97 << 20), 98 << 20, seg, lead), 2 * seg);
        // The tail moved into the next segment: the one after it is next.
        assert_eq!(warm_goal(2 * seg, seg + 1, seg, lead), 2 * seg + 1 + lead);
    }

    #[test]
    fn warming_never_starts_inside_written_pages() {
        assert_eq!(warm_start(0, 0), 0);
        assert_eq!(warm_start(0, 1), 4096);
        assert_eq!(warm_start(4096, 4096), 4096);
        assert_eq!(warm_start(8192, 4097), 8192);
        // Appends outran the warmer: it restarts past the written page.
        assert_eq!(warm_start(4096, 10_000), 12_288);
        for w in [1u64, 4095, 4096, 4097, 1 << 30] {
            assert!(warm_start(0, w) >= w && warm_start(0, w) % 4096 == 0);
        }
    }

    #[test]
    fn chunk_pool_reuses_a_block_only_once_its_runs_are_gone() {
        let mut pool = ChunkPool::new(0);
        let mut first = pool.take(100);
        let addr = first.as_ptr();
        first.extend_from_slice(b"record");
        let run = first.split().freeze();
        drop(first);
        // A run of the first block is still cached: the next block is a new one.
        let second = pool.take(100);
        assert_ne!(second.as_ptr(), addr);
        drop(run);
        // Evicted: the first block comes back, whole, without a copy.
        let third = pool.take(100);
        assert_eq!(third.as_ptr(), addr);
        assert!(third.capacity() >= CHUNK_BLOCK);
        // Larger than a block: its own allocation, never pooled.
        let big = pool.take(CHUNK_BLOCK + 1);
        assert!(big.capacity() > CHUNK_BLOCK);
        assert!(pool.0.kept() <= 8, "the bound for an empty cache");
    }

    /// `len` bytes whose address is `phase` past a page boundary.
    fn at_phase(phase: usize, len: usize) -> Bytes {
        let mut b = BytesMut::zeroed(len + 2 * ALIGN as usize);
        let skip = (phase as u64).wrapping_sub(b.as_ptr() as u64) % ALIGN;
        b.advance(skip as usize);
        b.truncate(len);
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        b.freeze()
    }

    #[test]
    fn direct_spans_cover_whole_pages_of_runs_back_to_back_in_memory() {
        let page = ALIGN as usize;
        // Three runs cut from one block, at position 8192 + 100 onwards, address in phase.
        let block = at_phase(100, 3 * page);
        let mut c = TailCache::default();
        c.push(8192 + 100, block.slice(0..1000));
        c.push(8192 + 1100, block.slice(1000..5000));
        c.push(8192 + 5100, block.slice(5000..3 * page - 100));
        // Page 8192 starts before the first run: copied, never written from memory.
        assert!(c.direct_span(8192, 8192 * 3).is_none());
        // From page 12288 the runs hold two whole pages (up to 8192 + 3 pages).
        let (ptr, n, keep) = c.direct_span(12288, 1 << 20).unwrap();
        assert_eq!(n, 2 * page);
        assert_eq!(ptr as u64 % ALIGN, 0);
        assert_eq!(ptr, block[page - 100..].as_ptr());
        assert_eq!(keep.len(), 2, "the runs holding the span");
        // The limit rounds down to a page.
        assert_eq!(
            c.direct_span(12288, 12288 + page as u64 + 5).unwrap().1,
            page
        );
        assert!(c.direct_span(12288, 12288 + 5).is_none());
        // A run from other memory ends the span, even at the next position.
        let other = at_phase(0, page);
        c.push(8192 + 3 * page as u64, other.clone());
        assert_eq!(c.direct_span(12288, 1 << 20).unwrap().1, 2 * page);
        // Its own page is a span of its own.
        let (ptr, n, _) = c.direct_span(8192 + 3 * page as u64, 1 << 20).unwrap();
        assert_eq!((ptr, n), (other.as_ptr(), page));
        // Out of phase: the address is not the position modulo the page.
        let mut d = TailCache::default();
        d.push(4096, at_phase(8, 2 * page));
        assert!(d.direct_span(4096, 1 << 20).is_none());
    }

    #[test]
    fn spare_names_round_trip_and_nothing_else_parses_as_one() {
        for i in 0..12 {
            assert_eq!(parse_spare_name(&spare_name(i)), Some(i));
        }
        assert_eq!(spare_name(0), SPARE);
        for other in [
            "spare.0",
            "spare.",
            "spare1",
            "spare.x",
            "sparex",
            "00000000000000000000",
        ] {
            assert_eq!(parse_spare_name(other), None, "{other}");
        }
    }

    #[test]
    fn tail_cache_get_copy_and_evict() {
        let mut c = TailCache::default();
        c.push(100, Bytes::from_static(b"abcdef"));
        c.push(106, Bytes::from_static(b"ghij"));
        c.push(200, Bytes::from_static(b"zz"));
        assert_eq!(c.get(101, 3).unwrap(), &b"bcd"[..]);
        assert_eq!(c.get(106, 4).unwrap(), &b"ghij"[..]);
        assert!(c.get(104, 4).is_none(), "spans two runs");
        assert!(c.get(99, 1).is_none());
        let mut dst = [9u8; 12];
        c.copy_into(98, &mut dst);
        assert_eq!(&dst, b"\0\0abcdefghij");
        assert_eq!(c.data_end_below(150), Some(110));
        assert_eq!(c.data_end_below(201), Some(201));
        c.evict(110, 2);
        assert_eq!(c.start(), Some(200));
    }
}
