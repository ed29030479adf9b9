//! What push and lite pull consumers share: the owned queues, and the service thread that
//! heartbeats, rebalances and persists offsets.
//!
//! Rebalance (every `rebalance_interval`, and at once on NOTIFY_CONSUMER_IDS_CHANGED) keeps
//! the owned queues equal to the group's allocation. A released queue stops being pulled and
//! consumed; its running listener calls get up to `release_wait` to finish; then its offset is
//! committed synchronously, so the next owner starts where this one stopped. A new queue
//! starts from the committed offset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::{lock, Core};
use super::pull::{PullService, QueueState};
use crate::client::producer::MessageQueue;
use crate::protocol::code::request;
use crate::protocol::RemotingCommand;

pub(crate) struct Member {
    pub core: Arc<Core>,
    pub running: Arc<AtomicBool>,
    pub queues: Mutex<HashMap<MessageQueue, Arc<QueueState>>>,
    pub pull: PullService,
    /// Off for a lite pull consumer with assigned queues.
    pub auto_rebalance: AtomicBool,
    /// Set to make the service thread rebalance at its next turn.
    pub rebalance_now: AtomicBool,
}

impl Member {
    pub fn new(core: Arc<Core>, running: Arc<AtomicBool>, pull: PullService) -> Arc<Member> {
        Arc::new(Member {
            core,
            running,
            queues: Mutex::new(HashMap::new()),
            pull,
            auto_rebalance: AtomicBool::new(true),
            rebalance_now: AtomicBool::new(false),
        })
    }

    pub fn start_service(
        self: &Arc<Self>,
        incoming: flume::Receiver<(String, RemotingCommand)>,
    ) -> Result<JoinHandle<()>, String> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("RebalanceService".into())
            .spawn(move || me.service_loop(&incoming))
            .map_err(|e| format!("spawn the rebalance thread: {e}"))
    }

    /// Owns `mq` from `offset`, and starts pulling it.
    pub fn add(&self, mq: &MessageQueue, offset: i64) -> Arc<QueueState> {
        let q = QueueState::new(mq.clone(), offset);
        if let Some(old) = lock(&self.queues).insert(mq.clone(), q.clone()) {
            old.dropped.store(true, Ordering::SeqCst);
        }
        self.pull.submit(q.clone());
        q
    }

    /// Gives up queues: no more pulls or listener calls; running calls get `release_wait`;
    /// then the offsets are committed synchronously.
    pub fn release(&self, qs: &[Arc<QueueState>]) {
        for q in qs {
            q.dropped.store(true, Ordering::SeqCst);
        }
        for q in qs {
            wait_idle(q, self.core.opts.release_wait);
        }
        let mqs: Vec<MessageQueue> = qs.iter().map(|q| q.mq.clone()).collect();
        self.core.persist(Some(&mqs));
        for mq in &mqs {
            self.core.offsets.remove(mq);
        }
    }

    /// Ends the threads (callers join them, then call [`Member::leave`]); releases
    /// everything and commits.
    pub fn stop(&self) {
        // First, so the service thread starts no heartbeat or rebalance after this.
        self.running.store(false, Ordering::Relaxed);
        let qs: Vec<Arc<QueueState>> = lock(&self.queues).drain().map(|(_, q)| q).collect();
        self.release(&qs);
        self.core.persist(None);
    }

    /// Leaves the group, once the threads have ended: a heartbeat still in flight during
    /// [`Member::stop`] would otherwise re-register this member after its unregistration,
    /// and the group would rebalance around a member that is gone.
    pub fn leave(&self) {
        let late: Vec<Arc<QueueState>> = lock(&self.queues).drain().map(|(_, q)| q).collect();
        if !late.is_empty() {
            self.release(&late);
        }
        self.core.unregister();
    }

    /// Heartbeats, rebalance and offset persistence, on one thread.
    fn service_loop(self: &Arc<Self>, incoming: &flume::Receiver<(String, RemotingCommand)>) {
        let inner = self;
        let core = &inner.core;
        let mut next_heartbeat = Instant::now();
        let mut next_rebalance = Instant::now() + core.opts.rebalance_interval;
        let mut next_persist = Instant::now() + core.opts.persist_offset_interval;
        while inner.running.load(Ordering::Relaxed) {
            let mut now_rebalance = false;
            if Instant::now() >= next_heartbeat {
                // Until a broker of our topics answers (a new topic's route may not be on the
                // name server yet), try every second.
                let reached = core.heartbeat();
                now_rebalance = true;
                next_heartbeat = Instant::now()
                    + if reached {
                        core.opts.heartbeat_interval
                    } else {
                        Duration::from_secs(1)
                    };
            }
            match incoming.recv_timeout(Duration::from_millis(50)) {
                Ok((from, cmd)) if cmd.code == request::NOTIFY_CONSUMER_IDS_CHANGED => {
                    log::info!("receive broker's notification[{from}], the consumer group: {} changed, rebalance immediately", core.group);
                    now_rebalance = true;
                }
                _ => {}
            }
            now_rebalance |= inner.rebalance_now.swap(false, Ordering::AcqRel);
            if inner.auto_rebalance.load(Ordering::Relaxed)
                && (now_rebalance || Instant::now() >= next_rebalance)
            {
                while incoming.try_recv().is_ok() {}
                inner.rebalance();
                next_rebalance = Instant::now() + core.opts.rebalance_interval;
            }
            if Instant::now() >= next_persist {
                core.persist(None);
                next_persist = Instant::now() + core.opts.persist_offset_interval;
            } else {
                // A queue that caught up commits at once: a paused stream leaves nothing
                // uncommitted for the next owner to redeliver.
                let idle: Vec<MessageQueue> = lock(&inner.queues)
                    .iter()
                    .filter(|(mq, q)| {
                        core.offsets.is_dirty(mq)
                            && q.inflight.load(Ordering::SeqCst) == 0
                            && q.cached().0 == 0
                    })
                    .map(|(mq, _)| mq.clone())
                    .collect();
                if !idle.is_empty() {
                    core.persist(Some(&idle));
                }
            }
        }
    }

    fn rebalance(&self) {
        let inner = self;
        let core = &inner.core;
        let topics: Vec<String> = lock(&core.subs).keys().cloned().collect();
        for topic in topics {
            let Some(want) = core.allocation(&topic) else {
                continue;
            };
            let released: Vec<Arc<QueueState>> = {
                let mut table = lock(&inner.queues);
                let gone: Vec<MessageQueue> = table
                    .keys()
                    .filter(|k| k.topic == topic && !want.contains(k))
                    .cloned()
                    .collect();
                gone.iter().filter_map(|mq| table.remove(mq)).collect()
            };
            inner.release(&released);
            let mut added = 0;
            for mq in &want {
                if lock(&inner.queues).contains_key(mq) {
                    continue;
                }
                core.offsets.remove(mq);
                let Some(start) = core.start_offset(mq) else {
                    log::warn!("no start offset for {mq} yet; retrying at the next rebalance");
                    continue;
                };
                inner.add(mq, start);
                added += 1;
            }
            if added > 0 || !released.is_empty() {
                log::info!(
                    "rebalance {} of group {}: {} queues now (+{added} -{}) for {}",
                    topic,
                    core.group,
                    want.len(),
                    released.len(),
                    core.client_id
                );
            }
        }
    }
}

fn wait_idle(q: &QueueState, bound: Duration) {
    let until = Instant::now() + bound;
    while q.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
}
