//! The broker: the store's shards each accept connections on `listenPort` (SO_REUSEPORT);
//! requests for a queue another shard owns cross by the store's [`Router`]. Broker-wide
//! state (topics, consumer offsets, consumer groups) is shared by all shards behind short
//! mutex sections that never span an await.
//!
//! Request code → handler: [`processor`] (one `match` in `processor::process`).

pub mod config;
pub mod processor;
pub mod stats;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde::Deserialize;

use crate::namesrv::route::{DataVersion, RegisterBrokerBody, TopicConfig, TopicConfigWrapper};
use crate::protocol::code::request;
use crate::protocol::server::Conn;
use crate::protocol::{frame, HeaderCodec, RemotingCommand};
use crate::store::{Router, ShardService, Store};
pub use config::BrokerConfig;

/// `TBW102`, the auto-create template topic.
pub const AUTO_CREATE_TOPIC: &str = "TBW102";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    (crate::store::config::system_clock())()
}

/// Writes `text` to `path`, keeping the previous content in `<path>.bak` (upstream
/// `MixAll.string2File`). Blocking: called from the persister thread or at shutdown.
fn write_config(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if path.exists() {
        let _ = std::fs::copy(path, path.with_extension("json.bak"));
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Reads a config file, falling back to its `.bak`.
fn read_config(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .or_else(|| std::fs::read_to_string(path.with_extension("json.bak")).ok())
}

/// TopicConfigManager: `config/topics.json`.
pub struct Topics {
    /// A hash map: the send path looks a topic up per message, and a B-tree of 10,000 names
    /// cost ~20 string compares per lookup, each a cache miss with many active topics.
    /// Sorted (as upstream writes `topics.json`) only when written out.
    table: Mutex<(HashMap<String, TopicConfig>, DataVersion)>,
    path: PathBuf,
}

impl Topics {
    fn load(path: PathBuf, cfg: &BrokerConfig) -> Topics {
        let mut table = HashMap::new();
        let mut version = DataVersion::default();
        if let Some(text) = read_config(&path) {
            match crate::protocol::json::parse::<TopicConfigWrapper>(text.as_bytes()) {
                Ok(w) => {
                    table = w.topic_config_table.into_iter().collect();
                    version = w.data_version;
                }
                Err(e) => log::error!("{}: {e}; starting with no topics", path.display()),
            }
        }
        if cfg.auto_create_topic_enable {
            table
                .entry(AUTO_CREATE_TOPIC.to_string())
                .or_insert_with(|| TopicConfig {
                    topic_name: AUTO_CREATE_TOPIC.into(),
                    read_queue_nums: cfg.default_topic_queue_nums,
                    write_queue_nums: cfg.default_topic_queue_nums,
                    perm: 7,
                    ..Default::default()
                });
        }
        version.timestamp = now_ms();
        Topics {
            table: Mutex::new((table, version)),
            path,
        }
    }

    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        lock(&self.table).0.get(topic).cloned()
    }

    /// Whether the topic exists (without cloning its config: the pull path asks this).
    pub fn contains(&self, topic: &str) -> bool {
        lock(&self.table).0.contains_key(topic)
    }

    /// (writeQueueNums, perm) of a topic (without cloning its config: the send path asks).
    pub fn write_view(&self, topic: &str) -> Option<(u32, u32)> {
        lock(&self.table)
            .0
            .get(topic)
            .map(|t| (t.write_queue_nums, t.perm))
    }

    /// Creates or replaces a topic; returns true when something changed.
    pub fn put(&self, tc: TopicConfig) -> bool {
        let mut t = lock(&self.table);
        if t.0.get(&tc.topic_name) == Some(&tc) {
            return false;
        }
        t.0.insert(tc.topic_name.clone(), tc);
        t.1.counter += 1;
        t.1.timestamp = now_ms();
        true
    }

    pub fn remove(&self, topic: &str) -> bool {
        let mut t = lock(&self.table);
        let gone = t.0.remove(topic).is_some();
        if gone {
            t.1.counter += 1;
        }
        gone
    }

    pub fn wrapper(&self) -> TopicConfigWrapper {
        let t = lock(&self.table);
        TopicConfigWrapper {
            topic_config_table: t.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            data_version: t.1.clone(),
        }
    }

    fn persist(&self) {
        let text = serde_json::to_string_pretty(&self.wrapper()).unwrap_or_default();
        if let Err(e) = write_config(&self.path, &text) {
            log::error!("writing {}: {e}", self.path.display());
        }
    }
}

/// ConsumerOffsetManager: `config/consumerOffset.json`, keyed `topic@group`.
pub struct Offsets {
    table: Mutex<BTreeMap<String, BTreeMap<u32, i64>>>,
    path: PathBuf,
}

#[derive(Deserialize)]
struct OffsetFile {
    #[serde(rename = "offsetTable", default)]
    offset_table: BTreeMap<String, BTreeMap<u32, i64>>,
}

impl Offsets {
    fn load(path: PathBuf) -> Offsets {
        let table = read_config(&path)
            .and_then(
                |t| match crate::protocol::json::parse::<OffsetFile>(t.as_bytes()) {
                    Ok(f) => Some(f.offset_table),
                    Err(e) => {
                        log::error!("{}: {e}; starting with no offsets", path.display());
                        None
                    }
                },
            )
            .unwrap_or_default();
        Offsets {
            table: Mutex::new(table),
            path,
        }
    }

    pub fn commit(&self, group: &str, topic: &str, queue_id: u32, offset: i64) {
        lock(&self.table)
            .entry(format!("{topic}@{group}"))
            .or_default()
            .insert(queue_id, offset);
    }

    pub fn query(&self, group: &str, topic: &str, queue_id: u32) -> Option<i64> {
        lock(&self.table)
            .get(&format!("{topic}@{group}"))
            .and_then(|m| m.get(&queue_id).copied())
    }

    /// The file's text in fastjson's shape: queue ids are unquoted integer keys.
    pub fn to_json(&self) -> String {
        let t = lock(&self.table);
        let mut s = String::from("{\n\t\"offsetTable\":{");
        for (i, (k, m)) in t.iter().enumerate() {
            s.push_str(if i == 0 { "\n\t\t" } else { ",\n\t\t" });
            s.push_str(&serde_json::to_string(k).unwrap_or_default());
            s.push_str(":{");
            let parts: Vec<String> = m.iter().map(|(q, o)| format!("{q}:{o}")).collect();
            s.push_str(&parts.join(","));
            s.push('}');
        }
        s.push_str("\n\t}\n}");
        s
    }

    fn persist(&self) {
        if let Err(e) = write_config(&self.path, &self.to_json()) {
            log::error!("writing {}: {e}", self.path.display());
        }
    }
}

/// `SubscriptionGroupConfig` (reference §7.6), with upstream's defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionGroupConfig {
    pub group_name: String,
    pub consume_enable: bool,
    pub consume_from_min_enable: bool,
    pub consume_broadcast_enable: bool,
    pub consume_message_orderly: bool,
    pub retry_queue_nums: u32,
    pub retry_max_times: u32,
    pub broker_id: i64,
    pub which_broker_when_consume_slowly: i64,
    pub notify_consumer_ids_changed_enable: bool,
    pub group_sys_flag: i32,
    pub consume_timeout_minute: u32,
    pub attributes: BTreeMap<String, String>,
}

impl Default for SubscriptionGroupConfig {
    fn default() -> Self {
        SubscriptionGroupConfig {
            group_name: String::new(),
            consume_enable: true,
            consume_from_min_enable: true,
            consume_broadcast_enable: true,
            consume_message_orderly: false,
            retry_queue_nums: 1,
            retry_max_times: 16,
            broker_id: 0,
            which_broker_when_consume_slowly: 1,
            notify_consumer_ids_changed_enable: true,
            group_sys_flag: 0,
            consume_timeout_minute: 15,
            attributes: BTreeMap::new(),
        }
    }
}

#[derive(serde::Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SubscriptionGroupFile {
    subscription_group_table: BTreeMap<String, SubscriptionGroupConfig>,
    forbidden_table: BTreeMap<String, BTreeMap<String, i32>>,
    data_version: DataVersion,
}

/// SubscriptionGroupManager: `config/subscriptionGroup.json`; groups are created on their
/// first heartbeat (`autoCreateSubscriptionGroup`).
pub struct SubscriptionGroups {
    table: Mutex<SubscriptionGroupFile>,
    path: PathBuf,
}

impl SubscriptionGroups {
    fn load(path: PathBuf) -> SubscriptionGroups {
        let table = read_config(&path)
            .and_then(|t| match crate::protocol::json::parse(t.as_bytes()) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::error!(
                        "{}: {e}; starting with no subscription groups",
                        path.display()
                    );
                    None
                }
            })
            .unwrap_or_default();
        SubscriptionGroups {
            table: Mutex::new(table),
            path,
        }
    }

    /// The group's config, created with the defaults if new.
    pub fn get_or_create(&self, group: &str) -> SubscriptionGroupConfig {
        let mut t = lock(&self.table);
        let created = !t.subscription_group_table.contains_key(group);
        let c = t
            .subscription_group_table
            .entry(group.to_string())
            .or_insert_with(|| SubscriptionGroupConfig {
                group_name: group.to_string(),
                ..Default::default()
            })
            .clone();
        if created {
            t.data_version.counter += 1;
            t.data_version.timestamp = now_ms();
        }
        c
    }

    fn persist(&self) {
        let text = serde_json::to_string_pretty(&*lock(&self.table)).unwrap_or_default();
        if let Err(e) = write_config(&self.path, &text) {
            log::error!("writing {}: {e}", self.path.display());
        }
    }
}

/// One subscription of a consumer group (from HEART_BEAT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub sub_string: String,
    /// Tag hash codes; `None` for `*`.
    pub codes: Option<Vec<i64>>,
}

struct Client {
    shard: usize,
    conn: u64,
    last_seen: Instant,
}

#[derive(Default)]
struct Group {
    clients: BTreeMap<String, Client>,
    subs: BTreeMap<String, Subscription>,
}

/// ConsumerManager: group members (by client id and connection) and subscriptions.
#[derive(Default)]
pub struct Consumers {
    groups: Mutex<HashMap<String, Group>>,
}

impl Consumers {
    /// Records a heartbeat; returns the group's other members' (shard, conn) to notify when
    /// membership or subscriptions changed.
    pub fn heartbeat(
        &self,
        group: &str,
        client_id: &str,
        shard: usize,
        conn: u64,
        subs: BTreeMap<String, Subscription>,
    ) -> Vec<(usize, u64)> {
        let mut g = lock(&self.groups);
        let grp = g.entry(group.to_string()).or_default();
        let new_member = !grp.clients.contains_key(client_id)
            || grp.clients.get(client_id).map(|c| c.conn) != Some(conn);
        let subs_changed = !subs.is_empty() && grp.subs != subs;
        grp.clients.insert(
            client_id.to_string(),
            Client {
                shard,
                conn,
                last_seen: Instant::now(),
            },
        );
        if !subs.is_empty() {
            grp.subs = subs;
        }
        if new_member || subs_changed {
            grp.clients
                .iter()
                .filter(|(id, _)| id.as_str() != client_id)
                .map(|(_, c)| (c.shard, c.conn))
                .collect()
        } else {
            Vec::new()
        }
    }

    /// Removes a client (UNREGISTER_CLIENT, closed connection); returns (group, members to
    /// notify) for each group it left.
    pub fn remove(&self, pred: impl Fn(&str, u64) -> bool) -> Vec<(String, Vec<(usize, u64)>)> {
        let mut out = Vec::new();
        let mut g = lock(&self.groups);
        for (name, grp) in g.iter_mut() {
            let before = grp.clients.len();
            grp.clients.retain(|id, c| !pred(id, c.conn));
            if grp.clients.len() != before {
                out.push((
                    name.clone(),
                    grp.clients.values().map(|c| (c.shard, c.conn)).collect(),
                ));
            }
        }
        out
    }

    pub fn client_ids(&self, group: &str) -> Vec<String> {
        lock(&self.groups)
            .get(group)
            .map(|g| g.clients.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Topics a group subscribes to.
    pub fn topics_of(&self, group: &str) -> Vec<String> {
        lock(&self.groups)
            .get(group)
            .map(|g| g.subs.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn subscription(&self, group: &str, topic: &str) -> Option<Subscription> {
        lock(&self.groups)
            .get(group)
            .and_then(|g| g.subs.get(topic).cloned())
    }

    /// Drops clients silent for longer than `channelExpiredTimeout` (120 s).
    fn expire(&self, max_silence: Duration) -> Vec<(String, Vec<(usize, u64)>)> {
        let mut out = Vec::new();
        let mut g = lock(&self.groups);
        for (name, grp) in g.iter_mut() {
            let before = grp.clients.len();
            grp.clients
                .retain(|_, c| c.last_seen.elapsed() < max_silence);
            if grp.clients.len() != before {
                out.push((
                    name.clone(),
                    grp.clients.values().map(|c| (c.shard, c.conn)).collect(),
                ));
            }
        }
        out
    }
}

/// State shared by every shard of the broker.
pub struct Broker {
    pub cfg: BrokerConfig,
    pub topics: Topics,
    pub offsets: Offsets,
    pub groups: SubscriptionGroups,
    pub consumers: Consumers,
    /// Set when topics changed: the registration task re-registers at once.
    topics_dirty: std::sync::atomic::AtomicBool,
    /// Wakes the persister to write topics.json at once.
    persist_now: flume::Sender<()>,
}

thread_local! {
    /// The connections of this shard, by id (for broker → client requests).
    static CONNS: RefCell<HashMap<u64, Rc<Conn>>> = RefCell::new(HashMap::new());
}

impl Broker {
    /// NOTIFY_CONSUMER_IDS_CHANGED (oneway) to each (shard, connection).
    pub async fn notify_ids_changed(router: &Router, group: &str, targets: Vec<(usize, u64)>) {
        for (shard, conn) in targets {
            let Some(id) = crate::store::ShardId::new(shard) else {
                continue;
            };
            let group = group.to_string();
            let _ = router
                .on_shard(id, move |_| async move {
                    CONNS.with(|c| {
                        if let Some(c) = c.borrow().get(&conn) {
                            let mut r = RemotingCommand::request(
                                request::NOTIFY_CONSUMER_IDS_CHANGED,
                                HeaderCodec::Json,
                            );
                            r.flag = crate::protocol::command::FLAG_ONEWAY;
                            r.set_ext("consumerGroup", &group);
                            c.send(r);
                        }
                    });
                    Ok(())
                })
                .await;
        }
    }

    fn register_body(&self) -> Vec<u8> {
        serde_json::to_vec(&RegisterBrokerBody {
            topic_config_serialize_wrapper: self.topics.wrapper(),
            filter_server_list: Vec::new(),
        })
        .unwrap_or_default()
    }

    fn register_request(&self, code: i32) -> RemotingCommand {
        let mut r = RemotingCommand::request(code, HeaderCodec::Json);
        let register = code == request::REGISTER_BROKER;
        let body = if register {
            self.register_body()
        } else {
            Vec::new()
        };
        crate::protocol::header::route::RegisterBrokerRequestHeader {
            broker_name: self.cfg.broker_name.clone(),
            broker_addr: self.cfg.broker_addr(),
            cluster_name: self.cfg.cluster_name.clone(),
            ha_server_addr: format!("{}:{}", self.cfg.broker_ip1, self.cfg.listen_port + 1),
            broker_id: self.cfg.broker_id,
            heartbeat_timeout_millis: None,
            compressed: false,
            body_crc32: crate::message::body_crc(&body) as i64,
        }
        .encode(&mut r, register);
        r.body = body.into();
        r
    }

    /// Registers with every name server (REGISTER_BROKER). The body lists every topic's
    /// config (1.6 MB with 10,000 topics), so it is built once, on a blocking thread:
    /// building it on the shard stalled the shard's requests for 5-17 ms each time.
    pub async fn register_all(self: &Arc<Self>) {
        let me = self.clone();
        let req = glommio::executor()
            .spawn_blocking(move || me.register_request(request::REGISTER_BROKER))
            .await;
        for addr in &self.cfg.namesrv_addrs {
            match call(addr, req.clone()).await {
                Ok(r) if r.code == 0 => log::debug!("registered with name server {addr}"),
                Ok(r) => log::warn!("name server {addr} refused registration: {:?}", r.remark),
                Err(e) => log::warn!("cannot register with name server {addr}: {e}"),
            }
        }
    }

    /// Unregisters from every name server (at shutdown). Blocking; plain thread.
    pub fn unregister_all_blocking(&self) {
        for addr in &self.cfg.namesrv_addrs {
            let req = self.register_request(request::UNREGISTER_BROKER);
            let res = std::net::TcpStream::connect(addr).and_then(|mut s| {
                use std::io::Write;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut out = BytesMut::new();
                frame::encode(&req, &mut out);
                s.write_all(&out)
            });
            if let Err(e) = res {
                log::warn!("unregistering from {addr}: {e}");
            }
        }
    }

    /// Writes topics.json and consumerOffset.json. Blocking; plain thread.
    pub fn persist(&self) {
        self.topics.persist();
        self.offsets.persist();
        self.groups.persist();
    }

    pub(crate) fn mark_topics_changed(&self) {
        self.topics_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.persist_now.try_send(());
    }

    /// Topics with queues in the store but no config (created just before a crash, before
    /// topics.json was written) get one back, so their messages stay consumable.
    fn adopt_stored_topics(&self, store: &Store) {
        let mut found: BTreeMap<String, u32> = BTreeMap::new();
        for i in 0..store.shard_count() {
            let Some(id) = crate::store::ShardId::new(i) else {
                continue;
            };
            let qs = futures_lite::future::block_on(
                store.on_shard(id, |s| async move { Ok(s.queues()) }),
            );
            for (t, q, _, _) in qs.unwrap_or_default() {
                let n = found.entry(t).or_default();
                *n = (*n).max(q + 1);
            }
        }
        for (topic, n) in found {
            let known = self
                .topics
                .get(&topic)
                .map(|t| t.write_queue_nums)
                .unwrap_or(0);
            if known < n {
                log::warn!(
                    "topic {topic} has {n} queue(s) in the store but no config: restoring it"
                );
                self.topics.put(TopicConfig {
                    topic_name: topic.clone(),
                    read_queue_nums: n,
                    write_queue_nums: n,
                    ..Default::default()
                });
                self.mark_topics_changed();
            }
        }
    }
}

/// Sends one request to `addr` and reads its response (a short-lived connection).
pub async fn call(addr: &str, req: RemotingCommand) -> std::io::Result<RemotingCommand> {
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let fut = async {
        let mut s = glommio::net::TcpStream::connect(sa)
            .await
            .map_err(std::io::Error::from)?;
        let mut out = BytesMut::new();
        frame::encode(&req, &mut out);
        s.write_all(&out).await?;
        let mut buf = BytesMut::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if let Some(c) = frame::decode(&mut buf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?
            {
                return Ok::<RemotingCommand, std::io::Error>(c);
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    glommio::timer::timeout(Duration::from_secs(5), async {
        fut.await.map_err(glommio::GlommioError::<()>::IoError)
    })
    .await
    .map_err(std::io::Error::from)
}

/// A running broker: the store with the broker's service on every shard.
pub struct Running {
    pub broker: Arc<Broker>,
    pub store: Store,
    stop_persister: flume::Sender<()>,
    persister: Option<std::thread::JoinHandle<()>>,
}

/// Starts the broker (call from a plain thread).
pub fn start(mut cfg: BrokerConfig) -> Result<Running, String> {
    // Resolve name-server host names once, here on a plain thread (an executor must not
    // block on DNS); `-n localhost:9876` is what the seed runs.
    cfg.namesrv_addrs = cfg
        .namesrv_addrs
        .iter()
        .map(|a| {
            use std::net::ToSocketAddrs;
            a.to_socket_addrs()
                .ok()
                .and_then(|mut it| it.find(|s| s.is_ipv4()))
                .map(|s| s.to_string())
                .ok_or_else(|| format!("cannot resolve name server address {a:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    crate::protocol::server::ensure_port_free(std::net::SocketAddr::new(
        std::net::IpAddr::from([0, 0, 0, 0]),
        cfg.listen_port,
    ))
    .map_err(|e| e.to_string())?;
    let mut store_cfg = cfg.store.clone();
    store_cfg.store_host = std::net::SocketAddr::new(cfg.broker_ip1, cfg.listen_port);
    let config_dir = store_cfg.root.join("config");
    let (persist_tx, persist_rx) = flume::bounded::<()>(1);
    let broker = Arc::new(Broker {
        persist_now: persist_tx,
        topics: Topics::load(config_dir.join("topics.json"), &cfg),
        offsets: Offsets::load(config_dir.join("consumerOffset.json")),
        groups: SubscriptionGroups::load(config_dir.join("subscriptionGroup.json")),
        consumers: Consumers::default(),
        topics_dirty: std::sync::atomic::AtomicBool::new(false),
        cfg,
    });
    let b = broker.clone();
    let service: ShardService = Arc::new(move |shard, router| {
        let b = b.clone();
        Box::pin(async move { processor::serve_shard(b, shard, router).await })
    });
    let store = Store::open_with_service(store_cfg, Some(service)).map_err(|e| e.to_string())?;
    broker.adopt_stored_topics(&store);
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let pb = broker.clone();
    let persister = std::thread::Builder::new()
        .name("persist".into())
        .spawn(move || {
            let every = Duration::from_millis(pb.cfg.flush_consumer_offset_interval_ms.max(100));
            let mut next = Instant::now() + every;
            enum Ev {
                Stop,
                TopicsChanged,
                Tick,
            }
            loop {
                let left = next.saturating_duration_since(Instant::now());
                let ev = flume::Selector::new()
                    .recv(&stop_rx, |_| Ev::Stop)
                    .recv(&persist_rx, |_| Ev::TopicsChanged)
                    .wait_timeout(left)
                    .unwrap_or(Ev::Tick);
                match ev {
                    Ev::Stop => return,
                    // Upstream persists topics.json as soon as a topic is created.
                    Ev::TopicsChanged => pb.topics.persist(),
                    Ev::Tick => {
                        pb.persist();
                        next = Instant::now() + every;
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    broker.persist();
    Ok(Running {
        broker,
        store,
        stop_persister: stop_tx,
        persister: Some(persister),
    })
}

impl Running {
    /// Clean stop: unregister, flush the store, save offsets and topics.
    pub fn shutdown(mut self) -> Result<(), String> {
        self.broker.unregister_all_blocking();
        let _ = self.stop_persister.send(());
        if let Some(p) = self.persister.take() {
            let _ = p.join();
        }
        let res = self.store.shutdown().map_err(|e| e.to_string());
        self.broker.persist();
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_consumers_expire_and_their_group_is_told() {
        let c = Consumers::default();
        let subs = BTreeMap::new();
        assert!(c.heartbeat("G", "a", 0, 1, subs.clone()).is_empty());
        // b joins: a is to be notified.
        assert_eq!(c.heartbeat("G", "b", 1, 2, subs.clone()), vec![(0, 1)]);
        assert!(
            c.expire(Duration::from_secs(120)).is_empty(),
            "nobody is silent yet"
        );
        std::thread::sleep(Duration::from_millis(20));
        c.heartbeat("G", "b", 1, 2, subs);
        let gone = c.expire(Duration::from_millis(10));
        assert_eq!(
            gone,
            vec![("G".to_string(), vec![(1, 2)])],
            "a expired; b is told"
        );
        assert_eq!(c.client_ids("G"), vec!["b".to_string()]);
    }
}
