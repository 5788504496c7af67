//! Asymmetric logical unit access (SPC-4 5.16): target port groups, their
//! access states, REPORT TARGET PORT GROUPS and SET TARGET PORT GROUPS.
//!
//! A nexus is bound to the port it logged in through, so the fast path's
//! per-nexus access state can enforce a group's state: nexuses on a standby
//! group get no fast-path access (the control path publishes that), and the
//! control path answers their media commands with NOT READY.

use std::collections::HashMap;

use parking_lot::RwLock;
use vtgt_engine::{NexusId, Notice};
use vtgt_protocol::scsi::cdb::be32;
use vtgt_protocol::scsi::cdb::op;
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::lu::LogicalUnit;
use super::{ScsiCommand, TargetPort};

/// MAINTENANCE IN / REPORT TARGET PORT GROUPS and MAINTENANCE OUT / SET
/// TARGET PORT GROUPS.
pub const MAINTENANCE_OUT: u8 = 0xA4;
pub const SA_REPORT_TPG: u16 = 0x0A;
pub const SA_SET_TPG: u16 = 0x0A;

/// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
pub const TARGET_PORT_IN_STANDBY: Asc = Asc(0x04, 0x0B);

/// An asymmetric access state we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessState {
    ActiveOptimized = 0,
    ActiveNonOptimized = 1,
    Standby = 2,
}

impl AccessState {
    fn from_code(c: u8) -> Option<Self> {
        match c & 0x0F {
            0 => Some(Self::ActiveOptimized),
            1 => Some(Self::ActiveNonOptimized),
            2 => Some(Self::Standby),
            _ => None,
        }
    }

    /// The configuration spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active-optimized" => Some(Self::ActiveOptimized),
            "active-non-optimized" => Some(Self::ActiveNonOptimized),
            "standby" => Some(Self::Standby),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Group {
    id: u16,
    state: AccessState,
    /// STATUS CODE: 01h after SET TARGET PORT GROUPS.
    status: u8,
    ports: Vec<u16>,
}

/// Per-LU ALUA state.
#[derive(Debug, Default)]
pub struct Alua {
    groups: RwLock<Vec<Group>>,
    nexus_ports: RwLock<HashMap<NexusId, TargetPort>>,
}

impl Alua {
    /// Declares the target ports and each group's initial state (groups not
    /// in `states` start active/optimized).
    pub fn configure(&self, ports: &[TargetPort], states: &[(u16, AccessState)]) {
        let mut g = self.groups.write();
        g.clear();
        for p in ports {
            add_port(&mut g, *p);
        }
        for (id, st) in states {
            match g.iter_mut().find(|x| x.id == *id) {
                Some(x) => x.state = *st,
                None => g.push(Group {
                    id: *id,
                    state: *st,
                    status: 0,
                    ports: Vec::new(),
                }),
            }
        }
        g.sort_by_key(|x| x.id);
    }

    pub fn state_of(&self, group: u16) -> AccessState {
        self.groups
            .read()
            .iter()
            .find(|g| g.id == group)
            .map(|g| g.state)
            .unwrap_or(AccessState::ActiveOptimized)
    }
}

fn add_port(g: &mut Vec<Group>, p: TargetPort) {
    match g.iter_mut().find(|x| x.id == p.group) {
        Some(x) => {
            if !x.ports.contains(&p.relative_id) {
                x.ports.push(p.relative_id);
                x.ports.sort_unstable();
            }
        }
        None => {
            g.push(Group {
                id: p.group,
                state: AccessState::ActiveOptimized,
                status: 0,
                ports: vec![p.relative_id],
            });
            g.sort_by_key(|x| x.id);
        }
    }
}

/// Records which port a nexus uses; the first time, a nexus on a standby
/// group loses fast-path access before its first command runs there.
pub async fn note_nexus(lu: &LogicalUnit, nexus: NexusId, port: TargetPort) {
    let alua = lu.alua();
    if alua.nexus_ports.read().get(&nexus) == Some(&port) {
        return;
    }
    {
        let mut g = alua.groups.write();
        if !g
            .iter()
            .any(|x| x.id == port.group && x.ports.contains(&port.relative_id))
        {
            add_port(&mut g, port);
        }
    }
    alua.nexus_ports.write().insert(nexus, port);
    let standby = alua.state_of(port.group) == AccessState::Standby;
    lu.control().set_blocked(nexus, standby).await;
}

/// Commands a standby port still processes (SPC-4 5.16.2.4.4).
fn standby_allows(opcode: u8) -> bool {
    matches!(
        opcode,
        op::INQUIRY
            | op::REPORT_LUNS
            | op::REQUEST_SENSE
            | op::MODE_SENSE_6
            | op::MODE_SENSE_10
            | op::MODE_SELECT_6
            | op::MODE_SELECT_10
            | op::MAINTENANCE_IN
            | MAINTENANCE_OUT
            // LOG SELECT/SENSE, RECEIVE/SEND DIAGNOSTIC, PERSISTENT RESERVE
            // IN/OUT, READ/WRITE BUFFER.
            | 0x4C
            | 0x4D
            | 0x1C
            | 0x1D
            | 0x5E
            | 0x5F
            | 0x3B
            | 0x3C
    )
}

/// NOT READY for a command the port's state does not allow.
pub fn check_access(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<(), Sense> {
    let opcode = cmd.cdb.first().copied().unwrap_or(0);
    if lu.alua().state_of(cmd.port.group) == AccessState::Standby && !standby_allows(opcode) {
        return Err(Sense::new(key::NOT_READY, TARGET_PORT_IN_STANDBY));
    }
    Ok(())
}

/// REPORT TARGET PORT GROUPS: length-only or extended header format.
pub fn report(lu: &LogicalUnit, cdb: &[u8]) -> Result<(Vec<u8>, usize), Sense> {
    let format = cdb[1] >> 5;
    if format > 1 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    let alloc = be32(cdb, 6) as usize;
    let mut out = vec![0u8; 4];
    if format == 1 {
        // Extended header; implicit transitions are immediate.
        out.extend_from_slice(&[0x10, 0, 0, 0]);
    }
    for g in lu.alua().groups.read().iter() {
        out.push(g.state as u8);
        // Supported states: standby, active/non-optimized, active/optimized.
        out.push(0x04 | 0x02 | 0x01);
        out.extend_from_slice(&g.id.to_be_bytes());
        out.push(0);
        out.push(g.status);
        out.push(0);
        out.push(g.ports.len().min(255) as u8);
        for p in g.ports.iter().take(255) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    let n = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&n.to_be_bytes());
    Ok((out, alloc))
}

/// SET TARGET PORT GROUPS: validates every descriptor, applies them, moves
/// each nexus's fast-path access with its group, and tells the other
/// nexuses with ASYMMETRIC ACCESS STATE CHANGED.
pub async fn set(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<u32, Sense> {
    let len = be32(cmd.cdb, 6) as usize;
    if len == 0 {
        return Ok(0);
    }
    let p = &cmd.data_out[..cmd.data_out.len().min(len)];
    if p.len() < 4 || !(p.len() - 4).is_multiple_of(4) {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let alua = lu.alua();
    let mut changes = Vec::new();
    {
        let groups = alua.groups.read();
        for (i, d) in p[4..].chunks(4).enumerate() {
            let at = 4 + i * 4;
            let st = AccessState::from_code(d[0])
                .filter(|_| d[0] & 0xF0 == 0)
                .ok_or(Sense::invalid_param_field(at, Some(3)))?;
            let id = u16::from_be_bytes([d[2], d[3]]);
            if !groups.iter().any(|g| g.id == id) {
                return Err(Sense::invalid_param_field(at + 2, None));
            }
            changes.push((id, st));
        }
    }
    let mut changed = false;
    {
        let mut groups = alua.groups.write();
        for (id, st) in &changes {
            if let Some(g) = groups.iter_mut().find(|g| g.id == *id) {
                changed |= g.state != *st;
                g.state = *st;
                g.status = 0x01;
            }
        }
    }
    let nexuses: Vec<(NexusId, TargetPort)> = alua
        .nexus_ports
        .read()
        .iter()
        .map(|(n, p)| (*n, *p))
        .collect();
    for (n, port) in nexuses {
        let standby = alua.state_of(port.group) == AccessState::Standby;
        lu.control().set_blocked(n, standby).await;
    }
    if changed {
        lu.control()
            .raise_all(Notice::AsymmetricAccessStateChanged, Some(cmd.nexus))
            .await;
    }
    Ok(len as u32)
}
