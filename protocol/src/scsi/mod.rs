//! SCSI (SAM-5, SPC-4, SBC-3): CDB decoding, status codes and sense data.

pub mod cdb;
pub mod sense;
