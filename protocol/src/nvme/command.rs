//! The 64-byte submission queue entry, the 16-byte completion queue entry,
//! opcodes, SGL data descriptors and status codes (NVMe base spec).

pub const SQE_LEN: usize = 64;
pub const CQE_LEN: usize = 16;

/// Admin command set opcodes.
pub mod admin {
    pub const DELETE_SQ: u8 = 0x00;
    pub const CREATE_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_CQ: u8 = 0x04;
    pub const CREATE_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT: u8 = 0x0c;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const FABRICS: u8 = 0x7f;
}

/// NVM command set opcodes.
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DSM: u8 = 0x09;
    pub const RESV_REGISTER: u8 = 0x0d;
    pub const RESV_REPORT: u8 = 0x0e;
    pub const RESV_ACQUIRE: u8 = 0x11;
    pub const RESV_RELEASE: u8 = 0x15;
    pub const FABRICS: u8 = 0x7f;
}

/// Feature identifiers.
pub mod feat {
    pub const VOLATILE_WC: u8 = 0x06;
    pub const NUM_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT: u8 = 0x0b;
    pub const KATO: u8 = 0x0f;
    pub const HOST_ID: u8 = 0x81;
    pub const RESV_MASK: u8 = 0x82;
    pub const RESV_PERSIST: u8 = 0x83;
}

/// Fused operation bits (CDW0 bits 9:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuse {
    None,
    First,
    Second,
    Reserved,
}

/// A submission queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; SQE_LEN]);

impl Default for Sqe {
    fn default() -> Self {
        Sqe([0; SQE_LEN])
    }
}

impl Sqe {
    pub fn new(opcode: u8, cid: u16) -> Self {
        let mut s = Sqe::default();
        s.0[0] = opcode;
        s.set_cid(cid);
        s
    }
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    pub fn fuse(&self) -> Fuse {
        match self.0[1] & 3 {
            0 => Fuse::None,
            1 => Fuse::First,
            2 => Fuse::Second,
            _ => Fuse::Reserved,
        }
    }
    pub fn set_fuse(&mut self, f: Fuse) {
        let v = match f {
            Fuse::None => 0,
            Fuse::First => 1,
            Fuse::Second => 2,
            Fuse::Reserved => 3,
        };
        self.0[1] = (self.0[1] & !3) | v;
    }
    /// PRP or SGL for data transfer (CDW0 bits 15:14).
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }
    pub fn cid(&self) -> u16 {
        u16::from_le_bytes([self.0[2], self.0[3]])
    }
    pub fn set_cid(&mut self, cid: u16) {
        self.0[2..4].copy_from_slice(&cid.to_le_bytes());
    }
    pub fn nsid(&self) -> u32 {
        self.dw(1)
    }
    pub fn set_nsid(&mut self, nsid: u32) {
        self.set_dw(1, nsid);
    }
    /// Command dword `n` (0..16).
    pub fn dw(&self, n: usize) -> u32 {
        let at = n * 4;
        u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
    pub fn set_dw(&mut self, n: usize, v: u32) {
        self.0[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn qw(&self, n: usize) -> u64 {
        self.dw(n) as u64 | ((self.dw(n + 1) as u64) << 32)
    }
    pub fn set_qw(&mut self, n: usize, v: u64) {
        self.set_dw(n, v as u32);
        self.set_dw(n + 1, (v >> 32) as u32);
    }
    pub fn sgl(&self) -> SglDesc {
        SglDesc::parse(&self.0[24..40])
    }
    pub fn set_sgl(&mut self, d: SglDesc) {
        self.0[1] = (self.0[1] & 0x3f) | (1 << 6);
        self.0[24..40].copy_from_slice(&d.encode());
    }
    /// Starting LBA of Read/Write/Compare/Write Zeroes (CDW10-11).
    pub fn slba(&self) -> u64 {
        self.qw(10)
    }
    /// Number of logical blocks (CDW12 bits 15:0 are 0's based).
    pub fn nlb(&self) -> u32 {
        (self.dw(12) & 0xffff) + 1
    }
    pub fn fua(&self) -> bool {
        self.dw(12) & (1 << 30) != 0
    }
}

/// SGL descriptor type byte: type in bits 7:4, subtype in bits 3:0.
pub mod sgl {
    /// Data Block, address is an offset into the capsule's data.
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport SGL Data Block, transport specific (data by R2T/C2HData).
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5a;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SglDesc {
    pub addr: u64,
    pub len: u32,
    pub kind: u8,
}

impl SglDesc {
    pub fn parse(b: &[u8]) -> SglDesc {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[0..8]);
        SglDesc {
            addr: u64::from_le_bytes(a),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            kind: b[15],
        }
    }
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[15] = self.kind;
        b
    }
    pub fn in_capsule(len: u32) -> Self {
        SglDesc {
            addr: 0,
            len,
            kind: sgl::DATA_BLOCK_OFFSET,
        }
    }
    pub fn transport(len: u32) -> Self {
        SglDesc {
            addr: 0,
            len,
            kind: sgl::TRANSPORT_DATA_BLOCK,
        }
    }
}

/// A completion's status field (without the phase bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

/// Status code types.
pub mod sct {
    pub const GENERIC: u8 = 0;
    pub const COMMAND_SPECIFIC: u8 = 1;
    pub const MEDIA: u8 = 2;
}

/// Generic command status codes.
pub mod sc {
    pub const SUCCESS: u8 = 0x00;
    pub const INVALID_OPCODE: u8 = 0x01;
    pub const INVALID_FIELD: u8 = 0x02;
    pub const CID_CONFLICT: u8 = 0x03;
    pub const DATA_XFER_ERROR: u8 = 0x04;
    pub const INTERNAL: u8 = 0x06;
    pub const ABORT_REQ: u8 = 0x07;
    pub const ABORT_FAILED_FUSED: u8 = 0x09;
    pub const ABORT_MISSING_FUSED: u8 = 0x0a;
    pub const INVALID_NS: u8 = 0x0b;
    pub const CMD_SEQ_ERROR: u8 = 0x0c;
    pub const SGL_INVALID_DATA_LEN: u8 = 0x0f;
    pub const SGL_INVALID_TYPE: u8 = 0x11;
    pub const SGL_INVALID_OFFSET: u8 = 0x16;
    pub const HOST_ID_INCONSISTENT: u8 = 0x18;
    pub const KAT_EXPIRED: u8 = 0x19;
    pub const LBA_RANGE: u8 = 0x80;
    pub const NS_NOT_READY: u8 = 0x82;
    pub const RESERVATION_CONFLICT: u8 = 0x83;
    // Command specific (SCT 1).
    pub const INVALID_QID: u8 = 0x01;
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    pub const AER_LIMIT: u8 = 0x05;
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    pub const FEAT_NOT_SAVEABLE: u8 = 0x0d;
    pub const CONNECT_INCOMPATIBLE_FORMAT: u8 = 0x80;
    pub const CONNECT_CTRL_BUSY: u8 = 0x81;
    pub const CONNECT_INVALID_PARAM: u8 = 0x82;
    pub const CONNECT_INVALID_HOST: u8 = 0x84;
    // Media errors (SCT 2).
    pub const WRITE_FAULT: u8 = 0x80;
    pub const READ_ERROR: u8 = 0x81;
    pub const COMPARE_FAILED: u8 = 0x85;
}

impl Status {
    pub const SUCCESS: Status = Status {
        sct: 0,
        sc: 0,
        dnr: false,
    };
    pub fn generic(sc: u8) -> Self {
        Status {
            sct: sct::GENERIC,
            sc,
            dnr: true,
        }
    }
    pub fn specific(sc: u8) -> Self {
        Status {
            sct: sct::COMMAND_SPECIFIC,
            sc,
            dnr: true,
        }
    }
    pub fn media(sc: u8) -> Self {
        Status {
            sct: sct::MEDIA,
            sc,
            dnr: false,
        }
    }
    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }
    /// The CQE status field bits 15:1 (the phase bit 0 is left clear).
    pub fn to_field(self) -> u16 {
        ((self.sc as u16) << 1) | (((self.sct & 7) as u16) << 9) | ((self.dnr as u16) << 15)
    }
    pub fn from_field(f: u16) -> Self {
        Status {
            sc: (f >> 1) as u8,
            sct: ((f >> 9) & 7) as u8,
            dnr: f & 0x8000 != 0,
        }
    }
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe {
    /// DW0 and DW1 (command specific).
    pub result: u64,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Cqe {
    pub fn new(cid: u16, status: Status) -> Self {
        Cqe {
            cid,
            status,
            ..Default::default()
        }
    }
    pub fn encode(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        b[0..8].copy_from_slice(&self.result.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.to_field().to_le_bytes());
        b
    }
    pub fn parse(b: &[u8; CQE_LEN]) -> Self {
        let mut r = [0u8; 8];
        r.copy_from_slice(&b[0..8]);
        Cqe {
            result: u64::from_le_bytes(r),
            sqhd: u16::from_le_bytes([b[8], b[9]]),
            sqid: u16::from_le_bytes([b[10], b[11]]),
            cid: u16::from_le_bytes([b[12], b[13]]),
            status: Status::from_field(u16::from_le_bytes([b[14], b[15]])),
        }
    }
    pub fn dw0(&self) -> u32 {
        self.result as u32
    }
}

/// One Dataset Management range (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsmRange {
    pub cattr: u32,
    pub nlb: u32,
    pub slba: u64,
}

impl DsmRange {
    pub const LEN: usize = 16;
    /// Parses up to `count` ranges; `None` when `data` is too short.
    pub fn parse_all(data: &[u8], count: usize) -> Option<Vec<DsmRange>> {
        if data.len() < count.checked_mul(Self::LEN)? {
            return None;
        }
        Some(
            data.chunks_exact(Self::LEN)
                .take(count)
                .map(|c| {
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&c[8..16]);
                    DsmRange {
                        cattr: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                        nlb: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                        slba: u64::from_le_bytes(s),
                    }
                })
                .collect(),
        )
    }
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.cattr.to_le_bytes());
        b[4..8].copy_from_slice(&self.nlb.to_le_bytes());
        b[8..16].copy_from_slice(&self.slba.to_le_bytes());
        b
    }
}

/// Builds a Read/Write/Compare SQE.
pub fn rw_sqe(opcode: u8, cid: u16, nsid: u32, slba: u64, nlb: u32, fua: bool) -> Sqe {
    let mut s = Sqe::new(opcode, cid);
    s.set_nsid(nsid);
    s.set_qw(10, slba);
    s.set_dw(12, (nlb.saturating_sub(1) & 0xffff) | ((fua as u32) << 30));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sqe_fields() {
        let mut s = rw_sqe(nvm::WRITE, 0x1234, 1, 0x1_0000_0002, 8, true);
        s.set_sgl(SglDesc::in_capsule(4096));
        s.set_fuse(Fuse::First);
        assert_eq!(s.opcode(), nvm::WRITE);
        assert_eq!(s.cid(), 0x1234);
        assert_eq!(s.nsid(), 1);
        assert_eq!(s.slba(), 0x1_0000_0002);
        assert_eq!(s.nlb(), 8);
        assert!(s.fua());
        assert_eq!(s.psdt(), 1);
        assert_eq!(s.fuse(), Fuse::First);
        assert_eq!(s.sgl(), SglDesc::in_capsule(4096));
    }

    #[test]
    fn cqe_round_trip() {
        let c = Cqe {
            result: 0xdead_beef_0000_0001,
            sqhd: 5,
            sqid: 2,
            cid: 9,
            status: Status::specific(sc::CONNECT_INVALID_PARAM),
        };
        assert_eq!(Cqe::parse(&c.encode()), c);
        // Linux spells this status 0x182 with DNR.
        assert_eq!(c.status.to_field() >> 1, 0x4182);
    }

    #[test]
    fn dsm_ranges() {
        let r = DsmRange {
            cattr: 0,
            nlb: 8,
            slba: 100,
        };
        let mut d = r.encode().to_vec();
        d.extend_from_slice(&r.encode());
        assert_eq!(DsmRange::parse_all(&d, 2).unwrap(), vec![r, r]);
        assert!(DsmRange::parse_all(&d, 3).is_none());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 64..=64), n in 0usize..300) {
            let mut a = [0u8; 64];
            a.copy_from_slice(&b);
            let s = Sqe(a);
            let _ = (s.sgl(), s.nlb(), s.slba(), s.fuse(), s.nsid());
            let mut c = [0u8; 16];
            c.copy_from_slice(&b[..16]);
            let cq = Cqe::parse(&c);
            prop_assert_eq!(Cqe::parse(&cq.encode()).status, Status::from_field(cq.status.to_field()));
            let _ = DsmRange::parse_all(&b, n);
        }
    }
}
