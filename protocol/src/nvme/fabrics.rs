//! Fabrics commands (opcode 7Fh): Connect with its 1024-byte data, Property
//! Get/Set of the controller registers, Disconnect.

use super::command::{admin, Sqe};

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
pub const CONNECT_DATA_LEN: usize = 1024;
/// CNTLID a host names in an admin Connect to ask for a dynamic controller.
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// Fabrics command types (SQE byte 4).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Controller property offsets.
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}

/// CC and CSTS bits.
pub mod cc {
    pub const EN: u32 = 1;
    pub const SHN_MASK: u32 = 3 << 14;
    pub const IOSQES_SHIFT: u32 = 16;
    pub const IOCQES_SHIFT: u32 = 20;
}
pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 2;
    pub const SHST_OCCURRING: u32 = 1 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
    pub const SHST_MASK: u32 = 3 << 2;
}

/// Connect attributes: the host disables SQ flow control (SQHD unused).
pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

pub fn fctype_of(sqe: &Sqe) -> u8 {
    sqe.0[4]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectCmd {
    pub recfmt: u16,
    pub qid: u16,
    /// 0's based.
    pub sqsize: u16,
    pub cattr: u8,
    pub kato_ms: u32,
}

impl ConnectCmd {
    pub fn parse(s: &Sqe) -> Self {
        let d10 = s.dw(10);
        let d11 = s.dw(11);
        ConnectCmd {
            recfmt: d10 as u16,
            qid: (d10 >> 16) as u16,
            sqsize: d11 as u16,
            cattr: (d11 >> 16) as u8,
            kato_ms: s.dw(12),
        }
    }
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut s = Sqe::new(admin::FABRICS, cid);
        s.0[4] = fctype::CONNECT;
        s.set_dw(10, self.recfmt as u32 | ((self.qid as u32) << 16));
        s.set_dw(11, self.sqsize as u32 | ((self.cattr as u32) << 16));
        s.set_dw(12, self.kato_ms);
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

/// Offsets in the Connect data, for Invalid Parameter reporting.
pub mod connect_off {
    pub const HOSTID: u16 = 0;
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

fn nqn_field(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = std::str::from_utf8(&b[..end]).ok()?;
    if s.is_empty() || s.bytes().any(|c| !(0x20..=0x7e).contains(&c)) {
        return None;
    }
    Some(s.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectDataError {
    Short,
    BadSubNqn,
    BadHostNqn,
}

impl ConnectData {
    pub fn parse(b: &[u8]) -> Result<Self, ConnectDataError> {
        if b.len() < CONNECT_DATA_LEN {
            return Err(ConnectDataError::Short);
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[0..16]);
        Ok(ConnectData {
            hostid,
            cntlid: u16::from_le_bytes([b[16], b[17]]),
            subnqn: nqn_field(&b[256..512]).ok_or(ConnectDataError::BadSubNqn)?,
            hostnqn: nqn_field(&b[512..768]).ok_or(ConnectDataError::BadHostNqn)?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CONNECT_DATA_LEN];
        b[0..16].copy_from_slice(&self.hostid);
        b[16..18].copy_from_slice(&self.cntlid.to_le_bytes());
        let s = self.subnqn.as_bytes();
        let n = s.len().min(255);
        b[256..256 + n].copy_from_slice(&s[..n]);
        let h = self.hostnqn.as_bytes();
        let n = h.len().min(255);
        b[512..512 + n].copy_from_slice(&h[..n]);
        b
    }
}

/// Property Get/Set: size (4 or 8 bytes), offset, value (Set only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyCmd {
    pub eight: bool,
    pub offset: u32,
    pub value: u64,
}

impl PropertyCmd {
    pub fn parse(s: &Sqe) -> Self {
        PropertyCmd {
            eight: s.0[40] & 7 == 1,
            offset: s.dw(11),
            value: s.qw(12),
        }
    }
    pub fn get_sqe(cid: u16, offset: u32, eight: bool) -> Sqe {
        let mut s = Sqe::new(admin::FABRICS, cid);
        s.0[4] = fctype::PROPERTY_GET;
        s.0[40] = eight as u8;
        s.set_dw(11, offset);
        s
    }
    pub fn set_sqe(cid: u16, offset: u32, value: u64, eight: bool) -> Sqe {
        let mut s = Sqe::new(admin::FABRICS, cid);
        s.0[4] = fctype::PROPERTY_SET;
        s.0[40] = eight as u8;
        s.set_dw(11, offset);
        s.set_qw(12, value);
        s
    }
}

pub fn disconnect_sqe(cid: u16) -> Sqe {
    let mut s = Sqe::new(admin::FABRICS, cid);
    s.0[4] = fctype::DISCONNECT;
    s
}

/// CAP: MQES (0's based), TO in 500 ms units, NVM command set, 4 KiB pages.
pub fn cap_value(mqes: u16, timeout_500ms: u8) -> u64 {
    (mqes as u64) | ((timeout_500ms as u64) << 24) | (1u64 << 37)
}

/// VS for NVMe 1.4.
pub const VS_1_4: u32 = 0x0001_0400;

/// Connect Invalid Parameters result: IPO in bits 15:0, IATTR bit 16 when
/// the offset is into the Connect data rather than the SQE.
pub fn invalid_param_result(in_data: bool, offset: u16) -> u64 {
    ((in_data as u64) << 16) | offset as u64
}

#[cfg(test)]
mod tests {
    use super::prop;
    use super::*;
    use proptest::prelude::{any, proptest};

    #[test]
    fn connect_round_trip() {
        let c = ConnectCmd {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: CATTR_DISABLE_SQFLOW,
            kato_ms: 5000,
        };
        let s = c.to_sqe(9);
        assert_eq!(fctype_of(&s), fctype::CONNECT);
        assert_eq!(ConnectCmd::parse(&s), c);
        let d = ConnectData {
            hostid: [7; 16],
            cntlid: CNTLID_DYNAMIC,
            subnqn: "nqn.2026-11.org.vtgt:default".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
        };
        assert_eq!(ConnectData::parse(&d.encode()).unwrap(), d);
        let mut bad = d.encode();
        bad[512] = 0;
        assert_eq!(ConnectData::parse(&bad), Err(ConnectDataError::BadHostNqn));
        assert_eq!(
            ConnectData::parse(&bad[..100]),
            Err(ConnectDataError::Short)
        );
    }

    #[test]
    fn property_round_trip() {
        let s = PropertyCmd::set_sqe(1, prop::CC, 0x46_0001, false);
        assert_eq!(
            PropertyCmd::parse(&s),
            PropertyCmd {
                eight: false,
                offset: prop::CC,
                value: 0x46_0001
            }
        );
        assert!(PropertyCmd::parse(&PropertyCmd::get_sqe(1, prop::CAP, true)).eight);
        assert_eq!(cap_value(127, 15) & 0xffff, 127);
    }

    proptest! {
        #[test]
        fn connect_data_never_panics(b in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = ConnectData::parse(&b);
        }
    }
}
