//! Operational parameter negotiation (RFC 7143 §6 and §13).
//!
//! [`TargetNegotiation`] is the acceptor for keys an initiator proposes (and
//! the proposer for the few keys a target must raise itself);
//! [`InitiatorNegotiation`] is the proposer that checks the target's answers.
//! Both fill a [`SessionParams`] that starts at the RFC defaults.

use std::collections::{BTreeMap, BTreeSet};

use super::text::{encode_bool, parse_bool, parse_number, split_list};

/// `SessionType` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionType {
    #[default]
    Normal,
    Discovery,
}

impl SessionType {
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "Normal" => Some(Self::Normal),
            "Discovery" => Some(Self::Discovery),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Discovery => "Discovery",
        }
    }
}

/// Whether we accept, insist on, or refuse CRC32C for a digest key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestPolicy {
    Never,
    Allowed,
    Required,
}

impl DigestPolicy {
    fn supports(self, v: &str) -> bool {
        match v {
            "CRC32C" => self != DigestPolicy::Never,
            "None" => self != DigestPolicy::Required,
            _ => false,
        }
    }
}

/// Everything negotiated at login, starting from the RFC 7143 §13 defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// CRC32C header digest in use (connection-wide).
    pub header_digest: bool,
    /// CRC32C data digest in use (connection-wide).
    pub data_digest: bool,
    /// Declared by the initiator: the most data the *target may send* per PDU.
    pub initiator_max_recv_data_segment_length: u32,
    /// Declared by the target: the most data the *initiator may send* per PDU.
    pub target_max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub error_recovery_level: u8,
    pub max_connections: u16,
    pub target_alias: Option<String>,
    pub initiator_alias: Option<String>,
    pub initiator_name: String,
    /// None for discovery sessions that named no target.
    pub target_name: Option<String>,
    pub target_portal_group_tag: Option<u16>,
    pub session_type: SessionType,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            initiator_max_recv_data_segment_length: 8192,
            target_max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
            target_alias: None,
            initiator_alias: None,
            initiator_name: String::new(),
            target_name: None,
            target_portal_group_tag: None,
            session_type: SessionType::Normal,
        }
    }
}

/// What the local side offers or accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// What we declare we can receive per PDU.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u16,
    /// Highest ErrorRecoveryLevel we implement.
    pub max_error_recovery_level: u8,
    pub max_connections: u16,
    /// Our InitialR2T preference (OR: Yes from either side wins).
    pub initial_r2t: bool,
    /// Our ImmediateData preference (AND: No from either side wins).
    pub immediate_data: bool,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub header_digest: DigestPolicy,
    pub data_digest: DigestPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 65_536,
            max_outstanding_r2t: 16,
            max_error_recovery_level: 0,
            max_connections: 1,
            initial_r2t: false,
            immediate_data: true,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            header_digest: DigestPolicy::Allowed,
            data_digest: DigestPolicy::Allowed,
        }
    }
}

/// Result functions for numeric keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumRule {
    Min,
    Max,
}

/// Result functions for Boolean keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolRule {
    Or,
    And,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Digest,
    Num {
        lo: u64,
        hi: u64,
        rule: NumRule,
    },
    Bool(BoolRule),
    /// Declarative number (MaxRecvDataSegmentLength): no answer expected.
    Declared {
        lo: u64,
        hi: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct KeyDef {
    name: &'static str,
    kind: Kind,
    /// Session-wide keys: only in a leading login (TSIH 0).
    leading_only: bool,
    irrelevant_in_discovery: bool,
}

const fn num(name: &'static str, lo: u64, hi: u64, rule: NumRule, disc: bool) -> KeyDef {
    KeyDef {
        name,
        kind: Kind::Num { lo, hi, rule },
        leading_only: true,
        irrelevant_in_discovery: disc,
    }
}

const fn boolean(name: &'static str, rule: BoolRule) -> KeyDef {
    KeyDef {
        name,
        kind: Kind::Bool(rule),
        leading_only: true,
        irrelevant_in_discovery: true,
    }
}

const BURST_MAX: u64 = 16_777_215;

const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "HeaderDigest",
        kind: Kind::Digest,
        leading_only: false,
        irrelevant_in_discovery: false,
    },
    KeyDef {
        name: "DataDigest",
        kind: Kind::Digest,
        leading_only: false,
        irrelevant_in_discovery: false,
    },
    KeyDef {
        name: "MaxRecvDataSegmentLength",
        kind: Kind::Declared {
            lo: 512,
            hi: BURST_MAX,
        },
        leading_only: false,
        irrelevant_in_discovery: false,
    },
    num("MaxConnections", 1, 65_535, NumRule::Min, true),
    num("MaxBurstLength", 512, BURST_MAX, NumRule::Min, true),
    num("FirstBurstLength", 512, BURST_MAX, NumRule::Min, true),
    num("MaxOutstandingR2T", 1, 65_535, NumRule::Min, true),
    num("DefaultTime2Wait", 0, 3600, NumRule::Max, false),
    num("DefaultTime2Retain", 0, 3600, NumRule::Min, false),
    num("ErrorRecoveryLevel", 0, 2, NumRule::Min, false),
    boolean("InitialR2T", BoolRule::Or),
    boolean("ImmediateData", BoolRule::And),
    boolean("DataPDUInOrder", BoolRule::Or),
    boolean("DataSequenceInOrder", BoolRule::Or),
];

fn key_def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// Security-stage keys (RFC 7143 §12): never valid in the operational stage.
pub fn is_security_key(key: &str) -> bool {
    key == "AuthMethod" || key.starts_with("CHAP_")
}

/// Numeric result function.
pub fn negotiate_num(rule: NumRule, offered: u64, ours: u64) -> u64 {
    match rule {
        NumRule::Min => offered.min(ours),
        NumRule::Max => offered.max(ours),
    }
}

/// Boolean result function.
pub fn negotiate_bool(rule: BoolRule, offered: bool, ours: bool) -> bool {
    match rule {
        BoolRule::Or => offered || ours,
        BoolRule::And => offered && ours,
    }
}

/// List negotiation: the first offered value we support, or None (Reject).
pub fn negotiate_list(offered: &str, supported: impl Fn(&str) -> bool) -> Option<&str> {
    split_list(offered).find(|v| supported(v))
}

/// Answer words defined by RFC 7143 §6.2.
pub const REJECT: &str = "Reject";
pub const IRRELEVANT: &str = "Irrelevant";
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";

fn is_answer_word(v: &str) -> bool {
    matches!(v, REJECT | IRRELEVANT | NOT_UNDERSTOOD)
}

/// Negotiation failures that end the login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegoError {
    #[error("key {0} negotiated twice")]
    Renegotiated(String),
    #[error("peer refused required CRC32C for {0}")]
    DigestRequired(String),
    #[error("invalid answer {1:?} for {0}")]
    BadAnswer(String, String),
}

/// Value of a negotiable key, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    Digest(bool),
    Num(u64),
    Bool(bool),
}

fn sat<T: TryFrom<u64> + Copy>(v: u64, max: T) -> T {
    T::try_from(v).unwrap_or(max)
}

fn store(p: &mut SessionParams, key: &str, v: Val, from_initiator: bool) {
    match (key, v) {
        ("HeaderDigest", Val::Digest(b)) => p.header_digest = b,
        ("DataDigest", Val::Digest(b)) => p.data_digest = b,
        ("MaxRecvDataSegmentLength", Val::Num(n)) => {
            if from_initiator {
                p.initiator_max_recv_data_segment_length = sat(n, u32::MAX);
            } else {
                p.target_max_recv_data_segment_length = sat(n, u32::MAX);
            }
        }
        ("MaxConnections", Val::Num(n)) => p.max_connections = sat(n, u16::MAX),
        ("MaxBurstLength", Val::Num(n)) => p.max_burst_length = sat(n, u32::MAX),
        ("FirstBurstLength", Val::Num(n)) => p.first_burst_length = sat(n, u32::MAX),
        ("MaxOutstandingR2T", Val::Num(n)) => p.max_outstanding_r2t = sat(n, u16::MAX),
        ("DefaultTime2Wait", Val::Num(n)) => p.default_time2wait = sat(n, u16::MAX),
        ("DefaultTime2Retain", Val::Num(n)) => p.default_time2retain = sat(n, u16::MAX),
        ("ErrorRecoveryLevel", Val::Num(n)) => p.error_recovery_level = sat(n, u8::MAX),
        ("InitialR2T", Val::Bool(b)) => p.initial_r2t = b,
        ("ImmediateData", Val::Bool(b)) => p.immediate_data = b,
        ("DataPDUInOrder", Val::Bool(b)) => p.data_pdu_in_order = b,
        ("DataSequenceInOrder", Val::Bool(b)) => p.data_sequence_in_order = b,
        _ => {}
    }
}

fn limit_num(l: &Limits, key: &str) -> u64 {
    match key {
        "MaxConnections" => l.max_connections.into(),
        "MaxBurstLength" => l.max_burst_length.into(),
        "FirstBurstLength" => l.first_burst_length.into(),
        "MaxOutstandingR2T" => l.max_outstanding_r2t.into(),
        "DefaultTime2Wait" => l.default_time2wait.into(),
        "DefaultTime2Retain" => l.default_time2retain.into(),
        "ErrorRecoveryLevel" => l.max_error_recovery_level.into(),
        "MaxRecvDataSegmentLength" => l.max_recv_data_segment_length.into(),
        _ => 0,
    }
}

fn limit_bool(l: &Limits, key: &str) -> bool {
    match key {
        "InitialR2T" => l.initial_r2t,
        "ImmediateData" => l.immediate_data,
        "DataPDUInOrder" => l.data_pdu_in_order,
        "DataSequenceInOrder" => l.data_sequence_in_order,
        _ => false,
    }
}

fn limit_digest(l: &Limits, key: &str) -> DigestPolicy {
    if key == "HeaderDigest" {
        l.header_digest
    } else {
        l.data_digest
    }
}

/// What the acceptor answers for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send `key=value`.
    Value(String),
    /// Declarative key or an answer to our own offer: nothing to send.
    Silent,
}

/// The target's half of operational negotiation for one connection.
#[derive(Debug, Clone)]
pub struct TargetNegotiation {
    limits: Limits,
    params: SessionParams,
    discovery: bool,
    leading: bool,
    /// Keys the initiator has proposed: proposing again is a protocol error.
    seen: BTreeSet<String>,
    /// Keys we proposed and await an answer for, with the value we sent.
    pending: BTreeMap<&'static str, &'static str>,
    declared_mrdsl: bool,
}

impl TargetNegotiation {
    pub fn new(limits: Limits, session_type: SessionType, leading: bool) -> Self {
        let mut params = SessionParams {
            session_type,
            ..SessionParams::default()
        };
        // ErrorRecoveryLevel and MaxConnections never exceed what we implement,
        // even when the initiator does not raise them.
        params.error_recovery_level = params
            .error_recovery_level
            .min(limits.max_error_recovery_level);
        Self {
            limits,
            params,
            discovery: session_type == SessionType::Discovery,
            leading,
            seen: BTreeSet::new(),
            pending: BTreeMap::new(),
            declared_mrdsl: false,
        }
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut SessionParams {
        &mut self.params
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Answer one non-security key proposed (or answered) by the initiator.
    pub fn handle(&mut self, key: &str, value: &str) -> Result<Reply, NegoError> {
        if let Some(sent) = self.pending.remove(key) {
            return self.take_answer(key, sent, value).map(|()| Reply::Silent);
        }
        if !self.seen.insert(key.to_string()) {
            return Err(NegoError::Renegotiated(key.to_string()));
        }
        let Some(def) = key_def(key) else {
            return Ok(self.other_key(key, value));
        };
        if def.irrelevant_in_discovery && self.discovery {
            return Ok(Reply::Value(IRRELEVANT.into()));
        }
        if def.leading_only && !self.leading {
            return Ok(Reply::Value(REJECT.into()));
        }
        match def.kind {
            Kind::Digest => {
                let policy = limit_digest(&self.limits, key);
                match negotiate_list(value, |v| policy.supports(v)) {
                    Some(v) => {
                        store(&mut self.params, key, Val::Digest(v == "CRC32C"), true);
                        Ok(Reply::Value(v.to_string()))
                    }
                    None if policy == DigestPolicy::Required => {
                        Err(NegoError::DigestRequired(key.into()))
                    }
                    None => Ok(Reply::Value(REJECT.into())),
                }
            }
            Kind::Declared { lo, hi } => match parse_number(value) {
                Ok(n) if (lo..=hi).contains(&n) => {
                    store(&mut self.params, key, Val::Num(n), true);
                    Ok(Reply::Silent)
                }
                _ => Ok(Reply::Value(REJECT.into())),
            },
            Kind::Num { lo, hi, rule } => match parse_number(value) {
                Ok(n) if (lo..=hi).contains(&n) => {
                    let r = negotiate_num(rule, n, limit_num(&self.limits, key));
                    store(&mut self.params, key, Val::Num(r), true);
                    Ok(Reply::Value(r.to_string()))
                }
                _ => Ok(Reply::Value(REJECT.into())),
            },
            Kind::Bool(rule) => match parse_bool(value) {
                Ok(b) => {
                    let r = negotiate_bool(rule, b, limit_bool(&self.limits, key));
                    store(&mut self.params, key, Val::Bool(r), true);
                    Ok(Reply::Value(encode_bool(r).into()))
                }
                Err(_) => Ok(Reply::Value(REJECT.into())),
            },
        }
    }

    /// Keys outside the negotiable table.
    fn other_key(&mut self, key: &str, value: &str) -> Reply {
        Reply::Value(match key {
            "InitiatorAlias" => {
                self.params.initiator_alias = Some(value.to_string());
                return Reply::Silent;
            }
            // Target-only declarations: an initiator may not send them.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => REJECT.into(),
            // RFC 3720 markers, obsoleted by RFC 7143; legacy initiators still
            // send them, and "No" is the only answer that disables them.
            "OFMarker" | "IFMarker" => "No".into(),
            "OFMarkInt" | "IFMarkInt" => IRRELEVANT.into(),
            _ => NOT_UNDERSTOOD.into(),
        })
    }

    fn take_answer(&mut self, key: &str, sent: &str, value: &str) -> Result<(), NegoError> {
        // We only ever offer required digests.
        if value == sent {
            store(&mut self.params, key, Val::Digest(true), false);
            Ok(())
        } else {
            Err(NegoError::DigestRequired(key.to_string()))
        }
    }

    /// Keys we must raise ourselves before full feature phase: digests we
    /// require that the initiator did not negotiate.
    pub fn required_offers(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for key in ["HeaderDigest", "DataDigest"] {
            let required = limit_digest(&self.limits, key) == DigestPolicy::Required;
            if required && !self.seen.contains(key) && !self.pending.contains_key(key) {
                // Mark as seen so a late proposal of the same key is an error.
                self.seen.insert(key.to_string());
                self.pending.insert(key, "CRC32C");
                out.push((key.to_string(), "CRC32C".to_string()));
            }
        }
        out
    }

    /// True while an offer of ours has no answer yet (we may not set T).
    pub fn awaiting_answers(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Our MaxRecvDataSegmentLength declaration, once per connection.
    pub fn declaration(&mut self) -> Option<(String, String)> {
        if self.declared_mrdsl {
            return None;
        }
        self.declared_mrdsl = true;
        self.params.target_max_recv_data_segment_length = self.limits.max_recv_data_segment_length;
        Some((
            "MaxRecvDataSegmentLength".into(),
            self.limits.max_recv_data_segment_length.to_string(),
        ))
    }

    /// Final parameters: enforce cross-key constraints.
    pub fn finish(&mut self) -> SessionParams {
        finalize(&mut self.params);
        self.params.clone()
    }
}

fn finalize(p: &mut SessionParams) {
    // FirstBurstLength must not exceed MaxBurstLength (RFC 7143 §13.14).
    p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
}

/// The initiator's half: proposes configured keys, checks answers, and
/// answers keys the target raises.
#[derive(Debug, Clone)]
pub struct InitiatorNegotiation {
    params: SessionParams,
    /// Our proposals awaiting an answer.
    offered: BTreeMap<String, String>,
    /// Every value we want, keyed by name (our side of any result function).
    desired: BTreeMap<String, String>,
    /// Values we accept if the target proposes a key we did not.
    acceptable: BTreeMap<String, String>,
}

impl InitiatorNegotiation {
    /// `desired`: key/value pairs to propose (values as they go on the wire).
    pub fn new(desired: &[(String, String)], session_type: SessionType) -> Self {
        Self {
            params: SessionParams {
                session_type,
                ..SessionParams::default()
            },
            offered: BTreeMap::new(),
            desired: desired.iter().cloned().collect(),
            acceptable: BTreeMap::new(),
        }
    }

    /// What to answer should the target propose `key` (not proposed by us).
    pub fn set_acceptable(&mut self, key: &str, value: &str) {
        self.acceptable.insert(key.to_string(), value.to_string());
    }

    fn ours(&self, key: &str) -> Option<&str> {
        self.desired
            .get(key)
            .or_else(|| self.acceptable.get(key))
            .map(String::as_str)
    }

    /// Pairs to propose; each goes out once.
    pub fn proposals(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in &self.desired {
            if self.offered.contains_key(k) {
                continue;
            }
            // Declarations take effect at once and need no answer.
            if k == "MaxRecvDataSegmentLength" {
                if let Ok(n) = parse_number(v) {
                    store(&mut self.params, k, Val::Num(n), true);
                }
            }
            if k == "InitiatorAlias" {
                self.params.initiator_alias = Some(v.clone());
            }
            out.push((k.clone(), v.clone()));
        }
        for (k, v) in &out {
            self.offered.insert(k.clone(), v.clone());
        }
        out
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut SessionParams {
        &mut self.params
    }

    /// Process one key from the target; returns an answer to send, if any.
    pub fn handle(
        &mut self,
        key: &str,
        value: &str,
    ) -> Result<Option<(String, String)>, NegoError> {
        match key {
            "TargetAlias" => {
                self.params.target_alias = Some(value.to_string());
                return Ok(None);
            }
            "TargetPortalGroupTag" => {
                let tag = parse_number(value)
                    .ok()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| NegoError::BadAnswer(key.into(), value.into()))?;
                self.params.target_portal_group_tag = Some(tag);
                return Ok(None);
            }
            "MaxRecvDataSegmentLength" => {
                match parse_number(value) {
                    Ok(n) if (512..=BURST_MAX).contains(&n) => {
                        store(&mut self.params, key, Val::Num(n), false)
                    }
                    _ if is_answer_word(value) => {}
                    _ => return Err(NegoError::BadAnswer(key.into(), value.into())),
                }
                return Ok(None);
            }
            _ => {}
        }
        if let Some(sent) = self.offered.get(key).cloned() {
            if let Some(def) = key_def(key) {
                if !is_answer_word(value) {
                    self.check_answer(def, &sent, value)?;
                }
            }
            // Answers to anything else (InitiatorAlias, vendor keys) need no checks.
            return Ok(None);
        }
        // The target proposes a key: answer it like an acceptor would.
        let Some(def) = key_def(key) else {
            return Ok(Some((key.to_string(), NOT_UNDERSTOOD.to_string())));
        };
        self.offered.insert(key.to_string(), value.to_string());
        let reply = match def.kind {
            Kind::Digest => {
                let ours = self.ours(key).unwrap_or("None");
                match negotiate_list(value, |v| split_list(ours).any(|o| o == v)) {
                    Some(v) => {
                        store(&mut self.params, key, Val::Digest(v == "CRC32C"), false);
                        v.to_string()
                    }
                    None => REJECT.to_string(),
                }
            }
            Kind::Num { lo, hi, rule } => match parse_number(value) {
                Ok(n) if (lo..=hi).contains(&n) => {
                    let ours = self
                        .ours(key)
                        .and_then(|v| parse_number(v).ok())
                        .unwrap_or(n);
                    let r = negotiate_num(rule, n, ours);
                    store(&mut self.params, key, Val::Num(r), false);
                    r.to_string()
                }
                _ => REJECT.to_string(),
            },
            Kind::Bool(rule) => match parse_bool(value) {
                Ok(b) => {
                    let ours = self.ours(key).and_then(|v| parse_bool(v).ok()).unwrap_or(b);
                    let r = negotiate_bool(rule, b, ours);
                    store(&mut self.params, key, Val::Bool(r), false);
                    encode_bool(r).to_string()
                }
                Err(_) => REJECT.to_string(),
            },
            Kind::Declared { .. } => return Ok(None),
        };
        Ok(Some((key.to_string(), reply)))
    }

    /// Validate the target's answer to our proposal against the result function.
    fn check_answer(&mut self, def: &KeyDef, sent: &str, value: &str) -> Result<(), NegoError> {
        let bad = || NegoError::BadAnswer(def.name.into(), value.into());
        match def.kind {
            Kind::Digest => {
                if !split_list(sent).any(|v| v == value) {
                    return Err(bad());
                }
                store(
                    &mut self.params,
                    def.name,
                    Val::Digest(value == "CRC32C"),
                    false,
                );
            }
            Kind::Num { lo, hi, rule } => {
                let n = parse_number(value).map_err(|_| bad())?;
                let ours = parse_number(sent).map_err(|_| bad())?;
                let ok = (lo..=hi).contains(&n)
                    && match rule {
                        NumRule::Min => n <= ours,
                        NumRule::Max => n >= ours,
                    };
                if !ok {
                    return Err(bad());
                }
                store(&mut self.params, def.name, Val::Num(n), false);
            }
            Kind::Bool(rule) => {
                let b = parse_bool(value).map_err(|_| bad())?;
                let ours = parse_bool(sent).map_err(|_| bad())?;
                // OR: our Yes forces Yes; AND: our No forces No.
                let ok = match rule {
                    BoolRule::Or => !ours || b,
                    BoolRule::And => ours || !b,
                };
                if !ok {
                    return Err(bad());
                }
                store(&mut self.params, def.name, Val::Bool(b), false);
            }
            Kind::Declared { .. } => {}
        }
        Ok(())
    }

    pub fn finish(&mut self) -> SessionParams {
        finalize(&mut self.params);
        self.params.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(limits: Limits) -> TargetNegotiation {
        TargetNegotiation::new(limits, SessionType::Normal, true)
    }

    fn answer(t: &mut TargetNegotiation, k: &str, v: &str) -> String {
        match t.handle(k, v).unwrap() {
            Reply::Value(s) => s,
            Reply::Silent => "<silent>".into(),
        }
    }

    #[test]
    fn result_functions() {
        assert_eq!(negotiate_num(NumRule::Min, 10, 20), 10);
        assert_eq!(negotiate_num(NumRule::Max, 10, 20), 20);
        for (a, b) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(negotiate_bool(BoolRule::Or, a, b), a || b);
            assert_eq!(negotiate_bool(BoolRule::And, a, b), a && b);
        }
        let sup = |v: &str| v == "None";
        assert_eq!(negotiate_list("CRC32C,None", sup), Some("None"));
        assert_eq!(negotiate_list("CRC32C,Bogus", sup), None);
    }

    /// (key, offered, limits tweak, expected answer, check on params)
    #[test]
    fn target_matrix() {
        type Check = fn(&SessionParams) -> bool;
        let base = Limits::default();
        let cases: Vec<(&str, &str, Limits, &str, Check)> = vec![
            ("HeaderDigest", "CRC32C,None", base.clone(), "CRC32C", |p| {
                p.header_digest
            }),
            ("HeaderDigest", "None,CRC32C", base.clone(), "None", |p| {
                !p.header_digest
            }),
            ("HeaderDigest", "Foo,CRC32C", base.clone(), "CRC32C", |p| {
                p.header_digest
            }),
            ("HeaderDigest", "Foo", base.clone(), "Reject", |p| {
                !p.header_digest
            }),
            (
                "DataDigest",
                "CRC32C,None",
                Limits {
                    data_digest: DigestPolicy::Never,
                    ..base.clone()
                },
                "None",
                |p| !p.data_digest,
            ),
            (
                "DataDigest",
                "None,CRC32C",
                Limits {
                    data_digest: DigestPolicy::Required,
                    ..base.clone()
                },
                "CRC32C",
                |p| p.data_digest,
            ),
            ("MaxBurstLength", "16777215", base.clone(), "1048576", |p| {
                p.max_burst_length == 1_048_576
            }),
            ("MaxBurstLength", "4096", base.clone(), "4096", |p| {
                p.max_burst_length == 4096
            }),
            ("MaxBurstLength", "0x1000", base.clone(), "4096", |p| {
                p.max_burst_length == 4096
            }),
            ("MaxBurstLength", "511", base.clone(), "Reject", |p| {
                p.max_burst_length == 262_144
            }),
            ("MaxBurstLength", "16777216", base.clone(), "Reject", |p| {
                p.max_burst_length == 262_144
            }),
            ("MaxBurstLength", "lots", base.clone(), "Reject", |p| {
                p.max_burst_length == 262_144
            }),
            ("FirstBurstLength", "262144", base.clone(), "65536", |p| {
                p.first_burst_length == 65_536
            }),
            ("DefaultTime2Wait", "0", base.clone(), "2", |p| {
                p.default_time2wait == 2
            }),
            ("DefaultTime2Wait", "10", base.clone(), "10", |p| {
                p.default_time2wait == 10
            }),
            ("DefaultTime2Wait", "3601", base.clone(), "Reject", |p| {
                p.default_time2wait == 2
            }),
            ("DefaultTime2Retain", "0", base.clone(), "0", |p| {
                p.default_time2retain == 0
            }),
            ("DefaultTime2Retain", "3600", base.clone(), "20", |p| {
                p.default_time2retain == 20
            }),
            ("ErrorRecoveryLevel", "2", base.clone(), "0", |p| {
                p.error_recovery_level == 0
            }),
            ("ErrorRecoveryLevel", "3", base.clone(), "Reject", |p| {
                p.error_recovery_level == 0
            }),
            (
                "ErrorRecoveryLevel",
                "2",
                Limits {
                    max_error_recovery_level: 1,
                    ..base.clone()
                },
                "1",
                |p| p.error_recovery_level == 1,
            ),
            ("MaxConnections", "8", base.clone(), "1", |p| {
                p.max_connections == 1
            }),
            ("MaxConnections", "0", base.clone(), "Reject", |p| {
                p.max_connections == 1
            }),
            ("MaxOutstandingR2T", "1", base.clone(), "1", |p| {
                p.max_outstanding_r2t == 1
            }),
            ("MaxOutstandingR2T", "64", base.clone(), "16", |p| {
                p.max_outstanding_r2t == 16
            }),
            ("MaxOutstandingR2T", "65536", base.clone(), "Reject", |p| {
                p.max_outstanding_r2t == 1
            }),
            ("InitialR2T", "No", base.clone(), "No", |p| !p.initial_r2t),
            ("InitialR2T", "Yes", base.clone(), "Yes", |p| p.initial_r2t),
            (
                "InitialR2T",
                "No",
                Limits {
                    initial_r2t: true,
                    ..base.clone()
                },
                "Yes",
                |p| p.initial_r2t,
            ),
            ("InitialR2T", "maybe", base.clone(), "Reject", |p| {
                p.initial_r2t
            }),
            ("ImmediateData", "Yes", base.clone(), "Yes", |p| {
                p.immediate_data
            }),
            ("ImmediateData", "No", base.clone(), "No", |p| {
                !p.immediate_data
            }),
            (
                "ImmediateData",
                "Yes",
                Limits {
                    immediate_data: false,
                    ..base.clone()
                },
                "No",
                |p| !p.immediate_data,
            ),
            ("DataPDUInOrder", "No", base.clone(), "Yes", |p| {
                p.data_pdu_in_order
            }),
            (
                "DataPDUInOrder",
                "No",
                Limits {
                    data_pdu_in_order: false,
                    ..base.clone()
                },
                "No",
                |p| !p.data_pdu_in_order,
            ),
            ("DataSequenceInOrder", "Yes", base.clone(), "Yes", |p| {
                p.data_sequence_in_order
            }),
            (
                "MaxRecvDataSegmentLength",
                "65536",
                base.clone(),
                "<silent>",
                |p| p.initiator_max_recv_data_segment_length == 65_536,
            ),
            (
                "MaxRecvDataSegmentLength",
                "100",
                base.clone(),
                "Reject",
                |p| p.initiator_max_recv_data_segment_length == 8192,
            ),
            ("InitiatorAlias", "host", base.clone(), "<silent>", |p| {
                p.initiator_alias.as_deref() == Some("host")
            }),
            ("TargetAlias", "x", base.clone(), "Reject", |_| true),
            ("OFMarker", "No", base.clone(), "No", |_| true),
            ("IFMarkInt", "2048", base.clone(), "Irrelevant", |_| true),
            (
                "X-com.example.Foo",
                "1",
                base.clone(),
                "NotUnderstood",
                |_| true,
            ),
            ("Bogus", "1", base.clone(), "NotUnderstood", |_| true),
        ];
        for (key, offered, limits, expect, check) in cases {
            let mut t = target(limits);
            let got = answer(&mut t, key, offered);
            assert_eq!(got, expect, "{key}={offered}");
            assert!(check(t.params()), "params after {key}={offered}");
        }
    }

    #[test]
    fn required_digest_refused_is_error() {
        let limits = Limits {
            header_digest: DigestPolicy::Required,
            ..Limits::default()
        };
        let mut t = target(limits);
        assert!(matches!(
            t.handle("HeaderDigest", "None"),
            Err(NegoError::DigestRequired(_))
        ));
    }

    #[test]
    fn discovery_irrelevant_and_non_leading_reject() {
        let mut t = TargetNegotiation::new(Limits::default(), SessionType::Discovery, true);
        for k in [
            "MaxConnections",
            "InitialR2T",
            "ImmediateData",
            "MaxBurstLength",
            "FirstBurstLength",
            "MaxOutstandingR2T",
            "DataPDUInOrder",
            "DataSequenceInOrder",
        ] {
            assert_eq!(answer(&mut t, k, "1"), "Irrelevant", "{k}");
        }
        assert_eq!(answer(&mut t, "HeaderDigest", "CRC32C"), "CRC32C");
        let mut t = TargetNegotiation::new(Limits::default(), SessionType::Normal, false);
        assert_eq!(answer(&mut t, "MaxBurstLength", "4096"), "Reject");
        assert_eq!(answer(&mut t, "DataDigest", "CRC32C"), "CRC32C");
    }

    #[test]
    fn renegotiation_is_error() {
        let mut t = target(Limits::default());
        answer(&mut t, "MaxBurstLength", "4096");
        assert!(matches!(
            t.handle("MaxBurstLength", "4096"),
            Err(NegoError::Renegotiated(_))
        ));
    }

    #[test]
    fn target_offers_required_digest() {
        let limits = Limits {
            data_digest: DigestPolicy::Required,
            ..Limits::default()
        };
        let mut t = target(limits.clone());
        let offers = t.required_offers();
        assert_eq!(offers, vec![("DataDigest".into(), "CRC32C".into())]);
        assert!(t.awaiting_answers());
        assert!(t.required_offers().is_empty());
        assert_eq!(t.handle("DataDigest", "CRC32C"), Ok(Reply::Silent));
        assert!(!t.awaiting_answers());
        assert!(t.params().data_digest);

        let mut t = target(limits);
        t.required_offers();
        assert!(t.handle("DataDigest", "Reject").is_err());
    }

    #[test]
    fn first_burst_clamped() {
        let mut t = target(Limits {
            first_burst_length: 1_000_000,
            ..Limits::default()
        });
        answer(&mut t, "MaxBurstLength", "8192");
        answer(&mut t, "FirstBurstLength", "65536");
        assert_eq!(t.finish().first_burst_length, 8192);
    }

    #[test]
    fn initiator_checks_answers() {
        let desired: Vec<(String, String)> = [
            ("HeaderDigest", "CRC32C,None"),
            ("MaxBurstLength", "262144"),
            ("DefaultTime2Wait", "2"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxRecvDataSegmentLength", "65536"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let fresh = || {
            let mut i = InitiatorNegotiation::new(&desired, SessionType::Normal);
            i.proposals();
            i
        };
        let mut i = fresh();
        assert_eq!(i.params().initiator_max_recv_data_segment_length, 65_536);
        assert!(i.handle("HeaderDigest", "CRC32C").is_ok());
        assert!(i.params().header_digest);
        assert!(i.handle("MaxBurstLength", "4096").is_ok());
        assert_eq!(i.params().max_burst_length, 4096);
        assert!(i.handle("MaxRecvDataSegmentLength", "16384").is_ok());
        assert_eq!(i.params().target_max_recv_data_segment_length, 16_384);
        // Answers that violate the result function.
        let bad: &[(&str, &str)] = &[
            ("HeaderDigest", "Foo"),
            ("MaxBurstLength", "300000"),
            ("DefaultTime2Wait", "1"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "abc"),
        ];
        for (k, v) in bad {
            assert!(fresh().handle(k, v).is_err(), "{k}={v}");
        }
        // Reject leaves the default.
        let mut i = fresh();
        assert!(i.handle("MaxBurstLength", "Reject").is_ok());
        assert_eq!(i.params().max_burst_length, 262_144);
    }

    #[test]
    fn initiator_answers_target_offer() {
        let desired = vec![("DataDigest".to_string(), "None,CRC32C".to_string())];
        let mut i = InitiatorNegotiation::new(&desired, SessionType::Normal);
        assert_eq!(
            i.handle("DataDigest", "CRC32C").unwrap(),
            Some(("DataDigest".into(), "CRC32C".into()))
        );
        assert!(i.params().data_digest);
        let mut i = InitiatorNegotiation::new(&[], SessionType::Normal);
        assert_eq!(
            i.handle("HeaderDigest", "CRC32C").unwrap(),
            Some(("HeaderDigest".into(), "Reject".into()))
        );
        assert_eq!(
            i.handle("Unknown", "1").unwrap(),
            Some(("Unknown".into(), "NotUnderstood".into()))
        );
    }
}
