//! CoreMQ's consumers against real processes (name server and broker on loopback):
//! clustering, rebalance when members join, more members than queues, broadcasting with
//! local offset files, queues added while consuming, flow control, consume results, tag
//! filters and the lite pull consumer.

mod common;
use common::remoting::*;
use coremq::client::{
    ConsumeResult, ConsumerOptions, LitePullConsumer, Message, MessageExt, MessageModel,
    MessageQueue, Producer, PushConsumer,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deliveries: body → who got it, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl Seen {
    fn record(&self, who: u8, msgs: &[MessageExt]) {
        let mut m = self.0.lock().unwrap();
        for x in msgs {
            m.entry(String::from_utf8_lossy(x.body()).into_owned())
                .or_default()
                .push(who);
        }
    }
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn deliveries(&self) -> usize {
        self.0.lock().unwrap().values().map(Vec::len).sum()
    }
    fn by(&self, who: u8) -> usize {
        let m = self.0.lock().unwrap();
        m.values().flatten().filter(|w| **w == who).count()
    }
    /// Bodies delivered more than once.
    fn duplicates(&self) -> Vec<String> {
        let m = self.0.lock().unwrap();
        let mut d: Vec<String> = m
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(k, _)| k.clone())
            .collect();
        d.sort();
        d
    }
    fn wait_distinct(&self, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.distinct() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} consumed",
                self.distinct()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Options for tests: quick periodic work, so what a test waits for happens in seconds.
fn quick() -> ConsumerOptions {
    ConsumerOptions {
        rebalance_interval: Duration::from_secs(2),
        persist_offset_interval: Duration::from_secs(1),
        broker_suspend_max: Duration::from_secs(2),
        consume_threads: 4,
        ..Default::default()
    }
}

fn start(
    ns: &str,
    group: &str,
    topic: &str,
    opts: ConsumerOptions,
    who: u8,
    seen: &Seen,
) -> PushConsumer {
    let s = seen.clone();
    PushConsumer::start_with(group, Some(ns), opts, &[(topic, "*")], move |m, _| {
        s.record(who, m);
        ConsumeResult::Success
    })
    .unwrap()
}

/// Waits until the consumers own disjoint queue sets of the given sizes (in any order) that
/// cover `total` queues; returns how long it took.
fn wait_split(cs: &[&PushConsumer], sizes: &[usize], total: usize, secs: u64) -> Duration {
    let t = Instant::now();
    let mut want = sizes.to_vec();
    want.sort();
    loop {
        let sets: Vec<Vec<MessageQueue>> = cs.iter().map(|c| c.assigned()).collect();
        let mut got: Vec<usize> = sets.iter().map(Vec::len).collect();
        got.sort();
        let mut all: Vec<&MessageQueue> = sets.iter().flatten().collect();
        all.sort();
        all.dedup();
        if got == want && all.len() == total {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "queues never split as {want:?}: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn setup(topic: &str, queues: u32) -> (tempfile::TempDir, Proc, Proc, u16, u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let (ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (b, port) = start_broker(&dir.path().join("store"), ns_port, &[]);
    create_topic(port, topic, queues);
    wait_route(ns_port, topic);
    let ns_addr = format!("127.0.0.1:{ns_port}");
    (dir, ns, b, ns_port, port, ns_addr)
}

fn produce(p: &Producer, topic: &str, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        p.send(&Message::new(
            topic,
            "A",
            format!("{prefix}-{i}").into_bytes(),
        ))
        .unwrap();
    }
}

#[test]
fn two_consumers_split_eight_queues_and_consume_each_message_once() {
    let (_d, _ns, _b, _, _, ns) = setup("CT", 8);
    let seen = Seen::default();
    let c1 = start(&ns, "G", "CT", quick(), 1, &seen);
    let c2 = start(&ns, "G", "CT", quick(), 2, &seen);
    wait_split(&[&c1, &c2], &[4, 4], 8, 30);

    let producer = Producer::new("pg", Some(&ns)).unwrap();
    produce(&producer, "CT", "m", 0..2000);
    seen.wait_distinct(2000, 60);
    // The split held throughout, and nothing came twice.
    assert_eq!((c1.assigned().len(), c2.assigned().len()), (4, 4));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(seen.duplicates(), Vec::<String>::new());
    assert_eq!(seen.deliveries(), 2000);
    assert!(seen.by(1) > 0 && seen.by(2) > 0);
    // A member leaving (it unregisters and closes its connections): the other takes over
    // every queue at once, on the broker's notification, not at the 2 s rebalance period.
    c1.shutdown();
    let took = wait_split(&[&c2], &[8], 8, 10);
    assert!(took < Duration::from_secs(1), "takeover took {took:?}");
    c2.shutdown();
}

/// A third member joins while messages stream in: the group rebalances within a second of
/// its heartbeat, nothing is lost, and redeliveries are counted. A fourth joins while the
/// stream is paused: nothing at all is redelivered.
#[test]
fn members_joining_rebalance_within_a_second_and_lose_nothing() {
    let (_d, _ns, _b, _, _, ns) = setup("JT", 8);
    let seen = Seen::default();
    let c1 = start(&ns, "JG", "JT", quick(), 1, &seen);
    let c2 = start(&ns, "JG", "JT", quick(), 2, &seen);
    wait_split(&[&c1, &c2], &[4, 4], 8, 30);

    let producer = Producer::new("pg", Some(&ns)).unwrap();
    let streaming = {
        let p = producer.clone();
        std::thread::spawn(move || {
            for i in 0..3000 {
                p.send(&Message::new("JT", "A", format!("s-{i}").into_bytes()))
                    .unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    while seen.distinct() < 500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // C3's first heartbeat goes out as it starts.
    let c3 = start(&ns, "JG", "JT", quick(), 3, &seen);
    let took = wait_split(&[&c1, &c2, &c3], &[3, 3, 2], 8, 10);
    eprintln!("rebalance after a join mid-stream took {took:?}");
    assert!(took < Duration::from_secs(1), "rebalance took {took:?}");
    streaming.join().unwrap();
    seen.wait_distinct(3000, 60);
    let dups = seen.duplicates();
    eprintln!(
        "join mid-stream: {} of 3000 messages delivered twice (the seed's rebalance harm): {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    assert!(seen.by(3) > 0, "the newcomer consumed nothing");

    // Paused: everything consumed and (idle queues commit at once) committed.
    std::thread::sleep(Duration::from_millis(500));
    let before = seen.deliveries();
    let c4 = start(&ns, "JG", "JT", quick(), 4, &seen);
    let took = wait_split(&[&c1, &c2, &c3, &c4], &[2, 2, 2, 2], 8, 10);
    assert!(took < Duration::from_secs(1), "rebalance took {took:?}");
    produce(&producer, "JT", "p", 0..400);
    seen.wait_distinct(3400, 60);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        seen.deliveries() - before,
        400,
        "redeliveries after a join during a pause"
    );
    assert!(seen.by(4) > 0);
    for c in [c1, c2, c3, c4] {
        c.shutdown();
    }
}

#[test]
fn a_member_beyond_the_queue_count_gets_no_queue_and_nothing() {
    let (_d, _ns, _b, _, _, ns) = setup("FT", 4);
    let seen = Seen::default();
    let cs: Vec<PushConsumer> = (1..=5)
        .map(|i| start(&ns, "FG", "FT", quick(), i, &seen))
        .collect();
    let refs: Vec<&PushConsumer> = cs.iter().collect();
    wait_split(&refs, &[0, 1, 1, 1, 1], 4, 30);
    let idle = cs.iter().position(|c| c.assigned().is_empty()).unwrap() as u8 + 1;
    let producer = Producer::new("pg", Some(&ns)).unwrap();
    produce(&producer, "FT", "f", 0..200);
    seen.wait_distinct(200, 60);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(seen.by(idle), 0);
    assert_eq!(seen.deliveries(), 200);
    for c in cs {
        c.shutdown();
    }
}

#[test]
fn broadcasting_delivers_everything_to_everyone_and_resumes_from_the_local_file() {
    let (dir, _ns, _b, _, _, ns) = setup("BT", 4);
    let offsets = dir.path().join("offsets");
    let opts = |name: &str| ConsumerOptions {
        model: MessageModel::Broadcasting,
        instance_name: Some(name.to_string()),
        offset_store_dir: offsets.clone(),
        ..quick()
    };
    let (s1, s2) = (Seen::default(), Seen::default());
    let b1 = start(&ns, "BG", "BT", opts("b1"), 1, &s1);
    let b2 = start(&ns, "BG", "BT", opts("b2"), 2, &s2);
    wait_split(&[&b1], &[4], 4, 30);
    wait_split(&[&b2], &[4], 4, 30);
    let producer = Producer::new("pg", Some(&ns)).unwrap();
    produce(&producer, "BT", "b", 0..1000);
    s1.wait_distinct(1000, 60);
    s2.wait_distinct(1000, 60);
    let file = coremq::client::consumer::offset_file(&offsets, b1.client_id(), "BG");
    b1.shutdown();
    let text = std::fs::read_to_string(&file).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sum: i64 = v["offsetTable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 1000, "{text}");

    produce(&producer, "BT", "c", 0..100);
    let again = Seen::default();
    let b1 = start(&ns, "BG", "BT", opts("b1"), 1, &again);
    again.wait_distinct(100, 30);
    s2.wait_distinct(1100, 30);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        again.deliveries(),
        100,
        "the restarted member resumes after its offsets"
    );
    assert!(again.0.lock().unwrap().keys().all(|k| k.starts_with("c-")));
    assert_eq!(s2.duplicates(), Vec::<String>::new());
    b1.shutdown();
    b2.shutdown();
}

#[test]
fn queues_added_to_a_topic_are_picked_up_by_rebalance() {
    let (_d, _ns, _b, ns_port, port, ns) = setup("QT", 4);
    let seen = Seen::default();
    let opts = ConsumerOptions {
        rebalance_interval: Duration::from_millis(500),
        ..quick()
    };
    let c = start(&ns, "QG", "QT", opts, 1, &seen);
    wait_split(&[&c], &[4], 4, 30);
    let producer = Producer::new("pg", Some(&ns)).unwrap();
    produce(&producer, "QT", "a", 0..100);
    seen.wait_distinct(100, 30);

    create_topic(port, "QT", 8);
    wait_route_where(ns_port, "QT", |v| {
        v["queueDatas"][0]["readQueueNums"].as_u64() == Some(8)
    });
    wait_split(&[&c], &[8], 8, 30);
    for q in 4..8 {
        let mq = MessageQueue {
            topic: "QT".into(),
            broker_name: c.assigned()[0].broker_name.clone(),
            queue_id: q,
        };
        for i in 0..10 {
            let m = Message::new("QT", "A", format!("n-{q}-{i}").into_bytes());
            producer.send_to_queue(&m, &mq).unwrap();
        }
    }
    seen.wait_distinct(140, 30);
    c.shutdown();
}

/// A slow listener: pulling stops at the cached-message threshold, resumes as it drains,
/// and every message still arrives. The listener takes 10 ms a message so that the producer
/// outpaces it even on a loaded machine (at 2 ms, sends slowed by a concurrent disk benchmark
/// never built a backlog, and flow control had nothing to do).
#[test]
fn flow_control_bounds_the_cache_of_a_slow_consumer() {
    let (_d, _ns, _b, _, _, ns) = setup("SL", 1);
    let producer = Producer::new("pg", Some(&ns)).unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let opts = ConsumerOptions {
        pull_threshold_for_queue: 20,
        pull_batch_size: 8,
        consume_threads: 1,
        ..quick()
    };
    let c = PushConsumer::start_with("SG", Some(&ns), opts, &[("SL", "*")], move |m, _| {
        std::thread::sleep(Duration::from_millis(10));
        s.record(1, m);
        ConsumeResult::Success
    })
    .unwrap();
    wait_split(&[&c], &[1], 1, 30);
    produce(&producer, "SL", "s", 0..300);
    seen.wait_distinct(300, 60);
    assert!(c.flow_control_pauses() > 0, "never flow-controlled");
    assert_eq!(seen.deliveries(), 300);
    c.shutdown();
}

/// `ReconsumeLater` delivers the message again later with its reconsume count raised, and
/// the offset does not pass it meanwhile; tag expressions filter.
#[test]
fn reconsume_later_redelivers_and_tag_expressions_filter() {
    let (_d, _ns, _b, _, _, ns) = setup("RT", 2);
    let producer = Producer::new("pg", Some(&ns)).unwrap();
    let got: Arc<Mutex<Vec<(String, i32)>>> = Arc::default();
    let g = got.clone();
    let opts = ConsumerOptions {
        reconsume_delay: Duration::from_millis(200),
        ..quick()
    };
    let c = PushConsumer::start_with(
        "RG",
        Some(&ns),
        opts,
        &[("RT", "TagA || TagB")],
        move |m, _| {
            let body = String::from_utf8_lossy(m[0].body()).into_owned();
            let times = m[0].record.meta.reconsume_times;
            g.lock().unwrap().push((body.clone(), times));
            if body == "fail-once" && times == 0 {
                ConsumeResult::ReconsumeLater
            } else {
                ConsumeResult::Success
            }
        },
    )
    .unwrap();
    wait_split(&[&c], &[2], 2, 30);
    for (tag, body) in [
        ("TagA", "a"),
        ("TagC", "c"),
        ("TagB", "fail-once"),
        ("TagB", "b"),
    ] {
        producer
            .send(&Message::new("RT", tag, body.as_bytes().to_vec()))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 4 {
        assert!(Instant::now() < deadline, "{:?}", got.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut v = got.lock().unwrap().clone();
    v.sort();
    assert_eq!(
        v,
        vec![
            ("a".to_string(), 0),
            ("b".to_string(), 0),
            ("fail-once".to_string(), 0),
            ("fail-once".to_string(), 1)
        ]
    );
    c.shutdown();
}

#[test]
fn lite_pull_assign_poll_seek_and_manual_commit() {
    let (_d, _ns, _b, _, _, ns) = setup("LT", 2);
    let producer = Producer::new("pg", Some(&ns)).unwrap();
    let queues = producer.fetch_publish_queues("LT").unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..50 {
        let m = Message::new("LT", "A", format!("l-{i}").into_bytes());
        producer.send_to_queue(&m, &queues[0]).unwrap();
    }
    let opts = ConsumerOptions {
        consume_from: coremq::client::ConsumeFromWhere::FirstOffset,
        pull_batch_size: 16,
        ..quick()
    };
    let c = LitePullConsumer::start("LG", Some(&ns), opts.clone()).unwrap();
    c.set_auto_commit(false);
    c.assign(&queues[..1]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 50 {
        assert!(Instant::now() < deadline, "{} of 50 polled", got.len());
        let batch = c.poll(Duration::from_millis(500));
        assert!(batch.len() <= 16);
        got.extend(batch.into_iter().map(|m| m.queue_offset));
    }
    assert_eq!(got, (0..50).collect::<Vec<i64>>(), "in order, each once");
    // Nothing committed yet (the broker answers 0 while the queue's first message is stored).
    assert!(matches!(c.committed(&queues[0]), None | Some(0)));
    c.commit_sync();
    assert_eq!(c.committed(&queues[0]), Some(50));

    c.seek(&queues[0], 10).unwrap();
    let again = c.poll(Duration::from_secs(5));
    assert_eq!(again.first().map(|m| m.queue_offset), Some(10));
    c.seek_to_timestamp(&queues[0], before).unwrap();
    let again = c.poll(Duration::from_secs(5));
    assert_eq!(again.first().map(|m| m.queue_offset), Some(0));
    assert!(c.seek(&queues[0], 51).is_err(), "past the max offset");
    assert!(c.seek(&queues[1], 0).is_err(), "not assigned");
    c.shutdown();

    // Subscribe mode with auto commit resumes from the committed 50.
    for i in 50..60 {
        let m = Message::new("LT", "A", format!("l-{i}").into_bytes());
        producer.send_to_queue(&m, &queues[0]).unwrap();
    }
    let c = LitePullConsumer::start("LG", Some(&ns), opts).unwrap();
    c.subscribe("LT", "*");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 10 {
        assert!(Instant::now() < deadline, "{got:?}");
        got.extend(
            c.poll(Duration::from_millis(500))
                .into_iter()
                .map(|m| m.queue_offset),
        );
    }
    assert_eq!(got, (50..60).collect::<Vec<i64>>());
    // Rebalance adds queues one at a time (each after a start-offset lookup, retried at the
    // next rebalance if it fails), so queue 0 can deliver before queue 1 is owned.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.assignment().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.assignment().len(), 2);
    c.shutdown();
    let check = LitePullConsumer::start("LG", Some(&ns), quick()).unwrap();
    check.assign(&queues[..1]).unwrap();
    assert_eq!(
        check.committed(&queues[0]),
        Some(60),
        "auto commit at shutdown"
    );
    check.shutdown();
}
