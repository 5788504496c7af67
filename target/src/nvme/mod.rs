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

#[derive(Debug)]
pub struct Subsystem {
    pub nqn: String,
    pub allow_any_host: bool,
    pub allowed_hosts: Vec<String>,
    pub namespaces: BTreeMap<u32, Namespace>,
    pub serial: String,
    pub discovery: bool,
}

impl Subsystem {
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.discovery || self.allow_any_host || self.allowed_hosts.iter().any(|h| h == hostnqn)
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
    pub subsystems: Vec<Arc<Subsystem>>,
    pub ports: Vec<PortInfo>,
    pub controllers: Controllers,
    pub nexus: NvmeNexusRegistry,
    pub shutdown: CancellationToken,
    /// Discovery log generation counter.
    pub genctr: AtomicU64,
}

impl NvmeShared {
    pub fn new(subsystems: Vec<Arc<Subsystem>>, ports: Vec<PortInfo>) -> Arc<Self> {
        let mut all = vec![Arc::new(Subsystem {
            nqn: vtgt_protocol::nvme::fabrics::DISCOVERY_NQN.to_string(),
            allow_any_host: true,
            allowed_hosts: vec![],
            namespaces: BTreeMap::new(),
            serial: "discovery".into(),
            discovery: true,
        })];
        all.extend(subsystems);
        Arc::new(Self {
            subsystems: all,
            ports,
            controllers: Controllers::default(),
            nexus: NvmeNexusRegistry::default(),
            shutdown: CancellationToken::new(),
            genctr: AtomicU64::new(1),
        })
    }

    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems.iter().find(|s| s.nqn == nqn).cloned()
    }
}

/// Builds subsystems from the config over the server's volume entries.
pub fn build_subsystems(
    cfgs: &[config::SubsystemConfig],
    volumes: &std::collections::HashMap<String, VolumeEntry>,
) -> anyhow::Result<Vec<Arc<Subsystem>>> {
    let mut out = Vec::new();
    for s in cfgs {
        let mut namespaces = BTreeMap::new();
        for n in &s.namespaces {
            let entry = volumes
                .get(&n.volume)
                .ok_or_else(|| anyhow::anyhow!("unknown volume {}", n.volume))?
                .clone();
            namespaces.insert(
                n.nsid,
                Namespace {
                    nsid: n.nsid,
                    entry,
                },
            );
        }
        // Serial: stable per subsystem name (FNV-1a), 16 hex digits.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.nqn.as_bytes() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push(Arc::new(Subsystem {
            nqn: s.nqn.clone(),
            allow_any_host: s.allow_any_host,
            allowed_hosts: s.allowed_hosts.clone(),
            namespaces,
            serial: format!("{h:016x}"),
            discovery: false,
        }));
    }
    Ok(out)
}
