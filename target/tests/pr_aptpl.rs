//! APTPL across a crash: the real vtgt binary with a file volume is killed
//! with SIGKILL after REGISTER + RESERVE, restarted, and the registration
//! and reservation are still there; without APTPL they are gone.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::Vtgt;

use bytes::Bytes;
use vtgt_initiator::{CommandResult, DataDir, LoginConfig, Session};

const TARGET: &str = "iqn.2026-11.org.vtgt:aptpl";
const HOST: &str = "iqn.2026-11.test:aptpl-host";
const ISID: [u8; 6] = [0x40, 0, 0, 0, 0x12, 0x34];

/// Starts vtgt on `dir` and returns it with its portal address.
fn start(dir: &Path) -> (Vtgt, SocketAddr) {
    let cfg = dir.join("vtgt.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"data_dir = "{}"
[[iscsi.portals]]
listen = "127.0.0.1:0"
[[volume]]
name = "disk"
backend = "file"
path = "disk.img"
size = "4MiB"
[[target]]
name = "{TARGET}"
[[target.lun]]
id = 0
volume = "disk"
"#,
            dir.join("data").display()
        ),
    )
    .expect("write config");
    let (child, addr) = common::start(&["--config", cfg.to_str().expect("config path")]);
    (Vtgt(child), addr)
}

fn kill9(v: Vtgt) {
    let pid = v.0.id() as libc::pid_t;
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    drop(v);
}

async fn login(addr: SocketAddr) -> Session {
    let mut cfg = LoginConfig::new(HOST, Some(TARGET));
    // The same initiator port after the restart.
    cfg.isid = ISID;
    let s = Session::login(addr, cfg).await.expect("login");
    common::settle(&s, 0).await;
    s
}

async fn prout(s: &Session, sa: u8, kind: u8, key: u64, sark: u64, aptpl: bool) -> CommandResult {
    let c = [0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = aptpl as u8;
    s.command(0, &c, DataDir::Write, 24, Bytes::from(p))
        .await
        .expect("PR OUT")
}

async fn prin(s: &Session, sa: u8) -> Bytes {
    let c = [0x5E, sa, 0, 0, 0, 0, 0, 1, 0, 0];
    let r = s
        .command(0, &c, DataDir::Read, 256, Bytes::new())
        .await
        .expect("PR IN");
    assert_eq!(r.status, 0);
    r.data
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[tokio::test]
async fn aptpl_survives_kill_9_and_plain_state_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");

    // With APTPL.
    let (v, addr) = start(dir.path());
    let s = login(addr).await;
    assert_eq!(prout(&s, 0x00, 0, 0, 0x1234_5678, true).await.status, 0);
    assert_eq!(prout(&s, 0x01, 0x03, 0x1234_5678, 0, false).await.status, 0);
    kill9(v);
    drop(s);

    let (v, addr) = start(dir.path());
    let s = login(addr).await;
    let keys = prin(&s, 0x00).await;
    assert_eq!(be32(&keys, 4), 8, "one key after the crash");
    assert_eq!(&keys[8..16], &0x1234_5678u64.to_be_bytes());
    let res = prin(&s, 0x01).await;
    assert_eq!(be32(&res, 4), 16, "reserved after the crash");
    assert_eq!(&res[8..16], &0x1234_5678u64.to_be_bytes());
    assert_eq!(res[21], 0x03);
    let caps = prin(&s, 0x02).await;
    assert_eq!(caps[3] & 1, 1, "PTPL_A");
    // The holder is recognised by its initiator port: it may write.
    let w = s
        .command(
            0,
            &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            DataDir::Write,
            512,
            Bytes::from(vec![1u8; 512]),
        )
        .await
        .expect("WRITE");
    assert_eq!(w.status, 0);
    // Another initiator is locked out by the restored Exclusive Access.
    let mut other = LoginConfig::new("iqn.2026-11.test:other", Some(TARGET));
    other.isid = [0x40, 0, 0, 0, 0, 9];
    let o = Session::login(addr, other).await.expect("login other");
    let r = o
        .command(
            0,
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            DataDir::Read,
            512,
            Bytes::new(),
        )
        .await
        .expect("READ");
    assert_eq!(r.status, 0x18);
    drop(o);

    // Re-register without APTPL: after the next crash nothing is left.
    assert_eq!(prout(&s, 0x00, 0, 0x1234_5678, 0x42, false).await.status, 0);
    kill9(v);
    drop(s);

    let (v, addr) = start(dir.path());
    let s = login(addr).await;
    let keys = prin(&s, 0x00).await;
    assert_eq!(be32(&keys, 4), 0, "no keys without APTPL");
    let res = prin(&s, 0x01).await;
    assert_eq!(be32(&res, 4), 0, "no reservation without APTPL");
    drop(s);
    drop(v);
}
