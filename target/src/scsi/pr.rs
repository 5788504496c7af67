//! Reservations in SCSI terms: PERSISTENT RESERVE IN/OUT (SPC-4 6.15,
//! 6.16), RESERVE/RELEASE (SPC-2 7.21, 7.22) and which commands a
//! reservation makes conflict (SPC-4 5.13.1 table 45, SBC-3 4.17). The state
//! and its rules live in the engine (`vtgt_engine::reservation`); this module
//! encodes, decodes and classifies.

use vtgt_engine::reservation::{PrEffects, RegistrationStatus, MAX_IDENTITY};
use vtgt_engine::{ItNexus, NexusId, PrError, PrRequest, PrType, Standing};
use vtgt_protocol::scsi::cdb::{be16, be32, be64};
use vtgt_protocol::scsi::cdb::{op, sa};
use vtgt_protocol::scsi::sense::{Asc, Sense};

use super::lu::LogicalUnit;
use super::opcodes::CommandInfo;
use super::{status, ScsiCommand, ScsiResult};

/// PERSISTENT RESERVE IN service actions.
pub mod prin {
    pub const READ_KEYS: u16 = 0x00;
    pub const READ_RESERVATION: u16 = 0x01;
    pub const REPORT_CAPABILITIES: u16 = 0x02;
    pub const READ_FULL_STATUS: u16 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod prout {
    pub const REGISTER: u16 = 0x00;
    pub const RESERVE: u16 = 0x01;
    pub const RELEASE: u16 = 0x02;
    pub const CLEAR: u16 = 0x03;
    pub const PREEMPT: u16 = 0x04;
    pub const PREEMPT_AND_ABORT: u16 = 0x05;
    pub const REGISTER_AND_IGNORE: u16 = 0x06;
    pub const REGISTER_AND_MOVE: u16 = 0x07;
}

/// Longest PERSISTENT RESERVE OUT parameter list we accept: room for the
/// header and a few hundred TransportIDs.
pub const MAX_PARAM_LEN: u32 = 64 * 1024;

const PROTO_ISCSI: u8 = 0x5;
const INVALID_RELEASE: Asc = Asc(0x26, 0x04);
const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x55, 0x04);

/// RESERVATION CONFLICT: a status without sense data.
pub fn conflict() -> ScsiResult {
    ScsiResult {
        status: status::RESERVATION_CONFLICT,
        ..ScsiResult::default()
    }
}

/// The identity reservations know `cmd`'s nexus by. Without a transport
/// name (unit tests, other front ends) the nexus id stands in.
pub fn identity(cmd: &ScsiCommand<'_>) -> ItNexus {
    if cmd.initiator.is_empty() {
        ItNexus::new(&format!("nexus:{}", cmd.nexus), cmd.port.relative_id)
    } else if is_nvme_identity(cmd.initiator) {
        // Login does not restrict iSCSI names: one spelled like an NVMe
        // host's identity would otherwise share that host's registration.
        ItNexus::new(&format!("iscsi:{}", cmd.initiator), cmd.port.relative_id)
    } else {
        ItNexus::new(cmd.initiator, cmd.port.relative_id)
    }
}

fn is_nvme_identity(name: &str) -> bool {
    let p = crate::nvme::pr::IDENTITY_PREFIX;
    name.get(..p.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(p))
}

/// The PARAMETER LIST LENGTH of a PERSISTENT RESERVE OUT CDB.
pub fn param_len(cdb: &[u8]) -> u32 {
    be32(cdb, 5)
}

/// What a command does, for conflict checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Never conflicts with a persistent reservation.
    Allowed,
    /// Reservation commands follow their own rules.
    Reservation,
    /// Reads the medium.
    Read,
    /// Reads device state: allowed through write exclusive and to
    /// registrants (SPC-4 table 45: MODE SENSE, REPORT SUPPORTED ...).
    Inspect,
    /// Anything else may change the medium or the device.
    Write,
}

fn class(info: &CommandInfo) -> Class {
    match (info.opcode, info.sa) {
        (
            op::INQUIRY
            | op::REQUEST_SENSE
            | op::REPORT_LUNS
            | op::TEST_UNIT_READY
            | op::READ_CAPACITY_10
            | op::PERSISTENT_RESERVE_IN,
            _,
        ) => Class::Allowed,
        (op::SERVICE_ACTION_IN_16, Some(sa::READ_CAPACITY_16)) => Class::Allowed,
        // MAINTENANCE IN / REPORT TARGET PORT GROUPS.
        (op::MAINTENANCE_IN, Some(0x0A)) => Class::Allowed,
        // SERVICE ACTION IN(16) / GET LBA STATUS reads mapping state.
        (op::SERVICE_ACTION_IN_16, Some(0x12)) => Class::Read,
        (
            op::PERSISTENT_RESERVE_OUT
            | op::RESERVE_6
            | op::RESERVE_10
            | op::RELEASE_6
            | op::RELEASE_10,
            _,
        ) => Class::Reservation,
        (op::MODE_SENSE_6 | op::MODE_SENSE_10 | op::MAINTENANCE_IN, _) => Class::Inspect,
        (
            op::READ_6
            | op::READ_10
            | op::READ_12
            | op::READ_16
            | op::VERIFY_10
            | op::VERIFY_12
            | op::VERIFY_16
            | op::PRE_FETCH_10
            | op::PRE_FETCH_16,
            _,
        ) => Class::Read,
        _ => Class::Write,
    }
}

/// Whether the reservations make `cmd` (already admitted as `info`) a
/// RESERVATION CONFLICT.
pub async fn conflicts(lu: &LogicalUnit, cmd: &ScsiCommand<'_>, info: &CommandInfo) -> bool {
    let standing = lu.control().standing(cmd.nexus).await;
    match standing {
        Standing::Free => false,
        // SPC-2: only what SPC-2 7.21 exempts gets through; RELEASE from a
        // non-holder is a no-op.
        Standing::LegacyOther => !matches!(
            info.opcode,
            op::INQUIRY | op::REQUEST_SENSE | op::REPORT_LUNS | op::RELEASE_6 | op::RELEASE_10
        ),
        Standing::Other { kind, registered } => {
            let media = standing.media();
            match class(info) {
                Class::Allowed | Class::Reservation => false,
                Class::Read => !media.read,
                Class::Inspect => !registered && kind.exclusive_access(),
                Class::Write => !media.write,
            }
        }
    }
}

/// PERSISTENT RESERVE IN: data and allocation length.
pub async fn persistent_reserve_in(
    lu: &LogicalUnit,
    cmd: &ScsiCommand<'_>,
) -> Result<(Vec<u8>, usize), Sense> {
    let cdb = cmd.cdb;
    let action = (cdb.get(1).copied().unwrap_or(0) & 0x1F) as u16;
    let alloc = be16(cdb, 7) as usize;
    let data = lu
        .control()
        .reservations(|r| match action {
            prin::READ_KEYS => {
                let keys = r.keys();
                let mut d = Vec::with_capacity(8 + keys.len() * 8);
                d.extend_from_slice(&r.generation.to_be_bytes());
                d.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
                for k in keys {
                    d.extend_from_slice(&k.to_be_bytes());
                }
                Ok(d)
            }
            prin::READ_RESERVATION => {
                let mut d = r.generation.to_be_bytes().to_vec();
                match r.reservation() {
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                    Some((key, kind)) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0; 4]);
                        // Scope 0h (logical unit), then the type.
                        d.extend_from_slice(&[0, kind.code(), 0, 0]);
                    }
                }
                Ok(d)
            }
            prin::REPORT_CAPABILITIES => Ok(report_capabilities(r.aptpl).to_vec()),
            prin::READ_FULL_STATUS => {
                let mut body = Vec::new();
                for s in r.full_status() {
                    full_status_descriptor(&mut body, &s);
                }
                let mut d = r.generation.to_be_bytes().to_vec();
                d.extend_from_slice(&(body.len() as u32).to_be_bytes());
                d.extend_from_slice(&body);
                Ok(d)
            }
            _ => Err(Sense::invalid_cdb_field(1, Some(4))),
        })
        .await?;
    Ok((data, alloc))
}

/// REPORT CAPABILITIES (SPC-4 6.15.4).
fn report_capabilities(aptpl: bool) -> [u8; 8] {
    let mut d = [0u8; 8];
    d[1] = 8;
    // CRH (SPC-4 5.13.3 handling of RESERVE/RELEASE), SIP_C, ATP_C, PTPL_C.
    d[2] = 0x10 | 0x08 | 0x04 | 0x01;
    // TMV; ALLOW COMMANDS 100b: TEST UNIT READY and PERSISTENT RESERVE IN
    // pass write exclusive and exclusive access reservations; PTPL_A.
    d[3] = 0x80 | (0b100 << 4) | aptpl as u8;
    // Every type: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
    d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
    d[5] = 0x01;
    d
}

/// An iSCSI TransportID (SPC-4 7.6.4.6) for an identity: format 01b for an
/// initiator port ("name,i,0x<isid>"), 00b for a device name. The name is
/// NUL terminated and padded to a multiple of four, at least 20 bytes.
pub fn transport_id(identity: &str) -> Vec<u8> {
    let format = if identity.contains(",i,0x") {
        0x40
    } else {
        0x00
    };
    let len = (identity.len() + 1).div_ceil(4).max(5) * 4;
    let mut t = vec![format | PROTO_ISCSI, 0];
    t.extend_from_slice(&(len as u16).to_be_bytes());
    t.extend_from_slice(identity.as_bytes());
    t.resize(4 + len, 0);
    t
}

fn full_status_descriptor(out: &mut Vec<u8>, s: &RegistrationStatus) {
    let tid = transport_id(&s.initiator);
    out.extend_from_slice(&s.key.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push((s.port.is_none() as u8) << 1 | s.holds.is_some() as u8);
    out.push(s.holds.map(|k| k.code()).unwrap_or(0));
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&s.port.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&(tid.len() as u32).to_be_bytes());
    out.extend_from_slice(&tid);
}

/// Parses one iSCSI TransportID at `at` in the parameter list: the identity
/// (lower case) and the TransportID's length.
fn parse_transport_id(p: &[u8], at: usize) -> Result<(String, usize), Sense> {
    let bad = |off: usize| Sense::invalid_param_field(at + off, None);
    let hdr = p.get(at..at + 4).ok_or_else(|| bad(0))?;
    if hdr[0] & 0x0F != PROTO_ISCSI {
        return Err(Sense::invalid_param_field(at, Some(3)));
    }
    let format = hdr[0] >> 6;
    if format > 1 || hdr[0] & 0x30 != 0 {
        return Err(Sense::invalid_param_field(at, Some(7)));
    }
    let len = be16(hdr, 2) as usize;
    if len < 4 || !len.is_multiple_of(4) {
        return Err(bad(2));
    }
    let body = p.get(at + 4..at + 4 + len).ok_or_else(|| bad(2))?;
    let end = body.iter().position(|&b| b == 0).ok_or_else(|| bad(4))?;
    let name = std::str::from_utf8(&body[..end])
        .map_err(|_| bad(4))?
        .to_ascii_lowercase();
    // A TransportID names an iSCSI port, never an NVMe host.
    let valid = !name.is_empty()
        && !is_nvme_identity(&name)
        && name.len() <= MAX_IDENTITY
        && name.bytes().all(|b| (0x21..0x7F).contains(&b))
        && match format {
            0 => !name.contains(','),
            _ => name
                .split_once(",i,0x")
                .is_some_and(|(n, isid)| !n.is_empty() && isid.len() == 12),
        };
    if !valid {
        return Err(bad(4));
    }
    Ok((name, 4 + len))
}

fn pr_sense(e: PrError) -> Result<ScsiResult, Sense> {
    match e {
        PrError::Conflict => Ok(conflict()),
        PrError::WrongReleaseType => Err(Sense::illegal(INVALID_RELEASE)),
        PrError::ZeroKey => Err(Sense::invalid_param_field(8, None)),
        PrError::AlreadyRegistered => Err(Sense::invalid_param_field(20, Some(3))),
        PrError::MoveToSelf => Err(Sense::invalid_param_field(24, None)),
        PrError::NoResources => Err(Sense::illegal(INSUFFICIENT_REGISTRATION_RESOURCES)),
        PrError::Storage => Err(Sense::new(
            vtgt_protocol::scsi::sense::key::HARDWARE_ERROR,
            Asc::INTERNAL_TARGET_FAILURE,
        )),
    }
}

/// PERSISTENT RESERVE OUT. Returns the result and, for PREEMPT AND ABORT,
/// the nexuses whose tasks the transport aborts.
pub async fn persistent_reserve_out(
    lu: &LogicalUnit,
    cmd: &ScsiCommand<'_>,
) -> Result<ScsiResult, Sense> {
    let cdb = cmd.cdb;
    let action = (cdb.get(1).copied().unwrap_or(0) & 0x1F) as u16;
    let scope = cdb.get(2).copied().unwrap_or(0) >> 4;
    let type_code = cdb.get(2).copied().unwrap_or(0) & 0x0F;
    let len = param_len(cdb);
    if len > MAX_PARAM_LEN {
        return Err(Sense::invalid_cdb_field(5, None));
    }
    let len = len as usize;
    let p = &cmd.data_out;
    if len < 24 || p.len() < len {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let p = &p[..len];
    let key = be64(p, 0);
    let sa_key = be64(p, 8);
    let flags = p[20];
    let spec_i_pt = flags & 0x08 != 0;
    let all_tg_pt = flags & 0x04 != 0;
    let aptpl = flags & 0x01 != 0;
    // Types matter for RESERVE, RELEASE and PREEMPT only, which work on the
    // whole logical unit.
    let kind = || -> Result<PrType, Sense> {
        if scope != 0 {
            return Err(Sense::invalid_cdb_field(2, Some(7)));
        }
        PrType::from_code(type_code).ok_or(Sense::invalid_cdb_field(2, Some(3)))
    };
    let basic_len = |extended: bool| -> Result<(), Sense> {
        if !extended && len != 24 {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        Ok(())
    };
    let req = match action {
        prout::REGISTER | prout::REGISTER_AND_IGNORE => {
            let ignore = action == prout::REGISTER_AND_IGNORE;
            if ignore && spec_i_pt {
                return Err(Sense::invalid_param_field(20, Some(3)));
            }
            basic_len(spec_i_pt)?;
            let mut also = Vec::new();
            if spec_i_pt {
                if len < 28 {
                    return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
                }
                let total = be32(p, 24) as usize;
                if 28 + total != len {
                    return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
                }
                let mut at = 28;
                while at < len {
                    let (name, n) = parse_transport_id(p, at)?;
                    if !also.contains(&name) {
                        also.push(name);
                    }
                    at += n;
                }
            }
            PrRequest::Register {
                key,
                new_key: sa_key,
                ignore_existing: ignore,
                all_ports: all_tg_pt,
                aptpl,
                also,
            }
        }
        prout::RESERVE => {
            basic_len(false)?;
            PrRequest::Reserve { key, kind: kind()? }
        }
        prout::RELEASE => {
            basic_len(false)?;
            PrRequest::Release { key, kind: kind()? }
        }
        prout::CLEAR => {
            basic_len(false)?;
            PrRequest::Clear { key }
        }
        prout::PREEMPT | prout::PREEMPT_AND_ABORT => {
            basic_len(false)?;
            PrRequest::Preempt {
                key,
                victim: sa_key,
                kind: kind()?,
                abort: action == prout::PREEMPT_AND_ABORT,
            }
        }
        prout::REGISTER_AND_MOVE => {
            // Its own layout (SPC-4 6.16.4): UNREG and APTPL in byte 17, the
            // relative target port, then one TransportID.
            let unregister = p[17] & 0x02 != 0;
            let aptpl = p[17] & 0x01 != 0;
            let port = be16(p, 18);
            let tid_len = be32(p, 20) as usize;
            if 24 + tid_len > len {
                return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
            }
            let (name, _) = parse_transport_id(p, 24)?;
            if !name.contains(",i,0x") {
                return Err(Sense::invalid_param_field(24, Some(7)));
            }
            if port == 0 {
                return Err(Sense::invalid_param_field(18, None));
            }
            PrRequest::Move {
                key,
                new_key: sa_key,
                to: ItNexus::new(&name, port),
                unregister,
                aptpl,
            }
        }
        _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
    };
    match lu.control().reservation_out(cmd.nexus, req).await {
        Ok(PrEffects { aborted, .. }) => Ok(ScsiResult {
            aborted_nexuses: aborted,
            ..ScsiResult::good()
        }),
        Err(e) => pr_sense(e),
    }
}

/// RESERVE (6) and (10), without third-party or extents (the usage maps
/// refuse those bits).
pub async fn reserve(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    match lu.control().legacy_reserve(cmd.nexus).await {
        Ok(()) => Ok(ScsiResult::good()),
        Err(e) => pr_sense(e),
    }
}

/// RELEASE (6) and (10): a no-op unless the nexus holds the reservation.
pub async fn release(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    match lu.control().legacy_release(cmd.nexus).await {
        Ok(()) => Ok(ScsiResult::good()),
        Err(e) => pr_sense(e),
    }
}

/// An I_T nexus ended (logout, connection loss): its SPC-2 reservation on
/// this LU is released.
pub async fn nexus_lost(lu: &LogicalUnit, nexus: NexusId) {
    // Its medium removal prevention ends with it too (SPC-4 6.13).
    lu.clear_prevent(nexus);
    lu.control().nexus_lost(nexus).await;
}
