//! Task management functions and NOP-Out over loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use vtgt_initiator::iscsi::{DataDir, Session};
use vtgt_protocol::iscsi::pdu::{self, tmf, Pdu, RESERVED_TAG};

async fn tmf_call(s: &Session, function: u8, lun: u64, rtt: u32, ref_cmdsn: u32) -> u8 {
    within(
        "task management",
        s.task_mgmt(function, lun, rtt, ref_cmdsn),
    )
    .await
    .expect("TMF response")
}

async fn tur(s: &Session, lun: u64) -> vtgt_initiator::CommandResult {
    within(
        "TEST UNIT READY",
        s.command(lun, &test_unit_ready(), DataDir::None, 0, Bytes::new()),
    )
    .await
    .expect("TUR completes")
}

#[tokio::test]
async fn abort_task_for_unknown_task_outside_window() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    check_healthy(&s, 0, 1).await;
    let next = s.peek_cmdsn();
    for ref_cmdsn in [
        next.wrapping_add(1000),
        next.wrapping_sub(1),
        next.wrapping_sub(20),
    ] {
        let r = tmf_call(&s, tmf::ABORT_TASK, 0, 0x00ab_cdef, ref_cmdsn).await;
        assert_eq!(r, tmf::TASK_DOES_NOT_EXIST, "RefCmdSN {ref_cmdsn}");
    }
    check_healthy(&s, 8, 2).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn task_set_functions_complete() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    for f in [tmf::ABORT_TASK_SET, tmf::CLEAR_TASK_SET] {
        assert_eq!(
            tmf_call(&s, f, 0, RESERVED_TAG, 0).await,
            tmf::FUNCTION_COMPLETE
        );
        check_healthy(&s, 0, f as u64).await;
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn lun_reset_raises_unit_attention_once_on_every_session() {
    let (srv, addr) = start_mem().await;
    let a = login(addr, INITIATOR).await;
    let b = login(addr, INITIATOR_B).await;
    assert_good("TUR before reset", &tur(&b, 0).await);
    assert_good("TUR before reset", &tur(&a, 0).await);
    let r = tmf_call(&a, tmf::LOGICAL_UNIT_RESET, 0, RESERVED_TAG, 0).await;
    assert_eq!(r, tmf::FUNCTION_COMPLETE);
    for s in [&b, &a] {
        let r = tur(s, 0).await;
        assert_eq!(r.status, CHECK_CONDITION, "first command after LUN RESET");
        let (key, asc, _) = r.sense_key().expect("sense data");
        assert_eq!((key, asc), (0x06, 0x29), "UNIT ATTENTION, reset occurred");
        // Reported once: the next command is GOOD.
        assert_good("second TUR", &tur(s, 0).await);
    }
    check_healthy(&b, 0, 3).await;
    check_healthy(&a, 8, 4).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn tmf_on_missing_lun() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    for f in [
        tmf::ABORT_TASK_SET,
        tmf::CLEAR_TASK_SET,
        tmf::LOGICAL_UNIT_RESET,
    ] {
        for l in [1u64, 5, 255] {
            let r = tmf_call(&s, f, lun(l), RESERVED_TAG, 0).await;
            assert_eq!(r, tmf::LUN_DOES_NOT_EXIST, "function {f} on LUN {l}");
        }
    }
    check_healthy(&s, 0, 5).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn target_warm_reset_completes() {
    let (srv, addr) = start_mem().await;
    let a = login(addr, INITIATOR).await;
    let b = login(addr, INITIATOR_B).await;
    let r = tmf_call(&a, tmf::TARGET_WARM_RESET, 0, RESERVED_TAG, 0).await;
    assert_eq!(r, tmf::FUNCTION_COMPLETE);
    // The other nexus sees the reset as a unit attention, once.
    let r = tur(&b, 0).await;
    assert_eq!(r.status, CHECK_CONDITION);
    assert_eq!(r.sense_key().map(|(k, a, _)| (k, a)), Some((0x06, 0x29)));
    assert_good("second TUR", &tur(&b, 0).await);
    check_healthy(&b, 0, 6).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn abort_task_of_a_write_waiting_for_data() {
    let (srv, addr) = start_mem().await;
    let healthy = login(addr, INITIATOR_B).await;
    let old = pattern(40, 4096);
    write_at(&healthy, 700, old.clone()).await;
    let s = Arc::new(
        login_with(
            addr,
            lcfg(INITIATOR, Some(TARGET))
                .key("InitialR2T", "Yes")
                .key("ImmediateData", "No"),
        )
        .await,
    );
    assert!(s.params().initial_r2t && !s.params().immediate_data);
    let itt = s.alloc_itt();
    let (h, pdus) = s
        .build_command(
            0,
            &write10(700, 8, false),
            DataDir::Write,
            4096,
            pattern(41, 4096),
            itt,
        )
        .await
        .unwrap();
    assert_eq!(pdus.len(), 1, "no data goes with the command");
    // Wait for an answer to the command with a plain waiter: the initiator
    // does not answer the target's R2T, so the write stays open.
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(1500), s.exchange(itt, &pdus)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = tmf_call(&s, tmf::ABORT_TASK, 0, itt, h.cmdsn).await;
    assert_eq!(r, tmf::FUNCTION_COMPLETE);
    let got = within("waiter", waiter).await.unwrap();
    assert!(got.is_err(), "the aborted command was answered: {got:?}");
    // Data arriving late for the aborted task is dropped.
    for ttt in [1u32, 2, RESERVED_TAG] {
        let d = pdu::DataOut {
            final_bit: true,
            lun: 0,
            itt,
            ttt,
            exp_statsn: 0,
            datasn: 0,
            offset: 0,
        };
        s.send_raw(&[Pdu::new(d.to_bhs(), pattern(41, 4096))])
            .await
            .unwrap();
    }
    assert_same("aborted write", &read_at(&healthy, 700, 8).await, &old);
    // A second abort of the same task: it no longer exists.
    let r = tmf_call(&s, tmf::ABORT_TASK, 0, itt, h.cmdsn).await;
    assert_eq!(r, tmf::TASK_DOES_NOT_EXIST);
    check_healthy(&s, 0, 42).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn nop_out_ping_echoes_data() {
    let (srv, addr) = start_mem().await;
    let s = login(addr, INITIATOR).await;
    for len in [0usize, 1, 5, 48, 4096, 8192] {
        let data = pattern(len as u64, len);
        let echo = within("nop", s.nop(data.clone())).await.expect("NOP-In");
        assert_same(&format!("NOP echo of {len} B"), &echo, &data);
    }
    check_healthy(&s, 0, 7).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn abort_task_of_a_command_waiting_for_its_cmdsn() {
    let (srv, addr) = start_mem().await;
    let s = Arc::new(login(addr, INITIATOR).await);
    prime_window(&s).await;
    let n = s.peek_cmdsn();
    // Skip CmdSN n: the command with n+1 waits in the target.
    s.set_cmdsn(n.wrapping_add(1));
    let itt = s.alloc_itt();
    let (h, pdus) = s
        .build_command(0, &read10(0, 8), DataDir::Read, 4096, Bytes::new(), itt)
        .await
        .unwrap();
    assert_eq!(h.cmdsn, n.wrapping_add(1));
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(1500), s.exchange(itt, &pdus)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.set_cmdsn(n);
    let r = tmf_call(&s, tmf::ABORT_TASK, 0, itt, h.cmdsn).await;
    assert_eq!(r, tmf::FUNCTION_COMPLETE);
    // Fill the gap: command n runs, the aborted n+1 is skipped, and the
    // window moves on to n+2.
    assert_good("command n", &tur(&s, 0).await);
    s.set_cmdsn(n.wrapping_add(2));
    check_healthy(&s, 0, 50).await;
    let got = within("waiter", waiter).await.unwrap();
    assert!(got.is_err(), "the aborted command was answered: {got:?}");
    srv.shutdown().await.unwrap();
}

/// Sends a WRITE(10) of 4 KiB at `lba` on `s` (InitialR2T=Yes,
/// ImmediateData=No) without answering the target's R2T; returns the ITT
/// and a task waiting (up to `wait`) for any answer to it.
async fn open_write(
    s: &Arc<Session>,
    lba: u32,
    data: &Bytes,
    wait: Duration,
) -> (
    u32,
    tokio::task::JoinHandle<
        Result<Result<Pdu, vtgt_initiator::SessionError>, tokio::time::error::Elapsed>,
    >,
) {
    let itt = s.alloc_itt();
    let (_, pdus) = s
        .build_command(
            0,
            &write10(lba, 8, false),
            DataDir::Write,
            4096,
            data.clone(),
            itt,
        )
        .await
        .unwrap();
    assert_eq!(pdus.len(), 1);
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { tokio::time::timeout(wait, s.exchange(itt, &pdus)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    (itt, waiter)
}

/// The Data-Out answering the first R2T of a fresh connection (TTT 1).
fn first_burst_data_out(itt: u32, data: &Bytes) -> Pdu {
    let d = pdu::DataOut {
        final_bit: true,
        lun: 0,
        itt,
        ttt: 1,
        exp_statsn: 0,
        datasn: 0,
        offset: 0,
    };
    Pdu::new(d.to_bhs(), data.clone())
}

async fn r2t_session(addr: std::net::SocketAddr, name: &str) -> Arc<Session> {
    let s = login_with(
        addr,
        lcfg(name, Some(TARGET))
            .key("InitialR2T", "Yes")
            .key("ImmediateData", "No"),
    )
    .await;
    assert!(s.params().initial_r2t && !s.params().immediate_data);
    Arc::new(s)
}

async fn third_party_abort_of_write_waiting_for_data(function: u8) {
    let (srv, addr) = start_mem().await;
    let a = login(addr, INITIATOR).await;
    let old = pattern(60, 4096);
    write_at(&a, 800, old.clone()).await;
    let new = pattern(61, 4096);

    // Control: on a fresh connection the hand-made Data-Out (TTT 1)
    // completes such a write.
    let c = r2t_session(addr, "iqn.2026-11.org.vtgt.host:control").await;
    let (itt, waiter) = open_write(&c, 900, &new, STEP).await;
    c.send_raw(&[first_burst_data_out(itt, &new)])
        .await
        .unwrap();
    let rsp = within("control write", waiter)
        .await
        .unwrap()
        .expect("answer")
        .unwrap();
    assert_eq!(pdu::ScsiResponse::parse(&rsp.bhs).status, GOOD);
    assert_same("control write", &read_at(&a, 900, 8).await, &new);

    // Now the same on B, but A's TMF aborts B's task while it waits for data.
    let b = r2t_session(addr, INITIATOR_B).await;
    let (itt, waiter) = open_write(&b, 800, &new, Duration::from_millis(1500)).await;
    let r = tmf_call(&a, function, 0, RESERVED_TAG, 0).await;
    assert_eq!(r, tmf::FUNCTION_COMPLETE);
    // Resets tell every nexus, the issuer's too.
    drain_unit_attentions(&a).await;
    // B's data arrives after its task was aborted.
    b.send_raw(&[first_burst_data_out(itt, &new)])
        .await
        .unwrap();
    let _ = within("waiter", waiter).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_same(
        &format!("a write aborted by TMF {function} must not reach the medium"),
        &read_at(&a, 800, 8).await,
        &old,
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn lun_reset_from_another_session_aborts_a_write_waiting_for_data() {
    third_party_abort_of_write_waiting_for_data(tmf::LOGICAL_UNIT_RESET).await;
}

#[tokio::test]
async fn clear_task_set_from_another_session_aborts_a_write_waiting_for_data() {
    third_party_abort_of_write_waiting_for_data(tmf::CLEAR_TASK_SET).await;
}

#[tokio::test]
async fn abort_task_set_aborts_own_write_waiting_for_data() {
    let (srv, addr) = start_mem().await;
    let a = login(addr, INITIATOR).await;
    let old = pattern(70, 4096);
    write_at(&a, 1000, old.clone()).await;
    let new = pattern(71, 4096);
    let b = r2t_session(addr, INITIATOR_B).await;
    let (itt, waiter) = open_write(&b, 1000, &new, Duration::from_millis(1500)).await;
    let r = tmf_call(&b, tmf::ABORT_TASK_SET, 0, RESERVED_TAG, 0).await;
    assert_eq!(r, tmf::FUNCTION_COMPLETE);
    b.send_raw(&[first_burst_data_out(itt, &new)])
        .await
        .unwrap();
    let got = within("waiter", waiter).await.unwrap();
    assert!(got.is_err(), "aborted write answered: {got:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_same(
        "aborted by ABORT TASK SET",
        &read_at(&a, 1000, 8).await,
        &old,
    );
    check_healthy(&b, 0, 72).await;
    srv.shutdown().await.unwrap();
}

/// B sends a WRITE with immediate data under CmdSN n+1 while n is missing,
/// so the target holds it; A's task management function aborts it; then B
/// fills the gap. The aborted write must never reach the medium.
async fn third_party_abort_of_deferred_write(function: u8) {
    let (srv, addr) = start_mem().await;
    let a = login(addr, INITIATOR).await;
    let old = pattern(80, 4096);
    write_at(&a, 1100, old.clone()).await;
    let new = pattern(81, 4096);
    let b = Arc::new(
        login_with(
            addr,
            lcfg(INITIATOR_B, Some(TARGET)).key("ImmediateData", "Yes"),
        )
        .await,
    );
    prime_window(&b).await;
    let n = b.peek_cmdsn();
    b.set_cmdsn(n.wrapping_add(1));
    let itt = b.alloc_itt();
    let (h, pdus) = b
        .build_command(
            0,
            &write10(1100, 8, false),
            DataDir::Write,
            4096,
            new.clone(),
            itt,
        )
        .await
        .unwrap();
    assert_eq!(pdus.len(), 1, "all data is immediate");
    assert!(h.final_bit);
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(1500), b.exchange(itt, &pdus)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = tmf_call(&a, function, 0, RESERVED_TAG, 0).await;
    assert_eq!(r, tmf::FUNCTION_COMPLETE);
    // Resets tell every nexus, the issuer's too.
    drain_unit_attentions(&a).await;
    // Fill the gap with CmdSN n; the window then passes n+1.
    b.set_cmdsn(n);
    let _ = tur(&b, 0).await;
    b.set_cmdsn(n.wrapping_add(2));
    let _ = within("waiter", waiter).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_same(
        &format!("deferred write aborted by TMF {function}"),
        &read_at(&a, 1100, 8).await,
        &old,
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn clear_task_set_from_another_session_aborts_a_deferred_write() {
    third_party_abort_of_deferred_write(tmf::CLEAR_TASK_SET).await;
}

#[tokio::test]
async fn lun_reset_from_another_session_aborts_a_deferred_write() {
    third_party_abort_of_deferred_write(tmf::LOGICAL_UNIT_RESET).await;
}

#[tokio::test]
async fn abort_task_set_aborts_own_deferred_write() {
    let (srv, addr) = start_mem().await;
    let a = login(addr, INITIATOR).await;
    let old = pattern(90, 4096);
    write_at(&a, 1200, old.clone()).await;
    let b = Arc::new(login(addr, INITIATOR_B).await);
    prime_window(&b).await;
    let n = b.peek_cmdsn();
    b.set_cmdsn(n.wrapping_add(1));
    let itt = b.alloc_itt();
    let (_, pdus) = b
        .build_command(
            0,
            &write10(1200, 8, false),
            DataDir::Write,
            4096,
            pattern(91, 4096),
            itt,
        )
        .await
        .unwrap();
    b.send_raw(&pdus).await.unwrap();
    let r = tmf_call(&b, tmf::ABORT_TASK_SET, 0, RESERVED_TAG, 0).await;
    assert_eq!(r, tmf::FUNCTION_COMPLETE);
    b.set_cmdsn(n);
    assert_good("gap filler", &tur(&b, 0).await);
    b.set_cmdsn(n.wrapping_add(2));
    check_healthy(&b, 0, 92).await;
    assert_same(
        "own deferred write aborted",
        &read_at(&a, 1200, 8).await,
        &old,
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn target_warm_reset_from_another_session_aborts_a_deferred_write() {
    third_party_abort_of_deferred_write(tmf::TARGET_WARM_RESET).await;
}
