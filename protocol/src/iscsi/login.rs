//! Login phase state machines (RFC 7143 §6.3, §11.12, §11.13).
//!
//! [`TargetLogin`] consumes decoded Login Request fields and produces Login
//! Response fields; [`InitiatorLogin`] does the reverse. Neither touches a
//! socket: the transport decodes PDUs, calls `step`/`handle_response`, and
//! encodes what comes back (adding StatSN, TSIH, version fields).

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::chap::{ChapAuthenticator, ChapError, ChapResponder};
pub use super::chap::{ChapCredentials, InitiatorChap};
use super::nego::InitiatorNegotiation;
use super::nego::{is_security_key, negotiate_list, NegoError, Reply, TargetNegotiation};
pub use super::nego::{DigestPolicy, Limits, SessionParams, SessionType};
use super::text::{split_list, TextError, TextPairs, MAX_TEXT_LEN};

/// Login stages (CSG/NSG field values). 2 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    /// Decode a 2-bit stage field; `None` for the reserved value 2.
    pub fn from_bits(v: u8) -> Option<Self> {
        match v & 3 {
            0 => Some(Self::Security),
            1 => Some(Self::Operational),
            3 => Some(Self::FullFeature),
            _ => None,
        }
    }

    pub fn bits(self) -> u8 {
        self as u8
    }
}

/// Login response Status-Class/Status-Detail (RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus {
    pub class: u8,
    pub detail: u8,
}

impl LoginStatus {
    pub const SUCCESS: Self = Self::new(0, 0);
    pub const TARGET_MOVED_TEMPORARILY: Self = Self::new(1, 1);
    pub const TARGET_MOVED_PERMANENTLY: Self = Self::new(1, 2);
    pub const INITIATOR_ERROR: Self = Self::new(2, 0);
    pub const AUTHENTICATION_FAILURE: Self = Self::new(2, 1);
    pub const AUTHORIZATION_FAILURE: Self = Self::new(2, 2);
    pub const NOT_FOUND: Self = Self::new(2, 3);
    pub const TARGET_REMOVED: Self = Self::new(2, 4);
    pub const UNSUPPORTED_VERSION: Self = Self::new(2, 5);
    pub const TOO_MANY_CONNECTIONS: Self = Self::new(2, 6);
    pub const MISSING_PARAMETER: Self = Self::new(2, 7);
    pub const CANT_INCLUDE_IN_SESSION: Self = Self::new(2, 8);
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self::new(2, 9);
    pub const SESSION_DOES_NOT_EXIST: Self = Self::new(2, 0x0a);
    pub const INVALID_DURING_LOGIN: Self = Self::new(2, 0x0b);
    pub const TARGET_ERROR: Self = Self::new(3, 0);
    pub const SERVICE_UNAVAILABLE: Self = Self::new(3, 1);
    pub const OUT_OF_RESOURCES: Self = Self::new(3, 2);

    pub const fn new(class: u8, detail: u8) -> Self {
        Self { class, detail }
    }
}

/// The iSCSI version we speak (RFC 7143: 0x00).
pub const ISCSI_VERSION: u8 = 0;
/// Default data segment bound during login (RFC 7143 §13.12 default 8192).
pub const LOGIN_SEGMENT_DEFAULT: usize = 8192;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
pub const MAX_NAME_LEN: usize = 223;

/// Decoded Login Request fields the state machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRequest<'a> {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data: &'a [u8],
}

/// [`LoginRequest`] owning its data, as produced by [`InitiatorLogin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequestOwned {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data: Vec<u8>,
}

impl LoginRequestOwned {
    /// The Login Request header carrying this request; ExpStatSN is the
    /// sender's, current when the PDU goes out.
    pub fn header(&self, exp_statsn: u32) -> super::pdu::LoginRequestHdr {
        super::pdu::LoginRequestHdr {
            transit: self.transit,
            cont: self.cont,
            csg: self.csg.bits(),
            nsg: self.nsg.bits(),
            version_max: self.version_max,
            version_min: self.version_min,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.itt,
            cid: self.cid,
            cmdsn: self.cmdsn,
            exp_statsn,
        }
    }

    pub fn as_request(&self) -> LoginRequest<'_> {
        LoginRequest {
            transit: self.transit,
            cont: self.cont,
            csg: self.csg,
            nsg: self.nsg,
            version_max: self.version_max,
            version_min: self.version_min,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.itt,
            cid: self.cid,
            cmdsn: self.cmdsn,
            exp_statsn: self.exp_statsn,
            data: &self.data,
        }
    }
}

/// What the target sends back. The transport adds ISID/ITT (echoed), TSIH
/// (assign one when `complete` on a leading login), StatSN and versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Vec<u8>,
    /// Entering full feature phase after this response.
    pub complete: bool,
    /// Login failed: close the connection after sending.
    pub failed: bool,
}

impl LoginResponse {
    pub fn status(&self) -> LoginStatus {
        LoginStatus::new(self.status_class, self.status_detail)
    }

    /// View as the initiator would decode it (in-memory tests, loopback).
    pub fn info(&self, tsih: u16, stat_sn: u32) -> LoginResponseInfo<'_> {
        LoginResponseInfo {
            transit: self.transit,
            cont: self.cont,
            csg: self.csg,
            nsg: self.nsg,
            status_class: self.status_class,
            status_detail: self.status_detail,
            tsih,
            stat_sn,
            data: &self.data,
        }
    }
}

/// Decoded Login Response fields the initiator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginResponseInfo<'a> {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub status_class: u8,
    pub status_detail: u8,
    pub tsih: u16,
    pub stat_sn: u32,
    pub data: &'a [u8],
}

/// Target configuration hooks consulted during login.
pub trait LoginPolicy {
    fn target_exists(&self, target_name: &str) -> bool;
    fn initiator_allowed(&self, target_name: &str, initiator_name: &str) -> bool;
    /// None = no authentication required (AuthMethod None accepted). Some = CHAP required.
    fn chap(&self, target_name: &str, initiator_name: &str) -> Option<ChapCredentials>;
    fn target_alias(&self, target_name: &str) -> Option<String>;
    fn portal_group_tag(&self, target_name: &str) -> u16;
    /// For discovery sessions: may CHAP be required? (discovery auth)
    fn discovery_chap(&self, initiator_name: &str) -> Option<ChapCredentials>;
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME_LEN
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    cid: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetState {
    Negotiating,
    Complete,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    None,
    Chap,
}

/// Response text still to be sent in C=1 chunks, and the flags for the last.
#[derive(Debug)]
struct PendingTx {
    rest: Vec<u8>,
    transit: bool,
    nsg: Stage,
}

/// Target side of one connection's login.
pub struct TargetLogin {
    limits: Limits,
    rng: Box<dyn RngCore + Send>,
    max_segment: usize,
    state: TargetState,
    header: Option<Header>,
    stage: Stage,
    nego: Option<TargetNegotiation>,
    creds: Option<ChapCredentials>,
    method: Option<Method>,
    chap: ChapAuthenticator,
    rx_text: Vec<u8>,
    tx: Option<PendingTx>,
    final_params: Option<SessionParams>,
    /// Returned by `params()` before the first request is understood.
    empty_params: SessionParams,
}

impl std::fmt::Debug for TargetLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetLogin")
            .field("state", &self.state)
            .field("stage", &self.stage)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

type StepResult<T> = Result<T, LoginStatus>;

impl TargetLogin {
    /// `rng` makes CHAP challenges; pass a seeded one in tests.
    pub fn new(limits: Limits, rng: Box<dyn RngCore + Send>) -> Self {
        Self {
            limits,
            rng,
            max_segment: LOGIN_SEGMENT_DEFAULT,
            state: TargetState::Negotiating,
            header: None,
            stage: Stage::Security,
            nego: None,
            creds: None,
            method: None,
            chap: ChapAuthenticator::new(),
            rx_text: Vec::new(),
            tx: None,
            final_params: None,
            empty_params: SessionParams::default(),
        }
    }

    /// Production constructor: challenges from the OS entropy source.
    pub fn with_entropy(limits: Limits) -> Self {
        Self::new(limits, Box::new(StdRng::from_entropy()))
    }

    /// Bound on response data per PDU; longer text goes out with C=1.
    pub fn set_max_response_segment(&mut self, n: usize) {
        self.max_segment = n.max(1);
    }

    /// Negotiated parameters; final once [`Self::is_complete`].
    pub fn params(&self) -> &SessionParams {
        if let Some(p) = &self.final_params {
            return p;
        }
        match &self.nego {
            Some(n) => n.params(),
            None => &self.empty_params,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.state == TargetState::Complete
    }

    pub fn is_failed(&self) -> bool {
        self.state == TargetState::Failed
    }

    /// Abort with a given status (e.g. the transport saw a reserved stage
    /// value or a bad header and cannot build a [`LoginRequest`]).
    pub fn reject(&mut self, status: LoginStatus) -> LoginResponse {
        self.state = TargetState::Failed;
        self.tx = None;
        LoginResponse {
            transit: false,
            cont: false,
            csg: self.stage,
            nsg: self.stage,
            status_class: status.class,
            status_detail: status.detail,
            data: Vec::new(),
            complete: false,
            failed: true,
        }
    }

    /// Process one Login Request and produce the Login Response to send.
    pub fn step(&mut self, req: &LoginRequest<'_>, policy: &dyn LoginPolicy) -> LoginResponse {
        match self.step_inner(req, policy) {
            Ok(r) => r,
            Err(status) => self.reject(status),
        }
    }

    fn step_inner(
        &mut self,
        req: &LoginRequest<'_>,
        policy: &dyn LoginPolicy,
    ) -> StepResult<LoginResponse> {
        if self.state != TargetState::Negotiating {
            return Err(LoginStatus::INVALID_DURING_LOGIN);
        }
        self.check_header(req)?;
        if let Some(tx) = self.tx.take() {
            // The initiator acknowledges our C=1 chunks with empty requests.
            if !req.data.is_empty() || req.cont {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            return Ok(self.send_chunked(tx.rest, tx.transit, tx.nsg));
        }
        if self.rx_text.len() + req.data.len() > MAX_TEXT_LEN {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        self.rx_text.extend_from_slice(req.data);
        if req.cont {
            // More request text follows: acknowledge with an empty response.
            return Ok(self.response(Vec::new(), false, false, self.stage));
        }
        let raw = std::mem::take(&mut self.rx_text);
        let text = TextPairs::parse(&raw).map_err(|_| LoginStatus::INITIATOR_ERROR)?;
        self.process(req, &text, policy)
    }

    fn check_header(&mut self, req: &LoginRequest<'_>) -> StepResult<()> {
        let h = Header {
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            cid: req.cid,
        };
        match self.header {
            Some(first) if first != h => return Err(LoginStatus::INITIATOR_ERROR),
            Some(_) => {
                if req.csg != self.stage {
                    return Err(LoginStatus::INITIATOR_ERROR);
                }
            }
            None => {
                if req.version_min > ISCSI_VERSION || req.version_max < req.version_min {
                    return Err(LoginStatus::UNSUPPORTED_VERSION);
                }
                if req.csg == Stage::FullFeature {
                    return Err(LoginStatus::INITIATOR_ERROR);
                }
                self.header = Some(h);
                self.stage = req.csg;
            }
        }
        // C and T together is a protocol error; T must move forward.
        if req.transit && (req.cont || req.nsg <= req.csg) {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        Ok(())
    }

    /// First complete request text: names, session type, policy checks.
    fn start(
        &mut self,
        req: &LoginRequest<'_>,
        text: &TextPairs,
        policy: &dyn LoginPolicy,
        out: &mut TextPairs,
    ) -> StepResult<()> {
        let initiator = text
            .get("InitiatorName")
            .ok_or(LoginStatus::MISSING_PARAMETER)?;
        if !valid_name(initiator) {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        let session_type = match text.get("SessionType") {
            None => SessionType::Normal,
            Some(v) => SessionType::parse(v).ok_or(LoginStatus::SESSION_TYPE_NOT_SUPPORTED)?,
        };
        let mut target_name = None;
        let creds = match session_type {
            SessionType::Normal => {
                let target = text
                    .get("TargetName")
                    .ok_or(LoginStatus::MISSING_PARAMETER)?;
                if !valid_name(target) || !policy.target_exists(target) {
                    return Err(LoginStatus::NOT_FOUND);
                }
                if !policy.initiator_allowed(target, initiator) {
                    return Err(LoginStatus::AUTHORIZATION_FAILURE);
                }
                target_name = Some(target.to_string());
                policy.chap(target, initiator)
            }
            SessionType::Discovery => policy.discovery_chap(initiator),
        };
        if creds.is_some() && req.csg != Stage::Security {
            // Authentication required but the initiator skipped the security stage.
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        let mut nego = TargetNegotiation::new(self.limits.clone(), session_type, req.tsih == 0);
        let p = nego.params_mut();
        p.initiator_name = initiator.to_string();
        p.session_type = session_type;
        if let Some(t) = &target_name {
            let tag = policy.portal_group_tag(t);
            p.target_portal_group_tag = Some(tag);
            put(out, "TargetPortalGroupTag", tag.to_string());
            if let Some(alias) = policy.target_alias(t) {
                put(out, "TargetAlias", alias.clone());
                p.target_alias = Some(alias);
            }
        }
        p.target_name = target_name;
        self.creds = creds;
        self.nego = Some(nego);
        Ok(())
    }

    fn process(
        &mut self,
        req: &LoginRequest<'_>,
        text: &TextPairs,
        policy: &dyn LoginPolicy,
    ) -> StepResult<LoginResponse> {
        let mut out = TextPairs::new();
        if self.nego.is_none() {
            self.start(req, text, policy, &mut out)?;
        } else {
            // Leading keys may be repeated only unchanged.
            let p = self.params();
            let same = |k: &str, cur: Option<&str>| text.get(k).is_none_or(|v| Some(v) == cur);
            if !same("InitiatorName", Some(p.initiator_name.as_str()))
                || !same("SessionType", Some(p.session_type.as_str()))
                || !same("TargetName", p.target_name.as_deref())
            {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
        }
        let has_security = text.iter().any(|(k, _)| is_security_key(k));
        if has_security {
            if self.stage != Stage::Security {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            self.security(text, &mut out)?;
        }
        let nego = self.nego.as_mut().ok_or(LoginStatus::TARGET_ERROR)?;
        for (k, v) in text.iter() {
            if is_security_key(k) || matches!(k, "InitiatorName" | "SessionType" | "TargetName") {
                continue;
            }
            match nego.handle(k, v) {
                Ok(Reply::Value(r)) => put(&mut out, k, r),
                Ok(Reply::Silent) => {}
                Err(_) => return Err(LoginStatus::INITIATOR_ERROR),
            }
        }
        if self.stage == Stage::Operational {
            if let Some((k, v)) = nego.declaration() {
                put(&mut out, &k, v);
            }
        }

        // Decide on the transition.
        let mut transit = false;
        let mut nsg = self.stage;
        if req.transit {
            let auth_ok = match (self.stage, &self.creds, self.method) {
                (Stage::Security, Some(_), Some(Method::Chap)) => self.chap.is_done(),
                // Auth required but never negotiated: the initiator tried to skip it.
                (Stage::Security, Some(_), _) => {
                    return Err(LoginStatus::AUTHENTICATION_FAILURE);
                }
                _ => true,
            };
            if auth_ok {
                nsg = req.nsg;
                if nsg == Stage::FullFeature {
                    let offers = nego.required_offers();
                    if self.stage == Stage::Security
                        && (!offers.is_empty() || nego.awaiting_answers())
                    {
                        // Our offers need an answer: stop in operational first.
                        nsg = Stage::Operational;
                    }
                    for (k, v) in offers {
                        put(&mut out, &k, v);
                    }
                    if let Some((k, v)) = nego.declaration() {
                        put(&mut out, &k, v);
                    }
                }
                transit = !(self.stage == Stage::Operational && nego.awaiting_answers());
                if !transit {
                    nsg = self.stage;
                }
            }
        }
        Ok(self.send_chunked(out.encode(), transit, nsg))
    }

    fn security(&mut self, text: &TextPairs, out: &mut TextPairs) -> StepResult<()> {
        if let Some(offer) = text.get("AuthMethod") {
            if self.method.is_some() {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            let want = if self.creds.is_some() { "CHAP" } else { "None" };
            // No acceptable method: RFC 7143 answers Reject and fails with
            // 02/01; a failed response carries no text, so just fail.
            negotiate_list(offer, |v| v == want).ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
            self.method = Some(if want == "CHAP" {
                Method::Chap
            } else {
                Method::None
            });
            put(out, "AuthMethod", want.to_string());
        }
        let chap_keys = text.iter().any(|(k, _)| k.starts_with("CHAP_"));
        if !chap_keys {
            return Ok(());
        }
        let creds = match (&self.creds, self.method) {
            (Some(c), Some(Method::Chap)) => c.clone(),
            _ => return Err(LoginStatus::INITIATOR_ERROR),
        };
        let auth_fail = |_: ChapError| LoginStatus::AUTHENTICATION_FAILURE;
        if let Some(list) = text.get("CHAP_A") {
            let reply = self
                .chap
                .on_algorithms(list, self.rng.as_mut())
                .map_err(auth_fail)?;
            for (k, v) in reply {
                put(out, &k, v);
            }
        } else if text.get("CHAP_R").is_some() || text.get("CHAP_N").is_some() {
            let reply = self.chap.on_response(text, &creds).map_err(auth_fail)?;
            for (k, v) in reply {
                put(out, &k, v);
            }
        } else {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        Ok(())
    }

    /// Send `data`, splitting at `max_segment` with C=1 on all but the last
    /// chunk; the transition only happens with the last chunk.
    fn send_chunked(&mut self, mut data: Vec<u8>, transit: bool, nsg: Stage) -> LoginResponse {
        if data.len() > self.max_segment {
            let rest = data.split_off(self.max_segment);
            self.tx = Some(PendingTx { rest, transit, nsg });
            return self.response(data, false, true, self.stage);
        }
        let csg = self.stage;
        let mut complete = false;
        if transit {
            self.stage = nsg;
            if nsg == Stage::FullFeature {
                complete = true;
                self.state = TargetState::Complete;
                self.final_params = self.nego.as_mut().map(TargetNegotiation::finish);
            }
        }
        let mut r = self.response(data, transit, false, if transit { nsg } else { csg });
        r.csg = csg;
        r.complete = complete;
        r
    }

    fn response(&self, data: Vec<u8>, transit: bool, cont: bool, nsg: Stage) -> LoginResponse {
        LoginResponse {
            transit,
            cont,
            csg: self.stage,
            nsg,
            status_class: 0,
            status_detail: 0,
            data,
            complete: false,
            failed: false,
        }
    }
}

/// Push a pair, keeping the first if the key is already there (our own
/// declarations win over echoing a key the initiator should not have sent).
fn put(out: &mut TextPairs, k: &str, v: String) {
    let _ = out.push(k, v);
}

/// Initiator-side configuration.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// Target to log in to; `None` makes a discovery session.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// 0 for a leading login.
    pub tsih: u16,
    pub cid: u16,
    pub itt: u32,
    pub cmdsn: u32,
    pub chap: Option<InitiatorChap>,
    /// Override the AuthMethod list offered (e.g. "None" to test refusal);
    /// default: "CHAP" with credentials, else no security stage at all.
    pub auth_methods: Option<String>,
    /// Go through the security stage even without CHAP (AuthMethod=None).
    pub force_security_stage: bool,
    /// Operational keys proposed verbatim.
    pub keys: Vec<(String, String)>,
    /// Answers for keys the target may propose that we did not (e.g. a
    /// target that requires digests): value lists as on the wire.
    pub acceptable: Vec<(String, String)>,
    /// Bound on request data per PDU; longer text goes out with C=1.
    pub max_segment: usize,
    /// Seed for mutual CHAP challenges; None draws from OS entropy.
    pub rng_seed: Option<u64>,
}

impl InitiatorConfig {
    /// Normal session with the operational keys we want by default.
    pub fn normal(initiator_name: &str, target_name: &str) -> Self {
        Self {
            target_name: Some(target_name.to_string()),
            keys: default_keys(SessionType::Normal),
            ..Self::discovery(initiator_name)
        }
    }

    /// Discovery session.
    pub fn discovery(initiator_name: &str) -> Self {
        Self {
            initiator_name: initiator_name.to_string(),
            initiator_alias: None,
            target_name: None,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            cid: 0,
            itt: 0,
            cmdsn: 0,
            chap: None,
            auth_methods: None,
            force_security_stage: false,
            keys: default_keys(SessionType::Discovery),
            acceptable: Vec::new(),
            max_segment: LOGIN_SEGMENT_DEFAULT,
            rng_seed: None,
        }
    }

    /// Set (or replace) one proposed key.
    pub fn set_key(&mut self, key: &str, value: &str) -> &mut Self {
        match self.keys.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.keys.push((key.to_string(), value.to_string())),
        }
        self
    }

    /// Stop proposing a key.
    pub fn remove_key(&mut self, key: &str) -> &mut Self {
        self.keys.retain(|(k, _)| k != key);
        self
    }

    fn session_type(&self) -> SessionType {
        if self.target_name.is_some() {
            SessionType::Normal
        } else {
            SessionType::Discovery
        }
    }
}

/// The operational keys a fresh config proposes.
pub fn default_keys(session_type: SessionType) -> Vec<(String, String)> {
    let common = [
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "262144"),
    ];
    let normal = [
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "1048576"),
        ("FirstBurstLength", "65536"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("ErrorRecoveryLevel", "0"),
    ];
    let extra: &[(&str, &str)] = match session_type {
        SessionType::Normal => &normal,
        SessionType::Discovery => &[],
    };
    common
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the initiator should do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginProgress {
    /// Call [`InitiatorLogin::next_request`] and send it.
    Continue,
    /// Full feature phase reached.
    Complete(SessionParams),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("target refused login: status {class:#04x}/{detail:#04x}")]
    Status { class: u8, detail: u8 },
    #[error("authentication failed: {0}")]
    Auth(#[from] ChapError),
    #[error("negotiation failed: {0}")]
    Nego(#[from] NegoError),
    #[error("bad text from target: {0}")]
    Text(#[from] TextError),
    #[error("protocol violation by target: {0}")]
    Protocol(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitState {
    /// A request is queued (or chunks remain) and nothing is in flight.
    Ready,
    /// Waiting for the response to what we sent.
    Waiting,
    Complete,
    Failed,
}

/// Initiator side of one connection's login.
pub struct InitiatorLogin {
    cfg: InitiatorConfig,
    rng: StdRng,
    state: InitState,
    stage: Stage,
    nego: InitiatorNegotiation,
    chap: Option<ChapResponder>,
    /// AuthMethod the target chose.
    method: Option<Method>,
    /// Request text not yet sent, with the T/NSG for its last chunk.
    out: Vec<u8>,
    out_transit: bool,
    out_nsg: Stage,
    /// Set once `out` has been queued; an empty `out` still yields one PDU.
    out_ready: bool,
    /// True when the last request went out with C=1.
    sent_cont: bool,
    rx_text: Vec<u8>,
    exp_statsn: u32,
    tsih: u16,
}

impl std::fmt::Debug for InitiatorLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorLogin")
            .field("state", &self.state)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl InitiatorLogin {
    pub fn new(cfg: InitiatorConfig) -> Self {
        let rng = match cfg.rng_seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let session_type = cfg.session_type();
        let mut nego = InitiatorNegotiation::new(&cfg.keys, session_type);
        for (k, v) in &cfg.acceptable {
            nego.set_acceptable(k, v);
        }
        {
            let p = nego.params_mut();
            p.initiator_name = cfg.initiator_name.clone();
            p.target_name = cfg.target_name.clone();
            p.initiator_alias = cfg.initiator_alias.clone();
        }
        let security = cfg.chap.is_some() || cfg.force_security_stage || cfg.auth_methods.is_some();
        let mut me = Self {
            chap: cfg.chap.clone().map(ChapResponder::new),
            rng,
            state: InitState::Ready,
            stage: if security {
                Stage::Security
            } else {
                Stage::Operational
            },
            nego,
            method: None,
            out: Vec::new(),
            out_transit: false,
            out_nsg: Stage::Security,
            out_ready: false,
            sent_cont: false,
            rx_text: Vec::new(),
            exp_statsn: 0,
            tsih: cfg.tsih,
            cfg,
        };
        me.queue_first();
        me
    }

    fn queue_first(&mut self) {
        let mut t = TextPairs::new();
        put(&mut t, "InitiatorName", self.cfg.initiator_name.clone());
        if let Some(a) = &self.cfg.initiator_alias {
            put(&mut t, "InitiatorAlias", a.clone());
        }
        put(
            &mut t,
            "SessionType",
            self.cfg.session_type().as_str().to_string(),
        );
        if let Some(n) = &self.cfg.target_name {
            put(&mut t, "TargetName", n.clone());
        }
        if self.stage == Stage::Security {
            let offer = self.cfg.auth_methods.clone().unwrap_or_else(|| {
                if self.cfg.chap.is_some() {
                    "CHAP".into()
                } else {
                    "None".into()
                }
            });
            // With CHAP the exchange takes more round trips; None can move on.
            let transit = !split_list(&offer).any(|m| m == "CHAP");
            put(&mut t, "AuthMethod", offer);
            self.queue(t, transit, Stage::Operational);
        } else {
            for (k, v) in self.nego.proposals() {
                put(&mut t, &k, v);
            }
            self.queue(t, true, Stage::FullFeature);
        }
    }

    fn queue(&mut self, t: TextPairs, transit: bool, nsg: Stage) {
        self.out = t.encode();
        self.out_transit = transit;
        self.out_nsg = nsg;
        self.out_ready = true;
        self.state = InitState::Ready;
    }

    /// Negotiated TSIH (valid after completion).
    pub fn tsih(&self) -> u16 {
        self.tsih
    }

    pub fn is_complete(&self) -> bool {
        self.state == InitState::Complete
    }

    /// The next Login Request to send, if one is due.
    pub fn next_request(&mut self) -> Option<LoginRequestOwned> {
        if self.state != InitState::Ready || !self.out_ready {
            return None;
        }
        let max = self.cfg.max_segment.max(1);
        let (data, cont) = if self.out.len() > max {
            let rest = self.out.split_off(max);
            (std::mem::replace(&mut self.out, rest), true)
        } else {
            self.out_ready = false;
            (std::mem::take(&mut self.out), false)
        };
        let transit = self.out_transit && !cont;
        self.sent_cont = cont;
        self.state = InitState::Waiting;
        Some(LoginRequestOwned {
            transit,
            cont,
            csg: self.stage,
            nsg: if transit { self.out_nsg } else { self.stage },
            version_max: ISCSI_VERSION,
            version_min: ISCSI_VERSION,
            isid: self.cfg.isid,
            tsih: self.cfg.tsih,
            itt: self.cfg.itt,
            cid: self.cfg.cid,
            cmdsn: self.cfg.cmdsn,
            exp_statsn: self.exp_statsn,
            data,
        })
    }

    fn fail<T>(&mut self, e: LoginError) -> Result<T, LoginError> {
        self.state = InitState::Failed;
        Err(e)
    }

    /// Process a Login Response.
    pub fn handle_response(
        &mut self,
        resp: &LoginResponseInfo<'_>,
    ) -> Result<LoginProgress, LoginError> {
        match self.handle_inner(resp) {
            Ok(p) => Ok(p),
            Err(e) => self.fail(e),
        }
    }

    fn handle_inner(&mut self, resp: &LoginResponseInfo<'_>) -> Result<LoginProgress, LoginError> {
        if self.state != InitState::Waiting {
            return Err(LoginError::Protocol("response without a request"));
        }
        if resp.status_class != 0 {
            return Err(LoginError::Status {
                class: resp.status_class,
                detail: resp.status_detail,
            });
        }
        if resp.csg != self.stage {
            return Err(LoginError::Protocol("CSG mismatch"));
        }
        if resp.transit && resp.cont {
            return Err(LoginError::Protocol("T and C both set"));
        }
        self.exp_statsn = resp.stat_sn.wrapping_add(1);
        if self.sent_cont {
            // Target acknowledges a C=1 chunk with an empty response.
            if !resp.data.is_empty() || resp.transit || resp.cont {
                return Err(LoginError::Protocol("non-empty reply to C=1 request"));
            }
            self.state = InitState::Ready;
            return Ok(LoginProgress::Continue);
        }
        if self.rx_text.len() + resp.data.len() > MAX_TEXT_LEN {
            return Err(LoginError::Text(TextError::TooLarge));
        }
        self.rx_text.extend_from_slice(resp.data);
        if resp.cont {
            // Ask for the rest with an empty request.
            self.queue(TextPairs::new(), false, self.stage);
            return Ok(LoginProgress::Continue);
        }
        let raw = std::mem::take(&mut self.rx_text);
        let text = TextPairs::parse(&raw)?;
        let mut reply = TextPairs::new();
        let mut chap_transit = None;
        if self.stage == Stage::Security {
            chap_transit = self.security(&text, &mut reply)?;
        }
        for (k, v) in text.iter() {
            if is_security_key(k) {
                continue;
            }
            if let Some((rk, rv)) = self.nego.handle(k, v)? {
                put(&mut reply, &rk, rv);
            }
        }
        if resp.transit {
            if resp.nsg <= self.stage || (resp.nsg > self.out_nsg && self.out_transit) {
                return Err(LoginError::Protocol("bad NSG"));
            }
            if self.stage == Stage::Security && !self.auth_done() {
                return Err(LoginError::Protocol("target left security stage early"));
            }
            self.stage = resp.nsg;
            if resp.nsg == Stage::FullFeature {
                self.tsih = resp.tsih;
                self.state = InitState::Complete;
                return Ok(LoginProgress::Complete(self.nego.finish()));
            }
            // Now in operational: propose our keys and ask to finish.
            for (k, v) in self.nego.proposals() {
                put(&mut reply, &k, v);
            }
            self.queue(reply, true, Stage::FullFeature);
            return Ok(LoginProgress::Continue);
        }
        match self.stage {
            Stage::Security if chap_transit.is_some() => {
                self.queue(reply, chap_transit == Some(true), Stage::Operational)
            }
            Stage::Security => {
                let ready = self.auth_done();
                self.queue(reply, ready, Stage::Operational)
            }
            _ => self.queue(reply, true, Stage::FullFeature),
        }
        Ok(LoginProgress::Continue)
    }

    fn auth_done(&self) -> bool {
        match self.method {
            Some(Method::None) => true,
            Some(Method::Chap) => self.chap.as_ref().is_some_and(ChapResponder::is_done),
            None => false,
        }
    }

    /// Security-stage keys from the target. Returns `Some(transit)` when
    /// `reply` holds a CHAP message: T=0 while more CHAP is due, T=1 with our
    /// response (the target finishes, mutual included, in its reply).
    fn security(
        &mut self,
        text: &TextPairs,
        reply: &mut TextPairs,
    ) -> Result<Option<bool>, LoginError> {
        if let Some(m) = text.get("AuthMethod") {
            let offered = self
                .cfg
                .auth_methods
                .clone()
                .unwrap_or_else(|| if self.chap.is_some() { "CHAP" } else { "None" }.into());
            if self.method.is_some() || !split_list(&offered).any(|o| o == m) {
                return Err(LoginError::Protocol("unexpected AuthMethod"));
            }
            match m {
                "CHAP" => {
                    if self.chap.is_none() {
                        return Err(LoginError::Protocol("CHAP chosen without credentials"));
                    }
                    self.method = Some(Method::Chap);
                    let (k, v) = ChapResponder::algorithms();
                    put(reply, &k, v);
                    return Ok(Some(false));
                }
                "None" => self.method = Some(Method::None),
                _ => return Err(LoginError::Protocol("unsupported AuthMethod")),
            }
        }
        let Some(chap) = self.chap.as_mut() else {
            if text.iter().any(|(k, _)| k.starts_with("CHAP_")) {
                return Err(LoginError::Protocol("CHAP keys without CHAP"));
            }
            return Ok(None);
        };
        if text.get("CHAP_C").is_some() {
            if self.method != Some(Method::Chap) {
                return Err(LoginError::Protocol("CHAP challenge before AuthMethod"));
            }
            for (k, v) in chap.on_challenge(text, &mut self.rng)? {
                put(reply, &k, v);
            }
            // Our response ends our part; ask to move on.
            return Ok(Some(true));
        }
        if text.get("CHAP_R").is_some() {
            chap.on_mutual_response(text)?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INI: &str = "iqn.2024-01.org.example:host";
    const TGT: &str = "iqn.2024-01.org.example:disk1";

    #[derive(Default)]
    struct Policy {
        chap: Option<ChapCredentials>,
        discovery_chap: Option<ChapCredentials>,
        deny: bool,
        alias: Option<String>,
    }

    impl LoginPolicy for Policy {
        fn target_exists(&self, t: &str) -> bool {
            t == TGT
        }
        fn initiator_allowed(&self, _t: &str, _i: &str) -> bool {
            !self.deny
        }
        fn chap(&self, _t: &str, _i: &str) -> Option<ChapCredentials> {
            self.chap.clone()
        }
        fn target_alias(&self, _t: &str) -> Option<String> {
            self.alias.clone()
        }
        fn portal_group_tag(&self, _t: &str) -> u16 {
            7
        }
        fn discovery_chap(&self, _i: &str) -> Option<ChapCredentials> {
            self.discovery_chap.clone()
        }
    }

    fn target_creds(mutual: bool) -> ChapCredentials {
        ChapCredentials {
            user: "alice".into(),
            secret: b"initiator-secret".to_vec(),
            mutual: mutual.then(|| (TGT.to_string(), b"target-secret!!".to_vec())),
        }
    }

    fn ini_creds(mutual: bool) -> InitiatorChap {
        let c = target_creds(mutual);
        InitiatorChap {
            user: c.user,
            secret: c.secret,
            mutual: c.mutual,
        }
    }

    fn target(limits: Limits) -> TargetLogin {
        TargetLogin::new(limits, Box::new(StdRng::seed_from_u64(42)))
    }

    struct Run {
        result: Result<SessionParams, LoginError>,
        target: TargetLogin,
        /// Every response the target produced.
        responses: Vec<LoginResponse>,
        requests: Vec<LoginRequestOwned>,
    }

    fn drive(mut cfg: InitiatorConfig, mut tgt: TargetLogin, policy: &Policy) -> Run {
        cfg.rng_seed = Some(9);
        let mut ini = InitiatorLogin::new(cfg);
        let mut responses = Vec::new();
        let mut requests = Vec::new();
        for statsn in 0..200u32 {
            let Some(req) = ini.next_request() else {
                panic!("initiator stalled");
            };
            let resp = tgt.step(&req.as_request(), policy);
            requests.push(req);
            let r = ini.handle_response(&resp.info(0x1234, statsn));
            responses.push(resp.clone());
            match r {
                Ok(LoginProgress::Continue) => assert!(!resp.complete && !resp.failed),
                Ok(LoginProgress::Complete(p)) => {
                    assert!(resp.complete && tgt.is_complete());
                    assert_eq!(ini.tsih(), 0x1234);
                    return Run {
                        result: Ok(p),
                        target: tgt,
                        responses,
                        requests,
                    };
                }
                Err(e) => {
                    return Run {
                        result: Err(e),
                        target: tgt,
                        responses,
                        requests,
                    }
                }
            }
        }
        panic!("login did not converge");
    }

    fn ok(run: &Run) -> &SessionParams {
        let p = run.result.as_ref().expect("login failed");
        // Both sides must agree on every negotiated value.
        assert_eq!(p, run.target.params());
        p
    }

    fn status(run: &Run) -> (u8, u8) {
        match &run.result {
            Err(LoginError::Status { class, detail }) => (*class, *detail),
            other => panic!("expected a refused login, got {other:?}"),
        }
    }

    #[test]
    fn auth_none_skips_security() {
        let policy = Policy {
            alias: Some("disk one".into()),
            ..Policy::default()
        };
        let run = drive(
            InitiatorConfig::normal(INI, TGT),
            target(Limits::default()),
            &policy,
        );
        let p = ok(&run);
        assert_eq!(run.requests.len(), 1);
        assert_eq!(run.requests[0].csg, Stage::Operational);
        assert_eq!(p.session_type, SessionType::Normal);
        assert_eq!(p.initiator_name, INI);
        assert_eq!(p.target_name.as_deref(), Some(TGT));
        assert_eq!(p.target_portal_group_tag, Some(7));
        assert_eq!(p.target_alias.as_deref(), Some("disk one"));
        assert!(!p.header_digest && !p.data_digest);
        assert!(!p.initial_r2t && p.immediate_data);
        assert_eq!(p.max_burst_length, 1_048_576);
        assert_eq!(p.first_burst_length, 65_536);
        assert_eq!(p.initiator_max_recv_data_segment_length, 262_144);
        assert_eq!(p.target_max_recv_data_segment_length, 262_144);
        assert_eq!(p.default_time2retain, 0);
    }

    #[test]
    fn auth_none_through_security_stage() {
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        cfg.force_security_stage = true;
        let run = drive(cfg, target(Limits::default()), &Policy::default());
        ok(&run);
        assert_eq!(run.requests[0].csg, Stage::Security);
        assert!(run.requests.len() >= 2);
    }

    #[test]
    fn chap_one_way_and_mutual() {
        for mutual in [false, true] {
            let policy = Policy {
                chap: Some(target_creds(mutual)),
                ..Policy::default()
            };
            let mut cfg = InitiatorConfig::normal(INI, TGT);
            cfg.chap = Some(ini_creds(mutual));
            let run = drive(cfg, target(Limits::default()), &policy);
            ok(&run);
            let last_sec = run
                .responses
                .iter()
                .rfind(|r| r.csg == Stage::Security)
                .unwrap();
            let t = TextPairs::parse(&last_sec.data).unwrap();
            assert_eq!(t.get("CHAP_N").is_some(), mutual);
        }
    }

    #[test]
    fn chap_wrong_secret_refused() {
        let policy = Policy {
            chap: Some(target_creds(false)),
            ..Policy::default()
        };
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        let mut c = ini_creds(false);
        c.secret = b"wrong-secret-value".to_vec();
        cfg.chap = Some(c);
        let run = drive(cfg, target(Limits::default()), &policy);
        assert_eq!(status(&run), (2, 1));
        assert!(run.target.is_failed());
        assert!(run.responses.last().unwrap().failed);
    }

    #[test]
    fn mutual_chap_wrong_target_secret_detected_by_initiator() {
        let mut creds = target_creds(true);
        creds.mutual = Some((TGT.into(), b"some-other-secret".to_vec()));
        let policy = Policy {
            chap: Some(creds),
            ..Policy::default()
        };
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        cfg.chap = Some(ini_creds(true));
        let run = drive(cfg, target(Limits::default()), &policy);
        assert_eq!(run.result, Err(LoginError::Auth(ChapError::WrongResponse)));
    }

    #[test]
    fn chap_required_but_not_offered() {
        let policy = Policy {
            chap: Some(target_creds(false)),
            ..Policy::default()
        };
        // Offers only AuthMethod=None.
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        cfg.force_security_stage = true;
        let run = drive(cfg.clone(), target(Limits::default()), &policy);
        assert_eq!(status(&run), (2, 1));
        // Skips the security stage altogether.
        cfg.force_security_stage = false;
        let run = drive(cfg, target(Limits::default()), &policy);
        assert_eq!(status(&run), (2, 1));
    }

    #[test]
    fn chap_offered_but_target_has_none() {
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        cfg.chap = Some(ini_creds(false));
        let run = drive(cfg.clone(), target(Limits::default()), &Policy::default());
        assert_eq!(status(&run), (2, 1));
        // Offering both lets the target pick None.
        cfg.auth_methods = Some("CHAP,None".into());
        ok(&drive(cfg, target(Limits::default()), &Policy::default()));
    }

    #[test]
    fn unknown_target_and_acl() {
        let run = drive(
            InitiatorConfig::normal(INI, "iqn.2024-01.org.example:nope"),
            target(Limits::default()),
            &Policy::default(),
        );
        assert_eq!(status(&run), (2, 3));
        let policy = Policy {
            deny: true,
            ..Policy::default()
        };
        let run = drive(
            InitiatorConfig::normal(INI, TGT),
            target(Limits::default()),
            &policy,
        );
        assert_eq!(status(&run), (2, 2));
    }

    fn raw(csg: Stage, transit: bool, nsg: Stage, text: &[(&str, &str)]) -> LoginRequestOwned {
        let mut t = TextPairs::new();
        for (k, v) in text {
            t.push(k, v.to_string()).unwrap();
        }
        LoginRequestOwned {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmdsn: 0,
            exp_statsn: 0,
            data: t.encode(),
        }
    }

    fn one(req: &LoginRequestOwned, policy: &Policy) -> (LoginStatus, TargetLogin) {
        let mut t = target(Limits::default());
        let r = t.step(&req.as_request(), policy);
        (r.status(), t)
    }

    const OP: Stage = Stage::Operational;
    const FF: Stage = Stage::FullFeature;
    const SEC: Stage = Stage::Security;

    #[test]
    fn first_request_checks() {
        let p = Policy::default();
        let no_name = raw(OP, true, FF, &[("TargetName", TGT)]);
        assert_eq!(one(&no_name, &p).0, LoginStatus::MISSING_PARAMETER);
        let no_target = raw(OP, true, FF, &[("InitiatorName", INI)]);
        assert_eq!(one(&no_target, &p).0, LoginStatus::MISSING_PARAMETER);
        let bad_type = raw(
            OP,
            true,
            FF,
            &[("InitiatorName", INI), ("SessionType", "Weird")],
        );
        assert_eq!(
            one(&bad_type, &p).0,
            LoginStatus::SESSION_TYPE_NOT_SUPPORTED
        );
        let good = [("InitiatorName", INI), ("TargetName", TGT)];
        let mut v = raw(OP, true, FF, &good);
        v.version_min = 1;
        v.version_max = 2;
        assert_eq!(one(&v, &p).0, LoginStatus::UNSUPPORTED_VERSION);
        let backwards = raw(OP, true, SEC, &good);
        assert_eq!(one(&backwards, &p).0, LoginStatus::INITIATOR_ERROR);
        let ffp = raw(FF, true, FF, &good);
        assert_eq!(one(&ffp, &p).0, LoginStatus::INITIATOR_ERROR);
        let mut tc = raw(OP, true, FF, &good);
        tc.cont = true;
        assert_eq!(one(&tc, &p).0, LoginStatus::INITIATOR_ERROR);
        let sec_in_op = raw(
            OP,
            true,
            FF,
            &[
                ("InitiatorName", INI),
                ("TargetName", TGT),
                ("AuthMethod", "None"),
            ],
        );
        assert_eq!(one(&sec_in_op, &p).0, LoginStatus::INITIATOR_ERROR);
        let dup_nego = raw(OP, false, OP, &good);
        let (s, mut t) = one(&dup_nego, &p);
        assert_eq!(s, LoginStatus::SUCCESS);
        let again = raw(OP, false, OP, &[("MaxBurstLength", "4096")]);
        assert!(!t.step(&again.as_request(), &p).failed);
        assert!(t.step(&again.as_request(), &p).failed);
        let bad_text = LoginRequestOwned {
            data: b"no-equals\0".to_vec(),
            ..raw(OP, true, FF, &[])
        };
        assert_eq!(one(&bad_text, &p).0, LoginStatus::INITIATOR_ERROR);
    }

    #[test]
    fn header_consistency_and_after_complete() {
        let p = Policy::default();
        let good = [("InitiatorName", INI), ("TargetName", TGT)];
        let first = raw(OP, false, OP, &good);
        for mutate in [
            |r: &mut LoginRequestOwned| r.isid[5] ^= 1,
            |r: &mut LoginRequestOwned| r.cid += 1,
            |r: &mut LoginRequestOwned| r.itt += 1,
            |r: &mut LoginRequestOwned| r.tsih += 1,
            |r: &mut LoginRequestOwned| r.csg = Stage::Security,
        ] {
            let mut t = target(Limits::default());
            assert!(!t.step(&first.as_request(), &p).failed);
            let mut next = raw(OP, true, FF, &[]);
            mutate(&mut next);
            assert_eq!(
                t.step(&next.as_request(), &p).status(),
                LoginStatus::INITIATOR_ERROR
            );
        }
        let mut t = target(Limits::default());
        let r = t.step(&raw(OP, true, FF, &good).as_request(), &p);
        assert!(r.complete && r.transit && r.nsg == FF && r.csg == OP);
        let r = t.step(&raw(OP, true, FF, &[]).as_request(), &p);
        assert_eq!(r.status(), LoginStatus::INVALID_DURING_LOGIN);
        // The transport's own rejection (e.g. reserved stage 2).
        assert_eq!(Stage::from_bits(2), None);
        let mut t = target(Limits::default());
        assert!(t.reject(LoginStatus::INITIATOR_ERROR).failed);
        assert!(t.is_failed());
    }

    #[test]
    fn non_leading_login_rejects_session_keys() {
        let p = Policy::default();
        let mut req = raw(
            OP,
            true,
            FF,
            &[
                ("InitiatorName", INI),
                ("TargetName", TGT),
                ("MaxBurstLength", "4096"),
                ("HeaderDigest", "CRC32C"),
                ("X#NodeArchitecture", "test"),
            ],
        );
        req.tsih = 9;
        let mut t = target(Limits::default());
        let r = t.step(&req.as_request(), &p);
        assert!(r.complete);
        let text = TextPairs::parse(&r.data).unwrap();
        assert_eq!(text.get("MaxBurstLength"), Some("Reject"));
        assert_eq!(text.get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(text.get("X#NodeArchitecture"), Some("NotUnderstood"));
    }

    #[test]
    fn oversized_request_text_refused() {
        let p = Policy::default();
        let mut t = target(Limits::default());
        let chunk = vec![b'a'; 8192];
        let mut last = LoginStatus::SUCCESS;
        for _ in 0..10 {
            let req = LoginRequestOwned {
                cont: true,
                transit: false,
                data: chunk.clone(),
                ..raw(OP, false, OP, &[])
            };
            let r = t.step(&req.as_request(), &p);
            last = r.status();
            if r.failed {
                break;
            }
        }
        assert_eq!(last, LoginStatus::INITIATOR_ERROR);
    }

    #[test]
    fn discovery_session() {
        let run = drive(
            InitiatorConfig::discovery(INI),
            target(Limits::default()),
            &Policy::default(),
        );
        let p = ok(&run);
        assert_eq!(p.session_type, SessionType::Discovery);
        assert_eq!(p.target_name, None);
        assert_eq!(p.target_portal_group_tag, None);
        // Session-wide keys are irrelevant in discovery.
        let mut cfg = InitiatorConfig::discovery(INI);
        cfg.set_key("MaxBurstLength", "4096");
        let run = drive(cfg, target(Limits::default()), &Policy::default());
        ok(&run);
        let t = TextPairs::parse(&run.responses[0].data).unwrap();
        assert_eq!(t.get("MaxBurstLength"), Some("Irrelevant"));
        // Discovery CHAP.
        let policy = Policy {
            discovery_chap: Some(target_creds(false)),
            ..Policy::default()
        };
        let mut cfg = InitiatorConfig::discovery(INI);
        cfg.chap = Some(ini_creds(false));
        ok(&drive(cfg.clone(), target(Limits::default()), &policy));
        cfg.chap = None;
        assert_eq!(
            status(&drive(cfg, target(Limits::default()), &policy)),
            (2, 1)
        );
    }

    #[test]
    fn digests_negotiated_both_ways() {
        // Initiator proposes.
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        cfg.set_key("HeaderDigest", "CRC32C,None")
            .set_key("DataDigest", "CRC32C");
        let p = ok(&drive(
            cfg.clone(),
            target(Limits::default()),
            &Policy::default(),
        ))
        .clone();
        assert!(p.header_digest && p.data_digest);
        // Target refuses digests it does not allow.
        let never = Limits {
            data_digest: DigestPolicy::Never,
            ..Limits::default()
        };
        let p = ok(&drive(cfg.clone(), target(never), &Policy::default())).clone();
        assert!(p.header_digest && !p.data_digest);
        // Target requires digests the initiator did not propose: it offers them.
        let required = Limits {
            header_digest: DigestPolicy::Required,
            data_digest: DigestPolicy::Required,
            ..Limits::default()
        };
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        cfg.remove_key("HeaderDigest").remove_key("DataDigest");
        cfg.acceptable = vec![
            ("HeaderDigest".into(), "CRC32C,None".into()),
            ("DataDigest".into(), "CRC32C,None".into()),
        ];
        let run = drive(cfg.clone(), target(required.clone()), &Policy::default());
        let p = ok(&run);
        assert!(p.header_digest && p.data_digest);
        assert!(run.requests.len() >= 2);
        // ... and with CHAP, the offer happens after the security stage.
        let policy = Policy {
            chap: Some(target_creds(true)),
            ..Policy::default()
        };
        let mut chap_cfg = cfg.clone();
        chap_cfg.chap = Some(ini_creds(true));
        let p = ok(&drive(chap_cfg, target(required.clone()), &policy)).clone();
        assert!(p.header_digest && p.data_digest);
        // An initiator that will not do digests is refused.
        cfg.acceptable.clear();
        assert_eq!(
            status(&drive(cfg, target(required.clone()), &Policy::default())),
            (2, 0)
        );
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        cfg.set_key("HeaderDigest", "None");
        assert_eq!(
            status(&drive(cfg, target(required), &Policy::default())),
            (2, 0)
        );
    }

    #[test]
    fn negotiation_matrix_end_to_end() {
        type Check = fn(&SessionParams) -> bool;
        let cases: &[(&str, &str, Check)] = &[
            ("MaxBurstLength", "16777215", |p| {
                p.max_burst_length == 1_048_576
            }),
            ("MaxBurstLength", "8192", |p| {
                p.max_burst_length == 8192 && p.first_burst_length == 8192
            }),
            ("FirstBurstLength", "4096", |p| p.first_burst_length == 4096),
            ("InitialR2T", "Yes", |p| p.initial_r2t),
            ("ImmediateData", "No", |p| !p.immediate_data),
            ("MaxOutstandingR2T", "64", |p| p.max_outstanding_r2t == 16),
            ("DefaultTime2Wait", "30", |p| p.default_time2wait == 30),
            ("DefaultTime2Retain", "3600", |p| {
                p.default_time2retain == 20
            }),
            ("ErrorRecoveryLevel", "2", |p| p.error_recovery_level == 0),
            ("MaxConnections", "4", |p| p.max_connections == 1),
            ("DataPDUInOrder", "No", |p| p.data_pdu_in_order),
            ("DataSequenceInOrder", "No", |p| p.data_sequence_in_order),
            ("MaxRecvDataSegmentLength", "4096", |p| {
                p.initiator_max_recv_data_segment_length == 4096
            }),
            ("MaxBurstLength", "100", |p| p.max_burst_length == 262_144),
            ("InitiatorAlias", "box", |p| {
                p.initiator_alias.as_deref() == Some("box")
            }),
            ("X-org.example.Key", "1", |_| true),
        ];
        for (k, v, check) in cases {
            let mut cfg = InitiatorConfig::normal(INI, TGT);
            cfg.set_key(k, v);
            let run = drive(cfg, target(Limits::default()), &Policy::default());
            let p = ok(&run);
            assert!(check(p), "{k}={v}: {p:?}");
        }
    }

    #[test]
    fn c_bit_continuation_both_directions() {
        let policy = Policy {
            alias: Some("a".repeat(200)),
            chap: Some(target_creds(true)),
            ..Policy::default()
        };
        let mut cfg = InitiatorConfig::normal(INI, TGT);
        cfg.chap = Some(ini_creds(true));
        cfg.max_segment = 16;
        let mut tgt = target(Limits::default());
        tgt.set_max_response_segment(24);
        let run = drive(cfg, tgt, &policy);
        ok(&run);
        assert!(run.requests.iter().any(|r| r.cont));
        assert!(run.responses.iter().any(|r| r.cont));
        for r in &run.requests {
            assert!(r.data.len() <= 16);
            assert!(!(r.cont && r.transit));
        }
        for r in &run.responses {
            assert!(r.data.len() <= 24);
            assert!(!(r.cont && r.transit));
        }
    }

    fn stage() -> impl Strategy<Value = Stage> {
        prop_oneof![Just(SEC), Just(OP), Just(FF)]
    }

    prop_compose! {
        fn any_request()(
            transit in any::<bool>(), cont in any::<bool>(), csg in stage(), nsg in stage(),
            vmax in 0u8..2, vmin in 0u8..2, isid in any::<[u8; 6]>(), tsih in 0u16..2,
            itt in 0u32..2, cid in 0u16..2,
            data in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(
                    prop_oneof![
                        Just("InitiatorName=iqn.x\0".to_string()),
                        Just(format!("TargetName={TGT}\0")),
                        Just("SessionType=Discovery\0".to_string()),
                        Just("AuthMethod=CHAP,None\0".to_string()),
                        Just("CHAP_A=5\0".to_string()),
                        Just("CHAP_N=alice\0".to_string()),
                        Just("CHAP_R=0x00\0".to_string()),
                        Just("HeaderDigest=CRC32C\0".to_string()),
                        Just("MaxBurstLength=0x10000\0".to_string()),
                    ],
                    0..5,
                ).prop_map(|v| v.concat().into_bytes()),
            ],
        ) -> LoginRequestOwned {
            LoginRequestOwned {
                transit, cont, csg, nsg, version_max: vmax, version_min: vmin,
                isid: [isid[0] & 1, 0, 0, 0, 0, isid[5] & 1], tsih, itt, cid,
                cmdsn: 0, exp_statsn: 0, data,
            }
        }
    }

    proptest! {
        #[test]
        fn target_step_never_panics(
            reqs in proptest::collection::vec(any_request(), 1..8),
            chap in any::<bool>(),
        ) {
            let policy = Policy {
                chap: chap.then(|| target_creds(true)),
                ..Policy::default()
            };
            let mut t = target(Limits::default());
            t.set_max_response_segment(32);
            for r in &reqs {
                let resp = t.step(&r.as_request(), &policy);
                prop_assert!(!(resp.cont && resp.transit));
                prop_assert!(resp.data.len() <= 32);
                if resp.failed {
                    prop_assert!(resp.status_class != 0);
                }
            }
        }
    }
}
