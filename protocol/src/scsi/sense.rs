//! Sense data (SPC-4 4.5): fixed (70h) and descriptor (72h) formats.
//!
//! A [`Sense`] is a value; [`Sense::encode`] renders it in either format.
//! Nothing here can panic, whatever the field values.

use bytes::Bytes;

/// Sense keys (SPC-4 table 27).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// An additional sense code and qualifier pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    pub const NO_ADDITIONAL_SENSE: Asc = Asc(0x00, 0x00);
    pub const WRITE_ERROR: Asc = Asc(0x0C, 0x00);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1A, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1D, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    pub const POWER_ON_RESET_OCCURRED: Asc = Asc(0x29, 0x00);
    pub const POWER_ON_OCCURRED: Asc = Asc(0x29, 0x01);
    pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: Asc = Asc(0x29, 0x03);
    pub const I_T_NEXUS_LOSS_OCCURRED: Asc = Asc(0x29, 0x07);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2A, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2A, 0x03);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2A, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2A, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc(0x2A, 0x06);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc(0x2A, 0x09);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3A, 0x00);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc(0x3F, 0x0E);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    /// LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS (SBC-4).
    pub const SANITIZE_IN_PROGRESS: Asc = Asc(0x04, 0x1B);
    /// SANITIZE COMMAND FAILED (SBC-4).
    pub const SANITIZE_COMMAND_FAILED: Asc = Asc(0x31, 0x03);
    /// MEDIUM REMOVAL PREVENTED (SPC-4, SBC-3 START STOP UNIT).
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x53, 0x02);
}

/// Where an invalid field lies, for the sense-key-specific field pointer
/// (SPC-4 4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True if the field is in the CDB (C/D = 1), false if in the parameter
    /// list.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Most significant bit of the field, when it is not a whole byte.
    pub bit: Option<u8>,
}

impl FieldPointer {
    pub fn cdb(byte: usize, bit: Option<u8>) -> Self {
        Self {
            in_cdb: true,
            byte: u16::try_from(byte).unwrap_or(u16::MAX),
            bit,
        }
    }

    pub fn param(byte: usize, bit: Option<u8>) -> Self {
        Self {
            in_cdb: false,
            byte: u16::try_from(byte).unwrap_or(u16::MAX),
            bit,
        }
    }

    /// The three sense-key-specific bytes, SKSV set.
    fn encode(&self) -> [u8; 3] {
        let mut b0 = 0x80;
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

/// Sense data for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: Asc,
    /// The INFORMATION field (an LBA or a byte offset, by command).
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
    /// Deferred error (71h/73h) rather than current.
    pub deferred: bool,
    /// Progress indication (SPC-4 4.5.2.4.4), in 65536ths of the whole, for
    /// NOT READY and NO SENSE: reported in the sense-key-specific bytes
    /// when there is no field pointer.
    pub progress: Option<u16>,
}

/// Length of the fixed format we emit: 8-byte header plus 10 additional.
pub const FIXED_LEN: usize = 18;

impl Sense {
    pub fn new(key: u8, asc: Asc) -> Self {
        Self {
            key: key & 0x0F,
            asc,
            information: None,
            field: None,
            deferred: false,
            progress: None,
        }
    }

    /// The same sense with a progress indication.
    pub fn with_progress(mut self, progress: u16) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The three sense-key-specific bytes, if any.
    fn sks(&self) -> Option<[u8; 3]> {
        if let Some(f) = self.field {
            return Some(f.encode());
        }
        self.progress.map(|p| {
            let [hi, lo] = p.to_be_bytes();
            [0x80, hi, lo]
        })
    }

    pub fn with_information(mut self, info: u64) -> Self {
        self.information = Some(info);
        self
    }

    pub fn with_field(mut self, field: FieldPointer) -> Self {
        self.field = Some(field);
        self
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub fn invalid_cdb_field(byte: usize, bit: Option<u8>) -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
            .with_field(FieldPointer::cdb(byte, bit))
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST at `byte` (`bit`).
    pub fn invalid_param_field(byte: usize, bit: Option<u8>) -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_PARAMETER_LIST)
            .with_field(FieldPointer::param(byte, bit))
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE, pointing at byte 0.
    pub fn invalid_opcode() -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE)
            .with_field(FieldPointer::cdb(0, None))
    }

    pub fn illegal(asc: Asc) -> Self {
        Self::new(key::ILLEGAL_REQUEST, asc)
    }

    pub fn lba_out_of_range() -> Self {
        Self::illegal(Asc::LBA_OUT_OF_RANGE)
    }

    /// Fixed format (70h/71h). An INFORMATION value wider than 32 bits
    /// cannot be expressed; VALID stays 0 then (SPC-4 4.5.3).
    pub fn to_fixed(&self) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[0] = if self.deferred { 0x71 } else { 0x70 };
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key & 0x0F;
        b[7] = (FIXED_LEN - 8) as u8;
        b[12] = self.asc.0;
        b[13] = self.asc.1;
        if let Some(sks) = self.sks() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Descriptor format (72h/73h) with an information descriptor and a
    /// sense-key-specific descriptor when they apply.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[0] = if self.deferred { 0x73 } else { 0x72 };
        b[1] = self.key & 0x0F;
        b[2] = self.asc.0;
        b[3] = self.asc.1;
        if let Some(info) = self.information {
            // Information descriptor (type 00h), VALID = 1.
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sks() {
            // Sense key specific descriptor (type 02h).
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&sks);
            b.push(0x00);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    pub fn encode(&self, descriptor: bool) -> Bytes {
        if descriptor {
            Bytes::from(self.to_descriptor())
        } else {
            Bytes::copy_from_slice(&self.to_fixed())
        }
    }

    /// Parses sense data in either format (for our initiator and tests).
    /// Returns `None` for anything malformed.
    pub fn parse(buf: &[u8]) -> Option<Sense> {
        let code = buf.first()? & 0x7F;
        match code {
            0x70 | 0x71 => {
                let key = buf.get(2)? & 0x0F;
                let asc = Asc(*buf.get(12).unwrap_or(&0), *buf.get(13).unwrap_or(&0));
                let mut s = Sense::new(key, asc);
                s.deferred = code == 0x71;
                if buf[0] & 0x80 != 0 {
                    let i = buf.get(3..7)?;
                    s.information = Some(u32::from_be_bytes([i[0], i[1], i[2], i[3]]) as u64);
                }
                if let Some(sks) = buf.get(15..18) {
                    s.set_sks(sks);
                }
                Some(s)
            }
            0x72 | 0x73 => {
                let key = buf.get(1)? & 0x0F;
                let asc = Asc(*buf.get(2)?, *buf.get(3)?);
                let mut s = Sense::new(key, asc);
                s.deferred = code == 0x73;
                let add = *buf.get(7)? as usize;
                let end = (8 + add).min(buf.len());
                let mut at = 8;
                while at + 2 <= end {
                    let ty = buf[at];
                    let len = buf[at + 1] as usize;
                    let body = buf.get(at + 2..(at + 2 + len).min(end))?;
                    match ty {
                        0x00 if body.len() >= 10 && body[0] & 0x80 != 0 => {
                            let mut v = [0u8; 8];
                            v.copy_from_slice(&body[2..10]);
                            s.information = Some(u64::from_be_bytes(v));
                        }
                        0x02 if body.len() >= 5 => s.set_sks(&body[2..5]),
                        _ => {}
                    }
                    at += 2 + len;
                }
                Some(s)
            }
            _ => None,
        }
    }
}

impl Sense {
    /// Sense-key-specific bytes: a progress indication for NOT READY and
    /// NO SENSE, a field pointer otherwise.
    fn set_sks(&mut self, sks: &[u8]) {
        if matches!(self.key, key::NOT_READY | key::NO_SENSE) {
            if sks.len() >= 3 && sks[0] & 0x80 != 0 {
                self.progress = Some(u16::from_be_bytes([sks[1], sks[2]]));
            }
        } else {
            self.field = parse_sks(sks);
        }
    }
}

fn parse_sks(sks: &[u8]) -> Option<FieldPointer> {
    let (b0, hi, lo) = (*sks.first()?, *sks.get(1)?, *sks.get(2)?);
    if b0 & 0x80 == 0 {
        return None;
    }
    Some(FieldPointer {
        in_cdb: b0 & 0x40 != 0,
        byte: u16::from_be_bytes([hi, lo]),
        bit: (b0 & 0x08 != 0).then_some(b0 & 0x07),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_invalid_field_pointer() {
        let s = Sense::invalid_cdb_field(1, Some(7));
        let f = s.to_fixed();
        assert_eq!(f[0], 0x70);
        assert_eq!(f[2], key::ILLEGAL_REQUEST);
        assert_eq!(f[7], 10);
        assert_eq!((f[12], f[13]), (0x24, 0x00));
        // SKSV | C/D | BPV | bit 7, field pointer = 1.
        assert_eq!(&f[15..18], &[0xCF, 0x00, 0x01]);
        assert_eq!(Sense::parse(&f), Some(s));
    }

    #[test]
    fn fixed_information_valid_only_when_it_fits() {
        let s = Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY).with_information(513);
        let f = s.to_fixed();
        assert_eq!(f[0], 0xF0);
        assert_eq!(&f[3..7], &[0, 0, 2, 1]);
        let big = Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR)
            .with_information(1 << 40)
            .to_fixed();
        assert_eq!(big[0], 0x70);
        assert_eq!(&big[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format_round_trip() {
        let s = Sense::invalid_param_field(300, None).with_information(1 << 40);
        let d = s.to_descriptor();
        assert_eq!(d[0], 0x72);
        assert_eq!(d[1], key::ILLEGAL_REQUEST);
        assert_eq!((d[2], d[3]), (0x26, 0x00));
        assert_eq!(d[7] as usize, d.len() - 8);
        assert_eq!(d.len(), 8 + 12 + 8);
        // Parameter list pointer: SKSV, C/D = 0, no BPV, byte 300.
        assert_eq!(&d[24..27], &[0x80, 0x01, 0x2C]);
        assert_eq!(Sense::parse(&d), Some(s));
        let plain = Sense::new(key::UNIT_ATTENTION, Asc::POWER_ON_OCCURRED).to_descriptor();
        assert_eq!(plain.len(), 8);
        assert_eq!(plain[7], 0);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = Sense::parse(&buf);
        }

        #[test]
        fn encode_never_panics(k in 0u8..=255, a in 0u8..=255, q in 0u8..=255,
                               info in proptest::option::of(proptest::prelude::any::<u64>()),
                               byte in 0usize..100_000, bit in proptest::option::of(0u8..=255)) {
            let s = Sense::new(k, Asc(a, q)).with_field(FieldPointer::cdb(byte, bit));
            let s = Sense { information: info, ..s };
            let d = s.to_descriptor();
            proptest::prop_assert_eq!(d[7] as usize, d.len() - 8);
            let _ = s.to_fixed();
        }
    }
}
