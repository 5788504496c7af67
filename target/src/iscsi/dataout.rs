//! Solicited and unsolicited data-out for one write command: R2T issue within
//! MaxOutstandingR2T and MaxBurstLength, and the DataSN, offset and TTT checks
//! of RFC 7143 §10.7 and §11.7. At ErrorRecoveryLevel 0 a sequence error ends
//! the connection, so unchecked data never reaches a volume.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use vtgt_protocol::iscsi::pdu::{self, RESERVED_TAG};

/// Negotiated limits that govern data-out.
#[derive(Debug, Clone, Copy)]
pub struct XferLimits {
    pub first_burst: u32,
    pub max_burst: u32,
    pub max_outstanding_r2t: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
}

#[derive(Debug)]
struct Burst {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_datasn: u32,
}

/// A data-out sequence violation; the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XferError {
    #[error("DataSN {got} where {want} was expected")]
    DataSn { got: u32, want: u32 },
    #[error("buffer offset {got} where {want} was expected")]
    Offset { got: u32, want: u32 },
    #[error("data beyond the solicited or unsolicited range")]
    Overrun,
    #[error("unknown target transfer tag {0:#x}")]
    Ttt(u32),
    #[error("unsolicited data not allowed")]
    Unsolicited,
}

/// Data collection for one write.
#[derive(Debug)]
pub struct WriteXfer {
    pub itt: u32,
    pub lun: u64,
    pub edtl: u32,
    buf: BytesMut,
    /// Bytes received, in order (DataPDUInOrder and DataSequenceInOrder are
    /// always Yes on our side).
    received: u32,
    /// Unsolicited data may still arrive up to this offset.
    unsol_end: u32,
    unsol_open: bool,
    unsol_datasn: u32,
    bursts: VecDeque<Burst>,
    next_r2t_offset: u32,
    r2tsn: u32,
    /// Store at most this many bytes; the rest is drained and dropped (EDTL
    /// larger than any command may use).
    keep: u32,
    /// Bytes asked for by R2T so far, returned to the budget at the end.
    solicited: u64,
}

impl WriteXfer {
    /// `immediate` is the command PDU's data segment, already checked against
    /// FirstBurstLength and EDTL. `final_bit` is the command's F bit.
    pub fn new(
        itt: u32,
        lun: u64,
        edtl: u32,
        immediate: &Bytes,
        final_bit: bool,
        lim: &XferLimits,
        keep: u32,
    ) -> Self {
        let keep = keep.min(edtl);
        let mut buf = BytesMut::with_capacity(immediate.len().min(keep as usize));
        let imm = immediate.len() as u32;
        buf.extend_from_slice(&immediate[..immediate.len().min(keep as usize)]);
        let unsol_open = !lim.initial_r2t && !final_bit && imm < edtl;
        let unsol_end = if unsol_open {
            edtl.min(lim.first_burst)
        } else {
            imm
        };
        Self {
            itt,
            lun,
            edtl,
            buf,
            received: imm,
            unsol_end,
            unsol_open,
            unsol_datasn: 0,
            bursts: VecDeque::new(),
            next_r2t_offset: imm,
            r2tsn: 0,
            keep,
            solicited: 0,
        }
    }

    pub fn complete(&self) -> bool {
        self.received >= self.edtl
    }

    /// Bytes this transfer took from the connection's R2T budget.
    pub fn solicited(&self) -> u64 {
        self.solicited
    }

    /// Waiting for an R2T that the budget held back.
    pub fn starved(&self) -> bool {
        !self.unsol_open && self.bursts.is_empty() && !self.complete()
    }

    /// The data gathered so far (all of it once `complete`).
    pub fn take_data(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }

    /// New R2Ts to send now. `next_ttt` allocates transfer tags.
    /// `budget` is what the connection may still solicit; it shrinks by
    /// every R2T issued, and nothing is solicited beyond it.
    pub fn solicit(
        &mut self,
        lim: &XferLimits,
        budget: &mut u64,
        mut next_ttt: impl FnMut() -> u32,
    ) -> Vec<pdu::R2t> {
        let mut out = Vec::new();
        if self.unsol_open {
            return out;
        }
        if self.next_r2t_offset < self.received {
            self.next_r2t_offset = self.received;
        }
        while self.next_r2t_offset < self.edtl
            && (self.bursts.len() as u32) < lim.max_outstanding_r2t.max(1)
        {
            let len = (self.edtl - self.next_r2t_offset).min(lim.max_burst.max(512));
            if len as u64 > *budget {
                break;
            }
            *budget -= len as u64;
            self.solicited += len as u64;
            let ttt = next_ttt();
            out.push(pdu::R2t {
                lun: self.lun,
                itt: self.itt,
                ttt,
                r2tsn: self.r2tsn,
                offset: self.next_r2t_offset,
                length: len,
                ..Default::default()
            });
            self.bursts.push_back(Burst {
                ttt,
                offset: self.next_r2t_offset,
                len,
                received: 0,
                next_datasn: 0,
            });
            self.r2tsn = self.r2tsn.wrapping_add(1);
            self.next_r2t_offset += len;
        }
        out
    }

    /// Accepts one Data-Out PDU.
    pub fn accept(&mut self, d: &pdu::DataOut, data: &Bytes) -> Result<(), XferError> {
        let n = data.len() as u32;
        if d.offset != self.received {
            return Err(XferError::Offset {
                got: d.offset,
                want: self.received,
            });
        }
        let end = d.offset.checked_add(n).ok_or(XferError::Overrun)?;
        if d.ttt == RESERVED_TAG {
            if !self.unsol_open {
                return Err(XferError::Unsolicited);
            }
            if d.datasn != self.unsol_datasn {
                return Err(XferError::DataSn {
                    got: d.datasn,
                    want: self.unsol_datasn,
                });
            }
            if end > self.unsol_end {
                return Err(XferError::Overrun);
            }
            self.unsol_datasn = self.unsol_datasn.wrapping_add(1);
            if d.final_bit || end == self.unsol_end {
                self.unsol_open = false;
            }
        } else {
            let b = self
                .bursts
                .iter_mut()
                .find(|b| b.ttt == d.ttt)
                .ok_or(XferError::Ttt(d.ttt))?;
            if d.datasn != b.next_datasn {
                return Err(XferError::DataSn {
                    got: d.datasn,
                    want: b.next_datasn,
                });
            }
            if d.offset < b.offset || end > b.offset + b.len {
                return Err(XferError::Overrun);
            }
            b.next_datasn = b.next_datasn.wrapping_add(1);
            b.received += n;
            if b.received == b.len {
                let ttt = b.ttt;
                self.bursts.retain(|x| x.ttt != ttt);
            }
        }
        let keep_to = self.keep.min(end);
        if keep_to > self.buf.len() as u32 {
            let from = self.buf.len() as u32 - d.offset.min(self.buf.len() as u32);
            let upto = (keep_to - d.offset) as usize;
            if (from as usize) < upto {
                self.buf.extend_from_slice(&data[from as usize..upto]);
            }
        }
        self.received = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: XferLimits = XferLimits {
        first_burst: 8192,
        max_burst: 16384,
        max_outstanding_r2t: 2,
        initial_r2t: false,
        immediate_data: true,
    };

    fn dout(ttt: u32, datasn: u32, offset: u32, f: bool) -> pdu::DataOut {
        pdu::DataOut {
            final_bit: f,
            itt: 1,
            ttt,
            datasn,
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn unsolicited_then_solicited() {
        let imm = Bytes::from(vec![1u8; 4096]);
        let mut x = WriteXfer::new(1, 0, 40960, &imm, false, &LIM, 1 << 20);
        let mut t = 100;
        assert!(
            x.solicit(&LIM, &mut u64::MAX.clone(), || 0).is_empty(),
            "wait for unsolicited end"
        );
        x.accept(
            &dout(RESERVED_TAG, 0, 4096, true),
            &Bytes::from(vec![2u8; 4096]),
        )
        .unwrap();
        let r2ts = x.solicit(&LIM, &mut u64::MAX.clone(), || {
            t += 1;
            t
        });
        assert_eq!(r2ts.len(), 2);
        assert_eq!((r2ts[0].offset, r2ts[0].length), (8192, 16384));
        assert_eq!((r2ts[1].offset, r2ts[1].length), (24576, 16384));
        assert_eq!(
            x.accept(&dout(101, 1, 8192, false), &Bytes::from(vec![3u8; 8192])),
            Err(XferError::DataSn { got: 1, want: 0 })
        );
        x.accept(&dout(101, 0, 8192, false), &Bytes::from(vec![3u8; 8192]))
            .unwrap();
        x.accept(&dout(101, 1, 16384, true), &Bytes::from(vec![3u8; 8192]))
            .unwrap();
        x.accept(&dout(102, 0, 24576, true), &Bytes::from(vec![4u8; 16384]))
            .unwrap();
        assert!(x.complete());
        let d = x.take_data();
        assert_eq!(d.len(), 40960);
        assert_eq!((d[0], d[4096], d[8192], d[40959]), (1, 2, 3, 4));
    }

    #[test]
    fn rejects_bad_offsets_and_tags() {
        let mut x = WriteXfer::new(1, 0, 8192, &Bytes::new(), true, &LIM, 1 << 20);
        assert_eq!(
            x.accept(
                &dout(RESERVED_TAG, 0, 0, true),
                &Bytes::from(vec![0u8; 512])
            ),
            Err(XferError::Unsolicited)
        );
        let r = x.solicit(&LIM, &mut u64::MAX.clone(), || 7);
        assert_eq!(r.len(), 1);
        assert_eq!(
            x.accept(&dout(8, 0, 0, true), &Bytes::from(vec![0u8; 512])),
            Err(XferError::Ttt(8))
        );
        assert!(matches!(
            x.accept(&dout(7, 0, 512, true), &Bytes::from(vec![0u8; 512])),
            Err(XferError::Offset { .. })
        ));
        assert_eq!(
            x.accept(&dout(7, 0, 0, true), &Bytes::from(vec![0u8; 9000])),
            Err(XferError::Overrun)
        );
    }

    #[test]
    fn budget_holds_back_r2ts_until_returned() {
        let lim = XferLimits {
            max_outstanding_r2t: 4,
            ..LIM
        };
        let mut x = WriteXfer::new(1, 0, 65536, &Bytes::new(), true, &lim, 1 << 20);
        let mut budget = 20000u64;
        let mut t = 0;
        let r = x.solicit(&lim, &mut budget, || {
            t += 1;
            t
        });
        assert_eq!(r.len(), 1, "one 16 KiB burst fits the budget, two do not");
        assert_eq!(budget, 20000 - 16384);
        assert_eq!(x.solicited(), 16384);
        x.accept(&dout(1, 0, 0, true), &Bytes::from(vec![0u8; 16384]))
            .unwrap();
        assert!(x.starved());
        budget += 65536;
        let r = x.solicit(&lim, &mut budget, || {
            t += 1;
            t
        });
        assert_eq!(r.len(), 3);
        assert!(!x.starved());
    }

    #[test]
    fn excess_is_drained_not_kept() {
        let mut x = WriteXfer::new(1, 0, 4096, &Bytes::from(vec![1u8; 1024]), true, &LIM, 2048);
        let r = x.solicit(&LIM, &mut u64::MAX.clone(), || 9);
        assert_eq!((r[0].offset, r[0].length), (1024, 3072));
        x.accept(&dout(9, 0, 1024, true), &Bytes::from(vec![2u8; 3072]))
            .unwrap();
        assert!(x.complete());
        let d = x.take_data();
        assert_eq!(d.len(), 2048);
        assert_eq!(d[2047], 2);
    }
}
