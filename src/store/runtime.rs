//! Starting and stopping a multi-shard store, and a `Send` handle to it.
//!
//! [`Store::open`] runs on a plain thread (not an executor): it takes the `lock` file, notes
//! whether `abort` survived the last run (an unclean stop), reads the checkpoint, then starts
//! one glommio executor per shard, pinned, each opening (and if needed recovering) its
//! [`ShardStore`]. Requests reach a shard as closures over a flume channel and run as tasks on
//! its executor; replies come back on a one-shot channel, so the handle works from executors
//! and plain threads alike.

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::config::StoreConfig;
use super::error::{io_err, Result, StoreError};
use super::format::{Checkpoint, ShardCheckpoint};
use super::offset::{CommitLogOffset, ShardId};
use super::shard::{
    shard_of, GetResult, PutMessage, PutResult, RetentionReport, ShardStats, ShardStore,
    VerifyReport,
};

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`); call it first
/// thing in `main`. The allocator advises its regions for huge pages and returns freed
/// memory to the kernel a second later, so a churning heap (append buffers, tail-cache runs)
/// keeps faulting in fresh huge pages, and the kernel zeroes 2 MiB inline on the shard's
/// thread each time: measured, 48 % of a shard's CPU and multi-millisecond append stalls
/// (p99 of SYNC_FLUSH appends 6.7 ms, 0.8 ms without). Returns the OS error, if any.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

thread_local! {
    /// The shard this executor thread serves, and the router it serves for (its channel
    /// table's address; a process may hold several stores): [`Router::on_shard`] runs a
    /// job for it inline, without a channel, a spawned task and a reply channel.
    static LOCAL: RefCell<Option<(usize, Rc<ShardStore>)>> = const { RefCell::new(None) };
}

type Job = Box<dyn FnOnce(Rc<ShardStore>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

enum Msg {
    Job(Job),
    Close(flume::Sender<Result<()>>),
}

/// Routes requests to shards: a cheap, `Send` handle that does not own the store's lifetime
/// (shard services hold one without keeping the store alive).
#[derive(Clone)]
pub struct Router {
    shards: Arc<Vec<flume::Sender<Msg>>>,
}

/// A service started on every shard after it opened (the broker's listener, say).
pub type ShardService =
    Arc<dyn Fn(Rc<ShardStore>, Router) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

struct Inner {
    cfg: StoreConfig,
    router: Router,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    lock: Mutex<Option<File>>,
    root: PathBuf,
    closed: Mutex<bool>,
    recovered: bool,
}

/// A handle to an open store. Cheap to clone, `Send + Sync`; derefs to its [`Router`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::ops::Deref for Store {
    type Target = Router;
    fn deref(&self) -> &Router {
        &self.inner.router
    }
}

/// Takes an exclusive `flock` on `<root>/lock` and writes our pid into it.
fn take_lock(root: &Path) -> Result<File> {
    let path = root.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    // SAFETY: flock on an fd we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        let pid = holder
            .lines()
            .find_map(|l| l.strip_prefix("pid="))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        return Err(StoreError::Locked {
            store: root.to_path_buf(),
            pid,
        });
    }
    f.set_len(0).map_err(io_err("writing", &path))?;
    f.rewind().map_err(io_err("writing", &path))?;
    write!(f, "lock\npid={}\n", std::process::id()).map_err(io_err("writing", &path))?;
    Ok(f)
}

impl Store {
    /// Opens (creating if needed) the store at `cfg.root`. Call from a plain thread.
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        Self::open_with_service(cfg, None)
    }

    /// As [`Store::open`], then starts `service` on every shard once the shard is open.
    pub fn open_with_service(cfg: StoreConfig, service: Option<ShardService>) -> Result<Store> {
        cfg.validate()?;
        let root = cfg.root.clone();
        for d in [&root, &root.join("config"), &cfg.commitlog_dir] {
            std::fs::create_dir_all(d).map_err(io_err("creating directory", d))?;
        }
        let lock = take_lock(&root)?;
        let abort = root.join("abort");
        let unclean = abort.exists();
        let cp_path = root.join("checkpoint");
        let cp = match std::fs::read(&cp_path) {
            Ok(b) => Checkpoint::decode(&b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("reading", &cp_path)(e)),
        };
        let mut n = cfg.effective_shards();
        if let Some(c) = &cp {
            if !c.shards.is_empty() && c.shards.len() != n {
                log::warn!(
                    "store {} was created with {} shard(s); keeping that instead of {n}",
                    root.display(),
                    c.shards.len()
                );
                n = c.shards.len();
            }
        }
        if unclean {
            log::warn!(
                "store {}: abort file found, the last stop was not clean: recovering",
                root.display()
            );
        }
        // Seed the checkpoint's header (magic, shard count); shards write their own slots.
        let seeded = cp.clone().unwrap_or_else(|| Checkpoint {
            shards: vec![ShardCheckpoint::default(); n],
            ..Default::default()
        });
        if cp.is_none() {
            std::fs::write(&cp_path, seeded.encode()).map_err(io_err("writing", &cp_path))?;
        }
        File::create(&abort).map_err(io_err("creating", &abort))?;
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| flume::unbounded::<Msg>()).unzip();
        let router = Router {
            shards: Arc::new(senders),
        };
        let mut threads = Vec::with_capacity(n);
        let (ready_tx, ready_rx) = flume::unbounded::<(usize, Result<()>)>();
        // Services (the broker's listeners) start once every shard is open: a shard that
        // opened early must not accept requests for queues of one still recovering.
        let (go_tx, go_rx) = flume::unbounded::<()>();
        let cpus = allowed_cpus();
        log::info!(
            "store {}: {n} shard(s){}",
            root.display(),
            if !cfg.pin_shards {
                String::from(", unpinned")
            } else if cfg.shards == 0 && n > 1 {
                // The default assumes the cores are the broker's; say what to do otherwise.
                format!(
                    " pinned to CPUs {cpus:?}, one per CPU allowed (with other busy processes \
                     on these CPUs, fewer shards serve more: tuning/README.md, Shard count)"
                )
            } else {
                format!(" pinned to CPUs {:?}", &cpus[..n.min(cpus.len())])
            }
        );
        for (i, rx) in receivers.into_iter().enumerate() {
            let id = ShardId::new(i).ok_or_else(|| StoreError::Config("too many shards".into()))?;
            let shard_cp = cp.as_ref().and_then(|c| c.shards.get(i).copied());
            let cfg = cfg.clone();
            let ready = ready_tx.clone();
            let (service, router, go) = (service.clone(), router.clone(), go_rx.clone());
            let table = Arc::as_ptr(&router.shards) as usize;
            let placement = if cfg.pin_shards {
                glommio::Placement::Fixed(cpus[i % cpus.len()])
            } else {
                glommio::Placement::Unbound
            };
            let builder = glommio::LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{i}"))
                .io_memory(cfg.io_memory)
                .spin_before_park(std::time::Duration::from_micros(cfg.spin_before_park_us));
            let h = builder
                .spawn(move || async move {
                    let shard = match ShardStore::open(id, n, cfg, shard_cp, unclean).await {
                        Ok(s) => {
                            let _ = ready.send((i, Ok(())));
                            s
                        }
                        Err(e) => {
                            let _ = ready.send((i, Err(e)));
                            return;
                        }
                    };
                    if let Some(svc) = service {
                        let s = shard.clone();
                        glommio::spawn_local(async move {
                            if go.recv_async().await.is_ok() {
                                svc(s, router).await;
                            }
                        })
                        .detach();
                    }
                    LOCAL.with(|l| *l.borrow_mut() = Some((table, shard.clone())));
                    serve(shard, rx).await;
                })
                .map_err(|e| StoreError::Config(format!("starting shard {i}: {e}")))?;
            threads.push(std::thread::spawn(move || {
                let _ = h.join();
            }));
        }
        drop(ready_tx);
        let store = Store {
            inner: Arc::new(Inner {
                cfg,
                router,
                threads: Mutex::new(threads),
                lock: Mutex::new(Some(lock)),
                root,
                closed: Mutex::new(false),
                recovered: unclean,
            }),
        };
        let mut first_err = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((i, Err(e))) => {
                    log::error!("shard {i} failed to open: {e}");
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(StoreError::Closed);
                    break;
                }
            }
        }
        if let Some(e) = first_err {
            // Keep `abort`: the shards that did open are closed, but the store is not clean.
            drop(go_tx);
            let _ = store.close_shards();
            return Err(e);
        }
        for _ in 0..n {
            let _ = go_tx.send(());
        }
        Ok(store)
    }

    /// Whether this open recovered from an unclean stop.
    pub fn recovered(&self) -> bool {
        self.inner.recovered
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    fn close_shards(&self) -> Result<()> {
        let mut first_err = None;
        for tx in self.inner.router.shards.iter() {
            let (rtx, rrx) = flume::bounded(1);
            if tx.send(Msg::Close(rtx)).is_ok() {
                if let Ok(Err(e)) = rrx.recv() {
                    first_err.get_or_insert(e);
                }
            }
        }
        let threads =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Clean shutdown: every shard flushes and checkpoints and its thread ends (closing every
    /// file of the store), then `abort` is removed and the lock released. Blocking; call from
    /// a plain thread. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        {
            let mut closed = self.inner.closed.lock().unwrap_or_else(|e| e.into_inner());
            if *closed {
                return Ok(());
            }
            *closed = true;
        }
        let res = self.close_shards();
        // The shards are done once their threads are: every file of the store closed.
        for t in std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()))
        {
            let _ = t.join();
        }
        if res.is_ok() {
            let abort = self.inner.root.join("abort");
            std::fs::remove_file(&abort).map_err(io_err("removing", &abort))?;
            log::info!("store {} closed cleanly", self.inner.root.display());
        }
        self.inner
            .lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        res
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let closed = *self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if !closed {
            // Last handle dropped without shutdown: stop the shards so threads do not leak;
            // `abort` stays, so the next open verifies the tail.
            for tx in self.router.shards.iter() {
                let (rtx, rrx) = flume::bounded(1);
                if tx.send(Msg::Close(rtx)).is_ok() {
                    let _ = rrx.recv();
                }
            }
            for t in std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner())) {
                let _ = t.join();
            }
        }
    }
}

impl Router {
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard owning a queue.
    pub fn shard_of(&self, topic: &str, queue_id: u32) -> ShardId {
        shard_of(topic, queue_id, self.shard_count())
    }

    /// Runs `f` on `shard`'s executor and returns its result.
    pub async fn on_shard<R, F, Fut>(&self, shard: ShardId, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(Rc<ShardStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R>> + 'static,
    {
        let table = Arc::as_ptr(&self.shards) as usize;
        let local = LOCAL.with(|l| match &*l.borrow() {
            Some((t, s)) if *t == table && s.id() == shard => Some(s.clone()),
            _ => None,
        });
        if let Some(s) = local {
            return f(s).await;
        }
        let tx = self.shards.get(shard.index()).ok_or(StoreError::Closed)?;
        let (rtx, rrx) = flume::bounded::<Result<R>>(1);
        let job: Job = Box::new(move |s: Rc<ShardStore>| {
            Box::pin(async move {
                let _ = rtx.send(f(s).await);
            })
        });
        tx.send_async(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rrx.recv_async().await.map_err(|_| StoreError::Closed)?
    }

    /// Stores messages of one queue (on its owning shard).
    pub async fn put(&self, msgs: Vec<PutMessage>) -> Result<Vec<PutResult>> {
        let Some(first) = msgs.first() else {
            return Ok(Vec::new());
        };
        let shard = self.shard_of(&first.topic, first.queue_id);
        self.on_shard(shard, move |s| async move { s.put(&msgs).await })
            .await
    }

    /// Reads messages of a queue; see [`ShardStore::get_messages`].
    pub async fn get_messages(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_msgs: usize,
        tag_codes: Option<Vec<i64>>,
    ) -> Result<GetResult> {
        let t = topic.to_string();
        self.on_shard(self.shard_of(topic, queue_id), move |s| async move {
            s.get_messages(&t, queue_id, offset, max_msgs, tag_codes.as_deref())
                .await
        })
        .await
    }

    /// The record at a commitlog offset, from whichever shard holds it.
    pub async fn read_message(&self, offset: CommitLogOffset) -> Result<Bytes> {
        self.on_shard(offset.shard(), move |s| async move {
            s.read_message(offset).await
        })
        .await
    }

    /// Records of `topic` with `key` in KEYS or UNIQ_KEY, from every shard.
    pub async fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin: i64,
        end: i64,
    ) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        for i in 0..self.shard_count() {
            let (t, k) = (topic.to_string(), key.to_string());
            let id = ShardId::new(i).ok_or(StoreError::Closed)?;
            let mut v = self
                .on_shard(id, move |s| async move {
                    s.query_by_key(&t, &k, max, begin, end).await
                })
                .await?;
            out.append(&mut v);
            if out.len() >= max {
                out.truncate(max);
                break;
            }
        }
        Ok(out)
    }

    /// (min, max) offsets of a queue.
    pub async fn queue_range(&self, topic: &str, queue_id: u32) -> Result<(u64, u64)> {
        let t = topic.to_string();
        self.on_shard(self.shard_of(topic, queue_id), move |s| async move {
            s.settle().await;
            Ok(s.queue_range(&t, queue_id))
        })
        .await
    }

    pub async fn search_offset_by_timestamp(
        &self,
        topic: &str,
        queue_id: u32,
        ts: i64,
    ) -> Result<u64> {
        let t = topic.to_string();
        self.on_shard(self.shard_of(topic, queue_id), move |s| async move {
            s.search_offset_by_timestamp(&t, queue_id, ts).await
        })
        .await
    }

    pub async fn earliest_msg_store_time(&self, topic: &str, queue_id: u32) -> Result<i64> {
        let t = topic.to_string();
        self.on_shard(self.shard_of(topic, queue_id), move |s| async move {
            s.earliest_msg_store_time(&t, queue_id).await
        })
        .await
    }

    /// Stats of every shard.
    pub async fn stats(&self) -> Result<Vec<ShardStats>> {
        let mut out = Vec::new();
        for i in 0..self.shard_count() {
            let id = ShardId::new(i).ok_or(StoreError::Closed)?;
            out.push(self.on_shard(id, |s| async move { Ok(s.stats()) }).await?);
        }
        Ok(out)
    }

    /// Runs a retention pass on every shard now, whatever the hour.
    pub async fn run_retention(&self) -> Result<RetentionReport> {
        let mut total = RetentionReport::default();
        for i in 0..self.shard_count() {
            let id = ShardId::new(i).ok_or(StoreError::Closed)?;
            let r = self
                .on_shard(id, |s| async move { s.run_retention_pass().await })
                .await?;
            total.segments += r.segments;
            total.queue_files += r.queue_files;
            total.index_files += r.index_files;
        }
        Ok(total)
    }

    /// [`ShardStore::verify`] on every shard, merged.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let mut total = VerifyReport::default();
        for i in 0..self.shard_count() {
            let id = ShardId::new(i).ok_or(StoreError::Closed)?;
            let r = self
                .on_shard(id, |s| async move { s.verify().await })
                .await?;
            total.records += r.records;
            total.entries += r.entries;
            total.problems.extend(r.problems);
        }
        Ok(total)
    }

    /// Removes a topic's queues on every shard.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        for i in 0..self.shard_count() {
            let id = ShardId::new(i).ok_or(StoreError::Closed)?;
            let t = topic.to_string();
            self.on_shard(id, move |s| async move { s.delete_topic(&t).await })
                .await?;
        }
        Ok(())
    }
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or a container's cpuset
/// sets it), in order; shard `i` is pinned to the `i`-th. Pinning to CPU `i` itself would
/// put a shard outside the mask, which a cpuset refuses.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    let cpus: Vec<usize> = if ok {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `c` is below CPU_SETSIZE, the set's capacity.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    cpus
}

async fn serve(shard: Rc<ShardStore>, rx: flume::Receiver<Msg>) {
    while let Ok(msg) = rx.recv_async().await {
        match msg {
            Msg::Job(job) => {
                glommio::spawn_local(job(shard.clone())).detach();
            }
            Msg::Close(reply) => {
                // Jobs from now on get `Closed`, as through the (then dropped) channel.
                LOCAL.with(|l| l.borrow_mut().take());
                let r = shard.close().await;
                let _ = reply.send(r);
                return;
            }
        }
    }
    LOCAL.with(|l| l.borrow_mut().take());
    let _ = shard.close().await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Shards are placed on the CPUs of the affinity mask (`taskset`, a cpuset), never on
    /// CPU `i` regardless of it.
    #[test]
    fn shards_are_pinned_inside_the_affinity_mask() {
        // Run on a thread restricted to the mask's last CPU, as `taskset -c N` would.
        let all = super::allowed_cpus();
        assert!(!all.is_empty());
        let last = *all.last().unwrap();
        let got = std::thread::spawn(move || {
            // SAFETY: as in allowed_cpus; CPU_SET on an index below CPU_SETSIZE.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(last, &mut set) };
            let rc =
                unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
            assert_eq!(rc, 0);
            super::allowed_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(got, vec![last]);
    }

    /// An executor preempted before it ran anything must poll again, never sleep with tasks
    /// still runnable: with no I/O in flight and no timer armed nothing wakes it. That was
    /// a shard that never finished opening its store after a SIGKILL (vendor/README.md).
    /// A 1 ns preemption timer makes "preempted before running" the common case.
    #[test]
    fn executor_never_sleeps_with_runnable_tasks() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .preempt_timer(Duration::from_nanos(1))
                .make()
                .expect("executor");
            for _ in 0..200 {
                ex.run(async {
                    for _ in 0..50 {
                        futures_lite::future::yield_now().await;
                    }
                });
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the executor slept with a runnable task and nothing to wake it");
    }
}
