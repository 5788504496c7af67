//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment, typed views of
//! every opcode, and a framing decoder that bounds every length before it
//! allocates and checks CRC32C digests.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::digest::crc32c;

pub const BHS_LEN: usize = 48;
/// TotalAHSLength is one byte counting 4-byte words.
pub const MAX_AHS_LEN: usize = 255 * 4;
/// DataSegmentLength is 24 bits.
pub const MAX_DATA_SEGMENT_LEN: u32 = 0x00ff_ffff;
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (RFC 7143 §11.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Self> {
        use Opcode::*;
        Some(match v & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OPERATION_REJECT: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Task management functions and responses (RFC 7143 §11.5, §11.6).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;

    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGN_NOT_SUPPORTED: u8 = 4;
    pub const FUNCTION_NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const FUNCTION_REJECTED: u8 = 255;
}

/// The Basic Header Segment, with field accessors by RFC offset.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bhs(op={:#04x} itt={:#x})",
            self.opcode_raw(),
            self.itt()
        )
    }
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0u8; BHS_LEN])
    }
}

impl Bhs {
    pub fn new(op: Opcode) -> Self {
        let mut b = Bhs::default();
        b.0[0] = op as u8;
        b
    }
    pub fn opcode_raw(&self) -> u8 {
        self.0[0] & 0x3f
    }
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.0[0])
    }
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    pub fn set_immediate(&mut self, v: bool) {
        if v {
            self.0[0] |= 0x40;
        } else {
            self.0[0] &= !0x40;
        }
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.0[1] = f;
    }
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    pub fn total_ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_segment_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }
    pub fn set_data_segment_len(&mut self, n: u32) {
        let b = n.min(MAX_DATA_SEGMENT_LEN).to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..4]);
    }
    pub fn set_total_ahs_len(&mut self, bytes: usize) {
        self.0[4] = (bytes / 4).min(255) as u8;
    }
    pub fn lun(&self) -> u64 {
        self.u64_at(8)
    }
    pub fn set_lun(&mut self, v: u64) {
        self.0[8..16].copy_from_slice(&v.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v)
    }
    pub fn u8_at(&self, off: usize) -> u8 {
        self.0[off]
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }
    pub fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[off..off + 8]);
        u64::from_be_bytes(b)
    }
    pub fn set_u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
}

/// A whole PDU: header, additional header segments and data segment
/// (without padding or digests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Bytes,
    pub data: Bytes,
}

impl Pdu {
    pub fn new(bhs: Bhs, data: Bytes) -> Self {
        Self {
            bhs,
            ahs: Bytes::new(),
            data,
        }
    }

    /// Bytes this PDU takes on the wire.
    pub fn wire_len(&self, digests: Digests) -> usize {
        let mut n = BHS_LEN + self.ahs.len() + padded(self.data.len());
        if digests.header {
            n += 4;
        }
        if digests.data && !self.data.is_empty() {
            n += 4;
        }
        n
    }

    /// Appends the wire form to `out`. DataSegmentLength and TotalAHSLength
    /// are taken from the segments.
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        out.reserve(self.wire_len(digests));
        self.encode_header(out, digests);
        out.put_slice(&self.data);
        self.encode_trailer(out, digests);
    }

    /// The wire form up to the data segment: BHS, AHS and header digest.
    /// With [`Pdu::encode_trailer`] around `self.data`, this lets a sender
    /// pass large data segments to a vectored write instead of copying them.
    pub fn encode_header(&self, out: &mut BytesMut, digests: Digests) {
        let mut bhs = self.bhs;
        bhs.set_data_segment_len(self.data.len() as u32);
        bhs.set_total_ahs_len(self.ahs.len());
        let start = out.len();
        out.put_slice(&bhs.0);
        out.put_slice(&self.ahs);
        if digests.header {
            let crc = crc32c(&out[start..]);
            out.put_u32_le(crc);
        }
    }

    /// What follows the data segment: padding and data digest.
    pub fn encode_trailer(&self, out: &mut BytesMut, digests: Digests) {
        if !self.data.is_empty() {
            let pad = padded(self.data.len()) - self.data.len();
            out.put_bytes(0, pad);
            if digests.data {
                out.put_u32_le(data_digest(&self.data));
            }
        }
    }
}

/// Data digests cover the data and its padding.
pub fn data_digest(data: &[u8]) -> u32 {
    let pad = padded(data.len()) - data.len();
    crate::digest::crc32c_append(crc32c(data), &[0u8; 3][..pad])
}

pub fn padded(n: usize) -> usize {
    (n + 3) & !3
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Why a byte stream could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The header was good; the PDU's data failed its digest. The header is
    /// returned so the receiver can answer with a Reject.
    #[error("data digest mismatch")]
    DataDigest(Box<Bhs>),
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataTooLong { len: u32, max: u32, bhs: Box<Bhs> },
}

/// Limits and digests that apply to the PDUs being received.
#[derive(Debug, Clone, Copy)]
pub struct FrameConfig {
    pub digests: Digests,
    /// Our MaxRecvDataSegmentLength (8192 during login).
    pub max_data_segment: u32,
}

/// Takes one complete PDU from the front of `buf`, or `Ok(None)` if more
/// bytes are needed. Nothing is allocated before the header's lengths have
/// been checked against `cfg`.
pub fn decode(buf: &mut BytesMut, cfg: &FrameConfig) -> Result<Option<Pdu>, FrameError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let mut bhs = Bhs::default();
    bhs.0.copy_from_slice(&buf[..BHS_LEN]);
    let ahs_len = bhs.total_ahs_len();
    let dsl = bhs.data_segment_len();
    let hd = if cfg.digests.header { 4 } else { 0 };
    if cfg.digests.header && buf.len() >= BHS_LEN + ahs_len + 4 {
        let got = u32::from_le_bytes([
            buf[BHS_LEN + ahs_len],
            buf[BHS_LEN + ahs_len + 1],
            buf[BHS_LEN + ahs_len + 2],
            buf[BHS_LEN + ahs_len + 3],
        ]);
        if got != crc32c(&buf[..BHS_LEN + ahs_len]) {
            return Err(FrameError::HeaderDigest);
        }
    }
    if dsl > cfg.max_data_segment {
        if cfg.digests.header && buf.len() < BHS_LEN + ahs_len + 4 {
            return Ok(None);
        }
        return Err(FrameError::DataTooLong {
            len: dsl,
            max: cfg.max_data_segment,
            bhs: Box::new(bhs),
        });
    }
    let dd = if cfg.digests.data && dsl > 0 { 4 } else { 0 };
    let total = BHS_LEN + ahs_len + hd + padded(dsl as usize) + dd;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(BHS_LEN);
    let ahs = frame.split_to(ahs_len).freeze();
    frame.advance(hd);
    let mut data = frame.split_to(padded(dsl as usize));
    if dd == 4 {
        let got = frame.get_u32_le();
        if got != crate::digest::crc32c(&data) {
            return Err(FrameError::DataDigest(Box::new(bhs)));
        }
    }
    data.truncate(dsl as usize);
    Ok(Some(Pdu {
        bhs,
        ahs,
        data: data.freeze(),
    }))
}

// ---- typed views -------------------------------------------------------

/// SCSI Command (RFC 7143 §11.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub edtl: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub cdb: [u8; 16],
}

impl ScsiCommand {
    pub fn parse(b: &Bhs) -> Self {
        let f = b.flags();
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&b.0[32..48]);
        Self {
            immediate: b.immediate(),
            final_bit: f & 0x80 != 0,
            read: f & 0x40 != 0,
            write: f & 0x20 != 0,
            attr: f & 0x07,
            lun: b.lun(),
            itt: b.itt(),
            edtl: b.u32_at(20),
            cmdsn: b.u32_at(24),
            exp_statsn: b.u32_at(28),
            cdb,
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::ScsiCommand);
        b.set_immediate(self.immediate);
        let mut f = self.attr & 0x07;
        if self.final_bit {
            f |= 0x80;
        }
        if self.read {
            f |= 0x40;
        }
        if self.write {
            f |= 0x20;
        }
        b.set_flags(f);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_u32(20, self.edtl);
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.exp_statsn);
        b.0[32..48].copy_from_slice(&self.cdb);
        b
    }
}

/// SCSI Response (RFC 7143 §11.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub exp_datasn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

impl ScsiResponse {
    pub fn parse(b: &Bhs) -> Self {
        let f = b.flags();
        Self {
            bidi_overflow: f & 0x10 != 0,
            bidi_underflow: f & 0x08 != 0,
            overflow: f & 0x04 != 0,
            underflow: f & 0x02 != 0,
            response: b.u8_at(2),
            status: b.u8_at(3),
            itt: b.itt(),
            statsn: b.u32_at(24),
            exp_cmdsn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
            exp_datasn: b.u32_at(36),
            bidi_residual: b.u32_at(40),
            residual: b.u32_at(44),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::ScsiResponse);
        let mut f = 0x80;
        if self.bidi_overflow {
            f |= 0x10;
        }
        if self.bidi_underflow {
            f |= 0x08;
        }
        if self.overflow {
            f |= 0x04;
        }
        if self.underflow {
            f |= 0x02;
        }
        b.set_flags(f);
        b.set_u8(2, self.response);
        b.set_u8(3, self.status);
        b.set_itt(self.itt);
        b.set_u32(24, self.statsn);
        b.set_u32(28, self.exp_cmdsn);
        b.set_u32(32, self.max_cmdsn);
        b.set_u32(36, self.exp_datasn);
        b.set_u32(40, self.bidi_residual);
        b.set_u32(44, self.residual);
        b
    }
}

/// Data-In (RFC 7143 §11.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_bit: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// Status is carried (phase collapse).
    pub has_status: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub datasn: u32,
    pub offset: u32,
    pub residual: u32,
}

impl DataIn {
    pub fn parse(b: &Bhs) -> Self {
        let f = b.flags();
        Self {
            final_bit: f & 0x80 != 0,
            ack: f & 0x40 != 0,
            overflow: f & 0x04 != 0,
            underflow: f & 0x02 != 0,
            has_status: f & 0x01 != 0,
            status: b.u8_at(3),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            statsn: b.u32_at(24),
            exp_cmdsn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
            datasn: b.u32_at(36),
            offset: b.u32_at(40),
            residual: b.u32_at(44),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::DataIn);
        let mut f = 0;
        if self.final_bit {
            f |= 0x80;
        }
        if self.ack {
            f |= 0x40;
        }
        if self.overflow {
            f |= 0x04;
        }
        if self.underflow {
            f |= 0x02;
        }
        if self.has_status {
            f |= 0x01;
            b.set_u8(3, self.status);
            b.set_u32(24, self.statsn);
        }
        b.set_flags(f);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(28, self.exp_cmdsn);
        b.set_u32(32, self.max_cmdsn);
        b.set_u32(36, self.datasn);
        b.set_u32(40, self.offset);
        b.set_u32(44, self.residual);
        b
    }
}

/// Data-Out (RFC 7143 §11.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_statsn: u32,
    pub datasn: u32,
    pub offset: u32,
}

impl DataOut {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            final_bit: b.final_bit(),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            exp_statsn: b.u32_at(28),
            datasn: b.u32_at(36),
            offset: b.u32_at(40),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::DataOut);
        b.set_flags(if self.final_bit { 0x80 } else { 0 });
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(28, self.exp_statsn);
        b.set_u32(36, self.datasn);
        b.set_u32(40, self.offset);
        b
    }
}

/// Ready To Transfer (RFC 7143 §11.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub r2tsn: u32,
    pub offset: u32,
    pub length: u32,
}

impl R2t {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            statsn: b.u32_at(24),
            exp_cmdsn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
            r2tsn: b.u32_at(36),
            offset: b.u32_at(40),
            length: b.u32_at(44),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::R2t);
        b.set_flags(0x80);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.statsn);
        b.set_u32(28, self.exp_cmdsn);
        b.set_u32(32, self.max_cmdsn);
        b.set_u32(36, self.r2tsn);
        b.set_u32(40, self.offset);
        b.set_u32(44, self.length);
        b
    }
}

/// NOP-Out (RFC 7143 §11.18) and NOP-In (§11.19) share one layout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nop {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    /// CmdSN for NOP-Out, StatSN for NOP-In.
    pub sn: u32,
    /// ExpStatSN for NOP-Out, ExpCmdSN for NOP-In.
    pub exp_sn: u32,
    /// MaxCmdSN (NOP-In only).
    pub max_cmdsn: u32,
}

impl Nop {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            immediate: b.immediate(),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            sn: b.u32_at(24),
            exp_sn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
        }
    }

    pub fn to_bhs(&self, op: Opcode) -> Bhs {
        let mut b = Bhs::new(op);
        b.set_immediate(self.immediate && op == Opcode::NopOut);
        b.set_flags(0x80);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.sn);
        b.set_u32(28, self.exp_sn);
        if op == Opcode::NopIn {
            b.set_u32(32, self.max_cmdsn);
        }
        b
    }
}

/// Task Management Function Request (RFC 7143 §11.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub rtt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub ref_cmdsn: u32,
    pub exp_datasn: u32,
}

impl TaskMgmtRequest {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            immediate: b.immediate(),
            function: b.flags() & 0x7f,
            lun: b.lun(),
            itt: b.itt(),
            rtt: b.u32_at(20),
            cmdsn: b.u32_at(24),
            exp_statsn: b.u32_at(28),
            ref_cmdsn: b.u32_at(32),
            exp_datasn: b.u32_at(36),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::TaskMgmtRequest);
        b.set_immediate(self.immediate);
        b.set_flags(0x80 | (self.function & 0x7f));
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_u32(20, self.rtt);
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.exp_statsn);
        b.set_u32(32, self.ref_cmdsn);
        b.set_u32(36, self.exp_datasn);
        b
    }
}

/// Task Management Function Response (RFC 7143 §11.6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
}

impl TaskMgmtResponse {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            response: b.u8_at(2),
            itt: b.itt(),
            statsn: b.u32_at(24),
            exp_cmdsn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::TaskMgmtResponse);
        b.set_flags(0x80);
        b.set_u8(2, self.response);
        b.set_itt(self.itt);
        b.set_u32(24, self.statsn);
        b.set_u32(28, self.exp_cmdsn);
        b.set_u32(32, self.max_cmdsn);
        b
    }
}

/// Login Request (RFC 7143 §11.12).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginRequestHdr {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

impl LoginRequestHdr {
    pub fn parse(b: &Bhs) -> Self {
        let f = b.flags();
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b.0[8..14]);
        Self {
            transit: f & 0x80 != 0,
            cont: f & 0x40 != 0,
            csg: (f >> 2) & 3,
            nsg: f & 3,
            version_max: b.u8_at(2),
            version_min: b.u8_at(3),
            isid,
            tsih: b.u16_at(14),
            itt: b.itt(),
            cid: b.u16_at(20),
            cmdsn: b.u32_at(24),
            exp_statsn: b.u32_at(28),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::LoginRequest);
        b.set_immediate(true);
        b.set_flags(login_flags(self.transit, self.cont, self.csg, self.nsg));
        b.set_u8(2, self.version_max);
        b.set_u8(3, self.version_min);
        b.0[8..14].copy_from_slice(&self.isid);
        b.set_u16(14, self.tsih);
        b.set_itt(self.itt);
        b.set_u16(20, self.cid);
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.exp_statsn);
        b
    }
}

fn login_flags(transit: bool, cont: bool, csg: u8, nsg: u8) -> u8 {
    let mut f = ((csg & 3) << 2) | if transit { nsg & 3 } else { 0 };
    if transit {
        f |= 0x80;
    }
    if cont {
        f |= 0x40;
    }
    f
}

/// Login Response (RFC 7143 §11.13).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginResponseHdr {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

impl LoginResponseHdr {
    pub fn parse(b: &Bhs) -> Self {
        let f = b.flags();
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b.0[8..14]);
        Self {
            transit: f & 0x80 != 0,
            cont: f & 0x40 != 0,
            csg: (f >> 2) & 3,
            nsg: f & 3,
            version_max: b.u8_at(2),
            version_active: b.u8_at(3),
            isid,
            tsih: b.u16_at(14),
            itt: b.itt(),
            statsn: b.u32_at(24),
            exp_cmdsn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
            status_class: b.u8_at(36),
            status_detail: b.u8_at(37),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::LoginResponse);
        b.set_flags(login_flags(self.transit, self.cont, self.csg, self.nsg));
        b.set_u8(2, self.version_max);
        b.set_u8(3, self.version_active);
        b.0[8..14].copy_from_slice(&self.isid);
        b.set_u16(14, self.tsih);
        b.set_itt(self.itt);
        b.set_u32(24, self.statsn);
        b.set_u32(28, self.exp_cmdsn);
        b.set_u32(32, self.max_cmdsn);
        b.set_u8(36, self.status_class);
        b.set_u8(37, self.status_detail);
        b
    }
}

/// Text Request (§11.10) and Text Response (§11.11) share one layout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text {
    pub immediate: bool,
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    /// CmdSN (request) or StatSN (response).
    pub sn: u32,
    /// ExpStatSN (request) or ExpCmdSN (response).
    pub exp_sn: u32,
    pub max_cmdsn: u32,
}

impl Text {
    pub fn parse(b: &Bhs) -> Self {
        let f = b.flags();
        Self {
            immediate: b.immediate(),
            final_bit: f & 0x80 != 0,
            cont: f & 0x40 != 0,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            sn: b.u32_at(24),
            exp_sn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
        }
    }

    pub fn to_bhs(&self, op: Opcode) -> Bhs {
        let mut b = Bhs::new(op);
        b.set_immediate(self.immediate && op == Opcode::TextRequest);
        let mut f = 0;
        if self.final_bit {
            f |= 0x80;
        }
        if self.cont {
            f |= 0x40;
        }
        b.set_flags(f);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.sn);
        b.set_u32(28, self.exp_sn);
        if op == Opcode::TextResponse {
            b.set_u32(32, self.max_cmdsn);
        }
        b
    }
}

/// Logout Request (§11.14).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

impl LogoutRequest {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            immediate: b.immediate(),
            reason: b.flags() & 0x7f,
            itt: b.itt(),
            cid: b.u16_at(20),
            cmdsn: b.u32_at(24),
            exp_statsn: b.u32_at(28),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::LogoutRequest);
        b.set_immediate(self.immediate);
        b.set_flags(0x80 | (self.reason & 0x7f));
        b.set_itt(self.itt);
        b.set_u16(20, self.cid);
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.exp_statsn);
        b
    }
}

/// Logout Response (§11.15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            response: b.u8_at(2),
            itt: b.itt(),
            statsn: b.u32_at(24),
            exp_cmdsn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
            time2wait: b.u16_at(40),
            time2retain: b.u16_at(42),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::LogoutResponse);
        b.set_flags(0x80);
        b.set_u8(2, self.response);
        b.set_itt(self.itt);
        b.set_u32(24, self.statsn);
        b.set_u32(28, self.exp_cmdsn);
        b.set_u32(32, self.max_cmdsn);
        b.set_u16(40, self.time2wait);
        b.set_u16(42, self.time2retain);
        b
    }
}

/// Reject (§11.17). Its data segment carries the rejected header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub datasn: u32,
}

impl Reject {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            reason: b.u8_at(2),
            statsn: b.u32_at(24),
            exp_cmdsn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
            datasn: b.u32_at(36),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::Reject);
        b.set_flags(0x80);
        b.set_u8(2, self.reason);
        b.set_itt(RESERVED_TAG);
        b.set_u32(24, self.statsn);
        b.set_u32(28, self.exp_cmdsn);
        b.set_u32(32, self.max_cmdsn);
        b.set_u32(36, self.datasn);
        b
    }
}

/// Asynchronous Message (§11.9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: u64,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

impl AsyncMessage {
    pub fn parse(b: &Bhs) -> Self {
        Self {
            lun: b.lun(),
            statsn: b.u32_at(24),
            exp_cmdsn: b.u32_at(28),
            max_cmdsn: b.u32_at(32),
            event: b.u8_at(36),
            vcode: b.u8_at(37),
            param1: b.u16_at(38),
            param2: b.u16_at(40),
            param3: b.u16_at(42),
        }
    }

    pub fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(Opcode::AsyncMessage);
        b.set_flags(0x80);
        b.set_lun(self.lun);
        b.set_itt(RESERVED_TAG);
        b.set_u32(24, self.statsn);
        b.set_u32(28, self.exp_cmdsn);
        b.set_u32(32, self.max_cmdsn);
        b.set_u8(36, self.event);
        b.set_u8(37, self.vcode);
        b.set_u16(38, self.param1);
        b.set_u16(40, self.param2);
        b.set_u16(42, self.param3);
        b
    }
}

/// Serial number arithmetic (RFC 1982, 32 bits) for CmdSN and StatSN.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(p: &Pdu, d: Digests) -> Pdu {
        let mut out = BytesMut::new();
        p.encode(&mut out, d);
        assert_eq!(out.len(), p.wire_len(d));
        let cfg = FrameConfig {
            digests: d,
            max_data_segment: 1 << 20,
        };
        let got = decode(&mut out, &cfg).unwrap().unwrap();
        assert!(out.is_empty());
        got
    }

    #[test]
    fn typed_views_round_trip() {
        let cmd = ScsiCommand {
            immediate: true,
            final_bit: true,
            read: true,
            write: false,
            attr: 1,
            lun: 0x0001_0000_0000_0000,
            itt: 7,
            edtl: 4096,
            cmdsn: 0xffff_fffe,
            exp_statsn: 3,
            cdb: [0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(ScsiCommand::parse(&cmd.to_bhs()), cmd);
        let di = DataIn {
            final_bit: true,
            has_status: true,
            underflow: true,
            status: 2,
            itt: 9,
            ttt: RESERVED_TAG,
            statsn: 4,
            exp_cmdsn: 5,
            max_cmdsn: 36,
            datasn: 2,
            offset: 8192,
            residual: 512,
            ..Default::default()
        };
        assert_eq!(DataIn::parse(&di.to_bhs()), di);
        let r2t = R2t {
            itt: 1,
            ttt: 2,
            r2tsn: 3,
            offset: 4,
            length: 5,
            ..Default::default()
        };
        assert_eq!(R2t::parse(&r2t.to_bhs()), r2t);
        let lr = LoginRequestHdr {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 0,
            itt: 1,
            cid: 1,
            ..Default::default()
        };
        assert_eq!(LoginRequestHdr::parse(&lr.to_bhs()), lr);
        let tm = TaskMgmtRequest {
            function: tmf::ABORT_TASK,
            rtt: 44,
            ref_cmdsn: 3,
            ..Default::default()
        };
        assert_eq!(TaskMgmtRequest::parse(&tm.to_bhs()), tm);
    }

    #[test]
    fn framing_with_and_without_digests() {
        let p = Pdu::new(
            ScsiResponse {
                status: 2,
                itt: 3,
                ..Default::default()
            }
            .to_bhs(),
            Bytes::from_static(b"sense"),
        );
        for d in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let got = roundtrip(&p, d);
            assert_eq!(got.data, p.data);
            assert_eq!(ScsiResponse::parse(&got.bhs).status, 2);
        }
    }

    #[test]
    fn digest_errors_are_reported() {
        let p = Pdu::new(Bhs::new(Opcode::NopOut), Bytes::from_static(b"ping"));
        let d = Digests {
            header: true,
            data: true,
        };
        let cfg = FrameConfig {
            digests: d,
            max_data_segment: 8192,
        };
        let mut out = BytesMut::new();
        p.encode(&mut out, d);
        let mut bad = out.clone();
        bad[2] ^= 1;
        assert_eq!(decode(&mut bad, &cfg), Err(FrameError::HeaderDigest));
        let mut bad = out.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        assert!(matches!(
            decode(&mut bad, &cfg),
            Err(FrameError::DataDigest(_))
        ));
    }

    #[test]
    fn oversized_segment_refused_before_allocation() {
        let mut b = Bhs::new(Opcode::DataOut);
        b.set_data_segment_len(MAX_DATA_SEGMENT_LEN);
        let mut buf = BytesMut::from(&b.0[..]);
        let cfg = FrameConfig {
            digests: Digests::default(),
            max_data_segment: 8192,
        };
        assert!(matches!(
            decode(&mut buf, &cfg),
            Err(FrameError::DataTooLong { .. })
        ));
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn serial_arithmetic() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_ffff, 0));
        assert!(!sn_lt(0, 0xffff_ffff));
        assert!(sn_le(5, 5));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600),
                               hd in any::<bool>(), dd in any::<bool>()) {
            let cfg = FrameConfig { digests: Digests { header: hd, data: dd }, max_data_segment: 256 };
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..8 {
                match decode(&mut buf, &cfg) {
                    Ok(Some(p)) => {
                        let _ = Opcode::from_u8(p.bhs.0[0]);
                        let _ = ScsiCommand::parse(&p.bhs);
                        let _ = LoginRequestHdr::parse(&p.bhs);
                    }
                    _ => break,
                }
            }
        }

        #[test]
        fn encode_decode_any_pdu(bhs in proptest::collection::vec(any::<u8>(), 48),
                                 data in proptest::collection::vec(any::<u8>(), 0..300),
                                 hd in any::<bool>(), dd in any::<bool>()) {
            let mut b = Bhs::default();
            b.0.copy_from_slice(&bhs);
            b.0[4] = 0;
            let p = Pdu::new(b, Bytes::from(data));
            let got = roundtrip(&p, Digests { header: hd, data: dd });
            prop_assert_eq!(got.data, p.data);
            prop_assert_eq!(&got.bhs.0[8..], &p.bhs.0[8..]);
        }
    }
}
