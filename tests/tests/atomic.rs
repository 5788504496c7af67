//! COMPARE AND WRITE is atomic against plain writes from another session on
//! another portal: in many rounds one session compares old→new while the
//! other overwrites the same blocks. Each round ends either with a clean
//! CAW success or a MISCOMPARE at byte 0 (the compare saw a whole write),
//! and, as in any serial order of the two, the rival's data is what
//! remains: never CAW's data written over it, never a mix.

use std::time::Duration;

use bytes::Bytes;
use vtgt::config::{Config, PortalConfig};
use vtgt::server::Server;
use vtgt_initiator::{CommandResult, DataDir, LoginConfig, Session};
use vtgt_protocol::scsi::sense::Sense;

const TARGET: &str = "iqn.2026-11.org.vtgt:atomic";
const LBA: u64 = 64;
const BLOCKS: usize = 8;
const BS: usize = 512;

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::embedded_default();
    // iSCSI only: tests run in parallel and 4420 is a fixed port.
    cfg.nvme.listen.clear();
    cfg.subsystems.clear();
    cfg.data_dir = dir.to_path_buf();
    cfg.iscsi.portals = vec![
        PortalConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            portal_group: 1,
        },
        PortalConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            portal_group: 1,
        },
    ];
    cfg.volumes[0].size = Some("16MiB".into());
    cfg.targets[0].name = TARGET.into();
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

/// Clears the power-on unit attention.
async fn settle(s: &Session) {
    for _ in 0..4 {
        let r = s
            .command(0, &[0u8; 6], DataDir::None, 0, Bytes::new())
            .await
            .unwrap();
        if r.status == 0 {
            return;
        }
    }
    panic!("TEST UNIT READY never succeeded");
}

fn cdb16(op: u8, lba: u64, n: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

async fn write(s: &Session, fill: u8) -> CommandResult {
    let data = Bytes::from(vec![fill; BLOCKS * BS]);
    s.command(
        0,
        &cdb16(0x8A, LBA, BLOCKS as u32),
        DataDir::Write,
        (BLOCKS * BS) as u32,
        data,
    )
    .await
    .unwrap()
}

async fn read(s: &Session) -> Bytes {
    let r = s
        .command(
            0,
            &cdb16(0x88, LBA, BLOCKS as u32),
            DataDir::Read,
            (BLOCKS * BS) as u32,
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 0);
    r.data
}

async fn compare_and_write(s: &Session, old: u8, new: u8) -> CommandResult {
    let mut c = cdb16(0x89, LBA, 0);
    c[10..14].fill(0);
    c[13] = BLOCKS as u8;
    let mut data = vec![old; BLOCKS * BS];
    data.extend(vec![new; BLOCKS * BS]);
    s.command(
        0,
        &c,
        DataDir::Write,
        (2 * BLOCKS * BS) as u32,
        Bytes::from(data),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_write_is_atomic_across_sessions_and_portals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await.unwrap();
    let a = login(server.iscsi_addrs[0], "iqn.2026-11.test:caw-a").await;
    let b = login(server.iscsi_addrs[1], "iqn.2026-11.test:caw-b").await;
    settle(&a).await;
    settle(&b).await;

    let (mut won, mut lost) = (0, 0);
    for round in 0..200u32 {
        // Three distinct fills per round: old, CAW's new, the rival's.
        let old = (round % 80) as u8 * 3 + 1;
        let (new, rival) = (old + 1, old + 2);
        assert_eq!(write(&a, old).await.status, 0);
        let (caw, w) = tokio::join!(compare_and_write(&a, old, new), write(&b, rival));
        assert_eq!(w.status, 0, "round {round}: rival write failed");
        let after = read(&a).await;
        let uniform = |v: u8| after.iter().all(|&x| x == v);
        match caw.status {
            0 => {
                won += 1;
                // Serially, the rival either ran first (then CAW would have
                // miscompared) or after the CAW: its data must be what is
                // left. Anything else means it slipped between the compare
                // and the write, or tore the blocks.
                assert!(
                    uniform(rival),
                    "round {round}: CAW success but blocks are not the later write's ({} of {new:#x})",
                    after.iter().filter(|&&x| x == new).count()
                );
            }
            2 => {
                lost += 1;
                let s = Sense::parse(&caw.sense).expect("sense");
                assert_eq!((s.key, s.asc.0, s.asc.1), (0x0E, 0x1D, 0x00));
                // The compare saw the rival's whole write: first byte
                // already differs.
                assert_eq!(s.information, Some(0), "round {round}: torn compare");
                assert!(
                    uniform(rival),
                    "round {round}: CAW wrote despite MISCOMPARE"
                );
            }
            st => panic!("round {round}: unexpected status {st:#x}"),
        }
    }
    assert_eq!(won + lost, 200);
    eprintln!("CAW won {won} rounds, miscompared {lost}");

    // Sanity: with no rival, CAW succeeds and a stale compare miscompares.
    assert_eq!(write(&a, 7).await.status, 0);
    assert_eq!(compare_and_write(&a, 7, 8).await.status, 0);
    assert!(read(&b).await.iter().all(|&x| x == 8));
    assert_eq!(compare_and_write(&b, 7, 9).await.status, 2);
    let _ = a.logout().await;
    let _ = b.logout().await;
    server.shutdown().await.unwrap();
}
