//! Persistent reservations over iSCSI with two sessions: the conflict is
//! enforced on the fast path (the engine counts a permission fault) and
//! answered by the control path.

use bytes::Bytes;
use vtgt::config::Config;
use vtgt::server::Server;
use vtgt_engine::FaultReason;
use vtgt_initiator::iscsi::{CommandResult, DataDir, LoginConfig, Session};

const TARGET: &str = "iqn.2026-11.org.vtgt:pr";

fn config() -> Config {
    let text = format!(
        r#"
[[iscsi.portals]]
listen = "127.0.0.1:0"
[[volume]]
name = "prvol"
backend = "memory"
size = "1MiB"
[[target]]
name = "{TARGET}"
[[target.lun]]
id = 0
volume = "prvol"
"#
    );
    Config::parse(&text, "pr-test.toml").expect("config")
}

fn prout(sa: u8, kind: u8, key: u64, sark: u64) -> ([u8; 10], Bytes) {
    let mut c = [0u8; 10];
    c[0] = 0x5F;
    c[1] = sa;
    c[2] = kind;
    c[8] = 24;
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    (c, Bytes::from(p))
}

async fn out(s: &Session, sa: u8, kind: u8, key: u64, sark: u64) -> CommandResult {
    let (c, p) = prout(sa, kind, key, sark);
    s.command(0, &c, DataDir::Write, 24, p)
        .await
        .expect("PR OUT")
}

async fn read(s: &Session) -> CommandResult {
    let c = [0x28, 0, 0, 0, 0, 4, 0, 0, 1, 0];
    s.command(0, &c, DataDir::Read, 512, Bytes::new())
        .await
        .expect("READ")
}

async fn write(s: &Session) -> CommandResult {
    let c = [0x2A, 0, 0, 0, 0, 4, 0, 0, 1, 0];
    s.command(0, &c, DataDir::Write, 512, Bytes::from(vec![0x5A; 512]))
        .await
        .expect("WRITE")
}

#[tokio::test]
async fn write_exclusive_conflict_on_the_fast_path() {
    let server = Server::start(config()).await.expect("server");
    let addr = server.iscsi_addrs[0];
    let a = Session::login(
        addr,
        LoginConfig::new("iqn.2026-11.test:host-a", Some(TARGET)),
    )
    .await
    .expect("login A");
    let b = Session::login(
        addr,
        LoginConfig::new("iqn.2026-11.test:host-b", Some(TARGET)),
    )
    .await
    .expect("login B");
    let vol = server.volume("prvol").await.unwrap().volume.clone();

    // Before any reservation B writes on the fast path.
    let hits = vol.counters.fast_path_hits();
    assert_eq!(write(&b).await.status, 0);
    assert_eq!(vol.counters.fast_path_hits(), hits + 1);

    // A registers and takes a Write Exclusive reservation.
    assert_eq!(out(&a, 0x00, 0, 0, 0xAAAA).await.status, 0);
    assert_eq!(out(&a, 0x01, 0x01, 0xAAAA, 0).await.status, 0);

    let faults = vol.counters.count(FaultReason::Permission);
    let r = write(&b).await;
    assert_eq!(r.status, 0x18, "RESERVATION CONFLICT for B's WRITE");
    assert!(r.sense.is_empty());
    assert_eq!(
        vol.counters.count(FaultReason::Permission),
        faults + 1,
        "the fast path refused B's write"
    );
    // Reads pass a Write Exclusive reservation, on the fast path.
    let hits = vol.counters.fast_path_hits();
    let r = read(&b).await;
    assert_eq!(r.status, 0);
    assert_eq!(r.data.len(), 512);
    assert_eq!(vol.counters.fast_path_hits(), hits + 1);
    // The holder still writes.
    assert_eq!(write(&a).await.status, 0);

    // B sees the reservation: READ RESERVATION names A's key and the type.
    let c = [0x5E, 0x01, 0, 0, 0, 0, 0, 0, 64, 0];
    let r = b
        .command(0, &c, DataDir::Read, 64, Bytes::new())
        .await
        .expect("PR IN");
    assert_eq!(r.status, 0);
    assert_eq!(&r.data[8..16], &0xAAAAu64.to_be_bytes());
    assert_eq!(r.data[21], 0x01);

    // Released: B writes again.
    assert_eq!(out(&a, 0x02, 0x01, 0xAAAA, 0).await.status, 0);
    assert_eq!(write(&b).await.status, 0);

    // PREEMPT AND ABORT from B removes A; A then gets the unit attention
    // and, as an unregistered nexus, conflicts under Exclusive Access.
    assert_eq!(out(&b, 0x00, 0, 0, 0xBBBB).await.status, 0);
    assert_eq!(out(&a, 0x01, 0x03, 0xAAAA, 0).await.status, 0);
    assert_eq!(out(&b, 0x05, 0x03, 0xBBBB, 0xAAAA).await.status, 0);
    let r = read(&a).await;
    assert_eq!(r.status, 0x02);
    assert_eq!(r.sense_key(), Some((0x6, 0x2A, 0x05)));
    assert_eq!(read(&a).await.status, 0x18);
    assert_eq!(read(&b).await.status, 0);

    a.logout().await.expect("logout A");
    b.logout().await.expect("logout B");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn spc2_reservation_ends_with_the_nexus() {
    let server = Server::start(config()).await.expect("server");
    let addr = server.iscsi_addrs[0];
    let a = Session::login(
        addr,
        LoginConfig::new("iqn.2026-11.test:host-a", Some(TARGET)),
    )
    .await
    .expect("login A");
    let b = Session::login(
        addr,
        LoginConfig::new("iqn.2026-11.test:host-b", Some(TARGET)),
    )
    .await
    .expect("login B");
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let r = a
        .command(0, &reserve6, DataDir::None, 0, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 0);
    assert_eq!(read(&b).await.status, 0x18);
    a.logout().await.expect("logout A");
    // The logout released it.
    let mut ok = false;
    for _ in 0..50 {
        if read(&b).await.status == 0 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "reservation released by the holder's logout");
    b.logout().await.expect("logout B");
    server.shutdown().await.expect("shutdown");
}
