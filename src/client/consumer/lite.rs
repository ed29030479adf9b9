//! The lite pull consumer (`DefaultLitePullConsumer`): the pull service fills each owned
//! queue's cache in the background and [`LitePullConsumer::poll`] hands out what is cached.
//! Queues come from a subscription (rebalanced like a push consumer's) or are assigned by
//! the application. With auto commit (the default) a poll counts the messages it returns
//! as consumed, and offsets are persisted every `persist_offset_interval`; without it,
//! [`LitePullConsumer::commit_sync`] commits what was polled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::{lock, Core};
use super::member::Member;
use super::pull::{PullService, QueueState, Sink};
use super::{ConsumerOptions, MessageExt};
use crate::client::producer::MessageQueue;

/// A lite pull consumer.
pub struct LitePullConsumer {
    member: Arc<Member>,
    /// Woken when a queue's cache gets messages.
    arrived: flume::Receiver<()>,
    /// Round-robin start for the next poll.
    next: AtomicUsize,
    /// `autoCommit`.
    auto_commit: AtomicBool,
    /// Offsets up to which messages were polled, not yet committed (manual commit).
    polled: Mutex<HashMap<MessageQueue, i64>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl LitePullConsumer {
    /// Starts a consumer of `group` that owns no queue until [`subscribe`] or [`assign`].
    ///
    /// [`subscribe`]: LitePullConsumer::subscribe
    /// [`assign`]: LitePullConsumer::assign
    pub fn start(
        group: &str,
        namesrv: Option<&str>,
        opts: ConsumerOptions,
    ) -> Result<LitePullConsumer, String> {
        let (core, incoming) = Core::new(group, namesrv, opts, "CONSUME_ACTIVELY")?;
        let running = Arc::new(AtomicBool::new(true));
        let (tx, arrived) = flume::unbounded();
        let sink: Sink = Arc::new(move |_: &Arc<QueueState>, _: Vec<MessageExt>| {
            let _ = tx.send(());
        });
        let (pull, h) = PullService::start(core.clone(), sink, running.clone());
        let member = Member::new(core, running, pull);
        let service = member.start_service(incoming)?;
        Ok(LitePullConsumer {
            member,
            arrived,
            next: AtomicUsize::new(0),
            auto_commit: AtomicBool::new(true),
            polled: Mutex::new(HashMap::new()),
            threads: Mutex::new(vec![h, service]),
        })
    }

    fn core(&self) -> &Core {
        &self.member.core
    }

    /// This member's client id (`ip@instance`).
    pub fn client_id(&self) -> &str {
        &self.core().client_id
    }

    /// `setAutoCommit`.
    pub fn set_auto_commit(&self, on: bool) {
        self.auto_commit.store(on, Ordering::Relaxed);
    }

    /// Subscribes to `topic` with a tag expression; the group's rebalance decides the queues.
    pub fn subscribe(&self, topic: &str, expr: &str) {
        self.core().subscribe(topic, expr);
        self.member.auto_rebalance.store(true, Ordering::Relaxed);
        // Heartbeat with the new subscription, then rebalance, on the service thread.
        self.core().heartbeat();
        self.member.rebalance_now.store(true, Ordering::Release);
    }

    /// Takes exactly these queues (no rebalance), starting from the committed offsets.
    pub fn assign(&self, queues: &[MessageQueue]) -> Result<(), String> {
        self.member.auto_rebalance.store(false, Ordering::Relaxed);
        let mut topics: Vec<&str> = queues.iter().map(|q| q.topic.as_str()).collect();
        topics.dedup();
        for t in topics {
            self.core()
                .topic_queues(t)
                .ok_or_else(|| format!("no route info of this topic: {t}"))?;
        }
        let gone: Vec<Arc<QueueState>> = {
            let mut table = lock(&self.member.queues);
            let keys: Vec<MessageQueue> = table
                .keys()
                .filter(|k| !queues.contains(k))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| table.remove(k)).collect()
        };
        self.member.release(&gone);
        for mq in queues {
            if lock(&self.member.queues).contains_key(mq) {
                continue;
            }
            let start = self
                .core()
                .start_offset(mq)
                .ok_or_else(|| format!("no offset of {mq}: broker unreachable"))?;
            self.member.add(mq, start);
        }
        Ok(())
    }

    /// The queues owned now.
    pub fn assignment(&self) -> Vec<MessageQueue> {
        let mut v: Vec<_> = lock(&self.member.queues).keys().cloned().collect();
        v.sort();
        v
    }

    /// Up to `pull_batch_size` messages, waiting up to `timeout` for the first.
    pub fn poll(&self, timeout: Duration) -> Vec<MessageExt> {
        let until = Instant::now() + timeout;
        loop {
            let got = self.take(self.core().opts.pull_batch_size as usize);
            if !got.is_empty() {
                return got;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            let _ = self
                .arrived
                .recv_timeout(left.min(Duration::from_millis(100)));
        }
    }

    /// Takes cached messages, queue by queue from a rotating start, in queue order.
    fn take(&self, max: usize) -> Vec<MessageExt> {
        let mut qs: Vec<Arc<QueueState>> = lock(&self.member.queues).values().cloned().collect();
        if qs.is_empty() {
            return Vec::new();
        }
        qs.sort_by(|a, b| a.mq.cmp(&b.mq));
        let start = self.next.fetch_add(1, Ordering::Relaxed) % qs.len();
        qs.rotate_left(start);
        let mut out = Vec::new();
        for q in qs {
            if out.len() >= max {
                break;
            }
            let taken: Vec<MessageExt> = {
                let c = lock(&q.cache);
                c.msgs.values().take(max - out.len()).cloned().collect()
            };
            if taken.is_empty() || q.is_dropped() {
                continue;
            }
            let offset = q.remove(taken.iter().map(|m| m.queue_offset));
            if self.auto_commit.load(Ordering::Relaxed) {
                // Not increase-only: after a seek back, the offset follows the polls.
                self.core().offsets.update(&q.mq, offset, false);
            } else {
                lock(&self.polled).insert(q.mq.clone(), offset);
            }
            out.extend(taken);
        }
        out
    }

    /// Commits the offsets of everything polled so far, synchronously.
    pub fn commit_sync(&self) {
        let polled: Vec<(MessageQueue, i64)> = lock(&self.polled).drain().collect();
        for (mq, o) in polled {
            self.core().offsets.update(&mq, o, false);
        }
        self.core().persist(None);
    }

    /// Commits the given offsets (the next message to consume, per queue), synchronously.
    pub fn commit(&self, offsets: &[(MessageQueue, i64)]) {
        for (mq, o) in offsets {
            lock(&self.polled).remove(mq);
            self.core().offsets.update(mq, *o, false);
        }
        let mqs: Vec<MessageQueue> = offsets.iter().map(|(m, _)| m.clone()).collect();
        self.core().persist(Some(&mqs));
    }

    /// The group's committed offset of `mq` (on the broker, or in the local file).
    pub fn committed(&self, mq: &MessageQueue) -> Option<i64> {
        match self.core().opts.model {
            super::MessageModel::Clustering => self.core().query_committed(mq).ok().flatten(),
            super::MessageModel::Broadcasting => self.core().offsets.get(mq),
        }
    }

    /// The next poll of `mq` starts at `offset` (an owned queue). The committed offset does
    /// not change until the next commit.
    pub fn seek(&self, mq: &MessageQueue, offset: i64) -> Result<(), String> {
        let q = lock(&self.member.queues)
            .get(mq)
            .cloned()
            .ok_or_else(|| format!("the message queue is not in assigned list: {mq}"))?;
        let (min, max) = (self.core().min_offset(mq), self.core().max_offset(mq));
        if let (Some(min), Some(max)) = (min, max) {
            if offset < min || offset > max {
                return Err(format!(
                    "seek offset illegal, seek offset = {offset}, min offset = {min}, max offset = {max}"
                ));
            }
        }
        // The committed offset moves only by a commit (or the next auto-committing poll).
        q.reset(offset);
        lock(&self.polled).remove(mq);
        Ok(())
    }

    /// Seeks to the first message stored at or after `timestamp` (ms since the epoch).
    pub fn seek_to_timestamp(&self, mq: &MessageQueue, timestamp: i64) -> Result<(), String> {
        let o = self
            .core()
            .search_offset(mq, timestamp)
            .ok_or_else(|| format!("search offset of {mq} failed"))?;
        self.seek(mq, o)
    }

    /// Seeks to the oldest stored message.
    pub fn seek_to_begin(&self, mq: &MessageQueue) -> Result<(), String> {
        let o = self.core().min_offset(mq).ok_or("min offset unknown")?;
        self.seek(mq, o)
    }

    /// Seeks past the newest message.
    pub fn seek_to_end(&self, mq: &MessageQueue) -> Result<(), String> {
        let o = self.core().max_offset(mq).ok_or("max offset unknown")?;
        self.seek(mq, o)
    }

    /// Commits (with auto commit), leaves the group and stops the threads.
    pub fn shutdown(self) {
        if !self.auto_commit.load(Ordering::Relaxed) {
            // Uncommitted polls stay uncommitted, as the application asked.
            lock(&self.polled).clear();
        }
        self.member.stop();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        self.member.leave();
    }
}
