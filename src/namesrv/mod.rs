//! The name server: route table, broker liveness and KV config, served over the remoting
//! protocol on one glommio executor. Holds no state on disk.
//!
//! Request code → handler: everything is in [`NameServer::process`], one arm per code.

pub mod route;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::protocol::code::{request, response};
use crate::protocol::header::route::RegisterBrokerRequestHeader;
use crate::protocol::server::{not_supported, serve_connection, Conn, Handler};
use crate::protocol::RemotingCommand;
use route::{RegisterBrokerBody, Registration, RouteTable, TopicConfigWrapper};

/// Name-server settings (`namesrv.properties`).
#[derive(Debug, Clone)]
pub struct NamesrvConfig {
    /// `listenPort` (default 9876).
    pub listen_port: u16,
    /// Address to bind (default all interfaces).
    pub bind: std::net::IpAddr,
    /// `scanNotActiveBrokerInterval` in ms.
    pub scan_interval_ms: u64,
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        NamesrvConfig {
            listen_port: 9876,
            bind: std::net::IpAddr::from([0, 0, 0, 0]),
            scan_interval_ms: 5000,
        }
    }
}

fn now_ms() -> i64 {
    (crate::store::config::system_clock())()
}

/// The name server's state and request processing.
#[derive(Default)]
pub struct NameServer {
    routes: RefCell<RouteTable>,
    kv: RefCell<BTreeMap<String, BTreeMap<String, String>>>,
}

#[derive(Serialize)]
struct TopicList {
    #[serde(rename = "topicList")]
    topic_list: Vec<String>,
}

#[derive(Serialize)]
struct KvTable<'a> {
    table: &'a BTreeMap<String, String>,
}

fn json_body<T: Serialize>(v: &T) -> Bytes {
    serde_json::to_vec(v).map(Bytes::from).unwrap_or_default()
}

fn missing(req: &RemotingCommand, field: &str) -> RemotingCommand {
    RemotingCommand::response_to(
        req,
        response::SYSTEM_ERROR,
        Some(format!("the custom field <{field}> is null")),
    )
}

impl NameServer {
    /// Handles one request (request code → arm).
    pub fn process(&self, req: &RemotingCommand) -> RemotingCommand {
        let ok = |body: Bytes| {
            let mut r = RemotingCommand::response_to(req, response::SUCCESS, None);
            r.body = body;
            r
        };
        match req.code {
            request::REGISTER_BROKER => self.register_broker(req),
            request::UNREGISTER_BROKER => {
                let (Some(c), Some(n), Some(a)) = (
                    req.ext("clusterName"),
                    req.ext("brokerName"),
                    req.ext("brokerAddr"),
                ) else {
                    return missing(req, "brokerName");
                };
                let id = req
                    .ext("brokerId")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.routes.borrow_mut().unregister(c, n, a, id);
                log::info!("broker {n} ({a}, id {id}) unregistered");
                ok(Bytes::new())
            }
            request::GET_ROUTEINFO_BY_TOPIC => {
                let Some(topic) = req.ext("topic") else {
                    return missing(req, "topic");
                };
                match self.routes.borrow().route(topic) {
                    Some(r) => ok(json_body(&r)),
                    None => RemotingCommand::response_to(
                        req,
                        response::TOPIC_NOT_EXIST,
                        Some(format!(
                            "No topic route info in name server for the topic: {topic}"
                        )),
                    ),
                }
            }
            request::GET_BROKER_CLUSTER_INFO => ok(json_body(&self.routes.borrow().cluster_info())),
            request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => ok(json_body(&TopicList {
                topic_list: self.routes.borrow().topics(),
            })),
            request::DELETE_TOPIC_IN_NAMESRV => {
                let Some(topic) = req.ext("topic") else {
                    return missing(req, "topic");
                };
                self.routes
                    .borrow_mut()
                    .delete_topic(topic, req.ext("clusterName"));
                ok(Bytes::new())
            }
            request::PUT_KV_CONFIG => {
                let (Some(ns), Some(k), Some(v)) =
                    (req.ext("namespace"), req.ext("key"), req.ext("value"))
                else {
                    return missing(req, "namespace/key/value");
                };
                self.kv
                    .borrow_mut()
                    .entry(ns.to_string())
                    .or_default()
                    .insert(k.to_string(), v.to_string());
                ok(Bytes::new())
            }
            request::GET_KV_CONFIG => {
                let (Some(ns), Some(k)) = (req.ext("namespace"), req.ext("key")) else {
                    return missing(req, "namespace/key");
                };
                match self.kv.borrow().get(ns).and_then(|m| m.get(k)) {
                    Some(v) => {
                        let mut r = ok(Bytes::new());
                        r.set_ext("value", v);
                        r
                    }
                    None => RemotingCommand::response_to(
                        req,
                        response::QUERY_NOT_FOUND,
                        Some(format!("No config item, Namespace: {ns} Key: {k}")),
                    ),
                }
            }
            request::DELETE_KV_CONFIG => {
                if let (Some(ns), Some(k)) = (req.ext("namespace"), req.ext("key")) {
                    if let Some(m) = self.kv.borrow_mut().get_mut(ns) {
                        m.remove(k);
                    }
                }
                ok(Bytes::new())
            }
            request::GET_KVLIST_BY_NAMESPACE => {
                let ns = req.ext("namespace").unwrap_or_default();
                match self.kv.borrow().get(ns) {
                    Some(m) => ok(json_body(&KvTable { table: m })),
                    None => RemotingCommand::response_to(
                        req,
                        response::QUERY_NOT_FOUND,
                        Some(format!("No config item, Namespace: {ns}")),
                    ),
                }
            }
            _ => not_supported(req),
        }
    }

    fn register_broker(&self, req: &RemotingCommand) -> RemotingCommand {
        let hd = match RegisterBrokerRequestHeader::decode(req) {
            Ok(x) => x,
            Err(e) => {
                return RemotingCommand::response_to(
                    req,
                    response::SYSTEM_ERROR,
                    Some(e.to_string()),
                )
            }
        };
        let (cluster, name, addr, id) = (
            hd.cluster_name.as_str(),
            hd.broker_name.as_str(),
            hd.broker_addr.as_str(),
            hd.broker_id,
        );
        if hd.body_crc32 != 0 && hd.body_crc32 != crate::message::body_crc(&req.body) as i64 {
            return RemotingCommand::response_to(
                req,
                response::SYSTEM_ERROR,
                Some("crc32 not match".into()),
            );
        }
        if hd.compressed {
            return RemotingCommand::response_to(
                req,
                response::SYSTEM_ERROR,
                Some("compressed REGISTER_BROKER bodies are not supported yet".into()),
            );
        }
        let body: Option<TopicConfigWrapper> = if req.body.is_empty() {
            None
        } else {
            match crate::protocol::json::parse::<RegisterBrokerBody>(&req.body) {
                Ok(b) => Some(b.topic_config_serialize_wrapper),
                Err(e) => {
                    return RemotingCommand::response_to(
                        req,
                        response::SYSTEM_ERROR,
                        Some(format!("bad RegisterBrokerBody: {e}")),
                    )
                }
            }
        };
        let timeout = hd.heartbeat_timeout_millis.unwrap_or(0);
        let known = self
            .routes
            .borrow()
            .cluster_info()
            .broker_addr_table
            .contains_key(name);
        let out = self.routes.borrow_mut().register(
            &Registration {
                cluster,
                broker_name: name,
                broker_addr: addr,
                broker_id: id,
                ha_server_addr: &hd.ha_server_addr,
                timeout_ms: timeout,
                topics: body.as_ref(),
            },
            now_ms(),
        );
        if !known {
            log::info!("new broker registered: {name} ({addr}, id {id}) in cluster {cluster}");
        }
        let mut r = RemotingCommand::response_to(req, response::SUCCESS, None);
        if let Some(m) = out.master_addr {
            r.set_ext("masterAddr", m);
        }
        if let Some(h) = out.ha_server_addr {
            r.set_ext("haServerAddr", h);
        }
        if let Some(m) = self.kv.borrow().get("ORDER_TOPIC_CONFIG") {
            r.body = json_body(&KvTable { table: m });
        }
        r
    }

    fn expire(&self) {
        for addr in self.routes.borrow_mut().expire(now_ms()) {
            log::warn!("broker {addr} silent for too long (120 s by default): removed from routes");
        }
    }
}

impl Handler for NameServer {
    fn handle(
        self: Rc<Self>,
        req: RemotingCommand,
        _conn: Rc<Conn>,
    ) -> Pin<Box<dyn Future<Output = Option<RemotingCommand>>>> {
        let r = self.process(&req);
        Box::pin(async move { Some(r) })
    }
}

/// Runs the name server on the current glommio executor until `stop` resolves.
pub async fn serve(cfg: NamesrvConfig, stop: impl Future<Output = ()>) -> std::io::Result<()> {
    let addr = SocketAddr::new(cfg.bind, cfg.listen_port);
    let listener = glommio::net::TcpListener::bind(addr)?;
    log::info!("The Name Server boot success. serializeType=JSON, address {addr}");
    let ns = Rc::new(NameServer::default());
    let scanner = {
        let ns = ns.clone();
        let every = Duration::from_millis(cfg.scan_interval_ms.max(10));
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(every).await;
                ns.expire();
            }
        })
    };
    let accept = async {
        let mut id = 0u64;
        loop {
            match listener.accept().await {
                Ok(s) => {
                    id += 1;
                    glommio::spawn_local(serve_connection(s, id, ns.clone())).detach();
                }
                Err(e) => log::warn!("accept failed: {e}"),
            }
        }
    };
    futures_lite::future::or(accept, stop).await;
    drop(scanner);
    log::info!("name server stopped");
    Ok(())
}
