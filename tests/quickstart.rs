//! The seed's quickstart through its scripts (`scripts/mqnamesrv`, `scripts/mqbroker`,
//! `scripts/tools.sh`), and a consumer killed with SIGKILL.

mod common;
use common::remoting::*;
use coremq::client::{Message, Producer};
use coremq::protocol::code::request;
use coremq::protocol::HeaderCodec::Json;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PRODUCER: &str = "org.apache.rocketmq.example.quickstart.Producer";
const CONSUMER: &str = "org.apache.rocketmq.example.quickstart.Consumer";
const GROUP: &str = "please_rename_unique_group_name_4";

fn tools(class: &str, ns_port: u16) -> Command {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_coremq-tools"))
        .parent()
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/tools.sh");
    let mut c = Command::new("bash");
    c.arg(script)
        .arg(class)
        .env("COREMQ_BIN_DIR", bin_dir)
        .env("NAMESRV_ADDR", format!("127.0.0.1:{ns_port}"));
    c
}

/// The stdout of a finished command that must have succeeded.
fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (queueId, queueOffset) of every message in the quickstart Consumer's output.
fn consumed(stdout: &str) -> Vec<(u32, i64)> {
    let field = |s: &str, k: &str| -> String {
        let i = s.find(k).unwrap() + k.len();
        s[i..].chars().take_while(|c| c.is_ascii_digit()).collect()
    };
    stdout
        .split("MessageExt [")
        .skip(1)
        .map(|m| {
            (
                field(m, "queueId=").parse().unwrap(),
                field(m, "queueOffset=").parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn quickstart_scripts_produce_and_consume_and_the_broker_records_progress() {
    use_scripts();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (mut broker, port) = start_broker(&store, ns_port, &[]);
    let out = tools(PRODUCER, ns_port)
        .env("COREMQ_QUICKSTART_COUNT", "50")
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 50, "{stdout}");
    for l in &lines {
        assert!(
            l.starts_with("SendResult [sendStatus=SEND_OK, msgId="),
            "{l}"
        );
        assert!(
            l.contains("messageQueue=MessageQueue [topic=TopicTest, brokerName="),
            "{l}"
        );
    }
    // TopicTest was auto-created through TBW102 with the client's 4 queues; all 50 are stored.
    let mut c = Client::connect(port);
    let mut total = 0;
    for q in 0..4 {
        let r = c.call(req(
            request::GET_MAX_OFFSET,
            Json,
            &[("topic", "TopicTest"), ("queueId", &q.to_string())],
        ));
        total += r.ext("offset").unwrap().parse::<u64>().unwrap();
    }
    assert_eq!(total, 50);
    drop(c);

    // The quickstart Consumer gets all 50, printed as the seed shows.
    let out = tools(CONSUMER, ns_port)
        .env("COREMQ_QUICKSTART_SECONDS", "3")
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.starts_with("Consumer Started."), "{stdout}");
    let batches: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ConsumeMessageThread_"))
        .collect();
    assert!(!batches.is_empty(), "{stdout}");
    for l in &batches {
        assert!(
            l.contains(" Receive New Messages: [MessageExt [brokerName="),
            "{l}"
        );
        assert!(
            l.contains("topic='TopicTest'") && l.contains("TAGS=TagA"),
            "{l}"
        );
    }
    assert_eq!(consumed(&stdout).len(), 50, "{stdout}");

    // consumerOffset.json shows the group's progress in the seed's shape.
    stop(&mut broker);
    let text = std::fs::read_to_string(store.join("config/consumerOffset.json")).unwrap();
    let key = format!("\"TopicTest@{GROUP}\":{{");
    let at = text.find(&key).unwrap_or_else(|| panic!("{text}")) + key.len();
    let table = &text[at..at + text[at..].find('}').unwrap()];
    let sum: i64 = table
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once(':').unwrap();
            assert!(
                k.trim().parse::<u32>().is_ok(),
                "unquoted queue id keys: {text}"
            );
            v.trim().parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(sum, 50, "{text}");
}

/// A consumer killed with SIGKILL and started again resumes from the committed offsets: it
/// redelivers at most what the first one consumed after its last commit, and loses nothing.
#[test]
fn a_consumer_killed_with_sigkill_resumes_from_the_committed_offset() {
    use_scripts();
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (_broker, port) = start_broker(&dir.path().join("store"), ns_port, &[]);
    create_topic(port, "TopicTest", 4);
    wait_route(ns_port, "TopicTest");
    let ns = format!("127.0.0.1:{ns_port}");
    let producer = Producer::new("pg", Some(&ns)).unwrap();
    let total = 3000;
    let stream = std::thread::spawn(move || {
        for i in 0..total {
            producer
                .send(&Message::new(
                    "TopicTest",
                    "TagA",
                    format!("k-{i}").into_bytes(),
                ))
                .unwrap();
        }
    });

    let mut first = Command::new(env!("CARGO_BIN_EXE_coremq-tools"))
        .arg(CONSUMER)
        .env("NAMESRV_ADDR", &ns)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (o, stdout) = (out.clone(), first.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut o = o.lock().unwrap();
                o.push_str(&l);
                o.push('\n');
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed(&out.lock().unwrap()).len() < 1000 {
        assert!(
            Instant::now() < deadline,
            "the first consumer got too little"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    reader.join().unwrap();
    let before: BTreeSet<(u32, i64)> = consumed(&out.lock().unwrap()).into_iter().collect();
    // What the broker holds as committed at the moment of the kill.
    let mut c = Client::connect(port);
    let committed: Vec<i64> = (0..4)
        .map(|q| {
            let r = c.call(req(
                request::QUERY_CONSUMER_OFFSET,
                Json,
                &[
                    ("consumerGroup", GROUP),
                    ("topic", "TopicTest"),
                    ("queueId", &q.to_string()),
                ],
            ));
            r.ext("offset").and_then(|v| v.parse().ok()).unwrap_or(0)
        })
        .collect();
    let since_commit = before
        .iter()
        .filter(|(q, o)| *o >= committed[*q as usize])
        .count();
    stream.join().unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_coremq-tools"))
        .arg(CONSUMER)
        .env("NAMESRV_ADDR", &ns)
        .env("COREMQ_QUICKSTART_SECONDS", "4")
        .output()
        .unwrap();
    let after: Vec<(u32, i64)> = consumed(&String::from_utf8_lossy(&out.stdout));
    let redelivered = after.iter().filter(|m| before.contains(m)).count();
    eprintln!(
        "killed after {} messages; {since_commit} consumed since the last commit; \
         {redelivered} redelivered",
        before.len()
    );
    assert!(
        redelivered <= since_commit,
        "{redelivered} > {since_commit}"
    );
    let mut all: BTreeSet<(u32, i64)> = before;
    all.extend(after.iter().copied());
    assert_eq!(all.len(), total, "messages lost across the kill");
}
