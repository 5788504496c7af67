//! The NVMe/TCP front end on the same engine as iSCSI: ports ([`port`]),
//! one queue per TCP connection ([`queue`]), the dynamic controller model
//! ([`controller`]), admin ([`admin`]) and NVM I/O ([`io`]) commands, and
//! the discovery subsystem ([`discovery`]). Named after Linux nvmet.

pub mod admin;
pub mod config;
pub mod controller;
pub mod discovery;
pub mod io;
pub mod port;
pub mod pr;
pub mod queue;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use vtgt_engine::NexusId;

use crate::server::VolumeEntry;
use controller::Controllers;

/// Largest queue we accept (MQES + 1 entries).
pub const QUEUE_ENTRIES: u16 = 128;
/// Admin queue entries we accept at most.
pub const ADMIN_QUEUE_ENTRIES: u16 = 32;
/// I/O queues a controller may have.
pub const MAX_IO_QUEUES: u16 = 16;
/// Largest H2CData PDU we accept (announced in ICResp).
pub const MAXH2CDATA: u32 = 128 * 1024;
/// In-capsule data we accept per command (IOCCSZ less the SQE).
pub const IN_CAPSULE: u32 = 8192;
/// Largest transfer of one command: MDTS 8 = 2^8 4 KiB pages.
pub const MDTS: u8 = 8;
pub const MAX_IO_BYTES: u32 = 4096 << MDTS;
/// C2HData PDUs carry at most this much, so large reads span several.
pub const C2H_CHUNK: usize = 64 * 1024;

/// A namespace: an NSID over a shared volume entry (the same one any iSCSI
/// LU exporting the volume uses).
#[derive(Debug, Clone)]
pub struct Namespace {
    pub nsid: u32,
    pub entry: VolumeEntry,
    /// The volume's command statistics, shared with its LUs.
    pub metrics: Arc<crate::metrics::VolumeMetrics>,
}

impl Namespace {
    /// NGUID (and UUID, EUI-64) derived from the volume's stable identity, so
    /// they survive restarts.
    pub fn nguid(&self) -> [u8; 16] {
        let id = self.entry.volume.stable_id();
        let mut g = [0u8; 16];
        // "vtgt" marker, then the volume id; the low half repeats it mixed
        // with the NSID so two namespaces of one volume still differ.
        g[0..4].copy_from_slice(b"vtgt");
        g[4..12].copy_from_slice(&id.to_be_bytes());
        g[12..16].copy_from_slice(&(self.nsid ^ (id as u32)).to_be_bytes());
        g
    }
    pub fn uuid(&self) -> [u8; 16] {
        let mut u = self.nguid();
        // RFC 4122 version 8 (custom) and variant bits.
        u[6] = (u[6] & 0x0f) | 0x80;
        u[8] = (u[8] & 0x3f) | 0x80;
        u
    }
    pub fn eui64(&self) -> [u8; 8] {
        let id = self.entry.volume.stable_id();
        let mut e = id.to_be_bytes();
        e[0] = 0x02; // locally administered
        e
    }
}

/// A subsystem's namespaces by NSID. The map is replaced whole on a live
/// change; an I/O clones the `Arc` of its namespace, so a removed namespace
/// lives on until the commands that already resolved it have finished.
pub type NamespaceMap = BTreeMap<u32, Arc<Namespace>>;

/// Which hosts may connect to a subsystem.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostAccess {
    pub allow_any_host: bool,
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug)]
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub discovery: bool,
    /// Swapped by live changes; read lock-free on every command.
    namespaces: ArcSwap<NamespaceMap>,
    /// Only read at Connect and discovery, so a plain swap suffices.
    hosts: ArcSwap<HostAccess>,
}

impl Subsystem {
    pub fn new(
        nqn: &str,
        serial: String,
        discovery: bool,
        hosts: HostAccess,
        namespaces: NamespaceMap,
    ) -> Self {
        Self {
            nqn: nqn.to_string(),
            serial,
            discovery,
            namespaces: ArcSwap::from_pointee(namespaces),
            hosts: ArcSwap::from_pointee(hosts),
        }
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let h = self.hosts.load();
        self.discovery || h.allow_any_host || h.allowed_hosts.iter().any(|x| x == hostnqn)
    }

    pub fn hosts(&self) -> Arc<HostAccess> {
        self.hosts.load_full()
    }

    pub fn set_hosts(&self, hosts: HostAccess) {
        if **self.hosts.load() != hosts {
            self.hosts.store(Arc::new(hosts));
        }
    }

    /// One namespace, for a command to hold until it completes.
    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.namespaces.load().get(&nsid).cloned()
    }

    /// A snapshot of every namespace.
    pub fn namespaces(&self) -> Arc<NamespaceMap> {
        self.namespaces.load_full()
    }

    /// Publishes a new namespace map; commands resolved against the old
    /// one finish on it.
    pub fn set_namespaces(&self, map: NamespaceMap) {
        self.namespaces.store(Arc::new(map));
    }
}

#[derive(Debug, Clone)]
pub struct PortInfo {
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub portid: u16,
}

/// Stable nexus ids per (host NQN, host ID, subsystem). They live in the
/// upper half of the id space so they never meet iSCSI's.
#[derive(Debug, Default)]
pub struct NvmeNexusRegistry {
    ids: DashMap<String, NexusId>,
    next: AtomicU64,
}

impl NvmeNexusRegistry {
    pub fn id(&self, hostnqn: &str, hostid: &[u8; 16], subnqn: &str) -> NexusId {
        let key = format!("{hostnqn}|{}|{subnqn}", hex_id(hostid));
        *self
            .ids
            .entry(key)
            .or_insert_with(|| (1u64 << 63) | (self.next.fetch_add(1, Ordering::Relaxed) + 1))
    }
}

fn hex_id(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// State every NVMe/TCP queue shares.
#[derive(Debug)]
pub struct NvmeShared {
    /// The discovery subsystem first, then the configured ones; replaced
    /// whole when subsystems are added or removed live.
    pub subsystems: ArcSwap<Vec<Arc<Subsystem>>>,
    pub ports: Vec<PortInfo>,
    pub controllers: Controllers,
    pub nexus: NvmeNexusRegistry,
    pub shutdown: CancellationToken,
    /// Discovery log generation counter.
    pub genctr: AtomicU64,
}

impl NvmeShared {
    pub fn new(subsystems: Vec<Arc<Subsystem>>, ports: Vec<PortInfo>) -> Arc<Self> {
        let mut all = vec![Arc::new(Subsystem::new(
            vtgt_protocol::nvme::fabrics::DISCOVERY_NQN,
            "discovery".into(),
            true,
            HostAccess {
                allow_any_host: true,
                allowed_hosts: vec![],
            },
            BTreeMap::new(),
        ))];
        all.extend(subsystems);
        Arc::new(Self {
            subsystems: ArcSwap::from_pointee(all),
            ports,
            controllers: Controllers::default(),
            nexus: NvmeNexusRegistry::default(),
            shutdown: CancellationToken::new(),
            genctr: AtomicU64::new(1),
        })
    }

    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems
            .load()
            .iter()
            .find(|s| s.nqn == nqn)
            .cloned()
    }
}

/// Builds a subsystem's namespace map from its config over the server's
/// volume entries, reusing `old`'s namespaces whose NSID and volume are
/// unchanged (so commands in flight and identities stay the same).
pub fn build_namespaces(
    cfg: &config::SubsystemConfig,
    volumes: &std::collections::HashMap<String, VolumeEntry>,
    old: Option<&NamespaceMap>,
) -> anyhow::Result<NamespaceMap> {
    let mut out = BTreeMap::new();
    for n in &cfg.namespaces {
        let entry = volumes
            .get(&n.volume)
            .ok_or_else(|| anyhow::anyhow!("subsystem {}: unknown volume {}", cfg.nqn, n.volume))?;
        let prev = old.and_then(|o| o.get(&n.nsid));
        // Commands a host queued for the old volume would land on the new
        // one before it rescans (Linux nvmet refuses this too).
        if prev.is_some_and(|ns| !Arc::ptr_eq(&ns.entry.volume, &entry.volume)) {
            anyhow::bail!(
                "subsystem {}: namespace {} cannot move to volume {} while it exists; remove it, then add it",
                cfg.nqn,
                n.nsid,
                n.volume
            );
        }
        let kept = prev.cloned();
        let ns = kept.unwrap_or_else(|| {
            Arc::new(Namespace {
                nsid: n.nsid,
                entry: entry.clone(),
                metrics: crate::metrics::VolumeMetrics::new(entry.volume.name()),
            })
        });
        out.insert(n.nsid, ns);
    }
    Ok(out)
}

/// Serial number: stable per subsystem name (FNV-1a), 16 hex digits.
fn serial(nqn: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in nqn.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Builds one subsystem from its config.
pub fn build_subsystem(
    cfg: &config::SubsystemConfig,
    volumes: &std::collections::HashMap<String, VolumeEntry>,
) -> anyhow::Result<Arc<Subsystem>> {
    Ok(Arc::new(Subsystem::new(
        &cfg.nqn,
        serial(&cfg.nqn),
        false,
        host_access(cfg),
        build_namespaces(cfg, volumes, None)?,
    )))
}

pub fn host_access(cfg: &config::SubsystemConfig) -> HostAccess {
    HostAccess {
        allow_any_host: cfg.allow_any_host,
        allowed_hosts: cfg.allowed_hosts.clone(),
    }
}

/// Builds subsystems from the config over the server's volume entries.
pub fn build_subsystems(
    cfgs: &[config::SubsystemConfig],
    volumes: &std::collections::HashMap<String, VolumeEntry>,
) -> anyhow::Result<Vec<Arc<Subsystem>>> {
    cfgs.iter().map(|s| build_subsystem(s, volumes)).collect()
}

/// A live change to the NVMe subsystems, prepared (everything that can
/// fail) before anything is changed; [`NvmeShared::commit`] applies it.
#[derive(Debug, Default)]
pub struct NvmePlan {
    /// In config order: an existing subsystem with its next namespaces and
    /// hosts, or a new one.
    steps: Vec<PlanStep>,
}

#[derive(Debug)]
enum PlanStep {
    Keep {
        sub: Arc<Subsystem>,
        namespaces: NamespaceMap,
        hosts: HostAccess,
    },
    Add(Arc<Subsystem>),
}

/// How long a live change waits for commands still using a removed
/// namespace before it returns anyway (they still finish on the volume).
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// NSIDs whose namespace differs between `old` and `new`: added, removed,
/// or the same NSID over another volume.
pub fn changed_nsids(old: &NamespaceMap, new: &NamespaceMap) -> Vec<u32> {
    let mut ids: Vec<u32> = old
        .iter()
        .filter(|(k, ns)| new.get(k).is_none_or(|n| !Arc::ptr_eq(n, ns)))
        .map(|(k, _)| *k)
        .chain(new.keys().filter(|k| !old.contains_key(k)).copied())
        .collect();
    ids.sort_unstable();
    ids
}

impl NvmeShared {
    /// Prepares the subsystems `cfgs` describe over `volumes`.
    pub fn plan(
        &self,
        cfgs: &[config::SubsystemConfig],
        volumes: &std::collections::HashMap<String, VolumeEntry>,
    ) -> anyhow::Result<NvmePlan> {
        let mut steps = Vec::new();
        for c in cfgs {
            steps.push(match self.subsystem(&c.nqn).filter(|s| !s.discovery) {
                Some(sub) => PlanStep::Keep {
                    namespaces: build_namespaces(c, volumes, Some(&sub.namespaces()))?,
                    hosts: host_access(c),
                    sub,
                },
                None => PlanStep::Add(build_subsystem(c, volumes)?),
            });
        }
        Ok(NvmePlan { steps })
    }

    /// Applies a plan: new namespace maps are published first, then every
    /// connected controller of a changed subsystem gets its nexus known to
    /// new namespaces' volumes, the NSIDs in its Changed Namespace List and
    /// the namespace attribute notice. Subsystems no longer configured go
    /// away with their controllers. Returns once commands that were using a
    /// removed namespace have finished (or after [`DRAIN_WAIT`]).
    pub async fn commit(&self, plan: NvmePlan, sum: &mut crate::server::ApplySummary) {
        let cur = self.subsystems.load_full();
        let mut list: Vec<Arc<Subsystem>> = cur.iter().filter(|s| s.discovery).cloned().collect();
        let mut retired: Vec<Arc<Namespace>> = Vec::new();
        let mut added = false;
        for step in plan.steps {
            match step {
                PlanStep::Add(sub) => {
                    sum.subsystems_added.push(sub.nqn.clone());
                    list.push(sub);
                    added = true;
                }
                PlanStep::Keep {
                    sub,
                    namespaces,
                    hosts,
                } => {
                    // Host list changes apply to later Connects, as iSCSI
                    // ACL changes apply to later logins.
                    sub.set_hosts(hosts);
                    let old = sub.namespaces();
                    let changed = changed_nsids(&old, &namespaces);
                    if !changed.is_empty() {
                        sub.set_namespaces(namespaces.clone());
                        self.announce(&sub, &old, &namespaces, &changed).await;
                        for id in &changed {
                            let name = format!("{}/{id}", sub.nqn);
                            match (old.get(id), namespaces.get(id)) {
                                (None, _) => sum.namespaces_added.push(name),
                                (_, None) => sum.namespaces_removed.push(name),
                                _ => sum.namespaces_changed.push(name),
                            }
                            if let Some(ns) = old.get(id) {
                                retired.push(ns.clone());
                            }
                        }
                    }
                    list.push(sub);
                }
            }
        }
        let removed: Vec<Arc<Subsystem>> = cur
            .iter()
            .filter(|s| !s.discovery && !list.iter().any(|n| Arc::ptr_eq(n, s)))
            .cloned()
            .collect();
        if added || !removed.is_empty() {
            self.subsystems.store(Arc::new(list));
            self.genctr.fetch_add(1, Ordering::AcqRel);
        }
        for s in removed {
            // Emptied first, so its dying controllers' next commands fail
            // with Invalid Namespace and only commands in flight remain.
            let old = s.namespaces();
            s.set_namespaces(BTreeMap::new());
            for c in self.controllers.of(&s) {
                self.controllers.teardown(c.cntlid, "subsystem removed");
            }
            retired.extend(old.values().cloned());
            sum.subsystems_removed.push(s.nqn.clone());
        }
        drain_retired(retired).await;
    }

    /// Tells the controllers of `sub` about `changed` NSIDs (old map `old`,
    /// new map `new`, already published).
    async fn announce(
        &self,
        sub: &Arc<Subsystem>,
        old: &NamespaceMap,
        new: &NamespaceMap,
        changed: &[u32],
    ) {
        for c in self.controllers.of(sub) {
            let who = pr::identity(&c.hostid);
            for id in changed {
                if let Some(ns) = new.get(id) {
                    // As at Connect: engine notices (resize) and
                    // reservations must know this host on the volume.
                    ns.entry.control.register_nexus(c.nexus, None).await;
                    ns.entry.control.identify(c.nexus, who.clone()).await;
                }
                if let Some(ns) = old.get(id) {
                    // Notices still queued on a volume this subsystem no
                    // longer exports would only block that nexus's fast
                    // path there; reservations stay with the volume.
                    let still = new
                        .values()
                        .any(|n| Arc::ptr_eq(&n.entry.control, &ns.entry.control));
                    if !still {
                        ns.entry.control.clear(c.nexus).await;
                    }
                }
            }
            c.namespaces_changed(changed).await;
        }
    }
}

/// Waits (bounded) until no command holds any of `retired`: each command
/// holds a clone of its namespace's `Arc` until it completes, so the count
/// falls to our own reference once they are done.
async fn drain_retired(retired: Vec<Arc<Namespace>>) {
    let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
    for ns in retired {
        while Arc::strong_count(&ns) > 1 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    nsid = ns.nsid,
                    volume = %ns.entry.volume.name(),
                    "commands on a removed namespace still running; not waiting longer"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use vtgt_engine::{Exposure, LuControl, MemBackend, Volume};

    fn entry(name: &str) -> VolumeEntry {
        let volume = Volume::simple(name, Arc::new(MemBackend::new(64 * 512).unwrap()), 512);
        VolumeEntry {
            control: LuControl::new(Exposure::new(volume.clone())),
            volume,
        }
    }

    fn sub_cfg(nqn: &str, ns: &[(u32, &str)]) -> config::SubsystemConfig {
        config::SubsystemConfig {
            nqn: nqn.into(),
            allow_any_host: true,
            allowed_hosts: vec![],
            namespaces: ns
                .iter()
                .map(|(nsid, v)| config::NamespaceConfig {
                    nsid: *nsid,
                    volume: (*v).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn changed_nsids_are_added_or_removed_and_moves_refused() {
        let vols: HashMap<String, VolumeEntry> =
            [("a", entry("a")), ("b", entry("b")), ("c", entry("c"))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let old = build_namespaces(
            &sub_cfg("nqn.x:s", &[(1, "a"), (2, "b"), (3, "c")]),
            &vols,
            None,
        )
        .unwrap();
        // 1 and 3 kept, 2 removed, 4 added.
        let new = build_namespaces(
            &sub_cfg("nqn.x:s", &[(1, "a"), (3, "c"), (4, "c")]),
            &vols,
            Some(&old),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&old[&1], &new[&1]), "unchanged namespace kept");
        assert_eq!(changed_nsids(&old, &new), vec![2, 4]);
        let moved = build_namespaces(&sub_cfg("nqn.x:s", &[(3, "a")]), &vols, Some(&old));
        assert!(moved.unwrap_err().to_string().contains("cannot move"));
        assert!(changed_nsids(&new, &new).is_empty());
        let e = build_namespaces(&sub_cfg("nqn.x:s", &[(1, "zz")]), &vols, None).unwrap_err();
        assert!(e.to_string().contains("unknown volume zz"), "{e}");
    }

    #[tokio::test]
    async fn removal_waits_for_commands_in_flight() {
        let vols: HashMap<String, VolumeEntry> = [("a".to_string(), entry("a"))].into();
        let cfg = sub_cfg("nqn.x:s", &[(1, "a")]);
        let shared = NvmeShared::new(
            build_subsystems(std::slice::from_ref(&cfg), &vols).unwrap(),
            vec![],
        );
        let sub = shared.subsystem("nqn.x:s").unwrap();
        // A command holding namespace 1, as io.rs does while it runs.
        let held = sub.namespace(1).unwrap();
        let plan = shared.plan(&[sub_cfg("nqn.x:s", &[])], &vols).unwrap();
        let bg = shared.clone();
        let commit = tokio::spawn(async move {
            let mut sum = crate::server::ApplySummary::default();
            bg.commit(plan, &mut sum).await;
            sum
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Already unpublished: new commands no longer find it...
        assert!(sub.namespace(1).is_none());
        // ...while the one in flight still completes on its volume.
        assert!(!commit.is_finished(), "returned with a command in flight");
        held.entry
            .volume
            .write(0, bytes::Bytes::from(vec![1u8; 512]), false)
            .await
            .unwrap();
        drop(held);
        let sum = tokio::time::timeout(std::time::Duration::from_secs(5), commit)
            .await
            .expect("commit returns once the command is done")
            .unwrap();
        assert_eq!(sum.namespaces_removed, vec!["nqn.x:s/1".to_string()]);
        // Back again, as a new namespace over the same volume.
        let plan = shared.plan(&[cfg], &vols).unwrap();
        let mut sum = crate::server::ApplySummary::default();
        shared.commit(plan, &mut sum).await;
        assert_eq!(sum.namespaces_added, vec!["nqn.x:s/1".to_string()]);
        assert!(sub.namespace(1).is_some());
        // Subsystems: one added, the old one removed, discovery kept.
        let plan = shared
            .plan(&[sub_cfg("nqn.x:t", &[(2, "a")])], &vols)
            .unwrap();
        let gen = shared.genctr.load(Ordering::Acquire);
        let mut sum = crate::server::ApplySummary::default();
        // Nothing runs on the removed subsystem: no waiting.
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            shared.commit(plan, &mut sum),
        )
        .await
        .expect("removing an idle subsystem does not wait");
        assert_eq!(sum.subsystems_added, vec!["nqn.x:t".to_string()]);
        assert_eq!(sum.subsystems_removed, vec!["nqn.x:s".to_string()]);
        assert!(shared.subsystem("nqn.x:s").is_none());
        assert!(shared
            .subsystem(vtgt_protocol::nvme::fabrics::DISCOVERY_NQN)
            .is_some());
        assert_eq!(shared.subsystem("nqn.x:t").unwrap().namespaces().len(), 1);
        assert!(
            shared.genctr.load(Ordering::Acquire) > gen,
            "discovery log generation"
        );
    }
}
