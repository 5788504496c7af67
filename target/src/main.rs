use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use vtgt::config::Config;
use vtgt::server::{apply_overrides, Overrides, Server};

#[derive(Parser)]
#[command(
    name = "vtgt",
    version,
    about = "vtgt block storage target (iSCSI, NVMe/TCP)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the target. Without --config it serves the embedded default: a
    /// 1 GiB sparse-file volume as LUN 0 of iqn.2026-11.org.vtgt:default.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory for relative backend paths.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// iSCSI portal address (replaces the configured portals).
        #[arg(long)]
        iscsi_listen: Option<SocketAddr>,
        /// NVMe/TCP port address (replaces the configured ports).
        #[arg(long)]
        nvme_listen: Option<SocketAddr>,
        /// Prometheus metrics address (accepted; metrics are not served yet).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Check a configuration file and exit.
    CheckConfig { config: PathBuf },
    /// Talk to a target with our own initiators.
    #[command(subcommand)]
    Initiator(vtgt::initiator_cli::InitiatorCmd),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Initiator(c) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("vtgt: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(vtgt::initiator_cli::run(c)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vtgt: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vtgt: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Serve {
            config,
            data_dir,
            iscsi_listen,
            nvme_listen,
            metrics_listen: _,
        } => {
            let mut cfg = match config {
                Some(p) => match Config::load(&p) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("vtgt: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::embedded_default(),
            };
            apply_overrides(
                &mut cfg,
                &Overrides {
                    data_dir,
                    iscsi_listen,
                    nvme_listen,
                },
            );
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("vtgt: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vtgt: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let server = Server::start(cfg).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    if let Err(e) = server.shutdown().await {
        error!("shutdown: {e:#}");
        return Err(e);
    }
    info!("stopped cleanly");
    Ok(())
}
