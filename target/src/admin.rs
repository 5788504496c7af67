//! The admin interface: JSON requests, one per line, over a Unix socket that
//! only the owner may use. `vtgt admin` is its client.
//!
//! Every change is made by editing a copy of the running configuration and
//! applying it live ([`Server::apply`]), so what runs and what `save` writes
//! back never disagree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::config::{BackendKind, Config, LunConfig, NamespaceConfig, VolumeConfig};
use crate::nvme::config::MAX_NSID;
use crate::server::Server;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Sessions,
    Reload,
    Save,
    AddVolume {
        name: String,
        size: String,
        #[serde(default)]
        backend: Option<BackendKind>,
        #[serde(default)]
        path: Option<PathBuf>,
    },
    RemoveVolume {
        name: String,
    },
    Resize {
        volume: String,
        size: String,
    },
    AddLun {
        target: String,
        lun: u64,
        volume: String,
    },
    RemoveLun {
        target: String,
        lun: u64,
    },
    AddNamespace {
        subsystem: String,
        nsid: u32,
        volume: String,
    },
    RemoveNamespace {
        subsystem: String,
        nsid: u32,
    },
    AllowInitiator {
        target: String,
        initiator: String,
    },
    DisallowInitiator {
        target: String,
        initiator: String,
    },
    /// Sets (or with no user, removes) CHAP credentials: for one initiator
    /// when `initiator` is given, else for the whole target.
    SetChap {
        target: String,
        #[serde(default)]
        initiator: Option<String>,
        #[serde(default)]
        chap: Option<crate::config::ChapConfig>,
    },
    /// Marks a mirror leg dead, as if its writes had failed.
    FailLeg {
        volume: String,
        leg: usize,
    },
    /// Re-attaches a dead leg; the resync runs in the background.
    AttachLeg {
        volume: String,
        leg: usize,
    },
    /// The volume's extent map, leg states, generation and resync progress.
    Layout {
        volume: String,
    },
    /// Moves a volume's data, online, onto a new file or block device
    /// (relative paths are under the data directory). Runs in the
    /// background; `layout` shows progress. The running volume uses the new
    /// backend from then on; the config still names the old one.
    Migrate {
        volume: String,
        path: PathBuf,
    },
}

/// Where the config came from, for `reload` and `save`.
pub struct AdminContext {
    pub server: Arc<Server>,
    pub config_path: Option<PathBuf>,
}

/// Default socket path under the data directory.
pub fn default_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("vtgt.sock")
}

pub async fn serve(ctx: Arc<AdminContext>, path: PathBuf) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    // A stale socket from a killed vtgt would make bind fail.
    if UnixStream::connect(&path).await.is_ok() {
        bail!("admin socket {} is in use by another vtgt", path.display());
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("admin socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "admin socket up");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = client(ctx, stream).await {
                    warn!("admin connection: {e:#}");
                }
            });
        }
    });
    Ok(())
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

async fn client(ctx: Arc<AdminContext>, stream: UnixStream) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd.take(MAX_REQUEST as u64 * 64)).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = if line.len() > MAX_REQUEST {
            json!({"ok": false, "error": "request too long"})
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(req) => match handle(&ctx, req).await {
                    Ok(v) => json!({"ok": true, "result": v}),
                    Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
                },
                Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            }
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        wr.write_all(&out).await?;
    }
    Ok(())
}

pub async fn handle(ctx: &AdminContext, req: Request) -> Result<Value> {
    let server = &ctx.server;
    let mut cfg = server.config().await;
    match req {
        Request::Status => return status(server).await,
        Request::FailLeg { volume, leg } => {
            let v = engine_volume(server, &volume).await?;
            v.fail_legs(&[leg], None).await?;
            return Ok(mirror_json(&v));
        }
        Request::AttachLeg { volume, leg } => {
            let v = engine_volume(server, &volume).await?;
            let st = v.mirror_status();
            match st.legs.iter().find(|l| l.0 == leg) {
                Some((_, vtgt_engine::LegState::Dead)) => {}
                Some(_) => bail!("leg {leg} of {volume} is not dead"),
                None => bail!("volume {volume} has no mirror leg {leg}"),
            }
            // A resync can take long: run it in the background; `layout`
            // (or `vtgt admin watch`) reports progress.
            let bg = v.clone();
            tokio::spawn(async move {
                if let Err(e) = bg.attach_leg(leg).await {
                    warn!(volume = %bg.name(), leg, "resync failed: {e}");
                }
            });
            return Ok(json!({"volume": volume, "leg": leg, "resync": "started"}));
        }
        Request::Layout { volume } => {
            let v = engine_volume(server, &volume).await?;
            return Ok(mirror_json(&v));
        }
        Request::Migrate { volume, path } => {
            let v = engine_volume(server, &volume).await?;
            let path = if path.is_absolute() {
                path
            } else {
                cfg.data_dir.join(path)
            };
            let bytes = v.num_blocks() * v.block_size() as u64;
            let vc = cfg
                .volumes
                .iter()
                .find(|c| c.name == volume)
                .ok_or_else(|| anyhow!("volume {volume:?} is not configured"))?;
            if vc.layout.is_some() {
                bail!("volume {volume:?}: only single-backend volumes can be migrated");
            }
            let lp = crate::server::migration_log_path(&cfg, &volume);
            if let Some(r) = vtgt_engine::MigrationLog::load(&lp)? {
                if !r.complete && !v.migration_status().active {
                    bail!(
                        "volume {volume:?}: an interrupted migration to {} is pending; it resumes when vtgt restarts",
                        r.to.display()
                    );
                }
            }
            let is_device = vtgt_engine::FileBackend::is_block_device(&path);
            if path.exists() && !is_device {
                bail!(
                    "migration target {} exists; name a new file",
                    path.display()
                );
            }
            let from = crate::server::current_volume_path(&cfg, vc)?;
            let to = if is_device {
                vtgt_engine::FileBackend::open_block_device(&path)
            } else {
                vtgt_engine::FileBackend::open_or_create(&path, bytes)
            }
            .with_context(|| format!("migration target {}", path.display()))?;
            // File and block volumes log their progress so that a crash
            // neither loses writes already on the new backend nor restarts
            // the copy; memory volumes do not survive a restart anyway.
            let logged = vc.backend != BackendKind::Memory;
            let total = v.num_blocks();
            let target = path.clone();
            let run = v
                .start_migration(Arc::new(to), move || match (logged, from) {
                    (true, Some(from)) => {
                        vtgt_engine::MigrationLog::create(&lp, &from, &target, total).map(Some)
                    }
                    _ => Ok(None),
                })
                .await;
            let run = match run {
                Ok(r) => r,
                Err(e) => {
                    if !is_device {
                        let _ = std::fs::remove_file(&path);
                    }
                    bail!("volume {volume:?}: {e}");
                }
            };
            let name = volume.clone();
            tokio::spawn(async move {
                if let Err(e) = run.await {
                    warn!(volume = %name, "migration failed: {e}");
                }
            });
            return Ok(json!({"volume": volume, "to": path, "migration": "started"}));
        }
        Request::Sessions => {
            return Ok(json!({
                "iscsi": sessions(server),
                "nvme": controllers(server),
            }))
        }
        Request::Save => {
            let path = ctx.config_path.as_ref().ok_or_else(|| {
                anyhow!("vtgt runs on its embedded default; no config file to save to")
            })?;
            save_config(&cfg, path)?;
            return Ok(json!({"saved": path}));
        }
        Request::Reload => {
            let path = ctx
                .config_path
                .as_ref()
                .ok_or_else(|| anyhow!("vtgt runs on its embedded default; nothing to reload"))?;
            cfg = Config::load(path)?;
        }
        Request::AddVolume {
            name,
            size,
            backend,
            path,
        } => {
            if cfg.volumes.iter().any(|v| v.name == name) {
                bail!("volume {name:?} exists");
            }
            let backend = backend.unwrap_or(BackendKind::File);
            let path = match (backend, path) {
                (BackendKind::Memory, p) => p,
                (_, Some(p)) => Some(p),
                (_, None) => Some(PathBuf::from(format!("{name}.img"))),
            };
            cfg.volumes.push(VolumeConfig {
                name,
                backend,
                path,
                size: Some(size),
                block_size: 512,
                layout: None,
                journal: None,
            });
        }
        Request::RemoveVolume { name } => {
            if cfg
                .targets
                .iter()
                .any(|t| t.luns.iter().any(|l| l.volume == name))
            {
                bail!("volume {name:?} is exported; remove its LUNs first");
            }
            if cfg
                .subsystems
                .iter()
                .any(|s| s.namespaces.iter().any(|n| n.volume == name))
            {
                bail!("volume {name:?} is exported; remove its namespaces first");
            }
            let before = cfg.volumes.len();
            cfg.volumes.retain(|v| v.name != name);
            if cfg.volumes.len() == before {
                bail!("no volume {name:?}");
            }
        }
        Request::Resize { volume, size } => {
            let v = cfg
                .volumes
                .iter_mut()
                .find(|v| v.name == volume)
                .ok_or_else(|| anyhow!("no volume {volume:?}"))?;
            v.size = Some(size);
        }
        Request::AddLun {
            target,
            lun,
            volume,
        } => {
            let t = find_target(&mut cfg, &target)?;
            if t.luns.iter().any(|l| l.id == lun) {
                bail!("target {target} already has LUN {lun}");
            }
            t.luns.push(LunConfig {
                id: lun,
                volume,
                write_protect: false,
                removable: false,
                sanitize_rate_mib: 0,
            });
            t.luns.sort_by_key(|l| l.id);
        }
        Request::RemoveLun { target, lun } => {
            let t = find_target(&mut cfg, &target)?;
            let before = t.luns.len();
            t.luns.retain(|l| l.id != lun);
            if t.luns.len() == before {
                bail!("target {target} has no LUN {lun}");
            }
        }
        Request::AddNamespace {
            subsystem,
            nsid,
            volume,
        } => {
            if nsid == 0 || nsid > MAX_NSID {
                bail!("namespace ID {nsid} is out of range (1 to {MAX_NSID})");
            }
            let s = find_subsystem(&mut cfg, &subsystem)?;
            if s.namespaces.iter().any(|n| n.nsid == nsid) {
                bail!("subsystem {subsystem} already has namespace {nsid}");
            }
            s.namespaces.push(NamespaceConfig { nsid, volume });
            s.namespaces.sort_by_key(|n| n.nsid);
        }
        Request::RemoveNamespace { subsystem, nsid } => {
            let s = find_subsystem(&mut cfg, &subsystem)?;
            let before = s.namespaces.len();
            s.namespaces.retain(|n| n.nsid != nsid);
            if s.namespaces.len() == before {
                bail!("subsystem {subsystem} has no namespace {nsid}");
            }
        }
        Request::AllowInitiator { target, initiator } => {
            let t = find_target(&mut cfg, &target)?;
            if !t.allowed_initiators.contains(&initiator) {
                t.allowed_initiators.push(initiator);
            }
        }
        Request::DisallowInitiator { target, initiator } => {
            let t = find_target(&mut cfg, &target)?;
            t.allowed_initiators.retain(|i| *i != initiator);
        }
        Request::SetChap {
            target,
            initiator,
            chap,
        } => {
            let t = find_target(&mut cfg, &target)?;
            match initiator {
                None => t.chap = chap,
                Some(i) => {
                    t.initiator_chap.retain(|c| c.initiator != i);
                    if let Some(chap) = chap {
                        t.initiator_chap
                            .push(crate::config::InitiatorChapConfig { initiator: i, chap });
                    }
                }
            }
        }
    }
    let sum = server.apply(cfg).await?;
    Ok(serde_json::to_value(sum)?)
}

fn find_target<'a>(cfg: &'a mut Config, name: &str) -> Result<&'a mut crate::config::TargetConfig> {
    cfg.targets
        .iter_mut()
        .find(|t| t.name == name)
        .ok_or_else(|| anyhow!("no target {name:?}"))
}

fn find_subsystem<'a>(
    cfg: &'a mut Config,
    nqn: &str,
) -> Result<&'a mut crate::config::SubsystemConfig> {
    cfg.subsystems
        .iter_mut()
        .find(|s| s.nqn == nqn)
        .ok_or_else(|| anyhow!("no subsystem {nqn:?}"))
}

async fn engine_volume(server: &Server, name: &str) -> Result<Arc<vtgt_engine::Volume>> {
    Ok(server
        .volume(name)
        .await
        .ok_or_else(|| anyhow!("no volume {name:?}"))?
        .volume)
}

/// Layout, legs, generation and resync progress of a volume.
pub fn mirror_json(v: &vtgt_engine::Volume) -> Value {
    let st = v.mirror_status();
    let r = &st.resync;
    json!({
        "volume": v.name(),
        "layout": v.describe_layout(),
        "mirrored": v.is_mirrored(),
        "generation": st.generation,
        "legs": st.legs.iter().map(|(id, s)| json!({"leg": id, "state": s.as_str()})).collect::<Vec<_>>(),
        "stale_regions": st.stale_regions,
        "unretired_tags": v.unretired_tags(),
        "migration": {
            "active": v.migration_status().active,
            "done_bytes": v.migration_status().done_bytes,
            "total_bytes": v.migration_status().total_bytes,
        },
        "journal_fill_ratio": v.journal_fill_ratio(),
        "reconciled_at_open": {
            "matched": v.reconcile_report().matched,
            "unmatched": v.reconcile_report().unmatched,
            "copied_bytes": v.reconcile_report().copied_bytes,
            "full_copy": v.reconcile_report().full_copy,
        },
        "region_bytes": st.region_blocks * v.block_size() as u64,
        "resync": {
            "leg": r.leg,
            "active": r.active,
            "done_bytes": r.done_bytes,
            "total_bytes": r.total_bytes,
            "rate_bytes_per_second": r.rate_bps,
            "eta_seconds": r.eta_secs,
        },
    })
}

/// Write-journal state; null for a volume that is not journaled.
pub fn journal_json(v: &vtgt_engine::Volume) -> Value {
    let j = v.journal_status();
    if j.journals == 0 {
        return Value::Null;
    }
    json!({
        "journals": j.journals,
        "fill_ratio": j.fill_ratio,
        "used_bytes": j.used_bytes,
        "capacity_bytes": j.capacity_bytes,
        "spares": j.spares,
        "sealed": j.sealed,
        "recycled": j.recycled,
        "replayed_at_open": j.replayed_at_open,
    })
}

async fn status(server: &Server) -> Result<Value> {
    let mut vols = Vec::new();
    for (name, e) in server.volumes().await {
        let v = &e.volume;
        vols.push(json!({
            "name": name,
            "block_size": v.block_size(),
            "blocks": v.num_blocks(),
            "bytes": v.num_blocks() * v.block_size() as u64,
            "backends": v.backends().iter().map(|b| b.describe()).collect::<Vec<_>>(),
            "fast_path_ios": v.counters.fast_path_hits(),
            "journal": journal_json(v),
            "faults": vtgt_engine::FaultReason::ALL.iter()
                .map(|r| (r.as_str().to_string(), json!(v.counters.count(*r))))
                .collect::<serde_json::Map<_, _>>(),
        }));
    }
    let targets: Vec<Value> = server
        .iscsi
        .targets
        .load()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "alias": t.alias(),
                "luns": t.luns().iter().map(|(id, lu)| json!({"lun": id, "volume": lu.volume().name()})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let subsystems: Vec<Value> = server
        .nvme
        .subsystems
        .load()
        .iter()
        .filter(|s| !s.discovery)
        .map(|s| {
            let hosts = s.hosts();
            json!({
                "nqn": s.nqn,
                "allow_any_host": hosts.allow_any_host,
                "allowed_hosts": hosts.allowed_hosts,
                "namespaces": s.namespaces().values()
                    .map(|n| json!({"nsid": n.nsid, "volume": n.entry.volume.name()}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({
        "iscsi_portals": server.iscsi_addrs,
        "nvme_ports": server.nvme_addrs,
        "targets": targets,
        "subsystems": subsystems,
        "controllers": server.nvme.controllers.all().len(),
        "volumes": vols,
        "sessions": server.iscsi.sessions.len(),
    }))
}

fn controllers(server: &Server) -> Vec<Value> {
    server
        .nvme
        .controllers
        .all()
        .iter()
        .map(|c| {
            json!({
                "cntlid": c.cntlid,
                "subsystem": c.subsys.nqn,
                "hostnqn": c.hostnqn,
                "hostid": c.hostid.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "io_queues": c.io_queues.load(std::sync::atomic::Ordering::Relaxed),
                "volatile_write_cache": c.vwc.load(std::sync::atomic::Ordering::Relaxed),
                "connected_secs": c.created.elapsed().as_secs(),
            })
        })
        .collect()
}

fn sessions(server: &Server) -> Value {
    let list: Vec<Value> = server
        .iscsi
        .sessions
        .all()
        .iter()
        .map(|s| {
            json!({
                "tsih": s.tsih,
                "initiator": s.initiator,
                "isid": s.isid.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "target": s.target,
                "discovery": s.discovery,
                "tasks": s.tasks.lock().len(),
                "negotiated": {
                    "header_digest": s.params.header_digest,
                    "data_digest": s.params.data_digest,
                    "max_recv_data_segment_length": s.params.target_max_recv_data_segment_length,
                    "max_xmit_data_segment_length": s.params.initiator_max_recv_data_segment_length,
                    "max_burst_length": s.params.max_burst_length,
                    "first_burst_length": s.params.first_burst_length,
                    "immediate_data": s.params.immediate_data,
                    "initial_r2t": s.params.initial_r2t,
                    "max_outstanding_r2t": s.params.max_outstanding_r2t,
                    "error_recovery_level": s.params.error_recovery_level,
                },
            })
        })
        .collect();
    json!(list)
}

/// Writes the config atomically: temp file, fsync, rename, fsync the dir.
pub fn save_config(cfg: &Config, path: &Path) -> Result<()> {
    let text = toml::to_string_pretty(cfg)?;
    vtgt_engine::write_atomically(path, text.as_bytes())?;
    Ok(())
}

/// Client side: sends one request and returns the result or the error.
pub async fn call(socket: &Path, req: &Request) -> Result<Value> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot reach vtgt at {}", socket.display()))?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    let mut lines = BufReader::new(rd).lines();
    let reply = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow!("vtgt closed the admin connection"))?;
    let v: Value = serde_json::from_str(&reply)?;
    if v["ok"] == json!(true) {
        Ok(v["result"].clone())
    } else {
        Err(anyhow!(
            "{}",
            v["error"].as_str().unwrap_or("unknown error")
        ))
    }
}

/// A one-line progress bar: `[#####.....]  50.0%  512 MiB/1024 MiB  80.0 MiB/s  ETA 6s`.
pub fn progress_line(done: u64, total: u64, rate_bps: f64, eta: Option<f64>) -> String {
    const WIDTH: usize = 30;
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (frac * WIDTH as f64).round() as usize;
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let eta = eta.map_or_else(|| "-".to_string(), |s| format!("{s:.0}s"));
    format!(
        "[{}{}] {:5.1}%  {:.1}/{:.1} MiB  {:.1} MiB/s  ETA {eta}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        frac * 100.0,
        mib(done as f64),
        mib(total as f64),
        mib(rate_bps),
    )
}

#[cfg(test)]
mod mirror_admin_tests {
    use super::*;

    #[test]
    fn progress_bar_fills() {
        let l = progress_line(1 << 20, 4 << 20, 1048576.0, Some(3.0));
        assert!(l.starts_with("[########......................]"), "{l}");
        assert!(l.contains("25.0%") && l.contains("ETA 3s"), "{l}");
        assert!(progress_line(0, 0, 0.0, None).contains("100.0%"));
    }

    #[tokio::test]
    async fn fail_attach_and_layout_ops() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "data_dir = {:?}\n[[volume]]\nname = \"m\"\nbackend = \"file\"\nsize = \"4MiB\"\n\
             [volume.layout]\nmirror = [{{ file = \"a.img\" }}, {{ file = \"b.img\" }}]\n",
            dir.path()
        );
        let mut cfg: Config = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        cfg.iscsi.portals.clear();
        cfg.nvme.listen.clear();
        cfg.targets.clear();
        cfg.subsystems.clear();
        let server = Server::start(cfg).await.unwrap();
        let ctx = AdminContext {
            server: Arc::new(server),
            config_path: None,
        };
        let v = handle(&ctx, Request::Layout { volume: "m".into() })
            .await
            .unwrap();
        assert_eq!(v["mirrored"], json!(true));
        assert_eq!(v["legs"].as_array().unwrap().len(), 2);
        let vol = engine_volume(&ctx.server, "m").await.unwrap();
        vol.write(10, bytes::Bytes::from(vec![7u8; 512]), false)
            .await
            .unwrap();
        let v = handle(
            &ctx,
            Request::FailLeg {
                volume: "m".into(),
                leg: 1,
            },
        )
        .await
        .unwrap();
        assert_eq!(v["generation"], json!(1));
        assert_eq!(v["legs"][1]["state"], json!("dead"));
        assert!(dir.path().join("m.mirror").exists());
        assert!(dir.path().join("m.leg0.tags").exists());
        assert!(dir.path().join("m.leg1.tags").exists());
        // Written after the failure: one region to copy.
        vol.write(20, bytes::Bytes::from(vec![8u8; 512]), false)
            .await
            .unwrap();
        handle(
            &ctx,
            Request::AttachLeg {
                volume: "m".into(),
                leg: 1,
            },
        )
        .await
        .unwrap();
        for _ in 0..200 {
            if vol.mirror_status().legs[1].1 == vtgt_engine::LegState::Up {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let v = handle(&ctx, Request::Layout { volume: "m".into() })
            .await
            .unwrap();
        assert_eq!(v["legs"][1]["state"], json!("up"));
        assert_eq!(v["resync"]["done_bytes"], v["resync"]["total_bytes"]);
        assert!(v["resync"]["done_bytes"].as_u64().unwrap() > 0);
        let a = std::fs::read(dir.path().join("a.img")).unwrap();
        let b = std::fs::read(dir.path().join("b.img")).unwrap();
        assert!(a == b, "legs differ after resync");
        assert!(handle(
            &ctx,
            Request::FailLeg {
                volume: "nope".into(),
                leg: 0,
            },
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn migrate_op_moves_a_volume_online() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "data_dir = {:?}\n[[volume]]\nname = \"p\"\nbackend = \"file\"\npath = \"p.img\"\nsize = \"1MiB\"\n",
            dir.path()
        );
        let mut cfg: Config = toml::from_str(&text).unwrap();
        cfg.iscsi.portals.clear();
        cfg.nvme.listen.clear();
        cfg.targets.clear();
        cfg.subsystems.clear();
        let ctx = AdminContext {
            server: Arc::new(Server::start(cfg).await.unwrap()),
            config_path: None,
        };
        let vol = engine_volume(&ctx.server, "p").await.unwrap();
        vol.write(1000, bytes::Bytes::from(vec![0x3Cu8; 4096]), false)
            .await
            .unwrap();
        handle(
            &ctx,
            Request::Migrate {
                volume: "p".into(),
                path: "p2.img".into(),
            },
        )
        .await
        .unwrap();
        for _ in 0..500 {
            let s = vol.migration_status();
            if !s.active && s.done_bytes == s.total_bytes && s.total_bytes > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(vol.migration_status().done_bytes, 1 << 20);
        let img = std::fs::read(dir.path().join("p2.img")).unwrap();
        assert!(img[1000 * 512..1000 * 512 + 4096]
            .iter()
            .all(|&b| b == 0x3C));
        assert!(vol.describe_layout().contains("p2.img"));
        // A write after the move lives only in p2.img; a restart with the
        // unchanged config must serve it from there.
        vol.write(8, bytes::Bytes::from(vec![0x5Au8; 512]), true)
            .await
            .unwrap();
        let cfg = ctx.server.config().await;
        ctx.server.shutdown().await.unwrap();
        drop((vol, ctx));
        let again = Server::start(cfg).await.unwrap();
        let vol = engine_volume(&again, "p").await.unwrap();
        assert!(vol.read(8, 1).await.unwrap().iter().all(|&b| b == 0x5A));
        assert!(vol.describe_layout().contains("p2.img"));
        again.shutdown().await.unwrap();
    }
}
