//! A producer following the RocketMQ client contract (reference §10 and §8.1): routes from the
//! name servers (falling back to TBW102 so the broker auto-creates a topic, as the Java client
//! does), round-robin queue selection that skips a broker that just failed, retries on another
//! broker (`retryTimesWhenSendFailed` = 2), a send timeout (3 s) and the client `UNIQ_KEY`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::remoting::{ClientError, RemotingClient};
use crate::message::batch::BatchItem;
use crate::message::properties;
use crate::namesrv::route::TopicRouteData;
use crate::protocol::code::{request, response};
use crate::protocol::header::send::{SendMessageRequestHeader, SendMessageResponseHeader};
use crate::protocol::{HeaderCodec, RemotingCommand};

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub topic: String,
    pub tags: Option<String>,
    pub keys: Vec<String>,
    pub body: Bytes,
    pub flag: i32,
    pub user_properties: Vec<(String, String)>,
}

impl Message {
    pub fn new(topic: &str, tags: &str, body: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.to_string(),
            tags: (!tags.is_empty()).then(|| tags.to_string()),
            body: body.into(),
            ..Default::default()
        }
    }
}

/// A queue of a topic on a broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageQueue {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
}

impl fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MessageQueue [topic={}, brokerName={}, queueId={}]",
            self.topic, self.broker_name, self.queue_id
        )
    }
}

/// `SendStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    SendOk,
    FlushDiskTimeout,
    FlushSlaveTimeout,
    SlaveNotAvailable,
}

impl fmt::Display for SendStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendStatus::SendOk => "SEND_OK",
            SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
            SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
            SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
        })
    }
}

/// The result of a send, printed as upstream's `SendResult.toString()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub status: SendStatus,
    /// The client-side `UNIQ_KEY`.
    pub msg_id: String,
    /// The broker's offset msgId.
    pub offset_msg_id: String,
    pub queue: MessageQueue,
    pub queue_offset: i64,
}

impl fmt::Display for SendResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SendResult [sendStatus={}, msgId={}, offsetMsgId={}, messageQueue={}, queueOffset={}]",
            self.status, self.msg_id, self.offset_msg_id, self.queue, self.queue_offset
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("no name server address: set NAMESRV_ADDR or pass one")]
    NoNameServer,
    #[error("no route info of this topic: {0}")]
    NoRoute(String),
    #[error("{0}")]
    Remote(#[from] ClientError),
    #[error("CODE: {code}  DESC: {remark}")]
    Broker { code: i32, remark: String },
    #[error("bad batch: {0}")]
    Batch(String),
    #[error("send failed after {tries} tries: {last}")]
    Exhausted { tries: u32, last: String },
}

/// Generator of client message ids (reference §6.2): ip, pid, a per-process hash, ms since
/// the start of the month, a counter; uppercase hex.
struct UniqIds {
    prefix: String,
    month_start_ms: i64,
    counter: AtomicU16,
}

impl UniqIds {
    fn new() -> UniqIds {
        let mut raw = Vec::with_capacity(10);
        raw.extend_from_slice(&[127, 0, 0, 1]);
        raw.extend_from_slice(&(std::process::id() as u16).to_be_bytes());
        // Stands in for Java's classloader hash: stable per process.
        let seed = (std::process::id() as i32).wrapping_mul(0x9E37_79B9_u32 as i32);
        raw.extend_from_slice(&seed.to_be_bytes());
        let now = now_ms();
        let (y, m, ..) = crate::store::index::local_time(now);
        let month_start_ms = month_start(y, m, now);
        UniqIds {
            prefix: raw.iter().map(|b| format!("{b:02X}")).collect(),
            month_start_ms,
            counter: AtomicU16::new(0),
        }
    }

    fn next(&self) -> String {
        let since = (now_ms() - self.month_start_ms).clamp(0, i32::MAX as i64) as i32;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}{:08X}{:04X}", self.prefix, since, n)
    }
}

/// Local midnight of the first day of the month containing `now` (ms).
fn month_start(_y: i32, _m: u32, now: i64) -> i64 {
    let (_, _, d, h, mi, s) = crate::store::index::local_time(now);
    let into_month = ((d as i64 - 1) * 86_400 + h as i64 * 3600 + mi as i64 * 60 + s as i64) * 1000
        + now.rem_euclid(1000);
    now - into_month
}

fn now_ms() -> i64 {
    (crate::store::config::system_clock())()
}

struct PublishInfo {
    queues: Vec<MessageQueue>,
    brokers: HashMap<String, String>,
    fetched: Instant,
}

/// Upstream's MQFaultStrategy table: a send that took at least `LATENCY_MAX[i]` ms keeps its
/// broker out of selection for `NOT_AVAILABLE_MS[i]` ms. A failed send counts as 30 s.
const LATENCY_MAX: [u64; 7] = [50, 100, 550, 1000, 2000, 3000, 15000];
const NOT_AVAILABLE_MS: [u64; 7] = [0, 0, 30_000, 60_000, 120_000, 180_000, 600_000];
/// How long a broker that failed outright is avoided (upstream isolates for 600 s; brokers
/// here restart in seconds, and a live broker is preferred again after this).
const FAILED_AVOID: Duration = Duration::from_secs(30);

/// A message (or batch) ready to go: the request parts that do not depend on the queue.
struct Prepared {
    topic: String,
    flag: i32,
    /// Header properties (single message) or the batch's own (`WAIT`).
    props: String,
    body: Bytes,
    batch: bool,
    /// `UNIQ_KEY`s, comma-joined for a batch.
    msg_id: String,
}

/// Called with the result of [`Producer::send_async`].
pub type SendCallback = Box<dyn FnOnce(Result<SendResult, ProducerError>) + Send>;

struct Inner {
    group: String,
    namesrv: Vec<String>,
    client: Arc<RemotingClient>,
    routes: Mutex<HashMap<String, Arc<PublishInfo>>>,
    next_queue: AtomicUsize,
    ids: UniqIds,
    /// Brokers out of selection until the given instant (latency fault tolerance).
    unhealthy: Mutex<HashMap<String, Instant>>,
    send_timeout: Duration,
    retry_times_when_send_failed: u32,
    default_topic_queue_nums: u32,
    poll_name_server_interval: Duration,
}

/// A producer. Thread-safe and cheap to clone (clones share connections and routes).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

/// Producer settings, with upstream's defaults.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// `sendMsgTimeout`: the whole send, retries included.
    pub send_timeout: Duration,
    /// `retryTimesWhenSendFailed` (also used for async sends).
    pub retry_times_when_send_failed: u32,
    /// `defaultTopicQueueNums`: queues of a topic the broker auto-creates.
    pub default_topic_queue_nums: u32,
    /// `pollNameServerInterval`: how old a cached route may get before it is fetched again.
    pub poll_name_server_interval: Duration,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            send_timeout: Duration::from_secs(3),
            retry_times_when_send_failed: 2,
            default_topic_queue_nums: 4,
            poll_name_server_interval: Duration::from_secs(30),
        }
    }
}

impl Producer {
    /// A producer of `group` using the `;`-separated name servers (or `NAMESRV_ADDR`).
    pub fn new(group: &str, namesrv: Option<&str>) -> Result<Producer, ProducerError> {
        Producer::with_options(group, namesrv, ProducerOptions::default())
    }

    /// A producer with explicit settings.
    pub fn with_options(
        group: &str,
        namesrv: Option<&str>,
        opts: ProducerOptions,
    ) -> Result<Producer, ProducerError> {
        let addrs = super::remoting::namesrv_addrs(namesrv);
        if addrs.is_empty() {
            return Err(ProducerError::NoNameServer);
        }
        let (client, _incoming) = RemotingClient::new();
        Ok(Producer {
            inner: Arc::new(Inner {
                group: group.to_string(),
                namesrv: addrs,
                client,
                routes: Mutex::new(HashMap::new()),
                next_queue: AtomicUsize::new(0),
                ids: UniqIds::new(),
                unhealthy: Mutex::new(HashMap::new()),
                send_timeout: opts.send_timeout,
                retry_times_when_send_failed: opts.retry_times_when_send_failed,
                default_topic_queue_nums: opts.default_topic_queue_nums,
                poll_name_server_interval: opts.poll_name_server_interval,
            }),
        })
    }

    /// The queues a send to `topic` chooses from (route refreshed every 30 s).
    pub fn fetch_publish_queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ProducerError> {
        Ok(self.inner.publish_info(topic, false)?.queues.clone())
    }

    /// Sends one message and waits for the broker, retrying on another broker after a
    /// failure, within the send timeout.
    pub fn send(&self, msg: &Message) -> Result<SendResult, ProducerError> {
        let p = self.inner.prepare_one(msg);
        self.inner.send_sync(&p, None)
    }

    /// Sends to the given queue (no retry elsewhere: the caller chose the queue).
    pub fn send_to_queue(
        &self,
        msg: &Message,
        mq: &MessageQueue,
    ) -> Result<SendResult, ProducerError> {
        let p = self.inner.prepare_one(msg);
        self.inner.send_sync(&p, Some(mq))
    }

    /// Sends messages of one topic as one SEND_BATCH_MESSAGE: stored together in one queue,
    /// one result whose msgIds are comma-joined.
    pub fn send_batch(&self, msgs: &[Message]) -> Result<SendResult, ProducerError> {
        let p = self.inner.prepare_batch(msgs)?;
        self.inner.send_sync(&p, None)
    }

    /// Sends without blocking; `callback` runs once with the result, on a client thread (it
    /// must not block). Failed attempts are retried on another broker like [`Producer::send`].
    pub fn send_async(&self, msg: &Message, callback: SendCallback) {
        let p = Arc::new(self.inner.prepare_one(msg));
        let deadline = Instant::now() + self.inner.send_timeout;
        Inner::attempt_async(self.inner.clone(), p, 0, None, deadline, callback);
    }

    /// [`Producer::send_batch`] without blocking.
    pub fn send_batch_async(&self, msgs: &[Message], callback: SendCallback) {
        match self.inner.prepare_batch(msgs) {
            Ok(p) => {
                let deadline = Instant::now() + self.inner.send_timeout;
                Inner::attempt_async(self.inner.clone(), Arc::new(p), 0, None, deadline, callback)
            }
            Err(e) => callback(Err(e)),
        }
    }

    /// Sends without waiting for any answer (no result, no retry): the cheapest and least
    /// reliable send.
    pub fn send_oneway(&self, msg: &Message) -> Result<(), ProducerError> {
        let p = self.inner.prepare_one(msg);
        let info = self.inner.publish_info(&p.topic, false)?;
        let mq = self.inner.pick(&info, None);
        let addr = info
            .brokers
            .get(&mq.broker_name)
            .ok_or_else(|| ProducerError::NoRoute(p.topic.clone()))?;
        let req = self.inner.request(&p, &mq);
        Ok(self.inner.client.invoke_oneway(addr, req)?)
    }
}

impl Inner {
    fn route_from_namesrv(&self, topic: &str) -> Result<Option<TopicRouteData>, ProducerError> {
        Ok(self.client.topic_route(&self.namesrv, topic)?)
    }

    /// Route of `topic`, refreshed every `poll_name_server_interval`; unknown topics use
    /// TBW102's brokers.
    fn publish_info(&self, topic: &str, refresh: bool) -> Result<Arc<PublishInfo>, ProducerError> {
        if !refresh {
            if let Some(p) = lock(&self.routes).get(topic) {
                if p.fetched.elapsed() < self.poll_name_server_interval {
                    return Ok(p.clone());
                }
            }
        }
        let (route, default) = match self.route_from_namesrv(topic) {
            Ok(Some(r)) => (r, false),
            Ok(None) => (
                self.route_from_namesrv(crate::broker::AUTO_CREATE_TOPIC)?
                    .ok_or_else(|| ProducerError::NoRoute(topic.to_string()))?,
                true,
            ),
            // Name servers unreachable: keep sending with the route we have.
            Err(e) => {
                return lock(&self.routes).get(topic).cloned().ok_or(e);
            }
        };
        let mut queues = Vec::new();
        let mut brokers = HashMap::new();
        for bd in &route.broker_datas {
            if let Some(a) = bd.broker_addrs.get(&0) {
                brokers.insert(bd.broker_name.clone(), a.clone());
            }
        }
        for qd in &route.queue_datas {
            if qd.perm & 2 == 0 || !brokers.contains_key(&qd.broker_name) {
                continue;
            }
            let n = if default {
                qd.write_queue_nums.min(self.default_topic_queue_nums)
            } else {
                qd.write_queue_nums
            };
            for q in 0..n {
                queues.push(MessageQueue {
                    topic: topic.to_string(),
                    broker_name: qd.broker_name.clone(),
                    queue_id: q,
                });
            }
        }
        if queues.is_empty() {
            return Err(ProducerError::NoRoute(topic.to_string()));
        }
        queues.sort();
        let info = Arc::new(PublishInfo {
            queues,
            brokers,
            fetched: Instant::now(),
        });
        lock(&self.routes).insert(topic.to_string(), info.clone());
        Ok(info)
    }

    /// Round robin over the queues, skipping brokers out of selection and the one that
    /// failed last; if every broker is out, round robin regardless.
    fn pick(&self, info: &PublishInfo, avoid: Option<&str>) -> MessageQueue {
        let bad = lock(&self.unhealthy);
        let now = Instant::now();
        let n = info.queues.len();
        for _ in 0..n {
            let i = self.next_queue.fetch_add(1, Ordering::Relaxed) % n;
            let q = &info.queues[i];
            let down = bad.get(&q.broker_name).is_some_and(|t| now < *t);
            if !down && Some(q.broker_name.as_str()) != avoid {
                return q.clone();
            }
        }
        for _ in 0..n {
            let q = &info.queues[self.next_queue.fetch_add(1, Ordering::Relaxed) % n];
            if Some(q.broker_name.as_str()) != avoid {
                return q.clone();
            }
        }
        info.queues[self.next_queue.fetch_add(1, Ordering::Relaxed) % n].clone()
    }

    /// Records how a send to `broker` went, for selection.
    fn update_fault(&self, broker: &str, elapsed: Duration, failed: bool) {
        let avoid = if failed {
            FAILED_AVOID
        } else {
            let ms = elapsed.as_millis() as u64;
            let i = LATENCY_MAX.iter().rposition(|m| ms >= *m);
            Duration::from_millis(i.map_or(0, |i| NOT_AVAILABLE_MS[i]))
        };
        let mut bad = lock(&self.unhealthy);
        if avoid.is_zero() {
            bad.remove(broker);
        } else {
            bad.insert(broker.to_string(), Instant::now() + avoid);
        }
    }

    fn user_props(&self, msg: &Message, uniq: &str, wait: bool) -> Vec<u8> {
        let mut props = Vec::with_capacity(64);
        if let Some(t) = &msg.tags {
            properties::push(&mut props, properties::TAGS, t);
        }
        if !msg.keys.is_empty() {
            properties::push(&mut props, properties::KEYS, &msg.keys.join(" "));
        }
        for (k, v) in &msg.user_properties {
            properties::push(&mut props, k, v);
        }
        properties::push(&mut props, properties::UNIQ_KEY, uniq);
        if wait {
            properties::push(&mut props, properties::WAIT, "true");
        }
        props
    }

    fn prepare_one(&self, msg: &Message) -> Prepared {
        let uniq = self.ids.next();
        let props = self.user_props(msg, &uniq, true);
        Prepared {
            topic: msg.topic.clone(),
            flag: msg.flag,
            props: String::from_utf8_lossy(&props).into_owned(),
            body: msg.body.clone(),
            batch: false,
            msg_id: uniq,
        }
    }

    fn prepare_batch(&self, msgs: &[Message]) -> Result<Prepared, ProducerError> {
        let Some(first) = msgs.first() else {
            return Err(ProducerError::Batch(
                "a batch needs at least one message".into(),
            ));
        };
        if let Some(m) = msgs.iter().find(|m| m.topic != first.topic) {
            return Err(ProducerError::Batch(format!(
                "the topic of the messages in one batch should be the same: {} and {}",
                first.topic, m.topic
            )));
        }
        let mut ids = Vec::with_capacity(msgs.len());
        let items: Vec<BatchItem> = msgs
            .iter()
            .map(|m| {
                let uniq = self.ids.next();
                let props = self.user_props(m, &uniq, true);
                ids.push(uniq);
                BatchItem {
                    flag: m.flag,
                    body: m.body.clone(),
                    properties: Bytes::from(props),
                }
            })
            .collect();
        let mut batch_props = Vec::new();
        properties::push(&mut batch_props, properties::WAIT, "true");
        Ok(Prepared {
            topic: first.topic.clone(),
            flag: 0,
            props: String::from_utf8_lossy(&batch_props).into_owned(),
            body: Bytes::from(crate::message::batch::encode(&items)),
            batch: true,
            msg_id: ids.join(","),
        })
    }

    fn request(&self, p: &Prepared, mq: &MessageQueue) -> RemotingCommand {
        let hdr = SendMessageRequestHeader {
            producer_group: self.group.clone(),
            topic: p.topic.clone(),
            default_topic: crate::broker::AUTO_CREATE_TOPIC.into(),
            default_topic_queue_nums: self.default_topic_queue_nums as i32,
            queue_id: mq.queue_id as i32,
            sys_flag: 0,
            born_timestamp: now_ms(),
            flag: p.flag,
            properties: Some(p.props.clone()),
            reconsume_times: Some(0),
            unit_mode: Some(false),
            max_reconsume_times: None,
            batch: Some(p.batch),
        };
        let code = if p.batch {
            request::SEND_BATCH_MESSAGE
        } else {
            request::SEND_MESSAGE_V2
        };
        let mut req = RemotingCommand::request(code, HeaderCodec::Json);
        hdr.encode(&mut req, true);
        req.body = p.body.clone();
        req
    }

    /// Turns a broker answer into a result; `Err(true)` = try another broker.
    fn result(
        p: &Prepared,
        mq: &MessageQueue,
        r: RemotingCommand,
    ) -> Result<SendResult, (bool, ProducerError)> {
        let status = match r.code {
            response::SUCCESS => SendStatus::SendOk,
            response::FLUSH_DISK_TIMEOUT => SendStatus::FlushDiskTimeout,
            response::FLUSH_SLAVE_TIMEOUT => SendStatus::FlushSlaveTimeout,
            response::SLAVE_NOT_AVAILABLE => SendStatus::SlaveNotAvailable,
            code => {
                // Refusals of the message itself are the same on every broker.
                let retry = !matches!(code, response::MESSAGE_ILLEGAL | response::NO_PERMISSION);
                let remark = r.remark.unwrap_or_default();
                return Err((retry, ProducerError::Broker { code, remark }));
            }
        };
        let h = SendMessageResponseHeader::decode(&r).map_err(|e| {
            (
                false,
                ProducerError::Broker {
                    code: r.code,
                    remark: e.to_string(),
                },
            )
        })?;
        Ok(SendResult {
            status,
            msg_id: p.msg_id.clone(),
            offset_msg_id: h.msg_id,
            queue: MessageQueue {
                queue_id: h.queue_id as u32,
                ..mq.clone()
            },
            queue_offset: h.queue_offset,
        })
    }

    fn send_sync(
        &self,
        p: &Prepared,
        fixed: Option<&MessageQueue>,
    ) -> Result<SendResult, ProducerError> {
        let deadline = Instant::now() + self.send_timeout;
        let tries = if fixed.is_some() {
            1
        } else {
            1 + self.retry_times_when_send_failed
        };
        let mut last_broker: Option<String> = None;
        let mut last_err = String::new();
        for attempt in 0..tries {
            let info = self.publish_info(&p.topic, attempt > 0)?;
            let mq = match fixed {
                Some(q) => q.clone(),
                None => self.pick(&info, last_broker.as_deref()),
            };
            let Some(addr) = info.brokers.get(&mq.broker_name) else {
                last_err = format!("no address of broker {}", mq.broker_name);
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last_err = format!("send timeout {} ms", self.send_timeout.as_millis());
                break;
            }
            let began = Instant::now();
            let outcome = self.client.invoke(addr, self.request(p, &mq), left);
            let res = match outcome {
                Ok(r) => Self::result(p, &mq, r),
                Err(e) => Err((true, ProducerError::Remote(e))),
            };
            self.update_fault(&mq.broker_name, began.elapsed(), res.is_err());
            match res {
                Ok(r) => return Ok(r),
                Err((false, e)) => return Err(e),
                Err((true, e)) => {
                    last_err = e.to_string();
                    last_broker = Some(mq.broker_name.clone());
                }
            }
        }
        Err(ProducerError::Exhausted {
            tries,
            last: last_err,
        })
    }

    /// One asynchronous attempt; its callback makes the next one on failure.
    fn attempt_async(
        me: Arc<Inner>,
        p: Arc<Prepared>,
        attempt: u32,
        avoid: Option<String>,
        deadline: Instant,
        callback: SendCallback,
    ) {
        let tries = 1 + me.retry_times_when_send_failed;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return callback(Err(ProducerError::Exhausted {
                tries: attempt,
                last: format!("send timeout {} ms", me.send_timeout.as_millis()),
            }));
        }
        let info = match me.publish_info(&p.topic, attempt > 0) {
            Ok(i) => i,
            Err(e) => return callback(Err(e)),
        };
        let mq = me.pick(&info, avoid.as_deref());
        let Some(addr) = info.brokers.get(&mq.broker_name).cloned() else {
            return callback(Err(ProducerError::NoRoute(p.topic.clone())));
        };
        let req = me.request(&p, &mq);
        let began = Instant::now();
        let client = me.client.clone();
        client.invoke_async(
            &addr,
            req,
            left,
            Box::new(move |outcome| {
                let res = match outcome {
                    Ok(r) => Inner::result(&p, &mq, r),
                    Err(e) => Err((true, ProducerError::Remote(e))),
                };
                me.update_fault(&mq.broker_name, began.elapsed(), res.is_err());
                match res {
                    Ok(r) => callback(Ok(r)),
                    Err((true, e)) if attempt + 1 < tries => {
                        log::debug!("async send to {} failed, retrying: {e}", mq.broker_name);
                        // Not on the reader thread: a retry may need a route lookup.
                        std::thread::spawn(move || {
                            let b = Some(mq.broker_name.clone());
                            Inner::attempt_async(me, p, attempt + 1, b, deadline, callback)
                        });
                    }
                    Err((true, e)) => callback(Err(ProducerError::Exhausted {
                        tries,
                        last: e.to_string(),
                    })),
                    Err((false, e)) => callback(Err(e)),
                }
            }),
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(brokers: &[&str]) -> PublishInfo {
        PublishInfo {
            queues: brokers
                .iter()
                .flat_map(|b| {
                    (0..2).map(move |q| MessageQueue {
                        topic: "T".into(),
                        broker_name: b.to_string(),
                        queue_id: q,
                    })
                })
                .collect(),
            brokers: brokers
                .iter()
                .map(|b| (b.to_string(), "127.0.0.1:1".to_string()))
                .collect(),
            fetched: Instant::now(),
        }
    }

    /// Latency fault tolerance: a broker that failed, or answered in 550 ms or more, is left
    /// out of selection; a fast answer puts it back; with every broker out, sends still go.
    #[test]
    fn slow_or_failed_brokers_are_avoided() {
        let p = Producer::new("g", Some("127.0.0.1:1")).unwrap();
        let (inner, info) = (&p.inner, info(&["a", "b"]));
        let picks = |avoid: Option<&str>| -> Vec<String> {
            (0..8)
                .map(|_| inner.pick(&info, avoid).broker_name)
                .collect()
        };
        assert!(picks(None).contains(&"a".to_string()));
        inner.update_fault("a", Duration::from_millis(600), false);
        assert!(
            picks(None).iter().all(|b| b == "b"),
            "slow broker a still picked"
        );
        inner.update_fault("a", Duration::from_millis(5), false);
        assert!(
            picks(None).contains(&"a".to_string()),
            "a fast answer restores a"
        );
        inner.update_fault("b", Duration::from_millis(1), true);
        assert!(
            picks(None).iter().all(|b| b == "a"),
            "failed broker b still picked"
        );
        inner.update_fault("a", Duration::from_millis(1), true);
        assert_eq!(picks(None).len(), 8, "all out: sends still go somewhere");
        assert!(
            picks(Some("a")).iter().all(|b| b == "b"),
            "the last failed one is avoided"
        );
    }

    #[test]
    fn uniq_ids_are_32_hex_and_distinct() {
        let g = UniqIds::new();
        let (a, b) = (g.next(), g.next());
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert_ne!(a, b);
        assert_eq!(&a[..20], &b[..20], "fixed prefix, then time");
    }

    #[test]
    fn send_result_prints_as_upstream() {
        let r = SendResult {
            status: SendStatus::SendOk,
            msg_id: "A".into(),
            offset_msg_id: "B".into(),
            queue: MessageQueue {
                topic: "TopicTest".into(),
                broker_name: "broker-a".into(),
                queue_id: 3,
            },
            queue_offset: 12,
        };
        assert_eq!(
            r.to_string(),
            "SendResult [sendStatus=SEND_OK, msgId=A, offsetMsgId=B, messageQueue=MessageQueue [topic=TopicTest, brokerName=broker-a, queueId=3], queueOffset=12]"
        );
    }
}
