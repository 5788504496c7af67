//! The vtgt storage virtualization engine.
//!
//! A [`Volume`] is a composition executed from an extent map. Reads and writes
//! that the published state allows run on the fast path ([`fastpath`]);
//! everything else faults to the control path ([`control`]), which alone
//! changes metadata and republishes the state the fast path reads.
//! Nothing here knows about iSCSI or NVMe.

pub mod backend;
pub mod control;
pub mod copy;
pub mod error;
pub mod extent;
pub mod fastpath;
pub mod fault;
mod fnv;
pub mod fpcache;
pub mod journal;
pub mod layout;
pub mod mirror;
pub mod rangelock;
pub mod reservation;
mod retired;
pub mod tags;
pub mod volume;
pub mod wjournal;

pub use backend::{Backend, FaultyBackend, FileBackend, MemBackend};
pub use control::{ControlStats, LuControl, Notice};
pub use error::EngineError;
pub use extent::LegState;
pub use fastpath::{Access, AccessState, Admission, Exposure, IoKind};
pub use fault::{FaultCounters, FaultReason};
pub use layout::Layout;
pub use mirror::{write_atomically, ResyncStatus};
pub use rangelock::{RangeGuard, RangeLocks};
pub use reservation::{ItNexus, PrError, PrRequest, PrType, Reservations, Standing};
pub use volume::{MigrationLog, MigrationRecord, MirrorStatus, ReconcileReport, Volume};

/// Identity of an I_T nexus (or NVMe host/controller pair), assigned by the
/// front end. The engine only compares these.
pub type NexusId = u64;
