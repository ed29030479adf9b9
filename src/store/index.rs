//! One shard's IndexFiles, `index/<shard>/<yyyyMMddHHmmssSSS>` (reference §7.3): hash slots
//! and chained entries for the `KEYS` and `UNIQ_KEY` of each message, keyed `topic#key`.
//!
//! The active (writable) file keeps its slot table in memory; inserts change memory only and
//! the periodic flush writes the new entries, the changed slots and then the header (so a
//! header never counts an entry that is not written). Sealed files are read from disk.
//! Buffered (page-cache) I/O: slots and entries are small random accesses.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, OpenOptions};

use super::commitlog::{blocking, create_dir_all, list_numbered};
use super::consume_queue::remove_file;
use super::error::{check_written, io_err, Result, StoreError};
use super::format::{index_key_hash, index_key_hash_from, IndexEntry, IndexHeader, IndexLayout};

/// The active file's slot table, in file byte order, with a bitmap of changed 4 KiB pages.
/// Flushing writes changed pages (coalesced) rather than one write per slot: a busy broker
/// touches hundreds of thousands of slots per second, and that many tiny writes would queue
/// ahead of the commitlog's own I/O.
struct SlotTable {
    bytes: Vec<u8>,
    dirty: Vec<u64>,
}

const SLOT_PAGE: usize = 4096;
/// Largest single write of slot pages.
const SLOT_RUN_MAX: usize = 1 << 20;

impl SlotTable {
    /// A zeroed table with every page already faulted in as written. Left lazy, a page's
    /// first insert reads it (mapping the shared zero page), then writes it: a copy-on-write
    /// fault whose TLB flush interrupts the other shard cores. Keys of one producer hash to
    /// nearby slots (Java string hashes of keys that differ at the end), so the inserts
    /// sweep the table and kept faulting for minutes: 4 % of a pipelined broker's CPU.
    /// ~5,000 page faults for a full-size table: shards build it with [`SlotTable::build`].
    fn new(slots: u32) -> SlotTable {
        let len = slots as usize * 4;
        let mut bytes = vec![0u8; len];
        for p in (0..len).step_by(SLOT_PAGE) {
            // Opaque, so the store of a zero into zeroed memory is not optimised away.
            bytes[p] = std::hint::black_box(0);
        }
        SlotTable {
            bytes,
            dirty: vec![0; len.div_ceil(SLOT_PAGE).div_ceil(64)],
        }
    }

    /// [`SlotTable::new`] on the blocking pool, so its page faults do not stall the shard.
    async fn build(slots: u32) -> SlotTable {
        blocking(move || SlotTable::new(slots)).await
    }

    fn get(&self, slot: u32) -> i32 {
        let at = slot as usize * 4;
        self.bytes
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    }

    fn set(&mut self, slot: u32, v: i32) {
        let at = slot as usize * 4;
        if let Some(b) = self.bytes.get_mut(at..at + 4) {
            b.copy_from_slice(&v.to_be_bytes());
            let page = at / SLOT_PAGE;
            if let Some(w) = self.dirty.get_mut(page / 64) {
                *w |= 1 << (page % 64);
            }
        }
    }

    /// Copies out runs of consecutive changed pages, as (byte offset in the table, bytes),
    /// and marks them clean.
    fn take_dirty_runs(&mut self) -> Vec<(usize, Vec<u8>)> {
        let pages = self.bytes.len().div_ceil(SLOT_PAGE);
        let mut out = Vec::new();
        let mut p = 0;
        while p < pages {
            let is_dirty = |p: usize| self.dirty[p / 64] & (1 << (p % 64)) != 0;
            if !is_dirty(p) {
                p += 1;
                continue;
            }
            let start = p;
            while p < pages && is_dirty(p) && (p - start) * SLOT_PAGE < SLOT_RUN_MAX {
                p += 1;
            }
            let (a, b) = (start * SLOT_PAGE, (p * SLOT_PAGE).min(self.bytes.len()));
            out.push((a, self.bytes[a..b].to_vec()));
        }
        self.dirty.iter_mut().for_each(|w| *w = 0);
        out
    }
}

/// Writable state of the active file.
struct Active {
    slots: SlotTable,
    /// Entries from ordinal `first_pending` on, not yet written.
    entries: Vec<u8>,
    first_pending: u32,
}

pub struct IndexFile {
    pub path: PathBuf,
    file: BufferedFile,
    header: Cell<IndexHeader>,
    active: RefCell<Option<Active>>,
    /// Header written but not synced.
    unsynced: Cell<bool>,
}

/// Parses a 17-digit `yyyyMMddHHmmssSSS` file name.
fn parse_index_name(name: &str) -> Option<u64> {
    (name.len() == 17 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// `yyyyMMddHHmmssSSS` in local time, as upstream names index files.
pub fn local_time_name(ms: i64) -> String {
    let (y, mo, d, h, mi, s) = local_time(ms);
    format!(
        "{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}{:03}",
        ms.rem_euclid(1000)
    )
}

/// Local (year, month, day, hour, minute, second) of an epoch-ms instant.
pub fn local_time(ms: i64) -> (i32, u32, u32, u32, u32, u32) {
    let t: libc::time_t = ms.div_euclid(1000) as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which outlives the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return (1970, 1, 1, 0, 0, 0);
    }
    (
        tm.tm_year + 1900,
        (tm.tm_mon + 1) as u32,
        tm.tm_mday as u32,
        tm.tm_hour as u32,
        tm.tm_min as u32,
        tm.tm_sec as u32,
    )
}

impl IndexFile {
    fn is_full(&self, layout: &IndexLayout) -> bool {
        self.header.get().index_count as u32 >= layout.max_entries
    }

    fn insert(&self, layout: &IndexLayout, key_hash: i32, phy: i64, store_ts: i64) {
        let mut act = self.active.borrow_mut();
        let Some(a) = act.as_mut() else { return };
        let mut h = self.header.get();
        let slot = layout.slot_of(key_hash);
        let raw = a.slots.get(slot);
        let prev = if raw <= 0 || raw >= h.index_count {
            0
        } else {
            raw
        };
        if h.index_count <= 1 {
            h.begin_timestamp = store_ts;
            h.begin_phy_offset = phy;
        }
        let time_diff = if h.begin_timestamp <= 0 {
            0
        } else {
            ((store_ts - h.begin_timestamp) / 1000).clamp(0, i32::MAX as i64) as i32
        };
        let ordinal = h.index_count;
        a.entries.extend_from_slice(
            &IndexEntry {
                key_hash,
                phy_offset: phy,
                time_diff,
                prev_index: prev,
            }
            .encode(),
        );
        a.slots.set(slot, ordinal);
        if prev == 0 {
            h.hash_slot_count += 1;
        }
        h.index_count += 1;
        h.end_phy_offset = phy;
        h.end_timestamp = store_ts;
        self.header.set(h);
    }

    async fn flush(&self, layout: &IndexLayout) -> Result<()> {
        let (entries, first, runs) = {
            let mut act = self.active.borrow_mut();
            let Some(a) = act.as_mut() else {
                return Ok(());
            };
            if a.entries.is_empty() {
                return Ok(());
            }
            let first = a.first_pending;
            let n = a.entries.len();
            let entries = std::mem::replace(&mut a.entries, Vec::with_capacity(n));
            a.first_pending += (n / IndexEntry::SIZE) as u32;
            (entries, first, a.slots.take_dirty_runs())
        };
        let header = self.header.get();
        let len = entries.len();
        let r = self.file.write_at(entries, layout.entry_pos(first)).await;
        check_written(r, len, "writing index", &self.path)?;
        for (at, bytes) in runs {
            let len = bytes.len();
            let r = self
                .file
                .write_at(bytes, layout.slot_pos(0) + at as u64)
                .await;
            check_written(r, len, "writing index", &self.path)?;
        }
        let head = header.encode().to_vec();
        let len = head.len();
        let r = self.file.write_at(head, 0).await;
        check_written(r, len, "writing index header", &self.path)?;
        self.unsynced.set(true);
        Ok(())
    }

    async fn read_i32(&self, pos: u64) -> Result<i32> {
        let rr = self
            .file
            .read_at(pos, 4)
            .await
            .map_err(io_err("reading index", &self.path))?;
        let b: [u8; 4] =
            rr.get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| StoreError::Corruption {
                    file: self.path.clone(),
                    offset: pos,
                    reason: "short read of an index slot".into(),
                })?;
        Ok(i32::from_be_bytes(b))
    }

    async fn read_entry(&self, layout: &IndexLayout, ordinal: i32) -> Result<Option<IndexEntry>> {
        {
            let act = self.active.borrow();
            if let Some(a) = act.as_ref() {
                if ordinal as u32 >= a.first_pending {
                    let at = (ordinal as u32 - a.first_pending) as usize * IndexEntry::SIZE;
                    return Ok(a
                        .entries
                        .get(at..at + IndexEntry::SIZE)
                        .and_then(IndexEntry::decode));
                }
            }
        }
        let rr = self
            .file
            .read_at(layout.entry_pos(ordinal as u32), IndexEntry::SIZE)
            .await
            .map_err(io_err("reading index", &self.path))?;
        Ok(IndexEntry::decode(&rr))
    }

    async fn slot(&self, layout: &IndexLayout, slot: u32) -> Result<i32> {
        if let Some(a) = self.active.borrow().as_ref() {
            return Ok(a.slots.get(slot));
        }
        self.read_i32(layout.slot_pos(slot)).await
    }

    /// Follows the slot chain of `key_hash`, collecting offsets in `[begin, end]` (ms).
    async fn lookup(
        &self,
        layout: &IndexLayout,
        key_hash: i32,
        begin: i64,
        end: i64,
        max: usize,
        out: &mut Vec<i64>,
    ) -> Result<()> {
        let h = self.header.get();
        let mut ord = self.slot(layout, layout.slot_of(key_hash)).await?;
        let mut steps = 0u32;
        while ord > 0 && ord < h.index_count && out.len() < max && steps < layout.max_entries {
            steps += 1;
            let Some(e) = self.read_entry(layout, ord).await? else {
                break;
            };
            let ts = h.begin_timestamp + e.time_diff as i64 * 1000;
            if e.key_hash == key_hash && ts >= begin && ts <= end {
                out.push(e.phy_offset);
            }
            if ts < begin || e.prev_index <= 0 || e.prev_index >= ord {
                break;
            }
            ord = e.prev_index;
        }
        Ok(())
    }
}

/// The index files of one shard.
pub struct IndexService {
    dir: PathBuf,
    layout: IndexLayout,
    files: RefCell<Vec<Rc<IndexFile>>>,
}

impl IndexService {
    pub async fn open(dir: PathBuf, layout: IndexLayout) -> Result<IndexService> {
        create_dir_all(&dir).await?;
        let names = list_numbered(&dir, parse_index_name).await?;
        let mut files = Vec::with_capacity(names.len());
        let n = names.len();
        for (i, name) in names.into_iter().enumerate() {
            let path = dir.join(format!("{name:017}"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .buffered_open(&path)
                .await
                .map_err(io_err("opening index", &path))?;
            let rr = file
                .read_at(0, IndexHeader::SIZE)
                .await
                .map_err(io_err("reading index header", &path))?;
            let mut header = IndexHeader::decode(&rr).unwrap_or_default();
            if header.index_count < 1 {
                header.index_count = 1;
            }
            let f = IndexFile {
                path,
                file,
                header: Cell::new(header),
                active: RefCell::new(None),
                unsynced: Cell::new(false),
            };
            if i + 1 == n && !f.is_full(&layout) {
                let rr = f
                    .file
                    .read_at(layout.slot_pos(0), layout.slots as usize * 4)
                    .await
                    .map_err(io_err("reading index slots", &f.path))?;
                let mut slots = SlotTable::build(layout.slots).await;
                let n = rr.len().min(slots.bytes.len());
                slots.bytes[..n].copy_from_slice(&rr[..n]);
                *f.active.borrow_mut() = Some(Active {
                    slots,
                    entries: Vec::new(),
                    first_pending: header.index_count as u32,
                });
            }
            files.push(Rc::new(f));
        }
        Ok(IndexService {
            dir,
            layout,
            files: RefCell::new(files),
        })
    }

    /// End offset of what is indexed (records at or below it are): the newest file with
    /// entries says; -1 when no file has any.
    pub fn end_phy_offset(&self) -> i64 {
        // Only a file with entries says where indexing got to: a new, empty first file's
        // header reads 0, which is also the offset of shard 0's first record (recovery
        // skipped re-indexing it when a crash came before the file's first flush).
        self.files
            .borrow()
            .iter()
            .rev()
            .map(|f| f.header.get())
            .find(|h| h.index_count > 1)
            .map_or(-1, |h| h.end_phy_offset)
    }

    async fn active_file(&self, now_ms: i64) -> Result<Rc<IndexFile>> {
        let last = self.files.borrow().last().cloned();
        if let Some(f) = &last {
            if f.active.borrow().is_some() && !f.is_full(&self.layout) {
                return Ok(f.clone());
            }
        }
        // Seal the full file and start a new one seeded from its end (reference §7.3).
        let mut seed = IndexHeader {
            index_count: 1,
            ..Default::default()
        };
        if let Some(f) = &last {
            f.flush(&self.layout).await?;
            *f.active.borrow_mut() = None;
            let h = f.header.get();
            seed.begin_phy_offset = h.end_phy_offset;
            seed.end_phy_offset = h.end_phy_offset;
            seed.begin_timestamp = h.end_timestamp;
            seed.end_timestamp = h.end_timestamp;
        }
        let mut ms = now_ms;
        let (path, file) = loop {
            let p = self.dir.join(local_time_name(ms));
            if self.files.borrow().iter().any(|f| f.path == p) {
                ms += 1;
                continue;
            }
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .buffered_open(&p)
                .await
            {
                Ok(f) => break (p, f),
                Err(e) => {
                    let e = std::io::Error::from(e);
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        ms += 1;
                        continue;
                    }
                    return Err(io_err("creating index", &p)(e));
                }
            }
        };
        file.truncate(self.layout.file_size())
            .await
            .map_err(io_err("sizing index", &path))?;
        let slots = SlotTable::build(self.layout.slots).await;
        let f = Rc::new(IndexFile {
            path,
            file,
            header: Cell::new(seed),
            active: RefCell::new(Some(Active {
                slots,
                entries: Vec::new(),
                first_pending: 1,
            })),
            unsynced: Cell::new(false),
        });
        self.files.borrow_mut().push(f.clone());
        Ok(f)
    }

    /// Indexes `keys` (already split) of a record at global offset `phy`, under its topic's
    /// [`index_key_prefix`](super::format::index_key_prefix).
    pub async fn put<'a>(
        &self,
        key_prefix: i32,
        keys: impl Iterator<Item = &'a [u8]>,
        phy: i64,
        store_ts: i64,
        now_ms: i64,
    ) -> Result<()> {
        if phy <= self.end_phy_offset() && self.files.borrow().last().is_some() {
            // Already indexed (recovery re-dispatch).
            return Ok(());
        }
        for key in keys {
            if key.is_empty() {
                continue;
            }
            let f = self.active_file(now_ms).await?;
            f.insert(
                &self.layout,
                index_key_hash_from(key_prefix, key),
                phy,
                store_ts,
            );
        }
        Ok(())
    }

    /// Writes pending entries, slots and headers; with `sync`, fdatasyncs them.
    pub async fn flush(&self, sync: bool) -> Result<()> {
        let files: Vec<Rc<IndexFile>> = self.files.borrow().clone();
        for f in files {
            f.flush(&self.layout).await?;
            if sync && f.unsynced.replace(false) {
                f.file
                    .fdatasync()
                    .await
                    .map_err(io_err("syncing index", &f.path))?;
            }
        }
        Ok(())
    }

    /// Offsets of records whose key hashes like `topic#key`, newest file first, stored in
    /// `[begin, end]` (ms). Hash collisions are possible: callers re-check the key.
    pub async fn query(
        &self,
        topic: &[u8],
        key: &[u8],
        max: usize,
        begin: i64,
        end: i64,
    ) -> Result<Vec<i64>> {
        let hash = index_key_hash(topic, key);
        let files: Vec<Rc<IndexFile>> = self.files.borrow().clone();
        let mut out = Vec::new();
        for f in files.iter().rev() {
            if out.len() >= max {
                break;
            }
            let h = f.header.get();
            // Time-range overlap; an empty file has no range.
            if h.index_count <= 1 || h.end_timestamp < begin || h.begin_timestamp > end {
                continue;
            }
            f.lookup(&self.layout, hash, begin, end, max, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// Deletes sealed files whose every entry points below `log_min`.
    pub async fn delete_below(&self, log_min: i64) -> Result<usize> {
        let mut n = 0;
        loop {
            let first = {
                let files = self.files.borrow();
                match files.first() {
                    Some(f) if files.len() > 1 && f.header.get().end_phy_offset < log_min => {
                        f.clone()
                    }
                    _ => break,
                }
            };
            self.files.borrow_mut().remove(0);
            remove_file(&first.path).await?;
            n += 1;
        }
        Ok(n)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash after the first index file was created but before anything was flushed to it
    /// leaves a file whose header says offset 0: that must not count as "indexed up to 0",
    /// or shard 0's first record is never re-indexed.
    #[test]
    fn an_empty_first_file_has_indexed_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        crate::store::run_on_executor(move || async move {
            let layout = IndexLayout {
                slots: 100,
                max_entries: 10,
            };
            let ix = IndexService::open(d.clone(), layout).await.unwrap();
            assert_eq!(ix.end_phy_offset(), -1, "no file");
            ix.active_file(1_700_000_000_000).await.unwrap();
            ix.flush(true).await.unwrap();
            assert_eq!(ix.end_phy_offset(), -1, "an empty file");
            drop(ix);
            let ix = IndexService::open(d.clone(), layout).await.unwrap();
            assert_eq!(ix.end_phy_offset(), -1, "an empty file, reopened");
            let k: &[u8] = b"k";
            let prefix = super::super::format::index_key_prefix(b"T");
            ix.put(prefix, std::iter::once(k), 0, 1, 1_700_000_000_000)
                .await
                .unwrap();
            assert_eq!(ix.end_phy_offset(), 0, "the record at offset 0");
            assert_eq!(ix.query(b"T", b"k", 4, 0, i64::MAX).await.unwrap(), vec![0]);
        });
    }

    #[test]
    fn slot_table_coalesces_dirty_pages() {
        let mut t = SlotTable::new(5000); // 20,000 bytes: 5 pages
        assert!(t.take_dirty_runs().is_empty());
        t.set(0, 7);
        t.set(1, 8);
        t.set(1100, 9); // page 1
        t.set(4999, -1); // page 4, the short last page
        assert_eq!(t.get(0), 7);
        assert_eq!(t.get(1100), 9);
        assert_eq!(t.get(4999), -1);
        assert_eq!(t.get(5000), 0, "out of range reads as empty");
        let runs = t.take_dirty_runs();
        let spans: Vec<(usize, usize)> = runs.iter().map(|(a, b)| (*a, b.len())).collect();
        assert_eq!(spans, vec![(0, 8192), (16384, 3616)]);
        assert_eq!(&runs[0].1[4..8], &8i32.to_be_bytes());
        assert!(t.take_dirty_runs().is_empty(), "clean after taking");
    }

    /// Minor page faults taken by this thread so far.
    fn thread_minor_faults() -> i64 {
        // SAFETY: getrusage writes only into `ru`, which outlives the call.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
        ru.ru_minflt as i64
    }

    #[test]
    fn slot_table_pages_are_writable_from_the_start() {
        // 4,000 pages (16 MiB), so the allocator maps them fresh. Inserting into every page
        // (read, then write, as `insert` does) must not fault: lazily zeroed pages would
        // take two faults each, the second with a TLB flush of every core.
        let pages = 4000u32;
        let mut t = SlotTable::new(pages * 1024);
        let before = thread_minor_faults();
        for p in 0..pages {
            let slot = p * 1024 + 3;
            let v = t.get(slot);
            t.set(slot, v + 1);
        }
        let faults = thread_minor_faults() - before;
        assert!(
            faults < 100,
            "{faults} page faults inserting into {pages} pages"
        );
    }

    #[test]
    fn index_names_both_ways() {
        let name = local_time_name(1_700_000_000_123);
        assert_eq!(name.len(), 17);
        assert!(name.ends_with("123"));
        assert!(parse_index_name(&name).is_some());
        assert!(parse_index_name("2023111422132012").is_none());
        assert!(parse_index_name("2023111422132012x").is_none());
    }
}
