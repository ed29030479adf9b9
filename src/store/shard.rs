//! One store shard, on one glommio executor: its commitlog, the consume queues of the
//! (topic, queueId) pairs that hash to it, its index files, and the tasks that keep them:
//!
//! - the commitlog flusher ([`CommitLog::run_flusher`]);
//! - the dispatcher, which builds consume-queue and index entries from appended records, off
//!   the append path (appends queue work and return; a reader never sees a consume-queue
//!   entry before its record is readable, because the record is in the tail cache first);
//! - the logics flusher, which writes consume queues and index files every
//!   `flushIntervalConsumeQueue` and then the shard's checkpoint slot;
//! - retention, which deletes expired segments and the queue and index files behind them.
//!
//! Everything here is `!Send` and runs on the shard's executor. No `RefCell` borrow is held
//! across an await.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::io::{BufferedFile, OpenOptions};

use super::commitlog::{blocking, AppendItem, CommitLog};
use super::config::{FlushDiskType, StoreConfig};
use super::consume_queue::ConsumeQueue;

/// Expired segments are freed this many bytes at a time, this far apart (see
/// `remove_file_gradually`): 1 GiB goes in 512 slices over about 1.3 s. Each truncation is
/// kernel work on some core (measured here: ~0.4 ms per 2 MiB, ~2.1 ms per 16 MiB); small
/// slices keep any one from holding a core the shards need for long.
const DELETE_STEP_BYTES: u64 = 2 << 20;
const DELETE_STEP_PAUSE_MS: u64 = 2;
/// From this many consume queues due for a sync in one flush, one `syncfs` replaces their
/// `fdatasync`s.
const SYNCFS_QUEUES: usize = 64;
/// Read-ahead DMA reads one `get_messages` keeps in flight (each at most `read_ahead_bytes`).
const READS_IN_FLIGHT: usize = 4;
use super::error::{check_written, io_err, Result, StoreError};
use super::format::{index_key_prefix, Checkpoint, CqEntry, IndexLayout, ShardCheckpoint};
use super::index::{local_time, IndexService};
use super::notify::Notify;
use super::offset::{CommitLogOffset, ShardId};
use crate::message::record::{self, RecordMeta, RecordView};
use crate::message::{msgid, properties, tags_code};

/// The bytes of a group of records `read_entries` reads at once.
enum Span {
    Cached(Bytes),
    Reading(glommio::Task<Result<Bytes>>),
}

/// `syncfs(2)` of the filesystem holding `dir`. Blocking: call it on the blocking pool.
fn syncfs(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    // SAFETY: `f` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The [`index_key_prefix`] of `topic`, reusing `last` (the previous record's topic and
/// prefix) when the topic repeats: records come in runs of one topic, in a dispatched batch
/// as in a recovery window.
fn key_prefix<'a>(last: &mut Option<(&'a [u8], i32)>, topic: &'a [u8]) -> i32 {
    match *last {
        Some((t, p)) if t == topic => p,
        _ => {
            let p = index_key_prefix(topic);
            *last = Some((topic, p));
            p
        }
    }
}

/// One message to store. All messages of one `put` share topic and queue.
#[derive(Debug, Clone)]
pub struct PutMessage {
    /// Shared by the messages of a batch (one allocation per request, not per message).
    pub topic: std::sync::Arc<str>,
    pub queue_id: u32,
    pub flag: i32,
    pub body: Bytes,
    /// Properties in wire form (`name 0x01 value 0x02 ...`).
    pub properties: Bytes,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
}

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub offset: CommitLogOffset,
    pub size: u32,
    pub queue_offset: u64,
    pub store_timestamp: i64,
    pub store_host: SocketAddr,
}

impl PutResult {
    /// The offset msgId a broker returns for this message (reference §6.1).
    pub fn msg_id(&self) -> String {
        msgid::create_message_id(self.store_host, self.offset.as_i64())
    }
}

/// Upstream's `GetMessageStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    Found,
    NoMatchedMessage,
    MessageWasRemoving,
    OffsetFoundNull,
    OffsetOverflowBadly,
    OffsetOverflowOne,
    OffsetTooSmall,
    NoMatchedLogicQueue,
    NoMessageInQueue,
}

/// Messages read from a queue: whole commitlog records (the pull-response body layout).
#[derive(Debug, Clone)]
pub struct GetResult {
    pub status: GetStatus,
    pub messages: Vec<Bytes>,
    /// Queue offset of each message.
    pub queue_offsets: Vec<u64>,
    pub next_begin_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// Per-shard numbers for stats and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: ShardId,
    pub min_pos: u64,
    pub written: u64,
    pub flushed: u64,
    pub durable: u64,
    pub segments: usize,
    pub queues: usize,
    pub dispatched: u64,
}

/// Result of [`ShardStore::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records scanned and verified in the commitlog.
    pub records: u64,
    /// Consume-queue entries checked.
    pub entries: u64,
    /// Everything found wrong, one line each (empty when consistent).
    pub problems: Vec<String>,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments: usize,
    pub queue_files: usize,
    pub index_files: usize,
}

/// Stable owner of a (topic, queueId): FNV-1a over the topic and the queue id.
pub fn shard_of(topic: &str, queue_id: u32, shards: usize) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes().chain(queue_id.to_be_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let n = shards.clamp(1, super::offset::MAX_SHARDS) as u64;
    ShardId::new((h % n) as usize).unwrap_or_default()
}

struct DispatchItem {
    cq: Rc<ConsumeQueue>,
    queue_offset: u64,
    offset: CommitLogOffset,
    record: Bytes,
}

type QueueMap = HashMap<Rc<str>, Vec<Option<Rc<ConsumeQueue>>>>;

/// A store shard.
pub struct ShardStore {
    id: ShardId,
    shards: usize,
    cfg: StoreConfig,
    log: Rc<CommitLog>,
    queues: RefCell<QueueMap>,
    index: Option<Rc<IndexService>>,
    dispatch_q: RefCell<VecDeque<DispatchItem>>,
    dispatch_signal: Notify,
    /// Commitlog position below which every record is dispatched.
    dispatched: Cell<u64>,
    /// Signalled after each dispatch batch: new messages are readable from their queues.
    arrivals: Notify,
    checkpoint: BufferedFile,
    checkpoint_path: PathBuf,
    closing: Cell<bool>,
    tasks_done: Notify,
    running_tasks: Cell<u32>,
    retention_lock: Cell<bool>,
}

async fn list_dirs(dir: PathBuf) -> Result<Vec<String>> {
    glommio::executor()
        .spawn_blocking(move || -> Result<Vec<String>> {
            let mut out = Vec::new();
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(io_err("listing", &dir)(e)),
            };
            for ent in rd.flatten() {
                if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    if let Some(n) = ent.file_name().to_str() {
                        out.push(n.to_string());
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
}

impl ShardStore {
    /// Opens the shard: loads its queues and index, opens (and with `recover` scans) its
    /// commitlog, repairs queues and index from it, and starts the shard's tasks.
    pub async fn open(
        id: ShardId,
        shards: usize,
        cfg: StoreConfig,
        cp: Option<ShardCheckpoint>,
        recover: bool,
    ) -> Result<Rc<ShardStore>> {
        let started = std::time::Instant::now();
        // Before any other DMA file: the checkpoint holds 4 KiB (written by `Store::open`).
        let cp_path = cfg.root.join("checkpoint");
        super::dma::prime_iopoll_probe(&cp_path)
            .await
            .map_err(io_err("probing direct I/O with", &cp_path))?;
        // Consume queues of this shard.
        let mut queues: QueueMap = HashMap::new();
        let cq_root = cfg.root.join("consumequeue");
        for topic in list_dirs(cq_root.clone()).await? {
            for qdir in list_dirs(cq_root.join(&topic)).await? {
                let Ok(qid) = qdir.parse::<u32>() else {
                    log::warn!("ignoring {}", cq_root.join(&topic).join(&qdir).display());
                    continue;
                };
                if shard_of(&topic, qid, shards) != id {
                    continue;
                }
                let t: Rc<str> = topic.as_str().into();
                let q =
                    ConsumeQueue::load(&cfg.root, t.clone(), qid, cfg.cq_entries_per_file).await?;
                let v = queues.entry(t).or_default();
                if v.len() <= qid as usize {
                    v.resize(qid as usize + 1, None);
                }
                v[qid as usize] = Some(Rc::new(q));
            }
        }
        let index = if cfg.message_index_enable {
            let layout = IndexLayout {
                slots: cfg.index_slots,
                max_entries: cfg.index_max_entries,
            };
            Some(Rc::new(
                IndexService::open(cfg.root.join("index").join(id.index().to_string()), layout)
                    .await?,
            ))
        } else {
            None
        };
        // The commitlog, scanning when the last stop was not clean. Consume-queue entries are
        // rebuilt during the scan; index work is collected and done after it.
        let (start_pos, recover_from) = match (cp, recover) {
            (Some(c), false) => (Some(c.commitlog), None),
            (Some(c), true) => (
                Some(c.commitlog),
                Some(c.commitlog.min(c.consume_queue).min(c.index)),
            ),
            (None, _) => (None, Some(0)),
        };
        let index_end = index
            .as_ref()
            .map(|i| i.end_phy_offset())
            .unwrap_or(i64::MAX);
        let mut to_index: Vec<(u64, u32)> = Vec::new();
        let root = cfg.root.clone();
        let per_file = cfg.cq_entries_per_file;
        let mut rebuilt = 0u64;
        let opened = {
            let mut visit = |pos: u64, v: &RecordView<'_>, _whole: &Bytes| {
                let Ok(topic) = std::str::from_utf8(v.topic) else {
                    return;
                };
                let qid = v.meta.queue_id as u32;
                let q = {
                    let slot = queues.entry(topic.into()).or_default();
                    if slot.len() <= qid as usize {
                        slot.resize(qid as usize + 1, None);
                    }
                    slot[qid as usize]
                        .get_or_insert_with(|| {
                            Rc::new(ConsumeQueue::new(&root, topic.into(), qid, per_file))
                        })
                        .clone()
                };
                if (v.meta.queue_offset as u64) >= q.max_offset() {
                    rebuilt += 1;
                }
                q.put(
                    v.meta.queue_offset as u64,
                    CqEntry {
                        offset: v.meta.physical_offset,
                        size: v.total_size as i32,
                        tags_code: tags_code(v.property(properties::TAGS)),
                    },
                );
                if v.meta.physical_offset > index_end {
                    to_index.push((pos, v.total_size as u32));
                }
            };
            CommitLog::open(id, &cfg, start_pos, recover_from, &mut visit).await?
        };
        let log = opened.log;
        let end_global = CommitLogOffset::new(id, log.written()).as_i64();
        let min_global = CommitLogOffset::new(id, log.min_pos()).as_i64();
        for q in queues.values().flatten().flatten() {
            q.truncate_past(end_global).await?;
            q.correct_min(min_global).await?;
        }
        if recover {
            log::info!(
                "shard {id}: {rebuilt} consume-queue entr(ies) rebuilt, {} record(s) to re-index",
                to_index.len()
            );
        }
        let checkpoint_path = cfg.root.join("checkpoint");
        let checkpoint = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .buffered_open(&checkpoint_path)
            .await
            .map_err(io_err("opening checkpoint", &checkpoint_path))?;
        let shard = Rc::new(ShardStore {
            id,
            shards,
            dispatched: Cell::new(log.written()),
            log,
            cfg,
            queues: RefCell::new(queues),
            index,
            dispatch_q: RefCell::new(VecDeque::new()),
            dispatch_signal: Notify::default(),
            arrivals: Notify::default(),
            checkpoint,
            checkpoint_path,
            closing: Cell::new(false),
            tasks_done: Notify::default(),
            running_tasks: Cell::new(0),
            retention_lock: Cell::new(false),
        });
        if let Some(ix) = &shard.index {
            // Read back in windows of consecutive records: one DMA read per record made
            // re-indexing 55k records take 5.5 s here.
            const WINDOW: u64 = 8 << 20;
            let seg_size = shard.log.segment_size();
            let mut rest = &to_index[..];
            while let Some(&(start, _)) = rest.first() {
                let limit = (start + WINDOW).min((start / seg_size + 1) * seg_size);
                let n = rest
                    .iter()
                    .take_while(|(p, sz)| p + *sz as u64 <= limit)
                    .count()
                    .max(1);
                let (batch, tail) = rest.split_at(n);
                let end = batch.last().map_or(start, |(p, sz)| p + *sz as u64);
                let window = shard.log.read(start, (end - start) as usize).await?;
                let now = shard.now();
                let mut last_topic = None;
                for &(pos, size) in batch {
                    let at = (pos - start) as usize;
                    let Some(rec) = window.get(at..at + size as usize) else {
                        continue;
                    };
                    if let Ok(v) = RecordView::parse(rec) {
                        let props = properties::dispatched(v.properties);
                        let prefix = key_prefix(&mut last_topic, v.topic);
                        shard.index_record(ix, &v, &props, prefix, now).await?;
                    }
                }
                rest = tail;
            }
        }
        // Make the repaired state durable before serving.
        shard.flush_logics(true).await?;
        let fresh = shard.log.segments().is_empty();
        shard.spawn_tasks();
        if fresh && shard.cfg.warms_segments() {
            // A new store: its first segment is zeroed before it takes records, as every
            // later one is (`CommitLog::run_warmer`).
            let t = std::time::Instant::now();
            shard.log.wait_warmed().await;
            log::info!(
                "shard {id}: first commitlog segment zeroed in {:?} (warmMapedFileEnable)",
                t.elapsed()
            );
        }
        log::info!(
            "shard {id}: open in {:?}: commitlog [{}, {}), {} queue(s)",
            started.elapsed(),
            shard.log.min_pos(),
            shard.log.written(),
            shard.queue_count()
        );
        Ok(shard)
    }

    fn spawn_tasks(self: &Rc<Self>) {
        let spawn = |fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
            let me = self.clone();
            me.running_tasks.set(me.running_tasks.get() + 1);
            glommio::spawn_local(async move {
                fut.await;
                me.running_tasks.set(me.running_tasks.get() - 1);
                me.tasks_done.notify_all();
            })
            .detach();
        };
        spawn(Box::pin(self.log.clone().run_flusher()));
        if self.cfg.flush_disk_type == FlushDiskType::SyncFlush {
            spawn(Box::pin(self.log.clone().run_flush_watchdog()));
        }
        if self.cfg.warms_segments() {
            spawn(Box::pin(self.log.clone().run_warmer()));
        }
        spawn(Box::pin(self.clone().run_dispatcher()));
        spawn(Box::pin(self.clone().run_logics_flusher()));
        spawn(Box::pin(self.clone().run_retention()));
    }

    pub fn id(&self) -> ShardId {
        self.id
    }
    pub fn commitlog(&self) -> &Rc<CommitLog> {
        &self.log
    }
    /// Signalled whenever new messages become readable from a queue (for long polling).
    pub fn arrivals(&self) -> &Notify {
        &self.arrivals
    }

    /// Every consume queue of this shard (cloned out, so no borrow is held across awaits).
    fn all_queues(&self) -> Vec<Rc<ConsumeQueue>> {
        self.queues
            .borrow()
            .values()
            .flatten()
            .flatten()
            .cloned()
            .collect()
    }

    fn queue_count(&self) -> usize {
        self.queues.borrow().values().flatten().flatten().count()
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<Rc<ConsumeQueue>> {
        self.queues
            .borrow()
            .get(topic)
            .and_then(|v| v.get(queue_id as usize))
            .and_then(|q| q.clone())
    }

    fn queue_or_create(&self, topic: &str, queue_id: u32) -> Rc<ConsumeQueue> {
        if let Some(q) = self.queue(topic, queue_id) {
            return q;
        }
        let t: Rc<str> = topic.into();
        let q = Rc::new(ConsumeQueue::new(
            &self.cfg.root,
            t.clone(),
            queue_id,
            self.cfg.cq_entries_per_file,
        ));
        let mut qs = self.queues.borrow_mut();
        let v = qs.entry(t).or_default();
        if v.len() <= queue_id as usize {
            v.resize(queue_id as usize + 1, None);
        }
        v[queue_id as usize] = Some(q.clone());
        q
    }

    fn now(&self) -> i64 {
        (self.cfg.clock)()
    }

    /// Appends messages of one queue. Completes when the messages are readable
    /// (`ASYNC_FLUSH`) or durable (`SYNC_FLUSH`). Rejects oversize messages before writing.
    pub async fn put(&self, msgs: &[PutMessage]) -> Result<Vec<PutResult>> {
        // An ASYNC_FLUSH put need not wait for anything; let other task queues run when this
        // one has used its time slice.
        glommio::yield_if_needed().await;
        let Some(first) = msgs.first() else {
            return Ok(Vec::new());
        };
        let (topic, queue_id) = (&*first.topic, first.queue_id);
        if shard_of(topic, queue_id, self.shards) != self.id {
            return Err(StoreError::BadMessage(format!(
                "queue {topic}:{queue_id} belongs to shard {}, not {}",
                shard_of(topic, queue_id, self.shards),
                self.id
            )));
        }
        let mut total_body = 0usize;
        for m in msgs {
            if &*m.topic != topic || m.queue_id != queue_id {
                return Err(StoreError::BadMessage(
                    "all messages of one put must share topic and queue".into(),
                ));
            }
            if topic.is_empty() || topic.len() > i16::MAX as usize {
                return Err(StoreError::BadMessage(format!(
                    "topic length {} out of range",
                    topic.len()
                )));
            }
            if m.properties.len() > record::MAX_PROPERTIES_LEN {
                return Err(StoreError::BadMessage(
                    "msg properties length limit 32KB".into(),
                ));
            }
            let len = record::encoded_len(
                m.body.len(),
                topic.len(),
                m.properties.len(),
                &m.born_host,
                &self.cfg.store_host,
            );
            // A record must fit one segment with room for a blank record.
            if m.body.len() > self.cfg.max_message_size || len as u64 + 8 > self.log.segment_size()
            {
                return Err(StoreError::MessageTooLarge {
                    size: m.body.len(),
                    max: self.cfg.max_message_size,
                });
            }
            total_body += m.body.len();
        }
        // A batch counts as one message against maxMessageSize (reference §4.3).
        if total_body > self.cfg.max_message_size {
            return Err(StoreError::MessageTooLarge {
                size: total_body,
                max: self.cfg.max_message_size,
            });
        }
        self.log.wait_for_room().await?;
        // From here to the append nothing awaits: queue offsets and positions agree.
        let cq = self.queue_or_create(topic, queue_id);
        let store_ts = self.now();
        let first_qo = cq.next_offset();
        let items: Vec<AppendItem<'_>> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| AppendItem {
                meta: RecordMeta {
                    queue_id: m.queue_id as i32,
                    flag: m.flag,
                    queue_offset: (first_qo + i as u64) as i64,
                    physical_offset: 0,
                    sys_flag: m.sys_flag,
                    born_timestamp: m.born_timestamp,
                    born_host: m.born_host,
                    store_timestamp: store_ts,
                    store_host: self.cfg.store_host,
                    reconsume_times: m.reconsume_times,
                    prepared_transaction_offset: m.prepared_transaction_offset,
                },
                body: &m.body,
                topic: topic.as_bytes(),
                properties: &m.properties,
            })
            .collect();
        let appended = self.log.append(&items, store_ts)?;
        cq.assign(appended.len() as u64);
        let mut out = Vec::with_capacity(appended.len());
        {
            let mut dq = self.dispatch_q.borrow_mut();
            for (i, a) in appended.iter().enumerate() {
                dq.push_back(DispatchItem {
                    cq: cq.clone(),
                    queue_offset: first_qo + i as u64,
                    offset: a.offset,
                    record: a.record.clone(),
                });
                out.push(PutResult {
                    offset: a.offset,
                    size: a.size,
                    queue_offset: first_qo + i as u64,
                    store_timestamp: store_ts,
                    store_host: self.cfg.store_host,
                });
            }
        }
        self.dispatch_signal.notify_all();
        if self.cfg.flush_disk_type == FlushDiskType::SyncFlush {
            let end = appended
                .last()
                .map(|a| a.offset.pos() + a.size as u64)
                .unwrap_or(0);
            self.log.wait_durable(end).await?;
        }
        Ok(out)
    }

    /// Indexes a record's UNIQ_KEY and KEYS (`props`, from [`properties::dispatched`]) under
    /// its topic's [`index_key_prefix`]; `now_ms` names an index file started meanwhile (read
    /// once per dispatched batch: a clock read per record was 1.5 % of an append's CPU).
    async fn index_record(
        &self,
        ix: &IndexService,
        v: &RecordView<'_>,
        props: &properties::Dispatched<'_>,
        key_prefix: i32,
        now_ms: i64,
    ) -> Result<()> {
        // Rollback transaction messages are not indexed (reference §7.3).
        if crate::message::sysflag::transaction_type(v.meta.sys_flag)
            == crate::message::sysflag::TRANSACTION_ROLLBACK_TYPE
        {
            return Ok(());
        }
        let all = props.uniq_key.into_iter().chain(
            props
                .keys
                .into_iter()
                .flat_map(|k| k.split(|b| *b == b' ').filter(|s| !s.is_empty())),
        );
        ix.put(
            key_prefix,
            all,
            v.meta.physical_offset,
            v.meta.store_timestamp,
            now_ms,
        )
        .await
    }

    async fn run_dispatcher(self: Rc<Self>) {
        loop {
            self.dispatch_signal
                .wait_until(|| !self.dispatch_q.borrow().is_empty() || self.closing.get())
                .await;
            let batch: Vec<DispatchItem> = self.dispatch_q.borrow_mut().drain(..).collect();
            if batch.is_empty() && self.closing.get() {
                return;
            }
            let mut last_topic = None;
            let now = self.now();
            for it in &batch {
                let Ok(v) = RecordView::parse(&it.record) else {
                    log::error!(
                        "shard {}: dispatch: cannot parse the record at {}",
                        self.id,
                        it.offset
                    );
                    continue;
                };
                let props = properties::dispatched(v.properties);
                it.cq.put(
                    it.queue_offset,
                    CqEntry {
                        offset: it.offset.as_i64(),
                        size: it.record.len() as i32,
                        tags_code: tags_code(props.tags),
                    },
                );
                if let Some(ix) = &self.index {
                    let prefix = key_prefix(&mut last_topic, v.topic);
                    if let Err(e) = self.index_record(ix, &v, &props, prefix, now).await {
                        log::error!("shard {}: indexing {}: {e}", self.id, it.offset);
                    }
                }
                self.dispatched
                    .set(it.offset.pos() + it.record.len() as u64);
            }
            self.arrivals.notify_all();
        }
    }

    /// Writes consume queues and index files, syncs the index and the consume queues due
    /// (all of them when `thorough`), then writes the shard's checkpoint slot.
    ///
    /// As upstream's `FlushConsumeQueueService`: a regular flush syncs only queues with
    /// `flush_cq_least_pages` pages written since their last sync. Each sync of a grown file
    /// is a journal commit on ext4; syncing every dirty queue every second took 13 s per
    /// flush with 8,000 active queues, and the send p99.9 suffered throughout. The
    /// checkpoint's consume-queue position is the oldest entry some queue has not synced
    /// (recovery re-dispatches from there), or the dispatch point when all are durable.
    async fn flush_logics(&self, thorough: bool) -> Result<()> {
        // Snapshot first: entries dispatched after this point are not covered.
        let dispatched = self.dispatched.get();
        let log_durable = self.log.durable();
        let durable_ts = self.log.durable_store_ts();
        let queues: Vec<Rc<ConsumeQueue>> = self
            .queues
            .borrow()
            .values()
            .flatten()
            .flatten()
            .filter(|q| q.is_dirty())
            .cloned()
            .collect();
        let least = (u64::from(self.cfg.flush_cq_least_pages) * 4096).max(1);
        let started = std::time::Instant::now();
        for q in &queues {
            q.flush().await?;
        }
        let due: Vec<&Rc<ConsumeQueue>> = queues
            .iter()
            .filter(|q| thorough || q.unsynced_bytes() >= least)
            .collect();
        let synced = due.len();
        if synced >= SYNCFS_QUEUES {
            // One syncfs (one writeback, one journal commit) instead of a commit per file:
            // 8,000 queues synced one by one took 3-5 s and disturbed the sends meanwhile.
            let dir = due[0].dir().to_path_buf();
            blocking(move || syncfs(&dir))
                .await
                .map_err(io_err("syncing consume queues under", due[0].dir()))?;
            for q in &due {
                q.mark_synced();
            }
        } else {
            for q in &due {
                q.sync().await?;
            }
        }
        let mut cq_durable = dispatched;
        for q in &queues {
            if let Some(o) = q.first_unsynced().and_then(CommitLogOffset::from_i64) {
                cq_durable = cq_durable.min(o.pos());
            }
        }
        if synced >= 1000 || started.elapsed() >= Duration::from_secs(1) {
            log::info!(
                "shard {}: {} consume queue(s) written, {synced} synced{} in {:?}",
                self.id,
                queues.len(),
                if thorough { " (thorough)" } else { "" },
                started.elapsed()
            );
        }
        if let Some(ix) = &self.index {
            ix.flush(true).await?;
        }
        self.write_checkpoint(
            ShardCheckpoint {
                commitlog: log_durable,
                consume_queue: cq_durable,
                index: dispatched,
            },
            durable_ts,
        )
        .await?;
        Ok(())
    }

    async fn write_checkpoint(&self, c: ShardCheckpoint, ts: i64) -> Result<()> {
        let mut slot = Vec::with_capacity(24);
        slot.extend_from_slice(&c.commitlog.to_be_bytes());
        slot.extend_from_slice(&c.consume_queue.to_be_bytes());
        slot.extend_from_slice(&c.index.to_be_bytes());
        let len = slot.len();
        let r = self
            .checkpoint
            .write_at(slot, Checkpoint::shard_pos(self.id.index()) as u64)
            .await;
        check_written(r, len, "writing checkpoint", &self.checkpoint_path)?;
        if self.id.index() == 0 {
            // Upstream's timestamp fields, for tools that read them.
            let mut head = Vec::with_capacity(24);
            for _ in 0..3 {
                head.extend_from_slice(&ts.to_be_bytes());
            }
            let len = head.len();
            let r = self.checkpoint.write_at(head, 0).await;
            check_written(r, len, "writing checkpoint", &self.checkpoint_path)?;
        }
        self.checkpoint
            .fdatasync()
            .await
            .map_err(io_err("writing checkpoint", &self.checkpoint_path))?;
        Ok(())
    }

    /// Waits `every`, or less if the shard starts closing; false once it is closing.
    async fn tick(&self, every: Duration) -> bool {
        futures_lite::future::or(
            glommio::timer::sleep(every),
            self.dispatch_signal.wait_until(|| self.closing.get()),
        )
        .await;
        !self.closing.get()
    }

    async fn run_logics_flusher(self: Rc<Self>) {
        let every = Duration::from_millis(self.cfg.flush_cq_interval_ms.max(1));
        let thorough_every = Duration::from_millis(self.cfg.flush_cq_thorough_interval_ms);
        let mut last_thorough = std::time::Instant::now();
        while self.tick(every).await {
            let thorough = last_thorough.elapsed() >= thorough_every;
            if thorough {
                last_thorough = std::time::Instant::now();
            }
            if let Err(e) = self.flush_logics(thorough).await {
                log::error!("shard {}: flushing consume queues and index: {e}", self.id);
            }
        }
    }

    /// Waits until every record appended before this call is dispatched to its consume queue
    /// (read-your-writes for the calls below; the dispatcher runs on this shard, so this is
    /// normally a few microseconds).
    pub async fn settle(&self) {
        let target = self.log.written();
        self.arrivals
            .wait_until(|| self.dispatched.get() >= target || self.closing.get())
            .await;
    }

    /// Reads up to `max_msgs` messages of a queue from `offset` whose tag code is in
    /// `tag_codes` (all when `None`). Disk reads are verified (CRC): a corrupt record is an
    /// error naming file and offset, never served.
    pub async fn get_messages(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_msgs: usize,
        tag_codes: Option<&[i64]>,
    ) -> Result<GetResult> {
        let mut r = GetResult {
            status: GetStatus::NoMatchedLogicQueue,
            messages: Vec::new(),
            queue_offsets: Vec::new(),
            next_begin_offset: 0,
            min_offset: 0,
            max_offset: 0,
        };
        self.settle().await;
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(r);
        };
        let (min, max) = (q.min_offset(), q.max_offset());
        r.min_offset = min;
        r.max_offset = max;
        if max == 0 {
            r.status = GetStatus::NoMessageInQueue;
            return Ok(r);
        }
        if offset < min {
            r.status = GetStatus::OffsetTooSmall;
            r.next_begin_offset = min;
            return Ok(r);
        }
        if offset == max {
            r.status = GetStatus::OffsetOverflowOne;
            r.next_begin_offset = offset;
            return Ok(r);
        }
        if offset > max {
            r.status = GetStatus::OffsetOverflowBadly;
            r.next_begin_offset = if min == 0 { min } else { max };
            return Ok(r);
        }
        // Scan at most 800 entries per call (upstream: 16000 bytes of consume queue).
        let scan = (max_msgs.max(1) as u64 * 4).clamp(32, 800);
        let entries = q.get(offset, scan).await?;
        let log_min = CommitLogOffset::new(self.id, self.log.min_pos()).as_i64();
        let mut picked: Vec<(u64, CqEntry)> = Vec::new();
        let mut next = offset;
        let mut removed = false;
        for (i, e) in entries.iter().enumerate() {
            if picked.len() >= max_msgs {
                break;
            }
            next = offset + i as u64 + 1;
            if !e.is_valid() {
                continue;
            }
            if e.offset < log_min {
                removed = true;
                continue;
            }
            if let Some(codes) = tag_codes {
                if !codes.contains(&e.tags_code) {
                    continue;
                }
            }
            picked.push((offset + i as u64, *e));
        }
        r.next_begin_offset = next;
        let recs = self.read_entries(&picked).await?;
        if recs.len() < picked.len() {
            // Stopped before a corrupt record: the next read starts there and reports it.
            if let Some(p) = picked.get(recs.len()) {
                r.next_begin_offset = p.0;
            }
        }
        r.queue_offsets = picked.iter().take(recs.len()).map(|p| p.0).collect();
        r.messages = recs;
        r.status = if !r.messages.is_empty() {
            GetStatus::Found
        } else if removed {
            GetStatus::MessageWasRemoving
        } else if tag_codes.is_some() && !entries.is_empty() {
            GetStatus::NoMatchedMessage
        } else {
            GetStatus::OffsetFoundNull
        };
        Ok(r)
    }

    /// Reads the records of consume-queue entries, grouping nearby ones into one DMA read of
    /// at most `read_ahead_bytes`, with up to [`READS_IN_FLIGHT`] of those in flight: the
    /// next ones are read while the records of the first are checked (a cold catch-up read
    /// at one read at a time left the disk idle during each check). A corrupt record is an
    /// error when it is the first one; otherwise the records before it are returned.
    async fn read_entries(&self, picked: &[(u64, CqEntry)]) -> Result<Vec<Bytes>> {
        let pos_of = |e: &CqEntry| {
            CommitLogOffset::from_i64(e.offset)
                .map(|o| o.pos())
                .unwrap_or(0)
        };
        // Groups of entries, each `(first, end index, start, end)`, read by one DMA read if
        // more than one and flushed.
        let mut groups = Vec::new();
        let mut i = 0;
        while i < picked.len() {
            let start = pos_of(&picked[i].1);
            let mut j = i + 1;
            let mut end = start + picked[i].1.size as u64;
            while j < picked.len() {
                let p = pos_of(&picked[j].1);
                let e = p + picked[j].1.size as u64;
                let same_seg = p / self.log.segment_size() == start / self.log.segment_size();
                if p < end || e - start > self.cfg.read_ahead_bytes || !same_seg {
                    break;
                }
                end = e;
                j += 1;
            }
            groups.push((i, j, start, end));
            i = j;
        }
        let flushed = self.log.flushed();
        // A group's bytes: from the tail cache at once (a pull of recent messages spawns
        // nothing), else a read started now.
        let read = |&(i, j, start, end): &(usize, usize, u64, u64)| {
            let len = (end - start) as usize;
            if j - i == 1 || end > flushed {
                return None;
            }
            Some(match self.log.cached(start, len) {
                Some(b) => Span::Cached(b),
                None => {
                    let log = self.log.clone();
                    Span::Reading(glommio::spawn_local(
                        async move { log.read(start, len).await },
                    ))
                }
            })
        };
        let mut reads: VecDeque<_> = groups.iter().take(READS_IN_FLIGHT).map(read).collect();
        let mut out = Vec::with_capacity(picked.len());
        for (k, &(i, j, start, _)) in groups.iter().enumerate() {
            let span = match reads.pop_front().flatten() {
                Some(Span::Reading(t)) => Some(t.await?),
                Some(Span::Cached(b)) => Some(b),
                None => None,
            };
            if let Some(g) = groups.get(k + READS_IN_FLIGHT) {
                reads.push_back(read(g));
            }
            for (_, e) in &picked[i..j] {
                let pos = pos_of(e);
                let rec = match &span {
                    Some(s) => {
                        let at = (pos - start) as usize;
                        s.slice(at..at + e.size as usize)
                    }
                    None => self.log.read(pos, e.size as usize).await?,
                };
                if let Err(e) = self.verify_record(pos, &rec) {
                    if out.is_empty() {
                        return Err(e);
                    }
                    return Ok(out);
                }
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn verify_record(&self, pos: u64, rec: &Bytes) -> Result<()> {
        let expect = CommitLogOffset::new(self.id, pos).as_i64();
        let res = RecordView::parse(rec).and_then(|v| {
            v.verify_crc()?;
            Ok(v.meta.physical_offset)
        });
        match res {
            Ok(p) if p == expect => Ok(()),
            Ok(p) => Err(self.corruption(pos, format!("PHYSICALOFFSET {p} != {expect}"))),
            Err(e) => Err(self.corruption(pos, e.to_string())),
        }
    }

    fn corruption(&self, pos: u64, reason: String) -> StoreError {
        let (file, offset) = self.log.locate(pos);
        log::error!(
            "shard {}: corrupt record in {} at offset {offset}: {reason}",
            self.id,
            file.display()
        );
        StoreError::Corruption {
            file,
            offset,
            reason,
        }
    }

    /// The whole record at a commitlog offset of this shard (VIEW_MESSAGE_BY_ID).
    pub async fn read_message(&self, offset: CommitLogOffset) -> Result<Bytes> {
        let pos = offset.pos();
        if offset.shard() != self.id || pos < self.log.min_pos() || pos >= self.log.written() {
            return Err(StoreError::OffsetNotFound(offset.to_string()));
        }
        let head = self.log.read(pos, 4).await?;
        let size = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s >= record::MIN_RECORD_SIZE)
            .ok_or_else(|| self.corruption(pos, format!("bad TOTALSIZE {size}")))?;
        let rec = self.log.read(pos, size).await?;
        self.verify_record(pos, &rec)?;
        Ok(rec)
    }

    /// Records of `topic` whose KEYS or UNIQ_KEY contain `key`, stored in `[begin, end]` ms.
    pub async fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin: i64,
        end: i64,
    ) -> Result<Vec<Bytes>> {
        let Some(ix) = &self.index else {
            return Ok(Vec::new());
        };
        let max = max.min(self.cfg.max_msgs_num_batch).max(1);
        let offs = ix
            .query(topic.as_bytes(), key.as_bytes(), max, begin, end)
            .await?;
        let mut out = Vec::new();
        for o in offs {
            let Some(off) = CommitLogOffset::from_i64(o) else {
                continue;
            };
            let Ok(rec) = self.read_message(off).await else {
                continue;
            };
            // Hash collisions: keep only real matches.
            let hit = RecordView::parse(&rec).ok().is_some_and(|v| {
                v.topic == topic.as_bytes()
                    && (v.property(properties::UNIQ_KEY) == Some(key.as_bytes())
                        || v.property(properties::KEYS)
                            .is_some_and(|k| k.split(|b| *b == b' ').any(|s| s == key.as_bytes())))
            });
            if hit {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// (min, max) logical offsets of a queue; (0, 0) when unknown.
    pub fn queue_range(&self, topic: &str, queue_id: u32) -> (u64, u64) {
        self.queue(topic, queue_id)
            .map(|q| (q.min_offset(), q.max_offset()))
            .unwrap_or((0, 0))
    }

    async fn store_ts_at(&self, q: &ConsumeQueue, offset: u64) -> Result<Option<i64>> {
        let Some(e) = q.entry(offset).await? else {
            return Ok(None);
        };
        let Some(off) = CommitLogOffset::from_i64(e.offset).filter(|_| e.is_valid()) else {
            return Ok(None);
        };
        let rec = self.read_message(off).await?;
        Ok(RecordView::parse(&rec).ok().map(|v| v.meta.store_timestamp))
    }

    /// First queue offset whose message was stored at or after `ts` (ms); the max offset
    /// when none is.
    pub async fn search_offset_by_timestamp(
        &self,
        topic: &str,
        queue_id: u32,
        ts: i64,
    ) -> Result<u64> {
        self.settle().await;
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(0);
        };
        let (mut lo, mut hi) = (q.min_offset(), q.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.store_ts_at(&q, mid).await? {
                Some(t) if t < ts => lo = mid + 1,
                Some(_) => hi = mid,
                None => lo = mid + 1,
            }
        }
        Ok(lo)
    }

    /// Store time of the message at `offset` of a queue (0 when none).
    pub async fn search_store_time(&self, topic: &str, queue_id: u32, offset: u64) -> Result<i64> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(0);
        };
        Ok(self.store_ts_at(&q, offset).await?.unwrap_or(0))
    }

    /// Store time of the oldest message of a queue.
    pub async fn earliest_msg_store_time(&self, topic: &str, queue_id: u32) -> Result<i64> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(-1);
        };
        Ok(self.store_ts_at(&q, q.min_offset()).await?.unwrap_or(-1))
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            shard: self.id,
            min_pos: self.log.min_pos(),
            written: self.log.written(),
            flushed: self.log.flushed(),
            durable: self.log.durable(),
            segments: self.log.segments().len(),
            queues: self.queue_count(),
            dispatched: self.dispatched.get(),
        }
    }

    /// The queues this shard owns, as (topic, queueId, min, max).
    pub fn queues(&self) -> Vec<(String, u32, u64, u64)> {
        let mut v: Vec<_> = self
            .queues
            .borrow()
            .values()
            .flatten()
            .flatten()
            .map(|q| {
                (
                    q.topic.to_string(),
                    q.queue_id,
                    q.min_offset(),
                    q.max_offset(),
                )
            })
            .collect();
        v.sort();
        v
    }

    async fn run_retention(self: Rc<Self>) {
        let every = Duration::from_millis(self.cfg.clean_resource_interval_ms.max(10));
        while self.tick(every).await {
            let now = self.now();
            let dir = self.cfg.commitlog_dir.clone();
            let due = {
                let ret = &self.cfg.retention;
                let hour_due = ret.is_delete_hour(local_time(now).3 as u8);
                let ratio = ret.disk_max_used_space_ratio();
                hour_due
                    || glommio::executor()
                        .spawn_blocking(move || disk_used_ratio(&dir))
                        .await
                        .is_some_and(|r| r * 100.0 >= ratio as f64)
            };
            if due {
                if let Err(e) = self.run_retention_pass().await {
                    log::error!("shard {}: retention: {e}", self.id);
                }
            }
        }
    }

    /// One retention pass: deletes segments older than `fileReservedTime` (never the active
    /// one), one at a time with a pause between, then the consume-queue and index files
    /// wholly behind the new minimum.
    pub async fn run_retention_pass(&self) -> Result<RetentionReport> {
        let mut rep = RetentionReport::default();
        if self.retention_lock.replace(true) {
            return Ok(rep);
        }
        let res = self.retention_inner(&mut rep).await;
        self.retention_lock.set(false);
        res.map(|_| rep)
    }

    async fn retention_inner(&self, rep: &mut RetentionReport) -> Result<()> {
        let reserved_ms = self.cfg.retention.file_reserved_hours() as i64 * 3_600_000;
        let pause = Duration::from_millis(self.cfg.delete_files_interval_ms);
        loop {
            // Only its path: a handle kept here would stop `retire` from reusing it.
            let Some(path) = self.log.segments().first().map(|s| s.path.clone()) else {
                break;
            };
            let mtime = glommio::executor()
                .spawn_blocking(move || {
                    std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as i64)
                })
                .await
                .unwrap_or(i64::MAX);
            if self.now() - mtime < reserved_ms {
                break;
            }
            let Some(seg) = self.log.detach_oldest() else {
                break;
            };
            let path = seg.path.clone();
            if self.log.retire(seg).await? {
                log::info!(
                    "shard {}: expired segment {} kept as a spare for a new segment",
                    self.id,
                    path.display()
                );
            } else {
                log::info!(
                    "shard {}: deleting expired segment {}",
                    self.id,
                    path.display()
                );
                super::consume_queue::remove_file_gradually(
                    &path,
                    DELETE_STEP_BYTES,
                    Duration::from_millis(DELETE_STEP_PAUSE_MS),
                )
                .await?;
            }
            rep.segments += 1;
            glommio::timer::sleep(pause).await;
        }
        if rep.segments == 0 {
            return Ok(());
        }
        let log_min = CommitLogOffset::new(self.id, self.log.min_pos()).as_i64();
        let queues = self.all_queues();
        for q in queues {
            let n = q.delete_below(log_min).await?;
            rep.queue_files += n;
            if n > 0 {
                glommio::timer::sleep(pause).await;
            }
        }
        if let Some(ix) = &self.index {
            rep.index_files += ix.delete_below(log_min).await?;
        }
        log::info!(
            "shard {}: retention deleted {} segment(s), {} consume-queue file(s), {} index \
             file(s); commitlog now starts at {}",
            self.id,
            rep.segments,
            rep.queue_files,
            rep.index_files,
            self.log.min_pos()
        );
        Ok(())
    }

    /// Stops the shard's tasks after draining dispatch, makes commitlog, queues and index
    /// durable and writes the final checkpoint.
    pub async fn close(&self) -> Result<()> {
        // Drain dispatch before stopping the dispatcher. `arrivals` is what the dispatcher
        // signals after each batch (it drains the queue without signalling `dispatch_signal`).
        self.arrivals
            .wait_until(|| {
                self.dispatch_q.borrow().is_empty() && self.dispatched.get() >= self.log.written()
            })
            .await;
        let log_res = self.log.close().await;
        self.closing.set(true);
        self.dispatch_signal.notify_all();
        self.log.wake_all();
        self.tasks_done
            .wait_until(|| self.running_tasks.get() == 0)
            .await;
        log_res?;
        self.flush_logics(true).await
    }

    /// Checks the shard end to end: every flushed commitlog record verifies (CRC, offsets);
    /// every record has the consume-queue entry of its queue offset, and every entry of every
    /// queue points at a record of the scan.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let mut rep = VerifyReport::default();
        let seg = self.log.segment_size();
        let from = self.log.min_pos() / seg * seg;
        let to = self.log.flushed();
        let mut seen: HashMap<(String, u32, u64), (i64, i32)> = HashMap::new();
        let shard = self.id;
        let mut visit = |pos: u64, v: &RecordView<'_>, _: &Bytes| {
            let topic = String::from_utf8_lossy(v.topic).into_owned();
            seen.insert(
                (topic, v.meta.queue_id as u32, v.meta.queue_offset as u64),
                (
                    CommitLogOffset::new(shard, pos).as_i64(),
                    v.total_size as i32,
                ),
            );
        };
        // Scan to the end; a corrupt record whose header still gives its size is reported
        // and skipped, so one bad record does not hide everything after it.
        let mut corrupt: Vec<i64> = Vec::new();
        let mut at = from;
        loop {
            let (end, records, bad) = self.log.scan(at, to, &mut visit).await?;
            rep.records += records;
            if end >= to {
                break;
            }
            let why = bad.and_then(|b| b.1);
            let skip = match (&why, self.log.read(end, 8).await) {
                (Some(_), Ok(h)) => record::peek_header(&h).ok().and_then(|(total, magic)| {
                    let ok = matches!(magic, record::MAGIC_V1 | record::MAGIC_V2)
                        && total as usize >= record::MIN_RECORD_SIZE
                        && end + total as u64 <= to;
                    ok.then_some(total as u64)
                }),
                _ => None,
            };
            let (file, in_seg) = self.log.locate(end);
            rep.problems.push(format!(
                "shard {}: commitlog {} offset {in_seg}: {}",
                self.id,
                file.display(),
                why.unwrap_or_else(|| format!("data ends before the flushed end {to}"))
            ));
            match skip {
                Some(total) => {
                    corrupt.push(CommitLogOffset::new(self.id, end).as_i64());
                    at = end + total;
                }
                None => break,
            }
        }
        let log_min = CommitLogOffset::new(self.id, self.log.min_pos()).as_i64();
        let queues = self.all_queues();
        for q in queues {
            let (min, max) = (q.min_offset(), q.max_offset());
            let entries = q.get(min, max - min).await?;
            for (i, e) in entries.iter().enumerate() {
                let qo = min + i as u64;
                rep.entries += 1;
                if !e.is_valid() {
                    continue;
                }
                // Entries past the flushed commitlog end are served from memory: not scanned.
                if e.offset >= CommitLogOffset::new(self.id, to).as_i64() || e.offset < log_min {
                    continue;
                }
                let key = (q.topic.to_string(), q.queue_id, qo);
                match seen.remove(&key) {
                    Some((off, size)) if off == e.offset && size == e.size => {}
                    Some(got) => rep.problems.push(format!(
                        "{}:{} offset {qo}: entry ({}, {}) but the record is at ({}, {})",
                        q.topic, q.queue_id, e.offset, e.size, got.0, got.1
                    )),
                    // Already reported as a corrupt record.
                    None if corrupt.contains(&e.offset) => {}
                    None => rep.problems.push(format!(
                        "{}:{} offset {qo}: entry ({}, {}) has no record in the commitlog",
                        q.topic, q.queue_id, e.offset, e.size
                    )),
                }
            }
            if entries.len() as u64 != max - min {
                rep.problems.push(format!(
                    "{}:{}: {} entries readable of [{min}, {max})",
                    q.topic,
                    q.queue_id,
                    entries.len()
                ));
            }
        }
        for ((t, qid, qo), (off, _)) in seen {
            let (min, _) = self.queue_range(&t, qid);
            if qo >= min {
                rep.problems.push(format!(
                    "record {t}:{qid} offset {qo} at {off} has no consume-queue entry"
                ));
            }
        }
        rep.problems.sort();
        Ok(rep)
    }

    /// Removes every queue of `topic` on this shard (DELETE_TOPIC).
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let qs = self.queues.borrow_mut().remove(topic);
        for q in qs.into_iter().flatten().flatten() {
            q.destroy().await?;
        }
        Ok(())
    }
}

/// Fraction of the filesystem holding `path` that is used (statvfs). Blocking: call it off the
/// executor.
pub fn disk_used_ratio(path: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into `st`, which outlives the call; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    let total = st.f_blocks as f64;
    let avail = st.f_bavail as f64;
    Some(1.0 - avail / total)
}
