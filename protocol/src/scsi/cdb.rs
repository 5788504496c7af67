//! Sans-I/O CDB decoding (SPC-4, SBC-3).
//!
//! Decoders check the CDB length and the values of the fields they return;
//! a decoder never panics, whatever the bytes. Reserved-bit checks against a
//! command's CDB usage map are left to the device server, which owns the map
//! it reports in REPORT SUPPORTED OPERATION CODES.

/// Operation codes.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
}

/// Service actions.
pub mod sa {
    /// SERVICE ACTION IN(16) / READ CAPACITY(16).
    pub const READ_CAPACITY_16: u16 = 0x10;
    /// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES.
    pub const REPORT_SUPPORTED_OPCODES: u16 = 0x0C;
    /// MAINTENANCE IN / REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
    pub const REPORT_SUPPORTED_TMFS: u16 = 0x0D;
}

/// An invalid CDB field: the byte and, for bit fields, its most significant
/// bit. The device server turns it into INVALID FIELD IN CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldError {
    pub byte: usize,
    pub bit: Option<u8>,
}

impl FieldError {
    pub fn at(byte: usize, bit: Option<u8>) -> Self {
        Self { byte, bit }
    }
}

/// CDB length implied by the group code of an operation code (SPC-4 4.2.5.1),
/// `None` for groups without a fixed size (variable length, vendor).
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Fails with a pointer at the opcode when the CDB is shorter than its group.
pub fn check_len(cdb: &[u8]) -> Result<(), FieldError> {
    let op = *cdb.first().ok_or(FieldError::at(0, None))?;
    match cdb_len(op) {
        Some(n) if cdb.len() >= n => Ok(()),
        _ => Err(FieldError::at(0, None)),
    }
}

/// Big-endian fields of CDBs and parameter lists; 0 when `c` is too
/// short, so callers that checked lengths never panic and others read 0.
pub fn be16(c: &[u8], at: usize) -> u16 {
    match c.get(at..at + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

pub fn be32(c: &[u8], at: usize) -> u32 {
    match c.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

pub fn be64(c: &[u8], at: usize) -> u64 {
    match c.get(at..at + 8) {
        Some(b) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        }
        None => 0,
    }
}

fn byte(c: &[u8], at: usize) -> u8 {
    c.get(at).copied().unwrap_or(0)
}

/// The service action of opcodes that have one (5 bits in byte 1).
pub fn service_action(cdb: &[u8]) -> Option<u16> {
    match cdb.first()? {
        &op::SERVICE_ACTION_IN_16 | &op::MAINTENANCE_IN => Some((byte(cdb, 1) & 0x1F) as u16),
        &op::PERSISTENT_RESERVE_IN | &op::PERSISTENT_RESERVE_OUT => {
            Some((byte(cdb, 1) & 0x1F) as u16)
        }
        // EXTENDED COPY, RECEIVE COPY RESULTS, MAINTENANCE OUT, SANITIZE.
        0x83 | 0x84 | 0xA4 | 0x48 => Some((byte(cdb, 1) & 0x1F) as u16),
        _ => None,
    }
}

/// The fast path's view of a plain READ or WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RwCdb {
    pub write: bool,
    pub lba: u64,
    pub blocks: u32,
    pub fua: bool,
    pub dpo: bool,
}

/// What a block command does with the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwKind {
    Read,
    Write,
    WriteAndVerify,
    Verify,
}

/// A decoded READ, WRITE, WRITE AND VERIFY or VERIFY of any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rw {
    pub kind: RwKind,
    pub lba: u64,
    pub blocks: u32,
    /// RDPROTECT / WRPROTECT / VRPROTECT.
    pub protect: u8,
    pub dpo: bool,
    pub fua: bool,
    /// BYTCHK (WRITE AND VERIFY, VERIFY).
    pub bytchk: u8,
    pub group: u8,
    /// Byte offset of the transfer length field, for field pointers.
    pub len_byte: usize,
}

/// Decodes READ/WRITE/WRITE AND VERIFY/VERIFY 6, 10, 12 and 16.
/// `None` if the opcode is not one of them.
pub fn decode_rw(cdb: &[u8]) -> Option<Result<Rw, FieldError>> {
    let opcode = *cdb.first()?;
    let kind = match opcode {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => RwKind::Read,
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => RwKind::Write,
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
            RwKind::WriteAndVerify
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => RwKind::Verify,
        _ => return None,
    };
    if let Err(e) = check_len(cdb) {
        return Some(Err(e));
    }
    let b1 = byte(cdb, 1);
    let (lba, blocks, group, len_byte) = match cdb_len(opcode) {
        Some(6) => {
            let lba = (((b1 & 0x1F) as u64) << 16) | be16(cdb, 2) as u64;
            // A transfer length of 0 means 256 blocks in the 6-byte forms.
            let n = match byte(cdb, 4) {
                0 => 256,
                n => n as u32,
            };
            (lba, n, 0, 4)
        }
        Some(10) => (
            be32(cdb, 2) as u64,
            be16(cdb, 7) as u32,
            byte(cdb, 6) & 0x1F,
            7,
        ),
        Some(12) => (be32(cdb, 2) as u64, be32(cdb, 6), byte(cdb, 10) & 0x1F, 6),
        _ => (be64(cdb, 2), be32(cdb, 10), byte(cdb, 14) & 0x1F, 10),
    };
    let six = cdb_len(opcode) == Some(6);
    let bytchk = match kind {
        RwKind::Verify | RwKind::WriteAndVerify => (b1 >> 1) & 0x03,
        _ => 0,
    };
    let rw = Rw {
        kind,
        lba,
        blocks,
        protect: if six { 0 } else { b1 >> 5 },
        dpo: !six && b1 & 0x10 != 0,
        fua: !six && matches!(kind, RwKind::Read | RwKind::Write) && b1 & 0x08 != 0,
        bytchk,
        group,
        len_byte,
    };
    if rw.protect != 0 {
        // No protection information: any PROTECT value is invalid.
        return Some(Err(FieldError::at(1, Some(7))));
    }
    Some(Ok(rw))
}

/// Bits of byte 1 the fast path understands for the 10/12/16-byte forms:
/// DPO, FUA, RARC and FUA_NV (the last two are hints we may ignore).
const FAST_B1_MASK: u8 = 0x1E;

/// The fast path's decoder: `Some` only for READ/WRITE 6/10/12/16 with no
/// protection, a non-zero transfer length, no reserved or obsolete bits and
/// a plain control byte. Everything else goes to the control path, which
/// reports the right error.
pub fn fast_rw(cdb: &[u8]) -> Option<RwCdb> {
    let opcode = *cdb.first()?;
    let n = cdb_len(opcode)?;
    if cdb.len() < n {
        return None;
    }
    let write = match opcode {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => false,
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => true,
        _ => return None,
    };
    // Control byte: NACA, LINK and vendor bits are the control path's.
    if byte(cdb, n - 1) != 0 {
        return None;
    }
    let b1 = byte(cdb, 1);
    let group_byte = match n {
        6 => {
            if b1 & 0xE0 != 0 {
                return None;
            }
            None
        }
        10 => Some(6),
        12 => Some(10),
        _ => Some(14),
    };
    if let Some(g) = group_byte {
        if b1 & !FAST_B1_MASK != 0 || byte(cdb, g) & 0xE0 != 0 {
            return None;
        }
        if write && b1 & 0x04 != 0 {
            // RARC is reserved for writes.
            return None;
        }
    }
    let rw = decode_rw(cdb)?.ok()?;
    if rw.blocks == 0 {
        return None;
    }
    Some(RwCdb {
        write,
        lba: rw.lba,
        blocks: rw.blocks,
        fua: rw.fua,
        dpo: rw.dpo,
    })
}

/// INQUIRY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inquiry {
    pub evpd: bool,
    pub page: u8,
    pub alloc: u16,
}

pub fn decode_inquiry(cdb: &[u8]) -> Result<Inquiry, FieldError> {
    check_len(cdb)?;
    let evpd = byte(cdb, 1) & 0x01 != 0;
    let page = byte(cdb, 2);
    if !evpd && page != 0 {
        return Err(FieldError::at(2, None));
    }
    Ok(Inquiry {
        evpd,
        page,
        alloc: be16(cdb, 3),
    })
}

/// MODE SENSE (6) and (10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSense {
    pub ten: bool,
    pub dbd: bool,
    pub llbaa: bool,
    /// Page control: 0 current, 1 changeable, 2 default, 3 saved.
    pub pc: u8,
    pub page: u8,
    pub subpage: u8,
    pub alloc: u16,
}

pub fn decode_mode_sense(cdb: &[u8]) -> Result<ModeSense, FieldError> {
    check_len(cdb)?;
    let ten = byte(cdb, 0) == op::MODE_SENSE_10;
    let b1 = byte(cdb, 1);
    Ok(ModeSense {
        ten,
        dbd: b1 & 0x08 != 0,
        llbaa: ten && b1 & 0x10 != 0,
        pc: byte(cdb, 2) >> 6,
        page: byte(cdb, 2) & 0x3F,
        subpage: byte(cdb, 3),
        alloc: if ten {
            be16(cdb, 7)
        } else {
            byte(cdb, 4) as u16
        },
    })
}

/// MODE SELECT (6) and (10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSelect {
    pub ten: bool,
    pub pf: bool,
    pub sp: bool,
    pub param_len: u16,
}

pub fn decode_mode_select(cdb: &[u8]) -> Result<ModeSelect, FieldError> {
    check_len(cdb)?;
    let ten = byte(cdb, 0) == op::MODE_SELECT_10;
    let b1 = byte(cdb, 1);
    Ok(ModeSelect {
        ten,
        pf: b1 & 0x10 != 0,
        sp: b1 & 0x01 != 0,
        param_len: if ten {
            be16(cdb, 7)
        } else {
            byte(cdb, 4) as u16
        },
    })
}

/// REPORT LUNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLuns {
    pub select: u8,
    pub alloc: u32,
}

pub fn decode_report_luns(cdb: &[u8]) -> Result<ReportLuns, FieldError> {
    check_len(cdb)?;
    let select = byte(cdb, 2);
    if !matches!(select, 0x00..=0x02 | 0x10..=0x12) {
        return Err(FieldError::at(2, None));
    }
    let alloc = be32(cdb, 6);
    // SPC-4: an allocation length below 16 is an invalid field.
    if alloc < 16 {
        return Err(FieldError::at(6, None));
    }
    Ok(ReportLuns { select, alloc })
}

/// READ CAPACITY (10) and (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCapacity {
    pub sixteen: bool,
    pub lba: u64,
    pub pmi: bool,
    pub alloc: u32,
}

pub fn decode_read_capacity(cdb: &[u8]) -> Result<ReadCapacity, FieldError> {
    check_len(cdb)?;
    let sixteen = byte(cdb, 0) == op::SERVICE_ACTION_IN_16;
    let (lba, pmi, alloc) = if sixteen {
        (be64(cdb, 2), byte(cdb, 14) & 1 != 0, be32(cdb, 10))
    } else {
        (be32(cdb, 2) as u64, byte(cdb, 8) & 1 != 0, 8)
    };
    if !pmi && lba != 0 {
        return Err(FieldError::at(2, None));
    }
    Ok(ReadCapacity {
        sixteen,
        lba,
        pmi,
        alloc,
    })
}

/// PRE-FETCH and SYNCHRONIZE CACHE, 10 and 16: an LBA range and IMMED.
/// `blocks == 0` means "to the end of the medium".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaRange {
    pub lba: u64,
    pub blocks: u32,
    pub immed: bool,
}

pub fn decode_lba_range(cdb: &[u8]) -> Result<LbaRange, FieldError> {
    check_len(cdb)?;
    let immed = byte(cdb, 1) & 0x02 != 0;
    Ok(if cdb_len(byte(cdb, 0)) == Some(16) {
        LbaRange {
            lba: be64(cdb, 2),
            blocks: be32(cdb, 10),
            immed,
        }
    } else {
        LbaRange {
            lba: be32(cdb, 2) as u64,
            blocks: be16(cdb, 7) as u32,
            immed,
        }
    })
}

/// START STOP UNIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartStop {
    pub immed: bool,
    pub power_condition: u8,
    pub no_flush: bool,
    pub loej: bool,
    pub start: bool,
}

pub fn decode_start_stop(cdb: &[u8]) -> Result<StartStop, FieldError> {
    check_len(cdb)?;
    let b4 = byte(cdb, 4);
    let power_condition = b4 >> 4;
    // SBC-3 table 62: ACTIVE, IDLE, STANDBY, LU_CONTROL, FORCE_IDLE_0,
    // FORCE_STANDBY_0 and START_VALID.
    if !matches!(power_condition, 0x0..=0x3 | 0x7 | 0xA | 0xB) {
        return Err(FieldError::at(4, Some(7)));
    }
    Ok(StartStop {
        immed: byte(cdb, 1) & 1 != 0,
        power_condition,
        no_flush: b4 & 0x04 != 0,
        loej: b4 & 0x02 != 0,
        start: b4 & 0x01 != 0,
    })
}

/// REQUEST SENSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSense {
    pub desc: bool,
    pub alloc: u8,
}

pub fn decode_request_sense(cdb: &[u8]) -> Result<RequestSense, FieldError> {
    check_len(cdb)?;
    Ok(RequestSense {
        desc: byte(cdb, 1) & 1 != 0,
        alloc: byte(cdb, 4),
    })
}

/// REPORT SUPPORTED OPERATION CODES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOpcodes {
    pub rctd: bool,
    pub options: u8,
    pub opcode: u8,
    pub sa: u16,
    pub alloc: u32,
}

pub fn decode_report_opcodes(cdb: &[u8]) -> Result<ReportOpcodes, FieldError> {
    check_len(cdb)?;
    let options = byte(cdb, 2) & 0x07;
    if options > 3 {
        return Err(FieldError::at(2, Some(2)));
    }
    Ok(ReportOpcodes {
        rctd: byte(cdb, 2) & 0x80 != 0,
        options,
        opcode: byte(cdb, 3),
        sa: be16(cdb, 4),
        alloc: be32(cdb, 6),
    })
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportTmfs {
    pub repd: bool,
    pub alloc: u32,
}

pub fn decode_report_tmfs(cdb: &[u8]) -> Result<ReportTmfs, FieldError> {
    check_len(cdb)?;
    let alloc = be32(cdb, 6);
    // SPC-4: an allocation length below 4 is an invalid field.
    if alloc < 4 {
        return Err(FieldError::at(6, None));
    }
    Ok(ReportTmfs {
        repd: byte(cdb, 2) & 0x80 != 0,
        alloc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_rw_accepts_plain_io() {
        let r10 = [0x28, 0x08, 0, 0, 0x10, 0, 0, 0, 4, 0];
        assert_eq!(
            fast_rw(&r10),
            Some(RwCdb {
                write: false,
                lba: 0x1000,
                blocks: 4,
                fua: true,
                dpo: false
            })
        );
        let w6 = [0x0A, 0x01, 0x02, 0x03, 0, 0];
        let w = fast_rw(&w6).unwrap();
        assert!(w.write);
        assert_eq!((w.lba, w.blocks), (0x10203, 256));
        let mut w16 = [0u8; 16];
        w16[0] = 0x8A;
        w16[1] = 0x10;
        w16[9] = 7;
        w16[13] = 1;
        let w = fast_rw(&w16).unwrap();
        assert!(w.dpo && !w.fua);
        assert_eq!((w.lba, w.blocks), (7, 1));
    }

    #[test]
    fn fast_rw_rejects_what_it_cannot_serve() {
        // RDPROTECT.
        assert_eq!(fast_rw(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]), None);
        // Zero length.
        assert_eq!(fast_rw(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        // Short CDB.
        assert_eq!(fast_rw(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        // Obsolete bit 0, NACA, reserved group bits.
        assert_eq!(fast_rw(&[0x28, 0x01, 0, 0, 0, 0, 0, 0, 1, 0]), None);
        assert_eq!(fast_rw(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0x04]), None);
        assert_eq!(fast_rw(&[0x28, 0, 0, 0, 0, 0, 0x80, 0, 1, 0]), None);
        // Not a plain read or write.
        assert_eq!(fast_rw(&[0x2F, 0, 0, 0, 0, 0, 0, 0, 1, 0]), None);
        assert_eq!(fast_rw(&[]), None);
    }

    #[test]
    fn decode_rw_protect_pointer() {
        let e = decode_rw(&[0x2A, 0x40, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap();
        assert_eq!(e, Err(FieldError::at(1, Some(7))));
        let v = decode_rw(&[0x2F, 0x02, 0, 0, 0, 9, 0, 0, 2, 0])
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.kind, v.lba, v.blocks, v.bytchk),
            (RwKind::Verify, 9, 2, 1)
        );
        assert!(decode_rw(&[0x12, 0, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn other_decoders() {
        assert_eq!(
            decode_inquiry(&[0x12, 0, 0x80, 0, 0xFF, 0]),
            Err(FieldError::at(2, None))
        );
        assert_eq!(
            decode_report_luns(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]),
            Err(FieldError::at(6, None))
        );
        assert!(decode_read_capacity(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
        let rc =
            decode_read_capacity(&[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]).unwrap();
        assert!(rc.sixteen && rc.alloc == 32);
        assert!(decode_start_stop(&[0x1B, 0, 0, 0, 0x50, 0]).is_err());
    }

    type Decoder = fn(&[u8]) -> bool;

    const DECODERS: &[Decoder] = &[
        |c| fast_rw(c).is_some(),
        |c| decode_rw(c).is_some(),
        |c| decode_inquiry(c).is_ok(),
        |c| decode_mode_sense(c).is_ok(),
        |c| decode_mode_select(c).is_ok(),
        |c| decode_report_luns(c).is_ok(),
        |c| decode_read_capacity(c).is_ok(),
        |c| decode_lba_range(c).is_ok(),
        |c| decode_start_stop(c).is_ok(),
        |c| decode_request_sense(c).is_ok(),
        |c| decode_report_opcodes(c).is_ok(),
        |c| decode_report_tmfs(c).is_ok(),
        |c| service_action(c).is_some(),
        |c| check_len(c).is_ok(),
    ];

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(cdb in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32)) {
            for d in DECODERS {
                let _ = d(&cdb);
            }
        }

        #[test]
        fn fast_rw_agrees_with_decode_rw(op in proptest::sample::select(vec![0x08u8, 0x0A, 0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A]),
                                         rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)) {
            let mut cdb = vec![op];
            cdb.extend_from_slice(&rest);
            if let Some(f) = fast_rw(&cdb) {
                let rw = decode_rw(&cdb).unwrap().unwrap();
                proptest::prop_assert_eq!((f.lba, f.blocks), (rw.lba, rw.blocks));
                proptest::prop_assert!(f.blocks > 0);
            }
        }
    }
}
