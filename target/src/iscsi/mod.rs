//! The iSCSI front end (RFC 7143, ErrorRecoveryLevel 0): portals, login,
//! sessions, the full-feature phase, data transfer, task management and
//! discovery. Named after LIO's iscsi_target_* modules.

pub mod conn;
pub mod dataout;
pub mod discovery;
pub mod login;
pub mod portal;
pub mod response;
pub mod session;
pub mod tmr;
pub mod writer;

pub use portal::{IscsiShared, PortalInfo};

/// Decodes the 8-byte LUN field (SAM-5 §4.7): peripheral (00b) and flat
/// space (01b) single-level addressing. Other methods are not ours.
pub fn decode_lun(raw: u64) -> Option<u64> {
    let b = raw.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return None;
    }
    match b[0] >> 6 {
        0b00 if b[0] == 0 => Some(b[1] as u64),
        0b01 => Some((((b[0] & 0x3f) as u64) << 8) | b[1] as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_round_trips() {
        for l in [0u64, 1, 255, 256, 16383] {
            let raw = u64::from_be_bytes(crate::scsi::spc::encode_lun(l));
            assert_eq!(decode_lun(raw), Some(l));
        }
        assert_eq!(decode_lun(0x0000_0001_0000_0000), None);
        assert_eq!(decode_lun(0x8000_0000_0000_0000), None);
    }
}
