//! Login phase over loopback: operational key negotiation, discovery,
//! refusals, CHAP, and session reinstatement.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use vtgt::config::{ChapConfig, InitiatorChapConfig};
use vtgt_initiator::iscsi::{DataDir, LoginConfig, SessionError};
use vtgt_protocol::iscsi::nego::SessionParams;

async fn negotiate(addr: std::net::SocketAddr, keys: &[(&str, &str)]) -> SessionParams {
    let mut c = lcfg(INITIATOR, Some(TARGET));
    for (k, v) in keys {
        c = c.key(k, v);
    }
    let s = login_with(addr, c).await;
    let p = s.params().clone();
    // Every negotiated session must actually carry I/O.
    check_healthy(&s, 0, 7).await;
    within("logout", s.logout()).await.expect("logout");
    p
}

#[tokio::test]
async fn digests_negotiate_crc32c_or_none() {
    let (srv, addr) = start_mem().await;
    let p = negotiate(addr, &[("HeaderDigest", "None"), ("DataDigest", "None")]).await;
    assert!(!p.header_digest && !p.data_digest);
    let p = negotiate(addr, &[("HeaderDigest", "CRC32C"), ("DataDigest", "None")]).await;
    assert!(p.header_digest && !p.data_digest);
    let p = negotiate(addr, &[("HeaderDigest", "None"), ("DataDigest", "CRC32C")]).await;
    assert!(!p.header_digest && p.data_digest);
    let p = negotiate(
        addr,
        &[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "CRC32C,None"),
        ],
    )
    .await;
    assert!(p.header_digest && p.data_digest, "first choice wins: {p:?}");
    let p = negotiate(
        addr,
        &[
            ("HeaderDigest", "None,CRC32C"),
            ("DataDigest", "None,CRC32C"),
        ],
    )
    .await;
    assert!(
        !p.header_digest && !p.data_digest,
        "first choice wins: {p:?}"
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_recv_data_segment_length_is_declared_per_direction() {
    let (srv, addr) = start_mem().await;
    for ours in [512u32, 4096, 65_536, 1 << 20] {
        let p = negotiate(addr, &[("MaxRecvDataSegmentLength", &ours.to_string())]).await;
        // Each side declares what it receives; nothing is min'ed.
        assert_eq!(p.initiator_max_recv_data_segment_length, ours);
        assert_eq!(p.target_max_recv_data_segment_length, 262_144);
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn burst_lengths_take_the_minimum_and_first_never_exceeds_max() {
    let (srv, addr) = start_mem().await;
    // (MaxBurstLength, FirstBurstLength) proposed -> expected.
    type Case = ((u32, u32), (u32, u32));
    let cases: &[Case] = &[
        ((1 << 20, 65_536), (1 << 20, 65_536)),
        ((4096, 4096), (4096, 4096)),
        ((16_777_215, 16_777_215), (1 << 20, 65_536)),
        ((262_144, 8192), (262_144, 8192)),
        ((8192, 65_536), (8192, 8192)),
        ((512, 512), (512, 512)),
    ];
    for &((mb, fb), (want_mb, want_fb)) in cases {
        let p = negotiate(
            addr,
            &[
                ("MaxBurstLength", &mb.to_string()),
                ("FirstBurstLength", &fb.to_string()),
            ],
        )
        .await;
        assert_eq!(
            (p.max_burst_length, p.first_burst_length),
            (want_mb, want_fb),
            "proposed MaxBurst {mb} FirstBurst {fb}"
        );
        assert!(p.first_burst_length <= p.max_burst_length);
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn boolean_keys_and_or_rules() {
    let (srv, addr) = start_mem().await;
    // Our target prefers ImmediateData=Yes and InitialR2T=No, so the
    // initiator's proposal decides both (AND / OR respectively).
    for imm in ["Yes", "No"] {
        for r2t in ["Yes", "No"] {
            let p = negotiate(addr, &[("ImmediateData", imm), ("InitialR2T", r2t)]).await;
            assert_eq!(p.immediate_data, imm == "Yes", "ImmediateData={imm}");
            assert_eq!(p.initial_r2t, r2t == "Yes", "InitialR2T={r2t}");
        }
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn numeric_minimums_and_erl() {
    let (srv, addr) = start_mem().await;
    let p = negotiate(addr, &[("MaxOutstandingR2T", "4")]).await;
    assert_eq!(p.max_outstanding_r2t, 4);
    let p = negotiate(addr, &[("MaxOutstandingR2T", "65535")]).await;
    assert_eq!(p.max_outstanding_r2t, 16, "target offers 16");
    let p = negotiate(addr, &[("ErrorRecoveryLevel", "2")]).await;
    assert_eq!(p.error_recovery_level, 0, "we implement ERL 0 only");
    let p = negotiate(addr, &[("ErrorRecoveryLevel", "0")]).await;
    assert_eq!(p.error_recovery_level, 0);
    let p = negotiate(addr, &[("MaxConnections", "8")]).await;
    assert_eq!(p.max_connections, 1);
    let p = negotiate(addr, &[]).await;
    assert_eq!(p.target_name.as_deref(), Some(TARGET));
    assert_eq!(p.target_portal_group_tag, Some(1));
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn discovery_send_targets_lists_the_portal() {
    let mut cfg = mem_config();
    let mut t2 = target("iqn.2026-11.org.vtgt:hidden", "v0");
    t2.allowed_initiators = vec![INITIATOR_B.into()];
    cfg.targets.push(t2);
    let (srv, addr) = start(cfg).await;
    let s = login_with(addr, lcfg(INITIATOR, None)).await;
    let list = within("sendtargets", s.send_targets()).await.unwrap();
    let want = format!("127.0.0.1:{},1", addr.port());
    // A target the initiator may not log in to is not listed.
    assert_eq!(list, vec![(TARGET.to_string(), vec![want.clone()])]);
    // SCSI commands are not allowed on a discovery session.
    let r = within(
        "scsi on discovery",
        s.command(0, &test_unit_ready(), DataDir::None, 0, Bytes::new()),
    )
    .await;
    assert!(matches!(r, Err(SessionError::Rejected(_))), "{r:?}");
    within("logout", s.logout()).await.unwrap();
    let s = login_with(addr, lcfg(INITIATOR_B, None)).await;
    let mut list = within("sendtargets", s.send_targets()).await.unwrap();
    list.sort();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|(_, a)| a == &vec![want.clone()]));
    srv.shutdown().await.unwrap();
}

fn expect_refused(r: Result<vtgt_initiator::Session, SessionError>, class: u8, detail: u8) {
    match r {
        Err(SessionError::Login {
            class: c,
            detail: d,
        }) => {
            assert_eq!((c, d), (class, detail), "login status")
        }
        Err(e) => panic!("expected login status {class}/{detail}, got {e}"),
        Ok(_) => panic!("expected login status {class}/{detail}, login succeeded"),
    }
}

#[tokio::test]
async fn unknown_target_and_acl_refusals() {
    let mut cfg = mem_config();
    cfg.targets[0].allowed_initiators = vec![INITIATOR.into()];
    let (srv, addr) = start(cfg).await;
    let r = try_login(addr, lcfg(INITIATOR, Some("iqn.2026-11.org.vtgt:nope"))).await;
    expect_refused(r, 2, 3);
    let r = try_login(addr, lcfg(INITIATOR_B, Some(TARGET))).await;
    expect_refused(r, 2, 2);
    // The allowed one still gets in, and the server is unharmed.
    let s = login(addr, INITIATOR).await;
    check_healthy(&s, 8, 1).await;
    srv.shutdown().await.unwrap();
}

const SECRET: &str = "initiator-secret-1";
const TSECRET: &str = "target-secret-2222";

fn chap_cfg(mutual: bool) -> ChapConfig {
    ChapConfig {
        user: "alice".into(),
        secret: SECRET.into(),
        mutual_user: mutual.then(|| "vtgt".into()),
        mutual_secret: mutual.then(|| TSECRET.into()),
    }
}

fn with_chap(user: &str, secret: &str) -> LoginConfig {
    let mut c = lcfg(INITIATOR, Some(TARGET));
    c.chap = Some((user.into(), secret.as_bytes().to_vec()));
    c
}

#[tokio::test]
async fn chap_one_way() {
    let mut cfg = mem_config();
    cfg.targets[0].chap = Some(chap_cfg(false));
    let (srv, addr) = start(cfg).await;
    let s = login_with(addr, with_chap("alice", SECRET)).await;
    check_healthy(&s, 0, 2).await;
    expect_refused(
        try_login(addr, with_chap("alice", "wrong-secret-xyz")).await,
        2,
        1,
    );
    expect_refused(try_login(addr, with_chap("mallory", SECRET)).await, 2, 1);
    // No CHAP offered at all: no security stage.
    let r = try_login(addr, lcfg(INITIATOR, Some(TARGET))).await;
    assert!(
        matches!(r, Err(SessionError::Login { class: 2, .. })),
        "login without CHAP must be refused: {:?}",
        r.err()
    );
    // AuthMethod=None offered explicitly.
    let mut c = lcfg(INITIATOR, Some(TARGET));
    c.auth_methods = Some("None".into());
    let r = try_login(addr, c).await;
    assert!(
        matches!(r, Err(SessionError::Login { class: 2, .. })),
        "AuthMethod=None must be refused: {:?}",
        r.err()
    );
    // The accepted session survived all that.
    check_healthy(&s, 8, 3).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn chap_mutual() {
    let mut cfg = mem_config();
    cfg.targets[0].chap = Some(chap_cfg(true));
    let (srv, addr) = start(cfg).await;
    let mut c = with_chap("alice", SECRET);
    c.mutual_chap = Some(("vtgt".into(), TSECRET.as_bytes().to_vec()));
    let s = login_with(addr, c).await;
    check_healthy(&s, 0, 4).await;
    // The initiator expects a different target secret: it must refuse the
    // target's answer.
    let mut c = with_chap("alice", SECRET);
    c.mutual_chap = Some(("vtgt".into(), b"not-the-target-secret".to_vec()));
    let r = try_login(addr, c).await;
    assert!(r.is_err(), "initiator accepted a wrong mutual secret");
    assert!(
        !matches!(r, Err(SessionError::Login { .. })),
        "the initiator, not the target, refuses: {:?}",
        r.err()
    );
    // Wrong initiator secret with mutual requested: target refuses 2/1.
    let mut c = with_chap("alice", "wrong-secret-xyz");
    c.mutual_chap = Some(("vtgt".into(), TSECRET.as_bytes().to_vec()));
    expect_refused(try_login(addr, c).await, 2, 1);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn per_initiator_chap_takes_precedence() {
    let mut cfg = mem_config();
    cfg.targets[0].chap = Some(chap_cfg(false));
    cfg.targets[0].initiator_chap = vec![InitiatorChapConfig {
        initiator: INITIATOR.into(),
        chap: ChapConfig {
            user: "special".into(),
            secret: "special-secret-3".into(),
            mutual_user: None,
            mutual_secret: None,
        },
    }];
    let (srv, addr) = start(cfg).await;
    // INITIATOR must use its own credentials, not the target-wide ones.
    let s = login_with(addr, with_chap("special", "special-secret-3")).await;
    check_healthy(&s, 0, 5).await;
    expect_refused(try_login(addr, with_chap("alice", SECRET)).await, 2, 1);
    // Another initiator still uses the target-wide credentials.
    let mut c = lcfg(INITIATOR_B, Some(TARGET));
    c.chap = Some(("alice".into(), SECRET.as_bytes().to_vec()));
    let s2 = login_with(addr, c).await;
    check_healthy(&s2, 8, 6).await;
    let mut c = lcfg(INITIATOR_B, Some(TARGET));
    c.chap = Some(("special".into(), b"special-secret-3".to_vec()));
    expect_refused(try_login(addr, c).await, 2, 1);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn reinstatement_closes_the_old_session() {
    let (srv, addr) = start_mem().await;
    let c = lcfg(INITIATOR, Some(TARGET));
    let old = login_with(addr, c.clone()).await;
    check_healthy(&old, 0, 8).await;
    // A different ISID is a different session and must not be touched.
    let other = login(addr, INITIATOR).await;
    let new = login_with(addr, c).await;
    assert_ne!(new.tsih, 0);
    for _ in 0..200 {
        if old.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        old.is_closed(),
        "old session still open after reinstatement"
    );
    let r = within(
        "command on reinstated session",
        old.command(0, &read10(0, 1), DataDir::Read, 512, Bytes::new()),
    )
    .await;
    assert!(r.is_err(), "command on the old session succeeded: {r:?}");
    check_healthy(&new, 8, 9).await;
    check_healthy(&other, 16, 10).await;
    assert!(!other.is_closed());
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn send_targets_longer_than_one_pdu_is_continued() {
    let mut cfg = mem_config();
    for i in 0..40 {
        cfg.targets.push(target(
            &format!("iqn.2026-11.org.vtgt:a-rather-long-target-name-for-continuation-{i:03}"),
            "v0",
        ));
    }
    let (srv, addr) = start(cfg).await;
    // Text responses to us may carry at most 512 bytes each.
    let s = login_with(
        addr,
        lcfg(INITIATOR, None).key("MaxRecvDataSegmentLength", "512"),
    )
    .await;
    assert_eq!(s.params().initiator_max_recv_data_segment_length, 512);
    let list = within("sendtargets", s.send_targets()).await.unwrap();
    assert_eq!(list.len(), 41, "{list:?}");
    let want = format!("127.0.0.1:{},1", addr.port());
    for i in 0..40 {
        let name =
            format!("iqn.2026-11.org.vtgt:a-rather-long-target-name-for-continuation-{i:03}");
        let e = list.iter().find(|(n, _)| *n == name).expect("listed");
        assert_eq!(e.1, vec![want.clone()]);
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn login_to_a_nonexistent_tsih_is_refused() {
    use tokio::io::AsyncWriteExt;
    use vtgt_protocol::iscsi::pdu::{self, Digests, Pdu};
    let (srv, addr) = start_mem().await;
    let live = login(addr, INITIATOR).await;
    let mut keys = Vec::new();
    for (k, v) in [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
    ] {
        keys.extend_from_slice(format!("{k}={v}\0").as_bytes());
    }
    for tsih in [0x7777u16, live.tsih.wrapping_add(100)] {
        let h = pdu::LoginRequestHdr {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0x44, 0x44],
            tsih,
            itt: 1,
            cid: 1,
            cmdsn: 1,
            exp_statsn: 0,
        };
        let mut out = bytes::BytesMut::new();
        Pdu::new(h.to_bhs(), Bytes::from(keys.clone())).encode(&mut out, Digests::default());
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&out).await.unwrap();
        let seen = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(seen.len() >= 48, "no Login Response");
        assert_eq!(seen[0] & 0x3f, 0x23);
        // RFC 7143 §11.13.5: 0x020a Session Does Not Exist.
        assert_eq!((seen[36], seen[37]), (2, 0x0a), "TSIH {tsih:#x}");
    }
    check_healthy(&live, 0, 11).await;
    srv.shutdown().await.unwrap();
}
