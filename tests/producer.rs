//! CoreMQ's producer against real processes: failover between two brokers.

mod common;
use common::remoting::*;
use coremq::client::{Message, Producer};
use coremq::protocol::code::request;
use coremq::protocol::HeaderCodec::Json;
use std::collections::BTreeMap;
use std::time::Instant;

/// Bodies stored in `Failover` on a broker, across its 4 queues.
fn stored(port: u16) -> Vec<String> {
    let mut c = Client::connect(port);
    let mut out = Vec::new();
    for q in 0..4 {
        let r = c.call(req(
            request::PULL_MESSAGE,
            Json,
            &[
                ("consumerGroup", "check"),
                ("topic", "Failover"),
                ("queueId", &q.to_string()),
                ("queueOffset", "0"),
                ("maxMsgNums", "1000"),
                ("sysFlag", "0"),
                ("commitOffset", "0"),
                ("suspendTimeoutMillis", "0"),
                ("subVersion", "0"),
            ],
        ));
        let mut b = r.body.clone();
        while b.len() >= 4 {
            let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let rec = coremq::message::MessageRecord::decode(&b.slice(..n)).unwrap();
            out.push(String::from_utf8_lossy(&rec.body).into_owned());
            b = b.slice(n..);
        }
    }
    out
}

#[test]
fn sends_fail_over_to_the_surviving_broker_and_no_send_ok_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let store_a = dir.path().join("a");
    // Only SYNC_FLUSH promises that an acknowledged message survives SIGKILL; ASYNC_FLUSH
    // acknowledges from the write buffer and may lose about one commitIntervalCommitLog.
    let a_props = ["brokerName=broker-a", "flushDiskType=SYNC_FLUSH"];
    let (mut a, port_a) = start_broker(&store_a, ns_port, &a_props);
    let (_b, port_b) = start_broker(&dir.path().join("b"), ns_port, &["brokerName=broker-b"]);
    create_topic(port_a, "Failover", 4);
    create_topic(port_b, "Failover", 4);
    wait_route_where(ns_port, "Failover", |v| {
        v["brokerDatas"].as_array().map(|a| a.len()) == Some(2)
    });

    let p = Producer::new("pg", Some(&format!("127.0.0.1:{ns_port}"))).unwrap();
    let mut ok: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..20 {
        let r = p
            .send(&Message::new(
                "Failover",
                "T",
                format!("before-{i}").into_bytes(),
            ))
            .unwrap();
        ok.entry(r.queue.broker_name.clone())
            .or_default()
            .push(format!("before-{i}"));
    }
    assert_eq!(ok.len(), 2, "round robin should use both brokers: {ok:?}");

    a.0.kill().unwrap(); // SIGKILL broker-a; the name server still lists it
    a.0.wait().unwrap();
    for i in 0..20 {
        let t = Instant::now();
        let r = p
            .send(&Message::new(
                "Failover",
                "T",
                format!("after-{i}").into_bytes(),
            ))
            .unwrap_or_else(|e| panic!("send {i} after the kill failed: {e}"));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(3),
            "send {i} took {:?}",
            t.elapsed()
        );
        assert_eq!(r.queue.broker_name, "broker-b");
        ok.entry(r.queue.broker_name.clone())
            .or_default()
            .push(format!("after-{i}"));
    }

    // Every SEND_OK is stored: broker-b's now, broker-a's after it recovers.
    let on_b = stored(port_b);
    for m in &ok["broker-b"] {
        assert!(
            on_b.contains(m),
            "{m} acknowledged by broker-b but not stored"
        );
    }
    let (_a2, port_a2) = start_broker(&store_a, ns_port, &a_props);
    let on_a = stored(port_a2);
    for m in &ok["broker-a"] {
        assert!(
            on_a.contains(m),
            "{m} acknowledged by broker-a but lost in its crash"
        );
    }
}

/// Asynchronous sends with many in flight, oneway sends and batches all land, with keys
/// and user properties intact; an unreachable broker fails async sends with a clear error.
#[test]
fn async_oneway_and_batch_sends() {
    use coremq::client::{ConsumeFromWhere, ConsumerOptions, LitePullConsumer};
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (_b, port) = start_broker(&dir.path().join("s"), ns_port, &[]);
    create_topic(port, "Modes", 1);
    wait_route(ns_port, "Modes");
    let ns = format!("127.0.0.1:{ns_port}");
    let p = Producer::new("pg", Some(&ns)).unwrap();

    let (tx, rx) = mpsc::channel();
    for i in 0..200 {
        let mut m = Message::new("Modes", "A", format!("async-{i}").into_bytes());
        m.keys = vec![format!("key-{i}")];
        m.user_properties = vec![("color".into(), "blue".into())];
        let tx = tx.clone();
        p.send_async(&m, Box::new(move |r| tx.send(r).unwrap()));
    }
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(r.status, coremq::client::SendStatus::SendOk);
        ids.insert(r.msg_id);
    }
    assert_eq!(ids.len(), 200, "distinct UNIQ_KEYs");
    for i in 0..50 {
        p.send_oneway(&Message::new(
            "Modes",
            "B",
            format!("oneway-{i}").into_bytes(),
        ))
        .unwrap();
    }
    let batch: Vec<Message> = (0..32)
        .map(|i| Message::new("Modes", "C", format!("batch-{i}").into_bytes()))
        .collect();
    let r = p.send_batch(&batch).unwrap();
    assert_eq!(r.msg_id.split(',').count(), 32);
    assert_eq!(r.offset_msg_id.split(',').count(), 32);
    let (btx, brx) = mpsc::channel();
    p.send_batch_async(&batch[..4], Box::new(move |r| btx.send(r).unwrap()));
    let r = brx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(r.msg_id.split(',').count(), 4);
    let mixed = [batch[0].clone(), Message::new("Other", "", b"x".to_vec())];
    assert!(p.send_batch(&mixed).is_err(), "one topic per batch");

    // Read everything back.
    let c = LitePullConsumer::start(
        "check",
        Some(&ns),
        ConsumerOptions {
            consume_from: ConsumeFromWhere::FirstOffset,
            ..Default::default()
        },
    )
    .unwrap();
    c.assign(&p.fetch_publish_queues("Modes").unwrap()).unwrap();
    let mut bodies = Vec::new();
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while bodies.len() < 286 {
        assert!(Instant::now() < deadline, "{} of 286", bodies.len());
        for m in c.poll(std::time::Duration::from_millis(200)) {
            if m.body().starts_with(b"async-") {
                assert_eq!(m.property("color").as_deref(), Some("blue"));
                assert!(m.property("KEYS").unwrap().starts_with("key-"));
            }
            bodies.push(String::from_utf8_lossy(m.body()).into_owned());
        }
    }
    for prefix in ["async-", "oneway-", "batch-"] {
        let n = bodies.iter().filter(|b| b.starts_with(prefix)).count();
        let want = match prefix {
            "async-" => 200,
            "oneway-" => 50,
            _ => 36,
        };
        assert_eq!(n, want, "{prefix}");
    }
    c.shutdown();

    // No name server listens: async sends end with an error, not silence.
    let dead = Producer::new("pg", Some(&format!("127.0.0.1:{}", free_port()))).unwrap();
    let (etx, erx) = mpsc::channel();
    dead.send_async(
        &Message::new("Modes", "", b"x".to_vec()),
        Box::new(move |r| etx.send(r.map_err(|e| e.to_string())).unwrap()),
    );
    let err = erx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap()
        .unwrap_err();
    assert!(err.contains("connect to 127.0.0.1:"), "{err}");
}

/// A broker that accepts the connection and never answers: the send gives up at the send
/// timeout (whole send, retries included) with an error that says it timed out.
#[test]
fn a_silent_broker_fails_the_send_at_the_timeout_with_a_clear_error() {
    use coremq::client::ProducerOptions;
    use coremq::protocol::{frame, RemotingCommand};
    use std::io::{Read, Write};
    use std::time::Duration;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let held = std::thread::spawn(move || {
        // Hold accepted connections open, never answering, until the test is over.
        let mut conns = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && !d.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((s, _)) = silent.accept() {
                conns.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // A name server that routes every topic to the silent broker.
    let ns = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ns_addr = ns.local_addr().unwrap().to_string();
    let route = serde_json::json!({
        "brokerDatas": [{"cluster": "c", "brokerName": "silent",
                         "brokerAddrs": {"0": silent_addr}}],
        "queueDatas": [{"brokerName": "silent", "readQueueNums": 4, "writeQueueNums": 4,
                        "perm": 6, "topicSysFlag": 0}],
    })
    .to_string();
    std::thread::spawn(move || {
        for mut s in ns.incoming().flatten() {
            let route = route.clone();
            std::thread::spawn(move || {
                let mut buf = bytes::BytesMut::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Ok(Some(req)) = frame::decode(&mut buf) {
                        let mut r = RemotingCommand::response_to(&req, 0, None);
                        r.body = bytes::Bytes::from(route.clone());
                        let mut out = bytes::BytesMut::new();
                        frame::encode(&r, &mut out);
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let p = Producer::with_options(
        "pg",
        Some(&ns_addr),
        ProducerOptions {
            send_timeout: Duration::from_millis(800),
            ..Default::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let err = p
        .send(&Message::new("Any", "", b"x".to_vec()))
        .unwrap_err()
        .to_string();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(err.contains("timeout"), "{err}");
    drop(p);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = held.join();
}

/// Routes are fetched again once `poll_name_server_interval` has passed: queues added to a
/// topic start receiving sends without a restart.
#[test]
fn routes_refresh_and_new_queues_receive_sends() {
    use coremq::client::ProducerOptions;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (_b, port) = start_broker(&dir.path().join("s"), ns_port, &[]);
    create_topic(port, "Grow", 2);
    wait_route(ns_port, "Grow");
    let p = Producer::with_options(
        "pg",
        Some(&format!("127.0.0.1:{ns_port}")),
        ProducerOptions {
            poll_name_server_interval: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap();
    let queue_of = |p: &Producer| {
        p.send(&Message::new("Grow", "", b"x".to_vec()))
            .unwrap()
            .queue
            .queue_id
    };
    assert!((0..10).map(|_| queue_of(&p)).all(|q| q < 2));
    create_topic(port, "Grow", 4);
    wait_route_where(ns_port, "Grow", |v| {
        v["queueDatas"][0]["writeQueueNums"].as_u64() == Some(4)
    });
    std::thread::sleep(Duration::from_millis(400));
    let seen: std::collections::BTreeSet<u32> = (0..20).map(|_| queue_of(&p)).collect();
    assert!(seen.contains(&2) && seen.contains(&3), "{seen:?}");
}
