//! Store behaviours: oversize messages, the lock, flush modes, tag filters, time search,
//! batches and topic deletion.

mod common;
use bytes::Bytes;
use common::*;
use coremq::message::{tags_code, MessageRecord};
use coremq::store::{FlushDiskType, GetStatus, Store, StoreError};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn oversize_message_is_refused_and_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), 1);
    let max = cfg.max_message_size;
    let store = Store::open(cfg).unwrap();
    block(store.put(vec![msg("T", 0, b"ok", "", "", "")])).unwrap();
    let before = block(store.stats()).unwrap()[0];
    let big = vec![7u8; max + 1];
    match block(store.put(vec![msg("T", 0, &big, "", "", "")])) {
        Err(StoreError::MessageTooLarge { size, max: m }) => assert_eq!((size, m), (max + 1, max)),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // A batch counts as one message.
    let half = vec![1u8; max / 2 + 1];
    let batch = vec![
        msg("T", 0, &half, "", "", ""),
        msg("T", 0, &half, "", "", ""),
    ];
    assert!(matches!(
        block(store.put(batch)),
        Err(StoreError::MessageTooLarge { .. })
    ));
    let after = block(store.stats()).unwrap()[0];
    assert_eq!(before.written, after.written, "nothing was written");
    assert_eq!(block(store.queue_range("T", 0)).unwrap(), (0, 1));
    // A message of exactly the maximum is fine.
    block(store.put(vec![msg("T", 0, &vec![3u8; max], "", "", "")])).unwrap();
    store.shutdown().unwrap();
}

#[test]
fn second_opener_gets_a_clear_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path(), 1)).unwrap();
    match Store::open(small_config(dir.path(), 1)) {
        Err(e @ StoreError::Locked { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&dir.path().display().to_string()), "{text}");
            assert!(text.contains(&std::process::id().to_string()), "{text}");
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second open of a locked store succeeded"),
    }
    store.shutdown().unwrap();
    // Released at shutdown.
    Store::open(small_config(dir.path(), 1))
        .unwrap()
        .shutdown()
        .unwrap();
}

#[test]
fn sync_flush_acknowledges_durable_data_and_async_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 1);
    cfg.flush_disk_type = FlushDiskType::SyncFlush;
    let store = Store::open(cfg).unwrap();
    for i in 0..20 {
        let r = block(store.put(vec![msg("T", 0, format!("{i}").as_bytes(), "", "", "")])).unwrap();
        let s = block(store.stats()).unwrap()[0];
        assert!(
            s.durable >= r[0].offset.pos() + r[0].size as u64,
            "acked before durable"
        );
    }
    store.shutdown().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 1);
    cfg.flush_interval_ms = 100;
    let store = Store::open(cfg).unwrap();
    let r = block(store.put(vec![msg("T", 0, b"x", "", "", "")])).unwrap();
    let end = r[0].offset.pos() + r[0].size as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while block(store.stats()).unwrap()[0].durable < end {
        assert!(
            Instant::now() < deadline,
            "ASYNC_FLUSH never made the data durable"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    store.shutdown().unwrap();
}

#[test]
fn async_flush_writes_at_most_once_per_commit_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 1);
    cfg.commit_interval_ms = 300;
    cfg.flush_interval_ms = 10_000;
    let store = Store::open(cfg).unwrap();
    // The flusher counts its start as a write: let one interval pass, so the first append
    // is written at once; the second, right behind it, waits for the interval to pass.
    // The interval runs from the start of the first write, which is after `t0`: so the
    // second write completes at least one interval after `t0`, however slow the disk is.
    std::thread::sleep(Duration::from_millis(350));
    let t0 = Instant::now();
    block(store.put(vec![msg("T", 0, b"first", "", "", "")])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while block(store.stats()).unwrap()[0].flushed == 0 {
        assert!(
            Instant::now() < deadline,
            "the first append was never written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_written = t0.elapsed();
    let r = block(store.put(vec![msg("T", 0, b"second", "", "", "")])).unwrap();
    let end = r[0].offset.pos() + r[0].size as u64;
    let s = block(store.stats()).unwrap()[0];
    // Unless the first write itself took most of the interval (a stalled shared disk),
    // the second one cannot have happened yet.
    if first_written < Duration::from_millis(200) {
        assert!(s.flushed < end, "written before the commit interval passed");
    }
    while block(store.stats()).unwrap()[0].flushed < end {
        assert!(
            Instant::now() < deadline,
            "the second append was never written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "written after {waited:?}"
    );
    // Reads do not wait for the write: unflushed records come from the tail cache.
    assert_eq!(block(store.queue_range("T", 0)).unwrap(), (0, 2));
    store.shutdown().unwrap();
}

#[test]
fn tag_filter_time_search_batches_and_topic_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(1_800_000_000_000));
    let mut cfg = small_config(dir.path(), 1);
    let n = now.clone();
    cfg.clock = Arc::new(move || n.load(Ordering::Relaxed));
    let store = Store::open(cfg).unwrap();
    for i in 0..10u32 {
        let tag = if i % 2 == 0 { "TagA" } else { "TagB" };
        block(store.put(vec![msg("T", 0, format!("{i}").as_bytes(), tag, "", "")])).unwrap();
        now.fetch_add(1000, Ordering::Relaxed);
    }
    let a = tags_code(Some(b"TagA"));
    let r = block(store.get_messages("T", 0, 0, 32, Some(vec![a]))).unwrap();
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.queue_offsets, vec![0, 2, 4, 6, 8]);
    assert_eq!(r.next_begin_offset, 10);
    let none =
        block(store.get_messages("T", 0, 0, 32, Some(vec![tags_code(Some(b"TagZ"))]))).unwrap();
    assert_eq!(none.status, GetStatus::NoMatchedMessage);
    assert_eq!(none.next_begin_offset, 10);
    // Store times are 1 s apart from the injected clock.
    let t0 = 1_800_000_000_000;
    assert_eq!(
        block(store.search_offset_by_timestamp("T", 0, t0 + 3500)).unwrap(),
        4
    );
    assert_eq!(
        block(store.search_offset_by_timestamp("T", 0, 0)).unwrap(),
        0
    );
    assert_eq!(
        block(store.search_offset_by_timestamp("T", 0, i64::MAX)).unwrap(),
        10
    );
    assert_eq!(block(store.earliest_msg_store_time("T", 0)).unwrap(), t0);
    // A batch gets consecutive queue offsets, each record on its own.
    let batch: Vec<_> = (0..5)
        .map(|i| msg("T", 0, format!("b{i}").as_bytes(), "", "", ""))
        .collect();
    let r = block(store.put(batch)).unwrap();
    assert_eq!(
        r.iter().map(|p| p.queue_offset).collect::<Vec<_>>(),
        vec![10, 11, 12, 13, 14]
    );
    let g = block(store.get_messages("T", 0, 10, 32, None)).unwrap();
    let bodies: Vec<Bytes> = g
        .messages
        .iter()
        .map(|m| MessageRecord::decode(m).unwrap().body)
        .collect();
    assert_eq!(
        bodies,
        (0..5)
            .map(|i| Bytes::from(format!("b{i}")))
            .collect::<Vec<_>>()
    );
    // Unknown queue and offsets past the end.
    let r = block(store.get_messages("Nope", 0, 0, 32, None)).unwrap();
    assert_eq!(r.status, GetStatus::NoMatchedLogicQueue);
    let r = block(store.get_messages("T", 0, 99, 32, None)).unwrap();
    assert_eq!(r.status, GetStatus::OffsetOverflowBadly);
    // Topic deletion removes the queue and its files.
    std::thread::sleep(Duration::from_millis(200));
    block(store.delete_topic("T")).unwrap();
    assert_eq!(block(store.queue_range("T", 0)).unwrap(), (0, 0));
    let cq = dir.path().join("consumequeue/T/0");
    assert_eq!(std::fs::read_dir(&cq).map(|d| d.count()).unwrap_or(0), 0);
    store.shutdown().unwrap();
}

/// Segment warming (zeros written ahead of the tail) never overwrites data, across segment
/// ends, whether appends outrun it (ASYNC_FLUSH) or wait for it (SYNC_FLUSH).
#[test]
fn warmed_segments_keep_every_record() {
    for mode in [FlushDiskType::AsyncFlush, FlushDiskType::SyncFlush] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small_config(dir.path(), 1);
        cfg.flush_disk_type = mode;
        cfg.warm_segments = Some(true);
        cfg.warm_ahead_bytes = 96 * 1024;
        assert!(cfg.warms_segments());
        let store = Store::open(cfg.clone()).unwrap();
        let body = |i: usize| format!("{i:05}-{}", "w".repeat(300 + i % 700)).into_bytes();
        let n = 3000;
        for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
            let batch = chunk
                .iter()
                .map(|&i| msg("W", 0, &body(i), "", "", ""))
                .collect();
            block(store.put(batch)).unwrap();
        }
        // The tail cache holds 64 KiB: almost all of this is read back from the segments.
        let got = read_all(&store, "W", 0);
        assert_eq!(got.len(), n, "{mode:?}");
        for (i, b) in got.iter().enumerate() {
            assert_eq!(&b[..], &body(i)[..], "{mode:?}: record {i}");
        }
        store.shutdown().unwrap();
        let store = Store::open(cfg).unwrap();
        let v = block(store.verify()).unwrap();
        assert!(v.problems.is_empty(), "{mode:?}: {:?}", v.problems);
        assert_eq!(v.records, n as u64);
        assert_eq!(read_all(&store, "W", 0).len(), n);
        store.shutdown().unwrap();
    }
}

/// A store that was shut down holds none of its files open, so the space of files deleted
/// after it (a test's or a benchmark's store) is freed at once, not at process exit.
#[test]
fn shutdown_closes_every_file_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 2);
    cfg.flush_disk_type = FlushDiskType::SyncFlush;
    let store = Store::open(cfg).unwrap();
    for i in 0..200u32 {
        let key = format!("k{i}");
        block(store.put(vec![msg("F", i % 4, b"body", "tag", &key, "")])).unwrap();
    }
    store.shutdown().unwrap();
    let open: Vec<std::path::PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir.path()))
        .collect();
    assert!(open.is_empty(), "still open after shutdown: {open:?}");
}

/// Whether any extent of `path` is unwritten (allocated but never written: the first write
/// there converts it, and a durable write then commits the journal), by FIEMAP; `None` where
/// the filesystem does not say. Panics if the file is missing.
fn has_unwritten_extents(path: &std::path::Path) -> Option<bool> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; 32],
    }
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 0x1;
    const FIEMAP_EXTENT_LAST: u32 = 0x1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut start = 0;
    loop {
        // SAFETY: plain integers; all zeros is a valid value.
        let mut m: Fiemap = unsafe { std::mem::zeroed() };
        m.start = start;
        m.length = u64::MAX - start;
        m.flags = FIEMAP_FLAG_SYNC;
        m.count = 32;
        // SAFETY: FS_IOC_FIEMAP with a struct sized for `count` extents.
        if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut m) } != 0 {
            return None;
        }
        if m.mapped == 0 {
            return Some(false);
        }
        for e in &m.extents[..m.mapped as usize] {
            if e.flags & FIEMAP_EXTENT_UNWRITTEN != 0 {
                return Some(true);
            }
            if e.flags & FIEMAP_EXTENT_LAST != 0 {
                return Some(false);
            }
            start = e.logical + e.length;
        }
    }
}

/// Segment warming zeroes a new store's first segment before `open` returns, and the next
/// segment while records go into the first: neither leaves an unwritten extent for a
/// SYNC_FLUSH round to convert.
#[test]
fn warming_zeroes_the_first_segment_at_open_and_the_next_one_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 1);
    cfg.flush_disk_type = FlushDiskType::SyncFlush;
    cfg.segment_size = 1 << 20;
    assert!(
        cfg.warms_segments(),
        "warming is on by default for SYNC_FLUSH"
    );
    let store = Store::open(cfg.clone()).unwrap();
    let seg = |base: u64| {
        cfg.commitlog_dir
            .join("0")
            .join(coremq::store::offset::file_name(base))
    };
    let Some(first) = has_unwritten_extents(&seg(0)) else {
        eprintln!("skipped: no FIEMAP on {}", dir.path().display());
        store.shutdown().unwrap();
        return;
    };
    assert!(!first, "the first segment has unwritten extents after open");
    block(store.put(vec![msg("Z", 0, b"one", "", "", "")])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while has_unwritten_extents(&seg(1 << 20)) != Some(false) {
        assert!(
            Instant::now() < deadline,
            "the next segment was not zeroed ahead of the records"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_all(&store, "Z", 0), vec![Bytes::from_static(b"one")]);
    store.shutdown().unwrap();
}

/// Consume queues are synced as upstream does: a regular flush leaves a queue with less
/// than `flush_cq_least_pages` unsynced, and the checkpoint's consume-queue point (where
/// recovery re-dispatches from) stays at its oldest unsynced entry; a thorough flush syncs
/// every queue (one syncfs for this many) and the point reaches the dispatched end.
#[test]
fn consume_queue_syncs_follow_least_pages_and_the_thorough_interval() {
    use coremq::store::format::Checkpoint;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 1);
    cfg.flush_cq_least_pages = 2;
    cfg.flush_cq_thorough_interval_ms = 3_000;
    let cp_path = dir.path().join("checkpoint");
    let store = Store::open(cfg).unwrap();
    for q in 0..100 {
        block(store.put(vec![msg("T", q, b"x", "", "", "")])).unwrap();
    }
    let end = block(store.stats()).unwrap()[0].written;
    let checkpoint = || {
        Checkpoint::decode(&std::fs::read(&cp_path).unwrap())
            .unwrap()
            .shards[0]
    };
    let t0 = Instant::now();
    // A regular flush: the index is synced to the end, the queues are not.
    while checkpoint().index < end {
        assert!(t0.elapsed() < Duration::from_secs(2), "no flush after 2 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        checkpoint().consume_queue,
        0,
        "queues with one entry are not synced"
    );
    // The thorough flush.
    while checkpoint().consume_queue < end {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no thorough flush after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(checkpoint().consume_queue, end);
    store.shutdown().unwrap();
}
