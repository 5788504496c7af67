//! Targets as the front ends see them: a name, LUNs mapped to exposed
//! volumes, initiator ACLs and CHAP credentials.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use vtgt_engine::NexusId;

use crate::config::{ChapConfig, TargetConfig};
use crate::scsi::lu::LogicalUnit;

#[derive(Debug)]
pub struct Target {
    pub name: String,
    luns: ArcSwap<BTreeMap<u64, Arc<LogicalUnit>>>,
    auth: ArcSwap<TargetAuth>,
}

/// Who may log in and how; replaced as a whole on a live change, which
/// applies to later logins.
#[derive(Debug, Clone)]
pub struct TargetAuth {
    pub alias: Option<String>,
    pub allowed_initiators: Vec<String>,
    pub chap: Option<ChapConfig>,
    pub initiator_chap: Vec<(String, ChapConfig)>,
}

impl TargetAuth {
    fn from_config(cfg: &TargetConfig) -> Self {
        Self {
            alias: cfg.alias.clone(),
            allowed_initiators: cfg.allowed_initiators.clone(),
            chap: cfg.chap.clone(),
            initiator_chap: cfg
                .initiator_chap
                .iter()
                .map(|c| (c.initiator.clone(), c.chap.clone()))
                .collect(),
        }
    }
}

impl Target {
    pub fn new(cfg: &TargetConfig, luns: BTreeMap<u64, Arc<LogicalUnit>>) -> Arc<Self> {
        Arc::new(Self {
            name: cfg.name.clone(),
            luns: ArcSwap::from_pointee(luns),
            auth: ArcSwap::from_pointee(TargetAuth::from_config(cfg)),
        })
    }

    /// Takes new ACL, CHAP and alias settings from `cfg`.
    pub fn set_auth(&self, cfg: &TargetConfig) {
        self.auth.store(Arc::new(TargetAuth::from_config(cfg)));
    }

    pub fn alias(&self) -> Option<String> {
        self.auth.load().alias.clone()
    }

    pub fn luns(&self) -> Arc<BTreeMap<u64, Arc<LogicalUnit>>> {
        self.luns.load_full()
    }

    pub fn lun(&self, id: u64) -> Option<Arc<LogicalUnit>> {
        self.luns.load().get(&id).cloned()
    }

    pub fn lun_ids(&self) -> Vec<u64> {
        self.luns.load().keys().copied().collect()
    }

    pub fn set_luns(&self, luns: BTreeMap<u64, Arc<LogicalUnit>>) {
        self.luns.store(Arc::new(luns));
    }

    pub fn initiator_allowed(&self, initiator: &str) -> bool {
        let auth = self.auth.load();
        auth.allowed_initiators.is_empty()
            || auth
                .allowed_initiators
                .iter()
                .any(|a| a.eq_ignore_ascii_case(initiator))
    }

    /// CHAP credentials this initiator must present, if any.
    pub fn chap_for(&self, initiator: &str) -> Option<ChapConfig> {
        let auth = self.auth.load();
        auth.initiator_chap
            .iter()
            .find(|(i, _)| i.eq_ignore_ascii_case(initiator))
            .map(|(_, c)| c.clone())
            .or_else(|| auth.chap.clone())
    }
}

/// Assigns stable identities to I_T nexuses, so a reconnecting initiator port
/// keeps its unit attentions and reservations.
#[derive(Debug, Default)]
pub struct NexusRegistry {
    ids: DashMap<String, NexusId>,
    next: AtomicU64,
}

impl NexusRegistry {
    pub fn id(&self, initiator: &str, isid: [u8; 6], target: &str, tpgt: u16) -> NexusId {
        let key = format!(
            "{},i,0x{},{},t,{tpgt}",
            initiator.to_ascii_lowercase(),
            isid.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            target
        );
        *self
            .ids
            .entry(key)
            .or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
}
