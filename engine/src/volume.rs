//! Volumes: a block address space executed from an extent map.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};

use crate::backend::Backend;
use crate::error::EngineError;
use crate::extent::{ExtentMap, StorageDesc};
use crate::fault::FaultCounters;
use crate::journal::Journal;
use crate::rangelock::{RangeGuard, RangeLocks};

#[derive(Debug)]
pub struct Volume {
    name: String,
    block_size: u32,
    nblocks: AtomicU64,
    backends: Vec<Arc<dyn Backend>>,
    map: ArcSwap<ExtentMap>,
    pub counters: FaultCounters,
    /// Every write holds its range here; atomic commands hold it exclusively.
    locks: Arc<RangeLocks>,
    /// Write-ahead journal for atomic writes, when the volume has one.
    journal: Arc<parking_lot::Mutex<Option<Journal>>>,
}

/// One piece of an I/O resolved through the map.
struct Piece {
    backend: Arc<dyn Backend>,
    offset: u64,
    bytes: usize,
}

impl Volume {
    /// A volume that is one backend, remapped 1:1.
    pub fn simple(name: &str, backend: Arc<dyn Backend>, block_size: u32) -> Arc<Self> {
        let nblocks = backend.len() / block_size as u64;
        Arc::new(Self {
            name: name.to_string(),
            block_size,
            nblocks: AtomicU64::new(nblocks),
            map: ArcSwap::from_pointee(ExtentMap::single(
                nblocks,
                StorageDesc::Remap {
                    backend: 0,
                    offset: 0,
                },
            )),
            backends: vec![backend],
            counters: FaultCounters::default(),
            locks: RangeLocks::new(),
            journal: Arc::new(parking_lot::Mutex::new(None)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.nblocks.load(Ordering::Acquire)
    }

    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    pub fn map(&self) -> Arc<ExtentMap> {
        self.map.load_full()
    }

    pub(crate) fn map_guard(&self) -> arc_swap::Guard<Arc<ExtentMap>> {
        self.map.load()
    }

    /// A stable 64-bit identity derived from the volume's name, used for
    /// device designators that must survive restarts.
    pub fn stable_id(&self) -> u64 {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.name.as_bytes() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    pub fn check_range(&self, lba: u64, blocks: u64) -> Result<(), EngineError> {
        let capacity = self.num_blocks();
        match lba.checked_add(blocks) {
            Some(end) if end <= capacity => Ok(()),
            _ => Err(EngineError::OutOfRange {
                lba,
                blocks,
                capacity,
            }),
        }
    }

    fn resolve(&self, lba: u64, blocks: u64) -> Result<Vec<Piece>, EngineError> {
        self.check_range(lba, blocks)?;
        let map = self.map.load();
        let bs = self.block_size as u64;
        let mut out = Vec::new();
        let mut cur = lba;
        let end = lba + blocks;
        while cur < end {
            let (ext, red) = map.lookup(cur).ok_or(EngineError::Unmapped(cur))?;
            let n = ext.end().min(end) - cur;
            match &red.desc {
                StorageDesc::Remap { backend, offset } => {
                    let b = self
                        .backends
                        .get(*backend)
                        .ok_or(EngineError::Unmapped(cur))?;
                    out.push(Piece {
                        backend: b.clone(),
                        offset: offset + (cur - ext.start) * bs,
                        bytes: (n * bs) as usize,
                    });
                }
            }
            cur += n;
        }
        Ok(out)
    }

    /// Control-path read: any range inside the volume, across extents.
    pub async fn read(&self, lba: u64, blocks: u64) -> Result<Bytes, EngineError> {
        let pieces = self.resolve(lba, blocks)?;
        let total = (blocks * self.block_size as u64) as usize;
        let buf = blocking(move || {
            let mut buf = BytesMut::zeroed(total);
            let mut at = 0usize;
            for p in pieces {
                p.backend.read_at(p.offset, &mut buf[at..at + p.bytes])?;
                at += p.bytes;
            }
            Ok(buf)
        })
        .await?;
        Ok(buf.freeze())
    }

    /// The volume's LBA range locks.
    pub fn locks(&self) -> &Arc<RangeLocks> {
        &self.locks
    }

    /// Locks `blocks` at `lba` exclusively: overlapping writes wait until the
    /// guard is dropped. Use [`Volume::write_locked`] to write under it.
    pub async fn lock_exclusive(&self, lba: u64, blocks: u64) -> RangeGuard {
        self.locks.exclusive(lba, blocks).await
    }

    /// Control-path write: any range inside the volume, across extents.
    pub async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), EngineError> {
        let blocks = data.len() as u64 / self.block_size as u64;
        let _g = self.locks.write(lba, blocks).await;
        self.write_unlocked(lba, data, fua).await
    }

    /// A write by the holder of an exclusive lock over its range.
    pub async fn write_locked(
        &self,
        guard: &RangeGuard,
        lba: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), EngineError> {
        let blocks = data.len() as u64 / self.block_size as u64;
        if !guard.covers(lba, blocks) {
            return Err(EngineError::Io(std::io::Error::other(
                "write outside the held range lock",
            )));
        }
        self.write_unlocked(lba, data, fua).await
    }

    /// A write no other write can tear, not even a crash: journaled first
    /// when the volume has a journal, and exclusive against other writes.
    pub async fn write_atomic(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), EngineError> {
        self.write_atomic_inner(lba, data, fua, false).await
    }

    async fn write_atomic_inner(
        &self,
        lba: u64,
        data: Bytes,
        fua: bool,
        crash_after_journal: bool,
    ) -> Result<(), EngineError> {
        let blocks = data.len() as u64 / self.block_size as u64;
        self.check_range(lba, blocks)?;
        let g = self.lock_exclusive(lba, blocks).await;
        let journal = self.journal.clone();
        let (d, journaled) = {
            let d = data.clone();
            blocking(move || {
                let mut j = journal.lock();
                match j.as_mut() {
                    Some(j) => {
                        j.append(lba, &d)?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            })
            .await
            .map(|j| (data, j))?
        };
        if crash_after_journal {
            return Ok(());
        }
        // Once journaled the in-place write must be durable before retiring.
        // If it fails the entry stays (and further atomic writes are refused):
        // a restart replays it over whatever part did land, so the blocks
        // still end up all new.
        self.write_locked(&g, lba, d, fua || journaled).await?;
        if journaled {
            let journal = self.journal.clone();
            blocking(move || {
                if let Some(j) = journal.lock().as_mut() {
                    j.retire()?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Attaches the write-ahead journal at `path`, first replaying a complete
    /// entry a crash left behind.
    pub async fn attach_journal(&self, path: &std::path::Path) -> Result<(), EngineError> {
        let p = path.to_path_buf();
        let (mut j, pending) = blocking(move || Ok(Journal::open(&p)?)).await?;
        if let Some(e) = pending {
            tracing::info!(volume = %self.name, lba = e.lba, seq = e.seq, "replaying journaled atomic write");
            self.write(e.lba, Bytes::from(e.data), true).await?;
            j = blocking(move || {
                j.retire()?;
                Ok(j)
            })
            .await?;
        }
        *self.journal.lock() = Some(j);
        Ok(())
    }

    /// Which parts of `blocks` at `lba` are mapped (hold data) and which are
    /// deallocated, as `(lba, blocks, mapped)` runs in order. A block is
    /// mapped if any byte of it is.
    pub async fn allocated(
        &self,
        lba: u64,
        blocks: u64,
    ) -> Result<Vec<(u64, u64, bool)>, EngineError> {
        let pieces = self.resolve(lba, blocks)?;
        let bs = self.block_size as u64;
        blocking(move || {
            let mut out: Vec<(u64, u64, bool)> = Vec::new();
            let mut at = lba;
            for p in pieces {
                for (r, mapped) in p.backend.allocated(p.offset, p.bytes as u64)? {
                    let s = at + (r.start - p.offset) / bs;
                    let e = at + (r.end - p.offset).div_ceil(bs);
                    push_run(&mut out, s, e, mapped);
                }
                at += p.bytes as u64 / bs;
            }
            Ok(out)
        })
        .await
    }

    async fn write_unlocked(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), EngineError> {
        let bs = self.block_size as u64;
        if !(data.len() as u64).is_multiple_of(bs) {
            return Err(EngineError::BadLength {
                got: data.len(),
                expected: (data.len() as u64 / bs * bs) as usize,
            });
        }
        let pieces = self.resolve(lba, data.len() as u64 / bs)?;
        blocking(move || {
            let mut at = 0usize;
            for p in pieces {
                p.backend.write_at(p.offset, &data[at..at + p.bytes], fua)?;
                at += p.bytes;
            }
            Ok(())
        })
        .await
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<(), EngineError> {
        let backends = self.backends.clone();
        blocking(move || {
            for b in backends {
                b.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Deallocates blocks; they read back as zeros.
    pub async fn discard(&self, lba: u64, blocks: u64) -> Result<(), EngineError> {
        let _g = self.locks.write(lba, blocks).await;
        let pieces = self.resolve(lba, blocks)?;
        blocking(move || {
            for p in pieces {
                p.backend.discard(p.offset, p.bytes as u64)?;
            }
            Ok(())
        })
        .await
    }

    /// Grows a single-backend volume to `nblocks`.
    pub async fn grow(&self, nblocks: u64) -> Result<(), EngineError> {
        if nblocks <= self.num_blocks() || self.backends.len() != 1 {
            return Err(EngineError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "volume can only grow, and only when it has one backend",
            )));
        }
        let b = self.backends[0].clone();
        let bytes = nblocks * self.block_size as u64;
        blocking(move || Ok(b.grow(bytes)?)).await?;
        self.map.store(Arc::new(self.map.load().grown(nblocks)));
        self.nblocks.store(nblocks, Ordering::Release);
        Ok(())
    }
}

/// Appends a block run, merging with the previous one and letting a mapped
/// partial block win over a hole that shares it.
fn push_run(out: &mut Vec<(u64, u64, bool)>, start: u64, end: u64, mapped: bool) {
    let mut start = start;
    if let Some(last) = out.last_mut() {
        let last_end = last.0 + last.1;
        if start < last_end {
            if mapped && !last.2 {
                last.1 = start - last.0;
                if last.1 == 0 {
                    out.pop();
                }
            } else {
                start = last_end;
            }
        }
    }
    if start >= end {
        return;
    }
    match out.last_mut() {
        Some(last) if last.2 == mapped && last.0 + last.1 == start => last.1 += end - start,
        _ => out.push((start, end - start, mapped)),
    }
}

/// Runs blocking backend work off the async workers.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, EngineError>
where
    F: FnOnce() -> Result<T, EngineError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(EngineError::Io(std::io::Error::other(format!(
            "I/O worker failed: {e}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    #[tokio::test]
    async fn read_write_range_checks() {
        let v = Volume::simple("t", Arc::new(MemBackend::new(64 * 512).unwrap()), 512);
        assert_eq!(v.num_blocks(), 64);
        v.write(3, Bytes::from(vec![9u8; 1024]), false)
            .await
            .unwrap();
        let r = v.read(3, 2).await.unwrap();
        assert!(r.iter().all(|&b| b == 9));
        assert!(matches!(
            v.read(63, 2).await,
            Err(EngineError::OutOfRange { .. })
        ));
        assert!(v.read(u64::MAX, 2).await.is_err());
        v.discard(3, 1).await.unwrap();
        assert!(v.read(3, 1).await.unwrap().iter().all(|&b| b == 0));
        v.grow(128).await.unwrap();
        assert_eq!(v.num_blocks(), 128);
        v.write(127, Bytes::from(vec![1u8; 512]), true)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn atomic_write_replays_after_crash_between_journal_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("v.img");
        let jp = dir.path().join("v.journal");
        let open = || {
            Volume::simple(
                "j",
                Arc::new(crate::backend::FileBackend::open_or_create(&img, 64 * 512).unwrap()),
                512,
            )
        };
        let v = open();
        v.attach_journal(&jp).await.unwrap();
        v.write_atomic(2, Bytes::from(vec![3u8; 1024]), false)
            .await
            .unwrap();
        assert!(v.read(2, 2).await.unwrap().iter().all(|&b| b == 3));
        // Injected crash: journaled, never written in place.
        v.write_atomic_inner(10, Bytes::from(vec![0x5A; 2048]), false, true)
            .await
            .unwrap();
        assert!(v.read(10, 4).await.unwrap().iter().all(|&b| b == 0));
        drop(v);
        let v = open();
        v.attach_journal(&jp).await.unwrap();
        assert!(v.read(10, 4).await.unwrap().iter().all(|&b| b == 0x5A));
        // Replayed once: the journal is empty now, a later write sticks.
        v.write(10, Bytes::from(vec![1u8; 512]), false)
            .await
            .unwrap();
        drop(v);
        let v = open();
        v.attach_journal(&jp).await.unwrap();
        assert!(v.read(10, 1).await.unwrap().iter().all(|&b| b == 1));
    }

    #[tokio::test]
    async fn allocation_runs_follow_holes() {
        let dir = tempfile::tempdir().unwrap();
        let b = crate::backend::FileBackend::open_or_create(&dir.path().join("a.img"), 1 << 20)
            .unwrap();
        let v = Volume::simple("a", Arc::new(b), 512);
        // 64 KiB of data at LBA 256; everything else a hole.
        v.write(256, Bytes::from(vec![1u8; 65536]), false)
            .await
            .unwrap();
        let runs = v.allocated(0, 2048).await.unwrap();
        let mapped: Vec<_> = runs.iter().filter(|r| r.2).collect();
        assert_eq!(mapped.len(), 1);
        assert!(mapped[0].0 <= 256 && mapped[0].0 + mapped[0].1 >= 384);
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 2048);
        v.discard(0, 2048).await.unwrap();
        assert!(v.allocated(0, 2048).await.unwrap().iter().all(|r| !r.2));
    }
}
