//! `mqbroker`: the broker. `mqbroker [-n "host:port;host:port"] [-c broker.properties]`,
//! with `NAMESRV_ADDR` honoured as upstream does. SIGTERM (`mqshutdown broker`) stops it
//! cleanly: unregister, flush, offsets saved, `abort` removed.

use clap::Parser;
use std::io::Write;

// The send path allocates per request (frames, headers, records in flight); glibc's malloc
// showed as a quarter of the broker's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own options (mimalloc.h, v3, `enum mi_option_e`); the library is linked in
// through the `mimalloc` crate.
extern "C" {
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_delay`: milliseconds before freed memory goes back to the kernel.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
/// Our purge delay. At mimalloc's 1 s, buffers the broker frees every flush interval
/// (index and consume-queue write batches, request frames) went back to the kernel and came
/// back as fresh pages, each page a fault: batches of 32 × 1 KiB took 3.5–4k faults a
/// second. At 10 s, 1.3–2.4k, and 15–24 % more MB/s in three alternating runs. Memory still
/// goes back once a load ends. `MIMALLOC_PURGE_DELAY` in the environment wins.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn keep_freed_memory_longer() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the allocator; no memory is passed.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

use coremq::broker::{config::split_addrs, start, BrokerConfig};
use coremq::config::{parse_properties, termination_signals};
use coremq::logging::{self, LogConfig};

#[derive(Parser)]
#[command(name = "mqbroker", about = "CoreMQ broker")]
struct Cli {
    /// Name server addresses, `;`-separated.
    #[arg(short = 'n', long = "namesrvAddr")]
    namesrv: Option<String>,
    /// Broker properties file.
    #[arg(short = 'c', long = "configFile")]
    config: Option<std::path::PathBuf>,
    /// Extra `key=value` settings, applied after the file (e.g. `-p brokerIP1=127.0.0.1`).
    #[arg(short = 'p', long = "property")]
    props: Vec<String>,
    /// Log directory (default ~/logs/rocketmqlogs).
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
}

fn main() {
    keep_freed_memory_longer();
    let thp = coremq::store::runtime::disable_transparent_huge_pages();
    let stop = termination_signals();
    let cli = Cli::parse();
    let mut lc = LogConfig::new("broker");
    if let Some(d) = &cli.log_dir {
        lc.dir = Some(d.clone());
    }
    let log_path =
        logging::init(&lc).unwrap_or_else(|e| fail(&format!("cannot open the log: {e}")));
    if let Err(e) = thp {
        log::warn!("could not turn transparent huge pages off for the broker: {e}");
    }
    // SAFETY: reads one integer option of the allocator.
    let purge = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
    log::info!("allocator: freed memory returns to the kernel after {purge} ms");
    let mut cfg = match &cli.config {
        Some(p) => BrokerConfig::load(p).unwrap_or_else(|e| fail(&e.to_string())),
        None => BrokerConfig::default(),
    };
    if !cli.props.is_empty() {
        let text = cli.props.join("\n");
        let props =
            parse_properties(&text, "command line").unwrap_or_else(|e| fail(&e.to_string()));
        cfg.apply(&props, "command line")
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    if let Some(n) = &cli.namesrv {
        cfg.namesrv_addrs = split_addrs(n);
    }
    let addr = cfg.broker_addr();
    let name = cfg.broker_name.clone();
    let ns = cfg.namesrv_addrs.join(";");
    let running = start(cfg).unwrap_or_else(|e| fail(&format!("cannot start: {e}")));
    println!(
        "The broker[{name}, {addr}] boot success. serializeType=JSON and name server is {ns}{}",
        log_path
            .map(|p| format!(", log {}", p.display()))
            .unwrap_or_default()
    );
    let _ = stop.recv();
    log::info!("shutting down");
    let res = running.shutdown();
    logging::drain();
    if let Err(e) = res {
        fail(&format!("shutdown: {e}"));
    }
}

fn fail(msg: &str) -> ! {
    // Not `eprintln!`: it panics (exit 101, no message) when stderr cannot be written, e.g.
    // a file on a full disk or past the file-size limit, the very failures reported here.
    let _ = writeln!(std::io::stderr(), "mqbroker: {msg}");
    log::error!("{msg}");
    logging::drain();
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_we_set() {
        // Guards the hand-copied enum value: mimalloc v3's purge delay defaults to 1000 ms,
        // and the setter changes what the getter reads.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and sets integer options of the allocator.
        unsafe {
            assert_eq!(mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            keep_freed_memory_longer();
            assert_eq!(mi_option_get(MI_OPTION_PURGE_DELAY), PURGE_DELAY_MS);
        }
    }
}
