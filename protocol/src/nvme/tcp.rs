//! NVMe/TCP transport PDUs (NVMe over Fabrics TCP transport binding) and a
//! bounded framing decoder.
//!
//! Every PDU starts with an 8-byte common header: type, flags, HLEN, PDO and
//! PLEN (little endian). The decoder checks HLEN per type, bounds PLEN and
//! PDO before waiting for the body, and verifies the CRC32C header and data
//! digests when they were negotiated.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::digest::crc32c;

pub const CH_LEN: usize = 8;
pub const IC_HLEN: u8 = 128;
pub const TERM_HLEN: u8 = 24;
pub const CMD_HLEN: u8 = 72;
pub const RESP_HLEN: u8 = 24;
pub const DATA_HLEN: u8 = 24;
pub const R2T_HLEN: u8 = 24;
/// TermReq data: the offending PDU header, at most this many bytes.
pub const TERM_MAX_DATA: usize = 152;
/// Smallest MAXH2CDATA a controller may announce.
pub const MIN_MAXH2CDATA: u32 = 4096;

pub mod flags {
    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    pub const LAST_PDU: u8 = 0x04;
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal error status codes carried by H2C/C2H TermReq.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PduType {
    ICReq = 0x00,
    ICResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x00 => Self::ICReq,
            0x01 => Self::ICResp,
            0x02 => Self::H2CTermReq,
            0x03 => Self::C2HTermReq,
            0x04 => Self::CapsuleCmd,
            0x05 => Self::CapsuleResp,
            0x06 => Self::H2CData,
            0x07 => Self::C2HData,
            0x09 => Self::R2T,
            _ => return None,
        })
    }

    pub fn hlen(self) -> u8 {
        match self {
            Self::ICReq | Self::ICResp => IC_HLEN,
            Self::H2CTermReq | Self::C2HTermReq => TERM_HLEN,
            Self::CapsuleCmd => CMD_HLEN,
            Self::CapsuleResp => RESP_HLEN,
            Self::H2CData | Self::C2HData => DATA_HLEN,
            Self::R2T => R2T_HLEN,
        }
    }

    /// Whether a negotiated header digest covers this PDU type.
    pub fn digested(self) -> bool {
        !matches!(
            self,
            Self::ICReq | Self::ICResp | Self::H2CTermReq | Self::C2HTermReq
        )
    }

    /// Whether this PDU type may carry a data part.
    pub fn has_data(self) -> bool {
        matches!(
            self,
            Self::CapsuleCmd | Self::H2CData | Self::C2HData | Self::H2CTermReq | Self::C2HTermReq
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ICReq {
    pub pfv: u16,
    pub hpda: u8,
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ICResp {
    pub pfv: u16,
    pub cpda: u8,
    pub digests: Digests,
    pub maxh2cdata: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
    /// The header of the PDU in error, truncated to [`TERM_MAX_DATA`].
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleCmd {
    pub sqe: [u8; 64],
    /// In-capsule data.
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleResp {
    pub cqe: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2CData {
    pub cccid: u16,
    pub ttag: u16,
    pub datao: u32,
    pub last: bool,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2HData {
    pub cccid: u16,
    pub datao: u32,
    pub last: bool,
    /// The command completed successfully; no response capsule follows.
    pub success: bool,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2T {
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    ICReq(ICReq),
    ICResp(ICResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2CData(H2CData),
    C2HData(C2HData),
    R2T(R2T),
}

impl Pdu {
    pub fn pdu_type(&self) -> PduType {
        match self {
            Pdu::ICReq(_) => PduType::ICReq,
            Pdu::ICResp(_) => PduType::ICResp,
            Pdu::H2CTermReq(_) => PduType::H2CTermReq,
            Pdu::C2HTermReq(_) => PduType::C2HTermReq,
            Pdu::CapsuleCmd(_) => PduType::CapsuleCmd,
            Pdu::CapsuleResp(_) => PduType::CapsuleResp,
            Pdu::H2CData(_) => PduType::H2CData,
            Pdu::C2HData(_) => PduType::C2HData,
            Pdu::R2T(_) => PduType::R2T,
        }
    }
}

/// How a receiver frames PDUs.
#[derive(Debug, Clone, Copy)]
pub struct FrameConfig {
    pub digests: Digests,
    /// Largest data part accepted in one PDU.
    pub max_data: u32,
}

impl FrameConfig {
    /// Before ICReq/ICResp: no digests, no data.
    pub const INITIAL: FrameConfig = FrameConfig {
        digests: Digests {
            header: false,
            data: false,
        },
        max_data: 0,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fatal: answer with a TermReq carrying `fes`/`fei` and `header`, then
    /// close.
    #[error("fatal PDU error (FES {fes:#x}, FEI {fei})")]
    Fatal { fes: u16, fei: u32, header: Bytes },
    /// The data digest did not match; the connection cannot continue.
    #[error("data digest mismatch")]
    DataDigest { header: Bytes },
}

fn fatal(fes: u16, fei: u32, hdr: &[u8]) -> FrameError {
    FrameError::Fatal {
        fes,
        fei,
        header: Bytes::copy_from_slice(&hdr[..hdr.len().min(TERM_MAX_DATA)]),
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes one PDU from the front of `buf`. `Ok(None)` means more bytes are
/// needed; nothing is consumed until a whole PDU has arrived.
pub fn decode(buf: &mut BytesMut, cfg: &FrameConfig) -> Result<Option<Pdu>, FrameError> {
    if buf.len() < CH_LEN {
        return Ok(None);
    }
    let ch: [u8; CH_LEN] = buf[..CH_LEN].try_into().unwrap_or([0; CH_LEN]);
    let Some(ty) = PduType::from_u8(ch[0]) else {
        return Err(fatal(fes::INVALID_HEADER_FIELD, 0, &ch));
    };
    let fl = ch[1];
    let hlen = ch[2] as usize;
    let pdo = ch[3] as usize;
    let plen = le32(&ch, 4) as usize;
    if hlen != ty.hlen() as usize {
        return Err(fatal(fes::INVALID_HEADER_FIELD, 2, &ch));
    }
    let hd = if ty.digested() && cfg.digests.header {
        4
    } else {
        0
    };
    // The digest flags must say exactly what was negotiated.
    if ty.digested() && ((fl & flags::HDGSTF != 0) != cfg.digests.header) {
        return Err(fatal(fes::INVALID_HEADER_FIELD, 1, &ch));
    }
    let hdr_end = hlen + hd;
    let (data_off, data_len, dd) = if !ty.has_data() || plen == hdr_end {
        if plen != hdr_end {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 4, &ch));
        }
        if fl & flags::DDGSTF != 0 {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 1, &ch));
        }
        (hdr_end, 0usize, 0usize)
    } else if matches!(ty, PduType::H2CTermReq | PduType::C2HTermReq) {
        // TermReq data follows the header directly and is never digested.
        if plen < hdr_end || plen - hdr_end > TERM_MAX_DATA {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 4, &ch));
        }
        (hdr_end, plen - hdr_end, 0)
    } else {
        let dd = if cfg.digests.data { 4 } else { 0 };
        if (fl & flags::DDGSTF != 0) != cfg.digests.data {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 1, &ch));
        }
        if pdo < hdr_end || pdo > plen {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 3, &ch));
        }
        // Bound PLEN before buffering the body.
        let max = pdo + cfg.max_data as usize + dd;
        if plen > max || plen < pdo + dd + 1 {
            let f = if plen > max {
                fes::DATA_LIMIT_EXCEEDED
            } else {
                fes::INVALID_HEADER_FIELD
            };
            return Err(fatal(f, 4, &ch));
        }
        (pdo, plen - pdo - dd, dd)
    };
    if buf.len() < plen {
        return Ok(None);
    }
    let frame = buf.split_to(plen).freeze();
    let hdr = &frame[..hlen];
    if hd == 4 && le32(&frame, hlen) != crc32c(hdr) {
        return Err(fatal(fes::HEADER_DIGEST_ERROR, 0, hdr));
    }
    let data = frame.slice(data_off..data_off + data_len);
    if dd == 4 && le32(&frame, data_off + data_len) != crc32c(&data) {
        return Err(FrameError::DataDigest {
            header: frame.slice(..hlen),
        });
    }
    parse_body(ty, fl, hdr, data).map(Some)
}

fn parse_body(ty: PduType, fl: u8, h: &[u8], data: Bytes) -> Result<Pdu, FrameError> {
    let dg = |b: u8| Digests {
        header: b & 1 != 0,
        data: b & 2 != 0,
    };
    Ok(match ty {
        PduType::ICReq => Pdu::ICReq(ICReq {
            pfv: le16(h, 8),
            hpda: h[10],
            digests: dg(h[11]),
            maxr2t: le32(h, 12),
        }),
        PduType::ICResp => Pdu::ICResp(ICResp {
            pfv: le16(h, 8),
            cpda: h[10],
            digests: dg(h[11]),
            maxh2cdata: le32(h, 12),
        }),
        PduType::H2CTermReq | PduType::C2HTermReq => {
            let t = TermReq {
                fes: le16(h, 8),
                fei: le32(h, 10),
                data,
            };
            if ty == PduType::H2CTermReq {
                Pdu::H2CTermReq(t)
            } else {
                Pdu::C2HTermReq(t)
            }
        }
        PduType::CapsuleCmd => {
            let mut sqe = [0u8; 64];
            sqe.copy_from_slice(&h[8..72]);
            Pdu::CapsuleCmd(CapsuleCmd { sqe, data })
        }
        PduType::CapsuleResp => {
            let mut cqe = [0u8; 16];
            cqe.copy_from_slice(&h[8..24]);
            Pdu::CapsuleResp(CapsuleResp { cqe })
        }
        PduType::H2CData => {
            let datal = le32(h, 16) as usize;
            if datal != data.len() {
                return Err(fatal(fes::INVALID_HEADER_FIELD, 16, h));
            }
            Pdu::H2CData(H2CData {
                cccid: le16(h, 8),
                ttag: le16(h, 10),
                datao: le32(h, 12),
                last: fl & flags::LAST_PDU != 0,
                data,
            })
        }
        PduType::C2HData => {
            let datal = le32(h, 16) as usize;
            if datal != data.len() {
                return Err(fatal(fes::INVALID_HEADER_FIELD, 16, h));
            }
            let success = fl & flags::SUCCESS != 0;
            let last = fl & flags::LAST_PDU != 0;
            if success && !last {
                return Err(fatal(fes::INVALID_HEADER_FIELD, 1, h));
            }
            Pdu::C2HData(C2HData {
                cccid: le16(h, 8),
                datao: le32(h, 12),
                last,
                success,
                data,
            })
        }
        PduType::R2T => Pdu::R2T(R2T {
            cccid: le16(h, 8),
            ttag: le16(h, 10),
            r2to: le32(h, 12),
            r2tl: le32(h, 16),
        }),
    })
}

/// Appends the wire form of `pdu` to `out`. Digests apply as negotiated
/// (and never to IC or TermReq PDUs). Data starts right after the header
/// and its digest: we announce and accept CPDA/HPDA 0.
pub fn encode(pdu: &Pdu, digests: Digests, out: &mut BytesMut) {
    let ty = pdu.pdu_type();
    let hlen = ty.hlen() as usize;
    let mut h = [0u8; 128];
    let mut fl = 0u8;
    let mut data: &[u8] = &[];
    let dgb = |d: Digests| (d.header as u8) | ((d.data as u8) << 1);
    match pdu {
        Pdu::ICReq(p) => {
            h[8..10].copy_from_slice(&p.pfv.to_le_bytes());
            h[10] = p.hpda;
            h[11] = dgb(p.digests);
            h[12..16].copy_from_slice(&p.maxr2t.to_le_bytes());
        }
        Pdu::ICResp(p) => {
            h[8..10].copy_from_slice(&p.pfv.to_le_bytes());
            h[10] = p.cpda;
            h[11] = dgb(p.digests);
            h[12..16].copy_from_slice(&p.maxh2cdata.to_le_bytes());
        }
        Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => {
            h[8..10].copy_from_slice(&t.fes.to_le_bytes());
            h[10..14].copy_from_slice(&t.fei.to_le_bytes());
            data = &t.data[..t.data.len().min(TERM_MAX_DATA)];
        }
        Pdu::CapsuleCmd(c) => {
            h[8..72].copy_from_slice(&c.sqe);
            data = &c.data;
        }
        Pdu::CapsuleResp(r) => h[8..24].copy_from_slice(&r.cqe),
        Pdu::H2CData(d) => {
            h[8..10].copy_from_slice(&d.cccid.to_le_bytes());
            h[10..12].copy_from_slice(&d.ttag.to_le_bytes());
            h[12..16].copy_from_slice(&d.datao.to_le_bytes());
            h[16..20].copy_from_slice(&(d.data.len() as u32).to_le_bytes());
            if d.last {
                fl |= flags::LAST_PDU;
            }
            data = &d.data;
        }
        Pdu::C2HData(d) => {
            h[8..10].copy_from_slice(&d.cccid.to_le_bytes());
            h[12..16].copy_from_slice(&d.datao.to_le_bytes());
            h[16..20].copy_from_slice(&(d.data.len() as u32).to_le_bytes());
            if d.last {
                fl |= flags::LAST_PDU;
            }
            if d.success {
                fl |= flags::SUCCESS | flags::LAST_PDU;
            }
            data = &d.data;
        }
        Pdu::R2T(r) => {
            h[8..10].copy_from_slice(&r.cccid.to_le_bytes());
            h[10..12].copy_from_slice(&r.ttag.to_le_bytes());
            h[12..16].copy_from_slice(&r.r2to.to_le_bytes());
            h[16..20].copy_from_slice(&r.r2tl.to_le_bytes());
        }
    }
    let term = matches!(ty, PduType::H2CTermReq | PduType::C2HTermReq);
    let hd = ty.digested() && digests.header;
    let dd = ty.digested() && digests.data && !data.is_empty();
    if hd {
        fl |= flags::HDGSTF;
    }
    if dd {
        fl |= flags::DDGSTF;
    }
    let hdr_end = hlen + if hd { 4 } else { 0 };
    let pdo = if data.is_empty() || term { 0 } else { hdr_end };
    let plen = hdr_end + data.len() + if dd { 4 } else { 0 };
    h[0] = ty as u8;
    h[1] = fl;
    h[2] = hlen as u8;
    h[3] = pdo as u8;
    h[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    out.reserve(plen);
    out.put_slice(&h[..hlen]);
    if hd {
        out.put_u32_le(crc32c(&h[..hlen]));
    }
    out.put_slice(data);
    if dd {
        out.put_u32_le(crc32c(data));
    }
}

/// Convenience: one PDU as its own buffer.
pub fn encode_to_bytes(pdu: &Pdu, digests: Digests) -> Bytes {
    let mut b = BytesMut::new();
    encode(pdu, digests, &mut b);
    b.freeze()
}

/// Reads the common header's PLEN without validating anything else.
pub fn peek_plen(buf: &[u8]) -> Option<u32> {
    if buf.len() < CH_LEN {
        return None;
    }
    let mut b = &buf[4..8];
    Some(b.get_u32_le())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(h: bool, d: bool) -> FrameConfig {
        FrameConfig {
            digests: Digests { header: h, data: d },
            max_data: 64 * 1024,
        }
    }

    fn samples() -> Vec<Pdu> {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x01;
        sqe[2] = 7;
        vec![
            Pdu::ICReq(ICReq {
                pfv: 0,
                hpda: 0,
                digests: Digests {
                    header: true,
                    data: false,
                },
                maxr2t: 0,
            }),
            Pdu::ICResp(ICResp {
                pfv: 0,
                cpda: 0,
                digests: Digests::default(),
                maxh2cdata: 131072,
            }),
            Pdu::C2HTermReq(TermReq {
                fes: fes::HEADER_DIGEST_ERROR,
                fei: 0,
                data: Bytes::from_static(&[4, 0, 72, 0]),
            }),
            Pdu::CapsuleCmd(CapsuleCmd {
                sqe,
                data: Bytes::from(vec![0xab; 4096]),
            }),
            Pdu::CapsuleCmd(CapsuleCmd {
                sqe,
                data: Bytes::new(),
            }),
            Pdu::CapsuleResp(CapsuleResp { cqe: [3u8; 16] }),
            Pdu::H2CData(H2CData {
                cccid: 7,
                ttag: 9,
                datao: 4096,
                last: true,
                data: Bytes::from(vec![1; 512]),
            }),
            Pdu::C2HData(C2HData {
                cccid: 7,
                datao: 0,
                last: true,
                success: true,
                data: Bytes::from(vec![2; 100]),
            }),
            Pdu::R2T(R2T {
                cccid: 1,
                ttag: 2,
                r2to: 3,
                r2tl: 4,
            }),
        ]
    }

    #[test]
    fn round_trips_with_and_without_digests() {
        for (h, d) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = cfg(h, d);
            let mut buf = BytesMut::new();
            for p in samples() {
                encode(&p, c.digests, &mut buf);
            }
            for p in samples() {
                let got = decode(&mut buf, &c).unwrap().unwrap();
                assert_eq!(got, p);
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_input_waits() {
        let c = cfg(true, true);
        let full = encode_to_bytes(&samples()[3], c.digests);
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut b, &c).unwrap(), None);
            assert_eq!(b.len(), cut);
        }
    }

    #[test]
    fn bad_header_digest_is_fatal() {
        let c = cfg(true, false);
        let mut b = BytesMut::from(&encode_to_bytes(&samples()[5], c.digests)[..]);
        b[10] ^= 1;
        match decode(&mut b, &c) {
            Err(FrameError::Fatal { fes: f, .. }) => assert_eq!(f, fes::HEADER_DIGEST_ERROR),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_data_digest_is_reported() {
        let c = cfg(false, true);
        let mut b = BytesMut::from(&encode_to_bytes(&samples()[6], c.digests)[..]);
        let n = b.len();
        b[n - 10] ^= 1;
        assert!(matches!(
            decode(&mut b, &c),
            Err(FrameError::DataDigest { .. })
        ));
    }

    #[test]
    fn oversized_plen_is_refused_before_buffering() {
        let c = cfg(false, false);
        let mut b = BytesMut::from(&encode_to_bytes(&samples()[6], c.digests)[..24]);
        b[4..8].copy_from_slice(&(u32::MAX).to_le_bytes());
        match decode(&mut b, &c) {
            Err(FrameError::Fatal { fes: f, fei, .. }) => {
                assert_eq!((f, fei), (fes::DATA_LIMIT_EXCEEDED, 4))
            }
            other => panic!("{other:?}"),
        }
        // A data-less PDU with a PLEN that disagrees with HLEN.
        let mut b = BytesMut::from(&encode_to_bytes(&samples()[5], c.digests)[..]);
        b[4] = 200;
        assert!(decode(&mut b, &c).is_err());
        // Wrong HLEN, unknown type, digest flag not negotiated.
        for (at, v) in [(2usize, 30u8), (0, 0x08), (1, flags::HDGSTF)] {
            let mut b = BytesMut::from(&encode_to_bytes(&samples()[5], c.digests)[..]);
            b[at] = v;
            assert!(decode(&mut b, &c).is_err(), "byte {at}={v}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400),
                               h in any::<bool>(), d in any::<bool>()) {
            let c = FrameConfig { digests: Digests { header: h, data: d }, max_data: 256 };
            let mut b = BytesMut::from(&data[..]);
            for _ in 0..8 {
                match decode(&mut b, &c) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn decode_mutated_never_panics(idx in 0usize..9, at in 0usize..200, v in any::<u8>()) {
            let c = cfg(true, true);
            let p = &samples()[idx];
            let mut b = BytesMut::from(&encode_to_bytes(p, c.digests)[..]);
            if at < b.len() { b[at] = v; }
            let _ = decode(&mut b, &c);
        }
    }
}
