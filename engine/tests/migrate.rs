//! Live migration with a copy barrier, under concurrent host writes.

use std::sync::Arc;

use bytes::Bytes;
use vtgt_engine::{Backend, Exposure, FaultyBackend, IoKind, Layout, MemBackend, Volume};

const BS: u64 = 512;
const BLOCKS: u64 = 8192; // 4 MiB: 64 copy units

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_moves_data_under_writes_and_releases_the_old_backend() {
    let old: Arc<dyn Backend> = Arc::new(MemBackend::new(BLOCKS * BS).unwrap());
    let v = Volume::simple("m", old.clone(), BS as u32);
    let mut model = vec![0u8; (BLOCKS * BS) as usize];
    // Some data before the migration starts.
    for i in 0..64u64 {
        let d = vec![(i as u8).wrapping_mul(3) | 1; 4096];
        v.write(i * 128, Bytes::from(d.clone()), false)
            .await
            .unwrap();
        let at = (i * 128 * BS) as usize;
        model[at..at + d.len()].copy_from_slice(&d);
    }
    let slow = Arc::new(FaultyBackend::new(Arc::new(
        MemBackend::new(BLOCKS * BS).unwrap(),
    )));
    slow.set_latency(std::time::Duration::from_micros(300));
    let to: Arc<dyn Backend> = slow.clone();
    let v2 = v.clone();
    let mig = tokio::spawn(async move { v2.migrate(to).await });
    let e = Exposure::new(v.clone());
    let mut seed = 7u64;
    let mut writes = 0u64;
    while !mig.is_finished() || writes < 50 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let lba = (seed >> 20) % (BLOCKS - 24);
        let blocks = 1 + (seed >> 50) % 20;
        let d = vec![(seed >> 40) as u8; (blocks * BS) as usize];
        match e.admit(1, IoKind::Write, lba, blocks) {
            Ok(a) => a.write(Bytes::from(d.clone()), false).await.unwrap(),
            Err(_) => v.write(lba, Bytes::from(d.clone()), false).await.unwrap(),
        }
        let at = (lba * BS) as usize;
        model[at..at + d.len()].copy_from_slice(&d);
        writes += 1;
    }
    assert_eq!(mig.await.unwrap().unwrap(), BLOCKS * BS);
    let st = v.migration_status();
    assert!(!st.active);
    assert_eq!(st.done_bytes, st.total_bytes);
    assert!(st.max_extents <= 3, "{st:?}");
    assert!(
        v.read(0, BLOCKS).await.unwrap()[..] == model[..],
        "volume lost writes"
    );
    let mut raw = vec![0u8; (BLOCKS * BS) as usize];
    slow.read_at(0, &mut raw).unwrap();
    assert!(raw == model, "new backend differs");
    assert_eq!(Arc::strong_count(&old), 1, "old backend released");
    assert_eq!(v.map().extents().len(), 1);
}

#[tokio::test]
async fn migration_of_a_concat_and_refusals() {
    let b: Vec<Arc<dyn Backend>> = vec![
        Arc::new(MemBackend::new(100 * BS).unwrap()),
        Arc::new(MemBackend::new(300 * BS).unwrap()),
    ];
    let layout = Layout::Concat {
        parts: vec![Layout::Backend(0), Layout::Backend(1)],
    };
    let v = Volume::with_layout("c", b, &layout, BS as u32, None).unwrap();
    v.write(90, Bytes::from(vec![5u8; 20 * 512]), false)
        .await
        .unwrap();
    assert!(v
        .migrate(Arc::new(MemBackend::new(10 * BS).unwrap()))
        .await
        .is_err());
    let to = Arc::new(MemBackend::new(400 * BS).unwrap());
    v.migrate(to.clone()).await.unwrap();
    let mut raw = vec![0u8; 20 * 512];
    to.read_at(90 * 512, &mut raw).unwrap();
    assert!(raw.iter().all(|&x| x == 5));
    let m = Volume::with_layout(
        "m",
        vec![
            Arc::new(MemBackend::new(BS * 8).unwrap()),
            Arc::new(MemBackend::new(BS * 8).unwrap()),
        ],
        &Layout::Mirror {
            legs: vec![Layout::Backend(0), Layout::Backend(1)],
        },
        BS as u32,
        None,
    )
    .unwrap();
    assert!(m
        .migrate(Arc::new(MemBackend::new(BS * 8).unwrap()))
        .await
        .is_err());
}

/// A crash in the middle of a logged migration: host writes that went to
/// the new backend are not lost (the old one never saw them), and the
/// reopened volume resumes the copy where the log says it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_migration_survives_a_crash_and_resumes() {
    use vtgt_engine::MigrationLog;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("m.migration");
    let old: Arc<dyn Backend> = Arc::new(MemBackend::new(BLOCKS * BS).unwrap());
    let slow = Arc::new(FaultyBackend::new(Arc::new(
        MemBackend::new(BLOCKS * BS).unwrap(),
    )));
    slow.set_latency(std::time::Duration::from_micros(500));
    let new: Arc<dyn Backend> = slow.clone();
    let mut model = vec![0u8; (BLOCKS * BS) as usize];
    let write = |v: Arc<Volume>, lba: u64, fill: u8, model: &mut Vec<u8>| {
        let d = vec![fill; 4096];
        let at = (lba * BS) as usize;
        model[at..at + d.len()].copy_from_slice(&d);
        async move { v.write(lba, Bytes::from(d), true).await.unwrap() }
    };
    let v = Volume::simple("m", old.clone(), BS as u32);
    for i in 0..32u64 {
        write(v.clone(), i * 256, i as u8 + 1, &mut model).await;
    }
    let log = Arc::new(
        MigrationLog::create(
            &log_path,
            &dir.path().join("old.img"),
            &dir.path().join("new.img"),
            BLOCKS,
        )
        .unwrap(),
    );
    let (v2, to) = (v.clone(), new.clone());
    let mig = tokio::spawn(async move { v2.migrate_logged(to, Some(log)).await });
    while v.migration_status().done_bytes < BLOCKS * BS / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // Writes into the copied part (they land on the new backend only) and
    // into the part still to copy.
    for i in 0..8u64 {
        write(v.clone(), i * 64, 0xA0 + i as u8, &mut model).await;
        write(v.clone(), BLOCKS - 8 - i * 64, 0xB0 + i as u8, &mut model).await;
    }
    // The crash: the copy stops wherever it is; the volume is gone.
    mig.abort();
    let _ = mig.await;
    drop(v);
    let (log, rec) = MigrationLog::open(&log_path).unwrap().unwrap();
    assert!(
        !rec.complete && rec.done_blocks > 0 && rec.done_blocks < BLOCKS,
        "{rec:?}"
    );
    // Restart: same old and new stores, resumed before serving.
    let v = Volume::simple("m", old.clone(), BS as u32);
    let rest = v
        .resume_migration(new.clone(), Arc::new(log), rec.done_blocks)
        .unwrap();
    let got = v.read(0, BLOCKS).await.unwrap();
    assert!(
        got[..] == model[..],
        "resumed volume lost or mixed up writes"
    );
    rest.await.unwrap();
    assert!(MigrationLog::load(&log_path).unwrap().unwrap().complete);
    let mut on_new = vec![0u8; (BLOCKS * BS) as usize];
    new.read_at(0, &mut on_new).unwrap();
    assert!(
        on_new[..] == model[..],
        "the new backend holds the whole volume"
    );
    assert!(v.read(0, BLOCKS).await.unwrap()[..] == model[..]);
}

#[test]
fn migration_log_keeps_the_last_good_record() {
    use vtgt_engine::MigrationLog;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.migration");
    assert_eq!(MigrationLog::load(&p).unwrap(), None);
    let log = MigrationLog::create(
        &p,
        std::path::Path::new("/d/old.img"),
        std::path::Path::new("/d/new.img"),
        100,
    )
    .unwrap();
    log.record(10, false).unwrap();
    log.record(20, false).unwrap();
    let r = MigrationLog::load(&p).unwrap().unwrap();
    assert_eq!(
        (r.done_blocks, r.complete, r.total_blocks),
        (20, false, 100)
    );
    assert_eq!(r.to, std::path::Path::new("/d/new.img"));
    assert_eq!(r.from, std::path::Path::new("/d/old.img"));
    // Tear the newest slot: the one before it is read.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xFF; 16], 0).unwrap();
    assert_eq!(MigrationLog::load(&p).unwrap().unwrap().done_blocks, 10);
    std::fs::write(&p, b"junk").unwrap();
    assert!(
        MigrationLog::load(&p).is_err(),
        "a log without a valid record is an error"
    );
}
