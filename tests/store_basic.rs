mod common;
use common::*;
use coremq::store::{GetStatus, Store};

#[test]
fn put_get_reopen_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), 2);
    let store = Store::open(cfg.clone()).unwrap();
    let mut sent = vec![Vec::new(); 4];
    for i in 0..400u32 {
        let q = i % 4;
        let body = format!("message-{i}-{}", "x".repeat((i % 50) as usize));
        let r = block(store.put(vec![msg(
            "T",
            q,
            body.as_bytes(),
            "TagA",
            &format!("k{i}"),
            &format!("U{i}"),
        )]))
        .unwrap();
        assert_eq!(r[0].queue_offset, sent[q as usize].len() as u64);
        sent[q as usize].push(body.into_bytes());
    }
    for q in 0..4 {
        let got = read_all(&store, "T", q);
        assert_eq!(got.len(), sent[q as usize].len(), "queue {q}");
        for (a, b) in got.iter().zip(&sent[q as usize]) {
            assert_eq!(&a[..], &b[..]);
        }
    }
    let hits = block(store.query_by_key("T", "k17", 10, 0, i64::MAX)).unwrap();
    assert_eq!(hits.len(), 1);
    store.shutdown().unwrap();
    assert!(!dir.path().join("abort").exists());

    let store = Store::open(cfg.clone()).unwrap();
    assert!(!store.recovered());
    for q in 0..4 {
        assert_eq!(read_all(&store, "T", q).len(), sent[q as usize].len());
    }
    let r = block(store.get_messages("T", 0, 100, 32, None)).unwrap();
    assert_eq!(r.status, GetStatus::OffsetOverflowOne);
    // Unclean: drop without shutdown leaves `abort`.
    drop(store);
    assert!(dir.path().join("abort").exists());
    let store = Store::open(cfg).unwrap();
    assert!(store.recovered());
    for q in 0..4 {
        assert_eq!(read_all(&store, "T", q).len(), sent[q as usize].len());
    }
    let r = block(store.put(vec![msg("T", 1, b"after", "", "", "")])).unwrap();
    assert_eq!(r[0].queue_offset, 100);
    store.shutdown().unwrap();
}
