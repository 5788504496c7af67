//! Write journaling: host writes split into a journal, journal-full faults
//! and swaps, ordered replay with a torn tail ignored.

use std::sync::Arc;

use bytes::Bytes;
use vtgt_engine::wjournal::{JOp, WriteJournal};
use vtgt_engine::{Backend, Exposure, FaultReason, IoKind, MemBackend, Volume};

fn mem(bytes: u64) -> Arc<dyn Backend> {
    Arc::new(MemBackend::new(bytes).unwrap())
}

#[tokio::test]
async fn journal_full_swaps_and_sealed_journal_replays_in_order() {
    let v = Volume::simple("j", mem(64 * 512), 512);
    // 512 + 4 KiB: four 512-byte entries (1 KiB each with header) fit.
    let stores = [mem(4608), mem(4608)];
    let js: Vec<Arc<WriteJournal>> = stores
        .iter()
        .map(|s| Arc::new(WriteJournal::open(s.clone()).unwrap()))
        .collect();
    v.attach_write_journals(js.clone());
    let e = Exposure::new(v.clone());
    // Overlapping writes to LBA 3: the last one must win on replay.
    for i in 0..4u8 {
        e.admit(1, IoKind::Write, 3, 1)
            .unwrap()
            .write(Bytes::from(vec![i + 1; 512]), false)
            .await
            .unwrap();
    }
    assert_eq!(v.counters.count(FaultReason::JournalFull), 0);
    // The journal is full: the write faults to the control path, which
    // swaps in the spare and completes it. One fault for one write.
    e.admit(1, IoKind::Write, 5, 1)
        .unwrap()
        .write(Bytes::from(vec![9u8; 512]), false)
        .await
        .unwrap();
    assert_eq!(v.counters.count(FaultReason::JournalFull), 1);
    let sealed = v.take_sealed_journals();
    assert_eq!(sealed.len(), 1);
    assert!(Arc::ptr_eq(&sealed[0], &js[0]));
    assert_eq!(
        js[1].replay().unwrap().len(),
        1,
        "the new write went to the spare"
    );
    // A copy agent applies the sealed journal to a replica.
    let replica = Volume::simple("r", mem(64 * 512), 512);
    assert_eq!(replica.replay_journal(sealed[0].clone()).await.unwrap(), 4);
    assert!(replica.read(3, 1).await.unwrap().iter().all(|&b| b == 4));
    v.recycle_journal(sealed[0].clone()).await.unwrap();
    assert!(js[0].replay().unwrap().is_empty());
    // With both journals full and nothing recycled... one is spare again.
    for i in 0..7u64 {
        v.write(10 + i, Bytes::from(vec![7u8; 512]), false)
            .await
            .unwrap();
    }
    assert!(v
        .write(30, Bytes::from(vec![1u8; 512]), false)
        .await
        .is_err());
    assert!(v.counters.count(FaultReason::JournalFull) >= 3);
}

#[tokio::test]
async fn crash_replay_applies_complete_entries_and_ignores_torn_tail() {
    let store = mem(64 * 1024);
    let j = Arc::new(WriteJournal::open(store.clone()).unwrap());
    let v = Volume::simple("j", mem(64 * 512), 512);
    v.attach_write_journals(vec![j.clone()]);
    for i in 0..5u64 {
        v.write(i, Bytes::from(vec![i as u8 + 1; 1024]), false)
            .await
            .unwrap();
    }
    // Tear the fifth entry (1024 + 48 bytes -> 1536 per entry, at 512).
    store
        .write_at(512 + 4 * 1536 + 600, &[0xEE; 8], false)
        .unwrap();
    // "Crash": a fresh volume (the in-place writes were lost) replays.
    let j2 = Arc::new(WriteJournal::open(store).unwrap());
    let fresh = Volume::simple("f", mem(64 * 512), 512);
    assert_eq!(fresh.replay_journal(j2).await.unwrap(), 4);
    let got = fresh.read(0, 6).await.unwrap();
    // Entries apply in order: block i+1 is overwritten by entry i+1.
    for (blk, want) in [(0u64, 1u8), (1, 2), (2, 3), (3, 4), (4, 4), (5, 0)] {
        let b = &got[(blk * 512) as usize..(blk * 512 + 512) as usize];
        assert!(b.iter().all(|&x| x == want), "block {blk}");
    }
}

fn block(v: u8) -> Bytes {
    Bytes::from(vec![v; 512])
}

#[tokio::test]
async fn open_replays_every_journal_in_sequence_order_then_empties_them() {
    let stores = [mem(512 + 4096), mem(512 + 4096)];
    let js: Vec<Arc<WriteJournal>> = stores
        .iter()
        .map(|s| Arc::new(WriteJournal::open(s.clone()).unwrap()))
        .collect();
    let v = Volume::simple("j", mem(64 * 512), 512);
    v.attach_write_journals(js.clone());
    // Versions 1..=6 of LBA 3: four fill the first journal, which is then
    // sealed (no copy agent takes it), the rest go to the second.
    for i in 1..=6u8 {
        v.write(3, block(i), false).await.unwrap();
    }
    v.write(9, Bytes::from(vec![7u8; 1024]), false)
        .await
        .unwrap();
    // A discard after the write: replay must not bring the data back.
    v.discard(9, 1).await.unwrap();
    assert_eq!(v.take_sealed_journals().len(), 1);
    assert!(matches!(
        js[1].replay().unwrap().last().map(|e| &e.op),
        Some(JOp::Discard(512))
    ));

    // "Crash": the in-place writes are lost; reopen with the journals in
    // the other order, so only sequence numbers can order them.
    let fresh = Volume::simple("f", mem(64 * 512), 512);
    let reopened: Vec<Arc<WriteJournal>> = stores
        .iter()
        .rev()
        .map(|s| Arc::new(WriteJournal::open(s.clone()).unwrap()))
        .collect();
    assert_eq!(
        fresh.open_write_journals(reopened.clone()).await.unwrap(),
        8
    );
    assert!(
        fresh.read(3, 1).await.unwrap().iter().all(|&b| b == 6),
        "last version wins"
    );
    assert!(
        fresh.read(9, 1).await.unwrap().iter().all(|&b| b == 0),
        "discard replayed"
    );
    assert!(fresh.read(10, 1).await.unwrap().iter().all(|&b| b == 7));
    let st = fresh.journal_status();
    assert_eq!((st.journals, st.replayed_at_open, st.used_bytes), (2, 8, 0));
    assert!(st.auto_recycle);
    for j in &reopened {
        assert!(j.replay().unwrap().is_empty(), "replayed entries are gone");
    }
}

#[tokio::test]
async fn sustained_concurrent_writes_recycle_and_never_run_out() {
    // Two journals of eight 512-byte entries each.
    let js: Vec<Arc<WriteJournal>> = (0..2)
        .map(|_| Arc::new(WriteJournal::open(mem(512 + 8 * 1024)).unwrap()))
        .collect();
    let v = Volume::simple("s", mem(256 * 512), 512);
    assert_eq!(v.open_write_journals(js).await.unwrap(), 0);
    let e = Exposure::new(v.clone());
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let lba = t * 32 + i % 32;
                let d = Bytes::from(vec![(t * 40 + i) as u8; 512]);
                match e.admit(1, IoKind::Write, lba, 1) {
                    Ok(a) => a.write(d, i % 5 == 0).await.unwrap(),
                    Err(_) => e.volume().write(lba, d, false).await.unwrap(),
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(30), t)
            .await
            .expect("writers stalled")
            .unwrap();
    }
    // Each task's last pass wrote i = 8..40 over its 32 blocks.
    for t in 0..8u64 {
        for i in 8..40u64 {
            let lba = t * 32 + i % 32;
            let got = v.read(lba, 1).await.unwrap();
            assert!(got.iter().all(|&b| b == (t * 40 + i) as u8), "lba {lba}");
        }
    }
    // Waits for a background recycling that may be running.
    v.recycle_sealed().await.unwrap();
    let st = v.journal_status();
    // 320 writes through 16 entries of journal: many swaps and recycles.
    assert!(st.recycled >= 10, "{st:?}");
    assert!(v.counters.count(FaultReason::JournalFull) >= 10);
    assert_eq!((st.sealed, st.spares), (0, 1), "{st:?}");
}

#[tokio::test]
async fn one_journal_is_refused_and_writes_longer_than_a_journal_go_in_pieces() {
    let v = Volume::simple("o", mem(256 * 512), 512);
    let one = vec![Arc::new(WriteJournal::open(mem(512 + 4096)).unwrap())];
    assert!(v.open_write_journals(one).await.is_err());
    let stores = [mem(512 + 4096), mem(512 + 4096)];
    let js: Vec<Arc<WriteJournal>> = stores
        .iter()
        .map(|s| Arc::new(WriteJournal::open(s.clone()).unwrap()))
        .collect();
    v.open_write_journals(js).await.unwrap();
    // 64 KiB through 4 KiB journals: 2 KiB pieces, each journaled and
    // written in place before the next, with swaps and recycling between.
    let data: Vec<u8> = (0..65536u32).map(|i| (i / 512) as u8 ^ 0x5A).collect();
    let e = Exposure::new(v.clone());
    e.admit(1, IoKind::Write, 8, 128)
        .unwrap()
        .write(Bytes::from(data.clone()), true)
        .await
        .unwrap();
    assert_eq!(&v.read(8, 128).await.unwrap()[..], &data[..]);
    assert!(v.counters.count(FaultReason::JournalFull) >= 10);
    // The active journal holds the last piece: a crash now replays it.
    let held: u64 = stores
        .iter()
        .flat_map(|s| WriteJournal::open(s.clone()).unwrap().replay().unwrap())
        .map(|e| e.len())
        .sum();
    assert!((2048..=4096).contains(&held), "{held}");
}
