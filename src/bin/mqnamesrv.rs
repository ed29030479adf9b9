//! `mqnamesrv`: the name server. `mqnamesrv [-c namesrv.properties] [--listen-port N]`.

use clap::Parser;
use coremq::config::{read_properties, termination_signals, value};
use coremq::logging::{self, LogConfig};
use coremq::namesrv::{serve, NamesrvConfig};
use std::io::Write;

#[derive(Parser)]
#[command(name = "mqnamesrv", about = "CoreMQ name server")]
struct Cli {
    /// Properties file (listenPort=...).
    #[arg(short = 'c', long = "configFile")]
    config: Option<std::path::PathBuf>,
    /// Listen port (overrides the file; default 9876).
    #[arg(long)]
    listen_port: Option<u16>,
    /// Log directory (default ~/logs/rocketmqlogs).
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
}

fn main() {
    let stop = termination_signals();
    let cli = Cli::parse();
    let mut cfg = NamesrvConfig::default();
    if let Some(path) = &cli.config {
        let file = path.display().to_string();
        let props = read_properties(path).unwrap_or_else(|e| fail(&e.to_string()));
        for p in &props {
            match p.key.as_str() {
                "listenPort" => {
                    cfg.listen_port = value(p, &file).unwrap_or_else(|e| fail(&e.to_string()))
                }
                "scanNotActiveBrokerInterval" => {
                    cfg.scan_interval_ms = value(p, &file).unwrap_or_else(|e| fail(&e.to_string()))
                }
                other => eprintln!("{file}:{}: warning: unknown key {other} ignored", p.line),
            }
        }
    }
    if let Some(p) = cli.listen_port {
        cfg.listen_port = p;
    }
    let mut lc = LogConfig::new("namesrv");
    if let Some(d) = cli.log_dir {
        lc.dir = Some(d);
    }
    let log_path =
        logging::init(&lc).unwrap_or_else(|e| fail(&format!("cannot open the log: {e}")));
    if let Some(p) = log_path {
        println!(
            "The Name Server boot success. serializeType=JSON, listening on {}, log {}",
            cfg.listen_port,
            p.display()
        );
    }
    // Before the executor starts: this check may wait, and reads /proc.
    if let Err(e) = coremq::protocol::server::ensure_port_free(std::net::SocketAddr::new(
        cfg.bind,
        cfg.listen_port,
    )) {
        fail(&e.to_string());
    }
    let res = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("namesrv")
        .io_memory(1 << 20)
        .spawn(move || async move {
            serve(cfg, async move {
                let _ = stop.recv_async().await;
            })
            .await
        })
        .and_then(|h| h.join());
    logging::drain();
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => fail(&format!("name server failed: {e}")),
        Err(e) => fail(&format!("name server failed: {e}")),
    }
}

fn fail(msg: &str) -> ! {
    // Not `eprintln!`: it panics (exit 101, no message) when stderr cannot be written, e.g.
    // a file on a full disk or past the file-size limit, the very failures reported here.
    let _ = writeln!(std::io::stderr(), "mqnamesrv: {msg}");
    log::error!("{msg}");
    logging::drain();
    std::process::exit(1);
}
