//! Removable medium (SPC-4 6.13, SBC-3 5.17 and 5.25): START STOP UNIT
//! with LOEJ ejects and loads the medium of a removable LU, PREVENT ALLOW
//! MEDIUM REMOVAL stops that, per I_T nexus. Without a medium, commands
//! that need one end with NOT READY / MEDIUM NOT PRESENT.
//!
//! Prevention ends for a nexus when it allows removal again or is lost
//! (logout, connection loss), and for all of them on LOGICAL UNIT RESET and
//! target resets.

use vtgt_protocol::scsi::cdb::{decode_start_stop, op};
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::lu::LogicalUnit;
use super::sbc::engine_sense;
use super::{field, ScsiCommand};

/// PREVENT ALLOW MEDIUM REMOVAL operation code.
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;

/// NOT READY / MEDIUM NOT PRESENT.
pub fn not_present() -> Sense {
    Sense::new(key::NOT_READY, Asc::MEDIUM_NOT_PRESENT)
}

/// Whether a command needs the medium: everything but the commands about
/// the LU itself, its mode pages, reservations and the medium's removal.
pub fn needs_medium(opcode: u8) -> bool {
    !matches!(
        opcode,
        op::INQUIRY
            | op::REPORT_LUNS
            | op::REQUEST_SENSE
            | op::MODE_SENSE_6
            | op::MODE_SENSE_10
            | op::MODE_SELECT_6
            | op::MODE_SELECT_10
            | op::START_STOP_UNIT
            | PREVENT_ALLOW_MEDIUM_REMOVAL
            | op::PERSISTENT_RESERVE_IN
            | op::PERSISTENT_RESERVE_OUT
            | op::RESERVE_6
            | op::RESERVE_10
            | op::RELEASE_6
            | op::RELEASE_10
            | op::MAINTENANCE_IN
            | super::alua::MAINTENANCE_OUT
            | super::xcopy::RECEIVE_COPY_RESULTS
    )
}

/// PREVENT ALLOW MEDIUM REMOVAL: PREVENT 00b allows removal for this
/// nexus, 01b prevents it; 10b and 11b (obsolete) are refused.
pub fn prevent_allow(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<(), Sense> {
    match cmd.cdb[4] & 0x03 {
        0 => lu.set_prevent(cmd.nexus, false),
        1 => lu.set_prevent(cmd.nexus, true),
        _ => return Err(Sense::invalid_cdb_field(4, Some(1))),
    }
    Ok(())
}

/// START STOP UNIT. Power conditions are accepted and change nothing
/// (there is no spindle); START = 0 with POWER CONDITION 0 flushes the
/// cache unless NO_FLUSH. On a removable LU, LOEJ (with POWER CONDITION 0)
/// loads (START = 1) or ejects (START = 0) the medium, unless some nexus
/// prevents removal.
pub async fn start_stop(lu: &LogicalUnit, cdb: &[u8]) -> Result<(), Sense> {
    // A removable LU takes every POWER CONDITION value, the reserved ones
    // included, as a request that changes nothing and leaves the medium
    // where it is: libiscsi's StartStopUnit.PwrCnd sends all of 1h..Fh
    // with LOEJ set and expects GOOD. A fixed LU refuses reserved values.
    if lu.removable() && cdb.len() >= 6 && cdb[4] >> 4 != 0 {
        return Ok(());
    }
    let ss = decode_start_stop(cdb).map_err(field)?;
    if ss.power_condition != 0 {
        return Ok(());
    }
    if ss.loej && lu.removable() {
        if lu.removal_prevented() {
            return Err(Sense::illegal(Asc::MEDIUM_REMOVAL_PREVENTED));
        }
        if ss.start {
            lu.set_medium_present(true);
            return Ok(());
        }
        if lu.medium_present() && !ss.no_flush {
            lu.volume()
                .flush()
                .await
                .map_err(|e| engine_sense(&e, 0, true))?;
        }
        lu.set_medium_present(false);
        return Ok(());
    }
    if !ss.start && !ss.no_flush && lu.medium_present() {
        lu.volume()
            .flush()
            .await
            .map_err(|e| engine_sense(&e, 0, true))?;
    }
    Ok(())
}
