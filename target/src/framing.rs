//! Reading whole PDUs off a TCP stream and writing batches of them back,
//! shared by the iSCSI and NVMe/TCP front ends. The protocol crate decides
//! where a PDU ends (and bounds it before anything is allocated); this only
//! moves bytes.

use bytes::BytesMut;
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

/// The connection's single writer: encodes what is queued into one buffer
/// and writes it in one call. `encode` returns false for "close after this
/// batch". Ends when the channel closes, on close, or on a socket error.
pub async fn write_batches<T>(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<T>,
    mut encode: impl FnMut(T, &mut BytesMut) -> bool,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        while let Some(o) = next.take() {
            if !encode(o, &mut buf) {
                close = true;
                break;
            }
            if buf.len() >= BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if wr.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
        if close {
            break;
        }
    }
    let _ = wr.shutdown().await;
}
