//! Corruption: a flipped byte in the tail of a segment is detected and truncated at recovery
//! with a log line naming file and offset; a flipped byte in the middle is reported on read,
//! never served.

mod common;
use common::*;
use coremq::store::{GetStatus, Store, StoreError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LINES
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    let _ = log::set_logger(&Capture);
    log::set_max_level(log::LevelFilter::Info);
}

fn logged(needle: &[&str]) -> Option<String> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .find(|l| needle.iter().all(|n| l.contains(n)))
        .cloned()
}

fn flip(path: &std::path::Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut b = [0u8; 1];
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x5A]).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn flipped_byte_in_tail_is_truncated_at_recovery() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), 1);
    let store = Store::open(cfg.clone()).unwrap();
    let mut last = None;
    for i in 0..50u64 {
        let r = block(store.put(vec![msg(
            "T",
            0,
            &coremq::store::pattern_body(0, i, 300),
            "A",
            "",
            "",
        )]))
        .unwrap();
        last = Some(r[0]);
    }
    store.shutdown().unwrap();
    let last = last.unwrap();
    let (file, in_seg) = segment_file(dir.path(), last.offset, cfg.segment_size);
    // A byte of the last record's body (the body starts after the 88-byte header).
    flip(&file, in_seg + 120);
    // As if the process died after writing: abort present, recovery scans.
    std::fs::write(dir.path().join("abort"), b"").unwrap();

    let store = Store::open(cfg).unwrap();
    assert!(store.recovered());
    let line = logged(&[
        &file.display().to_string(),
        &format!("offset {in_seg}"),
        "truncating",
    ])
    .unwrap_or_else(|| {
        panic!(
            "no log line naming {} and offset {in_seg}: {:#?}",
            file.display(),
            LINES.lock().unwrap()
        )
    });
    assert!(line.contains("CRC"), "{line}");
    // The corrupt record is gone, the 49 before it intact, and the queue continues after them.
    assert_eq!(block(store.queue_range("T", 0)).unwrap(), (0, 49));
    let bodies = read_all(&store, "T", 0);
    assert_eq!(bodies.len(), 49);
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(b, &coremq::store::pattern_body(0, i as u64, 300));
    }
    assert!(block(store.read_message(last.offset)).is_err());
    let r = block(store.put(vec![msg("T", 0, b"next", "", "", "")])).unwrap();
    assert_eq!(r[0].queue_offset, 49);
    assert_eq!(r[0].offset, last.offset, "the truncated position is reused");
    let v = block(store.verify()).unwrap();
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    store.shutdown().unwrap();
}

#[test]
fn flipped_byte_in_the_middle_is_reported_not_served() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), 1);
    let store = Store::open(cfg.clone()).unwrap();
    let mut offs = Vec::new();
    // About 3 segments, so record 10 lies in an old, cold segment.
    for i in 0..1500u64 {
        let r = block(store.put(vec![msg(
            "T",
            0,
            &coremq::store::pattern_body(0, i, 400),
            "A",
            "",
            "",
        )]))
        .unwrap();
        offs.push(r[0].offset);
    }
    store.shutdown().unwrap();
    let (file, in_seg) = segment_file(dir.path(), offs[10], cfg.segment_size);
    flip(&file, in_seg + 150);

    // A clean restart: no scan; the damage must still not be served.
    let store = Store::open(cfg).unwrap();
    assert!(!store.recovered());
    match block(store.read_message(offs[10])) {
        Err(StoreError::Corruption {
            file: f,
            offset,
            reason,
        }) => {
            assert_eq!(f, file);
            assert_eq!(offset, in_seg);
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("corrupt record served or wrong error: {other:?}"),
    }
    // Through the queue: records before it are served, then the read stops and reports.
    let r = block(store.get_messages("T", 0, 0, 32, None)).unwrap();
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.messages.len(), 10);
    assert_eq!(r.next_begin_offset, 10);
    let e = block(store.get_messages("T", 0, 10, 32, None)).unwrap_err();
    assert!(matches!(e, StoreError::Corruption { .. }), "{e}");
    assert!(logged(&[
        "corrupt record",
        &file.display().to_string(),
        &format!("offset {in_seg}")
    ])
    .is_some());
    // Neighbours are fine, and the store still accepts writes.
    assert!(block(store.read_message(offs[9])).is_ok());
    assert!(block(store.read_message(offs[11])).is_ok());
    let v = block(store.verify()).unwrap();
    assert_eq!(
        v.problems.len(),
        1,
        "verify reports exactly the damage: {:#?}",
        v.problems
    );
    assert!(block(store.put(vec![msg("T", 0, b"x", "", "", "")])).is_ok());
    store.shutdown().unwrap();
}

/// A cold read of many read-ahead windows (several DMA reads in flight) returns every record
/// in order, and one corrupt record in a later window ends the answer just before it.
#[test]
fn a_read_over_many_windows_stops_at_a_corrupt_record_in_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 1);
    // ~16 records of 400 bytes per window: 300 records are ~19 windows.
    cfg.read_ahead_bytes = 8 << 10;
    let store = Store::open(cfg.clone()).unwrap();
    let mut offs = Vec::new();
    for i in 0..300u64 {
        let body = coremq::store::pattern_body(0, i, 400);
        let r = block(store.put(vec![msg("T", 0, &body, "A", "", "")])).unwrap();
        offs.push(r[0].offset);
    }
    store.shutdown().unwrap();

    // A restart empties the tail cache: every record comes from the disk.
    let store = Store::open(cfg.clone()).unwrap();
    let r = block(store.get_messages("T", 0, 0, 300, None)).unwrap();
    assert_eq!(r.messages.len(), 300);
    for (i, m) in r.messages.iter().enumerate() {
        let rec = coremq::message::MessageRecord::decode(m).unwrap();
        assert_eq!(
            rec.body[..],
            coremq::store::pattern_body(0, i as u64, 400)[..]
        );
    }
    store.shutdown().unwrap();

    // Record 150 lies in the tenth window, well past the first reads in flight.
    let (file, in_seg) = segment_file(dir.path(), offs[150], cfg.segment_size);
    flip(&file, in_seg + 200);
    let store = Store::open(cfg).unwrap();
    let r = block(store.get_messages("T", 0, 0, 300, None)).unwrap();
    assert_eq!(r.messages.len(), 150);
    assert_eq!(r.next_begin_offset, 150);
    let e = block(store.get_messages("T", 0, 150, 300, None)).unwrap_err();
    assert!(matches!(e, StoreError::Corruption { .. }), "{e}");
    let r = block(store.get_messages("T", 0, 151, 300, None)).unwrap();
    assert_eq!(r.messages.len(), 149);
    store.shutdown().unwrap();
}
