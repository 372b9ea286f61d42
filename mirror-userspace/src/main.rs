use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use mirror::config::Config;

/// Shadow production HTTP traffic from the packet path.
#[derive(Parser)]
#[command(name = "mirror", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the configured interfaces and mirror live traffic until SIGINT/SIGTERM; SIGHUP
    /// reloads the config (an invalid one is refused and the current one stays).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Where Prometheus metrics are served (text format, any path).
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_addr: std::net::SocketAddr,
    },
    /// Replay a pcap/pcapng capture through the same path to the config's mirrors, then summarise.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        pcap: PathBuf,
        /// Print the counts as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file and exit (non-zero with a message if it is invalid).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            for w in &cfg.warnings {
                eprintln!("{}: warning: {w}", config.display());
            }
            println!(
                "{}: ok ({} routes, {} endpoints, ports {:?} on {:?})",
                config.display(),
                cfg.route_count(),
                cfg.endpoints.len(),
                cfg.capture.ports,
                cfg.capture.interfaces
            );
            Ok(())
        }
        Command::Replay { config, pcap, json } => {
            let cfg = Config::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let summary = rt.block_on(mirror::offline::replay(&cfg, &pcap))?;
            if json {
                println!("{summary}");
            } else {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Ok(())
        }
        Command::Run { config, metrics_addr } => {
            // One runtime thread for replay and metrics (plus the capture thread): fewer cross-thread
            // wake-ups, which is most of what mirroring costs.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            rt.block_on(mirror::daemon::run(&config, metrics_addr))
        }
    }
}
