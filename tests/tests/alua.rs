//! ALUA over iSCSI: one LU through two portals in two target port groups,
//! the second configured standby. Each path reports its own port in VPD
//! 83h; REPORT TARGET PORT GROUPS shows both groups; the standby path gets
//! NOT READY for media access until SET TARGET PORT GROUPS (sent through
//! the active path) makes it active, which it learns from a unit attention.

use std::time::Duration;

use bytes::Bytes;
use vtgt::config::{Config, PortGroupConfig, PortalConfig};
use vtgt::server::Server;
use vtgt_initiator::{CommandResult, DataDir, LoginConfig, Session};

const TARGET: &str = "iqn.2026-11.org.vtgt:alua";

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::embedded_default();
    // iSCSI only: tests run in parallel and 4420 is a fixed port.
    cfg.nvme.listen.clear();
    cfg.subsystems.clear();
    cfg.data_dir = dir.to_path_buf();
    cfg.iscsi.portals = (1..=2)
        .map(|g| PortalConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            portal_group: g,
        })
        .collect();
    cfg.volumes[0].size = Some("16MiB".into());
    cfg.targets[0].name = TARGET.into();
    cfg.targets[0].port_groups = vec![
        PortGroupConfig {
            id: 1,
            state: "active-optimized".into(),
        },
        PortGroupConfig {
            id: 2,
            state: "standby".into(),
        },
    ];
    cfg
}

async fn login(addr: std::net::SocketAddr, name: &str) -> Session {
    tokio::time::timeout(
        Duration::from_secs(10),
        Session::login(addr, LoginConfig::new(name, Some(TARGET))),
    )
    .await
    .expect("login in time")
    .expect("login")
}

async fn cmd(s: &Session, cdb: &[u8], dir: DataDir, len: u32, data: Bytes) -> CommandResult {
    s.command(0, cdb, dir, len, data).await.unwrap()
}

async fn read1(s: &Session) -> CommandResult {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[8] = 1;
    cmd(s, &c, DataDir::Read, 512, Bytes::new()).await
}

/// The relative target port and target port group designators of VPD 83h.
async fn port_designators(s: &Session) -> (u16, u16) {
    let r = cmd(
        s,
        &[0x12, 1, 0x83, 0, 255, 0],
        DataDir::Read,
        255,
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 0);
    let d = &r.data;
    let (mut rel, mut tpg) = (0, 0);
    let mut at = 4;
    while at + 4 <= d.len() {
        let len = d[at + 3] as usize;
        let v = u16::from_be_bytes([d[at + 6], d[at + 7]]);
        match d[at + 1] & 0x0F {
            4 => rel = v,
            5 => tpg = v,
            _ => {}
        }
        at += 4 + len;
    }
    (rel, tpg)
}

#[tokio::test]
async fn standby_group_faults_until_set_active() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await.unwrap();
    let a = login(server.iscsi_addrs[0], "iqn.2026-11.test:path-a").await;
    let b = login(server.iscsi_addrs[1], "iqn.2026-11.test:path-b").await;
    // Clear the power-on unit attention on the active path.
    for _ in 0..3 {
        if read1(&a).await.status == 0 {
            break;
        }
    }
    assert_eq!(read1(&a).await.status, 0);
    assert_eq!(port_designators(&a).await, (1, 1));
    assert_eq!(port_designators(&b).await, (2, 2));

    // Standby: media access is NOT READY, TARGET PORT IN STANDBY STATE.
    let r = read1(&b).await;
    assert_eq!(r.status, 2);
    assert_eq!(r.sense_key(), Some((0x02, 0x04, 0x0B)));

    // Both groups, with their states and ports.
    let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let r = cmd(&b, &rtpg, DataDir::Read, 256, Bytes::new()).await;
    assert_eq!(r.status, 0);
    let d = &r.data;
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 24);
    assert_eq!((d[4] & 0x0F, d[7], d[11], d[15]), (0, 1, 1, 1));
    assert_eq!((d[16] & 0x0F, d[19], d[23], d[27]), (2, 2, 1, 2));

    // Make group 2 active/non-optimized through path A.
    let stpg = [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    let r = cmd(
        &a,
        &stpg,
        DataDir::Write,
        8,
        Bytes::from_static(&[0, 0, 0, 0, 0x01, 0, 0, 2]),
    )
    .await;
    assert_eq!(r.status, 0);
    // Path B hears about it once, then reads work.
    let r = read1(&b).await;
    assert_eq!(r.sense_key(), Some((0x06, 0x2A, 0x06)));
    assert_eq!(read1(&b).await.status, 0);
    // Path A, the issuer, got no unit attention.
    assert_eq!(read1(&a).await.status, 0);

    let _ = a.logout().await;
    let _ = b.logout().await;
    server.shutdown().await.unwrap();
}
