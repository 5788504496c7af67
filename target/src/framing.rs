//! Reading whole PDUs off a TCP stream and writing batches of them back,
//! shared by the iSCSI and NVMe/TCP front ends. The protocol crate decides
//! where a PDU ends (and bounds it before anything is allocated); this only
//! moves bytes.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// A wire format: takes one complete PDU off the front of a buffer, or says
/// more bytes are needed.
pub trait Framing {
    type Pdu;
    type Error;
    fn decode(&self, buf: &mut BytesMut) -> Result<Option<Self::Pdu>, Self::Error>;
}

impl Framing for vtgt_protocol::iscsi::pdu::FrameConfig {
    type Pdu = vtgt_protocol::iscsi::pdu::Pdu;
    type Error = vtgt_protocol::iscsi::pdu::FrameError;
    fn decode(&self, buf: &mut BytesMut) -> Result<Option<Self::Pdu>, Self::Error> {
        vtgt_protocol::iscsi::pdu::decode(buf, self)
    }
}

impl Framing for vtgt_protocol::nvme::tcp::FrameConfig {
    type Pdu = vtgt_protocol::nvme::tcp::Pdu;
    type Error = vtgt_protocol::nvme::tcp::FrameError;
    fn decode(&self, buf: &mut BytesMut) -> Result<Option<Self::Pdu>, Self::Error> {
        vtgt_protocol::nvme::tcp::decode(buf, self)
    }
}

#[derive(Debug)]
pub enum ReadError<E> {
    Closed,
    Frame(E),
}

/// Reads whole PDUs; the framing (digests, size limits) may change between
/// PDUs, e.g. when login ends.
pub struct PduReader<F> {
    rd: OwnedReadHalf,
    buf: BytesMut,
    pub cfg: F,
}

impl<F: Framing> PduReader<F> {
    pub fn new(rd: OwnedReadHalf, cfg: F) -> Self {
        Self {
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
            cfg,
        }
    }

    /// Cancel-safe: bytes already read stay buffered.
    pub async fn next(&mut self) -> Result<F::Pdu, ReadError<F::Error>> {
        loop {
            if let Some(p) = self.cfg.decode(&mut self.buf).map_err(ReadError::Frame)? {
                return Ok(p);
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(_) => {}
            }
        }
    }
}

/// Bytes gathered before a write is issued even if more PDUs are queued.
const BATCH: usize = 512 * 1024;
/// Data segments at least this long are sent from their own buffer with a
/// vectored write rather than copied into the batch.
const ZERO_COPY_MIN: usize = 16 * 1024;

/// What one write call sends: small pieces copied together, large data
/// segments referenced in place.
pub struct Batch {
    buf: BytesMut,
    segs: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            segs: Vec::new(),
            len: 0,
        }
    }

    /// Appends through a buffer (headers, small payloads).
    pub fn put(&mut self, f: impl FnOnce(&mut BytesMut)) {
        let before = self.buf.len();
        f(&mut self.buf);
        self.len += self.buf.len() - before;
    }

    /// Appends a data segment, by reference when it is large.
    pub fn put_data(&mut self, data: &Bytes) {
        if data.len() < ZERO_COPY_MIN {
            self.put(|b| b.extend_from_slice(data));
            return;
        }
        if !self.buf.is_empty() {
            self.segs.push(self.buf.split().freeze());
        }
        self.segs.push(data.clone());
        self.len += data.len();
    }

    fn take(&mut self) -> Vec<Bytes> {
        if !self.buf.is_empty() {
            self.segs.push(self.buf.split().freeze());
        }
        self.len = 0;
        std::mem::take(&mut self.segs)
    }
}

async fn write_all_vectored(wr: &mut OwnedWriteHalf, mut segs: Vec<Bytes>) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    while first < segs.len() {
        let slices: Vec<std::io::IoSlice<'_>> = segs[first..]
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let seg = &mut segs[first];
            if n >= seg.len() {
                n -= seg.len();
                first += 1;
            } else {
                seg.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// The connection's single writer: gathers what is queued into one batch
/// and sends it with one (vectored) write. `encode` returns false for
/// "close after this batch". Ends when the channel closes, on close, or on
/// a socket error.
pub async fn write_batches<T>(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<T>,
    mut encode: impl FnMut(T, &mut Batch) -> bool,
) {
    let mut batch = Batch::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        while let Some(o) = next.take() {
            if !encode(o, &mut batch) {
                close = true;
                break;
            }
            if batch.len >= BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if write_all_vectored(&mut wr, batch.take()).await.is_err() {
            break;
        }
        if close {
            break;
        }
    }
    let _ = wr.shutdown().await;
}
