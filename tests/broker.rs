//! The real `mqnamesrv` and `mqbroker` over TCP: route discovery, sends, pull with long
//! polling, offsets across a restart, queries, topic admin, consumer notification, bad input.

mod common;
use bytes::Bytes;
use common::remoting::*;
use coremq::message::MessageRecord;
use coremq::protocol::code::{request, response};
use coremq::protocol::HeaderCodec::{Json, RocketMq};
use coremq::protocol::RemotingCommand;
use std::time::{Duration, Instant};

fn props(tag: &str, keys: &str, uniq: &str) -> String {
    format!("TAGS\u{1}{tag}\u{2}KEYS\u{1}{keys}\u{2}UNIQ_KEY\u{1}{uniq}\u{2}WAIT\u{1}true\u{2}")
}

fn send_v2(
    c: &mut Client,
    topic: &str,
    queue: u32,
    body: &str,
    tag: &str,
    key: &str,
    uniq: &str,
) -> RemotingCommand {
    let q = queue.to_string();
    let p = props(tag, key, uniq);
    let mut r = req(
        request::SEND_MESSAGE_V2,
        Json,
        &[
            ("a", "pg"),
            ("b", topic),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", &q),
            ("f", "0"),
            ("g", "1700000000000"),
            ("h", "0"),
            ("i", &p),
            ("j", "0"),
            ("k", "false"),
        ],
    );
    r.body = Bytes::from(body.to_string());
    c.call(r)
}

fn pull(c: &mut Client, topic: &str, queue: u32, offset: u64, suspend_ms: u64) -> RemotingCommand {
    let (q, o, s) = (
        queue.to_string(),
        offset.to_string(),
        suspend_ms.to_string(),
    );
    c.call(req(
        request::PULL_MESSAGE,
        Json,
        &[
            ("consumerGroup", "cg"),
            ("topic", topic),
            ("queueId", &q),
            ("queueOffset", &o),
            ("maxMsgNums", "32"),
            ("sysFlag", if suspend_ms > 0 { "2" } else { "0" }),
            ("commitOffset", "0"),
            ("suspendTimeoutMillis", &s),
            ("subVersion", "0"),
            ("expressionType", "TAG"),
        ],
    ))
}

/// Every message of a queue from offset 0, pulled until the broker has no more.
fn pull_all(c: &mut Client, topic: &str, queue: u32) -> Vec<String> {
    let mut got = Vec::new();
    let mut off = 0u64;
    loop {
        let r = pull(c, topic, queue, off, 0);
        if r.code != response::SUCCESS {
            return got;
        }
        got.extend(bodies(&r));
        off = r.ext("nextBeginOffset").unwrap().parse().unwrap();
    }
}

fn bodies(r: &RemotingCommand) -> Vec<String> {
    let mut out = Vec::new();
    let mut b = r.body.clone();
    while !b.is_empty() {
        let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let rec = MessageRecord::decode(&b.slice(..n)).unwrap();
        out.push(String::from_utf8_lossy(&rec.body).into_owned());
        b = b.slice(n..);
    }
    out
}

#[test]
fn send_pull_offsets_queries_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let store = dir.path().join("store");
    let (mut broker, port) = start_broker(&store, ns_port, &[]);
    // The broker registers at start: TBW102 is routable.
    let route = wait_route(ns_port, "TBW102");
    assert_eq!(
        route["brokerDatas"][0]["brokerAddrs"]["0"],
        format!("127.0.0.1:{port}")
    );

    let mut c = Client::connect(port);
    let r = send_v2(&mut c, "TopicTest", 1, "hello-0", "TagA", "k0", "U0");
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let msg_id = r.ext("msgId").unwrap().to_string();
    assert_eq!(msg_id.len(), 32);
    assert!(
        msg_id.starts_with(&format!("7F000001{:08X}", port)),
        "{msg_id}"
    );
    assert_eq!(
        (r.ext("queueId"), r.ext("queueOffset")),
        (Some("1"), Some("0"))
    );
    assert_eq!(r.ext("transactionId"), Some("U0"));
    // The auto-created topic reaches the name server.
    let route = wait_route(ns_port, "TopicTest");
    assert_eq!(route["queueDatas"][0]["writeQueueNums"], 4);

    // V1 and a batch, on the binary codec.
    let p = props("TagB", "k1", "U1");
    let mut v1 = req(
        request::SEND_MESSAGE,
        RocketMq,
        &[
            ("producerGroup", "pg"),
            ("topic", "TopicTest"),
            ("defaultTopic", "TBW102"),
            ("defaultTopicQueueNums", "4"),
            ("queueId", "1"),
            ("sysFlag", "0"),
            ("bornTimestamp", "1"),
            ("flag", "0"),
            ("properties", &p),
        ],
    );
    v1.body = Bytes::from_static(b"hello-1");
    let r = c.call(v1);
    assert_eq!(
        (r.code, r.codec, r.ext("queueOffset")),
        (response::SUCCESS, RocketMq, Some("1"))
    );
    let mut batch = Vec::new();
    for i in 2..5 {
        let body = format!("hello-{i}");
        let pr = props("TagA", &format!("k{i}"), &format!("U{i}"));
        let total = 20 + body.len() + 2 + pr.len();
        batch.extend_from_slice(&(total as i32).to_be_bytes());
        batch.extend_from_slice(&[0; 12]);
        batch.extend_from_slice(&(body.len() as i32).to_be_bytes());
        batch.extend_from_slice(body.as_bytes());
        batch.extend_from_slice(&(pr.len() as i16).to_be_bytes());
        batch.extend_from_slice(pr.as_bytes());
    }
    let mut b = req(
        request::SEND_BATCH_MESSAGE,
        Json,
        &[
            ("a", "pg"),
            ("b", "TopicTest"),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", "1"),
            ("f", "0"),
            ("g", "1"),
            ("h", "0"),
            ("m", "true"),
        ],
    );
    b.body = batch.into();
    let r = c.call(b);
    assert_eq!(
        (r.code, r.ext("queueOffset")),
        (response::SUCCESS, Some("2"))
    );
    assert_eq!(r.ext("msgId").unwrap().split(',').count(), 3);

    // Pull everything back.
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        let r = pull(&mut c, "TopicTest", 1, 0, 0);
        if r.code == response::SUCCESS && bodies(&r).len() == 5 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "pull never returned 5 messages: {:?}",
            r.code
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        bodies(&got),
        (0..5).map(|i| format!("hello-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        (got.ext("nextBeginOffset"), got.ext("maxOffset")),
        (Some("5"), Some("5"))
    );

    // Long polling: a held pull returns soon after a send, woken by the arrival (a timer
    // re-check, as RocketMQ's 1 s short polling, would take far longer). 500 ms, not less:
    // the send's own round trip counts, and CI hosts have taken 80 ms per SYNC send.
    let puller = std::thread::spawn(move || {
        let mut c2 = Client::connect(port);
        let r = pull(&mut c2, "TopicTest", 1, 5, 10_000);
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(500));
    let sent_at = Instant::now();
    assert_eq!(
        send_v2(&mut c, "TopicTest", 1, "late", "TagA", "k5", "U5").code,
        response::SUCCESS
    );
    let (r, got_at) = puller.join().unwrap();
    assert_eq!(r.code, response::SUCCESS);
    assert_eq!(bodies(&r), vec!["late".to_string()]);
    let lag = got_at.saturating_duration_since(sent_at);
    assert!(
        lag < Duration::from_millis(500),
        "held pull answered {lag:?} after the send"
    );
    // A held pull with nothing arriving times out with PULL_NOT_FOUND.
    let t = Instant::now();
    let r = pull(&mut c, "TopicTest", 1, 6, 300);
    assert_eq!(r.code, response::PULL_NOT_FOUND);
    assert!(t.elapsed() >= Duration::from_millis(250));

    // Offsets.
    let up = req(
        request::UPDATE_CONSUMER_OFFSET,
        Json,
        &[
            ("consumerGroup", "cg"),
            ("topic", "TopicTest"),
            ("queueId", "1"),
            ("commitOffset", "4"),
        ],
    );
    assert_eq!(c.call(up).code, response::SUCCESS);
    let q = req(
        request::QUERY_CONSUMER_OFFSET,
        Json,
        &[
            ("consumerGroup", "cg"),
            ("topic", "TopicTest"),
            ("queueId", "1"),
        ],
    );
    assert_eq!(c.call(q.clone()).ext("offset"), Some("4"));
    let r = c.call(req(
        request::GET_MAX_OFFSET,
        Json,
        &[("topic", "TopicTest"), ("queueId", "1")],
    ));
    assert_eq!(r.ext("offset"), Some("6"));

    // Query by key and by msgId.
    let r = c.call(req(
        request::QUERY_MESSAGE,
        Json,
        &[
            ("topic", "TopicTest"),
            ("key", "k3"),
            ("maxNum", "32"),
            ("beginTimestamp", "0"),
            ("endTimestamp", "9223372036854775807"),
        ],
    ));
    assert_eq!(
        (r.code, bodies(&r)),
        (response::SUCCESS, vec!["hello-3".to_string()])
    );
    let (_, off) = coremq::message::msgid::decode_message_id(&msg_id).unwrap();
    let r = c.call(req(
        request::VIEW_MESSAGE_BY_ID,
        Json,
        &[("offset", &off.to_string())],
    ));
    assert_eq!(bodies(&r), vec!["hello-0".to_string()]);

    // Topic admin.
    let r = c.call(req(
        request::UPDATE_AND_CREATE_TOPIC,
        Json,
        &[
            ("topic", "Made"),
            ("defaultTopic", "TBW102"),
            ("readQueueNums", "2"),
            ("writeQueueNums", "2"),
            ("perm", "6"),
            ("topicFilterType", "SINGLE_TAG"),
            ("order", "false"),
        ],
    ));
    assert_eq!(r.code, response::SUCCESS);
    wait_route(ns_port, "Made");
    let r = c.call(req(request::GET_ALL_TOPIC_CONFIG, Json, &[]));
    let all: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(all["topicConfigTable"]["Made"]["writeQueueNums"], 2);
    assert_eq!(
        c.call(req(
            request::DELETE_TOPIC_IN_BROKER,
            Json,
            &[("topic", "Made")]
        ))
        .code,
        response::SUCCESS
    );

    // Bad input: illegal topic, oversize message; the broker keeps serving.
    let r = send_v2(&mut c, "bad topic!", 0, "x", "", "", "");
    assert_eq!(r.code, response::MESSAGE_ILLEGAL);
    let mut big = req(
        request::SEND_MESSAGE_V2,
        Json,
        &[
            ("a", "pg"),
            ("b", "TopicTest"),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", "0"),
            ("f", "0"),
            ("g", "0"),
            ("h", "0"),
        ],
    );
    big.body = Bytes::from(vec![b'x'; 4 * 1024 * 1024 + 1]);
    assert_eq!(c.call(big).code, response::MESSAGE_ILLEGAL);
    assert_eq!(
        c.call(req(4242, Json, &[])).code,
        response::REQUEST_CODE_NOT_SUPPORTED
    );
    let mut raw = Client::connect(port);
    raw.send_raw(&[0x7F, 0xFF, 0xFF, 0xFF, 1, 2, 3]).unwrap();
    assert!(raw.read().is_none());
    assert_eq!(pull(&mut c, "TopicTest", 1, 0, 0).code, response::SUCCESS);

    // Offsets and messages survive a clean restart.
    drop(c);
    stop(&mut broker);
    assert!(!store.join("abort").exists(), "a clean stop removes abort");
    let text = std::fs::read_to_string(store.join("config/consumerOffset.json")).unwrap();
    assert!(text.contains("\"TopicTest@cg\":{1:4}"), "{text}");
    let (_b2, port) = start_broker(&store, ns_port, &[]);
    let mut c = Client::connect(port);
    assert_eq!(c.call(q).ext("offset"), Some("4"));
    assert_eq!(bodies(&pull(&mut c, "TopicTest", 1, 0, 0)).len(), 6);
}

#[test]
fn second_heartbeat_of_a_group_notifies_the_first_member() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (_broker, port) = start_broker(&dir.path().join("store"), ns_port, &[]);
    let hb = |id: &str| {
        let mut r = req(request::HEART_BEAT, Json, &[]);
        r.body = Bytes::from(format!(
            r#"{{"clientID":"{id}","producerDataSet":[],"consumerDataSet":[{{"groupName":"G","consumeType":"CONSUME_PASSIVELY","messageModel":"CLUSTERING","consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","unitMode":false,"subscriptionDataSet":[{{"topic":"T","subString":"*","tagsSet":[],"codeSet":[],"subVersion":1}}]}}]}}"#
        ));
        r
    };
    let mut a = Client::connect(port);
    assert_eq!(a.call(hb("10.0.0.1@A")).code, response::SUCCESS);
    let mut b = Client::connect(port);
    assert_eq!(b.call(hb("10.0.0.2@B")).code, response::SUCCESS);
    // A hears about it.
    let n = a.read().expect("notification");
    assert_eq!(n.code, request::NOTIFY_CONSUMER_IDS_CHANGED);
    assert_eq!(n.ext("consumerGroup"), Some("G"));
    let r = a.call(req(
        request::GET_CONSUMER_LIST_BY_GROUP,
        Json,
        &[("consumerGroup", "G")],
    ));
    let ids: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(ids["consumerIdList"].as_array().unwrap().len(), 2);
    // The retry topic exists.
    let r = a.call(req(request::GET_ALL_TOPIC_CONFIG, Json, &[]));
    let all: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(all["topicConfigTable"]["%RETRY%G"].is_object());
    // B leaves: A is told again.
    drop(b);
    let n = a.read().expect("second notification");
    assert_eq!(n.code, request::NOTIFY_CONSUMER_IDS_CHANGED);
}

#[test]
fn sigkill_during_sync_flush_sends_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let store = dir.path().join("store");
    let (mut broker, port) = start_broker(&store, ns_port, &["flushDiskType=SYNC_FLUSH"]);
    // Four senders, each on its own queue, until the broker dies under them. The kill waits
    // for acknowledgements, not for a time: a slow shared CI host may ack only a few in 700 ms.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..4u32)
        .map(|q| {
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                let mut acked = Vec::new();
                for i in 0..100_000u32 {
                    let body = format!("q{q}-m{i}");
                    let mut r = req(
                        request::SEND_MESSAGE_V2,
                        Json,
                        &[
                            ("a", "pg"),
                            ("b", "Crash"),
                            ("c", "TBW102"),
                            ("d", "4"),
                            ("e", &q.to_string()),
                            ("f", "0"),
                            ("g", "0"),
                            ("h", "0"),
                        ],
                    );
                    r.body = Bytes::from(body.clone());
                    let Some(resp) = c.try_call(r) else {
                        break; // the connection died with the broker
                    };
                    if resp.code != response::SUCCESS {
                        break;
                    }
                    acked.push(body);
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (q, acked)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    broker.0.kill().unwrap(); // SIGKILL, with sends in flight
    broker.0.wait().unwrap();
    let acked: Vec<(u32, Vec<String>)> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let total: usize = acked.iter().map(|a| a.1.len()).sum();
    assert!(total > 20, "too few sends before the kill: {total}");
    assert!(store.join("abort").exists());

    let (_b2, port) = start_broker(&store, ns_port, &["flushDiskType=SYNC_FLUSH"]);
    let mut c = Client::connect(port);
    for (q, sent) in acked {
        let got = pull_all(&mut c, "Crash", q);
        // Every acknowledged message is there, in order; at most the unacknowledged tail more.
        assert!(
            got.len() >= sent.len(),
            "queue {q}: {} stored < {} acknowledged",
            got.len(),
            sent.len()
        );
        assert_eq!(&got[..sent.len()], &sent[..], "queue {q}");
    }
}

#[test]
fn a_failed_disk_write_refuses_sends_and_sigterm_still_stops_the_broker() {
    // The file-size limit (`ulimit -f`) lowered under a running SYNC_FLUSH broker makes its
    // next commitlog write fail with EFBIG (not kill it with SIGXFSZ): sends are refused,
    // SIGTERM stops it with an error, and after a restart every acknowledged message is there.
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let store = dir.path().join("store");
    let (mut broker, port) = start_broker(&store, ns_port, &["flushDiskType=SYNC_FLUSH"]);
    let mut c = Client::connect(port);
    let mut acked = Vec::new();
    for i in 0..40 {
        let body = format!("m{i}");
        assert_eq!(
            send_v2(&mut c, "Full", 0, &body, "", "", "").code,
            response::SUCCESS
        );
        acked.push(body);
    }
    let limit = libc::rlimit {
        rlim_cur: 4096,
        rlim_max: libc::RLIM_INFINITY,
    };
    let pid = broker.0.id() as libc::pid_t;
    // SAFETY: prlimit on our own child with a valid struct; nothing is read back.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut refused = None;
    for i in 40..240 {
        let body = format!("m{i}");
        let r = send_v2(&mut c, "Full", 0, &body, "", "", "");
        if r.code != response::SUCCESS {
            refused = Some(r);
            break;
        }
        acked.push(body);
    }
    let refused = refused.expect("sends still acknowledged past the file-size limit");
    assert!(
        refused
            .remark
            .as_deref()
            .unwrap_or("")
            .contains("File too large"),
        "refusal: {:?}",
        refused.remark
    );
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = broker.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the broker ignored SIGTERM after a failed write"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Exit 1 naming the failure: not killed by a signal, not a clean 0 over lost writes.
    let log = std::fs::read_to_string(store.join("logs").join("broker.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert_eq!(
        status.code(),
        Some(1),
        "{status:?}; broker log, last lines first: {tail:#?}"
    );
    assert!(store.join("abort").exists());

    let (_b2, port) = start_broker(&store, ns_port, &["flushDiskType=SYNC_FLUSH"]);
    let mut c = Client::connect(port);
    assert_eq!(pull_all(&mut c, "Full", 0), acked);
}

#[test]
fn topic_and_consume_stats_and_subscription_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let store = dir.path().join("store");
    let (mut broker, port) = start_broker(&store, ns_port, &[]);
    let mut c = Client::connect(port);
    for i in 0..3 {
        assert_eq!(
            send_v2(&mut c, "Stats", 0, &format!("m{i}"), "A", "", "").code,
            response::SUCCESS
        );
    }
    let mut hb = req(request::HEART_BEAT, Json, &[]);
    hb.body = Bytes::from_static(br#"{"clientID":"c1","consumerDataSet":[{"groupName":"SG","subscriptionDataSet":[{"topic":"Stats","subString":"*"}]}]}"#);
    assert_eq!(c.call(hb).code, response::SUCCESS);
    let up = req(
        request::UPDATE_CONSUMER_OFFSET,
        Json,
        &[
            ("consumerGroup", "SG"),
            ("topic", "Stats"),
            ("queueId", "0"),
            ("commitOffset", "2"),
        ],
    );
    assert_eq!(c.call(up).code, response::SUCCESS);
    // Dispatch is asynchronous: wait until the queue shows all three.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c
        .call(req(
            request::GET_MAX_OFFSET,
            Json,
            &[("topic", "Stats"), ("queueId", "0")],
        ))
        .ext("offset")
        != Some("3")
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    // fastjson's object map keys (reference §3.11), as Java admin tools read them.
    let r = c.call(req(
        request::GET_TOPIC_STATS_INFO,
        Json,
        &[("topic", "Stats")],
    ));
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        body.contains(r#""queueId":0,"topic":"Stats"}:{"lastUpdateTimestamp":"#),
        "{body}"
    );
    assert!(body.contains(r#""maxOffset":3,"minOffset":0"#), "{body}");
    let r = c.call(req(
        request::GET_CONSUME_STATS,
        Json,
        &[("consumerGroup", "SG")],
    ));
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        body.contains(r#""queueId":0,"topic":"Stats"}:{"brokerOffset":3,"consumerOffset":2"#),
        "{body}"
    );
    drop(c);
    stop(&mut broker);
    let groups = std::fs::read_to_string(store.join("config/subscriptionGroup.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&groups).unwrap();
    assert_eq!(
        v["subscriptionGroupTable"]["SG"]["retryMaxTimes"], 16,
        "{groups}"
    );
}

#[test]
fn admin_and_offset_codes_and_liberal_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (_b, port) = start_broker(&dir.path().join("store"), ns_port, &[]);
    let mut c = Client::connect(port);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..3 {
        assert_eq!(
            send_v2(&mut c, "Adm", 0, &format!("a{i}"), "A", "", "").code,
            response::SUCCESS
        );
    }
    let q = [("topic", "Adm"), ("queueId", "0")];
    assert_eq!(
        c.call(req(request::GET_MIN_OFFSET, Json, &q)).ext("offset"),
        Some("0")
    );
    let ts = c.call(req(request::GET_EARLIEST_MSG_STORETIME, Json, &q));
    let ts: i64 = ts.ext("timestamp").unwrap().parse().unwrap();
    assert!(ts >= before - 1000, "{ts} < {before}");
    let s = c.call(req(
        request::SEARCH_OFFSET_BY_TIMESTAMP,
        Json,
        &[("topic", "Adm"), ("queueId", "0"), ("timestamp", "0")],
    ));
    assert_eq!(s.ext("offset"), Some("0"));
    let s = c.call(req(
        request::SEARCH_OFFSET_BY_TIMESTAMP,
        Json,
        &[
            ("topic", "Adm"),
            ("queueId", "0"),
            ("timestamp", "9223372036854775807"),
        ],
    ));
    assert_eq!(s.ext("offset"), Some("3"));

    // Enums by ordinal, no expressionType, numbers where strings are usual: accepted.
    let mut hb = req(request::HEART_BEAT, Json, &[]);
    hb.body = Bytes::from_static(br#"{"clientID":"c9","consumerDataSet":[{"groupName":"AG","consumeType":1,"messageModel":1,"consumeFromWhere":4,"subscriptionDataSet":[{"topic":"Adm","subString":"*","subVersion":"1"}]}]}"#);
    assert_eq!(c.call(hb).code, response::SUCCESS);
    let up = req(
        request::UPDATE_CONSUMER_OFFSET,
        Json,
        &[
            ("consumerGroup", "AG"),
            ("topic", "Adm"),
            ("queueId", "0"),
            ("commitOffset", "2"),
        ],
    );
    assert_eq!(c.call(up).code, response::SUCCESS);
    let all = c.call(req(request::GET_ALL_CONSUMER_OFFSET, Json, &[]));
    let text = String::from_utf8(all.body.to_vec()).unwrap();
    assert!(text.contains("\"Adm@AG\":{0:2}"), "{text}");
    let info = c.call(req(request::GET_BROKER_RUNTIME_INFO, Json, &[]));
    let v: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
    assert!(
        v["table"]["commitLogMaxOffset"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0,
        "{v}"
    );

    // UNREGISTER_CLIENT removes the member.
    let list = |c: &mut Client| {
        c.call(req(
            request::GET_CONSUMER_LIST_BY_GROUP,
            Json,
            &[("consumerGroup", "AG")],
        ))
    };
    assert_eq!(list(&mut c).code, response::SUCCESS);
    let un = req(
        request::UNREGISTER_CLIENT,
        Json,
        &[("clientID", "c9"), ("consumerGroup", "AG")],
    );
    assert_eq!(c.call(un).code, response::SUCCESS);
    assert_eq!(
        list(&mut c).code,
        response::SYSTEM_ERROR,
        "no consumer for this group"
    );
}

#[test]
fn broker_reads_its_properties_file_and_namesrv_addr_and_names_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (_ns2, ns2_port) = start_namesrv(&dir.path().join("ns2"), &[]);
    let port = free_port();
    let conf = dir.path().join("broker-x.properties");
    std::fs::write(
        &conf,
        format!(
            "# as in conf/2m-2s-async\nbrokerClusterName=DefaultCluster\nbrokerName=broker-x\nbrokerId=0\n\
             deleteWhen=04\nfileReservedTime=48\nbrokerRole=ASYNC_MASTER\nflushDiskType=ASYNC_FLUSH\n\
             brokerIP1=127.0.0.1\nlistenPort={port}\nstorePathRootDir={}\nshards=2\n\
             mappedFileSizeCommitLog=67108864\nmaxHashSlotNum=10000\nmaxIndexNum=40000\nnoSuchKey=1\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    // No -n: the name server comes from NAMESRV_ADDR, as upstream.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mqbroker"))
        .arg("-c")
        .arg(&conf)
        .args(["--log-dir", dir.path().join("logs").to_str().unwrap()])
        .env(
            "NAMESRV_ADDR",
            format!("127.0.0.1:{ns_port};127.0.0.1:{ns2_port}"),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _broker = Proc(child);
    wait_port(port);
    // It registers with every name server of the list.
    let route2 = wait_route(ns2_port, "TBW102");
    assert_eq!(route2["brokerDatas"][0]["brokerName"], "broker-x");
    let route = wait_route(ns_port, "TBW102");
    assert_eq!(route["brokerDatas"][0]["brokerName"], "broker-x");
    assert_eq!(
        route["brokerDatas"][0]["brokerAddrs"]["0"],
        format!("127.0.0.1:{port}")
    );
    wait_log(&dir.path().join("logs/broker.log"), |log| {
        log.contains(":16: unknown key noSuchKey ignored")
    });

    // A bad value stops the broker with the file, line and key.
    let bad = dir.path().join("bad.properties");
    std::fs::write(&bad, "brokerName=b\nflushDiskType=SOMETIMES\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqbroker"))
        .arg("-c")
        .arg(&bad)
        .args(["--log-dir", dir.path().join("logs2").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:2: flushDiskType", bad.display())),
        "{err}"
    );
}

#[test]
fn logs_and_store_default_to_the_home_directory() {
    // HOME is the children's only: logs in ~/logs/rocketmqlogs, the store in ~/store.
    let home = tempfile::tempdir().unwrap();
    let ns_port = free_port();
    let ns = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_mqnamesrv"))
            .args(["--listen-port", &ns_port.to_string()])
            .env("HOME", home.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(ns_port);
    let port = free_port();
    let broker = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_mqbroker"))
            .args(["-n", &format!("127.0.0.1:{ns_port}")])
            .args([
                "-p",
                "brokerIP1=127.0.0.1",
                "-p",
                &format!("listenPort={port}"),
                "-p",
                "shards=2",
            ])
            .env("HOME", home.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    wait_route(ns_port, "TBW102");
    let logs = home.path().join("logs/rocketmqlogs");
    assert!(logs.join("namesrv.log").exists() && logs.join("broker.log").exists());
    // Registration can precede the first write of the config files by a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    for f in [
        "abort",
        "lock",
        "checkpoint",
        "commitlog",
        "config/topics.json",
    ] {
        while !home.path().join("store").join(f).exists() {
            assert!(Instant::now() < deadline, "~/store/{f} missing");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(broker);
    drop(ns);
}

#[test]
fn broker_registers_again_with_a_restarted_name_server() {
    // Name servers keep no state: a restarted one learns the broker at its next registration.
    let dir = tempfile::tempdir().unwrap();
    let ns_port = free_port();
    let ns = |log: &str| {
        Proc(
            std::process::Command::new(env!("CARGO_BIN_EXE_mqnamesrv"))
                .args(["--listen-port", &ns_port.to_string(), "--log-dir"])
                .arg(dir.path().join(log))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut first = ns("ns1");
    wait_port(ns_port);
    let (_b, _port) = start_broker(
        &dir.path().join("store"),
        ns_port,
        &["registerNameServerPeriod=10000"],
    );
    wait_route(ns_port, "TBW102");
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let _second = ns("ns2");
    wait_port(ns_port);
    let t = Instant::now();
    wait_route(ns_port, "TBW102");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "re-registered after {:?}",
        t.elapsed()
    );
}

/// UPDATE_BROKER_CONFIG changes retention on a running broker: expired segments go at the
/// next retention tick, without a restart; GET_BROKER_CONFIG shows the values in force; a
/// key that needs a restart, or a bad value, is refused and changes nothing.
#[test]
fn retention_settings_change_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let store = dir.path().join("store");
    let (_b, port) = start_broker(
        &store,
        ns_port,
        &[
            "shards=1",
            "mappedFileSizeCommitLog=262144",
            "maxMessageSize=65536",
            "cleanResourceInterval=200",
        ],
    );
    let mut c = Client::connect(port);
    let body = "r".repeat(8000);
    for i in 0..120 {
        let r = send_v2(&mut c, "Ret", 0, &body, "A", "k", &format!("u{i}"));
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    }
    let min_offset = |c: &mut Client| {
        let r = c.call(req(
            request::GET_MIN_OFFSET,
            Json,
            &[("topic", "Ret"), ("queueId", "0")],
        ));
        r.ext("offset").and_then(|v| v.parse::<u64>().ok()).unwrap()
    };
    // Segment files (not the spare an expired one is kept as, for reuse).
    let segments = || common::segment_files(&store.join("commitlog/0")).len();
    assert_eq!(min_offset(&mut c), 0);
    let before = segments();
    assert!(before >= 4, "{before} segments");

    let update = |c: &mut Client, text: &str| {
        let mut r = req(request::UPDATE_BROKER_CONFIG, Json, &[]);
        r.body = Bytes::from(text.to_string());
        c.call(r)
    };
    let r = update(&mut c, "fileReservedTime=0\nlistenPort=1\n");
    assert_eq!(r.code, response::SYSTEM_ERROR);
    assert!(r.remark.as_deref().unwrap_or("").contains("listenPort"));
    let r = update(&mut c, "fileReservedTime=x\n");
    assert_eq!(r.code, response::SYSTEM_ERROR);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(min_offset(&mut c), 0, "a refused update changed nothing");

    // Through mqadmin, as a user would: by cluster (the name server's cluster info), then
    // by broker address.
    let mqadmin = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqadmin"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ns = format!("127.0.0.1:{ns_port}");
    let addr = format!("127.0.0.1:{port}");
    wait_route(ns_port, "Ret"); // registered: the name server knows the cluster
    let (ok, out, err) = mqadmin(&[
        "updateBrokerConfig",
        "-n",
        &ns,
        "-c",
        "DefaultCluster",
        "-k",
        "fileReservedTime",
        "-v",
        "0",
    ]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), format!("update broker config success, {addr}"));
    let (ok, _, err) = mqadmin(&[
        "updateBrokerConfig",
        "-b",
        &addr,
        "-k",
        "listenPort",
        "-v",
        "1",
    ]);
    assert!(!ok && err.contains("listenPort"), "{err}");
    let every_hour: Vec<String> = (0..24).map(|h| format!("{h:02}")).collect();
    let (ok, out, err) = mqadmin(&[
        "updateBrokerConfig",
        "-b",
        &addr,
        "-k",
        "deleteWhen",
        "-v",
        &every_hour.join(";"),
    ]);
    assert!(ok, "{out}{err}");
    let r = c.call(req(request::GET_BROKER_CONFIG, Json, &[]));
    assert_eq!(r.code, response::SUCCESS);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.lines().any(|l| l == "fileReservedTime=0"), "{text}");
    assert!(text.lines().any(|l| l == "mappedFileSizeCommitLog=262144"));
    // The seed-style wrapper runs the same binary.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_mqadmin"));
    let out = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mqadmin"),
    )
    .args(["getBrokerConfig", "-b", &addr])
    .env("COREMQ_BIN_DIR", bin.parent().unwrap())
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.starts_with(&format!("============{addr}============")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("fileReservedTime ") && l.ends_with("=  0")),
        "{out}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    while min_offset(&mut c) == 0 {
        assert!(Instant::now() < deadline, "no segment was deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only the active segment is left (and the next one, created ahead of need), and what
    // it holds is still served.
    while segments() > 2 {
        assert!(Instant::now() < deadline, "{} segments left", segments());
        std::thread::sleep(Duration::from_millis(100));
    }
    let min = min_offset(&mut c);
    let r = pull(&mut c, "Ret", 0, min, 0);
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    assert!(!r.body.is_empty());
}
