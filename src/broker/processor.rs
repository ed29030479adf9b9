//! Broker request processing. [`process`] maps each request code to its handler; handlers
//! run on the shard that accepted the connection and reach queues of other shards through
//! the store's [`Router`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::{Broker, Subscription, CONNS};
use crate::message::{msgid, properties, tags_code};
use crate::namesrv::route::TopicConfig;
use crate::protocol::code::{request, response};
use crate::protocol::header::offset::{ConsumerOffsetHeader, QueueHeader};
use crate::protocol::header::pull::{
    sys_flag as pull_flag, PullMessageRequestHeader, PullMessageResponseHeader,
};
use crate::protocol::header::send::{SendMessageRequestHeader, SendMessageResponseHeader};
use crate::protocol::server::{not_supported, serve_connection, Conn, Handler};
use crate::protocol::RemotingCommand;
use crate::store::shard::{shard_of, ShardStore};
use crate::store::{CommitLogOffset, GetStatus, PutMessage, Router, StoreError};

/// Broker service of one shard.
pub struct BrokerHandler {
    broker: Arc<Broker>,
    shard: Rc<ShardStore>,
    router: Router,
}

/// Accepts connections on this shard; shard 0 also registers with the name servers.
pub async fn serve_shard(broker: Arc<Broker>, shard: Rc<ShardStore>, router: Router) {
    let addr =
        std::net::SocketAddr::new(std::net::IpAddr::from([0, 0, 0, 0]), broker.cfg.listen_port);
    let listener = match glommio::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            log::error!("shard {}: cannot listen on {addr}: {e}", shard.id());
            return;
        }
    };
    let sid = shard.id().index();
    if sid == 0 {
        log::info!(
            "The broker[{}, {}] boot success. serializeType=JSON and name server is {}",
            broker.cfg.broker_name,
            broker.cfg.broker_addr(),
            broker.cfg.namesrv_addrs.join(";")
        );
        let b = broker.clone();
        glommio::spawn_local(async move {
            let period = Duration::from_millis(b.cfg.register_period_ms);
            loop {
                b.register_all().await;
                let mut since = Duration::ZERO;
                while since < period {
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                    since += Duration::from_millis(200);
                    if b.topics_dirty
                        .swap(false, std::sync::atomic::Ordering::Relaxed)
                    {
                        break;
                    }
                }
            }
        })
        .detach();
        let (b, r) = (broker.clone(), router.clone());
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                for (group, left) in b.consumers.expire(Duration::from_secs(120)) {
                    log::info!("consumer group {group}: expired a silent client");
                    Broker::notify_ids_changed(&r, &group, left).await;
                }
            }
        })
        .detach();
    }
    let handler = Rc::new(BrokerHandler {
        broker,
        shard,
        router,
    });
    let mut n = 0u64;
    loop {
        match listener.accept().await {
            Ok(s) => {
                n += 1;
                let id = ((sid as u64) << 48) | n;
                glommio::spawn_local(serve_connection(s, id, handler.clone())).detach();
            }
            Err(e) => log::warn!("accept: {e}"),
        }
    }
}

impl Handler for BrokerHandler {
    fn handle(
        self: Rc<Self>,
        req: RemotingCommand,
        conn: Rc<Conn>,
    ) -> Pin<Box<dyn Future<Output = Option<RemotingCommand>>>> {
        CONNS.with(|c| {
            c.borrow_mut()
                .entry(conn.id)
                .or_insert_with(|| conn.clone());
        });
        Box::pin(async move { process(&self, req, &conn).await })
    }

    fn closed(&self, conn: &Rc<Conn>) {
        CONNS.with(|c| c.borrow_mut().remove(&conn.id));
        let left = self.broker.consumers.remove(|_, c| c == conn.id);
        if !left.is_empty() {
            let r = self.router.clone();
            glommio::spawn_local(async move {
                for (g, targets) in left {
                    Broker::notify_ids_changed(&r, &g, targets).await;
                }
            })
            .detach();
        }
    }
}

fn resp(req: &RemotingCommand, code: i32, remark: impl Into<Option<String>>) -> RemotingCommand {
    RemotingCommand::response_to(req, code, remark.into())
}

fn missing(req: &RemotingCommand, f: &str) -> RemotingCommand {
    resp(
        req,
        response::SYSTEM_ERROR,
        format!("the custom field <{f}> is null"),
    )
}

/// Optional header fields of the smaller requests (the big families have typed headers).
fn num<T: std::str::FromStr>(req: &RemotingCommand, k: &str) -> Option<T> {
    crate::protocol::header::opt_num(req, k)
}

fn flag(req: &RemotingCommand, k: &str) -> bool {
    crate::protocol::header::opt_bool(req, k).unwrap_or(false)
}

/// Maps a store error to a response code and remark (the one place that does).
fn store_error(req: &RemotingCommand, e: &StoreError) -> RemotingCommand {
    let code = match e {
        StoreError::MessageTooLarge { .. } | StoreError::BadMessage(_) => response::MESSAGE_ILLEGAL,
        StoreError::FlushTimeout(_) => response::FLUSH_DISK_TIMEOUT,
        StoreError::Closed | StoreError::FlushFailed(_) | StoreError::Io { .. } => {
            response::SERVICE_NOT_AVAILABLE
        }
        StoreError::OffsetNotFound(_) => response::QUERY_NOT_FOUND,
        _ => response::SYSTEM_ERROR,
    };
    resp(req, code, e.to_string())
}

/// Topic names: `[%|a-zA-Z0-9_-]`, at most 127 characters (255 for retry/DLQ).
pub fn validate_topic(t: &str) -> Result<(), String> {
    let max = if t.starts_with("%RETRY%") || t.starts_with("%DLQ%") {
        255
    } else {
        127
    };
    if t.is_empty() || t.len() > max {
        return Err(format!(
            "the specified topic is longer than topic max length {max}."
        ));
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
    {
        return Err(format!(
            "the specified topic[{t}] contains illegal characters, allowing only ^[%|a-zA-Z0-9_-]+$"
        ));
    }
    Ok(())
}

/// Request code → handler.
pub async fn process(
    h: &BrokerHandler,
    req: RemotingCommand,
    conn: &Rc<Conn>,
) -> Option<RemotingCommand> {
    let r = match req.code {
        request::SEND_MESSAGE | request::SEND_MESSAGE_V2 | request::SEND_BATCH_MESSAGE => {
            send(h, &req, conn.peer).await
        }
        request::PULL_MESSAGE | request::LITE_PULL_MESSAGE => pull(h, &req).await,
        request::QUERY_CONSUMER_OFFSET => query_offset(h, &req).await,
        request::UPDATE_CONSUMER_OFFSET => match ConsumerOffsetHeader::decode_update(&req) {
            Ok((hd, o)) => {
                h.broker
                    .offsets
                    .commit(&hd.consumer_group, &hd.topic, hd.queue_id, o);
                resp(&req, response::SUCCESS, None)
            }
            Err(e) => resp(&req, response::SYSTEM_ERROR, e.to_string()),
        },
        request::GET_MIN_OFFSET | request::GET_MAX_OFFSET => {
            let QueueHeader {
                topic: t,
                queue_id: q,
            } = match QueueHeader::decode(&req) {
                Ok(x) => x,
                Err(e) => return Some(resp(&req, response::SYSTEM_ERROR, e.to_string())),
            };
            match h.router.queue_range(&t, q).await {
                Ok((min, max)) => {
                    let mut r = resp(&req, response::SUCCESS, None);
                    r.set_ext(
                        "offset",
                        if req.code == request::GET_MIN_OFFSET {
                            min
                        } else {
                            max
                        },
                    );
                    r
                }
                Err(e) => store_error(&req, &e),
            }
        }
        request::SEARCH_OFFSET_BY_TIMESTAMP => {
            let (Some(t), Some(q), Some(ts)) = (
                req.ext("topic"),
                num::<u32>(&req, "queueId"),
                num::<i64>(&req, "timestamp"),
            ) else {
                return Some(missing(&req, "topic/queueId/timestamp"));
            };
            match h.router.search_offset_by_timestamp(t, q, ts).await {
                Ok(o) => {
                    let mut r = resp(&req, response::SUCCESS, None);
                    r.set_ext("offset", o);
                    r
                }
                Err(e) => store_error(&req, &e),
            }
        }
        request::GET_EARLIEST_MSG_STORETIME => {
            let QueueHeader {
                topic: t,
                queue_id: q,
            } = match QueueHeader::decode(&req) {
                Ok(x) => x,
                Err(e) => return Some(resp(&req, response::SYSTEM_ERROR, e.to_string())),
            };
            match h.router.earliest_msg_store_time(&t, q).await {
                Ok(ts) => {
                    let mut r = resp(&req, response::SUCCESS, None);
                    r.set_ext("timestamp", ts);
                    r
                }
                Err(e) => store_error(&req, &e),
            }
        }
        request::HEART_BEAT => heartbeat(h, &req, conn).await,
        request::UNREGISTER_CLIENT => {
            let id = req.ext("clientID").unwrap_or_default().to_string();
            let left = h.broker.consumers.remove(|c, _| c == id);
            for (g, targets) in left {
                Broker::notify_ids_changed(&h.router, &g, targets).await;
            }
            resp(&req, response::SUCCESS, None)
        }
        request::GET_CONSUMER_LIST_BY_GROUP => {
            let g = req.ext("consumerGroup").unwrap_or_default();
            let ids = h.broker.consumers.client_ids(g);
            if ids.is_empty() {
                resp(
                    &req,
                    response::SYSTEM_ERROR,
                    format!("no consumer for this group, {g}"),
                )
            } else {
                let mut r = resp(&req, response::SUCCESS, None);
                r.body = serde_json::to_vec(&serde_json::json!({ "consumerIdList": ids }))
                    .unwrap_or_default()
                    .into();
                r
            }
        }
        request::UPDATE_AND_CREATE_TOPIC => {
            let Some(t) = req.ext("topic") else {
                return Some(missing(&req, "topic"));
            };
            if let Err(m) = validate_topic(t) {
                return Some(resp(&req, response::SYSTEM_ERROR, m));
            }
            let tc = TopicConfig {
                topic_name: t.to_string(),
                read_queue_nums: num(&req, "readQueueNums").unwrap_or(16),
                write_queue_nums: num(&req, "writeQueueNums").unwrap_or(16),
                perm: num(&req, "perm").unwrap_or(6),
                topic_filter_type: req
                    .ext("topicFilterType")
                    .unwrap_or("SINGLE_TAG")
                    .to_string(),
                topic_sys_flag: num(&req, "topicSysFlag").unwrap_or(0),
                order: flag(&req, "order"),
                ..Default::default()
            };
            if h.broker.topics.put(tc) {
                h.broker.mark_topics_changed();
            }
            resp(&req, response::SUCCESS, None)
        }
        request::DELETE_TOPIC_IN_BROKER => {
            let Some(t) = req.ext("topic") else {
                return Some(missing(&req, "topic"));
            };
            if h.broker.topics.remove(t) {
                h.broker.mark_topics_changed();
            }
            match h.router.delete_topic(t).await {
                Ok(()) => resp(&req, response::SUCCESS, None),
                Err(e) => store_error(&req, &e),
            }
        }
        request::GET_ALL_TOPIC_CONFIG => {
            let mut r = resp(&req, response::SUCCESS, None);
            r.body = serde_json::to_vec(&h.broker.topics.wrapper())
                .unwrap_or_default()
                .into();
            r
        }
        request::GET_ALL_CONSUMER_OFFSET => {
            let mut r = resp(&req, response::SUCCESS, None);
            r.body = h.broker.offsets.to_json().into_bytes().into();
            r
        }
        request::GET_BROKER_RUNTIME_INFO => runtime_info(h, &req).await,
        request::UPDATE_BROKER_CONFIG => {
            match h
                .broker
                .cfg
                .update_live(&String::from_utf8_lossy(&req.body))
            {
                Ok(applied) => {
                    log::info!("broker config updated: {}", applied.join(", "));
                    resp(&req, response::SUCCESS, None)
                }
                Err(e) => resp(&req, response::SYSTEM_ERROR, e),
            }
        }
        request::GET_BROKER_CONFIG => {
            let mut r = resp(&req, response::SUCCESS, None);
            r.body = Bytes::from(h.broker.cfg.to_properties());
            r
        }
        request::GET_TOPIC_STATS_INFO => topic_stats(h, &req).await,
        request::GET_CONSUME_STATS => consume_stats(h, &req).await,
        request::QUERY_MESSAGE => query_message(h, &req).await,
        request::VIEW_MESSAGE_BY_ID => {
            let Some(off) = num::<i64>(&req, "offset").and_then(CommitLogOffset::from_i64) else {
                return Some(missing(&req, "offset"));
            };
            match h.router.read_message(off).await {
                Ok(rec) => {
                    let mut r = resp(&req, response::SUCCESS, None);
                    r.body = rec;
                    r
                }
                Err(e) => resp(
                    &req,
                    response::SYSTEM_ERROR,
                    format!("can not find message by the offset, {off}: {e}"),
                ),
            }
        }
        _ => not_supported(&req),
    };
    Some(r)
}

/// The topic's (writeQueueNums, perm), auto-creating it from TBW102 when allowed
/// (reference §8.2).
fn topic_for_send(h: &BrokerHandler, topic: &str, queue_nums: u32) -> Option<(u32, u32)> {
    if let Some(view) = h.broker.topics.write_view(topic) {
        return Some(view);
    }
    if topic.starts_with("%RETRY%") {
        let tc = TopicConfig {
            topic_name: topic.into(),
            read_queue_nums: 1,
            write_queue_nums: 1,
            ..Default::default()
        };
        let view = (tc.write_queue_nums, tc.perm);
        h.broker.topics.put(tc);
        h.broker.mark_topics_changed();
        return Some(view);
    }
    if !h.broker.cfg.auto_create_topic_enable {
        return None;
    }
    let template = h.broker.topics.get(super::AUTO_CREATE_TOPIC)?;
    let n = queue_nums.clamp(1, template.write_queue_nums.max(1));
    let tc = TopicConfig {
        topic_name: topic.into(),
        read_queue_nums: n,
        write_queue_nums: n,
        perm: template.perm & !1,
        ..Default::default()
    };
    let view = (tc.write_queue_nums, tc.perm);
    h.broker.topics.put(tc);
    h.broker.mark_topics_changed();
    log::info!("auto-created topic {topic} with {n} queue(s)");
    Some(view)
}

/// SEND_MESSAGE (V1 keys), SEND_MESSAGE_V2 and SEND_BATCH_MESSAGE (short keys).
async fn send(
    h: &BrokerHandler,
    req: &RemotingCommand,
    peer: std::net::SocketAddr,
) -> RemotingCommand {
    let hdr = match SendMessageRequestHeader::decode(req) {
        Ok(x) => x,
        Err(e) => return resp(req, response::SYSTEM_ERROR, e.to_string()),
    };
    let topic = hdr.topic.as_str();
    if let Err(m) = validate_topic(topic) {
        return resp(req, response::MESSAGE_ILLEGAL, m);
    }
    let Some((write_queue_nums, perm)) =
        topic_for_send(h, topic, hdr.default_topic_queue_nums.max(1) as u32)
    else {
        return resp(
            req,
            response::TOPIC_NOT_EXIST,
            format!("topic[{topic}] not exist, apply first please!"),
        );
    };
    if perm & 2 == 0 {
        return resp(
            req,
            response::NO_PERMISSION,
            format!("the topic[{topic}] sending is forbidden"),
        );
    }
    let queue_id = if hdr.queue_id < 0 {
        0
    } else {
        (hdr.queue_id as u32) % write_queue_nums.max(1)
    };
    let sys_flag = hdr.sys_flag;
    let born_ts = hdr.born_timestamp;
    let user_flag = hdr.flag;
    let reconsume = hdr.reconsume_times.unwrap_or(0);
    let mut header_props = hdr.properties.clone().unwrap_or_default().into_bytes();
    let born_host = peer;
    let max = h.broker.cfg.store.max_message_size;
    let mut msgs = Vec::new();
    if req.code == request::SEND_BATCH_MESSAGE {
        if req.body.len() > max {
            return resp(
                req,
                response::MESSAGE_ILLEGAL,
                format!("the message body size over max value, MAX: {max}"),
            );
        }
        match crate::message::batch::decode(&req.body) {
            Ok(items) => {
                for it in items {
                    msgs.push((it.flag, it.body, it.properties));
                }
            }
            Err(e) => {
                return resp(
                    req,
                    response::MESSAGE_ILLEGAL,
                    format!("bad batch body: {e}"),
                )
            }
        }
    } else {
        if req.body.len() > max {
            return resp(
                req,
                response::MESSAGE_ILLEGAL,
                format!("the message body size over max value, MAX: {max}"),
            );
        }
        // Broker additions to the properties (reference §4.2).
        if !header_props.is_empty() && header_props.last() != Some(&properties::PROPERTY_SEPARATOR)
        {
            header_props.push(properties::PROPERTY_SEPARATOR);
        }
        properties::push(&mut header_props, "MSG_REGION", &h.broker.cfg.region_id);
        properties::push(
            &mut header_props,
            "TRACE_ON",
            if h.broker.cfg.trace_on {
                "true"
            } else {
                "false"
            },
        );
        msgs.push((user_flag, req.body.clone(), Bytes::from(header_props)));
    }
    if msgs.iter().any(|m| m.2.len() > i16::MAX as usize) {
        return resp(
            req,
            response::MESSAGE_ILLEGAL,
            "msg properties length limit 32KB".to_string(),
        );
    }
    // The response's transactionId: the messages' UNIQ_KEYs, comma-separated.
    let mut uniq = String::new();
    for m in &msgs {
        if let Some(u) = properties::get(&m.2, properties::UNIQ_KEY) {
            if !uniq.is_empty() {
                uniq.push(',');
            }
            // from_utf8 first: the lossy conversion's chunk walk was ~1 % under batches.
            match std::str::from_utf8(u) {
                Ok(k) => uniq.push_str(k),
                Err(_) => uniq.push_str(&String::from_utf8_lossy(u)),
            }
        }
    }
    let shared_topic: std::sync::Arc<str> = topic.into();
    let puts: Vec<PutMessage> = msgs
        .into_iter()
        .map(|(flag, body, props)| PutMessage {
            topic: shared_topic.clone(),
            queue_id,
            flag,
            body,
            properties: props,
            sys_flag,
            born_timestamp: born_ts,
            born_host,
            reconsume_times: reconsume,
            prepared_transaction_offset: 0,
        })
        .collect();
    let owner = shard_of(topic, queue_id, h.router.shard_count());
    let res = if owner == h.shard.id() {
        h.shard.put(&puts).await
    } else {
        h.router.put(puts).await
    };
    match res {
        Ok(results) => {
            let Some(first) = results.first() else {
                return resp(req, response::MESSAGE_ILLEGAL, "empty batch".to_string());
            };
            let mut r = resp(req, response::SUCCESS, None);
            let mut ids = String::with_capacity(results.len() * 33);
            for (i, p) in results.iter().enumerate() {
                if i > 0 {
                    ids.push(',');
                }
                msgid::push_message_id(&mut ids, p.store_host, p.offset.as_i64());
            }
            SendMessageResponseHeader {
                msg_id: ids,
                queue_id: queue_id as i32,
                queue_offset: first.queue_offset as i64,
                transaction_id: (!uniq.is_empty()).then_some(uniq),
            }
            .encode(&mut r);
            r.set_ext("MSG_REGION", &h.broker.cfg.region_id);
            r.set_ext("TRACE_ON", h.broker.cfg.trace_on);
            r
        }
        Err(e) => store_error(req, &e),
    }
}

/// Tag codes of a subscription expression (`*` = all).
pub fn subscription_of(expr: &str) -> Subscription {
    let expr = expr.trim();
    if expr.is_empty() || expr == "*" {
        return Subscription {
            sub_string: "*".into(),
            codes: None,
        };
    }
    let codes = expr
        .split("||")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| tags_code(Some(t.as_bytes())))
        .collect();
    Subscription {
        sub_string: expr.to_string(),
        codes: Some(codes),
    }
}

/// PULL_MESSAGE with long polling: an empty pull that may suspend is held on the queue's
/// shard until a message for the queue is dispatched or the suspend time passes.
async fn pull(h: &BrokerHandler, req: &RemotingCommand) -> RemotingCommand {
    let hdr = match PullMessageRequestHeader::decode(req) {
        Ok(x) => x,
        Err(e) => return resp(req, response::SYSTEM_ERROR, e.to_string()),
    };
    let (group, topic, qid, offset) = (
        hdr.consumer_group.as_str(),
        hdr.topic.as_str(),
        hdr.queue_id,
        hdr.queue_offset,
    );
    if !h.broker.topics.contains(topic) && !topic.starts_with("%RETRY%") {
        return resp(
            req,
            response::TOPIC_NOT_EXIST,
            format!("topic[{topic}] not exist, apply first please!"),
        );
    }
    let sys_flag = hdr.sys_flag;
    let max_msgs = hdr.max_msg_nums.clamp(1, 1024) as usize;
    let suspend_ms = if sys_flag & pull_flag::SUSPEND != 0 {
        let s = if hdr.suspend_timeout_millis > 0 {
            hdr.suspend_timeout_millis as u64
        } else {
            15_000
        };
        if h.broker.cfg.long_polling_enable {
            s
        } else {
            h.broker.cfg.short_polling_time_ms
        }
    } else {
        0
    };
    if sys_flag & pull_flag::COMMIT_OFFSET != 0 && hdr.commit_offset >= 0 {
        h.broker
            .offsets
            .commit(group, topic, qid, hdr.commit_offset);
    }
    let sub = if sys_flag & pull_flag::SUBSCRIPTION != 0 {
        hdr.subscription.as_deref().map(subscription_of)
    } else {
        h.broker.consumers.subscription(group, topic)
    };
    let codes = sub.and_then(|s| s.codes);
    let offset = offset.max(0) as u64;
    let t = topic.to_string();
    let owner = shard_of(topic, qid, h.router.shard_count());
    let got = h
        .router
        .on_shard(owner, move |s| async move {
            let deadline = std::time::Instant::now() + Duration::from_millis(suspend_ms);
            loop {
                let r = s.get_messages(&t, qid, offset, max_msgs, codes.as_deref()).await?;
                let empty = matches!(r.status, GetStatus::OffsetOverflowOne | GetStatus::OffsetFoundNull | GetStatus::NoMessageInQueue | GetStatus::NoMatchedLogicQueue if offset == r.max_offset);
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if !empty || left.is_zero() {
                    return Ok(r);
                }
                // Woken by the dispatch of new messages, not by a timer loop.
                let arrived = s.arrivals().wait_until(|| s.queue_range(&t, qid).1 > offset);
                let _ = glommio::timer::timeout(left, async {
                    arrived.await;
                    Ok(())
                })
                .await;
            }
        })
        .await;
    let g = match got {
        Ok(g) => g,
        Err(e) => return store_error(req, &e),
    };
    let code = match g.status {
        GetStatus::Found => response::SUCCESS,
        GetStatus::NoMatchedMessage | GetStatus::MessageWasRemoving => {
            response::PULL_RETRY_IMMEDIATELY
        }
        GetStatus::NoMessageInQueue | GetStatus::NoMatchedLogicQueue => {
            if offset != 0 {
                response::PULL_OFFSET_MOVED
            } else {
                response::PULL_NOT_FOUND
            }
        }
        GetStatus::OffsetFoundNull | GetStatus::OffsetOverflowOne => response::PULL_NOT_FOUND,
        GetStatus::OffsetOverflowBadly | GetStatus::OffsetTooSmall => response::PULL_OFFSET_MOVED,
    };
    let mut r = resp(req, code, None);
    PullMessageResponseHeader {
        suggest_which_broker_id: 0,
        next_begin_offset: g.next_begin_offset as i64,
        min_offset: g.min_offset as i64,
        max_offset: g.max_offset as i64,
    }
    .encode(&mut r);
    if code == response::SUCCESS {
        let mut body = BytesMut::with_capacity(g.messages.iter().map(|m| m.len()).sum());
        for m in &g.messages {
            body.extend_from_slice(m);
        }
        r.body = body.freeze();
    }
    r
}

async fn query_offset(h: &BrokerHandler, req: &RemotingCommand) -> RemotingCommand {
    let hd = match ConsumerOffsetHeader::decode(req) {
        Ok(x) => x,
        Err(e) => return resp(req, response::SYSTEM_ERROR, e.to_string()),
    };
    let (g, t, q) = (hd.consumer_group.as_str(), hd.topic.as_str(), hd.queue_id);
    let found = h.broker.offsets.query(g, t, q).filter(|o| *o >= 0);
    let offset = match found {
        Some(o) => Some(o),
        None if hd.set_zero_if_not_found.unwrap_or(true) => {
            // A queue whose first message is still stored starts at 0 (reference §3.5).
            match h.router.queue_range(t, q).await {
                Ok((0, _)) => Some(0),
                _ => None,
            }
        }
        None => None,
    };
    match offset {
        Some(o) => {
            let mut r = resp(req, response::SUCCESS, None);
            r.set_ext("offset", o);
            r
        }
        None => resp(
            req,
            response::QUERY_NOT_FOUND,
            "Not found, V3_0_6_SNAPSHOT maybe this group consumer boot first".to_string(),
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct HeartbeatData {
    #[serde(rename = "clientID")]
    client_id: String,
    consumer_data_set: Vec<ConsumerData>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ConsumerData {
    group_name: String,
    subscription_data_set: Vec<SubscriptionData>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SubscriptionData {
    topic: String,
    sub_string: String,
}

async fn heartbeat(h: &BrokerHandler, req: &RemotingCommand, conn: &Rc<Conn>) -> RemotingCommand {
    let hb: HeartbeatData = match crate::protocol::json::parse(&req.body) {
        Ok(v) => v,
        Err(e) => {
            return resp(
                req,
                response::SYSTEM_ERROR,
                format!("bad HeartbeatData: {e}"),
            )
        }
    };
    for cd in hb.consumer_data_set {
        if cd.group_name.is_empty() {
            continue;
        }
        h.broker.groups.get_or_create(&cd.group_name);
        let retry = format!("%RETRY%{}", cd.group_name);
        if !h.broker.topics.contains(&retry) {
            topic_for_send(h, &retry, 1);
        }
        let subs: BTreeMap<String, Subscription> = cd
            .subscription_data_set
            .iter()
            .map(|s| (s.topic.clone(), subscription_of(&s.sub_string)))
            .collect();
        let notify = h.broker.consumers.heartbeat(
            &cd.group_name,
            &hb.client_id,
            h.shard.id().index(),
            conn.id,
            subs,
        );
        if !notify.is_empty() {
            log::info!(
                "consumer group {} changed (client {}): notifying {} member(s)",
                cd.group_name,
                hb.client_id,
                notify.len()
            );
            Broker::notify_ids_changed(&h.router, &cd.group_name, notify).await;
        }
    }
    resp(req, response::SUCCESS, None)
}

/// Per queue of `topic`: (queueId, min, max, store time of the newest message).
async fn queue_table(h: &BrokerHandler, topic: &str, queues: u32) -> Vec<(u32, u64, u64, i64)> {
    let mut out = Vec::new();
    for q in 0..queues {
        let (min, max) = h.router.queue_range(topic, q).await.unwrap_or((0, 0));
        let ts = if max > 0 {
            let t = topic.to_string();
            h.router
                .on_shard(
                    shard_of(topic, q, h.router.shard_count()),
                    move |s| async move { s.search_store_time(&t, q, max - 1).await },
                )
                .await
                .unwrap_or(0)
        } else {
            0
        };
        out.push((q, min, max, ts));
    }
    out
}

async fn topic_stats(h: &BrokerHandler, req: &RemotingCommand) -> RemotingCommand {
    let Some(t) = req.ext("topic") else {
        return missing(req, "topic");
    };
    let Some(tc) = h.broker.topics.get(t) else {
        return resp(
            req,
            response::TOPIC_NOT_EXIST,
            format!("topic[{t}] not exist"),
        );
    };
    let table = queue_table(h, t, tc.write_queue_nums.max(tc.read_queue_nums)).await;
    let mut r = resp(req, response::SUCCESS, None);
    r.body = super::stats::topic_stats(&h.broker.cfg.broker_name, t, &table)
        .into_bytes()
        .into();
    r
}

async fn consume_stats(h: &BrokerHandler, req: &RemotingCommand) -> RemotingCommand {
    let Some(g) = req.ext("consumerGroup") else {
        return missing(req, "consumerGroup");
    };
    let topics: Vec<String> = match req.ext("topic") {
        Some(t) if !t.is_empty() => vec![t.to_string()],
        _ => h.broker.consumers.topics_of(g),
    };
    let mut rows = Vec::new();
    for t in topics {
        let Some(tc) = h.broker.topics.get(&t) else {
            continue;
        };
        for (q, _, max, _) in queue_table(h, &t, tc.read_queue_nums).await {
            let consumer = h.broker.offsets.query(g, &t, q).unwrap_or(-1);
            rows.push((t.clone(), q, max, consumer, 0));
        }
    }
    let mut r = resp(req, response::SUCCESS, None);
    r.body = super::stats::consume_stats(&h.broker.cfg.broker_name, &rows)
        .into_bytes()
        .into();
    r
}

async fn runtime_info(h: &BrokerHandler, req: &RemotingCommand) -> RemotingCommand {
    let mut table = BTreeMap::new();
    if let Ok(stats) = h.router.stats().await {
        let written: u64 = stats.iter().map(|s| s.written).sum();
        let min: u64 = stats.iter().map(|s| s.min_pos).sum();
        table.insert("commitLogMaxOffset".to_string(), written.to_string());
        table.insert("commitLogMinOffset".to_string(), min.to_string());
        table.insert("shards".to_string(), stats.len().to_string());
    }
    table.insert("brokerVersionDesc".into(), "V4_9_8".into());
    table.insert("brokerVersion".into(), "409".into());
    let mut r = resp(req, response::SUCCESS, None);
    r.body = serde_json::to_vec(&serde_json::json!({ "table": table }))
        .unwrap_or_default()
        .into();
    r
}

async fn query_message(h: &BrokerHandler, req: &RemotingCommand) -> RemotingCommand {
    let (Some(t), Some(key)) = (req.ext("topic"), req.ext("key")) else {
        return missing(req, "topic/key");
    };
    let max = if flag(req, "_UNIQUE_KEY_QUERY") {
        32
    } else {
        num(req, "maxNum").unwrap_or(32)
    };
    let begin = num(req, "beginTimestamp").unwrap_or(0);
    let end = num(req, "endTimestamp").unwrap_or(i64::MAX);
    match h.router.query_by_key(t, key, max, begin, end).await {
        Ok(recs) if !recs.is_empty() => {
            let mut r = resp(req, response::SUCCESS, None);
            r.set_ext("indexLastUpdateTimestamp", 0);
            r.set_ext("indexLastUpdatePhyoffset", 0);
            let mut body = BytesMut::new();
            for m in recs {
                body.extend_from_slice(&m);
            }
            r.body = body.freeze();
            r
        }
        Ok(_) => resp(
            req,
            response::QUERY_NOT_FOUND,
            format!("can not find message, maybe time range not correct, key: {key}"),
        ),
        Err(e) => store_error(req, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic("TopicTest").is_ok());
        assert!(validate_topic("%RETRY%cg_1").is_ok());
        assert!(validate_topic("bad topic").is_err());
        assert!(validate_topic("a/b").is_err());
        assert!(validate_topic(&"a".repeat(128)).is_err());
        assert!(validate_topic("").is_err());
    }

    #[test]
    fn subscription_expressions() {
        assert_eq!(subscription_of("*").codes, None);
        assert_eq!(
            subscription_of("TagA || TagB ||").codes,
            Some(vec![2598919, 2598920])
        );
    }
}
