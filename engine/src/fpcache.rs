//! The fast path's own bounded cache of extent-map entries. A hit is a
//! binary search in an immutable snapshot plus one relaxed store to mark
//! the entry used: no lock. A miss is a fault: the control path loads the
//! entry from the volume's map (its metadata), evicting by CLOCK (the
//! usual approximation of least-recently-used) when the cache is full, and
//! publishes a new snapshot. A snapshot names the map it was built from;
//! once the control path publishes a new map, every lookup misses until
//! the next load repopulates the cache from the new map.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;

use crate::extent::ExtentMap;

/// Entries per exposure unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    start: u64,
    end: u64,
    /// Index of the extent in the source map.
    idx: usize,
}

#[derive(Debug)]
struct Snapshot {
    /// Held weakly: the allocation stays, so the address cannot be reused
    /// by a newer map, and the map's drain (strong count) is not held up.
    source: Weak<ExtentMap>,
    entries: Vec<Entry>,
    used: Box<[AtomicBool]>,
}

#[derive(Debug)]
pub struct MapCache {
    snap: ArcSwap<Snapshot>,
    capacity: usize,
    /// Serialises loads (the control path's side).
    load: parking_lot::Mutex<()>,
    hand: AtomicUsize,
}

impl MapCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            snap: ArcSwap::from_pointee(Snapshot {
                source: Weak::new(),
                entries: Vec::new(),
                used: Box::new([]),
            }),
            capacity: capacity.max(1),
            load: parking_lot::Mutex::new(()),
            hand: AtomicUsize::new(0),
        }
    }

    /// Fast path: the index in `map` of the extent holding `lba`, if the
    /// cache holds it for this very map.
    pub fn hit(&self, map: &Arc<ExtentMap>, lba: u64) -> Option<usize> {
        let s = self.snap.load();
        if !std::ptr::eq(s.source.as_ptr(), Arc::as_ptr(map)) {
            return None;
        }
        let i = s.entries.partition_point(|e| e.end <= lba);
        let e = s.entries.get(i).filter(|e| e.start <= lba)?;
        if let Some(u) = s.used.get(i) {
            u.store(true, Ordering::Relaxed);
        }
        Some(e.idx)
    }

    /// Control path: loads the extent holding `lba` from `map`, keeping
    /// what the cache held (looked up again when `map` is newer than the
    /// snapshot). Returns its index in `map`, None if `map` has no extent
    /// there.
    pub fn load(&self, map: &Arc<ExtentMap>, lba: u64) -> Option<usize> {
        let _g = self.load.lock();
        let want = map.lookup_index(lba)?;
        let cur = self.snap.load_full();
        let same = std::ptr::eq(cur.source.as_ptr(), Arc::as_ptr(map));
        let mut keep: Vec<(Entry, bool)> = Vec::with_capacity(cur.entries.len() + 1);
        for (e, u) in cur.entries.iter().zip(cur.used.iter()) {
            let used = u.load(Ordering::Relaxed);
            let idx = if same {
                Some(e.idx)
            } else {
                map.lookup_index(e.start)
            };
            if let Some(idx) = idx {
                if keep.last().is_none_or(|k| k.0.idx != idx) {
                    keep.push((entry(map, idx)?, used));
                }
            }
        }
        if let Err(at) = keep.binary_search_by_key(&want, |k| k.0.idx) {
            while keep.len() >= self.capacity {
                self.evict(&mut keep);
            }
            let at = keep.partition_point(|k| k.0.idx < want).min(at);
            keep.insert(at, (entry(map, want)?, true));
        } else if same {
            return Some(want);
        }
        let (entries, used): (Vec<Entry>, Vec<AtomicBool>) = keep
            .into_iter()
            .map(|(e, u)| (e, AtomicBool::new(u)))
            .unzip();
        self.snap.store(Arc::new(Snapshot {
            source: Arc::downgrade(map),
            entries,
            used: used.into_boxed_slice(),
        }));
        Some(want)
    }

    /// CLOCK: the hand clears used marks until it finds an unmarked entry,
    /// and evicts that one.
    fn evict(&self, keep: &mut Vec<(Entry, bool)>) {
        let mut hand = self.hand.load(Ordering::Relaxed) % keep.len().max(1);
        // Two sweeps at most: the first clears every mark.
        for _ in 0..2 * keep.len() {
            if !keep[hand].1 {
                break;
            }
            keep[hand].1 = false;
            hand = (hand + 1) % keep.len();
        }
        keep.remove(hand);
        self.hand.store(hand, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.snap.load().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn entry(map: &ExtentMap, idx: usize) -> Option<Entry> {
    let e = map.extents().get(idx)?;
    Some(Entry {
        start: e.start,
        end: e.end(),
        idx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::StorageDesc;

    fn map(parts: u64) -> Arc<ExtentMap> {
        let desc = StorageDesc::Remap {
            backend: 0,
            offset: 0,
        };
        // `parts` extents of 8 blocks each.
        Arc::new(ExtentMap::concat(
            (0..parts).map(|_| (8, desc.clone())).collect(),
            8,
        ))
    }

    #[test]
    fn misses_load_hits_stay_and_clock_evicts_the_unused() {
        let m = map(16);
        let c = MapCache::new(4);
        assert_eq!(c.hit(&m, 0), None);
        for part in 0..4u64 {
            assert_eq!(c.load(&m, part * 8 + 3), Some(part as usize));
        }
        assert_eq!(c.len(), 4);
        // The first eviction clears every mark and takes part 0; then 1, 3
        // and 4 are used again and 2 is not.
        assert_eq!(c.load(&m, 4 * 8), Some(4));
        for part in [1u64, 3, 4] {
            assert_eq!(c.hit(&m, part * 8), Some(part as usize));
        }
        assert_eq!(c.load(&m, 5 * 8), Some(5));
        assert_eq!(c.len(), 4);
        for part in [1u64, 3, 4, 5] {
            assert_eq!(c.hit(&m, part * 8 + 7), Some(part as usize), "part {part}");
        }
        assert_eq!(c.hit(&m, 2 * 8), None, "the unused entry was evicted");
        assert_eq!(c.load(&m, 1000), None, "beyond the map");
    }

    #[test]
    fn a_new_map_invalidates_and_the_next_load_repopulates() {
        let old = map(8);
        let c = MapCache::new(8);
        for part in 0..3u64 {
            c.load(&old, part * 8);
        }
        let new = map(8);
        assert_eq!(c.hit(&new, 0), None, "built from another map");
        assert_eq!(c.load(&new, 5 * 8), Some(5));
        for part in [0u64, 1, 2, 5] {
            assert_eq!(c.hit(&new, part * 8), Some(part as usize));
        }
        assert_eq!(c.hit(&old, 0), None, "the old map no longer hits");
    }
}
