//! The pull service: one thread keeps a long-polling PULL_MESSAGE in flight for every owned
//! queue (asynchronous calls, so a thousand queues need no thousand threads). Results land
//! in the queue's cache; the consumer that owns the service is told through its sink. A queue
//! whose cache passes the thresholds is not pulled again until it drains (flow control).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::core::{lock, Core};
use super::{decode_pull_body, MessageExt, MessageModel};
use crate::client::producer::MessageQueue;
use crate::protocol::code::{request, response};
use crate::protocol::header::pull::{
    sys_flag, PullMessageRequestHeader, PullMessageResponseHeader,
};
use crate::protocol::{HeaderCodec, RemotingCommand};

/// After a failed pull, wait this long (upstream's `pullTimeDelayMillsWhenException` is 3 s;
/// shorter here so a restarted broker is picked up quickly).
const DELAY_ON_ERROR: Duration = Duration::from_millis(1000);
/// A queue over its flow-control thresholds is looked at again after this long.
const DELAY_ON_FLOW_CONTROL: Duration = Duration::from_millis(50);

/// An owned queue: where to pull next, and what was pulled but not yet consumed.
pub(crate) struct QueueState {
    pub mq: MessageQueue,
    /// Set when the queue is released or the consumer stops: pulls and consumes stop.
    pub dropped: AtomicBool,
    /// Bumped by a seek: results of pulls issued before it are discarded.
    pub generation: AtomicU64,
    pub next_offset: AtomicI64,
    /// Pulled, not yet consumed, by queue offset.
    pub cache: Mutex<Cache>,
    /// Listener calls running on this queue's messages.
    pub inflight: AtomicUsize,
    /// Counts of flow-control pauses (for logs and tests).
    pub flow_controlled: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Cache {
    pub msgs: BTreeMap<i64, MessageExt>,
    pub bytes: usize,
    /// Highest queue offset ever cached.
    pub max_offset: i64,
}

impl QueueState {
    pub fn new(mq: MessageQueue, offset: i64) -> Arc<QueueState> {
        Arc::new(QueueState {
            mq,
            dropped: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            next_offset: AtomicI64::new(offset),
            cache: Mutex::new(Cache {
                max_offset: -1,
                ..Default::default()
            }),
            inflight: AtomicUsize::new(0),
            flow_controlled: AtomicU64::new(0),
        })
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Caches pulled messages, unless a seek happened since the pull was issued.
    fn put(&self, msgs: &[MessageExt], generation: u64) -> bool {
        let mut c = lock(&self.cache);
        if self.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        for m in msgs {
            if c.msgs.insert(m.queue_offset, m.clone()).is_none() {
                c.bytes += m.record.body.len();
            }
            c.max_offset = c.max_offset.max(m.queue_offset);
        }
        true
    }

    /// Removes consumed messages; returns the offset up to which everything is consumed
    /// (the smallest still cached, else one past the highest cached).
    pub fn remove(&self, offsets: impl IntoIterator<Item = i64>) -> i64 {
        let mut c = lock(&self.cache);
        for o in offsets {
            if let Some(m) = c.msgs.remove(&o) {
                c.bytes -= m.record.body.len();
            }
        }
        match c.msgs.keys().next() {
            Some(first) => *first,
            None => c.max_offset + 1,
        }
    }

    /// Moves the next pull offset, unless a seek happened since the pull was issued.
    fn advance(&self, generation: u64, next: i64) -> bool {
        let _c = lock(&self.cache);
        let same = self.generation.load(Ordering::Acquire) == generation;
        if same {
            self.next_offset.store(next, Ordering::Release);
        }
        same
    }

    /// Empties the cache (a seek); consumption resumes from `offset`.
    pub fn reset(&self, offset: i64) {
        let mut c = lock(&self.cache);
        self.generation.fetch_add(1, Ordering::AcqRel);
        *c = Cache {
            max_offset: offset - 1,
            ..Default::default()
        };
        self.next_offset.store(offset, Ordering::Release);
    }

    pub fn cached(&self) -> (usize, usize) {
        let c = lock(&self.cache);
        (c.msgs.len(), c.bytes)
    }
}

/// Told about newly cached messages of a queue.
pub(crate) type Sink = Arc<dyn Fn(&Arc<QueueState>, Vec<MessageExt>) + Send + Sync>;

/// Handle to the pull thread.
#[derive(Clone)]
pub(crate) struct PullService {
    tx: flume::Sender<(Instant, Arc<QueueState>)>,
}

impl PullService {
    /// Starts the thread; it ends when `running` goes false.
    pub fn start(
        core: Arc<Core>,
        sink: Sink,
        running: Arc<AtomicBool>,
    ) -> (PullService, std::thread::JoinHandle<()>) {
        let (tx, rx) = flume::unbounded::<(Instant, Arc<QueueState>)>();
        let service = PullService { tx };
        let me = service.clone();
        let handle = delay_thread("PullMessageService", rx, running, move |q| {
            me.pull(&core, &sink, q)
        });
        (service, handle)
    }

    /// Starts pulling a queue now.
    pub fn submit(&self, q: Arc<QueueState>) {
        let _ = self.tx.send((Instant::now(), q));
    }

    fn submit_later(&self, q: Arc<QueueState>, delay: Duration) {
        let _ = self.tx.send((Instant::now() + delay, q));
    }

    fn pull(&self, core: &Arc<Core>, sink: &Sink, q: Arc<QueueState>) {
        if q.is_dropped() {
            return;
        }
        let (count, bytes) = q.cached();
        if count >= core.opts.pull_threshold_for_queue
            || bytes >= core.opts.pull_threshold_size_for_queue
        {
            if q.flow_controlled.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                log::warn!(
                    "the cached message count exceeds the threshold {} or size {} MiB, so do \
                     flow control: {count} messages, {} MiB cached of {}",
                    core.opts.pull_threshold_for_queue,
                    core.opts.pull_threshold_size_for_queue >> 20,
                    bytes >> 20,
                    q.mq
                );
            }
            return self.submit_later(q, DELAY_ON_FLOW_CONTROL);
        }
        let Some(addr) = core.broker_addr(&q.mq.broker_name) else {
            return self.submit_later(q, DELAY_ON_ERROR);
        };
        // Assigned queues of an unsubscribed topic (lite pull assign) take everything.
        let sub = core.sub(&q.mq.topic);
        let expr = sub.as_ref().map_or("*", |s| s.expr.as_str()).to_string();
        let generation = q.generation.load(Ordering::Acquire);
        let offset = q.next_offset.load(Ordering::Acquire);
        let mut flags = sys_flag::SUSPEND | sys_flag::SUBSCRIPTION;
        // Clustering piggybacks the consumed offset on the pull, as the Java client does.
        let commit = match core.opts.model {
            MessageModel::Clustering => core.offsets.get(&q.mq).filter(|o| *o > 0),
            MessageModel::Broadcasting => None,
        };
        if commit.is_some() {
            flags |= sys_flag::COMMIT_OFFSET;
        }
        let suspend = core.opts.broker_suspend_max;
        let hdr = PullMessageRequestHeader {
            consumer_group: core.group.clone(),
            topic: q.mq.topic.clone(),
            queue_id: q.mq.queue_id,
            queue_offset: offset,
            max_msg_nums: core.opts.pull_batch_size as i32,
            sys_flag: flags,
            commit_offset: commit.unwrap_or(0),
            suspend_timeout_millis: suspend.as_millis() as i64,
            subscription: Some(expr),
            sub_version: 0,
            expression_type: Some("TAG".into()),
        };
        let mut r = RemotingCommand::request(request::PULL_MESSAGE, HeaderCodec::Json);
        hdr.encode(&mut r);
        let (me, core2, sink, q2) = (self.clone(), core.clone(), sink.clone(), q.clone());
        core.client.invoke_async(
            &addr,
            r,
            suspend + Duration::from_secs(15),
            Box::new(move |res| {
                let (core, q) = (core2, q2);
                if q.is_dropped() {
                    return;
                }
                if q.generation.load(Ordering::Acquire) != generation {
                    // A seek moved the queue meanwhile: pull again from the new offset.
                    return me.submit(q);
                }
                let resp = match res {
                    Ok(r) => r,
                    Err(e) => {
                        log::debug!("pull {} failed: {e}", q.mq);
                        return me.submit_later(q, DELAY_ON_ERROR);
                    }
                };
                let Ok(h) = PullMessageResponseHeader::decode(&resp) else {
                    return me.submit_later(q, DELAY_ON_ERROR);
                };
                match resp.code {
                    response::SUCCESS => {
                        let mut msgs = decode_pull_body(&q.mq, &resp.body);
                        if let Some(s) = &sub {
                            msgs.retain(|m| s.filter.matches(m));
                        }
                        if msgs.is_empty() {
                            if q.advance(generation, h.next_begin_offset) {
                                skip_to(&core, &q, h.next_begin_offset);
                            }
                        } else if q.put(&msgs, generation)
                            && q.advance(generation, h.next_begin_offset)
                        {
                            sink(&q, msgs);
                        }
                        me.submit(q);
                    }
                    response::PULL_NOT_FOUND | response::PULL_RETRY_IMMEDIATELY => {
                        if q.advance(generation, h.next_begin_offset) {
                            skip_to(&core, &q, h.next_begin_offset);
                        }
                        me.submit(q);
                    }
                    response::PULL_OFFSET_MOVED => {
                        log::warn!(
                            "the pull offset {offset} of {} is illegal, moving to {}",
                            q.mq,
                            h.next_begin_offset
                        );
                        if q.advance(generation, h.next_begin_offset) {
                            skip_to(&core, &q, h.next_begin_offset);
                        }
                        me.submit(q);
                    }
                    code => {
                        log::warn!(
                            "pull {} answered {code}: {}",
                            q.mq,
                            resp.remark.unwrap_or_default()
                        );
                        me.submit_later(q, DELAY_ON_ERROR);
                    }
                }
            }),
        );
    }
}

/// A thread that hands each item it receives to `handler` once the item's instant has come;
/// it ends when `running` goes false or every sender is gone.
pub(crate) fn delay_thread<T: Send + 'static>(
    name: &str,
    rx: flume::Receiver<(Instant, T)>,
    running: Arc<AtomicBool>,
    mut handler: impl FnMut(T) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut later: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
            let mut parked: BTreeMap<u64, T> = BTreeMap::new();
            let mut seq = 0u64;
            while running.load(Ordering::Relaxed) {
                let now = Instant::now();
                while let Some(Reverse((due, id))) = later.peek().copied() {
                    if due > now {
                        break;
                    }
                    later.pop();
                    if let Some(t) = parked.remove(&id) {
                        handler(t);
                    }
                }
                let wait = later
                    .peek()
                    .map(|Reverse((due, _))| due.saturating_duration_since(now))
                    .unwrap_or(Duration::from_millis(100))
                    .min(Duration::from_millis(100));
                match rx.recv_timeout(wait) {
                    Ok((due, t)) if due <= Instant::now() => handler(t),
                    Ok((due, t)) => {
                        seq += 1;
                        parked.insert(seq, t);
                        later.push(Reverse((due, seq)));
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => return,
                    Err(flume::RecvTimeoutError::Timeout) => {}
                }
            }
        })
        .expect("spawn a client thread")
}

/// Nothing (matching) up to `offset`: if nothing is waiting to be consumed, the consumed
/// offset moves there (upstream's `correctTagsOffset`).
fn skip_to(core: &Core, q: &QueueState, offset: i64) {
    let mut c = lock(&q.cache);
    if c.msgs.is_empty() && q.inflight.load(Ordering::Acquire) == 0 {
        c.max_offset = c.max_offset.max(offset - 1);
        drop(c);
        core.offsets.update(&q.mq, offset, true);
    }
}
