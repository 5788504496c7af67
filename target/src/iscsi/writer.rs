//! The connection's single writer. Every outgoing PDU passes through it, so
//! StatSN, ExpCmdSN and MaxCmdSN are stamped in the order PDUs hit the wire,
//! and PDUs queued together leave in one write.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use vtgt_protocol::iscsi::pdu::{Digests, Pdu};

/// How the writer fills a PDU's sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// A status-bearing PDU: gets the next StatSN, which then advances.
    Status,
    /// Carries the next StatSN without advancing it (R2T, NOP-In ping,
    /// Async Message).
    Peek,
    /// Data-In without status: only ExpCmdSN and MaxCmdSN.
    Window,
}

#[derive(Debug)]
pub enum Out {
    Pdu(Pdu, Stamp),
    /// Flush what is queued, then close the connection.
    Close,
}

/// The command window, shared by the reader (which moves ExpCmdSN) and the
/// writer (which reports it).
#[derive(Debug)]
pub struct Window {
    pub exp_cmdsn: AtomicU32,
    pub depth: u32,
}

impl Window {
    pub fn new(exp_cmdsn: u32, depth: u32) -> Arc<Self> {
        Arc::new(Self {
            exp_cmdsn: AtomicU32::new(exp_cmdsn),
            depth,
        })
    }

    pub fn exp(&self) -> u32 {
        self.exp_cmdsn.load(Ordering::Acquire)
    }

    pub fn max(&self) -> u32 {
        self.exp().wrapping_add(self.depth - 1)
    }
}

const BATCH: usize = 512 * 1024;

/// Runs until the channel closes, a Close arrives or the socket fails.
pub async fn run(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    window: Arc<Window>,
    digests: Digests,
    mut statsn: u32,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        while let Some(o) = next.take() {
            match o {
                Out::Pdu(mut pdu, stamp) => {
                    let exp = window.exp();
                    let b = &mut pdu.bhs;
                    match stamp {
                        Stamp::Status => {
                            b.set_u32(24, statsn);
                            statsn = statsn.wrapping_add(1);
                        }
                        Stamp::Peek => b.set_u32(24, statsn),
                        Stamp::Window => {}
                    }
                    b.set_u32(28, exp);
                    b.set_u32(32, window.max());
                    pdu.encode(&mut buf, digests);
                }
                Out::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() >= BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if wr.write_all(&buf).await.is_err() {
            break 'outer;
        }
        buf.clear();
        if close {
            break;
        }
    }
    let _ = wr.shutdown().await;
}
