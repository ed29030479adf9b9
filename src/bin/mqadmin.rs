//! `mqadmin`: RocketMQ's admin commands (a first few, with upstream's names and flags).
//!
//! ```sh
//! mqadmin updateBrokerConfig -b 127.0.0.1:10911 -k fileReservedTime -v 24
//! mqadmin updateBrokerConfig -n localhost:9876 -c DefaultCluster -k deleteWhen -v "04;16"
//! mqadmin getBrokerConfig -b 127.0.0.1:10911
//! ```

use clap::{Args, Parser, Subcommand};
use coremq::admin::{format_broker_config, Admin, Target};

#[derive(Parser)]
#[command(
    name = "mqadmin",
    about = "CoreMQ admin commands (RocketMQ's mqadmin names)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Where {
    /// Name servers, `a:9876;b:9876` (default NAMESRV_ADDR).
    #[arg(short = 'n', long = "namesrvAddr")]
    namesrv: Option<String>,
    /// One broker, `host:port`.
    #[arg(short = 'b', long = "brokerAddr")]
    broker: Option<String>,
    /// Every master of this cluster (asks the name server).
    #[arg(short = 'c', long = "clusterName")]
    cluster: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Change a broker setting while it runs (deleteWhen, fileReservedTime,
    /// diskMaxUsedSpaceRatio); lasts until the broker restarts.
    #[command(name = "updateBrokerConfig")]
    UpdateBrokerConfig {
        #[command(flatten)]
        at: Where,
        #[arg(short = 'k', long = "key")]
        key: String,
        #[arg(short = 'v', long = "value")]
        value: String,
    },
    /// Print a broker's configuration in force.
    #[command(name = "getBrokerConfig")]
    GetBrokerConfig {
        #[command(flatten)]
        at: Where,
    },
}

fn target(w: &Where) -> Target<'_> {
    match (&w.broker, &w.cluster) {
        (Some(b), _) => Target::Broker(b),
        (None, Some(c)) => Target::Cluster(c),
        (None, None) => {
            eprintln!("give -b brokerAddr or -c clusterName");
            std::process::exit(2);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::UpdateBrokerConfig { at, key, value } => Admin::new(at.namesrv.as_deref())
            .update_broker_config(&target(at), key, value)
            .map(|bs| {
                bs.iter()
                    .map(|b| format!("update broker config success, {b}\n"))
                    .collect::<String>()
            }),
        Cmd::GetBrokerConfig { at } => Admin::new(at.namesrv.as_deref())
            .get_broker_config(&target(at))
            .map(|c| format_broker_config(&c)),
    };
    match result {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("mqadmin: {e}");
            std::process::exit(1);
        }
    }
}
