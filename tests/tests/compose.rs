//! A RAID10 volume (stripe over two mirrors, file legs) served over iSCSI:
//! host I/O across stripe units, a leg failed and re-attached through the
//! admin interface, legs identical on disk afterwards.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use vtgt::admin::{handle, AdminContext, Request};
use vtgt::config::{BackendKind, LayoutConfig, VolumeConfig};
use vtgt_initiator::iscsi::DataDir;

fn leaf(f: &str) -> LayoutConfig {
    LayoutConfig {
        file: Some(f.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn raid10_over_iscsi_with_leg_failure_and_resync() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = mem_config();
    cfg.data_dir = dir.path().to_path_buf();
    cfg.volumes = vec![VolumeConfig {
        name: "v0".into(),
        backend: BackendKind::File,
        path: None,
        size: Some("8MiB".into()),
        block_size: BLOCK as u32,
        layout: Some(LayoutConfig {
            unit: Some("64KiB".into()),
            stripe: Some(vec![
                LayoutConfig {
                    mirror: Some(vec![leaf("a0.img"), leaf("a1.img")]),
                    ..Default::default()
                },
                LayoutConfig {
                    mirror: Some(vec![leaf("b0.img"), leaf("b1.img")]),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        journal: None,
    }];
    let (srv, addr) = start(cfg).await;
    let srv = Arc::new(srv);
    let ctx = AdminContext {
        server: srv.clone(),
        config_path: None,
    };
    let s = login(addr, INITIATOR).await;
    let write = |lba: u64, len: usize, seed: u64| {
        let s = &s;
        async move {
            let data = pattern(seed, len);
            let r = within(
                "write",
                s.command(
                    0,
                    &write16(lba, (len / BLOCK) as u32),
                    DataDir::Write,
                    len as u32,
                    data.clone(),
                ),
            )
            .await
            .expect("write");
            assert_good("write", &r);
            data
        }
    };
    let read = |lba: u64, len: usize| {
        let s = &s;
        async move {
            let r = within(
                "read",
                s.command(
                    0,
                    &read16(lba, (len / BLOCK) as u32),
                    DataDir::Read,
                    len as u32,
                    Bytes::new(),
                ),
            )
            .await
            .expect("read");
            assert_good("read", &r);
            r.data
        }
    };
    // 16 MiB volume (2 x 8 MiB); writes inside and across 64 KiB units.
    let mut expect = Vec::new();
    for (i, (lba, len)) in [(0u64, 4096usize), (100, 65536), (255, 1024), (5000, 131072)]
        .into_iter()
        .enumerate()
    {
        expect.push((lba, write(lba, len, i as u64).await));
    }
    handle(
        &ctx,
        Request::FailLeg {
            volume: "v0".into(),
            leg: 1,
        },
    )
    .await
    .unwrap();
    // Writes while degraded: regions get stamped.
    for (i, lba) in [8u64, 20000, 30000].into_iter().enumerate() {
        expect.push((lba, write(lba, 8192, 50 + i as u64).await));
    }
    handle(
        &ctx,
        Request::AttachLeg {
            volume: "v0".into(),
            leg: 1,
        },
    )
    .await
    .unwrap();
    let vol = srv.volume("v0").await.unwrap().volume;
    for _ in 0..500 {
        if vol
            .mirror_status()
            .legs
            .iter()
            .all(|l| l.1 == vtgt_engine::LegState::Up)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(vol
        .mirror_status()
        .legs
        .iter()
        .all(|l| l.1 == vtgt_engine::LegState::Up));
    assert!(vol.resync_copied_bytes() > 0);
    assert!(
        vol.resync_copied_bytes() < 8 << 20,
        "only written regions are copied"
    );
    for (lba, data) in &expect {
        assert_same("read back", &read(*lba, data.len()).await, data);
    }
    vol.flush().await.unwrap();
    let a0 = std::fs::read(dir.path().join("a0.img")).unwrap();
    let a1 = std::fs::read(dir.path().join("a1.img")).unwrap();
    assert!(a0 == a1, "mirror A legs differ");
    let b0 = std::fs::read(dir.path().join("b0.img")).unwrap();
    let b1 = std::fs::read(dir.path().join("b1.img")).unwrap();
    assert!(b0 == b1, "mirror B legs differ");
    assert!(vol.counters.fast_path_hits() > 0);
}
