//! Store benchmark: raw disk limits and the store's append, read and retention figures,
//! measured in one run so every figure is also a ratio to its limit.
//!
//! Run (release): `cargo bench --bench store_bench -- [--dir DIR] [--secs 2] [--warmup 1]
//! [--reps 3]`
//! `--quick` runs a reduced matrix. Results are printed as markdown and written to
//! `bench/results/store-<unix time>.md`.
//!
//! Appenders are tasks on the shard executors, calling the shard's `put` as the broker does;
//! latency is per `put`, from the call to its completion (ASYNC_FLUSH: in the write buffer;
//! SYNC_FLUSH: durable). Throughput counts record bytes acknowledged during the run, after a
//! warm-up that is not counted (a new store's first appends fault in the memory of its tail
//! cache, 320 MiB a shard, which a broker pays once in its life).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use coremq::message::properties;
use coremq::store::{FlushDiskType, PutMessage, Store, StoreConfig};
use hdrhistogram::Histogram;

mod limits;
use limits::*;

// The broker's allocator (see src/bin/mqbroker.rs), so the figures are the broker's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
struct Opts {
    /// Directory on the disk to measure (default: target/bench-store).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per append run.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Seconds of appends before each run's measured `secs`, not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Repeats per configuration; medians are reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Reduced matrix (1 KiB only, fewer appender counts).
    #[arg(long)]
    quick: bool,
    /// Bytes read back in the cold-read test.
    #[arg(long, default_value_t = 1 << 30)]
    cold_bytes: u64,
    /// Only append shapes whose label (e.g. `1024B/1sh/ASYNC/64`) contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Skip the cold-read and retention sections.
    #[arg(long)]
    no_extras: bool,
    /// Rows with retention at its limit: ms between retention passes.
    #[arg(long, default_value_t = 50)]
    retention_ms: u64,
    /// Rows with retention at its limit: expired segments a shard keeps for reuse
    /// (`spareCommitLogSegments`).
    #[arg(long, default_value_t = 1)]
    spares: usize,
    /// Segment warming (`warmMapedFileEnable`): `auto` (on for SYNC_FLUSH), `on`, `off`.
    #[arg(long, default_value = "auto")]
    warm: String,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

impl Opts {
    /// Whether `--filter` leaves out the shape labelled `label`.
    fn skips(&self, label: &str) -> bool {
        self.filter
            .as_ref()
            .is_some_and(|f| !label.contains(f.as_str()))
    }
}

#[derive(Clone, Copy)]
struct Shape {
    size: usize,
    shards: usize,
    mode: FlushDiskType,
    appenders: usize,
}

struct RunResult {
    appends: u64,
    bytes: u64,
    secs: f64,
    hist: Histogram<u64>,
}

fn message(topic: &str, q: u32, body: &Bytes, uniq: u64) -> PutMessage {
    // TAGS plus a unique UNIQ_KEY, as every RocketMQ producer sends (indexed by the store).
    let mut props = Vec::with_capacity(64);
    properties::push(&mut props, "TAGS", "TagA");
    props.extend_from_slice(b"UNIQ_KEY\x01");
    for shift in (0..64).step_by(4).rev() {
        props.push(b"0123456789ABCDEF"[((uniq >> shift) & 0xF) as usize]);
    }
    props.push(0x02);
    PutMessage {
        topic: topic.into(),
        queue_id: q,
        flag: 0,
        body: body.clone(),
        properties: props.into(),
        sys_flag: 0,
        born_timestamp: 0,
        born_host: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
    }
}

/// `appenders` tasks on each shard append `size`-byte messages for `secs`.
fn append_load(store: &Store, size: usize, appenders: usize, secs: f64) -> RunResult {
    let warmup = Warmup {
        secs: 0.0,
        bytes: 0,
    };
    try_append_load(store, size, appenders, warmup, secs)
        .unwrap_or_else(|e| panic!("append load: {e}"))
}

/// What a load does before its measured part: it runs for `secs`, and on every shard for
/// at least `bytes` of records.
#[derive(Clone, Copy)]
struct Warmup {
    secs: f64,
    bytes: u64,
}

/// Longest a warm-up may take to reach its bytes.
const WARMUP_LIMIT: Duration = Duration::from_secs(60);

/// When the measured part of a load starts: the first instant at which the warm-up's time
/// has passed and every shard has appended the warm-up's bytes. Shared by the shards.
struct Start {
    at: std::sync::OnceLock<Instant>,
    ready: std::sync::atomic::AtomicUsize,
    shards: usize,
    not_before: Instant,
}

impl Start {
    /// The start, fixing it now if every shard is ready and the warm-up time has passed.
    fn check(&self, now: Instant) -> Option<Instant> {
        if let Some(at) = self.at.get() {
            return Some(*at);
        }
        (now >= self.not_before && self.ready.load(Ordering::Acquire) == self.shards)
            .then(|| *self.at.get_or_init(|| now))
    }
}

/// As [`append_load`], counting only the appends that start after the warm-up.
fn try_append_load(
    store: &Store,
    size: usize,
    appenders: usize,
    warmup: Warmup,
    secs: f64,
) -> Result<RunResult, String> {
    let n = store.shard_count();
    let start = Arc::new(Start {
        at: std::sync::OnceLock::new(),
        ready: std::sync::atomic::AtomicUsize::new(0),
        shards: n,
        not_before: Instant::now() + Duration::from_secs_f64(warmup.secs),
    });
    let measured = Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (store, start) = (store.clone(), start.clone());
            std::thread::spawn(move || {
                let id = coremq::store::ShardId::new(i).expect("shard id");
                futures_lite::future::block_on(store.on_shard(id, move |s| async move {
                    let owned: Vec<u32> = (0..1024u32)
                        .filter(|q| coremq::store::shard::shard_of("Bench", *q, n) == s.id())
                        .take(8)
                        .collect();
                    let hist = Rc::new(RefCell::new(new_hist()));
                    let count = Rc::new(Cell::new(0u64));
                    let bytes = Rc::new(Cell::new(0u64));
                    // This shard's bytes in the warm-up; `None` once it counted as ready.
                    let warm = Rc::new(Cell::new(Some(0u64)));
                    let body = Bytes::from(vec![0x5Au8; size]);
                    let tasks: Vec<_> = (0..appenders)
                        .map(|k| {
                            let (s, hist, count, bytes, warm, start, body) = (
                                s.clone(),
                                hist.clone(),
                                count.clone(),
                                bytes.clone(),
                                warm.clone(),
                                start.clone(),
                                body.clone(),
                            );
                            let q = owned[k % owned.len()];
                            glommio::spawn_local(async move {
                                let mut seq = (k as u64) << 40;
                                let mut t = Instant::now();
                                loop {
                                    let from = start.check(t);
                                    match from {
                                        Some(f) if t >= f + measured => break,
                                        None if t >= start.not_before + WARMUP_LIMIT => {
                                            return Err(format!(
                                                "the warm-up did not append {} bytes per \
                                                 shard in {WARMUP_LIMIT:?}",
                                                warmup.bytes
                                            ));
                                        }
                                        _ => {}
                                    }
                                    seq += 1;
                                    let m = message("Bench", q, &body, seq);
                                    let r = s
                                        .put(std::slice::from_ref(&m))
                                        .await
                                        .map_err(|e| e.to_string())?;
                                    let done = Instant::now();
                                    let size = r[0].size as u64;
                                    if from.is_some_and(|f| t >= f) {
                                        let ns = (done - t).as_nanos() as u64;
                                        hist.borrow_mut().record(ns).ok();
                                        count.set(count.get() + 1);
                                        bytes.set(bytes.get() + size);
                                    } else if let Some(w) = warm.get() {
                                        if w + size >= warmup.bytes {
                                            warm.set(None);
                                            start.ready.fetch_add(1, Ordering::Release);
                                        } else {
                                            warm.set(Some(w + size));
                                        }
                                    }
                                    t = done;
                                    // A request boundary: a broker's connection task awaits
                                    // its socket here, letting the other appenders run.
                                    futures_lite::future::yield_now().await;
                                }
                                Ok::<(), String>(())
                            })
                        })
                        .collect();
                    let mut err = None;
                    for t in tasks {
                        if let Err(e) = t.await {
                            err.get_or_insert(e);
                        }
                    }
                    // A store error ends the shard's work; a load error is the run's result.
                    let h = hist.borrow().clone();
                    Ok(match err {
                        Some(e) => Err(e),
                        None => Ok((count.get(), bytes.get(), h)),
                    })
                }))
                .map_err(|e| e.to_string())
                .and_then(|r| r)
            })
        })
        .collect();
    let mut out = RunResult {
        appends: 0,
        bytes: 0,
        secs: 0.0,
        hist: new_hist(),
    };
    let mut err = None;
    for t in threads {
        match t
            .join()
            .map_err(|_| "load thread panicked".to_string())
            .and_then(|r| r)
        {
            Ok((c, b, h)) => {
                out.appends += c;
                out.bytes += b;
                out.hist.add(h).ok();
            }
            Err(e) => err = Some(e),
        }
    }
    out.secs = start.at.get().map_or(0.0, |at| at.elapsed().as_secs_f64());
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// `--warm`, as the store's `warm_segments` (set once in `main`).
static WARM: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();

fn bench_config(dir: &Path, shards: usize, mode: FlushDiskType) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.warm_segments = WARM.get().copied().flatten();
    c.shards = shards;
    c.flush_disk_type = mode;
    c.retention.set_delete_when(&[]);
    c
}

/// One append run in a fresh store (256 MiB segments keep the disk footprint small on a
/// shared disk). Errors (a full disk, say) come back as text for the table.
///
/// With `at_limit`, retention runs every `--retention-ms` (50) with `fileReservedTime` 0, and
/// a shard keeps `--spares` (1) expired segments, as on a broker whose
/// retention deletes a segment for each it fills: each segment the appends leave is kept as
/// the spare and the next new one takes it (`reuse_segments`). The first four segments of a
/// shard are new ones: two opened with the store, one opened ahead while the first is
/// written, before any has expired, and the one opened ahead as the second becomes the tail,
/// a moment before the first is retired. So the warm-up also lasts until every shard has
/// appended five segments, and the measured part runs in reused segments only.
fn run_append(
    base: &Path,
    shape: Shape,
    warmup: f64,
    secs: f64,
    at_limit: Option<(Duration, usize)>,
) -> Result<RunResult, String> {
    let dir = base.join("append");
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = bench_config(&dir, shape.shards, shape.mode);
    cfg.segment_size = 256 << 20;
    if let Some((_, spares)) = at_limit {
        cfg.retention.set_file_reserved_hours(0);
        cfg.spare_segments = spares;
    }
    let warmup = Warmup {
        secs: warmup,
        bytes: if at_limit.is_some() {
            5 * cfg.segment_size
        } else {
            0
        },
    };
    let store = Store::open(cfg).map_err(|e| e.to_string())?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retention = at_limit.map(|(every, _)| {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                if let Err(e) = futures_lite::future::block_on(store.run_retention()) {
                    eprintln!("retention: {e}");
                }
            }
        })
    });
    let r = try_append_load(&store, shape.size, shape.appenders, warmup, secs);
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = retention {
        let _ = t.join();
    }
    let closed = store.shutdown().map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    closed?;
    Ok(r)
}

/// `--reps` runs of [`run_append`], or the first failure.
fn append_runs(
    base: &Path,
    shape: Shape,
    opts: &Opts,
    at_limit: bool,
) -> Result<Vec<RunResult>, String> {
    let at_limit = at_limit.then(|| (Duration::from_millis(opts.retention_ms), opts.spares));
    (0..opts.reps)
        .map(|_| run_append(base, shape, opts.warmup, opts.secs, at_limit))
        .collect()
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

/// Writes `total` bytes of 4 KiB messages to one queue, restarts (empty tail cache), reads
/// them all back through `get_messages`; returns MB/s of the read.
fn cold_read(base: &Path, total: u64) -> Result<f64, String> {
    let dir = base.join("cold");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = bench_config(&dir, 1, FlushDiskType::AsyncFlush);
    let store = Store::open(cfg.clone()).map_err(|e| format!("open: {e}"))?;
    let id = coremq::store::ShardId::new(0).expect("shard 0");
    futures_lite::future::block_on(store.on_shard(id, move |s| async move {
        let body = Bytes::from(vec![0x33u8; 4096]);
        let mut written = 0u64;
        let mut seq = 0;
        while written < total {
            let batch: Vec<PutMessage> = (0..32)
                .map(|_| {
                    seq += 1;
                    message("Cold", 0, &body, seq)
                })
                .collect();
            for r in s.put(&batch).await? {
                written += r.size as u64;
            }
        }
        Ok(())
    }))
    .map_err(|e| format!("fill: {e}"))?;
    store.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    let store = Store::open(cfg).map_err(|e| format!("reopen: {e}"))?;
    let mbps = futures_lite::future::block_on(store.on_shard(id, move |s| async move {
        let (_, max) = s.queue_range("Cold", 0);
        let start = Instant::now();
        let mut off = 0;
        let mut bytes = 0u64;
        while off < max {
            let r = s.get_messages("Cold", 0, off, 256, None).await?;
            bytes += r.messages.iter().map(|m| m.len() as u64).sum::<u64>();
            off = r.next_begin_offset;
        }
        Ok(bytes as f64 / start.elapsed().as_secs_f64() / 1e6)
    }))
    .map_err(|e| format!("read back: {e}"))?;
    store.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(mbps)
}

/// p99.9 append latency (SYNC_FLUSH, 16 appenders) with and without retention deleting
/// expired segments during the run.
fn retention_trouble(base: &Path, secs: f64) -> (f64, f64, usize) {
    let mut out = Vec::new();
    let mut deleted = 0;
    for trouble in [false, true] {
        let dir = base.join("retention");
        let _ = std::fs::remove_dir_all(&dir);
        let skew = Arc::new(AtomicI64::new(0));
        let mut cfg = bench_config(&dir, 1, FlushDiskType::SyncFlush);
        cfg.segment_size = 64 << 20;
        let s2 = skew.clone();
        let real = coremq::store::config::system_clock();
        cfg.clock = Arc::new(move || real() + s2.load(Ordering::Relaxed));
        let store = Store::open(cfg).expect("open");
        // Prefill ~10 segments.
        let id = coremq::store::ShardId::new(0).expect("shard 0");
        futures_lite::future::block_on(store.on_shard(id, move |s| async move {
            let body = Bytes::from(vec![1u8; 4096]);
            let mut w = 0u64;
            let mut seq = 0;
            while w < 640 << 20 {
                let batch: Vec<PutMessage> = (0..64)
                    .map(|_| {
                        seq += 1;
                        message("Fill", 0, &body, seq)
                    })
                    .collect();
                for r in s.put(&batch).await? {
                    w += r.size as u64;
                }
            }
            Ok(())
        }))
        .expect("prefill");
        let deleter = trouble.then(|| {
            skew.store(100 * 3_600_000, Ordering::Relaxed);
            let st = store.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs_f64(secs / 4.0));
                futures_lite::future::block_on(st.run_retention()).expect("retention")
            })
        });
        let r = append_load(&store, 1024, 16, secs);
        if let Some(d) = deleter {
            deleted = d.join().expect("deleter").segments;
        }
        out.push(us(&r.hist, 0.999));
        store.shutdown().expect("shutdown");
        let _ = std::fs::remove_dir_all(&dir);
    }
    (out[0], out[1], deleted)
}

fn main() {
    // As mqbroker does, so the figures are the broker's.
    if let Err(e) = coremq::store::runtime::disable_transparent_huge_pages() {
        eprintln!("PR_SET_THP_DISABLE: {e}");
    }
    let opts = Opts::parse();
    let warm = match opts.warm.as_str() {
        "auto" => None,
        "on" => Some(true),
        "off" => Some(false),
        other => {
            eprintln!("--warm {other:?}: expected auto, on or off");
            std::process::exit(2);
        }
    };
    WARM.set(warm).expect("set once");
    let base = opts
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-store"));
    std::fs::create_dir_all(&base).expect("bench dir");
    // The iopoll probe needs a file with data (see store::dma::prime_iopoll_probe).
    std::fs::write(base.join("probe.dat"), vec![0u8; 4096]).expect("probe file");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut md = String::new();
    let mut say = |s: String| {
        println!("{s}");
        md.push_str(&s);
        md.push('\n');
    };
    say(format!(
        "# Store benchmark\n\ncommand: `cargo bench --bench store_bench -- {}`, dir `{}`, \
         {cores} core(s)\n",
        // As given, so a partial run (--filter, --no-extras) says so.
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        base.display()
    ));
    let raw = raw_limits(&base, opts.reps);
    // A new store's streams, one shard's and every shard's at once (the all-shards rows).
    let new_one = new_store_streams(&base, opts.reps, 1);
    let new_all = (cores > 1).then(|| new_store_streams(&base, opts.reps, cores));
    say(format!(
        "## Raw limits (median of {})\n\n| O_DIRECT seq write 1 MiB QD4 | O_DIRECT seq read 1 MiB QD1 \
         | fdatasync after 4 KiB write p50 | p99 |{}\n|---|---|---|---|{}\n| {:.0} MB/s | {:.0} MB/s | \
         {:.0} µs | {:.0} µs |{}\n",
        opts.reps,
        raw.durable
            .iter()
            .map(|(b, _)| format!(" O_DSYNC seq write {} KiB QD1 |", b >> 10))
            .collect::<String>(),
        "---|".repeat(raw.durable.len()),
        raw.write_mbps,
        raw.read_mbps,
        raw.fsync_p50_us,
        raw.fsync_p99_us,
        raw.durable
            .iter()
            .map(|(_, m)| format!(" {:.0} MB/s |", m.mbps))
            .collect::<String>(),
    ));
    say(format!(
        "## Appends\n\n{} s per run after {} s of appends not counted (warm-up).\n",
        opts.secs, opts.warmup
    ));
    say("| record | shards | flush | appenders | appends/s | MB/s | of raw write \
         | p50 µs | p99 µs | p99.9 µs | max µs | p99 / raw fsync p99 |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        .to_string());
    let sizes: &[usize] = if opts.quick { &[1024] } else { &[1024, 4096] };
    let counts: &[usize] = if opts.quick { &[1, 64] } else { &[1, 16, 64] };
    let mut sync64 = Vec::new();
    let mut async_best: f64 = 0.0;
    for &size in sizes {
        for &shards in &[1, cores] {
            for mode in [FlushDiskType::AsyncFlush, FlushDiskType::SyncFlush] {
                for &appenders in counts {
                    let shape = Shape {
                        size,
                        shards,
                        mode,
                        appenders,
                    };
                    let label = format!(
                        "{size}B/{shards}sh/{}/{appenders}",
                        if mode == FlushDiskType::SyncFlush {
                            "SYNC"
                        } else {
                            "ASYNC"
                        }
                    );
                    if opts.skips(&label) {
                        continue;
                    }
                    let runs = match append_runs(&base, shape, &opts, false) {
                        Ok(r) => r,
                        Err(e) => {
                            say(format!("| {label} | failed: {e} |"));
                            continue;
                        }
                    };
                    let rate = median(runs.iter().map(|r| r.appends as f64 / r.secs).collect());
                    let mbps = median(runs.iter().map(|r| r.bytes as f64 / r.secs / 1e6).collect());
                    let q = |x: f64| median(runs.iter().map(|r| us(&r.hist, x)).collect());
                    let max = median(runs.iter().map(|r| r.hist.max() as f64 / 1e3).collect());
                    let p99 = q(0.99);
                    let ratio = mbps / raw.write_mbps;
                    let sync = mode == FlushDiskType::SyncFlush;
                    if sync && appenders == 64 {
                        sync64.push((size, shards, ratio, p99 / raw.fsync_p99_us));
                    }
                    if !sync {
                        async_best = async_best.max(ratio);
                    }
                    say(format!(
                        "| {} B | {shards} | {} | {appenders} | {rate:.0} | {mbps:.0} | {:.0} % | \
                         {:.1} | {:.1} | {:.1} | {max:.0} | {} |",
                        size,
                        if sync { "SYNC" } else { "ASYNC" },
                        ratio * 100.0,
                        q(0.5),
                        p99,
                        q(0.999),
                        if sync {
                            format!("{:.2}", p99 / raw.fsync_p99_us)
                        } else {
                            "-".into()
                        }
                    ));
                }
            }
        }
    }
    // What one durable write stream allows a closed loop of 64 appenders: a round commits at
    // most 64 records, so a shard's rounds are at best back-to-back durable writes of that size.
    let durable_rows: Vec<String> = sync64
        .iter()
        .filter_map(|(size, shards, ratio, lat)| {
            let round = 64 * size;
            let (_, written) = raw.durable.iter().find(|(b, _)| *b == round)?;
            let new_store = match (&new_all, *shards > 1) {
                (Some(all), true) => all,
                _ => &new_one,
            };
            let (_, fresh, zeroing) = new_store.iter().find(|(b, ..)| *b == round)?;
            // The better way to fill a new segment.
            let new = if fresh.mbps >= zeroing.mbps {
                fresh
            } else {
                zeroing
            };
            let mbps = ratio * raw.write_mbps;
            let of_raw = |m: f64| m / raw.write_mbps * 100.0;
            let of_fsync = |us: f64| us / raw.fsync_p99_us;
            Some(format!(
                "| {size} B | {shards} | {mbps:.0} MB/s, p99 {lat:.1}× | {} KiB | {:.0} MB/s \
                 ({:.0} %), p99 {:.1}× | {:.0} / {:.0} MB/s ({:.0} %), p99 {:.1}× | {:.0} % | \
                 {:.0} % |",
                round >> 10,
                written.mbps,
                of_raw(written.mbps),
                of_fsync(written.p99_us),
                fresh.mbps,
                zeroing.mbps,
                of_raw(new.mbps),
                of_fsync(new.p99_us),
                mbps / written.mbps * 100.0,
                mbps / new.mbps * 100.0
            ))
        })
        .collect();
    if !durable_rows.is_empty() {
        say(format!(
            "\n## SYNC_FLUSH, 64 appenders, against one durable write stream\n\n\
             A round commits at most the 64 records waiting, so a shard's best is back-to-back \
             `O_DSYNC` writes of 64 records, one in flight. Into written blocks (a warmed \
             segment) that is the first figure, for one stream. A new store's blocks \
             cost more: unwritten, each write's sync also carries its extent conversion; warmed, \
             as many zeros go to the disk as data. The second figure is the stream into fresh \
             blocks / into written ones while as many zeros go into another file, its \
             percentage and p99 those of the better of the two; for all shards, as many streams \
             at once as shards, their MB/s together. Percentages in brackets are of \
             raw write; p99s (of one append, of one durable write) are in raw fdatasync p99s.\n\n\
             | record | shards | SYNC | round | into written blocks | into a new store's \
             blocks (fresh / zeroing alongside) | SYNC / written | SYNC / new store |\n\
             |---|---|---|---|---|---|---|---|\n{}",
            durable_rows.join("\n")
        ));
    }
    // SYNC_FLUSH at its steady state: retention at its limit, every new segment a reused one.
    let mut steady_rows: Vec<(usize, usize, f64, f64)> = Vec::new();
    let shard_counts: &[usize] = if cores > 1 { &[1, cores] } else { &[1] };
    for &size in sizes {
        for &shards in shard_counts {
            let label = format!("{size}B/{shards}sh/SYNC/64/reused");
            if opts.skips(&label) {
                continue;
            }
            let shape = Shape {
                size,
                shards,
                mode: FlushDiskType::SyncFlush,
                appenders: 64,
            };
            let runs = match append_runs(&base, shape, &opts, true) {
                Ok(r) => r,
                Err(e) => {
                    say(format!("| {label} | failed: {e} |"));
                    continue;
                }
            };
            let mbps = median(runs.iter().map(|r| r.bytes as f64 / r.secs / 1e6).collect());
            let p99 = median(runs.iter().map(|r| us(&r.hist, 0.99)).collect());
            steady_rows.push((size, shards, mbps, p99));
        }
    }
    if !steady_rows.is_empty() {
        let rows: Vec<String> = steady_rows
            .iter()
            .map(|(size, shards, mbps, p99)| {
                let written = raw
                    .durable
                    .iter()
                    .find(|(b, _)| *b == 64 * size)
                    .map(|(_, s)| format!("{:.0} %", mbps / s.mbps * 100.0))
                    .unwrap_or_else(|| "-".into());
                format!(
                    "| {size} B | {shards} | {mbps:.0} | {:.0} % | {p99:.0} | {:.2} | {written} |",
                    mbps / raw.write_mbps * 100.0,
                    p99 / raw.fsync_p99_us
                )
            })
            .collect();
        say(format!(
            "\n## SYNC_FLUSH, 64 appenders, retention at its limit\n\n\
             Retention runs every {} ms with `fileReservedTime` 0, and a shard keeps {} spare(s), \
             as on a broker that deletes a segment for each it fills: each segment left behind \
             becomes a spare and a new one takes it, so past the first four the appends go into \
             written blocks; the warm-up lasts until every shard has appended five. The last \
             column is against one durable stream into written blocks.\n\n\
             | record | shards | MB/s | of raw write | p99 µs | p99 / raw fsync p99 | of the \
             written-block stream |\n|---|---|---|---|---|---|---|\n{}",
            opts.retention_ms,
            opts.spares,
            rows.join("\n")
        ));
    }
    if opts.no_extras {
        write_report(&md, &base);
        return;
    }
    // A failed run (the shared disk refusing space, say) is reported, not fatal.
    let colds: Vec<f64> = (0..opts.reps.min(2))
        .filter_map(|_| {
            cold_read(&base, opts.cold_bytes)
                .map_err(|e| eprintln!("cold read-back failed: {e}"))
                .ok()
        })
        .collect();
    let _ = std::fs::remove_dir_all(base.join("cold"));
    let cold = median(colds);
    say(format!(
        "\n## Cold read-back\n\n{} MiB of 4 KiB messages read through `get_messages` after a \
         restart: {cold:.0} MB/s = {:.0} % of raw O_DIRECT read (0: every run failed)\n",
        opts.cold_bytes >> 20,
        cold / raw.read_mbps * 100.0
    ));
    let (quiet, troubled, deleted) = retention_trouble(&base, opts.secs.max(2.0));
    say(format!(
        "## Retention during appends\n\nSYNC_FLUSH, 1 KiB, 16 appenders: p99.9 {quiet:.0} µs \
         quiet, {troubled:.0} µs while deleting {deleted} expired 64 MiB segment(s) ({:.2}×)\n",
        troubled / quiet.max(1.0)
    ));
    // Each 64-appender SYNC_FLUSH row against both of the targets.
    let verdict = |rows: &[(usize, usize, f64, f64)]| {
        rows.iter()
            .map(|(s, sh, r, l)| {
                let met = *r >= 0.5 && *l <= 3.0;
                format!(
                    "{s} B/{sh} shard(s): {:.0} %, {l:.2}× → {}",
                    r * 100.0,
                    if met { "met" } else { "not met" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let steady: Vec<(usize, usize, f64, f64)> = steady_rows
        .iter()
        .map(|(s, sh, m, p)| (*s, *sh, m / raw.write_mbps, p / raw.fsync_p99_us))
        .collect();
    say(format!(
        "## Targets\n\n- ASYNC_FLUSH append throughput ≥ 80 % of raw write: best {:.0} % → {}\n\
         - SYNC_FLUSH with 64 appenders ≥ 50 % of raw write and p99 ≤ 3 × raw fdatasync p99, \
         new store: {}\n\
         - The same with retention at its limit (reused segments): {}\n\
         - Cold read ≥ 70 % of raw O_DIRECT read: {:.0} % → {}",
        async_best * 100.0,
        if async_best >= 0.8 { "met" } else { "not met" },
        verdict(&sync64),
        verdict(&steady),
        cold / raw.read_mbps * 100.0,
        if cold / raw.read_mbps >= 0.7 {
            "met"
        } else {
            "not met"
        }
    ));
    write_report(&md, &base);
}

/// Writes the report to `bench/results/store-<unix time>.md` and removes the stores.
fn write_report(md: &str, base: &Path) {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    let _ = std::fs::create_dir_all(&out);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let file = out.join(format!("store-{stamp}.md"));
    if std::fs::write(&file, md).is_ok() {
        println!("\nwritten to {}", file.display());
    }
    let _ = std::fs::remove_dir_all(base);
}
