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
