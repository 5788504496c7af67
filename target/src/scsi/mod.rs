//! The SCSI command layer (SAM-5, SPC-4, SBC-3) over the engine.
//!
//! The transport hands every command to [`execute`] (or [`execute_no_lu`]
//! for LUNs it does not have) and LOGICAL UNIT RESET to [`lun_reset`].
//! Plain reads and writes try the engine's fast path; everything else, and
//! every fast-path fault, runs here on the control path.
//!
//! One concept per module: [`lu`] (the logical unit), [`spc`] (TEST UNIT
//! READY, REQUEST SENSE, REPORT LUNS), [`inquiry`], [`mode`], [`opcodes`]
//! (command table, usage maps, REPORT SUPPORTED OPERATION CODES / TMFs),
//! [`sbc`] (block commands) and [`ua`] (unit attentions); [`provisioning`]
//! (UNMAP, WRITE SAME, GET LBA STATUS), [`atomic`] (COMPARE AND WRITE,
//! ORWRITE, WRITE ATOMIC), [`xcopy`] (EXTENDED COPY, RECEIVE COPY RESULTS)
//! and [`alua`] (target port groups).

use bytes::Bytes;
use vtgt_engine::{FaultReason, IoKind, NexusId, Notice};
use vtgt_protocol::scsi::cdb::{self, decode_rw, fast_rw, op, FieldError, RwKind};
use vtgt_protocol::scsi::sense::{Asc, Sense};

pub mod alua;
pub mod atomic;
pub mod inquiry;
pub mod lu;
pub mod medium;
pub mod mode;
pub mod opcodes;
pub mod pr;
pub mod provisioning;
pub mod sanitize;
pub mod sbc;
pub mod spc;
pub mod ua;
pub mod xcopy;

#[cfg(test)]
mod medium_tests;
#[cfg(test)]
mod pr_tests;
#[cfg(test)]
mod sbc2_tests;
#[cfg(test)]
mod tests;

pub use lu::{LogicalUnit, LuIdentity};

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
    /// The target port the command arrived through.
    pub port: TargetPort,
    /// The initiator port's transport identity (iSCSI "name,i,0x<isid>"),
    /// which reservations are keyed by; empty when unknown.
    pub initiator: &'a str,
}

/// A SCSI target port: its relative target port identifier and target port
/// group (SPC-4 §4.3.3, §5.16). For iSCSI, one per portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPort {
    pub relative_id: u16,
    pub group: u16,
}

impl Default for TargetPort {
    fn default() -> Self {
        Self {
            relative_id: 1,
            group: 1,
        }
    }
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
    /// Nexuses whose tasks on this LU the transport must abort (PERSISTENT
    /// RESERVE OUT / PREEMPT AND ABORT).
    pub aborted_nexuses: Vec<NexusId>,
}

/// Largest data transfer one command may move, in bytes; the iSCSI
/// transport accepts exactly this much (`iscsi::conn::MAX_IO_BYTES`).
pub const MAX_TRANSFER_BYTES: u32 = 32 << 20;
/// Maximum transfer length in blocks (Block Limits VPD page) at 512 bytes
/// per block: 64Ki blocks, so a 65536-block read-back of a deallocated
/// range fits one command. Longer transfers are INVALID FIELD IN CDB.
pub const MAX_TRANSFER_BLOCKS: u32 = MAX_TRANSFER_BYTES / 512;

/// Maximum transfer length in blocks for a block size: never more bytes
/// than the transport accepts.
pub fn max_transfer_blocks(block_size: u32) -> u32 {
    MAX_TRANSFER_BYTES / block_size.max(512)
}
/// Optimal transfer length granularity in blocks (4 KiB).
pub const OPTIMAL_GRANULARITY_BLOCKS: u32 = 8;

/// INVALID FIELD IN CDB for a decoder's field error.
pub(crate) fn field(e: FieldError) -> Sense {
    Sense::invalid_cdb_field(e.byte, e.bit)
}

impl ScsiResult {
    pub fn good() -> Self {
        Self::default()
    }

    /// GOOD with data-in, trimmed to the allocation length.
    pub fn data(mut data: Vec<u8>, alloc: usize) -> Self {
        data.truncate(alloc);
        Self {
            data_in: Bytes::from(data),
            ..Self::default()
        }
    }

    /// CHECK CONDITION with `sense` in fixed or descriptor format.
    pub fn check(sense: &Sense, descriptor: bool) -> Self {
        Self {
            status: status::CHECK_CONDITION,
            sense: Some(sense.encode(descriptor)),
            ..Self::default()
        }
    }
}

/// Executes one command on `lu`. Plain reads and writes try the engine's
/// fast path; a fault or backend error there sends them to the control
/// path, which re-checks everything.
pub async fn execute(lu: &LogicalUnit, cmd: ScsiCommand<'_>) -> ScsiResult {
    lu.attach(cmd.nexus, || pr::identity(&cmd)).await;
    alua::note_nexus(lu, cmd.nexus, cmd.port).await;
    match fast_rw(cmd.cdb) {
        Some(rw) => {
            if let Some(r) = fast_path(lu, &cmd, rw).await {
                return r;
            }
        }
        None => {
            // Every other command, and reads or writes with fields the fast
            // path does not serve, belong to the control path.
            let rw_opcode = matches!(
                cmd.cdb.first(),
                Some(0x08 | 0x0a | 0x28 | 0x2a | 0xa8 | 0xaa | 0x88 | 0x8a)
            );
            let reason = if rw_opcode {
                FaultReason::Flags
            } else {
                FaultReason::Command
            };
            lu.control().exposure().volume().counters.fault(reason);
        }
    }
    control_path(lu, &cmd).await
}

/// `None` means "fault to the control path".
async fn fast_path(lu: &LogicalUnit, cmd: &ScsiCommand<'_>, rw: cdb::RwCdb) -> Option<ScsiResult> {
    let exposure = lu.control().exposure();
    let vol = exposure.volume();
    if lu.media_blocked() {
        // No medium, or a sanitize: the control path reports which.
        vol.counters.fault(FaultReason::Command);
        return None;
    }
    if rw.blocks > max_transfer_blocks(vol.block_size()) {
        return None;
    }
    let bytes = rw.blocks as usize * vol.block_size() as usize;
    if rw.write && (cmd.data_out.len() < bytes || lu.write_protected()) {
        // A short data-out needs the control path's residual handling; a
        // write-protected medium its DATA PROTECT error.
        vol.counters.fault(FaultReason::Flags);
        return None;
    }
    let kind = if rw.write {
        IoKind::Write
    } else {
        IoKind::Read
    };
    let adm = exposure
        .admit(cmd.nexus, kind, rw.lba, rw.blocks as u64)
        .ok()?;
    if rw.write {
        let fua = rw.fua || !lu.write_cache_enabled();
        match adm.write(cmd.data_out.slice(..bytes), fua).await {
            Ok(()) => Some(ScsiResult {
                data_out_len: Some(bytes as u32),
                ..ScsiResult::good()
            }),
            Err(_) => {
                vol.counters.fault(FaultReason::BackendError);
                None
            }
        }
    } else {
        match adm.read().await {
            Ok(data) => Some(ScsiResult {
                data_in: data,
                ..ScsiResult::good()
            }),
            Err(_) => {
                vol.counters.fault(FaultReason::BackendError);
                None
            }
        }
    }
}

/// How many data-out bytes the CDB asks for, for commands that have any.
fn data_out_len(lu: &LogicalUnit, cdb: &[u8]) -> Option<u32> {
    if let Some(Ok(rw)) = decode_rw(cdb) {
        return (rw.kind != RwKind::Read).then(|| sbc::data_out_len(lu.volume(), &rw));
    }
    match cdb.first()? {
        &op::MODE_SELECT_6 | &op::MODE_SELECT_10 => cdb::decode_mode_select(cdb)
            .ok()
            .map(|m| m.param_len as u32),
        &op::PERSISTENT_RESERVE_OUT if cdb.len() >= 10 => Some(pr::param_len(cdb)),
        _ => atomic::data_out_len(lu.volume().block_size(), cdb)
            .or_else(|| provisioning::data_out_len(lu.volume().block_size(), cdb))
            .or_else(|| xcopy::data_out_len(cdb))
            .or_else(|| sanitize::data_out_len(cdb)),
    }
}

async fn control_path(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> ScsiResult {
    let out_len = data_out_len(lu, cmd.cdb);
    let mut r = match dispatch(lu, cmd).await {
        Ok(r) => r,
        Err(sense) => ScsiResult::check(&sense, lu.descriptor_sense()),
    };
    if r.data_out_len.is_none() {
        r.data_out_len = out_len;
    }
    r
}

/// Looks the command up in the opcode table and checks its CDB against the
/// usage map: unknown opcodes and service actions, short CDBs and reserved
/// bits all fail here.
fn admit_cdb(cdb: &[u8]) -> Result<&'static opcodes::CommandInfo, Sense> {
    let opcode = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    let info = if opcodes::has_service_actions(opcode) {
        if cdb.len() < 2 {
            return Err(Sense::invalid_cdb_field(0, None));
        }
        let sa = cdb::service_action(cdb);
        opcodes::lookup(opcode, sa).ok_or(Sense::invalid_cdb_field(1, Some(4)))?
    } else {
        opcodes::lookup(opcode, None).ok_or_else(Sense::invalid_opcode)?
    };
    opcodes::check_usage(info, cdb)?;
    Ok(info)
}

async fn dispatch(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    let cdb = cmd.cdb;
    let opcode = cdb.first().copied().unwrap_or(0xFF);
    // While a sanitize runs, only INQUIRY, REPORT LUNS and REQUEST SENSE
    // are processed (SBC-4 4.11.3); unit attentions wait until it ends.
    let sanitize = lu.sanitize_state();
    if sanitize.running() && !ua::exempt(opcode) {
        return Err(sanitize.in_progress());
    }
    // A pending unit attention is reported before anything else, except to
    // the commands SPC-4 5.14 exempts.
    let pending = if ua::exempt(opcode) {
        None
    } else {
        ua::take(lu, cmd.nexus).await
    };
    if let Some(s) = pending {
        return Err(s);
    }
    let info = admit_cdb(cdb)?;
    alua::check_access(lu, cmd)?;
    if pr::conflicts(lu, cmd, info).await {
        return Ok(pr::conflict());
    }
    if medium::needs_medium(info.opcode) {
        if !lu.medium_present() {
            return Err(medium::not_present());
        }
        if sanitize.failed() && info.opcode != sanitize::SANITIZE {
            return Err(sanitize::failed_sense());
        }
    }
    let vol = lu.volume();
    let data = |(d, alloc): (Vec<u8>, usize)| ScsiResult::data(d, alloc);
    Ok(match (info.opcode, info.sa) {
        (op::TEST_UNIT_READY, _) => ScsiResult::good(),
        (op::REQUEST_SENSE, _) => {
            // The sense data of the LU's state: a sanitize in progress (with
            // its progress), no medium, sanitize failure mode; otherwise a
            // pending unit attention.
            let state = if sanitize.running() {
                Some(sanitize.in_progress())
            } else if !lu.medium_present() {
                Some(medium::not_present())
            } else if sanitize.failed() {
                Some(sanitize::failed_sense())
            } else {
                ua::take(lu, cmd.nexus).await
            };
            data(spc::request_sense(cdb, state)?)
        }
        (op::INQUIRY, _) => data(inquiry::inquiry(lu, cdb, cmd.port)?),
        (op::REPORT_LUNS, _) => {
            let r = data(spc::report_luns(cdb, cmd.luns)?);
            // Reporting the LUN inventory clears that unit attention
            // (SPC-4 6.33).
            if lu.control().peek(cmd.nexus).await == Some(Notice::ReportedLunsChanged) {
                lu.control().take(cmd.nexus).await;
            }
            r
        }
        (op::MODE_SENSE_6 | op::MODE_SENSE_10, _) => data(mode::mode_sense(lu, cdb)?),
        (op::MODE_SELECT_6 | op::MODE_SELECT_10, _) => {
            mode::mode_select(lu, cmd).await?;
            ScsiResult::good()
        }
        (op::MAINTENANCE_IN, Some(cdb::sa::REPORT_SUPPORTED_OPCODES)) => {
            data(opcodes::report_opcodes(cdb)?)
        }
        (op::MAINTENANCE_IN, Some(alua::SA_REPORT_TPG)) => data(alua::report(lu, cdb)?),
        (alua::MAINTENANCE_OUT, Some(alua::SA_SET_TPG)) => ScsiResult {
            data_out_len: Some(alua::set(lu, cmd).await?),
            ..ScsiResult::good()
        },
        (op::MAINTENANCE_IN, _) => data(opcodes::report_tmfs(cdb)?),
        (provisioning::UNMAP, _) => provisioning::unmap(lu, cmd).await?,
        (provisioning::WRITE_SAME_10 | provisioning::WRITE_SAME_16, _) => {
            provisioning::write_same(lu, cmd).await?
        }
        (op::SERVICE_ACTION_IN_16, Some(provisioning::SA_GET_LBA_STATUS)) => {
            data(provisioning::get_lba_status(lu, cdb).await?)
        }
        (atomic::COMPARE_AND_WRITE, _) => atomic::compare_and_write(lu, cmd).await?,
        (atomic::ORWRITE_16, _) => atomic::orwrite(lu, cmd).await?,
        (atomic::WRITE_ATOMIC_16, _) => atomic::write_atomic(lu, cmd).await?,
        (xcopy::EXTENDED_COPY, _) => xcopy::extended_copy(lu, cmd).await?,
        (xcopy::RECEIVE_COPY_RESULTS, Some(sa)) => data(xcopy::receive_copy_results(lu, cmd, sa)?),
        (op::READ_CAPACITY_10 | op::SERVICE_ACTION_IN_16, _) => data(sbc::read_capacity(vol, cdb)?),
        (op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16, _) => {
            sbc::synchronize_cache(vol, cdb).await?;
            ScsiResult::good()
        }
        (op::PRE_FETCH_10 | op::PRE_FETCH_16, _) => {
            sbc::pre_fetch(vol, cdb)?;
            ScsiResult::good()
        }
        (sbc::READ_DEFECT_DATA_10 | sbc::READ_DEFECT_DATA_12, _) => {
            data(sbc::read_defect_data(cdb)?)
        }
        (op::START_STOP_UNIT, _) => {
            medium::start_stop(lu, cdb).await?;
            ScsiResult::good()
        }
        (medium::PREVENT_ALLOW_MEDIUM_REMOVAL, _) => {
            medium::prevent_allow(lu, cmd)?;
            ScsiResult::good()
        }
        (sanitize::SANITIZE, _) => sanitize::sanitize(lu, cmd).await?,
        (op::PERSISTENT_RESERVE_IN, _) => data(pr::persistent_reserve_in(lu, cmd).await?),
        (op::PERSISTENT_RESERVE_OUT, _) => pr::persistent_reserve_out(lu, cmd).await?,
        (op::RESERVE_6 | op::RESERVE_10, _) => pr::reserve(lu, cmd).await?,
        (op::RELEASE_6 | op::RELEASE_10, _) => pr::release(lu, cmd).await?,
        _ => {
            let rw = match decode_rw(cdb) {
                Some(r) => r.map_err(field)?,
                None => return Err(Sense::invalid_opcode()),
            };
            match rw.kind {
                RwKind::Read => ScsiResult {
                    data_in: sbc::read(vol, &rw).await?,
                    ..ScsiResult::good()
                },
                RwKind::Write | RwKind::WriteAndVerify => {
                    sbc::write(lu, &rw, &cmd.data_out).await?;
                    ScsiResult::good()
                }
                RwKind::Verify => {
                    sbc::verify(vol, &rw, &cmd.data_out).await?;
                    ScsiResult::good()
                }
            }
        }
    })
}

/// A command addressed to a LUN this target does not have (SPC-4 6.6.2,
/// 6.29, 6.33): INQUIRY reports peripheral qualifier 011b, REPORT LUNS and
/// REQUEST SENSE work, everything else is LOGICAL UNIT NOT SUPPORTED.
pub fn execute_no_lu(cmd: &ScsiCommand<'_>) -> ScsiResult {
    let cdb = cmd.cdb;
    let opcode = cdb.first().copied().unwrap_or(0xFF);
    let r = match opcode {
        op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE => {
            admit_cdb(cdb).and_then(|_| match opcode {
                op::INQUIRY => {
                    let inq = cdb::decode_inquiry(cdb).map_err(field)?;
                    if inq.evpd {
                        return Err(Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED));
                    }
                    Ok((inquiry::standard(None), inq.alloc as usize))
                }
                op::REPORT_LUNS => spc::report_luns(cdb, cmd.luns),
                _ => spc::request_sense_no_lu(cdb),
            })
        }
        _ => Err(Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED)),
    };
    match r {
        Ok((d, alloc)) => ScsiResult::data(d, alloc),
        Err(s) => ScsiResult::check(&s, false),
    }
}

/// LOGICAL UNIT RESET (SAM-5 6.3.3, 7.7): the transport aborts the tasks;
/// here the LU returns to its power-on operating state (mode parameters to
/// their defaults, as nothing is saved) and every nexus, the issuer's
/// included, gets BUS DEVICE RESET FUNCTION OCCURRED: the issuer's other
/// tasks were aborted too, and multipath hosts expect it on every path.
/// SPC-2 reservations end; persistent ones stay; so does the medium's
/// state, loaded or not.
pub async fn lun_reset(lu: &LogicalUnit, _issuer: NexusId) {
    mode::reset(lu);
    // Medium removal prevention ends with the reset (SPC-4 6.13); a
    // sanitize in progress goes on.
    lu.clear_all_prevent();
    lu.control().reset_reservations().await;
    lu.control().raise_all(Notice::Reset, None).await;
}
