//! NVMe/TCP over loopback with our own host: the connect sequence Linux
//! performs, transfers of every shape with and without digests, keep-alive
//! expiry, discovery, malformed PDUs, and one volume shared with iSCSI.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vtgt::config::{
    Config, LunConfig, NamespaceConfig, NvmeConfig, NvmePortalConfig, SubsystemConfig, TargetConfig,
};
use vtgt::server::Server;
use vtgt_engine::{FaultReason, Notice};
use vtgt_initiator::nvme::{discover, Controller, HostConfig, NvmeError, Queue};
use vtgt_initiator::{DataDir, LoginConfig, Session};
use vtgt_protocol::nvme::command::{feat, nvm, rw_sqe, sc, sct, DsmRange, Sqe};
use vtgt_protocol::nvme::fabrics::{prop, CNTLID_DYNAMIC};
use vtgt_protocol::nvme::identify::{cntrltype, NsDesc};
use vtgt_protocol::nvme::log::{self as nlog, lid};
use vtgt_protocol::nvme::tcp::{self, fes, Digests, FrameConfig, ICReq, Pdu};

const SUBNQN: &str = "nqn.2026-11.org.vtgt:itest";
const LOCKED: &str = "nqn.2026-11.org.vtgt:locked";
const TARGET: &str = "iqn.2026-11.org.vtgt:itest";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0c0ffee0-0000-4000-8000-000000000001";
const OTHER_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0c0ffee0-0000-4000-8000-000000000002";
const BS: u32 = 512;
const VOLUME_BYTES: u64 = 32 << 20;
const STEP: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Volume "shared" as iSCSI LUN 0 and NVMe namespace 1 of SUBNQN; volume
/// "locked" as namespace 1 of LOCKED, which only OTHER_HOST may use.
fn config() -> Config {
    Config {
        data_dir: std::env::temp_dir(),
        iscsi: common::loopback_iscsi(),
        volumes: vec![
            common::volume("shared", VOLUME_BYTES),
            common::volume("locked", VOLUME_BYTES),
        ],
        targets: vec![TargetConfig {
            name: TARGET.into(),
            alias: None,
            luns: vec![LunConfig {
                id: 0,
                volume: "shared".into(),
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
        subsystems: vec![
            SubsystemConfig {
                nqn: SUBNQN.into(),
                allow_any_host: true,
                allowed_hosts: vec![],
                namespaces: vec![NamespaceConfig {
                    nsid: 1,
                    volume: "shared".into(),
                }],
            },
            SubsystemConfig {
                nqn: LOCKED.into(),
                allow_any_host: false,
                allowed_hosts: vec![OTHER_HOST.into()],
                namespaces: vec![NamespaceConfig {
                    nsid: 1,
                    volume: "locked".into(),
                }],
            },
        ],
    }
}

async fn start() -> (Server, SocketAddr) {
    let cfg = config();
    cfg.validate().expect("valid test config");
    let s = within("server start", Server::start(cfg))
        .await
        .expect("server starts");
    let a = s.nvme_addrs[0];
    assert!(a.ip().is_loopback());
    (s, a)
}

fn host(digests: Digests) -> HostConfig {
    let mut h = HostConfig::new(HOST);
    h.hostid = [0x11; 16];
    h.digests = digests;
    h.queue_size = 128;
    h
}

fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    Bytes::from(v)
}

fn status_of(e: NvmeError) -> (u8, u8) {
    match e {
        NvmeError::Status(s) => (s.sct, s.sc),
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test]
async fn linux_connect_sequence() {
    let (server, addr) = start().await;
    let h = host(Digests::default());
    let ctrl = within("connect", Controller::connect(addr, &h, SUBNQN))
        .await
        .expect("admin connect and enable");
    // Registers as Linux reads them.
    assert_eq!(ctrl.cap & 0xffff, 127, "MQES");
    assert_ne!(ctrl.cap & (1 << 37), 0, "NVM command set");
    assert_eq!(ctrl.property_get(prop::VS, false).await.unwrap(), 0x10400);
    assert_eq!(ctrl.property_get(prop::CSTS, false).await.unwrap() & 1, 1);
    // A 4-byte read of the 8-byte CAP is refused.
    assert!(ctrl.property_get(prop::CAP, false).await.is_err());
    let id = &ctrl.identify;
    assert_eq!(id.cntrltype, cntrltype::IO);
    assert_eq!(id.cntlid, ctrl.cntlid);
    assert_eq!(id.subnqn, SUBNQN);
    // The highest NSID a live change may add, as nvmet reports.
    assert_eq!(id.nn, 1024);
    assert_eq!(id.icdoff, 0);
    assert_ne!(id.sgls & 3, 0, "SGLs supported");
    assert!(id.ioccsz >= 4, "IOCCSZ covers at least the SQE");
    assert_eq!(id.iorcsz, 1);
    assert!(id.kas > 0 && id.mdts > 0);
    assert_ne!(id.oaes & (1 << 8), 0, "namespace attribute notices");
    // Namespaces.
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1]);
    let ns = ctrl.identify_ns(1).await.unwrap();
    assert_eq!(ns.nsze, VOLUME_BYTES / BS as u64);
    assert_eq!(ns.block_size(), Some(BS));
    let descs = ctrl.ns_descriptors(1).await.unwrap();
    let nguid = descs
        .iter()
        .find_map(|d| match d {
            NsDesc::Nguid(g) => Some(*g),
            _ => None,
        })
        .expect("NGUID descriptor");
    assert_eq!(nguid, ns.nguid);
    assert!(descs.iter().any(|d| matches!(d, NsDesc::Uuid(_))));
    assert!(descs.iter().any(|d| matches!(d, NsDesc::Eui64(_))));
    // Inactive and invalid NSIDs.
    assert_eq!(ctrl.identify_ns(7).await.unwrap().nsze, 0);
    assert_eq!(
        status_of(ctrl.identify_ns(0).await.unwrap_err()),
        (sct::GENERIC, sc::INVALID_NS)
    );
    // I/O command set structures Linux asks for.
    for cns in [0x06u8, 0x05, 0x08, 0x1c] {
        let nsid = if cns == 0x06 || cns == 0x1c { 0 } else { 1 };
        ctrl.identify(cns, nsid)
            .await
            .unwrap_or_else(|e| panic!("CNS {cns:#x}: {e}"));
    }
    // Features.
    assert_eq!(ctrl.set_num_queues(4).await.unwrap(), 4);
    ctrl.set_features(feat::ASYNC_EVENT, 1 << 8).await.unwrap();
    assert_eq!(ctrl.get_features(feat::ASYNC_EVENT).await.unwrap(), 1 << 8);
    ctrl.set_features(feat::KATO, 5000).await.unwrap();
    assert_eq!(ctrl.get_features(feat::KATO).await.unwrap(), 5000);
    assert_eq!(ctrl.get_features(feat::VOLATILE_WC).await.unwrap(), 1);
    ctrl.keep_alive().await.unwrap();
    // Log pages.
    for (l, len) in [
        (lid::ERROR_INFO, 64u32),
        (lid::SMART, 512),
        (lid::FW_SLOT, 512),
    ] {
        let d = ctrl
            .get_log_page(l, 0xffff_ffff, len, 0, false)
            .await
            .unwrap();
        assert_eq!(d.len(), len as usize);
    }
    let smart = nlog::Smart::parse(
        &ctrl
            .get_log_page(lid::SMART, 0xffff_ffff, 512, 0, false)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(smart.avail_spare, 100);
    // AER: a capacity change on the volume becomes a namespace attribute
    // notice, and the changed namespace log names namespace 1.
    let aer = ctrl.aer();
    let io = ctrl.connect_io_queue(1, 32).await.expect("I/O queue");
    io.write(1, 0, pattern(1, 4096), BS, false).await.unwrap();
    let entry = server.volume("shared").await.unwrap();
    entry
        .volume
        .grow(VOLUME_BYTES / BS as u64 * 2)
        .await
        .unwrap();
    entry.control.raise_all(Notice::CapacityChanged, None).await;
    let dw0 = within("AER completion", aer).await.unwrap().unwrap();
    assert_eq!(dw0 & 7, 2, "notice");
    assert_eq!((dw0 >> 16) & 0xff, lid::CHANGED_NS as u32);
    let changed = ctrl
        .get_log_page(lid::CHANGED_NS, 0xffff_ffff, 4096, 0, false)
        .await
        .unwrap();
    assert_eq!(&changed[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        ctrl.identify_ns(1).await.unwrap().nsze,
        VOLUME_BYTES / BS as u64 * 2
    );
    // The engine notice was delivered, so I/O is back on the fast path.
    let hits = entry.volume.counters.fast_path_hits();
    io.read(1, 0, 8, BS).await.unwrap();
    assert_eq!(entry.volume.counters.fast_path_hits(), hits + 1);
    // Out of range faults to the control path, which answers LBA Out of
    // Range.
    let oor = entry.volume.counters.count(FaultReason::OutOfRange);
    let cap = VOLUME_BYTES / BS as u64 * 2;
    assert_eq!(
        status_of(io.read(1, cap, 1, BS).await.unwrap_err()),
        (sct::GENERIC, sc::LBA_RANGE)
    );
    assert_eq!(
        entry.volume.counters.count(FaultReason::OutOfRange),
        oor + 1
    );
    // Too many AERs.
    let held: Vec<_> = (0..4).map(|_| ctrl.aer()).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fifth = within("fifth AER", ctrl.aer()).await.unwrap();
    assert_eq!(
        status_of(fifth.unwrap_err()),
        (sct::COMMAND_SPECIFIC, sc::AER_LIMIT)
    );
    // Shutdown: CSTS.SHST reaches "complete".
    within("shutdown", ctrl.shutdown()).await.unwrap();
    ctrl.close().await;
    for h in held {
        h.abort();
    }
    // Namespace identifiers survive a restart (same volume names).
    server.shutdown().await.unwrap();
    let (server, addr) = start().await;
    let ctrl = within("reconnect", Controller::connect(addr, &h, SUBNQN))
        .await
        .unwrap();
    assert_eq!(ctrl.identify_ns(1).await.unwrap().nguid, nguid);
    ctrl.close().await;
    server.shutdown().await.unwrap();
}

async fn io_matrix(digests: Digests) {
    let (server, addr) = start().await;
    let ctrl = within("connect", Controller::connect(addr, &host(digests), SUBNQN))
        .await
        .unwrap();
    ctrl.set_num_queues(2).await.unwrap();
    let q = ctrl.connect_io_queue(1, 128).await.unwrap();
    let in_capsule = (ctrl.identify.ioccsz * 16 - 64) as usize;
    let maxh2c = q.maxh2cdata() as usize;
    // In-capsule, one R2T with one H2CData, R2T answered by several
    // H2CData PDUs, and reads spanning several C2HData PDUs.
    let sizes = [
        512usize,
        in_capsule,
        in_capsule + 512,
        maxh2c,
        maxh2c * 3 + 4096,
        1 << 20,
    ];
    let mut lba = 0u64;
    for (i, &n) in sizes.iter().enumerate() {
        let d = pattern(i as u64 + 10, n);
        within("write", q.write(1, lba, d.clone(), BS, i % 2 == 0))
            .await
            .unwrap_or_else(|e| panic!("write of {n}: {e}"));
        let r = within("read", q.read(1, lba, (n / BS as usize) as u32, BS))
            .await
            .unwrap_or_else(|e| panic!("read of {n}: {e}"));
        assert!(r == d, "data of {n} bytes differs");
        lba += (n / BS as usize) as u64;
    }
    // Many outstanding commands on one queue.
    let mut tasks = Vec::new();
    for i in 0..96u64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let d = pattern(1000 + i, 8192);
            q.write(1, 8192 + i * 16, d.clone(), BS, false).await?;
            let r = q.read(1, 8192 + i * 16, 16, BS).await?;
            Ok::<bool, NvmeError>(r == d)
        }));
    }
    for t in tasks {
        assert!(within("concurrent I/O", t).await.unwrap().unwrap());
    }
    q.flush(1).await.unwrap();
    // Out of range, bad namespace.
    let end = VOLUME_BYTES / BS as u64;
    assert_eq!(
        status_of(q.read(1, end - 1, 2, BS).await.unwrap_err()),
        (sct::GENERIC, sc::LBA_RANGE)
    );
    assert_eq!(
        status_of(q.read(9, 0, 1, BS).await.unwrap_err()),
        (sct::GENERIC, sc::INVALID_NS)
    );
    // Write Zeroes, with and without deallocate.
    q.write(1, 100, pattern(5, 4096), BS, false).await.unwrap();
    let mut wz = rw_sqe(nvm::WRITE_ZEROES, 0, 1, 100, 4, false);
    q.submit(wz, Bytes::new(), 0).await.unwrap().ok().unwrap();
    wz.set_dw(12, 3 | (1 << 25));
    wz.set_qw(10, 104);
    q.submit(wz, Bytes::new(), 0).await.unwrap().ok().unwrap();
    assert!(q.read(1, 100, 8, BS).await.unwrap().iter().all(|&b| b == 0));
    // Dataset Management deallocate.
    q.write(1, 200, pattern(6, 4096), BS, false).await.unwrap();
    let mut dsm = Sqe::new(nvm::DSM, 0);
    dsm.set_nsid(1);
    dsm.set_dw(10, 0);
    dsm.set_dw(11, 1 << 2);
    let range = DsmRange {
        cattr: 0,
        nlb: 8,
        slba: 200,
    };
    q.submit(dsm, Bytes::copy_from_slice(&range.encode()), 0)
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(q.read(1, 200, 8, BS).await.unwrap().iter().all(|&b| b == 0));
    // Compare, and fused Compare and Write.
    let old = pattern(7, 1024);
    let new = pattern(8, 1024);
    q.write(1, 300, old.clone(), BS, false).await.unwrap();
    let cmp = rw_sqe(nvm::COMPARE, 0, 1, 300, 2, false);
    q.submit(cmp, old.clone(), 0).await.unwrap().ok().unwrap();
    let bad = q.submit(cmp, new.clone(), 0).await.unwrap();
    assert_eq!(
        (bad.cqe.status.sct, bad.cqe.status.sc),
        (sct::MEDIA, sc::COMPARE_FAILED)
    );
    let (a, b) = q
        .compare_and_write(1, 300, 2, old.clone(), new.clone())
        .await
        .unwrap();
    assert!(a.cqe.status.is_success() && b.cqe.status.is_success());
    assert_eq!(q.read(1, 300, 2, BS).await.unwrap(), new);
    let (a, b) = q
        .compare_and_write(1, 300, 2, old.clone(), pattern(9, 1024))
        .await
        .unwrap();
    assert_eq!(a.cqe.status.sc, sc::COMPARE_FAILED);
    assert_eq!(b.cqe.status.sc, sc::ABORT_FAILED_FUSED);
    assert_eq!(q.read(1, 300, 2, BS).await.unwrap(), new);
    // A fused pair whose halves both move their data by R2T.
    let big_old = pattern(10, 16384);
    let big_new = pattern(11, 16384);
    q.write(1, 400, big_old.clone(), BS, false).await.unwrap();
    let (a, b) = q
        .compare_and_write(1, 400, 32, big_old, big_new.clone())
        .await
        .unwrap();
    assert!(a.cqe.status.is_success() && b.cqe.status.is_success());
    assert_eq!(q.read(1, 400, 32, BS).await.unwrap(), big_new);
    // A first half followed by anything but its second half is aborted.
    let mut lone = rw_sqe(nvm::COMPARE, 0, 1, 400, 1, false);
    lone.set_fuse(vtgt_protocol::nvme::command::Fuse::First);
    let q2 = q.clone();
    let lone = tokio::spawn(async move { q2.submit(lone, Bytes::from(vec![0u8; 512]), 0).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    q.read(1, 0, 1, BS).await.unwrap();
    let r = within("orphaned fused half", lone).await.unwrap().unwrap();
    assert_eq!(r.cqe.status.sc, sc::ABORT_MISSING_FUSED);
    // An NVM Write on the admin queue is an unsupported admin opcode
    // (Create I/O SQ does not exist on fabrics).
    let r = ctrl
        .admin
        .submit(
            rw_sqe(nvm::WRITE, 0, 1, 0, 1, false),
            Bytes::from(vec![0u8; 512]),
            0,
        )
        .await
        .unwrap();
    assert_eq!(r.cqe.status.sc, sc::INVALID_OPCODE);
    // A second Connect of the same QID is refused.
    let dup = Queue::open(addr, digests, 1, 4).await.unwrap();
    let r = dup
        .connect(&ctrl.host, SUBNQN, ctrl.cntlid, 32, 0)
        .await
        .unwrap();
    assert_eq!(r.cqe.status.sc, sc::CONNECT_INVALID_PARAM);
    dup.close().await;
    q.close().await;
    ctrl.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn transfers_without_digests() {
    io_matrix(Digests::default()).await;
}

#[tokio::test]
async fn transfers_with_header_and_data_digests() {
    io_matrix(Digests {
        header: true,
        data: true,
    })
    .await;
}

#[tokio::test]
async fn response_capsules_when_sq_flow_control_is_on() {
    let (server, addr) = start().await;
    let mut h = host(Digests::default());
    h.disable_sqflow = false;
    let ctrl = Controller::connect(addr, &h, SUBNQN).await.unwrap();
    let q = ctrl.connect_io_queue(1, 16).await.unwrap();
    q.write(1, 0, pattern(3, 200 * 1024), BS, false)
        .await
        .unwrap();
    let r = q.read(1, 0, 400, BS).await.unwrap();
    assert_eq!(r, pattern(3, 200 * 1024));
    ctrl.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn keep_alive_timeout_tears_the_controller_down() {
    metrics_on();
    let (server, addr) = start().await;
    // A host that keeps alive survives well past its KATO.
    let mut h = host(Digests::default());
    h.kato_ms = 300;
    let alive = Controller::connect(addr, &h, SUBNQN).await.unwrap();
    let ka = alive.keep_alive_task(Duration::from_millis(100));
    // A silent one does not.
    let mut h2 = host(Digests::default());
    h2.hostid = [0x22; 16];
    h2.kato_ms = 300;
    let silent = Controller::connect(addr, &h2, SUBNQN).await.unwrap();
    let io = silent.connect_io_queue(1, 8).await.unwrap();
    let cntlid = silent.cntlid;
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if silent.admin.is_closed() && io.is_closed() {
            gone = true;
            break;
        }
    }
    assert!(gone, "the silent host's queues were not closed");
    let series = format!("vtgt_nvme_keep_alive_timeouts_total{{subsystem=\"{SUBNQN}\"}}");
    // Other tests' controllers may time out too once their hosts go.
    assert!(metric(&series) >= 1.0, "{series} not counted");
    let q = Queue::open(addr, h2.digests, 2, 4).await.unwrap();
    let r = q.connect(&h2, SUBNQN, cntlid, 8, 0).await.unwrap();
    assert_eq!(
        (r.cqe.status.sct, r.cqe.status.sc),
        (sct::COMMAND_SPECIFIC, sc::CONNECT_INVALID_PARAM)
    );
    assert_eq!(r.cqe.dw0(), (1 << 16) | 16, "IPO names CNTLID in the data");
    q.close().await;
    assert!(!alive.admin.is_closed());
    alive.keep_alive().await.unwrap();
    ka.abort();
    alive.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn discovery_and_host_access() {
    let (server, addr) = start().await;
    let entries = within("discover", discover(addr, &host(Digests::default())))
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e.subnqn, SUBNQN);
    assert_eq!(e.trtype, nlog::disc::TRTYPE_TCP);
    assert_eq!(e.adrfam, nlog::disc::ADRFAM_IPV4);
    assert_eq!(e.subtype, nlog::disc::SUBTYPE_NVME);
    assert_eq!(e.traddr, "127.0.0.1");
    assert_eq!(e.trsvcid, addr.port().to_string());
    let other = HostConfig::new(OTHER_HOST);
    let mut seen: Vec<String> = discover(addr, &other)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.subnqn)
        .collect();
    seen.sort();
    assert_eq!(seen, vec![SUBNQN.to_string(), LOCKED.to_string()]);
    // The allow list is enforced at Connect.
    let err = Controller::connect(addr, &host(Digests::default()), LOCKED)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        status_of(err),
        (sct::COMMAND_SPECIFIC, sc::CONNECT_INVALID_HOST)
    );
    let ok = Controller::connect(addr, &other, LOCKED).await.unwrap();
    ok.close().await;
    // Unknown subsystem, and an admin Connect naming a static cntlid.
    let q = Queue::open(addr, Digests::default(), 0, 4).await.unwrap();
    let r = q
        .connect(&other, "nqn.2026-11.org.vtgt:nope", CNTLID_DYNAMIC, 32, 0)
        .await
        .unwrap();
    assert_eq!(r.cqe.status.sc, sc::CONNECT_INVALID_PARAM);
    assert_eq!(r.cqe.dw0(), (1 << 16) | 256);
    let r = q.connect(&other, SUBNQN, 5, 32, 0).await.unwrap();
    assert_eq!(r.cqe.status.sc, sc::CONNECT_INVALID_PARAM);
    q.close().await;
    server.shutdown().await.unwrap();
}

/// Reads PDUs from a raw connection until a C2HTermReq or close.
async fn expect_term(s: &mut TcpStream, digests: Digests) -> Option<u16> {
    let mut buf = BytesMut::new();
    let cfg = FrameConfig {
        digests,
        max_data: 1 << 20,
    };
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        while let Ok(Some(p)) = tcp::decode(&mut buf, &cfg) {
            if let Pdu::C2HTermReq(t) = p {
                return Some(t.fes);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read_buf(&mut buf))
            .await
            .expect("target answers or closes")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
    }
}

async fn raw_connect(addr: SocketAddr, digests: Digests) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let ic = Pdu::ICReq(ICReq {
        pfv: 0,
        hpda: 0,
        digests,
        maxr2t: 0,
    });
    s.write_all(&tcp::encode_to_bytes(&ic, Digests::default()))
        .await
        .unwrap();
    let mut b = vec![0u8; 128];
    within("ICResp", s.read_exact(&mut b)).await.unwrap();
    assert_eq!(b[0], 0x01, "ICResp");
    s
}

/// Installs the process-wide metrics recorder, once for all the tests.
fn metrics_on() {
    static ON: std::sync::Once = std::sync::Once::new();
    ON.call_once(|| {
        let listen = "127.0.0.1:0".parse().unwrap();
        vtgt::metrics::install(listen).expect("metrics recorder");
    });
}

/// The value of a series in the metrics output, 0 when absent.
fn metric(series: &str) -> f64 {
    let prefix = format!("{series} ");
    vtgt::metrics::render()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0.0)
}

fn digest_errors(kind: &str) -> f64 {
    metric(&format!(
        "vtgt_digest_errors_total{{protocol=\"nvme\",kind=\"{kind}\"}}"
    ))
}

#[tokio::test]
async fn malformed_pdus_terminate_only_their_connection() {
    metrics_on();
    let (server, addr) = start().await;
    let ctrl = Controller::connect(addr, &host(Digests::default()), SUBNQN)
        .await
        .unwrap();
    let q = ctrl.connect_io_queue(1, 32).await.unwrap();
    q.write(1, 0, pattern(42, 8192), BS, false).await.unwrap();
    let dig = Digests {
        header: true,
        data: true,
    };
    let capsule = |data: usize| {
        Pdu::CapsuleCmd(tcp::CapsuleCmd {
            sqe: rw_sqe(nvm::WRITE, 1, 1, 0, 1, false).0,
            data: Bytes::from(vec![0u8; data]),
        })
    };
    // Huge PLEN: refused before anything is buffered.
    let mut s = raw_connect(addr, Digests::default()).await;
    let mut b = BytesMut::from(&tcp::encode_to_bytes(&capsule(0), Digests::default())[..]);
    b[4..8].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    b[3] = 72;
    s.write_all(&b).await.unwrap();
    assert_eq!(
        expect_term(&mut s, Digests::default()).await,
        Some(fes::DATA_LIMIT_EXCEEDED)
    );
    // PLEN disagreeing with a data-less PDU, and a wrong HLEN.
    for (at, v) in [(4usize, 80u8), (2, 64)] {
        let mut s = raw_connect(addr, Digests::default()).await;
        let mut b = BytesMut::from(&tcp::encode_to_bytes(&capsule(0), Digests::default())[..]);
        b[at] = v;
        s.write_all(&b).await.unwrap();
        assert_eq!(
            expect_term(&mut s, Digests::default()).await,
            Some(fes::INVALID_HEADER_FIELD),
            "byte {at} = {v}"
        );
    }
    // Bad header digest.
    let mut s = raw_connect(addr, dig).await;
    let mut b = BytesMut::from(&tcp::encode_to_bytes(&capsule(512), dig)[..]);
    b[20] ^= 0xff;
    s.write_all(&b).await.unwrap();
    assert_eq!(
        expect_term(&mut s, dig).await,
        Some(fes::HEADER_DIGEST_ERROR)
    );
    // Bad data digest: the connection is closed.
    let mut s = raw_connect(addr, dig).await;
    let mut b = BytesMut::from(&tcp::encode_to_bytes(&capsule(512), dig)[..]);
    let n = b.len();
    b[n - 1] ^= 0xff;
    s.write_all(&b).await.unwrap();
    assert_eq!(expect_term(&mut s, dig).await, None);
    // Both are counted.
    assert_eq!(digest_errors("header"), 1.0);
    assert_eq!(digest_errors("data"), 1.0);
    // In-capsule data beyond what we accept.
    let mut s = raw_connect(addr, Digests::default()).await;
    s.write_all(&tcp::encode_to_bytes(
        &capsule(256 * 1024),
        Digests::default(),
    ))
    .await
    .unwrap();
    assert_eq!(
        expect_term(&mut s, Digests::default()).await,
        Some(fes::DATA_LIMIT_EXCEEDED)
    );
    // An unknown PDU type before ICReq, and an H2CData nobody asked for.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x42; 128]).await.unwrap();
    assert_eq!(
        expect_term(&mut s, Digests::default()).await,
        Some(fes::INVALID_HEADER_FIELD)
    );
    let mut s = raw_connect(addr, Digests::default()).await;
    let h2c = Pdu::H2CData(tcp::H2CData {
        cccid: 1,
        ttag: 77,
        datao: 0,
        last: true,
        data: Bytes::from(vec![1u8; 512]),
    });
    s.write_all(&tcp::encode_to_bytes(&h2c, Digests::default()))
        .await
        .unwrap();
    assert_eq!(
        expect_term(&mut s, Digests::default()).await,
        Some(fes::INVALID_HEADER_FIELD)
    );
    // Random garbage after a good ICReq.
    for seed in 0..16u64 {
        let mut s = raw_connect(addr, Digests::default()).await;
        let _ = s.write_all(&pattern(seed, 300)).await;
        let _ = s.shutdown().await;
        let _ = expect_term(&mut s, Digests::default()).await;
    }
    // The healthy connection never noticed.
    assert_eq!(q.read(1, 0, 16, BS).await.unwrap(), pattern(42, 8192));
    ctrl.keep_alive().await.unwrap();
    ctrl.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn queue_size_and_command_ordering_rules() {
    let (server, addr) = start().await;
    let h = host(Digests::default());
    // Commands before Connect fail with a sequence error.
    let q = Queue::open(addr, Digests::default(), 0, 4).await.unwrap();
    let r = q.submit(Sqe::new(0x18, 0), Bytes::new(), 0).await.unwrap();
    assert_eq!(r.cqe.status.sc, sc::CMD_SEQ_ERROR);
    // Admin Connect, but admin commands before CC.EN fail too.
    let r = q
        .connect(&h, SUBNQN, CNTLID_DYNAMIC, 32, 0)
        .await
        .unwrap()
        .ok()
        .unwrap();
    let cntlid = r.cqe.dw0() as u16;
    let r = q.submit(Sqe::new(0x18, 0), Bytes::new(), 0).await.unwrap();
    assert_eq!(r.cqe.status.sc, sc::CMD_SEQ_ERROR);
    // An I/O queue before the controller is ready.
    let io = Queue::open(addr, Digests::default(), 1, 4).await.unwrap();
    let r = io.connect(&h, SUBNQN, cntlid, 8, 0).await.unwrap();
    assert_eq!(r.cqe.status.sc, sc::CMD_SEQ_ERROR);
    io.close().await;
    q.close().await;
    // Oversized I/O queue (SQSIZE beyond MQES).
    let ctrl = Controller::connect(addr, &h, SUBNQN).await.unwrap();
    let io = Queue::open(addr, Digests::default(), 1, 4).await.unwrap();
    let r = io.connect(&h, SUBNQN, ctrl.cntlid, 1024, 0).await.unwrap();
    assert_eq!(r.cqe.status.sc, sc::CONNECT_INVALID_PARAM);
    io.close().await;
    // A host that overruns its SQSIZE is cut off with a TermReq; the
    // controller's other queues carry on.
    let q = Queue::open(addr, Digests::default(), 0, 8).await.unwrap();
    let mut h2 = h.clone();
    h2.hostid = [0x44; 16];
    q.connect(&h2, SUBNQN, CNTLID_DYNAMIC, 2, 0)
        .await
        .unwrap()
        .ok()
        .unwrap();
    let en = vtgt_protocol::nvme::fabrics::PropertyCmd::set_sqe(0, prop::CC, 0x46_0001, false);
    q.submit(en, Bytes::new(), 0).await.unwrap().ok().unwrap();
    let aers: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.submit(Sqe::new(0x0c, 0), Bytes::new(), 0).await })
        })
        .collect();
    for a in aers {
        let _ = within("overrun", a).await;
    }
    assert_eq!(
        q.termination().map(|t| t.fes),
        Some(fes::PDU_SEQUENCE_ERROR)
    );
    // Another host cannot join this controller.
    let io = Queue::open(addr, Digests::default(), 1, 4).await.unwrap();
    let mut other = h.clone();
    other.hostid = [0x33; 16];
    let r = io.connect(&other, SUBNQN, ctrl.cntlid, 8, 0).await.unwrap();
    assert_eq!(r.cqe.status.sc, sc::CONNECT_INVALID_PARAM);
    io.close().await;
    ctrl.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn controller_reset_drops_io_queues_and_enables_again() {
    let (server, addr) = start().await;
    let ctrl = Controller::connect(addr, &host(Digests::default()), SUBNQN)
        .await
        .unwrap();
    let io = ctrl.connect_io_queue(1, 8).await.unwrap();
    io.write(1, 0, pattern(77, 4096), BS, false).await.unwrap();
    // CC.EN 1 -> 0: CSTS.RDY clears and the I/O queues go away.
    ctrl.property_set(prop::CC, 0).await.unwrap();
    assert_eq!(ctrl.property_get(prop::CSTS, false).await.unwrap() & 1, 0);
    let mut closed = false;
    for _ in 0..100 {
        if io.is_closed() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "I/O queue survived a controller reset");
    // Admin commands wait for the controller to be enabled again.
    assert_eq!(
        status_of(ctrl.keep_alive().await.unwrap_err()),
        (sct::GENERIC, sc::CMD_SEQ_ERROR)
    );
    within("re-enable", ctrl.enable()).await.unwrap();
    let io = ctrl.connect_io_queue(1, 8).await.unwrap();
    assert_eq!(io.read(1, 0, 8, BS).await.unwrap(), pattern(77, 4096));
    // Enabling with the wrong queue entry sizes is a controller fatal status.
    ctrl.property_set(prop::CC, 0).await.unwrap();
    ctrl.property_set(prop::CC, 1).await.unwrap();
    assert_eq!(ctrl.property_get(prop::CSTS, false).await.unwrap() & 3, 2);
    ctrl.close().await;
    server.shutdown().await.unwrap();
}

fn cdb_rw(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

#[tokio::test]
async fn one_volume_through_iscsi_and_nvme() {
    let (server, addr) = start().await;
    let iscsi_addr = server.iscsi_addrs[0];
    let sess = within(
        "iSCSI login",
        Session::login(
            iscsi_addr,
            LoginConfig::new("iqn.2026-11.org.vtgt.host:x", Some(TARGET)),
        ),
    )
    .await
    .unwrap();
    // Clear the power-on unit attention.
    for _ in 0..3 {
        let r = sess
            .command(0, &[0u8; 6], DataDir::None, 0, Bytes::new())
            .await
            .unwrap();
        if r.status == 0 {
            break;
        }
    }
    let ctrl = Controller::connect(addr, &host(Digests::default()), SUBNQN)
        .await
        .unwrap();
    let q = ctrl.connect_io_queue(1, 32).await.unwrap();
    // iSCSI writes, NVMe reads.
    let a = pattern(100, 64 * 1024);
    let r = sess
        .command(
            0,
            &cdb_rw(0x2a, 1000, 128),
            DataDir::Write,
            65536,
            a.clone(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 0, "iSCSI WRITE(10)");
    assert_eq!(q.read(1, 1000, 128, BS).await.unwrap(), a);
    // NVMe writes, iSCSI reads.
    let b = pattern(200, 32 * 1024);
    q.write(1, 5000, b.clone(), BS, true).await.unwrap();
    let r = sess
        .command(
            0,
            &cdb_rw(0x28, 5000, 64),
            DataDir::Read,
            32768,
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 0, "iSCSI READ(10)");
    assert_eq!(r.data, b);
    // The NVMe namespace and the LU report the same capacity.
    let r = sess
        .command(
            0,
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            DataDir::Read,
            32,
            Bytes::new(),
        )
        .await
        .unwrap();
    let last = u64::from_be_bytes(r.data[..8].try_into().unwrap());
    assert_eq!(ctrl.identify_ns(1).await.unwrap().nsze, last + 1);
    let _ = sess.logout().await;
    ctrl.close().await;
    server.shutdown().await.unwrap();
}
