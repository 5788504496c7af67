//! `kill -9` in the middle of a live migration, seen through iSCSI: every
//! acknowledged (FUA) write is there after the restart, the migration
//! resumes by itself, and once it is done the volume is served from its
//! new file although the config still names the old one.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cdb10, start, BIN};
use vtgt_initiator::{DataDir, LoginConfig, Session};

const TARGET: &str = "iqn.2026-11.test:mig";
const VOLUME_MIB: u64 = 128;
const BLOCKS: u32 = (VOLUME_MIB << 20) as u32 / 512;

/// 4 KiB whose every 512-byte block names its LBA and version and carries
/// a CRC32C of itself, so a torn or misplaced block is caught.
fn block_run(lba: u32, version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    for b in 0..8u32 {
        let mut blk = vec![0u8; 512];
        blk[0..4].copy_from_slice(&(lba + b).to_le_bytes());
        blk[4..8].copy_from_slice(&version.to_le_bytes());
        for (i, x) in blk[8..508].iter_mut().enumerate() {
            *x = (i as u32).wrapping_mul(7).wrapping_add(version) as u8;
        }
        let c = crc32c::crc32c(&blk[..508]);
        blk[508..].copy_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&blk);
    }
    out
}

fn admin(dir: &Path, args: &[&str]) -> serde_json::Value {
    let sock = dir.join("vtgt.sock");
    let out = Command::new(BIN)
        .args(["admin", "--socket", sock.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run vtgt admin");
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn migration(dir: &Path) -> (bool, u64, u64) {
    let v = admin(dir, &["layout", "v"]);
    let m = &v["migration"];
    (
        m["active"].as_bool().unwrap_or(false),
        m["done_bytes"].as_u64().unwrap_or(0),
        m["total_bytes"].as_u64().unwrap_or(0),
    )
}

async fn login(addr: SocketAddr) -> Session {
    Session::login(
        addr,
        LoginConfig::new("iqn.2026-11.test:init", Some(TARGET)),
    )
    .await
    .unwrap()
}

async fn write_fua(s: &Session, lba: u32, data: Vec<u8>) {
    let r = s
        .command(
            0,
            &cdb10(0x2a, 0x08, lba, 8),
            DataDir::Write,
            4096,
            Bytes::from(data),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 0, "write at {lba}");
}

async fn verify(s: &Session, model: &BTreeMap<u32, u32>) {
    for (&lba, &version) in model {
        let r = s
            .command(
                0,
                &cdb10(0x28, 0, lba, 8),
                DataDir::Read,
                4096,
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 0);
        assert!(
            r.data[..] == block_run(lba, version)[..],
            "LBA {lba}: acknowledged version {version} lost"
        );
    }
}

fn kill9(mut c: Child) {
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn kill_9_during_migration_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vtgt.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[[iscsi.portals]]\nlisten = \"127.0.0.1:0\"\n\
             [[volume]]\nname = \"v\"\nbackend = \"file\"\npath = \"v.img\"\nsize = \"{VOLUME_MIB}MiB\"\n\
             [[target]]\nname = \"{TARGET}\"\n[[target.lun]]\nid = 0\nvolume = \"v\"\n",
            dir.path()
        ),
    )
    .unwrap();
    let args = ["--config", cfg.to_str().unwrap()];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut model: BTreeMap<u32, u32> = BTreeMap::new();
    let mut version = 0u32;
    let mut seed = 0x9e37_79b9u64;
    let mut next_lba = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as u32 % (BLOCKS / 8)) * 8
    };

    let (child, addr) = start(&args);
    rt.block_on(async {
        let s = login(addr).await;
        for _ in 0..64 {
            let lba = next_lba();
            version += 1;
            write_fua(&s, lba, block_run(lba, version)).await;
            model.insert(lba, version);
        }
    });
    admin(dir.path(), &["migrate", "v", "v2.img"]);
    // Write on while the copy runs; crash once a good part is copied.
    let t = Instant::now();
    rt.block_on(async {
        let s = login(addr).await;
        loop {
            for _ in 0..16 {
                let lba = next_lba();
                version += 1;
                write_fua(&s, lba, block_run(lba, version)).await;
                model.insert(lba, version);
            }
            let (active, done, total) = migration(dir.path());
            assert!(
                active,
                "the migration ended before the crash ({done}/{total})"
            );
            if done > total / 3 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "migration too slow");
        }
    });
    kill9(child);

    let (child, addr) = start(&args);
    rt.block_on(async {
        let s = login(addr).await;
        verify(&s, &model).await;
        // The copy resumed from the log, not from zero.
        let (_, done, total) = migration(dir.path());
        assert!(done > total / 3, "resumed at {done} of {total}");
        for _ in 0..32 {
            let lba = next_lba();
            version += 1;
            write_fua(&s, lba, block_run(lba, version)).await;
            model.insert(lba, version);
        }
    });
    let t = Instant::now();
    loop {
        let (active, done, total) = migration(dir.path());
        if !active && done == total {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "migration did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill9(child);

    // The config still names v.img; the data is in v2.img.
    let (child, addr) = start(&args);
    rt.block_on(async {
        let s = login(addr).await;
        verify(&s, &model).await;
    });
    let layout = admin(dir.path(), &["layout", "v"]);
    assert!(layout["layout"].to_string().contains("v2.img"), "{layout}");
    kill9(child);
    let new = std::fs::read(dir.path().join("v2.img")).unwrap();
    for (&lba, &v) in &model {
        let at = lba as usize * 512;
        assert!(
            new[at..at + 4096] == block_run(lba, v)[..],
            "v2.img misses LBA {lba}"
        );
    }
}
