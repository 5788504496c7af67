//! The fast path: admits plain reads and writes that the published access
//! state allows and that lie inside one extent, and executes them without
//! taking any lock. Anything else is a [`FaultReason`] for the control path.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};

use crate::error::EngineError;
use crate::extent::{ExtentMap, Route, Target};
use crate::fault::FaultReason;
use crate::fpcache::MapCache;
use crate::retired::Retired;
use crate::volume::{backend_of, blocking, read_targets, Volume};
use crate::NexusId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
}

/// What a nexus may do on the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

impl Access {
    pub const ALL: Access = Access {
        read: true,
        write: true,
    };
    pub const NONE: Access = Access {
        read: false,
        write: false,
    };

    fn allows(self, kind: IoKind) -> bool {
        match kind {
            IoKind::Read => self.read,
            IoKind::Write => self.write,
        }
    }

    /// True if `self` allows something `other` does not.
    fn exceeds(self, other: Access) -> bool {
        (self.read && !other.read) || (self.write && !other.write)
    }
}

/// Per-LU access state, published by the control path. The epoch orders
/// publications; `overrides` hold nexuses that differ from `default`.
#[derive(Debug, Clone, Default)]
pub struct AccessState {
    pub epoch: u64,
    pub default: Access,
    pub overrides: HashMap<NexusId, Access>,
}

impl AccessState {
    pub fn open() -> Self {
        Self {
            epoch: 0,
            default: Access::ALL,
            overrides: HashMap::new(),
        }
    }

    pub fn access(&self, nexus: NexusId) -> Access {
        self.overrides.get(&nexus).copied().unwrap_or(self.default)
    }

    /// True if some nexus loses a permission going from `self` to `next`.
    pub fn restricts(&self, next: &AccessState) -> bool {
        if self.default.exceeds(next.default) {
            return true;
        }
        self.overrides
            .keys()
            .chain(next.overrides.keys())
            .any(|n| self.access(*n).exceeds(next.access(*n)))
    }
}

/// A volume as exposed to hosts through one LU or namespace.
#[derive(Debug)]
pub struct Exposure {
    volume: Arc<Volume>,
    access: ArcSwap<AccessState>,
    /// Replaced states admissions may still hold: a permission a
    /// restrictive change removes may have been granted by any of them.
    retired: Retired<AccessState>,
    /// The fast path's bounded cache of map entries.
    cache: MapCache,
}

/// An I/O admitted to the fast path. It holds the access state and map it was
/// admitted under, so a restrictive change can wait for it to drain, and
/// the downstream I/Os the map resolved it to: one for a remap or a stripe
/// unit, one per writable leg for a mirrored write.
pub struct Admission {
    _access: Arc<AccessState>,
    map: Arc<ExtentMap>,
    volume: Arc<Volume>,
    targets: Vec<Target>,
    bytes: usize,
    lba: u64,
    blocks: u64,
}

impl Exposure {
    pub fn new(volume: Arc<Volume>) -> Arc<Self> {
        Self::with_cache(volume, crate::fpcache::DEFAULT_CAPACITY)
    }

    /// An exposure whose fast path caches at most `extents` map entries.
    pub fn with_cache(volume: Arc<Volume>, extents: usize) -> Arc<Self> {
        Arc::new(Self {
            volume,
            access: ArcSwap::from_pointee(AccessState::open()),
            retired: Retired::new(),
            cache: MapCache::new(extents),
        })
    }

    /// Map entries the fast path holds.
    pub fn cached_extents(&self) -> usize {
        self.cache.len()
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    pub fn access_state(&self) -> Arc<AccessState> {
        self.access.load_full()
    }

    /// The fast-path filter. On `Err` the caller faults the I/O to the
    /// control path; the fault is already counted.
    pub fn admit(
        &self,
        nexus: NexusId,
        kind: IoKind,
        lba: u64,
        blocks: u64,
    ) -> Result<Admission, FaultReason> {
        let r = self.filter(nexus, kind, lba, blocks);
        if let Err(reason) = r {
            self.volume.counters.fault(reason);
        }
        r
    }

    fn filter(
        &self,
        nexus: NexusId,
        kind: IoKind,
        lba: u64,
        blocks: u64,
    ) -> Result<Admission, FaultReason> {
        let access = self.access.load_full();
        if !access.access(nexus).allows(kind) {
            return Err(FaultReason::Permission);
        }
        let vol = &self.volume;
        if blocks == 0 || vol.check_range(lba, blocks).is_err() {
            return Err(FaultReason::OutOfRange);
        }
        let map = vol.map();
        let idx = match self.cache.hit(&map, lba) {
            Some(i) => i,
            None => {
                // A miss faults to the control path, which loads the entry.
                let i = self.cache.load(&map, lba).ok_or(FaultReason::NoMapping)?;
                vol.counters.fault(FaultReason::NoMapping);
                i
            }
        };
        let (ext, red) = map.extent_at(idx).ok_or(FaultReason::NoMapping)?;
        if lba + blocks > ext.end() {
            return Err(FaultReason::CrossesBoundary);
        }
        match kind {
            IoKind::Read if red.fault_on_read => return Err(FaultReason::FaultOnRead),
            IoKind::Write if red.fault_on_write => return Err(FaultReason::FaultOnWrite),
            _ => {}
        }
        let pos = ext.pos(lba);
        // One downstream I/O per leg: a stripe-unit crossing goes to the
        // control path, which splits it (see README, "Stripe crossings").
        if !red.desc.within_unit(pos, blocks) {
            return Err(FaultReason::CrossesBoundary);
        }
        let route = match kind {
            IoKind::Read => Route::Read(vol.next_read_pick()),
            IoKind::Write => Route::Write,
        };
        let bs = vol.block_size() as u64;
        let mut targets = Vec::with_capacity(2);
        if !red
            .desc
            .resolve(pos, blocks, 0, bs, route, None, &mut targets)
        {
            return Err(FaultReason::NoMapping);
        }
        if targets.iter().any(|t| t.backend >= vol.backends().len()) {
            return Err(FaultReason::NoMapping);
        }
        Ok(Admission {
            _access: access,
            map,
            volume: vol.clone(),
            targets,
            bytes: (blocks * bs) as usize,
            lba,
            blocks,
        })
    }

    /// Publishes a new access state. When it removes a permission, waits
    /// until every fast-path I/O admitted under the older state has finished.
    pub async fn publish(&self, mut next: AccessState) {
        let old = self.access.load_full();
        next.epoch = old.epoch + 1;
        let restrictive = old.restricts(&next);
        let prev = self.access.swap(Arc::new(next));
        drop(old);
        self.retired.retire(prev);
        if restrictive {
            // Admissions hold a clone of the state they were admitted under.
            self.retired.drain().await;
        }
    }
}

impl Admission {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The single target covering the whole I/O, when there is just one.
    fn whole_target(&self) -> Option<&Target> {
        match self.targets.as_slice() {
            [t] if t.buf_block == 0 && t.blocks == self.blocks => Some(t),
            _ => None,
        }
    }

    pub async fn read(self) -> Result<Bytes, EngineError> {
        let bs = self.volume.block_size() as u64;
        let (vol, lba, blocks) = (self.volume.clone(), self.lba, self.blocks);
        let mut buf = BytesMut::zeroed(self.bytes);
        // A page-cache hit cannot block: serve it here and skip the hop to
        // the blocking pool, which costs more than the copy.
        if let Some(t) = self.whole_target() {
            let backends = self.volume.backends();
            if backend_of(&backends, t)?.try_read_nowait(t.offset, &mut buf)? {
                self.volume.counters.fast_path_hit();
                return Ok(buf.freeze());
            }
        }
        let r = blocking(move || {
            read_targets(&self.volume.backends(), &self.targets, &mut buf, bs)?;
            self.volume.counters.fast_path_hit();
            Ok(buf)
        })
        .await;
        match r {
            Ok(b) => Ok(b.freeze()),
            // A mirror leg failed the read: the control path tries the others.
            Err(_) if vol.is_mirrored() => {
                vol.counters.fault(FaultReason::BackendError);
                vol.read(lba, blocks).await
            }
            Err(e) => Err(e),
        }
    }

    pub async fn write(self, data: Bytes, fua: bool) -> Result<(), EngineError> {
        if data.len() != self.bytes {
            return Err(EngineError::BadLength {
                got: data.len(),
                expected: self.bytes,
            });
        }
        // Unmirrored: waits only while an atomic command holds an
        // overlapping range, otherwise an atomic counter. Mirrored: exclusive
        // over the range, so overlapping writes reach every leg in one order.
        let guard = self.volume.write_lock(self.lba, self.blocks).await;
        if self.volume.journal_splits(data.len()) {
            // Too long for one journal entry run: the control path writes
            // it in pieces.
            let Admission { volume, lba, .. } = self;
            let r = volume.journaled_write(lba, data, fua).await;
            drop(guard);
            return r;
        }
        // Write splitting into the journal first. A full journal faults to
        // the control path inside (counted there, once), which swaps it.
        let _pin = self.volume.journal_append(self.lba, &data, fua).await?;
        // One plain target without FUA: what the page cache takes without
        // blocking is written here; only a remainder goes to the pool.
        if !fua && !self.volume.is_mirrored() {
            if let Some(t) = self.whole_target() {
                let backends = self.volume.backends();
                let b = backend_of(&backends, t)?.clone();
                let offset = t.offset;
                let done = b.try_write_nowait(offset, &data)?;
                if done < data.len() {
                    blocking(move || Ok(b.write_at(offset + done as u64, &data[done..], false)?))
                        .await?;
                }
                self.volume.counters.fast_path_hit();
                drop(guard);
                return Ok(());
            }
        }
        let Admission {
            map,
            volume,
            targets,
            lba,
            blocks,
            ..
        } = self;
        let (failures, tag) = {
            let io = volume.host_io(&map, lba, blocks);
            // A mirrored write whose stores all take buffered writes without
            // waiting is done here, like the plain case above.
            let inline = if fua {
                None
            } else {
                io.try_apply_inline(&targets, &data)
            };
            match inline {
                Some(done) => done,
                None => blocking(move || Ok(io.apply(&targets, Some(&data), fua))).await?,
            }
        };
        if failures.is_empty() {
            volume.counters.fast_path_hit();
        }
        volume.finish_tag(tag);
        // Drop the map before the control path runs: it may wait for
        // holders of older maps to drain.
        drop(map);
        let r = volume.complete_write(lba, blocks, failures).await;
        drop(guard);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use std::time::Duration;

    fn exposure() -> Arc<Exposure> {
        Exposure::new(Volume::simple(
            "fp",
            Arc::new(MemBackend::new(16 * 512).unwrap()),
            512,
        ))
    }

    /// A write admitted under an older state than the one a restriction
    /// replaces (a non-restrictive change came in between) is still waited
    /// for: the permission it was admitted with may be the one removed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restriction_waits_for_admissions_under_any_older_state() {
        let e = exposure();
        let held = e.admit(1, IoKind::Write, 0, 1).unwrap();
        // Grants something to nexus 2: not restrictive, returns at once.
        let mut granted = AccessState::open();
        granted.overrides.insert(2, Access::ALL);
        e.publish(granted).await;
        // Takes nexus 1's writes away.
        let mut denied = AccessState::open();
        denied.overrides.insert(
            1,
            Access {
                read: true,
                write: false,
            },
        );
        let e2 = e.clone();
        let restrict = tokio::spawn(async move { e2.publish(denied).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !restrict.is_finished(),
            "the restriction returned with a write admitted before it in flight"
        );
        held.write(Bytes::from(vec![1u8; 512]), false)
            .await
            .unwrap();
        restrict.await.unwrap();
        assert!(e.admit(1, IoKind::Write, 0, 1).is_err());
    }

    #[tokio::test]
    async fn admits_and_faults() {
        let e = exposure();
        let a = e.admit(1, IoKind::Write, 0, 2).unwrap();
        a.write(Bytes::from(vec![5u8; 1024]), false).await.unwrap();
        let d = e
            .admit(1, IoKind::Read, 1, 1)
            .unwrap()
            .read()
            .await
            .unwrap();
        assert!(d.iter().all(|&b| b == 5));
        assert_eq!(
            e.admit(1, IoKind::Read, 15, 2).err(),
            Some(FaultReason::OutOfRange)
        );
        let mut st = AccessState::open();
        st.overrides.insert(
            7,
            Access {
                read: true,
                write: false,
            },
        );
        e.publish(st).await;
        assert_eq!(
            e.admit(7, IoKind::Write, 0, 1).err(),
            Some(FaultReason::Permission)
        );
        assert!(e.admit(7, IoKind::Read, 0, 1).is_ok());
        assert!(e.admit(8, IoKind::Write, 0, 1).is_ok());
        assert_eq!(e.volume().counters.count(FaultReason::Permission), 1);
    }

    #[tokio::test]
    async fn restrictive_publish_waits_for_drain() {
        let e = exposure();
        let held = e.admit(1, IoKind::Read, 0, 1).unwrap();
        let mut st = AccessState::open();
        st.default = Access::NONE;
        let e2 = e.clone();
        let pub_task = tokio::spawn(async move { e2.publish(st).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !pub_task.is_finished(),
            "publish must wait for the held I/O"
        );
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), pub_task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            e.admit(1, IoKind::Read, 0, 1).err(),
            Some(FaultReason::Permission)
        );
    }
}
