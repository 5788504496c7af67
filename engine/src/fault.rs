//! Why an I/O left the fast path. Every fault is counted.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// Not a plain read or write: every other command goes to the control path.
    Command,
    /// The nexus may not do this now (pending notice, reservation, ALUA state).
    Permission,
    /// The range is outside the volume.
    OutOfRange,
    /// No cached mapping covers the LBA.
    NoMapping,
    /// The I/O crosses an extent or stripe boundary.
    CrossesBoundary,
    /// The redirect entry has fault-on-read set.
    FaultOnRead,
    /// The redirect entry has fault-on-write set.
    FaultOnWrite,
    /// An overlapping write is in flight.
    SerializationConflict,
    /// The journal has no room.
    JournalFull,
    /// The backend reported an error.
    BackendError,
    /// CDB flags the fast path does not handle (protection, bad fields).
    Flags,
}

impl FaultReason {
    pub const ALL: [FaultReason; 11] = [
        FaultReason::Command,
        FaultReason::Permission,
        FaultReason::OutOfRange,
        FaultReason::NoMapping,
        FaultReason::CrossesBoundary,
        FaultReason::FaultOnRead,
        FaultReason::FaultOnWrite,
        FaultReason::SerializationConflict,
        FaultReason::JournalFull,
        FaultReason::BackendError,
        FaultReason::Flags,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultReason::Command => "command",
            FaultReason::Permission => "permission",
            FaultReason::OutOfRange => "out_of_range",
            FaultReason::NoMapping => "no_mapping",
            FaultReason::CrossesBoundary => "crosses_boundary",
            FaultReason::FaultOnRead => "fault_on_read",
            FaultReason::FaultOnWrite => "fault_on_write",
            FaultReason::SerializationConflict => "serialization_conflict",
            FaultReason::JournalFull => "journal_full",
            FaultReason::BackendError => "backend_error",
            FaultReason::Flags => "flags",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Lock-free counters of fast-path completions and faults by reason.
#[derive(Debug, Default)]
pub struct FaultCounters {
    fast_path: AtomicU64,
    faults: [AtomicU64; 11],
}

impl FaultCounters {
    pub fn fast_path_hit(&self) {
        self.fast_path.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fault(&self, reason: FaultReason) {
        self.faults[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fast_path_hits(&self) -> u64 {
        self.fast_path.load(Ordering::Relaxed)
    }

    pub fn count(&self, reason: FaultReason) -> u64 {
        self.faults[reason.index()].load(Ordering::Relaxed)
    }
}
