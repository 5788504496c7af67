//! An NVMe/TCP host on `vtgt-protocol`: ICReq, admin queue Connect,
//! controller enable through Property Get/Set, Identify, Set Features,
//! AER, Keep Alive, I/O queues with many outstanding commands, reads and
//! writes (in-capsule, R2T/H2CData, multi-PDU C2HData), flush, optional
//! digests, and a discovery client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use vtgt_protocol::nvme::command::{admin, feat, nvm, rw_sqe, Cqe, SglDesc, Sqe, Status};
use vtgt_protocol::nvme::fabrics::{
    cc, csts, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQFLOW, CNTLID_DYNAMIC,
    DISCOVERY_NQN,
};
use vtgt_protocol::nvme::identify::{self, cns, IdentifyController, IdentifyNamespace, NsDesc};
use vtgt_protocol::nvme::log::{self as nlog, DiscoveryEntry, GetLogPage};
use vtgt_protocol::nvme::tcp::{
    self, Digests, FrameConfig, FrameError, H2CData, ICReq, Pdu, TermReq,
};

pub use vtgt_protocol::nvme::command::Cqe as Completion;
pub use vtgt_protocol::nvme::tcp::Digests as NvmeDigests;

/// Upper bound on what we accept in one PDU from a target.
const MAX_RX_DATA: u32 = 1 << 20;
/// Upper bound for any single response we wait for by default.
const STEP: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("command failed: SCT {:#x} SC {:#x}", .0.sct, .0.sc)]
    Status(Status),
    #[error("target terminated the connection (FES {fes:#x}, FEI {fei})")]
    Terminated { fes: u16, fei: u32 },
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// What a host presents when it connects.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub digests: Digests,
    /// Keep-alive timeout asked for in the admin Connect (ms; 0 = none).
    pub kato_ms: u32,
    /// Queue entries asked for (SQSIZE + 1).
    pub queue_size: u16,
    /// Ask the target to elide response capsules of successful reads.
    pub disable_sqflow: bool,
}

impl HostConfig {
    pub fn new(hostnqn: &str) -> Self {
        let r: u128 = rand::random();
        Self {
            hostnqn: hostnqn.to_string(),
            hostid: r.to_be_bytes(),
            digests: Digests::default(),
            kato_ms: 0,
            queue_size: 32,
            disable_sqflow: true,
        }
    }
}

/// A finished command: its completion and any controller-to-host data.
#[derive(Debug, Clone)]
pub struct Done {
    pub cqe: Cqe,
    pub data: Bytes,
}

impl Done {
    pub fn ok(self) -> Result<Done, NvmeError> {
        if self.cqe.status.is_success() {
            Ok(self)
        } else {
            Err(NvmeError::Status(self.cqe.status))
        }
    }
}

struct Pending {
    tx: oneshot::Sender<Result<Done, NvmeError>>,
    data: BytesMut,
    read_len: usize,
    write: Bytes,
}

struct Inner {
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    digests: Digests,
    maxh2cdata: u32,
    pending: Mutex<HashMap<u16, Pending>>,
    next_cid: AtomicU16,
    slots: Semaphore,
    closed: AtomicBool,
    term: Mutex<Option<TermReq>>,
    /// In-capsule data the target takes (from IOCCSZ); 0 = use R2T.
    in_capsule: AtomicU32,
}

/// One NVMe/TCP connection: one queue.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
    pub qid: u16,
    reader: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Queue {
    /// Opens a TCP connection and exchanges ICReq/ICResp.
    pub async fn open(
        addr: SocketAddr,
        digests: Digests,
        qid: u16,
        depth: u16,
    ) -> Result<Queue, NvmeError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        let ic = Pdu::ICReq(ICReq {
            pfv: 0,
            hpda: 0,
            digests,
            maxr2t: 0,
        });
        wr.write_all(&tcp::encode_to_bytes(&ic, Digests::default()))
            .await?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let resp = tokio::time::timeout(STEP, read_pdu(&mut rd, &mut buf, &FrameConfig::INITIAL))
            .await
            .map_err(|_| NvmeError::Timeout)??;
        let icr = match resp {
            Pdu::ICResp(r) => r,
            Pdu::C2HTermReq(t) => {
                return Err(NvmeError::Terminated {
                    fes: t.fes,
                    fei: t.fei,
                })
            }
            other => {
                return Err(NvmeError::Protocol(format!(
                    "expected ICResp, got {other:?}"
                )))
            }
        };
        if icr.pfv != 0 || icr.digests != digests || icr.maxh2cdata < tcp::MIN_MAXH2CDATA {
            return Err(NvmeError::Protocol(format!("bad ICResp {icr:?}")));
        }
        let inner = Arc::new(Inner {
            wr: tokio::sync::Mutex::new(wr),
            digests,
            maxh2cdata: icr.maxh2cdata,
            pending: Mutex::new(HashMap::new()),
            next_cid: AtomicU16::new(0),
            slots: Semaphore::new(depth.max(1) as usize),
            closed: AtomicBool::new(false),
            term: Mutex::new(None),
            // Enough for the Connect data until Identify tells us more.
            in_capsule: AtomicU32::new(1024),
        });
        let cfg = FrameConfig {
            digests,
            max_data: MAX_RX_DATA,
        };
        let r = tokio::spawn(reader(rd, buf, cfg, inner.clone()));
        Ok(Queue {
            inner,
            qid,
            reader: Arc::new(Mutex::new(Some(r))),
        })
    }

    pub fn set_in_capsule(&self, bytes: u32) {
        self.inner.in_capsule.store(bytes, Ordering::Release);
    }

    pub fn maxh2cdata(&self) -> u32 {
        self.inner.maxh2cdata
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The TermReq the target sent before closing, if any.
    pub fn termination(&self) -> Option<TermReq> {
        self.inner.term.lock().clone()
    }

    /// Writes raw bytes on the connection (for malformed-PDU tests).
    pub async fn send_raw(&self, b: &[u8]) -> Result<(), NvmeError> {
        let mut wr = self.inner.wr.lock().await;
        wr.write_all(b).await?;
        Ok(())
    }

    /// Registers a command and encodes its capsule: `write` goes
    /// in-capsule when it fits, else by R2T; `read_len` is the buffer for
    /// controller-to-host data.
    fn prepare(
        &self,
        mut sqe: Sqe,
        write: Bytes,
        read_len: u32,
    ) -> (u16, oneshot::Receiver<Result<Done, NvmeError>>, Bytes) {
        let (tx, rx) = oneshot::channel();
        let mut p = self.inner.pending.lock();
        let mut cid = self.inner.next_cid.fetch_add(1, Ordering::Relaxed);
        // Bounded: at most the queue depth of CIDs is in use.
        for _ in 0..u16::MAX {
            if !p.contains_key(&cid) {
                break;
            }
            cid = self.inner.next_cid.fetch_add(1, Ordering::Relaxed);
        }
        sqe.set_cid(cid);
        let inline = !write.is_empty()
            && write.len() as u32 <= self.inner.in_capsule.load(Ordering::Acquire);
        let (sgl, keep, capsule) = if write.is_empty() {
            (SglDesc::transport(read_len), Bytes::new(), Bytes::new())
        } else if inline {
            (SglDesc::in_capsule(write.len() as u32), Bytes::new(), write)
        } else {
            (SglDesc::transport(write.len() as u32), write, Bytes::new())
        };
        sqe.set_sgl(sgl);
        p.insert(
            cid,
            Pending {
                tx,
                data: BytesMut::new(),
                read_len: read_len as usize,
                write: keep,
            },
        );
        let pdu = Pdu::CapsuleCmd(tcp::CapsuleCmd {
            sqe: sqe.0,
            data: capsule,
        });
        (cid, rx, tcp::encode_to_bytes(&pdu, self.inner.digests))
    }

    async fn send_and_wait(&self, cids: &[u16], bytes: &[u8]) -> Result<(), NvmeError> {
        let sent = {
            let mut wr = self.inner.wr.lock().await;
            wr.write_all(bytes).await
        };
        if let Err(e) = sent {
            let mut p = self.inner.pending.lock();
            for c in cids {
                p.remove(c);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Submits a command and waits for it. Waits for a free queue slot
    /// first, so no more than the queue depth is ever outstanding.
    pub async fn submit(&self, sqe: Sqe, write: Bytes, read_len: u32) -> Result<Done, NvmeError> {
        let _permit = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| NvmeError::Closed)?;
        if self.is_closed() {
            return Err(NvmeError::Closed);
        }
        let (cid, rx, bytes) = self.prepare(sqe, write, read_len);
        self.send_and_wait(&[cid], &bytes).await?;
        rx.await.unwrap_or(Err(NvmeError::Closed))
    }

    /// Fused Compare and Write: both capsules leave in one write.
    pub async fn compare_and_write(
        &self,
        nsid: u32,
        slba: u64,
        nlb: u32,
        compare: Bytes,
        write: Bytes,
    ) -> Result<(Done, Done), NvmeError> {
        use vtgt_protocol::nvme::command::Fuse;
        let _permit = self
            .inner
            .slots
            .acquire_many(2)
            .await
            .map_err(|_| NvmeError::Closed)?;
        let mut c = rw_sqe(nvm::COMPARE, 0, nsid, slba, nlb, false);
        c.set_fuse(Fuse::First);
        let mut w = rw_sqe(nvm::WRITE, 0, nsid, slba, nlb, false);
        w.set_fuse(Fuse::Second);
        let (c1, r1, mut b1) = self.prepare(c, compare, 0);
        let (c2, r2, b2) = self.prepare(w, write, 0);
        let mut both = BytesMut::from(&b1[..]);
        both.extend_from_slice(&b2);
        b1 = both.freeze();
        self.send_and_wait(&[c1, c2], &b1).await?;
        let a = r1.await.unwrap_or(Err(NvmeError::Closed))?;
        let b = r2.await.unwrap_or(Err(NvmeError::Closed))?;
        Ok((a, b))
    }

    pub async fn read(&self, nsid: u32, slba: u64, nlb: u32, bs: u32) -> Result<Bytes, NvmeError> {
        let sqe = rw_sqe(nvm::READ, 0, nsid, slba, nlb, false);
        Ok(self.submit(sqe, Bytes::new(), nlb * bs).await?.ok()?.data)
    }

    pub async fn write(
        &self,
        nsid: u32,
        slba: u64,
        data: Bytes,
        bs: u32,
        fua: bool,
    ) -> Result<(), NvmeError> {
        let nlb = (data.len() as u32) / bs;
        let sqe = rw_sqe(nvm::WRITE, 0, nsid, slba, nlb, fua);
        self.submit(sqe, data, 0).await?.ok()?;
        Ok(())
    }

    pub async fn flush(&self, nsid: u32) -> Result<(), NvmeError> {
        let mut sqe = Sqe::new(nvm::FLUSH, 0);
        sqe.set_nsid(nsid);
        self.submit(sqe, Bytes::new(), 0).await?.ok()?;
        Ok(())
    }

    /// Reservation Register: `action` 0 register, 1 unregister, 2 replace;
    /// `cptpl` 0 no change, 2 clear, 3 set persist through power loss.
    pub async fn resv_register(
        &self,
        nsid: u32,
        action: u8,
        iekey: bool,
        cptpl: u8,
        crkey: u64,
        nrkey: u64,
    ) -> Result<(), NvmeError> {
        let mut sqe = Sqe::new(nvm::RESV_REGISTER, 0);
        sqe.set_nsid(nsid);
        sqe.set_dw(
            10,
            (action as u32 & 7) | ((iekey as u32) << 3) | ((cptpl as u32 & 3) << 30),
        );
        let mut d = crkey.to_le_bytes().to_vec();
        d.extend_from_slice(&nrkey.to_le_bytes());
        self.submit(sqe, Bytes::from(d), 0).await?.ok()?;
        Ok(())
    }

    /// Reservation Acquire: `action` 0 acquire, 1 preempt, 2 preempt and
    /// abort; `rtype` 1-6.
    pub async fn resv_acquire(
        &self,
        nsid: u32,
        action: u8,
        rtype: u8,
        crkey: u64,
        prkey: u64,
    ) -> Result<(), NvmeError> {
        let mut sqe = Sqe::new(nvm::RESV_ACQUIRE, 0);
        sqe.set_nsid(nsid);
        sqe.set_dw(10, (action as u32 & 7) | ((rtype as u32) << 8));
        let mut d = crkey.to_le_bytes().to_vec();
        d.extend_from_slice(&prkey.to_le_bytes());
        self.submit(sqe, Bytes::from(d), 0).await?.ok()?;
        Ok(())
    }

    /// Reservation Release: `action` 0 release, 1 clear.
    pub async fn resv_release(
        &self,
        nsid: u32,
        action: u8,
        rtype: u8,
        crkey: u64,
    ) -> Result<(), NvmeError> {
        let mut sqe = Sqe::new(nvm::RESV_RELEASE, 0);
        sqe.set_nsid(nsid);
        sqe.set_dw(10, (action as u32 & 7) | ((rtype as u32) << 8));
        self.submit(sqe, Bytes::from(crkey.to_le_bytes().to_vec()), 0)
            .await?
            .ok()?;
        Ok(())
    }

    /// Reservation Report of up to `len` bytes (a multiple of 4);
    /// `extended` asks for the 128-bit host identifier structure.
    pub async fn resv_report(
        &self,
        nsid: u32,
        extended: bool,
        len: u32,
    ) -> Result<Bytes, NvmeError> {
        let mut sqe = Sqe::new(nvm::RESV_REPORT, 0);
        sqe.set_nsid(nsid);
        sqe.set_dw(10, (len / 4).saturating_sub(1));
        sqe.set_dw(11, extended as u32);
        Ok(self.submit(sqe, Bytes::new(), len).await?.ok()?.data)
    }

    /// Fabrics Connect on this queue; returns the completion.
    pub async fn connect(
        &self,
        host: &HostConfig,
        subnqn: &str,
        cntlid: u16,
        sqsize: u16,
        kato_ms: u32,
    ) -> Result<Done, NvmeError> {
        let cmd = ConnectCmd {
            recfmt: 0,
            qid: self.qid,
            sqsize: sqsize.saturating_sub(1),
            cattr: if host.disable_sqflow {
                CATTR_DISABLE_SQFLOW
            } else {
                0
            },
            kato_ms,
        };
        let data = ConnectData {
            hostid: host.hostid,
            cntlid,
            subnqn: subnqn.to_string(),
            hostnqn: host.hostnqn.clone(),
        };
        self.submit(cmd.to_sqe(0), Bytes::from(data.encode()), 0)
            .await
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let mut wr = self.inner.wr.lock().await;
        let _ = wr.shutdown().await;
        drop(wr);
        let h = self.reader.lock().take();
        if let Some(h) = h {
            h.abort();
        }
    }
}

async fn read_pdu(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    cfg: &FrameConfig,
) -> Result<Pdu, NvmeError> {
    loop {
        match tcp::decode(buf, cfg) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(FrameError::Fatal { fes, fei, .. }) => {
                return Err(NvmeError::Protocol(format!(
                    "bad PDU from target (FES {fes:#x}, FEI {fei})"
                )))
            }
            Err(FrameError::DataDigest { .. }) => {
                return Err(NvmeError::Protocol("data digest mismatch".into()))
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(NvmeError::Closed);
        }
    }
}

fn fail_all(inner: &Inner, why: impl Fn() -> NvmeError) {
    inner.closed.store(true, Ordering::Release);
    inner.slots.close();
    let all: Vec<Pending> = inner.pending.lock().drain().map(|(_, p)| p).collect();
    for p in all {
        let _ = p.tx.send(Err(why()));
    }
}

async fn reader(mut rd: OwnedReadHalf, mut buf: BytesMut, cfg: FrameConfig, inner: Arc<Inner>) {
    loop {
        let p = match read_pdu(&mut rd, &mut buf, &cfg).await {
            Ok(p) => p,
            Err(_) => break,
        };
        match p {
            Pdu::CapsuleResp(r) => {
                let cqe = Cqe::parse(&r.cqe);
                let pend = inner.pending.lock().remove(&cqe.cid);
                if let Some(p) = pend {
                    let _ = p.tx.send(Ok(Done {
                        cqe,
                        data: p.data.freeze(),
                    }));
                }
            }
            Pdu::C2HData(d) => {
                let mut done = None;
                let mut bad = false;
                {
                    let mut pend = inner.pending.lock();
                    match pend.get_mut(&d.cccid) {
                        Some(p)
                            if d.datao as usize == p.data.len()
                                && p.data.len() + d.data.len() <= p.read_len =>
                        {
                            p.data.extend_from_slice(&d.data);
                            if d.success {
                                done = pend.remove(&d.cccid);
                            }
                        }
                        _ => bad = true,
                    }
                }
                if bad {
                    break;
                }
                if let Some(p) = done {
                    let _ = p.tx.send(Ok(Done {
                        cqe: Cqe::new(d.cccid, Status::SUCCESS),
                        data: p.data.freeze(),
                    }));
                }
            }
            Pdu::R2T(r) => {
                let data = inner.pending.lock().get(&r.cccid).map(|p| p.write.clone());
                let Some(data) = data else { break };
                let (o, l) = (r.r2to as usize, r.r2tl as usize);
                if o.checked_add(l).is_none_or(|e| e > data.len()) || l == 0 {
                    break;
                }
                let inner2 = inner.clone();
                // Answer from a task: the reader keeps draining meanwhile.
                tokio::spawn(async move {
                    let mut out = BytesMut::new();
                    let chunk = inner2.maxh2cdata as usize;
                    let mut at = o;
                    while at < o + l {
                        let n = chunk.min(o + l - at);
                        let pdu = Pdu::H2CData(H2CData {
                            cccid: r.cccid,
                            ttag: r.ttag,
                            datao: at as u32,
                            last: at + n == o + l,
                            data: data.slice(at..at + n),
                        });
                        tcp::encode(&pdu, inner2.digests, &mut out);
                        at += n;
                    }
                    let mut wr = inner2.wr.lock().await;
                    let _ = wr.write_all(&out).await;
                });
            }
            Pdu::C2HTermReq(t) => {
                let (fes, fei) = (t.fes, t.fei);
                *inner.term.lock() = Some(t);
                fail_all(&inner, || NvmeError::Terminated { fes, fei });
                return;
            }
            _ => break,
        }
    }
    fail_all(&inner, || NvmeError::Closed);
}

/// A connected controller: its admin queue and identity.
pub struct Controller {
    pub addr: SocketAddr,
    pub host: HostConfig,
    pub subnqn: String,
    pub admin: Queue,
    pub cntlid: u16,
    pub cap: u64,
    pub identify: IdentifyController,
}

impl Controller {
    /// What Linux does: ICReq, admin Connect, CAP, CC.EN, wait for
    /// CSTS.RDY, Identify Controller.
    pub async fn connect(
        addr: SocketAddr,
        host: &HostConfig,
        subnqn: &str,
    ) -> Result<Controller, NvmeError> {
        let admin = Queue::open(addr, host.digests, 0, 32).await?;
        let c = admin
            .connect(host, subnqn, CNTLID_DYNAMIC, 32, host.kato_ms)
            .await?
            .ok()?;
        let cntlid = c.cqe.dw0() as u16;
        let mut ctrl = Controller {
            addr,
            host: host.clone(),
            subnqn: subnqn.to_string(),
            admin,
            cntlid,
            cap: 0,
            identify: IdentifyController::default(),
        };
        ctrl.cap = ctrl.property_get(prop::CAP, true).await?;
        ctrl.enable().await?;
        let id = ctrl.identify(cns::CONTROLLER, 0).await?;
        ctrl.identify = IdentifyController::parse(&id)
            .ok_or_else(|| NvmeError::Protocol("short Identify Controller".into()))?;
        ctrl.admin
            .set_in_capsule((ctrl.identify.ioccsz * 16).saturating_sub(64).max(1024));
        Ok(ctrl)
    }

    pub async fn property_get(&self, offset: u32, eight: bool) -> Result<u64, NvmeError> {
        let d = self
            .admin
            .submit(PropertyCmd::get_sqe(0, offset, eight), Bytes::new(), 0)
            .await?
            .ok()?;
        Ok(d.cqe.result)
    }

    pub async fn property_set(&self, offset: u32, value: u32) -> Result<(), NvmeError> {
        self.admin
            .submit(
                PropertyCmd::set_sqe(0, offset, value as u64, false),
                Bytes::new(),
                0,
            )
            .await?
            .ok()?;
        Ok(())
    }

    /// CC.EN = 1 with 64/16-byte entries, then polls CSTS.RDY within
    /// CAP.TO.
    pub async fn enable(&self) -> Result<(), NvmeError> {
        let v = cc::EN | (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT);
        self.property_set(prop::CC, v).await?;
        let to = ((self.cap >> 24) & 0xff).max(1) * 500;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(to);
        loop {
            let s = self.property_get(prop::CSTS, false).await? as u32;
            if s & csts::CFS != 0 {
                return Err(NvmeError::Protocol("controller fatal status".into()));
            }
            if s & csts::RDY != 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NvmeError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Normal shutdown (CC.SHN), waiting for CSTS.SHST complete.
    pub async fn shutdown(&self) -> Result<(), NvmeError> {
        let cur = self.property_get(prop::CC, false).await? as u32;
        self.property_set(prop::CC, cur | (1 << 14)).await?;
        for _ in 0..100 {
            let s = self.property_get(prop::CSTS, false).await? as u32;
            if s & csts::SHST_MASK == csts::SHST_COMPLETE {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(NvmeError::Timeout)
    }

    pub async fn identify(&self, c: u8, nsid: u32) -> Result<Bytes, NvmeError> {
        Ok(self
            .admin
            .submit(
                identify::identify_sqe(0, c, nsid),
                Bytes::new(),
                identify::IDENTIFY_LEN as u32,
            )
            .await?
            .ok()?
            .data)
    }

    pub async fn identify_ns(&self, nsid: u32) -> Result<IdentifyNamespace, NvmeError> {
        let d = self.identify(cns::NAMESPACE, nsid).await?;
        IdentifyNamespace::parse(&d).ok_or_else(|| NvmeError::Protocol("short Identify NS".into()))
    }

    pub async fn active_namespaces(&self) -> Result<Vec<u32>, NvmeError> {
        Ok(identify::parse_ns_list(
            &self.identify(cns::ACTIVE_NS_LIST, 0).await?,
        ))
    }

    pub async fn ns_descriptors(&self, nsid: u32) -> Result<Vec<NsDesc>, NvmeError> {
        Ok(identify::parse_ns_descs(
            &self.identify(cns::NS_DESC_LIST, nsid).await?,
        ))
    }

    pub async fn set_features(&self, fid: u8, cdw11: u32) -> Result<u32, NvmeError> {
        let mut s = Sqe::new(admin::SET_FEATURES, 0);
        s.set_dw(10, fid as u32);
        s.set_dw(11, cdw11);
        Ok(self.admin.submit(s, Bytes::new(), 0).await?.ok()?.cqe.dw0())
    }

    pub async fn get_features(&self, fid: u8) -> Result<u32, NvmeError> {
        let mut s = Sqe::new(admin::GET_FEATURES, 0);
        s.set_dw(10, fid as u32);
        Ok(self.admin.submit(s, Bytes::new(), 0).await?.ok()?.cqe.dw0())
    }

    /// Get Features of a namespace-scoped feature.
    pub async fn get_features_ns(&self, fid: u8, nsid: u32) -> Result<u32, NvmeError> {
        let mut s = Sqe::new(admin::GET_FEATURES, 0);
        s.set_nsid(nsid);
        s.set_dw(10, fid as u32);
        Ok(self.admin.submit(s, Bytes::new(), 0).await?.ok()?.cqe.dw0())
    }

    /// Set Features of a namespace-scoped feature.
    pub async fn set_features_ns(&self, fid: u8, nsid: u32, cdw11: u32) -> Result<u32, NvmeError> {
        let mut s = Sqe::new(admin::SET_FEATURES, 0);
        s.set_nsid(nsid);
        s.set_dw(10, fid as u32);
        s.set_dw(11, cdw11);
        Ok(self.admin.submit(s, Bytes::new(), 0).await?.ok()?.cqe.dw0())
    }

    /// Asks for `n` I/O queues; returns how many were granted.
    pub async fn set_num_queues(&self, n: u16) -> Result<u16, NvmeError> {
        let v = (n.max(1) - 1) as u32;
        let r = self.set_features(feat::NUM_QUEUES, v | (v << 16)).await?;
        Ok(((r & 0xffff) as u16).min((r >> 16) as u16) + 1)
    }

    pub async fn keep_alive(&self) -> Result<(), NvmeError> {
        self.admin
            .submit(Sqe::new(admin::KEEP_ALIVE, 0), Bytes::new(), 0)
            .await?
            .ok()?;
        Ok(())
    }

    /// Posts an Asynchronous Event Request; the handle finishes when the
    /// controller reports an event (DW0 of the completion).
    pub fn aer(&self) -> JoinHandle<Result<u32, NvmeError>> {
        let q = self.admin.clone();
        tokio::spawn(async move {
            Ok(q.submit(Sqe::new(admin::ASYNC_EVENT, 0), Bytes::new(), 0)
                .await?
                .ok()?
                .cqe
                .dw0())
        })
    }

    pub async fn get_log_page(
        &self,
        lid: u8,
        nsid: u32,
        len: u32,
        offset: u64,
        rae: bool,
    ) -> Result<Bytes, NvmeError> {
        let g = GetLogPage {
            lid,
            lsp: 0,
            rae,
            len: len as u64,
            offset,
        };
        Ok(self
            .admin
            .submit(g.to_sqe(0, nsid), Bytes::new(), len)
            .await?
            .ok()?
            .data)
    }

    /// Opens and connects I/O queue `qid` with `size` entries.
    pub async fn connect_io_queue(&self, qid: u16, size: u16) -> Result<Queue, NvmeError> {
        let q = Queue::open(self.addr, self.host.digests, qid, size.saturating_sub(1)).await?;
        q.connect(&self.host, &self.subnqn, self.cntlid, size, 0)
            .await?
            .ok()?;
        q.set_in_capsule((self.identify.ioccsz * 16).saturating_sub(64));
        Ok(q)
    }

    /// Sends Keep Alive every `every` until the handle is aborted.
    pub fn keep_alive_task(&self, every: Duration) -> JoinHandle<()> {
        let q = self.admin.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = q
                    .submit(Sqe::new(admin::KEEP_ALIVE, 0), Bytes::new(), 0)
                    .await;
                if r.is_err() {
                    break;
                }
            }
        })
    }

    pub async fn close(&self) {
        self.admin.close().await;
    }
}

/// Connects to the discovery subsystem and reads the whole discovery log.
pub async fn discover(
    addr: SocketAddr,
    host: &HostConfig,
) -> Result<Vec<DiscoveryEntry>, NvmeError> {
    let ctrl = Controller::connect(addr, host, DISCOVERY_NQN).await?;
    let hdr = ctrl
        .get_log_page(nlog::lid::DISCOVERY, 0, nlog::DISC_HDR_LEN as u32, 0, false)
        .await?;
    let (_, n) = nlog::parse_discovery_header(&hdr)
        .ok_or_else(|| NvmeError::Protocol("short discovery log".into()))?;
    // Bound what we ask for: 1000 records at most.
    let n = n.min(1000) as usize;
    let len = (nlog::DISC_HDR_LEN + n * nlog::DISC_ENTRY_LEN) as u32;
    let page = ctrl
        .get_log_page(nlog::lid::DISCOVERY, 0, len, 0, false)
        .await?;
    ctrl.close().await;
    nlog::parse_discovery(&page, n)
        .map(|(_, e)| e)
        .ok_or_else(|| NvmeError::Protocol("short discovery log".into()))
}
