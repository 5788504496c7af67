//! Turning a SCSI outcome into Data-In and SCSI Response PDUs, with phase
//! collapse and residuals (RFC 7143 §11.4.5, §11.7).

use bytes::{BufMut, Bytes, BytesMut};
use vtgt_protocol::iscsi::pdu::{self, Pdu, RESERVED_TAG};

use super::writer::{Out, Stamp};
use crate::scsi::{status, ScsiResult};

/// Residual as the SCSI Response and final Data-In report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residual {
    pub overflow: bool,
    pub underflow: bool,
    pub count: u32,
}

impl Residual {
    pub fn of(wanted: u64, edtl: u32) -> Self {
        let edtl = edtl as u64;
        if wanted > edtl {
            Residual {
                overflow: true,
                underflow: false,
                count: (wanted - edtl).min(u32::MAX as u64) as u32,
            }
        } else if wanted < edtl {
            Residual {
                overflow: false,
                underflow: true,
                count: (edtl - wanted) as u32,
            }
        } else {
            Residual::default()
        }
    }
}

/// The PDUs answering command `itt`, in order.
pub fn build(
    hdr: &pdu::ScsiCommand,
    res: ScsiResult,
    max_xmit: u32,
    exp_datasn_out: u32,
) -> Vec<Out> {
    let mut out = Vec::new();
    let good = res.status == status::GOOD && res.sense.is_none();
    let (send, residual) = if hdr.read {
        let want = res.data_in.len() as u64;
        let send = if good || !res.data_in.is_empty() {
            res.data_in.len().min(hdr.edtl as usize)
        } else {
            0
        };
        (send, Residual::of(want, hdr.edtl))
    } else if let Some(n) = res.data_out_len {
        (0, Residual::of(n as u64, hdr.edtl))
    } else if hdr.write {
        (0, Residual::of(0, hdr.edtl))
    } else {
        // No data phase at all: any EDTL is underflow, any data overflow.
        (0, Residual::of(res.data_in.len() as u64, hdr.edtl))
    };
    let data = res.data_in.slice(..send);
    let chunk = max_xmit.max(512) as usize;
    let mut datasn = 0u32;
    let mut off = 0usize;
    while off < send {
        let n = chunk.min(send - off);
        let last = off + n == send;
        let collapse = last && good;
        let di = pdu::DataIn {
            final_bit: last,
            has_status: collapse,
            status: res.status,
            overflow: collapse && residual.overflow,
            underflow: collapse && residual.underflow,
            residual: if collapse { residual.count } else { 0 },
            lun: hdr.lun,
            itt: hdr.itt,
            ttt: RESERVED_TAG,
            datasn,
            offset: off as u32,
            ..Default::default()
        };
        let stamp = if collapse {
            Stamp::Status
        } else {
            Stamp::Window
        };
        out.push(Out::Pdu(
            Pdu::new(di.to_bhs(), data.slice(off..off + n)),
            stamp,
        ));
        datasn += 1;
        off += n;
    }
    if send > 0 && good {
        return out;
    }
    let mut rsp = pdu::ScsiResponse {
        status: res.status,
        itt: hdr.itt,
        exp_datasn: if hdr.read { datasn } else { exp_datasn_out },
        ..Default::default()
    };
    // Residuals describe a transfer that happened; a failed command moved
    // no data unless it sent some above.
    if good || send > 0 || res.data_out_len.is_some() {
        rsp.overflow = residual.overflow;
        rsp.underflow = residual.underflow;
        rsp.residual = residual.count;
    }
    let data = match res.sense {
        Some(s) if !s.is_empty() => {
            let mut b = BytesMut::with_capacity(2 + s.len());
            b.put_u16(s.len() as u16);
            b.put_slice(&s);
            b.freeze()
        }
        _ => Bytes::new(),
    };
    out.push(Out::Pdu(Pdu::new(rsp.to_bhs(), data), Stamp::Status));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(read: bool, write: bool, edtl: u32) -> pdu::ScsiCommand {
        pdu::ScsiCommand {
            final_bit: true,
            read,
            write,
            itt: 5,
            edtl,
            ..Default::default()
        }
    }

    fn pdus(v: Vec<Out>) -> Vec<(Pdu, Stamp)> {
        v.into_iter()
            .map(|o| match o {
                Out::Pdu(p, s) => (p, s),
                Out::Close => panic!("unexpected close"),
            })
            .collect()
    }

    #[test]
    fn read_is_split_and_collapsed() {
        let res = ScsiResult {
            status: 0,
            data_in: Bytes::from(vec![1u8; 10000]),
            ..Default::default()
        };
        let v = pdus(build(&cmd(true, false, 10000), res, 4096, 0));
        assert_eq!(v.len(), 3);
        let last = pdu::DataIn::parse(&v[2].0.bhs);
        assert!(last.final_bit && last.has_status && !last.underflow);
        assert_eq!(last.datasn, 2);
        assert_eq!(last.offset, 8192);
        assert_eq!(v[2].1, Stamp::Status);
        assert_eq!(v[0].1, Stamp::Window);
    }

    #[test]
    fn overflow_and_underflow() {
        let res = ScsiResult {
            status: 0,
            data_in: Bytes::from(vec![1u8; 512]),
            ..Default::default()
        };
        let v = pdus(build(&cmd(true, false, 200), res.clone(), 8192, 0));
        let d = pdu::DataIn::parse(&v[0].0.bhs);
        assert!(d.overflow && d.residual == 312 && v[0].0.data.len() == 200);
        let v = pdus(build(&cmd(true, false, 1024), res, 8192, 0));
        let d = pdu::DataIn::parse(&v[0].0.bhs);
        assert!(d.underflow && d.residual == 512);
        let w = ScsiResult {
            status: 0,
            data_out_len: Some(1024),
            ..Default::default()
        };
        let v = pdus(build(&cmd(false, true, 512), w, 8192, 0));
        let r = pdu::ScsiResponse::parse(&v[0].0.bhs);
        assert!(r.overflow && r.residual == 512);
    }

    #[test]
    fn check_condition_carries_sense() {
        let res = ScsiResult {
            status: status::CHECK_CONDITION,
            sense: Some(Bytes::from_static(&[0x70, 0, 5])),
            ..Default::default()
        };
        let v = pdus(build(&cmd(true, false, 512), res, 8192, 0));
        assert_eq!(v.len(), 1);
        let r = pdu::ScsiResponse::parse(&v[0].0.bhs);
        assert_eq!(r.status, status::CHECK_CONDITION);
        assert_eq!(&v[0].0.data[..], &[0, 3, 0x70, 0, 5]);
    }
}
