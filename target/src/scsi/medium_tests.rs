//! Unit tests for SANITIZE and for removable media (START STOP UNIT LOEJ,
//! PREVENT ALLOW MEDIUM REMOVAL).

use std::sync::Arc;

use bytes::Bytes;
use vtgt_engine::{Exposure, LuControl, MemBackend, NexusId, Volume};
use vtgt_protocol::scsi::sense::{key, Asc, FieldPointer, Sense};

use super::sanitize::{self, Operation};
use super::tests::{assert_good, sense};
use super::*;

const BLOCKS: u64 = 1024;
const BS: usize = 512;

fn identity() -> LuIdentity {
    LuIdentity {
        vendor: "VTGT".into(),
        product: "vdisk".into(),
        revision: "0001".into(),
        serial: "sn-0077".into(),
        naa_id: 0x0123_4567_89AB_CDEF,
        target_name: "iqn.2026-11.org.example:t1".into(),
        relative_port: 1,
        port_group: 1,
    }
}

fn new_lu() -> Arc<LogicalUnit> {
    let vol = Volume::simple(
        "m",
        Arc::new(MemBackend::new(BLOCKS * BS as u64).unwrap()),
        BS as u32,
    );
    LogicalUnit::new(0, LuControl::new(Exposure::new(vol)), identity())
}

fn removable_lu() -> Arc<LogicalUnit> {
    let lu = new_lu();
    lu.set_removable(true);
    lu
}

async fn exec(lu: &LogicalUnit, cdb: &[u8], nexus: NexusId, data: Vec<u8>) -> ScsiResult {
    execute(
        lu,
        ScsiCommand {
            cdb,
            edtl: data.len() as u32,
            read: data.is_empty(),
            write: !data.is_empty(),
            data_out: Bytes::from(data),
            nexus,
            luns: &[0],
            port: TargetPort::default(),
            initiator: "",
        },
    )
    .await
}

async fn run(lu: &LogicalUnit, cdb: &[u8]) -> ScsiResult {
    exec(lu, cdb, 1, Vec::new()).await
}

fn sanitize_cdb(b1: u8, param_len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = sanitize::SANITIZE;
    c[1] = b1;
    c[7..9].copy_from_slice(&param_len.to_be_bytes());
    c
}

/// An OVERWRITE parameter list.
fn overwrite_params(b0: u8, pattern: &[u8]) -> Vec<u8> {
    let mut p = vec![b0, 0];
    p.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    p.extend_from_slice(pattern);
    p
}

async fn write_all(lu: &LogicalUnit, byte: u8) {
    lu.volume()
        .write(0, Bytes::from(vec![byte; BLOCKS as usize * BS]), false)
        .await
        .unwrap();
}

async fn read_blocks(lu: &LogicalUnit, lba: u64, n: u64) -> Vec<u8> {
    lu.volume().read(lba, n).await.unwrap().to_vec()
}

const READ_10_LBA0: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const TUR: [u8; 6] = [0; 6];

fn invalid_cdb(s: &Sense, byte: usize, bit: Option<u8>) {
    assert_eq!(s.key, key::ILLEGAL_REQUEST);
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
    assert_eq!(s.field, Some(FieldPointer::cdb(byte, bit)));
}

#[tokio::test]
async fn sanitize_overwrite_writes_the_pattern_everywhere() {
    let lu = new_lu();
    write_all(&lu, b'a').await;
    let pattern = [0xAA, 0x55, 0x01];
    let params = overwrite_params(0x01, &pattern);
    let cdb = sanitize_cdb(sanitize::SA_OVERWRITE as u8, params.len() as u16);
    assert_good(&exec(&lu, &cdb, 1, params).await);
    // The pattern restarts in every block.
    let want = sanitize::pattern_block(&pattern, BS, false);
    assert_eq!(&want[..4], &[0xAA, 0x55, 0x01, 0xAA]);
    assert_eq!(read_blocks(&lu, 0, 1).await, want);
    assert_eq!(read_blocks(&lu, BLOCKS - 1, 1).await, want);
    assert!(!lu.sanitize_state().running());
    assert_good(&run(&lu, &TUR).await);
}

#[tokio::test]
async fn sanitize_overwrite_invert_alternates_passes() {
    let lu = new_lu();
    // INVERT, two passes: the second (last) pass writes the inverse.
    let params = overwrite_params(0x80 | 0x02, &[0x0F]);
    let cdb = sanitize_cdb(sanitize::SA_OVERWRITE as u8, params.len() as u16);
    assert_good(&exec(&lu, &cdb, 1, params).await);
    assert_eq!(read_blocks(&lu, 7, 1).await, vec![0xF0; BS]);
    // Three passes end on the pattern itself.
    let params = overwrite_params(0x80 | 0x03, &[0x0F]);
    assert_good(&exec(&lu, &cdb, 1, params).await);
    assert_eq!(read_blocks(&lu, 7, 1).await, vec![0x0F; BS]);
}

#[test]
fn sanitize_overwrite_parameter_list_checks() {
    let ok = overwrite_params(0x01, &[1, 2, 3, 4]);
    assert_eq!(
        sanitize::parse_overwrite(512, 8, &ok).unwrap(),
        Operation::Overwrite {
            passes: 1,
            invert: false,
            pattern: vec![1, 2, 3, 4]
        }
    );
    // Parameter list lengths 0..=4 and over a block plus 4.
    for len in [0u16, 1, 4, 517] {
        let s = sanitize::parse_overwrite(512, len, &[0u8; 600]).unwrap_err();
        assert_eq!(s, Sense::invalid_cdb_field(7, None), "length {len}");
    }
    // No pass, an empty pattern, a pattern longer than a block, and one
    // that disagrees with the parameter list length.
    let mut zero_passes = overwrite_params(0x00, &[0u8; 512]);
    zero_passes.truncate(516);
    let mut empty = vec![0x01, 0, 0, 0];
    empty.resize(516, 0);
    let mut long = vec![0x01, 0, 0x02, 0x04];
    long.resize(516, 0);
    for p in [&zero_passes, &empty, &long] {
        let s = sanitize::parse_overwrite(512, 516, p).unwrap_err();
        assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
    }
    // TEST other than 00b is an invalid parameter list field.
    let test = overwrite_params(0x21, &[1]);
    let s = sanitize::parse_overwrite(512, 5, &test).unwrap_err();
    assert_eq!(s, Sense::invalid_param_field(0, Some(6)));
    // A short data-out.
    let s = sanitize::parse_overwrite(512, 8, &ok[..6]).unwrap_err();
    assert_eq!(s.asc, Asc::PARAMETER_LIST_LENGTH_ERROR);
}

#[tokio::test]
async fn sanitize_block_and_crypto_erase_deallocate() {
    for sa in [sanitize::SA_BLOCK_ERASE, sanitize::SA_CRYPTO_ERASE] {
        let lu = new_lu();
        write_all(&lu, b'a').await;
        assert_good(&run(&lu, &sanitize_cdb(sa as u8, 0)).await);
        assert_eq!(read_blocks(&lu, 0, 2).await, vec![0; 2 * BS]);
        assert_eq!(read_blocks(&lu, BLOCKS - 1, 1).await, vec![0; BS]);
        // A parameter list is not allowed.
        let s = sense(&exec(&lu, &sanitize_cdb(sa as u8, 8), 1, vec![0; 8]).await);
        invalid_cdb(&s, 7, None);
    }
}

#[tokio::test]
async fn sanitize_refuses_bad_service_actions_and_reserved_bits() {
    let lu = new_lu();
    for sa in [0x00u8, 0x04, 0x10, 0x1E] {
        let s = sense(&run(&lu, &sanitize_cdb(sa, 0)).await);
        invalid_cdb(&s, 1, Some(4));
    }
    // Reserved bit 6 of byte 1, and reserved bytes 2..=6.
    let s = sense(&run(&lu, &sanitize_cdb(0x40 | 0x02, 0)).await);
    invalid_cdb(&s, 1, Some(6));
    let mut c = sanitize_cdb(0x02, 0);
    c[4] = 4;
    let s = sense(&run(&lu, &c).await);
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
    // Reported, with its service actions, by REPORT SUPPORTED OPCODES.
    for sa in [
        sanitize::SA_OVERWRITE,
        sanitize::SA_BLOCK_ERASE,
        sanitize::SA_CRYPTO_ERASE,
        sanitize::SA_EXIT_FAILURE_MODE,
    ] {
        assert!(opcodes::lookup(sanitize::SANITIZE, Some(sa)).is_some());
    }
}

#[tokio::test]
async fn sanitize_exit_failure_mode() {
    let lu = new_lu();
    let efm = sanitize::SA_EXIT_FAILURE_MODE as u8;
    assert_good(&run(&lu, &sanitize_cdb(efm, 0)).await);
    let s = sense(&exec(&lu, &sanitize_cdb(efm, 8), 1, vec![0; 8]).await);
    invalid_cdb(&s, 7, None);
}

#[tokio::test]
async fn sanitize_on_write_protected_lu_is_data_protect() {
    let lu = new_lu();
    let mut m = lu.mode();
    m.swp = true;
    lu.set_mode(m);
    let s = sense(&run(&lu, &sanitize_cdb(sanitize::SA_BLOCK_ERASE as u8, 0)).await);
    assert_eq!((s.key, s.asc), (key::DATA_PROTECT, Asc::WRITE_PROTECTED));
}

#[tokio::test]
async fn sanitize_in_progress_blocks_commands_and_reports_progress() {
    let lu = new_lu();
    // 512 KiB at 64 KiB/s: about 8 s, far longer than the test.
    lu.set_sanitize_rate(64 << 10);
    let params = overwrite_params(0x01, &[0x11]);
    let cdb = sanitize_cdb(0x80 | sanitize::SA_OVERWRITE as u8, params.len() as u16);
    // IMMED: GOOD at once, the overwrite goes on.
    assert_good(&exec(&lu, &cdb, 1, params.clone()).await);
    assert!(lu.sanitize_state().running());
    for c in [&TUR[..], &READ_10_LBA0[..]] {
        let s = sense(&run(&lu, c).await);
        assert_eq!((s.key, s.asc), (key::NOT_READY, Asc::SANITIZE_IN_PROGRESS));
        assert!(s.progress.is_some());
    }
    // Another nexus, and a second SANITIZE, are refused the same way.
    let s = sense(&exec(&lu, &cdb, 2, params).await);
    assert_eq!(s.asc, Asc::SANITIZE_IN_PROGRESS);
    // INQUIRY and REPORT LUNS still work; REQUEST SENSE reports progress.
    assert_good(&run(&lu, &[0x12, 0, 0, 0, 36, 0]).await);
    assert_good(&run(&lu, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]).await);
    let r = run(&lu, &[0x03, 0, 0, 0, 18, 0]).await;
    assert_good(&r);
    let s = Sense::parse(&r.data_in).unwrap();
    assert_eq!((s.key, s.asc), (key::NOT_READY, Asc::SANITIZE_IN_PROGRESS));
    assert!(s.progress.is_some());
    // LOGICAL UNIT RESET does not stop it.
    lun_reset(&lu, 1).await;
    assert!(lu.sanitize_state().running());
}

#[test]
fn progress_indication_round_trips_in_both_formats() {
    let s = Sense::new(key::NOT_READY, Asc::SANITIZE_IN_PROGRESS).with_progress(0x4000);
    let fixed = s.to_fixed();
    assert_eq!(&fixed[15..18], &[0x80, 0x40, 0x00]);
    assert_eq!(Sense::parse(&fixed).unwrap().progress, Some(0x4000));
    let desc = s.to_descriptor();
    assert_eq!(Sense::parse(&desc).unwrap().progress, Some(0x4000));
}

#[tokio::test]
async fn inquiry_reports_rmb_only_when_removable() {
    let inq = [0x12, 0, 0, 0, 36, 0];
    let r = run(&new_lu(), &inq).await;
    assert_eq!(r.data_in[1] & 0x80, 0);
    let r = run(&removable_lu(), &inq).await;
    assert_eq!(r.data_in[1] & 0x80, 0x80);
}

fn start_stop(immed: bool, pc: u8, loej: bool, start: bool) -> [u8; 6] {
    [
        0x1B,
        immed as u8,
        0,
        0,
        (pc << 4) | ((loej as u8) << 1) | start as u8,
        0,
    ]
}

const PREVENT: [u8; 6] = [0x1E, 0, 0, 0, 1, 0];
const ALLOW: [u8; 6] = [0x1E, 0, 0, 0, 0, 0];

#[tokio::test]
async fn eject_and_load() {
    let lu = removable_lu();
    assert_good(&run(&lu, &start_stop(true, 0, true, false)).await);
    assert!(!lu.medium_present());
    for c in [
        &TUR[..],
        &READ_10_LBA0[..],
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
    ] {
        let s = sense(&run(&lu, c).await);
        assert_eq!((s.key, s.asc), (key::NOT_READY, Asc::MEDIUM_NOT_PRESENT));
    }
    // A write through the fast path too.
    let w = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let s = sense(&exec(&lu, &w, 1, vec![0; BS]).await);
    assert_eq!(s.asc, Asc::MEDIUM_NOT_PRESENT);
    // INQUIRY and MODE SENSE need no medium; REQUEST SENSE tells why.
    assert_good(&run(&lu, &[0x12, 0, 0, 0, 36, 0]).await);
    assert_good(&run(&lu, &[0x1A, 0, 0x3F, 0, 255, 0]).await);
    let r = run(&lu, &[0x03, 0, 0, 0, 18, 0]).await;
    assert_eq!(
        Sense::parse(&r.data_in).unwrap().asc,
        Asc::MEDIUM_NOT_PRESENT
    );
    // Ejecting again is fine; loading brings it back.
    assert_good(&run(&lu, &start_stop(false, 0, true, false)).await);
    assert_good(&run(&lu, &start_stop(false, 0, true, true)).await);
    assert_good(&run(&lu, &TUR).await);
    assert_good(&run(&lu, &READ_10_LBA0).await);
}

#[tokio::test]
async fn power_conditions_and_no_loej_leave_the_medium() {
    let lu = removable_lu();
    for pc in 1..16 {
        assert_good(&run(&lu, &start_stop(true, pc, true, false)).await);
        assert!(lu.medium_present(), "power condition {pc}");
    }
    for (immed, start) in [(false, false), (false, true), (true, false), (true, true)] {
        assert_good(&run(&lu, &start_stop(immed, 0, false, start)).await);
        assert!(lu.medium_present());
    }
    // A fixed LU has nothing to eject, and refuses reserved conditions.
    let fixed = new_lu();
    assert_good(&run(&fixed, &start_stop(false, 0, true, false)).await);
    assert!(fixed.medium_present());
    assert_good(&run(&fixed, &TUR).await);
    let s = sense(&run(&fixed, &start_stop(false, 4, false, false)).await);
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
}

#[tokio::test]
async fn prevent_blocks_eject_and_load_from_every_nexus() {
    let lu = removable_lu();
    assert_good(&exec(&lu, &PREVENT, 1, vec![]).await);
    for nexus in [1, 2] {
        let s = sense(&exec(&lu, &start_stop(false, 0, true, false), nexus, vec![]).await);
        assert_eq!(
            (s.key, s.asc),
            (key::ILLEGAL_REQUEST, Asc::MEDIUM_REMOVAL_PREVENTED)
        );
    }
    assert!(lu.medium_present());
    // Nexus 2 allowing removal does not lift nexus 1's prevention.
    assert_good(&exec(&lu, &ALLOW, 2, vec![]).await);
    assert!(lu.removal_prevented());
    assert_good(&exec(&lu, &ALLOW, 1, vec![]).await);
    assert_good(&run(&lu, &start_stop(false, 0, true, false)).await);
    // Prevention while ejected blocks loading too.
    assert_good(&run(&lu, &PREVENT).await);
    let s = sense(&run(&lu, &start_stop(false, 0, true, true)).await);
    assert_eq!(s.asc, Asc::MEDIUM_REMOVAL_PREVENTED);
    assert_good(&run(&lu, &ALLOW).await);
    assert_good(&run(&lu, &start_stop(false, 0, true, true)).await);
    // PREVENT 10b and 11b (obsolete) are invalid.
    let s = sense(&run(&lu, &[0x1E, 0, 0, 0, 2, 0]).await);
    invalid_cdb(&s, 4, Some(1));
}

#[tokio::test]
async fn prevention_ends_with_nexus_loss_and_resets() {
    let lu = removable_lu();
    assert_good(&exec(&lu, &PREVENT, 1, vec![]).await);
    assert_good(&exec(&lu, &PREVENT, 2, vec![]).await);
    pr::nexus_lost(&lu, 1).await;
    assert!(lu.removal_prevented(), "nexus 2 still prevents");
    pr::nexus_lost(&lu, 2).await;
    assert!(!lu.removal_prevented());
    assert_good(&exec(&lu, &PREVENT, 1, vec![]).await);
    lun_reset(&lu, 1).await;
    assert!(!lu.removal_prevented());
    // The reset's unit attention, then the eject works.
    let s = sense(&run(&lu, &TUR).await);
    assert_eq!(s.key, key::UNIT_ATTENTION);
    assert_good(&run(&lu, &start_stop(false, 0, true, false)).await);
    assert!(!lu.medium_present());
}
