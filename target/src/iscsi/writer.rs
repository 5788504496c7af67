//! The connection's single writer. Every outgoing PDU passes through it, so
//! StatSN, ExpCmdSN and MaxCmdSN are stamped in the order PDUs hit the wire,
//! and PDUs queued together leave in one write.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use vtgt_protocol::iscsi::pdu::{sn_lt, Digests, Pdu};

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
/// writer (which reports it). MaxCmdSN shrinks as tasks pile up, so no more
/// than `depth` tasks are ever outstanding. Initiators ignore a MaxCmdSN
/// lower than one they saw, so admission checks against the highest one
/// announced.
#[derive(Debug)]
pub struct Window {
    pub exp_cmdsn: AtomicU32,
    pub depth: u32,
    inflight: AtomicU32,
    announced: AtomicU32,
}

impl Window {
    pub fn new(exp_cmdsn: u32, depth: u32) -> Arc<Self> {
        Arc::new(Self {
            exp_cmdsn: AtomicU32::new(exp_cmdsn),
            depth,
            inflight: AtomicU32::new(0),
            announced: AtomicU32::new(exp_cmdsn.wrapping_add(depth - 1)),
        })
    }

    pub fn exp(&self) -> u32 {
        self.exp_cmdsn.load(Ordering::Acquire)
    }

    /// The MaxCmdSN to report now.
    pub fn max(&self) -> u32 {
        let busy = self.inflight.load(Ordering::Acquire).min(self.depth);
        self.exp().wrapping_add(self.depth - busy).wrapping_sub(1)
    }

    /// The highest MaxCmdSN ever reported: the true edge of the window.
    pub fn announced(&self) -> u32 {
        self.announced.load(Ordering::Acquire)
    }

    fn report(&self) -> u32 {
        let m = self.max();
        if sn_lt(self.announced(), m) {
            self.announced.store(m, Ordering::Release);
        }
        m
    }

    /// Counts one outstanding task until the guard is dropped.
    pub fn task(self: &Arc<Self>) -> TaskGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        TaskGuard(self.clone())
    }
}

#[derive(Debug)]
pub struct TaskGuard(Arc<Window>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs until the channel closes, a Close arrives or the socket fails.
pub async fn run(
    wr: OwnedWriteHalf,
    rx: mpsc::Receiver<Out>,
    window: Arc<Window>,
    digests: Digests,
    mut statsn: u32,
) {
    crate::framing::write_batches(wr, rx, move |o, buf| match o {
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
            b.set_u32(32, window.report());
            buf.put(|out| pdu.encode_header(out, digests));
            buf.put_data(&pdu.data);
            buf.put(|out| pdu.encode_trailer(out, digests));
            true
        }
        Out::Close => false,
    })
    .await
}
