//! Live NVMe changes seen by a connected controller: namespaces added and
//! removed through the admin interface, a volume grown, and subsystems
//! added and removed with `Server::apply`. Each raises the namespace
//! attribute changed event and names the NSIDs in log page 04h; I/O to
//! other namespaces keeps working throughout.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use vtgt::admin::{self, AdminContext, Request};
use vtgt::config::{Config, NamespaceConfig, NvmeConfig, NvmePortalConfig, SubsystemConfig};
use vtgt::server::Server;
use vtgt_initiator::nvme::{discover, Controller, HostConfig, NvmeError, Queue};
use vtgt_protocol::nvme::command::{feat, sc, sct};
use vtgt_protocol::nvme::identify::parse_ns_list;
use vtgt_protocol::nvme::log::lid;

const SUB: &str = "nqn.2026-11.org.vtgt:live";
const SUB2: &str = "nqn.2026-11.org.vtgt:live2";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0c0ffee0-0000-4000-8000-00000000000a";
const BS: u32 = 512;
const MIB: u64 = 1 << 20;
const STEP: Duration = Duration::from_secs(10);
/// AEC bit for namespace attribute notices.
const AEC_NS_ATTR: u32 = 1 << 8;

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn subsystem(nqn: &str, namespaces: &[(u32, &str)]) -> SubsystemConfig {
    SubsystemConfig {
        nqn: nqn.into(),
        allow_any_host: true,
        allowed_hosts: vec![],
        namespaces: namespaces
            .iter()
            .map(|(nsid, v)| NamespaceConfig {
                nsid: *nsid,
                volume: (*v).into(),
            })
            .collect(),
    }
}

/// Volume "a" (16 MiB) as namespace 1 of SUB; "b" (8 MiB) and
/// "c" (4 MiB) not exported.
fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        iscsi: common::loopback_iscsi(),
        volumes: vec![
            common::volume("a", 16 * MIB),
            common::volume("b", 8 * MIB),
            common::volume("c", 4 * MIB),
        ],
        targets: vec![],
        nvme: NvmeConfig {
            listen: vec![NvmePortalConfig::Addr("127.0.0.1:0".parse().unwrap())],
        },
        subsystems: vec![subsystem(SUB, &[(1, "a")])],
    }
}

/// A server on `cfg`, saved to and loaded from `dir/vtgt.toml` so that
/// `save` has somewhere to write.
async fn setup(dir: &std::path::Path, cfg: Config) -> (Arc<AdminContext>, SocketAddr) {
    let path = dir.join("vtgt.toml");
    admin::save_config(&cfg, &path).unwrap();
    let server = within("server start", Server::start(Config::load(&path).unwrap()))
        .await
        .expect("server starts");
    let addr = server.nvme_addrs[0];
    assert!(addr.ip().is_loopback());
    (
        Arc::new(AdminContext {
            server: Arc::new(server),
            config_path: Some(path),
        }),
        addr,
    )
}

fn host() -> HostConfig {
    let mut h = HostConfig::new(HOST);
    h.hostid = [0x5a; 16];
    h
}

/// Connects, enables namespace attribute notices, opens I/O queue 1.
async fn connect(addr: SocketAddr, subnqn: &str) -> (Controller, Queue) {
    let ctrl = within("connect", Controller::connect(addr, &host(), subnqn))
        .await
        .expect("connect and enable");
    ctrl.set_features(feat::ASYNC_EVENT, AEC_NS_ATTR)
        .await
        .unwrap();
    ctrl.set_num_queues(2).await.unwrap();
    let q = within("I/O queue", ctrl.connect_io_queue(1, 32))
        .await
        .unwrap();
    (ctrl, q)
}

fn status_of(e: NvmeError) -> (u8, u8) {
    match e {
        NvmeError::Status(s) => (s.sct, s.sc),
        other => panic!("expected a status, got {other}"),
    }
}

fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Waits for an AER to complete with the namespace attribute changed
/// notice, then reads (and clears) the Changed Namespace List.
async fn ns_changed_event(ctrl: &Controller, aer: JoinHandle<Result<u32, NvmeError>>) -> Vec<u32> {
    let dw0 = within("AER completion", aer).await.unwrap().unwrap();
    assert_eq!(dw0 & 7, 2, "notice event type");
    assert_eq!((dw0 >> 8) & 0xff, 0, "namespace attribute changed");
    assert_eq!((dw0 >> 16) & 0xff, lid::CHANGED_NS as u32, "log page 04h");
    let log = ctrl
        .get_log_page(lid::CHANGED_NS, 0xffff_ffff, 4096, 0, false)
        .await
        .unwrap();
    parse_ns_list(&log)
}

/// Writes and reads back namespace `nsid` on `q` until `stop`, counting
/// round trips; any failure is recorded.
fn io_loop(q: Queue, nsid: u32, stop: Arc<AtomicBool>) -> JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut errors = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let lba = (n % 64) * 8;
            let d = pattern(1000 + n, 4096);
            if let Err(e) = q.write(nsid, lba, d.clone(), BS, false).await {
                errors.push(format!("write {n}: {e}"));
                break;
            }
            match q.read(nsid, lba, 8, BS).await {
                Ok(got) if got == d => {}
                Ok(_) => errors.push(format!("read {n}: data differs")),
                Err(e) => errors.push(format!("read {n}: {e}")),
            }
            n += 1;
        }
        (n, errors)
    })
}

#[tokio::test]
async fn namespace_add_and_remove_through_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, addr) = setup(dir.path(), config(dir.path())).await;
    let (ctrl, q) = connect(addr, SUB).await;
    assert_eq!(ctrl.identify.nn, 1024, "NN allows NSIDs added later");
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1]);
    // Namespace 1 is busy on its own queue for the whole test.
    let q2 = within("I/O queue 2", ctrl.connect_io_queue(2, 32))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let busy = io_loop(q2, 1, stop.clone());

    // Add: the event, the log, the list, the size, and I/O.
    let aer = ctrl.aer();
    let sum = admin::handle(
        &ctx,
        Request::AddNamespace {
            subsystem: SUB.into(),
            nsid: 2,
            volume: "b".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        sum["namespaces_added"],
        serde_json::json!([format!("{SUB}/2")])
    );
    assert_eq!(ns_changed_event(&ctrl, aer).await, vec![2]);
    // Reading the log cleared it.
    let log = ctrl
        .get_log_page(lid::CHANGED_NS, 0xffff_ffff, 4096, 0, false)
        .await
        .unwrap();
    assert!(parse_ns_list(&log).is_empty());
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2]);
    assert_eq!(ctrl.identify_ns(2).await.unwrap().nsze, 8 * MIB / BS as u64);
    let d = pattern(2, 8192);
    q.write(2, 100, d.clone(), BS, false).await.unwrap();
    assert_eq!(q.read(2, 100, 16, BS).await.unwrap(), d);
    // The data is on volume "b".
    let b = ctx.server.volume("b").await.unwrap();
    assert_eq!(b.volume.read(100, 16).await.unwrap(), d);

    // Save writes the running config, namespace 2 included.
    admin::handle(&ctx, Request::Save).await.unwrap();
    let saved = Config::load(&dir.path().join("vtgt.toml")).unwrap();
    assert_eq!(saved, ctx.server.config().await);
    assert_eq!(
        saved.subsystems[0].namespaces,
        vec![
            NamespaceConfig {
                nsid: 1,
                volume: "a".into()
            },
            NamespaceConfig {
                nsid: 2,
                volume: "b".into()
            },
        ]
    );

    // Invalid requests fail clearly, change nothing and raise nothing.
    let aer = ctrl.aer();
    let before = ctx.server.config().await;
    let bad = [
        (
            Request::AddNamespace {
                subsystem: SUB.into(),
                nsid: 1,
                volume: "c".into(),
            },
            "already has namespace 1",
        ),
        (
            Request::AddNamespace {
                subsystem: SUB.into(),
                nsid: 0,
                volume: "c".into(),
            },
            "out of range",
        ),
        (
            Request::AddNamespace {
                subsystem: SUB.into(),
                nsid: u32::MAX,
                volume: "c".into(),
            },
            "out of range",
        ),
        (
            Request::AddNamespace {
                subsystem: SUB.into(),
                nsid: 3,
                volume: "missing".into(),
            },
            "unknown volume",
        ),
        (
            Request::AddNamespace {
                subsystem: "nqn.2026-11.org.vtgt:nope".into(),
                nsid: 3,
                volume: "c".into(),
            },
            "no subsystem",
        ),
        (
            Request::RemoveNamespace {
                subsystem: SUB.into(),
                nsid: 9,
            },
            "has no namespace 9",
        ),
        (
            Request::RemoveVolume { name: "b".into() },
            "remove its namespaces first",
        ),
    ];
    for (req, want) in bad {
        let err = admin::handle(&ctx, req.clone()).await.unwrap_err();
        assert!(format!("{err:#}").contains(want), "{req:?}: {err:#}");
        assert_eq!(
            ctx.server.config().await,
            before,
            "{req:?} changed the config"
        );
    }
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2]);
    // Longer than the controller's notice polling: still no event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!aer.is_finished(), "an invalid request raised an event");

    // Remove: the event (on the AER already waiting), the log, the list,
    // and I/O to it fails with Invalid Namespace or Format.
    let sum = admin::handle(
        &ctx,
        Request::RemoveNamespace {
            subsystem: SUB.into(),
            nsid: 2,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        sum["namespaces_removed"],
        serde_json::json!([format!("{SUB}/2")])
    );
    assert_eq!(ns_changed_event(&ctrl, aer).await, vec![2]);
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1]);
    assert_eq!(
        status_of(q.read(2, 100, 16, BS).await.unwrap_err()),
        (sct::GENERIC, sc::INVALID_NS)
    );
    assert_eq!(
        status_of(q.write(2, 0, pattern(3, 512), BS, false).await.unwrap_err()),
        (sct::GENERIC, sc::INVALID_NS)
    );
    assert_eq!(
        status_of(q.flush(2).await.unwrap_err()),
        (sct::GENERIC, sc::INVALID_NS)
    );
    // An inactive NSID identifies as zeros.
    assert_eq!(ctrl.identify_ns(2).await.unwrap().nsze, 0);
    // Now unexported, the volume may go.
    admin::handle(&ctx, Request::RemoveVolume { name: "b".into() })
        .await
        .unwrap();

    // Namespace 1 worked throughout, on both queues.
    stop.store(true, Ordering::Relaxed);
    let (n, errors) = within("I/O loop", busy).await.unwrap();
    assert!(errors.is_empty(), "I/O to namespace 1 failed: {errors:?}");
    assert!(n > 0, "the I/O loop ran");
    let d = pattern(4, 4096);
    q.write(1, 2000, d.clone(), BS, false).await.unwrap();
    assert_eq!(q.read(1, 2000, 8, BS).await.unwrap(), d);
    assert_eq!(
        ctx.server.nvme.controllers.all().len(),
        1,
        "same controller"
    );
    ctrl.close().await;
    ctx.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn resize_of_an_exported_volume_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // One volume under two NSIDs: a resize changes both.
    cfg.subsystems[0] = subsystem(SUB, &[(1, "a"), (3, "b"), (5, "a")]);
    let (ctx, addr) = setup(dir.path(), cfg).await;
    let (ctrl, q) = connect(addr, SUB).await;
    assert_eq!(
        ctrl.identify_ns(1).await.unwrap().nsze,
        16 * MIB / BS as u64
    );
    let aer = ctrl.aer();
    let sum = admin::handle(
        &ctx,
        Request::Resize {
            volume: "a".into(),
            size: "48MiB".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(sum["volumes_grown"], serde_json::json!(["a"]));
    assert_eq!(ns_changed_event(&ctrl, aer).await, vec![1, 5]);
    let blocks = 48 * MIB / BS as u64;
    for nsid in [1, 5] {
        let id = ctrl.identify_ns(nsid).await.unwrap();
        assert_eq!((id.nsze, id.ncap), (blocks, blocks), "NSID {nsid}");
    }
    assert_eq!(ctrl.identify_ns(3).await.unwrap().nsze, 8 * MIB / BS as u64);
    // The new end is writable.
    let d = pattern(5, 4096);
    q.write(1, blocks - 8, d.clone(), BS, false).await.unwrap();
    assert_eq!(q.read(5, blocks - 8, 8, BS).await.unwrap(), d);
    ctrl.close().await;
    ctx.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn namespace_cannot_move_to_another_volume_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (ctx, addr) = setup(dir.path(), cfg.clone()).await;
    let (ctrl, q) = connect(addr, SUB).await;
    q.write(1, 0, pattern(6, 512), BS, false).await.unwrap();
    let mut next = cfg.clone();
    next.subsystems[0].namespaces[0].volume = "c".into();
    let err = ctx.server.apply(next.clone()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("remove it, then add it"),
        "{err:#}"
    );
    // Nothing changed: I/O still reaches volume "a".
    let d = pattern(7, 512);
    q.write(1, 0, d.clone(), BS, false).await.unwrap();
    let a = ctx.server.volume("a").await.unwrap();
    assert_eq!(a.volume.read(0, 1).await.unwrap(), d);
    // Remove, then add over "c": announced both times.
    let aer = ctrl.aer();
    let mut removed = cfg;
    removed.subsystems[0].namespaces.remove(0);
    ctx.server.apply(removed).await.unwrap();
    assert_eq!(ns_changed_event(&ctrl, aer).await, vec![1]);
    let aer = ctrl.aer();
    let sum = ctx.server.apply(next).await.unwrap();
    assert_eq!(sum.namespaces_added, vec![format!("{SUB}/1")]);
    assert_eq!(ns_changed_event(&ctrl, aer).await, vec![1]);
    assert_eq!(ctrl.identify_ns(1).await.unwrap().nsze, 4 * MIB / BS as u64);
    let d = pattern(8, 512);
    q.write(1, 0, d.clone(), BS, false).await.unwrap();
    let c = ctx.server.volume("c").await.unwrap();
    assert_eq!(c.volume.read(0, 1).await.unwrap(), d);
    ctrl.close().await;
    ctx.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn subsystems_added_and_removed_live() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (ctx, addr) = setup(dir.path(), cfg.clone()).await;
    let (ctrl, q) = connect(addr, SUB).await;
    let listed = |e: &[vtgt_protocol::nvme::log::DiscoveryEntry]| -> Vec<String> {
        e.iter().map(|d| d.subnqn.clone()).collect()
    };
    assert_eq!(listed(&discover(addr, &host()).await.unwrap()), vec![SUB]);

    let mut next = cfg.clone();
    next.subsystems.push(subsystem(SUB2, &[(7, "c")]));
    let sum = ctx.server.apply(next).await.unwrap();
    assert_eq!(sum.subsystems_added, vec![SUB2.to_string()]);
    assert_eq!(
        listed(&discover(addr, &host()).await.unwrap()),
        vec![SUB, SUB2]
    );
    let (ctrl2, q2) = connect(addr, SUB2).await;
    assert_eq!(ctrl2.active_namespaces().await.unwrap(), vec![7]);
    let d = pattern(8, 4096);
    q2.write(7, 0, d.clone(), BS, false).await.unwrap();
    assert_eq!(q2.read(7, 0, 8, BS).await.unwrap(), d);

    // Removing it ends its controller only.
    let sum = ctx.server.apply(cfg).await.unwrap();
    assert_eq!(sum.subsystems_removed, vec![SUB2.to_string()]);
    assert!(sum.namespaces_removed.is_empty());
    let gone = within("controller of the removed subsystem ends", async {
        loop {
            if let Err(e) = q2.read(7, 0, 1, BS).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        matches!(gone, NvmeError::Closed | NvmeError::Status(_)),
        "{gone}"
    );
    assert_eq!(listed(&discover(addr, &host()).await.unwrap()), vec![SUB]);
    assert!(Controller::connect(addr, &host(), SUB2).await.is_err());
    // The other subsystem's controller never noticed.
    let d = pattern(9, 4096);
    q.write(1, 8, d.clone(), BS, false).await.unwrap();
    assert_eq!(q.read(1, 8, 8, BS).await.unwrap(), d);
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1]);
    ctrl.close().await;
    ctx.server.shutdown().await.unwrap();
}
