//! Consumers following the RocketMQ client contract (reference §10).
//!
//! - [`PushConsumer`]: the listener is called with messages; clustering or broadcasting.
//! - [`LitePullConsumer`]: the application polls; subscribe (rebalanced) or assign queues.
//!
//! Both are blocking and thread-based. The pieces:
//! - `core`: the group's link to name servers and brokers (routes, heartbeats, members,
//!   offsets on the broker or in a local file);
//! - `pull`: one thread that keeps a long-polling pull in flight for every owned queue, with
//!   flow control, feeding each queue's cache;
//! - `allocate`: the allocation strategies rebalance uses.

mod allocate;
mod core;
mod lite;
mod member;
mod pull;
mod push;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

pub use self::core::offset_file;
pub use allocate::AllocateStrategy;
pub use lite::LitePullConsumer;
pub use push::{ConsumeContext, PushConsumer};

use super::producer::MessageQueue;
use crate::message::{msgid, properties, MessageRecord};

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

/// What a listener says about the messages it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Consumed: the offset may move past them.
    Success,
    /// Deliver them again later (after `reconsume_delay`); the offset stays before them.
    ReconsumeLater,
}

/// `MessageModel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageModel {
    /// Each message to one member of the group; offsets on the broker.
    #[default]
    Clustering,
    /// Every member gets every message; offsets in a local file per group.
    Broadcasting,
}

impl MessageModel {
    fn wire_name(&self) -> &'static str {
        match self {
            MessageModel::Clustering => "CLUSTERING",
            MessageModel::Broadcasting => "BROADCASTING",
        }
    }
}

/// Where a queue with no stored offset starts (`ConsumeFromWhere`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumeFromWhere {
    /// From the end (the broker still answers 0 for a queue whose first message is stored).
    #[default]
    LastOffset,
    FirstOffset,
    /// From the first message stored at or after this time (ms since the epoch).
    Timestamp(i64),
}

impl ConsumeFromWhere {
    fn wire_name(&self) -> &'static str {
        match self {
            ConsumeFromWhere::LastOffset => "CONSUME_FROM_LAST_OFFSET",
            ConsumeFromWhere::FirstOffset => "CONSUME_FROM_FIRST_OFFSET",
            ConsumeFromWhere::Timestamp(_) => "CONSUME_FROM_TIMESTAMP",
        }
    }
}

/// Consumer settings, with upstream's defaults where it has one.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub model: MessageModel,
    pub allocate: AllocateStrategy,
    pub consume_from: ConsumeFromWhere,
    /// Part of the client id (`ip@instance_name`). Defaults to the pid and a counter, so
    /// consumers in one process are distinct members. Set it for broadcasting, where the
    /// local offset file is found by client id across restarts.
    pub instance_name: Option<String>,
    /// `consumeThreadMax`: listener threads (push), named `ConsumeMessageThread_N`.
    pub consume_threads: usize,
    /// `consumeMessageBatchMaxSize`: messages per listener call (push).
    pub consume_batch_max_size: usize,
    /// `pullBatchSize`: messages per pull.
    pub pull_batch_size: u32,
    /// `pullThresholdForQueue`: stop pulling a queue with this many cached messages.
    pub pull_threshold_for_queue: usize,
    /// `pullThresholdSizeForQueue`: ... or this many cached body bytes.
    pub pull_threshold_size_for_queue: usize,
    /// How long the broker holds a pull with nothing to return.
    pub broker_suspend_max: Duration,
    /// `rebalance` period (also done at once on NOTIFY_CONSUMER_IDS_CHANGED).
    pub rebalance_interval: Duration,
    /// `heartbeatBrokerInterval`.
    pub heartbeat_interval: Duration,
    /// `persistConsumerOffsetInterval`.
    pub persist_offset_interval: Duration,
    /// Delay before messages a listener returned `ReconsumeLater` for are delivered again.
    pub reconsume_delay: Duration,
    /// Directory of broadcasting offset files (`rocketmq.client.localOffsetStoreDir`):
    /// `<dir>/<client id>/<group>/offsets.json`. Default `~/.rocketmq_offsets`, or the
    /// `COREMQ_OFFSET_STORE_DIR` environment variable.
    pub offset_store_dir: PathBuf,
    /// Longest wait for a released queue's running listener calls before its offset is
    /// committed (bounds the pause of a rebalance).
    pub release_wait: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        let dir = std::env::var_os("COREMQ_OFFSET_STORE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(".rocketmq_offsets")
            });
        ConsumerOptions {
            model: MessageModel::Clustering,
            allocate: AllocateStrategy::Averagely,
            consume_from: ConsumeFromWhere::LastOffset,
            instance_name: None,
            consume_threads: 20,
            consume_batch_max_size: 1,
            pull_batch_size: 32,
            pull_threshold_for_queue: 1000,
            pull_threshold_size_for_queue: 100 << 20,
            broker_suspend_max: Duration::from_secs(15),
            rebalance_interval: Duration::from_secs(20),
            heartbeat_interval: Duration::from_secs(30),
            persist_offset_interval: Duration::from_secs(5),
            reconsume_delay: Duration::from_secs(1),
            offset_store_dir: dir,
            release_wait: Duration::from_secs(1),
        }
    }
}

/// A tag expression: `*` or `TagA || TagB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagFilter {
    /// `None` = every message.
    tags: Option<Vec<String>>,
}

impl TagFilter {
    pub(crate) fn parse(expr: &str) -> TagFilter {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return TagFilter { tags: None };
        }
        TagFilter {
            tags: Some(
                expr.split("||")
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect(),
            ),
        }
    }

    /// The broker filters by tag hash; this drops hash collisions (as the Java client does).
    pub(crate) fn matches(&self, m: &MessageExt) -> bool {
        match &self.tags {
            None => true,
            Some(t) => properties::get(&m.record.properties, properties::TAGS)
                .is_some_and(|tag| t.iter().any(|x| x.as_bytes() == tag)),
        }
    }
}

/// The messages of a PULL_MESSAGE response body (stored records back to back).
pub(crate) fn decode_pull_body(mq: &MessageQueue, body: &Bytes) -> Vec<MessageExt> {
    let mut msgs = Vec::new();
    let mut b = body.clone();
    while b.len() >= 4 {
        let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let Some(n) = usize::try_from(n).ok().filter(|n| *n > 0 && *n <= b.len()) else {
            log::warn!("bad record size {n} in a pull response for {mq}");
            break;
        };
        match MessageRecord::decode(&b.slice(..n)) {
            Ok(rec) => msgs.push(MessageExt {
                queue: mq.clone(),
                queue_offset: rec.meta.queue_offset,
                msg_id: msgid::create_message_id(rec.meta.store_host, rec.meta.physical_offset),
                record: rec,
            }),
            Err(e) => log::warn!("undecodable record in a pull response for {mq}: {e}"),
        }
        b = b.slice(n..);
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_expressions() {
        assert_eq!(TagFilter::parse(" * ").tags, None);
        assert_eq!(TagFilter::parse("").tags, None);
        assert_eq!(
            TagFilter::parse("TagA || TagB ||").tags,
            Some(vec!["TagA".to_string(), "TagB".to_string()])
        );
    }
}
