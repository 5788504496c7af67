//! The initiator's session: login, then tagged commands over one connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use vtgt_protocol::iscsi::login::{
    InitiatorChap, InitiatorConfig, InitiatorLogin, LoginProgress, LoginResponseInfo,
    SessionParams, Stage,
};
use vtgt_protocol::iscsi::pdu::{
    self, sn_le, tmf, Bhs, Digests, FrameConfig, Opcode, Pdu, RESERVED_TAG,
};
use vtgt_protocol::iscsi::text::TextPairs;

pub use vtgt_protocol::iscsi::login::ChapCredentials;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("login failed: status class {class:#x} detail {detail:#x}")]
    Login { class: u8, detail: u8 },
    #[error("login protocol error: {0}")]
    LoginProtocol(String),
    #[error("connection closed")]
    Closed,
    #[error("target rejected the PDU (reason {0:#x})")]
    Rejected(u8),
    #[error("bad PDU from target: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
}

/// What the initiator asks for at login.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    pub initiator_name: String,
    /// None for a discovery session.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// One-way CHAP: the name and secret we present.
    pub chap: Option<(String, Vec<u8>)>,
    /// Mutual CHAP: the name and secret the target must present.
    pub mutual_chap: Option<(String, Vec<u8>)>,
    /// Operational keys we propose, e.g. ("HeaderDigest", "CRC32C").
    pub keys: Vec<(String, String)>,
    /// Override the AuthMethod list (forces a security stage).
    pub auth_methods: Option<String>,
}

impl LoginConfig {
    pub fn new(initiator: &str, target: Option<&str>) -> Self {
        let r: u32 = rand::random();
        let b = r.to_be_bytes();
        Self {
            initiator_name: initiator.to_string(),
            target_name: target.map(str::to_string),
            isid: [0x80, 0x00, b[0], b[1], b[2], b[3]],
            chap: None,
            mutual_chap: None,
            keys: Vec::new(),
            auth_methods: None,
        }
    }

    pub fn key(mut self, k: &str, v: &str) -> Self {
        self.keys.retain(|(x, _)| x != k);
        self.keys.push((k.to_string(), v.to_string()));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    None,
    Read,
    Write,
}

/// Outcome of one SCSI command.
#[derive(Debug, Clone, Default)]
pub struct CommandResult {
    pub response: u8,
    pub status: u8,
    pub sense: Bytes,
    pub data: Bytes,
    pub overflow: bool,
    pub underflow: bool,
    pub residual: u32,
}

impl CommandResult {
    /// (sense key, ASC, ASCQ) from fixed or descriptor sense.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first()? & 0x7f {
            0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
            0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
            _ => None,
        }
    }
}

enum Waiter {
    Scsi {
        tx: oneshot::Sender<Result<CommandResult, SessionError>>,
        data: BytesMut,
        data_out: Bytes,
        lun: u64,
    },
    Pdu(oneshot::Sender<Result<Pdu, SessionError>>),
}

struct Inner {
    next_cmdsn: AtomicU32,
    max_cmdsn: AtomicU32,
    exp_statsn: AtomicU32,
    window: Notify,
    next_itt: AtomicU32,
    pending: Mutex<HashMap<u32, Waiter>>,
    params: SessionParams,
    closed: AtomicBool,
    rejects: Mutex<Vec<(u8, Bhs)>>,
    /// Everything sent goes through one writer task, in order; PDUs queued
    /// together leave in one write.
    out: tokio::sync::mpsc::UnboundedSender<Vec<Pdu>>,
}

pub struct Session {
    inner: Arc<Inner>,
    reader: JoinHandle<()>,
    pub tsih: u16,
    pub isid: [u8; 6],
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_pdu(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    cfg: &FrameConfig,
) -> Result<Pdu, SessionError> {
    loop {
        match pdu::decode(buf, cfg) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(SessionError::Protocol(e.to_string())),
        }
        buf.reserve(64 * 1024);
        if rd.read_buf(buf).await? == 0 {
            return Err(SessionError::Closed);
        }
    }
}

impl Session {
    /// Connects and logs in.
    pub async fn login(addr: SocketAddr, cfg: LoginConfig) -> Result<Session, SessionError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut icfg = match &cfg.target_name {
            Some(t) => InitiatorConfig::normal(&cfg.initiator_name, t),
            None => InitiatorConfig::discovery(&cfg.initiator_name),
        };
        icfg.isid = cfg.isid;
        icfg.itt = 1;
        icfg.cmdsn = 1;
        icfg.chap = cfg.chap.clone().map(|(user, secret)| InitiatorChap {
            user,
            secret,
            mutual: cfg.mutual_chap.clone(),
        });
        for (k, v) in &cfg.keys {
            icfg.set_key(k, v);
        }
        if let Some(m) = &cfg.auth_methods {
            icfg.auth_methods = Some(m.clone());
            icfg.force_security_stage = true;
        }
        let mut login = InitiatorLogin::new(icfg);
        let fcfg = FrameConfig {
            digests: Digests::default(),
            max_data_segment: 1 << 20,
        };
        let mut exp_statsn = 0u32;
        let mut first = true;
        let mut tsih: u16;
        let mut window: (u32, u32);
        let params = loop {
            let Some(req) = login.next_request() else {
                return Err(SessionError::LoginProtocol("no request to send".into()));
            };
            let hdr = req.header(exp_statsn);
            let mut out = BytesMut::new();
            Pdu::new(hdr.to_bhs(), Bytes::from(req.data)).encode(&mut out, Digests::default());
            wr.write_all(&out).await?;
            let p = read_pdu(&mut rd, &mut buf, &fcfg).await?;
            if p.bhs.opcode() != Some(Opcode::LoginResponse) {
                return Err(SessionError::LoginProtocol(format!(
                    "unexpected opcode {:#x}",
                    p.bhs.opcode_raw()
                )));
            }
            let r = pdu::LoginResponseHdr::parse(&p.bhs);
            if first || r.status_class == 0 {
                exp_statsn = r.statsn.wrapping_add(1);
            }
            window = (r.exp_cmdsn, r.max_cmdsn);
            first = false;
            if r.status_class != 0 {
                return Err(SessionError::Login {
                    class: r.status_class,
                    detail: r.status_detail,
                });
            }
            tsih = r.tsih;
            let (Some(csg), Some(nsg)) = (Stage::from_bits(r.csg), Stage::from_bits(r.nsg)) else {
                return Err(SessionError::LoginProtocol("reserved stage".into()));
            };
            let info = LoginResponseInfo {
                transit: r.transit,
                cont: r.cont,
                csg,
                nsg,
                status_class: r.status_class,
                status_detail: r.status_detail,
                tsih: r.tsih,
                stat_sn: r.statsn,
                data: &p.data,
            };
            match login.handle_response(&info) {
                Ok(LoginProgress::Continue) => {}
                Ok(LoginProgress::Complete(params)) => break params,
                Err(e) => return Err(SessionError::LoginProtocol(e.to_string())),
            }
        };
        let digests = Digests {
            header: params.header_digest,
            data: params.data_digest,
        };
        let (out, out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Pdu>>();
        let inner = Arc::new(Inner {
            next_cmdsn: AtomicU32::new(window.0),
            max_cmdsn: AtomicU32::new(window.1),
            exp_statsn: AtomicU32::new(exp_statsn),
            window: Notify::new(),
            next_itt: AtomicU32::new(0x100),
            pending: Mutex::new(HashMap::new()),
            params: params.clone(),
            closed: AtomicBool::new(false),
            rejects: Mutex::new(Vec::new()),
            out,
        });
        tokio::spawn(writer_loop(Arc::downgrade(&inner), wr, out_rx, digests));
        let rcfg = FrameConfig {
            digests,
            max_data_segment: params.initiator_max_recv_data_segment_length.max(8192),
        };
        let reader = tokio::spawn(reader_loop(inner.clone(), rd, buf, rcfg));
        Ok(Session {
            inner,
            reader,
            tsih,
            isid: cfg.isid,
        })
    }

    pub fn params(&self) -> &SessionParams {
        &self.inner.params
    }

    /// Rejects received so far (reason, rejected header).
    pub fn rejects(&self) -> Vec<(u8, Bhs)> {
        self.inner.rejects.lock().clone()
    }

    fn itt(&self) -> u32 {
        loop {
            let i = self.inner.next_itt.fetch_add(1, Ordering::Relaxed);
            if i != RESERVED_TAG {
                return i;
            }
        }
    }

    /// Takes the next CmdSN once the target's window admits it.
    async fn cmdsn(&self) -> Result<u32, SessionError> {
        let sn = self.inner.next_cmdsn.fetch_add(1, Ordering::AcqRel);
        loop {
            let notified = self.inner.window.notified();
            if sn_le(sn, self.inner.max_cmdsn.load(Ordering::Acquire)) {
                return Ok(sn);
            }
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(SessionError::Closed);
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    /// Sends PDUs back to back under the writer lock.
    pub async fn send_raw(&self, pdus: &[Pdu]) -> Result<(), SessionError> {
        send(&self.inner, pdus).await
    }

    /// The CmdSN the next command would take, without taking it.
    pub fn peek_cmdsn(&self) -> u32 {
        self.inner.next_cmdsn.load(Ordering::Acquire)
    }

    /// Sets the next CmdSN (tests that skip or replay sequence numbers).
    pub fn set_cmdsn(&self, sn: u32) {
        self.inner.next_cmdsn.store(sn, Ordering::Release);
    }

    pub fn exp_statsn(&self) -> u32 {
        self.inner.exp_statsn.load(Ordering::Acquire)
    }

    /// Runs one SCSI command. `data_out` is sent as immediate, unsolicited
    /// and solicited data as negotiated.
    pub async fn command(
        &self,
        lun: u64,
        cdb: &[u8],
        dir: DataDir,
        edtl: u32,
        data_out: Bytes,
    ) -> Result<CommandResult, SessionError> {
        let itt = self.itt();
        let (hdr, pdus) = self
            .build_command(lun, cdb, dir, edtl, data_out.clone(), itt)
            .await?;
        let _ = hdr;
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(
            itt,
            Waiter::Scsi {
                tx,
                data: BytesMut::new(),
                data_out,
                lun,
            },
        );
        if let Err(e) = send(&self.inner, &pdus).await {
            self.inner.pending.lock().remove(&itt);
            return Err(e);
        }
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Builds a command's PDUs (command plus unsolicited data) without
    /// sending them; for tests that alter fields.
    pub async fn build_command(
        &self,
        lun: u64,
        cdb: &[u8],
        dir: DataDir,
        edtl: u32,
        data_out: Bytes,
        itt: u32,
    ) -> Result<(pdu::ScsiCommand, Vec<Pdu>), SessionError> {
        let p = &self.inner.params;
        let mut c = [0u8; 16];
        let n = cdb.len().min(16);
        c[..n].copy_from_slice(&cdb[..n]);
        let cmdsn = self.cmdsn().await?;
        let write = dir == DataDir::Write;
        let first_burst = p.first_burst_length;
        let max_xmit = p.target_max_recv_data_segment_length.max(512);
        let total = (edtl as usize).min(data_out.len());
        let imm = if write && p.immediate_data {
            total.min(first_burst as usize).min(max_xmit as usize)
        } else {
            0
        };
        let unsol_end = if write && !p.initial_r2t {
            total.min(first_burst as usize)
        } else {
            imm
        };
        let mut h = pdu::ScsiCommand {
            immediate: false,
            final_bit: unsol_end <= imm,
            read: dir == DataDir::Read,
            write,
            attr: 1,
            lun,
            itt,
            edtl,
            cmdsn,
            exp_statsn: self.exp_statsn(),
            cdb: c,
        };
        if !write {
            h.final_bit = true;
        }
        let mut pdus = vec![Pdu::new(h.to_bhs(), data_out.slice(..imm))];
        let mut off = imm;
        let mut datasn = 0;
        while off < unsol_end {
            let len = (unsol_end - off).min(max_xmit as usize);
            let d = pdu::DataOut {
                final_bit: off + len == unsol_end,
                lun,
                itt,
                ttt: RESERVED_TAG,
                exp_statsn: self.exp_statsn(),
                datasn,
                offset: off as u32,
            };
            pdus.push(Pdu::new(d.to_bhs(), data_out.slice(off..off + len)));
            datasn += 1;
            off += len;
        }
        Ok((h, pdus))
    }

    /// Registers interest in the answer to `itt` and sends `pdus`; returns
    /// the first PDU answering it (tests of raw sequences).
    pub async fn exchange(&self, itt: u32, pdus: &[Pdu]) -> Result<Pdu, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(itt, Waiter::Pdu(tx));
        send(&self.inner, pdus).await?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Sends `pdus` for a SCSI command built by hand and waits for its
    /// result, answering R2Ts from `data_out`.
    pub async fn exchange_scsi(
        &self,
        itt: u32,
        lun: u64,
        data_out: Bytes,
        pdus: &[Pdu],
    ) -> Result<CommandResult, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(
            itt,
            Waiter::Scsi {
                tx,
                data: BytesMut::new(),
                data_out,
                lun,
            },
        );
        send(&self.inner, pdus).await?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    pub fn alloc_itt(&self) -> u32 {
        self.itt()
    }

    /// A task management function; returns the TMF response code.
    pub async fn task_mgmt(
        &self,
        function: u8,
        lun: u64,
        rtt: u32,
        ref_cmdsn: u32,
    ) -> Result<u8, SessionError> {
        let itt = self.itt();
        let req = pdu::TaskMgmtRequest {
            immediate: true,
            function,
            lun,
            itt,
            rtt: if function == tmf::ABORT_TASK {
                rtt
            } else {
                RESERVED_TAG
            },
            cmdsn: self.peek_cmdsn(),
            exp_statsn: self.exp_statsn(),
            ref_cmdsn,
            exp_datasn: 0,
        };
        let p = self
            .exchange(itt, &[Pdu::new(req.to_bhs(), Bytes::new())])
            .await?;
        Ok(pdu::TaskMgmtResponse::parse(&p.bhs).response)
    }

    /// NOP-Out ping; returns the echoed data.
    pub async fn nop(&self, data: Bytes) -> Result<Bytes, SessionError> {
        let itt = self.itt();
        let n = pdu::Nop {
            immediate: true,
            itt,
            ttt: RESERVED_TAG,
            sn: self.peek_cmdsn(),
            exp_sn: self.exp_statsn(),
            ..Default::default()
        };
        let p = self
            .exchange(itt, &[Pdu::new(n.to_bhs(Opcode::NopOut), data)])
            .await?;
        Ok(p.data)
    }

    /// A text request (e.g. SendTargets=All); returns the response pairs as
    /// raw key=value strings, following continuations.
    pub async fn text(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, SessionError> {
        let mut data = Vec::new();
        for (k, v) in pairs {
            data.extend_from_slice(format!("{k}={v}\0").as_bytes());
        }
        let itt = self.itt();
        let mut ttt = RESERVED_TAG;
        let mut all = Vec::new();
        let mut payload = Bytes::from(data);
        loop {
            let cmdsn = self.cmdsn().await?;
            let t = pdu::Text {
                immediate: false,
                final_bit: true,
                itt,
                ttt,
                sn: cmdsn,
                exp_sn: self.exp_statsn(),
                ..Default::default()
            };
            let p = self
                .exchange(itt, &[Pdu::new(t.to_bhs(Opcode::TextRequest), payload)])
                .await?;
            all.extend_from_slice(&p.data);
            let r = pdu::Text::parse(&p.bhs);
            if r.final_bit || r.ttt == RESERVED_TAG {
                break;
            }
            ttt = r.ttt;
            payload = Bytes::new();
        }
        Ok(all
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                let s = String::from_utf8_lossy(s);
                s.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect())
    }

    /// SendTargets=All on a discovery session: (target, addresses).
    pub async fn send_targets(&self) -> Result<Vec<(String, Vec<String>)>, SessionError> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in self.text(&[("SendTargets", "All")]).await? {
            match k.as_str() {
                "TargetName" => out.push((v, Vec::new())),
                "TargetAddress" => {
                    if let Some(last) = out.last_mut() {
                        last.1.push(v);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Logs out (closing the session) and waits for the response.
    pub async fn logout(self) -> Result<(), SessionError> {
        let itt = self.itt();
        let req = pdu::LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmdsn: self.peek_cmdsn(),
            exp_statsn: self.exp_statsn(),
        };
        let p = self
            .exchange(itt, &[Pdu::new(req.to_bhs(), Bytes::new())])
            .await?;
        let r = pdu::LogoutResponse::parse(&p.bhs);
        if r.response != 0 {
            return Err(SessionError::Protocol(format!(
                "logout response {}",
                r.response
            )));
        }
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}

async fn send(inner: &Inner, pdus: &[Pdu]) -> Result<(), SessionError> {
    if inner.closed.load(Ordering::Acquire) {
        return Err(SessionError::Closed);
    }
    inner
        .out
        .send(pdus.to_vec())
        .map_err(|_| SessionError::Closed)
}

/// Writes what is queued, batching PDUs that are ready together, and
/// stamps ExpStatSN as current at the moment of sending.
async fn writer_loop(
    inner: std::sync::Weak<Inner>,
    mut wr: OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Pdu>>,
    digests: Digests,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let Some(strong) = inner.upgrade() else { break };
        let exp = strong.exp_statsn.load(Ordering::Acquire);
        let mut next = Some(first);
        while let Some(pdus) = next.take() {
            for mut p in pdus {
                if matches!(
                    p.bhs.opcode(),
                    Some(
                        Opcode::ScsiCommand
                            | Opcode::NopOut
                            | Opcode::TaskMgmtRequest
                            | Opcode::TextRequest
                            | Opcode::LogoutRequest
                            | Opcode::DataOut
                    )
                ) {
                    p.bhs.set_u32(28, exp);
                }
                p.encode(&mut buf, digests);
            }
            if buf.len() >= 512 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if wr.write_all(&buf).await.is_err() {
            strong.closed.store(true, Ordering::Release);
            break;
        }
        buf.clear();
    }
}

async fn reader_loop(
    inner: Arc<Inner>,
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    cfg: FrameConfig,
) {
    loop {
        let p = match read_pdu(&mut rd, &mut buf, &cfg).await {
            Ok(p) => p,
            Err(_) => break,
        };
        handle_pdu(&inner, p).await;
    }
    inner.closed.store(true, Ordering::Release);
    inner.window.notify_waiters();
    let pending: Vec<Waiter> = inner.pending.lock().drain().map(|(_, w)| w).collect();
    for w in pending {
        match w {
            Waiter::Scsi { tx, .. } => {
                let _ = tx.send(Err(SessionError::Closed));
            }
            Waiter::Pdu(tx) => {
                let _ = tx.send(Err(SessionError::Closed));
            }
        }
    }
}

fn note_sn(inner: &Inner, b: &Bhs, status: bool) {
    let max = b.u32_at(32);
    let exp = b.u32_at(28);
    // RFC 7143 §4.2.2.1: ignore a MaxCmdSN below ExpCmdSN - 1.
    if sn_le(exp.wrapping_sub(1), max) {
        let cur = inner.max_cmdsn.load(Ordering::Acquire);
        if sn_le(cur, max) {
            inner.max_cmdsn.store(max, Ordering::Release);
            inner.window.notify_waiters();
        }
    }
    if status {
        let statsn = b.u32_at(24);
        inner
            .exp_statsn
            .store(statsn.wrapping_add(1), Ordering::Release);
    }
}

async fn handle_pdu(inner: &Arc<Inner>, p: Pdu) {
    let itt = p.bhs.itt();
    match p.bhs.opcode() {
        Some(Opcode::DataIn) => {
            let d = pdu::DataIn::parse(&p.bhs);
            note_sn(inner, &p.bhs, d.has_status);
            let mut pending = inner.pending.lock();
            if let Some(Waiter::Scsi { data, .. }) = pending.get_mut(&itt) {
                let end = d.offset as usize + p.data.len();
                if end <= 64 << 20 {
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[d.offset as usize..end].copy_from_slice(&p.data);
                }
            }
            if d.has_status {
                if let Some(Waiter::Scsi { tx, data, .. }) = pending.remove(&itt) {
                    let _ = tx.send(Ok(CommandResult {
                        response: 0,
                        status: d.status,
                        sense: Bytes::new(),
                        data: data.freeze(),
                        overflow: d.overflow,
                        underflow: d.underflow,
                        residual: d.residual,
                    }));
                }
            }
        }
        Some(Opcode::ScsiResponse) => {
            let r = pdu::ScsiResponse::parse(&p.bhs);
            note_sn(inner, &p.bhs, true);
            let w = inner.pending.lock().remove(&itt);
            match w {
                Some(Waiter::Scsi { tx, data, .. }) => {
                    let sense = if p.data.len() >= 2 {
                        let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                        p.data.slice(2..(2 + n).min(p.data.len()))
                    } else {
                        Bytes::new()
                    };
                    let _ = tx.send(Ok(CommandResult {
                        response: r.response,
                        status: r.status,
                        sense,
                        data: data.freeze(),
                        overflow: r.overflow,
                        underflow: r.underflow,
                        residual: r.residual,
                    }));
                }
                Some(Waiter::Pdu(tx)) => {
                    let _ = tx.send(Ok(p));
                }
                None => {}
            }
        }
        Some(Opcode::R2t) => {
            let r = pdu::R2t::parse(&p.bhs);
            note_sn(inner, &p.bhs, false);
            let src = match inner.pending.lock().get(&itt) {
                Some(Waiter::Scsi { data_out, lun, .. }) => Some((data_out.clone(), *lun)),
                _ => None,
            };
            if let Some((src, lun)) = src {
                let max = inner.params.target_max_recv_data_segment_length.max(512) as usize;
                let mut pdus = Vec::new();
                let start = r.offset as usize;
                let end = (start + r.length as usize).min(src.len());
                let mut off = start;
                let mut datasn = 0;
                while off < end {
                    let len = (end - off).min(max);
                    let d = pdu::DataOut {
                        final_bit: off + len == end,
                        lun,
                        itt: r.itt,
                        ttt: r.ttt,
                        exp_statsn: 0,
                        datasn,
                        offset: off as u32,
                    };
                    pdus.push(Pdu::new(d.to_bhs(), src.slice(off..off + len)));
                    datasn += 1;
                    off += len;
                }
                // One sender answers R2Ts in the order they came, so data
                // stays in offset order; the reader never waits on the socket.
                let _ = inner.out.send(pdus);
            }
        }
        Some(Opcode::NopIn) => {
            note_sn(inner, &p.bhs, itt != RESERVED_TAG);
            let n = pdu::Nop::parse(&p.bhs);
            if itt == RESERVED_TAG {
                if n.ttt != RESERVED_TAG {
                    // The target's ping: answer with its TTT.
                    let rsp = pdu::Nop {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        sn: inner.next_cmdsn.load(Ordering::Acquire),
                        ..Default::default()
                    };
                    let _ =
                        send(inner, &[Pdu::new(rsp.to_bhs(Opcode::NopOut), Bytes::new())]).await;
                }
            } else if let Some(Waiter::Pdu(tx)) = inner.pending.lock().remove(&itt) {
                let _ = tx.send(Ok(p));
            }
        }
        Some(Opcode::Reject) => {
            note_sn(inner, &p.bhs, true);
            let reason = pdu::Reject::parse(&p.bhs).reason;
            let mut rejected = Bhs::default();
            if p.data.len() >= 48 {
                rejected.0.copy_from_slice(&p.data[..48]);
            }
            inner.rejects.lock().push((reason, rejected));
            let w = inner.pending.lock().remove(&rejected.itt());
            match w {
                Some(Waiter::Scsi { tx, .. }) => {
                    let _ = tx.send(Err(SessionError::Rejected(reason)));
                }
                Some(Waiter::Pdu(tx)) => {
                    let _ = tx.send(Err(SessionError::Rejected(reason)));
                }
                None => {}
            }
        }
        Some(Opcode::AsyncMessage) => {
            note_sn(inner, &p.bhs, true);
        }
        Some(_) => {
            note_sn(inner, &p.bhs, true);
            if let Some(Waiter::Pdu(tx)) = inner.pending.lock().remove(&itt) {
                let _ = tx.send(Ok(p));
            }
        }
        None => {}
    }
}

/// Parses text data into pairs (for tests of login/text responses).
pub fn parse_text(data: &[u8]) -> Option<Vec<(String, String)>> {
    TextPairs::parse(data).ok().map(|p| {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}
