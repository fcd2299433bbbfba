use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use koine::bench::BenchArgs;
use koine::config::{Config, LogFormat};
use koine::import::ImportArgs;

#[derive(Parser)]
#[command(
    name = "koine",
    version,
    about = "An etcd v3 server on SQLite, PostgreSQL or MySQL",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Load an etcd endpoint (Koine or etcd) and report throughput and latency.
    Bench(Box<BenchArgs>),
    /// Fill an empty Koine database from an etcd snapshot, a live etcd, a
    /// kine database or another Koine database, keeping the revisions.
    Import(Box<ImportArgs>),
}

fn main() -> anyhow::Result<()> {
    koine::limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match &cli.command {
        Some(Command::Import(args)) => args.target.clone(),
        _ => cli.serve,
    };
    let filter = EnvFilter::try_new(&config.log_level)?;
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    match cli.command {
        Some(Command::Bench(args)) => return koine::bench::run(*args).await,
        Some(Command::Import(args)) => return koine::import::run(*args).await,
        None => {}
    }
    let listener = tokio::net::TcpListener::bind(&config.listen_address).await?;
    let shutdown = async {
        koine::shutdown_signal().await;
        tracing::info!("shutting down");
    };
    koine::run(config, listener, shutdown).await
}
