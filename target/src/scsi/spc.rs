//! Primary commands (SPC-4) that are not INQUIRY, mode or opcode reports:
//! TEST UNIT READY, REQUEST SENSE and REPORT LUNS.

use vtgt_protocol::scsi::cdb::{decode_report_luns, decode_request_sense};
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::field;

/// A LUN as SAM-5 4.7 encodes it: single-level peripheral device addressing
/// below 256, flat space addressing below 16384. Larger values are taken to
/// be already encoded 8-byte LUNs and are returned as they are.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else if lun < 0x4000 {
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    } else {
        b = lun.to_be_bytes();
    }
    b
}

/// REPORT LUNS. `luns` are the LUNs the nexus may see; we have no well-known
/// LUs, so select report 01h lists none. Returns data and allocation length.
pub fn report_luns(cdb: &[u8], luns: &[u64]) -> Result<(Vec<u8>, usize), Sense> {
    let r = decode_report_luns(cdb).map_err(field)?;
    let mut list: Vec<u64> = match r.select {
        0x01 | 0x11 => Vec::new(),
        _ => luns.to_vec(),
    };
    list.sort_unstable();
    list.dedup();
    let mut out = Vec::with_capacity(8 + list.len() * 8);
    out.extend_from_slice(&((list.len() * 8) as u32).to_be_bytes());
    out.extend_from_slice(&[0u8; 4]);
    for l in list {
        out.extend_from_slice(&encode_lun(l));
    }
    Ok((out, r.alloc as usize))
}

/// REQUEST SENSE: `pending` (a unit attention taken for this nexus) or NO
/// SENSE, in the format the DESC bit asks for.
pub fn request_sense(cdb: &[u8], pending: Option<Sense>) -> Result<(Vec<u8>, usize), Sense> {
    let r = decode_request_sense(cdb).map_err(field)?;
    let s = pending.unwrap_or(Sense::new(key::NO_SENSE, Asc::NO_ADDITIONAL_SENSE));
    let data = if r.desc {
        s.to_descriptor()
    } else {
        s.to_fixed().to_vec()
    };
    Ok((data, r.alloc as usize))
}

/// REQUEST SENSE on a LUN that does not exist (SPC-4 6.29): the sense data
/// reports LOGICAL UNIT NOT SUPPORTED.
pub fn request_sense_no_lu(cdb: &[u8]) -> Result<(Vec<u8>, usize), Sense> {
    request_sense(cdb, Some(Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED)))
}
