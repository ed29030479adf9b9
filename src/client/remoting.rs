//! A blocking remoting client: one TCP connection per address, a reader thread that routes
//! responses to their callers by `opaque`, and requests from the broker (NOTIFY_*) to a
//! channel. Used by the producer and consumers; it needs no async runtime.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

type Pending = Arc<Mutex<HashMap<i32, flume::Sender<RemotingCommand>>>>;

struct Connection {
    writer: Mutex<TcpStream>,
    pending: Pending,
}

/// Connections to name servers and brokers, shared by a client instance.
pub struct RemotingClient {
    conns: Mutex<HashMap<String, Arc<Connection>>>,
    opaque: AtomicI32,
    /// Requests the servers send us (NOTIFY_CONSUMER_IDS_CHANGED, ...).
    incoming: flume::Sender<(String, RemotingCommand)>,
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
            }),
            rx,
        )
    }

    fn connection(&self, addr: &str) -> Result<Arc<Connection>, ClientError> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conns.get(addr) {
            return Ok(c.clone());
        }
        let stream = TcpStream::connect(addr)
            .map_err(|e| ClientError::Connect(addr.to_string(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let reader = stream
            .try_clone()
            .map_err(|e| ClientError::Connect(addr.to_string(), e.to_string()))?;
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let conn = Arc::new(Connection {
            writer: Mutex::new(stream),
            pending: pending.clone(),
        });
        conns.insert(addr.to_string(), conn.clone());
        let (incoming, a) = (self.incoming.clone(), addr.to_string());
        std::thread::Builder::new()
            .name(format!("remoting-{addr}"))
            .spawn(move || read_loop(reader, pending, incoming, a))
            .map_err(|e| ClientError::Connect(addr.to_string(), e.to_string()))?;
        Ok(conn)
    }

    fn forget(&self, addr: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
    }

    /// Sends a request and waits for its response.
    pub fn invoke(
        &self,
        addr: &str,
        mut req: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, ClientError> {
        let conn = self.connection(addr)?;
        req.opaque = self.opaque.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = flume::bounded(1);
        conn.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.opaque, tx);
        let mut buf = BytesMut::new();
        frame::encode(&req, &mut buf);
        let sent = conn
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&buf);
        if let Err(e) = sent {
            self.forget(addr);
            return Err(ClientError::Send(addr.to_string(), e.to_string()));
        }
        let res = rx.recv_timeout(timeout);
        conn.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.opaque);
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
        let conn = self.connection(addr)?;
        req.opaque = self.opaque.fetch_add(1, Ordering::Relaxed);
        req.flag |= crate::protocol::command::FLAG_ONEWAY;
        let mut buf = BytesMut::new();
        frame::encode(&req, &mut buf);
        let res = conn
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&buf);
        res.map_err(|e| {
            self.forget(addr);
            ClientError::Send(addr.to_string(), e.to_string())
        })
    }
}

fn read_loop(
    mut s: TcpStream,
    pending: Pending,
    incoming: flume::Sender<(String, RemotingCommand)>,
    addr: String,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match frame::decode(&mut buf) {
            Ok(Some(cmd)) => {
                if cmd.is_response() {
                    let tx = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&cmd.opaque);
                    if let Some(tx) = tx {
                        let _ = tx.send(cmd);
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
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // Dropping the senders wakes every waiting caller with "closed".
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
