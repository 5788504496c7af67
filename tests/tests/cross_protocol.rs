//! One volume, two protocols: an iSCSI LU and an NVMe namespace over the
//! same engine volume share one persistent reservation state and one set of
//! range locks. Reservations taken through either protocol bind the other;
//! compare-and-write through either is atomic against writes through the
//! other; NVMe PTPL survives a restart.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use vtgt::config::{
    BackendKind, Config, LunConfig, NamespaceConfig, NvmeConfig, NvmePortalConfig, SubsystemConfig,
    TargetConfig, VolumeConfig,
};
use vtgt::server::Server;
use vtgt_initiator::iscsi::{CommandResult, DataDir, LoginConfig, Session};
use vtgt_initiator::nvme::{Controller, HostConfig, NvmeError, Queue};
use vtgt_protocol::nvme::command::{feat, sc, sct};
use vtgt_protocol::nvme::identify::{oncs, rescap};

const SUBNQN: &str = "nqn.2026-11.org.vtgt:xproto";
const TARGET: &str = "iqn.2026-11.org.vtgt:xproto";
const HOST_A: &str = "nqn.2014-08.org.nvmexpress:uuid:0c0ffee0-0000-4000-8000-00000000000a";
const HOST_B: &str = "nqn.2014-08.org.nvmexpress:uuid:0c0ffee0-0000-4000-8000-00000000000b";
const INITIATOR: &str = "iqn.2026-11.org.vtgt.host:xproto";
const BS: u32 = 512;
const STEP: Duration = Duration::from_secs(20);
/// NVMe reservation types.
const WE: u8 = 1;
const EA: u8 = 2;
/// SCSI status RESERVATION CONFLICT.
const SCSI_CONFLICT: u8 = 0x18;

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Volume "vol" as iSCSI LUN 0 and NVMe namespace 1; a file volume when
/// `dir` is given.
fn config(dir: Option<&Path>) -> Config {
    let (backend, path, data_dir) = match dir {
        Some(d) => (BackendKind::File, Some("vol.img".into()), d.to_path_buf()),
        None => (BackendKind::Memory, None, std::env::temp_dir()),
    };
    Config {
        data_dir,
        iscsi: common::loopback_iscsi(),
        volumes: vec![VolumeConfig {
            name: "vol".into(),
            backend,
            path,
            size: Some("4MiB".into()),
            block_size: BS,
            layout: None,
            journal: None,
        }],
        targets: vec![TargetConfig {
            name: TARGET.into(),
            alias: None,
            luns: vec![LunConfig {
                id: 0,
                volume: "vol".into(),
                write_protect: false,
                removable: false,
                sanitize_rate_mib: 0,
            }],
            allowed_initiators: vec![],
            chap: None,
            initiator_chap: vec![],
            port_groups: vec![],
        }],
        nvme: NvmeConfig {
            listen: vec![NvmePortalConfig::Addr("127.0.0.1:0".parse().unwrap())],
        },
        subsystems: vec![SubsystemConfig {
            nqn: SUBNQN.into(),
            allow_any_host: true,
            allowed_hosts: vec![],
            namespaces: vec![NamespaceConfig {
                nsid: 1,
                volume: "vol".into(),
            }],
        }],
    }
}

async fn start(dir: Option<&Path>) -> Server {
    let cfg = config(dir);
    cfg.validate().expect("valid test config");
    within("server start", Server::start(cfg))
        .await
        .expect("server starts")
}

fn host(nqn: &str, id: u8) -> HostConfig {
    let mut h = HostConfig::new(nqn);
    h.hostid = [id; 16];
    h
}

async fn nvme(addr: SocketAddr, h: &HostConfig) -> (Controller, Queue) {
    let c = within("NVMe connect", Controller::connect(addr, h, SUBNQN))
        .await
        .expect("NVMe connect");
    let q = c.connect_io_queue(1, 32).await.expect("I/O queue");
    (c, q)
}

/// Logs in and clears the power-on unit attention.
async fn iscsi(addr: SocketAddr) -> Session {
    let s = within(
        "iSCSI login",
        Session::login(addr, LoginConfig::new(INITIATOR, Some(TARGET))),
    )
    .await
    .expect("login");
    settle(&s).await;
    s
}

/// TEST UNIT READY until no unit attention is pending.
async fn settle(s: &Session) {
    for _ in 0..8 {
        let r = s
            .command(0, &[0u8; 6], DataDir::None, 0, Bytes::new())
            .await
            .expect("TUR");
        if r.status == 0 {
            return;
        }
    }
    panic!("unit attentions never cleared");
}

fn status_of(e: NvmeError) -> (u8, u8) {
    match e {
        NvmeError::Status(s) => (s.sct, s.sc),
        other => panic!("expected a status, got {other}"),
    }
}

fn block(byte: u8, blocks: u32) -> Bytes {
    Bytes::from(vec![byte; (blocks * BS) as usize])
}

fn cdb_rw(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

async fn scsi_write(s: &Session, lba: u32, data: Bytes) -> CommandResult {
    let blocks = (data.len() as u32 / BS) as u16;
    let len = data.len() as u32;
    s.command(0, &cdb_rw(0x2a, lba, blocks), DataDir::Write, len, data)
        .await
        .expect("WRITE(10)")
}

async fn scsi_read(s: &Session, lba: u32, blocks: u16) -> CommandResult {
    s.command(
        0,
        &cdb_rw(0x28, lba, blocks),
        DataDir::Read,
        blocks as u32 * BS,
        Bytes::new(),
    )
    .await
    .expect("READ(10)")
}

/// PERSISTENT RESERVE OUT with a basic 24-byte parameter list.
async fn prout(s: &Session, action: u8, kind: u8, key: u64, sark: u64) -> CommandResult {
    let mut c = [0u8; 10];
    c[0] = 0x5F;
    c[1] = action;
    c[2] = kind;
    c[8] = 24;
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    s.command(0, &c, DataDir::Write, 24, Bytes::from(p))
        .await
        .expect("PR OUT")
}

/// PERSISTENT RESERVE IN / READ KEYS: the keys.
async fn read_keys(s: &Session) -> Vec<u64> {
    let c = [0x5E, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0];
    let r = s
        .command(0, &c, DataDir::Read, 4096, Bytes::new())
        .await
        .expect("PR IN");
    assert_eq!(r.status, 0);
    let n = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize / 8;
    (0..n)
        .map(|i| u64::from_be_bytes(r.data[8 + i * 8..16 + i * 8].try_into().unwrap()))
        .collect()
}

/// A parsed extended Reservation Status: generation, type, PTPLS and the
/// registrants as (key, holds, host id).
struct Report {
    gen: u32,
    rtype: u8,
    ptpls: u8,
    regs: Vec<(u64, bool, [u8; 16])>,
}

async fn report(q: &Queue) -> Report {
    let d = q.resv_report(1, true, 4096).await.expect("report");
    assert!(d.len() >= 64, "extended header");
    let n = u16::from_le_bytes([d[5], d[6]]) as usize;
    assert!(d.len() >= 64 + n * 64, "every registrant fits");
    let regs = (0..n)
        .map(|i| {
            let e = &d[64 + i * 64..128 + i * 64];
            assert_eq!(u16::from_le_bytes([e[0], e[1]]), 0xffff, "dynamic CNTLID");
            let key = u64::from_le_bytes(e[8..16].try_into().unwrap());
            let id: [u8; 16] = e[16..32].try_into().unwrap();
            (key, e[2] & 1 != 0, id)
        })
        .collect();
    Report {
        gen: u32::from_le_bytes(d[0..4].try_into().unwrap()),
        rtype: d[4],
        ptpls: d[9],
        regs,
    }
}

const CONFLICT: (u8, u8) = (sct::GENERIC, sc::RESERVATION_CONFLICT);

#[tokio::test]
async fn nvme_reservation_binds_iscsi_and_report_shows_both() {
    let server = start(None).await;
    let (c, q) = nvme(server.nvme_addrs[0], &host(HOST_A, 0xA1)).await;
    // Identify advertises reservations.
    assert_ne!(c.identify.oncs & oncs::RESERVATIONS, 0, "ONCS reservations");
    let id = c.identify_ns(1).await.unwrap();
    assert_eq!(id.rescap & rescap::ALL_TYPES, rescap::ALL_TYPES, "RESCAP");
    assert_ne!(id.rescap & rescap::PTPL, 0);
    let s = iscsi(server.iscsi_addrs[0]).await;

    // NVMe host A registers and acquires Write Exclusive.
    q.resv_register(1, 0, false, 0, 0, 0xA1A1).await.unwrap();
    // Registering again with the same key is a no-op; another key conflicts.
    q.resv_register(1, 0, false, 0, 0, 0xA1A1).await.unwrap();
    assert_eq!(
        status_of(
            q.resv_register(1, 0, false, 0, 0, 0x1234)
                .await
                .unwrap_err()
        ),
        CONFLICT
    );
    // A wrong current key cannot acquire.
    assert_eq!(
        status_of(q.resv_acquire(1, 0, WE, 0xBAD, 0).await.unwrap_err()),
        CONFLICT
    );
    q.resv_acquire(1, 0, WE, 0xA1A1, 0).await.unwrap();

    // The iSCSI initiator may read but not write.
    let r = scsi_write(&s, 10, block(0x55, 1)).await;
    assert_eq!(r.status, SCSI_CONFLICT, "iSCSI WRITE under an NVMe WE");
    let r = scsi_read(&s, 10, 1).await;
    assert_eq!(r.status, 0, "iSCSI READ under an NVMe WE");
    assert_eq!(r.data.len(), BS as usize);
    // The holder writes.
    q.write(1, 10, block(0xA1, 1), BS, false).await.unwrap();
    assert_eq!(scsi_read(&s, 10, 1).await.data, block(0xA1, 1));

    // The initiator registers through SCSI: Report lists both registrants,
    // SCSI's without a host identifier; READ KEYS lists both keys.
    assert_eq!(prout(&s, 0x00, 0, 0, 0xB2B2).await.status, 0);
    let rep = report(&q).await;
    assert_eq!(rep.rtype, WE);
    assert_eq!(rep.regs.len(), 2);
    assert!(rep.regs.contains(&(0xA1A1, true, [0xA1; 16])));
    assert!(rep.regs.contains(&(0xB2B2, false, [0; 16])));
    let mut keys = read_keys(&s).await;
    keys.sort_unstable();
    assert_eq!(keys, vec![0xA1A1, 0xB2B2]);
    // The regular structure cannot carry a 128-bit host identifier.
    assert_eq!(
        status_of(q.resv_report(1, false, 4096).await.unwrap_err()),
        (sct::GENERIC, sc::HOST_ID_INCONSISTENT)
    );
    // Still no writes for the SCSI registrant under plain WE.
    assert_eq!(
        scsi_write(&s, 10, block(0x55, 1)).await.status,
        SCSI_CONFLICT
    );

    // Release with the wrong type is refused; with the right one it ends
    // the reservation and the initiator writes again.
    assert_eq!(
        status_of(q.resv_release(1, 0, EA, 0xA1A1).await.unwrap_err()),
        (sct::GENERIC, sc::INVALID_FIELD)
    );
    q.resv_release(1, 0, WE, 0xA1A1).await.unwrap();
    assert_eq!(report(&q).await.rtype, 0);
    assert_eq!(scsi_write(&s, 10, block(0x55, 1)).await.status, 0);

    // Replace, then unregister; the generation moves with registrations.
    let g = report(&q).await.gen;
    q.resv_register(1, 2, false, 0, 0xA1A1, 0xA2A2)
        .await
        .unwrap();
    assert_eq!(
        status_of(
            q.resv_register(1, 1, false, 0, 0xA1A1, 0)
                .await
                .unwrap_err()
        ),
        CONFLICT,
        "unregister with a stale key"
    );
    q.resv_register(1, 1, false, 0, 0xA2A2, 0).await.unwrap();
    let rep = report(&q).await;
    assert!(rep.gen > g);
    assert_eq!(rep.regs, vec![(0xB2B2, false, [0; 16])]);
    let _ = s.logout().await;
    c.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn scsi_reservation_binds_nvme() {
    let server = start(None).await;
    let s = iscsi(server.iscsi_addrs[0]).await;
    let (ca, qa) = nvme(server.nvme_addrs[0], &host(HOST_A, 0xA1)).await;
    let (cb, qb) = nvme(server.nvme_addrs[0], &host(HOST_B, 0xB1)).await;
    q_write_ok(&qa, 20).await;

    // SCSI registers and reserves Write Exclusive.
    assert_eq!(prout(&s, 0x00, 0, 0, 0x5C5C).await.status, 0);
    assert_eq!(prout(&s, 0x01, 0x01, 0x5C5C, 0).await.status, 0);
    // NVMe writes of every kind conflict; reads and compares pass.
    assert_eq!(
        status_of(qa.write(1, 20, block(1, 1), BS, false).await.unwrap_err()),
        CONFLICT,
        "NVMe Write under a SCSI WE"
    );
    assert_eq!(status_of(qa.flush(1).await.unwrap_err()), CONFLICT);
    let (first, second) = qa
        .compare_and_write(1, 20, 1, block(20, 1), block(2, 1))
        .await
        .unwrap();
    assert_eq!(
        (first.cqe.status.sct, first.cqe.status.sc),
        CONFLICT,
        "fused Compare and Write under a SCSI WE"
    );
    assert!(!second.cqe.status.is_success());
    assert_eq!(qa.read(1, 20, 1, BS).await.unwrap(), block(20, 1));
    // The SCSI holder still writes.
    assert_eq!(scsi_write(&s, 21, block(0x21, 1)).await.status, 0);

    // NVMe A registers; acquiring a held reservation conflicts; preempting
    // the SCSI key takes it over as Exclusive Access.
    qa.resv_register(1, 0, false, 0, 0, 0xA1A1).await.unwrap();
    assert_eq!(
        status_of(qa.resv_acquire(1, 0, WE, 0xA1A1, 0).await.unwrap_err()),
        CONFLICT
    );
    qa.resv_acquire(1, 1, EA, 0xA1A1, 0x5C5C).await.unwrap();
    q_write_ok(&qa, 20).await;
    // Host B may now neither read nor write.
    assert_eq!(
        status_of(qb.read(1, 20, 1, BS).await.unwrap_err()),
        CONFLICT,
        "NVMe Read under another host's EA"
    );
    assert_eq!(
        status_of(qb.write(1, 20, block(3, 1), BS, false).await.unwrap_err()),
        CONFLICT
    );
    // The preempted initiator learns of it, then conflicts on both.
    settle(&s).await;
    assert_eq!(scsi_read(&s, 20, 1).await.status, SCSI_CONFLICT);
    assert_eq!(scsi_write(&s, 20, block(4, 1)).await.status, SCSI_CONFLICT);
    assert_eq!(read_keys(&s).await, vec![0xA1A1]);

    // Clear: everyone is free again.
    qa.resv_release(1, 1, 0, 0xA1A1).await.unwrap();
    assert!(report(&qb).await.regs.is_empty());
    q_write_ok(&qb, 22).await;
    settle(&s).await;
    assert_eq!(scsi_write(&s, 22, block(5, 1)).await.status, 0);
    let _ = s.logout().await;
    ca.close().await;
    cb.close().await;
    server.shutdown().await.unwrap();
}

async fn q_write_ok(q: &Queue, lba: u64) {
    q.write(1, lba, block(lba as u8, 1), BS, false)
        .await
        .expect("NVMe write");
}

/// Whether every byte of `d` is the same: our writers fill whole ranges with
/// one byte, so anything else is a torn or mixed result.
fn uniform(d: &[u8]) -> Option<u8> {
    let f = *d.first()?;
    d.iter().all(|b| *b == f).then_some(f)
}

const RACE_LBA: u64 = 300;
const RACE_BLOCKS: u32 = 16;
const ROUNDS: usize = 200;

#[tokio::test]
async fn nvme_fused_compare_and_write_races_iscsi_writes() {
    let server = start(None).await;
    let s = Arc::new(iscsi(server.iscsi_addrs[0]).await);
    let (c, q) = nvme(server.nvme_addrs[0], &host(HOST_A, 0xA1)).await;
    q.write(1, RACE_LBA, block(0, RACE_BLOCKS), BS, false)
        .await
        .unwrap();
    // The iSCSI writer fills the range with odd bytes, NVMe with even ones.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..ROUNDS {
                let b = (2 * (i % 100) + 1) as u8;
                let r = scsi_write(&s, RACE_LBA as u32, block(b, RACE_BLOCKS)).await;
                assert_eq!(r.status, 0, "iSCSI WRITE");
            }
        })
    };
    let (mut swaps, mut misses) = (0, 0);
    for i in 0..ROUNDS {
        let cur = q.read(1, RACE_LBA, RACE_BLOCKS, BS).await.unwrap();
        let seen = uniform(&cur).unwrap_or_else(|| panic!("round {i}: torn before the swap"));
        let new = (2 * (i % 100) + 2) as u8;
        let (a, b) = within(
            "fused",
            q.compare_and_write(1, RACE_LBA, RACE_BLOCKS, cur, block(new, RACE_BLOCKS)),
        )
        .await
        .unwrap();
        let after = q.read(1, RACE_LBA, RACE_BLOCKS, BS).await.unwrap();
        let now = uniform(&after).unwrap_or_else(|| panic!("round {i}: torn after the swap"));
        if a.cqe.status.is_success() {
            assert!(b.cqe.status.is_success(), "round {i}: write half");
            // A clean swap: our bytes, or an iSCSI write that came later.
            assert!(now == new || now % 2 == 1, "round {i}: {seen} -> {now}");
            swaps += 1;
        } else {
            assert_eq!(
                (a.cqe.status.sct, a.cqe.status.sc),
                (sct::MEDIA, sc::COMPARE_FAILED),
                "round {i}"
            );
            assert!(!b.cqe.status.is_success(), "round {i}: write half ran");
            misses += 1;
        }
    }
    within("writer", writer).await.unwrap();
    assert_eq!(swaps + misses, ROUNDS);
    assert!(swaps > 0, "some swaps succeed");

    // Deterministically: while another writer holds the exclusive range
    // lock, a fused pair neither compares nor writes; it then compares
    // against what that writer left, so its stale compare fails.
    let vol = server.volume("vol").await.unwrap().volume.clone();
    let cur = q.read(1, RACE_LBA, 1, BS).await.unwrap();
    let guard = vol.lock_exclusive(RACE_LBA, 1).await;
    let pending = {
        let q = q.clone();
        tokio::spawn(async move {
            q.compare_and_write(1, RACE_LBA, 1, cur, block(0xEE, 1))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pending.is_finished(),
        "fused pair waited for the range lock"
    );
    vol.write_locked(&guard, RACE_LBA, block(0xDD, 1), false)
        .await
        .unwrap();
    drop(guard);
    let (a, b) = within("fused after unlock", pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.cqe.status.sct, a.cqe.status.sc),
        (sct::MEDIA, sc::COMPARE_FAILED),
        "compared after the lock holder's write"
    );
    assert!(!b.cqe.status.is_success());
    assert_eq!(q.read(1, RACE_LBA, 1, BS).await.unwrap(), block(0xDD, 1));
    // And with the current data the swap goes through.
    let (a, _) = q
        .compare_and_write(1, RACE_LBA, 1, block(0xDD, 1), block(0xEE, 1))
        .await
        .unwrap();
    assert!(a.cqe.status.is_success());
    assert_eq!(q.read(1, RACE_LBA, 1, BS).await.unwrap(), block(0xEE, 1));
    if let Ok(s) = Arc::try_unwrap(s) {
        let _ = s.logout().await;
    }
    c.close().await;
    server.shutdown().await.unwrap();
}

/// COMPARE AND WRITE (16) with `blocks` blocks.
fn caw_cdb(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

#[tokio::test]
async fn iscsi_compare_and_write_races_nvme_writes() {
    let server = start(None).await;
    let s = iscsi(server.iscsi_addrs[0]).await;
    let (c, q) = nvme(server.nvme_addrs[0], &host(HOST_A, 0xA1)).await;
    q.write(1, RACE_LBA, block(0, RACE_BLOCKS), BS, false)
        .await
        .unwrap();
    // The NVMe writer fills the range with odd bytes, iSCSI with even ones.
    let writer = {
        let q = q.clone();
        tokio::spawn(async move {
            for i in 0..ROUNDS {
                let b = (2 * (i % 100) + 1) as u8;
                q.write(1, RACE_LBA, block(b, RACE_BLOCKS), BS, false)
                    .await
                    .expect("NVMe write");
            }
        })
    };
    let (mut swaps, mut misses) = (0, 0);
    for i in 0..ROUNDS {
        let r = scsi_read(&s, RACE_LBA as u32, RACE_BLOCKS as u16).await;
        assert_eq!(r.status, 0);
        let seen = uniform(&r.data).unwrap_or_else(|| panic!("round {i}: torn before"));
        let new = (2 * (i % 100) + 2) as u8;
        let mut out = r.data.to_vec();
        out.extend_from_slice(&block(new, RACE_BLOCKS));
        let len = out.len() as u32;
        let r = s
            .command(
                0,
                &caw_cdb(RACE_LBA, RACE_BLOCKS as u8),
                DataDir::Write,
                len,
                Bytes::from(out),
            )
            .await
            .expect("COMPARE AND WRITE");
        let after = scsi_read(&s, RACE_LBA as u32, RACE_BLOCKS as u16).await;
        let now = uniform(&after.data).unwrap_or_else(|| panic!("round {i}: torn after"));
        if r.status == 0 {
            assert!(now == new || now % 2 == 1, "round {i}: {seen} -> {now}");
            swaps += 1;
        } else {
            assert_eq!(r.status, 0x02, "round {i}: CHECK CONDITION");
            assert_eq!(r.sense_key().map(|k| k.0), Some(0x0E), "MISCOMPARE");
            misses += 1;
        }
    }
    within("writer", writer).await.unwrap();
    assert_eq!(swaps + misses, ROUNDS);
    assert!(swaps > 0, "some swaps succeed");
    let _ = s.logout().await;
    c.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn nvme_ptpl_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let server = start(Some(dir.path())).await;
        let (c, q) = nvme(server.nvme_addrs[0], &host(HOST_A, 0xA1)).await;
        // Register with CPTPL "set", then reserve.
        q.resv_register(1, 0, false, 3, 0, 0xA1A1).await.unwrap();
        q.resv_acquire(1, 0, WE, 0xA1A1, 0).await.unwrap();
        assert_eq!(c.get_features_ns(feat::RESV_PERSIST, 1).await.unwrap(), 1);
        let rep = report(&q).await;
        assert_eq!(rep.ptpls, 1);
        c.close().await;
        server.shutdown().await.unwrap();
    }
    let server = start(Some(dir.path())).await;
    let (cb, qb) = nvme(server.nvme_addrs[0], &host(HOST_B, 0xB1)).await;
    // Another host sees the restored registration and reservation and may
    // not write; neither may an iSCSI initiator.
    let rep = report(&qb).await;
    assert_eq!(rep.rtype, WE);
    assert_eq!(rep.ptpls, 1);
    assert_eq!(rep.regs, vec![(0xA1A1, true, [0xA1; 16])]);
    assert_eq!(
        status_of(qb.write(1, 0, block(1, 1), BS, false).await.unwrap_err()),
        CONFLICT
    );
    let s = iscsi(server.iscsi_addrs[0]).await;
    assert_eq!(scsi_write(&s, 0, block(1, 1)).await.status, SCSI_CONFLICT);
    // The same host (same Host Identifier) is still the holder.
    let (ca, qa) = nvme(server.nvme_addrs[0], &host(HOST_A, 0xA1)).await;
    qa.write(1, 0, block(0xA1, 1), BS, false).await.unwrap();
    // Set Features clears PTPL; the state then no longer survives.
    ca.set_features_ns(feat::RESV_PERSIST, 1, 0).await.unwrap();
    assert_eq!(ca.get_features_ns(feat::RESV_PERSIST, 1).await.unwrap(), 0);
    let _ = s.logout().await;
    ca.close().await;
    cb.close().await;
    server.shutdown().await.unwrap();
    let server = start(Some(dir.path())).await;
    let (c, q) = nvme(server.nvme_addrs[0], &host(HOST_B, 0xB1)).await;
    let rep = report(&q).await;
    assert!(rep.regs.is_empty() && rep.rtype == 0, "nothing persisted");
    c.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn preempted_host_gets_a_reservation_notification() {
    use vtgt_protocol::nvme::log::{lid, resv_notify};
    let server = start(None).await;
    let (ca, qa) = nvme(server.nvme_addrs[0], &host(HOST_A, 0xA1)).await;
    let (cb, qb) = nvme(server.nvme_addrs[0], &host(HOST_B, 0xB1)).await;
    qb.resv_register(1, 0, false, 0, 0, 0xB1B1).await.unwrap();
    qa.resv_register(1, 0, false, 0, 0, 0xA1A1).await.unwrap();
    qa.resv_acquire(1, 0, WE, 0xA1A1, 0).await.unwrap();
    let aer = cb.aer();
    // Preempt and abort B's registration.
    qa.resv_acquire(1, 2, WE, 0xA1A1, 0xB1B1).await.unwrap();
    let dw0 = within("reservation AEN", aer).await.unwrap().unwrap();
    assert_eq!(dw0 & 0x00ff_0007, 0x0080_0006, "I/O specific, log 80h");
    let page = cb
        .get_log_page(lid::RESV_NOTIFICATION, 0xffff_ffff, 64, 0, false)
        .await
        .unwrap();
    assert_eq!(u64::from_le_bytes(page[0..8].try_into().unwrap()), 1);
    assert_eq!(page[8], resv_notify::REGISTRATION_PREEMPTED);
    assert_eq!(page[9], 0, "no more pages");
    assert_eq!(u32::from_le_bytes(page[12..16].try_into().unwrap()), 1);
    let page = cb
        .get_log_page(lid::RESV_NOTIFICATION, 0xffff_ffff, 64, 0, false)
        .await
        .unwrap();
    assert_eq!(page[8], resv_notify::EMPTY);
    // B no longer writes; A's report shows A alone.
    assert_eq!(
        status_of(qb.write(1, 0, block(1, 1), BS, false).await.unwrap_err()),
        CONFLICT
    );
    assert_eq!(report(&qa).await.regs, vec![(0xA1A1, true, [0xA1; 16])]);
    // Masked "registration preempted": the next preemption leaves no page.
    cb.set_features_ns(feat::RESV_MASK, 1, 1 << 1)
        .await
        .unwrap();
    assert_eq!(
        cb.get_features_ns(feat::RESV_MASK, 1).await.unwrap(),
        1 << 1
    );
    qb.resv_register(1, 0, false, 0, 0, 0xB2B2).await.unwrap();
    qa.resv_acquire(1, 1, WE, 0xA1A1, 0xB2B2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B's next command drains the notice; still nothing is logged.
    assert_eq!(
        status_of(qb.write(1, 0, block(1, 1), BS, false).await.unwrap_err()),
        CONFLICT
    );
    let page = cb
        .get_log_page(lid::RESV_NOTIFICATION, 0xffff_ffff, 64, 0, false)
        .await
        .unwrap();
    assert_eq!(page[8], resv_notify::EMPTY, "masked");
    ca.close().await;
    cb.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn iscsi_name_spelled_like_an_nvme_host_is_not_that_host() {
    let server = start(None).await;
    let (c, q) = nvme(server.nvme_addrs[0], &host(HOST_A, 0xA1)).await;
    q.resv_register(1, 0, false, 0, 0, 0xA1A1).await.unwrap();
    q.resv_acquire(1, 0, WE, 0xA1A1, 0).await.unwrap();
    let name = format!("nvme-hostid:{}", "a1".repeat(16));
    let s = within(
        "iSCSI login",
        Session::login(server.iscsi_addrs[0], LoginConfig::new(&name, Some(TARGET))),
    )
    .await
    .expect("login");
    settle(&s).await;
    assert_eq!(
        scsi_write(&s, 0, block(1, 1)).await.status,
        SCSI_CONFLICT,
        "not covered by the NVMe host's registration"
    );
    let _ = s.logout().await;
    c.close().await;
    server.shutdown().await.unwrap();
}
