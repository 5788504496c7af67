//! `vtgt initiator ...`: a thin command line over our initiator libraries,
//! for poking at a target by hand (NVMe/TCP discovery, identify, read and
//! write; iSCSI SendTargets).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Subcommand;
use vtgt_initiator::nvme::{discover, Controller, HostConfig};
use vtgt_initiator::{LoginConfig, Session};
use vtgt_protocol::nvme::tcp::Digests;

const DEFAULT_HOSTNQN: &str =
    "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-7674677400ff";
/// Largest transfer the CLI moves in one command.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Subcommand, Debug)]
pub enum InitiatorCmd {
    /// NVMe/TCP: list the subsystems a discovery controller reports.
    NvmeDiscover {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = DEFAULT_HOSTNQN)]
        hostnqn: String,
    },
    /// NVMe/TCP: connect, enable, and print the controller and namespaces.
    NvmeIdentify {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        nqn: String,
        #[arg(long, default_value = DEFAULT_HOSTNQN)]
        hostnqn: String,
        /// Header and data digests.
        #[arg(long)]
        digests: bool,
    },
    /// NVMe/TCP: read blocks to a file (or hex to stdout).
    NvmeRead {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        nqn: String,
        #[arg(long, default_value_t = 1)]
        nsid: u32,
        #[arg(long, default_value_t = 0)]
        lba: u64,
        #[arg(long, default_value_t = 1)]
        blocks: u32,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_HOSTNQN)]
        hostnqn: String,
    },
    /// NVMe/TCP: write a file's bytes (a whole number of blocks) at an LBA.
    NvmeWrite {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        nqn: String,
        #[arg(long, default_value_t = 1)]
        nsid: u32,
        #[arg(long, default_value_t = 0)]
        lba: u64,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long, default_value = DEFAULT_HOSTNQN)]
        hostnqn: String,
    },
    /// iSCSI: SendTargets through a discovery session.
    IscsiDiscover {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "iqn.2026-11.org.vtgt.host:cli")]
        initiator: String,
    },
}

fn host(nqn: &str, digests: bool) -> HostConfig {
    let mut h = HostConfig::new(nqn);
    h.digests = Digests {
        header: digests,
        data: digests,
    };
    h
}

async fn nvme_ns(
    addr: SocketAddr,
    nqn: &str,
    hostnqn: &str,
    nsid: u32,
) -> Result<(Controller, u32)> {
    let c = Controller::connect(addr, &host(hostnqn, false), nqn).await?;
    let ns = c.identify_ns(nsid).await?;
    if ns.nsze == 0 {
        bail!("namespace {nsid} is not active");
    }
    let bs = ns.block_size().ok_or_else(|| anyhow!("bad LBA format"))?;
    Ok((c, bs))
}

pub async fn run(cmd: InitiatorCmd) -> Result<()> {
    match cmd {
        InitiatorCmd::NvmeDiscover { addr, hostnqn } => {
            for e in discover(addr, &host(&hostnqn, false)).await? {
                println!(
                    "{} traddr={} trsvcid={} portid={}",
                    e.subnqn, e.traddr, e.trsvcid, e.portid
                );
            }
        }
        InitiatorCmd::NvmeIdentify {
            addr,
            nqn,
            hostnqn,
            digests,
        } => {
            let c = Controller::connect(addr, &host(&hostnqn, digests), &nqn).await?;
            let id = &c.identify;
            println!(
                "cntlid={} model={:?} serial={:?} firmware={:?} subnqn={} mdts={} ioccsz={} maxcmd={}",
                id.cntlid, id.model, id.serial, id.firmware, id.subnqn, id.mdts, id.ioccsz, id.maxcmd
            );
            for nsid in c.active_namespaces().await? {
                let ns = c.identify_ns(nsid).await?;
                println!(
                    "nsid={nsid} blocks={} block_size={:?} nguid={}",
                    ns.nsze,
                    ns.block_size(),
                    ns.nguid
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                );
            }
            c.close().await;
        }
        InitiatorCmd::NvmeRead {
            addr,
            nqn,
            nsid,
            lba,
            blocks,
            out,
            hostnqn,
        } => {
            let (c, bs) = nvme_ns(addr, &nqn, &hostnqn, nsid).await?;
            if blocks as u64 * bs as u64 > MAX_BYTES {
                bail!("at most {MAX_BYTES} bytes per command");
            }
            let q = c.connect_io_queue(1, 32).await?;
            let d = q.read(nsid, lba, blocks, bs).await?;
            match out {
                Some(p) => std::fs::write(&p, &d).with_context(|| p.display().to_string())?,
                None => {
                    for (i, line) in d.chunks(16).enumerate() {
                        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
                        println!("{:08x}  {}", i * 16, hex.join(" "));
                    }
                }
            }
            q.close().await;
            c.close().await;
        }
        InitiatorCmd::NvmeWrite {
            addr,
            nqn,
            nsid,
            lba,
            input,
            hostnqn,
        } => {
            let data = std::fs::read(&input).with_context(|| input.display().to_string())?;
            let (c, bs) = nvme_ns(addr, &nqn, &hostnqn, nsid).await?;
            if data.is_empty() || data.len() % bs as usize != 0 || data.len() as u64 > MAX_BYTES {
                bail!("input must be 1 to {MAX_BYTES} bytes, a multiple of {bs}");
            }
            let q = c.connect_io_queue(1, 32).await?;
            q.write(nsid, lba, Bytes::from(data), bs, true).await?;
            q.close().await;
            c.close().await;
        }
        InitiatorCmd::IscsiDiscover { addr, initiator } => {
            let s = Session::login(addr, LoginConfig::new(&initiator, None)).await?;
            for (name, addrs) in s.send_targets().await? {
                println!("{name} {}", addrs.join(" "));
            }
            let _ = s.logout().await;
        }
    }
    Ok(())
}
