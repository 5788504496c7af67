//! Unit attention conditions (SAM-5 5.14, SPC-4 5.14): the engine queues
//! [`Notice`]s per nexus; here they become sense data, reported once each.

use vtgt_engine::{NexusId, Notice};
use vtgt_protocol::scsi::cdb::op;
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::lu::LogicalUnit;

/// The additional sense code that reports `notice`.
pub fn asc_for(notice: Notice) -> Asc {
    match notice {
        Notice::PowerOn => Asc::POWER_ON_OCCURRED,
        Notice::Reset => Asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
        Notice::ModeParametersChanged => Asc::MODE_PARAMETERS_CHANGED,
        Notice::CapacityChanged => Asc::CAPACITY_DATA_HAS_CHANGED,
        Notice::ReportedLunsChanged => Asc::REPORTED_LUNS_DATA_HAS_CHANGED,
        Notice::RegistrationsPreempted => Asc::REGISTRATIONS_PREEMPTED,
        Notice::ReservationsPreempted => Asc::RESERVATIONS_PREEMPTED,
        Notice::ReservationsReleased => Asc::RESERVATIONS_RELEASED,
        Notice::AsymmetricAccessStateChanged => Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    }
}

pub fn sense_for(notice: Notice) -> Sense {
    Sense::new(key::UNIT_ATTENTION, asc_for(notice))
}

/// Commands a pending unit attention does not stop (SPC-4 5.14: INQUIRY,
/// REPORT LUNS and REQUEST SENSE are processed normally).
pub fn exempt(opcode: u8) -> bool {
    matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)
}

/// If `nexus` has a pending unit attention, removes the oldest and returns
/// its sense data. The notice is cleared by being reported.
pub async fn take(lu: &LogicalUnit, nexus: NexusId) -> Option<Sense> {
    // Peek first: taking republishes the fast path's state, which we only
    // want to pay for when something is pending.
    lu.control().peek(nexus).await?;
    lu.control().take(nexus).await.map(sense_for)
}
