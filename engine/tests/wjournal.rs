//! Write journaling: host writes split into a journal, journal-full faults
//! and swaps, ordered replay with a torn tail ignored.

use std::sync::Arc;

use bytes::Bytes;
use vtgt_engine::wjournal::WriteJournal;
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
    assert_eq!(
        e.admit(1, IoKind::Write, 5, 1).err(),
        Some(FaultReason::JournalFull)
    );
    // The control path swaps in the spare and completes the write.
    v.write(5, Bytes::from(vec![9u8; 512]), false)
        .await
        .unwrap();
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
    v.recycle_journal(sealed[0].clone()).unwrap();
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
