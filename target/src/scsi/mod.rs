//! The SCSI command layer (SAM-5, SPC-4, SBC-3) over the engine.
//!
//! The transport hands every command to [`execute`]. Plain reads and writes
//! try the engine's fast path; everything else, and every fast-path fault,
//! runs here on the control path.

use bytes::Bytes;
use vtgt_engine::NexusId;

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// One command as the transport delivers it.
#[derive(Debug, Clone)]
pub struct ScsiCommand<'a> {
    /// The CDB (its real length, up to 16 bytes; longer with AHS).
    pub cdb: &'a [u8],
    /// Data-out the initiator sent, at most `edtl` bytes.
    pub data_out: Bytes,
    /// Expected data transfer length from the transport header.
    pub edtl: u32,
    /// The transport's direction bits (iSCSI R and W flags).
    pub read: bool,
    pub write: bool,
    /// The I_T nexus issuing the command.
    pub nexus: NexusId,
    /// The LUNs of this target the nexus may see, for REPORT LUNS.
    pub luns: &'a [u64],
}

/// The outcome of a command.
#[derive(Debug, Clone, Default)]
pub struct ScsiResult {
    pub status: u8,
    /// Data-in; may be longer than `edtl`, the transport truncates it and
    /// reports the overflow as a residual.
    pub data_in: Bytes,
    /// Sense data (fixed or descriptor format) with CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// For commands with data-out: how many bytes the CDB asked for, so the
    /// transport can report overflow or underflow against `edtl`.
    pub data_out_len: Option<u32>,
}
