//! The real `mqnamesrv` over TCP: registration, routes, cluster info, KV config, expiry, both
//! header codecs, and bad input.

mod common;
use common::remoting::*;
use coremq::protocol::code::{request, response};
use coremq::protocol::HeaderCodec::{Json, RocketMq};
use std::time::{Duration, Instant};

fn register(
    c: &mut Client,
    name: &str,
    addr: &str,
    topics: &[(&str, u32)],
    timeout: Option<&str>,
) -> i32 {
    let table: Vec<String> = topics
        .iter()
        .map(|(t, q)| format!(r#""{t}":{{"topicName":"{t}","readQueueNums":{q},"writeQueueNums":{q},"perm":6,"topicFilterType":"SINGLE_TAG","topicSysFlag":0,"order":false}}"#))
        .collect();
    let body = format!(
        r#"{{"topicConfigSerializeWrapper":{{"dataVersion":{{"counter":1,"stateVersion":0,"timestamp":1}},"topicConfigTable":{{{}}}}},"filterServerList":[]}}"#,
        table.join(",")
    );
    let mut ext = vec![
        ("brokerName", name),
        ("brokerAddr", addr),
        ("clusterName", "DefaultCluster"),
        ("haServerAddr", "127.0.0.1:10912"),
        ("brokerId", "0"),
    ];
    if let Some(t) = timeout {
        ext.push(("heartbeatTimeoutMillis", t));
    }
    let mut r = req(request::REGISTER_BROKER, Json, &ext);
    r.body = body.into_bytes().into();
    c.call(r).code
}

#[test]
fn routes_cluster_info_kv_and_codecs() {
    let logs = tempfile::tempdir().unwrap();
    let (_ns, port) = start_namesrv(logs.path(), &[]);
    let mut c = Client::connect(port);
    assert_eq!(
        register(
            &mut c,
            "broker-a",
            "127.0.0.1:10911",
            &[("TopicTest", 4)],
            None
        ),
        response::SUCCESS
    );

    let r = c.call(req(
        request::GET_ROUTEINFO_BY_TOPIC,
        Json,
        &[("topic", "TopicTest")],
    ));
    assert_eq!(r.code, response::SUCCESS);
    let route: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        route["brokerDatas"][0]["brokerAddrs"]["0"],
        "127.0.0.1:10911"
    );
    assert_eq!(route["queueDatas"][0]["writeQueueNums"], 4);

    let r = c.call(req(
        request::GET_ROUTEINFO_BY_TOPIC,
        Json,
        &[("topic", "Nope")],
    ));
    assert_eq!(r.code, response::TOPIC_NOT_EXIST);
    assert_eq!(
        r.remark.as_deref(),
        Some("No topic route info in name server for the topic: Nope")
    );

    // The binary header codec gets an answer in the same codec.
    let r = c.call(req(
        request::GET_ROUTEINFO_BY_TOPIC,
        RocketMq,
        &[("topic", "TopicTest")],
    ));
    assert_eq!((r.code, r.codec), (response::SUCCESS, RocketMq));

    let r = c.call(req(request::GET_BROKER_CLUSTER_INFO, Json, &[]));
    let ci: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(ci["clusterAddrTable"]["DefaultCluster"][0], "broker-a");
    let r = c.call(req(request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER, Json, &[]));
    let tl: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(tl["topicList"], serde_json::json!(["TopicTest"]));

    let put = req(
        request::PUT_KV_CONFIG,
        Json,
        &[("namespace", "ns"), ("key", "k"), ("value", "v")],
    );
    assert_eq!(c.call(put).code, response::SUCCESS);
    let r = c.call(req(
        request::GET_KV_CONFIG,
        Json,
        &[("namespace", "ns"), ("key", "k")],
    ));
    assert_eq!(r.ext("value"), Some("v"));
    let r = c.call(req(
        request::GET_KV_CONFIG,
        Json,
        &[("namespace", "ns"), ("key", "x")],
    ));
    assert_eq!(r.code, response::QUERY_NOT_FOUND);

    let r = c.call(req(
        request::DELETE_TOPIC_IN_NAMESRV,
        Json,
        &[("topic", "TopicTest")],
    ));
    assert_eq!(r.code, response::SUCCESS);
    let r = c.call(req(
        request::GET_ROUTEINFO_BY_TOPIC,
        Json,
        &[("topic", "TopicTest")],
    ));
    assert_eq!(r.code, response::TOPIC_NOT_EXIST);

    // Unknown code.
    let r = c.call(req(9999, Json, &[]));
    assert_eq!(r.code, response::REQUEST_CODE_NOT_SUPPORTED);
    assert_eq!(
        r.remark.as_deref(),
        Some(" request type 9999 not supported")
    );
}

#[test]
fn silent_brokers_are_dropped() {
    let logs = tempfile::tempdir().unwrap();
    let props = logs.path().join("namesrv.properties");
    std::fs::write(&props, "scanNotActiveBrokerInterval=100\n").unwrap();
    let (_ns, port) = start_namesrv(logs.path(), &["-c", props.to_str().unwrap()]);
    let mut c = Client::connect(port);
    register(
        &mut c,
        "broker-a",
        "127.0.0.1:10911",
        &[("T", 4)],
        Some("500"),
    );
    let r = c.call(req(
        request::GET_ROUTEINFO_BY_TOPIC,
        Json,
        &[("topic", "T")],
    ));
    assert_eq!(r.code, response::SUCCESS);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.call(req(
            request::GET_ROUTEINFO_BY_TOPIC,
            Json,
            &[("topic", "T")],
        ));
        if r.code == response::TOPIC_NOT_EXIST {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silent broker was never dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_log(&logs.path().join("namesrv.log"), |log| {
        log.contains("127.0.0.1:10911") && log.contains("removed from routes")
    });
}

#[test]
fn bad_frames_close_only_their_connection() {
    let logs = tempfile::tempdir().unwrap();
    let (_ns, port) = start_namesrv(logs.path(), &[]);
    let mut good = Client::connect(port);
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],               // garbage
        &[0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0][..],    // a 2 GiB length prefix
        &[0, 0, 0, 8, 0x05, 0, 0, 4, 1, 2, 3, 4][..], // unknown serialize type
        &[0, 0, 0, 6, 0, 0, 0, 2, b'{', b'x'][..],    // broken JSON header
    ] {
        let mut c = Client::connect(port);
        c.send_raw(bad).unwrap();
        assert!(c.read().is_none(), "connection should close after {bad:?}");
    }
    // A JSON header with wrong types is an error frame too, not a crash.
    let mut c = Client::connect(port);
    let h = br#"{"code":{"x":1},"flag":0,"opaque":1}"#;
    let mut raw = ((4 + h.len()) as u32).to_be_bytes().to_vec();
    raw.extend_from_slice(&(h.len() as u32).to_be_bytes());
    raw.extend_from_slice(h);
    c.send_raw(&raw).unwrap();
    assert!(c.read().is_none());
    // A truncated frame then close: nothing is answered, and the server lives on.
    let mut c = Client::connect(port);
    c.send_raw(&[0, 0, 0, 100, 0, 0, 0, 10]).unwrap();
    drop(c);
    let r = good.call(req(request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER, Json, &[]));
    assert_eq!(r.code, response::SUCCESS);
    wait_log(&logs.path().join("namesrv.log"), |log| {
        log.contains("bad frame") && log.contains("127.0.0.1:")
    });
}

#[test]
fn a_second_server_on_a_taken_port_fails_clearly() {
    let logs = tempfile::tempdir().unwrap();
    let (_ns, port) = start_namesrv(logs.path(), &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqnamesrv"))
        .args(["--listen-port", &port.to_string(), "--log-dir"])
        .arg(logs.path().join("second"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second name server bound a taken port"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen") && err.contains(&port.to_string()),
        "{err}"
    );
}
