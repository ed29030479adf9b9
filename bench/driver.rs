//! The event loops of `mqbench`: the producer's connections and the do-nothing responder.
//!
//! One thread serves many non-blocking connections with `ppoll`, instead of a thread per
//! connection. On two cores shared with the broker, 64 threads blocking in turn cost a
//! context switch (and a wake-up IPI) per request, and their run-queue waits were most of
//! the client's own p99: the broker was measured through the client's scheduling noise.
//! `ppoll`, not `epoll_wait`: its timeout has nanosecond precision, which the open-loop
//! rate needs, and a few dozen descriptors per call cost nothing next to the reads.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq::protocol::code::response;
use coremq::protocol::{frame, HeaderCodec, RemotingCommand};

use super::{new_hist, now_us, peek_response, stamp, ConnResult, Live, Template, Uniq};

/// How long a loop sleeps at most, so it sees `stop` soon.
const TICK: Duration = Duration::from_millis(200);
/// Bytes of requests queued on one connection before it waits for the socket.
const MAX_QUEUED: usize = 1 << 20;

/// One producer connection to open.
pub struct Spec {
    pub addr: String,
    /// The connection's number: its `UNIQ_KEY` prefix and first queue.
    pub conn: usize,
    /// One request per queue (and topic) it sends to, round robin.
    pub templates: Vec<Template>,
    /// Requests in flight at most (`usize::MAX` for oneway).
    pub window: usize,
    pub oneway: bool,
    /// Sends per second of this connection (open loop); `None` = as fast as the window allows.
    pub rate: Option<f64>,
}

/// Counters shared by every connection of a run.
pub struct Shared<'a> {
    pub live: &'a Live,
    pub measuring: &'a AtomicBool,
    pub stop: &'a AtomicBool,
}

struct Conn {
    addr: String,
    s: TcpStream,
    templates: Vec<Template>,
    window: usize,
    oneway: bool,
    interval: Option<Duration>,
    next_due: Instant,
    next_q: usize,
    opaque: i32,
    uniq: Uniq,
    /// opaque → (due instant, template index)
    pending: HashMap<i32, (Instant, usize)>,
    /// Oneway sends not yet handed to the kernel: they count once written.
    unsent: Vec<(Instant, usize)>,
    wbuf: Vec<u8>,
    woff: usize,
    rbuf: BytesMut,
    res: ConnResult,
    done: bool,
}

fn empty_result() -> ConnResult {
    ConnResult {
        hist: new_hist(),
        msgs: 0,
        bytes: 0,
        failed: 0,
        codes: HashMap::new(),
    }
}

impl Conn {
    /// Connects; `None` (after saying why) if it cannot.
    fn open(spec: Spec) -> Option<Conn> {
        let s = TcpStream::connect(&spec.addr)
            .and_then(|s| s.set_nonblocking(true).map(|_| s))
            .map_err(|e| eprintln!("connect {}: {e}", spec.addr))
            .ok()?;
        let _ = s.set_nodelay(true);
        Some(Conn {
            addr: spec.addr,
            s,
            templates: spec.templates,
            window: spec.window,
            oneway: spec.oneway,
            interval: spec
                .rate
                .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-9))),
            next_due: Instant::now(),
            next_q: spec.conn,
            opaque: 1,
            uniq: Uniq::new(spec.conn),
            pending: HashMap::new(),
            unsent: Vec::new(),
            wbuf: Vec::with_capacity(256 << 10),
            woff: 0,
            rbuf: BytesMut::with_capacity(256 << 10),
            res: empty_result(),
            done: false,
        })
    }

    fn record(&mut self, sh: &Shared, due: Instant, ti: usize, code: i32) {
        let rt = due.elapsed().as_nanos() as u64;
        if !sh.measuring.load(Ordering::Relaxed) {
            return;
        }
        let t = &self.templates[ti];
        let live = sh.live;
        if code == response::SUCCESS {
            self.res.hist.record(rt.max(1)).ok();
            self.res.msgs += t.messages as u64;
            self.res.bytes += t.bytes as u64;
            live.msgs.fetch_add(t.messages as u64, Ordering::Relaxed);
            live.bytes.fetch_add(t.bytes as u64, Ordering::Relaxed);
            live.rt_sum_ns.fetch_add(rt, Ordering::Relaxed);
            live.rt_count.fetch_add(1, Ordering::Relaxed);
            live.rt_max_ns.fetch_max(rt, Ordering::Relaxed);
        } else {
            self.res.failed += t.messages as u64;
            *self.res.codes.entry(code).or_insert(0) += 1;
            live.failed.fetch_add(t.messages as u64, Ordering::Relaxed);
        }
    }

    /// Queues every send that is due and fits the window.
    fn fill(&mut self, now: Instant) {
        if self.woff == self.wbuf.len() {
            self.wbuf.clear();
            self.woff = 0;
        }
        while self.pending.len() < self.window && self.wbuf.len() - self.woff < MAX_QUEUED {
            let due = match self.interval {
                Some(iv) => {
                    if self.next_due > now {
                        break;
                    }
                    let d = self.next_due;
                    self.next_due += iv;
                    d
                }
                None => now,
            };
            let ti = self.next_q % self.templates.len();
            self.next_q += 1;
            let ts = now_us();
            stamp(
                &self.templates[ti],
                &mut self.wbuf,
                self.opaque,
                &mut self.uniq,
                ts / 1000,
                ts,
            );
            if self.oneway {
                self.unsent.push((due, ti));
            } else {
                self.pending.insert(self.opaque, (due, ti));
            }
            self.opaque = self.opaque.wrapping_add(1).max(1);
            if self.oneway && self.interval.is_none() && self.wbuf.len() >= 64 << 10 {
                break;
            }
        }
    }

    /// Writes what the socket takes now.
    fn flush(&mut self, sh: &Shared) -> std::io::Result<()> {
        write_ready(&mut self.s, &self.wbuf, &mut self.woff)?;
        if self.woff == self.wbuf.len() {
            for (due, ti) in std::mem::take(&mut self.unsent) {
                self.record(sh, due, ti, response::SUCCESS);
            }
        }
        Ok(())
    }

    /// Reads every answer that has arrived and records it.
    fn read(&mut self, sh: &Shared, chunk: &mut [u8]) -> std::io::Result<()> {
        read_ready(&mut self.s, chunk, &mut self.rbuf)?;
        while let Ok(Some(len)) = frame::check(&self.rbuf) {
            let f = self.rbuf.split_to(len);
            let (code, op) = match peek_response(&f) {
                Some(x) => x,
                None => match frame::decode_frame_body(f.freeze().slice(4..)) {
                    Ok(c) => (c.code, c.opaque),
                    Err(_) => continue,
                },
            };
            if let Some((due, ti)) = self.pending.remove(&op) {
                self.record(sh, due, ti, code);
            }
        }
        Ok(())
    }

    fn fail(&mut self, what: &str, e: std::io::Error) {
        eprintln!("{what} {}: {e}", self.addr);
        self.res.failed += 1 + self.pending.len() as u64;
        self.done = true;
    }

    /// When this connection next has a send due, if it is waiting only for the clock.
    fn wake_at(&self) -> Option<Instant> {
        match self.interval {
            Some(_) if self.pending.len() < self.window => Some(self.next_due),
            None if self.oneway && self.woff == self.wbuf.len() => Some(Instant::now()),
            _ => None,
        }
    }
}

/// Opens every connection of `specs` and runs them on this thread until `stop`.
pub fn run(specs: Vec<Spec>, sh: &Shared) -> Vec<ConnResult> {
    let mut out = Vec::new();
    let mut conns = Vec::new();
    for spec in specs {
        match Conn::open(spec) {
            Some(c) => conns.push(c),
            None => {
                let mut r = empty_result();
                r.failed += 1;
                out.push(r);
            }
        }
    }
    let mut chunk = vec![0u8; 256 << 10];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut which: Vec<usize> = Vec::with_capacity(conns.len());
    while !sh.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut wake = now + TICK;
        fds.clear();
        which.clear();
        for (i, c) in conns.iter_mut().enumerate() {
            if c.done {
                continue;
            }
            c.fill(now);
            if let Err(e) = c.flush(sh) {
                c.fail("write", e);
                continue;
            }
            if let Some(w) = c.wake_at() {
                wake = wake.min(w);
            }
            let mut events = 0;
            if !c.pending.is_empty() {
                events |= libc::POLLIN;
            }
            if c.woff < c.wbuf.len() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.s.as_raw_fd(),
                events,
                revents: 0,
            });
            which.push(i);
        }
        if fds.is_empty() {
            break;
        }
        if !poll(&mut fds, wake.saturating_duration_since(Instant::now())) {
            continue;
        }
        for (fd, &i) in fds.iter().zip(&which) {
            let c = &mut conns[i];
            if fd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                if let Err(e) = c.read(sh, &mut chunk) {
                    c.fail("read", e);
                }
            }
        }
    }
    out.extend(conns.into_iter().map(|c| c.res));
    out
}

/// Writes `buf[*off..]` while the non-blocking socket takes it, advancing `off`.
fn write_ready(s: &mut TcpStream, buf: &[u8], off: &mut usize) -> std::io::Result<()> {
    while *off < buf.len() {
        match s.write(&buf[*off..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => *off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends what the non-blocking socket has to `buf`; `Err` at end of stream.
fn read_ready(s: &mut TcpStream, chunk: &mut [u8], buf: &mut BytesMut) -> std::io::Result<()> {
    loop {
        match s.read(chunk) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // A short read drained the socket: save the call that would say so.
                if n < chunk.len() {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `ppoll` for at most `timeout`; false when nothing is ready.
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid slice of pollfd and `ts` a valid timespec, both outliving
    // the call.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    n > 0
}

// ---------------------------------------------------------------------------------------
// The do-nothing responder.

struct Peer {
    s: TcpStream,
    rbuf: BytesMut,
    out: Vec<u8>,
    woff: usize,
}

/// Serves the listener on this thread: answers each request frame with a SUCCESS carrying
/// its opaque, all answers to one read in one write — a broker that does no work.
pub fn respond(l: TcpListener) -> std::io::Result<()> {
    l.set_nonblocking(true)?;
    let mut ok = RemotingCommand::request(0, HeaderCodec::RocketMq);
    ok.flag = coremq::protocol::command::FLAG_RESPONSE;
    ok.set_ext("msgId", "7F00000100002A9F0000000000000000");
    ok.set_ext("queueId", 0);
    ok.set_ext("queueOffset", 0);
    let mut tb = BytesMut::new();
    frame::encode(&ok, &mut tb);
    let tmpl = tb.to_vec();
    let mut chunk = vec![0u8; 256 << 10];
    let mut peers: Vec<Peer> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        fds.push(libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for p in &peers {
            let pending_out = p.woff < p.out.len();
            fds.push(libc::pollfd {
                fd: p.s.as_raw_fd(),
                // Read no more from a peer whose answers the kernel has not taken yet.
                events: if pending_out {
                    libc::POLLOUT
                } else {
                    libc::POLLIN
                },
                revents: 0,
            });
        }
        if !poll(&mut fds, TICK) {
            continue;
        }
        let mut closed = Vec::new();
        for (i, fd) in fds.iter().enumerate().skip(1) {
            if fd.revents != 0 && serve(&mut peers[i - 1], &tmpl, &mut chunk).is_err() {
                closed.push(i - 1);
            }
        }
        for i in closed.into_iter().rev() {
            peers.swap_remove(i);
        }
        if fds[0].revents != 0 {
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(true)?;
                        let _ = s.set_nodelay(true);
                        peers.push(Peer {
                            s,
                            rbuf: BytesMut::with_capacity(256 << 10),
                            out: Vec::with_capacity(64 << 10),
                            woff: 0,
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("responder: accept: {e}");
                        break;
                    }
                }
            }
        }
    }
}

/// Writes what is owed to `p`, then reads and answers what it sent; `Err` once it is gone.
fn serve(p: &mut Peer, tmpl: &[u8], chunk: &mut [u8]) -> Result<(), ()> {
    let write = |p: &mut Peer| -> Result<(), ()> {
        write_ready(&mut p.s, &p.out, &mut p.woff).map_err(|_| ())?;
        if p.woff == p.out.len() {
            p.out.clear();
            p.woff = 0;
        }
        Ok(())
    };
    write(p)?;
    if !p.out.is_empty() {
        return Ok(());
    }
    read_ready(&mut p.s, chunk, &mut p.rbuf).map_err(|_| ())?;
    while let Ok(Some(len)) = frame::check(&p.rbuf) {
        let f = p.rbuf.split_to(len);
        let (opaque, oneway) = match peek_response(&f) {
            Some((_, op)) => {
                let flag = i32::from_be_bytes([f[17], f[18], f[19], f[20]]);
                (op, flag & coremq::protocol::command::FLAG_ONEWAY != 0)
            }
            None => match frame::decode_frame_body(f.freeze().slice(4..)) {
                Ok(c) => (c.opaque, c.is_oneway()),
                Err(_) => return Err(()),
            },
        };
        if oneway {
            continue;
        }
        let base = p.out.len();
        p.out.extend_from_slice(tmpl);
        p.out[base + 13..base + 17].copy_from_slice(&opaque.to_be_bytes());
    }
    write(p)
}
