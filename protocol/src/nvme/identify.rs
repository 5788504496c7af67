//! Identify data structures (4096 bytes each): controller (CNS 01h),
//! namespace (00h), active namespace list (02h), namespace identification
//! descriptors (03h), and the I/O command set specific structures a Linux
//! host may ask for (05h, 06h, 08h, 1Ch).

use super::command::{admin, Sqe};

pub const IDENTIFY_LEN: usize = 4096;

pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESC_LIST: u8 = 0x03;
    pub const CS_NAMESPACE: u8 = 0x05;
    pub const CS_CONTROLLER: u8 = 0x06;
    pub const CS_INDEP_NAMESPACE: u8 = 0x08;
    pub const CS_SETS: u8 = 0x1c;
}

/// Controller types (CNTRLTYPE).
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
}

/// ONCS bits.
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub const RESERVATIONS: u16 = 1 << 5;
}

/// RESCAP bits (Identify Namespace byte 31).
pub mod rescap {
    /// Persist Through Power Loss.
    pub const PTPL: u8 = 1 << 0;
    /// Reservation types 1-6 (write exclusive ... exclusive access all
    /// registrants), bits 1-6.
    pub const ALL_TYPES: u8 = 0x7e;
    /// Ignore Existing Key behaves as NVMe 1.3 and later define it.
    pub const IEKEY: u8 = 1 << 7;
}

pub fn identify_sqe(cid: u16, cns: u8, nsid: u32) -> Sqe {
    let mut s = Sqe::new(admin::IDENTIFY, cid);
    s.set_nsid(nsid);
    s.set_dw(10, cns as u32);
    s
}

/// The fields of Identify Controller we set or read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum data transfer size as a power of two of 4 KiB pages; 0 means
    /// no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub oaes: u32,
    pub cntrltype: u8,
    /// Abort command limit, 0's based.
    pub acl: u8,
    /// Asynchronous event request limit, 0's based.
    pub aerl: u8,
    pub lpa: u8,
    /// Error log page entries, 0's based.
    pub elpe: u8,
    /// Keep alive granularity in 100 ms units.
    pub kas: u16,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub vwc: u8,
    pub sgls: u32,
    pub subnqn: String,
    /// In-capsule command size in 16-byte units (SQE included).
    pub ioccsz: u32,
    pub iorcsz: u32,
    pub icdoff: u16,
    pub msdbd: u8,
    /// Multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
}

fn put_str(b: &mut [u8], s: &str) {
    // ASCII, space padded, as the spec wants for SN/MN/FR.
    for (i, c) in b.iter_mut().enumerate() {
        *c = s.as_bytes().get(i).copied().unwrap_or(b' ');
    }
}
fn get_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl IdentifyController {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        b[0..2].copy_from_slice(&self.vid.to_le_bytes());
        b[2..4].copy_from_slice(&self.ssvid.to_le_bytes());
        put_str(&mut b[4..24], &self.serial);
        put_str(&mut b[24..64], &self.model);
        put_str(&mut b[64..72], &self.firmware);
        b[72] = 0; // RAB
        b[76] = self.cmic;
        b[77] = self.mdts;
        b[78..80].copy_from_slice(&self.cntlid.to_le_bytes());
        b[80..84].copy_from_slice(&self.ver.to_le_bytes());
        b[92..96].copy_from_slice(&self.oaes.to_le_bytes());
        b[111] = self.cntrltype;
        b[258] = self.acl;
        b[259] = self.aerl;
        b[260] = 0x03; // FRMW: slot 1 read-only, one slot
        b[261] = self.lpa;
        b[262] = self.elpe;
        b[320..322].copy_from_slice(&self.kas.to_le_bytes());
        b[512] = 0x66; // SQES: 64 bytes
        b[513] = 0x44; // CQES: 16 bytes
        b[514..516].copy_from_slice(&self.maxcmd.to_le_bytes());
        b[516..520].copy_from_slice(&self.nn.to_le_bytes());
        b[520..522].copy_from_slice(&self.oncs.to_le_bytes());
        b[522..524].copy_from_slice(&self.fuses.to_le_bytes());
        b[525] = self.vwc;
        b[536..540].copy_from_slice(&self.sgls.to_le_bytes());
        let n = self.subnqn.len().min(255);
        b[768..768 + n].copy_from_slice(&self.subnqn.as_bytes()[..n]);
        b[1792..1796].copy_from_slice(&self.ioccsz.to_le_bytes());
        b[1796..1800].copy_from_slice(&self.iorcsz.to_le_bytes());
        b[1800..1802].copy_from_slice(&self.icdoff.to_le_bytes());
        b[1803] = self.msdbd;
        b
    }

    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < IDENTIFY_LEN {
            return None;
        }
        let nqn = &b[768..1024];
        let end = nqn.iter().position(|&c| c == 0).unwrap_or(nqn.len());
        Some(IdentifyController {
            vid: le16(b, 0),
            ssvid: le16(b, 2),
            serial: get_str(&b[4..24]),
            model: get_str(&b[24..64]),
            firmware: get_str(&b[64..72]),
            cmic: b[76],
            mdts: b[77],
            cntlid: le16(b, 78),
            ver: le32(b, 80),
            oaes: le32(b, 92),
            cntrltype: b[111],
            acl: b[258],
            aerl: b[259],
            lpa: b[261],
            elpe: b[262],
            kas: le16(b, 320),
            maxcmd: le16(b, 514),
            nn: le32(b, 516),
            oncs: le16(b, 520),
            fuses: le16(b, 522),
            vwc: b[525],
            sgls: le32(b, 536),
            subnqn: String::from_utf8_lossy(&nqn[..end]).to_string(),
            ioccsz: le32(b, 1792),
            iorcsz: le32(b, 1796),
            icdoff: le16(b, 1800),
            msdbd: b[1803],
        })
    }
}

/// Identify Namespace with one LBA format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyNamespace {
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    /// Bit 0: thin provisioning; bit 2: deallocated blocks read as zero
    /// with DLFEAT.
    pub nsfeat: u8,
    /// LBA data size as a power of two (9 for 512, 12 for 4096).
    pub lbads: u8,
    /// Bit 0: the namespace may be attached to more than one controller.
    pub nmic: u8,
    /// Reservation capabilities ([`rescap`]).
    pub rescap: u8,
    /// Deallocate logical block features: bits 2:0 = 001b reads zeroes.
    pub dlfeat: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

impl IdentifyNamespace {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        b[0..8].copy_from_slice(&self.nsze.to_le_bytes());
        b[8..16].copy_from_slice(&self.ncap.to_le_bytes());
        b[16..24].copy_from_slice(&self.nuse.to_le_bytes());
        b[24] = self.nsfeat;
        b[25] = 0; // NLBAF: one format, 0's based
        b[26] = 0; // FLBAS: format 0
        b[30] = self.nmic;
        b[31] = self.rescap;
        b[33] = self.dlfeat;
        b[104..120].copy_from_slice(&self.nguid);
        b[120..128].copy_from_slice(&self.eui64);
        // LBAF0: MS 0, LBADS, RP 0.
        b[128 + 2] = self.lbads;
        b
    }

    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < IDENTIFY_LEN {
            return None;
        }
        let f = (b[26] & 0x0f) as usize;
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&b[120..128]);
        Some(IdentifyNamespace {
            nsze: le64(b, 0),
            ncap: le64(b, 8),
            nuse: le64(b, 16),
            nsfeat: b[24],
            nmic: b[30],
            rescap: b[31],
            dlfeat: b[33],
            lbads: b[128 + f * 4 + 2],
            nguid,
            eui64,
        })
    }

    pub fn block_size(&self) -> Option<u32> {
        1u32.checked_shl(self.lbads as u32)
    }
}

/// Active namespace list: NSIDs greater than `after`, ascending, at most
/// 1024.
pub fn encode_ns_list(nsids: &[u32], after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut v: Vec<u32> = nsids.iter().copied().filter(|&n| n > after).collect();
    v.sort_unstable();
    for (i, n) in v.iter().take(IDENTIFY_LEN / 4).enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
    }
    b
}

pub fn parse_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

/// Namespace identification descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsDesc {
    Eui64([u8; 8]),
    Nguid([u8; 16]),
    Uuid([u8; 16]),
    Csi(u8),
}

pub fn encode_ns_descs(d: &[NsDesc]) -> Vec<u8> {
    let mut b = Vec::with_capacity(IDENTIFY_LEN);
    for x in d {
        let (ty, v): (u8, &[u8]) = match x {
            NsDesc::Eui64(v) => (1, v),
            NsDesc::Nguid(v) => (2, v),
            NsDesc::Uuid(v) => (3, v),
            NsDesc::Csi(v) => (4, std::slice::from_ref(v)),
        };
        if b.len() + 4 + v.len() > IDENTIFY_LEN {
            break;
        }
        b.extend_from_slice(&[ty, v.len() as u8, 0, 0]);
        b.extend_from_slice(v);
    }
    b.resize(IDENTIFY_LEN, 0);
    b
}

/// Parses descriptors until a zero type or the end; malformed entries stop
/// the walk.
pub fn parse_ns_descs(b: &[u8]) -> Vec<NsDesc> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 4 <= b.len() {
        let ty = b[at];
        let len = b[at + 1] as usize;
        if ty == 0 || at + 4 + len > b.len() {
            break;
        }
        let v = &b[at + 4..at + 4 + len];
        let d = match (ty, len) {
            (1, 8) => NsDesc::Eui64(v.try_into().unwrap_or([0; 8])),
            (2, 16) => NsDesc::Nguid(v.try_into().unwrap_or([0; 16])),
            (3, 16) => NsDesc::Uuid(v.try_into().unwrap_or([0; 16])),
            (4, 1) => NsDesc::Csi(v[0]),
            _ => break,
        };
        out.push(d);
        at += 4 + len;
    }
    out
}

/// Command-set independent Identify Namespace (CNS 08h): NMIC and NSTAT
/// (namespace ready) are what a host reads from it.
pub fn encode_cs_indep_ns(nmic: u8) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    b[0] = 0; // NSFEAT
    b[1] = nmic;
    b[20] = 1; // NSTAT: ready
    b
}

/// NVM command set I/O command set structure (CNS 1Ch): only NVM (bit 0).
pub fn encode_cs_sets() -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    b[0] = 1;
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controller_round_trip() {
        let c = IdentifyController {
            vid: 0x1b36,
            ssvid: 0x1b36,
            serial: "0123abcd".into(),
            model: "vtgt".into(),
            firmware: "0.1".into(),
            mdts: 8,
            cntlid: 3,
            ver: 0x10400,
            oaes: 1 << 8,
            cntrltype: cntrltype::IO,
            acl: 3,
            aerl: 3,
            lpa: 4,
            elpe: 0,
            kas: 10,
            maxcmd: 128,
            nn: 4,
            oncs: oncs::COMPARE | oncs::DSM,
            fuses: 1,
            vwc: 1,
            sgls: 1 | (1 << 20),
            subnqn: "nqn.2026-11.org.vtgt:default".into(),
            ioccsz: 4 + 512,
            iorcsz: 1,
            icdoff: 0,
            msdbd: 1,
            cmic: 2,
        };
        assert_eq!(IdentifyController::parse(&c.encode()).unwrap(), c);
    }

    #[test]
    fn namespace_round_trip() {
        let n = IdentifyNamespace {
            nsze: 1 << 21,
            ncap: 1 << 21,
            nuse: 1 << 21,
            nsfeat: 1,
            lbads: 9,
            nmic: 1,
            rescap: rescap::ALL_TYPES | rescap::PTPL,
            dlfeat: 1,
            nguid: [5; 16],
            eui64: [6; 8],
        };
        let p = IdentifyNamespace::parse(&n.encode()).unwrap();
        assert_eq!(p, n);
        assert_eq!(p.block_size(), Some(512));
    }

    #[test]
    fn lists_and_descs() {
        let b = encode_ns_list(&[3, 1, 2], 1);
        assert_eq!(parse_ns_list(&b), vec![2, 3]);
        let d = vec![
            NsDesc::Eui64([1; 8]),
            NsDesc::Nguid([2; 16]),
            NsDesc::Uuid([3; 16]),
            NsDesc::Csi(0),
        ];
        assert_eq!(parse_ns_descs(&encode_ns_descs(&d)), d);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = IdentifyController::parse(&b);
            let _ = IdentifyNamespace::parse(&b).map(|n| n.block_size());
            let _ = parse_ns_list(&b);
            let _ = parse_ns_descs(&b);
        }
    }
}
