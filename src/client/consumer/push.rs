//! The push consumer: the pull service fills each owned queue's cache, a pool of
//! `ConsumeMessageThread_N` threads hands the messages to the listener, and the consumed
//! offset (everything before the oldest message still cached) is committed every
//! `persist_offset_interval`, as soon as a queue goes idle, when a queue is released, and at
//! shutdown.
//! Which queues it owns is decided in `member` (rebalance).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::{lock, Core};
use super::member::Member;
use super::pull::{delay_thread, PullService, QueueState, Sink};
use super::{ConsumeResult, ConsumerOptions, MessageExt, MessageModel};
use crate::client::producer::MessageQueue;

/// What the listener is told besides the messages.
#[derive(Debug, Clone)]
pub struct ConsumeContext {
    pub queue: MessageQueue,
}

type Listener = Arc<dyn Fn(&[MessageExt], &ConsumeContext) -> ConsumeResult + Send + Sync>;

struct ConsumeRequest {
    q: Arc<QueueState>,
    msgs: Vec<MessageExt>,
}

/// A push consumer (`DefaultMQPushConsumer`).
pub struct PushConsumer {
    inner: Arc<Member>,
    threads: Vec<JoinHandle<()>>,
}

impl PushConsumer {
    /// Starts a clustering consumer of `subs` (topic, tag expression) as `group`, with
    /// default options; every batch the listener returns from counts as consumed.
    pub fn start(
        group: &str,
        namesrv: Option<&str>,
        subs: &[(&str, &str)],
        listener: impl Fn(&[MessageExt]) + Send + Sync + 'static,
    ) -> Result<PushConsumer, String> {
        PushConsumer::start_with(
            group,
            namesrv,
            ConsumerOptions::default(),
            subs,
            move |m: &[MessageExt], _: &ConsumeContext| {
                listener(m);
                ConsumeResult::Success
            },
        )
    }

    /// Starts a consumer with explicit options and a listener that says what became of the
    /// messages (a panic counts as `ReconsumeLater`).
    pub fn start_with(
        group: &str,
        namesrv: Option<&str>,
        opts: ConsumerOptions,
        subs: &[(&str, &str)],
        listener: impl Fn(&[MessageExt], &ConsumeContext) -> ConsumeResult + Send + Sync + 'static,
    ) -> Result<PushConsumer, String> {
        let (core, incoming) = Core::new(group, namesrv, opts, "CONSUME_PASSIVELY")?;
        for (t, e) in subs {
            core.subscribe(t, e);
        }
        let running = Arc::new(AtomicBool::new(true));
        let listener: Listener = Arc::new(listener);
        let mut threads = Vec::new();

        let (work_tx, work_rx) = flume::unbounded::<ConsumeRequest>();
        let (retry_tx, retry_rx) = flume::unbounded::<(Instant, ConsumeRequest)>();
        let w = work_tx.clone();
        threads.push(delay_thread(
            "ConsumeRetry",
            retry_rx,
            running.clone(),
            move |r| {
                let _ = w.send(r);
            },
        ));
        for n in 1..=core.opts.consume_threads.max(1) {
            let (rx, retry, l, c, run) = (
                work_rx.clone(),
                retry_tx.clone(),
                listener.clone(),
                core.clone(),
                running.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ConsumeMessageThread_{n}"))
                    .spawn(move || consume_loop(&c, &rx, &retry, &l, &run))
                    .map_err(|e| format!("spawn a consume thread: {e}"))?,
            );
        }
        let batch = core.opts.consume_batch_max_size.max(1);
        let sink: Sink = Arc::new(move |q: &Arc<QueueState>, msgs: Vec<MessageExt>| {
            for chunk in msgs.chunks(batch) {
                let _ = work_tx.send(ConsumeRequest {
                    q: q.clone(),
                    msgs: chunk.to_vec(),
                });
            }
        });
        let (pull, h) = PullService::start(core.clone(), sink, running.clone());
        threads.push(h);
        let inner = Member::new(core, running, pull);
        threads.push(inner.start_service(incoming)?);
        log::info!(
            "push consumer {} of group {} started ({:?})",
            inner.core.client_id,
            inner.core.group,
            inner.core.opts.model
        );
        Ok(PushConsumer { inner, threads })
    }

    /// This member's client id (`ip@instance`).
    pub fn client_id(&self) -> &str {
        &self.inner.core.client_id
    }

    /// Queues this consumer currently owns.
    pub fn assigned(&self) -> Vec<MessageQueue> {
        let mut v: Vec<_> = lock(&self.inner.queues).keys().cloned().collect();
        v.sort();
        v
    }

    /// How many times pulling was paused by flow control, over all owned queues.
    pub fn flow_control_pauses(&self) -> u64 {
        lock(&self.inner.queues)
            .values()
            .map(|q| q.flow_controlled.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops pulling and consuming, commits offsets and leaves the group.
    pub fn shutdown(self) {
        let inner = &self.inner;
        inner.stop();
        for t in self.threads {
            let _ = t.join();
        }
        inner.leave();
        log::info!("push consumer {} shut down", inner.core.client_id);
    }
}

fn consume_loop(
    core: &Core,
    rx: &flume::Receiver<ConsumeRequest>,
    retry: &flume::Sender<(Instant, ConsumeRequest)>,
    listener: &Listener,
    running: &AtomicBool,
) {
    loop {
        let mut req = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(flume::RecvTimeoutError::Timeout) if running.load(Ordering::Relaxed) => continue,
            Err(_) => return,
        };
        let q = req.q.clone();
        // Counted before the dropped check, so a release either sees this call running or
        // this call sees the release.
        q.inflight.fetch_add(1, Ordering::SeqCst);
        if q.dropped.load(Ordering::SeqCst) {
            q.inflight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let ctx = ConsumeContext {
            queue: q.mq.clone(),
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| listener(&req.msgs, &ctx)))
            .unwrap_or_else(|_| {
                log::warn!(
                    "the listener panicked on {} messages of {}",
                    req.msgs.len(),
                    q.mq
                );
                ConsumeResult::ReconsumeLater
            });
        let consumed = match (result, core.opts.model) {
            (ConsumeResult::Success, _) => true,
            (ConsumeResult::ReconsumeLater, MessageModel::Broadcasting) => {
                // As upstream: broadcasting does not redeliver.
                log::warn!(
                    "BROADCASTING, the message consume failed, drop it: {} messages of {}",
                    req.msgs.len(),
                    q.mq
                );
                true
            }
            (ConsumeResult::ReconsumeLater, MessageModel::Clustering) => false,
        };
        if consumed {
            let offset = q.remove(req.msgs.iter().map(|m| m.queue_offset));
            if !q.dropped.load(Ordering::SeqCst) {
                core.offsets.update(&q.mq, offset, true);
            }
        } else {
            // They stay cached, so the offset does not move past them; deliver them again.
            for m in &mut req.msgs {
                m.record.meta.reconsume_times += 1;
            }
            let _ = retry.send((Instant::now() + core.opts.reconsume_delay, req));
        }
        q.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}
