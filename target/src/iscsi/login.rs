//! Driving the login phase on a connection (RFC 7143 §6): the sans-I/O
//! [`TargetLogin`] decides; this module moves PDUs, applies our config as
//! the login policy, and creates or reinstates the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tracing::{debug, info};
use vtgt_protocol::iscsi::login::{
    ChapCredentials, LoginPolicy, LoginRequest, LoginResponse, LoginStatus, SessionType, Stage,
    TargetLogin,
};
use vtgt_protocol::iscsi::nego::{Limits, SessionParams};
use vtgt_protocol::iscsi::pdu::{self, Digests, Opcode, Pdu};

use super::conn::{ConnParams, PduReader, ReadError, QUEUE_DEPTH};
use super::dataout::XferLimits;
use super::portal::{IscsiShared, PortalInfo};
use super::session::Session;
use crate::config::ChapConfig;
use crate::target::Target;

/// Largest data segment accepted while logging in.
pub const LOGIN_MAX_SEGMENT: u32 = 65536;
/// A login that takes longer than this is abandoned.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);

pub struct LoginOutcome {
    pub session: Arc<Session>,
    pub target: Option<Arc<Target>>,
    pub params: ConnParams,
    /// StatSN of the first full-feature response.
    pub statsn: u32,
    pub exp_cmdsn: u32,
}

struct Policy<'a> {
    shared: &'a IscsiShared,
    portal: &'a PortalInfo,
}

fn creds(c: &ChapConfig) -> ChapCredentials {
    ChapCredentials {
        user: c.user.clone(),
        secret: c.secret.as_bytes().to_vec(),
        mutual: match (&c.mutual_user, &c.mutual_secret) {
            (Some(u), Some(s)) => Some((u.clone(), s.as_bytes().to_vec())),
            _ => None,
        },
    }
}

impl LoginPolicy for Policy<'_> {
    fn target_exists(&self, target_name: &str) -> bool {
        self.shared.target(target_name).is_some()
    }
    fn initiator_allowed(&self, target_name: &str, initiator_name: &str) -> bool {
        self.shared
            .target(target_name)
            .is_some_and(|t| t.initiator_allowed(initiator_name))
    }
    fn chap(&self, target_name: &str, initiator_name: &str) -> Option<ChapCredentials> {
        let t = self.shared.target(target_name)?;
        t.chap_for(initiator_name).as_ref().map(creds)
    }
    fn target_alias(&self, target_name: &str) -> Option<String> {
        self.shared.target(target_name).and_then(|t| t.alias())
    }
    fn portal_group_tag(&self, _target_name: &str) -> u16 {
        self.portal.tpgt
    }
    fn discovery_chap(&self, _initiator_name: &str) -> Option<ChapCredentials> {
        self.shared.discovery_chap.as_ref().map(creds)
    }
}

pub fn target_limits() -> Limits {
    Limits {
        max_recv_data_segment_length: 262_144,
        max_burst_length: 1 << 20,
        first_burst_length: 65_536,
        max_outstanding_r2t: 16,
        ..Limits::default()
    }
}

async fn send_response(
    wr: &mut OwnedWriteHalf,
    req: &pdu::LoginRequestHdr,
    resp: &LoginResponse,
    tsih: u16,
    statsn: u32,
) -> bool {
    let h = pdu::LoginResponseHdr {
        transit: resp.transit,
        cont: resp.cont,
        csg: resp.csg.bits(),
        nsg: resp.nsg.bits(),
        version_max: 0,
        version_active: 0,
        isid: req.isid,
        tsih,
        itt: req.itt,
        statsn,
        exp_cmdsn: req.cmdsn,
        max_cmdsn: req.cmdsn.wrapping_add(QUEUE_DEPTH - 1),
        status_class: resp.status_class,
        status_detail: resp.status_detail,
    };
    let mut buf = BytesMut::new();
    Pdu::new(h.to_bhs(), Bytes::copy_from_slice(&resp.data)).encode(&mut buf, Digests::default());
    wr.write_all(&buf).await.is_ok()
}

pub async fn run(
    reader: &mut PduReader,
    wr: &mut OwnedWriteHalf,
    shared: &Arc<IscsiShared>,
    portal: &PortalInfo,
    peer: SocketAddr,
) -> Option<LoginOutcome> {
    let policy = Policy { shared, portal };
    let mut tl = TargetLogin::with_entropy(target_limits());
    let mut statsn: u32 = rand::random::<u32>() & 0x00ff_ffff;
    let mut first: Option<pdu::LoginRequestHdr> = None;
    loop {
        let p = match reader.next().await {
            Ok(p) => p,
            Err(ReadError::Closed) => return None,
            Err(ReadError::Frame(e)) => {
                debug!(%peer, "bad PDU during login: {e}");
                return None;
            }
        };
        let h = pdu::LoginRequestHdr::parse(&p.bhs);
        let base = first.clone().unwrap_or_else(|| h.clone());
        if p.bhs.opcode() != Some(Opcode::LoginRequest) {
            // Only Login Requests are allowed before the full-feature phase.
            let resp = tl.reject(LoginStatus::INVALID_DURING_LOGIN);
            send_response(wr, &base, &resp, 0, statsn).await;
            return None;
        }
        if first.is_none() {
            first = Some(h.clone());
            if h.tsih != 0 && shared.sessions.find_tsih(h.tsih).is_none() {
                let resp = tl.reject(LoginStatus::SESSION_DOES_NOT_EXIST);
                send_response(wr, &h, &resp, h.tsih, statsn).await;
                return None;
            }
        }
        let (Some(csg), Some(nsg)) = (Stage::from_bits(h.csg), Stage::from_bits(h.nsg)) else {
            let resp = tl.reject(LoginStatus::INITIATOR_ERROR);
            send_response(wr, &h, &resp, 0, statsn).await;
            return None;
        };
        let req = LoginRequest {
            transit: h.transit,
            cont: h.cont,
            csg,
            nsg,
            version_max: h.version_max,
            version_min: h.version_min,
            isid: h.isid,
            tsih: h.tsih,
            itt: h.itt,
            cid: h.cid,
            cmdsn: h.cmdsn,
            exp_statsn: h.exp_statsn,
            data: &p.data,
        };
        let resp = tl.step(&req, &policy);
        if resp.failed || resp.status_class != 0 {
            info!(%peer, class = resp.status_class, detail = resp.status_detail, "login refused");
            let target = tl.params().target_name.clone().unwrap_or_default();
            let known = shared.target(&target).map(|t| t.name.clone());
            crate::metrics::login(
                "iscsi",
                known.as_deref().unwrap_or("unknown"),
                login_result(resp.status_class, resp.status_detail),
            );
            send_response(wr, &h, &resp, 0, statsn).await;
            return None;
        }
        if !resp.complete {
            if !send_response(wr, &h, &resp, 0, statsn).await {
                return None;
            }
            statsn = statsn.wrapping_add(1);
            continue;
        }
        let params = tl.params().clone();
        let (session, target) = establish(shared, portal, &h, &params).await;
        crate::metrics::login("iscsi", &session.target, "success");
        if !send_response(wr, &h, &resp, session.tsih, statsn).await {
            shared.sessions.remove(&session);
            return None;
        }
        return Some(LoginOutcome {
            session,
            target,
            params: conn_params(&params),
            statsn: statsn.wrapping_add(1),
            exp_cmdsn: h.cmdsn,
        });
    }
}

fn conn_params(p: &SessionParams) -> ConnParams {
    let lim = target_limits();
    ConnParams {
        header_digest: p.header_digest,
        data_digest: p.data_digest,
        max_recv: lim.max_recv_data_segment_length,
        max_xmit: p.initiator_max_recv_data_segment_length.max(512),
        xfer: XferLimits {
            first_burst: p.first_burst_length,
            max_burst: p.max_burst_length,
            max_outstanding_r2t: p.max_outstanding_r2t as u32,
            initial_r2t: p.initial_r2t,
            immediate_data: p.immediate_data,
        },
    }
}

/// Creates the session, reinstating (closing) any older session of the same
/// initiator port and target.
async fn establish(
    shared: &Arc<IscsiShared>,
    portal: &PortalInfo,
    h: &pdu::LoginRequestHdr,
    params: &SessionParams,
) -> (Arc<Session>, Option<Arc<Target>>) {
    let discovery = params.session_type == SessionType::Discovery;
    let target = if discovery {
        None
    } else {
        params.target_name.as_deref().and_then(|n| shared.target(n))
    };
    let tname = target
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_else(|| "discovery".to_string());
    let initiator = params.initiator_name.clone();
    if let Some(old) = shared.sessions.find(&initiator, h.isid, &tname) {
        info!(initiator = %initiator, tsih = old.tsih, "reinstating session");
        old.kill.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), old.done.cancelled()).await;
        shared.sessions.remove(&old);
    }
    let tsih = if h.tsih != 0 {
        h.tsih
    } else {
        shared.sessions.allocate_tsih()
    };
    let nexus = shared.nexus.id(&initiator, h.isid, &tname, portal.tpgt);
    let session = Arc::new(Session {
        tsih,
        initiator,
        isid: h.isid,
        target: tname,
        nexus,
        discovery,
        params: params.clone(),
        kill: shared.shutdown.child_token(),
        done: Default::default(),
        tasks: Mutex::new(Default::default()),
    });
    shared.sessions.insert(session.clone());
    if let Some(t) = &target {
        // Like LIO and tgt, a new nexus starts without a unit attention:
        // initiators such as iscsi-ls give up on a POWER ON at first TUR.
        for lu in t.luns().values() {
            lu.control().register_nexus(nexus, None).await;
        }
    }
    (session, target)
}

/// A bounded label for a login outcome (RFC 7143 §11.13.5).
fn login_result(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (2, 1) => "authentication_failed",
        (2, 2) => "not_authorized",
        (2, 3) | (2, 4) => "not_found",
        (2, _) => "initiator_error",
        (3, _) => "target_error",
        _ => "other",
    }
}
