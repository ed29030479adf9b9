//! `mqbroker`: the broker. `mqbroker [-n "host:port;host:port"] [-c broker.properties]`,
//! with `NAMESRV_ADDR` honoured as upstream does. SIGTERM (`mqshutdown broker`) stops it
//! cleanly: unregister, flush, offsets saved, `abort` removed.

use clap::Parser;
use std::io::Write;

// The send path allocates per request (frames, headers, records in flight); glibc's malloc
// showed as a quarter of the broker's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
