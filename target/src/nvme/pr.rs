//! NVMe reservations: Reservation Register, Report, Acquire and Release
//! (NVMe base spec, reservations chapter) over the engine's persistent
//! reservation state, the same one SCSI PERSISTENT RESERVE uses, so one
//! volume exported over both protocols has one set of registrants and one
//! reservation.
//!
//! A host is known by its 128-bit Host Identifier. Its engine identity,
//! `nvme-hostid:<32 hex digits>`, can never equal an iSCSI name (those start
//! with `iqn.`, `eui.` or `naa.`), so a SCSI initiator and an NVMe host are
//! always distinct registrants. NVMe registrations belong to the host, not
//! to a path, so they cover every target port.

use bytes::Bytes;
use vtgt_engine::reservation::RegistrationStatus;
use vtgt_engine::{Access, ItNexus, PrError, PrRequest, PrType};
use vtgt_protocol::nvme::command::{nvm, sc, Sqe, Status};

use super::controller::Controller;
use super::queue::Reply;
use super::{Namespace, MAX_IO_BYTES};

/// Prefix of an NVMe host's engine identity.
pub const IDENTITY_PREFIX: &str = "nvme-hostid:";
/// The relative port in an NVMe identity: unused, as registrations cover
/// all ports.
pub const PORT: u16 = 0;
/// Reservation Report: header and per-registrant sizes of the extended
/// data structure.
pub const REPORT_HEADER: usize = 64;
pub const REPORT_ENTRY: usize = 64;
/// CNTLID reported for registrants: we use the dynamic controller model, so
/// a registrant is a host, not one controller (as Linux nvmet reports).
const CNTLID_DYNAMIC: u16 = 0xffff;

/// The engine identity of the host with `hostid`.
pub fn identity(hostid: &[u8; 16]) -> ItNexus {
    let hex: String = hostid.iter().map(|b| format!("{b:02x}")).collect();
    ItNexus::new(&format!("{IDENTITY_PREFIX}{hex}"), PORT)
}

/// The Host Identifier of an NVMe registrant; `None` for other protocols'.
pub fn host_id_of(identity: &str) -> Option<[u8; 16]> {
    let hex = identity.strip_prefix(IDENTITY_PREFIX)?;
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// NVMe reservation type codes 1-6.
pub fn pr_type(code: u8) -> Option<PrType> {
    Some(match code {
        1 => PrType::WriteExclusive,
        2 => PrType::ExclusiveAccess,
        3 => PrType::WriteExclusiveRegistrantsOnly,
        4 => PrType::ExclusiveAccessRegistrantsOnly,
        5 => PrType::WriteExclusiveAllRegistrants,
        6 => PrType::ExclusiveAccessAllRegistrants,
        _ => return None,
    })
}

pub fn type_code(t: PrType) -> u8 {
    match t {
        PrType::WriteExclusive => 1,
        PrType::ExclusiveAccess => 2,
        PrType::WriteExclusiveRegistrantsOnly => 3,
        PrType::ExclusiveAccessRegistrantsOnly => 4,
        PrType::WriteExclusiveAllRegistrants => 5,
        PrType::ExclusiveAccessAllRegistrants => 6,
    }
}

pub fn conflict() -> Status {
    Status::generic(sc::RESERVATION_CONFLICT)
}

fn invalid() -> Status {
    Status::generic(sc::INVALID_FIELD)
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    let mut a = [0u8; 8];
    a.copy_from_slice(b.get(at..at + 8)?);
    Some(u64::from_le_bytes(a))
}

fn pr_status(e: PrError) -> Status {
    match e {
        PrError::Conflict => conflict(),
        // The spec makes a release of another type Invalid Field in Command.
        PrError::WrongReleaseType
        | PrError::ZeroKey
        | PrError::AlreadyRegistered
        | PrError::MoveToSelf => invalid(),
        PrError::NoResources | PrError::Storage => Status::generic(sc::INTERNAL),
    }
}

/// Whether the reservations let `ctrl`'s host read (`write` false) or
/// write the namespace. The control path asks this itself: a fast-path
/// denial may only mean a notice is pending. Flush counts as a write, as
/// in Linux nvmet's command groups.
pub async fn check(ctrl: &Controller, ns: &Namespace, write: bool) -> Result<(), Status> {
    let a: Access = ns.entry.control.standing(ctrl.nexus).await.media();
    if (write && !a.write) || (!write && !a.read) {
        return Err(conflict());
    }
    Ok(())
}

/// Runs one reservation command on `ns`.
pub async fn execute(
    ctrl: &Controller,
    ns: &Namespace,
    sqe: &Sqe,
    data: &[u8],
    xfer: u32,
) -> Result<Reply, Status> {
    match sqe.opcode() {
        nvm::RESV_REGISTER => register(ctrl, ns, sqe, data).await,
        nvm::RESV_ACQUIRE => acquire(ctrl, ns, sqe, data).await,
        nvm::RESV_RELEASE => release(ctrl, ns, sqe, data).await,
        nvm::RESV_REPORT => report(ns, sqe, xfer).await,
        _ => Err(Status::generic(sc::INVALID_OPCODE)),
    }
}

async fn register(
    ctrl: &Controller,
    ns: &Namespace,
    sqe: &Sqe,
    data: &[u8],
) -> Result<Reply, Status> {
    let d10 = sqe.dw(10);
    let action = d10 & 7;
    let iekey = d10 & (1 << 3) != 0;
    // CPTPL: 00b no change, 10b clear, 11b set.
    let ptpl = match d10 >> 30 {
        0 => None,
        2 => Some(false),
        3 => Some(true),
        _ => return Err(invalid()),
    };
    let bad_len = Status::generic(sc::SGL_INVALID_DATA_LEN);
    let crkey = le64(data, 0).ok_or(bad_len)?;
    let nrkey = le64(data, 8).ok_or(bad_len)?;
    // Key 0 means "unregister" in the shared state, so no host may hold it.
    if action > 2 || (action != 1 && nrkey == 0) {
        return Err(invalid());
    }
    let me = ctrl.nexus;
    ns.entry
        .control
        .reservation_out_with(me, |r| {
            let aptpl = ptpl.unwrap_or(r.aptpl);
            let reg = |key, new_key, ignore_existing| PrRequest::Register {
                key,
                new_key,
                ignore_existing,
                all_ports: true,
                aptpl,
                also: Vec::new(),
            };
            Ok(Some(match (action, r.key_of(me)) {
                // Registering again with the same key succeeds unchanged.
                (0, Some(k)) if k == nrkey => match ptpl {
                    None => return Ok(None),
                    Some(_) => reg(k, k, false),
                },
                (0, Some(_)) => return Err(PrError::Conflict),
                (0, None) => reg(0, nrkey, false),
                (_, None) => return Err(PrError::Conflict),
                (1, Some(_)) => reg(crkey, 0, iekey),
                (_, Some(_)) => reg(crkey, nrkey, iekey),
            }))
        })
        .await
        .map_err(pr_status)?;
    Ok(Reply::ok())
}

async fn acquire(
    ctrl: &Controller,
    ns: &Namespace,
    sqe: &Sqe,
    data: &[u8],
) -> Result<Reply, Status> {
    let d10 = sqe.dw(10);
    let action = d10 & 7;
    // IEKEY is not defined for Acquire.
    if d10 & (1 << 3) != 0 {
        return Err(invalid());
    }
    let kind = pr_type((d10 >> 8) as u8).ok_or(invalid())?;
    let bad_len = Status::generic(sc::SGL_INVALID_DATA_LEN);
    let crkey = le64(data, 0).ok_or(bad_len)?;
    let prkey = le64(data, 8).ok_or(bad_len)?;
    let req = match action {
        0 => PrRequest::Reserve { key: crkey, kind },
        // Preempt and abort: our commands never wait on each other, so there
        // is nothing of the preempted hosts' to abort here; SCSI nexuses'
        // tasks are not aborted from the NVMe side either.
        1 | 2 => PrRequest::Preempt {
            key: crkey,
            victim: prkey,
            kind,
            abort: action == 2,
        },
        _ => return Err(invalid()),
    };
    ns.entry
        .control
        .reservation_out(ctrl.nexus, req)
        .await
        .map_err(pr_status)?;
    Ok(Reply::ok())
}

async fn release(
    ctrl: &Controller,
    ns: &Namespace,
    sqe: &Sqe,
    data: &[u8],
) -> Result<Reply, Status> {
    let d10 = sqe.dw(10);
    if d10 & (1 << 3) != 0 {
        return Err(invalid());
    }
    let crkey = le64(data, 0).ok_or(Status::generic(sc::SGL_INVALID_DATA_LEN))?;
    let req = match d10 & 7 {
        0 => PrRequest::Release {
            key: crkey,
            kind: pr_type((d10 >> 8) as u8).ok_or(invalid())?,
        },
        1 => PrRequest::Clear { key: crkey },
        _ => return Err(invalid()),
    };
    ns.entry
        .control
        .reservation_out(ctrl.nexus, req)
        .await
        .map_err(pr_status)?;
    Ok(Reply::ok())
}

/// Reservation Report, extended data structure only: on fabrics Host
/// Identifiers are 128 bits, which the regular structure cannot carry (the
/// spec's Host Identifier Inconsistent Format; Linux retries with EDS set).
async fn report(ns: &Namespace, sqe: &Sqe, xfer: u32) -> Result<Reply, Status> {
    if sqe.dw(11) & 1 == 0 {
        return Err(Status::generic(sc::HOST_ID_INCONSISTENT));
    }
    // NUMD is 0's based dwords; never build more than the host takes.
    let want = ((sqe.dw(10) as u64 + 1) * 4)
        .min(xfer as u64)
        .min(MAX_IO_BYTES as u64) as usize;
    let (gen, kind, ptpl, regs) = ns
        .entry
        .control
        .reservations(|r| {
            (
                r.generation,
                r.reservation().map(|(_, k)| k),
                r.aptpl,
                r.full_status(),
            )
        })
        .await;
    let d = encode_report(gen, kind, ptpl, &regs);
    Ok(Reply::data(Bytes::from(d).slice(
        ..want.min(REPORT_HEADER + regs.len() * REPORT_ENTRY),
    )))
}

/// The extended Reservation Status data structure. Registrants of other
/// protocols have no Host Identifier: theirs reads as zero.
pub fn encode_report(
    gen: u32,
    kind: Option<PrType>,
    ptpl: bool,
    regs: &[RegistrationStatus],
) -> Vec<u8> {
    let mut d = vec![0u8; REPORT_HEADER + regs.len() * REPORT_ENTRY];
    d[0..4].copy_from_slice(&gen.to_le_bytes());
    d[4] = kind.map(type_code).unwrap_or(0);
    let n = u16::try_from(regs.len()).unwrap_or(u16::MAX);
    d[5..7].copy_from_slice(&n.to_le_bytes());
    d[9] = ptpl as u8;
    for (i, r) in regs.iter().enumerate() {
        let e = &mut d[REPORT_HEADER + i * REPORT_ENTRY..][..REPORT_ENTRY];
        e[0..2].copy_from_slice(&CNTLID_DYNAMIC.to_le_bytes());
        e[2] = r.holds.is_some() as u8;
        e[8..16].copy_from_slice(&r.key.to_le_bytes());
        if let Some(id) = host_id_of(&r.initiator) {
            e[16..32].copy_from_slice(&id);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trip_and_types() {
        let id = [0xab; 16];
        let who = identity(&id);
        assert!(who.initiator.starts_with(IDENTITY_PREFIX));
        assert_eq!(host_id_of(&who.initiator), Some(id));
        assert_eq!(host_id_of("iqn.2026-01.test:init,i,0x000000000001"), None);
        for c in 1..=6 {
            assert_eq!(pr_type(c).map(type_code), Some(c));
        }
        assert!(pr_type(0).is_none() && pr_type(7).is_none());
    }

    #[test]
    fn report_layout() {
        let regs = vec![
            RegistrationStatus {
                key: 0x11,
                initiator: identity(&[7; 16]).initiator,
                port: None,
                holds: Some(PrType::WriteExclusive),
            },
            RegistrationStatus {
                key: 0x22,
                initiator: "iqn.x,i,0x000000000001".into(),
                port: Some(1),
                holds: None,
            },
        ];
        let d = encode_report(9, Some(PrType::WriteExclusive), true, &regs);
        assert_eq!(d.len(), 64 + 2 * 64);
        assert_eq!(&d[0..4], &9u32.to_le_bytes());
        assert_eq!(d[4], 1);
        assert_eq!(&d[5..7], &2u16.to_le_bytes());
        assert_eq!(d[9], 1);
        assert_eq!(d[64 + 2], 1);
        assert_eq!(&d[64 + 8..64 + 16], &0x11u64.to_le_bytes());
        assert_eq!(&d[64 + 16..64 + 32], &[7; 16]);
        assert_eq!(d[128 + 2], 0);
        assert_eq!(&d[128 + 8..128 + 16], &0x22u64.to_le_bytes());
        assert_eq!(&d[128 + 16..128 + 32], &[0; 16]);
    }
}
