//! Crash-consistent mirrors via tags: many rounds of "a write reached one
//! leg, then the system crashed" followed by reopen and reconciliation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use vtgt_engine::tags::store_bytes;
use vtgt_engine::{Backend, FaultyBackend, FileBackend, Layout, MemBackend, Volume};

const BS: u64 = 512;
const BLOCKS: u64 = 4096;

struct Rig {
    data: Vec<Arc<FaultyBackend>>,
    tags: Vec<Arc<FaultyBackend>>,
    layout: Layout,
}

impl Rig {
    fn new(legs: usize) -> Self {
        let mk = |n: u64| Arc::new(FaultyBackend::new(Arc::new(MemBackend::new(n).unwrap())));
        Self {
            data: (0..legs).map(|_| mk(BLOCKS * BS)).collect(),
            tags: (0..legs).map(|_| mk(store_bytes())).collect(),
            layout: Layout::Mirror {
                legs: (0..legs).map(Layout::Backend).collect(),
            },
        }
    }

    fn open(&self) -> Arc<Volume> {
        let backends: Vec<Arc<dyn Backend>> = self.data.iter().map(|b| b.clone() as _).collect();
        let stores: BTreeMap<usize, Arc<dyn Backend>> = self
            .tags
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.clone() as Arc<dyn Backend>))
            .collect();
        Volume::with_layout_tagged("t", backends, &self.layout, BS as u32, None, stores).unwrap()
    }

    /// Leg `i` silently loses everything sent to it, data and tag entries:
    /// from the mirror's point of view the crash came before its I/O.
    fn cut(&self, i: usize, on: bool) {
        self.data[i].set_drop_writes(on);
        self.tags[i].set_drop_writes(on);
    }

    fn image(&self, i: usize) -> Vec<u8> {
        let mut v = vec![0u8; (BLOCKS * BS) as usize];
        self.data[i].read_at(0, &mut v).unwrap();
        v
    }
}

/// Deterministic pseudo-random numbers (no dependency on a RNG crate).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn data(seed: u64, blocks: u64) -> Vec<u8> {
    (0..blocks * BS)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i / 7)) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_mirror_writes_are_reconciled_after_crash() {
    for legs in [2usize, 3] {
        let rig = Rig::new(legs);
        let mut model = vec![0u8; (BLOCKS * BS) as usize];
        let mut rng = Lcg(legs as u64 * 977);
        let mut total_copied = 0u64;
        for round in 0..40u64 {
            let v = rig.open();
            let rep = v.reconcile_report();
            if round > 0 {
                // The torn write of the last round is the one unmatched
                // entry; the ranges of every entry still in the tables are
                // copied (matching tables do not prove the data arrived).
                assert_eq!(rep.unmatched, 1, "round {round}: {rep:?}");
                let entries = rep.matched + rep.unmatched;
                assert!(rep.copied_bytes > 0, "round {round}: {rep:?}");
                assert!(
                    rep.copied_bytes <= entries * 64 * BS * (legs as u64 - 1),
                    "round {round}: {rep:?}"
                );
                total_copied += rep.copied_bytes;
            }
            let img0 = rig.image(0);
            for i in 1..legs {
                assert!(rig.image(i) == img0, "round {round}: legs 0 and {i} differ");
            }
            assert!(
                img0 == model,
                "round {round}: an acknowledged write was lost"
            );
            // Acknowledged writes, some overlapping, fewer than a retire
            // batch, so every entry is still in the tables at the crash.
            let n = 1 + rng.next() % 20;
            for k in 0..n {
                let lba = rng.next() % (BLOCKS - 64);
                let blocks = 1 + rng.next() % 64;
                let d = data(round * 100 + k, blocks);
                v.write(lba, Bytes::from(d.clone()), false).await.unwrap();
                let at = (lba * BS) as usize;
                model[at..at + d.len()].copy_from_slice(&d);
            }
            if round % 10 == 9 {
                // A flush retires everything: the tables empty out.
                v.flush().await.unwrap();
                assert_eq!(v.unretired_tags(), 0);
            }
            // The torn write: reaches only some legs, then the crash.
            let cut = (rng.next() as usize) % legs;
            rig.cut(cut, true);
            let lba = rng.next() % (BLOCKS - 64);
            let blocks = 1 + rng.next() % 64;
            let d = data(round * 100 + 99, blocks);
            v.write(lba, Bytes::from(d.clone()), false).await.unwrap();
            drop(v);
            rig.cut(cut, false);
            // Never acknowledged to a host, but a surviving leg had it: the
            // reconciliation copies it from there, so it ends up applied.
            let at = (lba * BS) as usize;
            model[at..at + d.len()].copy_from_slice(&d);
        }
        let v = rig.open();
        assert_eq!(v.reconcile_report().unmatched, 1);
        let img0 = rig.image(0);
        for i in 1..legs {
            assert!(rig.image(i) == img0);
        }
        assert!(img0 == model);
        // At most the 21 writes a round leaves in the tables, per round.
        assert!(total_copied <= 40 * 21 * 64 * BS * (legs as u64 - 1));
    }
}

#[tokio::test]
async fn clean_reopen_copies_nothing() {
    let rig = Rig::new(2);
    let v = rig.open();
    for i in 0..100u64 {
        v.write(i * 8, Bytes::from(data(i, 8)), false)
            .await
            .unwrap();
    }
    // An orderly close retires every entry: nothing to copy.
    v.close().await.unwrap();
    drop(v);
    let v = rig.open();
    let r = v.reconcile_report();
    assert_eq!((r.matched, r.unmatched, r.copied_bytes), (0, 0, 0), "{r:?}");
}

/// The cost of tagging: the same writes on a file-backed mirror with and
/// without tag tables. Printed, not asserted (it depends on the disk).
#[tokio::test]
async fn tag_cost_per_write() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::Mirror {
        legs: vec![Layout::Backend(0), Layout::Backend(1)],
    };
    let mut results = Vec::new();
    for tagged in [false, true] {
        let sub = dir.path().join(if tagged { "t" } else { "u" });
        let backends: Vec<Arc<dyn Backend>> = (0..2)
            .map(|i| {
                Arc::new(
                    FileBackend::open_or_create(&sub.join(format!("leg{i}.img")), 8 << 20).unwrap(),
                ) as _
            })
            .collect();
        let stores: BTreeMap<usize, Arc<dyn Backend>> = if tagged {
            (0..2)
                .map(|i| {
                    (
                        i,
                        Arc::new(
                            FileBackend::open_or_create(
                                &sub.join(format!("leg{i}.tags")),
                                store_bytes(),
                            )
                            .unwrap(),
                        ) as Arc<dyn Backend>,
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let v = Volume::with_layout_tagged("c", backends, &layout, 512, None, stores).unwrap();
        let n = 300u64;
        let t = Instant::now();
        for i in 0..n {
            v.write((i * 8) % 16000, Bytes::from(vec![i as u8; 4096]), false)
                .await
                .unwrap();
        }
        results.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    println!(
        "4 KiB mirrored write: {:.1} us untagged, {:.1} us tagged (+{:.1} us)",
        results[0],
        results[1],
        results[1] - results[0]
    );
}

#[tokio::test]
async fn raid10_reconciles_only_the_torn_mirror() {
    let mk = |n: u64| Arc::new(FaultyBackend::new(Arc::new(MemBackend::new(n).unwrap())));
    let data: Vec<Arc<FaultyBackend>> = (0..4).map(|_| mk(512 * BS)).collect();
    let tags: Vec<Arc<FaultyBackend>> = (0..4).map(|_| mk(store_bytes())).collect();
    let layout = Layout::Stripe {
        unit_blocks: 8,
        legs: vec![
            Layout::Mirror {
                legs: vec![Layout::Backend(0), Layout::Backend(1)],
            },
            Layout::Mirror {
                legs: vec![Layout::Backend(2), Layout::Backend(3)],
            },
        ],
    };
    let open = || {
        let backends: Vec<Arc<dyn Backend>> = data.iter().map(|b| b.clone() as _).collect();
        let stores: BTreeMap<usize, Arc<dyn Backend>> = tags
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.clone() as Arc<dyn Backend>))
            .collect();
        Volume::with_layout_tagged("r", backends, &layout, BS as u32, None, stores).unwrap()
    };
    let v = open();
    v.write(0, Bytes::from(data_bytes(1, 64)), false)
        .await
        .unwrap();
    // Retired: only the next write's entries stay in the tables.
    v.flush().await.unwrap();
    // Leg 1 (mirror A) misses a write that spans both mirrors.
    data[1].set_drop_writes(true);
    tags[1].set_drop_writes(true);
    v.write(4, Bytes::from(data_bytes(2, 24)), false)
        .await
        .unwrap();
    drop(v);
    data[1].set_drop_writes(false);
    tags[1].set_drop_writes(false);
    let v = open();
    let r = v.reconcile_report();
    assert_eq!(r.unmatched, 1, "{r:?}");
    // Blocks 4..28 of the volume: 12 on each mirror, copied to leg 1 on
    // mirror A (unmatched) and to leg 3 on mirror B (matched entries prove
    // nothing about the data).
    assert_eq!(r.copied_bytes, 24 * BS, "{r:?}");
    let img = |b: &Arc<FaultyBackend>| {
        let mut v = vec![0u8; (512 * BS) as usize];
        b.read_at(0, &mut v).unwrap();
        v
    };
    assert!(img(&data[0]) == img(&data[1]));
    assert!(img(&data[2]) == img(&data[3]));
    let mut want = data_bytes(1, 64);
    want[4 * 512..28 * 512].copy_from_slice(&data_bytes(2, 24));
    assert!(v.read(0, 64).await.unwrap()[..] == want[..]);
}

fn data_bytes(seed: u64, blocks: u64) -> Vec<u8> {
    data(seed, blocks)
}

/// A machine restart with the mirror open: the tag tables lived in the
/// page cache, so they prove nothing, and the other leg resyncs whole in
/// the background. An orderly close, or a restart of vtgt alone on the
/// same boot, trusts them.
#[tokio::test]
async fn machine_restart_with_the_mirror_open_copies_the_legs_whole() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::Mirror {
        legs: vec![Layout::Backend(0), Layout::Backend(1)],
    };
    const SIZE: u64 = 4 << 20;
    let leg = |i: usize| dir.path().join(format!("leg{i}.img"));
    let open = |boot: &str| {
        let backends: Vec<Arc<dyn Backend>> = (0..2)
            .map(|i| Arc::new(FileBackend::open_or_create(&leg(i), SIZE).unwrap()) as _)
            .collect();
        let stores: BTreeMap<usize, Arc<dyn Backend>> = (0..2)
            .map(|i| {
                let p = dir.path().join(format!("leg{i}.tags"));
                (
                    i,
                    Arc::new(FileBackend::open_or_create(&p, store_bytes()).unwrap()) as _,
                )
            })
            .collect();
        let meta = dir.path().join("m.mirror");
        Volume::with_layout_tagged_on("m", backends, &layout, 512, Some(&meta), stores, boot)
            .unwrap()
    };
    let v = open("boot-1");
    v.write(0, Bytes::from(data(1, 64)), false).await.unwrap();
    // Power fails: leg 1's copy of a write never reached its media, and
    // neither did either leg's tag entry (simulated by editing the file).
    std::fs::OpenOptions::new()
        .write(true)
        .open(leg(1))
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0xEE; 512], 8 * 512))
        .unwrap();
    drop(v);
    // Restarted vtgt on the same boot: only the tags decide (none torn).
    let v = open("boot-1");
    assert!(!v.reconcile_report().full_copy);
    drop(v);
    let v = open("boot-2");
    let r = v.reconcile_report();
    assert!(r.full_copy && r.copied_bytes == 0, "{r:?}");
    // Leg 1 is in resync: it serves no reads, so none sees the torn block.
    for _ in 0..4 {
        assert!(v.read(0, 64).await.unwrap()[..] == data(1, 64)[..]);
    }
    // A write before the copy reaches both legs.
    v.write(100, Bytes::from(data(2, 8)), false).await.unwrap();
    // The leg fails before its copy, then comes back: it must still get
    // every region, not only those written while it was dead.
    v.fail_legs(&[1], None).await.unwrap();
    assert_eq!(v.attach_leg(1).await.unwrap(), SIZE);
    assert_eq!(v.resync_copied_bytes(), SIZE);
    let img = |i: usize| std::fs::read(leg(i)).unwrap();
    assert!(img(0) == img(1), "legs agree after the whole copy");
    assert!(v.read(0, 64).await.unwrap()[..] == data(1, 64)[..]);
    assert!(v.read(100, 8).await.unwrap()[..] == data(2, 8)[..]);
    v.close().await.unwrap();
    drop(v);
    let v = open("boot-3");
    let r = v.reconcile_report();
    assert!(!r.full_copy && r.copied_bytes == 0, "{r:?}");
}
