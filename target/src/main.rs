use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use vtgt::admin::{AdminContext, Request};
use vtgt::config::{BackendKind, Config};
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
        /// Prometheus metrics address (/metrics).
        #[arg(long, default_value = vtgt::metrics::DEFAULT_LISTEN)]
        metrics_listen: SocketAddr,
        /// Serve no metrics (to measure what recording them costs).
        #[arg(long)]
        no_metrics: bool,
        /// Admin socket (default: DATA_DIR/vtgt.sock).
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Talk to a running vtgt over its admin socket.
    Admin {
        /// Admin socket (default: vtgt-data/vtgt.sock).
        #[arg(long, default_value = "vtgt-data/vtgt.sock")]
        socket: PathBuf,
        #[command(subcommand)]
        op: AdminOp,
    },
    /// Check a configuration file and exit.
    CheckConfig { config: PathBuf },
    /// Benchmark a target through vtgt's own initiator.
    Bench(BenchArgs),
    /// Talk to a target with our own initiators.
    #[command(subcommand)]
    Initiator(vtgt::initiator_cli::InitiatorCmd),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Target portal, ADDR:PORT.
    #[arg(long, default_value = "127.0.0.1:3260")]
    portal: SocketAddr,
    /// Target name.
    #[arg(long, default_value = vtgt::config::DEFAULT_TARGET)]
    target: String,
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// Protocol: iscsi, or nvme (NVMe/TCP: --target is the subsystem NQN,
    /// --lun the namespace ID, default 1).
    #[arg(long, default_value = "iscsi", value_parser = ["iscsi", "nvme"])]
    protocol: String,
    /// Access pattern.
    #[arg(long, default_value = "randread", value_parser = ["read", "write", "randread", "randwrite", "rw", "randrw"])]
    rw: String,
    /// Read percentage for rw/randrw.
    #[arg(long, default_value_t = 70)]
    mix: u32,
    /// Block size per I/O (e.g. 4k, 128k).
    #[arg(long, default_value = "4k")]
    bs: String,
    /// Outstanding I/Os per connection.
    #[arg(long, default_value_t = 32)]
    qd: u32,
    /// Connections (sessions).
    #[arg(long, default_value_t = 1)]
    connections: u32,
    /// Run time (e.g. 10s); default 10s unless --ios is given.
    #[arg(long)]
    duration: Option<String>,
    /// Stop after this many I/Os.
    #[arg(long)]
    ios: Option<u64>,
    /// Limit the LBA range to this many bytes from LBA 0 (e.g. 1GiB).
    #[arg(long)]
    range: Option<String>,
    /// Write self-checking data and check it on every read.
    #[arg(long)]
    verify: bool,
    /// Header and data digests (CRC32C).
    #[arg(long)]
    digests: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AdminOp {
    /// Targets, LUNs, volumes and fault counters.
    Status,
    /// Connected sessions.
    Sessions,
    /// Re-read the config file and apply it (like SIGHUP).
    Reload,
    /// Write the running configuration back to the config file, atomically.
    Save,
    /// Create a volume (sparse file under the data directory by default).
    AddVolume {
        name: String,
        #[arg(long)]
        size: String,
        #[arg(long, value_parser = ["file", "block", "memory"])]
        backend: Option<String>,
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Remove a volume that no LUN or namespace exports.
    RemoveVolume { name: String },
    /// Grow a volume (hosts see CAPACITY DATA HAS CHANGED).
    Resize { volume: String, size: String },
    /// Export a volume as a LUN (hosts see REPORTED LUNS DATA HAS CHANGED).
    AddLun {
        target: String,
        lun: u64,
        volume: String,
    },
    /// Remove a LUN.
    RemoveLun { target: String, lun: u64 },
    /// Export a volume as an NVMe namespace (connected controllers get the
    /// namespace attribute changed event).
    AddNamespace {
        #[arg(long)]
        subsystem: String,
        #[arg(long)]
        nsid: u32,
        #[arg(long)]
        volume: String,
    },
    /// Remove an NVMe namespace.
    RemoveNamespace {
        #[arg(long)]
        subsystem: String,
        #[arg(long)]
        nsid: u32,
    },
    /// Mark a mirror leg of a volume dead.
    FailLeg { volume: String, leg: usize },
    /// Re-attach a dead mirror leg and resync it in the background.
    AttachLeg { volume: String, leg: usize },
    /// Show a volume's extent map, mirror legs and generation.
    Layout { volume: String },
    /// Follow a volume's resync with a progress bar until it finishes.
    Watch { volume: String },
    /// Move a volume online onto a new file or device.
    Migrate { volume: String, path: PathBuf },
    /// Add an initiator to a target's allow list.
    AllowInitiator { target: String, initiator: String },
    /// Remove an initiator from a target's allow list.
    DisallowInitiator { target: String, initiator: String },
    /// Set CHAP credentials (target-wide, or for one --initiator); without
    /// --user they are removed.
    SetChap {
        target: String,
        #[arg(long)]
        initiator: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        secret: Option<String>,
        #[arg(long)]
        mutual_user: Option<String>,
        #[arg(long)]
        mutual_secret: Option<String>,
    },
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
            let rt = match current_thread_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
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
        Cmd::Admin { socket, op } => admin(socket, op),
        Cmd::Bench(args) => bench(args),
        Cmd::Serve {
            config,
            data_dir,
            iscsi_listen,
            nvme_listen,
            metrics_listen,
            no_metrics,
            admin_socket,
        } => {
            let mut cfg = match &config {
                Some(p) => match Config::load(p) {
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
            let metrics = (!no_metrics).then_some(metrics_listen);
            match rt.block_on(serve(cfg, config, admin_socket, metrics)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vtgt: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(
    cfg: Config,
    config_path: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let socket = admin_socket.unwrap_or_else(|| vtgt::admin::default_socket(&cfg.data_dir));
    if let Some(listen) = metrics_listen {
        let bound = vtgt::metrics::install(listen)?;
        info!(listen = %bound, "metrics up");
    }
    let server = Arc::new(Server::start(cfg).await?);
    if metrics_listen.is_some() {
        vtgt::metrics::spawn_exporter(server.clone());
    }
    let ctx = Arc::new(AdminContext {
        server: server.clone(),
        config_path: config_path.clone(),
    });
    vtgt::admin::serve(ctx.clone(), socket.clone()).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                match vtgt::admin::handle(&ctx, Request::Reload).await {
                    Ok(v) => info!("SIGHUP: configuration reloaded: {v}"),
                    Err(e) => error!("SIGHUP: reload refused, nothing changed: {e:#}"),
                }
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    if let Err(e) = server.shutdown().await {
        error!("shutdown: {e:#}");
        return Err(e);
    }
    info!("stopped cleanly");
    Ok(())
}

fn admin(socket: PathBuf, op: AdminOp) -> ExitCode {
    if let AdminOp::Watch { volume } = op {
        return watch(socket, volume);
    }
    let req = match op {
        AdminOp::FailLeg { volume, leg } => Request::FailLeg { volume, leg },
        AdminOp::AttachLeg { volume, leg } => Request::AttachLeg { volume, leg },
        AdminOp::Layout { volume } => Request::Layout { volume },
        AdminOp::Migrate { volume, path } => Request::Migrate { volume, path },
        AdminOp::Watch { .. } => return ExitCode::FAILURE,
        AdminOp::Status => Request::Status,
        AdminOp::Sessions => Request::Sessions,
        AdminOp::Reload => Request::Reload,
        AdminOp::Save => Request::Save,
        AdminOp::AddVolume {
            name,
            size,
            backend,
            path,
        } => Request::AddVolume {
            name,
            size,
            backend: backend.map(|b| match b.as_str() {
                "block" => BackendKind::Block,
                "memory" => BackendKind::Memory,
                _ => BackendKind::File,
            }),
            path,
        },
        AdminOp::RemoveVolume { name } => Request::RemoveVolume { name },
        AdminOp::Resize { volume, size } => Request::Resize { volume, size },
        AdminOp::AddLun {
            target,
            lun,
            volume,
        } => Request::AddLun {
            target,
            lun,
            volume,
        },
        AdminOp::RemoveLun { target, lun } => Request::RemoveLun { target, lun },
        AdminOp::AddNamespace {
            subsystem,
            nsid,
            volume,
        } => Request::AddNamespace {
            subsystem,
            nsid,
            volume,
        },
        AdminOp::RemoveNamespace { subsystem, nsid } => {
            Request::RemoveNamespace { subsystem, nsid }
        }
        AdminOp::AllowInitiator { target, initiator } => {
            Request::AllowInitiator { target, initiator }
        }
        AdminOp::DisallowInitiator { target, initiator } => {
            Request::DisallowInitiator { target, initiator }
        }
        AdminOp::SetChap {
            target,
            initiator,
            user,
            secret,
            mutual_user,
            mutual_secret,
        } => Request::SetChap {
            target,
            initiator,
            chap: user.map(|user| vtgt::config::ChapConfig {
                user,
                secret: secret.unwrap_or_default(),
                mutual_user,
                mutual_secret,
            }),
        },
    };
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(vtgt::admin::call(&socket, &req)) {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vtgt admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A runtime for a short client command; on failure, says so and gives the
/// exit code.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("vtgt: cannot start runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Polls `layout` and draws the resync's progress until none is running.
fn watch(socket: PathBuf, volume: String) -> ExitCode {
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let req = Request::Layout { volume };
    let mut seen_active = false;
    loop {
        let v = match rt.block_on(vtgt::admin::call(&socket, &req)) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("vtgt admin: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let r = &v["resync"];
        let active = r["active"].as_bool().unwrap_or(false);
        let done = r["done_bytes"].as_u64().unwrap_or(0);
        let total = r["total_bytes"].as_u64().unwrap_or(0);
        let rate = r["rate_bytes_per_second"].as_f64().unwrap_or(0.0);
        let eta = r["eta_seconds"].as_f64();
        let legs: Vec<String> = v["legs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| format!("{}:{}", l["leg"], l["state"].as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        let line = vtgt::admin::progress_line(done, total, rate, eta);
        eprint!(
            "\rgen {} legs [{}] {line}   ",
            v["generation"],
            legs.join(" ")
        );
        seen_active |= active;
        if !active {
            eprintln!();
            if !seen_active {
                eprintln!("no resync running");
            }
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn bench(a: BenchArgs) -> ExitCode {
    let parsed = (|| -> anyhow::Result<vtgt::bench::BenchConfig> {
        let read_pct = match a.rw.as_str() {
            "read" | "randread" => 100,
            "write" | "randwrite" => 0,
            _ => a.mix.min(100),
        };
        let bs = vtgt::bench::parse_block_size(&a.bs)?;
        let duration = match (&a.duration, a.ios) {
            (Some(d), _) => Some(vtgt::bench::parse_duration(d)?),
            (None, Some(_)) => None,
            (None, None) => Some(std::time::Duration::from_secs(10)),
        };
        let range_blocks = a
            .range
            .as_deref()
            .map(vtgt::config::parse_size)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?
            .map(|b| b / 512);
        Ok(vtgt::bench::BenchConfig {
            protocol: if a.protocol == "nvme" {
                vtgt::bench::Protocol::Nvme
            } else {
                vtgt::bench::Protocol::Iscsi
            },
            portal: a.portal,
            target: a.target.clone(),
            lun: a.lun,
            random: a.rw.starts_with("rand"),
            read_pct,
            block_size: bs,
            queue_depth: a.qd,
            connections: a.connections,
            duration,
            ios: a.ios,
            range_blocks,
            verify: a.verify,
            digests: a.digests,
            progress: !a.json,
        })
    })();
    let cfg = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vtgt bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vtgt bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(vtgt::bench::run(cfg)) {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!("{}", r.human());
            }
            if r.errors > 0 || r.verify_failures > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("vtgt bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
