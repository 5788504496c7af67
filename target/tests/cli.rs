//! The `vtgt` binary as scripts use it: start-up errors, the embedded
//! default, durability of FUA writes across `kill -9`, and clean SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{admin, cdb10, start, start_both, start_with_extra_volume, BIN};

use bytes::Bytes;
use vtgt_initiator::{DataDir, LoginConfig, Session};

const TARGET: &str = "iqn.2026-11.org.vtgt:default";

fn run_to_end(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run vtgt");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn bad_config_names_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "data_dir = \"x\"\n[iscsi]\nportals = 7\n").unwrap();
    let (code, err) = run_to_end(&["serve", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml:3:"), "{err}");
    let (code, err) = run_to_end(&["check-config", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml:3:"), "{err}");
    let (code, err) = run_to_end(&["serve", "--config", "/nonexistent/vtgt.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/vtgt.toml"), "{err}");
}

#[test]
fn port_in_use_and_unreadable_backend_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = run_to_end(&[
        "serve",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--iscsi-listen",
        &addr,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot listen on") && err.contains(&addr),
        "{err}"
    );

    let p = dir.path().join("blk.toml");
    std::fs::write(
        &p,
        "[[volume]]\nname = \"b\"\nbackend = \"block\"\npath = \"/nonexistent/dev\"\n",
    )
    .unwrap();
    let (code, err) = run_to_end(&[
        "serve",
        "--config",
        p.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/dev"), "{err}");
}

#[test]
fn fua_writes_survive_kill_9_and_sigterm_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let args = ["--data-dir", &data, "--iscsi-listen", "127.0.0.1:0"];
    let rt = tokio::runtime::Runtime::new().unwrap();

    let (mut child, addr) = start(&args);
    let written = rt.block_on(async {
        let s = Session::login(addr, LoginConfig::new("iqn.2026-11.test:cli", Some(TARGET)))
            .await
            .unwrap();
        let mut written = Vec::new();
        for i in 0..16u32 {
            let buf = pattern(i as u8, 8 * 512);
            // FUA (0x08): durable before status.
            let r = s
                .command(
                    0,
                    &cdb10(0x2a, 0x08, i * 1000, 8),
                    DataDir::Write,
                    buf.len() as u32,
                    Bytes::from(buf.clone()),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 0);
            written.push((i * 1000, buf));
        }
        written
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (mut child, addr) = start(&args);
    rt.block_on(async {
        let s = Session::login(addr, LoginConfig::new("iqn.2026-11.test:cli", Some(TARGET)))
            .await
            .unwrap();
        for (lba, buf) in &written {
            let r = s
                .command(
                    0,
                    &cdb10(0x28, 0, *lba, 8),
                    DataDir::Read,
                    4096,
                    Bytes::new(),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 0);
            assert_eq!(&r.data[..], &buf[..], "LBA {lba} lost after kill -9");
        }
    });
    // SIGTERM: exits 0 promptly.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no clean exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bench_smoke_runs_and_verifies_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let (mut child, addr, nvme) =
        start_both(&["--data-dir", &data, "--iscsi-listen", "127.0.0.1:0"]);
    // NVMe/TCP too, on the embedded default's subsystem.
    let out = Command::new(BIN)
        .args([
            "bench",
            "--protocol",
            "nvme",
            "--portal",
            &nvme.to_string(),
            "--target",
            "nqn.2026-11.org.vtgt:default",
            "--rw",
            "randrw",
            "--qd",
            "4",
            "--ios",
            "2000",
            "--range",
            "16MiB",
            "--verify",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["errors"].as_u64(), v["verify_failures"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(v["verified_blocks"].as_u64().unwrap() > 0);
    let out = Command::new(BIN)
        .args([
            "bench",
            "--portal",
            &addr.to_string(),
            "--rw",
            "randrw",
            "--mix",
            "50",
            "--bs",
            "8k",
            "--qd",
            "4",
            "--connections",
            "2",
            "--ios",
            "3000",
            "--range",
            "16MiB",
            "--verify",
            "--json",
        ])
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 0);
    assert_eq!(v["verify_failures"], 0);
    assert!(v["ios"].as_u64().unwrap() >= 3000);
    assert!(v["writes"].as_u64().unwrap() > 0 && v["reads"].as_u64().unwrap() > 0);
    // 8 KiB reads are 16 blocks each, all checked.
    assert_eq!(
        v["verified_blocks"].as_u64().unwrap(),
        v["reads"].as_u64().unwrap() * 16
    );
}

#[test]
fn admin_adds_and_removes_nvme_namespaces() {
    const SUB: &str = "nqn.2026-11.org.vtgt:default";
    let dir = tempfile::tempdir().unwrap();
    let (mut child, [_, nvme, _], sock) = start_with_extra_volume(dir.path());
    let add = [
        "add-namespace",
        "--subsystem",
        SUB,
        "--nsid",
        "2",
        "--volume",
        "extra",
    ];
    let (code, out, err) = admin(&sock, &add);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(
        v["namespaces_added"],
        serde_json::json!([format!("{SUB}/2")])
    );
    // A host sees it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host = vtgt_initiator::nvme::HostConfig::new("nqn.2014-08.org.nvmexpress:uuid:cli");
    rt.block_on(async {
        let c = vtgt_initiator::nvme::Controller::connect(nvme, &host, SUB)
            .await
            .unwrap();
        assert_eq!(c.active_namespaces().await.unwrap(), vec![1, 2]);
        assert_eq!(c.identify_ns(2).await.unwrap().nsze, 4 << 11);
        c.close().await;
    });
    // Twice: refused, with the reason, exit status 1.
    let (code, _, err) = admin(&sock, &add);
    assert_eq!(code, 1);
    assert!(err.contains("already has namespace 2"), "{err}");
    let (code, _, err) = admin(
        &sock,
        &[
            "add-namespace",
            "--subsystem",
            SUB,
            "--nsid",
            "0",
            "--volume",
            "extra",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("out of range"), "{err}");
    let remove = ["remove-namespace", "--subsystem", SUB, "--nsid", "2"];
    let (code, out, err) = admin(&sock, &remove);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{SUB}/2")), "{out}");
    let (code, _, err) = admin(&sock, &remove);
    assert_eq!(code, 1);
    assert!(err.contains("has no namespace 2"), "{err}");
    let (_, out, _) = admin(&sock, &["status"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["subsystems"][0]["namespaces"],
        serde_json::json!([{"nsid": 1, "volume": "default"}])
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
