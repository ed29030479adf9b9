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

/// Starts `mqnamesrv` on a free port with logs in `log_dir`.
pub fn start_namesrv(log_dir: &std::path::Path, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mqnamesrv"))
        .args(["--listen-port", &port.to_string(), "--log-dir"])
        .arg(log_dir)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start mqnamesrv");
    let p = Proc(child);
    wait_port(port);
    (p, port)
}

pub struct Client {
    s: TcpStream,
    buf: BytesMut,
    opaque: i32,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            s,
            buf: BytesMut::new(),
            opaque: 0,
        }
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
    pub fn call(&mut self, mut req: RemotingCommand) -> RemotingCommand {
        self.opaque += 1;
        req.opaque = self.opaque;
        let mut out = BytesMut::new();
        frame::encode(&req, &mut out);
        self.s.write_all(&out).unwrap();
        loop {
            let c = self.read().expect("connection closed before the response");
            if c.is_response() && c.opaque == req.opaque {
                return c;
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
