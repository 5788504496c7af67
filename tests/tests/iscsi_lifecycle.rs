//! Session and server lifecycle: logout, shutdown with sessions open and
//! durability of file volumes, many sessions at once.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::task::JoinSet;

#[tokio::test]
async fn logout_and_server_keeps_accepting() {
    let (srv, addr) = start_mem().await;
    let c = lcfg(INITIATOR, Some(TARGET));
    for i in 0..5u32 {
        // The same initiator port logs in again after each logout.
        let s = login_with(addr, c.clone()).await;
        check_healthy(&s, i * 8, i as u64).await;
        within("logout", s.logout()).await.expect("logout response");
        let d = login_with(addr, lcfg(INITIATOR_B, None)).await;
        assert_eq!(
            within("sendtargets", d.send_targets()).await.unwrap().len(),
            1
        );
        within("discovery logout", d.logout())
            .await
            .expect("logout response");
    }
    assert_eq!(
        srv.iscsi.sessions.len(),
        0,
        "logged-out sessions are forgotten"
    );
    let s = login(addr, INITIATOR).await;
    // Data written by the earlier sessions is still there.
    for i in 0..5u32 {
        let got = read_at(&s, i * 8, 8).await;
        assert_same("earlier session's data", &got, &pattern(i as u64, 4096));
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_with_open_sessions_is_prompt_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.img");
    let size = 8u64 << 20;
    let (srv, addr) = start(file_config(path.clone(), size)).await;
    let a = login(addr, INITIATOR).await;
    let b = login(addr, INITIATOR_B).await;
    let writes = [
        (0u32, 1u64, 4096usize),
        (100, 2, 65_536),
        (16_383 - 7, 3, 4096),
    ];
    for (i, &(lba, seed, len)) in writes.iter().enumerate() {
        let s = if i % 2 == 0 { &a } else { &b };
        write_at(s, lba, pattern(seed, len)).await;
    }
    // A third session logged in but idle, and a discovery session.
    let _idle = login(addr, INITIATOR).await;
    let _disc = login_with(addr, lcfg(INITIATOR, None)).await;
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), srv.shutdown())
        .await
        .expect("shutdown finishes")
        .expect("shutdown succeeds");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t0.elapsed()
    );
    // The sessions were closed by the target.
    for _ in 0..100 {
        if a.is_closed() && b.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.is_closed() && b.is_closed(), "sessions survive shutdown");
    // Nothing listens any more.
    let r = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr)).await;
    assert!(matches!(r, Ok(Err(_))), "portal still accepts: {r:?}");
    // The data is in the backing file.
    let f = std::fs::File::open(&path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    for &(lba, seed, len) in &writes {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, lba as u64 * BLOCK as u64)
            .unwrap();
        assert_same(&format!("file at LBA {lba}"), &buf, &pattern(seed, len));
    }
    // And a new server on the same file serves it.
    let (srv, addr) = start(file_config(path.clone(), size)).await;
    let s = login(addr, INITIATOR).await;
    let got = read_at(&s, 100, 128).await;
    assert_same("after restart", &got, &pattern(2, 65_536));
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn thirty_two_sessions_at_once() {
    let (srv, addr) = start_mem().await;
    const N: usize = 32;
    const LEN: usize = 32 * 1024;
    let mut sessions = Vec::new();
    for i in 0..N {
        let name = format!("iqn.2026-11.org.vtgt.host:s{i}");
        sessions.push(Arc::new(login(addr, &name).await));
    }
    assert_eq!(srv.iscsi.sessions.len(), N);
    let mut set = JoinSet::new();
    for (i, s) in sessions.iter().enumerate() {
        let s = s.clone();
        set.spawn(async move {
            let lba = (i * LEN / BLOCK) as u32;
            for round in 0..3u64 {
                let d = pattern(1000 * round + i as u64, LEN);
                write_at(&s, lba, d.clone()).await;
                let got = read_at(&s, lba, (LEN / BLOCK) as u16).await;
                assert_same(&format!("session {i} round {round}"), &got, &d);
            }
        });
    }
    within("32 sessions of I/O", async {
        while let Some(r) = set.join_next().await {
            r.expect("session task");
        }
    })
    .await;
    // Every session sees every other session's last write.
    let all = read_at(&sessions[N - 1], 0, (N * LEN / BLOCK) as u16).await;
    for i in 0..N {
        assert_same(
            &format!("region {i} seen by another session"),
            &all[i * LEN..(i + 1) * LEN],
            &pattern(2000 + i as u64, LEN),
        );
    }
    for s in sessions {
        let s = Arc::try_unwrap(s).ok().expect("sole owner");
        within("logout", s.logout()).await.expect("logout");
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn nop_in_pings_keep_live_sessions_and_drop_silent_ones() {
    let mut cfg = mem_config();
    cfg.iscsi.nop_interval_secs = 1;
    let (srv, addr) = start(cfg).await;
    let live = login(addr, INITIATOR).await;
    // A raw connection that never answers the target's pings.
    let mut silent = RawConn::login(addr, INITIATOR_B, &[]).await;
    let t0 = Instant::now();
    let seen = silent.expect_close(Duration::from_secs(8)).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "dropped before any ping could be missed: {:?}",
        t0.elapsed()
    );
    assert!(
        !seen.is_empty()
            && seen.iter().all(|p| p.bhs.opcode()
                == Some(vtgt_protocol::iscsi::pdu::Opcode::NopIn)
                && p.bhs.itt() == vtgt_protocol::iscsi::pdu::RESERVED_TAG),
        "only unanswered NOP-In pings expected before the drop"
    );
    // The initiator answers its pings, so its session is alive.
    assert!(!live.is_closed());
    check_healthy(&live, 0, 500).await;
    srv.shutdown().await.unwrap();
}
