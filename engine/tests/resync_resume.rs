//! A resync a restart interrupts resumes on open: it copies only the
//! regions still on the leg's durable list, plus any region a write was in
//! flight to when the crash came.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use vtgt_engine::extent::LegState;
use vtgt_engine::tags::store_bytes;
use vtgt_engine::{Backend, FaultyBackend, Layout, MemBackend, Volume};

const BS: u64 = 512;
/// 16 regions of 1 MiB per leg.
const REGION: u64 = 2048;
const LEG_BLOCKS: u64 = 16 * REGION;

fn faulty(bytes: u64) -> Arc<FaultyBackend> {
    Arc::new(FaultyBackend::new(Arc::new(
        MemBackend::new(bytes).unwrap(),
    )))
}

fn pattern(seed: u64, blocks: u64) -> Bytes {
    Bytes::from(
        (0..blocks * BS)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i / 7) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn image(b: &Arc<FaultyBackend>) -> Vec<u8> {
    let mut v = vec![0u8; (LEG_BLOCKS * BS) as usize];
    b.read_at(0, &mut v).unwrap();
    v
}

struct Rig {
    legs: [Arc<FaultyBackend>; 2],
    tags: [Arc<FaultyBackend>; 2],
    layout: Layout,
}

impl Rig {
    fn new() -> Self {
        Self {
            legs: [faulty(LEG_BLOCKS * BS), faulty(LEG_BLOCKS * BS)],
            tags: [faulty(store_bytes()), faulty(store_bytes())],
            layout: Layout::Mirror {
                legs: vec![Layout::Backend(0), Layout::Backend(1)],
            },
        }
    }

    fn open(&self, meta: &Path, tagged: bool) -> Arc<Volume> {
        let backends: Vec<Arc<dyn Backend>> = self.legs.iter().map(|b| b.clone() as _).collect();
        let stores: BTreeMap<usize, Arc<dyn Backend>> = if tagged {
            self.tags
                .iter()
                .enumerate()
                .map(|(i, b)| (i, b.clone() as Arc<dyn Backend>))
                .collect()
        } else {
            BTreeMap::new()
        };
        Volume::with_layout_tagged("r", backends, &self.layout, BS as u32, Some(meta), stores)
            .unwrap()
    }
}

fn todo_lines(meta: &Path) -> usize {
    std::fs::read_to_string(meta)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("todo 1 "))
        .count()
}

/// Fails leg 1, writes `regions` regions while it is away, and starts a
/// slow resync; returns once at least `saved` regions are struck off the
/// durable list, with the resync still running (then aborted: a crash).
async fn interrupted_resync(rig: &Rig, v: &Arc<Volume>, meta: &Path, regions: u64, saved: usize) {
    v.fail_legs(&[1], None).await.unwrap();
    for r in 0..regions {
        v.write(r * REGION + 5, pattern(r, 40), false)
            .await
            .unwrap();
    }
    // Retires these writes' tags: only a crash's torn writes leave any.
    v.flush().await.unwrap();
    // Each region copy to leg 1 now takes 100 ms.
    rig.legs[1].set_latency(Duration::from_millis(100));
    let v2 = v.clone();
    let resync = tokio::spawn(async move { v2.attach_leg(1).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    let started = |m: &Path| std::fs::read_to_string(m).unwrap().contains("resync 1\n");
    while !started(meta) || todo_lines(meta) > regions as usize - saved {
        assert!(Instant::now() < deadline, "resync progress never saved");
        assert!(!resync.is_finished(), "resync finished too soon");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    resync.abort();
    let _ = resync.await;
    // Let a copy or progress save already on a blocking thread finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.legs[1].set_latency(Duration::ZERO);
}

#[tokio::test]
async fn interrupted_resync_resumes_on_open_and_copies_only_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("r.mirror");
    let rig = Rig::new();
    let v = rig.open(&meta, false);
    interrupted_resync(&rig, &v, &meta, 10, 2).await;
    let left = todo_lines(&meta) as u64;
    assert!((1..=8).contains(&left), "{left} regions left");
    drop(v);

    // Restart: the leg is still resyncing (not dead), writes reach it, reads
    // do not, and the resync picks up where it was.
    let v = rig.open(&meta, false);
    let st = v.mirror_status();
    assert_eq!(st.legs, vec![(0, LegState::Up), (1, LegState::Resync)]);
    let copied = v.resume_resyncs().await.unwrap();
    // A region saved as copied could only be recopied if the list were lost.
    assert_eq!(copied, left * REGION * BS, "the regions left, nothing more");
    assert_eq!(v.resync_copied_bytes(), copied);
    let st = v.mirror_status();
    assert_eq!(st.legs, vec![(0, LegState::Up), (1, LegState::Up)]);
    assert_eq!(st.stale_regions, 0);
    assert!(!st.resync.active);
    assert_eq!(st.resync.done_bytes, st.resync.total_bytes);
    assert!(image(&rig.legs[0]) == image(&rig.legs[1]), "legs differ");
    let on_disk = std::fs::read_to_string(&meta).unwrap();
    assert!(!on_disk.contains("todo"), "{on_disk}");
    // Nothing left on the next open.
    drop(v);
    let v = rig.open(&meta, false);
    assert_eq!(v.resume_resyncs().await.unwrap(), 0);
}

#[tokio::test]
async fn a_write_torn_by_the_crash_is_recopied_even_in_a_copied_region() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("t.mirror");
    let rig = Rig::new();
    let v = rig.open(&meta, true);
    interrupted_resync(&rig, &v, &meta, 10, 3).await;
    // Region 0 is copied (struck off the list). A host write to it reaches
    // leg 0 but not the resyncing leg 1: the crash came in between.
    let done: Vec<u64> = (0..10)
        .filter(|r| {
            !std::fs::read_to_string(&meta)
                .unwrap()
                .contains(&format!("todo 1 {r}\n"))
        })
        .collect();
    assert!(done.contains(&0), "region 0 not copied first: {done:?}");
    let before = todo_lines(&meta);
    rig.legs[1].set_drop_writes(true);
    rig.tags[1].set_drop_writes(true);
    v.write(100, pattern(99, 16), false).await.unwrap();
    drop(v);
    rig.legs[1].set_drop_writes(false);
    rig.tags[1].set_drop_writes(false);
    assert!(image(&rig.legs[0]) != image(&rig.legs[1]));

    let v = rig.open(&meta, true);
    assert_eq!(v.mirror_status().legs[1].1, LegState::Resync);
    let left = todo_lines(&meta) as u64;
    assert_eq!(left, before as u64 + 1, "one region more");
    assert!(
        std::fs::read_to_string(&meta)
            .unwrap()
            .contains("todo 1 0\n"),
        "the torn write's region is back on the list"
    );
    let copied = v.resume_resyncs().await.unwrap();
    assert_eq!(copied, left * REGION * BS, "the list, nothing more");
    assert!(image(&rig.legs[0]) == image(&rig.legs[1]), "legs differ");
    assert_eq!(v.read(100, 16).await.unwrap(), pattern(99, 16));
}

/// Fail and re-attach a leg while its resync still runs: the old run stops
/// instead of declaring the leg in sync before the new run has copied
/// what was written while the leg was dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_resync_stops_and_the_newer_one_finishes() {
    let legs = [faulty(LEG_BLOCKS * BS), faulty(LEG_BLOCKS * BS)];
    let backends: Vec<Arc<dyn Backend>> = legs.iter().map(|b| b.clone() as _).collect();
    let layout = Layout::Mirror {
        legs: vec![Layout::Backend(0), Layout::Backend(1)],
    };
    let v = Volume::with_layout("r", backends, &layout, BS as u32, None).unwrap();
    v.fail_legs(&[1], None).await.unwrap();
    for r in 0..16u64 {
        v.write(r * REGION, pattern(r, 8), false).await.unwrap();
    }
    legs[1].set_latency(Duration::from_millis(3));
    let first = tokio::spawn({
        let v = v.clone();
        async move { v.attach_leg(1).await }
    });
    let t = Instant::now();
    while v.mirror_status().resync.done_bytes == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "resync did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    v.fail_legs(&[1], None).await.unwrap();
    v.write(5 * REGION + 100, pattern(99, 8), false)
        .await
        .unwrap();
    legs[1].set_latency(Duration::ZERO);
    v.attach_leg(1).await.unwrap();
    let r = first.await.unwrap();
    assert!(
        r.is_err(),
        "the first run must not finish after being superseded: {r:?}"
    );
    assert!(v.mirror_status().legs.iter().all(|l| l.1 == LegState::Up));
    assert!(image(&legs[0]) == image(&legs[1]), "legs differ");
}
