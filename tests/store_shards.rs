//! Two shards: each queue lands on its owning shard, offsets resolve across shards, and
//! appends on both shards proceed at the same time.

mod common;
use common::*;
use coremq::message::MessageRecord;
use coremq::store::{CommitLogOffset, FlushDiskType, ShardId, Store};
use std::time::Instant;

#[test]
fn queues_land_on_their_owner_and_offsets_resolve_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path(), 2)).unwrap();
    assert_eq!(store.shard_count(), 2);
    let mut offsets = Vec::new();
    for q in 0..16u32 {
        let r = block(store.put(vec![msg(
            "Sharded",
            q,
            format!("body-{q}").as_bytes(),
            "",
            "",
            "",
        )]))
        .unwrap();
        assert_eq!(
            r[0].offset.shard(),
            store.shard_of("Sharded", q),
            "queue {q}"
        );
        offsets.push((q, r[0].offset));
    }
    let owners: Vec<ShardId> = offsets.iter().map(|o| o.1.shard()).collect();
    assert!(
        owners.contains(&ShardId::new(0).unwrap()) && owners.contains(&ShardId::new(1).unwrap()),
        "16 queues should spread over both shards: {owners:?}"
    );
    // Each shard holds exactly the queues it owns (dispatch is asynchronous: wait for it).
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    for i in 0..2 {
        let id = ShardId::new(i).unwrap();
        loop {
            let qs = block(store.on_shard(id, |s| async move { Ok(s.queues()) })).unwrap();
            for (t, q, _, _) in &qs {
                assert_eq!(store.shard_of(t, *q), id);
            }
            if qs.iter().all(|q| q.3 == 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dispatch never caught up: {qs:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    // Any offset resolves to its record, whichever shard holds it.
    for (q, off) in &offsets {
        let rec = MessageRecord::decode(&block(store.read_message(*off)).unwrap()).unwrap();
        assert_eq!(rec.body, format!("body-{q}").as_bytes());
        assert_eq!(rec.meta.physical_offset, off.as_i64());
        // The same position on the other shard is another record (or none), never this one.
        let other = ShardId::new(1 - off.shard().index()).unwrap();
        let forged = CommitLogOffset::new(other, off.pos());
        if let Ok(b) = block(store.read_message(forged)) {
            assert_ne!(MessageRecord::decode(&b).unwrap().body, rec.body);
        }
    }
    store.shutdown().unwrap();
}

#[test]
fn appends_on_two_shards_proceed_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 2);
    cfg.flush_disk_type = FlushDiskType::SyncFlush;
    cfg.segment_size = 4 << 20;
    let store = Store::open(cfg).unwrap();
    // One queue per shard.
    let q0 = (0..64)
        .find(|q| store.shard_of("C", *q).index() == 0)
        .unwrap();
    let q1 = (0..64)
        .find(|q| store.shard_of("C", *q).index() == 1)
        .unwrap();
    let start = Instant::now();
    let run = |q: u32| {
        let s = store.clone();
        std::thread::spawn(move || {
            let mut done = Vec::new();
            for i in 0..150 {
                block(s.put(vec![msg("C", q, format!("{q}-{i}").as_bytes(), "", "", "")])).unwrap();
                done.push(Instant::now());
            }
            done
        })
    };
    let (a, b) = (run(q0), run(q1));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    // Both streams were in progress at the same time: most of B's completions fall inside
    // A's active window and vice versa (a serialised store would put one after the other).
    let inside = |xs: &[Instant], ys: &[Instant]| {
        let (lo, hi) = (ys[0], *ys.last().unwrap());
        xs.iter().filter(|t| **t >= lo && **t <= hi).count()
    };
    let (ab, ba) = (inside(&a, &b), inside(&b, &a));
    assert!(
        ab > 75 || ba > 75,
        "completions overlap too little: {ab} {ba} in {:?}",
        start.elapsed()
    );
    for (q, n) in [(q0, 150), (q1, 150)] {
        assert_eq!(block(store.queue_range("C", q)).unwrap(), (0, n));
    }
    store.shutdown().unwrap();
}
