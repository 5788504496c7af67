//! Compositions (stripe, mirror, concat, RAID10) through the fast path and
//! the control path, leg failure and resync.

use std::sync::Arc;

use bytes::Bytes;
use vtgt_engine::extent::LegState;
use vtgt_engine::{
    Backend, Exposure, FaultReason, FaultyBackend, IoKind, Layout, MemBackend, Volume,
};

const BS: u64 = 512;

fn mem(blocks: u64) -> Arc<dyn Backend> {
    Arc::new(MemBackend::new(blocks * BS).unwrap())
}

fn faulty(blocks: u64) -> Arc<FaultyBackend> {
    Arc::new(FaultyBackend::new(mem(blocks)))
}

fn pattern(tag: u8, blocks: u64) -> Bytes {
    Bytes::from(
        (0..blocks * BS)
            .map(|i| tag.wrapping_add((i / BS) as u8))
            .collect::<Vec<u8>>(),
    )
}

fn raw(b: &Arc<dyn Backend>, block: u64, blocks: u64) -> Vec<u8> {
    let mut v = vec![0u8; (blocks * BS) as usize];
    b.read_at(block * BS, &mut v).unwrap();
    v
}

fn backend(i: usize) -> Layout {
    Layout::Backend(i)
}

#[tokio::test]
async fn stripe_places_units_round_robin_and_fp_faults_crossings() {
    let b = vec![mem(64), mem(64)];
    let layout = Layout::Stripe {
        unit_blocks: 8,
        legs: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("s", b.clone(), &layout, BS as u32, None).unwrap();
    assert_eq!(v.num_blocks(), 128);
    let e = Exposure::new(v.clone());
    // Inside unit 1 (leg 1, its unit 0): one downstream I/O.
    e.admit(1, IoKind::Write, 9, 4)
        .unwrap()
        .write(pattern(10, 4), false)
        .await
        .unwrap();
    assert_eq!(raw(&b[1], 1, 4), pattern(10, 4).to_vec());
    assert_eq!(
        e.admit(1, IoKind::Write, 6, 4).err(),
        Some(FaultReason::CrossesBoundary)
    );
    // The control path splits the same range over both legs.
    v.write(6, pattern(50, 4), false).await.unwrap();
    assert_eq!(raw(&b[0], 6, 2), pattern(50, 2).to_vec());
    assert_eq!(raw(&b[1], 0, 2), pattern(52, 2).to_vec());
    assert_eq!(v.read(6, 4).await.unwrap(), pattern(50, 4));
    // Unit 2 is leg 0's unit 1.
    v.write(16, pattern(7, 1), false).await.unwrap();
    assert_eq!(raw(&b[0], 8, 1), pattern(7, 1).to_vec());
    assert_eq!(v.counters.count(FaultReason::CrossesBoundary), 1);
}

#[tokio::test]
async fn concat_spans_backends() {
    let b = vec![mem(10), mem(20)];
    let layout = Layout::Concat {
        parts: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("c", b.clone(), &layout, BS as u32, None).unwrap();
    assert_eq!(v.num_blocks(), 30);
    let e = Exposure::new(v.clone());
    assert_eq!(
        e.admit(1, IoKind::Read, 8, 4).err(),
        Some(FaultReason::CrossesBoundary)
    );
    v.write(8, pattern(1, 4), false).await.unwrap();
    assert_eq!(raw(&b[0], 8, 2), pattern(1, 2).to_vec());
    assert_eq!(raw(&b[1], 0, 2), pattern(3, 2).to_vec());
    let got = e
        .admit(1, IoKind::Read, 10, 2)
        .unwrap()
        .read()
        .await
        .unwrap();
    assert_eq!(got, pattern(3, 2));
    assert!(v.grow(100).await.is_err(), "only a plain volume grows");
}

#[tokio::test]
async fn mirror_writes_every_leg_and_reads_round_robin() {
    let b = vec![mem(64), mem(64), mem(64)];
    let layout = Layout::Mirror {
        legs: vec![backend(0), backend(1), backend(2)],
    };
    let v = Volume::with_layout("m", b.clone(), &layout, BS as u32, None).unwrap();
    let e = Exposure::new(v.clone());
    e.admit(1, IoKind::Write, 3, 5)
        .unwrap()
        .write(pattern(9, 5), false)
        .await
        .unwrap();
    for leg in &b {
        assert_eq!(raw(leg, 3, 5), pattern(9, 5).to_vec());
    }
    // Make the legs differ behind the engine's back: successive reads must
    // visit each of them.
    for (i, leg) in b.iter().enumerate() {
        leg.write_at(0, &[i as u8 + 1; 512], false).unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let d = e
            .admit(1, IoKind::Read, 0, 1)
            .unwrap()
            .read()
            .await
            .unwrap();
        seen.insert(d[0]);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[tokio::test]
async fn raid10_stripes_over_mirrors() {
    let b = vec![mem(32), mem(32), mem(32), mem(32)];
    let layout = Layout::Stripe {
        unit_blocks: 4,
        legs: vec![
            Layout::Mirror {
                legs: vec![backend(0), backend(1)],
            },
            Layout::Mirror {
                legs: vec![backend(2), backend(3)],
            },
        ],
    };
    let v = Volume::with_layout("r10", b.clone(), &layout, BS as u32, None).unwrap();
    assert_eq!(v.num_blocks(), 64);
    v.write(2, pattern(40, 8), false).await.unwrap();
    assert_eq!(raw(&b[0], 2, 2), raw(&b[1], 2, 2));
    assert_eq!(raw(&b[2], 0, 4), pattern(42, 4).to_vec());
    assert_eq!(raw(&b[3], 0, 4), pattern(42, 4).to_vec());
    assert_eq!(raw(&b[0], 4, 2), pattern(46, 2).to_vec());
    assert_eq!(v.read(2, 8).await.unwrap(), pattern(40, 8));
}

/// 16 MiB legs: 16 regions of 1 MiB.
const LEG_BLOCKS: u64 = 32768;

#[tokio::test]
async fn leg_failure_is_durable_before_status_and_resync_copies_only_written_regions() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("m.mirror");
    let legs = [faulty(LEG_BLOCKS), faulty(LEG_BLOCKS)];
    let backends: Vec<Arc<dyn Backend>> = legs.iter().map(|l| l.clone() as _).collect();
    let layout = Layout::Mirror {
        legs: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("m", backends.clone(), &layout, BS as u32, Some(&meta)).unwrap();
    let region = v.region_blocks();
    assert_eq!(region, 2048);
    let e = Exposure::new(v.clone());
    for r in 0..16 {
        v.write(r * region, pattern(r as u8, 16), false)
            .await
            .unwrap();
    }
    legs[1].set_fail_writes(true);
    // The host write succeeds on the survivor ...
    e.admit(1, IoKind::Write, 3 * region, 8)
        .unwrap()
        .write(pattern(100, 8), false)
        .await
        .unwrap();
    // ... and by then the leg is dead on disk.
    let on_disk = std::fs::read_to_string(&meta).unwrap();
    assert!(on_disk.contains("leg 1 dead"), "{on_disk}");
    assert!(on_disk.contains("generation 1"), "{on_disk}");
    let st = v.mirror_status();
    assert_eq!(st.generation, 1);
    assert_eq!(st.legs, vec![(0, LegState::Up), (1, LegState::Dead)]);
    // The region that saw the failure is already stamped; others fault once.
    assert!(e.admit(1, IoKind::Write, 3 * region + 100, 1).is_ok());
    assert_eq!(
        e.admit(1, IoKind::Write, 5 * region, 1).err(),
        Some(FaultReason::FaultOnWrite)
    );
    v.write(5 * region, pattern(101, 4), false).await.unwrap();
    assert!(e.admit(1, IoKind::Write, 5 * region + 9, 1).is_ok());
    v.write(9 * region + 7, pattern(102, 2), false)
        .await
        .unwrap();
    v.discard(12 * region, 4).await.unwrap();
    // Reads still work and reads never hit the dead leg.
    legs[1].set_fail_reads(true);
    assert_eq!(v.read(5 * region, 4).await.unwrap(), pattern(101, 4));
    legs[1].set_fail_reads(false);
    assert_eq!(v.mirror_status().stale_regions, 4);

    // A restart keeps the leg dead and the age list.
    drop(e);
    drop(v);
    let v = Volume::with_layout("m", backends.clone(), &layout, BS as u32, Some(&meta)).unwrap();
    assert_eq!(v.mirror_status().legs[1].1, LegState::Dead);
    assert_eq!(v.generation(), 1);

    legs[1].set_fail_writes(false);
    let copied = v.attach_leg(1).await.unwrap();
    assert_eq!(copied, 4 * region * BS, "only the four written regions");
    assert_eq!(v.resync_copied_bytes(), copied);
    let st = v.mirror_status();
    assert_eq!(st.legs, vec![(0, LegState::Up), (1, LegState::Up)]);
    assert_eq!(st.resync.done_bytes, st.resync.total_bytes);
    assert!(!st.resync.active);
    assert_eq!(
        raw(&backends[0], 0, LEG_BLOCKS),
        raw(&backends[1], 0, LEG_BLOCKS)
    );
    // In sync again: no fault-on-write anywhere.
    let e = Exposure::new(v.clone());
    assert!(e.admit(1, IoKind::Write, 7 * region, 1).is_ok());
}

#[tokio::test]
async fn last_live_leg_failure_fails_the_write() {
    let legs = [faulty(64), faulty(64)];
    let backends: Vec<Arc<dyn Backend>> = legs.iter().map(|l| l.clone() as _).collect();
    let layout = Layout::Mirror {
        legs: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("m", backends, &layout, BS as u32, None).unwrap();
    v.fail_legs(&[0], None).await.unwrap();
    assert!(v.fail_legs(&[1], None).await.is_err());
    legs[1].set_fail_writes(true);
    assert!(v.write(0, pattern(1, 1), false).await.is_err());
    assert_eq!(v.mirror_status().legs[1].1, LegState::Up);
    // Attaching a leg that is not dead is refused.
    assert!(v.attach_leg(1).await.is_err());
}

#[tokio::test]
async fn writes_during_resync_reach_the_resyncing_leg() {
    let legs = [faulty(LEG_BLOCKS), faulty(LEG_BLOCKS)];
    let backends: Vec<Arc<dyn Backend>> = legs.iter().map(|l| l.clone() as _).collect();
    let layout = Layout::Mirror {
        legs: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("m", backends.clone(), &layout, BS as u32, None).unwrap();
    let region = v.region_blocks();
    v.fail_legs(&[1], None).await.unwrap();
    for r in 0..16 {
        v.write(r * region + 1, pattern(r as u8, 64), false)
            .await
            .unwrap();
    }
    // Slow the copy down so host writes overlap it.
    legs[1].set_latency(std::time::Duration::from_millis(2));
    let v2 = v.clone();
    let resync = tokio::spawn(async move { v2.attach_leg(1).await });
    let mut i = 0u64;
    while !resync.is_finished() {
        v.write((i % 16) * region + 30, pattern(i as u8, 3), false)
            .await
            .unwrap();
        i += 1;
    }
    resync.await.unwrap().unwrap();
    assert!(i > 0);
    assert_eq!(
        raw(&backends[0], 0, LEG_BLOCKS),
        raw(&backends[1], 0, LEG_BLOCKS)
    );
}

/// A write admitted through an older map version than the one a leg
/// attach replaces (here: before another region's first write stamped it)
/// still skips the dead leg. The attach must wait for it too, or the
/// resync copies the region before the write lands on the live leg only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_waits_for_writes_admitted_through_any_older_map() {
    let backends: Vec<Arc<dyn Backend>> = vec![mem(LEG_BLOCKS), mem(LEG_BLOCKS)];
    let layout = Layout::Mirror {
        legs: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("m", backends.clone(), &layout, BS as u32, None).unwrap();
    let e = Exposure::new(v.clone());
    let region = v.region_blocks();
    v.fail_legs(&[1], None).await.unwrap();
    // Region 0's first write stamps it; the fast path then admits writes
    // there, which go to leg 0 only.
    v.write(0, pattern(1, 8), false).await.unwrap();
    let late = e
        .admit(1, IoKind::Write, 16, 8)
        .expect("fast-path admission");
    // Region 1's first write publishes a newer map.
    v.write(region, pattern(2, 8), false).await.unwrap();
    let v2 = v.clone();
    let attach = tokio::spawn(async move { v2.attach_leg(1).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let finished_early = attach.is_finished();
    late.write(pattern(3, 8), false).await.unwrap();
    attach.await.unwrap().unwrap();
    assert!(
        !finished_early,
        "the attach finished with a write from an older map still pending"
    );
    assert_eq!(
        raw(&backends[0], 0, 2 * region),
        raw(&backends[1], 0, 2 * region),
        "legs diverged"
    );
}

#[tokio::test]
async fn mirror_reads_fail_over_to_another_leg() {
    let legs = [faulty(64), faulty(64)];
    let backends: Vec<Arc<dyn Backend>> = legs.iter().map(|l| l.clone() as _).collect();
    let layout = Layout::Mirror {
        legs: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("m", backends, &layout, BS as u32, None).unwrap();
    v.write(0, pattern(3, 4), false).await.unwrap();
    legs[0].set_fail_reads(true);
    let e = Exposure::new(v.clone());
    for _ in 0..4 {
        assert_eq!(v.read(0, 4).await.unwrap(), pattern(3, 4));
        let a = e.admit(1, IoKind::Read, 0, 4).unwrap();
        assert_eq!(a.read().await.unwrap(), pattern(3, 4));
    }
    legs[1].set_fail_reads(true);
    assert!(v.read(0, 4).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_and_attach_under_concurrent_writes_never_deadlock_or_diverge() {
    let backends: Vec<Arc<dyn Backend>> = vec![mem(LEG_BLOCKS), mem(LEG_BLOCKS)];
    let layout = Layout::Mirror {
        legs: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("m", backends.clone(), &layout, BS as u32, None).unwrap();
    let e = Exposure::new(v.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (e, v, stop) = (e.clone(), v.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut seed = w + 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(11);
                // Few hot regions, so writes collide with FoW stamping,
                // resync copies and each other.
                let lba = ((seed >> 20) % 4) * 2048 + (seed >> 40) % 2000;
                let blocks = 1 + (seed >> 56) % 32;
                let d = pattern((seed >> 8) as u8, blocks);
                match e.admit(1, IoKind::Write, lba, blocks) {
                    Ok(a) => a.write(d, false).await.unwrap(),
                    Err(_) => v.write(lba, d, false).await.unwrap(),
                }
            }
        }));
    }
    let cycle = async {
        for i in 0..20 {
            let leg = i % 2;
            v.fail_legs(&[leg], None).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            v.attach_leg(leg).await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), cycle)
        .await
        .expect("fail/attach cycles must not deadlock");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        tokio::time::timeout(std::time::Duration::from_secs(10), w)
            .await
            .expect("writer finishes")
            .unwrap();
    }
    assert_eq!(v.generation(), 20);
    assert!(
        raw(&backends[0], 0, LEG_BLOCKS) == raw(&backends[1], 0, LEG_BLOCKS),
        "legs diverged"
    );
}

/// The fast path's map cache: bounded, a miss is a counted fault that
/// loads the entry, a working set that fits stays cached, and a new map
/// (here: after a migration) is never served from stale entries.
#[tokio::test]
async fn fast_path_map_cache_is_bounded_and_follows_map_changes() {
    let parts = 32usize;
    let b: Vec<Arc<dyn Backend>> = (0..parts).map(|_| mem(8)).collect();
    let layout = Layout::Concat {
        parts: (0..parts).map(backend).collect(),
    };
    let v = Volume::with_layout("c", b.clone(), &layout, BS as u32, None).unwrap();
    let e = Exposure::with_cache(v.clone(), 8);
    let misses = || v.counters.count(FaultReason::NoMapping);
    for p in 0..parts as u64 {
        e.admit(1, IoKind::Write, p * 8, 8)
            .unwrap()
            .write(pattern(p as u8, 8), false)
            .await
            .unwrap();
    }
    assert_eq!(misses(), parts as u64, "every first touch missed");
    assert_eq!(e.cached_extents(), 8, "bounded");
    // A working set of 6 extents fits: after one pass, no more misses.
    for round in 0..3 {
        for p in 10..16u64 {
            let d = e
                .admit(1, IoKind::Read, p * 8 + 1, 2)
                .unwrap()
                .read()
                .await
                .unwrap();
            assert_eq!(d[..], pattern(p as u8 + 1, 2)[..]);
        }
        assert_eq!(misses(), parts as u64 + 6, "round {round}");
    }
    // A migration publishes new maps; the cache must not send a write to
    // the old backends afterwards.
    let to = mem(parts as u64 * 8);
    v.migrate(to.clone()).await.unwrap();
    let before = misses();
    e.admit(1, IoKind::Write, 12 * 8, 8)
        .unwrap()
        .write(pattern(0xC0, 8), false)
        .await
        .unwrap();
    assert_eq!(misses(), before + 1, "the new map missed once");
    assert_eq!(raw(&to, 12 * 8, 8), pattern(0xC0, 8).to_vec());
    assert_ne!(raw(&b[12], 0, 8), pattern(0xC0, 8).to_vec());
    let d = e
        .admit(1, IoKind::Read, 12 * 8, 8)
        .unwrap()
        .read()
        .await
        .unwrap();
    assert_eq!(d[..], pattern(0xC0, 8)[..]);
    assert_eq!(misses(), before + 1, "then it hit");
}

/// A dead leg's device can fail its flushes without failing the volume's.
#[tokio::test]
async fn flush_skips_backends_only_dead_legs_use() {
    let legs = [faulty(64), faulty(64)];
    let b: Vec<Arc<dyn Backend>> = legs.iter().map(|l| l.clone() as _).collect();
    let layout = Layout::Mirror {
        legs: vec![backend(0), backend(1)],
    };
    let v = Volume::with_layout("m", b, &layout, BS as u32, None).unwrap();
    legs[1].set_fail_writes(true);
    assert!(
        v.flush().await.is_err(),
        "a live leg's failing flush counts"
    );
    v.fail_legs(&[1], None).await.unwrap();
    v.flush().await.unwrap();
    v.write(0, pattern(3, 4), true).await.unwrap();
}
