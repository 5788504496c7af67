//! The dynamic controller model: an admin-queue Connect allocates a
//! controller (cntlid) for one host on one subsystem; I/O-queue Connects
//! must name it. Holds the controller registers (CC/CSTS), the keep-alive
//! timer, asynchronous events, features and the error log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vtgt_engine::{NexusId, Notice};
use vtgt_protocol::nvme::command::{sc, Status};
use vtgt_protocol::nvme::fabrics::{
    self, cc, connect_off, csts, invalid_param_result, prop, ConnectCmd, ConnectData,
    ConnectDataError, PropertyCmd, CNTLID_DYNAMIC,
};
use vtgt_protocol::nvme::log::{resv_notify, ErrorEntry};

use super::queue::Responder;
use super::{NvmeShared, Subsystem, ADMIN_QUEUE_ENTRIES, MAX_IO_QUEUES, QUEUE_ENTRIES};

/// CAP.TO in 500 ms units: how long a host waits for CSTS.RDY.
const CAP_TIMEOUT: u8 = 15;
/// Error log entries kept (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 16;
/// Outstanding AERs allowed (AERL + 1).
pub const AER_LIMIT: usize = 4;
/// How often the watchdog checks keep-alive and engine notices.
const WATCH_TICK: Duration = Duration::from_millis(50);

/// AEN DW0 for "namespace attribute changed" (notice type, log page 04h).
pub const AEN_NS_CHANGED: u32 = 0x02 | (0x04 << 16);
/// AEC bit enabling namespace attribute notices.
pub const AEC_NS_ATTR: u32 = 1 << 8;
/// AEN DW0 for "reservation log page available" (I/O command specific
/// status, log page 80h).
pub const AEN_RESV_LOG: u32 = 0x06 | (0x80 << 16);
/// Reservation notification log pages kept unread; older ones are dropped
/// (the log page count still shows the gap).
pub const RESV_LOG_ENTRIES: usize = 64;
/// Reservation Notification Mask bits (Set Features 82h).
pub const RESV_MASK_BITS: u32 = 0b1110;

#[derive(Debug, Default)]
struct Aer {
    cids: VecDeque<u16>,
    pending: VecDeque<u32>,
    /// A namespace-attribute event was reported and its log not yet read.
    ns_masked: bool,
    changed: Vec<u32>,
    /// A reservation log event was reported and its log not yet read.
    resv_masked: bool,
    /// Unread reservation notifications: (log page count, type, NSID).
    resv_log: VecDeque<(u64, u8, u32)>,
    resv_count: u64,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_blocks: AtomicU64,
    pub write_blocks: AtomicU64,
    pub media_errors: AtomicU64,
}

#[derive(Debug)]
pub struct Controller {
    pub cntlid: u16,
    pub subsys: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub nexus: NexusId,
    cc: AtomicU32,
    csts: AtomicU32,
    kato_ms: AtomicU32,
    last_traffic: Mutex<Instant>,
    /// Cancelled when the controller is torn down; every queue watches it.
    pub kill: CancellationToken,
    aer: Mutex<Aer>,
    pub aec: AtomicU32,
    admin: Mutex<Option<Responder>>,
    /// I/O queues granted by Set Features (Number of Queues).
    pub io_queues: AtomicU16,
    connected: Mutex<HashMap<u16, CancellationToken>>,
    /// Each connected I/O queue's commands in flight, by QID.
    io_inflight: Mutex<HashMap<u16, Arc<Mutex<HashSet<u16>>>>>,
    pub vwc: AtomicBool,
    /// Reservation Notification Mask per NSID (unset: nothing masked).
    pub resv_mask: Mutex<HashMap<u32, u32>>,
    errors: Mutex<VecDeque<ErrorEntry>>,
    error_count: AtomicU64,
    pub stats: Stats,
    pub created: Instant,
}

impl Controller {
    pub fn enabled(&self) -> bool {
        self.csts.load(Ordering::Acquire) & csts::RDY != 0
    }

    /// Traffic-based keep-alive: any command counts.
    pub fn touch(&self) {
        *self.last_traffic.lock() = Instant::now();
    }

    pub fn kato(&self) -> Duration {
        Duration::from_millis(self.kato_ms.load(Ordering::Acquire) as u64)
    }

    pub fn set_kato(&self, ms: u32) {
        self.kato_ms.store(ms, Ordering::Release);
        self.touch();
    }

    pub fn set_admin(&self, r: Responder) {
        *self.admin.lock() = Some(r);
    }

    /// Queues an AER; completes it at once if an event is waiting.
    pub fn add_aer(&self, cid: u16) -> Result<Option<(u16, u32)>, Status> {
        let mut a = self.aer.lock();
        if a.cids.len() >= AER_LIMIT {
            return Err(Status::specific(sc::AER_LIMIT));
        }
        a.cids.push_back(cid);
        Ok(self.match_aer(&mut a))
    }

    fn match_aer(&self, a: &mut Aer) -> Option<(u16, u32)> {
        if a.cids.is_empty() || a.pending.is_empty() {
            return None;
        }
        Some((a.cids.pop_front()?, a.pending.pop_front()?))
    }

    /// Records changed namespaces and raises the AEN when enabled; all are
    /// recorded before the event, so a host reading the log on it sees
    /// every one.
    pub async fn namespaces_changed(&self, nsids: &[u32]) {
        let done = {
            let mut a = self.aer.lock();
            for &nsid in nsids {
                if !a.changed.contains(&nsid) && a.changed.len() < 1024 {
                    a.changed.push(nsid);
                }
            }
            if a.ns_masked || self.aec.load(Ordering::Acquire) & AEC_NS_ATTR == 0 {
                None
            } else {
                a.ns_masked = true;
                a.pending.push_back(AEN_NS_CHANGED);
                self.match_aer(&mut a)
            }
        };
        if let Some((cid, dw0)) = done {
            let r = self.admin.lock().clone();
            if let Some(r) = r {
                // Not awaited: a host that stops reading its admin queue
                // must not hold up the caller (a live change under the
                // server's lock).
                tokio::spawn(async move { r.complete(cid, Status::SUCCESS, dw0 as u64).await });
            }
        }
    }

    /// Queues a reservation notification log page of `kind` for `nsid`
    /// (unless the host masked that kind) and raises its AEN.
    pub async fn reservation_event(&self, nsid: u32, kind: u8) {
        let mask = self.resv_mask.lock().get(&nsid).copied().unwrap_or(0);
        if mask & (1 << kind) != 0 {
            return;
        }
        let done = {
            let mut a = self.aer.lock();
            // The count is 64-bit and skips 0 when it wraps.
            a.resv_count = a.resv_count.checked_add(1).unwrap_or(1);
            if a.resv_log.len() >= RESV_LOG_ENTRIES {
                a.resv_log.pop_front();
            }
            let c = a.resv_count;
            a.resv_log.push_back((c, kind, nsid));
            if a.resv_masked {
                None
            } else {
                a.resv_masked = true;
                a.pending.push_back(AEN_RESV_LOG);
                self.match_aer(&mut a)
            }
        };
        if let Some((cid, dw0)) = done {
            let r = self.admin.lock().clone();
            if let Some(r) = r {
                r.complete(cid, Status::SUCCESS, dw0 as u64).await;
            }
        }
    }

    /// Takes the oldest reservation notification as a log page (an empty
    /// page when none waits); unless `rae`, unmasks the AEN.
    pub fn take_resv_log(&self, rae: bool) -> Vec<u8> {
        let mut a = self.aer.lock();
        if !rae {
            a.resv_masked = false;
        }
        match a.resv_log.pop_front() {
            Some((count, kind, nsid)) => {
                let more = a.resv_log.len();
                vtgt_protocol::nvme::log::encode_resv_notification(count, kind, more, nsid)
            }
            None => vtgt_protocol::nvme::log::encode_resv_notification(
                0,
                vtgt_protocol::nvme::log::resv_notify::EMPTY,
                0,
                0,
            ),
        }
    }

    /// Reads (and, unless `rae`, clears and unmasks) the changed NS list.
    pub fn take_changed(&self, rae: bool) -> Vec<u32> {
        let mut a = self.aer.lock();
        let v = a.changed.clone();
        if !rae {
            a.changed.clear();
            a.ns_masked = false;
        }
        v
    }

    pub fn log_error(&self, sqid: u16, cid: u16, status: Status, lba: u64, nsid: u32) {
        let n = self.error_count.fetch_add(1, Ordering::AcqRel) + 1;
        let mut e = self.errors.lock();
        if e.len() >= ERROR_LOG_ENTRIES {
            e.pop_back();
        }
        e.push_front(ErrorEntry {
            error_count: n,
            sqid,
            cid,
            status: status.to_field() | 1,
            lba,
            nsid,
        });
    }

    pub fn errors(&self) -> Vec<ErrorEntry> {
        self.errors.lock().iter().copied().collect()
    }

    pub fn property_get(&self, p: &PropertyCmd) -> Result<u64, Status> {
        let v = match (p.offset, p.eight) {
            (prop::CAP, true) => {
                let entries = if self.subsys.discovery {
                    ADMIN_QUEUE_ENTRIES
                } else {
                    QUEUE_ENTRIES
                };
                fabrics::cap_value(entries - 1, CAP_TIMEOUT)
            }
            (prop::VS, false) => fabrics::VS_1_4 as u64,
            (prop::CC, false) => self.cc.load(Ordering::Acquire) as u64,
            (prop::CSTS, false) => self.csts.load(Ordering::Acquire) as u64,
            _ => return Err(Status::generic(sc::INVALID_FIELD)),
        };
        Ok(v)
    }

    pub async fn property_set(&self, p: &PropertyCmd) -> Result<(), Status> {
        if p.offset != prop::CC || p.eight {
            return Err(Status::generic(sc::INVALID_FIELD));
        }
        let new = p.value as u32;
        let old = self.cc.swap(new, Ordering::AcqRel);
        if new & cc::EN != 0 && old & cc::EN == 0 {
            let iosqes = (new >> cc::IOSQES_SHIFT) & 0xf;
            let iocqes = (new >> cc::IOCQES_SHIFT) & 0xf;
            let mps = (new >> 7) & 0xf;
            let css = (new >> 4) & 7;
            let ok =
                (self.subsys.discovery || (iosqes == 6 && iocqes == 4)) && mps == 0 && css == 0;
            // A bad configuration is a controller fatal status, as nvmet does.
            self.csts
                .store(if ok { csts::RDY } else { csts::CFS }, Ordering::Release);
        } else if new & cc::EN == 0 && old & cc::EN != 0 {
            self.reset();
        }
        if new & cc::SHN_MASK != 0 && old & cc::SHN_MASK == 0 {
            for ns in self.subsys.namespaces().values() {
                let _ = ns.entry.volume.flush().await;
            }
            self.csts.fetch_or(csts::SHST_COMPLETE, Ordering::AcqRel);
        }
        Ok(())
    }

    /// CC.EN 1 -> 0: drop the I/O queues and outstanding AERs.
    fn reset(&self) {
        self.csts.store(0, Ordering::Release);
        for (_, t) in self.connected.lock().drain() {
            t.cancel();
        }
        self.io_inflight.lock().clear();
        let mut a = self.aer.lock();
        a.cids.clear();
        a.pending.clear();
    }

    pub fn remove_io_queue(&self, qid: u16) {
        self.connected.lock().remove(&qid);
        self.io_inflight.lock().remove(&qid);
    }

    /// Counts a connected I/O queue's commands in [`Self::in_flight`].
    pub fn track_io_queue(&self, qid: u16, inflight: Arc<Mutex<HashSet<u16>>>) {
        self.io_inflight.lock().insert(qid, inflight);
    }

    /// Commands received on the I/O queues and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.io_inflight
            .lock()
            .values()
            .map(|q| q.lock().len())
            .sum()
    }

    /// Takes engine notices for this host's nexus and turns the ones NVMe
    /// reports into asynchronous events.
    pub async fn drain_notices(&self) {
        let all = self.subsys.namespaces();
        for ns in all.values() {
            while let Some(n) = ns.entry.control.take(self.nexus).await {
                match n {
                    // The notice is per volume and this nexus; every NSID
                    // of this subsystem over that volume changed.
                    Notice::CapacityChanged | Notice::ReportedLunsChanged => {
                        let same: Vec<u32> = all
                            .values()
                            .filter(|o| Arc::ptr_eq(&o.entry.control, &ns.entry.control))
                            .map(|o| o.nsid)
                            .collect();
                        self.namespaces_changed(&same).await
                    }
                    Notice::RegistrationsPreempted => {
                        self.reservation_event(ns.nsid, resv_notify::REGISTRATION_PREEMPTED)
                            .await
                    }
                    Notice::ReservationsReleased => {
                        self.reservation_event(ns.nsid, resv_notify::RESERVATION_RELEASED)
                            .await
                    }
                    Notice::ReservationsPreempted => {
                        self.reservation_event(ns.nsid, resv_notify::RESERVATION_PREEMPTED)
                            .await
                    }
                    _ => {}
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Controllers {
    map: Mutex<HashMap<u16, Arc<Controller>>>,
    next: AtomicU16,
}

impl Controllers {
    pub fn get(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.map.lock().get(&cntlid).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Controller>> {
        self.map.lock().values().cloned().collect()
    }

    /// The controllers of one subsystem.
    pub fn of(&self, subsys: &Arc<Subsystem>) -> Vec<Arc<Controller>> {
        self.map
            .lock()
            .values()
            .filter(|c| Arc::ptr_eq(&c.subsys, subsys))
            .cloned()
            .collect()
    }

    fn allocate(&self) -> Option<u16> {
        let map = self.map.lock();
        for _ in 0..0xffefu32 {
            // CNTLIDs 1..=FFEFh; higher values are reserved.
            let id = (self.next.fetch_add(1, Ordering::Relaxed) % 0xffef) + 1;
            if !map.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    pub fn teardown(&self, cntlid: u16, why: &str) {
        if let Some(c) = self.map.lock().remove(&cntlid) {
            info!(cntlid, host = %c.hostnqn, subsys = %c.subsys.nqn, why, "NVMe controller torn down");
            c.kill.cancel();
        }
    }
}

/// A failed Connect: status and the DW0 result.
pub type ConnectError = (Status, u64);

fn invalid_param(in_data: bool, off: u16) -> ConnectError {
    (
        Status::specific(sc::CONNECT_INVALID_PARAM),
        invalid_param_result(in_data, off),
    )
}

fn parse_data(data: &[u8]) -> Result<ConnectData, ConnectError> {
    ConnectData::parse(data).map_err(|e| match e {
        ConnectDataError::Short => (Status::generic(sc::SGL_INVALID_DATA_LEN), 0),
        ConnectDataError::BadSubNqn => invalid_param(true, connect_off::SUBNQN),
        ConnectDataError::BadHostNqn => invalid_param(true, connect_off::HOSTNQN),
    })
}

/// Admin-queue Connect: checks the subsystem and host, allocates a
/// controller and starts its watchdog. Counted in the login metrics by
/// result, under the subsystem's NQN when it exists.
pub async fn connect_admin(
    shared: &Arc<NvmeShared>,
    cmd: &ConnectCmd,
    data: &[u8],
) -> Result<Arc<Controller>, ConnectError> {
    let res = admit(shared, cmd, data).await;
    let subsys = ConnectData::parse(data)
        .ok()
        .and_then(|d| shared.subsystem(&d.subnqn));
    let result = match &res {
        Ok(_) => "success",
        Err((s, _)) if *s == Status::specific(sc::CONNECT_INVALID_HOST) => "not_authorized",
        Err(_) if subsys.is_none() => "not_found",
        Err((s, _)) if *s == Status::specific(sc::CONNECT_CTRL_BUSY) => "target_error",
        Err(_) => "initiator_error",
    };
    let target = subsys.as_ref().map_or("unknown", |s| s.nqn.as_str());
    crate::metrics::login("nvme", target, result);
    res
}

async fn admit(
    shared: &Arc<NvmeShared>,
    cmd: &ConnectCmd,
    data: &[u8],
) -> Result<Arc<Controller>, ConnectError> {
    if cmd.recfmt != 0 {
        return Err((Status::specific(sc::CONNECT_INCOMPATIBLE_FORMAT), 0));
    }
    let d = parse_data(data)?;
    let subsys = shared
        .subsystem(&d.subnqn)
        .ok_or_else(|| invalid_param(true, connect_off::SUBNQN))?;
    if !subsys.host_allowed(&d.hostnqn) {
        warn!(host = %d.hostnqn, subsys = %d.subnqn, "NVMe host not allowed");
        return Err((Status::specific(sc::CONNECT_INVALID_HOST), 0));
    }
    if d.cntlid != CNTLID_DYNAMIC && d.cntlid != 0xfffe {
        return Err(invalid_param(true, connect_off::CNTLID));
    }
    if cmd.sqsize == 0 || cmd.sqsize >= ADMIN_QUEUE_ENTRIES {
        // IPO names SQSIZE in the SQE (byte 44).
        return Err(invalid_param(false, 44));
    }
    let cntlid = shared
        .controllers
        .allocate()
        .ok_or((Status::specific(sc::CONNECT_CTRL_BUSY), 0))?;
    let nexus = shared.nexus.id(&d.hostnqn, &d.hostid, &subsys.nqn);
    let ctrl = Arc::new(Controller {
        cntlid,
        subsys: subsys.clone(),
        hostnqn: d.hostnqn.clone(),
        hostid: d.hostid,
        nexus,
        cc: AtomicU32::new(0),
        csts: AtomicU32::new(0),
        kato_ms: AtomicU32::new(cmd.kato_ms),
        last_traffic: Mutex::new(Instant::now()),
        kill: shared.shutdown.child_token(),
        aer: Mutex::new(Aer::default()),
        aec: AtomicU32::new(0),
        admin: Mutex::new(None),
        io_queues: AtomicU16::new(MAX_IO_QUEUES),
        connected: Mutex::new(HashMap::new()),
        io_inflight: Mutex::new(HashMap::new()),
        vwc: AtomicBool::new(true),
        resv_mask: Mutex::new(HashMap::new()),
        errors: Mutex::new(VecDeque::new()),
        error_count: AtomicU64::new(0),
        stats: Stats::default(),
        created: Instant::now(),
    });
    // Listed before its namespaces are read: a live change publishes the
    // new namespaces before it walks the controllers, so either it sees
    // this one or this one sees the new namespaces (or both).
    shared.controllers.map.lock().insert(cntlid, ctrl.clone());
    if !shared
        .subsystem(&subsys.nqn)
        .is_some_and(|s| Arc::ptr_eq(&s, &subsys))
    {
        // Removed live while we connected.
        shared.controllers.map.lock().remove(&cntlid);
        return Err(invalid_param(true, connect_off::SUBNQN));
    }
    // Reservations match this host by its Host Identifier.
    let who = super::pr::identity(&d.hostid);
    for ns in subsys.namespaces().values() {
        ns.entry.control.register_nexus(nexus, None).await;
        ns.entry.control.identify(nexus, who.clone()).await;
    }
    info!(cntlid, host = %d.hostnqn, subsys = %subsys.nqn, kato_ms = cmd.kato_ms, "NVMe controller created");
    tokio::spawn(watchdog(shared.clone(), ctrl.clone()));
    Ok(ctrl)
}

/// I/O-queue Connect: the named controller must exist, belong to the same
/// host and subsystem, be enabled, and not have this queue yet.
pub fn connect_io(
    shared: &Arc<NvmeShared>,
    cmd: &ConnectCmd,
    data: &[u8],
) -> Result<(Arc<Controller>, CancellationToken), ConnectError> {
    if cmd.recfmt != 0 {
        return Err((Status::specific(sc::CONNECT_INCOMPATIBLE_FORMAT), 0));
    }
    let d = parse_data(data)?;
    let ctrl = shared
        .controllers
        .get(d.cntlid)
        .ok_or_else(|| invalid_param(true, connect_off::CNTLID))?;
    if ctrl.subsys.nqn != d.subnqn {
        return Err(invalid_param(true, connect_off::SUBNQN));
    }
    if ctrl.hostnqn != d.hostnqn || ctrl.hostid != d.hostid {
        return Err(invalid_param(true, connect_off::HOSTNQN));
    }
    if ctrl.subsys.discovery || !ctrl.enabled() {
        return Err((Status::generic(sc::CMD_SEQ_ERROR), 0));
    }
    if cmd.qid > ctrl.io_queues.load(Ordering::Acquire) {
        // IPO names QID in the SQE (byte 42).
        return Err(invalid_param(false, 42));
    }
    if cmd.sqsize == 0 || cmd.sqsize >= QUEUE_ENTRIES {
        return Err(invalid_param(false, 44));
    }
    let mut conn = ctrl.connected.lock();
    if conn.contains_key(&cmd.qid) {
        return Err(invalid_param(false, 42));
    }
    let token = ctrl.kill.child_token();
    conn.insert(cmd.qid, token.clone());
    drop(conn);
    ctrl.touch();
    Ok((ctrl, token))
}

/// Enforces KATO (a silent host's controller is torn down) and forwards
/// engine notices as asynchronous events.
async fn watchdog(shared: Arc<NvmeShared>, ctrl: Arc<Controller>) {
    let mut tick = tokio::time::interval(WATCH_TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctrl.kill.cancelled() => break,
        }
        let kato = ctrl.kato();
        if !kato.is_zero() && ctrl.last_traffic.lock().elapsed() > kato {
            warn!(cntlid = ctrl.cntlid, host = %ctrl.hostnqn, "keep-alive timeout");
            crate::metrics::keep_alive_timeout(&ctrl.subsys.nqn);
            shared
                .controllers
                .teardown(ctrl.cntlid, "keep-alive timeout");
            break;
        }
        ctrl.drain_notices().await;
    }
}
