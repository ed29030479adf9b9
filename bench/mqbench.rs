//! `mqbench`: a RocketMQ-protocol load generator, in the spirit of upstream's
//! `benchmark/producer.sh` and `consumer.sh`, built so the client is not what it measures.
//!
//! - `producer`: sends for a duration over N connections with M requests in flight each
//!   (sync = 1, async = M, oneway = no answers), single messages or batches, optionally at a
//!   fixed total rate (open loop: latency is measured from when a send was due, so a stall
//!   is not hidden by coordinated omission).
//! - `consumer`: pulls every queue of a topic with long polling, from the end (or the
//!   start), and measures born-to-consume latency from a microsecond timestamp the producer
//!   puts in each body.
//! - `e2e`: both at once.
//! - `catchup`: writes a backlog, then reads it all back from the start; MB/s.
//! - `responder`: a do-nothing server that answers every send at once: the client's ceiling.
//! - `limits`: the host's raw limits (disk, loopback).
//! - `matrix` and `report`: the runner's table (see `bench/run.sh`).
//!
//! Prints a line per second (TPS, MB/s, RT avg/max) and a summary with hdrhistogram
//! percentiles; `--json FILE` appends the summary as one JSON line.
//!
//! Connections are served by event loops (`driver.rs`, one thread by default), not a thread
//! each: on a host whose cores the broker shares, a thread per connection made the client's
//! own context switches part of every latency it reported.
//!
//! Requests are built once per queue with the ROCKETMQ header codec, whose fields have fixed
//! positions; each send copies the template and patches opaque, born timestamp, `UNIQ_KEY`
//! and the body timestamp in place, so the client spends its time in the kernel, not in
//! encoding.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use clap::{Args, Parser, Subcommand, ValueEnum};
use coremq::message::batch::BatchItem;
use coremq::message::properties;
use coremq::message::record::RecordView;
use coremq::protocol::code::{request, response};
use coremq::protocol::header::pull::{sys_flag, PullMessageRequestHeader};
use coremq::protocol::header::send::SendMessageRequestHeader;
use coremq::protocol::{frame, HeaderCodec, RemotingCommand};
use hdrhistogram::Histogram;
use serde_json::json;

mod driver;
mod limits;

#[derive(Parser)]
#[command(name = "mqbench", about = "RocketMQ-protocol benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send messages and report throughput and send latency.
    Producer(ProducerArgs),
    /// Consume a topic and report throughput and born-to-consume latency.
    Consumer(ConsumerArgs),
    /// Produce and consume at once: send latency and end-to-end latency.
    E2e(ProducerArgs),
    /// Write a backlog, then consume it from the start.
    Catchup(CatchupArgs),
    /// A do-nothing responder: answers every request with SUCCESS at once.
    Responder {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// The host's raw limits: disk (O_DIRECT write/read, fdatasync) and loopback TCP.
    Limits {
        /// A directory on the disk to measure.
        #[arg(long, default_value = "target/bench-limits")]
        dir: PathBuf,
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Creates `count` topics `<topic>_<i>` with --queues queues on every broker.
    Topics {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Runs the runner's matrix against one name server; JSON lines to --json.
    Matrix(MatrixArgs),
    /// Checks a run's JSON lines (bench/run.sh) against the targets; prints markdown.
    Verdict { results: PathBuf },
    /// Turns matrix JSON lines into a markdown table (two files: side by side, with ratios).
    Report {
        results: PathBuf,
        other: Option<PathBuf>,
        /// Label of the first and second result sets.
        #[arg(long, default_value = "CoreMQ")]
        name: String,
        #[arg(long, default_value = "other")]
        other_name: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Sync,
    Async,
    Oneway,
}

#[derive(Args, Clone)]
struct Target {
    /// Name server(s), `a:9876;b:9876`; routes come from there. Default: `NAMESRV_ADDR`,
    /// else 127.0.0.1:9876.
    #[arg(short = 'n', long)]
    namesrv: Option<String>,
    /// Send straight to this address (a responder), skipping the name server.
    #[arg(long)]
    addr: Option<String>,
    #[arg(short = 't', long, default_value = "BenchmarkTest")]
    topic: String,
    /// Queues of the topic; with --create the topic is created (updated) with this many on
    /// every broker of the cluster first.
    #[arg(long, default_value_t = 8)]
    queues: u32,
    #[arg(long)]
    create: bool,
}

#[derive(Args, Clone)]
struct ProducerArgs {
    #[command(flatten)]
    target: Target,
    /// Body size in bytes.
    #[arg(short = 's', long, default_value_t = 1024)]
    size: usize,
    /// Producer connections.
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,
    /// Threads serving the connections, each an event loop over its share (the client
    /// should cost little of the cores it shares with the broker).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Requests in flight per connection (async mode).
    #[arg(short = 'i', long, default_value_t = 1)]
    inflight: usize,
    #[arg(short = 'm', long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// Spread sends over this many topics `<topic>_<i>` (made with `mqbench topics`);
    /// 1 = the topic itself.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Messages per SEND_BATCH_MESSAGE (1 = single sends).
    #[arg(short = 'b', long, default_value_t = 1)]
    batch: usize,
    /// Total messages per second (0 = as fast as possible).
    #[arg(short = 'r', long, default_value_t = 0)]
    rate: u64,
    /// Measured seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(short = 'w', long, default_value_t = 2.0)]
    warmup: f64,
    /// Append the summary as a JSON line here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A label for the summary (e.g. the flush mode of the broker).
    #[arg(long, default_value = "")]
    label: String,
    /// No per-second lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct ConsumerArgs {
    #[command(flatten)]
    target: Target,
    #[arg(short = 'g', long, default_value = "benchmark_consumer")]
    group: String,
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Start from offset 0 instead of the end.
    #[arg(long)]
    from_start: bool,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct CatchupArgs {
    #[command(flatten)]
    target: Target,
    /// Backlog to write, GiB, before reading the topic back from the start (0: only read).
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    #[arg(short = 's', long, default_value_t = 4096)]
    size: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct MatrixArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds per cell.
    #[arg(short = 'd', long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Label of every row (the broker's flush mode).
    #[arg(long, default_value = "")]
    label: String,
    /// Repeats per cell; the median run (by throughput) is kept.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    #[arg(long)]
    json: PathBuf,
    /// Only the cells whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Client threads per cell (see `producer --threads`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// More targets, `LABEL=ns:HOST:PORT` (a name server) or `LABEL=addr:HOST:PORT` (a
    /// responder), measured interleaved: each repeat runs every cell against every leg in
    /// turn, so drift of the shared machine falls on all legs alike and their ratios compare
    /// figures of the same minutes. With legs, `-n`/`--addr`/`--label` are not used.
    #[arg(long = "leg")]
    legs: Vec<String>,
}

/// `LABEL=ns:HOST:PORT` or `LABEL=addr:HOST:PORT` as a label and a target like `base`.
fn parse_leg(spec: &str, base: &Target) -> Result<(String, Target), String> {
    let bad = || format!("--leg {spec:?}: expected LABEL=ns:HOST:PORT or LABEL=addr:HOST:PORT");
    let (label, rest) = spec.split_once('=').ok_or_else(bad)?;
    let (kind, at) = rest.split_once(':').ok_or_else(bad)?;
    let mut t = base.clone();
    match kind {
        "ns" => (t.namesrv, t.addr) = (Some(at.to_string()), None),
        "addr" => (t.namesrv, t.addr) = (None, Some(at.to_string())),
        _ => return Err(bad()),
    }
    Ok((label.to_string(), t))
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Producer(a) => report_producer(&a, &run_producer(&a, None)),
        Cmd::E2e(a) => run_e2e(&a),
        Cmd::Consumer(a) => run_consumer_cmd(&a),
        Cmd::Catchup(a) => run_catchup(&a),
        Cmd::Responder { port } => responder(port),
        Cmd::Limits { dir, secs, json } => run_limits(&dir, secs, json.as_ref()),
        Cmd::Topics { target, count } => create_topics(&target, count),
        Cmd::Verdict { results } => verdict(&results),
        Cmd::Matrix(a) => run_matrix(&a),
        Cmd::Report {
            results,
            other,
            name,
            other_name,
        } => report(&results, other.as_ref(), &name, &other_name),
    };
    std::process::exit(code);
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn append_json(path: Option<&PathBuf>, v: &serde_json::Value) {
    let Some(p) = path else { return };
    let line = format!("{v}\n");
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        // A figure that cannot be recorded makes the whole run's report wrong (a full disk
        // once interleaved half-written lines): stop here, so the runner stops too.
        eprintln!("write {}: {e}", p.display());
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Talking to the cluster (blocking, simple: setup only).

fn call(addr: &str, mut cmd: RemotingCommand) -> Result<RemotingCommand, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    cmd.opaque = 1;
    let mut buf = BytesMut::new();
    frame::encode(&cmd, &mut buf);
    s.write_all(&buf).map_err(|e| format!("{addr}: {e}"))?;
    let mut rb = BytesMut::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(r) = frame::decode(&mut rb).map_err(|e| e.to_string())? {
            return Ok(r);
        }
        let n = s.read(&mut chunk).map_err(|e| format!("{addr}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr} closed the connection"));
        }
        rb.extend_from_slice(&chunk[..n]);
    }
}

impl Target {
    fn ns(&self) -> String {
        self.namesrv
            .clone()
            .or_else(|| std::env::var("NAMESRV_ADDR").ok())
            .unwrap_or_else(|| "127.0.0.1:9876".into())
    }
}

fn first_namesrv(ns: &str) -> String {
    ns.split(';').next().unwrap_or(ns).trim().to_string()
}

/// Master addresses of every broker the name server knows.
fn cluster_brokers(ns: &str) -> Result<Vec<(String, String)>, String> {
    let r = call(
        &first_namesrv(ns),
        RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO, HeaderCodec::Json),
    )?;
    let v: serde_json::Value = coremq::protocol::json::parse(&r.body)?;
    let mut out = Vec::new();
    if let Some(t) = v["brokerAddrTable"].as_object() {
        for (name, bd) in t {
            if let Some(a) = bd["brokerAddrs"]["0"].as_str() {
                out.push((name.clone(), a.to_string()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// UPDATE_AND_CREATE_TOPIC for `topic` with `queues` read and write queues.
fn create_topic_request(topic: &str, queues: u32) -> RemotingCommand {
    let mut c = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC, HeaderCodec::Json);
    let n = queues.to_string();
    for (k, v) in [
        ("topic", topic),
        ("defaultTopic", "TBW102"),
        ("readQueueNums", &n),
        ("writeQueueNums", &n),
        ("perm", "6"),
        ("topicFilterType", "SINGLE_TAG"),
        ("order", "false"),
    ] {
        c.set_ext(k, v);
    }
    c
}

fn create_topic(t: &Target) -> Result<(), String> {
    let brokers = cluster_brokers(&t.ns())?;
    if brokers.is_empty() {
        return Err(format!("no broker registered with {}", t.ns()));
    }
    for (_, addr) in &brokers {
        let r = call(addr, create_topic_request(&t.topic, t.queues))?;
        if r.code != response::SUCCESS {
            return Err(format!("create {} on {addr}: {:?}", t.topic, r.remark));
        }
    }
    // The brokers register the change at once; wait until the route shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(q) = queues_of(t) {
            if q.len() == brokers.len() * t.queues as usize {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "the route of {} never showed the new queues",
        t.topic
    ))
}

fn topic_names(topic: &str, n: usize) -> Vec<String> {
    if n <= 1 {
        vec![topic.to_string()]
    } else {
        (0..n).map(|i| format!("{topic}_{i}")).collect()
    }
}

/// Creates `<topic>_<i>` for i < count on every broker, over 4 connections per broker.
fn create_topics(t: &Target, count: usize) -> i32 {
    let brokers = match cluster_brokers(&t.ns()) {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => {
            eprintln!("mqbench: no broker registered with {}", t.ns());
            return 2;
        }
        Err(e) => {
            eprintln!("mqbench: {e}");
            return 2;
        }
    };
    let started = Instant::now();
    let names = Arc::new(topic_names(&t.topic, count.max(2)));
    let mut hs = Vec::new();
    for (_, addr) in brokers {
        for k in 0..4 {
            let (names, addr, q) = (names.clone(), addr.clone(), t.queues);
            hs.push(std::thread::spawn(move || -> Result<(), String> {
                let mut s = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
                let mut rb = BytesMut::new();
                let mut chunk = vec![0u8; 64 << 10];
                for (i, name) in names.iter().enumerate().skip(k).step_by(4) {
                    let mut c = create_topic_request(name, q);
                    c.opaque = i as i32 + 1;
                    let mut wb = BytesMut::new();
                    frame::encode(&c, &mut wb);
                    s.write_all(&wb).map_err(|e| e.to_string())?;
                    let r = loop {
                        if let Some(r) = frame::decode(&mut rb).map_err(|e| e.to_string())? {
                            break r;
                        }
                        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
                        if n == 0 {
                            return Err("closed".into());
                        }
                        rb.extend_from_slice(&chunk[..n]);
                    };
                    if r.code != response::SUCCESS {
                        return Err(format!("create {name}: {:?}", r.remark));
                    }
                }
                Ok(())
            }));
        }
    }
    let mut failed = false;
    for h in hs {
        if let Ok(Err(e)) | Err(e) = h.join().map_err(|_| "panic".to_string()) {
            eprintln!("mqbench topics: {e}");
            failed = true;
        }
    }
    println!(
        "created {} topics x {} queues in {:.1} s",
        names.len(),
        t.queues,
        started.elapsed().as_secs_f64()
    );
    i32::from(failed)
}

/// (broker address, queue id) of every writable queue of the topic.
fn queues_of(t: &Target) -> Result<Vec<(String, u32)>, String> {
    if let Some(a) = &t.addr {
        return Ok((0..t.queues).map(|q| (a.clone(), q)).collect());
    }
    let mut c = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC, HeaderCodec::Json);
    c.set_ext("topic", &t.topic);
    let r = call(&first_namesrv(&t.ns()), c)?;
    if r.code != response::SUCCESS {
        return Err(format!(
            "no route of {} (create it with --create): {:?}",
            t.topic, r.remark
        ));
    }
    let v: serde_json::Value = coremq::protocol::json::parse(&r.body)?;
    let mut addrs = HashMap::new();
    for bd in v["brokerDatas"].as_array().into_iter().flatten() {
        if let (Some(n), Some(a)) = (bd["brokerName"].as_str(), bd["brokerAddrs"]["0"].as_str()) {
            addrs.insert(n.to_string(), a.to_string());
        }
    }
    let mut out = Vec::new();
    for qd in v["queueDatas"].as_array().into_iter().flatten() {
        let name = qd["brokerName"].as_str().unwrap_or_default();
        let n = qd["writeQueueNums"].as_u64().unwrap_or(0) as u32;
        if let Some(a) = addrs.get(name) {
            out.extend((0..n).map(|q| (a.clone(), q)));
        }
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Send templates.

const BORN_MARK: &str = "1111111111111";
const UNIQ_MARK: &str = "UUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUU";
const BODY_MARK: &[u8; 8] = b"TSTSTSTS";

/// A SEND_MESSAGE_V2 / SEND_BATCH_MESSAGE frame and where its varying bytes are.
struct Template {
    frame: Vec<u8>,
    born: Vec<usize>,
    uniq: Vec<usize>,
    body_ts: Vec<usize>,
    messages: usize,
    bytes: usize,
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            out.push(i);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    out
}

fn template(topic: &str, queue_id: u32, size: usize, batch: usize, oneway: bool) -> Template {
    let mut body = vec![b'x'; size.max(8)];
    body[..8].copy_from_slice(BODY_MARK);
    let mut props = Vec::new();
    properties::push(&mut props, properties::TAGS, "TagA");
    properties::push(&mut props, properties::UNIQ_KEY, UNIQ_MARK);
    properties::push(&mut props, properties::WAIT, "true");
    let (code, header_props, payload) = if batch > 1 {
        let items: Vec<BatchItem> = (0..batch)
            .map(|_| BatchItem {
                flag: 0,
                body: Bytes::from(body.clone()),
                properties: Bytes::from(props.clone()),
            })
            .collect();
        let mut wait = Vec::new();
        properties::push(&mut wait, properties::WAIT, "true");
        (
            request::SEND_BATCH_MESSAGE,
            String::from_utf8_lossy(&wait).into_owned(),
            coremq::message::batch::encode(&items),
        )
    } else {
        (
            request::SEND_MESSAGE_V2,
            String::from_utf8_lossy(&props).into_owned(),
            body.clone(),
        )
    };
    let hdr = SendMessageRequestHeader {
        producer_group: "benchmark_producer".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 8,
        queue_id: queue_id as i32,
        sys_flag: 0,
        born_timestamp: BORN_MARK.parse().expect("mark"),
        flag: 0,
        properties: Some(header_props),
        reconsume_times: Some(0),
        unit_mode: Some(false),
        max_reconsume_times: None,
        batch: Some(batch > 1),
    };
    let mut cmd = RemotingCommand::request(code, HeaderCodec::RocketMq);
    hdr.encode(&mut cmd, true);
    if oneway {
        cmd.flag |= coremq::protocol::command::FLAG_ONEWAY;
    }
    cmd.body = Bytes::from(payload);
    let mut buf = BytesMut::new();
    frame::encode(&cmd, &mut buf);
    let frame = buf.to_vec();
    let t = Template {
        born: find_all(&frame, BORN_MARK.as_bytes()),
        uniq: find_all(&frame, UNIQ_MARK.as_bytes()),
        body_ts: find_all(&frame, BODY_MARK),
        messages: batch.max(1),
        bytes: size.max(8) * batch.max(1),
        frame,
    };
    assert_eq!(t.born.len(), 1, "born timestamp placeholder");
    assert_eq!(t.uniq.len(), batch.max(1), "UNIQ_KEY placeholders");
    assert_eq!(t.body_ts.len(), batch.max(1), "body placeholders");
    t
}

/// Per-connection generator of distinct `UNIQ_KEY`s: 20 fixed hex digits, 12 of counter.
struct Uniq {
    prefix: [u8; 20],
    n: u64,
}

impl Uniq {
    fn new(conn: usize) -> Uniq {
        let mut prefix = [b'0'; 20];
        let s = format!(
            "7F000001{:04X}{:08X}",
            std::process::id() as u16,
            conn as u32
        );
        prefix.copy_from_slice(&s.as_bytes()[..20]);
        Uniq { prefix, n: 0 }
    }
    fn write(&mut self, out: &mut [u8]) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        out[..20].copy_from_slice(&self.prefix);
        let mut v = self.n;
        for i in (20..32).rev() {
            out[i] = HEX[(v & 15) as usize];
            v >>= 4;
        }
        self.n += 1;
    }
}

/// Appends one request built from `t` to `out`.
fn stamp(t: &Template, out: &mut Vec<u8>, opaque: i32, uniq: &mut Uniq, born_ms: u64, ts_us: u64) {
    let base = out.len();
    out.extend_from_slice(&t.frame);
    let f = &mut out[base..];
    // ROCKETMQ header: length 4, codec+header length 4, code 2, language 1, version 2, opaque 4.
    f[13..17].copy_from_slice(&opaque.to_be_bytes());
    let born = format!("{born_ms:013}");
    f[t.born[0]..t.born[0] + 13].copy_from_slice(&born.as_bytes()[..13]);
    for &u in &t.uniq {
        uniq.write(&mut f[u..u + 32]);
    }
    for &b in &t.body_ts {
        f[b..b + 8].copy_from_slice(&ts_us.to_be_bytes());
    }
}

/// (code, opaque) of a response frame, without decoding its header. `None` = JSON header.
fn peek_response(frame: &[u8]) -> Option<(i32, i32)> {
    if frame.len() < 17 || frame[4] != HeaderCodec::RocketMq as u8 {
        return None;
    }
    let code = i16::from_be_bytes([frame[8], frame[9]]) as i32;
    let opaque = i32::from_be_bytes([frame[13], frame[14], frame[15], frame[16]]);
    Some((code, opaque))
}

// ---------------------------------------------------------------------------------------
// The producer.

/// Counters the per-second reporter reads and resets.
#[derive(Default)]
struct Live {
    msgs: AtomicU64,
    bytes: AtomicU64,
    rt_sum_ns: AtomicU64,
    rt_count: AtomicU64,
    rt_max_ns: AtomicU64,
    failed: AtomicU64,
}

struct ConnResult {
    hist: Histogram<u64>,
    msgs: u64,
    bytes: u64,
    failed: u64,
    /// Non-SUCCESS codes seen, by code.
    codes: HashMap<i32, u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Summary {
    kind: String,
    label: String,
    topic: String,
    size: usize,
    connections: usize,
    inflight: usize,
    mode: Mode,
    batch: usize,
    rate: u64,
    seconds: f64,
    messages: u64,
    failed: u64,
    tps: f64,
    mbps: f64,
    /// Send latency; flattened so every percentile is a top-level JSON field.
    #[serde(flatten)]
    lat: Lat,
    mean_us: f64,
    /// CPU cores this process used on average (user + system).
    client_cpu: f64,
    e2e: Option<Lat>,
    errors: HashMap<i32, u64>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Lat {
    count: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    p9999_us: f64,
    max_us: f64,
}

fn lat(h: &Histogram<u64>) -> Lat {
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1e3;
    Lat {
        count: h.len(),
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        p9999_us: q(0.9999),
        max_us: h.max() as f64 / 1e3,
    }
}

fn run_producer(a: &ProducerArgs, e2e: Option<&Arc<Live>>) -> Summary {
    if a.target.create && a.target.addr.is_none() {
        if let Err(e) = create_topic(&a.target) {
            eprintln!("mqbench: {e}");
            std::process::exit(2);
        }
    }
    // With --topics, every `<topic>_<i>` is laid out like the first.
    let lookup = Target {
        topic: topic_names(&a.target.topic, a.topics)[0].clone(),
        ..a.target.clone()
    };
    // A broker that just started may not have registered its topics yet: retry a while.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut found = queues_of(&lookup);
    while found.as_ref().map_or(true, |q| q.is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        found = queues_of(&lookup);
    }
    let queues = match found {
        Ok(q) if !q.is_empty() => q,
        Ok(_) => {
            eprintln!("mqbench: {} has no writable queue", a.target.topic);
            std::process::exit(2)
        }
        Err(e) => {
            eprintln!("mqbench: {e}");
            std::process::exit(2)
        }
    };
    let live = Arc::new(Live::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let window = match a.mode {
        Mode::Sync => 1,
        Mode::Async => a.inflight.max(1),
        Mode::Oneway => usize::MAX,
    };
    let per_conn_rate = (a.rate > 0).then(|| a.rate as f64 / a.connections as f64);
    let threads = a.threads.clamp(1, a.connections.max(1));
    let mut specs: Vec<Vec<driver::Spec>> = (0..threads).map(|_| Vec::new()).collect();
    for c in 0..a.connections.max(1) {
        // Connection c sends to the queues of one broker, round robin.
        let brokers: Vec<&String> = {
            let mut b: Vec<&String> = queues.iter().map(|(a, _)| a).collect();
            b.dedup();
            b
        };
        let addr = brokers[c % brokers.len()].clone();
        let mine: Vec<u32> = queues
            .iter()
            .filter(|(x, _)| *x == addr)
            .map(|(_, q)| *q)
            .collect();
        let names = topic_names(&a.target.topic, a.topics);
        // Each connection takes its share of the topics (all of them if there are fewer
        // topics than connections), each with every queue.
        let share: Vec<&String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| names.len() < a.connections || i % a.connections == c)
            .map(|(_, n)| n)
            .collect();
        let templates: Vec<Template> = share
            .iter()
            .flat_map(|t| {
                mine.iter()
                    .map(|q| template(t, *q, a.size, a.batch, a.mode == Mode::Oneway))
                    .collect::<Vec<_>>()
            })
            .collect();
        specs[c % threads].push(driver::Spec {
            addr,
            conn: c,
            templates,
            window,
            oneway: a.mode == Mode::Oneway,
            rate: per_conn_rate,
        });
    }
    let handles = spawn_drivers(specs, &live, &measuring, &stop);
    let warm = Duration::from_secs_f64(a.warmup);
    std::thread::sleep(warm);
    measuring.store(true, Ordering::Release);
    reset(&live);
    let t0 = Instant::now();
    let cpu0 = limits::cpu_time();
    let mut sec = 0;
    while t0.elapsed().as_secs_f64() < a.duration {
        std::thread::sleep(Duration::from_secs(1).min(Duration::from_secs_f64(
            (a.duration - t0.elapsed().as_secs_f64()).max(0.01),
        )));
        sec += 1;
        let msgs = live.msgs.swap(0, Ordering::AcqRel);
        let bytes = live.bytes.swap(0, Ordering::AcqRel);
        let rt_sum = live.rt_sum_ns.swap(0, Ordering::AcqRel);
        let rt_n = live.rt_count.swap(0, Ordering::AcqRel);
        let rt_max = live.rt_max_ns.swap(0, Ordering::AcqRel);
        let failed = live.failed.load(Ordering::Acquire);
        if !a.quiet {
            let mut line = format!(
                "[{sec:>4}s] Send TPS: {msgs:>8} | MB/s: {:>8.1} | Avg RT(ms): {:>7.3} | Max RT(ms): {:>7.3} | Send Failed: {failed}",
                bytes as f64 / 1e6,
                if rt_n > 0 { rt_sum as f64 / rt_n as f64 / 1e6 } else { 0.0 },
                rt_max as f64 / 1e6,
            );
            if let Some(e) = e2e {
                let (got, avg, max) = e.take();
                line += &format!(" | Consume TPS: {got} | E2E Avg(ms): {avg:.3} Max(ms): {max:.3}");
            }
            println!("{line}");
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (limits::cpu_time() - cpu0).as_secs_f64() / secs;
    stop.store(true, Ordering::Release);
    let mut hist = new_hist();
    let (mut msgs, mut bytes, mut failed) = (0, 0, 0);
    let mut errors = HashMap::new();
    for h in handles {
        match h.join() {
            Ok(rs) => {
                for r in rs {
                    hist.add(&r.hist).ok();
                    msgs += r.msgs;
                    bytes += r.bytes;
                    failed += r.failed;
                    for (k, v) in r.codes {
                        *errors.entry(k).or_insert(0) += v;
                    }
                }
            }
            Err(_) => failed += 1,
        }
    }
    let l = lat(&hist);
    Summary {
        kind: "producer".into(),
        label: a.label.clone(),
        topic: a.target.topic.clone(),
        size: a.size,
        connections: a.connections,
        inflight: if a.mode == Mode::Async { a.inflight } else { 1 },
        mode: a.mode,
        batch: a.batch,
        rate: a.rate,
        seconds: secs,
        messages: msgs,
        failed,
        tps: msgs as f64 / secs,
        mbps: bytes as f64 / secs / 1e6,
        lat: l,
        mean_us: hist.mean() / 1e3,
        client_cpu: cpu,
        e2e: None,
        errors,
    }
}

/// Runs each set of connections on its own thread until `stop`.
fn spawn_drivers(
    specs: Vec<Vec<driver::Spec>>,
    live: &Arc<Live>,
    measuring: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<ConnResult>>> {
    specs
        .into_iter()
        .map(|set| {
            let (live, measuring, stop) = (live.clone(), measuring.clone(), stop.clone());
            std::thread::spawn(move || {
                let sh = driver::Shared {
                    live: &live,
                    measuring: &measuring,
                    stop: &stop,
                };
                driver::run(set, &sh)
            })
        })
        .collect()
}

impl Live {
    /// Messages, average and max latency (ms) since the last call; resets them.
    fn take(&self) -> (u64, f64, f64) {
        let n = self.rt_count.swap(0, Ordering::AcqRel);
        let sum = self.rt_sum_ns.swap(0, Ordering::AcqRel);
        let max = self.rt_max_ns.swap(0, Ordering::AcqRel);
        let msgs = self.msgs.swap(0, Ordering::AcqRel);
        let avg = if n > 0 {
            sum as f64 / n as f64 / 1e6
        } else {
            0.0
        };
        (msgs, avg, max as f64 / 1e6)
    }
}

fn reset(l: &Live) {
    for c in [&l.msgs, &l.bytes, &l.rt_sum_ns, &l.rt_count, &l.rt_max_ns] {
        c.store(0, Ordering::Release);
    }
}

fn print_summary(s: &Summary) {
    println!(
        "Summary [{}{}] {} B x{} {:?} {} conn x {} in flight: {:.0} msg/s, {:.1} MB/s, failed {}, \
         RT(us) p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} p99.99 {:.0} max {:.0}, client CPU {:.2} cores",
        s.kind,
        if s.label.is_empty() { String::new() } else { format!(" {}", s.label) },
        s.size,
        s.batch,
        s.mode,
        s.connections,
        s.inflight,
        s.tps,
        s.mbps,
        s.failed,
        s.lat.p50_us,
        s.lat.p90_us,
        s.lat.p99_us,
        s.lat.p999_us,
        s.lat.p9999_us,
        s.lat.max_us,
        s.client_cpu
    );
    if let Some(e) = &s.e2e {
        println!(
            "End-to-end (born to consume, us): {} messages, p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} p99.99 {:.0} max {:.0}",
            e.count, e.p50_us, e.p90_us, e.p99_us, e.p999_us, e.p9999_us, e.max_us
        );
    }
    if !s.errors.is_empty() {
        println!("Failed responses by code: {:?}", s.errors);
    }
}

fn report_producer(a: &ProducerArgs, s: &Summary) -> i32 {
    print_summary(s);
    append_json(
        a.json.as_ref(),
        &serde_json::to_value(s).unwrap_or_default(),
    );
    i32::from(s.messages == 0)
}

// ---------------------------------------------------------------------------------------
// The consumer.

struct ConsumeStats {
    hist: Histogram<u64>,
    msgs: u64,
    bytes: u64,
}

/// Pulls `queues` of `topic` on `addr` until `stop`, from the end (or 0), recording
/// born-to-consume latency from the body timestamp.
#[allow(clippy::too_many_arguments)]
fn pull_loop(
    addr: &str,
    topic: &str,
    group: &str,
    queues: &[u32],
    from_start: bool,
    live: &Live,
    measuring: &AtomicBool,
    stop: &AtomicBool,
) -> ConsumeStats {
    let mut st = ConsumeStats {
        hist: new_hist(),
        msgs: 0,
        bytes: 0,
    };
    let mut offsets: Vec<i64> = queues
        .iter()
        .map(|q| {
            if from_start {
                0
            } else {
                max_offset(addr, topic, *q)
            }
        })
        .collect();
    let Ok(mut s) = TcpStream::connect(addr) else {
        eprintln!("connect {addr} failed");
        return st;
    };
    let _ = s.set_nodelay(true);
    // Long polling, as a push consumer does: every queue has one pull in flight, which the
    // broker holds while the queue is empty and answers as soon as a message is dispatched;
    // each answer sends that queue's next pull at once. Polling instead (pull, sleep, pull)
    // would put the sleep into the end-to-end latency it measures.
    let pull = |q: u32, offset: i64, opaque: i32, out: &mut BytesMut| {
        let hdr = PullMessageRequestHeader {
            consumer_group: group.into(),
            topic: topic.into(),
            queue_id: q,
            queue_offset: offset,
            max_msg_nums: 32,
            sys_flag: sys_flag::SUSPEND,
            commit_offset: 0,
            suspend_timeout_millis: 1000,
            subscription: Some("*".into()),
            sub_version: 0,
            expression_type: Some("TAG".into()),
        };
        let mut c = RemotingCommand::request(request::PULL_MESSAGE, HeaderCodec::RocketMq);
        hdr.encode(&mut c);
        // The opaque names the queue: index into `queues`.
        c.opaque = opaque;
        frame::encode(&c, out);
    };
    let mut wbuf = BytesMut::new();
    for (i, q) in queues.iter().enumerate() {
        pull(*q, offsets[i], i as i32, &mut wbuf);
    }
    let mut rbuf = BytesMut::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        if !wbuf.is_empty() {
            if s.write_all(&wbuf).is_err() {
                break;
            }
            wbuf.clear();
        }
        let mut fd = [libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&s),
            events: libc::POLLIN,
            revents: 0,
        }];
        if !driver::poll(&mut fd, Duration::from_millis(200)) {
            continue;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
        }
        while let Ok(Some(cmd)) = frame::decode(&mut rbuf) {
            let i = cmd.opaque as usize;
            if i >= queues.len() {
                continue;
            }
            if let Some(next) = cmd.ext("nextBeginOffset").and_then(|v| v.parse().ok()) {
                offsets[i] = next;
            }
            pull(queues[i], offsets[i], i as i32, &mut wbuf);
            if cmd.code != response::SUCCESS {
                continue;
            }
            let now = now_us();
            let mut b: &[u8] = &cmd.body;
            while b.len() >= 4 {
                let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if n == 0 || n > b.len() {
                    break;
                }
                if let Ok(v) = RecordView::parse(&b[..n]) {
                    if measuring.load(Ordering::Relaxed) {
                        st.msgs += 1;
                        st.bytes += v.body.len() as u64;
                        live.msgs.fetch_add(1, Ordering::Relaxed);
                        if v.body.len() >= 8 {
                            let ts = u64::from_be_bytes(v.body[..8].try_into().unwrap_or([0; 8]));
                            if ts > 0 && ts <= now + 1_000_000 {
                                let ns = now.saturating_sub(ts) * 1000;
                                st.hist.record(ns.max(1)).ok();
                                live.rt_sum_ns.fetch_add(ns, Ordering::Relaxed);
                                live.rt_count.fetch_add(1, Ordering::Relaxed);
                                live.rt_max_ns.fetch_max(ns, Ordering::Relaxed);
                            }
                        }
                    }
                }
                b = &b[n..];
            }
        }
    }
    st
}

/// Starts pullers for every queue of the topic: a thread and a connection per broker, with a
/// long-polling pull in flight for each queue. One thread, not several: a consumer that
/// catches up a backlog at full speed must not take the cores from the producer it runs
/// beside (trouble (b)) by outnumbering its threads.
fn start_consumers(
    t: &Target,
    group: &str,
    from_start: bool,
    live: &Arc<Live>,
    measuring: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<ConsumeStats>> {
    let qs = queues_of(t).unwrap_or_else(|e| {
        eprintln!("mqbench: {e}");
        std::process::exit(2)
    });
    let mut by_broker: HashMap<String, Vec<u32>> = HashMap::new();
    for (a, q) in qs {
        by_broker.entry(a).or_default().push(q);
    }
    by_broker
        .into_iter()
        .map(|(addr, queues)| {
            let (topic, group) = (t.topic.clone(), group.to_string());
            let (live, measuring, stop) = (live.clone(), measuring.clone(), stop.clone());
            std::thread::spawn(move || {
                pull_loop(
                    &addr, &topic, &group, &queues, from_start, &live, &measuring, &stop,
                )
            })
        })
        .collect()
}

fn join_consumers(hs: Vec<std::thread::JoinHandle<ConsumeStats>>) -> ConsumeStats {
    let mut all = ConsumeStats {
        hist: new_hist(),
        msgs: 0,
        bytes: 0,
    };
    for h in hs {
        if let Ok(s) = h.join() {
            all.hist.add(&s.hist).ok();
            all.msgs += s.msgs;
            all.bytes += s.bytes;
        }
    }
    all
}

fn run_consumer_cmd(a: &ConsumerArgs) -> i32 {
    let live = Arc::new(Live::default());
    let measuring = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let hs = start_consumers(&a.target, &a.group, a.from_start, &live, &measuring, &stop);
    let t0 = Instant::now();
    let mut sec = 0;
    while t0.elapsed().as_secs_f64() < a.duration {
        std::thread::sleep(Duration::from_secs(1));
        sec += 1;
        let (n, avg, max) = live.take();
        println!("[{sec:>4}s] Consume TPS: {n:>8} | E2E Avg(ms): {avg:.3} | E2E Max(ms): {max:.3}");
    }
    stop.store(true, Ordering::Release);
    let secs = t0.elapsed().as_secs_f64();
    let st = join_consumers(hs);
    let l = lat(&st.hist);
    println!(
        "Summary [consumer] {} messages, {:.0} msg/s, {:.1} MB/s; born to consume (us): p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0}",
        st.msgs,
        st.msgs as f64 / secs,
        st.bytes as f64 / secs / 1e6,
        l.p50_us,
        l.p90_us,
        l.p99_us,
        l.p999_us,
        l.max_us
    );
    append_json(
        a.json.as_ref(),
        &json!({"kind": "consumer", "topic": a.target.topic, "seconds": secs,
            "messages": st.msgs, "tps": st.msgs as f64 / secs,
            "mbps": st.bytes as f64 / secs / 1e6, "e2e": l}),
    );
    0
}

fn run_e2e(a: &ProducerArgs) -> i32 {
    if a.target.create {
        if let Err(e) = create_topic(&a.target) {
            eprintln!("mqbench: {e}");
            return 2;
        }
    }
    let live = Arc::new(Live::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let hs = start_consumers(&a.target, "benchmark_e2e", false, &live, &measuring, &stop);
    std::thread::sleep(Duration::from_millis(300));
    // The consumers measure once the producer's warm-up is over.
    let m2 = measuring.clone();
    let warm = a.warmup;
    let flip = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(warm));
        m2.store(true, Ordering::Release);
    });
    let mut pa = a.clone();
    pa.target.create = false;
    let mut s = run_producer(&pa, Some(&live));
    let _ = flip.join();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let st = join_consumers(hs);
    s.kind = "e2e".into();
    s.e2e = Some(lat(&st.hist));
    report_producer(a, &s)
}

fn run_catchup(a: &CatchupArgs) -> i32 {
    if a.target.create {
        if let Err(e) = create_topic(&a.target) {
            eprintln!("mqbench: {e}");
            return 2;
        }
    }
    let total = (a.gib * (1u64 << 30) as f64) as u64;
    let qs = queues_of(&a.target).unwrap_or_default();
    if qs.is_empty() {
        eprintln!("mqbench: no queues of {}", a.target.topic);
        return 2;
    }
    let before: i64 = qs
        .iter()
        .map(|(addr, q)| max_offset(addr, &a.target.topic, *q))
        .sum();
    let measuring = Arc::new(AtomicBool::new(true));
    if total > 0 {
        write_backlog(a, total, &qs, &measuring);
    }
    let after: i64 = qs
        .iter()
        .map(|(addr, q)| max_offset(addr, &a.target.topic, *q))
        .sum();
    let want = (after - before).max(0) as u64;
    // Read everything from the start of the backlog (older data is read too: it is colder).
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let hs = start_consumers(
        &a.target,
        "benchmark_catchup",
        true,
        &live,
        &measuring,
        &stop,
    );
    let min: i64 = qs
        .iter()
        .map(|(addr, q)| offset_of(request::GET_MIN_OFFSET, addr, &a.target.topic, *q))
        .sum();
    let target = (after - min).max(0) as u64;
    while live.msgs.load(Ordering::Acquire) < target {
        std::thread::sleep(Duration::from_millis(50));
        if t.elapsed() > Duration::from_secs(600) {
            eprintln!("catch-up did not finish in 600 s");
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    let st = join_consumers(hs);
    let mbps = st.bytes as f64 / secs / 1e6;
    println!(
        "Summary [catchup] read {} messages ({} new), {:.2} GiB in {secs:.1} s: {mbps:.0} MB/s",
        st.msgs,
        want,
        st.bytes as f64 / (1u64 << 30) as f64
    );
    append_json(
        a.json.as_ref(),
        &json!({"kind": "catchup", "topic": a.target.topic, "size": a.size,
            "gib": st.bytes as f64 / (1u64 << 30) as f64, "seconds": secs, "mbps": mbps}),
    );
    0
}

/// Writes `total` bytes of 32-message batches to the topic at full speed.
fn write_backlog(a: &CatchupArgs, total: u64, qs: &[(String, u32)], measuring: &Arc<AtomicBool>) {
    let per = a.size.max(8) as u64 * 32;
    let n_batches = total / per;
    println!(
        "writing a backlog of {:.2} GiB ({} batches of 32 x {} B)...",
        a.gib, n_batches, a.size
    );
    // Four connections x 8 batches in flight, at full speed, until the backlog is written.
    let conns = 4;
    let t = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::default());
    let specs = (0..conns)
        .map(|c| {
            let (addr, _) = qs[c % qs.len()].clone();
            let templates: Vec<Template> = qs
                .iter()
                .filter(|(x, _)| *x == addr)
                .map(|(_, q)| template(&a.target.topic, *q, a.size, 32, false))
                .collect();
            driver::Spec {
                addr,
                conn: c,
                templates,
                window: 8,
                oneway: false,
                rate: None,
            }
        })
        .collect();
    let hs = spawn_drivers(vec![specs], &live, measuring, &stop);
    let mut last = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let done = live.bytes.load(Ordering::Acquire);
        if last.elapsed() >= Duration::from_secs(2) {
            println!("  {:.2} GiB written", done as f64 / (1u64 << 30) as f64);
            last = Instant::now();
        }
        if done >= total {
            break;
        }
    }
    stop.store(true, Ordering::Release);
    for h in hs {
        let _ = h.join();
    }
    let wrote = live.bytes.load(Ordering::Acquire);
    println!(
        "backlog written: {:.2} GiB in {:.1} s ({:.0} MB/s)",
        wrote as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64(),
        wrote as f64 / t.elapsed().as_secs_f64() / 1e6
    );
}

fn max_offset(addr: &str, topic: &str, q: u32) -> i64 {
    offset_of(request::GET_MAX_OFFSET, addr, topic, q)
}

fn offset_of(code: i32, addr: &str, topic: &str, q: u32) -> i64 {
    let mut c = RemotingCommand::request(code, HeaderCodec::Json);
    c.set_ext("topic", topic);
    c.set_ext("queueId", q);
    call(addr, c)
        .ok()
        .and_then(|r| r.ext("offset").and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The do-nothing responder.

fn responder(port: u16) -> i32 {
    let l = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mqbench responder: bind 127.0.0.1:{port}: {e}");
            return 2;
        }
    };
    println!(
        "responder listening on {}",
        l.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    match driver::respond(l) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mqbench responder: {e}");
            2
        }
    }
}

// ---------------------------------------------------------------------------------------
// Limits, matrix, report.

fn run_limits(dir: &PathBuf, secs: f64, json: Option<&PathBuf>) -> i32 {
    let (lo_mbps, rtt50, rtt99) = limits::loopback(secs);
    println!(
        "loopback TCP: {lo_mbps:.0} MB/s; 64 B round trip p50 {rtt50:.1} us, p99 {rtt99:.1} us"
    );
    let raw = limits::disk(dir, 1);
    println!(
        "disk {}: O_DIRECT write {:.0} MB/s, read {:.0} MB/s; fdatasync p50 {:.0} us, p99 {:.0} us",
        limits::describe(dir).display(),
        raw.write_mbps,
        raw.read_mbps,
        raw.fsync_p50_us,
        raw.fsync_p99_us
    );
    let _ = std::fs::remove_dir_all(dir);
    append_json(
        json,
        &json!({"kind": "limits", "loopback_mbps": lo_mbps, "rtt_p50_us": rtt50,
            "rtt_p99_us": rtt99, "disk_write_mbps": raw.write_mbps,
            "disk_read_mbps": raw.read_mbps, "fsync_p50_us": raw.fsync_p50_us,
            "fsync_p99_us": raw.fsync_p99_us}),
    );
    0
}

/// The runner's cells: (name, size, connections, mode, in flight, batch, rate).
fn cells() -> Vec<(&'static str, usize, usize, Mode, usize, usize, u64)> {
    let mut v = Vec::new();
    for (name1, name64, size) in [
        ("128B-1conn", "128B-64conn", 128),
        ("1KiB-1conn", "1KiB-64conn", 1024),
        ("4KiB-1conn", "4KiB-64conn", 4096),
    ] {
        v.push((name1, size, 1, Mode::Sync, 1, 1, 0));
        v.push((name64, size, 64, Mode::Sync, 1, 1, 0));
    }
    v.push(("1KiB-8conn-x16", 1024, 8, Mode::Async, 16, 1, 0));
    v.push(("1KiB-batch32-4conn-x4", 1024, 4, Mode::Async, 4, 32, 0));
    v
}

fn run_matrix(a: &MatrixArgs) -> i32 {
    let legs: Vec<(String, Target)> = if a.legs.is_empty() {
        vec![(a.label.clone(), a.target.clone())]
    } else {
        match a.legs.iter().map(|l| parse_leg(l, &a.target)).collect() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mqbench: {e}");
                return 2;
            }
        }
    };
    for (_, t) in &legs {
        if t.create && t.addr.is_none() {
            if let Err(e) = create_topic(t) {
                eprintln!("mqbench: {e}");
                return 2;
            }
        }
    }
    let cells: Vec<_> = cells()
        .into_iter()
        .filter(|c| a.only.as_deref().map_or(true, |o| c.0.contains(o)))
        .collect();
    // runs[leg][cell]: one summary per repeat.
    let mut runs: Vec<Vec<Vec<Summary>>> = vec![vec![Vec::new(); cells.len()]; legs.len()];
    for _ in 0..a.reps.max(1) {
        for (ci, &(_, size, conns, mode, inflight, batch, rate)) in cells.iter().enumerate() {
            for (li, (label, t)) in legs.iter().enumerate() {
                let pa = ProducerArgs {
                    target: Target {
                        create: false,
                        ..t.clone()
                    },
                    size,
                    connections: conns,
                    threads: a.threads,
                    inflight,
                    mode,
                    batch,
                    rate,
                    duration: a.duration,
                    topics: 1,
                    warmup: a.warmup,
                    json: None,
                    label: label.clone(),
                    quiet: true,
                };
                let s = run_producer(&pa, None);
                print_summary(&s);
                runs[li][ci].push(s);
            }
        }
    }
    // The median run (by throughput) of each leg and cell, grouped by leg.
    for leg in &mut runs {
        for (cell, leg_runs) in cells.iter().zip(leg) {
            leg_runs.sort_by(|x, y| {
                x.tps
                    .partial_cmp(&y.tps)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let med = leg_runs[leg_runs.len() / 2].clone();
            let mut v = serde_json::to_value(&med).unwrap_or_default();
            v["cell"] = json!(cell.0);
            v["runs_tps"] = json!(leg_runs.iter().map(|r| r.tps).collect::<Vec<_>>());
            append_json(Some(&a.json), &v);
        }
    }
    0
}

fn read_lines(p: &PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn report(results: &PathBuf, other: Option<&PathBuf>, name: &str, other_name: &str) -> i32 {
    let mine = read_lines(results);
    let theirs = other.map(read_lines).unwrap_or_default();
    let key = |v: &serde_json::Value| {
        format!(
            "{}|{}",
            v["label"].as_str().unwrap_or(""),
            v["cell"].as_str().unwrap_or("")
        )
    };
    let find = |k: &str| theirs.iter().find(|v| key(v) == k);
    if other.is_some() {
        println!("| flush | cell | {name} msg/s | {other_name} msg/s | ratio | {name} p99 µs | {other_name} p99 µs |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    } else {
        println!("| flush | cell | msg/s | MB/s | p50 µs | p99 µs | p99.9 µs | max µs | client CPU | failed |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    for v in mine.iter().filter(|v| v["cell"].is_string()) {
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        match find(&key(v)) {
            Some(o) if other.is_some() => {
                let g = |k: &str| o[k].as_f64().unwrap_or(0.0);
                println!(
                    "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
                    v["label"].as_str().unwrap_or(""),
                    v["cell"].as_str().unwrap_or(""),
                    f("tps"),
                    g("tps"),
                    if g("tps") > 0.0 {
                        f("tps") / g("tps")
                    } else {
                        0.0
                    },
                    f("p99_us"),
                    g("p99_us")
                );
            }
            _ if other.is_some() => println!(
                "| {} | {} | {:.0} | – | – | {:.0} | – |",
                v["label"].as_str().unwrap_or(""),
                v["cell"].as_str().unwrap_or(""),
                f("tps"),
                f("p99_us")
            ),
            _ => println!(
                "| {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} |",
                v["label"].as_str().unwrap_or(""),
                v["cell"].as_str().unwrap_or(""),
                f("tps"),
                f("mbps"),
                f("p50_us"),
                f("p99_us"),
                f("p999_us"),
                f("max_us"),
                f("client_cpu"),
                v["failed"].as_u64().unwrap_or(0)
            ),
        }
    }
    0
}

/// The targets of the benchmark issue, each checked against figures of the same run.
fn verdict(results: &PathBuf) -> i32 {
    let rows = read_lines(results);
    let get = |pred: &dyn Fn(&serde_json::Value) -> bool| rows.iter().find(|v| pred(v));
    let cell = |label: &str, name: &str| get(&|v| v["label"] == label && v["cell"] == name);
    let f = |v: Option<&serde_json::Value>, k: &str| v.and_then(|v| v[k].as_f64());
    let limits = get(&|v| v["kind"] == "limits");
    let mut out: Vec<(String, String, Option<bool>)> = Vec::new();
    let mut check = |name: &str, figures: String, ok: Option<bool>| {
        out.push((name.to_string(), figures, ok));
    };
    // 1 KiB, 64 connections x 1: >= 50 % of the client's ceiling; p99 <= 2 ms.
    let (b, c) = (
        cell("ASYNC_FLUSH", "1KiB-64conn"),
        cell("responder", "1KiB-64conn"),
    );
    if let (Some(t), Some(ceil), Some(p99)) = (f(b, "tps"), f(c, "tps"), f(b, "p99_us")) {
        check(
            "1 KiB, 64 conn x 1: >= 50 % of the client ceiling, p99 <= 2 ms",
            format!(
                "{t:.0} of {ceil:.0} msg/s = {:.0} %, p99 {:.2} ms",
                100.0 * t / ceil,
                p99 / 1e3
            ),
            Some(t >= 0.5 * ceil && p99 <= 2000.0),
        );
    }
    let b = cell("ASYNC_FLUSH", "1KiB-8conn-x16");
    if let (Some(t), Some(p99)) = (f(b, "tps"), f(b, "p99_us")) {
        check(
            "1 KiB, 8 conn x 16 in flight: >= 200,000 msg/s, p99 <= 2 ms",
            format!("{t:.0} msg/s, p99 {:.2} ms", p99 / 1e3),
            Some(t >= 200_000.0 && p99 <= 2000.0),
        );
    }
    let b = cell("ASYNC_FLUSH", "1KiB-batch32-4conn-x4");
    if let (Some(m), Some(d)) = (f(b, "mbps"), f(limits, "disk_write_mbps")) {
        check(
            "batches of 32 x 1 KiB, ASYNC_FLUSH: >= 50 % of disk write",
            format!("{m:.0} of {d:.0} MB/s = {:.0} %", 100.0 * m / d),
            Some(m >= 0.5 * d),
        );
    }
    let b = cell("ASYNC_FLUSH", "1KiB-1conn");
    if let (Some(p50), Some(p99)) = (f(b, "p50_us"), f(b, "p99_us")) {
        check(
            "1 KiB sync sends, 1 conn, ASYNC_FLUSH: p50 <= 150 us, p99 <= 400 us",
            format!("p50 {p50:.0} us, p99 {p99:.0} us"),
            Some(p50 <= 150.0 && p99 <= 400.0),
        );
    }
    let b = cell("SYNC_FLUSH", "1KiB-1conn");
    if let (Some(p99), Some(fs)) = (f(b, "p99_us"), f(limits, "fsync_p99_us")) {
        check(
            "1 KiB sync sends, 1 conn, SYNC_FLUSH: p99 <= fdatasync p99 + 300 us",
            format!("p99 {p99:.0} us, fdatasync p99 {fs:.0} us"),
            Some(p99 <= fs + 300.0),
        );
    }
    let (s, a) = (
        cell("SYNC_FLUSH", "1KiB-64conn"),
        cell("ASYNC_FLUSH", "1KiB-64conn"),
    );
    if let (Some(st), Some(at)) = (f(s, "tps"), f(a, "tps")) {
        check(
            "SYNC_FLUSH, 64 conn: >= 50 % of ASYNC_FLUSH",
            format!("{st:.0} of {at:.0} msg/s = {:.0} %", 100.0 * st / at),
            Some(st >= 0.5 * at),
        );
    }
    let e = get(&|v| v["kind"] == "e2e");
    if let Some(p99) = e.and_then(|e| e["e2e"]["p99_us"].as_f64()) {
        let tps = f(e, "tps").unwrap_or(0.0);
        check(
            "end to end at 10,000 msg/s: p99 <= 1 ms",
            format!("{tps:.0} msg/s, e2e p99 {:.2} ms", p99 / 1e3),
            Some(p99 <= 1000.0),
        );
    }
    // The runner alternates some passes `--reps` times: the median of each.
    let median = |label: &str, key: &str| {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|r| r["label"] == label)
            .filter_map(|r| r[key].as_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| (v[v.len() / 2], v.len()))
    };
    for (quiet, trouble, what) in [
        (
            "trouble:quiet",
            "trouble:delete",
            "(a) while expired files are deleted",
        ),
        (
            "trouble:quiet",
            "trouble:catchup",
            "(b) while a consumer catches up a cold backlog",
        ),
        (
            "trouble:restart",
            "trouble:recover",
            "(c) right after SIGKILL and restart (vs clean restart)",
        ),
    ] {
        if let (Some((q, nq)), Some((t, nt))) =
            (median(quiet, "p999_us"), median(trouble, "p999_us"))
        {
            let of = match nq.max(nt) {
                1 => String::new(),
                _ => format!(" (medians of {nt} and {nq})"),
            };
            check(
                &format!("p99.9 {what} <= 2 x quiet"),
                format!("{t:.0} us vs {q:.0} us = {:.1} x{of}", t / q),
                Some(t <= 2.0 * q),
            );
        }
    }
    if let Some(rss) = get(&|v| v["kind"] == "rss").and_then(|v| v["rss_kb"].as_f64()) {
        check(
            "RSS with 10,000 topics x 8 queues idle <= 1 GiB",
            format!("{:.0} MiB", rss / 1024.0),
            Some(rss <= 1024.0 * 1024.0),
        );
    }
    if let (Some((many, n)), Some((one, _))) =
        (median("topics:1000", "tps"), median("topics:1", "tps"))
    {
        check(
            "1,000 active topics within 20 % of one topic",
            format!(
                "{many:.0} vs {one:.0} msg/s = {:.0} % (medians of {n})",
                100.0 * many / one
            ),
            Some(many >= 0.8 * one),
        );
    }
    let worst_cpu = rows
        .iter()
        .filter(|v| v["label"] == "ASYNC_FLUSH")
        .filter_map(|v| v["client_cpu"].as_f64())
        .fold(0.0, f64::max);
    check(
        "the bench client's own CPU (most in any ASYNC_FLUSH cell)",
        format!("{worst_cpu:.2} cores"),
        None,
    );
    println!("| target | figures (same run) | met |");
    println!("| --- | --- | --- |");
    for (name, figures, ok) in out {
        let m = match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        println!("| {name} | {figures} | {m} |");
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Target {
        Target {
            namesrv: Some("127.0.0.1:1".into()),
            addr: None,
            topic: "T".into(),
            queues: 8,
            create: true,
        }
    }

    #[test]
    fn legs_name_a_name_server_or_a_responder() {
        let (l, t) = parse_leg("SYNC_FLUSH=ns:127.0.0.1:9876", &base()).unwrap();
        assert_eq!(l, "SYNC_FLUSH");
        assert_eq!(t.namesrv.as_deref(), Some("127.0.0.1:9876"));
        assert!(t.addr.is_none() && t.create && t.topic == "T");
        let (l, t) = parse_leg("responder=addr:127.0.0.1:19999", &base()).unwrap();
        assert_eq!(l, "responder");
        assert_eq!(t.addr.as_deref(), Some("127.0.0.1:19999"));
        assert!(t.namesrv.is_none());
        for bad in ["x", "x=127.0.0.1:1", "x=tcp:127.0.0.1:1"] {
            assert!(parse_leg(bad, &base()).is_err(), "{bad}");
        }
    }
}
