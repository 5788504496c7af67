use std::sync::Arc;

use bytes::Bytes;
use vtgt_engine::{Exposure, LuControl, MemBackend, NexusId, Notice, Volume};
use vtgt_protocol::scsi::sense::{key, Asc, FieldPointer, Sense};

use super::*;

const BLOCKS: u64 = 1024;

fn identity() -> LuIdentity {
    LuIdentity {
        vendor: "VTGT".into(),
        product: "vdisk".into(),
        revision: "0001".into(),
        serial: "sn-0042".into(),
        naa_id: 0x0123_4567_89AB_CDEF,
        target_name: "iqn.2026-11.org.example:t1".into(),
        relative_port: 3,
        port_group: 7,
    }
}

fn new_lu() -> Arc<LogicalUnit> {
    let vol = Volume::simple("t", Arc::new(MemBackend::new(BLOCKS * 512).unwrap()), 512);
    LogicalUnit::new(0, LuControl::new(Exposure::new(vol)), identity())
}

fn cmd<'a>(cdb: &'a [u8], nexus: NexusId, data: Vec<u8>) -> ScsiCommand<'a> {
    ScsiCommand {
        cdb,
        edtl: data.len() as u32,
        read: data.is_empty(),
        write: !data.is_empty(),
        data_out: Bytes::from(data),
        nexus,
        luns: &[0, 1, 300],
        // Matches the identity's port, so VPD 83h designators agree.
        port: TargetPort {
            relative_id: 3,
            group: 7,
        },
        initiator: "",
    }
}

async fn run(lu: &LogicalUnit, cdb: &[u8]) -> ScsiResult {
    execute(lu, cmd(cdb, 1, Vec::new())).await
}

async fn run_data(lu: &LogicalUnit, cdb: &[u8], data: Vec<u8>) -> ScsiResult {
    execute(lu, cmd(cdb, 1, data)).await
}

/// The sense data of a CHECK CONDITION (shared by the SCSI test modules).
pub(super) fn sense(r: &ScsiResult) -> Sense {
    assert_eq!(
        r.status,
        status::CHECK_CONDITION,
        "expected CHECK CONDITION"
    );
    Sense::parse(r.sense.as_ref().expect("sense data")).expect("parsable sense")
}

pub(super) fn assert_good(r: &ScsiResult) {
    assert_eq!(
        r.status,
        status::GOOD,
        "sense: {:?}",
        r.sense.as_ref().map(|s| Sense::parse(s))
    );
}

fn rw10(opcode: u8, b1: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[tokio::test]
async fn standard_inquiry() {
    let lu = new_lu();
    let r = run(&lu, &[0x12, 0, 0, 1, 4, 0]).await;
    assert_good(&r);
    let d = &r.data_in;
    assert!(d.len() >= 36);
    assert_eq!(d[0], 0x00);
    assert_eq!(d[2], 0x06);
    assert_eq!(d[3], 0x12);
    assert_eq!(d[4] as usize, d.len() - 5);
    assert_eq!(
        d[5], 0x38,
        "TPGS 11b (REPORT/SET TARGET PORT GROUPS) and 3PC (EXTENDED COPY)"
    );
    assert_eq!(d[7] & 0x02, 0x02);
    assert_eq!(&d[8..16], b"VTGT    ");
    assert_eq!(&d[16..32], b"vdisk           ");
    // SPC-4 and SBC-3 version descriptors.
    let descs: Vec<u16> = d[58..]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    assert!(descs.contains(&0x0460) && descs.contains(&0x04C0));
    // Allocation length trims.
    let r = run(&lu, &[0x12, 0, 0, 0, 5, 0]).await;
    assert_eq!(r.data_in.len(), 5);
    // EVPD = 0 with a page code.
    let s = sense(&run(&lu, &[0x12, 0, 0x83, 0, 255, 0]).await);
    assert_eq!(s, Sense::invalid_cdb_field(2, None));
    // CMDDT (obsolete) is a reserved bit for us.
    let s = sense(&run(&lu, &[0x12, 0x02, 0, 0, 255, 0]).await);
    assert_eq!(s.field, Some(FieldPointer::cdb(1, Some(1))));
}

#[tokio::test]
async fn vpd_pages() {
    let lu = new_lu();
    let r = run(&lu, &[0x12, 1, 0x00, 0, 255, 0]).await;
    assert_good(&r);
    let pages = r.data_in[4..].to_vec();
    assert_eq!(pages, inquiry::VPD_PAGES);
    for p in pages {
        let r = run(&lu, &[0x12, 1, p, 0, 255, 0]).await;
        assert_good(&r);
        assert_eq!(r.data_in[1], p);
        let len = u16::from_be_bytes([r.data_in[2], r.data_in[3]]) as usize;
        assert_eq!(len + 4, r.data_in.len());
    }
    let s = sense(&run(&lu, &[0x12, 1, 0xC7, 0, 255, 0]).await);
    assert_eq!(s, Sense::invalid_cdb_field(2, None));

    let b0 = run(&lu, &[0x12, 1, 0xB0, 0, 255, 0]).await.data_in;
    assert_eq!(u16::from_be_bytes([b0[2], b0[3]]), 0x3C);
    assert_eq!(
        u32::from_be_bytes([b0[8], b0[9], b0[10], b0[11]]),
        MAX_TRANSFER_BLOCKS
    );
    let b1 = run(&lu, &[0x12, 1, 0xB1, 0, 255, 0]).await.data_in;
    assert_eq!(u16::from_be_bytes([b1[4], b1[5]]), 1);
}

#[tokio::test]
async fn vpd_83_designators() {
    let lu = new_lu();
    let r = run(&lu, &[0x12, 1, 0x83, 0, 255, 0]).await;
    assert_good(&r);
    let d = &r.data_in;
    let mut at = 4;
    let mut seen = Vec::new();
    while at < d.len() {
        let (cs, ty, len) = (d[at] & 0x0F, d[at + 1], d[at + 3] as usize);
        let body = &d[at + 4..at + 4 + len];
        match ty & 0x0F {
            3 => {
                assert_eq!((cs, ty & 0x30), (1, 0x00));
                assert_eq!(body.len(), 16);
                assert_eq!(body[0] >> 4, 6);
                assert_eq!(body, inquiry::naa6(0x0123_4567_89AB_CDEF));
                assert_eq!(&body[8..], &0x0123_4567_89AB_CDEFu64.to_be_bytes());
            }
            1 => {
                assert_eq!(cs, 2);
                assert_eq!(&body[..8], b"VTGT    ");
                assert_eq!(&body[8..], b"sn-0042");
            }
            8 => {
                assert_eq!(d[at] >> 4, 5, "iSCSI protocol identifier");
                assert_eq!(ty & 0xB0, 0xA0, "PIV, target device");
                assert_eq!(body.len() % 4, 0);
                assert!(body.starts_with(b"iqn.2026-11.org.example:t1\0"));
            }
            4 => assert_eq!(body, [0, 0, 0, 3]),
            5 => assert_eq!(body, [0, 0, 0, 7]),
            t => panic!("unexpected designator type {t}"),
        }
        seen.push(ty & 0x0F);
        at += 4 + len;
    }
    assert_eq!(at, d.len());
    seen.sort();
    assert_eq!(seen, [1, 3, 4, 5, 8]);
    // Stable: a new LU with the same identity says the same.
    let again = run(&new_lu(), &[0x12, 1, 0x83, 0, 255, 0]).await;
    assert_eq!(again.data_in, r.data_in);
}

#[tokio::test]
async fn read_capacity() {
    let lu = new_lu();
    let r = run(&lu, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_good(&r);
    assert_eq!(&r.data_in[..], &[0, 0, 0x03, 0xFF, 0, 0, 2, 0]);
    let mut c16 = [0u8; 16];
    c16[0] = 0x9E;
    c16[1] = 0x10;
    c16[13] = 32;
    let r = run(&lu, &c16).await;
    assert_good(&r);
    assert_eq!(r.data_in.len(), 32);
    assert_eq!(
        &r.data_in[..12],
        &[0, 0, 0, 0, 0, 0, 0x03, 0xFF, 0, 0, 2, 0]
    );
    assert_eq!(
        r.data_in[14] & 0xC0,
        0xC0,
        "LBPME and LBPRZ, as VPD B2h says"
    );
    c16[13] = 12;
    assert_eq!(run(&lu, &c16).await.data_in.len(), 12);
    // Unknown service action of SERVICE ACTION IN (16).
    c16[1] = 0x11;
    let s = sense(&run(&lu, &c16).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(4)));
    // LBA without PMI.
    let s = sense(&run(&lu, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]).await);
    assert_eq!(s, Sense::invalid_cdb_field(2, None));
}

#[tokio::test]
async fn write_read_round_trip_uses_fast_path() {
    let lu = new_lu();
    let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    let w = run_data(&lu, &rw10(0x2A, 0x08, 10, 2), data.clone()).await;
    assert_good(&w);
    assert_eq!(w.data_out_len, Some(1024));
    let r = run(&lu, &rw10(0x28, 0, 10, 2)).await;
    assert_good(&r);
    assert_eq!(&r.data_in[..], &data[..]);
    assert_eq!(lu.volume().counters.fast_path_hits(), 2);
    // READ16 and READ6 of the same blocks.
    let r = run(&lu, &rw16(0x88, 11, 1)).await;
    assert_eq!(&r.data_in[..], &data[512..]);
    let r = run(&lu, &[0x08, 0, 0, 10, 1, 0]).await;
    assert_eq!(&r.data_in[..], &data[..512]);
    // Zero blocks: GOOD, no data.
    let r = run(&lu, &rw10(0x28, 0, 0, 0)).await;
    assert_good(&r);
    assert!(r.data_in.is_empty());
}

#[tokio::test]
async fn range_and_field_errors() {
    let lu = new_lu();
    let s = sense(&run(&lu, &rw10(0x28, 0, BLOCKS as u32, 1)).await);
    assert_eq!(
        (s.key, s.asc),
        (key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE)
    );
    let s = sense(&run(&lu, &rw16(0x88, u64::MAX, 1)).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    let s = sense(&run(&lu, &rw10(0x28, 0, BLOCKS as u32 + 1, 0)).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    // RDPROTECT without protection information.
    let s = sense(&run(&lu, &rw10(0x28, 0x20, 0, 1)).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(7)));
    // Longer than the maximum transfer length.
    let s = sense(&run(&lu, &rw16(0x88, 0, MAX_TRANSFER_BLOCKS + 1)).await);
    assert_eq!(s, Sense::invalid_cdb_field(10, None));
    // Reserved bit in the group number byte.
    let mut c = rw10(0x28, 0, 0, 1);
    c[6] = 0x20;
    assert_eq!(
        sense(&run(&lu, &c).await),
        Sense::invalid_cdb_field(6, Some(5))
    );
    // NACA.
    let s = sense(&run(&lu, &[0, 0, 0, 0, 0, 0x04]).await);
    assert_eq!(s, Sense::invalid_cdb_field(5, Some(2)));
    // Unknown opcode and a short CDB.
    let s = sense(&run(&lu, &[0xC0, 0, 0, 0, 0, 0]).await);
    assert_eq!(s.asc, Asc::INVALID_COMMAND_OPERATION_CODE);
    let s = sense(&run(&lu, &[0x28, 0, 0, 0]).await);
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
    let s = sense(&run(&lu, &[]).await);
    assert_eq!(s.asc, Asc::INVALID_COMMAND_OPERATION_CODE);
}

#[tokio::test]
async fn short_data_out_writes_whole_blocks_received() {
    let lu = new_lu();
    let a = vec![b'a'; 1024];
    assert_good(&run_data(&lu, &rw10(0x2A, 0, 0, 2), a).await);
    // Two blocks asked for, one delivered.
    let w = run_data(&lu, &rw10(0x2A, 0, 0, 2), vec![b'b'; 512]).await;
    assert_good(&w);
    assert_eq!(w.data_out_len, Some(1024));
    let r = run(&lu, &rw10(0x28, 0, 0, 2)).await;
    assert!(r.data_in[..512].iter().all(|&b| b == b'b'));
    assert!(r.data_in[512..].iter().all(|&b| b == b'a'));
    // Less than a block: nothing written, still GOOD.
    let w = run_data(&lu, &rw10(0x2A, 0, 0, 1), vec![b'c'; 200]).await;
    assert_good(&w);
    assert_eq!(run(&lu, &rw10(0x28, 0, 0, 1)).await.data_in[0], b'b');
    // More than the CDB asks for: only the CDB's blocks.
    let w = run_data(&lu, &rw10(0x2A, 0, 0, 1), vec![b'd'; 1024]).await;
    assert_good(&w);
    assert_eq!(run(&lu, &rw10(0x28, 0, 1, 1)).await.data_in[0], b'a');
}

#[tokio::test]
async fn verify_and_write_verify() {
    let lu = new_lu();
    let data: Vec<u8> = (0..2048).map(|i| (i * 7 % 256) as u8).collect();
    // WRITE AND VERIFY (10) with BYTCHK = 1.
    let w = run_data(&lu, &rw10(0x2E, 0x02, 100, 4), data.clone()).await;
    assert_good(&w);
    assert_eq!(w.data_out_len, Some(2048));
    // VERIFY BYTCHK = 0: readable, no data-out.
    let v = run(&lu, &rw10(0x2F, 0, 100, 4)).await;
    assert_good(&v);
    assert_eq!(v.data_out_len, Some(0));
    // BYTCHK = 1, matching.
    assert_good(&run_data(&lu, &rw10(0x2F, 0x02, 100, 4), data.clone()).await);
    // Miscompare in the third block: INFORMATION is its LBA.
    let mut bad = data.clone();
    bad[2 * 512 + 17] ^= 0x55;
    let s = sense(&run_data(&lu, &rw10(0x2F, 0x02, 100, 4), bad).await);
    assert_eq!(s.key, key::MISCOMPARE);
    assert_eq!(s.asc, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(s.information, Some(102));
    // VERIFY (16) beyond the end.
    let s = sense(&run(&lu, &rw16(0x8F, BLOCKS - 1, 2)).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    // VRPROTECT.
    let s = sense(&run(&lu, &rw10(0x2F, 0x20, 0, 1)).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(7)));
    // BYTCHK = 11b: one block compared with each.
    assert_good(&run_data(&lu, &rw10(0x2A, 0, 200, 3), vec![9u8; 1536]).await);
    assert_good(&run_data(&lu, &rw10(0x2F, 0x06, 200, 3), vec![9u8; 512]).await);
    let s = sense(&run_data(&lu, &rw10(0x2F, 0x06, 199, 3), vec![9u8; 512]).await);
    assert_eq!(s.information, Some(199));
}

#[tokio::test]
async fn unit_attention_reported_once() {
    let lu = new_lu();
    lu.register_nexus(1, Some(Notice::PowerOn)).await;
    // INQUIRY is exempt and does not clear it.
    assert_good(&run(&lu, &[0x12, 0, 0, 0, 36, 0]).await);
    // Reads fault off the fast path and report it.
    let s = sense(&run(&lu, &rw10(0x28, 0, 0, 1)).await);
    assert_eq!(
        (s.key, s.asc),
        (key::UNIT_ATTENTION, Asc::POWER_ON_OCCURRED)
    );
    assert_good(&run(&lu, &[0, 0, 0, 0, 0, 0]).await);
    // REQUEST SENSE returns a pending one as data, with GOOD.
    lu.control().raise(1, Notice::CapacityChanged).await;
    let r = run(&lu, &[0x03, 0, 0, 0, 252, 0]).await;
    assert_good(&r);
    let s = Sense::parse(&r.data_in).unwrap();
    assert_eq!(
        (s.key, s.asc),
        (key::UNIT_ATTENTION, Asc::CAPACITY_DATA_HAS_CHANGED)
    );
    let r = run(&lu, &[0x03, 1, 0, 0, 252, 0]).await;
    assert_eq!(r.data_in[0], 0x72);
    assert_eq!(Sense::parse(&r.data_in).unwrap().key, key::NO_SENSE);
}

#[tokio::test]
async fn mode_sense_pages() {
    let lu = new_lu();
    let r = run(&lu, &[0x1A, 0, 0x3F, 0, 255, 0]).await;
    assert_good(&r);
    let d = &r.data_in;
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(d[2], 0x10, "DPOFUA");
    assert_eq!(d[3], 8);
    assert_eq!(&d[4..8], &(BLOCKS as u32).to_be_bytes());
    let codes: Vec<u8> = {
        let mut at = 12;
        let mut v = Vec::new();
        while at < d.len() {
            v.push(d[at] & 0x3F);
            at += 2 + d[at + 1] as usize;
        }
        v
    };
    assert_eq!(codes, [0x08, 0x0A, 0x1C]);
    // Caching page current: WCE = 1.
    let r = run(&lu, &[0x1A, 0x08, 0x08, 0, 255, 0]).await;
    assert_eq!(r.data_in[3], 0);
    assert_eq!(&r.data_in[4..7], &[0x08, 0x12, 0x04]);
    // MODE SENSE (10) with LLBAA: long descriptor.
    let r = run(&lu, &[0x5A, 0x10, 0x0A, 0, 0, 0, 0, 0, 255, 0]).await;
    assert_good(&r);
    assert_eq!(r.data_in[4] & 1, 1);
    assert_eq!(u16::from_be_bytes([r.data_in[6], r.data_in[7]]), 16);
    assert_eq!(
        u16::from_be_bytes([r.data_in[0], r.data_in[1]]) as usize,
        r.data_in.len() - 2
    );
    // Saved values are not supported; unknown page; allocation length.
    let s = sense(&run(&lu, &[0x1A, 0, 0xC8, 0, 255, 0]).await);
    assert_eq!(s.asc, Asc::SAVING_PARAMETERS_NOT_SUPPORTED);
    let s = sense(&run(&lu, &[0x1A, 0, 0x19, 0, 255, 0]).await);
    assert_eq!(s, Sense::invalid_cdb_field(2, Some(5)));
    let r = run(&lu, &[0x1A, 0, 0x3F, 0, 4, 0]).await;
    assert_eq!(r.data_in.len(), 4);
    assert!(r.data_in[0] > 3);
}

#[tokio::test]
async fn mode_select_round_trip_and_notice() {
    let lu = new_lu();
    lu.register_nexus(2, None).await;
    // Fetch the control page and set D_SENSE.
    let r = run(&lu, &[0x1A, 0x08, 0x0A, 0, 255, 0]).await;
    let mut list = vec![0u8, 0, 0, 0];
    list.extend_from_slice(&r.data_in[4..]);
    list[4 + 2] |= 0x04;
    let sel = [0x15, 0x10, 0, 0, list.len() as u8, 0];
    let w = run_data(&lu, &sel, list.clone()).await;
    assert_good(&w);
    assert_eq!(w.data_out_len, Some(list.len() as u32));
    assert!(lu.descriptor_sense());
    // The issuer gets no unit attention; the other nexus does.
    assert_good(&run(&lu, &[0, 0, 0, 0, 0, 0]).await);
    let r2 = execute(&lu, cmd(&[0, 0, 0, 0, 0, 0], 2, Vec::new())).await;
    let s = sense(&r2);
    assert_eq!(s.asc, Asc::MODE_PARAMETERS_CHANGED);
    assert_eq!(r2.sense.as_ref().unwrap()[0], 0x72, "descriptor format now");
    // MODE SENSE shows it.
    let r = run(&lu, &[0x1A, 0x08, 0x0A, 0, 255, 0]).await;
    assert_eq!(r.data_in[6] & 0x04, 0x04);
    // Errors now come in descriptor format.
    let r = run(&lu, &rw16(0x88, u64::MAX, 1)).await;
    assert_eq!(r.sense.as_ref().unwrap()[0], 0x72);

    // A non-changeable bit (QAM) is an invalid parameter field at its byte.
    let mut bad = list.clone();
    bad[4 + 3] ^= 0x80;
    let s = sense(&run_data(&lu, &sel, bad).await);
    assert_eq!(s, Sense::invalid_param_field(7, Some(7)));
    // Truncated page: parameter list length error.
    let s = sense(&run_data(&lu, &[0x15, 0x10, 0, 0, 8, 0], list[..8].to_vec()).await);
    assert_eq!(s.asc, Asc::PARAMETER_LIST_LENGTH_ERROR);
    // SP and PF = 0.
    let s = sense(&run_data(&lu, &[0x15, 0x11, 0, 0, 4, 0], vec![0; 4]).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(0)));
    let s = sense(&run_data(&lu, &[0x15, 0x00, 0, 0, 4, 0], vec![0; 4]).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(4)));
    // Unknown page.
    let s = sense(
        &run_data(
            &lu,
            &[0x15, 0x10, 0, 0, 8, 0],
            vec![0, 0, 0, 0, 0x19, 2, 0, 0],
        )
        .await,
    );
    assert_eq!(s, Sense::invalid_param_field(4, Some(5)));

    // LU reset restores defaults and tells every nexus, the issuer too.
    lun_reset(&lu, 1).await;
    assert!(!lu.descriptor_sense());
    for nexus in [2, 1] {
        let s = sense(&execute(&lu, cmd(&[0, 0, 0, 0, 0, 0], nexus, Vec::new())).await);
        assert_eq!(s.asc, Asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED);
    }
    assert_good(&run(&lu, &[0, 0, 0, 0, 0, 0]).await);
}

#[tokio::test]
async fn wce_off_still_serves_writes() {
    let lu = new_lu();
    let mut list = vec![0u8, 0, 0, 0];
    let r = run(&lu, &[0x1A, 0x08, 0x08, 0, 255, 0]).await;
    list.extend_from_slice(&r.data_in[4..]);
    list[6] &= !0x04;
    assert_good(&run_data(&lu, &[0x15, 0x10, 0, 0, list.len() as u8, 0], list).await);
    assert!(!lu.write_cache_enabled());
    assert_good(&run_data(&lu, &rw10(0x2A, 0, 0, 1), vec![1; 512]).await);
}

#[tokio::test]
async fn report_luns() {
    let lu = new_lu();
    let r = run(&lu, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]).await;
    assert_good(&r);
    assert_eq!(&r.data_in[..4], &24u32.to_be_bytes());
    assert_eq!(&r.data_in[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&r.data_in[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&r.data_in[24..32], &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    // Well-known LUs only: none.
    let r = run(&lu, &[0xA0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]).await;
    assert_eq!(&r.data_in[..], &[0u8; 8]);
    let s = sense(&run(&lu, &[0xA0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0]).await);
    assert_eq!(s, Sense::invalid_cdb_field(2, None));
    let s = sense(&run(&lu, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]).await);
    assert_eq!(s, Sense::invalid_cdb_field(6, None));
}

#[tokio::test]
async fn no_lu_behaviour() {
    let c = cmd(&[0x12, 0, 0, 0, 96, 0], 1, Vec::new());
    let r = execute_no_lu(&c);
    assert_good(&r);
    assert_eq!(r.data_in[0], 0x7F);
    let c = cmd(&[0, 0, 0, 0, 0, 0], 1, Vec::new());
    let s = sense(&execute_no_lu(&c));
    assert_eq!(s.asc, Asc::LOGICAL_UNIT_NOT_SUPPORTED);
    let c = cmd(&[0x03, 0, 0, 0, 18, 0], 1, Vec::new());
    let r = execute_no_lu(&c);
    assert_good(&r);
    assert_eq!(
        Sense::parse(&r.data_in).unwrap().asc,
        Asc::LOGICAL_UNIT_NOT_SUPPORTED
    );
    let c = cmd(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 1, Vec::new());
    assert_good(&execute_no_lu(&c));
}

#[tokio::test]
async fn report_supported_opcodes() {
    let lu = new_lu();
    let all = [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    let r = run(&lu, &all).await;
    assert_good(&r);
    let d = &r.data_in;
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len, opcodes::COMMANDS.len() * 8);
    // With RCTD every descriptor carries a timeouts descriptor.
    let mut rctd = all;
    rctd[2] = 0x80;
    let r = run(&lu, &rctd).await;
    assert_eq!(r.data_in.len(), 4 + opcodes::COMMANDS.len() * 20);
    assert_eq!(r.data_in[4 + 5] & 0x02, 0x02);
    assert_eq!(&r.data_in[4 + 8..4 + 10], &[0, 0x0A]);
    // One command: READ (10) with option 1, READ CAPACITY (16) with 2.
    let one = |ro: u8, opc: u8, sa: u16| {
        let mut c = [0xA3, 0x0C, ro, opc, 0, 0, 0, 0, 1, 0, 0, 0];
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c
    };
    let r = run(&lu, &one(1, 0x28, 0)).await;
    assert_good(&r);
    assert_eq!(&r.data_in[..4], &[0, 0x03, 0, 10]);
    assert_eq!(&r.data_in[4..], opcodes::lookup(0x28, None).unwrap().usage);
    let s = sense(&run(&lu, &one(1, 0x9E, 0x10)).await);
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
    let s = sense(&run(&lu, &one(2, 0x28, 0)).await);
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
    let r = run(&lu, &one(2, 0x9E, 0x10)).await;
    assert_eq!(&r.data_in[..4], &[0, 0x03, 0, 16]);
    assert_eq!(r.data_in[4], 0x9E);
    let r = run(&lu, &one(3, 0x9E, 0x11)).await;
    assert_eq!(&r.data_in[..], &[0, 0x01, 0, 0]);
    let r = run(&lu, &one(1, 0xC0, 0)).await;
    assert_eq!(&r.data_in[..], &[0, 0x01, 0, 0]);
    // Task management functions, with and without REPD.
    let r = run(&lu, &[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]).await;
    assert_eq!(r.data_in.len(), 4);
    assert_eq!(r.data_in[0] & 0x08, 0x08, "LURS");
    let r = run(&lu, &[0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0]).await;
    assert_eq!(r.data_in.len(), 16);
    assert_eq!(r.data_in[3], 0x0C);
}

/// Every bit outside a command's reported usage map is refused with a
/// pointer to it: the usage data is what we really accept.
#[tokio::test]
async fn usage_maps_match_what_dispatch_accepts() {
    let lu = new_lu();
    for info in opcodes::COMMANDS {
        for byte in 1..info.usage.len() {
            for bit in 0..8u8 {
                let m = 1u8 << bit;
                if info.usage[byte] & m != 0 {
                    continue;
                }
                let mut c = vec![0u8; info.usage.len()];
                c[0] = info.opcode;
                if let Some(sa) = info.sa {
                    c[1] = sa as u8;
                }
                c[byte] |= m;
                let s = sense(&run(&lu, &c).await);
                assert_eq!(
                    s,
                    Sense::invalid_cdb_field(byte, Some(bit)),
                    "opcode {:02x} byte {byte} bit {bit}",
                    info.opcode
                );
            }
        }
    }
}

#[tokio::test]
async fn cache_prefetch_start_stop() {
    let lu = new_lu();
    assert_good(&run(&lu, &rw10(0x35, 0, 0, 0)).await);
    assert_good(&run(&lu, &rw16(0x91, 10, 10)).await);
    let s = sense(&run(&lu, &rw16(0x91, BLOCKS, 1)).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    assert_good(&run(&lu, &rw10(0x34, 0x02, 0, 0)).await);
    let s = sense(&run(&lu, &rw10(0x34, 0, BLOCKS as u32 + 1, 0)).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    let s = sense(&run(&lu, &rw16(0x90, u64::MAX, 0)).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    assert_good(&run(&lu, &[0x1B, 0, 0, 0, 0x00, 0]).await);
    assert_good(&run(&lu, &[0x1B, 1, 0, 0, 0x01, 0]).await);
    let s = sense(&run(&lu, &[0x1B, 0, 0, 0, 0x50, 0]).await);
    assert_eq!(s, Sense::invalid_cdb_field(4, Some(7)));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
    /// Arbitrary CDBs (biased towards the opcodes we implement) never panic
    /// and always produce a valid status and, with CHECK CONDITION,
    /// parsable sense.
    #[test]
    fn arbitrary_cdbs_do_not_panic(known in proptest::prelude::any::<proptest::sample::Index>(),
                                   use_known in proptest::prelude::any::<bool>(),
                                   mut cdb in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
                                   data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1100)) {
        if use_known && !cdb.is_empty() {
            let info = &opcodes::COMMANDS[known.index(opcodes::COMMANDS.len())];
            cdb[0] = info.opcode;
            if let (Some(sa), Some(b1)) = (info.sa, cdb.get_mut(1)) {
                *b1 = (*b1 & 0xE0) | sa as u8;
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let lu = new_lu();
            let r = execute(&lu, cmd(&cdb, 1, data.clone())).await;
            assert!(r.status == status::GOOD || r.status == status::CHECK_CONDITION);
            if r.status == status::CHECK_CONDITION {
                assert!(Sense::parse(r.sense.as_ref().unwrap()).is_some());
            }
            let _ = execute_no_lu(&cmd(&cdb, 1, data));
        });
    }
}

#[tokio::test]
async fn software_write_protect() {
    let lu = new_lu();
    let r = run(&lu, &[0x1A, 0x08, 0x0A, 0, 255, 0]).await;
    let mut list = vec![0u8, 0, 0, 0];
    list.extend_from_slice(&r.data_in[4..]);
    list[4 + 4] |= 0x08;
    let sel = [0x15, 0x10, 0, 0, list.len() as u8, 0];
    assert_good(&run_data(&lu, &sel, list.clone()).await);
    let r = run(&lu, &[0x1A, 0x08, 0x0A, 0, 255, 0]).await;
    assert_eq!(r.data_in[2] & 0x80, 0x80, "WP in the header");
    let s = sense(&run_data(&lu, &rw10(0x2A, 0, 0, 1), vec![0; 512]).await);
    assert_eq!((s.key, s.asc), (key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    assert_good(&run(&lu, &rw10(0x28, 0, 0, 1)).await);
    list[4 + 4] &= !0x08;
    assert_good(&run_data(&lu, &sel, list).await);
    assert_good(&run_data(&lu, &rw10(0x2A, 0, 0, 1), vec![0; 512]).await);
}

/// A sparse 2 TiB + 512 B volume: READ CAPACITY (10) must send the
/// initiator to (16), and short block descriptors saturate.
#[tokio::test]
async fn capacity_beyond_32_bits() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = (1u64 << 32) + 1;
    let Ok(b) = vtgt_engine::FileBackend::open_or_create(&dir.path().join("big"), blocks * 512)
    else {
        return; // The filesystem cannot hold a sparse file this large.
    };
    let vol = Volume::simple("big", Arc::new(b), 512);
    let lu = LogicalUnit::new(0, LuControl::new(Exposure::new(vol)), identity());
    let r = run(&lu, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(&r.data_in[..4], &[0xFF; 4]);
    let mut c16 = [0u8; 16];
    c16[0] = 0x9E;
    c16[1] = 0x10;
    c16[13] = 32;
    let r = run(&lu, &c16).await;
    assert_eq!(&r.data_in[..8], &(blocks - 1).to_be_bytes());
    let r = run(&lu, &[0x1A, 0, 0x08, 0, 255, 0]).await;
    assert_eq!(&r.data_in[4..8], &[0xFF; 4]);
    // The last block is reachable with READ (16) only.
    let r = run(&lu, &rw16(0x88, blocks - 1, 1)).await;
    assert_good(&r);
    let s = sense(&run(&lu, &rw16(0x88, blocks, 1)).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
}

/// The transport spawns command futures on a multi-threaded runtime.
#[test]
fn command_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let lu = new_lu();
    let c = [0u8; 6];
    let f = execute(&lu, cmd(&c, 1, Vec::new()));
    assert_send(&f);
    let r = lun_reset(&lu, 1);
    assert_send(&r);
}
