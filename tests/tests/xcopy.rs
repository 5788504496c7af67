//! EXTENDED COPY between two LUs of one vtgt: the initiator names each LU
//! by the NAA designator it reads from VPD 83h, and the copy manager finds
//! the volumes through the process-wide registry.

use std::time::Duration;

use bytes::Bytes;
use vtgt::config::{BackendKind, Config, LunConfig, VolumeConfig};
use vtgt::server::Server;
use vtgt_initiator::{DataDir, LoginConfig, Session};

const TARGET: &str = "iqn.2026-11.org.vtgt:xcopy";

fn lun(l: u64) -> u64 {
    l << 48
}

async fn naa(s: &Session, l: u64) -> [u8; 16] {
    let r = s
        .command(
            lun(l),
            &[0x12, 1, 0x83, 0, 255, 0],
            DataDir::Read,
            255,
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 0);
    let d = &r.data;
    let mut at = 4;
    while at + 4 <= d.len() {
        let len = d[at + 3] as usize;
        if d[at + 1] & 0x3F == 0x03 && len == 16 {
            return d[at + 4..at + 20].try_into().unwrap();
        }
        at += 4 + len;
    }
    panic!("no NAA designator");
}

#[tokio::test]
async fn extended_copy_between_luns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::embedded_default();
    // iSCSI only: tests run in parallel and 4420 is a fixed port.
    cfg.nvme.listen.clear();
    cfg.subsystems.clear();
    cfg.data_dir = dir.path().to_path_buf();
    cfg.iscsi.portals[0].listen = "127.0.0.1:0".parse().unwrap();
    cfg.volumes = ["src", "dst"]
        .iter()
        .map(|n| VolumeConfig {
            name: n.to_string(),
            backend: BackendKind::File,
            path: Some(format!("{n}.img").into()),
            size: Some("8MiB".into()),
            block_size: 512,
            layout: None,
            journal: None,
        })
        .collect();
    cfg.targets[0].name = TARGET.into();
    cfg.targets[0].luns = vec![
        LunConfig {
            id: 0,
            volume: "src".into(),
            write_protect: false,
            removable: false,
            sanitize_rate_mib: 0,
        },
        LunConfig {
            id: 1,
            volume: "dst".into(),
            write_protect: false,
            removable: false,
            sanitize_rate_mib: 0,
        },
    ];
    let server = Server::start(cfg).await.unwrap();
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        Session::login(
            server.iscsi_addrs[0],
            LoginConfig::new("iqn.2026-11.test:xcopy", Some(TARGET)),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    for l in 0..2 {
        let _ = s
            .command(lun(l), &[0u8; 6], DataDir::None, 0, Bytes::new())
            .await
            .unwrap();
    }
    let pattern: Vec<u8> = (0..64 * 512).map(|i| (i / 512 + 1) as u8).collect();
    let mut w = [0u8; 16];
    w[0] = 0x8A;
    w[9] = 10;
    w[13] = 64;
    let r = s
        .command(
            lun(0),
            &w,
            DataDir::Write,
            pattern.len() as u32,
            Bytes::from(pattern.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 0);

    let (src, dst) = (naa(&s, 0).await, naa(&s, 1).await);
    assert_ne!(src, dst);
    let mut p = vec![0u8; 16];
    p[0] = 1;
    p[3] = 64;
    p[11] = 28;
    for id in [src, dst] {
        let mut d = [0u8; 32];
        d[0] = 0xE4;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = 16;
        d[8..24].copy_from_slice(&id);
        d[30] = 0x02;
        p.extend_from_slice(&d);
    }
    let mut seg = [0u8; 28];
    seg[0] = 0x02;
    seg[3] = 0x18;
    seg[7] = 1;
    seg[11] = 64;
    seg[19] = 10;
    seg[27] = 200;
    p.extend_from_slice(&seg);
    let mut x = [0u8; 16];
    x[0] = 0x83;
    x[13] = p.len() as u8;
    // Sent to the destination LU; the source is found by its NAA.
    let r = s
        .command(lun(1), &x, DataDir::Write, p.len() as u32, Bytes::from(p))
        .await
        .unwrap();
    assert_eq!(r.status, 0, "{:?}", r.sense_key());
    let mut rd = [0u8; 16];
    rd[0] = 0x88;
    rd[9] = 200;
    rd[13] = 64;
    let r = s
        .command(lun(1), &rd, DataDir::Read, 64 * 512, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 0);
    assert_eq!(&r.data[..], &pattern[..]);
    let _ = s.logout().await;
    server.shutdown().await.unwrap();
}
