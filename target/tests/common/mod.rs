//! Running the `vtgt` binary from integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    let mut got = [None, None];
    while got.iter().any(Option::is_none) {
        let (kind, addr) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("vtgt did not report its portals");
        got[kind] = Some(addr.parse::<SocketAddr>().expect("portal address"));
    }
    let [Some(iscsi), Some(nvme)] = got else {
        unreachable!("both portals were reported")
    };
    (child, iscsi, nvme)
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
