//! One iSCSI connection in the full-feature phase: PDU dispatch, the CmdSN
//! window with in-order delivery, command execution, NOP keep-alive, text,
//! logout and reject (RFC 7143 §3.2, §4.2, §11).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use vtgt_protocol::iscsi::pdu::{
    self, reject, sn_le, sn_lt, Bhs, FrameConfig, FrameError, Opcode, Pdu, RESERVED_TAG,
};

use super::dataout::{WriteXfer, XferError, XferLimits};
use super::portal::{IscsiShared, PortalInfo};
use super::session::{Session, TaskEntry};
use super::writer::{Out, Stamp, Window};
use super::{decode_lun, discovery, response, tmr};
use crate::scsi::{self, ScsiCommand};
use crate::target::Target;

/// Largest transfer a command may move; more EDTL is drained and dropped.
pub const MAX_IO_BYTES: u32 = scsi::MAX_TRANSFER_BYTES;
/// Solicited-but-unconsumed write data per connection (256 MiB). Data
/// beyond it waits for R2Ts until earlier writes finish.
pub const R2T_BUDGET: u64 = 256 << 20;
/// CmdSN window per session.
pub const QUEUE_DEPTH: u32 = 128;

/// Negotiated values the full-feature phase needs.
#[derive(Debug, Clone)]
pub struct ConnParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What we may receive per PDU (our MaxRecvDataSegmentLength).
    pub max_recv: u32,
    /// What we may send per PDU (the initiator's MaxRecvDataSegmentLength).
    pub max_xmit: u32,
    pub xfer: XferLimits,
}

/// Reads iSCSI PDUs, bounded by the frame config.
pub type PduReader = crate::framing::PduReader<FrameConfig>;
pub type ReadError = crate::framing::ReadError<FrameError>;

/// A non-immediate command waiting for its CmdSN turn.
enum Deferred {
    Scsi(pdu::ScsiCommand, Bytes),
    Other(Pdu),
    /// A CmdSN consumed without a command (RFC 7143 §11.5.1 b).
    Hole,
}

pub struct Conn {
    pub shared: Arc<IscsiShared>,
    pub portal: PortalInfo,
    /// Our address on this connection.
    pub local: std::net::SocketAddr,
    pub session: Arc<Session>,
    pub target: Option<Arc<Target>>,
    pub params: ConnParams,
    pub out: mpsc::Sender<Out>,
    pub window: Arc<Window>,
    deferred: BTreeMap<u32, Deferred>,
    writes: HashMap<u32, WriteXfer>,
    /// Writes delivered in order and waiting for data.
    delivered_writes: HashMap<u32, pdu::ScsiCommand>,
    next_ttt: u32,
    /// Bytes the connection may still ask for by R2T: bounds what all its
    /// writes together can have buffered.
    r2t_budget: u64,
    text_pending: HashMap<u32, Bytes>,
    closing: bool,
    /// The initiator port name ("iqn...,i,0x<isid>") SCSI commands carry.
    initiator_port: Arc<str>,
}

enum Flow {
    Continue,
    Close,
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<IscsiShared>,
        portal: PortalInfo,
        local: std::net::SocketAddr,
        session: Arc<Session>,
        target: Option<Arc<Target>>,
        params: ConnParams,
        out: mpsc::Sender<Out>,
        window: Arc<Window>,
    ) -> Self {
        Self {
            shared,
            portal,
            local,
            target,
            params,
            out,
            window,
            deferred: BTreeMap::new(),
            writes: HashMap::new(),
            delivered_writes: HashMap::new(),
            next_ttt: 1,
            r2t_budget: R2T_BUDGET,
            text_pending: HashMap::new(),
            closing: false,
            initiator_port: initiator_port(&session.initiator, session.isid).into(),
            session,
        }
    }

    pub async fn send(&self, pdu: Pdu, stamp: Stamp) {
        let _ = self.out.send(Out::Pdu(pdu, stamp)).await;
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG || self.next_ttt == 0 {
            self.next_ttt = 1;
        }
        t
    }

    /// The full-feature phase until logout, a fatal error, or the session is
    /// killed.
    pub async fn run(&mut self, reader: &mut PduReader) {
        let nop = self.shared.nop_interval;
        let mut tick = tokio::time::interval(if nop.is_zero() {
            Duration::from_secs(3600)
        } else {
            nop
        });
        tick.tick().await;
        let mut last_rx = Instant::now();
        let mut ping_outstanding = 0u32;
        let kill = self.session.kill.clone();
        loop {
            tokio::select! {
                r = reader.next() => {
                    let p = match r {
                        Ok(p) => p,
                        Err(ReadError::Closed) => break,
                        Err(ReadError::Frame(e)) => {
                            self.frame_error(e).await;
                            break;
                        }
                    };
                    last_rx = Instant::now();
                    ping_outstanding = 0;
                    if let Flow::Close = self.dispatch(p).await {
                        break;
                    }
                }
                _ = tick.tick(), if !nop.is_zero() => {
                    if last_rx.elapsed() >= nop {
                        if ping_outstanding >= 2 {
                            warn!(initiator = %self.session.initiator, "no answer to NOP-In pings; dropping connection");
                            break;
                        }
                        ping_outstanding += 1;
                        let ttt = self.alloc_ttt();
                        let ping = pdu::Nop { itt: RESERVED_TAG, ttt, ..Default::default() };
                        self.send(Pdu::new(ping.to_bhs(Opcode::NopIn), Bytes::new()), Stamp::Peek).await;
                    }
                }
                _ = kill.cancelled() => break,
            }
            if self.closing {
                break;
            }
        }
        let _ = self.out.send(Out::Close).await;
    }

    async fn frame_error(&mut self, e: FrameError) {
        match e {
            FrameError::HeaderDigest => {
                crate::metrics::digest_error("iscsi", "header");
                debug!("header digest error; dropping connection");
            }
            FrameError::DataDigest(bhs) => {
                crate::metrics::digest_error("iscsi", "data");
                // At ERL 0 we cannot ask for the data again: reject and drop.
                self.reject(&bhs, reject::DATA_DIGEST_ERROR).await;
            }
            FrameError::DataTooLong { bhs, .. } => {
                self.reject(&bhs, reject::PROTOCOL_ERROR).await;
            }
        }
    }

    pub async fn reject(&self, bhs: &Bhs, reason: u8) {
        let r = pdu::Reject {
            reason,
            ..Default::default()
        };
        self.send(
            Pdu::new(r.to_bhs(), Bytes::copy_from_slice(&bhs.0)),
            Stamp::Status,
        )
        .await;
    }

    /// Checks a non-immediate command's CmdSN. Returns true if it may be
    /// processed now; false if it was deferred or dropped.
    fn admit_cmdsn(&mut self, cmdsn: u32, immediate: bool) -> Admit {
        if immediate {
            return Admit::Now;
        }
        let exp = self.window.exp();
        let max = self.window.announced();
        if !sn_le(exp, cmdsn) || !sn_le(cmdsn, max) {
            // RFC 7143 §3.2.2.1: silently ignore commands outside the window.
            return Admit::Drop;
        }
        if cmdsn == exp {
            Admit::Now
        } else if self.deferred.contains_key(&cmdsn) {
            Admit::Drop
        } else {
            Admit::Defer
        }
    }

    /// Moves ExpCmdSN on and runs any deferred commands now due.
    async fn advance(&mut self) {
        loop {
            let exp = self.window.exp().wrapping_add(1);
            self.window.exp_cmdsn.store(exp, Ordering::Release);
            match self.deferred.remove(&exp) {
                None => break,
                Some(Deferred::Hole) => {}
                Some(Deferred::Scsi(h, d)) => self.deliver_scsi(h, d),
                Some(Deferred::Other(p)) => {
                    if let Flow::Close = self.run_other(p).await {
                        self.closing = true;
                    }
                }
            }
        }
    }

    /// Treats `cmdsn` as received (TMF RefCmdSN handling).
    pub fn plug_hole(&mut self, cmdsn: u32) {
        let exp = self.window.exp();
        if sn_lt(exp, cmdsn) && sn_le(cmdsn, self.window.announced()) {
            self.deferred.entry(cmdsn).or_insert(Deferred::Hole);
        }
    }

    async fn dispatch(&mut self, p: Pdu) -> Flow {
        let Some(op) = p.bhs.opcode() else {
            self.reject(&p.bhs, reject::COMMAND_NOT_SUPPORTED).await;
            return Flow::Continue;
        };
        let discovery = self.session.discovery;
        match op {
            Opcode::DataOut => return self.data_out(p).await,
            Opcode::ScsiCommand if discovery => {
                self.reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Flow::Continue;
            }
            Opcode::TaskMgmtRequest if discovery => {
                self.reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Flow::Continue;
            }
            Opcode::ScsiCommand => return self.scsi_command(p).await,
            Opcode::NopOut
            | Opcode::TaskMgmtRequest
            | Opcode::TextRequest
            | Opcode::LogoutRequest => {}
            Opcode::SnackRequest => {
                // SNACK needs ErrorRecoveryLevel > 0.
                self.reject(&p.bhs, reject::COMMAND_NOT_SUPPORTED).await;
                return Flow::Continue;
            }
            Opcode::LoginRequest => {
                // A login in the full-feature phase is a protocol error.
                self.reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Flow::Close;
            }
            _ => {
                // Target-to-initiator opcodes from an initiator.
                self.reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Flow::Continue;
            }
        }
        // NOP-Out answering our ping consumes no CmdSN and needs no answer.
        if op == Opcode::NopOut && p.bhs.itt() == RESERVED_TAG {
            return Flow::Continue;
        }
        let cmdsn = p.bhs.u32_at(24);
        match self.admit_cmdsn(cmdsn, p.bhs.immediate()) {
            Admit::Drop => Flow::Continue,
            Admit::Defer => {
                self.deferred.insert(cmdsn, Deferred::Other(p));
                Flow::Continue
            }
            Admit::Now => {
                let immediate = p.bhs.immediate();
                let flow = self.run_other(p).await;
                if !immediate {
                    self.advance().await;
                }
                flow
            }
        }
    }

    async fn run_other(&mut self, p: Pdu) -> Flow {
        match p.bhs.opcode() {
            Some(Opcode::NopOut) => {
                let n = pdu::Nop::parse(&p.bhs);
                let rsp = pdu::Nop {
                    lun: n.lun,
                    itt: n.itt,
                    ttt: RESERVED_TAG,
                    ..Default::default()
                };
                self.send(Pdu::new(rsp.to_bhs(Opcode::NopIn), p.data), Stamp::Status)
                    .await;
                Flow::Continue
            }
            Some(Opcode::TaskMgmtRequest) => {
                tmr::handle(self, &p).await;
                Flow::Continue
            }
            Some(Opcode::TextRequest) => {
                self.text(&p).await;
                Flow::Continue
            }
            Some(Opcode::LogoutRequest) => self.logout(&p).await,
            _ => Flow::Continue,
        }
    }

    async fn logout(&mut self, p: &Pdu) -> Flow {
        let req = pdu::LogoutRequest::parse(&p.bhs);
        // 0 close session, 1 close connection; 2 (recovery) needs ERL 2.
        let response = if req.reason <= 1 { 0 } else { 2 };
        let rsp = pdu::LogoutResponse {
            response,
            itt: req.itt,
            ..Default::default()
        };
        self.send(Pdu::new(rsp.to_bhs(), Bytes::new()), Stamp::Status)
            .await;
        if response == 0 {
            self.closing = true;
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    async fn text(&mut self, p: &Pdu) {
        let req = pdu::Text::parse(&p.bhs);
        let max = self.params.max_xmit as usize;
        let payload = if req.ttt != RESERVED_TAG {
            match self.text_pending.remove(&req.ttt) {
                Some(rest) => rest,
                None => {
                    self.reject(&p.bhs, reject::INVALID_PDU_FIELD).await;
                    return;
                }
            }
        } else {
            self.text_pending.clear();
            Bytes::from(discovery::answer(self, &p.data))
        };
        let (now, rest) = if payload.len() > max {
            (payload.slice(..max), Some(payload.slice(max..)))
        } else {
            (payload, None)
        };
        let ttt = match rest {
            Some(r) => {
                let t = self.alloc_ttt();
                self.text_pending.insert(t, r);
                t
            }
            None => RESERVED_TAG,
        };
        let rsp = pdu::Text {
            final_bit: ttt == RESERVED_TAG,
            cont: ttt != RESERVED_TAG,
            lun: req.lun,
            itt: req.itt,
            ttt,
            ..Default::default()
        };
        self.send(
            Pdu::new(rsp.to_bhs(Opcode::TextResponse), now),
            Stamp::Status,
        )
        .await;
    }

    fn xfer_limits(&self) -> XferLimits {
        self.params.xfer
    }

    async fn scsi_command(&mut self, p: Pdu) -> Flow {
        let mut h = pdu::ScsiCommand::parse(&p.bhs);
        let immediate = h.immediate;
        let lim = self.xfer_limits();
        let dsl = p.data.len() as u32;
        // Immediate data rules (RFC 7143 §11.3.4, §13.11).
        let bad_immediate = dsl > 0 && (!lim.immediate_data || !h.write || dsl > lim.first_burst);
        if bad_immediate || (h.write && dsl > h.edtl) {
            self.reject(&p.bhs, reject::PROTOCOL_ERROR).await;
            return Flow::Continue;
        }
        if h.itt == RESERVED_TAG || self.session.tasks.lock().contains_key(&h.itt) {
            self.reject(&p.bhs, reject::INVALID_PDU_FIELD).await;
            return Flow::Continue;
        }
        // An extended-CDB AHS (type 1) is not supported: our CDBs fit in 16.
        if !p.ahs.is_empty() {
            self.respond_invalid_cdb(&h).await;
            if !immediate {
                self.advance_if(h.cmdsn).await;
            }
            return Flow::Continue;
        }
        let admit = self.admit_cmdsn(h.cmdsn, immediate);
        if let Admit::Drop = admit {
            return Flow::Continue;
        }
        self.session.tasks.lock().insert(
            h.itt,
            TaskEntry {
                lun: h.lun,
                cmdsn: h.cmdsn,
                abort: None,
                _slot: Some(self.window.task()),
            },
        );
        if h.write && h.edtl > 0 {
            let mut x = WriteXfer::new(
                h.itt,
                h.lun,
                h.edtl,
                &p.data,
                h.final_bit,
                &lim,
                MAX_IO_BYTES,
            );
            if !x.complete() {
                self.writes.insert(h.itt, x);
                self.solicit(h.itt).await;
                match admit {
                    Admit::Now => {
                        self.delivered_writes.insert(h.itt, h);
                        if !immediate {
                            self.advance().await;
                        }
                    }
                    _ => {
                        h.final_bit = true;
                        self.deferred
                            .insert(h.cmdsn, Deferred::Scsi(h, Bytes::new()));
                    }
                }
                return Flow::Continue;
            }
            let data = x.take_data();
            return self.delivered_or_deferred(h, data, admit).await;
        }
        self.delivered_or_deferred(h, Bytes::new(), admit).await
    }

    async fn delivered_or_deferred(
        &mut self,
        h: pdu::ScsiCommand,
        data: Bytes,
        admit: Admit,
    ) -> Flow {
        match admit {
            Admit::Now => {
                let immediate = h.immediate;
                self.execute(h, data);
                if !immediate {
                    self.advance().await;
                }
            }
            _ => {
                self.deferred.insert(h.cmdsn, Deferred::Scsi(h, data));
            }
        }
        Flow::Continue
    }

    /// Runs a deferred SCSI command whose CmdSN turn has come.
    fn deliver_scsi(&mut self, h: pdu::ScsiCommand, data: Bytes) {
        if self.writes.contains_key(&h.itt) {
            // Data still arriving; it runs when complete.
            self.delivered_writes.insert(h.itt, h);
        } else {
            self.execute(h, data);
        }
    }

    async fn advance_if(&mut self, cmdsn: u32) {
        if cmdsn == self.window.exp() {
            self.advance().await;
        } else {
            self.plug_hole(cmdsn);
        }
    }

    async fn respond_invalid_cdb(&self, h: &pdu::ScsiCommand) {
        let res = scsi::ScsiResult {
            status: scsi::status::CHECK_CONDITION,
            sense: Some(fixed_sense(0x05, 0x24, 0x00)),
            ..Default::default()
        };
        for o in response::build(h, res, self.params.max_xmit, 0) {
            let _ = self.out.send(o).await;
        }
    }

    async fn data_out(&mut self, p: Pdu) -> Flow {
        let d = pdu::DataOut::parse(&p.bhs);
        let Some(x) = self.writes.get_mut(&d.itt) else {
            // Data for a command we dropped or finished: discard it.
            return Flow::Continue;
        };
        if let Err(e) = x.accept(&d, &p.data) {
            debug!(itt = d.itt, error = %e, "data-out sequence error; failing the command");
            self.fail_transfer(d.itt, &e).await;
            return Flow::Continue;
        }
        if !x.complete() {
            self.solicit(d.itt).await;
            return Flow::Continue;
        }
        let Some(mut x) = self.writes.remove(&d.itt) else {
            return Flow::Continue;
        };
        let data = x.take_data();
        self.release_budget(x.solicited()).await;
        if let Some(h) = self.delivered_writes.remove(&d.itt) {
            self.execute(h, data);
        } else if let Some(Deferred::Scsi(h, _)) = self
            .deferred
            .iter()
            .find_map(|(sn, v)| match v {
                Deferred::Scsi(h, _) if h.itt == d.itt => Some(*sn),
                _ => None,
            })
            .and_then(|sn| self.deferred.remove(&sn))
        {
            self.deferred.insert(h.cmdsn, Deferred::Scsi(h, data));
        }
        Flow::Continue
    }

    /// Sends the R2Ts `itt`'s transfer may have now, within the budget.
    async fn solicit(&mut self, itt: u32) {
        let lim = self.params.xfer;
        let Some(x) = self.writes.get_mut(&itt) else {
            return;
        };
        let mut ttt = self.next_ttt;
        let r2ts = x.solicit(&lim, &mut self.r2t_budget, || {
            let t = ttt;
            ttt = ttt.wrapping_add(1).max(1);
            t
        });
        self.next_ttt = ttt;
        for r in r2ts {
            self.send(Pdu::new(r.to_bhs(), Bytes::new()), Stamp::Peek)
                .await;
        }
    }

    /// Returns budget from a finished transfer and feeds starved ones.
    pub(crate) async fn release_budget(&mut self, bytes: u64) {
        self.r2t_budget += bytes;
        let starved: Vec<u32> = self
            .writes
            .iter()
            .filter(|(_, x)| x.starved())
            .map(|(itt, _)| *itt)
            .collect();
        for itt in starved {
            self.solicit(itt).await;
        }
    }

    /// Ends a write whose data-out broke sequence: nothing is written, the
    /// command gets CHECK CONDITION, and later data for it is discarded.
    /// (At ErrorRecoveryLevel 0 there is no within-command recovery; failing
    /// the one task keeps the session's other tasks alive.)
    async fn fail_transfer(&mut self, itt: u32, e: &XferError) {
        if let Some(x) = self.writes.remove(&itt) {
            self.release_budget(x.solicited()).await;
        }
        let h = match self.delivered_writes.remove(&itt) {
            Some(h) => Some(h),
            None => {
                let mut found = None;
                for d in self.deferred.values_mut() {
                    if let Deferred::Scsi(h, _) = d {
                        if h.itt == itt {
                            found = Some(h.clone());
                            *d = Deferred::Hole;
                        }
                    }
                }
                found
            }
        };
        self.session.tasks.lock().remove(&itt);
        let Some(h) = h else { return };
        let (asc, ascq) = match e {
            XferError::DataSn { .. } => (0x4b, 0x00),
            XferError::Ttt(_) => (0x4b, 0x01),
            XferError::Overrun => (0x4b, 0x02),
            XferError::Offset { .. } => (0x4b, 0x05),
            XferError::Unsolicited => (0x0c, 0x0c),
        };
        let res = scsi::ScsiResult {
            status: scsi::status::CHECK_CONDITION,
            sense: Some(fixed_sense(0x0b, asc, ascq)),
            ..Default::default()
        };
        for o in response::build(&h, res, self.params.max_xmit, 0) {
            let _ = self.out.send(o).await;
        }
    }

    /// Starts a command as its own task; its response goes to the writer.
    fn execute(&mut self, h: pdu::ScsiCommand, data: Bytes) {
        // A task aborted while it waited for data or its CmdSN turn (by this
        // or another session's task management) must never run.
        if !self.session.tasks.lock().contains_key(&h.itt) {
            return;
        }
        let out = self.out.clone();
        let session = self.session.clone();
        let target = self.target.clone();
        let max_xmit = self.params.max_xmit;
        let itt = h.itt;
        let initiator = self.initiator_port.clone();
        let shared = self.shared.clone();
        let port = scsi::TargetPort {
            relative_id: self.portal.relative_id,
            group: self.portal.tpgt,
        };
        let handle = tokio::spawn(async move {
            if !session.tasks.lock().contains_key(&itt) {
                return;
            }
            // Only REPORT LUNS needs the list; don't build it per I/O.
            let luns = match (h.cdb[0], target.as_ref()) {
                (0xa0, Some(t)) => t.lun_ids(),
                _ => Vec::new(),
            };
            let lu = decode_lun(h.lun).and_then(|l| target.as_ref().and_then(|t| t.lun(l)));
            let cdb = h.cdb;
            let cmd = ScsiCommand {
                cdb: &cdb,
                data_out: data,
                edtl: h.edtl,
                read: h.read,
                write: h.write,
                nexus: session.nexus,
                luns: &luns,
                port,
                initiator: &initiator,
            };
            let res = match lu {
                Some(lu) => {
                    let start = crate::metrics::enabled().then(std::time::Instant::now);
                    let res = scsi::execute(&lu, cmd).await;
                    if let Some(start) = start {
                        let op = crate::metrics::OpClass::of_cdb(&cdb);
                        let bytes = match op {
                            crate::metrics::OpClass::Read => res.data_in.len() as u64,
                            crate::metrics::OpClass::Write => res.data_out_len.unwrap_or(0) as u64,
                            _ => 0,
                        };
                        let ok = res.status == scsi::status::GOOD;
                        lu.metrics.record(op, bytes, start.elapsed(), ok);
                    }
                    res
                }
                None => scsi::execute_no_lu(&cmd),
            };
            // PREEMPT AND ABORT: the preempted nexuses' tasks for this LU end
            // without a response (TAS = 0).
            if !res.aborted_nexuses.is_empty() {
                for s in shared.sessions.all() {
                    if res.aborted_nexuses.contains(&s.nexus) {
                        s.abort_tasks(|_, t| t.lun == h.lun);
                    }
                }
            }
            // Once removed, a task can no longer be aborted: answer it.
            if session.tasks.lock().remove(&itt).is_none() {
                return;
            }
            for o in response::build(&h, res, max_xmit, 0) {
                if out.send(o).await.is_err() {
                    return;
                }
            }
        });
        if let Some(t) = self.session.tasks.lock().get_mut(&itt) {
            t.abort = Some(handle.abort_handle());
        }
    }

    /// Forgets data transfers of aborted tasks.
    pub fn drop_transfers(&mut self, itts: &[u32]) {
        for itt in itts {
            if let Some(x) = self.writes.remove(itt) {
                // Starved transfers get their R2Ts at the next release.
                self.r2t_budget += x.solicited();
            }
            self.delivered_writes.remove(itt);
        }
        // Keep the CmdSN slot so the window still moves past it.
        for d in self.deferred.values_mut() {
            if matches!(d, Deferred::Scsi(h, _) if itts.contains(&h.itt)) {
                *d = Deferred::Hole;
            }
        }
    }

    /// Tags of deferred (not yet delivered) commands, with their LUN.
    pub fn deferred_tasks(&self) -> Vec<(u32, u64)> {
        self.deferred
            .values()
            .filter_map(|d| match d {
                Deferred::Scsi(h, _) => Some((h.itt, h.lun)),
                _ => None,
            })
            .collect()
    }
}

enum Admit {
    Now,
    Defer,
    Drop,
}

/// The iSCSI initiator port name (RFC 7143 §4.2.7.1 / SPC-4 TransportID
/// format 01b): lower-case initiator name, ",i,0x" and the ISID in hex.
fn initiator_port(name: &str, isid: [u8; 6]) -> String {
    let mut s = format!("{},i,0x", name.to_ascii_lowercase());
    for b in isid {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Transport-level sense in fixed format (the LU's D_SENSE does not apply to
/// errors the transport detects before a command reaches the LU).
fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Bytes {
    Bytes::copy_from_slice(&[
        0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0,
    ])
}
