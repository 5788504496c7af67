//! Malformed and hostile input: raw bytes before login, broken framing,
//! sequence errors and digest errors in the full-feature phase. After each
//! abuse a separate healthy session must keep working.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vtgt_initiator::iscsi::{DataDir, Session};
use vtgt_protocol::iscsi::pdu::{self, reject, Bhs, Digests, Opcode, Pdu, RESERVED_TAG};

const CLOSE_WAIT: Duration = Duration::from_secs(5);

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = within("connect", TcpStream::connect(addr)).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A leading Login Request header (security stage -> operational).
fn login_bhs(dsl: u32) -> Bhs {
    let h = pdu::LoginRequestHdr {
        transit: true,
        cont: false,
        csg: 0,
        nsg: 1,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0, 0x12, 0x34],
        tsih: 0,
        itt: 1,
        cid: 0,
        cmdsn: 1,
        exp_statsn: 0,
    };
    let mut b = h.to_bhs();
    b.set_data_segment_len(dsl);
    b
}

/// If the target answered before closing, it must have been a refusal.
fn assert_refusal_or_nothing(seen: &[u8]) {
    if seen.is_empty() {
        return;
    }
    assert!(seen.len() >= 48, "partial answer: {seen:?}");
    assert_eq!(seen[0] & 0x3f, 0x23, "answer is not a Login Response");
    assert_ne!(seen[36], 0, "login answered with success");
}

#[tokio::test]
async fn garbage_before_login_closes_the_connection() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR).await;
    let blobs: [&[u8]; 4] = [
        &[0xa5; 48],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n..........................",
        &[0u8; 200],
        &[0xff; 4096],
    ];
    for (i, blob) in blobs.iter().enumerate() {
        let mut s = connect(addr).await;
        let _ = s.write_all(blob).await;
        let seen = until_closed(&mut s, CLOSE_WAIT).await;
        assert_refusal_or_nothing(&seen);
        check_healthy(&healthy, 8 * i as u32, i as u64).await;
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn login_claiming_16_mib_segment_is_refused_without_waiting_for_it() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR).await;
    for dsl in [pdu::MAX_DATA_SEGMENT_LEN, 16 << 20 >> 1, 65_537] {
        let mut s = connect(addr).await;
        let mut out = BytesMut::new();
        out.extend_from_slice(&login_bhs(dsl).0);
        // Some of the promised data, never all of it.
        out.extend_from_slice(b"InitiatorName=iqn.2026-11.x:y\0");
        s.write_all(&out).await.unwrap();
        // The connection stays open on our side: the target must give up by
        // itself, promptly.
        let seen = until_closed(&mut s, CLOSE_WAIT).await;
        assert_refusal_or_nothing(&seen);
    }
    check_healthy(&healthy, 0, 1).await;
    let s2 = login(addr, INITIATOR_B).await;
    check_healthy(&s2, 8, 2).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn non_login_opcode_before_login_is_refused() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR).await;
    let nop = pdu::Nop {
        immediate: true,
        itt: 5,
        ttt: RESERVED_TAG,
        sn: 1,
        ..Default::default()
    };
    let cmd = pdu::ScsiCommand {
        final_bit: true,
        read: true,
        itt: 6,
        edtl: 512,
        cmdsn: 1,
        cdb: {
            let mut c = [0u8; 16];
            c[..10].copy_from_slice(&read10(0, 1));
            c
        },
        ..Default::default()
    };
    for p in [
        Pdu::new(nop.to_bhs(Opcode::NopOut), Bytes::new()),
        Pdu::new(cmd.to_bhs(), Bytes::new()),
    ] {
        let mut s = connect(addr).await;
        let mut out = BytesMut::new();
        p.encode(&mut out, Digests::default());
        s.write_all(&out).await.unwrap();
        let seen = until_closed(&mut s, CLOSE_WAIT).await;
        assert!(seen.len() >= 48, "no Login Response before close");
        assert_eq!(seen[0] & 0x3f, 0x23, "answer is not a Login Response");
        // RFC 7143 §11.13.5: 0x020b Invalid During Login.
        assert_eq!((seen[36], seen[37]), (2, 0x0b));
        assert!(seen.len() < 48 + 8192 + 8, "no data phase may follow");
        check_healthy(&healthy, 0, 3).await;
    }
    srv.shutdown().await.unwrap();
}

/// Writes `old` at `lba` through `s` and returns it, to check later that an
/// aborted write left it alone.
async fn seed_old(s: &Session, lba: u32, seed: u64, len: usize) -> Bytes {
    let old = pattern(seed, len);
    write_at(s, lba, old.clone()).await;
    old
}

#[tokio::test]
async fn data_out_with_bad_datasn_fails_the_command_and_writes_nothing() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let s = login_with(
        addr,
        lcfg(INITIATOR, Some(TARGET))
            .key("ImmediateData", "No")
            .key("InitialR2T", "No"),
    )
    .await;
    assert!(!s.params().initial_r2t && !s.params().immediate_data);
    let lba = 1000;
    let old = seed_old(&healthy, lba, 11, 16384).await;
    let new = pattern(12, 16384);
    for bad_sn in [2u32, 0, 0xffff_ffff] {
        let itt = s.alloc_itt();
        let (_, pdus) = s
            .build_command(
                0,
                &write10(lba, 32, false),
                DataDir::Write,
                16384,
                new.clone(),
                itt,
            )
            .await
            .unwrap();
        // Unsolicited data in two PDUs; the second has the wrong DataSN.
        let mut sent = vec![pdus[0].clone()];
        for (i, (sn, off)) in [(0u32, 0usize), (bad_sn, 8192)].into_iter().enumerate() {
            let d = pdu::DataOut {
                final_bit: i == 1,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                exp_statsn: 0,
                datasn: sn,
                offset: off as u32,
            };
            sent.push(Pdu::new(d.to_bhs(), new.slice(off..off + 8192)));
        }
        let r = within(
            "command with bad DataSN",
            s.exchange_scsi(itt, 0, Bytes::new(), &sent),
        )
        .await
        .expect("a SCSI response, not a dropped session");
        assert_eq!(r.status, CHECK_CONDITION, "DataSN {bad_sn}");
        assert_eq!(
            r.sense_key().map(|(k, a, _)| (k, a)),
            Some((0x0b, 0x4b)),
            "ABORTED COMMAND / DATA PHASE ERROR family: {:?}",
            r.sense_key()
        );
        let got = read_at(&healthy, lba, 32).await;
        assert_same("range after failed write", &got, &old);
        // The same session carries on.
        check_healthy(&s, 2000, 13).await;
        check_healthy(&healthy, 2100, 14).await;
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn data_out_for_unknown_itt_is_ignored() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let s = login(addr, INITIATOR).await;
    let old = seed_old(&healthy, 0, 21, 4096).await;
    for (i, itt) in [0xdead_beefu32, 0x100, 7].into_iter().enumerate() {
        let d = pdu::DataOut {
            final_bit: true,
            lun: 0,
            itt,
            ttt: if i == 0 { RESERVED_TAG } else { 1 },
            exp_statsn: 0,
            datasn: 0,
            offset: 0,
        };
        s.send_raw(&[Pdu::new(d.to_bhs(), pattern(22, 4096))])
            .await
            .unwrap();
        check_healthy(&s, 100, 23 + i as u64).await;
    }
    assert!(s.rejects().is_empty(), "{:?}", s.rejects());
    assert_same("unrelated data", &read_at(&healthy, 0, 8).await, &old);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn cmdsn_outside_the_window_is_silently_ignored() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let s = login(addr, INITIATOR).await;
    check_healthy(&s, 0, 30).await;
    let old = seed_old(&healthy, 500, 31, 4096).await;
    for offset in [1000u32, 0x4000_0000, (-1i32) as u32, (-50i32) as u32] {
        let next = s.peek_cmdsn();
        let itt = s.alloc_itt();
        let (_, pdus) = s
            .build_command(
                0,
                &write10(500, 8, false),
                DataDir::Write,
                4096,
                pattern(32, 4096),
                itt,
            )
            .await
            .unwrap();
        let mut p = pdus.clone();
        p[0].bhs.set_u32(24, next.wrapping_add(offset));
        s.set_cmdsn(next);
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            s.exchange_scsi(itt, 0, pattern(32, 4096), &p),
        )
        .await;
        assert!(r.is_err(), "CmdSN {offset:+} answered: {r:?}");
        // The next in-window command works on the same session.
        check_healthy(&s, 16, 33).await;
        assert!(!s.is_closed());
    }
    assert_same(
        "ignored command wrote nothing",
        &read_at(&healthy, 500, 8).await,
        &old,
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_header_digest_closes_the_connection() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let mut raw = RawConn::login(addr, INITIATOR, &[("HeaderDigest", "CRC32C")]).await;
    assert!(raw.digests.header);
    // A good ping first: the raw connection itself works.
    let nop = |itt: u32, sn: u32| pdu::Nop {
        immediate: true,
        itt,
        ttt: RESERVED_TAG,
        sn,
        ..Default::default()
    };
    raw.send(&Pdu::new(
        nop(9, raw.cmdsn).to_bhs(Opcode::NopOut),
        Bytes::from_static(b"ping"),
    ))
    .await;
    match raw.recv(STEP).await {
        Got::Pdu(p) => {
            assert_eq!(p.bhs.opcode(), Some(Opcode::NopIn));
            assert_eq!(p.bhs.itt(), 9);
            assert_eq!(&p.data[..], b"ping");
        }
        other => panic!("no NOP-In: {other:?}"),
    }
    let mut out = BytesMut::new();
    Pdu::new(nop(10, raw.cmdsn).to_bhs(Opcode::NopOut), Bytes::new()).encode(
        &mut out,
        Digests {
            header: true,
            data: false,
        },
    );
    out[48] ^= 0x01;
    raw.send_bytes(&out).await;
    let seen = raw.expect_close(CLOSE_WAIT).await;
    assert!(
        seen.iter().all(|p| p.bhs.itt() != 10),
        "the corrupted PDU was answered"
    );
    check_healthy(&healthy, 0, 40).await;
    srv.shutdown().await.unwrap();
}

fn write_cmd(itt: u32, cmdsn: u32, lba: u32, len: usize, final_bit: bool) -> pdu::ScsiCommand {
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&write10(lba, (len / BLOCK) as u16, false));
    pdu::ScsiCommand {
        final_bit,
        write: true,
        attr: 1,
        itt,
        edtl: len as u32,
        cmdsn,
        cdb,
        ..Default::default()
    }
}

/// Encodes `p` with a correct header digest (if on) and a wrong data digest.
fn encode_bad_data_digest(p: &Pdu, digests: Digests) -> BytesMut {
    let mut out = BytesMut::new();
    p.encode(&mut out, digests);
    let n = out.len();
    out[n - 1] ^= 0x80;
    out
}

#[tokio::test]
async fn data_digest_error_on_immediate_data_writes_nothing() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let old = seed_old(&healthy, 3000, 50, 4096).await;
    let mut raw = RawConn::login(
        addr,
        INITIATOR,
        &[("DataDigest", "CRC32C"), ("ImmediateData", "Yes")],
    )
    .await;
    assert!(raw.digests.data && raw.params.immediate_data);
    let sn = raw.next_cmdsn();
    let cmd = write_cmd(0x77, sn, 3000, 4096, true);
    let out = encode_bad_data_digest(&Pdu::new(cmd.to_bhs(), pattern(51, 4096)), raw.digests);
    raw.send_bytes(&out).await;
    let seen = raw.expect_close(CLOSE_WAIT).await;
    // RFC 7143 §7.8: a data digest error is answered with a Reject.
    assert!(
        seen.iter().any(|p| p.bhs.opcode() == Some(Opcode::Reject)
            && pdu::Reject::parse(&p.bhs).reason == reject::DATA_DIGEST_ERROR),
        "no Reject(data digest error)"
    );
    assert!(
        !seen
            .iter()
            .any(|p| p.bhs.opcode() == Some(Opcode::ScsiResponse)),
        "the write was executed"
    );
    assert_same(
        "after digest error",
        &read_at(&healthy, 3000, 8).await,
        &old,
    );
    check_healthy(&healthy, 0, 52).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn data_digest_error_on_data_out_writes_nothing() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let old = seed_old(&healthy, 3100, 60, 8192).await;
    let mut raw = RawConn::login(
        addr,
        INITIATOR,
        &[
            ("DataDigest", "CRC32C"),
            ("HeaderDigest", "CRC32C"),
            ("ImmediateData", "No"),
            ("InitialR2T", "No"),
        ],
    )
    .await;
    assert!(raw.digests.data && !raw.params.initial_r2t);
    let sn = raw.next_cmdsn();
    let cmd = write_cmd(0x78, sn, 3100, 8192, false);
    raw.send(&Pdu::new(cmd.to_bhs(), Bytes::new())).await;
    let data = pattern(61, 8192);
    let d0 = pdu::DataOut {
        final_bit: false,
        lun: 0,
        itt: 0x78,
        ttt: RESERVED_TAG,
        exp_statsn: raw.exp_statsn,
        datasn: 0,
        offset: 0,
    };
    raw.send(&Pdu::new(d0.to_bhs(), data.slice(..4096))).await;
    let d1 = pdu::DataOut {
        final_bit: true,
        datasn: 1,
        offset: 4096,
        ..d0
    };
    let out = encode_bad_data_digest(&Pdu::new(d1.to_bhs(), data.slice(4096..)), raw.digests);
    raw.send_bytes(&out).await;
    let seen = raw.expect_close(CLOSE_WAIT).await;
    assert!(
        seen.iter().any(|p| p.bhs.opcode() == Some(Opcode::Reject)
            && pdu::Reject::parse(&p.bhs).reason == reject::DATA_DIGEST_ERROR),
        "no Reject(data digest error)"
    );
    assert!(
        !seen
            .iter()
            .any(|p| p.bhs.opcode() == Some(Opcode::ScsiResponse)
                && pdu::ScsiResponse::parse(&p.bhs).status == GOOD),
        "the write completed GOOD"
    );
    assert_same(
        "after digest error",
        &read_at(&healthy, 3100, 16).await,
        &old,
    );
    check_healthy(&healthy, 0, 62).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_opcode_gets_a_reject() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let s = login(addr, INITIATOR).await;
    for (n, op) in [0x1cu8, 0x0f, 0x3e].into_iter().enumerate() {
        let mut b = Bhs::default();
        b.0[0] = 0x40 | op;
        b.0[1] = 0x80;
        b.set_itt(s.alloc_itt());
        b.set_u32(24, s.peek_cmdsn());
        s.send_raw(&[Pdu::new(b, Bytes::new())]).await.unwrap();
        let mut got = None;
        for _ in 0..200 {
            if let Some(r) = s.rejects().get(n).cloned() {
                got = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (reason, hdr) = got.unwrap_or_else(|| panic!("no Reject for opcode {op:#x}"));
        assert_eq!(reason, reject::COMMAND_NOT_SUPPORTED, "opcode {op:#x}");
        assert_eq!(hdr.opcode_raw(), op, "Reject carries the rejected header");
        check_healthy(&s, 0, 70 + n as u64).await;
        check_healthy(&healthy, 8, 80 + n as u64).await;
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn random_blobs_do_not_hurt_the_server() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR).await;
    let mut rng = StdRng::seed_from_u64(0x7654_3210);
    const BLOBS: usize = 200;
    const PARALLEL: usize = 20;
    let mut blobs = Vec::with_capacity(BLOBS);
    for i in 0..BLOBS {
        let len = rng.gen_range(1..3000usize);
        let mut b = vec![0u8; len];
        rng.fill(&mut b[..]);
        match i % 4 {
            // A plausible Login Request header with random fields.
            0 if len >= 48 => {
                b[0] = 0x43;
                b[4] = 0;
            }
            // A real login header followed by random "keys".
            1 => {
                let data_len = len.min(2000) as u32;
                let mut out = login_bhs(data_len).0.to_vec();
                out.extend_from_slice(&b[..data_len as usize]);
                b = out;
            }
            // Printable text that looks like keys.
            2 => {
                for x in b.iter_mut() {
                    *x = b"abcXYZ=,.:0\0"[*x as usize % 12];
                }
            }
            _ => {}
        }
        blobs.push(b);
    }
    for (round, chunk) in blobs.chunks(PARALLEL).enumerate() {
        let mut set = tokio::task::JoinSet::new();
        for b in chunk {
            let b = b.clone();
            set.spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(&b).await;
                let _ = s.shutdown().await;
                // After our EOF the target must let go.
                until_closed(&mut s, CLOSE_WAIT).await;
            });
        }
        within("blob round", async {
            while let Some(r) = set.join_next().await {
                r.expect("blob connection");
            }
        })
        .await;
        check_healthy(&healthy, (round * 8) as u32, 90 + round as u64).await;
    }
    let fresh = login(addr, INITIATOR_B).await;
    check_healthy(&fresh, 400, 99).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_arriving_out_of_cmdsn_order_wait_for_the_gap() {
    let (srv, addr) = start_mem().await;
    let s = std::sync::Arc::new(
        login_with(
            addr,
            lcfg(INITIATOR, Some(TARGET))
                .key("InitialR2T", "Yes")
                .key("ImmediateData", "No"),
        )
        .await,
    );
    prime_window(&s).await;
    let data = pattern(100, 8192);
    // n: TEST UNIT READY, n+1: a WRITE that needs an R2T. Send n+1 first.
    let itt_a = s.alloc_itt();
    let (_, first) = s
        .build_command(0, &test_unit_ready(), DataDir::None, 0, Bytes::new(), itt_a)
        .await
        .unwrap();
    let itt_b = s.alloc_itt();
    let (_, second) = s
        .build_command(
            0,
            &write10(40, 16, false),
            DataDir::Write,
            8192,
            data.clone(),
            itt_b,
        )
        .await
        .unwrap();
    let late = {
        let s = s.clone();
        let data = data.clone();
        tokio::spawn(async move { s.exchange_scsi(itt_b, 0, data, &second).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !late.is_finished(),
        "command n+1 completed before command n arrived"
    );
    let r = within("command n", s.exchange_scsi(itt_a, 0, Bytes::new(), &first))
        .await
        .unwrap();
    assert_good("command n", &r);
    let r = within("command n+1", late).await.unwrap().unwrap();
    assert_good("command n+1", &r);
    assert_same("deferred write", &read_at(&s, 40, 16).await, &data);
    srv.shutdown().await.unwrap();
}

/// Sends a write of `len` bytes at `lba` whose unsolicited Data-Out PDUs
/// are `(datasn, offset, len, final)`, without answering R2Ts; returns the
/// command's result.
async fn write_with_data_outs(
    s: &Session,
    lba: u32,
    data: &Bytes,
    outs: &[(u32, usize, usize, bool)],
) -> vtgt_initiator::CommandResult {
    let itt = s.alloc_itt();
    let blocks = (data.len() / BLOCK) as u16;
    let (_, pdus) = s
        .build_command(
            0,
            &write10(lba, blocks, false),
            DataDir::Write,
            data.len() as u32,
            data.clone(),
            itt,
        )
        .await
        .unwrap();
    // Keep the command (F=0: unsolicited data follows), replace its data.
    assert!(!pdus[0].bhs.final_bit());
    let mut sent = vec![pdus[0].clone()];
    for &(datasn, off, len, final_bit) in outs {
        let d = pdu::DataOut {
            final_bit,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            exp_statsn: 0,
            datasn,
            offset: off as u32,
        };
        sent.push(Pdu::new(d.to_bhs(), data.slice(off..off + len)));
    }
    within(
        "write with crafted data-out",
        s.exchange_scsi(itt, 0, Bytes::new(), &sent),
    )
    .await
    .expect("a SCSI response")
}

#[tokio::test]
async fn unsolicited_data_beyond_first_burst_or_at_wrong_offset_fails() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let s = login_with(
        addr,
        lcfg(INITIATOR, Some(TARGET))
            .key("InitialR2T", "No")
            .key("ImmediateData", "No")
            .key("FirstBurstLength", "8192"),
    )
    .await;
    assert_eq!(s.params().first_burst_length, 8192);
    let old = seed_old(&healthy, 1200, 110, 16384).await;
    let new = pattern(111, 16384);
    // (case, Data-Out PDUs, expected ASC/ASCQ under ABORTED COMMAND)
    type Case = (&'static str, Vec<(u32, usize, usize, bool)>, (u8, u8));
    let cases: [Case; 3] = [
        // SPC-4: 4Bh/02h TOO MUCH WRITE DATA.
        (
            "all 16 KiB unsolicited",
            vec![(0, 0, 16384, true)],
            (0x4b, 0x02),
        ),
        // SPC-4: 4Bh/05h DATA OFFSET ERROR.
        (
            "second PDU repeats offset 0",
            vec![(0, 0, 4096, false), (1, 0, 4096, true)],
            (0x4b, 0x05),
        ),
        (
            "second PDU skips 4 KiB",
            vec![(0, 0, 2048, false), (1, 4096, 4096, true)],
            (0x4b, 0x05),
        ),
    ];
    for (what, outs, (asc, ascq)) in cases {
        let r = write_with_data_outs(&s, 1200, &new, &outs).await;
        assert_eq!(r.status, CHECK_CONDITION, "{what}");
        assert_eq!(r.sense_key(), Some((0x0b, asc, ascq)), "{what}");
        assert_same(what, &read_at(&healthy, 1200, 32).await, &old);
        check_healthy(&s, 0, 112).await;
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn immediate_data_when_not_negotiated_is_rejected() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let s = login_with(
        addr,
        lcfg(INITIATOR, Some(TARGET)).key("ImmediateData", "No"),
    )
    .await;
    assert!(!s.params().immediate_data);
    let old = seed_old(&healthy, 1300, 120, 4096).await;
    let itt = s.alloc_itt();
    let data = pattern(121, 4096);
    let (_, pdus) = s
        .build_command(
            0,
            &write10(1300, 8, false),
            DataDir::Write,
            4096,
            Bytes::new(),
            itt,
        )
        .await
        .unwrap();
    let mut bhs = pdus[0].bhs;
    bhs.set_flags(bhs.flags() | 0x80);
    let r = within(
        "immediate data not negotiated",
        s.exchange_scsi(itt, 0, data.clone(), &[Pdu::new(bhs, data)]),
    )
    .await;
    assert!(
        matches!(r, Err(vtgt_initiator::SessionError::Rejected(0x04))),
        "{r:?}"
    );
    assert_same("rejected write", &read_at(&healthy, 1300, 8).await, &old);
    srv.shutdown().await.unwrap();
}
