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

/// A producer. Thread-safe; share it with `Arc`.
pub struct Producer {
    group: String,
    namesrv: Vec<String>,
    client: Arc<RemotingClient>,
    routes: Mutex<HashMap<String, Arc<PublishInfo>>>,
    next_queue: AtomicUsize,
    ids: UniqIds,
    /// Broker names that just failed, until when (latency fault tolerance, simplified).
    unhealthy: Mutex<HashMap<String, Instant>>,
    pub send_timeout: Duration,
    pub retry_times_when_send_failed: u32,
    pub default_topic_queue_nums: u32,
}

impl Producer {
    /// A producer of `group` using the `;`-separated name servers (or `NAMESRV_ADDR`).
    pub fn new(group: &str, namesrv: Option<&str>) -> Result<Producer, ProducerError> {
        let addrs = super::remoting::namesrv_addrs(namesrv);
        if addrs.is_empty() {
            return Err(ProducerError::NoNameServer);
        }
        let (client, _incoming) = RemotingClient::new();
        Ok(Producer {
            group: group.to_string(),
            namesrv: addrs,
            client,
            routes: Mutex::new(HashMap::new()),
            next_queue: AtomicUsize::new(0),
            ids: UniqIds::new(),
            unhealthy: Mutex::new(HashMap::new()),
            send_timeout: Duration::from_secs(3),
            retry_times_when_send_failed: 2,
            default_topic_queue_nums: 4,
        })
    }

    fn route_from_namesrv(&self, topic: &str) -> Result<Option<TopicRouteData>, ProducerError> {
        Ok(self.client.topic_route(&self.namesrv, topic)?)
    }

    /// Route of `topic`, refreshed every 30 s; unknown topics use TBW102's brokers.
    fn publish_info(&self, topic: &str, refresh: bool) -> Result<Arc<PublishInfo>, ProducerError> {
        if !refresh {
            if let Some(p) = self
                .routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(topic)
            {
                if p.fetched.elapsed() < Duration::from_secs(30) {
                    return Ok(p.clone());
                }
            }
        }
        let (route, default) = match self.route_from_namesrv(topic)? {
            Some(r) => (r, false),
            None => (
                self.route_from_namesrv(crate::broker::AUTO_CREATE_TOPIC)?
                    .ok_or_else(|| ProducerError::NoRoute(topic.to_string()))?,
                true,
            ),
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
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string(), info.clone());
        Ok(info)
    }

    fn pick(&self, info: &PublishInfo, avoid: Option<&str>) -> MessageQueue {
        let bad = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        let n = info.queues.len();
        for _ in 0..n {
            let i = self.next_queue.fetch_add(1, Ordering::Relaxed) % n;
            let q = &info.queues[i];
            let down = bad.get(&q.broker_name).is_some_and(|t| Instant::now() < *t);
            if !down && Some(q.broker_name.as_str()) != avoid {
                return q.clone();
            }
        }
        info.queues[self.next_queue.fetch_add(1, Ordering::Relaxed) % n].clone()
    }

    /// Sends one message synchronously, retrying on another broker after a failure.
    pub fn send(&self, msg: &Message) -> Result<SendResult, ProducerError> {
        let uniq = self.ids.next();
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
        properties::push(&mut props, properties::UNIQ_KEY, &uniq);
        properties::push(&mut props, properties::WAIT, "true");
        let props = String::from_utf8_lossy(&props).into_owned();
        let deadline = Instant::now() + self.send_timeout;
        let tries = 1 + self.retry_times_when_send_failed;
        let mut last_broker: Option<String> = None;
        let mut last_err = String::new();
        for attempt in 0..tries {
            let info = self.publish_info(&msg.topic, attempt > 0)?;
            let mq = self.pick(&info, last_broker.as_deref());
            let Some(addr) = info.brokers.get(&mq.broker_name) else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let hdr = SendMessageRequestHeader {
                producer_group: self.group.clone(),
                topic: msg.topic.clone(),
                default_topic: crate::broker::AUTO_CREATE_TOPIC.into(),
                default_topic_queue_nums: self.default_topic_queue_nums as i32,
                queue_id: mq.queue_id as i32,
                sys_flag: 0,
                born_timestamp: now_ms(),
                flag: msg.flag,
                properties: Some(props.clone()),
                reconsume_times: Some(0),
                unit_mode: Some(false),
                max_reconsume_times: None,
                batch: Some(false),
            };
            let mut req = RemotingCommand::request(request::SEND_MESSAGE_V2, HeaderCodec::Json);
            hdr.encode(&mut req, true);
            req.body = msg.body.clone();
            match self.client.invoke(addr, req, left) {
                Ok(r) => {
                    let status = match r.code {
                        response::SUCCESS => SendStatus::SendOk,
                        response::FLUSH_DISK_TIMEOUT => SendStatus::FlushDiskTimeout,
                        response::FLUSH_SLAVE_TIMEOUT => SendStatus::FlushSlaveTimeout,
                        response::SLAVE_NOT_AVAILABLE => SendStatus::SlaveNotAvailable,
                        code => {
                            let remark = r.remark.unwrap_or_default();
                            // Broker-side refusals of the message itself are not retried.
                            if matches!(code, response::MESSAGE_ILLEGAL | response::NO_PERMISSION) {
                                return Err(ProducerError::Broker { code, remark });
                            }
                            last_err = format!("CODE: {code} DESC: {remark}");
                            self.mark_unhealthy(&mq.broker_name);
                            last_broker = Some(mq.broker_name.clone());
                            continue;
                        }
                    };
                    let h = SendMessageResponseHeader::decode(&r).map_err(|e| {
                        ProducerError::Broker {
                            code: r.code,
                            remark: e.to_string(),
                        }
                    })?;
                    return Ok(SendResult {
                        status,
                        msg_id: uniq,
                        offset_msg_id: h.msg_id,
                        queue: MessageQueue {
                            queue_id: h.queue_id as u32,
                            ..mq
                        },
                        queue_offset: h.queue_offset,
                    });
                }
                Err(e) => {
                    last_err = e.to_string();
                    self.mark_unhealthy(&mq.broker_name);
                    last_broker = Some(mq.broker_name.clone());
                }
            }
        }
        Err(ProducerError::Exhausted {
            tries,
            last: last_err,
        })
    }

    fn mark_unhealthy(&self, broker: &str) {
        self.unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(broker.to_string(), Instant::now() + Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
