//! Log pages: error information (01h), SMART / health (02h), firmware slot
//! (03h), changed namespace list (04h), the discovery log (70h) and the
//! reservation notification log (80h).

use super::command::{admin, Sqe};

pub mod lid {
    pub const ERROR_INFO: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FW_SLOT: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const CMD_EFFECTS: u8 = 0x05;
    pub const DISCOVERY: u8 = 0x70;
    pub const RESV_NOTIFICATION: u8 = 0x80;
}

/// Reservation notification log page types.
pub mod resv_notify {
    pub const EMPTY: u8 = 0;
    pub const REGISTRATION_PREEMPTED: u8 = 1;
    pub const RESERVATION_RELEASED: u8 = 2;
    pub const RESERVATION_PREEMPTED: u8 = 3;
}

pub const RESV_NOTIFICATION_LEN: usize = 64;

/// One reservation notification log page: the 64-bit log page count, the
/// type, how many more pages are waiting (at most 255) and the NSID.
pub fn encode_resv_notification(count: u64, kind: u8, more: usize, nsid: u32) -> Vec<u8> {
    let mut b = vec![0u8; RESV_NOTIFICATION_LEN];
    b[0..8].copy_from_slice(&count.to_le_bytes());
    b[8] = kind;
    b[9] = more.min(255) as u8;
    b[12..16].copy_from_slice(&nsid.to_le_bytes());
    b
}

pub const ERROR_ENTRY_LEN: usize = 64;
pub const SMART_LEN: usize = 512;
pub const FW_SLOT_LEN: usize = 512;
pub const CHANGED_NS_LEN: usize = 4096;
pub const DISC_HDR_LEN: usize = 1024;
pub const DISC_ENTRY_LEN: usize = 1024;

/// Get Log Page fields: LID, retain asynchronous event, byte count and
/// offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetLogPage {
    pub lid: u8,
    pub lsp: u8,
    pub rae: bool,
    /// Bytes requested (NUMD + 1 dwords).
    pub len: u64,
    pub offset: u64,
}

impl GetLogPage {
    pub fn parse(s: &Sqe) -> Self {
        let d10 = s.dw(10);
        let numd = ((d10 >> 16) as u64) | (((s.dw(11) & 0xffff) as u64) << 16);
        GetLogPage {
            lid: d10 as u8,
            lsp: ((d10 >> 8) & 0x7f) as u8,
            rae: d10 & (1 << 15) != 0,
            len: (numd + 1) * 4,
            offset: s.qw(12),
        }
    }
    pub fn to_sqe(&self, cid: u16, nsid: u32) -> Sqe {
        let mut s = Sqe::new(admin::GET_LOG_PAGE, cid);
        s.set_nsid(nsid);
        let numd = (self.len / 4).saturating_sub(1);
        s.set_dw(
            10,
            self.lid as u32
                | ((self.lsp as u32 & 0x7f) << 8)
                | ((self.rae as u32) << 15)
                | (((numd & 0xffff) as u32) << 16),
        );
        s.set_dw(11, ((numd >> 16) & 0xffff) as u32);
        s.set_qw(12, self.offset);
        s
    }
}

/// Returns the `[offset, offset+len)` window of a log page, zero filled
/// past its end; `None` if the offset is past the end or not dword aligned.
pub fn window(page: &[u8], offset: u64, len: usize) -> Option<Vec<u8>> {
    if !offset.is_multiple_of(4) || offset > page.len() as u64 {
        return None;
    }
    let o = offset as usize;
    let mut out = vec![0u8; len];
    let n = (page.len() - o).min(len);
    out[..n].copy_from_slice(&page[o..o + n]);
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorEntry {
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: u16,
    pub lba: u64,
    pub nsid: u32,
}

impl ErrorEntry {
    pub fn encode(&self) -> [u8; ERROR_ENTRY_LEN] {
        let mut b = [0u8; ERROR_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.error_count.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqid.to_le_bytes());
        b[10..12].copy_from_slice(&self.cid.to_le_bytes());
        b[12..14].copy_from_slice(&self.status.to_le_bytes());
        b[14..16].copy_from_slice(&0xffffu16.to_le_bytes()); // no parameter location
        b[16..24].copy_from_slice(&self.lba.to_le_bytes());
        b[24..28].copy_from_slice(&self.nsid.to_le_bytes());
        b
    }
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < ERROR_ENTRY_LEN {
            return None;
        }
        let q = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        Some(ErrorEntry {
            error_count: q(0),
            sqid: u16::from_le_bytes([b[8], b[9]]),
            cid: u16::from_le_bytes([b[10], b[11]]),
            status: u16::from_le_bytes([b[12], b[13]]),
            lba: q(16),
            nsid: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
        })
    }
}

/// SMART / health information. Counters are 128-bit in the page; we keep
/// the low 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Smart {
    pub critical_warning: u8,
    /// Kelvin.
    pub temperature: u16,
    pub avail_spare: u8,
    pub spare_thresh: u8,
    pub percent_used: u8,
    /// In thousands of 512-byte units.
    pub data_units_read: u64,
    pub data_units_written: u64,
    pub host_reads: u64,
    pub host_writes: u64,
    pub power_on_hours: u64,
    pub media_errors: u64,
}

impl Smart {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SMART_LEN];
        b[0] = self.critical_warning;
        b[1..3].copy_from_slice(&self.temperature.to_le_bytes());
        b[3] = self.avail_spare;
        b[4] = self.spare_thresh;
        b[5] = self.percent_used;
        let mut put = |at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(32, self.data_units_read);
        put(48, self.data_units_written);
        put(64, self.host_reads);
        put(80, self.host_writes);
        put(128, self.power_on_hours);
        put(160, self.media_errors);
        b
    }
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < SMART_LEN {
            return None;
        }
        let q = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        Some(Smart {
            critical_warning: b[0],
            temperature: u16::from_le_bytes([b[1], b[2]]),
            avail_spare: b[3],
            spare_thresh: b[4],
            percent_used: b[5],
            data_units_read: q(32),
            data_units_written: q(48),
            host_reads: q(64),
            host_writes: q(80),
            power_on_hours: q(128),
            media_errors: q(160),
        })
    }
}

/// Firmware slot information: slot 1 active, holding `rev`.
pub fn encode_fw_slot(rev: &str) -> Vec<u8> {
    let mut b = vec![0u8; FW_SLOT_LEN];
    b[0] = 1; // AFI: slot 1 active
    for (i, c) in b[8..16].iter_mut().enumerate() {
        *c = rev.as_bytes().get(i).copied().unwrap_or(b' ');
    }
    b
}

/// Changed namespace list: up to 1024 NSIDs; more than that is reported as
/// FFFFFFFFh in the first entry.
pub fn encode_changed_ns(nsids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; CHANGED_NS_LEN];
    if nsids.len() > CHANGED_NS_LEN / 4 {
        b[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        return b;
    }
    for (i, n) in nsids.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
    }
    b
}

/// Transport types, address families and subsystem types of discovery
/// entries.
pub mod disc {
    pub const TRTYPE_TCP: u8 = 3;
    pub const ADRFAM_IPV4: u8 = 1;
    pub const ADRFAM_IPV6: u8 = 2;
    pub const SUBTYPE_REFERRAL: u8 = 1;
    pub const SUBTYPE_NVME: u8 = 2;
    pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
    /// TREQ: secure channel not required.
    pub const TREQ_NOT_REQUIRED: u8 = 2;
    /// TREQ: the port supports disabling SQ flow control.
    pub const TREQ_DISABLE_SQFLOW: u8 = 4;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
}

fn put_field(b: &mut [u8], s: &str, pad: u8) {
    for (i, c) in b.iter_mut().enumerate() {
        *c = s.as_bytes().get(i).copied().unwrap_or(pad);
    }
}
fn get_field(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

impl DiscoveryEntry {
    pub fn encode(&self) -> [u8; DISC_ENTRY_LEN] {
        let mut b = [0u8; DISC_ENTRY_LEN];
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        b[4..6].copy_from_slice(&self.portid.to_le_bytes());
        b[6..8].copy_from_slice(&self.cntlid.to_le_bytes());
        b[8..10].copy_from_slice(&self.asqsz.to_le_bytes());
        put_field(&mut b[32..64], &self.trsvcid, b' ');
        put_field(&mut b[256..512], &self.subnqn, 0);
        put_field(&mut b[512..768], &self.traddr, b' ');
        // TSAS for TCP: SECTYPE 0, no security.
        b
    }
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < DISC_ENTRY_LEN {
            return None;
        }
        Some(DiscoveryEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: u16::from_le_bytes([b[4], b[5]]),
            cntlid: u16::from_le_bytes([b[6], b[7]]),
            asqsz: u16::from_le_bytes([b[8], b[9]]),
            trsvcid: get_field(&b[32..64]),
            subnqn: get_field(&b[256..512]),
            traddr: get_field(&b[512..768]),
        })
    }
}

/// The whole discovery log page: header (generation counter, record count,
/// format 0) and entries.
pub fn encode_discovery(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; DISC_HDR_LEN + entries.len() * DISC_ENTRY_LEN];
    b[0..8].copy_from_slice(&genctr.to_le_bytes());
    b[8..16].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = DISC_HDR_LEN + i * DISC_ENTRY_LEN;
        b[at..at + DISC_ENTRY_LEN].copy_from_slice(&e.encode());
    }
    b
}

/// (generation counter, record count) from a discovery log header.
pub fn parse_discovery_header(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() < 16 {
        return None;
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&b[0..8]);
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[8..16]);
    Some((u64::from_le_bytes(g), u64::from_le_bytes(n)))
}

/// Entries present in `b` (a header plus whole entries), at most `max`.
pub fn parse_discovery(b: &[u8], max: usize) -> Option<(u64, Vec<DiscoveryEntry>)> {
    let (gen, n) = parse_discovery_header(b)?;
    let have = b.len().saturating_sub(DISC_HDR_LEN) / DISC_ENTRY_LEN;
    let n = (n.min(have as u64) as usize).min(max);
    let entries = (0..n)
        .filter_map(|i| DiscoveryEntry::parse(&b[DISC_HDR_LEN + i * DISC_ENTRY_LEN..]))
        .collect();
    Some((gen, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn get_log_page_round_trip() {
        let g = GetLogPage {
            lid: lid::DISCOVERY,
            lsp: 0,
            rae: true,
            len: 1 << 20,
            offset: 1024,
        };
        assert_eq!(GetLogPage::parse(&g.to_sqe(1, 0)), g);
    }

    #[test]
    fn pages_round_trip() {
        let e = ErrorEntry {
            error_count: 3,
            sqid: 1,
            cid: 2,
            status: 0x4,
            lba: 99,
            nsid: 1,
        };
        assert_eq!(ErrorEntry::parse(&e.encode()).unwrap(), e);
        let s = Smart {
            temperature: 300,
            avail_spare: 100,
            spare_thresh: 10,
            host_reads: 5,
            ..Default::default()
        };
        assert_eq!(Smart::parse(&s.encode()).unwrap(), s);
        let d = DiscoveryEntry {
            trtype: disc::TRTYPE_TCP,
            adrfam: disc::ADRFAM_IPV4,
            subtype: disc::SUBTYPE_NVME,
            treq: disc::TREQ_NOT_REQUIRED,
            portid: 1,
            cntlid: 0xffff,
            asqsz: 32,
            trsvcid: "4420".into(),
            subnqn: "nqn.x".into(),
            traddr: "127.0.0.1".into(),
        };
        let page = encode_discovery(7, &[d.clone(), d.clone()]);
        assert_eq!(parse_discovery(&page, 16).unwrap(), (7, vec![d.clone(), d]));
        assert_eq!(window(&page, 0, 16).unwrap().len(), 16);
        assert!(window(&page, 3, 16).is_none());
        assert_eq!(&encode_changed_ns(&[1])[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..3000),
                               off in any::<u64>(), len in 0usize..5000) {
            let _ = ErrorEntry::parse(&b);
            let _ = Smart::parse(&b);
            let _ = parse_discovery(&b, 64);
            let _ = window(&b, off, len);
        }
    }
}
