//! The control path's per-LU state: pending notices (SCSI unit attentions,
//! NVMe asynchronous events) per nexus and reservations. Only the control
//! path changes it, and every change republishes the fast path's access
//! state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::fastpath::{Access, AccessState, Exposure};
use crate::reservation::{ItNexus, PrEffects, PrError, PrRequest, Reservations, Standing};
use crate::volume::blocking;
use crate::NexusId;

/// A condition a nexus must be told about before its next command succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notice {
    PowerOn,
    Reset,
    ModeParametersChanged,
    CapacityChanged,
    ReportedLunsChanged,
    RegistrationsPreempted,
    ReservationsPreempted,
    ReservationsReleased,
    AsymmetricAccessStateChanged,
}

#[derive(Debug, Default)]
struct CpState {
    known: HashSet<NexusId>,
    notices: HashMap<NexusId, VecDeque<Notice>>,
    pr: Reservations,
    /// Nexuses denied fast-path I/O whatever their notices (e.g. their
    /// target port is in a standby state).
    blocked: HashSet<NexusId>,
    /// Notices queued since the LU was created (merged duplicates aside).
    raised: u64,
}

/// A snapshot of the control state, for metrics and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Notices waiting to be delivered, over all nexuses.
    pub pending_notices: usize,
    /// Notices raised since the LU was created.
    pub raised_notices: u64,
    /// Persistent reservation registrations.
    pub registrations: usize,
    /// Whether a persistent or SPC-2 reservation is held.
    pub reserved: bool,
}

/// Control-path state of one exposed LU.
#[derive(Debug)]
pub struct LuControl {
    exposure: Arc<Exposure>,
    state: Mutex<CpState>,
    /// Where persistent reservations are kept (APTPL); `None` keeps them in
    /// memory only.
    pr_path: Option<PathBuf>,
}

/// Upper bound on queued notices per nexus; older duplicates are merged.
const MAX_NOTICES: usize = 16;

impl LuControl {
    pub fn new(exposure: Arc<Exposure>) -> Arc<Self> {
        Arc::new(Self {
            exposure,
            state: Mutex::new(CpState::default()),
            pr_path: None,
        })
    }

    /// Control state whose persistent reservations live in `path`: loaded
    /// from it now (if it exists) and written to it whenever they change
    /// while APTPL is set.
    pub async fn with_reservation_file(
        exposure: Arc<Exposure>,
        path: &Path,
    ) -> std::io::Result<Arc<Self>> {
        let pr = Reservations::load(path)?;
        // The fast path must see a restored reservation before any I/O.
        let mut next = AccessState::open();
        next.default = pr.default_media();
        let st = CpState {
            pr,
            ..CpState::default()
        };
        let fp = exposure.clone();
        let me = Arc::new(Self {
            exposure,
            state: Mutex::new(st),
            pr_path: Some(path.to_path_buf()),
        });
        if next.default != Access::ALL {
            fp.publish(next).await;
        }
        Ok(me)
    }

    pub fn exposure(&self) -> &Arc<Exposure> {
        &self.exposure
    }

    /// Records a nexus. The first time one is seen it gets `initial`.
    pub async fn register_nexus(&self, nexus: NexusId, initial: Option<Notice>) {
        let mut st = self.state.lock().await;
        if st.known.insert(nexus) {
            if let Some(n) = initial {
                push(&mut st, nexus, n);
            }
            self.republish(&st).await;
        }
    }

    /// Raises `notice` for every known nexus except `except`.
    pub async fn raise_all(&self, notice: Notice, except: Option<NexusId>) {
        let mut st = self.state.lock().await;
        let targets: Vec<NexusId> = st
            .known
            .iter()
            .copied()
            .filter(|n| Some(*n) != except)
            .collect();
        for n in targets {
            push(&mut st, n, notice);
        }
        self.republish(&st).await;
    }

    /// Raises `notice` for one nexus.
    pub async fn raise(&self, nexus: NexusId, notice: Notice) {
        let mut st = self.state.lock().await;
        st.known.insert(nexus);
        push(&mut st, nexus, notice);
        self.republish(&st).await;
    }

    /// The oldest pending notice for `nexus`, without removing it.
    pub async fn peek(&self, nexus: NexusId) -> Option<Notice> {
        let st = self.state.lock().await;
        st.notices.get(&nexus).and_then(|q| q.front().copied())
    }

    /// Removes and returns the oldest pending notice for `nexus`.
    pub async fn take(&self, nexus: NexusId) -> Option<Notice> {
        let mut st = self.state.lock().await;
        let q = st.notices.get_mut(&nexus)?;
        let n = q.pop_front();
        if q.is_empty() {
            st.notices.remove(&nexus);
            self.republish(&st).await;
        }
        n
    }

    /// How many notices are pending, over all nexuses.
    pub async fn pending_notices(&self) -> usize {
        self.state
            .lock()
            .await
            .notices
            .values()
            .map(|q| q.len())
            .sum()
    }

    pub async fn stats(&self) -> ControlStats {
        let st = self.state.lock().await;
        ControlStats {
            pending_notices: st.notices.values().map(|q| q.len()).sum(),
            raised_notices: st.raised,
            registrations: st.pr.keys().len(),
            reserved: st.pr.reservation().is_some() || st.pr.legacy_holder().is_some(),
        }
    }

    /// Drops every pending notice of `nexus`.
    pub async fn clear(&self, nexus: NexusId) {
        let mut st = self.state.lock().await;
        if st.notices.remove(&nexus).is_some() {
            self.republish(&st).await;
        }
    }

    /// Records who `nexus` is (initiator port and target port), which
    /// reservations are matched against.
    pub async fn identify(&self, nexus: NexusId, who: ItNexus) {
        let mut st = self.state.lock().await;
        st.known.insert(nexus);
        if st.pr.identify(nexus, who) {
            self.republish(&st).await;
        }
    }

    /// Reads the reservation state.
    pub async fn reservations<R>(&self, f: impl FnOnce(&Reservations) -> R) -> R {
        let st = self.state.lock().await;
        f(&st.pr)
    }

    /// How `nexus` stands against the reservations.
    pub async fn standing(&self, nexus: NexusId) -> Standing {
        self.state.lock().await.pr.standing(nexus)
    }

    /// Applies a persistent reservation request. The new state is made
    /// durable (when APTPL asks for it) before it takes effect; then the
    /// notices are raised and the fast path's access is republished, waiting
    /// for I/O a restriction affects. The caller aborts `aborted`'s tasks.
    pub async fn reservation_out(
        &self,
        nexus: NexusId,
        req: PrRequest,
    ) -> Result<PrEffects, PrError> {
        self.reservation_out_with(nexus, |_| Ok(Some(req))).await
    }

    /// [`reservation_out`](Self::reservation_out) with the request built
    /// from the current state under the same lock, for rules that depend on
    /// it (NVMe register/replace, CPTPL "no change"). `Ok(None)` from
    /// `build` succeeds without a change.
    pub async fn reservation_out_with(
        &self,
        nexus: NexusId,
        build: impl FnOnce(&Reservations) -> Result<Option<PrRequest>, PrError>,
    ) -> Result<PrEffects, PrError> {
        let mut st = self.state.lock().await;
        let Some(req) = build(&st.pr)? else {
            return Ok(PrEffects::default());
        };
        let mut next = st.pr.clone();
        let fx = next.apply(nexus, req)?;
        if !fx.changed {
            return Ok(fx);
        }
        if let Some(path) = &self.pr_path {
            if next.aptpl || st.pr.aptpl {
                let (snap, path) = (next.clone(), path.clone());
                blocking(move || Ok(snap.persist(&path)?))
                    .await
                    .map_err(|e| {
                        tracing::error!("cannot persist reservations: {e}");
                        PrError::Storage
                    })?;
            }
        }
        st.pr = next;
        for (n, notice) in &fx.notices {
            push(&mut st, *n, *notice);
        }
        self.republish(&st).await;
        Ok(fx)
    }

    /// SPC-2 RESERVE.
    pub async fn legacy_reserve(&self, nexus: NexusId) -> Result<(), PrError> {
        let mut st = self.state.lock().await;
        if st.pr.legacy_reserve(nexus)? {
            self.republish(&st).await;
        }
        Ok(())
    }

    /// SPC-2 RELEASE.
    pub async fn legacy_release(&self, nexus: NexusId) -> Result<(), PrError> {
        let mut st = self.state.lock().await;
        if st.pr.legacy_release(nexus)? {
            self.republish(&st).await;
        }
        Ok(())
    }

    /// An I_T nexus is gone: its SPC-2 reservation ends.
    pub async fn nexus_lost(&self, nexus: NexusId) {
        let mut st = self.state.lock().await;
        if st.pr.clear_legacy_of(nexus) {
            self.republish(&st).await;
        }
    }

    /// LU reset: SPC-2 reservations end, persistent ones stay.
    pub async fn reset_reservations(&self) {
        let mut st = self.state.lock().await;
        if st.pr.clear_legacy() {
            self.republish(&st).await;
        }
    }

    /// Denies (or restores) a nexus's fast-path access independently of
    /// notices; its commands then all reach the control path.
    pub async fn set_blocked(&self, nexus: NexusId, blocked: bool) {
        let mut st = self.state.lock().await;
        let changed = if blocked {
            st.blocked.insert(nexus)
        } else {
            st.blocked.remove(&nexus)
        };
        if changed {
            self.republish(&st).await;
        }
    }

    async fn republish(&self, st: &CpState) {
        let mut next = AccessState::open();
        next.default = st.pr.default_media();
        for n in st
            .known
            .iter()
            .chain(st.notices.keys())
            .chain(st.blocked.iter())
        {
            let a = if st.notices.contains_key(n) || st.blocked.contains(n) {
                Access::NONE
            } else {
                st.pr.standing(*n).media()
            };
            if a != next.default {
                next.overrides.insert(*n, a);
            }
        }
        self.exposure.publish(next).await;
    }
}

fn push(st: &mut CpState, nexus: NexusId, notice: Notice) {
    let q = st.notices.entry(nexus).or_default();
    if q.contains(&notice) {
        return;
    }
    if q.len() >= MAX_NOTICES {
        q.pop_front();
    }
    q.push_back(notice);
    st.raised += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use crate::fastpath::IoKind;
    use crate::fault::FaultReason;
    use crate::volume::Volume;

    #[tokio::test]
    async fn stats_count_raised_notices_and_reservations() {
        use crate::reservation::PrType;
        let v = Volume::simple("s", Arc::new(MemBackend::new(8 * 512).unwrap()), 512);
        let cp = LuControl::new(Exposure::new(v));
        for n in 1..=3 {
            cp.identify(n, ItNexus::new(&format!("host-{n}"), 0)).await;
        }
        cp.raise_all(Notice::CapacityChanged, Some(1)).await;
        // A duplicate merges with the pending one and is not counted.
        cp.raise(2, Notice::CapacityChanged).await;
        cp.raise(2, Notice::ModeParametersChanged).await;
        let s = cp.stats().await;
        assert_eq!((s.pending_notices, s.raised_notices), (3, 3));
        assert_eq!(cp.take(2).await, Some(Notice::CapacityChanged));
        let s = cp.stats().await;
        assert_eq!((s.pending_notices, s.raised_notices), (2, 3));
        assert!(!s.reserved);
        let reg = PrRequest::Register {
            key: 0,
            new_key: 7,
            ignore_existing: false,
            all_ports: false,
            aptpl: false,
            also: vec![],
        };
        cp.reservation_out(1, reg).await.unwrap();
        let kind = PrType::WriteExclusive;
        cp.reservation_out(1, PrRequest::Reserve { key: 7, kind })
            .await
            .unwrap();
        let s = cp.stats().await;
        assert_eq!((s.registrations, s.reserved), (1, true));
    }

    #[tokio::test]
    async fn request_built_under_the_lock_and_persist_alone() {
        let v = Volume::simple("c", Arc::new(MemBackend::new(8 * 512).unwrap()), 512);
        let cp = LuControl::new(Exposure::new(v));
        cp.identify(1, ItNexus::new("nvme-hostid:01", 0)).await;
        // `None` is a successful no-op.
        let fx = cp.reservation_out_with(1, |_| Ok(None)).await.unwrap();
        assert!(!fx.changed);
        // The builder sees the state: register only if unregistered.
        let build = |r: &Reservations| {
            Ok(r.key_of(1).is_none().then_some(PrRequest::Register {
                key: 0,
                new_key: 7,
                ignore_existing: false,
                all_ports: true,
                aptpl: r.aptpl,
                also: vec![],
            }))
        };
        assert!(cp.reservation_out_with(1, build).await.unwrap().changed);
        assert!(!cp.reservation_out_with(1, build).await.unwrap().changed);
        // APTPL set without touching registrations or the generation.
        let gen = cp.reservations(|r| r.generation).await;
        let fx = cp
            .reservation_out(1, PrRequest::Persist { aptpl: true })
            .await
            .unwrap();
        assert!(fx.changed);
        assert!(cp.reservations(|r| r.aptpl).await);
        assert_eq!(cp.reservations(|r| r.generation).await, gen);
        assert_eq!(cp.reservations(|r| r.keys()).await, vec![7]);
        let fx = cp
            .reservation_out(1, PrRequest::Persist { aptpl: true })
            .await
            .unwrap();
        assert!(!fx.changed, "unchanged");
    }

    #[tokio::test]
    async fn notice_blocks_fast_path_until_taken() {
        let v = Volume::simple("c", Arc::new(MemBackend::new(8 * 512).unwrap()), 512);
        let cp = LuControl::new(Exposure::new(v));
        cp.register_nexus(1, Some(Notice::PowerOn)).await;
        cp.register_nexus(2, None).await;
        let fp = cp.exposure().clone();
        assert_eq!(
            fp.admit(1, IoKind::Read, 0, 1).err(),
            Some(FaultReason::Permission)
        );
        assert!(fp.admit(2, IoKind::Read, 0, 1).is_ok());
        assert_eq!(cp.take(1).await, Some(Notice::PowerOn));
        assert!(fp.admit(1, IoKind::Read, 0, 1).is_ok());
        cp.raise_all(Notice::ModeParametersChanged, Some(2)).await;
        assert_eq!(cp.peek(1).await, Some(Notice::ModeParametersChanged));
        assert_eq!(cp.peek(2).await, None);
        // Re-registering a known nexus raises nothing new.
        cp.register_nexus(2, Some(Notice::PowerOn)).await;
        assert_eq!(cp.peek(2).await, None);
        // Blocking is independent of notices.
        cp.set_blocked(2, true).await;
        assert_eq!(
            fp.admit(2, IoKind::Read, 0, 1).err(),
            Some(FaultReason::Permission)
        );
        cp.set_blocked(2, false).await;
        assert!(fp.admit(2, IoKind::Read, 0, 1).is_ok());
    }
}
