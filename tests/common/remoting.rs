//! A blocking remoting client and process helpers for integration tests.
#![allow(dead_code)]

use bytes::BytesMut;
use coremq::protocol::{frame, HeaderCodec, RemotingCommand};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) when dropped, also when the test fails.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (20 s at most) until the log file at `path` satisfies `ok`.
/// Log lines reach the file through a logger thread, so a fixed sleep can read too early.
pub fn wait_log(path: &std::path::Path, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if ok(&log) {
            return;
        }
        assert!(Instant::now() < deadline, "{}: {log}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

static VIA_SCRIPTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on this test binary starts servers through `scripts/mqnamesrv` and
/// `scripts/mqbroker` (the seed's wrappers), with `COREMQ_BIN_DIR` pointing at the test build.
pub fn use_scripts() {
    VIA_SCRIPTS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The command that runs server `name` (`mqnamesrv`, `mqbroker`): the binary, or its script.
fn server(name: &str, bin: &str) -> Command {
    if !VIA_SCRIPTS.load(std::sync::atomic::Ordering::Relaxed) {
        return Command::new(bin);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new("bash");
    c.arg(root.join("scripts").join(name)).env(
        "COREMQ_BIN_DIR",
        std::path::Path::new(bin).parent().unwrap(),
    );
    c
}

/// Spawns a server on free ports until one starts (a parallel test may take the same free
/// port between our probe and the server's bind; the server then exits and we retry).
///
/// `log` is the server's log file, quoted when it never listens (the test's temp dir is gone
/// by the time anyone reads the failure).
fn spawn_on_free_port(log: &std::path::Path, mut cmd: impl FnMut(u16) -> Command) -> (Proc, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut p = Proc(cmd(port).spawn().expect("start server"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if p.0.try_wait().unwrap().is_some() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                std::thread::sleep(Duration::from_millis(30));
                if p.0.try_wait().unwrap().is_none() {
                    return (p, port);
                }
                break;
            }
            if Instant::now() >= deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                panic!(
                    "server never listened on {port}; {}, last lines first: {tail:#?}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("could not start a server on a free port");
}

/// Starts `mqnamesrv` on a free port with logs in `log_dir`.
pub fn start_namesrv(log_dir: &std::path::Path, extra: &[&str]) -> (Proc, u16) {
    spawn_on_free_port(&log_dir.join("namesrv.log"), |port| {
        let mut c = server("mqnamesrv", env!("CARGO_BIN_EXE_mqnamesrv"));
        c.args(["--listen-port", &port.to_string(), "--log-dir"])
            .arg(log_dir)
            .args(extra)
            .stdout(std::process::Stdio::null());
        c
    })
}

pub struct Client {
    s: TcpStream,
    buf: BytesMut,
    opaque: i32,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Self::try_connect(port).expect("connect")
    }

    /// `None` when nothing accepts on `port`.
    pub fn try_connect(port: u16) -> Option<Client> {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Some(Client {
            s,
            buf: BytesMut::new(),
            opaque: 0,
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Reads the next command; `None` when the server closed the connection.
    pub fn read(&mut self) -> Option<RemotingCommand> {
        loop {
            if let Some(c) = frame::decode(&mut self.buf).expect("server sent a bad frame") {
                return Some(c);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a request and returns its response (skipping server-initiated requests).
    pub fn call(&mut self, req: RemotingCommand) -> RemotingCommand {
        self.try_call(req)
            .expect("connection closed before the response")
    }

    /// As [`Client::call`], `None` when the connection closes first.
    pub fn try_call(&mut self, mut req: RemotingCommand) -> Option<RemotingCommand> {
        self.opaque += 1;
        req.opaque = self.opaque;
        let mut out = BytesMut::new();
        frame::encode(&req, &mut out);
        self.s.write_all(&out).ok()?;
        loop {
            let c = self.read()?;
            if c.is_response() && c.opaque == req.opaque {
                return Some(c);
            }
        }
    }
}

/// A request with extFields.
pub fn req(code: i32, codec: HeaderCodec, ext: &[(&str, &str)]) -> RemotingCommand {
    let mut r = RemotingCommand::request(code, codec);
    for (k, v) in ext {
        r.set_ext(k, v);
    }
    r
}

/// Starts `mqbroker` against a name server, on a free port, with its store in `store`.
pub fn start_broker(store: &std::path::Path, namesrv_port: u16, extra: &[&str]) -> (Proc, u16) {
    spawn_on_free_port(&store.join("logs").join("broker.log"), |port| {
        let mut args: Vec<String> = vec![
            "-n".into(),
            format!("127.0.0.1:{namesrv_port}"),
            "--log-dir".into(),
            store.join("logs").display().to_string(),
        ];
        for p in [
            "brokerIP1=127.0.0.1".to_string(),
            format!("listenPort={port}"),
            format!("storePathRootDir={}", store.display()),
            "shards=2".into(),
            "mappedFileSizeCommitLog=67108864".into(),
            "maxHashSlotNum=10000".into(),
            "maxIndexNum=40000".into(),
        ]
        .into_iter()
        .chain(extra.iter().map(|e| e.to_string()))
        {
            args.push("-p".into());
            args.push(p);
        }
        let mut c = server("mqbroker", env!("CARGO_BIN_EXE_mqbroker"));
        c.args(&args).stdout(std::process::Stdio::null());
        c
    })
}

/// SIGTERM, then wait for the process to exit (a clean stop).
pub fn stop(p: &mut Proc) {
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "process did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates `topic` with `queues` read and write queues on a broker (UPDATE_AND_CREATE_TOPIC),
/// as an admin would.
pub fn create_topic(broker_port: u16, topic: &str, queues: u32) {
    let n = queues.to_string();
    let r = Client::connect(broker_port).call(req(
        coremq::protocol::code::request::UPDATE_AND_CREATE_TOPIC,
        coremq::protocol::HeaderCodec::Json,
        &[
            ("topic", topic),
            ("defaultTopic", "TBW102"),
            ("readQueueNums", &n),
            ("writeQueueNums", &n),
            ("perm", "6"),
            ("topicFilterType", "SINGLE_TAG"),
            ("order", "false"),
        ],
    ));
    assert_eq!(
        r.code,
        coremq::protocol::code::response::SUCCESS,
        "{:?}",
        r.remark
    );
}

/// Waits (20 s at most) for a route of `topic` on the name server that satisfies `ok`.
pub fn wait_route_where(
    ns_port: u16,
    topic: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A fresh connection each try: the name server may be (re)starting.
        let r = Client::try_connect(ns_port).and_then(|mut ns| {
            ns.try_call(req(
                coremq::protocol::code::request::GET_ROUTEINFO_BY_TOPIC,
                coremq::protocol::HeaderCodec::Json,
                &[("topic", topic)],
            ))
        });
        if let Some(r) = r.filter(|r| r.code == coremq::protocol::code::response::SUCCESS) {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            if ok(&v) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no (matching) route for {topic}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for any route of `topic`.
pub fn wait_route(ns_port: u16, topic: &str) -> serde_json::Value {
    wait_route_where(ns_port, topic, |_| true)
}
