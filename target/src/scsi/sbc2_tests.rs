//! Unit tests for provisioning, atomic, copy and ALUA commands.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use vtgt_engine::{Exposure, FileBackend, LuControl, MemBackend, Volume};
use vtgt_protocol::scsi::sense::{key, Asc, FieldPointer, Sense};

use super::alua::AccessState;
use super::tests::{assert_good as good, sense};
use super::*;

const BLOCKS: u64 = 1024;
const PORT: TargetPort = TargetPort {
    relative_id: 1,
    group: 1,
};

fn identity(naa_id: u64) -> LuIdentity {
    LuIdentity {
        vendor: "VTGT".into(),
        product: "vdisk".into(),
        revision: "0001".into(),
        serial: format!("{naa_id:x}"),
        naa_id,
        target_name: "iqn.2026-11.org.example:t2".into(),
        relative_port: 1,
        port_group: 1,
    }
}

fn lu_on(vol: Arc<Volume>, naa_id: u64) -> Arc<LogicalUnit> {
    LogicalUnit::new(0, LuControl::new(Exposure::new(vol)), identity(naa_id))
}

fn mem_lu() -> Arc<LogicalUnit> {
    let vol = Volume::simple("m", Arc::new(MemBackend::new(BLOCKS * 512).unwrap()), 512);
    lu_on(vol, 0x1111)
}

fn file_lu(dir: &tempfile::TempDir) -> Arc<LogicalUnit> {
    let b = FileBackend::open_or_create(&dir.path().join("f.img"), BLOCKS * 512).unwrap();
    lu_on(Volume::simple("f", Arc::new(b), 512), 0x2222)
}

async fn exec(
    lu: &LogicalUnit,
    cdb: &[u8],
    data: Vec<u8>,
    nexus: u64,
    port: TargetPort,
) -> ScsiResult {
    let cmd = ScsiCommand {
        cdb,
        edtl: data.len() as u32,
        read: data.is_empty(),
        write: !data.is_empty(),
        data_out: Bytes::from(data),
        nexus,
        luns: &[0],
        port,
        initiator: "",
    };
    execute(lu, cmd).await
}

async fn run(lu: &LogicalUnit, cdb: &[u8], data: Vec<u8>) -> ScsiResult {
    exec(lu, cdb, data, 1, PORT).await
}

fn c16(opcode: u8, b1: u8, lba: u64, n: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

fn write16(lba: u64, data: Vec<u8>) -> ([u8; 16], Vec<u8>) {
    (c16(0x8A, 0, lba, (data.len() / 512) as u32), data)
}

async fn read(lu: &LogicalUnit, lba: u64, n: u32) -> Bytes {
    let r = run(lu, &c16(0x88, 0, lba, n), vec![]).await;
    good(&r);
    r.data_in
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    for (lba, n) in ranges {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    let dl = (p.len() - 2) as u16;
    let bl = (p.len() - 8) as u16;
    p[0..2].copy_from_slice(&dl.to_be_bytes());
    p[2..4].copy_from_slice(&bl.to_be_bytes());
    p
}

fn unmap_cdb(len: usize) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

#[tokio::test]
async fn unmap_deallocates_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let lu = file_lu(&dir);
    let (c, d) = write16(0, vec![0xAA; 64 * 512]);
    good(&run(&lu, &c, d).await);
    let p = unmap_list(&[(0, 16), (32, 8)]);
    good(&run(&lu, &unmap_cdb(p.len()), p).await);
    let data = read(&lu, 0, 64).await;
    assert!(
        data[..16 * 512].iter().all(|&b| b == 0),
        "unmapped reads zero"
    );
    assert!(data[16 * 512..32 * 512].iter().all(|&b| b == 0xAA));
    assert!(data[32 * 512..40 * 512].iter().all(|&b| b == 0));
    // Zero-length parameter list: nothing to do.
    good(&run(&lu, &unmap_cdb(0), vec![]).await);
    // Shorter than the header.
    let s = sense(&run(&lu, &unmap_cdb(6), vec![0; 6]).await);
    assert_eq!(s.asc, Asc::PARAMETER_LIST_LENGTH_ERROR);
    // A range past the end fails the whole command before anything changes.
    let (c, d) = write16(100, vec![0xBB; 512]);
    good(&run(&lu, &c, d).await);
    let p = unmap_list(&[(100, 1), (BLOCKS - 1, 2)]);
    let s = sense(&run(&lu, &unmap_cdb(p.len()), p).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    assert!(read(&lu, 100, 1).await.iter().all(|&b| b == 0xBB));
    // Too many descriptors.
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
    let p = unmap_list(&many);
    let s = sense(&run(&lu, &unmap_cdb(p.len()), p).await);
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
    // ANCHOR is not supported: outside the usage map.
    let mut c = unmap_cdb(24);
    c[1] = 0x01;
    let s = sense(&run(&lu, &c, unmap_list(&[(0, 1)])).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(0)));
}

fn ws10(b1: u8, lba: u32, n: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x41;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

#[tokio::test]
async fn write_same_pattern_unmap_ndob_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let lu = file_lu(&dir);
    good(&run(&lu, &ws10(0, 10, 300), vec![0x5C; 512]).await);
    let d = read(&lu, 9, 302).await;
    assert!(d[..512].iter().all(|&b| b == 0));
    assert!(d[512..301 * 512].iter().all(|&b| b == 0x5C));
    assert!(d[301 * 512..].iter().all(|&b| b == 0));
    // UNMAP with a zero block deallocates (reads zero).
    good(&run(&lu, &ws10(0x08, 10, 300), vec![0; 512]).await);
    assert!(read(&lu, 10, 300).await.iter().all(|&b| b == 0));
    // WRITE SAME (16) with NDOB writes zeros without data-out.
    good(&run(&lu, &c16(0x93, 0, 0, 4), vec![0x77; 512]).await);
    // The data-out is exactly one block.
    assert!(run(&lu, &c16(0x93, 0, 0, 4), vec![0x77; 256]).await.status != status::GOOD);
    assert!(run(&lu, &c16(0x93, 0, 0, 4), vec![0x77; 1024]).await.status != status::GOOD);
    let (c, d) = write16(500, vec![1; 512 * 8]);
    good(&run(&lu, &c, d).await);
    good(&run(&lu, &c16(0x93, 0x09, 500, 8), vec![]).await);
    assert!(read(&lu, 500, 8).await.iter().all(|&b| b == 0));
    // WSNZ: zero blocks is refused, but an LBA past the end says so first.
    let s = sense(&run(&lu, &ws10(0, 0, 0), vec![0; 512]).await);
    assert_eq!(s, Sense::invalid_cdb_field(7, None));
    let s = sense(&run(&lu, &ws10(0, BLOCKS as u32 + 1, 0), vec![0; 512]).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    let s = sense(&run(&lu, &ws10(0, BLOCKS as u32 - 1, 2), vec![0; 512]).await);
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    // ANCHOR (no ANC_SUP) and WRPROTECT are outside the usage map.
    let s = sense(&run(&lu, &ws10(0x10, 0, 1), vec![0; 512]).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(4)));
    let s = sense(&run(&lu, &ws10(0x20, 0, 1), vec![0; 512]).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(5)));
    // Above MAXIMUM WRITE SAME LENGTH, on an LU large enough.
    // A sparse file: WRITE SAME of zeros with UNMAP deallocates.
    let dir = tempfile::tempdir().unwrap();
    let n = provisioning::MAX_WRITE_SAME_BLOCKS as u32;
    let fb =
        FileBackend::open_or_create(&dir.path().join("big.img"), (n as u64 + 1) * 512).unwrap();
    let big = lu_on(Volume::simple("big", Arc::new(fb), 512), 0x3333);
    good(&run(&big, &c16(0x93, 0x08, 0, n), vec![0; 512]).await);
    let s = sense(&run(&big, &c16(0x93, 0x08, 0, n + 1), vec![0; 512]).await);
    assert_eq!(s, Sense::invalid_cdb_field(10, None));
}

#[tokio::test]
async fn get_lba_status_reports_holes_and_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let lu = file_lu(&dir);
    let (c, d) = write16(0, vec![0x11; 512 * 128]);
    good(&run(&lu, &c, d).await);
    let p = unmap_list(&[(0, 64)]);
    good(&run(&lu, &unmap_cdb(p.len()), p).await);
    let mut cdb = c16(0x9E, 0x12, 0, 0);
    cdb[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let r = run(&lu, &cdb, vec![]).await;
    good(&r);
    let d = &r.data_in;
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len + 4, d.len());
    let desc = |i: usize| {
        let x = &d[8 + i * 16..8 + (i + 1) * 16];
        (
            u64::from_be_bytes(x[0..8].try_into().unwrap()),
            u32::from_be_bytes(x[8..12].try_into().unwrap()),
            x[12] & 0x0F,
        )
    };
    assert_eq!(desc(0), (0, 64, 1), "deallocated");
    assert_eq!(desc(1), (64, 64, 0), "mapped");
    assert_eq!(desc(2).2, 1);
    // The first descriptor starts at the requested LBA.
    cdb[2..10].copy_from_slice(&70u64.to_be_bytes());
    let r = run(&lu, &cdb, vec![]).await;
    assert_eq!(&r.data_in[8..16], &70u64.to_be_bytes());
    assert_eq!(r.data_in[8 + 12], 0);
    // Past the end.
    cdb[2..10].copy_from_slice(&BLOCKS.to_be_bytes());
    assert_eq!(
        sense(&run(&lu, &cdb, vec![]).await).asc,
        Asc::LBA_OUT_OF_RANGE
    );
    // A small allocation length still returns one descriptor's worth.
    cdb[2..10].copy_from_slice(&0u64.to_be_bytes());
    cdb[10..14].copy_from_slice(&24u32.to_be_bytes());
    assert_eq!(run(&lu, &cdb, vec![]).await.data_in.len(), 24);
}

#[tokio::test]
async fn vpd_b0_b2_and_read_capacity_agree() {
    let lu = mem_lu();
    let b0 = run(&lu, &[0x12, 1, 0xB0, 0, 255, 0], vec![]).await.data_in;
    let be32 = |d: &[u8], at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
    assert_eq!(b0[4] & 1, 1, "WSNZ");
    assert_eq!(b0[5], atomic::MAX_COMPARE_BLOCKS);
    assert_eq!(be32(&b0, 20), provisioning::MAX_UNMAP_BLOCKS);
    assert_eq!(be32(&b0, 24), provisioning::MAX_UNMAP_DESCRIPTORS);
    assert_eq!(be32(&b0, 28), provisioning::UNMAP_GRANULARITY);
    assert_eq!(
        u64::from_be_bytes(b0[36..44].try_into().unwrap()),
        provisioning::MAX_WRITE_SAME_BLOCKS
    );
    assert_eq!(be32(&b0, 44), atomic::MAX_ATOMIC_BLOCKS);
    let b2 = run(&lu, &[0x12, 1, 0xB2, 0, 255, 0], vec![]).await.data_in;
    assert_eq!(b2[5] & 0xE4, 0xE4, "LBPU, LBPWS, LBPWS10, LBPRZ");
    assert_eq!(b2[6] & 0x07, 0x02, "thin");
}

fn caw(lba: u64, n: u8) -> [u8; 16] {
    let mut c = c16(0x89, 0, lba, 0);
    c[10..14].fill(0);
    c[13] = n;
    c
}

#[tokio::test]
async fn compare_and_write_success_miscompare_and_limits() {
    let lu = mem_lu();
    let (c, d) = write16(5, vec![b'A'; 1024]);
    good(&run(&lu, &c, d).await);
    let mut data = vec![b'A'; 1024];
    data.extend(vec![b'B'; 1024]);
    good(&run(&lu, &caw(5, 2), data.clone()).await);
    assert!(read(&lu, 5, 2).await.iter().all(|&b| b == b'B'));
    // Now it miscompares at byte 0, and nothing is written.
    let s = sense(&run(&lu, &caw(5, 2), data.clone()).await);
    assert_eq!(s.key, key::MISCOMPARE);
    assert_eq!(s.asc, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(s.information, Some(0));
    // First differing byte deep in the second block.
    let mut d2 = vec![b'B'; 1024];
    d2[512 + 100] = b'X';
    d2.extend(vec![b'C'; 1024]);
    let s = sense(&run(&lu, &caw(5, 2), d2).await);
    assert_eq!(s.information, Some(612));
    assert!(read(&lu, 5, 2).await.iter().all(|&b| b == b'B'));
    // Zero blocks: nothing to do. Past the end and short data fail.
    good(&run(&lu, &caw(5, 0), vec![]).await);
    // 256 blocks wraps the one-byte field to 0: the extra data-out is refused.
    let s = sense(&run(&lu, &caw(5, 0), vec![0; 1024]).await);
    assert_eq!(s, Sense::invalid_cdb_field(13, None));
    let s = sense(&run(&lu, &caw(5, 1), vec![0; 2048]).await);
    assert_eq!(s, Sense::invalid_cdb_field(13, None));
    assert_eq!(
        sense(&run(&lu, &caw(BLOCKS - 1, 2), vec![0; 2048]).await).asc,
        Asc::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        sense(&run(&lu, &caw(0, 2), vec![0; 1024]).await).asc,
        Asc::PARAMETER_LIST_LENGTH_ERROR
    );
    // Reserved bytes 10..12 are outside the usage map.
    let mut c = caw(0, 1);
    c[11] = 1;
    assert_eq!(
        sense(&run(&lu, &c, vec![0; 1024]).await),
        Sense::invalid_cdb_field(11, Some(0))
    );
}

#[tokio::test]
async fn compare_and_write_holds_off_fast_path_writes() {
    let lu = mem_lu();
    let vol = lu.volume().clone();
    // Hold the range as a compare-and-write would.
    let g = vol.lock_exclusive(20, 1).await;
    let lu2 = lu.clone();
    let w = tokio::spawn(async move {
        let (c, d) = write16(20, vec![9; 512]);
        exec(&lu2, &c, d, 2, PORT).await
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!w.is_finished(), "the plain write waits for the range");
    vol.write_locked(&g, 20, Bytes::from(vec![1u8; 512]), false)
        .await
        .unwrap();
    drop(g);
    good(&w.await.unwrap());
    assert!(read(&lu, 20, 1).await.iter().all(|&b| b == 9));
}

#[tokio::test]
async fn orwrite_and_write_atomic() {
    let lu = mem_lu();
    let (c, d) = write16(0, vec![0x0F; 1024]);
    good(&run(&lu, &c, d).await);
    good(&run(&lu, &c16(0x8B, 0, 0, 2), vec![0xF0; 1024]).await);
    assert!(read(&lu, 0, 2).await.iter().all(|&b| b == 0xFF));
    good(&run(&lu, &c16(0x8B, 0, 0, 0), vec![]).await);
    assert_eq!(
        sense(&run(&lu, &c16(0x8B, 0, BLOCKS, 1), vec![0; 512]).await).asc,
        Asc::LBA_OUT_OF_RANGE
    );
    let wa = |lba: u64, n: u16| {
        let mut c = c16(0x9C, 0, lba, 0);
        c[10..14].fill(0);
        c[12..14].copy_from_slice(&n.to_be_bytes());
        c
    };
    good(&run(&lu, &wa(8, 8), vec![0x42; 4096]).await);
    assert!(read(&lu, 8, 8).await.iter().all(|&b| b == 0x42));
    // Misaligned LBA, or a length off the granularity.
    let s = sense(&run(&lu, &wa(9, 8), vec![0; 4096]).await);
    assert_eq!(s, Sense::invalid_cdb_field(2, None));
    let s = sense(&run(&lu, &wa(8, 4), vec![0; 2048]).await);
    assert_eq!(s, Sense::invalid_cdb_field(12, None));
    good(&run(&lu, &wa(8, 0), vec![]).await);
    let s = sense(&run(&lu, &wa(0, atomic::MAX_ATOMIC_BLOCKS as u16 + 1), vec![]).await);
    assert_eq!(s, Sense::invalid_cdb_field(12, None));
    assert_eq!(
        sense(&run(&lu, &wa(BLOCKS - 8, 16), vec![0; 8192]).await).asc,
        Asc::LBA_OUT_OF_RANGE
    );
    // ATOMIC BOUNDARY must be zero (no boundary support).
    let mut c = wa(0, 1);
    c[10] = 1;
    assert_eq!(
        sense(&run(&lu, &c, vec![0; 512]).await),
        Sense::invalid_cdb_field(10, Some(0))
    );
}

fn xcopy_list(cscds: &[[u8; 16]], segs: &[(u16, u16, u16, u64, u64)], list_id: u8) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = list_id;
    for naa in cscds {
        let mut d = [0u8; 32];
        d[0] = 0xE4;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&[0, 2, 0]);
        p.extend_from_slice(&d);
    }
    for (s, t, n, sl, dl) in segs {
        let mut d = [0u8; 28];
        d[0] = 0x02;
        d[3] = 0x18;
        d[4..6].copy_from_slice(&s.to_be_bytes());
        d[6..8].copy_from_slice(&t.to_be_bytes());
        d[10..12].copy_from_slice(&n.to_be_bytes());
        d[12..20].copy_from_slice(&sl.to_be_bytes());
        d[20..28].copy_from_slice(&dl.to_be_bytes());
        p.extend_from_slice(&d);
    }
    let cl = (cscds.len() * 32) as u16;
    let sl = (segs.len() * 28) as u32;
    p[2..4].copy_from_slice(&cl.to_be_bytes());
    p[8..12].copy_from_slice(&sl.to_be_bytes());
    p
}

fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

#[tokio::test]
async fn extended_copy_between_lus_and_results() {
    let a = mem_lu();
    // A second LU, reachable through the process-wide registry.
    let vb = Volume::simple("xb", Arc::new(MemBackend::new(BLOCKS * 512).unwrap()), 512);
    let b_id = 0x5EED_0000_0000_0001;
    xcopy::register(b_id, &vb);
    let b = lu_on(vb, b_id);
    let pattern: Vec<u8> = (0..100 * 512).map(|i| (i / 512) as u8).collect();
    let (c, d) = write16(10, pattern.clone());
    good(&run(&a, &c, d).await);
    let naa_a = inquiry::naa6(0x1111);
    let naa_b = inquiry::naa6(b_id);
    let p = xcopy_list(&[naa_a, naa_b], &[(0, 1, 100, 10, 500)], 7);
    good(&run(&a, &xcopy_cdb(p.len()), p).await);
    assert_eq!(&read(&b, 500, 100).await[..], &pattern[..]);
    // COPY STATUS for list 7: completed, one segment, 100 blocks of bytes.
    let mut rc = [0u8; 16];
    rc[0] = 0x84;
    rc[2] = 7;
    rc[10..14].copy_from_slice(&64u32.to_be_bytes());
    let r = run(&a, &rc, vec![]).await;
    good(&r);
    assert_eq!(r.data_in[4], 0x01);
    assert_eq!(&r.data_in[5..7], &1u16.to_be_bytes());
    assert_eq!(&r.data_in[8..12], &(100u32 * 512).to_be_bytes());
    // Unknown list ID.
    rc[2] = 8;
    assert_eq!(
        sense(&run(&a, &rc, vec![]).await),
        Sense::invalid_cdb_field(2, None)
    );
    // OPERATING PARAMETERS.
    rc[1] = 0x03;
    rc[2] = 0;
    let r = run(&a, &rc, vec![]).await;
    good(&r);
    assert_eq!(
        &r.data_in[8..10],
        &xcopy::MAX_CSCD_DESCRIPTORS.to_be_bytes()
    );
    // An unknown NAA is unreachable: COPY ABORTED.
    let p = xcopy_list(&[naa_a, inquiry::naa6(0xDEAD)], &[(0, 1, 1, 0, 0)], 1);
    let s = sense(&run(&a, &xcopy_cdb(p.len()), p).await);
    assert_eq!((s.key, s.asc), (0x0A, Asc(0x0D, 0x02)));
    // Past the end of the destination.
    let p = xcopy_list(&[naa_a], &[(0, 0, 2, 0, BLOCKS - 1)], 1);
    assert_eq!(sense(&run(&a, &xcopy_cdb(p.len()), p).await).key, 0x0A);
    // Too many CSCDs, unsupported descriptor types, truncated list.
    let p = xcopy_list(&[naa_a; 5], &[(0, 0, 1, 0, 1)], 1);
    assert_eq!(
        sense(&run(&a, &xcopy_cdb(p.len()), p).await).asc,
        Asc(0x26, 0x06)
    );
    let mut p = xcopy_list(&[naa_a], &[(0, 0, 1, 0, 1)], 1);
    p[16] = 0xE0;
    assert_eq!(
        sense(&run(&a, &xcopy_cdb(p.len()), p).await).asc,
        Asc(0x26, 0x07)
    );
    let mut p = xcopy_list(&[naa_a], &[(0, 0, 1, 0, 1)], 1);
    p[48] = 0x01;
    assert_eq!(
        sense(&run(&a, &xcopy_cdb(p.len()), p).await).asc,
        Asc(0x26, 0x09)
    );
    let p = xcopy_list(&[naa_a], &[(0, 0, 1, 0, 1)], 1);
    let n = p.len();
    let s = sense(&run(&a, &xcopy_cdb(n), p[..n - 1].to_vec()).await);
    assert_eq!(s.asc, Asc::PARAMETER_LIST_LENGTH_ERROR);
    good(&run(&a, &xcopy_cdb(0), vec![]).await);
}

#[tokio::test]
async fn alua_report_set_and_standby() {
    let lu = mem_lu();
    let p1 = PORT;
    let p2 = TargetPort {
        relative_id: 2,
        group: 2,
    };
    lu.alua()
        .configure(&[p1, p2], &[(2, AccessState::ActiveNonOptimized)]);
    let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let r = run(&lu, &rtpg, vec![]).await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(
        u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
        d.len() - 4
    );
    // Group 1: active/optimized, port 1; group 2: non-optimized, port 2.
    assert_eq!((d[4] & 0x0F, &d[6..8], d[11]), (0, &[0u8, 1][..], 1));
    assert_eq!(&d[14..16], &[0, 1]);
    assert_eq!((d[16] & 0x0F, &d[18..20]), (1, &[0u8, 2][..]));
    // Extended header format.
    let mut x = rtpg;
    x[1] |= 0x20;
    assert_eq!(run(&lu, &x, vec![]).await.data_in[4], 0x10);
    // VPD 83h port designators come from the command's port.
    let v = exec(&lu, &[0x12, 1, 0x83, 0, 255, 0], vec![], 9, p2).await;
    assert!(v
        .data_in
        .windows(8)
        .any(|w| w == [0x51, 0x94, 0, 4, 0, 0, 0, 2]));
    assert!(v
        .data_in
        .windows(8)
        .any(|w| w == [0x51, 0x95, 0, 4, 0, 0, 0, 2]));
    // Nexus 9 is on port 2. Put group 2 in standby from nexus 1.
    let stpg = [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    let param = vec![0, 0, 0, 0, 0x02, 0, 0, 2];
    good(&run(&lu, &stpg, param).await);
    // Nexus 9 first hears about the change.
    let s = sense(&exec(&lu, &[0, 0, 0, 0, 0, 0], vec![], 9, p2).await);
    assert_eq!(s.asc, Asc::ASYMMETRIC_ACCESS_STATE_CHANGED);
    // Then reads and writes are NOT READY, and off the fast path.
    let s = sense(&exec(&lu, &c16(0x88, 0, 0, 1), vec![], 9, p2).await);
    assert_eq!(
        (s.key, s.asc),
        (key::NOT_READY, alua::TARGET_PORT_IN_STANDBY)
    );
    assert!(lu
        .control()
        .exposure()
        .admit(9, vtgt_engine::IoKind::Read, 0, 1)
        .is_err());
    // INQUIRY and REPORT TARGET PORT GROUPS still work there.
    good(&exec(&lu, &[0x12, 0, 0, 0, 36, 0], vec![], 9, p2).await);
    good(&exec(&lu, &rtpg, vec![], 9, p2).await);
    // Port 1 is unaffected, and the issuer got no unit attention.
    good(&run(&lu, &c16(0x88, 0, 0, 1), vec![]).await);
    // Bad state code and unknown group.
    let s = sense(&run(&lu, &stpg, vec![0, 0, 0, 0, 0x0E, 0, 0, 2]).await);
    assert_eq!(s.field, Some(FieldPointer::param(4, Some(3))));
    let s = sense(&run(&lu, &stpg, vec![0, 0, 0, 0, 0x00, 0, 0, 9]).await);
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
    // Back to active: port 2 works again.
    good(&run(&lu, &stpg, vec![0, 0, 0, 0, 0x00, 0, 0, 2]).await);
    let _ = exec(&lu, &[0, 0, 0, 0, 0, 0], vec![], 9, p2).await;
    good(&exec(&lu, &c16(0x88, 0, 0, 1), vec![], 9, p2).await);
}

#[tokio::test]
async fn new_commands_are_reported_with_usage() {
    for (op, sa) in [
        (0x42u8, None),
        (0x41, None),
        (0x93, None),
        (0x89, None),
        (0x8B, None),
        (0x9C, None),
        (0x9E, Some(0x12u16)),
        (0x83, Some(0x00)),
        (0x84, Some(0x00)),
        (0x84, Some(0x03)),
        (0xA3, Some(0x0A)),
        (0xA4, Some(0x0A)),
    ] {
        let info = opcodes::lookup(op, sa).expect("listed");
        assert_eq!(info.usage[0], op);
        let lu = mem_lu();
        let mut c = [0u8; 12];
        c[0] = 0xA3;
        c[1] = 0x0C;
        c[2] = if sa.is_some() { 0x02 } else { 0x01 };
        c[3] = op;
        c[4..6].copy_from_slice(&sa.unwrap_or(0).to_be_bytes());
        c[9] = 64;
        let r = run(&lu, &c, vec![]).await;
        good(&r);
        assert_eq!(r.data_in[1] & 0x07, 0x03, "supported: {op:02x}");
        assert_eq!(&r.data_in[4..], info.usage);
    }
}

#[tokio::test]
async fn write_protect_refuses_every_new_write_command() {
    let lu = mem_lu();
    let (c, d) = write16(0, vec![0x33; 8 * 512]);
    good(&run(&lu, &c, d).await);
    let mode = lu.mode();
    lu.set_mode(mode::ModeParams { swp: true, ..mode });
    let protect = |r: &ScsiResult| {
        let s = sense(r);
        assert_eq!((s.key, s.asc), (key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    };
    let p = unmap_list(&[(0, 1)]);
    protect(&run(&lu, &unmap_cdb(p.len()), p).await);
    protect(&run(&lu, &ws10(0x08, 0, 1), vec![0; 512]).await);
    protect(&run(&lu, &c16(0x93, 0x01, 0, 1), vec![]).await);
    let mut data = vec![0x33; 512];
    data.extend(vec![0x44; 512]);
    protect(&run(&lu, &caw(0, 1), data).await);
    protect(&run(&lu, &c16(0x8B, 0, 0, 1), vec![0xFF; 512]).await);
    let mut wa = c16(0x9C, 0, 0, 0);
    wa[10..14].copy_from_slice(&[0, 0, 0, 8]);
    protect(&run(&lu, &wa, vec![0; 4096]).await);
    let p = xcopy_list(&[inquiry::naa6(0x1111)], &[(0, 0, 1, 0, 1)], 1);
    protect(&run(&lu, &xcopy_cdb(p.len()), p).await);
    // Nothing changed.
    assert!(read(&lu, 0, 8).await.iter().all(|&b| b == 0x33));
}

#[tokio::test]
async fn extended_copy_list_id_usage() {
    let lu = mem_lu();
    let naa = inquiry::naa6(0x1111);
    // List ID usage 11b (no list ID) needs a zero list identifier.
    let mut p = xcopy_list(&[naa], &[(0, 0, 1, 0, 1)], 5);
    p[1] = 0x18;
    let s = sense(&run(&lu, &xcopy_cdb(p.len()), p).await);
    assert_eq!(s, Sense::invalid_param_field(0, None));
    // Usage 10b: the copy runs but its results are not kept.
    let mut p = xcopy_list(&[naa], &[(0, 0, 1, 0, 1)], 5);
    p[1] = 0x10;
    good(&run(&lu, &xcopy_cdb(p.len()), p).await);
    let mut rc = [0u8; 16];
    rc[0] = 0x84;
    rc[2] = 5;
    rc[13] = 64;
    assert_eq!(
        sense(&run(&lu, &rc, vec![]).await),
        Sense::invalid_cdb_field(2, None)
    );
    // Results are per nexus: another nexus does not see list 6.
    let p = xcopy_list(&[naa], &[(0, 0, 1, 0, 1)], 6);
    good(&run(&lu, &xcopy_cdb(p.len()), p).await);
    rc[2] = 6;
    good(&run(&lu, &rc, vec![]).await);
    assert_eq!(
        sense(&exec(&lu, &rc, vec![], 2, PORT).await),
        Sense::invalid_cdb_field(2, None)
    );
    // The Third-party Copy VPD page lists both commands.
    let v = run(&lu, &[0x12, 1, 0x8F, 0, 255, 0], vec![]).await;
    good(&v);
    assert_eq!(&v.data_in[4..6], &[0, 1], "supported commands descriptor");
    assert!(v.data_in.windows(3).any(|w| w == [0x83, 1, 0]));
    assert!(v.data_in.windows(4).any(|w| w == [0x84, 2, 0, 3]));
}

#[tokio::test]
async fn read_defect_data_reports_empty_lists() {
    let lu = mem_lu();
    // (10): REQ_PLIST + REQ_GLIST, long block format (011b).
    let r = run(&lu, &[0x37, 0, 0x1B, 0, 0, 0, 0, 0, 255, 0], vec![]).await;
    good(&r);
    assert_eq!(&r.data_in[..], &[0, 0x1B, 0, 0]);
    // The allocation length truncates.
    let r = run(&lu, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 2, 0], vec![]).await;
    good(&r);
    assert_eq!(&r.data_in[..], &[0, 0x18]);
    // (12): only the grown list, short block format; 8-byte header with a
    // 32-bit defect list length of zero.
    let r = run(&lu, &[0xB7, 0x08, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], vec![]).await;
    good(&r);
    assert_eq!(&r.data_in[..], &[0, 0x08, 0, 0, 0, 0, 0, 0]);
    // Reserved bits in the (10) CDB are invalid fields.
    let s = sense(&run(&lu, &[0x37, 0x01, 0x18, 0, 0, 0, 0, 0, 255, 0], vec![]).await);
    assert_eq!(s, Sense::invalid_cdb_field(1, Some(0)));
    // Both are in REPORT SUPPORTED OPERATION CODES.
    for (op, len) in [(0x37u8, 10usize), (0xB7, 12)] {
        let r = run(
            &lu,
            &[0xA3, 0x0C, 0x01, op, 0, 0, 0, 0, 0, 64, 0, 0],
            vec![],
        )
        .await;
        good(&r);
        assert_eq!(r.data_in[1] & 0x07, 0x03, "opcode {op:#x} supported");
        assert_eq!(
            u16::from_be_bytes([r.data_in[2], r.data_in[3]]) as usize,
            len
        );
    }
}

#[tokio::test]
async fn block_limits_match_transport() {
    let lu = mem_lu();
    let b0 = run(&lu, &[0x12, 1, 0xB0, 0, 255, 0], vec![]).await.data_in;
    let max = u32::from_be_bytes(b0[8..12].try_into().unwrap());
    assert_eq!(max, 65536);
    assert_eq!(max * 512, MAX_TRANSFER_BYTES);
    assert_eq!(max_transfer_blocks(4096) * 4096, MAX_TRANSFER_BYTES);
    assert_eq!(max_transfer_blocks(512), MAX_TRANSFER_BLOCKS);
}
