//! `coremq-store`: drive and inspect a CoreMQ store directly, without a broker.
//!
//! - `append` writes deterministic messages and prints `ACK <queue> <queueOffset> <offset>`
//!   as each is acknowledged (durable under SYNC_FLUSH); used by the crash test.
//! - `verify` checks every record and consume-queue entry (exit 1 on a problem).
//! - `stats` prints each shard's positions and queues.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use coremq::logging::{self, LogConfig};
use coremq::message::properties;
use coremq::store::{pattern_body, FlushDiskType, PutMessage, Store, StoreConfig};

#[derive(Parser)]
#[command(name = "coremq-store", about = "Drive and inspect a CoreMQ store")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// storePathRootDir.
    #[arg(long)]
    store: PathBuf,
    /// Shards (0 = one per core; an existing store keeps its own count).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// ASYNC_FLUSH or SYNC_FLUSH.
    #[arg(long, default_value = "ASYNC_FLUSH")]
    flush: FlushDiskType,
    /// mappedFileSizeCommitLog.
    #[arg(long, default_value_t = 1 << 30)]
    segment_size: u64,
    /// Entries per consume-queue file.
    #[arg(long, default_value_t = 300_000)]
    cq_entries: u64,
    /// maxHashSlotNum.
    #[arg(long, default_value_t = 5_000_000)]
    index_slots: u32,
    /// maxIndexNum.
    #[arg(long, default_value_t = 20_000_000)]
    index_entries: u32,
    /// maxMessageSize.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_message_size: usize,
    /// Log to stderr as well as the store's log.
    #[arg(long)]
    verbose: bool,
}

impl StoreArgs {
    fn config(&self) -> StoreConfig {
        let mut c = StoreConfig::new(&self.store);
        c.shards = self.shards;
        c.flush_disk_type = self.flush;
        c.segment_size = self.segment_size;
        c.cq_entries_per_file = self.cq_entries;
        c.index_slots = self.index_slots;
        c.index_max_entries = self.index_entries;
        c.max_message_size = self.max_message_size;
        c.pin_shards = false;
        c
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Append deterministic messages and print each acknowledgement.
    Append {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "CrashTest")]
        topic: String,
        #[arg(long, default_value_t = 4)]
        queues: u32,
        /// Messages per queue.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Stay open this long after the last acknowledgement before the clean shutdown
        /// (lets a test kill the process with acknowledged data in flight).
        #[arg(long, default_value_t = 0)]
        linger_ms: u64,
        /// Run retention this often with `fileReservedTime` 0, as a store at its retention
        /// limit: every segment left behind expires, and new segments reuse them (0: never).
        #[arg(long, default_value_t = 0)]
        retention_every_ms: u64,
        /// Expired segments a shard keeps for reuse (`spareCommitLogSegments`).
        #[arg(long, default_value_t = 1)]
        spares: usize,
    },
    /// Verify every record and consume-queue entry.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print shard positions and queues.
    Stats {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn init_log(a: &StoreArgs) {
    let mut lc = LogConfig::new("store");
    lc.dir = Some(a.store.join("logs"));
    lc.stderr = a.verbose;
    let _ = logging::init(&lc);
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coremq-store: {e}");
            2
        }
    };
    logging::drain();
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32, Box<dyn std::error::Error>> {
    match cli.cmd {
        Cmd::Append {
            store,
            topic,
            queues,
            count,
            size,
            linger_ms,
            retention_every_ms,
            spares,
        } => {
            init_log(&store);
            let mut cfg = store.config();
            cfg.spare_segments = spares;
            if retention_every_ms > 0 {
                cfg.retention.set_file_reserved_hours(0);
            }
            let s = Store::open(cfg)?;
            if retention_every_ms > 0 {
                let s = s.clone();
                // Runs until the process exits (appends end in a shutdown or a kill).
                std::thread::spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_millis(retention_every_ms));
                    if let Err(e) = futures_lite::future::block_on(s.run_retention()) {
                        eprintln!("retention: {e}");
                        return;
                    }
                });
            }
            let acked = Arc::new(AtomicU64::new(0));
            // One appender thread per queue: concurrent appends exercise group commit.
            let threads: Vec<_> = (0..queues)
                .map(|q| {
                    let (s, topic, acked) = (s.clone(), topic.clone(), acked.clone());
                    std::thread::spawn(move || -> Result<(), String> {
                        // Continue after what the queue already holds.
                        let (_, start) = futures_lite::future::block_on(s.queue_range(&topic, q))
                            .map_err(|e| e.to_string())?;
                        for i in start..start + count {
                            let mut props = Vec::new();
                            properties::push(&mut props, "TAGS", "TagA");
                            properties::push(&mut props, "KEYS", &format!("k-{q}-{i}"));
                            let m = PutMessage {
                                topic: topic.as_str().into(),
                                queue_id: q,
                                flag: 0,
                                body: pattern_body(q, i, size).into(),
                                properties: props.into(),
                                sys_flag: 0,
                                born_timestamp: 0,
                                born_host: "127.0.0.1:1".parse().map_err(|_| "addr")?,
                                reconsume_times: 0,
                                prepared_transaction_offset: 0,
                            };
                            let r = futures_lite::future::block_on(s.put(vec![m]))
                                .map_err(|e| e.to_string())?;
                            for p in r {
                                let mut out = std::io::stdout().lock();
                                let _ = writeln!(
                                    out,
                                    "ACK {q} {} {}",
                                    p.queue_offset,
                                    p.offset.as_i64()
                                );
                            }
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    })
                })
                .collect();
            let mut failed = false;
            for t in threads {
                if let Ok(Err(e)) = t.join() {
                    eprintln!("append failed: {e}");
                    failed = true;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(linger_ms));
            s.shutdown()?;
            eprintln!("appended {} message(s)", acked.load(Ordering::Relaxed));
            Ok(if failed { 1 } else { 0 })
        }
        Cmd::Verify { store } => {
            init_log(&store);
            let s = Store::open(store.config())?;
            let r = futures_lite::future::block_on(s.verify())?;
            s.shutdown()?;
            println!(
                "{} record(s), {} consume-queue entr(ies), {} problem(s)",
                r.records,
                r.entries,
                r.problems.len()
            );
            for p in &r.problems {
                println!("  {p}");
            }
            Ok(if r.problems.is_empty() { 0 } else { 1 })
        }
        Cmd::Stats { store } => {
            init_log(&store);
            let s = Store::open(store.config())?;
            for st in futures_lite::future::block_on(s.stats())? {
                println!(
                    "shard {}: commitlog [{}, {}) flushed {} durable {}, {} segment(s), {} \
                     queue(s)",
                    st.shard,
                    st.min_pos,
                    st.written,
                    st.flushed,
                    st.durable,
                    st.segments,
                    st.queues
                );
            }
            s.shutdown()?;
            Ok(0)
        }
    }
}
