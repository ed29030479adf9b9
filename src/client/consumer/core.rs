//! A consumer group member's link to the cluster: routes, heartbeats, the member list,
//! queue offsets on the broker, and the offset store (the broker's in clustering mode, a
//! local JSON file in broadcasting mode).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::{ConsumeFromWhere, ConsumerOptions, MessageModel, TagFilter};
use crate::client::producer::MessageQueue;
use crate::client::remoting::{ClientError, RemotingClient};
use crate::protocol::code::{request, response};
use crate::protocol::{HeaderCodec, RemotingCommand};

const RPC_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The broadcasting offset file of `group` for the client `client_id` under `dir`
/// (upstream's layout: `<dir>/<client id>/<group>/offsets.json`).
pub fn offset_file(dir: &Path, client_id: &str, group: &str) -> PathBuf {
    dir.join(client_id).join(group).join("offsets.json")
}

/// Requests brokers send to the client (NOTIFY_CONSUMER_IDS_CHANGED), with the sender.
pub(crate) type Incoming = flume::Receiver<(String, RemotingCommand)>;

/// One subscription: topic and tag expression.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    pub expr: String,
    pub filter: TagFilter,
}

/// Shared by everything a consumer runs.
pub(crate) struct Core {
    pub group: String,
    pub client_id: String,
    pub namesrv: Vec<String>,
    pub client: Arc<RemotingClient>,
    pub opts: ConsumerOptions,
    /// `CONSUME_PASSIVELY` (push) or `CONSUME_ACTIVELY` (lite pull).
    pub consume_type: &'static str,
    pub subs: Mutex<BTreeMap<String, Arc<Sub>>>,
    /// Broker name → master address, from the routes of our topics.
    brokers: Mutex<HashMap<String, String>>,
    pub offsets: OffsetStore,
}

/// The address a route or connection would use to reach `addr` from here: the local end of a
/// UDP socket "connected" to it (no packet is sent). Falls back to loopback.
fn local_ip(addr: &str) -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(addr).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

impl Core {
    pub fn new(
        group: &str,
        namesrv: Option<&str>,
        opts: ConsumerOptions,
        consume_type: &'static str,
    ) -> Result<(Arc<Core>, Incoming), String> {
        if group.is_empty() {
            return Err("consumerGroup can not be empty".into());
        }
        let addrs = crate::client::remoting::namesrv_addrs(namesrv);
        if addrs.is_empty() {
            return Err("no name server address: set NAMESRV_ADDR".into());
        }
        static NONCE: AtomicU32 = AtomicU32::new(0);
        let instance = opts.instance_name.clone().unwrap_or_else(|| {
            format!(
                "{}#{}",
                std::process::id(),
                NONCE.fetch_add(1, Ordering::Relaxed)
            )
        });
        let client_id = format!("{}@{instance}", local_ip(&addrs[0]));
        let (client, incoming) = RemotingClient::new();
        let offsets = match opts.model {
            MessageModel::Clustering => OffsetStore::remote(),
            MessageModel::Broadcasting => {
                OffsetStore::local(offset_file(&opts.offset_store_dir, &client_id, group))?
            }
        };
        Ok((
            Arc::new(Core {
                group: group.to_string(),
                client_id,
                namesrv: addrs,
                client,
                opts,
                consume_type,
                subs: Mutex::new(BTreeMap::new()),
                brokers: Mutex::new(HashMap::new()),
                offsets,
            }),
            incoming,
        ))
    }

    pub fn subscribe(&self, topic: &str, expr: &str) {
        lock(&self.subs).insert(
            topic.to_string(),
            Arc::new(Sub {
                expr: expr.to_string(),
                filter: TagFilter::parse(expr),
            }),
        );
    }

    /// The subscription of `topic` (shared: read on every pull).
    pub fn sub(&self, topic: &str) -> Option<Arc<Sub>> {
        lock(&self.subs).get(topic).cloned()
    }

    pub fn broker_addr(&self, broker: &str) -> Option<String> {
        lock(&self.brokers).get(broker).cloned()
    }

    /// The readable queues of `topic`, sorted; also learns the brokers' addresses.
    pub fn topic_queues(&self, topic: &str) -> Option<Vec<MessageQueue>> {
        let r = self.client.topic_route(&self.namesrv, topic).ok()??;
        let mut brokers = lock(&self.brokers);
        for bd in &r.broker_datas {
            if let Some(a) = bd.broker_addrs.get(&0) {
                brokers.insert(bd.broker_name.clone(), a.clone());
            }
        }
        let mut all: Vec<MessageQueue> = r
            .queue_datas
            .iter()
            .filter(|q| q.perm & 4 != 0)
            .flat_map(|q| {
                (0..q.read_queue_nums).map(move |i| MessageQueue {
                    topic: topic.to_string(),
                    broker_name: q.broker_name.clone(),
                    queue_id: i,
                })
            })
            .collect();
        all.sort();
        Some(all)
    }

    /// HEART_BEAT to every broker of our topics; true if any answered.
    pub fn heartbeat(&self) -> bool {
        let topics: Vec<String> = lock(&self.subs).keys().cloned().collect();
        for t in &topics {
            self.topic_queues(t);
        }
        let subs: Vec<serde_json::Value> = lock(&self.subs)
            .iter()
            .map(|(t, s)| {
                serde_json::json!({"topic": t, "subString": s.expr, "expressionType": "TAG",
                    "subVersion": 0, "classFilterMode": false})
            })
            .collect();
        let from = self.opts.consume_from.wire_name();
        let body = serde_json::json!({
            "clientID": self.client_id,
            "consumerDataSet": [{"groupName": self.group, "consumeType": self.consume_type,
                "messageModel": self.opts.model.wire_name(), "consumeFromWhere": from,
                "subscriptionDataSet": subs, "unitMode": false}],
            "producerDataSet": [],
        })
        .to_string();
        let addrs: Vec<String> = lock(&self.brokers).values().cloned().collect();
        let mut reached = false;
        for addr in addrs {
            let mut r = RemotingCommand::request(request::HEART_BEAT, HeaderCodec::Json);
            r.body = Bytes::from(body.clone());
            reached |= self
                .client
                .invoke(&addr, r, RPC_TIMEOUT)
                .is_ok_and(|r| r.code == response::SUCCESS);
        }
        reached
    }

    /// UNREGISTER_CLIENT at every broker we know.
    pub fn unregister(&self) {
        let addrs: Vec<String> = lock(&self.brokers).values().cloned().collect();
        for addr in addrs {
            let mut r = RemotingCommand::request(request::UNREGISTER_CLIENT, HeaderCodec::Json);
            r.set_ext("clientID", &self.client_id);
            r.set_ext("consumerGroup", &self.group);
            let _ = self.client.invoke(&addr, r, RPC_TIMEOUT);
        }
    }

    /// Members of the group, sorted, as a broker of `topic` knows them.
    pub fn members(&self, topic_queues: &[MessageQueue]) -> Option<Vec<String>> {
        let addr = topic_queues
            .iter()
            .find_map(|q| self.broker_addr(&q.broker_name))?;
        let mut q =
            RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP, HeaderCodec::Json);
        q.set_ext("consumerGroup", &self.group);
        let resp = self.client.invoke(&addr, q, RPC_TIMEOUT).ok()?;
        if resp.code != response::SUCCESS {
            return None;
        }
        let ids: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
        let mut cids: Vec<String> = ids["consumerIdList"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        cids.sort();
        Some(cids)
    }

    /// The queues this member should own now: all of them when broadcasting, its share when
    /// clustering. `None` when the route or the member list is unavailable (keep what we have).
    pub fn allocation(&self, topic: &str) -> Option<Vec<MessageQueue>> {
        let all = self.topic_queues(topic)?;
        match self.opts.model {
            MessageModel::Broadcasting => Some(all),
            MessageModel::Clustering => {
                let cids = self.members(&all)?;
                Some(
                    self.opts
                        .allocate
                        .allocate(&all, &cids, &self.client_id, |q| q.to_string()),
                )
            }
        }
    }

    fn rpc(&self, mq: &MessageQueue, req: RemotingCommand) -> Result<RemotingCommand, ClientError> {
        let addr = self
            .broker_addr(&mq.broker_name)
            .ok_or_else(|| ClientError::Broker(format!("no address of {}", mq.broker_name)))?;
        self.client.invoke(&addr, req, RPC_TIMEOUT)
    }

    fn offset_call(&self, code: i32, mq: &MessageQueue, extra: &[(&str, i64)]) -> Option<i64> {
        let mut r = RemotingCommand::request(code, HeaderCodec::Json);
        r.set_ext("topic", &mq.topic);
        r.set_ext("queueId", mq.queue_id);
        for (k, v) in extra {
            r.set_ext(k, v);
        }
        let resp = self.rpc(mq, r).ok()?;
        (resp.code == response::SUCCESS)
            .then(|| resp.ext("offset").and_then(|v| v.parse().ok()))
            .flatten()
    }

    pub fn max_offset(&self, mq: &MessageQueue) -> Option<i64> {
        self.offset_call(request::GET_MAX_OFFSET, mq, &[])
    }

    pub fn min_offset(&self, mq: &MessageQueue) -> Option<i64> {
        self.offset_call(request::GET_MIN_OFFSET, mq, &[])
    }

    pub fn search_offset(&self, mq: &MessageQueue, timestamp: i64) -> Option<i64> {
        self.offset_call(
            request::SEARCH_OFFSET_BY_TIMESTAMP,
            mq,
            &[("timestamp", timestamp)],
        )
    }

    /// The group's committed offset of `mq` on the broker; `Ok(None)` when it has none.
    pub fn query_committed(&self, mq: &MessageQueue) -> Result<Option<i64>, ClientError> {
        let mut r = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET, HeaderCodec::Json);
        r.set_ext("consumerGroup", &self.group);
        r.set_ext("topic", &mq.topic);
        r.set_ext("queueId", mq.queue_id);
        let resp = self.rpc(mq, r)?;
        match resp.code {
            response::SUCCESS => Ok(resp.ext("offset").and_then(|v| v.parse().ok())),
            response::QUERY_NOT_FOUND => Ok(None),
            code => Err(ClientError::Broker(format!(
                "CODE: {code} DESC: {}",
                resp.remark.unwrap_or_default()
            ))),
        }
    }

    fn commit_remote(&self, mq: &MessageQueue, offset: i64) -> bool {
        let mut r = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET, HeaderCodec::Json);
        r.set_ext("consumerGroup", &self.group);
        r.set_ext("topic", &mq.topic);
        r.set_ext("queueId", mq.queue_id);
        r.set_ext("commitOffset", offset);
        self.rpc(mq, r).is_ok_and(|r| r.code == response::SUCCESS)
    }

    /// Where a newly owned queue starts: the stored offset, else `consume_from`.
    pub fn start_offset(&self, mq: &MessageQueue) -> Option<i64> {
        let stored = match &self.offsets.kind {
            Kind::Remote => self.query_committed(mq).ok()?,
            Kind::Local { .. } => self.offsets.get(mq),
        };
        if let Some(o) = stored.filter(|o| *o >= 0) {
            return Some(o);
        }
        match self.opts.consume_from {
            ConsumeFromWhere::LastOffset => self.max_offset(mq),
            ConsumeFromWhere::FirstOffset => self.min_offset(mq),
            ConsumeFromWhere::Timestamp(ts) => self.search_offset(mq, ts),
        }
    }

    /// Makes the stored offsets of `mqs` (or all, for `None`) durable: on the broker, or in
    /// the local file. Only offsets changed since their last persist are sent.
    pub fn persist(&self, mqs: Option<&[MessageQueue]>) {
        let dirty = self.offsets.take_dirty(mqs);
        if dirty.is_empty() {
            return;
        }
        match &self.offsets.kind {
            Kind::Remote => {
                for (mq, o) in dirty {
                    if !self.commit_remote(&mq, o) {
                        // Try again next time.
                        self.offsets.mark_dirty(&mq, o);
                    }
                }
            }
            Kind::Local { path } => {
                if let Err(e) = self.offsets.write_file(path) {
                    log::warn!("persist offsets to {}: {e}", path.display());
                    for (mq, o) in dirty {
                        self.offsets.mark_dirty(&mq, o);
                    }
                }
            }
        }
    }
}

enum Kind {
    Remote,
    Local { path: PathBuf },
}

/// Consumed offsets by queue, in memory, with what still has to be persisted.
pub(crate) struct OffsetStore {
    kind: Kind,
    /// offset, and whether it changed since it was last persisted.
    table: Mutex<BTreeMap<MessageQueue, (i64, bool)>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileEntry {
    topic: String,
    #[serde(rename = "brokerName")]
    broker_name: String,
    #[serde(rename = "queueId")]
    queue_id: u32,
    offset: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OffsetFile {
    #[serde(rename = "offsetTable")]
    offset_table: Vec<FileEntry>,
}

impl OffsetStore {
    fn remote() -> OffsetStore {
        OffsetStore {
            kind: Kind::Remote,
            table: Mutex::new(BTreeMap::new()),
        }
    }

    /// Loads `path` if it exists (else its `.bak`, written before each replace).
    fn local(path: PathBuf) -> Result<OffsetStore, String> {
        let mut table = BTreeMap::new();
        let bak = path.with_extension("json.bak");
        for p in [&path, &bak] {
            let text = match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("read offsets {}: {e}", p.display())),
            };
            match serde_json::from_str::<OffsetFile>(&text) {
                Ok(f) => {
                    for e in f.offset_table {
                        let mq = MessageQueue {
                            topic: e.topic,
                            broker_name: e.broker_name,
                            queue_id: e.queue_id,
                        };
                        table.insert(mq, (e.offset, false));
                    }
                    break;
                }
                Err(e) => log::warn!("ignoring bad offsets file {}: {e}", p.display()),
            }
        }
        Ok(OffsetStore {
            kind: Kind::Local { path },
            table: Mutex::new(table),
        })
    }

    pub fn get(&self, mq: &MessageQueue) -> Option<i64> {
        lock(&self.table).get(mq).map(|e| e.0)
    }

    /// Records a consumed offset; with `increase_only`, never moves it back.
    pub fn update(&self, mq: &MessageQueue, offset: i64, increase_only: bool) {
        let mut t = lock(&self.table);
        let e = t.entry(mq.clone()).or_insert((-1, false));
        if !increase_only || offset > e.0 {
            *e = (offset, e.1 || offset != e.0);
        }
    }

    /// Forgets a queue this member no longer owns (clustering; the file keeps all).
    pub fn remove(&self, mq: &MessageQueue) {
        if matches!(self.kind, Kind::Remote) {
            lock(&self.table).remove(mq);
        }
    }

    pub fn is_dirty(&self, mq: &MessageQueue) -> bool {
        lock(&self.table).get(mq).is_some_and(|e| e.1)
    }

    fn take_dirty(&self, mqs: Option<&[MessageQueue]>) -> Vec<(MessageQueue, i64)> {
        let mut t = lock(&self.table);
        let mut out = Vec::new();
        for (mq, e) in t.iter_mut() {
            if e.1 && e.0 >= 0 && mqs.map_or(true, |m| m.contains(mq)) {
                e.1 = false;
                out.push((mq.clone(), e.0));
            }
        }
        out
    }

    fn mark_dirty(&self, mq: &MessageQueue, offset: i64) {
        if let Some(e) = lock(&self.table).get_mut(mq) {
            if e.0 == offset {
                e.1 = true;
            }
        }
    }

    /// Replaces the file atomically: the old one is kept as `.bak`, the new one written to
    /// a temporary name, synced and renamed over.
    fn write_file(&self, path: &Path) -> std::io::Result<()> {
        let f = OffsetFile {
            offset_table: lock(&self.table)
                .iter()
                .filter(|(_, e)| e.0 >= 0)
                .map(|(mq, e)| FileEntry {
                    topic: mq.topic.clone(),
                    broker_name: mq.broker_name.clone(),
                    queue_id: mq.queue_id,
                    offset: e.0,
                })
                .collect(),
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&f).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_data()?;
        }
        if path.exists() {
            let _ = std::fs::copy(path, path.with_extension("json.bak"));
        }
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mq(q: u32) -> MessageQueue {
        MessageQueue {
            topic: "T".into(),
            broker_name: "b".into(),
            queue_id: q,
        }
    }

    #[test]
    fn local_offsets_survive_a_reload_and_only_dirty_ones_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = offset_file(dir.path(), "127.0.0.1@x", "G");
        let s = OffsetStore::local(path.clone()).unwrap();
        s.update(&mq(0), 5, true);
        s.update(&mq(1), 9, true);
        s.update(&mq(1), 3, true);
        assert_eq!(s.get(&mq(1)), Some(9), "increase only");
        assert_eq!(s.take_dirty(None).len(), 2);
        assert!(s.take_dirty(None).is_empty());
        s.write_file(&path).unwrap();
        s.update(&mq(0), 6, false);
        s.write_file(&path).unwrap();
        let r = OffsetStore::local(path.clone()).unwrap();
        assert_eq!((r.get(&mq(0)), r.get(&mq(1))), (Some(6), Some(9)));
        // A torn file falls back to the backup.
        std::fs::write(&path, "{\"offsetTab").unwrap();
        let r = OffsetStore::local(path).unwrap();
        assert_eq!(r.get(&mq(0)), Some(5));
    }
}
