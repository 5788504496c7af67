//! Reservations, protocol-neutral: persistent reservations (keys,
//! registrants, one reservation of a type) as SPC-4 and NVMe define them,
//! plus the legacy SPC-2 exclusive reservation.
//!
//! A nexus is named by its transport identity (an initiator port string,
//! e.g. iSCSI "iqn...,i,0x<isid>") and the relative id of the target port it
//! uses. A registration's identity may be an initiator *device* (a prefix of
//! port identities that continues with ','), covering all of its ports, and
//! may cover all target ports. Only the control path touches this state.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use crate::fastpath::Access;
use crate::{NexusId, Notice};

/// Upper bound on registrations per LU (INSUFFICIENT REGISTRATION RESOURCES
/// beyond it).
pub const MAX_REGISTRATIONS: usize = 512;
/// Upper bound on an identity's length.
pub const MAX_IDENTITY: usize = 256;

/// Persistent reservation types (SPC-4 table 212; NVMe uses the same six).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The SCSI TYPE code.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    pub fn from_code(c: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|t| t.code() == c)
    }

    /// Exclusive access: non-holders may not read either.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants only or all registrants: every registrant has access.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// All registrants: every registrant is a holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// The identity of an I_T nexus: initiator port and relative target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItNexus {
    pub initiator: String,
    pub port: u16,
}

impl ItNexus {
    pub fn new(initiator: &str, port: u16) -> Self {
        Self {
            initiator: initiator.to_ascii_lowercase(),
            port,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub key: u64,
    /// Initiator port (or device) identity, lower case.
    pub initiator: String,
    /// Relative target port; `None` when registered with ALL_TG_PT.
    pub port: Option<u16>,
    /// Unique while registered; names the holder.
    id: u64,
}

impl Registration {
    /// Whether this registration is the one of `n`.
    pub fn covers(&self, n: &ItNexus) -> bool {
        if self.port.is_some_and(|p| p != n.port) {
            return false;
        }
        let i = &n.initiator;
        *i == self.initiator
            || (i.len() > self.initiator.len()
                && i.starts_with(self.initiator.as_str())
                && i.as_bytes()[self.initiator.len()] == b',')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub kind: PrType,
    /// Registration id of the holder; unused for all-registrants types.
    holder: u64,
}

/// Why a reservation request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrError {
    /// RESERVATION CONFLICT.
    Conflict,
    /// RELEASE with a type other than the reservation's.
    WrongReleaseType,
    /// A key that must be non-zero is zero (PREEMPT, REGISTER AND MOVE).
    ZeroKey,
    /// SPEC_I_PT from a registered nexus or naming a registered port.
    AlreadyRegistered,
    /// REGISTER AND MOVE to the issuing nexus itself.
    MoveToSelf,
    /// Too many registrations.
    NoResources,
    /// The state could not be made persistent.
    Storage,
}

/// A PERSISTENT RESERVE OUT (or NVMe reservation) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrRequest {
    Register {
        key: u64,
        new_key: u64,
        ignore_existing: bool,
        all_ports: bool,
        aptpl: bool,
        /// Further initiator identities to register (SPEC_I_PT).
        also: Vec<String>,
    },
    Reserve {
        key: u64,
        kind: PrType,
    },
    Release {
        key: u64,
        kind: PrType,
    },
    Clear {
        key: u64,
    },
    Preempt {
        key: u64,
        victim: u64,
        kind: PrType,
        abort: bool,
    },
    Move {
        key: u64,
        new_key: u64,
        to: ItNexus,
        unregister: bool,
        aptpl: bool,
    },
    /// Sets APTPL alone (NVMe Set Features Reservation Persistence, which
    /// needs no registration).
    Persist {
        aptpl: bool,
    },
}

/// What a successful request did beyond the state change itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrEffects {
    /// Notices to raise.
    pub notices: Vec<(NexusId, Notice)>,
    /// Nexuses whose tasks PREEMPT AND ABORT aborts.
    pub aborted: Vec<NexusId>,
    /// Whether persistent state changed (persist and republish).
    pub changed: bool,
}

/// How a nexus stands against the reservations of a LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No reservation, or the nexus holds it.
    Free,
    /// Another nexus holds a persistent reservation.
    Other { kind: PrType, registered: bool },
    /// Another nexus holds an SPC-2 reservation.
    LegacyOther,
}

impl Standing {
    /// Access to the medium (reads and writes), which the fast path enforces.
    pub fn media(self) -> Access {
        match self {
            Standing::Free => Access::ALL,
            Standing::LegacyOther => Access::NONE,
            Standing::Other { kind, registered } => {
                if registered && kind.registrants_have_access() {
                    Access::ALL
                } else if kind.exclusive_access() {
                    Access::NONE
                } else {
                    Access {
                        read: true,
                        write: false,
                    }
                }
            }
        }
    }
}

/// Reservation state of one LU.
#[derive(Debug, Default, Clone)]
pub struct Reservations {
    pub generation: u32,
    /// Activate persist through power loss: the last APTPL bit received.
    pub aptpl: bool,
    registrations: Vec<Registration>,
    reservation: Option<Reservation>,
    next_id: u64,
    /// SPC-2 reservation holder; lost with power, LU reset or nexus loss.
    legacy: Option<NexusId>,
    /// Identities of the nexuses seen, for notices and access.
    nexuses: HashMap<NexusId, ItNexus>,
}

/// One registration as READ FULL STATUS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationStatus {
    pub key: u64,
    pub initiator: String,
    pub port: Option<u16>,
    /// The reservation type when this registration holds it.
    pub holds: Option<PrType>,
}

impl Reservations {
    /// Records (or updates) the identity of `nexus`; true if it changed.
    pub fn identify(&mut self, nexus: NexusId, who: ItNexus) -> bool {
        self.nexuses.insert(nexus, who.clone()) != Some(who)
    }

    pub fn identity(&self, nexus: NexusId) -> Option<&ItNexus> {
        self.nexuses.get(&nexus)
    }

    fn reg_of(&self, n: &ItNexus) -> Option<usize> {
        // A registration through this very port wins over a wider one.
        self.registrations
            .iter()
            .position(|r| r.port == Some(n.port) && r.covers(n))
            .or_else(|| self.registrations.iter().position(|r| r.covers(n)))
    }

    fn reg_of_nexus(&self, nexus: NexusId) -> Option<usize> {
        self.nexuses.get(&nexus).and_then(|n| self.reg_of(n))
    }

    /// The registration key of `nexus`, if registered.
    pub fn key_of(&self, nexus: NexusId) -> Option<u64> {
        self.reg_of_nexus(nexus).map(|i| self.registrations[i].key)
    }

    pub fn keys(&self) -> Vec<u64> {
        self.registrations.iter().map(|r| r.key).collect()
    }

    pub fn has_registrations(&self) -> bool {
        !self.registrations.is_empty()
    }

    /// The reservation: its key (0 for all-registrants types) and type.
    pub fn reservation(&self) -> Option<(u64, PrType)> {
        let r = self.reservation?;
        if r.kind.all_registrants() {
            return Some((0, r.kind));
        }
        let key = self
            .registrations
            .iter()
            .find(|g| g.id == r.holder)
            .map(|g| g.key)
            .unwrap_or(0);
        Some((key, r.kind))
    }

    pub fn full_status(&self) -> Vec<RegistrationStatus> {
        self.registrations
            .iter()
            .map(|g| RegistrationStatus {
                key: g.key,
                initiator: g.initiator.clone(),
                port: g.port,
                holds: self
                    .reservation
                    .filter(|r| r.kind.all_registrants() || r.holder == g.id)
                    .map(|r| r.kind),
            })
            .collect()
    }

    fn holds(&self, reg: Option<usize>) -> bool {
        match (self.reservation, reg) {
            (Some(r), Some(i)) => r.kind.all_registrants() || self.registrations[i].id == r.holder,
            _ => false,
        }
    }

    /// Whether `nexus` holds the persistent reservation.
    pub fn is_holder(&self, nexus: NexusId) -> bool {
        self.holds(self.reg_of_nexus(nexus))
    }

    pub fn legacy_holder(&self) -> Option<NexusId> {
        self.legacy
    }

    pub fn standing(&self, nexus: NexusId) -> Standing {
        if let Some(h) = self.legacy {
            if h != nexus {
                return Standing::LegacyOther;
            }
        }
        let Some(r) = self.reservation else {
            return Standing::Free;
        };
        let reg = self.reg_of_nexus(nexus);
        if self.holds(reg) {
            return Standing::Free;
        }
        Standing::Other {
            kind: r.kind,
            registered: reg.is_some(),
        }
    }

    /// Fast-path access of a nexus nobody identified yet: that of an
    /// unregistered non-holder.
    pub fn default_media(&self) -> Access {
        if self.legacy.is_some() {
            return Access::NONE;
        }
        match self.reservation {
            None => Access::ALL,
            Some(r) => Standing::Other {
                kind: r.kind,
                registered: false,
            }
            .media(),
        }
    }

    /// Known nexuses a registration covers.
    fn nexuses_of(&self, reg: &Registration) -> Vec<NexusId> {
        let mut v: Vec<NexusId> = self
            .nexuses
            .iter()
            .filter(|(_, n)| reg.covers(n))
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn add(&mut self, key: u64, initiator: String, port: Option<u16>) {
        self.next_id += 1;
        self.registrations.push(Registration {
            key,
            initiator,
            port,
            id: self.next_id,
        });
    }

    /// Removes registration `i`; an all-registrants reservation ends with its
    /// last registrant, any other with its holder. Returns whether the
    /// reservation ended.
    fn remove(&mut self, i: usize) -> bool {
        let g = self.registrations.remove(i);
        let ended = match self.reservation {
            Some(r) if r.kind.all_registrants() => self.registrations.is_empty(),
            Some(r) => r.holder == g.id,
            None => false,
        };
        if ended {
            self.reservation = None;
        }
        ended
    }

    /// Notices for every nexus of every registration, except `except`.
    fn notify_registrants(&self, notice: Notice, except: NexusId, fx: &mut PrEffects) {
        for g in &self.registrations {
            for n in self.nexuses_of(g) {
                if n != except && !fx.notices.contains(&(n, notice)) {
                    fx.notices.push((n, notice));
                }
            }
        }
    }

    /// Applies a PERSISTENT RESERVE OUT request from `nexus`.
    pub fn apply(&mut self, nexus: NexusId, req: PrRequest) -> Result<PrEffects, PrError> {
        let me = self.nexuses.get(&nexus).cloned().ok_or(PrError::Conflict)?;
        let mine = self.reg_of(&me);
        let mut fx = PrEffects::default();
        match req {
            PrRequest::Register {
                key,
                new_key,
                ignore_existing,
                all_ports,
                aptpl,
                also,
            } => {
                match mine {
                    None => {
                        if !ignore_existing && key != 0 {
                            return Err(PrError::Conflict);
                        }
                        if new_key == 0 {
                            // Unregistering an unregistered nexus does nothing.
                            return Ok(fx);
                        }
                        let port = (!all_ports).then_some(me.port);
                        for a in &also {
                            let probe = ItNexus::new(a, me.port);
                            if self.reg_of(&probe).is_some() || *a == me.initiator {
                                return Err(PrError::AlreadyRegistered);
                            }
                        }
                        if self.registrations.len() + 1 + also.len() > MAX_REGISTRATIONS {
                            return Err(PrError::NoResources);
                        }
                        self.add(new_key, me.initiator.clone(), port);
                        for a in also {
                            self.add(new_key, a.to_ascii_lowercase(), port);
                        }
                    }
                    Some(i) => {
                        if !also.is_empty() {
                            return Err(PrError::AlreadyRegistered);
                        }
                        if !ignore_existing && self.registrations[i].key != key {
                            return Err(PrError::Conflict);
                        }
                        if new_key == 0 {
                            let kind = self.reservation.map(|r| r.kind);
                            let was_holder = self.holds(Some(i));
                            let ended = self.remove(i);
                            if ended
                                && was_holder
                                && kind.is_some_and(|k| {
                                    k.registrants_have_access() && !k.all_registrants()
                                })
                            {
                                self.notify_registrants(
                                    Notice::ReservationsReleased,
                                    nexus,
                                    &mut fx,
                                );
                            }
                        } else {
                            self.registrations[i].key = new_key;
                        }
                    }
                }
                self.aptpl = aptpl;
                self.bump();
            }
            PrRequest::Reserve { key, kind } => {
                let i = mine.ok_or(PrError::Conflict)?;
                if self.registrations[i].key != key {
                    return Err(PrError::Conflict);
                }
                match self.reservation {
                    Some(r) if self.holds(Some(i)) && r.kind == kind => return Ok(fx),
                    Some(_) => return Err(PrError::Conflict),
                    None => {
                        self.reservation = Some(Reservation {
                            kind,
                            holder: self.registrations[i].id,
                        })
                    }
                }
            }
            PrRequest::Release { key, kind } => {
                let i = mine.ok_or(PrError::Conflict)?;
                if self.registrations[i].key != key {
                    return Err(PrError::Conflict);
                }
                let Some(r) = self.reservation else {
                    return Ok(fx);
                };
                if !self.holds(Some(i)) {
                    return Ok(fx);
                }
                if r.kind != kind {
                    return Err(PrError::WrongReleaseType);
                }
                self.reservation = None;
                if r.kind.registrants_have_access() {
                    self.notify_registrants(Notice::ReservationsReleased, nexus, &mut fx);
                }
            }
            PrRequest::Clear { key } => {
                let i = mine.ok_or(PrError::Conflict)?;
                if self.registrations[i].key != key {
                    return Err(PrError::Conflict);
                }
                self.notify_registrants(Notice::ReservationsPreempted, nexus, &mut fx);
                self.registrations.clear();
                self.reservation = None;
                self.bump();
            }
            PrRequest::Preempt {
                key,
                victim,
                kind,
                abort,
            } => {
                let i = mine.ok_or(PrError::Conflict)?;
                if self.registrations[i].key != key {
                    return Err(PrError::Conflict);
                }
                let my_id = self.registrations[i].id;
                let res = self.reservation;
                let (held_key, all_reg) = match res {
                    Some(r) => (self.reservation().map(|x| x.0), r.kind.all_registrants()),
                    None => (None, false),
                };
                let takes_reservation = match res {
                    Some(_) if all_reg => victim == 0,
                    Some(_) => Some(victim) == held_key,
                    None => false,
                };
                if victim == 0 && !takes_reservation {
                    return Err(PrError::ZeroKey);
                }
                // Registrations to remove: the victim key's, or for an
                // all-registrants reservation preempted with key 0 every
                // other one. The preempting nexus keeps its own.
                let doomed: Vec<u64> = self
                    .registrations
                    .iter()
                    .filter(|g| g.id != my_id && (g.key == victim || (all_reg && victim == 0)))
                    .map(|g| g.id)
                    .collect();
                if doomed.is_empty() && !takes_reservation {
                    return Err(PrError::Conflict);
                }
                let mut lost: Vec<NexusId> = Vec::new();
                for g in self.registrations.iter().filter(|g| doomed.contains(&g.id)) {
                    lost.extend(self.nexuses_of(g));
                }
                lost.sort_unstable();
                lost.dedup();
                lost.retain(|n| *n != nexus);
                let old_kind = res.map(|r| r.kind);
                self.registrations.retain(|g| !doomed.contains(&g.id));
                if takes_reservation {
                    self.reservation = Some(Reservation {
                        kind,
                        holder: my_id,
                    });
                    if old_kind != Some(kind) {
                        // Registrants that stay learn the reservation changed.
                        let mut others = PrEffects::default();
                        self.notify_registrants(Notice::ReservationsReleased, nexus, &mut others);
                        for (n, no) in others.notices {
                            if !lost.contains(&n) {
                                fx.notices.push((n, no));
                            }
                        }
                    }
                } else if self.registrations.is_empty() {
                    self.reservation = None;
                }
                for n in &lost {
                    fx.notices.push((*n, Notice::RegistrationsPreempted));
                }
                if abort {
                    fx.aborted = lost;
                }
                self.bump();
            }
            PrRequest::Move {
                key,
                new_key,
                to,
                unregister,
                aptpl,
            } => {
                let i = mine.ok_or(PrError::Conflict)?;
                if self.registrations[i].key != key {
                    return Err(PrError::Conflict);
                }
                let Some(r) = self.reservation else {
                    return Err(PrError::Conflict);
                };
                if r.kind.all_registrants() || !self.holds(Some(i)) {
                    return Err(PrError::Conflict);
                }
                if new_key == 0 {
                    return Err(PrError::ZeroKey);
                }
                let to = ItNexus::new(&to.initiator, to.port);
                if self.registrations[i].covers(&to) {
                    return Err(PrError::MoveToSelf);
                }
                let dest = match self.reg_of(&to) {
                    Some(d) => {
                        self.registrations[d].key = new_key;
                        self.registrations[d].id
                    }
                    None => {
                        if self.registrations.len() >= MAX_REGISTRATIONS {
                            return Err(PrError::NoResources);
                        }
                        self.add(new_key, to.initiator.clone(), Some(to.port));
                        self.next_id
                    }
                };
                self.reservation = Some(Reservation {
                    kind: r.kind,
                    holder: dest,
                });
                if unregister {
                    let my_id = self.registrations[i].id;
                    self.registrations.retain(|g| g.id != my_id);
                }
                self.aptpl = aptpl;
                self.bump();
            }
            PrRequest::Persist { aptpl } => {
                if self.aptpl == aptpl {
                    return Ok(fx);
                }
                self.aptpl = aptpl;
            }
        }
        fx.changed = true;
        Ok(fx)
    }

    /// SPC-2 RESERVE. Persistent reservations take precedence (SPC-4 5.13.3,
    /// compatible reservation handling): a PR holder (or a registrant with
    /// access) gets GOOD without effect, anyone else a conflict while any
    /// registration exists. Returns whether state changed.
    pub fn legacy_reserve(&mut self, nexus: NexusId) -> Result<bool, PrError> {
        if self.pr_excuses(nexus)? {
            return Ok(false);
        }
        match self.legacy {
            Some(h) if h != nexus => Err(PrError::Conflict),
            Some(_) => Ok(false),
            None => {
                self.legacy = Some(nexus);
                Ok(true)
            }
        }
    }

    /// SPC-2 RELEASE: ends the nexus's own reservation; a no-op otherwise.
    pub fn legacy_release(&mut self, nexus: NexusId) -> Result<bool, PrError> {
        if self.pr_excuses(nexus)? {
            return Ok(false);
        }
        Ok(self.clear_legacy_of(nexus))
    }

    /// `Ok(true)`: the PR state makes RESERVE/RELEASE a GOOD no-op.
    fn pr_excuses(&self, nexus: NexusId) -> Result<bool, PrError> {
        if self.reservation.is_some() {
            let reg = self.reg_of_nexus(nexus);
            let kind = self.reservation.map(|r| r.kind);
            if self.holds(reg)
                || (reg.is_some() && kind.is_some_and(|k| k.registrants_have_access()))
            {
                return Ok(true);
            }
        }
        if self.has_registrations() {
            return Err(PrError::Conflict);
        }
        Ok(false)
    }

    /// Ends the SPC-2 reservation if `nexus` holds it (nexus loss).
    pub fn clear_legacy_of(&mut self, nexus: NexusId) -> bool {
        if self.legacy == Some(nexus) {
            self.legacy = None;
            return true;
        }
        false
    }

    /// Ends any SPC-2 reservation (LU reset).
    pub fn clear_legacy(&mut self) -> bool {
        self.legacy.take().is_some()
    }

    /// The persistent part of the state as text: a header line, then one
    /// line per registration; the holder's line is marked.
    pub fn encode(&self) -> String {
        let mut s = format!(
            "vtgt-pr 1\ngeneration {}\naptpl {}\n",
            self.generation, self.aptpl as u8
        );
        if let Some(r) = self.reservation {
            s.push_str(&format!("reservation {}\n", r.kind.code()));
        }
        for g in &self.registrations {
            let holder = self
                .reservation
                .is_some_and(|r| !r.kind.all_registrants() && r.holder == g.id);
            let port = g.port.map(|p| p.to_string()).unwrap_or_else(|| "*".into());
            s.push_str(&format!(
                "reg {:016x} {} {} {}\n",
                g.key,
                port,
                if holder { "H" } else { "-" },
                escape(&g.initiator)
            ));
        }
        s
    }

    /// Parses [`encode`]'s output. Nexus identities and SPC-2 state are not
    /// part of it.
    pub fn decode(text: &str) -> Result<Reservations, String> {
        let mut lines = text.lines();
        if lines.next() != Some("vtgt-pr 1") {
            return Err("not a vtgt reservation file (version 1)".into());
        }
        let mut st = Reservations::default();
        let mut kind = None;
        let mut holder = None;
        for (n, line) in lines.enumerate() {
            let bad = || format!("line {}: cannot parse {line:?}", n + 2);
            let mut f = line.split(' ');
            match f.next() {
                Some("generation") => {
                    st.generation = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?
                }
                Some("aptpl") => st.aptpl = f.next() == Some("1"),
                Some("reservation") => {
                    kind = Some(
                        f.next()
                            .and_then(|v| v.parse().ok())
                            .and_then(PrType::from_code)
                            .ok_or_else(bad)?,
                    )
                }
                Some("reg") => {
                    let key = f
                        .next()
                        .and_then(|v| u64::from_str_radix(v, 16).ok())
                        .ok_or_else(bad)?;
                    let port = match f.next().ok_or_else(bad)? {
                        "*" => None,
                        p => Some(p.parse().map_err(|_| bad())?),
                    };
                    let h = f.next().ok_or_else(bad)? == "H";
                    let who = unescape(f.next().ok_or_else(bad)?).ok_or_else(bad)?;
                    if who.is_empty()
                        || who.len() > MAX_IDENTITY
                        || st.registrations.len() >= MAX_REGISTRATIONS
                    {
                        return Err(bad());
                    }
                    st.add(key, who, port);
                    if h {
                        holder = Some(st.next_id);
                    }
                }
                Some("") | None => {}
                Some(_) => return Err(bad()),
            }
        }
        if let Some(kind) = kind {
            match (kind.all_registrants(), holder) {
                (true, _) if st.has_registrations() => {
                    st.reservation = Some(Reservation { kind, holder: 0 })
                }
                (false, Some(h)) => st.reservation = Some(Reservation { kind, holder: h }),
                _ => {}
            }
        }
        Ok(st)
    }

    /// Loads the persistent state from `path`; a missing file is no state.
    pub fn load(path: &Path) -> io::Result<Reservations> {
        match fs::read_to_string(path) {
            Ok(t) => Reservations::decode(&t).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Reservations::default()),
            Err(e) => Err(e),
        }
    }

    /// Makes the state survive a crash when APTPL is set (temporary file,
    /// fsync, rename, fsync of the directory); without APTPL removes any
    /// saved state, so a restart starts with none.
    pub fn persist(&self, path: &Path) -> io::Result<()> {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        if !self.aptpl {
            match fs::remove_file(path) {
                Ok(()) => return sync_dir(dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        fs::create_dir_all(dir)?;
        crate::mirror::write_atomically(path, self.encode().as_bytes())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Identities are printable; anything else (and '%') is percent-encoded so a
/// line stays a line.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..0x7F).contains(&b) && b != b'%' {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02x}"));
        }
    }
    o
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NexusId = 1;
    const B: NexusId = 2;
    const C: NexusId = 3;

    fn state() -> Reservations {
        let mut r = Reservations::default();
        r.identify(A, ItNexus::new("iqn.a,i,0x000000000001", 1));
        r.identify(B, ItNexus::new("iqn.b,i,0x000000000002", 1));
        r.identify(C, ItNexus::new("iqn.c,i,0x000000000003", 2));
        r
    }

    fn register(r: &mut Reservations, n: NexusId, key: u64) -> Result<PrEffects, PrError> {
        r.apply(
            n,
            PrRequest::Register {
                key: 0,
                new_key: key,
                ignore_existing: false,
                all_ports: false,
                aptpl: false,
                also: vec![],
            },
        )
    }

    fn reserve(
        r: &mut Reservations,
        n: NexusId,
        key: u64,
        kind: PrType,
    ) -> Result<PrEffects, PrError> {
        r.apply(n, PrRequest::Reserve { key, kind })
    }

    const RO: Access = Access {
        read: true,
        write: false,
    };

    #[test]
    fn access_per_type() {
        // (type, registered non-holder, unregistered)
        let cases = [
            (PrType::WriteExclusive, RO, RO),
            (PrType::ExclusiveAccess, Access::NONE, Access::NONE),
            (PrType::WriteExclusiveRegistrantsOnly, Access::ALL, RO),
            (
                PrType::ExclusiveAccessRegistrantsOnly,
                Access::ALL,
                Access::NONE,
            ),
            (PrType::WriteExclusiveAllRegistrants, Access::ALL, RO),
            (
                PrType::ExclusiveAccessAllRegistrants,
                Access::ALL,
                Access::NONE,
            ),
        ];
        for (kind, reg, unreg) in cases {
            let mut r = state();
            register(&mut r, A, 0xA).unwrap();
            register(&mut r, B, 0xB).unwrap();
            reserve(&mut r, A, 0xA, kind).unwrap();
            assert_eq!(r.standing(A), Standing::Free, "{kind:?}");
            assert_eq!(r.standing(B).media(), reg, "{kind:?} registered");
            assert_eq!(r.standing(C).media(), unreg, "{kind:?} unregistered");
            assert_eq!(r.default_media(), unreg);
            let (key, k) = r.reservation().unwrap();
            assert_eq!(k, kind);
            assert_eq!(key, if kind.all_registrants() { 0 } else { 0xA });
            // Another type from a non-holder conflicts; the same type from
            // an all-registrants holder is a no-op.
            let again = reserve(&mut r, B, 0xB, kind);
            if kind.all_registrants() {
                assert!(again.is_ok());
            } else {
                assert_eq!(again, Err(PrError::Conflict));
            }
        }
    }

    #[test]
    fn register_rules_and_generation() {
        let mut r = state();
        // Unregistered with a non-zero key: conflict.
        assert_eq!(
            r.apply(
                A,
                PrRequest::Register {
                    key: 5,
                    new_key: 6,
                    ignore_existing: false,
                    all_ports: false,
                    aptpl: false,
                    also: vec![]
                }
            ),
            Err(PrError::Conflict)
        );
        // Unregistering while unregistered does nothing.
        let fx = register(&mut r, A, 0).unwrap();
        assert!(!fx.changed);
        assert_eq!(r.generation, 0);
        register(&mut r, A, 0xA).unwrap();
        assert_eq!(r.generation, 1);
        assert_eq!(r.key_of(A), Some(0xA));
        // Re-registering needs the current key...
        assert_eq!(register(&mut r, A, 0xAA), Err(PrError::Conflict));
        // ...unless existing keys are ignored.
        r.apply(
            A,
            PrRequest::Register {
                key: 0,
                new_key: 0xAA,
                ignore_existing: true,
                all_ports: false,
                aptpl: false,
                also: vec![],
            },
        )
        .unwrap();
        assert_eq!(r.keys(), vec![0xAA]);
        assert_eq!(r.generation, 2);
        // RESERVE and RELEASE leave the generation alone.
        reserve(&mut r, A, 0xAA, PrType::WriteExclusive).unwrap();
        assert_eq!(r.generation, 2);
        // Changing the holder's key keeps the reservation, with the new key.
        r.apply(
            A,
            PrRequest::Register {
                key: 0xAA,
                new_key: 0xAB,
                ignore_existing: false,
                all_ports: false,
                aptpl: false,
                also: vec![],
            },
        )
        .unwrap();
        assert_eq!(r.reservation(), Some((0xAB, PrType::WriteExclusive)));
        // A registration is per target port unless ALL_TG_PT.
        let mut c2 = r.clone();
        c2.identify(9, ItNexus::new("iqn.a,i,0x000000000001", 2));
        assert_eq!(c2.key_of(9), None);
    }

    #[test]
    fn unregistering_holder_releases_and_notifies() {
        let mut r = state();
        register(&mut r, A, 0xA).unwrap();
        register(&mut r, B, 0xB).unwrap();
        reserve(&mut r, A, 0xA, PrType::WriteExclusiveRegistrantsOnly).unwrap();
        let fx = r
            .apply(
                A,
                PrRequest::Register {
                    key: 0xA,
                    new_key: 0,
                    ignore_existing: false,
                    all_ports: false,
                    aptpl: false,
                    also: vec![],
                },
            )
            .unwrap();
        assert_eq!(r.reservation(), None);
        assert_eq!(fx.notices, vec![(B, Notice::ReservationsReleased)]);
        // All registrants: the reservation outlives its creator's
        // registration, and ends with the last registrant.
        let mut r = state();
        register(&mut r, A, 0xA).unwrap();
        register(&mut r, B, 0xB).unwrap();
        reserve(&mut r, A, 0xA, PrType::ExclusiveAccessAllRegistrants).unwrap();
        r.apply(
            A,
            PrRequest::Register {
                key: 0xA,
                new_key: 0,
                ignore_existing: false,
                all_ports: false,
                aptpl: false,
                also: vec![],
            },
        )
        .unwrap();
        assert_eq!(
            r.reservation(),
            Some((0, PrType::ExclusiveAccessAllRegistrants))
        );
        assert_eq!(r.standing(B), Standing::Free);
        r.apply(
            B,
            PrRequest::Register {
                key: 0xB,
                new_key: 0,
                ignore_existing: false,
                all_ports: false,
                aptpl: false,
                also: vec![],
            },
        )
        .unwrap();
        assert_eq!(r.reservation(), None);
    }

    #[test]
    fn release_rules() {
        let mut r = state();
        register(&mut r, A, 0xA).unwrap();
        register(&mut r, B, 0xB).unwrap();
        reserve(&mut r, A, 0xA, PrType::ExclusiveAccess).unwrap();
        // Unregistered: conflict; registered non-holder: no-op.
        assert_eq!(
            r.apply(
                C,
                PrRequest::Release {
                    key: 0,
                    kind: PrType::ExclusiveAccess
                }
            ),
            Err(PrError::Conflict)
        );
        let fx = r
            .apply(
                B,
                PrRequest::Release {
                    key: 0xB,
                    kind: PrType::ExclusiveAccess,
                },
            )
            .unwrap();
        assert!(fx.notices.is_empty());
        assert!(r.reservation().is_some());
        // Holder with the wrong type, or the wrong key.
        assert_eq!(
            r.apply(
                A,
                PrRequest::Release {
                    key: 0xA,
                    kind: PrType::WriteExclusive
                }
            ),
            Err(PrError::WrongReleaseType)
        );
        assert_eq!(
            r.apply(
                A,
                PrRequest::Release {
                    key: 0xB,
                    kind: PrType::ExclusiveAccess
                }
            ),
            Err(PrError::Conflict)
        );
        let fx = r
            .apply(
                A,
                PrRequest::Release {
                    key: 0xA,
                    kind: PrType::ExclusiveAccess,
                },
            )
            .unwrap();
        // Plain exclusive access: nobody is told.
        assert!(fx.notices.is_empty());
        assert_eq!(r.reservation(), None);
        assert_eq!(r.keys().len(), 2);
        // Registrants-only release tells the other registrants.
        reserve(&mut r, B, 0xB, PrType::WriteExclusiveRegistrantsOnly).unwrap();
        let fx = r
            .apply(
                B,
                PrRequest::Release {
                    key: 0xB,
                    kind: PrType::WriteExclusiveRegistrantsOnly,
                },
            )
            .unwrap();
        assert_eq!(fx.notices, vec![(A, Notice::ReservationsReleased)]);
    }

    #[test]
    fn clear_removes_everything() {
        let mut r = state();
        register(&mut r, A, 0xA).unwrap();
        register(&mut r, B, 0xB).unwrap();
        reserve(&mut r, A, 0xA, PrType::WriteExclusive).unwrap();
        let g = r.generation;
        assert_eq!(
            r.apply(C, PrRequest::Clear { key: 0 }),
            Err(PrError::Conflict)
        );
        let fx = r.apply(B, PrRequest::Clear { key: 0xB }).unwrap();
        assert_eq!(fx.notices, vec![(A, Notice::ReservationsPreempted)]);
        assert!(r.keys().is_empty());
        assert_eq!(r.reservation(), None);
        assert_eq!(r.generation, g + 1);
    }

    #[test]
    fn preempt_variants() {
        // No reservation: removes the victim's registration.
        let mut r = state();
        register(&mut r, A, 0xA).unwrap();
        register(&mut r, B, 0xB).unwrap();
        let g = r.generation;
        let fx = r
            .apply(
                B,
                PrRequest::Preempt {
                    key: 0xB,
                    victim: 0xA,
                    kind: PrType::ExclusiveAccess,
                    abort: false,
                },
            )
            .unwrap();
        assert_eq!(fx.notices, vec![(A, Notice::RegistrationsPreempted)]);
        assert_eq!(r.keys(), vec![0xB]);
        assert_eq!(r.generation, g + 1);
        assert_eq!(r.reservation(), None);
        // Unknown victim key: conflict. Zero key without reservation: invalid.
        assert_eq!(
            r.apply(
                B,
                PrRequest::Preempt {
                    key: 0xB,
                    victim: 0x77,
                    kind: PrType::ExclusiveAccess,
                    abort: false
                }
            ),
            Err(PrError::Conflict)
        );
        assert_eq!(
            r.apply(
                B,
                PrRequest::Preempt {
                    key: 0xB,
                    victim: 0,
                    kind: PrType::ExclusiveAccess,
                    abort: false
                }
            ),
            Err(PrError::ZeroKey)
        );

        // Preempting the holder takes over the reservation, with the new type,
        // and PREEMPT AND ABORT names the nexuses to abort.
        let mut r = state();
        register(&mut r, A, 0xA).unwrap();
        register(&mut r, B, 0xB).unwrap();
        register(&mut r, C, 0xC).unwrap();
        reserve(&mut r, A, 0xA, PrType::WriteExclusive).unwrap();
        let fx = r
            .apply(
                B,
                PrRequest::Preempt {
                    key: 0xB,
                    victim: 0xA,
                    kind: PrType::ExclusiveAccess,
                    abort: true,
                },
            )
            .unwrap();
        assert_eq!(r.reservation(), Some((0xB, PrType::ExclusiveAccess)));
        assert_eq!(fx.aborted, vec![A]);
        assert!(fx.notices.contains(&(A, Notice::RegistrationsPreempted)));
        assert!(fx.notices.contains(&(C, Notice::ReservationsReleased)));
        assert_eq!(r.standing(A).media(), Access::NONE);

        // All registrants, key 0: everyone else goes.
        let mut r = state();
        register(&mut r, A, 0xA).unwrap();
        register(&mut r, B, 0xB).unwrap();
        register(&mut r, C, 0xC).unwrap();
        reserve(&mut r, A, 0xA, PrType::WriteExclusiveAllRegistrants).unwrap();
        r.apply(
            C,
            PrRequest::Preempt {
                key: 0xC,
                victim: 0,
                kind: PrType::WriteExclusive,
                abort: false,
            },
        )
        .unwrap();
        assert_eq!(r.keys(), vec![0xC]);
        assert_eq!(r.reservation(), Some((0xC, PrType::WriteExclusive)));
    }

    #[test]
    fn register_and_move() {
        let mut r = state();
        register(&mut r, A, 0xA).unwrap();
        // Not reserved: conflict.
        let mv = |key, unregister| PrRequest::Move {
            key,
            new_key: 0xB0,
            to: ItNexus::new("iqn.b,i,0x000000000002", 1),
            unregister,
            aptpl: false,
        };
        assert_eq!(r.apply(A, mv(0xA, false)), Err(PrError::Conflict));
        reserve(&mut r, A, 0xA, PrType::ExclusiveAccess).unwrap();
        r.apply(A, mv(0xA, true)).unwrap();
        assert_eq!(r.reservation(), Some((0xB0, PrType::ExclusiveAccess)));
        assert!(r.is_holder(B));
        assert_eq!(r.key_of(A), None);
        // Moving to oneself is refused.
        assert_eq!(
            r.apply(
                B,
                PrRequest::Move {
                    key: 0xB0,
                    new_key: 1,
                    to: ItNexus::new("iqn.b,i,0x000000000002", 1),
                    unregister: false,
                    aptpl: false
                }
            ),
            Err(PrError::MoveToSelf)
        );
    }

    #[test]
    fn spec_i_pt_and_device_names() {
        let mut r = state();
        r.apply(
            A,
            PrRequest::Register {
                key: 0,
                new_key: 0x5,
                ignore_existing: false,
                all_ports: true,
                aptpl: false,
                also: vec!["iqn.b".into()],
            },
        )
        .unwrap();
        // A device name covers every port of that initiator, on any port
        // with ALL_TG_PT.
        assert_eq!(r.key_of(B), Some(0x5));
        r.identify(7, ItNexus::new("iqn.b,i,0x00000000ffff", 3));
        assert_eq!(r.key_of(7), Some(0x5));
        r.identify(8, ItNexus::new("iqn.bb,i,0x00000000ffff", 3));
        assert_eq!(r.key_of(8), None);
        // Naming a registered initiator again is refused, atomically.
        assert_eq!(
            r.apply(
                C,
                PrRequest::Register {
                    key: 0,
                    new_key: 0x6,
                    ignore_existing: false,
                    all_ports: false,
                    aptpl: false,
                    also: vec!["iqn.b,i,0x000000000002".into()],
                },
            ),
            Err(PrError::AlreadyRegistered)
        );
        assert_eq!(r.key_of(C), None);
    }

    #[test]
    fn legacy_reservations() {
        let mut r = state();
        assert_eq!(r.legacy_reserve(A), Ok(true));
        assert_eq!(r.legacy_reserve(A), Ok(false));
        assert_eq!(r.legacy_reserve(B), Err(PrError::Conflict));
        assert_eq!(r.standing(B), Standing::LegacyOther);
        assert_eq!(r.standing(B).media(), Access::NONE);
        assert_eq!(r.legacy_release(B), Ok(false));
        assert_eq!(r.legacy_holder(), Some(A));
        assert!(r.clear_legacy_of(A));
        assert_eq!(r.standing(B), Standing::Free);
        // Registrations make RESERVE conflict; a PR holder's is a no-op.
        register(&mut r, A, 0xA).unwrap();
        assert_eq!(r.legacy_reserve(B), Err(PrError::Conflict));
        reserve(&mut r, A, 0xA, PrType::WriteExclusive).unwrap();
        assert_eq!(r.legacy_reserve(A), Ok(false));
        assert_eq!(r.legacy_holder(), None);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut r = state();
        r.apply(
            A,
            PrRequest::Register {
                key: 0,
                new_key: 0xDEAD_BEEF,
                ignore_existing: false,
                all_ports: false,
                aptpl: true,
                also: vec![],
            },
        )
        .unwrap();
        register(&mut r, C, 0xC).unwrap();
        r.identify(4, ItNexus::new("iqn.odd name%,i,0x000000000004", 1));
        register(&mut r, 4, 0x4).unwrap();
        reserve(&mut r, C, 0xC, PrType::ExclusiveAccessRegistrantsOnly).unwrap();
        let text = r.encode();
        let mut d = Reservations::decode(&text).unwrap();
        assert_eq!(d.generation, r.generation);
        assert_eq!(d.keys(), r.keys());
        assert_eq!(d.reservation(), r.reservation());
        assert_eq!(d.full_status(), r.full_status());
        // The restored holder is recognised when its nexus comes back.
        d.identify(30, ItNexus::new("iqn.c,i,0x000000000003", 2));
        assert!(d.is_holder(30));
        assert!(Reservations::decode("garbage").is_err());
        assert!(Reservations::decode("vtgt-pr 1\nreg zz 1 - x\n").is_err());
    }

    #[test]
    fn persist_is_atomic_and_respects_aptpl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.pr");
        let mut r = state();
        r.apply(
            A,
            PrRequest::Register {
                key: 0,
                new_key: 9,
                ignore_existing: false,
                all_ports: false,
                aptpl: true,
                also: vec![],
            },
        )
        .unwrap();
        r.persist(&path).unwrap();
        assert_eq!(Reservations::load(&path).unwrap().keys(), vec![9]);
        assert!(!dir.path().join("v.pr.tmp").exists());
        r.aptpl = false;
        r.persist(&path).unwrap();
        assert!(!path.exists());
        assert!(Reservations::load(&path).unwrap().keys().is_empty());
    }
}
