//! A blocking remoting client: one TCP connection per address, a reader thread that routes
//! responses to their callers by `opaque`, and requests from the broker (NOTIFY_*) to a
//! channel. Used by the producer and consumers; it needs no async runtime.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::namesrv::route::TopicRouteData;
use crate::protocol::code::{request, response};
use crate::protocol::{frame, HeaderCodec, RemotingCommand};

/// Name-server addresses from an explicit `a;b` list, else `NAMESRV_ADDR`.
pub fn namesrv_addrs(explicit: Option<&str>) -> Vec<String> {
    explicit
        .map(str::to_string)
        .or_else(|| std::env::var("NAMESRV_ADDR").ok())
        .map(|a| crate::broker::config::split_addrs(&a))
        .unwrap_or_default()
}

/// Why a remote call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("send to {0} failed: {1}")]
    Send(String, String),
    #[error("wait response on the channel <{0}> timeout, {1} ms")]
    Timeout(String, u64),
    #[error("connection to {0} closed")]
    Closed(String),
    #[error("{0}")]
    Broker(String),
}

/// A caller waiting for a response: a blocked thread, or a callback run on the connection's
/// reader thread (it must not block) or by the timeout scanner.
enum Waiter {
    Sync(flume::Sender<RemotingCommand>),
    Async {
        deadline: Instant,
        addr: String,
        timeout_ms: u64,
        callback: Callback,
    },
}

/// What an asynchronous call is finished with.
pub type Callback = Box<dyn FnOnce(Result<RemotingCommand, ClientError>) + Send>;

type Pending = Arc<Mutex<HashMap<i32, Waiter>>>;

struct Connection {
    writer: Mutex<TcpStream>,
    pending: Pending,
    /// Set by the reader when the peer went away: the next call reconnects.
    closed: Arc<AtomicBool>,
}

/// Connections to name servers and brokers, shared by a client instance.
pub struct RemotingClient {
    conns: Mutex<HashMap<String, Arc<Connection>>>,
    opaque: AtomicI32,
    /// Requests the servers send us (NOTIFY_CONSUMER_IDS_CHANGED, ...).
    incoming: flume::Sender<(String, RemotingCommand)>,
    scanner: std::sync::Once,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RemotingClient {
    /// A client and the receiving end of server-initiated requests.
    pub fn new() -> (
        Arc<RemotingClient>,
        flume::Receiver<(String, RemotingCommand)>,
    ) {
        let (tx, rx) = flume::unbounded();
        (
            Arc::new(RemotingClient {
                conns: Mutex::new(HashMap::new()),
                opaque: AtomicI32::new(1),
                incoming: tx,
                scanner: std::sync::Once::new(),
            }),
            rx,
        )
    }

    fn connection(&self, addr: &str) -> Result<Arc<Connection>, ClientError> {
        let mut conns = lock(&self.conns);
        if let Some(c) = conns.get(addr) {
            if !c.closed.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let stream = TcpStream::connect(addr)
            .map_err(|e| ClientError::Connect(addr.to_string(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let reader = stream
            .try_clone()
            .map_err(|e| ClientError::Connect(addr.to_string(), e.to_string()))?;
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let conn = Arc::new(Connection {
            writer: Mutex::new(stream),
            pending: pending.clone(),
            closed: closed.clone(),
        });
        conns.insert(addr.to_string(), conn.clone());
        let (incoming, a) = (self.incoming.clone(), addr.to_string());
        std::thread::Builder::new()
            .name(format!("remoting-{addr}"))
            .spawn(move || read_loop(reader, pending, closed, incoming, a))
            .map_err(|e| ClientError::Connect(addr.to_string(), e.to_string()))?;
        Ok(conn)
    }

    fn forget(&self, addr: &str) {
        lock(&self.conns).remove(addr);
    }

    /// Registers `waiter` (none for a oneway request) under a fresh opaque and writes `req`;
    /// on a write error the waiter is taken back and returned with the error.
    fn write(
        &self,
        addr: &str,
        mut req: RemotingCommand,
        waiter: Option<Waiter>,
    ) -> Result<(Arc<Connection>, i32), (ClientError, Option<Waiter>)> {
        let conn = match self.connection(addr) {
            Ok(c) => c,
            Err(e) => return Err((e, waiter)),
        };
        req.opaque = self.opaque.fetch_add(1, Ordering::Relaxed);
        let opaque = req.opaque;
        if let Some(w) = waiter {
            lock(&conn.pending).insert(opaque, w);
        }
        let mut buf = BytesMut::new();
        frame::encode(&req, &mut buf);
        if let Err(e) = lock(&conn.writer).write_all(&buf) {
            self.forget(addr);
            let w = lock(&conn.pending).remove(&opaque);
            return Err((ClientError::Send(addr.to_string(), e.to_string()), w));
        }
        Ok((conn, opaque))
    }

    /// Sends a request and waits for its response.
    pub fn invoke(
        &self,
        addr: &str,
        req: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, ClientError> {
        let (tx, rx) = flume::bounded(1);
        let (conn, opaque) = self
            .write(addr, req, Some(Waiter::Sync(tx)))
            .map_err(|(e, _)| e)?;
        let res = rx.recv_timeout(timeout);
        lock(&conn.pending).remove(&opaque);
        match res {
            Ok(r) => Ok(r),
            Err(flume::RecvTimeoutError::Timeout) => Err(ClientError::Timeout(
                addr.to_string(),
                timeout.as_millis() as u64,
            )),
            Err(flume::RecvTimeoutError::Disconnected) => {
                self.forget(addr);
                Err(ClientError::Closed(addr.to_string()))
            }
        }
    }

    /// Sends a request without waiting; `callback` gets the response, or the error (a
    /// timeout after `timeout`, a closed connection). It runs on the connection's reader
    /// thread, or on this thread if the request could not be written: it must not block.
    pub fn invoke_async(
        self: &Arc<Self>,
        addr: &str,
        req: RemotingCommand,
        timeout: Duration,
        callback: Callback,
    ) {
        self.start_scanner();
        let waiter = Waiter::Async {
            deadline: Instant::now() + timeout,
            addr: addr.to_string(),
            timeout_ms: timeout.as_millis() as u64,
            callback,
        };
        if let Err((e, Some(Waiter::Async { callback, .. }))) = self.write(addr, req, Some(waiter))
        {
            callback(Err(e));
        }
    }

    /// One thread per client fails asynchronous calls past their deadline; it ends with the
    /// client.
    fn start_scanner(self: &Arc<Self>) {
        self.scanner.call_once(|| {
            let weak = Arc::downgrade(self);
            let _ = std::thread::Builder::new()
                .name("remoting-timeouts".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(20));
                    let Some(me) = weak.upgrade() else { return };
                    let conns: Vec<Arc<Connection>> = lock(&me.conns).values().cloned().collect();
                    drop(me);
                    let now = Instant::now();
                    for c in conns {
                        let expired: Vec<Waiter> = {
                            let mut p = lock(&c.pending);
                            let ids: Vec<i32> = p
                                .iter()
                                .filter(|(_, w)| {
                                    matches!(w, Waiter::Async { deadline, .. } if *deadline <= now)
                                })
                                .map(|(k, _)| *k)
                                .collect();
                            ids.iter().filter_map(|k| p.remove(k)).collect()
                        };
                        for w in expired {
                            if let Waiter::Async {
                                addr,
                                timeout_ms,
                                callback,
                                ..
                            } = w
                            {
                                callback(Err(ClientError::Timeout(addr, timeout_ms)));
                            }
                        }
                    }
                });
        });
    }

    /// GET_ROUTEINFO_BY_TOPIC from the first name server that answers; `Ok(None)` when the
    /// topic has no route (TOPIC_NOT_EXIST).
    pub fn topic_route(
        &self,
        namesrv: &[String],
        topic: &str,
    ) -> Result<Option<TopicRouteData>, ClientError> {
        let mut last = ClientError::Broker("no name server address".into());
        for ns in namesrv {
            let mut req =
                RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC, HeaderCodec::Json);
            req.set_ext("topic", topic);
            match self.invoke(ns, req, Duration::from_secs(3)) {
                Ok(r) if r.code == response::SUCCESS => {
                    return crate::protocol::json::parse(&r.body)
                        .map(Some)
                        .map_err(|e| ClientError::Broker(format!("bad route of {topic}: {e}")));
                }
                Ok(r) if r.code == response::TOPIC_NOT_EXIST => return Ok(None),
                Ok(r) => {
                    last = ClientError::Broker(format!(
                        "CODE: {} DESC: {}",
                        r.code,
                        r.remark.unwrap_or_default()
                    ))
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends a oneway request (no response).
    pub fn invoke_oneway(&self, addr: &str, mut req: RemotingCommand) -> Result<(), ClientError> {
        req.flag |= crate::protocol::command::FLAG_ONEWAY;
        self.write(addr, req, None).map(|_| ()).map_err(|(e, _)| e)
    }
}

impl Drop for RemotingClient {
    /// Closes every connection, so their reader threads see the end and exit.
    fn drop(&mut self) {
        for c in lock(&self.conns).values() {
            let _ = lock(&c.writer).shutdown(std::net::Shutdown::Both);
        }
    }
}

fn read_loop(
    mut s: TcpStream,
    pending: Pending,
    closed: Arc<AtomicBool>,
    incoming: flume::Sender<(String, RemotingCommand)>,
    addr: String,
) {
    let mut buf = frame::ReadBuf::default();
    loop {
        match frame::decode(buf.pending()) {
            Ok(Some(cmd)) => {
                if cmd.is_response() {
                    let waiter = lock(&pending).remove(&cmd.opaque);
                    match waiter {
                        Some(Waiter::Sync(tx)) => {
                            let _ = tx.send(cmd);
                        }
                        Some(Waiter::Async { callback, .. }) => callback(Ok(cmd)),
                        None => {}
                    }
                } else {
                    let _ = incoming.send((addr.clone(), cmd));
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!("bad frame from {addr}: {e}");
                break;
            }
        }
        let room = match buf.spare() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("bad frame from {addr}: {e}");
                break;
            }
        };
        match s.read(room) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.filled(n),
        }
    }
    closed.store(true, Ordering::Release);
    let _ = s.shutdown(std::net::Shutdown::Both);
    // Dropping the senders wakes every waiting caller with "closed"; callbacks hear it.
    let waiters: Vec<Waiter> = lock(&pending).drain().map(|(_, w)| w).collect();
    for w in waiters {
        if let Waiter::Async { callback, .. } = w {
            callback(Err(ClientError::Closed(addr.clone())));
        }
    }
}
