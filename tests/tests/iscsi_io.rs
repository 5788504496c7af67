//! SCSI I/O over loopback: round trips, R2T flows under many negotiated
//! limits, digests, concurrency, residuals and sense.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use tokio::task::JoinSet;
use vtgt_initiator::iscsi::{DataDir, Session};

/// Writes `len` bytes at `lba` with the given CDB flavour and reads them
/// back with the other flavour; the data must match.
async fn round_trip(s: &Session, lba: u64, len: usize, seed: u64, use16: bool) {
    assert_eq!(len % BLOCK, 0);
    let blocks = (len / BLOCK) as u32;
    let data = pattern(seed, len);
    let wcdb = if use16 {
        write16(lba, blocks)
    } else {
        write10(lba as u32, blocks as u16, false)
    };
    let r = within(
        "write",
        s.command(0, &wcdb, DataDir::Write, len as u32, data.clone()),
    )
    .await
    .expect("write");
    assert_good(&format!("write {len} B at {lba}"), &r);
    assert!(!r.overflow && !r.underflow, "write residual flags: {r:?}");
    let rcdb = if use16 {
        read10(lba as u32, blocks as u16)
    } else {
        read16(lba, blocks)
    };
    let r = within(
        "read",
        s.command(0, &rcdb, DataDir::Read, len as u32, Bytes::new()),
    )
    .await
    .expect("read");
    assert_good(&format!("read {len} B at {lba}"), &r);
    assert!(!r.overflow && !r.underflow, "read residual flags");
    assert_same(&format!("{len} B at LBA {lba}"), &r.data, &data);
}

#[tokio::test]
async fn read_write_10_and_16_round_trips() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    let mut lba = 0u64;
    for (i, len) in [512usize, 4096, 65_536, 128 * 1024].into_iter().enumerate() {
        round_trip(&s, lba, len, i as u64, false).await;
        lba += (len / BLOCK) as u64;
        round_trip(&s, lba, len, 100 + i as u64, true).await;
        lba += (len / BLOCK) as u64;
    }
    // READ(16)/WRITE(16) at the last blocks of the volume.
    round_trip(&s, VOLUME_BLOCKS - 8, 4096, 42, true).await;
    // Earlier data is intact after later writes.
    let first = read_at(&s, 0, 1).await;
    assert_same(
        "LBA 0 still holds the first pattern",
        &first,
        &pattern(0, 512),
    );
    srv.shutdown().await.unwrap();
}

const SIZES: [usize; 4] = [512, 8192, 300 * 1024, (1 << 20) + 512];

/// (MaxBurstLength, FirstBurstLength, initiator MaxRecvDataSegmentLength,
/// MaxOutstandingR2T)
const LIMITS: [(u32, u32, u32, u16); 3] = [
    (1 << 20, 65_536, 262_144, 1),
    (16_384, 8192, 4096, 4),
    (4096, 512, 512, 16),
];

async fn r2t_matrix(digests: bool, limits: &[(u32, u32, u32, u16)]) {
    let (srv, addr) = start_mem().await;
    let mut seed = if digests { 5000 } else { 1000 };
    for imm in ["Yes", "No"] {
        for ir2t in ["Yes", "No"] {
            for &(mbl, fbl, mrdsl, r2ts) in limits {
                let mut c = lcfg(INITIATOR, Some(TARGET))
                    .key("ImmediateData", imm)
                    .key("InitialR2T", ir2t)
                    .key("MaxBurstLength", &mbl.to_string())
                    .key("FirstBurstLength", &fbl.to_string())
                    .key("MaxRecvDataSegmentLength", &mrdsl.to_string())
                    .key("MaxOutstandingR2T", &r2ts.to_string());
                if digests {
                    c = c.key("HeaderDigest", "CRC32C").key("DataDigest", "CRC32C");
                }
                let s = login_with(addr, c).await;
                let p = s.params();
                assert_eq!(p.immediate_data, imm == "Yes");
                assert_eq!(p.initial_r2t, ir2t == "Yes");
                assert_eq!((p.max_burst_length, p.first_burst_length), (mbl, fbl));
                assert_eq!(p.initiator_max_recv_data_segment_length, mrdsl);
                assert_eq!(p.max_outstanding_r2t, r2ts);
                assert_eq!((p.header_digest, p.data_digest), (digests, digests));
                let mut lba = 0u64;
                for len in SIZES {
                    seed += 1;
                    round_trip(&s, lba, len, seed, seed % 2 == 0).await;
                    lba += (len / BLOCK) as u64 + 1;
                }
                within("logout", s.logout()).await.expect("logout");
            }
        }
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn r2t_flows_for_every_immediate_and_initial_r2t_combination() {
    r2t_matrix(false, &LIMITS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2t_flows_on_a_multi_threaded_runtime() {
    r2t_matrix(false, &[(16_384, 8192, 4096, 1), (4096, 512, 512, 1)]).await;
}

/// With several R2Ts outstanding the initiator must still send the data
/// sequences in offset order (DataSequenceInOrder=Yes, RFC 7143 §13.19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2t_flows_with_several_outstanding_r2ts_on_a_multi_threaded_runtime() {
    r2t_matrix(false, &LIMITS[1..]).await;
}

#[tokio::test]
async fn r2t_flows_with_header_and_data_digests() {
    r2t_matrix(true, &LIMITS[1..]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_commands_in_flight() {
    let (srv, addr) = start_mem().await;
    let s = Arc::new(login(addr, INITIATOR).await);
    const N: u64 = 64;
    const LEN: usize = 16 * 1024;
    let mut set = JoinSet::new();
    for i in 0..N {
        let s = s.clone();
        set.spawn(async move {
            let lba = (i * (LEN / BLOCK) as u64) as u32;
            write_at(&s, lba, pattern(9000 + i, LEN)).await;
        });
    }
    within("64 writes", async {
        while let Some(r) = set.join_next().await {
            r.expect("write task");
        }
    })
    .await;
    let mut set = JoinSet::new();
    for i in 0..N {
        let s = s.clone();
        set.spawn(async move {
            let lba = (i * (LEN / BLOCK) as u64) as u32;
            let got = read_at(&s, lba, (LEN / BLOCK) as u16).await;
            assert_same(&format!("command {i}"), &got, &pattern(9000 + i, LEN));
        });
    }
    within("64 reads", async {
        while let Some(r) = set.join_next().await {
            r.expect("read task");
        }
    })
    .await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_interleaved_then_cross_verified() {
    let (srv, addr) = start_mem().await;
    let a = Arc::new(login(addr, INITIATOR).await);
    let b = Arc::new(login(addr, INITIATOR_B).await);
    const CHUNK: usize = 8192;
    const CHUNKS: u32 = 32;
    let blocks = (CHUNK / BLOCK) as u32;
    let run = |s: Arc<Session>, parity: u32| async move {
        for i in (0..CHUNKS).filter(|i| i % 2 == parity) {
            write_at(&s, i * blocks, pattern(20_000 + i as u64, CHUNK)).await;
            // Interleave reads of our own earlier chunks.
            let got = read_at(&s, i * blocks, blocks as u16).await;
            assert_same("own chunk", &got, &pattern(20_000 + i as u64, CHUNK));
        }
    };
    let (ra, rb) = within("concurrent sessions", async {
        tokio::join!(
            tokio::spawn(run(a.clone(), 0)),
            tokio::spawn(run(b.clone(), 1))
        )
    })
    .await;
    ra.unwrap();
    rb.unwrap();
    for (reader, name) in [(&a, "a"), (&b, "b")] {
        let all = read_at(reader, 0, (blocks * CHUNKS) as u16).await;
        for i in 0..CHUNKS as usize {
            assert_same(
                &format!("session {name} reads chunk {i}"),
                &all[i * CHUNK..(i + 1) * CHUNK],
                &pattern(20_000 + i as u64, CHUNK),
            );
        }
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn read_residuals_overflow_and_underflow() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    let data = pattern(77, 4096);
    write_at(&s, 100, data.clone()).await;
    // EDTL smaller than the 4096 bytes the CDB asks for: overflow.
    let r = within(
        "short read",
        s.command(0, &read10(100, 8), DataDir::Read, 1536, Bytes::new()),
    )
    .await
    .unwrap();
    assert_good("overflow read", &r);
    assert!(r.overflow && !r.underflow, "{r:?}");
    assert_eq!(r.residual, 4096 - 1536);
    assert_same("overflow read data", &r.data, &data[..1536]);
    // EDTL larger than the CDB wants: underflow.
    let r = within(
        "long read",
        s.command(0, &read10(100, 8), DataDir::Read, 8192, Bytes::new()),
    )
    .await
    .unwrap();
    assert_good("underflow read", &r);
    assert!(r.underflow && !r.overflow, "{r:?}");
    assert_eq!(r.residual, 4096);
    assert_same("underflow read data", &r.data, &data);
    // Exact: neither.
    let r = within(
        "exact read",
        s.command(0, &read10(100, 8), DataDir::Read, 4096, Bytes::new()),
    )
    .await
    .unwrap();
    assert!(!r.underflow && !r.overflow && r.residual == 0, "{r:?}");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn write_residuals() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    let old = pattern(4, 1024);
    write_at(&s, 300, old.clone()).await;
    // The CDB wants 2 blocks but EDTL is one block: overflow of 512 bytes;
    // only the complete block received is written.
    let new = pattern(5, 512);
    let r = within(
        "short write",
        s.command(0, &write10(300, 2, false), DataDir::Write, 512, new.clone()),
    )
    .await
    .unwrap();
    assert_good("overflow write", &r);
    assert!(r.overflow && !r.underflow, "{r:?}");
    assert_eq!(r.residual, 512);
    let got = read_at(&s, 300, 2).await;
    assert_same("block received", &got[..512], &new);
    assert_same("block not received", &got[512..], &old[512..]);
    // EDTL larger than the CDB wants: underflow, the CDB's blocks written.
    let more = pattern(6, 2048);
    let r = within(
        "long write",
        s.command(
            0,
            &write10(300, 2, false),
            DataDir::Write,
            2048,
            more.clone(),
        ),
    )
    .await
    .unwrap();
    assert_good("underflow write", &r);
    assert!(r.underflow && !r.overflow, "{r:?}");
    assert_eq!(r.residual, 1024);
    let got = read_at(&s, 300, 4).await;
    assert_same("CDB range written", &got[..1024], &more[..1024]);
    assert_same("beyond the CDB untouched", &got[1024..], &[0u8; 1024]);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn fua_write_and_synchronize_cache() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    let data = pattern(31, 8192);
    let r = within(
        "fua write",
        s.command(
            0,
            &write10(64, 16, true),
            DataDir::Write,
            8192,
            data.clone(),
        ),
    )
    .await
    .unwrap();
    assert_good("FUA write", &r);
    assert_same("after FUA", &read_at(&s, 64, 16).await, &data);
    let r = within(
        "sync cache",
        s.command(0, &sync_cache10(), DataDir::None, 0, Bytes::new()),
    )
    .await
    .unwrap();
    assert_good("SYNCHRONIZE CACHE", &r);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn out_of_range_read_is_illegal_request() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    for (cdb, what) in [
        (read10(VOLUME_BLOCKS as u32, 1), "READ(10) at capacity"),
        (
            read10(VOLUME_BLOCKS as u32 - 1, 2),
            "READ(10) across the end",
        ),
        (read16(VOLUME_BLOCKS, 1), "READ(16) at capacity"),
        (read16(u64::MAX, 1), "READ(16) at LBA 2^64-1"),
    ] {
        let r = within(what, s.command(0, &cdb, DataDir::Read, 1024, Bytes::new()))
            .await
            .unwrap();
        assert_eq!(r.status, CHECK_CONDITION, "{what}");
        assert_eq!(r.sense_key(), Some((0x05, 0x21, 0x00)), "{what}");
    }
    let r = within(
        "write past end",
        s.command(
            0,
            &write16(VOLUME_BLOCKS, 1),
            DataDir::Write,
            512,
            pattern(1, 512),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, CHECK_CONDITION);
    assert_eq!(r.sense_key(), Some((0x05, 0x21, 0x00)));
    // The last valid block still works.
    round_trip(&s, VOLUME_BLOCKS - 1, 512, 3, true).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_commands_than_the_cmdsn_window() {
    let (srv, addr) = start_mem().await;
    let s = Arc::new(login(addr, INITIATOR).await);
    let base = pattern(300, 200 * 4096);
    write_at(&s, 0, base.clone()).await;
    // 200 reads at once: more than the target's window of 128, so the
    // initiator must wait for MaxCmdSN to move.
    let mut set = JoinSet::new();
    for i in 0..200usize {
        let s = s.clone();
        let want = base.slice(i * 4096..(i + 1) * 4096);
        set.spawn(async move {
            let got = read_at(&s, (i * 8) as u32, 8).await;
            assert_same(&format!("read {i}"), &got, &want);
        });
    }
    within("200 reads", async {
        while let Some(r) = set.join_next().await {
            r.expect("read task");
        }
    })
    .await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn luns_are_separate_and_a_missing_lun_is_reported() {
    let mut cfg = mem_config();
    cfg.volumes.push(volume("v1", 1 << 20));
    cfg.targets[0].luns.push(vtgt::config::LunConfig {
        id: 1,
        volume: "v1".into(),
        write_protect: false,
        removable: false,
        sanitize_rate_mib: 0,
    });
    let (srv, addr) = start(cfg).await;
    let s = login(addr, INITIATOR).await;
    let d0 = pattern(400, 4096);
    let d1 = pattern(401, 4096);
    write_at(&s, 10, d0.clone()).await;
    let r = within(
        "write LUN 1",
        s.command(
            lun(1),
            &write10(10, 8, false),
            DataDir::Write,
            4096,
            d1.clone(),
        ),
    )
    .await
    .unwrap();
    assert_good("write LUN 1", &r);
    assert_same("LUN 0", &read_at(&s, 10, 8).await, &d0);
    let r = within(
        "read LUN 1",
        s.command(lun(1), &read10(10, 8), DataDir::Read, 4096, Bytes::new()),
    )
    .await
    .unwrap();
    assert_good("read LUN 1", &r);
    assert_same("LUN 1", &r.data, &d1);
    // LUN 1 is 1 MiB: block 2048 is beyond it but not beyond LUN 0.
    let r = within(
        "read past LUN 1",
        s.command(lun(1), &read10(2048, 1), DataDir::Read, 512, Bytes::new()),
    )
    .await
    .unwrap();
    assert_eq!(r.sense_key(), Some((0x05, 0x21, 0x00)));
    // REPORT LUNS lists exactly 0 and 1.
    let mut cdb = vec![0u8; 12];
    cdb[0] = 0xa0;
    cdb[6..10].copy_from_slice(&4096u32.to_be_bytes());
    let r = within(
        "REPORT LUNS",
        s.command(0, &cdb, DataDir::Read, 4096, Bytes::new()),
    )
    .await
    .unwrap();
    assert_good("REPORT LUNS", &r);
    assert_eq!(&r.data[..4], &16u32.to_be_bytes(), "LUN list length");
    assert_eq!(&r.data[8..16], &[0u8; 8]);
    assert_eq!(&r.data[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
    // A LUN that does not exist: LOGICAL UNIT NOT SUPPORTED.
    for l in [2u64, 7, 255] {
        let r = within(
            "read missing LUN",
            s.command(lun(l), &read10(0, 1), DataDir::Read, 512, Bytes::new()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, CHECK_CONDITION, "LUN {l}");
        assert_eq!(r.sense_key(), Some((0x05, 0x25, 0x00)), "LUN {l}");
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn second_command_can_be_issued_before_the_first_response() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    let a = s.alloc_itt();
    let b = s.alloc_itt();
    // Building takes a CmdSN; the target's window (128) admits both.
    let built = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        s.build_command(0, &test_unit_ready(), DataDir::None, 0, Bytes::new(), a)
            .await
            .unwrap();
        s.build_command(0, &test_unit_ready(), DataDir::None, 0, Bytes::new(), b)
            .await
            .unwrap();
    })
    .await;
    assert!(built.is_ok(), "second CmdSN blocked on a window of one");
    srv.shutdown().await.unwrap();
}

/// Wire-level checks with a raw connection: Data-In PDUs respect our
/// MaxRecvDataSegmentLength and are numbered in order; R2Ts respect
/// MaxBurstLength and MaxOutstandingR2T and are numbered in order.
#[tokio::test]
async fn data_in_and_r2t_sequences_respect_negotiated_limits() {
    use vtgt_protocol::iscsi::pdu::{self, Opcode, Pdu, RESERVED_TAG};
    let (srv, addr) = start_mem().await;
    let mut raw = RawConn::login(
        addr,
        INITIATOR,
        &[
            ("MaxRecvDataSegmentLength", "512"),
            ("MaxBurstLength", "4096"),
            ("FirstBurstLength", "512"),
            ("MaxOutstandingR2T", "2"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
        ],
    )
    .await;
    assert_eq!(raw.params.max_outstanding_r2t, 2);
    const LEN: usize = 64 * 1024;
    let data = pattern(600, LEN);
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&write10(0, (LEN / BLOCK) as u16, false));
    let cmd = pdu::ScsiCommand {
        final_bit: true,
        write: true,
        attr: 1,
        itt: 0x10,
        edtl: LEN as u32,
        cmdsn: raw.next_cmdsn(),
        exp_statsn: raw.exp_statsn,
        cdb,
        ..Default::default()
    };
    raw.send(&Pdu::new(cmd.to_bhs(), Bytes::new())).await;
    let mut next_r2tsn = 0u32;
    let mut covered = 0u32;
    let status = loop {
        // Collect what the target sends before we answer anything.
        let mut r2ts = Vec::new();
        let mut response = None;
        loop {
            let wait = if r2ts.is_empty() {
                STEP
            } else {
                std::time::Duration::from_millis(100)
            };
            match raw.recv(wait).await {
                Got::Pdu(p) if p.bhs.opcode() == Some(Opcode::R2t) => {
                    r2ts.push(pdu::R2t::parse(&p.bhs))
                }
                Got::Pdu(p) if p.bhs.opcode() == Some(Opcode::ScsiResponse) => {
                    response = Some(pdu::ScsiResponse::parse(&p.bhs));
                    break;
                }
                Got::Pdu(p) => panic!("unexpected {:?}", p.bhs.opcode()),
                Got::Silent if !r2ts.is_empty() => break,
                other => panic!("no R2T or response: {other:?}"),
            }
        }
        if let Some(r) = response {
            assert!(r2ts.is_empty());
            break r;
        }
        assert!(r2ts.len() <= 2, "{} R2Ts outstanding", r2ts.len());
        for r in r2ts {
            assert_eq!(r.itt, 0x10);
            assert_eq!(r.r2tsn, next_r2tsn, "R2TSN in order");
            next_r2tsn += 1;
            assert_eq!(r.offset, covered, "R2T offsets are contiguous");
            assert!(r.length > 0 && r.length <= 4096, "R2T length {}", r.length);
            assert_ne!(r.ttt, RESERVED_TAG);
            // Answer in PDUs of the target's MaxRecvDataSegmentLength or less.
            let mut off = r.offset as usize;
            let end = off + r.length as usize;
            let mut datasn = 0;
            while off < end {
                let n = (end - off).min(1024);
                let d = pdu::DataOut {
                    final_bit: off + n == end,
                    lun: 0,
                    itt: 0x10,
                    ttt: r.ttt,
                    exp_statsn: raw.exp_statsn,
                    datasn,
                    offset: off as u32,
                };
                raw.send(&Pdu::new(d.to_bhs(), data.slice(off..off + n)))
                    .await;
                datasn += 1;
                off += n;
            }
            covered += r.length;
        }
    };
    assert_eq!(covered as usize, LEN, "R2Ts cover the whole transfer");
    assert_eq!(status.status, GOOD);
    assert_eq!(next_r2tsn as usize, LEN / 4096);
    // Read it back: Data-In PDUs of at most 512 bytes, DataSN 0.., offsets
    // contiguous, status in the last one (or a separate response).
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&read10(0, (LEN / BLOCK) as u16));
    let cmd = pdu::ScsiCommand {
        final_bit: true,
        read: true,
        attr: 1,
        itt: 0x11,
        edtl: LEN as u32,
        cmdsn: raw.next_cmdsn(),
        exp_statsn: raw.exp_statsn,
        cdb,
        ..Default::default()
    };
    raw.send(&Pdu::new(cmd.to_bhs(), Bytes::new())).await;
    let mut got = Vec::with_capacity(LEN);
    let mut datasn = 0u32;
    for _ in 0..=LEN / 512 + 1 {
        match raw.recv(STEP).await {
            Got::Pdu(p) if p.bhs.opcode() == Some(Opcode::DataIn) => {
                let d = pdu::DataIn::parse(&p.bhs);
                assert!(p.data.len() <= 512, "Data-In of {} bytes", p.data.len());
                assert_eq!(d.datasn, datasn, "DataSN in order");
                assert_eq!(d.offset as usize, got.len(), "offsets contiguous");
                datasn += 1;
                got.extend_from_slice(&p.data);
                if d.has_status {
                    assert!(d.final_bit);
                    assert_eq!(d.status, GOOD);
                    break;
                }
            }
            Got::Pdu(p) if p.bhs.opcode() == Some(Opcode::ScsiResponse) => {
                assert_eq!(pdu::ScsiResponse::parse(&p.bhs).status, GOOD);
                break;
            }
            other => panic!("unexpected during Data-In: {other:?}"),
        }
    }
    assert_same("raw read back", &got, &data);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn maximum_transfer_length_is_advertised_and_enforced() {
    // A volume larger than the maximum transfer (32 MiB).
    const BIG_BYTES: u64 = 64 << 20;
    let mut cfg = mem_config();
    cfg.volumes = vec![volume("v0", BIG_BYTES)];
    let (srv, addr) = start(cfg).await;
    let s = login(addr, INITIATOR).await;
    // Block Limits VPD page: MAXIMUM TRANSFER LENGTH in blocks.
    let inquiry = [0x12u8, 0x01, 0xb0, 0x00, 0xff, 0x00];
    let r = within(
        "INQUIRY B0h",
        s.command(0, &inquiry, DataDir::Read, 255, Bytes::new()),
    )
    .await
    .unwrap();
    assert_good("INQUIRY B0h", &r);
    assert_eq!(r.data[1], 0xb0);
    let max = u32::from_be_bytes(r.data[8..12].try_into().unwrap());
    assert!(
        max > 0 && (max as u64) < BIG_BYTES / BLOCK as u64,
        "max transfer {max}"
    );
    // Exactly the maximum works.
    let len = max as usize * BLOCK;
    let data = pattern(700, len);
    let r = within(
        "max write",
        s.command(
            0,
            &write16(0, max),
            DataDir::Write,
            len as u32,
            data.clone(),
        ),
    )
    .await
    .unwrap();
    assert_good("write of the maximum transfer length", &r);
    let r = within(
        "max read",
        s.command(0, &read16(0, max), DataDir::Read, len as u32, Bytes::new()),
    )
    .await
    .unwrap();
    assert_good("read of the maximum transfer length", &r);
    assert_same("max transfer", &r.data, &data);
    // One block more: INVALID FIELD IN CDB, nothing written.
    let over = len + BLOCK;
    let r = within(
        "oversized read",
        s.command(
            0,
            &read16(0, max + 1),
            DataDir::Read,
            over as u32,
            Bytes::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, CHECK_CONDITION);
    assert_eq!(r.sense_key(), Some((0x05, 0x24, 0x00)));
    let r = within(
        "oversized write",
        s.command(
            0,
            &write16(0, max + 1),
            DataDir::Write,
            over as u32,
            pattern(701, over),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, CHECK_CONDITION);
    assert_eq!(r.sense_key(), Some((0x05, 0x24, 0x00)));
    assert_same(
        "after refused write",
        &read_at(&s, 0, 8).await,
        &data[..4096],
    );
    srv.shutdown().await.unwrap();
}
