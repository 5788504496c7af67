//! Live changes seen by a connected initiator: a LUN added and a volume
//! grown while a session is logged in raise the right unit attention, and
//! the new LUN and capacity are visible afterwards without a new login.

use std::time::Duration;

use bytes::Bytes;
use vtgt::config::{BackendKind, Config, LunConfig, VolumeConfig};
use vtgt::server::Server;
use vtgt_initiator::{DataDir, LoginConfig, Session};

const TARGET: &str = "iqn.2026-11.org.vtgt:live";

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::embedded_default();
    // iSCSI only: tests run in parallel and 4420 is a fixed port.
    cfg.nvme.listen.clear();
    cfg.subsystems.clear();
    cfg.data_dir = dir.to_path_buf();
    cfg.iscsi.portals[0].listen = "127.0.0.1:0".parse().unwrap();
    cfg.volumes[0].size = Some("16MiB".into());
    cfg.targets[0].name = TARGET.into();
    cfg
}

/// The LUN field for a LUN below 256 (SAM-5 peripheral addressing).
fn lun_field(lun: u64) -> u64 {
    lun << 48
}

async fn tur(s: &Session, lun: u64) -> vtgt_initiator::CommandResult {
    s.command(lun_field(lun), &[0u8; 6], DataDir::None, 0, Bytes::new())
        .await
        .unwrap()
}

async fn capacity(s: &Session, lun: u64) -> u64 {
    let r = s
        .command(
            lun_field(lun),
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            DataDir::Read,
            32,
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 0, "READ CAPACITY 16: {:?}", r.sense_key());
    u64::from_be_bytes(r.data[..8].try_into().unwrap()) + 1
}

async fn report_luns(s: &Session) -> Vec<u64> {
    let r = s
        .command(
            0,
            &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            DataDir::Read,
            256,
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 0);
    let n = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize / 8;
    (0..n)
        .map(|i| u64::from_be_bytes(r.data[8 + i * 8..16 + i * 8].try_into().unwrap()) >> 48)
        .collect()
}

#[tokio::test]
async fn lun_add_and_resize_raise_unit_attentions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let server = Server::start(cfg.clone()).await.unwrap();
    let addr = server.iscsi_addrs[0];
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        Session::login(
            addr,
            LoginConfig::new("iqn.2026-11.test:live", Some(TARGET)),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(tur(&s, 0).await.status, 0);
    assert_eq!(capacity(&s, 0).await, 16 << 11);
    assert_eq!(report_luns(&s).await, vec![0]);

    // Add a volume and export it as LUN 1.
    let mut next = cfg.clone();
    next.volumes.push(VolumeConfig {
        name: "second".into(),
        backend: BackendKind::Memory,
        path: None,
        size: Some("8MiB".into()),
        block_size: 512,
        layout: None,
        journal: None,
    });
    next.targets[0].luns.push(LunConfig {
        id: 1,
        volume: "second".into(),
        write_protect: false,
        removable: false,
        sanitize_rate_mib: 0,
    });
    let sum = server.apply(next.clone()).await.unwrap();
    assert_eq!(sum.luns_added, vec![format!("{TARGET}/1")]);
    let r = tur(&s, 0).await;
    assert_eq!(r.status, 2);
    assert_eq!(
        r.sense_key(),
        Some((6, 0x3f, 0x0e)),
        "REPORTED LUNS DATA HAS CHANGED"
    );
    assert_eq!(
        tur(&s, 0).await.status,
        0,
        "the unit attention is reported once"
    );
    assert_eq!(report_luns(&s).await, vec![0, 1]);
    assert_eq!(capacity(&s, 1).await, 8 << 11);

    // Grow the first volume.
    next.volumes[0].size = Some("32MiB".into());
    let sum = server.apply(next.clone()).await.unwrap();
    assert_eq!(sum.volumes_grown, vec!["default".to_string()]);
    let r = tur(&s, 0).await;
    assert_eq!(
        r.sense_key(),
        Some((6, 0x2a, 0x09)),
        "CAPACITY DATA HAS CHANGED"
    );
    assert_eq!(capacity(&s, 0).await, 32 << 11);

    // Shrinking is refused and changes nothing.
    next.volumes[0].size = Some("8MiB".into());
    assert!(server.apply(next.clone()).await.is_err());
    assert_eq!(capacity(&s, 0).await, 32 << 11);

    // Removing LUN 1 is seen too; the session stays up.
    next.volumes[0].size = Some("32MiB".into());
    next.targets[0].luns.retain(|l| l.id != 1);
    server.apply(next).await.unwrap();
    let r = tur(&s, 0).await;
    assert_eq!(r.sense_key(), Some((6, 0x3f, 0x0e)));
    assert_eq!(report_luns(&s).await, vec![0]);
    let r = tur(&s, 1).await;
    assert_eq!(
        r.sense_key().map(|k| (k.0, k.1)),
        Some((5, 0x25)),
        "LUN 1 is gone"
    );
    s.logout().await.unwrap();
    server.shutdown().await.unwrap();
}
