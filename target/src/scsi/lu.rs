//! A logical unit: the identity it reports, its mode parameters and the
//! engine objects it executes against.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use vtgt_engine::{ItNexus, LuControl, NexusId, Notice, Volume};

use super::alua::Alua;
use super::mode::ModeParams;
use super::xcopy::CopyManager;

/// What a LU says about itself in INQUIRY and the VPD pages. Everything is
/// configuration-derived so that designators survive restarts.
#[derive(Debug, Clone)]
pub struct LuIdentity {
    /// T10 vendor identification (8 ASCII characters, padded).
    pub vendor: String,
    /// Product identification (16 characters).
    pub product: String,
    /// Product revision level (4 characters).
    pub revision: String,
    pub serial: String,
    /// Basis of the NAA designator; from `Volume::stable_id()`.
    pub naa_id: u64,
    /// iSCSI target name, for the SCSI name string designator.
    pub target_name: String,
    /// Not used for INQUIRY any more: VPD 83h reports the port the command
    /// came through ([`super::TargetPort`]). Kept for existing constructors.
    pub relative_port: u16,
    pub port_group: u16,
}

/// One direct-access logical unit.
#[derive(Debug)]
pub struct LogicalUnit {
    pub lun: u64,
    control: Arc<LuControl>,
    identity: LuIdentity,
    /// Mode parameters; MODE SELECT replaces them as a whole.
    mode: Mutex<ModeParams>,
    /// Copies of the mode bits the fast path and sense building need,
    /// readable without the lock.
    wce: AtomicBool,
    d_sense: AtomicBool,
    swp: AtomicBool,
    /// Nexuses already registered with the control state, so raise_all
    /// reaches them; checked on every command without awaiting.
    nexuses: RwLock<HashSet<NexusId>>,
    /// Per-volume metric handles, resolved once.
    pub metrics: Arc<crate::metrics::VolumeMetrics>,
    /// Target port groups and their access states.
    alua: Alua,
    /// Results of this LU's EXTENDED COPY commands.
    copies: CopyManager,
    /// Removable medium (INQUIRY RMB): START STOP UNIT LOEJ ejects and
    /// loads it, PREVENT ALLOW MEDIUM REMOVAL guards it.
    removable: AtomicBool,
    /// Whether the medium is loaded; always, for a non-removable LU.
    medium_present: AtomicBool,
    /// Nexuses that have prevented medium removal (SPC-4 6.13).
    prevent: Mutex<HashSet<NexusId>>,
    /// The SANITIZE operation state (SBC-4 4.11).
    sanitize: Arc<super::sanitize::SanitizeState>,
    /// Bandwidth cap for SANITIZE OVERWRITE, bytes per second; 0: none.
    sanitize_rate: AtomicU64,
}

impl LogicalUnit {
    pub fn new(lun: u64, control: Arc<LuControl>, identity: LuIdentity) -> Arc<Self> {
        let mode = ModeParams::default();
        let metrics = crate::metrics::VolumeMetrics::new(control.exposure().volume().name());
        Arc::new(Self {
            metrics,
            lun,
            control,
            identity,
            wce: AtomicBool::new(mode.wce),
            d_sense: AtomicBool::new(mode.d_sense),
            swp: AtomicBool::new(mode.swp),
            mode: Mutex::new(mode),
            nexuses: RwLock::new(HashSet::new()),
            alua: Alua::default(),
            copies: CopyManager::default(),
            removable: AtomicBool::new(false),
            medium_present: AtomicBool::new(true),
            prevent: Mutex::new(HashSet::new()),
            sanitize: Arc::default(),
            sanitize_rate: AtomicU64::new(0),
        })
    }

    pub fn volume(&self) -> &Arc<Volume> {
        self.control.exposure().volume()
    }

    pub fn control(&self) -> &Arc<LuControl> {
        &self.control
    }

    pub fn identity(&self) -> &LuIdentity {
        &self.identity
    }

    pub fn alua(&self) -> &Alua {
        &self.alua
    }

    pub(crate) fn copy_manager(&self) -> &CopyManager {
        &self.copies
    }

    /// Registers a nexus with the LU's control state. `initial` is the unit
    /// attention a nexus gets the first time it is seen (the transport may
    /// pass `Some(Notice::PowerOn)` for logins after a restart). Commands
    /// register unknown nexuses themselves, with no unit attention.
    pub async fn register_nexus(&self, nexus: NexusId, initial: Option<Notice>) {
        if self.nexuses.read().contains(&nexus) {
            return;
        }
        self.control.register_nexus(nexus, initial).await;
        self.nexuses.write().insert(nexus);
    }

    /// Registers a nexus seen issuing a command, with the identity
    /// reservations match it by (`who` runs only the first time).
    pub async fn attach(&self, nexus: NexusId, who: impl FnOnce() -> ItNexus) {
        if self.nexuses.read().contains(&nexus) {
            return;
        }
        self.control.register_nexus(nexus, None).await;
        self.control.identify(nexus, who()).await;
        self.nexuses.write().insert(nexus);
    }

    /// Whether writes must reach stable storage before status (WCE = 0).
    pub fn write_cache_enabled(&self) -> bool {
        self.wce.load(Ordering::Acquire)
    }

    /// Whether sense data is returned in descriptor format (D_SENSE).
    pub fn descriptor_sense(&self) -> bool {
        self.d_sense.load(Ordering::Acquire)
    }

    /// Whether the medium is software write protected (SWP).
    pub fn write_protected(&self) -> bool {
        self.swp.load(Ordering::Acquire)
    }

    pub(crate) fn mode(&self) -> ModeParams {
        *self.mode.lock()
    }

    /// Replaces the mode parameters; returns whether anything changed.
    pub(crate) fn set_mode(&self, next: ModeParams) -> bool {
        let mut m = self.mode.lock();
        let changed = *m != next;
        *m = next;
        self.wce.store(next.wce, Ordering::Release);
        self.d_sense.store(next.d_sense, Ordering::Release);
        self.swp.store(next.swp, Ordering::Release);
        changed
    }

    /// Makes the medium removable (configuration: `removable = true`).
    pub fn set_removable(&self, removable: bool) {
        self.removable.store(removable, Ordering::Release);
    }

    pub fn removable(&self) -> bool {
        self.removable.load(Ordering::Acquire)
    }

    pub fn medium_present(&self) -> bool {
        self.medium_present.load(Ordering::Acquire)
    }

    pub(crate) fn set_medium_present(&self, present: bool) {
        self.medium_present.store(present, Ordering::Release);
    }

    /// Records whether `nexus` prevents medium removal.
    pub(crate) fn set_prevent(&self, nexus: NexusId, prevent: bool) {
        let mut p = self.prevent.lock();
        if prevent {
            p.insert(nexus);
        } else {
            p.remove(&nexus);
        }
    }

    /// Whether any nexus prevents medium removal.
    pub fn removal_prevented(&self) -> bool {
        !self.prevent.lock().is_empty()
    }

    /// Ends the medium removal prevention of one nexus (I_T nexus loss).
    pub fn clear_prevent(&self, nexus: NexusId) {
        self.prevent.lock().remove(&nexus);
    }

    /// Ends every nexus's medium removal prevention (resets).
    pub fn clear_all_prevent(&self) {
        self.prevent.lock().clear();
    }

    pub(crate) fn sanitize_state(&self) -> &Arc<super::sanitize::SanitizeState> {
        &self.sanitize
    }

    /// Caps SANITIZE OVERWRITE at `bytes_per_sec` (0: no cap), so that an
    /// overwrite does not take all of the backend's bandwidth.
    pub fn set_sanitize_rate(&self, bytes_per_sec: u64) {
        self.sanitize_rate.store(bytes_per_sec, Ordering::Release);
    }

    pub fn sanitize_rate(&self) -> u64 {
        self.sanitize_rate.load(Ordering::Acquire)
    }

    /// Whether the fast path must leave every command to the control path:
    /// no medium, or a sanitize running or failed.
    pub fn media_blocked(&self) -> bool {
        !self.medium_present() || self.sanitize.blocks_media()
    }
}
