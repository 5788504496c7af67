//! `/metrics` from a running vtgt: both front ends count into the same
//! volume's statistics, exactly; errors are counted; the endpoint answers
//! only GET; a removed volume's gauges leave the output.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{admin, cdb10, settle, start_with_extra_volume, Vtgt};
use vtgt_initiator::iscsi::{DataDir, LoginConfig, Session};
use vtgt_initiator::nvme::{Controller, HostConfig};

const TARGET: &str = "iqn.2026-11.org.vtgt:default";
const SUBNQN: &str = "nqn.2026-11.org.vtgt:default";
const ISCSI_WRITES: u64 = 40;
const NVME_WRITES: u64 = 25;

/// One HTTP/1.1 request; returns the status code and body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.set_nodelay(true).expect("TCP_NODELAY");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn io(iscsi: SocketAddr, nvme: SocketAddr) {
    let s = Session::login(
        iscsi,
        LoginConfig::new("iqn.2026-11.org.test:m", Some(TARGET)),
    )
    .await
    .expect("iSCSI login");
    settle(&s, 0).await;
    for i in 0..ISCSI_WRITES {
        let cdb = cdb10(0x2a, 0, i as u32 * 8, 8);
        let r = s
            .command(0, &cdb, DataDir::Write, 4096, Bytes::from(vec![7u8; 4096]))
            .await
            .expect("WRITE(10)");
        assert_eq!(r.status, 0, "write {i}");
    }
    // A read past the end: CHECK CONDITION, one error.
    let cdb = cdb10(0x28, 0, u32::MAX - 1, 1);
    let r = s
        .command(0, &cdb, DataDir::Read, 512, Bytes::new())
        .await
        .expect("READ(10)");
    assert_eq!(r.status, 2, "out-of-range read");
    let c = Controller::connect(nvme, &HostConfig::new("nqn.2026-11.org.test:m"), SUBNQN)
        .await
        .expect("NVMe connect");
    let q = c.connect_io_queue(1, 32).await.expect("I/O queue");
    for i in 0..NVME_WRITES {
        q.write(1, 1000 + i * 8, Bytes::from(vec![9u8; 4096]), 512, false)
            .await
            .expect("NVMe write");
    }
}

#[test]
fn both_front_ends_count_into_the_volume_and_removed_volumes_leave() {
    let dir = tempfile::tempdir().unwrap();
    let (child, [iscsi, nvme, metrics], sock) = start_with_extra_volume(dir.path());
    let _vtgt = Vtgt(child);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(io(iscsi, nvme));

    let (code, text) = http(metrics, "GET", "/metrics");
    assert_eq!(code, 200);
    let v = r#"volume="default""#;
    let writes = sample(&text, &format!("vtgt_volume_ops_total{{{v},op=\"write\"}}"));
    assert_eq!(writes, Some((ISCSI_WRITES + NVME_WRITES) as f64), "{text}");
    let bytes = sample(
        &text,
        &format!("vtgt_volume_bytes_total{{{v},op=\"write\"}}"),
    );
    assert_eq!(bytes, Some(((ISCSI_WRITES + NVME_WRITES) * 4096) as f64));
    let errors = sample(&text, &format!("vtgt_volume_errors_total{{{v}}}"));
    assert_eq!(errors, Some(1.0));
    let count = sample(
        &text,
        &format!("vtgt_volume_op_duration_seconds_count{{{v},op=\"write\"}}"),
    );
    assert_eq!(count, writes);
    assert!(text.contains("# TYPE vtgt_volume_op_duration_seconds histogram"));
    let ok = r#"vtgt_logins_total{protocol="nvme",target="nqn.2026-11.org.vtgt:default",result="success"}"#;
    assert_eq!(sample(&text, ok), Some(1.0), "{text}");

    assert_eq!(http(metrics, "GET", "/nope").0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").0, 405);

    // The export sets gauges every second; a removed volume's stop being
    // set and leave the output.
    let size = |name: &str| format!("vtgt_volume_size_bytes{{volume=\"{name}\"}}");
    let t = Instant::now();
    while sample(&http(metrics, "GET", "/metrics").1, &size("extra")).is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "no gauge for extra");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, err) = admin(&sock, &["remove-volume", "extra"]);
    assert_eq!(code, 0, "remove-volume: {err}");
    let t = Instant::now();
    loop {
        let text = http(metrics, "GET", "/metrics").1;
        if sample(&text, &size("extra")).is_none() {
            assert_eq!(sample(&text, &size("default")), Some(1073741824.0));
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "extra's gauges are still there"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
