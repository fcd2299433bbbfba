use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use koine::bench::BenchArgs;
use koine::config::{Config, LogFormat};

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
    Bench(BenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.serve;
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
    if let Some(Command::Bench(args)) = cli.command {
        return koine::bench::run(args).await;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen_address).await?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        tracing::info!("shutting down");
    };
    koine::run(config, listener, shutdown).await
}
