//! Raw limits of the host, measured in the same run as what is compared with them:
//! sequential O_DIRECT write and read bandwidth, `fdatasync` latency, loopback TCP bandwidth
//! and round trip. Shared by the benchmarks (`mod limits;`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};
use hdrhistogram::Histogram;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Runs `f` on a fresh single executor (raw measurements).
pub fn on_executor<R: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = R>>> + Send + 'static,
) -> R {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("join")
}

/// Block sizes of the durable-write limit: one round of 64 appenders of 1 KiB and of 4 KiB.
pub const DURABLE_BLOCKS: [usize; 2] = [64 << 10, 256 << 10];

pub struct Raw {
    pub write_mbps: f64,
    pub read_mbps: f64,
    pub fsync_p50_us: f64,
    pub fsync_p99_us: f64,
    /// Sequential `O_DSYNC` writes, one in flight, into written blocks: (block bytes, stream).
    /// One durable write per round is what a SYNC_FLUSH group commit does.
    pub durable: Vec<(usize, Stream)>,
}

/// A durable write stream: MB/s and the p99 of one write (medians over repeats).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stream {
    pub mbps: f64,
    pub p99_us: f64,
}

/// A new file at `path` (an old one removed), preallocated to `size` bytes.
async fn fresh_file(path: &Path, size: u64) -> DmaFile {
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.pre_allocate(size, false).await.expect("fallocate");
    f
}

pub async fn raw_write(path: PathBuf, total: u64, block: usize, depth: usize) -> f64 {
    let f = Rc::new(fresh_file(&path, total).await);
    let start = Instant::now();
    let mut pos = 0u64;
    let mut inflight = std::collections::VecDeque::new();
    while pos < total {
        let mut b = f.alloc_dma_buffer(block);
        b.as_bytes_mut().fill(0xAB);
        let ff = f.clone();
        let at = pos;
        inflight.push_back(glommio::spawn_local(
            async move { ff.write_at(b, at).await },
        ));
        pos += block as u64;
        if inflight.len() >= depth {
            inflight.pop_front().expect("task").await.expect("write");
        }
    }
    for t in inflight {
        t.await.expect("write");
    }
    f.fdatasync().await.expect("fdatasync");
    total as f64 / start.elapsed().as_secs_f64() / 1e6
}

pub async fn raw_read(path: PathBuf, total: u64, block: usize) -> f64 {
    let f = DmaFile::open(&path).await.expect("open raw file");
    let start = Instant::now();
    let mut pos = 0;
    while pos < total {
        let r = f.read_at_aligned(pos, block).await.expect("read");
        // Touch the data as a consumer would (the store copies it out).
        let v = Bytes::copy_from_slice(&r);
        std::hint::black_box(v);
        pos += block as u64;
    }
    total as f64 / start.elapsed().as_secs_f64() / 1e6
}

pub async fn raw_fsync(path: PathBuf, n: usize) -> (f64, f64) {
    let f = fresh_file(&path, 64 << 20).await;
    // Written once first: the limit is a durable rewrite of mapped blocks, as the store's
    // warmed segments give it (a first write to fallocated space also commits an extent
    // conversion, which is slower).
    let mut z = f.alloc_dma_buffer(n * 4096);
    z.as_bytes_mut().fill(0);
    f.write_at(z, 0).await.expect("write");
    f.fdatasync().await.expect("fdatasync");
    let mut h = new_hist();
    for i in 0..n {
        let mut b = f.alloc_dma_buffer(4096);
        b.as_bytes_mut().fill(1);
        let t = Instant::now();
        f.write_at(b, (i as u64) * 4096).await.expect("write");
        f.fdatasync().await.expect("fdatasync");
        h.record(t.elapsed().as_nanos() as u64).ok();
    }
    (
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    )
}

/// What the blocks of a durable write stream held before it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Blocks {
    /// Written once before: a warmed segment (or a reused one).
    Written,
    /// Preallocated and never written: each write also converts its extent, whose metadata
    /// the write's sync carries (a new segment without warming).
    Fresh,
    /// Written once before, while as many zeros go into another fresh file through a handle
    /// without `O_DSYNC`, one block with each durable write: a new store's price, as its
    /// warmer zeroes the next segment at the pace of the data.
    WrittenWhileZeroing,
}

/// Sequential `O_DSYNC` writes of `block` bytes, one in flight, `n` of them, into blocks
/// prepared as `blocks` says.
pub async fn raw_dsync_write(path: PathBuf, block: usize, n: usize, blocks: Blocks) -> Stream {
    raw_dsync_streams(path, block, n, blocks, 1).await
}

/// `streams` of [`raw_dsync_write`] at once, each into files of its own (a shard each):
/// their MB/s together, and the p99 of one write.
pub async fn raw_dsync_streams(
    path: PathBuf,
    block: usize,
    n: usize,
    blocks: Blocks,
    streams: usize,
) -> Stream {
    let mut prepared = Vec::new();
    for i in 0..streams {
        let p = path.with_extension(format!("dsync{i}"));
        prepared.push(prepare_stream(p, (block * n) as u64, blocks).await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|(f, zeroing)| glommio::spawn_local(dsync_stream(f, zeroing, block, n)))
        .collect();
    let mut h = new_hist();
    for t in tasks {
        h.add(t.await).ok();
    }
    let mbps = (block * n * streams) as f64 / start.elapsed().as_secs_f64() / 1e6;
    for i in 0..streams {
        let p = path.with_extension(format!("dsync{i}"));
        let _ = std::fs::remove_file(p.with_extension("zeros"));
        let _ = std::fs::remove_file(&p);
    }
    Stream {
        mbps,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
    }
}

/// A file of `total` bytes at `path`, prepared as `blocks` says and opened `O_DSYNC`, and for
/// [`Blocks::WrittenWhileZeroing`] a fresh file beside it for the zeros.
async fn prepare_stream(path: PathBuf, total: u64, blocks: Blocks) -> (DmaFile, Option<DmaFile>) {
    let f = fresh_file(&path, total).await;
    if blocks != Blocks::Fresh {
        let mut pos = 0;
        while pos < total {
            let len = (total - pos).min(1 << 20) as usize;
            let mut z = f.alloc_dma_buffer(len);
            z.as_bytes_mut().fill(0);
            f.write_at(z, pos).await.expect("write");
            pos += len as u64;
        }
        f.fdatasync().await.expect("fdatasync");
    }
    f.close().await.expect("close");
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(&path)
        .await
        .expect("open O_DSYNC");
    let zeroing = match blocks {
        Blocks::WrittenWhileZeroing => Some(fresh_file(&path.with_extension("zeros"), total).await),
        _ => None,
    };
    (f, zeroing)
}

/// `n` durable writes of `block` bytes, one in flight, each with as many zeros into `zeroing`
/// if given; the latency of each.
async fn dsync_stream(
    f: DmaFile,
    zeroing: Option<DmaFile>,
    block: usize,
    n: usize,
) -> Histogram<u64> {
    let mut h = new_hist();
    for i in 0..n {
        let t = Instant::now();
        let at = (i * block) as u64;
        let mut b = f.alloc_dma_buffer(block);
        b.as_bytes_mut().fill(2);
        match &zeroing {
            // In flight together, as the warmer's chunk and a flush round are.
            Some(z) => {
                let mut zb = z.alloc_dma_buffer(block);
                zb.as_bytes_mut().fill(0);
                let (d, zr) =
                    futures_lite::future::zip(f.write_at(b, at), z.write_at(zb, at)).await;
                d.expect("write");
                zr.expect("write zeros");
            }
            None => {
                f.write_at(b, at).await.expect("write");
            }
        }
        h.record(t.elapsed().as_nanos() as u64).ok();
    }
    f.close().await.expect("close");
    if let Some(z) = zeroing {
        z.close().await.expect("close");
    }
    h
}

/// The durable write streams of a new store with `streams` shards writing at once: per block
/// size of [`DURABLE_BLOCKS`], into fresh blocks and into written ones while zeroing as many
/// (the two ways a new segment can be filled), median of `reps`.
pub fn new_store_streams(dir: &Path, reps: usize, streams: usize) -> Vec<(usize, Stream, Stream)> {
    let mut d: Vec<[Vec<Stream>; 2]> = vec![[Vec::new(), Vec::new()]; DURABLE_BLOCKS.len()];
    for _ in 0..reps {
        let path = dir.join("streams.dat");
        let probe = dir.join("probe.dat");
        let got = on_executor(move || {
            Box::pin(async move {
                coremq::store::dma::prime_iopoll_probe(&probe)
                    .await
                    .expect("probe");
                let mut got = Vec::new();
                for block in DURABLE_BLOCKS {
                    let n = (64 << 20) / block;
                    let mut two = Vec::new();
                    for blocks in [Blocks::Fresh, Blocks::WrittenWhileZeroing] {
                        two.push(raw_dsync_streams(path.clone(), block, n, blocks, streams).await);
                    }
                    got.push(two);
                }
                got
            })
        });
        for (k, two) in got.into_iter().enumerate() {
            d[k][0].push(two[0]);
            d[k][1].push(two[1]);
        }
    }
    DURABLE_BLOCKS
        .into_iter()
        .zip(d)
        .map(|(b, [fresh, zeroing])| (b, median_stream(&fresh), median_stream(&zeroing)))
        .collect()
}

fn median_stream(v: &[Stream]) -> Stream {
    Stream {
        mbps: median(v.iter().map(|s| s.mbps).collect()),
        p99_us: median(v.iter().map(|s| s.p99_us).collect()),
    }
}

pub fn raw_limits(dir: &Path, reps: usize) -> Raw {
    let total = 512u64 << 20;
    let mut w = Vec::new();
    let mut r = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut d: Vec<Vec<Stream>> = vec![Vec::new(); DURABLE_BLOCKS.len()];
    for _ in 0..reps {
        let path = dir.join("raw.dat");
        let probe = dir.join("probe.dat");
        let (wm, rm, (a, b), ds) = on_executor(move || {
            Box::pin(async move {
                coremq::store::dma::prime_iopoll_probe(&probe)
                    .await
                    .expect("probe");
                let wm = raw_write(path.clone(), total, 1 << 20, 4).await;
                let rm = raw_read(path.clone(), total, 1 << 20).await;
                let fs = raw_fsync(path.with_extension("sync"), 300).await;
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("sync"));
                let mut ds = Vec::new();
                for block in DURABLE_BLOCKS {
                    let n = (64 << 20) / block;
                    let p = path.with_extension("dsync");
                    ds.push(raw_dsync_write(p, block, n, Blocks::Written).await);
                }
                (wm, rm, fs, ds)
            })
        });
        w.push(wm);
        r.push(rm);
        for (k, v) in ds.into_iter().enumerate() {
            d[k].push(v);
        }
        p50.push(a);
        p99.push(b);
    }
    Raw {
        write_mbps: median(w),
        read_mbps: median(r),
        fsync_p50_us: median(p50),
        fsync_p99_us: median(p99),
        durable: DURABLE_BLOCKS
            .into_iter()
            .zip(d.iter().map(|k| median_stream(k)))
            .collect(),
    }
}

/// Loopback TCP: bandwidth (MB/s, 256 KiB writes for `secs`) and the p50/p99 round trip of a
/// 64-byte ping-pong between two threads (µs).
pub fn loopback(secs: f64) -> (f64, f64, f64) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("addr");
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect loopback");
    let buf = vec![7u8; 256 << 10];
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < secs {
        c.write_all(&buf).expect("write loopback");
    }
    drop(c);
    let total = sink.join().expect("sink");
    let mbps = total as f64 / t.elapsed().as_secs_f64() / 1e6;

    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let _ = s.set_nodelay(true);
        let mut b = [0u8; 64];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect loopback");
    let _ = c.set_nodelay(true);
    let mut h = new_hist();
    let mut b = [1u8; 64];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs_f64(secs) {
        let s = Instant::now();
        c.write_all(&b).expect("ping");
        c.read_exact(&mut b).expect("pong");
        h.record(s.elapsed().as_nanos() as u64).ok();
    }
    drop(c);
    let _ = echo.join();
    (
        mbps,
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    )
}

/// Disk limits of `dir` (see [`raw_limits`]), median of `reps`.
pub fn disk(dir: &Path, reps: usize) -> Raw {
    std::fs::create_dir_all(dir).expect("bench dir");
    // glommio's first DMA file must hold data (see `store::dma::prime_iopoll_probe`).
    std::fs::write(dir.join("probe.dat"), vec![1u8; 4096]).expect("probe file");
    raw_limits(dir, reps)
}

/// CPU time (user + system) this process used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Where the path lives, for reports.
pub fn describe(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}
