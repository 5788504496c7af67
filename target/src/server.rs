//! Builds the running system from a config (backends, volumes, LUs,
//! targets), binds the portals, and shuts it all down cleanly.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use vtgt_engine::{Backend, Exposure, FileBackend, LuControl, MemBackend, Volume};

use crate::config::{BackendKind, Config};
use crate::iscsi::{self, IscsiShared, PortalInfo};
use crate::scsi::lu::{LogicalUnit, LuIdentity};
use crate::target::{NexusRegistry, Target};

/// Command-line overrides of the config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<std::path::PathBuf>,
    pub iscsi_listen: Option<SocketAddr>,
    /// Replaces the NVMe/TCP ports with this one.
    pub nvme_listen: Option<SocketAddr>,
}

/// A volume with its control-path state, shared by every LU exporting it.
#[derive(Debug, Clone)]
pub struct VolumeEntry {
    pub volume: Arc<Volume>,
    pub control: Arc<LuControl>,
}

pub struct Server {
    pub iscsi: Arc<IscsiShared>,
    pub iscsi_addrs: Vec<SocketAddr>,
    pub volumes: HashMap<String, VolumeEntry>,
    pub nvme: Arc<crate::nvme::NvmeShared>,
    pub nvme_addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

pub fn apply_overrides(cfg: &mut Config, o: &Overrides) {
    if let Some(d) = &o.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(a) = o.iscsi_listen {
        cfg.iscsi.portals.truncate(1);
        if let Some(p) = cfg.iscsi.portals.first_mut() {
            p.listen = a;
        }
    }
    if let Some(a) = o.nvme_listen {
        cfg.nvme.listen = vec![crate::config::NvmePortalConfig::Addr(a)];
    }
}

fn open_backend(cfg: &Config, v: &crate::config::VolumeConfig) -> Result<Arc<dyn Backend>> {
    let size = v
        .size
        .as_deref()
        .map(crate::config::parse_size)
        .transpose()
        .map_err(|e| anyhow!("volume {:?}: {e}", v.name))?;
    Ok(match v.backend {
        BackendKind::Memory => Arc::new(
            MemBackend::new(size.unwrap_or(0))
                .with_context(|| format!("volume {:?}: memory backend", v.name))?,
        ),
        BackendKind::File => {
            let path = cfg.volume_path(v).ok_or_else(|| anyhow!("no path"))?;
            Arc::new(
                FileBackend::open_or_create(&path, size.unwrap_or(0))
                    .with_context(|| format!("volume {:?}: cannot open backend", v.name))?,
            )
        }
        BackendKind::Block => {
            let path = cfg.volume_path(v).ok_or_else(|| anyhow!("no path"))?;
            Arc::new(
                FileBackend::open_block_device(&path)
                    .with_context(|| format!("volume {:?}: cannot open block device", v.name))?,
            )
        }
    })
}

impl Server {
    pub async fn start(cfg: Config) -> Result<Server> {
        let mut volumes = HashMap::new();
        for v in &cfg.volumes {
            let backend = open_backend(&cfg, v)?;
            let volume = Volume::simple(&v.name, backend, v.block_size);
            let control = LuControl::new(Exposure::new(volume.clone()));
            volumes.insert(v.name.clone(), VolumeEntry { volume, control });
        }
        let mut targets = Vec::new();
        for t in &cfg.targets {
            let mut luns = BTreeMap::new();
            for l in &t.luns {
                let e = volumes
                    .get(&l.volume)
                    .ok_or_else(|| anyhow!("unknown volume {}", l.volume))?;
                luns.insert(l.id, make_lu(l.id, e, &t.name));
            }
            targets.push(Target::new(t, luns));
        }
        let shutdown = CancellationToken::new();
        let mut listeners = Vec::new();
        let mut portals = Vec::new();
        for p in &cfg.iscsi.portals {
            let l = TcpListener::bind(p.listen)
                .await
                .with_context(|| format!("cannot listen on {} (iSCSI portal)", p.listen))?;
            let addr = l.local_addr()?;
            portals.push(PortalInfo {
                listen: addr,
                advertise: p.advertise.clone(),
                tpgt: p.portal_group,
                relative_id: portals.len() as u16 + 1,
            });
            listeners.push(l);
        }
        let shared = Arc::new(IscsiShared {
            targets: ArcSwap::from_pointee(targets),
            portals: portals.clone(),
            nexus: NexusRegistry::default(),
            sessions: Default::default(),
            nop_interval: Duration::from_secs(cfg.iscsi.nop_interval_secs),
            discovery_chap: cfg.iscsi.discovery_chap.clone(),
            shutdown,
        });
        let mut tasks = Vec::new();
        for (l, p) in listeners.into_iter().zip(portals.iter()) {
            info!(listen = %p.listen, "iSCSI portal up");
            tasks.push(tokio::spawn(iscsi::portal::serve(
                l,
                p.clone(),
                shared.clone(),
            )));
        }
        let (nvme, nvme_addrs) = crate::nvme::port::start(&cfg, &volumes, &mut tasks).await?;
        Ok(Server {
            iscsi_addrs: portals.iter().map(|p| p.listen).collect(),
            iscsi: shared,
            volumes,
            nvme,
            nvme_addrs,
            tasks,
        })
    }

    /// Stops accepting, ends every session, and flushes every volume.
    pub async fn shutdown(self) -> Result<()> {
        self.iscsi.shutdown.cancel();
        self.nvme.shutdown.cancel();
        for s in self.iscsi.sessions.all() {
            s.kill.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.done.cancelled()).await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        for (name, v) in &self.volumes {
            v.volume
                .flush()
                .await
                .with_context(|| format!("flushing volume {name}"))?;
        }
        Ok(())
    }
}

pub fn make_lu(lun: u64, e: &VolumeEntry, target: &str) -> Arc<LogicalUnit> {
    let id = e.volume.stable_id();
    LogicalUnit::new(
        lun,
        e.control.clone(),
        LuIdentity {
            vendor: "VTGT".into(),
            product: "vtgt volume".into(),
            revision: "0001".into(),
            serial: format!("{id:016x}"),
            naa_id: id,
            target_name: target.to_string(),
            relative_port: 1,
            port_group: 1,
        },
    )
}
