//! Running the `vtgt` binary from integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vtgt_initiator::{DataDir, Session};

pub const BIN: &str = env!("CARGO_BIN_EXE_vtgt");

/// A running vtgt, killed (SIGKILL) and reaped when dropped.
pub struct Vtgt(pub Child);

impl Drop for Vtgt {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vtgt serve ARGS` and returns it with its bound iSCSI portal.
pub fn start(args: &[&str]) -> (Child, SocketAddr) {
    let (c, a, _) = start_both(args);
    (c, a)
}

/// Like [`start`], also returning the NVMe/TCP port.
pub fn start_both(args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    let (c, [iscsi, nvme, _]) = start_all(args);
    (c, iscsi, nvme)
}

/// Starts `vtgt serve ARGS` and returns it with its iSCSI portal, NVMe/TCP
/// port and metrics listener, as it logs them.
pub fn start_all(args: &[&str]) -> (Child, [SocketAddr; 3]) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--nvme-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vtgt");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let markers = [
            (0, "iSCSI portal up listen="),
            (1, "NVMe/TCP port up listen="),
            (2, "metrics up listen="),
        ];
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            for (kind, marker) in markers {
                if let Some(i) = line.find(marker) {
                    let rest = &line[i + marker.len()..];
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send((kind, addr));
                }
            }
        }
    });
    let mut got = [None, None, None];
    while got.iter().any(Option::is_none) {
        let (kind, addr) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("vtgt did not report its listeners");
        got[kind] = Some(addr.parse::<SocketAddr>().expect("listener address"));
    }
    let [Some(iscsi), Some(nvme), Some(metrics)] = got else {
        unreachable!("every listener was reported")
    };
    (child, [iscsi, nvme, metrics])
}

/// A READ(10)/WRITE(10) CDB.
pub fn cdb10(op: u8, flags: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// TEST UNIT READY on `lun` (the LUN field) until no unit attention is
/// pending, such as the power-on one after login.
pub async fn settle(s: &Session, lun: u64) {
    for _ in 0..4 {
        let r = s
            .command(lun, &[0; 6], DataDir::None, 0, Bytes::new())
            .await
            .expect("TEST UNIT READY");
        if r.status == 0 {
            break;
        }
    }
}

/// `vtgt admin ARGS` against `socket`: exit code, stdout, stderr.
pub fn admin(socket: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["admin", "--socket", socket])
        .args(args)
        .output()
        .expect("run vtgt admin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`admin`] retried until it succeeds; the admin socket comes up just
/// after the ports are logged. Panics after 10 s.
pub fn admin_when_up(socket: &str, args: &[&str]) -> String {
    let t = Instant::now();
    loop {
        let (code, out, err) = admin(socket, args);
        if code == 0 {
            return out;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{args:?}: {err}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// vtgt on its embedded default in `dir`, with an admin socket there and a
/// 4 MiB memory volume "extra" added through it. Returns the admin socket
/// path too.
pub fn start_with_extra_volume(dir: &std::path::Path) -> (Child, [SocketAddr; 3], String) {
    let data = dir.to_str().expect("UTF-8 path").to_string();
    let sock = dir
        .join("admin.sock")
        .to_str()
        .expect("UTF-8 path")
        .to_string();
    let (child, addrs) = start_all(&[
        "--data-dir",
        &data,
        "--iscsi-listen",
        "127.0.0.1:0",
        "--admin-socket",
        &sock,
    ]);
    let add = [
        "add-volume",
        "extra",
        "--size",
        "4MiB",
        "--backend",
        "memory",
    ];
    admin_when_up(&sock, &add);
    (child, addrs, sock)
}
