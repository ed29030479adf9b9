//! One (topic, queueId) consume queue: 20-byte entries in files of `cq_entries_per_file`
//! entries, `consumequeue/<topic>/<queueId>/<20-digit byte offset>` (reference §7.2).
//!
//! Entries are appended in memory by the shard's dispatcher (synchronously) and written to the
//! files by the periodic flush. Files use buffered (page-cache) I/O: their size, 6,000,000
//! bytes, is not DMA-aligned, and their reads are small and hot.
//!
//! Invariants: `min <= flushed <= max`; entries `[flushed, max)` are in `pending`; entries
//! `[min, flushed)` are in the files. Runs on the owning shard only.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, OpenOptions};

use super::commitlog::{create_dir_all, list_numbered};
use super::error::{check_written, io_err, Result, StoreError};
use super::format::CqEntry;
use super::offset::{file_name, parse_file_name};

const ENTRY: u64 = CqEntry::SIZE as u64;

struct CqFile {
    /// Logical offset of the file's first entry.
    base: u64,
    path: PathBuf,
    file: Option<Rc<BufferedFile>>,
}

/// A consume queue.
pub struct ConsumeQueue {
    pub topic: Rc<str>,
    pub queue_id: u32,
    dir: PathBuf,
    per_file: u64,
    files: RefCell<Vec<CqFile>>,
    min: Cell<u64>,
    max: Cell<u64>,
    flushed: Cell<u64>,
    pending: RefCell<Vec<u8>>,
    /// Next queue offset to hand out on append (>= max; entries are dispatched later).
    next: Cell<u64>,
    /// Files written since the last sync.
    unsynced: RefCell<Vec<Rc<BufferedFile>>>,
    /// Bytes written since the last sync.
    unsynced_bytes: Cell<u64>,
    /// Commitlog offset of the oldest entry not yet synced (written or pending); `i64::MAX`
    /// when every entry is durable. Recovery must re-dispatch from there.
    first_unsynced: Cell<i64>,
}

async fn open_file(path: &Path, create: bool) -> Result<Rc<BufferedFile>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .buffered_open(path)
        .await
        .map_err(io_err("opening consume queue", path))?;
    Ok(Rc::new(f))
}

impl ConsumeQueue {
    /// The directory of a queue.
    pub fn dir_of(root: &Path, topic: &str, queue_id: u32) -> PathBuf {
        root.join("consumequeue")
            .join(topic)
            .join(queue_id.to_string())
    }

    /// An empty queue whose files will be created on the first flush.
    pub fn new(root: &Path, topic: Rc<str>, queue_id: u32, per_file: u64) -> ConsumeQueue {
        ConsumeQueue {
            dir: Self::dir_of(root, &topic, queue_id),
            topic,
            queue_id,
            per_file,
            files: RefCell::new(Vec::new()),
            min: Cell::new(0),
            max: Cell::new(0),
            flushed: Cell::new(0),
            pending: RefCell::new(Vec::new()),
            next: Cell::new(0),
            unsynced: RefCell::new(Vec::new()),
            unsynced_bytes: Cell::new(0),
            first_unsynced: Cell::new(i64::MAX),
        }
    }

    /// Loads a queue from its directory: file list, and the entry count of the last file
    /// (trailing zero-filled entries, left by a crash, are not counted).
    pub async fn load(
        root: &Path,
        topic: Rc<str>,
        queue_id: u32,
        per_file: u64,
    ) -> Result<ConsumeQueue> {
        let q = Self::new(root, topic, queue_id, per_file);
        let file_bytes = per_file * ENTRY;
        let names = list_numbered(&q.dir, parse_file_name).await?;
        let mut files = Vec::with_capacity(names.len());
        for n in names {
            if n % file_bytes != 0 {
                return Err(StoreError::Corruption {
                    file: q.dir.join(file_name(n)),
                    offset: 0,
                    reason: format!(
                        "consume queue file name is not a multiple of the file size {file_bytes}"
                    ),
                });
            }
            files.push(CqFile {
                base: n / ENTRY,
                path: q.dir.join(file_name(n)),
                file: None,
            });
        }
        if let Some(last) = files.last_mut() {
            let f = open_file(&last.path, false).await?;
            let size = f
                .file_size()
                .await
                .map_err(io_err("sizing consume queue", &last.path))?;
            let mut n = (size / ENTRY).min(per_file);
            // Drop trailing entries that were never written (zeros from a crash).
            while n > 0 {
                let rr = f
                    .read_at((n - 1) * ENTRY, CqEntry::SIZE)
                    .await
                    .map_err(io_err("reading consume queue", &last.path))?;
                match CqEntry::decode(&rr) {
                    Some(e) if e.size > 0 => break,
                    _ => n -= 1,
                }
            }
            q.max.set(last.base + n);
            last.file = Some(f);
        }
        if let Some(first) = files.first() {
            q.min.set(first.base);
        }
        q.flushed.set(q.max.get());
        q.next.set(q.max.get());
        *q.files.borrow_mut() = files;
        Ok(q)
    }

    /// First valid logical offset.
    pub fn min_offset(&self) -> u64 {
        self.min.get()
    }
    /// Number of entries dispatched (the next entry's offset).
    pub fn max_offset(&self) -> u64 {
        self.max.get()
    }
    /// The next queue offset an append gets.
    pub fn next_offset(&self) -> u64 {
        self.next.get()
    }
    /// Hands out `n` consecutive queue offsets for an append; returns the first.
    pub fn assign(&self, n: u64) -> u64 {
        let first = self.next.get();
        self.next.set(first + n);
        first
    }

    /// Records the entry for queue offset `offset`. Entries already present are kept (recovery
    /// re-dispatch); a gap is filled with blank entries, as upstream does.
    pub fn put(&self, offset: u64, e: CqEntry) {
        let max = self.max.get();
        if offset < max {
            return;
        }
        let mut p = self.pending.borrow_mut();
        if max == 0 && offset > 0 && self.files.borrow().is_empty() && p.is_empty() {
            // A queue starting past 0 (its earlier files were deleted): start there.
            self.min.set(offset);
            self.flushed.set(offset);
        } else {
            for _ in max..offset {
                p.extend_from_slice(&CqEntry::BLANK.encode());
            }
        }
        p.extend_from_slice(&e.encode());
        if self.first_unsynced.get() == i64::MAX && e.is_valid() {
            self.first_unsynced.set(e.offset);
        }
        self.max.set(offset + 1);
        if self.next.get() < offset + 1 {
            self.next.set(offset + 1);
        }
    }

    async fn file_for(&self, base: u64, create: bool) -> Result<Option<Rc<BufferedFile>>> {
        let path = {
            let files = self.files.borrow();
            match files.iter().find(|f| f.base == base) {
                Some(f) => match &f.file {
                    Some(h) => return Ok(Some(h.clone())),
                    None => f.path.clone(),
                },
                None if create => self.dir.join(file_name(base * ENTRY)),
                None => return Ok(None),
            }
        };
        if create {
            create_dir_all(&self.dir).await?;
        }
        let h = open_file(&path, create).await?;
        let mut files = self.files.borrow_mut();
        match files.iter_mut().find(|f| f.base == base) {
            Some(f) => f.file = Some(h.clone()),
            None => {
                let i = files.partition_point(|f| f.base < base);
                files.insert(
                    i,
                    CqFile {
                        base,
                        path,
                        file: Some(h.clone()),
                    },
                );
            }
        }
        Ok(Some(h))
    }

    /// Writes pending entries to the files. Entries stay readable from memory until written.
    pub async fn flush(&self) -> Result<()> {
        let start = self.flushed.get();
        let bytes = self.pending.borrow().clone();
        if bytes.is_empty() {
            return Ok(());
        }
        let count = bytes.len() as u64 / ENTRY;
        let mut off = start;
        while off < start + count {
            let base = off / self.per_file * self.per_file;
            let end = (base + self.per_file).min(start + count);
            let f = self.file_for(base, true).await?.ok_or(StoreError::Closed)?;
            let chunk =
                bytes[((off - start) * ENTRY) as usize..((end - start) * ENTRY) as usize].to_vec();
            let path = self.dir.join(file_name(base * ENTRY));
            let len = chunk.len();
            let r = f.write_at(chunk, (off - base) * ENTRY).await;
            check_written(r, len, "writing consume queue", &path)?;
            self.unsynced_bytes
                .set(self.unsynced_bytes.get() + len as u64);
            let mut us = self.unsynced.borrow_mut();
            if !us.iter().any(|u| Rc::ptr_eq(u, &f)) {
                us.push(f);
            }
            off = end;
        }
        self.pending.borrow_mut().drain(..(count * ENTRY) as usize);
        self.flushed.set(start + count);
        Ok(())
    }

    /// fdatasync of every file written since the last sync.
    pub async fn sync(&self) -> Result<()> {
        let files = std::mem::take(&mut *self.unsynced.borrow_mut());
        for f in files {
            f.fdatasync()
                .await
                .map_err(io_err("syncing consume queue", &self.dir))?;
        }
        self.mark_synced();
        Ok(())
    }

    /// Records that everything written so far is durable, when something else made it so
    /// (one `syncfs` for many queues).
    pub fn mark_synced(&self) {
        self.unsynced.borrow_mut().clear();
        self.unsynced_bytes.set(0);
        // Flushes and syncs of one queue do not overlap (one flusher per shard), so what was
        // not written before this sync is still pending: the oldest unsynced entry is there.
        let first = self
            .pending
            .borrow()
            .chunks_exact(ENTRY as usize)
            .filter_map(CqEntry::decode)
            .find(CqEntry::is_valid)
            .map_or(i64::MAX, |e| e.offset);
        self.first_unsynced.set(first);
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Commitlog offset of the oldest entry not yet synced, if any.
    pub fn first_unsynced(&self) -> Option<i64> {
        Some(self.first_unsynced.get()).filter(|&o| o != i64::MAX)
    }

    /// Bytes written to the files since the last [`sync`](Self::sync).
    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced_bytes.get()
    }

    /// Whether there is anything to flush or sync.
    pub fn is_dirty(&self) -> bool {
        !self.pending.borrow().is_empty() || !self.unsynced.borrow().is_empty()
    }

    /// Reads up to `n` entries from `offset` (clamped to `[min, max)`).
    pub async fn get(&self, offset: u64, n: u64) -> Result<Vec<CqEntry>> {
        let end = (offset + n).min(self.max.get());
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut off = offset.max(self.min.get());
        while off < end {
            let flushed = self.flushed.get();
            if off >= flushed {
                // From memory, without awaiting, so `flushed` cannot move under us.
                let p = self.pending.borrow();
                let from = ((off - flushed) * ENTRY) as usize;
                let to = ((end - flushed) * ENTRY) as usize;
                if let Some(s) = p.get(from..to) {
                    out.extend(s.chunks_exact(CqEntry::SIZE).filter_map(CqEntry::decode));
                }
                break;
            }
            // From the files; a flush during the read can only move `flushed` forward, and
            // the next turn of the loop re-checks it.
            let base = off / self.per_file * self.per_file;
            let stop = end.min(flushed).min(base + self.per_file);
            let Some(f) = self.file_for(base, false).await? else {
                // Deleted by retention meanwhile.
                off = stop;
                continue;
            };
            let want = ((stop - off) * ENTRY) as usize;
            let rr = f
                .read_at((off - base) * ENTRY, want)
                .await
                .map_err(io_err("reading consume queue", &self.dir))?;
            if rr.len() < want {
                return Err(StoreError::Corruption {
                    file: self.dir.join(file_name(base * ENTRY)),
                    offset: (off - base) * ENTRY + rr.len() as u64,
                    reason: "consume queue file shorter than its entries".into(),
                });
            }
            out.extend(rr.chunks_exact(CqEntry::SIZE).filter_map(CqEntry::decode));
            off = stop;
        }
        Ok(out)
    }

    /// One entry.
    pub async fn entry(&self, offset: u64) -> Result<Option<CqEntry>> {
        Ok(self.get(offset, 1).await?.into_iter().next())
    }

    /// Drops entries whose record ends past `log_end` (global offset), e.g. after the
    /// commitlog's tail was truncated at recovery.
    pub async fn truncate_past(&self, log_end: i64) -> Result<()> {
        let old_max = self.max.get();
        while self.max.get() > self.min.get() {
            let last = self.max.get() - 1;
            match self.entry(last).await? {
                Some(e) if e.is_valid() && e.offset + e.size as i64 <= log_end => break,
                Some(e) if !e.is_valid() && e.size == i32::MAX => break,
                _ => self.max.set(last),
            }
        }
        let max = self.max.get();
        if max == old_max {
            return Ok(());
        }
        log::warn!(
            "consume queue {}/{}: dropping entries {max}..{old_max} past the commitlog end",
            self.topic,
            self.queue_id
        );
        if max < self.flushed.get() {
            self.pending.borrow_mut().clear();
            self.flushed.set(max);
            let base = max / self.per_file * self.per_file;
            if let Some(f) = self.file_for(base, false).await? {
                f.truncate((max - base) * ENTRY)
                    .await
                    .map_err(io_err("truncating consume queue", &self.dir))?;
            }
            // Files wholly past the new end go.
            let later: Vec<CqFile> = {
                let mut files = self.files.borrow_mut();
                let i = files.partition_point(|f| f.base <= base);
                files.split_off(i)
            };
            for f in later {
                remove_file(&f.path).await?;
            }
        } else {
            let keep = ((max - self.flushed.get()) * ENTRY) as usize;
            self.pending.borrow_mut().truncate(keep);
        }
        self.next.set(max);
        Ok(())
    }

    /// Deletes files whose every entry points below `log_min` (global offset of the first
    /// stored record of this shard), never the last file; moves `min` to the first entry at or
    /// past `log_min`. Returns the number of files deleted.
    pub async fn delete_below(&self, log_min: i64) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let (base, path, n_files) = {
                let files = self.files.borrow();
                match files.first() {
                    Some(f) => (f.base, f.path.clone(), files.len()),
                    None => break,
                }
            };
            if n_files < 2 {
                break;
            }
            let last_in_file = base + self.per_file - 1;
            match self.entry(last_in_file).await? {
                Some(e) if e.offset + e.size as i64 <= log_min => {}
                _ => break,
            }
            self.files.borrow_mut().remove(0);
            remove_file(&path).await?;
            deleted += 1;
            self.min.set(self.min.get().max(base + self.per_file));
        }
        self.correct_min(log_min).await?;
        Ok(deleted)
    }

    /// Moves `min` to the first entry whose record is at or past `log_min` (binary search).
    pub async fn correct_min(&self, log_min: i64) -> Result<()> {
        let (mut lo, mut hi) = (self.min.get(), self.max.get());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid).await? {
                Some(e) if e.is_valid() && e.offset < log_min => lo = mid + 1,
                Some(e) if !e.is_valid() => lo = mid + 1,
                _ => hi = mid,
            }
        }
        if lo > self.min.get() {
            self.min.set(lo);
        }
        Ok(())
    }

    /// Removes every file of the queue (topic deletion).
    pub async fn destroy(&self) -> Result<()> {
        let files = std::mem::take(&mut *self.files.borrow_mut());
        for f in files {
            remove_file(&f.path).await?;
        }
        self.pending.borrow_mut().clear();
        Ok(())
    }
}

/// Removes a large file a slice at a time: truncating `step` bytes per call, `pause` apart,
/// then unlinking. Freeing a whole 1 GiB segment at once is one big filesystem transaction
/// that stalls concurrent appends (their writes and `fdatasync` wait behind it) for
/// hundreds of milliseconds; slices keep each stall short.
pub async fn remove_file_gradually(
    path: &Path,
    step: u64,
    pause: std::time::Duration,
) -> Result<()> {
    let p = path.to_path_buf();
    let len = glommio::executor()
        .spawn_blocking(move || std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0))
        .await;
    let mut left = len;
    while step > 0 && left > step {
        left -= step;
        let p = path.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(left))
                    .map_err(io_err("truncating", &p))
            })
            .await?;
        glommio::timer::sleep(pause).await;
    }
    remove_file(path).await
}

/// Unlinks a file off the executor thread.
pub async fn remove_file(path: &Path) -> Result<()> {
    let p = path.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", &p)(e)),
            _ => Ok(()),
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: i64) -> CqEntry {
        CqEntry {
            offset,
            size: 100,
            tags_code: 0,
        }
    }

    /// The oldest unsynced entry is what recovery must re-dispatch from: written but not
    /// synced still counts, and entries that arrive during a sync stay counted after it.
    #[test]
    fn first_unsynced_follows_writes_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        crate::store::run_on_executor(move || async move {
            let q = ConsumeQueue::new(&root, "T".into(), 0, 1000);
            assert_eq!(q.first_unsynced(), None);
            q.put(0, entry(4096));
            q.put(1, entry(8192));
            assert_eq!(q.first_unsynced(), Some(4096));
            q.flush().await.unwrap();
            assert_eq!(q.unsynced_bytes(), 2 * ENTRY);
            assert_eq!(q.first_unsynced(), Some(4096), "written, not synced");
            q.put(2, entry(12288));
            q.sync().await.unwrap();
            assert_eq!(q.unsynced_bytes(), 0);
            assert_eq!(q.first_unsynced(), Some(12288), "still pending");
            q.flush().await.unwrap();
            q.sync().await.unwrap();
            assert_eq!(q.first_unsynced(), None);
            // A gap is filled with blank entries; the first real one counts.
            q.put(5, entry(20480));
            q.flush().await.unwrap();
            assert_eq!(q.first_unsynced(), Some(20480));
            q.sync().await.unwrap();
            assert_eq!(q.first_unsynced(), None);
            assert!(!q.is_dirty());
        });
    }
}
