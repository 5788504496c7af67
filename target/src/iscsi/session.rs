//! iSCSI sessions: TSIH allocation, the registry used for reinstatement, and
//! each session's task table (for task management across connections).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use vtgt_engine::NexusId;

/// A task the session knows about, from receipt until its response is sent.
#[derive(Debug)]
pub struct TaskEntry {
    pub lun: u64,
    pub cmdsn: u32,
    /// Set once the task runs; aborting it drops its future.
    pub abort: Option<AbortHandle>,
    /// Keeps the task counted against the CmdSN window.
    pub _slot: Option<super::writer::TaskGuard>,
}

#[derive(Debug)]
pub struct Session {
    pub tsih: u16,
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: String,
    pub nexus: NexusId,
    pub discovery: bool,
    /// What login negotiated, for status reports.
    pub params: vtgt_protocol::iscsi::nego::SessionParams,
    /// Cancelled to end the session (reinstatement, reset, shutdown).
    pub kill: CancellationToken,
    /// Cancelled by the session's connection when it has cleaned up.
    pub done: CancellationToken,
    pub tasks: Mutex<HashMap<u32, TaskEntry>>,
}

impl Session {
    /// Aborts tasks matching `pred`; returns their tags. Their responses are
    /// never sent because the futures that would send them are dropped.
    pub fn abort_tasks(&self, pred: impl Fn(u32, &TaskEntry) -> bool) -> Vec<u32> {
        let mut tasks = self.tasks.lock();
        let tags: Vec<u32> = tasks
            .iter()
            .filter(|(itt, t)| pred(**itt, t))
            .map(|(itt, _)| *itt)
            .collect();
        for itt in &tags {
            if let Some(t) = tasks.remove(itt) {
                if let Some(a) = t.abort {
                    a.abort();
                }
            }
        }
        tags
    }
}

/// All sessions of this vtgt, keyed by initiator port (name + ISID) and
/// target.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    sessions: DashMap<(String, [u8; 6], String), Arc<Session>>,
    next_tsih: AtomicU16,
}

impl SessionRegistry {
    fn key(initiator: &str, isid: [u8; 6], target: &str) -> (String, [u8; 6], String) {
        (initiator.to_ascii_lowercase(), isid, target.to_string())
    }

    pub fn allocate_tsih(&self) -> u16 {
        loop {
            let t = self
                .next_tsih
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if t != 0 && !self.sessions.iter().any(|s| s.tsih == t) {
                return t;
            }
        }
    }

    pub fn find(&self, initiator: &str, isid: [u8; 6], target: &str) -> Option<Arc<Session>> {
        self.sessions
            .get(&Self::key(initiator, isid, target))
            .map(|s| s.clone())
    }

    pub fn find_tsih(&self, tsih: u16) -> Option<Arc<Session>> {
        self.sessions
            .iter()
            .find(|s| s.tsih == tsih)
            .map(|s| s.value().clone())
    }

    /// Registers `s`, returning the session it replaces (reinstatement).
    pub fn insert(&self, s: Arc<Session>) -> Option<Arc<Session>> {
        self.sessions
            .insert(Self::key(&s.initiator, s.isid, &s.target), s)
    }

    /// Removes `s` if it is still the registered session for its key.
    pub fn remove(&self, s: &Arc<Session>) {
        self.sessions
            .remove_if(&Self::key(&s.initiator, s.isid, &s.target), |_, v| {
                Arc::ptr_eq(v, s)
            });
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|s| s.value().clone()).collect()
    }

    pub fn of_target(&self, target: &str) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .filter(|s| s.target == target && !s.discovery)
            .map(|s| s.value().clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
