//! Retention with an injected clock: expired segments and the consume-queue and index files
//! behind them are deleted, the active segment never is, and the rest stays readable.

mod common;
use common::*;
use coremq::store::{pattern_body, GetStatus, Store, StoreConfig};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOUR: i64 = 3_600_000;

fn clocked(root: &std::path::Path) -> (StoreConfig, Arc<AtomicI64>) {
    let skew = Arc::new(AtomicI64::new(0));
    let mut c = small_config(root, 1);
    let s = skew.clone();
    let real = coremq::store::config::system_clock();
    c.clock = Arc::new(move || real() + s.load(Ordering::Relaxed));
    c.retention.set_file_reserved_hours(48);
    (c, skew)
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Message `i` of queue T/0, with its key and unique key.
fn put_one(store: &Store, i: u64) {
    let m = msg(
        "T",
        0,
        &pattern_body(0, i, 500),
        "A",
        &format!("key{i}"),
        &format!("U{i}"),
    );
    block(store.put(vec![m])).unwrap();
}

fn fill(store: &Store, n: u64) {
    for i in 0..n {
        put_one(store, i);
    }
}

/// Every message of T/0 in `[min, max)` is served, intact.
fn read_back(store: &Store, min: u64, max: u64) {
    let mut off = min;
    while off < max {
        let r = block(store.get_messages("T", 0, off, 32, None)).unwrap();
        assert_eq!(r.status, GetStatus::Found, "at {off}");
        for (m, qo) in r.messages.iter().zip(&r.queue_offsets) {
            let rec = coremq::message::MessageRecord::decode(m).unwrap();
            assert_eq!(rec.body, pattern_body(0, *qo, 500));
        }
        off = r.next_begin_offset;
    }
}

#[test]
fn expired_segments_and_their_queue_and_index_files_go() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, skew) = clocked(dir.path());
    let store = Store::open(cfg.clone()).unwrap();
    fill(&store, 2000); // ~1.2 MB: 5 segments of 256 KiB, 20 queue files, 10 index files
                        // Let the periodic flush write the queue and index files.
    std::thread::sleep(Duration::from_millis(300));
    let seg_dir = dir.path().join("commitlog/0");
    let cq_dir = dir.path().join("consumequeue/T/0");
    let ix_dir = dir.path().join("index/0");
    let (segs0, cqs0, ixs0) = (
        count_files(&seg_dir),
        count_files(&cq_dir),
        count_files(&ix_dir),
    );
    assert!(
        segs0 >= 5 && cqs0 >= 19 && ixs0 >= 9,
        "{segs0} {cqs0} {ixs0}"
    );

    // Nothing is old yet: a pass deletes nothing.
    assert_eq!(block(store.run_retention()).unwrap().segments, 0);

    // Fifty hours later everything but the active segment has expired.
    skew.store(50 * HOUR, Ordering::Relaxed);
    let rep = block(store.run_retention()).unwrap();
    let stats = block(store.stats()).unwrap()[0];
    assert!(rep.segments >= 4, "{rep:?}");
    assert!(rep.queue_files > 0 && rep.index_files > 0, "{rep:?}");
    // One of them kept as the spare for the next new segment (`reuse_segments`).
    assert!(seg_dir.join(coremq::store::commitlog::SPARE).exists());
    assert_eq!(count_files(&seg_dir), segs0 - rep.segments + 1);
    assert_eq!(count_files(&cq_dir), cqs0 - rep.queue_files);
    assert_eq!(count_files(&ix_dir), ixs0 - rep.index_files);
    // The active segment stays, with the newest messages.
    assert!(stats.min_pos <= stats.written && stats.written - stats.min_pos <= cfg.segment_size);

    let (min, max) = block(store.queue_range("T", 0)).unwrap();
    assert!(min > 0 && max == 2000, "({min}, {max})");
    let r = block(store.get_messages("T", 0, 0, 32, None)).unwrap();
    assert_eq!(r.status, GetStatus::OffsetTooSmall);
    assert_eq!(r.next_begin_offset, min);
    // Everything from the new minimum on is readable and intact.
    read_back(&store, min, max);
    // Keys of retained messages are still found; keys of deleted ones are not.
    assert_eq!(
        block(store.query_by_key("T", "key1999", 4, 0, i64::MAX))
            .unwrap()
            .len(),
        1
    );
    assert!(block(store.query_by_key("T", "key0", 4, 0, i64::MAX))
        .unwrap()
        .is_empty());
    let v = block(store.verify()).unwrap();
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    store.shutdown().unwrap();

    // The deletion survives a restart.
    let store = Store::open(cfg).unwrap();
    assert_eq!(block(store.queue_range("T", 0)).unwrap(), (min, max));
    store.shutdown().unwrap();
}

#[test]
fn periodic_pass_runs_at_the_delete_when_hour() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, skew) = clocked(dir.path());
    cfg.retention.set_delete_when(&(0..24).collect::<Vec<u8>>()); // every hour is a deleteWhen hour
    cfg.clean_resource_interval_ms = 50;
    let store = Store::open(cfg).unwrap();
    fill(&store, 1200);
    skew.store(100 * HOUR, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = block(store.stats()).unwrap()[0];
        if s.min_pos > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "retention did not run: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Appends go on meanwhile.
    fill(&store, 10);
    store.shutdown().unwrap();
}

/// With `reuse_segments`, retention keeps one expired segment as the spare, a later new
/// segment takes it (the same file, so its blocks are written already), every record stays
/// intact, and recovery after a crash stops at the tail, not at the older records the reused
/// file still holds past it.
#[test]
fn an_expired_segment_is_reused_and_recovery_stops_at_its_tail() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, skew) = clocked(dir.path());
    let store = Store::open(cfg.clone()).unwrap();
    fill(&store, 2000); // 5 segments of 256 KiB
    let seg_dir = dir.path().join("commitlog/0");
    let spare = seg_dir.join(coremq::store::commitlog::SPARE);
    skew.store(50 * HOUR, Ordering::Relaxed);
    let rep = block(store.run_retention()).unwrap();
    assert!(rep.segments >= 4, "{rep:?}");
    assert!(spare.exists(), "an expired segment is kept as the spare");
    let spare_ino = std::fs::metadata(&spare).unwrap().ino();
    assert_eq!(
        segment_files(&seg_dir).len(),
        5 - rep.segments + 1,
        "the active and the next one"
    );

    // Appends until the tail is halfway into the segment made from the spare (the one after
    // the next, which was created ahead), so older records follow the tail in its file.
    let reused_base = || {
        segment_files(&seg_dir)
            .into_iter()
            .find(|&(_, ino)| ino == spare_ino)
            .map(|(base, _)| base)
    };
    let mut n = 2000u64;
    loop {
        put_one(&store, n);
        n += 1;
        let written = block(store.stats()).unwrap()[0].written;
        if reused_base().is_some_and(|b| written > b + cfg.segment_size / 2) {
            break;
        }
        assert!(n < 5000, "no new segment took the spare");
    }
    assert!(!spare.exists(), "the spare was taken");
    let check = |store: &Store| {
        let (min, max) = block(store.queue_range("T", 0)).unwrap();
        assert_eq!(max, n);
        read_back(store, min, max);
        let v = block(store.verify()).unwrap();
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
    };
    check(&store);
    let written = block(store.stats()).unwrap()[0].written;
    store.shutdown().unwrap();

    // As if the process died: recovery scans the reused segment and stops at its tail.
    std::fs::write(dir.path().join("abort"), b"").unwrap();
    let store = Store::open(cfg).unwrap();
    assert_eq!(block(store.stats()).unwrap()[0].written, written);
    check(&store);
    store.shutdown().unwrap();
}

/// With `spare_segments` 3, a pass that expires more segments keeps three as spares
/// (`spare`, `spare.1`, `spare.2`) and deletes the others; a restart keeps them, and later
/// new segments take every one (the same files), with every record intact.
#[test]
fn a_pass_keeps_up_to_spare_segments_and_new_segments_take_them_all() {
    use coremq::store::commitlog::spare_name;
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, skew) = clocked(dir.path());
    cfg.spare_segments = 3;
    let store = Store::open(cfg.clone()).unwrap();
    fill(&store, 2000); // 5 segments of 256 KiB
    let seg_dir = dir.path().join("commitlog/0");
    skew.store(50 * HOUR, Ordering::Relaxed);
    let rep = block(store.run_retention()).unwrap();
    assert!(rep.segments >= 4, "{rep:?}");
    let spares: Vec<_> = (0..3).map(|i| seg_dir.join(spare_name(i))).collect();
    for s in &spares {
        assert!(s.exists(), "{} kept", s.display());
    }
    assert!(!seg_dir.join(spare_name(3)).exists(), "no more than three");
    let inos: Vec<u64> = spares
        .iter()
        .map(|s| std::fs::metadata(s).unwrap().ino())
        .collect();
    store.shutdown().unwrap();

    let store = Store::open(cfg).unwrap();
    let mut n = 2000u64;
    while spares.iter().any(|s| s.exists()) {
        put_one(&store, n);
        n += 1;
        assert!(n < 9000, "spares left untaken");
    }
    let numbered = segment_files(&seg_dir);
    assert!(
        inos.iter()
            .all(|i| numbered.iter().any(|&(_, ino)| ino == *i)),
        "every spare became a segment"
    );
    let (min, max) = block(store.queue_range("T", 0)).unwrap();
    assert_eq!(max, n);
    read_back(&store, min, max);
    let v = block(store.verify()).unwrap();
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    store.shutdown().unwrap();
}
