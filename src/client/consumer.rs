//! A push consumer in CLUSTERING mode (reference §10): heartbeats to the brokers of its
//! topics, allocates its queues with AllocateMessageQueueAveragely every 20 s and at once on
//! NOTIFY_CONSUMER_IDS_CHANGED, pulls each assigned queue with long polling on a thread of its
//! own, hands messages to the listener, and commits offsets every 5 s, when a queue is
//! released (synchronously, so the next owner starts after it) and at shutdown.
//!
//! Not yet: broadcasting, lite pull, other strategies, flow control, the retry topic.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::producer::MessageQueue;
use super::remoting::RemotingClient;
use crate::message::{msgid, properties, MessageRecord};
use crate::namesrv::route::TopicRouteData;
use crate::protocol::code::{request, response};
use crate::protocol::header::pull::{
    sys_flag, PullMessageRequestHeader, PullMessageResponseHeader,
};
use crate::protocol::{HeaderCodec, RemotingCommand};

/// A consumed message.
#[derive(Debug, Clone)]
pub struct MessageExt {
    pub queue: MessageQueue,
    pub queue_offset: i64,
    pub msg_id: String,
    pub record: MessageRecord,
}

impl MessageExt {
    pub fn body(&self) -> &Bytes {
        &self.record.body
    }
    pub fn property(&self, k: &str) -> Option<String> {
        properties::get(&self.record.properties, k).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

impl fmt::Display for MessageExt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.record.meta;
        write!(
            f,
            "MessageExt [brokerName={}, queueId={}, storeSize={}, queueOffset={}, sysFlag={}, \
             bornTimestamp={}, bornHost=/{}, storeTimestamp={}, storeHost=/{}, msgId={}, \
             commitLogOffset={}, bodyCRC={}, reconsumeTimes={}, preparedTransactionOffset={}, \
             toString()=Message{{topic='{}', flag={}, properties={{TAGS={}, KEYS={}, UNIQ_KEY={}}}, \
             body=[{} bytes]}}]",
            self.queue.broker_name,
            self.queue.queue_id,
            self.record.body.len(),
            self.queue_offset,
            m.sys_flag,
            m.born_timestamp,
            m.born_host,
            m.store_timestamp,
            m.store_host,
            self.msg_id,
            m.physical_offset,
            self.record.body_crc,
            m.reconsume_times,
            m.prepared_transaction_offset,
            self.queue.topic,
            m.flag,
            self.property(properties::TAGS).unwrap_or_default(),
            self.property(properties::KEYS).unwrap_or_default(),
            self.property(properties::UNIQ_KEY).unwrap_or_default(),
            self.record.body.len()
        )
    }
}

/// AllocateMessageQueueAveragely (reference §10.2): the contiguous block of `all` for client
/// `me` among `cids` (both sorted by the caller).
pub fn allocate_averagely<T: Clone>(all: &[T], cids: &[String], me: &str) -> Vec<T> {
    let Some(i) = cids.iter().position(|c| c == me) else {
        return Vec::new();
    };
    let (n, c) = (all.len(), cids.len());
    let m = n % c;
    let size = if n <= c {
        1
    } else if m > 0 && i < m {
        n / c + 1
    } else {
        n / c
    };
    let start = if m > 0 && i < m {
        i * size
    } else {
        i * size + m
    };
    let count = size.min(n.saturating_sub(start));
    all.iter().skip(start).take(count).cloned().collect()
}

type Listener = Arc<dyn Fn(&[MessageExt]) + Send + Sync>;

struct Worker {
    stop: Arc<AtomicBool>,
    offset: Arc<AtomicI64>,
    handle: JoinHandle<()>,
}

struct Inner {
    group: String,
    client_id: String,
    namesrv: Vec<String>,
    client: Arc<RemotingClient>,
    subs: BTreeMap<String, String>,
    listener: Listener,
    running: AtomicBool,
    workers: Mutex<HashMap<MessageQueue, Worker>>,
    brokers: Mutex<HashMap<String, String>>,
}

/// A clustering push consumer.
pub struct PushConsumer {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

fn route(inner: &Inner, topic: &str) -> Option<TopicRouteData> {
    inner
        .client
        .topic_route(&inner.namesrv, topic)
        .ok()
        .flatten()
}

impl PushConsumer {
    /// Starts consuming `subs` (topic → tag expression, `*` for all) as `group`.
    pub fn start(
        group: &str,
        namesrv: Option<&str>,
        subs: &[(&str, &str)],
        listener: impl Fn(&[MessageExt]) + Send + Sync + 'static,
    ) -> Result<PushConsumer, String> {
        let addrs = super::remoting::namesrv_addrs(namesrv);
        if addrs.is_empty() {
            return Err("no name server address: set NAMESRV_ADDR".into());
        }
        let (client, incoming) = RemotingClient::new();
        // Unique per consumer instance, also within one process (rebalance keys on it).
        static INSTANCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nonce = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::new(Inner {
            group: group.to_string(),
            client_id: format!("127.0.0.1@{}_{nonce}", std::process::id()),
            namesrv: addrs,
            client,
            subs: subs
                .iter()
                .map(|(t, e)| (t.to_string(), e.to_string()))
                .collect(),
            listener: Arc::new(listener),
            running: AtomicBool::new(true),
            workers: Mutex::new(HashMap::new()),
            brokers: Mutex::new(HashMap::new()),
        });
        let (rebalance_now, rebalance_rx) = flume::unbounded::<()>();
        let mut threads = Vec::new();
        let i = inner.clone();
        let kick = rebalance_now.clone();
        threads.push(std::thread::spawn(move || {
            let mut next = Instant::now();
            while i.running.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    // Until a broker of our topics is reachable (a new topic's route may not
                    // be on the name server yet), retry every second; then every 30 s.
                    let reached = heartbeat(&i);
                    let _ = kick.send(());
                    next = Instant::now() + Duration::from_secs(if reached { 30 } else { 1 });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        let i = inner.clone();
        threads.push(std::thread::spawn(move || {
            while i.running.load(Ordering::Relaxed) {
                // NOTIFY_CONSUMER_IDS_CHANGED from a broker, or the 20 s period.
                let notified = incoming.try_recv().is_ok();
                let kicked = rebalance_rx
                    .recv_timeout(Duration::from_millis(100))
                    .is_ok();
                if notified || kicked {
                    while incoming.try_recv().is_ok() {}
                    rebalance(&i);
                }
            }
        }));
        let i = inner.clone();
        threads.push(std::thread::spawn(move || {
            let mut t = Instant::now();
            while i.running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if t.elapsed() >= Duration::from_secs(5) {
                    commit_all(&i);
                    t = Instant::now();
                }
            }
        }));
        let k = rebalance_now;
        let i = inner.clone();
        threads.push(std::thread::spawn(move || {
            let mut t = Instant::now();
            while i.running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if t.elapsed() >= Duration::from_secs(20) {
                    let _ = k.send(());
                    t = Instant::now();
                }
            }
        }));
        Ok(PushConsumer { inner, threads })
    }

    /// Queues this consumer currently owns.
    pub fn assigned(&self) -> Vec<MessageQueue> {
        let mut v: Vec<_> = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Stops pulling, commits offsets and leaves the group.
    pub fn shutdown(self) {
        self.inner.running.store(false, Ordering::Relaxed);
        let workers: Vec<(MessageQueue, Worker)> = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (mq, w) in workers {
            w.stop.store(true, Ordering::Relaxed);
            let _ = w.handle.join();
            commit(&self.inner, &mq, w.offset.load(Ordering::Relaxed));
        }
        let brokers: Vec<String> = self
            .inner
            .brokers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for addr in brokers {
            let mut r = RemotingCommand::request(request::UNREGISTER_CLIENT, HeaderCodec::Json);
            r.set_ext("clientID", &self.inner.client_id);
            r.set_ext("consumerGroup", &self.inner.group);
            let _ = self.inner.client.invoke(&addr, r, Duration::from_secs(3));
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Sends HEART_BEAT to every broker of the subscribed topics; true if any was reached.
fn heartbeat(inner: &Inner) -> bool {
    let subs: Vec<serde_json::Value> = inner
        .subs
        .iter()
        .map(|(t, e)| serde_json::json!({"topic": t, "subString": e, "expressionType": "TAG", "subVersion": 0}))
        .collect();
    let body = serde_json::json!({
        "clientID": inner.client_id,
        "consumerDataSet": [{"groupName": inner.group, "consumeType": "CONSUME_PASSIVELY",
            "messageModel": "CLUSTERING", "consumeFromWhere": "CONSUME_FROM_LAST_OFFSET",
            "subscriptionDataSet": subs, "unitMode": false}],
        "producerDataSet": [],
    });
    let mut brokers = HashMap::new();
    for t in inner.subs.keys() {
        if let Some(r) = route(inner, t) {
            for bd in r.broker_datas {
                if let Some(a) = bd.broker_addrs.get(&0) {
                    brokers.insert(bd.broker_name.clone(), a.clone());
                }
            }
        }
    }
    let mut reached = false;
    for addr in brokers.values() {
        let mut r = RemotingCommand::request(request::HEART_BEAT, HeaderCodec::Json);
        r.body = Bytes::from(body.to_string());
        reached |= inner
            .client
            .invoke(addr, r, Duration::from_secs(3))
            .is_ok_and(|r| r.code == response::SUCCESS);
    }
    *inner.brokers.lock().unwrap_or_else(|e| e.into_inner()) = brokers;
    reached
}

fn rebalance(inner: &Arc<Inner>) {
    for topic in inner.subs.keys() {
        let Some(r) = route(inner, topic) else {
            continue;
        };
        let mut all: Vec<MessageQueue> = r
            .queue_datas
            .iter()
            .filter(|q| q.perm & 4 != 0)
            .flat_map(|q| {
                (0..q.read_queue_nums).map(move |i| MessageQueue {
                    topic: topic.clone(),
                    broker_name: q.broker_name.clone(),
                    queue_id: i,
                })
            })
            .collect();
        all.sort();
        let Some(addr) = r
            .broker_datas
            .iter()
            .find_map(|b| b.broker_addrs.get(&0).cloned())
        else {
            continue;
        };
        let mut q =
            RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP, HeaderCodec::Json);
        q.set_ext("consumerGroup", &inner.group);
        let Ok(resp) = inner.client.invoke(&addr, q, Duration::from_secs(3)) else {
            continue;
        };
        let ids: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
        let mut cids: Vec<String> = ids["consumerIdList"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        cids.sort();
        let mine = allocate_averagely(&all, &cids, &inner.client_id);
        let brokers: HashMap<String, String> = r
            .broker_datas
            .iter()
            .filter_map(|b| {
                b.broker_addrs
                    .get(&0)
                    .map(|a| (b.broker_name.clone(), a.clone()))
            })
            .collect();
        let mut workers = inner.workers.lock().unwrap_or_else(|e| e.into_inner());
        // Release queues no longer ours, committing their offsets first (fewer duplicates).
        let gone: Vec<MessageQueue> = workers
            .keys()
            .filter(|k| &k.topic == topic && !mine.contains(k))
            .cloned()
            .collect();
        for mq in gone {
            if let Some(w) = workers.remove(&mq) {
                w.stop.store(true, Ordering::Relaxed);
                let _ = w.handle.join();
                commit(inner, &mq, w.offset.load(Ordering::Relaxed));
            }
        }
        for mq in mine {
            if workers.contains_key(&mq) {
                continue;
            }
            let Some(addr) = brokers.get(&mq.broker_name).cloned() else {
                continue;
            };
            let start = start_offset(inner, &addr, &mq);
            let stop = Arc::new(AtomicBool::new(false));
            let offset = Arc::new(AtomicI64::new(start));
            let (i, s, o, m) = (inner.clone(), stop.clone(), offset.clone(), mq.clone());
            let handle = std::thread::spawn(move || pull_loop(&i, &addr, &m, &s, &o));
            workers.insert(
                mq,
                Worker {
                    stop,
                    offset,
                    handle,
                },
            );
        }
    }
}

/// The committed offset, else (first start) the queue's max offset (CONSUME_FROM_LAST_OFFSET)
/// — unless the queue still holds its first message, which upstream starts from 0.
fn start_offset(inner: &Inner, addr: &str, mq: &MessageQueue) -> i64 {
    let mut r = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET, HeaderCodec::Json);
    r.set_ext("consumerGroup", &inner.group);
    r.set_ext("topic", &mq.topic);
    r.set_ext("queueId", mq.queue_id);
    if let Ok(resp) = inner.client.invoke(addr, r, Duration::from_secs(3)) {
        if resp.code == response::SUCCESS {
            if let Some(o) = resp.ext("offset").and_then(|v| v.parse().ok()) {
                return o;
            }
        }
    }
    let mut r = RemotingCommand::request(request::GET_MAX_OFFSET, HeaderCodec::Json);
    r.set_ext("topic", &mq.topic);
    r.set_ext("queueId", mq.queue_id);
    inner
        .client
        .invoke(addr, r, Duration::from_secs(3))
        .ok()
        .and_then(|resp| resp.ext("offset").and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn pull_loop(inner: &Inner, addr: &str, mq: &MessageQueue, stop: &AtomicBool, offset: &AtomicI64) {
    while !stop.load(Ordering::Relaxed) && inner.running.load(Ordering::Relaxed) {
        let hdr = PullMessageRequestHeader {
            consumer_group: inner.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            queue_offset: offset.load(Ordering::Relaxed),
            max_msg_nums: 32,
            // Short holds so a released queue stops promptly.
            sys_flag: sys_flag::SUSPEND,
            commit_offset: 0,
            suspend_timeout_millis: 1000,
            subscription: None,
            sub_version: 0,
            expression_type: Some("TAG".into()),
        };
        let mut r = RemotingCommand::request(request::PULL_MESSAGE, HeaderCodec::Json);
        hdr.encode(&mut r);
        let Ok(resp) = inner.client.invoke(addr, r, Duration::from_secs(5)) else {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        let Ok(h) = PullMessageResponseHeader::decode(&resp) else {
            continue;
        };
        if resp.code == response::SUCCESS {
            let mut msgs = Vec::new();
            let mut b = resp.body.clone();
            while b.len() >= 4 {
                let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if n == 0 || n > b.len() {
                    break;
                }
                if let Ok(rec) = MessageRecord::decode(&b.slice(..n)) {
                    msgs.push(MessageExt {
                        queue: mq.clone(),
                        queue_offset: rec.meta.queue_offset,
                        msg_id: msgid::create_message_id(
                            rec.meta.store_host,
                            rec.meta.physical_offset,
                        ),
                        record: rec,
                    });
                }
                b = b.slice(n..);
            }
            if stop.load(Ordering::Relaxed) {
                // Released meanwhile: the next owner consumes these.
                break;
            }
            if !msgs.is_empty() {
                (inner.listener)(&msgs);
            }
        }
        if matches!(
            resp.code,
            response::SUCCESS | response::PULL_OFFSET_MOVED | response::PULL_RETRY_IMMEDIATELY
        ) {
            offset.store(h.next_begin_offset, Ordering::Relaxed);
        }
    }
}

fn commit(inner: &Inner, mq: &MessageQueue, offset: i64) {
    let addr = inner
        .brokers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&mq.broker_name)
        .cloned();
    let Some(addr) = addr else { return };
    let mut r = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET, HeaderCodec::Json);
    r.set_ext("consumerGroup", &inner.group);
    r.set_ext("topic", &mq.topic);
    r.set_ext("queueId", mq.queue_id);
    r.set_ext("commitOffset", offset);
    let _ = inner.client.invoke(&addr, r, Duration::from_secs(3));
}

fn commit_all(inner: &Inner) {
    let offs: Vec<(MessageQueue, i64)> = inner
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, w)| (k.clone(), w.offset.load(Ordering::Relaxed)))
        .collect();
    for (mq, o) in offs {
        commit(inner, &mq, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averagely_matches_the_reference_examples() {
        let q: Vec<u32> = (0..8).collect();
        let c: Vec<String> = ["c0", "c1", "c2"].iter().map(|s| s.to_string()).collect();
        assert_eq!(allocate_averagely(&q, &c, "c0"), vec![0, 1, 2]);
        assert_eq!(allocate_averagely(&q, &c, "c1"), vec![3, 4, 5]);
        assert_eq!(allocate_averagely(&q, &c, "c2"), vec![6, 7]);
        let two: Vec<u32> = vec![0, 1];
        assert_eq!(allocate_averagely(&two, &c, "c2"), Vec::<u32>::new());
        assert_eq!(allocate_averagely(&two, &c, "zz"), Vec::<u32>::new());
        let c2: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(allocate_averagely(&q, &c2, "b"), vec![4, 5, 6, 7]);
    }
}
