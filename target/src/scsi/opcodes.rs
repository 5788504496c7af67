//! The commands this device server implements, with the CDB usage maps that
//! REPORT SUPPORTED OPERATION CODES reports (SPC-4 6.35) and that dispatch
//! enforces: a bit set in a CDB outside its usage map is an invalid field.
//! Also REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36).

use vtgt_protocol::scsi::cdb::{decode_report_opcodes, decode_report_tmfs, op, sa};
use vtgt_protocol::scsi::sense::Sense;

use super::alua::{MAINTENANCE_OUT, SA_REPORT_TPG, SA_SET_TPG};
use super::atomic::{COMPARE_AND_WRITE, ORWRITE_16, WRITE_ATOMIC_16};
use super::field;
use super::medium::PREVENT_ALLOW_MEDIUM_REMOVAL;
use super::provisioning::{SA_GET_LBA_STATUS, UNMAP, WRITE_SAME_10, WRITE_SAME_16};
use super::sanitize::{
    SANITIZE, SA_BLOCK_ERASE, SA_CRYPTO_ERASE, SA_EXIT_FAILURE_MODE, SA_OVERWRITE,
};
use super::sbc::{READ_DEFECT_DATA_10, READ_DEFECT_DATA_12};
use super::xcopy::{
    EXTENDED_COPY, RECEIVE_COPY_RESULTS, SA_COPY_STATUS, SA_EXTENDED_COPY_LID1,
    SA_OPERATING_PARAMETERS,
};

/// One supported command.
#[derive(Debug, Clone, Copy)]
pub struct CommandInfo {
    pub opcode: u8,
    /// Service action, for opcodes that have them.
    pub sa: Option<u16>,
    /// CDB usage data: byte 0 is the opcode, then a mask of the bits the
    /// device server looks at. Its length is the CDB length.
    pub usage: &'static [u8],
    /// Nominal and recommended command timeouts in seconds (RCTD).
    pub timeouts: (u32, u32),
}

/// Control byte usage: only NACA is examined (and refused when set).
const C: u8 = 0x04;

const fn cmd(opcode: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        sa: None,
        usage,
        timeouts: (0, 30),
    }
}

const fn cmd_sa(opcode: u8, sa: u16, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        sa: Some(sa),
        usage,
        timeouts: (0, 30),
    }
}

const FF: u8 = 0xFF;

/// Every command, sorted by opcode then service action.
// SYNCHRONIZE CACHE accepts SYNC_NV (obsolete, bit 2) and ignores it:
// initiators still set it.
#[rustfmt::skip]
pub static COMMANDS: &[CommandInfo] = &[
    cmd(op::TEST_UNIT_READY, &[op::TEST_UNIT_READY, 0, 0, 0, 0, C]),
    cmd(op::REQUEST_SENSE, &[op::REQUEST_SENSE, 0x01, 0, 0, FF, C]),
    cmd(op::READ_6, &[op::READ_6, 0x1F, FF, FF, FF, C]),
    cmd(op::WRITE_6, &[op::WRITE_6, 0x1F, FF, FF, FF, C]),
    cmd(op::INQUIRY, &[op::INQUIRY, 0x01, FF, FF, FF, C]),
    cmd(op::MODE_SELECT_6, &[op::MODE_SELECT_6, 0x11, 0, 0, FF, C]),
    cmd(op::RESERVE_6, &[op::RESERVE_6, 0, 0, 0, 0, C]),
    cmd(op::RELEASE_6, &[op::RELEASE_6, 0, 0, 0, 0, C]),
    cmd(op::MODE_SENSE_6, &[op::MODE_SENSE_6, 0x08, FF, FF, FF, C]),
    cmd(op::START_STOP_UNIT, &[op::START_STOP_UNIT, 0x01, 0, 0x0F, 0xF7, C]),
    cmd(PREVENT_ALLOW_MEDIUM_REMOVAL, &[PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, C]),
    cmd(op::READ_CAPACITY_10, &[op::READ_CAPACITY_10, 0, FF, FF, FF, FF, 0, 0, 0x01, C]),
    cmd(op::READ_10, &[op::READ_10, 0xFE, FF, FF, FF, FF, 0x1F, FF, FF, C]),
    cmd(op::WRITE_10, &[op::WRITE_10, 0xFA, FF, FF, FF, FF, 0x1F, FF, FF, C]),
    cmd(op::WRITE_AND_VERIFY_10, &[op::WRITE_AND_VERIFY_10, 0xF6, FF, FF, FF, FF, 0x1F, FF, FF, C]),
    cmd(op::VERIFY_10, &[op::VERIFY_10, 0xF6, FF, FF, FF, FF, 0x1F, FF, FF, C]),
    cmd(WRITE_SAME_10, &[WRITE_SAME_10, 0x08, FF, FF, FF, FF, 0x1F, FF, FF, C]),
    cmd(UNMAP, &[UNMAP, 0, 0, 0, 0, 0, 0x1F, FF, FF, C]),
    cmd(op::PRE_FETCH_10, &[op::PRE_FETCH_10, 0x02, FF, FF, FF, FF, 0x1F, FF, FF, C]),
    cmd(op::SYNCHRONIZE_CACHE_10, &[op::SYNCHRONIZE_CACHE_10, 0x06, FF, FF, FF, FF, 0x1F, FF, FF, C]),
    cmd(READ_DEFECT_DATA_10, &[READ_DEFECT_DATA_10, 0, 0x1F, 0, 0, 0, 0, FF, FF, C]),
    cmd_sa(SANITIZE, SA_OVERWRITE, &[SANITIZE, 0xBF, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd_sa(SANITIZE, SA_BLOCK_ERASE, &[SANITIZE, 0xBF, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd_sa(SANITIZE, SA_CRYPTO_ERASE, &[SANITIZE, 0xBF, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd_sa(SANITIZE, SA_EXIT_FAILURE_MODE, &[SANITIZE, 0xBF, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd(op::MODE_SELECT_10, &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd(op::RESERVE_10, &[op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, C]),
    cmd(op::RELEASE_10, &[op::RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, C]),
    cmd(op::MODE_SENSE_10, &[op::MODE_SENSE_10, 0x18, FF, FF, 0, 0, 0, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0x00, &[op::PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0x01, &[op::PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0x02, &[op::PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0x03, &[op::PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x00, &[op::PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x01, &[op::PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x02, &[op::PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x03, &[op::PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x04, &[op::PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x05, &[op::PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x06, &[op::PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x07, &[op::PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C]),
    cmd_sa(EXTENDED_COPY, SA_EXTENDED_COPY_LID1,
           &[EXTENDED_COPY, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, C]),
    cmd_sa(RECEIVE_COPY_RESULTS, SA_COPY_STATUS,
           &[RECEIVE_COPY_RESULTS, 0x1F, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, C]),
    cmd_sa(RECEIVE_COPY_RESULTS, SA_OPERATING_PARAMETERS,
           &[RECEIVE_COPY_RESULTS, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, C]),
    cmd(op::READ_16, &[op::READ_16, 0xFE, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(COMPARE_AND_WRITE, &[COMPARE_AND_WRITE, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0x1F, C]),
    cmd(op::WRITE_16, &[op::WRITE_16, 0xFA, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(ORWRITE_16, &[ORWRITE_16, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(op::WRITE_AND_VERIFY_16, &[op::WRITE_AND_VERIFY_16, 0xF6, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(op::VERIFY_16, &[op::VERIFY_16, 0xF6, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(op::PRE_FETCH_16, &[op::PRE_FETCH_16, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(op::SYNCHRONIZE_CACHE_16, &[op::SYNCHRONIZE_CACHE_16, 0x06, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(WRITE_SAME_16, &[WRITE_SAME_16, 0x09, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(WRITE_ATOMIC_16, &[WRITE_ATOMIC_16, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, FF, FF, 0x1F, C]),
    cmd_sa(op::SERVICE_ACTION_IN_16, sa::READ_CAPACITY_16,
           &[op::SERVICE_ACTION_IN_16, 0x1F, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x01, C]),
    cmd_sa(op::SERVICE_ACTION_IN_16, SA_GET_LBA_STATUS,
           &[op::SERVICE_ACTION_IN_16, 0x1F, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, C]),
    cmd(op::REPORT_LUNS, &[op::REPORT_LUNS, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, C]),
    cmd_sa(op::MAINTENANCE_IN, SA_REPORT_TPG,
           &[op::MAINTENANCE_IN, 0xFF, 0, 0, 0, 0, FF, FF, FF, FF, 0, C]),
    cmd_sa(op::MAINTENANCE_IN, sa::REPORT_SUPPORTED_OPCODES,
           &[op::MAINTENANCE_IN, 0x1F, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, C]),
    cmd_sa(op::MAINTENANCE_IN, sa::REPORT_SUPPORTED_TMFS,
           &[op::MAINTENANCE_IN, 0x1F, 0x80, 0, 0, 0, FF, FF, FF, FF, 0, C]),
    cmd_sa(MAINTENANCE_OUT, SA_SET_TPG,
           &[MAINTENANCE_OUT, 0x1F, 0, 0, 0, 0, FF, FF, FF, FF, 0, C]),
    cmd(op::READ_12, &[op::READ_12, 0xFE, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(op::WRITE_12, &[op::WRITE_12, 0xFA, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(op::WRITE_AND_VERIFY_12, &[op::WRITE_AND_VERIFY_12, 0xF6, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(op::VERIFY_12, &[op::VERIFY_12, 0xF6, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, C]),
    cmd(READ_DEFECT_DATA_12, &[READ_DEFECT_DATA_12, 0x1F, FF, FF, FF, FF, FF, FF, FF, FF, 0, C]),
];

/// Whether any supported command with `opcode` has service actions.
pub fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.sa.is_some())
}

/// The entry for `opcode` (and `sa`, for opcodes with service actions).
pub fn lookup(opcode: u8, sa: Option<u16>) -> Option<&'static CommandInfo> {
    COMMANDS
        .iter()
        .find(|c| c.opcode == opcode && (c.sa.is_none() || c.sa == sa))
}

/// Checks a CDB against its command's length and usage map. A bit outside
/// the map is an invalid field, reported at its byte and highest bit.
pub fn check_usage(info: &CommandInfo, cdb: &[u8]) -> Result<(), Sense> {
    if cdb.len() < info.usage.len() {
        return Err(Sense::invalid_cdb_field(0, None));
    }
    for (i, (&b, &mask)) in cdb.iter().zip(info.usage).enumerate().skip(1) {
        let bad = b & !mask;
        if bad != 0 {
            return Err(Sense::invalid_cdb_field(
                i,
                Some(7 - bad.leading_zeros() as u8),
            ));
        }
    }
    // NACA = 1 needs ACA support, which we do not have (SAM-5 5.9).
    if cdb.get(info.usage.len() - 1).is_some_and(|c| c & 0x04 != 0) {
        return Err(Sense::invalid_cdb_field(info.usage.len() - 1, Some(2)));
    }
    Ok(())
}

fn timeouts_descriptor(info: &CommandInfo) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t[4..8].copy_from_slice(&info.timeouts.0.to_be_bytes());
    t[8..12].copy_from_slice(&info.timeouts.1.to_be_bytes());
    t
}

/// REPORT SUPPORTED OPERATION CODES: data and allocation length.
pub fn report_opcodes(cdb: &[u8]) -> Result<(Vec<u8>, usize), Sense> {
    let r = decode_report_opcodes(cdb).map_err(field)?;
    let mut out = Vec::new();
    match r.options {
        0 => {
            out.extend_from_slice(&[0u8; 4]);
            for c in COMMANDS {
                out.push(c.opcode);
                out.push(0);
                out.extend_from_slice(&c.sa.unwrap_or(0).to_be_bytes());
                out.push(0);
                let mut flags = 0u8;
                if r.rctd {
                    flags |= 0x02;
                }
                if c.sa.is_some() {
                    flags |= 0x01;
                }
                out.push(flags);
                out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                if r.rctd {
                    out.extend_from_slice(&timeouts_descriptor(c));
                }
            }
            let n = (out.len() - 4) as u32;
            out[..4].copy_from_slice(&n.to_be_bytes());
        }
        options => {
            let with_sa = has_service_actions(r.opcode);
            // 001b asks about an opcode without service actions, 010b about
            // one with them; 011b about either.
            match (options, with_sa) {
                (1, true) | (2, false) => return Err(Sense::invalid_cdb_field(2, Some(2))),
                _ => {}
            }
            let found = if with_sa {
                COMMANDS
                    .iter()
                    .find(|c| c.opcode == r.opcode && c.sa == Some(r.sa))
            } else {
                lookup(r.opcode, None)
            };
            let ctdp = if r.rctd { 0x80 } else { 0 };
            match found {
                Some(c) => {
                    // SUPPORT 011b: supported as the standard defines.
                    out.push(0);
                    out.push(ctdp | 0x03);
                    out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                    out.extend_from_slice(c.usage);
                    if r.rctd {
                        out.extend_from_slice(&timeouts_descriptor(c));
                    }
                }
                None => {
                    // SUPPORT 001b: not supported; no usage data.
                    out.extend_from_slice(&[0, 0x01, 0, 0]);
                }
            }
        }
    }
    Ok((out, r.alloc as usize))
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ABORT TASK, ABORT TASK SET,
/// CLEAR TASK SET, LOGICAL UNIT RESET and TARGET RESET, the ones iSCSI
/// carries (RFC 7143 11.5).
pub fn report_tmfs(cdb: &[u8]) -> Result<(Vec<u8>, usize), Sense> {
    let r = decode_report_tmfs(cdb).map_err(field)?;
    // ATS, ATSS, CTSS, LURS, TRS.
    let b0 = 0x80 | 0x40 | 0x10 | 0x08 | 0x02;
    let mut out = vec![b0, 0x00, 0x00, 0x00];
    if r.repd {
        out[3] = 0x0C;
        out.resize(16, 0);
    }
    Ok((out, r.alloc as usize))
}
