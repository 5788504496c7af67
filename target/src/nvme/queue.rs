//! One TCP connection is one NVMe queue: ICReq/ICResp, then capsules.
//! In-capsule data up to IOCCSZ; larger writes by R2T and H2CData bounded
//! by MAXH2CDATA; reads as C2HData PDUs, the last flagged SUCCESS (and the
//! response capsule elided) when the host disabled SQ flow control. Fatal
//! PDU errors get a C2HTermReq and close this connection only.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use vtgt_protocol::nvme::command::{admin as aop, nvm, sc, sgl, Cqe, Fuse, Sqe, Status};
use vtgt_protocol::nvme::fabrics::{self, fctype, ConnectCmd, PropertyCmd, CATTR_DISABLE_SQFLOW};
use vtgt_protocol::nvme::tcp::{
    self, fes, C2HData, CapsuleResp, Digests, FrameConfig, FrameError, ICResp, Pdu, TermReq, R2T,
};

use super::controller::{self, Controller};
use super::{admin, io, NvmeShared, PortInfo, C2H_CHUNK, IN_CAPSULE, MAXH2CDATA, MAX_IO_BYTES};

/// Time a new connection has to send its ICReq.
const IC_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Out {
    Pdu(Pdu),
    /// Flush what is queued, then close.
    Close,
}

/// Sends completions and data for one queue.
#[derive(Debug, Clone)]
pub struct Responder {
    out: mpsc::Sender<Out>,
    qid: u16,
    sqflow_disabled: bool,
    sqhd: Arc<AtomicU16>,
    inflight: Arc<Mutex<HashSet<u16>>>,
}

impl Responder {
    async fn send(&self, p: Pdu) {
        let _ = self.out.send(Out::Pdu(p)).await;
    }

    /// The command is done: free its CID first, so the host may reuse it
    /// as soon as it sees the completion.
    fn retire(&self, cid: u16) {
        self.inflight.lock().remove(&cid);
    }

    pub async fn complete(&self, cid: u16, status: Status, result: u64) {
        self.retire(cid);
        let cqe = Cqe {
            result,
            sqhd: self.sqhd.load(Ordering::Acquire),
            sqid: self.qid,
            cid,
            status,
        };
        self.send(Pdu::CapsuleResp(CapsuleResp { cqe: cqe.encode() }))
            .await;
    }

    /// Sends `data` as C2HData PDUs, then the completion (or the SUCCESS
    /// flag on the last PDU when allowed).
    pub async fn data_then_complete(&self, cid: u16, data: Bytes, status: Status, result: u64) {
        let elide = self.sqflow_disabled && status.is_success() && result == 0 && !data.is_empty();
        let n = data.len();
        let mut at = 0usize;
        while at < n {
            let len = C2H_CHUNK.min(n - at);
            let last = at + len == n;
            if last && elide {
                self.retire(cid);
            }
            self.send(Pdu::C2HData(C2HData {
                cccid: cid,
                datao: at as u32,
                last,
                success: last && elide,
                data: data.slice(at..at + len),
            }))
            .await;
            at += len;
        }
        if !elide {
            self.complete(cid, status, result).await;
        }
    }

    pub async fn reply(&self, cid: u16, r: Reply) {
        match r {
            Reply::Done {
                status,
                result,
                data,
            } => {
                if data.is_empty() {
                    self.complete(cid, status, result).await
                } else {
                    self.data_then_complete(cid, data, status, result).await
                }
            }
            Reply::Deferred => {}
        }
    }
}

/// What a command handler produces.
#[derive(Debug)]
pub enum Reply {
    Done {
        status: Status,
        result: u64,
        /// Controller-to-host data, already cut to the host's buffer.
        data: Bytes,
    },
    /// Completed later (an AER).
    Deferred,
}

impl Reply {
    pub fn status(s: Status) -> Self {
        Reply::Done {
            status: s,
            result: 0,
            data: Bytes::new(),
        }
    }
    pub fn ok() -> Self {
        Self::status(Status::SUCCESS)
    }
    pub fn result(r: u64) -> Self {
        Reply::Done {
            status: Status::SUCCESS,
            result: r,
            data: Bytes::new(),
        }
    }
    pub fn data(d: Bytes) -> Self {
        Reply::Done {
            status: Status::SUCCESS,
            result: 0,
            data: d,
        }
    }
}

/// Which way a command moves data (opcode bits 1:0; Fabrics by type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    None,
    H2C,
    C2H,
}

pub fn direction(sqe: &Sqe) -> Dir {
    if sqe.opcode() == aop::FABRICS {
        return if fabrics::fctype_of(sqe) == fctype::CONNECT {
            Dir::H2C
        } else {
            Dir::None
        };
    }
    match sqe.opcode() & 3 {
        1 => Dir::H2C,
        2 => Dir::C2H,
        _ => Dir::None,
    }
}

/// Reads NVMe/TCP PDUs, bounded by the frame config; cancel-safe.
type PduReader = crate::framing::PduReader<FrameConfig>;
type ReadError = crate::framing::ReadError<FrameError>;

/// The single writer: PDUs queued together leave in one write.
async fn writer(wr: OwnedWriteHalf, rx: mpsc::Receiver<Out>, digests: Digests) {
    crate::framing::write_batches(wr, rx, move |o, buf| match o {
        Out::Pdu(p) => {
            buf.put(|out| tcp::encode(&p, digests, out));
            true
        }
        Out::Close => false,
    })
    .await
}

fn term(fes: u16, fei: u32, header: Bytes) -> Pdu {
    Pdu::C2HTermReq(TermReq {
        fes,
        fei,
        data: header,
    })
}

/// Serves one connection from ICReq to close.
pub async fn serve(stream: TcpStream, peer: SocketAddr, port: PortInfo, shared: Arc<NvmeShared>) {
    // Mandatory: small capsules must not wait for Nagle and delayed ACKs.
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(port.listen);
    let (rd, mut wr) = stream.into_split();
    let mut reader = PduReader::new(rd, FrameConfig::INITIAL);
    let first = tokio::select! {
        r = tokio::time::timeout(IC_TIMEOUT, reader.next()) => r,
        _ = shared.shutdown.cancelled() => return,
    };
    let nodig = Digests::default();
    let ic = match first {
        Ok(Ok(Pdu::ICReq(r))) => r,
        Ok(Err(ReadError::Frame(FrameError::Fatal { fes, fei, header }))) => {
            let _ = wr
                .write_all(&tcp::encode_to_bytes(&term(fes, fei, header), nodig))
                .await;
            return;
        }
        Ok(Ok(_)) => {
            let t = term(fes::PDU_SEQUENCE_ERROR, 0, Bytes::new());
            let _ = wr.write_all(&tcp::encode_to_bytes(&t, nodig)).await;
            return;
        }
        _ => return,
    };
    if ic.pfv != 0 || ic.hpda > 31 {
        let fei = if ic.pfv != 0 { 8 } else { 10 };
        let t = term(fes::UNSUPPORTED_PARAMETER, fei, Bytes::new());
        let _ = wr.write_all(&tcp::encode_to_bytes(&t, nodig)).await;
        return;
    }
    let resp = Pdu::ICResp(ICResp {
        pfv: 0,
        cpda: 0,
        digests: ic.digests,
        maxh2cdata: MAXH2CDATA,
    });
    if wr
        .write_all(&tcp::encode_to_bytes(&resp, nodig))
        .await
        .is_err()
    {
        return;
    }
    reader.cfg = FrameConfig {
        digests: ic.digests,
        max_data: MAXH2CDATA.max(IN_CAPSULE),
    };
    let (tx, rx) = mpsc::channel(256);
    let wtask = tokio::spawn(writer(wr, rx, ic.digests));
    let mut q = Queue {
        shared: shared.clone(),
        local,
        out: tx,
        resp: None,
        ctrl: None,
        qid: 0,
        entries: 2,
        sqhd: Arc::new(AtomicU16::new(0)),
        inflight: Arc::new(Mutex::new(HashSet::new())),
        sqflow_disabled: false,
        kill: CancellationToken::new(),
        xfers: HashMap::new(),
        next_ttag: 0,
        fused: FusedState::default(),
    };
    q.run(&mut reader).await;
    debug!(%peer, qid = q.qid, "NVMe queue closed");
    if let Some(c) = &q.ctrl {
        if q.qid == 0 {
            shared.controllers.teardown(c.cntlid, "admin queue closed");
        } else {
            c.remove_io_queue(q.qid);
        }
    }
    let _ = q.out.send(Out::Close).await;
    drop(q);
    let _ = tokio::time::timeout(Duration::from_secs(5), wtask).await;
}

/// A write waiting for its data by R2T.
struct Xfer {
    sqe: Sqe,
    buf: BytesMut,
    total: u32,
}

enum Flow {
    Continue,
    Close,
}

struct Queue {
    shared: Arc<NvmeShared>,
    local: SocketAddr,
    out: mpsc::Sender<Out>,
    resp: Option<Responder>,
    ctrl: Option<Arc<Controller>>,
    qid: u16,
    /// SQSIZE + 1: the most commands outstanding at once.
    entries: u32,
    sqhd: Arc<AtomicU16>,
    inflight: Arc<Mutex<HashSet<u16>>>,
    sqflow_disabled: bool,
    kill: CancellationToken,
    xfers: HashMap<u16, Xfer>,
    next_ttag: u16,
    fused: FusedState,
}

/// Fused Compare and Write pairing. The two halves must be adjacent in
/// capsule arrival order; each may then wait for its data (R2T) in any
/// order, so halves whose data is here wait for their partner.
#[derive(Default)]
struct FusedState {
    /// A first half arrived; the next capsule must be its second half.
    awaiting_second: Option<u16>,
    /// first CID -> second CID.
    pairs: HashMap<u16, u16>,
    /// Halves that lost their partner: they complete as aborted.
    orphans: HashSet<u16>,
    /// Halves whose data is here.
    ready: HashMap<u16, (Sqe, Bytes)>,
    /// A first half that failed at arrival: the next second half is alone.
    failed_first: Option<u16>,
}

impl FusedState {
    /// A half failed before its data was used. Its partner-to-be is
    /// orphaned; a partner already waiting with its data is returned, to be
    /// completed as aborted now.
    fn forget(&mut self, cid: u16) -> Option<u16> {
        self.ready.remove(&cid);
        self.orphans.remove(&cid);
        if self.awaiting_second == Some(cid) {
            // The second half, when it comes, has nobody to pair with.
            self.awaiting_second = None;
            self.failed_first = Some(cid);
            return None;
        }
        let first = self
            .pairs
            .iter()
            .find(|(f, s)| **f == cid || **s == cid)
            .map(|(f, s)| (*f, *s));
        let (f, sec) = first?;
        self.pairs.remove(&f);
        let partner = if f == cid { sec } else { f };
        if self.ready.remove(&partner).is_some() {
            Some(partner)
        } else {
            self.orphans.insert(partner);
            None
        }
    }

    /// Records a capsule's arrival (I/O queues only).
    fn arrived(&mut self, cid: u16, fuse: Fuse) {
        if self.failed_first.take().is_some() && fuse == Fuse::Second {
            self.orphans.insert(cid);
            return;
        }
        if let Some(first) = self.awaiting_second.take() {
            if fuse == Fuse::Second {
                self.pairs.insert(first, cid);
                return;
            }
            self.orphans.insert(first);
        }
        match fuse {
            Fuse::First => self.awaiting_second = Some(cid),
            Fuse::Second => {
                self.orphans.insert(cid);
            }
            _ => {}
        }
    }

    /// A half's data is here. Returns the pair when both halves are ready,
    /// or `Err` when this half must complete as aborted.
    #[allow(clippy::type_complexity)]
    fn ready(&mut self, sqe: Sqe, data: Bytes) -> Result<Option<((Sqe, Bytes), (Sqe, Bytes))>, ()> {
        let cid = sqe.cid();
        if self.orphans.remove(&cid) {
            return Err(());
        }
        self.ready.insert(cid, (sqe, data));
        let first = if sqe.fuse() == Fuse::First {
            cid
        } else {
            match self.pairs.iter().find(|(_, s)| **s == cid) {
                Some((f, _)) => *f,
                None => return Ok(None),
            }
        };
        let Some(&second) = self.pairs.get(&first) else {
            return Ok(None);
        };
        if !(self.ready.contains_key(&first) && self.ready.contains_key(&second)) {
            return Ok(None);
        }
        self.pairs.remove(&first);
        match (self.ready.remove(&first), self.ready.remove(&second)) {
            (Some(a), Some(b)) => Ok(Some((a, b))),
            _ => Ok(None),
        }
    }
}

impl Queue {
    fn responder(&self) -> Responder {
        self.resp.clone().unwrap_or_else(|| Responder {
            out: self.out.clone(),
            qid: self.qid,
            sqflow_disabled: false,
            sqhd: self.sqhd.clone(),
            inflight: self.inflight.clone(),
        })
    }

    async fn fatal(&self, fes: u16, fei: u32, header: Bytes) -> Flow {
        debug!(fes, fei, "NVMe/TCP fatal PDU error");
        let _ = self.out.send(Out::Pdu(term(fes, fei, header))).await;
        Flow::Close
    }

    async fn run(&mut self, reader: &mut PduReader) {
        loop {
            let kill = self.kill.clone();
            let flow = tokio::select! {
                r = reader.next() => match r {
                    Ok(p) => self.dispatch(p).await,
                    Err(ReadError::Closed) => Flow::Close,
                    Err(ReadError::Frame(FrameError::Fatal { fes, fei, header })) => {
                        if fes == fes::HEADER_DIGEST_ERROR {
                            crate::metrics::digest_error("nvme", "header");
                        }
                        self.fatal(fes, fei, header).await
                    }
                    // A corrupted data part cannot be recovered on TCP: drop
                    // the connection as nvmet does.
                    Err(ReadError::Frame(FrameError::DataDigest { .. })) => {
                        crate::metrics::digest_error("nvme", "data");
                        Flow::Close
                    }
                },
                _ = kill.cancelled() => Flow::Close,
                _ = self.shared.shutdown.cancelled() => Flow::Close,
            };
            if let Flow::Close = flow {
                break;
            }
        }
    }

    async fn dispatch(&mut self, p: Pdu) -> Flow {
        match p {
            Pdu::CapsuleCmd(c) => self.on_command(Sqe(c.sqe), c.data).await,
            Pdu::H2CData(d) => {
                let Some(x) = self.xfers.get_mut(&d.ttag) else {
                    return self
                        .fatal(fes::INVALID_HEADER_FIELD, 10, Bytes::new())
                        .await;
                };
                if x.sqe.cid() != d.cccid {
                    return self.fatal(fes::INVALID_HEADER_FIELD, 8, Bytes::new()).await;
                }
                let got = x.buf.len() as u64;
                if d.datao as u64 != got {
                    return self.fatal(fes::DATA_OUT_OF_RANGE, 12, Bytes::new()).await;
                }
                if got + d.data.len() as u64 > x.total as u64 {
                    return self.fatal(fes::DATA_OUT_OF_RANGE, 16, Bytes::new()).await;
                }
                if x.buf.capacity() == 0 {
                    x.buf.reserve(x.total as usize);
                }
                x.buf.extend_from_slice(&d.data);
                let done = x.buf.len() == x.total as usize;
                if done != d.last {
                    return self.fatal(fes::PDU_SEQUENCE_ERROR, 1, Bytes::new()).await;
                }
                if done {
                    if let Some(x) = self.xfers.remove(&d.ttag) {
                        return self.execute(x.sqe, x.buf.freeze(), x.total).await;
                    }
                }
                Flow::Continue
            }
            Pdu::H2CTermReq(t) => {
                debug!(fes = t.fes, "host terminated the connection");
                Flow::Close
            }
            _ => self.fatal(fes::PDU_SEQUENCE_ERROR, 0, Bytes::new()).await,
        }
    }

    async fn on_command(&mut self, sqe: Sqe, data: Bytes) -> Flow {
        let cid = sqe.cid();
        if self.ctrl.is_some() {
            let e = self.entries.max(1);
            let next = ((self.sqhd.load(Ordering::Acquire) as u32 + 1) % e) as u16;
            self.sqhd.store(next, Ordering::Release);
        }
        if let Some(c) = &self.ctrl {
            c.touch();
        }
        // 0: admitted, 1: CID conflict, 2: queue overrun.
        let verdict = {
            let mut inf = self.inflight.lock();
            if inf.contains(&cid) {
                1
            } else if inf.len() as u32 >= self.entries.max(2) {
                2
            } else {
                inf.insert(cid);
                0
            }
        };
        match verdict {
            1 => {
                // Not tracked: the original command keeps its CID.
                let cqe = Cqe {
                    sqid: self.qid,
                    sqhd: self.sqhd.load(Ordering::Acquire),
                    ..Cqe::new(cid, Status::generic(sc::CID_CONFLICT))
                };
                let _ = self
                    .out
                    .send(Out::Pdu(Pdu::CapsuleResp(CapsuleResp {
                        cqe: cqe.encode(),
                    })))
                    .await;
                return Flow::Continue;
            }
            // The host must not exceed SQSIZE; one that does is broken.
            2 => return self.fatal(fes::PDU_SEQUENCE_ERROR, 0, Bytes::new()).await,
            _ => {}
        }
        if self.qid != 0 && self.ctrl.is_some() {
            self.fused.arrived(cid, sqe.fuse());
            // A first half orphaned by this arrival may already hold its
            // data: abort it now.
            let stale: Vec<u16> = self
                .fused
                .orphans
                .iter()
                .copied()
                .filter(|c| self.fused.ready.contains_key(c))
                .collect();
            for c in stale {
                self.fused.orphans.remove(&c);
                self.fused.ready.remove(&c);
                self.responder()
                    .complete(c, Status::generic(sc::ABORT_MISSING_FUSED), 0)
                    .await;
            }
        }
        let d = sgl_of(&sqe);
        match direction(&sqe) {
            Dir::H2C if d.len > 0 => match d.kind {
                sgl::DATA_BLOCK_OFFSET => {
                    let (off, len) = (d.addr, d.len as u64);
                    if len > IN_CAPSULE as u64 {
                        return self.fail(cid, sc::SGL_INVALID_DATA_LEN).await;
                    }
                    if off.checked_add(len).is_none_or(|e| e > data.len() as u64) {
                        return self.fail(cid, sc::SGL_INVALID_OFFSET).await;
                    }
                    let payload = data.slice(off as usize..(off + len) as usize);
                    self.execute(sqe, payload, d.len).await
                }
                sgl::TRANSPORT_DATA_BLOCK => {
                    if d.len > MAX_IO_BYTES || !data.is_empty() {
                        return self.fail(cid, sc::SGL_INVALID_DATA_LEN).await;
                    }
                    self.next_ttag = self.next_ttag.wrapping_add(1);
                    let ttag = self.next_ttag;
                    self.xfers.insert(
                        ttag,
                        Xfer {
                            sqe,
                            // Allocated when data arrives, not on the
                            // host's say-so.
                            buf: BytesMut::new(),
                            total: d.len,
                        },
                    );
                    let _ = self
                        .out
                        .send(Out::Pdu(Pdu::R2T(R2T {
                            cccid: cid,
                            ttag,
                            r2to: 0,
                            r2tl: d.len,
                        })))
                        .await;
                    Flow::Continue
                }
                _ => self.fail(cid, sc::SGL_INVALID_TYPE).await,
            },
            Dir::C2H if d.len > 0 => {
                if d.kind != sgl::TRANSPORT_DATA_BLOCK {
                    return self.fail(cid, sc::SGL_INVALID_TYPE).await;
                }
                if d.len > MAX_IO_BYTES {
                    return self.fail(cid, sc::SGL_INVALID_DATA_LEN).await;
                }
                self.execute(sqe, Bytes::new(), d.len).await
            }
            _ => self.execute(sqe, Bytes::new(), 0).await,
        }
    }

    async fn fail(&mut self, cid: u16, code: u8) -> Flow {
        let r = self.responder();
        r.complete(cid, Status::generic(code), 0).await;
        // A failed half takes its partner down with it.
        if let Some(partner) = self.fused.forget(cid) {
            r.complete(partner, Status::generic(sc::ABORT_FAILED_FUSED), 0)
                .await;
        }
        Flow::Continue
    }

    /// Runs a command whose data (if any) is all here. `xfer` is the SGL
    /// length: the host's buffer for reads, the data length for writes.
    async fn execute(&mut self, sqe: Sqe, data: Bytes, xfer: u32) -> Flow {
        let cid = sqe.cid();
        let r = self.responder();
        if sqe.opcode() == aop::FABRICS {
            return self.fabrics(sqe, data).await;
        }
        let Some(ctrl) = self.ctrl.clone() else {
            r.complete(cid, Status::generic(sc::CMD_SEQ_ERROR), 0).await;
            return Flow::Continue;
        };
        if self.qid == 0 {
            let reply =
                admin::execute(&self.shared, &ctrl, &r, self.local, &sqe, &data, xfer).await;
            if let Reply::Done { status, .. } = &reply {
                if !status.is_success() {
                    ctrl.log_error(0, cid, *status, 0, sqe.nsid());
                }
            }
            r.reply(cid, reply).await;
            return Flow::Continue;
        }
        match sqe.fuse() {
            Fuse::First | Fuse::Second => {
                match self.fused.ready(sqe, data) {
                    Err(()) => {
                        r.complete(cid, Status::generic(sc::ABORT_MISSING_FUSED), 0)
                            .await
                    }
                    Ok(None) => {}
                    Ok(Some(((first, fdata), (second, sdata)))) => {
                        tokio::spawn(async move {
                            let (a, b) = io::fused(&ctrl, &first, fdata, &second, sdata).await;
                            r.complete(first.cid(), a, 0).await;
                            r.complete(second.cid(), b, 0).await;
                        });
                    }
                }
                return Flow::Continue;
            }
            Fuse::Reserved => {
                r.complete(cid, Status::generic(sc::INVALID_FIELD), 0).await;
                return Flow::Continue;
            }
            Fuse::None => {}
        }
        let qid = self.qid;
        let is_read = sqe.opcode() == nvm::READ;
        let run = async move {
            let reply = io::execute(&ctrl, &sqe, data, xfer).await;
            if let Reply::Done { status, .. } = &reply {
                if !status.is_success() {
                    ctrl.log_error(qid, cid, *status, sqe.slba(), sqe.nsid());
                }
            }
            r.reply(cid, reply).await;
        };
        // Reads run to completion on this task when nothing has to wait
        // (page-cache hits): no spawn and no wakeup of another task. A
        // read that would wait goes on as its own task, which polls it
        // again at once, so no wakeup is lost. Writes always get their own
        // task: their kernel cost is higher, and run here they would keep
        // this queue from reading the next command.
        if is_read {
            let mut run = Box::pin(run);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if run.as_mut().poll(&mut cx).is_pending() {
                tokio::spawn(run);
            }
        } else {
            tokio::spawn(run);
        }
        Flow::Continue
    }

    async fn fabrics(&mut self, sqe: Sqe, data: Bytes) -> Flow {
        let cid = sqe.cid();
        let r = self.responder();
        match fabrics::fctype_of(&sqe) {
            fctype::CONNECT => {
                if self.ctrl.is_some() {
                    r.complete(cid, Status::generic(sc::CMD_SEQ_ERROR), 0).await;
                    return Flow::Continue;
                }
                let cmd = ConnectCmd::parse(&sqe);
                let res = if cmd.qid == 0 {
                    controller::connect_admin(&self.shared, &cmd, &data)
                        .await
                        .map(|c| (c.clone(), c.kill.child_token()))
                } else {
                    controller::connect_io(&self.shared, &cmd, &data)
                };
                match res {
                    Ok((ctrl, token)) => {
                        self.qid = cmd.qid;
                        self.entries = cmd.sqsize as u32 + 1;
                        self.sqflow_disabled = cmd.cattr & CATTR_DISABLE_SQFLOW != 0;
                        self.kill = token;
                        let resp = Responder {
                            out: self.out.clone(),
                            qid: self.qid,
                            sqflow_disabled: self.sqflow_disabled,
                            sqhd: self.sqhd.clone(),
                            inflight: self.inflight.clone(),
                        };
                        if cmd.qid == 0 {
                            ctrl.set_admin(resp.clone());
                        } else {
                            ctrl.track_io_queue(cmd.qid, self.inflight.clone());
                        }
                        self.resp = Some(resp.clone());
                        let cntlid = ctrl.cntlid;
                        self.ctrl = Some(ctrl);
                        resp.complete(cid, Status::SUCCESS, cntlid as u64).await;
                    }
                    Err((status, result)) => r.complete(cid, status, result).await,
                }
                Flow::Continue
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
                let Some(ctrl) = self.ctrl.clone().filter(|_| self.qid == 0) else {
                    r.complete(cid, Status::generic(sc::CMD_SEQ_ERROR), 0).await;
                    return Flow::Continue;
                };
                let p = PropertyCmd::parse(&sqe);
                let res = if fabrics::fctype_of(&sqe) == fctype::PROPERTY_GET {
                    ctrl.property_get(&p)
                } else {
                    ctrl.property_set(&p).await.map(|_| 0)
                };
                match res {
                    Ok(v) => r.complete(cid, Status::SUCCESS, v).await,
                    Err(s) => r.complete(cid, s, 0).await,
                }
                Flow::Continue
            }
            fctype::DISCONNECT => {
                r.complete(cid, Status::SUCCESS, 0).await;
                Flow::Close
            }
            _ => {
                r.complete(cid, Status::generic(sc::INVALID_OPCODE), 0)
                    .await;
                Flow::Continue
            }
        }
    }
}

/// The data descriptor of a command; Fabrics commands carry theirs in the
/// same place.
fn sgl_of(sqe: &Sqe) -> vtgt_protocol::nvme::command::SglDesc {
    sqe.sgl()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vtgt_protocol::nvme::command::rw_sqe;

    fn half(cid: u16, fuse: Fuse) -> Sqe {
        let op = if fuse == Fuse::First {
            nvm::COMPARE
        } else {
            nvm::WRITE
        };
        let mut s = rw_sqe(op, cid, 1, 0, 1, false);
        s.set_fuse(fuse);
        s
    }

    #[test]
    fn fused_halves_pair_in_arrival_order_whatever_the_data_order() {
        let mut f = FusedState::default();
        f.arrived(1, Fuse::First);
        f.arrived(2, Fuse::Second);
        // Second's data first (R2T answered out of order).
        assert!(matches!(
            f.ready(half(2, Fuse::Second), Bytes::new()),
            Ok(None)
        ));
        match f.ready(half(1, Fuse::First), Bytes::new()) {
            Ok(Some(((a, _), (b, _)))) => assert_eq!((a.cid(), b.cid()), (1, 2)),
            _ => panic!("pair not formed"),
        }
        assert!(f.pairs.is_empty() && f.ready.is_empty());
    }

    #[test]
    fn lone_halves_are_orphans() {
        let mut f = FusedState::default();
        f.arrived(1, Fuse::First);
        f.arrived(2, Fuse::None);
        assert!(f.ready(half(1, Fuse::First), Bytes::new()).is_err());
        f.arrived(3, Fuse::Second);
        assert!(f.ready(half(3, Fuse::Second), Bytes::new()).is_err());
        assert!(f.orphans.is_empty());
    }

    #[test]
    fn a_failed_half_takes_its_partner_down() {
        let mut f = FusedState::default();
        // The first fails at arrival: the second is an orphan.
        f.arrived(1, Fuse::First);
        assert_eq!(f.forget(1), None);
        f.arrived(2, Fuse::Second);
        assert!(f.ready(half(2, Fuse::Second), Bytes::new()).is_err());
        // The second fails while the first waits with its data.
        f.arrived(3, Fuse::First);
        f.arrived(4, Fuse::Second);
        assert!(matches!(
            f.ready(half(3, Fuse::First), Bytes::new()),
            Ok(None)
        ));
        assert_eq!(f.forget(4), Some(3));
        assert!(f.pairs.is_empty() && f.ready.is_empty() && f.orphans.is_empty());
    }

    #[test]
    fn data_direction_from_opcode() {
        assert_eq!(direction(&Sqe::new(nvm::WRITE, 0)), Dir::H2C);
        assert_eq!(direction(&Sqe::new(nvm::READ, 0)), Dir::C2H);
        assert_eq!(direction(&Sqe::new(nvm::FLUSH, 0)), Dir::None);
        assert_eq!(direction(&Sqe::new(aop::IDENTIFY, 0)), Dir::C2H);
        let mut c = Sqe::new(aop::FABRICS, 0);
        c.0[4] = fctype::CONNECT;
        assert_eq!(direction(&c), Dir::H2C);
        c.0[4] = fctype::PROPERTY_GET;
        assert_eq!(direction(&c), Dir::None);
    }
}
