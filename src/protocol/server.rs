//! Serving remoting connections on a glommio executor.
//!
//! Per connection: a reader loop reads whatever bytes are ready, decodes every complete frame
//! and runs each request as its own task (a held long-poll pull must not block the requests
//! behind it); a writer task sends all queued responses with one write. A malformed or
//! oversize frame closes the connection with one log line naming the peer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::code::response;
use super::frame;
use super::RemotingCommand;
use crate::store::notify::Notify;

/// Handles requests of one server (name server, broker).
pub trait Handler: 'static {
    /// Processes one request; `None` means no response (oneway, or answered later).
    fn handle(
        self: Rc<Self>,
        req: RemotingCommand,
        conn: Rc<Conn>,
    ) -> Pin<Box<dyn Future<Output = Option<RemotingCommand>>>>;

    /// Called once when a connection closes.
    fn closed(&self, _conn: &Rc<Conn>) {}
}

/// One client connection, as seen by handlers.
pub struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    out: RefCell<Vec<RemotingCommand>>,
    wake: Notify,
    closed: Cell<bool>,
}

impl Conn {
    /// Queues a command (response, or a request to the client) for sending.
    pub fn send(&self, cmd: RemotingCommand) {
        if self.closed.get() {
            return;
        }
        self.out.borrow_mut().push(cmd);
        self.wake.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake.notify_all();
    }
}

/// Fails if a socket already listens on `addr`'s port. glommio listeners set SO_REUSEPORT
/// (every shard binds the port), which would also let a second server bind the same port
/// silently and share its connections; this refuses that, as upstream's "Address already in
/// use" does. It asks the kernel's socket table (`/proc/net/tcp{,6}`, state `0A` = LISTEN)
/// rather than binding: connections a previous server left behind on the port (closing
/// states) must not stop a restart, and a probe socket could take connections meant for us.
///
/// A listener of a process that just died can outlive it briefly (io_uring tears its ring
/// down after the process exits), so a busy port is re-checked for up to 5 s before giving
/// up. Blocking: call from `main`, not from an executor.
pub fn ensure_port_free(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while port_listening(addr.port()) {
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("cannot listen on {addr}: Address already in use"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// Whether a socket is in LISTEN state on `port` (any address) in this network namespace.
fn port_listening(port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|l| {
                let mut f = l.split_whitespace();
                let local = f.nth(1).unwrap_or_default();
                let state = f.nth(1).unwrap_or_default();
                state == "0A" && local.ends_with(&suffix)
            })
        })
    })
}

/// The standard answer to an unknown request code (reference §1.7).
pub fn not_supported(req: &RemotingCommand) -> RemotingCommand {
    RemotingCommand::response_to(
        req,
        response::REQUEST_CODE_NOT_SUPPORTED,
        Some(format!(" request type {} not supported", req.code)),
    )
}

/// Serves one accepted connection until the peer closes it or sends a bad frame.
pub async fn serve_connection<H: Handler>(stream: TcpStream, id: u64, handler: Rc<H>) {
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    let conn = Rc::new(Conn {
        id,
        peer,
        out: RefCell::new(Vec::new()),
        wake: Notify::default(),
        closed: Cell::new(false),
    });
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let writer = {
        let conn = conn.clone();
        glommio::spawn_local(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                conn.wake
                    .wait_until(|| !conn.out.borrow().is_empty() || conn.closed.get())
                    .await;
                let batch = std::mem::take(&mut *conn.out.borrow_mut());
                if batch.is_empty() {
                    break;
                }
                buf.clear();
                for c in &batch {
                    frame::encode(c, &mut buf);
                }
                if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                    conn.close();
                    break;
                }
                if buf.capacity() > 4 << 20 {
                    buf = BytesMut::with_capacity(64 * 1024);
                }
            }
            let _ = wr.close().await;
        })
    };
    let mut rbuf = frame::ReadBuf::default();
    'read: while !conn.closed.get() {
        let room = match rbuf.spare() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("closing connection from {peer}: bad frame: {e}");
                break;
            }
        };
        let n = match rd.read(room).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        rbuf.filled(n);
        loop {
            match frame::decode(rbuf.pending()) {
                Ok(Some(cmd)) => {
                    if cmd.is_response() {
                        // Answers to our oneway requests (NOTIFY_*) carry nothing we need.
                        continue;
                    }
                    let (h, c) = (handler.clone(), conn.clone());
                    glommio::spawn_local(async move {
                        let oneway = cmd.is_oneway();
                        if let Some(resp) = h.handle(cmd, c.clone()).await {
                            if !oneway {
                                c.send(resp);
                            }
                        }
                    })
                    .detach();
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("closing connection from {peer}: bad frame: {e}");
                    break 'read;
                }
            }
        }
    }
    conn.close();
    handler.closed(&conn);
    writer.await;
}
