//! Builds the running system from a config (backends, volumes, LUs,
//! targets), binds the portals, and shuts it all down cleanly.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use vtgt_engine::{
    Backend, Exposure, FileBackend, LuControl, MemBackend, MigrationLog, Notice, Volume,
};

use crate::config::{BackendKind, Config};
use crate::iscsi::{self, IscsiShared, PortalInfo};
use crate::scsi::alua::AccessState;
use crate::scsi::lu::{LogicalUnit, LuIdentity};
use crate::scsi::TargetPort;
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
    /// The running configuration and the volumes built from it. Changes go
    /// through [`Server::apply`], one at a time.
    state: tokio::sync::Mutex<State>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    pub nvme: Arc<crate::nvme::NvmeShared>,
    pub nvme_addrs: Vec<SocketAddr>,
}

struct State {
    cfg: Config,
    volumes: HashMap<String, VolumeEntry>,
}

/// What a live configuration change did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApplySummary {
    pub volumes_added: Vec<String>,
    pub volumes_grown: Vec<String>,
    pub volumes_removed: Vec<String>,
    pub targets_added: Vec<String>,
    pub targets_removed: Vec<String>,
    pub luns_added: Vec<String>,
    pub luns_removed: Vec<String>,
    pub subsystems_added: Vec<String>,
    pub subsystems_removed: Vec<String>,
    /// NVMe namespaces as "subsystem NQN/NSID".
    pub namespaces_added: Vec<String>,
    pub namespaces_removed: Vec<String>,
    /// An NSID now over another volume.
    pub namespaces_changed: Vec<String>,
    /// Changes that only take effect after a restart.
    pub needs_restart: Vec<String>,
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
            volumes.insert(v.name.clone(), open_volume(&cfg, v).await?);
        }
        // Target ports: one per portal, in its portal group.
        let ports: Vec<TargetPort> = cfg
            .iscsi
            .portals
            .iter()
            .enumerate()
            .map(|(i, p)| TargetPort {
                relative_id: i as u16 + 1,
                group: p.portal_group,
            })
            .collect();
        let mut targets = Vec::new();
        for t in &cfg.targets {
            let states: Vec<(u16, AccessState)> = t
                .port_groups
                .iter()
                .filter_map(|g| AccessState::parse(&g.state).map(|s| (g.id, s)))
                .collect();
            let mut luns = BTreeMap::new();
            for l in &t.luns {
                let e = volumes
                    .get(&l.volume)
                    .ok_or_else(|| anyhow!("unknown volume {}", l.volume))?;
                let lu = make_lu(l.id, e, &t.name);
                apply_lun_options(&lu, l);
                lu.alua().configure(&ports, &states);
                luns.insert(l.id, lu);
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
            state: tokio::sync::Mutex::new(State { cfg, volumes }),
            tasks: parking_lot::Mutex::new(tasks),
            nvme,
            nvme_addrs,
        })
    }

    /// The running configuration.
    pub async fn config(&self) -> Config {
        self.state.lock().await.cfg.clone()
    }

    pub async fn volume(&self, name: &str) -> Option<VolumeEntry> {
        self.state.lock().await.volumes.get(name).cloned()
    }

    pub async fn volumes(&self) -> Vec<(String, VolumeEntry)> {
        let st = self.state.lock().await;
        let mut v: Vec<_> = st
            .volumes
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Applies a new configuration without a restart: volumes are added or
    /// grown, targets and LUNs added or removed, and hosts told through unit
    /// attentions (CAPACITY DATA HAS CHANGED, REPORTED LUNS DATA HAS
    /// CHANGED); NVMe subsystems and namespaces are added or removed, and
    /// connected controllers get the namespace attribute changed event and
    /// the NSIDs in their Changed Namespace List (a grown volume raises it
    /// too). Portal and NVMe port changes need a restart. Nothing changes if
    /// `new` is invalid or a volume cannot be opened or grown.
    pub async fn apply(&self, new: Config) -> Result<ApplySummary> {
        new.validate()
            .map_err(|e| anyhow!("invalid configuration: {e}"))?;
        let mut st = self.state.lock().await;
        let mut sum = ApplySummary::default();
        if new.iscsi != st.cfg.iscsi {
            sum.needs_restart.push("iscsi portals and settings".into());
        }
        if new.nvme != st.cfg.nvme {
            sum.needs_restart.push("nvme ports".into());
        }
        if new.data_dir != st.cfg.data_dir {
            sum.needs_restart.push("data_dir".into());
        }
        // Prepare everything fallible before changing anything.
        for (name, e) in &st.volumes {
            if !new.volumes.iter().any(|v| &v.name == name) && e.volume.migration_status().active {
                return Err(anyhow!(
                    "volume {name:?} is being migrated; remove it once the migration is done"
                ));
            }
        }
        let mut opened = HashMap::new();
        let mut grow = Vec::new();
        for v in &new.volumes {
            match st.cfg.volumes.iter().find(|o| o.name == v.name) {
                None => {
                    opened.insert(v.name.clone(), open_volume(&new, v).await?);
                }
                Some(old) => {
                    let same_backing = old.backend == v.backend
                        && old.path == v.path
                        && old.block_size == v.block_size;
                    if !same_backing {
                        return Err(anyhow!(
                            "volume {:?}: backend, path and block size cannot change live",
                            v.name
                        ));
                    }
                    if old.journal != v.journal {
                        sum.needs_restart.push(format!("volume {} journal", v.name));
                    }
                    let bytes = v
                        .size
                        .as_deref()
                        .map(crate::config::parse_size)
                        .transpose()
                        .map_err(|e| anyhow!("volume {:?}: {e}", v.name))?;
                    if let (Some(bytes), Some(e)) = (bytes, st.volumes.get(&v.name)) {
                        let blocks = bytes / v.block_size as u64;
                        let cur = e.volume.num_blocks();
                        if blocks < cur {
                            return Err(anyhow!("volume {:?}: cannot shrink a volume", v.name));
                        }
                        if blocks > cur {
                            grow.push((v.name.clone(), e.clone(), blocks));
                        }
                    }
                }
            }
        }
        // NVMe subsystems see the volumes as they will be after this change.
        let nvme_plan = {
            let mut all = st.volumes.clone();
            all.extend(opened.iter().map(|(k, v)| (k.clone(), v.clone())));
            self.nvme.plan(&new.subsystems, &all)?
        };
        for (name, e, blocks) in grow {
            e.volume
                .grow(blocks)
                .await
                .with_context(|| format!("growing volume {name}"))?;
            e.control.raise_all(Notice::CapacityChanged, None).await;
            sum.volumes_grown.push(name);
        }
        for (name, e) in opened {
            st.volumes.insert(name.clone(), e);
            sum.volumes_added.push(name);
        }
        // Targets and LUNs.
        let mut targets: Vec<Arc<Target>> = self.iscsi.targets.load().iter().cloned().collect();
        for t in &new.targets {
            let mut luns = BTreeMap::new();
            for l in &t.luns {
                let e = st
                    .volumes
                    .get(&l.volume)
                    .ok_or_else(|| anyhow!("unknown volume {}", l.volume))?;
                let existing = targets
                    .iter()
                    .find(|x| x.name == t.name)
                    .and_then(|x| x.lun(l.id))
                    .filter(|lu| Arc::ptr_eq(lu.volume(), &e.volume));
                luns.insert(
                    l.id,
                    existing.unwrap_or_else(|| {
                        let lu = make_lu(l.id, e, &t.name);
                        apply_lun_options(&lu, l);
                        lu
                    }),
                );
            }
            match targets.iter().position(|x| x.name == t.name) {
                Some(i) => {
                    let old = targets[i].luns();
                    let added: Vec<u64> = luns
                        .keys()
                        .filter(|k| !old.contains_key(k))
                        .copied()
                        .collect();
                    let removed: Vec<u64> = old
                        .keys()
                        .filter(|k| !luns.contains_key(k))
                        .copied()
                        .collect();
                    let changed = !added.is_empty()
                        || !removed.is_empty()
                        || old
                            .iter()
                            .any(|(k, lu)| luns.get(k).is_some_and(|n| !Arc::ptr_eq(n, lu)));
                    // ACL and CHAP changes apply to later logins; LUNs
                    // change in place, so sessions are not dropped.
                    targets[i].set_auth(t);
                    targets[i].set_luns(luns.clone());
                    if changed {
                        let nexuses: Vec<_> = self
                            .iscsi
                            .sessions
                            .of_target(&t.name)
                            .iter()
                            .map(|s| s.nexus)
                            .collect();
                        // A LUN that is itself new needs no notice.
                        for (_, lu) in luns.iter().filter(|(k, _)| old.contains_key(k)) {
                            for n in &nexuses {
                                lu.control().raise(*n, Notice::ReportedLunsChanged).await;
                            }
                        }
                    }
                    sum.luns_added
                        .extend(added.iter().map(|l| format!("{}/{l}", t.name)));
                    sum.luns_removed
                        .extend(removed.iter().map(|l| format!("{}/{l}", t.name)));
                }
                None => {
                    targets.push(Target::new(t, luns));
                    sum.targets_added.push(t.name.clone());
                }
            }
        }
        let removed: Vec<Arc<Target>> = targets
            .iter()
            .filter(|t| !new.targets.iter().any(|n| n.name == t.name))
            .cloned()
            .collect();
        targets.retain(|t| new.targets.iter().any(|n| n.name == t.name));
        self.iscsi.targets.store(Arc::new(targets));
        for t in removed {
            for s in self.iscsi.sessions.of_target(&t.name) {
                s.kill.cancel();
            }
            sum.targets_removed.push(t.name.clone());
        }
        // Before volumes close: it waits for commands on removed namespaces.
        self.nvme.commit(nvme_plan, &mut sum).await;
        // Volumes no longer in the config are closed once nothing uses them.
        let gone: Vec<String> = st
            .volumes
            .keys()
            .filter(|k| !new.volumes.iter().any(|v| &v.name == *k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(e) = st.volumes.remove(&name) {
                if let Err(err) = e.volume.close().await {
                    tracing::warn!(volume = %name, "closing a removed volume: {err}");
                }
            }
            // A volume later added under this name starts from its config.
            let log = migration_log_path(&st.cfg, &name);
            if let Err(err) = std::fs::remove_file(&log) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(volume = %name, "removing {}: {err}", log.display());
                }
            }
            sum.volumes_removed.push(name);
        }
        let mut kept = new;
        // Keep running values for what needs a restart, so the config
        // written back describes what is really running.
        kept.iscsi = st.cfg.iscsi.clone();
        kept.data_dir = st.cfg.data_dir.clone();
        kept.nvme = st.cfg.nvme.clone();
        st.cfg = kept;
        info!(?sum, "configuration applied");
        Ok(sum)
    }

    /// Stops accepting, ends every session, and flushes every volume.
    pub async fn shutdown(&self) -> Result<()> {
        self.iscsi.shutdown.cancel();
        self.nvme.shutdown.cancel();
        for s in self.iscsi.sessions.all() {
            s.kill.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.done.cancelled()).await;
        }
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        for (name, v) in &self.state.lock().await.volumes {
            v.volume
                .close()
                .await
                .with_context(|| format!("closing volume {name}"))?;
        }
        Ok(())
    }
}

/// Where a plain file volume's data is now: its configured path, or where
/// a completed live migration moved it.
pub fn current_volume_path(
    cfg: &Config,
    v: &crate::config::VolumeConfig,
) -> Result<Option<std::path::PathBuf>> {
    Ok(
        match MigrationLog::load(&migration_log_path(cfg, &v.name))? {
            Some(r) if r.complete => Some(r.to),
            Some(r) => Some(r.from),
            None => cfg.volume_path(v),
        },
    )
}

/// A single-backend volume, following its migration log: after a finished
/// migration it opens where the data went; after one a crash interrupted,
/// the copied part is served from the new backend and the copy resumes.
fn open_plain(cfg: &Config, v: &crate::config::VolumeConfig) -> Result<Arc<Volume>> {
    let log_path = migration_log_path(cfg, &v.name);
    let Some((log, rec)) = MigrationLog::open(&log_path)
        .with_context(|| format!("volume {:?}: {}", v.name, log_path.display()))?
    else {
        return Ok(Volume::simple(&v.name, open_backend(cfg, v)?, v.block_size));
    };
    let file = |p: &std::path::Path| -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(FileBackend::open_existing(p).with_context(
            || format!("volume {:?}: migrated backend {}", v.name, p.display()),
        )?))
    };
    // The log belongs to this volume only while the config still names one
    // end of that migration.
    if let Some(p) = cfg.volume_path(v) {
        if p != rec.from && p != rec.to {
            bail!(
                "volume {:?}: {} records a migration from {} to {}, but the config names {}; \
                 fix the path or remove the log",
                v.name,
                log_path.display(),
                rec.from.display(),
                rec.to.display(),
                p.display()
            );
        }
    }
    if rec.complete {
        info!(volume = %v.name, path = %rec.to.display(), "serving from where a live migration moved it");
        return Ok(Volume::simple(&v.name, file(&rec.to)?, v.block_size));
    }
    let vol = Volume::simple(&v.name, file(&rec.from)?, v.block_size);
    let rest = vol
        .resume_migration(file(&rec.to)?, Arc::new(log), rec.done_blocks)
        .with_context(|| format!("volume {:?}: resuming its migration", v.name))?;
    info!(volume = %v.name, done_blocks = rec.done_blocks, to = %rec.to.display(), "resuming a live migration");
    let name = v.name.clone();
    tokio::spawn(async move {
        match rest.await {
            Ok(_) => info!(volume = %name, "resumed migration done"),
            Err(e) => tracing::warn!(volume = %name, "resumed migration failed: {e}"),
        }
    });
    Ok(vol)
}

async fn open_volume(cfg: &Config, v: &crate::config::VolumeConfig) -> Result<VolumeEntry> {
    let volume = match &v.layout {
        None => open_plain(cfg, v)?,
        Some(l) => open_layout(cfg, v, l)?,
    };
    // Before anything can write: replay what a crash left in the journals
    // (after tag reconciliation, so every mirror leg gets the replay).
    let n = crate::journal_files::open(cfg, v, &volume).await?;
    if n > 0 {
        info!(volume = %v.name, entries = n, "write journal replayed");
    }
    // Atomic writes are journaled next to the data; memory volumes do not
    // survive a crash anyway.
    if v.backend != BackendKind::Memory {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        let jp = cfg.data_dir.join(format!("{}.atomic-journal", v.name));
        volume
            .attach_journal(&jp)
            .await
            .with_context(|| format!("volume {:?}: journal {}", v.name, jp.display()))?;
    }
    // A resync a restart interrupted goes on in the background; the leg
    // takes writes meanwhile and serves reads once it is done.
    if volume
        .mirror_status()
        .legs
        .iter()
        .any(|l| l.1 == vtgt_engine::LegState::Resync)
    {
        let bg = volume.clone();
        tokio::spawn(async move {
            match bg.resume_resyncs().await {
                Ok(bytes) => info!(volume = %bg.name(), bytes, "interrupted resync finished"),
                Err(e) => tracing::warn!(volume = %bg.name(), "resuming the resync failed: {e}"),
            }
        });
    }
    let exposure = Exposure::new(volume.clone());
    let control = match v.backend {
        // Memory volumes forget everything on restart, reservations too.
        BackendKind::Memory => LuControl::new(exposure),
        _ => {
            let path = reservation_path(cfg, &v.name);
            LuControl::with_reservation_file(exposure, &path)
                .await
                .with_context(|| format!("volume {:?}: cannot load reservations", v.name))?
        }
    };
    Ok(VolumeEntry { volume, control })
}

/// Opens every leaf of a layout as a backend (depth-first, so indices match
/// the engine layout) and builds the composed volume. Mirror state lives in
/// `<data_dir>/<volume>.mirror` for non-memory volumes.
fn open_layout(
    cfg: &Config,
    v: &crate::config::VolumeConfig,
    l: &crate::config::LayoutConfig,
) -> Result<Arc<Volume>> {
    fn walk(
        cfg: &Config,
        v: &crate::config::VolumeConfig,
        l: &crate::config::LayoutConfig,
        size: Option<String>,
        backends: &mut Vec<Arc<dyn Backend>>,
    ) -> Result<vtgt_engine::Layout> {
        use vtgt_engine::Layout;
        // A node's size applies to every leaf under it.
        let size = l.size.clone().or(size);
        let kids = |list: &Vec<crate::config::LayoutConfig>,
                    backends: &mut Vec<Arc<dyn Backend>>|
         -> Result<Vec<Layout>> {
            list.iter()
                .map(|c| walk(cfg, v, c, size.clone(), backends))
                .collect()
        };
        if let Some(legs) = &l.stripe {
            let unit = crate::config::parse_size(l.unit.as_deref().unwrap_or("0"))
                .map_err(|e| anyhow!("volume {:?}: stripe unit: {e}", v.name))?;
            return Ok(Layout::Stripe {
                unit_blocks: unit / v.block_size as u64,
                legs: kids(legs, backends)?,
            });
        }
        if let Some(legs) = &l.mirror {
            return Ok(Layout::Mirror {
                legs: kids(legs, backends)?,
            });
        }
        if let Some(parts) = &l.concat {
            return Ok(Layout::Concat {
                parts: kids(parts, backends)?,
            });
        }
        let leaf = crate::config::VolumeConfig {
            path: l.file.clone(),
            size: size.clone(),
            layout: None,
            journal: None,
            ..v.clone()
        };
        backends.push(open_backend(cfg, &leaf)?);
        Ok(Layout::Backend(backends.len() - 1))
    }
    let mut backends = Vec::new();
    let layout = walk(cfg, v, l, v.size.clone(), &mut backends)?;
    let meta = (v.backend != BackendKind::Memory).then(|| {
        let mut p = reservation_path(cfg, &v.name);
        p.set_extension("mirror");
        p
    });
    if meta.is_some() {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    }
    // One tag table per mirror leg, beside the mirror state.
    let mut stores = std::collections::BTreeMap::new();
    if let (Some(m), true) = (&meta, l.tags.unwrap_or(true)) {
        for leg in 0..layout.mirror_legs() {
            let p = m.with_extension(format!("leg{leg}.tags"));
            let b = FileBackend::open_or_create(&p, vtgt_engine::tags::store_bytes())
                .with_context(|| format!("volume {:?}: tag table {}", v.name, p.display()))?;
            stores.insert(leg, Arc::new(b) as Arc<dyn Backend>);
        }
    }
    let vol = Volume::with_layout_tagged(
        &v.name,
        backends,
        &layout,
        v.block_size,
        meta.as_deref(),
        stores,
    )
    .with_context(|| format!("volume {:?}: layout", v.name))?;
    let rep = vol.reconcile_report();
    if rep.unmatched > 0 {
        info!(volume = %v.name, ranges = rep.unmatched, bytes = rep.copied_bytes, "mirror reconciled after a crash");
    }
    Ok(vol)
}

/// Where a volume's persistent reservations (APTPL) are kept: beside the
/// volumes in the data directory, named after the volume.
pub fn reservation_path(cfg: &Config, volume: &str) -> std::path::PathBuf {
    cfg.data_dir.join(format!("{}.pr", file_stem(volume)))
}

/// Where a plain volume's live-migration progress is logged.
pub fn migration_log_path(cfg: &Config, volume: &str) -> std::path::PathBuf {
    cfg.data_dir
        .join(format!("{}.migration", file_stem(volume)))
}

/// A volume name made safe for a file name in the data directory.
fn file_stem(volume: &str) -> String {
    volume
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Applies a LUN's configured options to its new LU: write protection,
/// removable medium, sanitize bandwidth cap.
fn apply_lun_options(lu: &LogicalUnit, l: &crate::config::LunConfig) {
    if l.write_protect {
        start_write_protected(lu);
    }
    lu.set_removable(l.removable);
    lu.set_sanitize_rate(l.sanitize_rate_mib << 20);
}

/// Sets software write protect (SWP) on a new LU, as `write_protect` in its
/// LUN configuration asks.
fn start_write_protected(lu: &LogicalUnit) {
    let mut m = lu.mode();
    m.swp = true;
    lu.set_mode(m);
}

pub fn make_lu(lun: u64, e: &VolumeEntry, target: &str) -> Arc<LogicalUnit> {
    let id = e.volume.stable_id();
    crate::scsi::xcopy::register(id, &e.volume);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{self, ScsiCommand, ScsiResult};
    use bytes::Bytes;

    async fn exec(lu: &LogicalUnit, cdb: &[u8], data: Vec<u8>) -> ScsiResult {
        scsi::execute(
            lu,
            ScsiCommand {
                cdb,
                edtl: data.len() as u32,
                read: data.is_empty(),
                write: !data.is_empty(),
                data_out: Bytes::from(data),
                nexus: 1,
                luns: &[0],
                port: TargetPort::default(),
                initiator: "",
            },
        )
        .await
    }

    #[tokio::test]
    async fn write_protect_lun_config_starts_protected() {
        let volume = Volume::simple("wp", Arc::new(MemBackend::new(64 * 512).unwrap()), 512);
        let e = VolumeEntry {
            control: LuControl::new(Exposure::new(volume.clone())),
            volume,
        };
        let lu = make_lu(0, &e, "iqn.2026-11.org.example:wp");
        start_write_protected(&lu);
        assert!(lu.write_protected());
        // Clear the power-on unit attention first.
        exec(&lu, &[0x00, 0, 0, 0, 0, 0], vec![]).await;
        // MODE SENSE (6): WP in the device-specific parameter.
        let r = exec(&lu, &[0x1A, 0, 0x3F, 0, 255, 0], vec![]).await;
        assert_eq!(r.status, 0);
        assert_eq!(r.data_in[2] & 0x80, 0x80);
        // WRITE (10) fails with DATA PROTECT / WRITE PROTECTED.
        let r = exec(&lu, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], vec![0; 512]).await;
        assert_eq!(r.status, 2);
        let sense = r.sense.unwrap();
        assert_eq!(sense[2] & 0x0F, 0x07);
        assert_eq!(sense[12], 0x27);
        // A fresh LU without the option is writable.
        let lu2 = make_lu(1, &e, "iqn.2026-11.org.example:wp");
        assert!(!lu2.write_protected());
    }
}
