//! Reservations through the SCSI layer: every PERSISTENT RESERVE service
//! action, RESERVE/RELEASE, the conflict table and the unit attentions.

use std::sync::Arc;

use bytes::Bytes;
use vtgt_engine::{Exposure, FaultReason, LuControl, MemBackend, NexusId, Volume};
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::pr::{prin, prout};
use super::tests::{assert_good as good, sense};
use super::*;
use vtgt_protocol::scsi::cdb::{be32, be64};

const A: NexusId = 11;
const B: NexusId = 12;
const C: NexusId = 13;

fn initiator(n: NexusId) -> &'static str {
    match n {
        A => "iqn.2026-11.test:a,i,0x40000000000a",
        B => "iqn.2026-11.test:b,i,0x40000000000b",
        _ => "iqn.2026-11.test:c,i,0x40000000000c",
    }
}

fn identity() -> LuIdentity {
    LuIdentity {
        vendor: "VTGT".into(),
        product: "vdisk".into(),
        revision: "0001".into(),
        serial: "sn".into(),
        naa_id: 1,
        target_name: "iqn.2026-11.test:t".into(),
        relative_port: 1,
        port_group: 1,
    }
}

fn new_lu() -> Arc<LogicalUnit> {
    let vol = Volume::simple("pr", Arc::new(MemBackend::new(64 * 512).unwrap()), 512);
    LogicalUnit::new(0, LuControl::new(Exposure::new(vol)), identity())
}

async fn run(lu: &LogicalUnit, n: NexusId, cdb: &[u8], data: Vec<u8>) -> ScsiResult {
    let cmd = ScsiCommand {
        cdb,
        edtl: data.len() as u32,
        read: data.is_empty(),
        write: !data.is_empty(),
        data_out: Bytes::from(data),
        nexus: n,
        luns: &[0],
        port: TargetPort::default(),
        initiator: initiator(n),
    };
    execute(lu, cmd).await
}

fn prout_cdb(sa: u16, kind: u8, len: u32) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5F;
    c[1] = sa as u8;
    c[2] = kind;
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn params(key: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags;
    p
}

async fn pro(lu: &LogicalUnit, n: NexusId, sa: u16, kind: u8, key: u64, sark: u64) -> ScsiResult {
    run(lu, n, &prout_cdb(sa, kind, 24), params(key, sark, 0)).await
}

async fn pri(lu: &LogicalUnit, n: NexusId, sa: u16, alloc: u16) -> ScsiResult {
    let mut c = [0u8; 10];
    c[0] = 0x5E;
    c[1] = sa as u8;
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    run(lu, n, &c, Vec::new()).await
}

fn conflict(r: &ScsiResult) {
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    assert!(r.sense.is_none());
}

const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const TUR: [u8; 6] = [0; 6];
const MODE_SENSE6: [u8; 6] = [0x1A, 0, 0x3F, 0, 255, 0];

async fn read_ok(lu: &LogicalUnit, n: NexusId) -> bool {
    let r = run(lu, n, &READ10, Vec::new()).await;
    if r.status == status::RESERVATION_CONFLICT {
        return false;
    }
    good(&r);
    true
}

async fn write_ok(lu: &LogicalUnit, n: NexusId) -> bool {
    let r = run(lu, n, &WRITE10, vec![7u8; 512]).await;
    if r.status == status::RESERVATION_CONFLICT {
        return false;
    }
    good(&r);
    true
}

#[tokio::test]
async fn read_keys_and_reservation_encoding() {
    let lu = new_lu();
    let r = pri(&lu, A, prin::READ_KEYS, 1024).await;
    good(&r);
    assert_eq!(&r.data_in[..], &[0u8; 8]);
    good(&pro(&lu, A, prout::REGISTER, 0, 0, 0x1111).await);
    good(&pro(&lu, B, prout::REGISTER_AND_IGNORE, 0, 0, 0x2222).await);
    let r = pri(&lu, A, prin::READ_KEYS, 1024).await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(be32(d, 0), 2, "generation");
    assert_eq!(be32(d, 4), 16);
    assert_eq!(be64(d, 8), 0x1111);
    assert_eq!(be64(d, 16), 0x2222);
    // Truncated to the header; the length still counts every key.
    let r = pri(&lu, A, prin::READ_KEYS, 8).await;
    assert_eq!(r.data_in.len(), 8);
    assert_eq!(be32(&r.data_in, 4), 16);
    // READ RESERVATION: none, then one.
    let r = pri(&lu, A, prin::READ_RESERVATION, 1024).await;
    assert_eq!(be32(&r.data_in, 4), 0);
    assert_eq!(r.data_in.len(), 8);
    good(&pro(&lu, A, prout::RESERVE, 0x03, 0x1111, 0).await);
    let r = pri(&lu, B, prin::READ_RESERVATION, 1024).await;
    let d = &r.data_in;
    assert_eq!(be32(d, 0), 2, "RESERVE leaves the generation alone");
    assert_eq!(be32(d, 4), 16);
    assert_eq!(be64(d, 8), 0x1111);
    assert_eq!(d[21], 0x03);
    // Service actions beyond 3 are invalid.
    let s = sense(&pri(&lu, A, 4, 100).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(4)));
}

#[tokio::test]
async fn report_capabilities() {
    let lu = new_lu();
    let r = pri(&lu, A, prin::REPORT_CAPABILITIES, 100).await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(d.len(), 8);
    assert_eq!(u16::from_be_bytes([d[0], d[1]]), 8);
    // CRH, SIP_C, ATP_C, PTPL_C.
    assert_eq!(d[2], 0x1D);
    // TMV, ALLOW COMMANDS 100b, PTPL_A clear.
    assert_eq!(d[3], 0xC0);
    assert_eq!(&d[4..6], &[0xEA, 0x01]);
}

#[tokio::test]
async fn read_full_status_and_spec_i_pt() {
    let lu = new_lu();
    // A registers itself and, with SPEC_I_PT, initiator port C.
    let tid = super::pr::transport_id(initiator(C));
    let mut p = params(0, 0xAB, 0x08);
    p.extend_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    let r = run(&lu, A, &prout_cdb(prout::REGISTER, 0, p.len() as u32), p).await;
    good(&r);
    good(&pro(&lu, A, prout::RESERVE, 0x01, 0xAB, 0).await);
    // C is registered before it ever sent a command.
    good(&pro(&lu, C, prout::REGISTER, 0, 0xAB, 0xCD).await);
    let r = pri(&lu, B, prin::READ_FULL_STATUS, 4096).await;
    good(&r);
    let d = &r.data_in;
    let total = be32(d, 4) as usize;
    assert_eq!(d.len(), 8 + total);
    let mut at = 8;
    let mut seen = Vec::new();
    while at < d.len() {
        let key = be64(d, at);
        let holder = d[at + 12] & 1 != 0;
        let port = u16::from_be_bytes([d[at + 18], d[at + 19]]);
        let tlen = be32(d, at + 20) as usize;
        let t = &d[at + 24..at + 24 + tlen];
        assert_eq!(t[0], 0x45, "iSCSI initiator port TransportID");
        assert_eq!(tlen % 4, 0);
        let name_end = 4 + t[4..].iter().position(|&b| b == 0).unwrap();
        let name = std::str::from_utf8(&t[4..name_end]).unwrap().to_string();
        seen.push((key, holder, port, name));
        at += 24 + tlen;
    }
    assert_eq!(
        seen,
        vec![
            (0xAB, true, 1, initiator(A).to_string()),
            (0xCD, false, 1, initiator(C).to_string()),
        ]
    );
    // SPEC_I_PT with REGISTER AND IGNORE EXISTING KEY is refused.
    let r = run(
        &lu,
        B,
        &prout_cdb(prout::REGISTER_AND_IGNORE, 0, 24),
        params(0, 1, 0x08),
    )
    .await;
    assert_eq!(sense(&r), Sense::invalid_param_field(20, Some(3)));
    // A malformed TransportID (wrong protocol) is an invalid parameter.
    let mut p = params(0, 0x1, 0x08);
    let mut bad = super::pr::transport_id(initiator(B));
    bad[0] = 0x41;
    p.extend_from_slice(&(bad.len() as u32).to_be_bytes());
    p.extend_from_slice(&bad);
    let r = run(&lu, B, &prout_cdb(prout::REGISTER, 0, p.len() as u32), p).await;
    assert_eq!(sense(&r).asc, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
}

#[tokio::test]
async fn parameter_and_cdb_errors() {
    let lu = new_lu();
    // Basic service actions need exactly 24 bytes.
    let r = run(&lu, A, &prout_cdb(prout::REGISTER, 0, 20), vec![0; 20]).await;
    assert_eq!(sense(&r).asc, Asc::PARAMETER_LIST_LENGTH_ERROR);
    let r = run(&lu, A, &prout_cdb(prout::REGISTER, 0, 28), vec![0; 28]).await;
    assert_eq!(sense(&r).asc, Asc::PARAMETER_LIST_LENGTH_ERROR);
    good(&pro(&lu, A, prout::REGISTER, 0, 0, 5).await);
    // Bad type, bad scope.
    let s = sense(&pro(&lu, A, prout::RESERVE, 0x02, 5, 0).await);
    assert_eq!(s, Sense::invalid_cdb_field(2, Some(3)));
    let s = sense(&pro(&lu, A, prout::RESERVE, 0x21, 5, 0).await);
    assert_eq!(s, Sense::invalid_cdb_field(2, Some(7)));
    // Unknown service action.
    let s = sense(&pro(&lu, A, 0x08, 0x01, 5, 0).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(4)));
    // Oversized parameter list.
    let mut c = prout_cdb(prout::REGISTER, 0, 0);
    c[5..9].copy_from_slice(&(1u32 << 20).to_be_bytes());
    let s = sense(&run(&lu, A, &c, vec![0; 24]).await);
    assert_eq!(s, Sense::invalid_cdb_field(5, None));
    // Release with another type: INVALID RELEASE OF PERSISTENT RESERVATION.
    good(&pro(&lu, A, prout::RESERVE, 0x01, 5, 0).await);
    let s = sense(&pro(&lu, A, prout::RELEASE, 0x03, 5, 0).await);
    assert_eq!((s.key, s.asc), (key::ILLEGAL_REQUEST, Asc(0x26, 0x04)));
    // Wrong key, unregistered nexus: conflict.
    conflict(&pro(&lu, A, prout::RELEASE, 0x01, 6, 0).await);
    conflict(&pro(&lu, B, prout::RESERVE, 0x01, 0, 0).await);
    conflict(&pro(&lu, B, prout::REGISTER, 0, 9, 1).await);
}

/// SPC-4 table 45 / SBC-3 4.17 for each type: (type, registered B can read,
/// write, unregistered C can read, write, C may MODE SENSE).
#[tokio::test]
async fn conflict_table_per_type() {
    let table = [
        (0x01, true, false, true, false, true),
        (0x03, false, false, false, false, false),
        (0x05, true, true, true, false, true),
        (0x06, true, true, false, false, false),
        (0x07, true, true, true, false, true),
        (0x08, true, true, false, false, false),
    ];
    for (kind, br, bw, cr, cw, cms) in table {
        let lu = new_lu();
        good(&pro(&lu, A, prout::REGISTER, 0, 0, 0xA).await);
        good(&pro(&lu, B, prout::REGISTER, 0, 0, 0xB).await);
        good(&pro(&lu, A, prout::RESERVE, kind, 0xA, 0).await);
        assert!(
            read_ok(&lu, A).await && write_ok(&lu, A).await,
            "holder, type {kind}"
        );
        assert_eq!(read_ok(&lu, B).await, br, "registered read, type {kind}");
        assert_eq!(write_ok(&lu, B).await, bw, "registered write, type {kind}");
        assert_eq!(read_ok(&lu, C).await, cr, "unregistered read, type {kind}");
        assert_eq!(
            write_ok(&lu, C).await,
            cw,
            "unregistered write, type {kind}"
        );
        let ms = run(&lu, C, &MODE_SENSE6, Vec::new()).await;
        assert_eq!(ms.status == status::GOOD, cms, "MODE SENSE, type {kind}");
        // Always allowed.
        for cdb in [
            &TUR[..],
            &[0x12, 0, 0, 0, 36, 0],
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            good(&run(&lu, C, cdb, Vec::new()).await);
        }
        good(&pri(&lu, C, prin::READ_KEYS, 100).await);
        // SYNCHRONIZE CACHE changes the medium's state: a write.
        let sc = run(&lu, C, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], Vec::new()).await;
        assert_eq!(
            sc.status == status::GOOD,
            cw,
            "SYNCHRONIZE CACHE, type {kind}"
        );
    }
}

#[tokio::test]
async fn fast_path_enforces_and_faults() {
    let lu = new_lu();
    good(&pro(&lu, A, prout::REGISTER, 0, 0, 0xA).await);
    good(&run(&lu, B, &TUR, Vec::new()).await);
    good(&pro(&lu, A, prout::RESERVE, 0x01, 0xA, 0).await);
    let vol = lu.volume().clone();
    let hits = vol.counters.fast_path_hits();
    let faults = vol.counters.count(FaultReason::Permission);
    assert!(write_ok(&lu, A).await);
    assert!(read_ok(&lu, B).await);
    assert_eq!(
        vol.counters.fast_path_hits(),
        hits + 2,
        "holder write, B read"
    );
    assert!(!write_ok(&lu, B).await);
    assert_eq!(vol.counters.count(FaultReason::Permission), faults + 1);
    // Released: B writes on the fast path again.
    good(&pro(&lu, A, prout::RELEASE, 0x01, 0xA, 0).await);
    assert!(write_ok(&lu, B).await);
    assert_eq!(vol.counters.fast_path_hits(), hits + 3);
}

async fn ua(lu: &LogicalUnit, n: NexusId) -> Option<Asc> {
    let r = run(lu, n, &TUR, Vec::new()).await;
    if r.status == status::GOOD {
        return None;
    }
    let s = sense(&r);
    assert_eq!(s.key, key::UNIT_ATTENTION);
    Some(s.asc)
}

#[tokio::test]
async fn unit_attentions() {
    let lu = new_lu();
    for n in [A, B, C] {
        good(&pro(&lu, n, prout::REGISTER, 0, 0, n).await);
    }
    // RELEASE of a registrants-only reservation: the others are told.
    good(&pro(&lu, A, prout::RESERVE, 0x05, A, 0).await);
    good(&pro(&lu, A, prout::RELEASE, 0x05, A, 0).await);
    assert_eq!(ua(&lu, A).await, None);
    assert_eq!(ua(&lu, B).await, Some(Asc::RESERVATIONS_RELEASED));
    assert_eq!(ua(&lu, B).await, None);
    assert_eq!(ua(&lu, C).await, Some(Asc::RESERVATIONS_RELEASED));
    // PREEMPT: the preempted registrant learns it; C is told the
    // reservation changed type.
    good(&pro(&lu, A, prout::RESERVE, 0x01, A, 0).await);
    good(&pro(&lu, B, prout::PREEMPT, 0x03, B, A).await);
    assert_eq!(ua(&lu, A).await, Some(Asc::REGISTRATIONS_PREEMPTED));
    assert_eq!(ua(&lu, C).await, Some(Asc::RESERVATIONS_RELEASED));
    assert_eq!(ua(&lu, B).await, None);
    // A, no longer registered, now conflicts under exclusive access.
    conflict(&run(&lu, A, &READ10, Vec::new()).await);
    // CLEAR: every other registrant gets RESERVATIONS PREEMPTED.
    good(&pro(&lu, C, prout::CLEAR, 0, C, 0).await);
    assert_eq!(ua(&lu, B).await, Some(Asc::RESERVATIONS_PREEMPTED));
    assert_eq!(ua(&lu, C).await, None);
    assert_eq!(ua(&lu, A).await, None, "A was no longer registered");
    assert!(read_ok(&lu, A).await);
}

#[tokio::test]
async fn preempt_and_abort_names_nexuses() {
    let lu = new_lu();
    good(&pro(&lu, A, prout::REGISTER, 0, 0, 0xA).await);
    good(&pro(&lu, B, prout::REGISTER, 0, 0, 0xB).await);
    good(&pro(&lu, A, prout::RESERVE, 0x03, 0xA, 0).await);
    let r = pro(&lu, B, prout::PREEMPT_AND_ABORT, 0x03, 0xB, 0xA).await;
    good(&r);
    assert_eq!(r.aborted_nexuses, vec![A]);
    let r = pri(&lu, B, prin::READ_RESERVATION, 100).await;
    assert_eq!(be64(&r.data_in, 8), 0xB);
}

#[tokio::test]
async fn register_and_move() {
    let lu = new_lu();
    good(&pro(&lu, A, prout::REGISTER, 0, 0, 0xA).await);
    good(&pro(&lu, A, prout::RESERVE, 0x01, 0xA, 0).await);
    let tid = super::pr::transport_id(initiator(B));
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&0xAu64.to_be_bytes());
    p[8..16].copy_from_slice(&0xB0u64.to_be_bytes());
    p[17] = 0x02; // UNREG
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    let r = run(
        &lu,
        A,
        &prout_cdb(prout::REGISTER_AND_MOVE, 0, p.len() as u32),
        p,
    )
    .await;
    good(&r);
    let r = pri(&lu, A, prin::READ_RESERVATION, 100).await;
    assert_eq!(be64(&r.data_in, 8), 0xB0);
    let r = pri(&lu, A, prin::READ_KEYS, 100).await;
    assert_eq!(be32(&r.data_in, 4), 8, "A unregistered");
    assert!(!write_ok(&lu, A).await);
    assert!(write_ok(&lu, B).await);
}

#[tokio::test]
async fn reserve6_release6() {
    let lu = new_lu();
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    let reserve10 = [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    good(&run(&lu, A, &reserve6, Vec::new()).await);
    good(&run(&lu, A, &reserve10, Vec::new()).await);
    conflict(&run(&lu, B, &reserve6, Vec::new()).await);
    // RELEASE from a non-holder is a no-op; INQUIRY passes; anything else
    // conflicts, PR commands included.
    good(&run(&lu, B, &release6, Vec::new()).await);
    good(&run(&lu, B, &[0x12, 0, 0, 0, 36, 0], Vec::new()).await);
    conflict(&run(&lu, B, &MODE_SENSE6, Vec::new()).await);
    conflict(&run(&lu, B, &TUR, Vec::new()).await);
    conflict(&pri(&lu, B, prin::READ_KEYS, 100).await);
    assert!(!read_ok(&lu, B).await);
    good(&run(&lu, A, &MODE_SENSE6, Vec::new()).await);
    assert!(write_ok(&lu, A).await);
    // Third-party reservations are not supported.
    let s = sense(&run(&lu, A, &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], Vec::new()).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(4)));
    // LUN reset releases it.
    lun_reset(&lu, B).await;
    let _ = ua(&lu, B).await;
    assert!(read_ok(&lu, B).await);
    good(&run(&lu, B, &reserve6, Vec::new()).await);
    // So does the loss of the holder's nexus.
    super::pr::nexus_lost(&lu, B).await;
    let _ = ua(&lu, A).await;
    assert!(write_ok(&lu, A).await);
    // Registrations make RESERVE conflict (SPC-4 5.13.3).
    good(&pro(&lu, C, prout::REGISTER, 0, 0, 0xC).await);
    conflict(&run(&lu, A, &reserve6, Vec::new()).await);
    conflict(&run(&lu, A, &release6, Vec::new()).await);
    // ... but the persistent reservation holder's RESERVE is a GOOD no-op.
    good(&pro(&lu, C, prout::RESERVE, 0x01, 0xC, 0).await);
    good(&run(&lu, C, &reserve6, Vec::new()).await);
    assert!(!write_ok(&lu, A).await);
}

#[tokio::test]
async fn persistent_reservations_survive_lu_reset() {
    let lu = new_lu();
    good(&pro(&lu, A, prout::REGISTER, 0, 0, 0xA).await);
    good(&pro(&lu, A, prout::RESERVE, 0x03, 0xA, 0).await);
    lun_reset(&lu, A).await;
    let _ = ua(&lu, B).await;
    assert!(!read_ok(&lu, B).await);
}

#[tokio::test]
async fn opcodes_report_reservation_commands() {
    let lu = new_lu();
    // One command, with service action: PERSISTENT RESERVE OUT / REGISTER.
    let r = run(
        &lu,
        A,
        &[0xA3, 0x0C, 0x02, 0x5F, 0x00, 0x00, 0, 0, 1, 0, 0, 0],
        Vec::new(),
    )
    .await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(d[1] & 0x07, 0x03);
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 10);
    assert_eq!(
        &d[4..14],
        &[0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]
    );
    // PERSISTENT RESERVE IN / READ FULL STATUS.
    let r = run(
        &lu,
        A,
        &[0xA3, 0x0C, 0x02, 0x5E, 0x00, 0x03, 0, 0, 1, 0, 0, 0],
        Vec::new(),
    )
    .await;
    assert_eq!(
        &r.data_in[4..14],
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]
    );
    // RESERVE(6) has no service action.
    let r = run(
        &lu,
        A,
        &[0xA3, 0x0C, 0x01, 0x16, 0, 0, 0, 0, 1, 0, 0, 0],
        Vec::new(),
    )
    .await;
    assert_eq!(&r.data_in[4..10], &[0x16, 0, 0, 0, 0, 0x04]);
    // The full list names all of them.
    let r = run(
        &lu,
        A,
        &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        Vec::new(),
    )
    .await;
    let d = &r.data_in;
    let mut found = Vec::new();
    let mut at = 4;
    while at + 8 <= d.len() {
        found.push((d[at], u16::from_be_bytes([d[at + 2], d[at + 3]])));
        at += 8;
    }
    for op in [0x16, 0x17, 0x56, 0x57] {
        assert!(found.contains(&(op, 0)), "{op:#x}");
    }
    for sa in 0..4 {
        assert!(found.contains(&(0x5E, sa)));
    }
    for sa in 0..8 {
        assert!(found.contains(&(0x5F, sa)));
    }
}

#[tokio::test]
async fn aptpl_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.pr");
    let mk = || async {
        let vol = Volume::simple("pr", Arc::new(MemBackend::new(64 * 512).unwrap()), 512);
        let cp = LuControl::with_reservation_file(Exposure::new(vol), &path)
            .await
            .unwrap();
        LogicalUnit::new(0, cp, identity())
    };
    let lu = mk().await;
    // APTPL set on REGISTER: the state is saved.
    good(
        &run(
            &lu,
            A,
            &prout_cdb(prout::REGISTER, 0, 24),
            params(0, 0xA, 0x01),
        )
        .await,
    );
    good(&pro(&lu, A, prout::RESERVE, 0x03, 0xA, 0).await);
    drop(lu);
    let lu = mk().await;
    // Before anyone is identified, the fast path already refuses I/O.
    let fp = lu.control().exposure().clone();
    assert!(fp.admit(99, vtgt_engine::IoKind::Read, 0, 1).is_err());
    let r = pri(&lu, B, prin::READ_RESERVATION, 100).await;
    assert_eq!(be64(&r.data_in, 8), 0xA);
    assert!(!read_ok(&lu, B).await);
    let r = pri(&lu, B, prin::REPORT_CAPABILITIES, 100).await;
    assert_eq!(r.data_in[3] & 1, 1, "PTPL_A");
    assert!(
        read_ok(&lu, A).await,
        "the holder is known by name after restart"
    );
    // Registering again without APTPL drops the saved state.
    good(
        &run(
            &lu,
            A,
            &prout_cdb(prout::REGISTER, 0, 24),
            params(0xA, 0xA2, 0),
        )
        .await,
    );
    drop(lu);
    let lu = mk().await;
    let r = pri(&lu, B, prin::READ_KEYS, 100).await;
    assert_eq!(be32(&r.data_in, 4), 0);
}
