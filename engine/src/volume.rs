//! Volumes: a block address space executed from an extent map.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};

use crate::backend::Backend;
use crate::error::EngineError;
use crate::extent::{ExtentMap, StorageDesc};
use crate::fault::FaultCounters;

#[derive(Debug)]
pub struct Volume {
    name: String,
    block_size: u32,
    nblocks: AtomicU64,
    backends: Vec<Arc<dyn Backend>>,
    map: ArcSwap<ExtentMap>,
    pub counters: FaultCounters,
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

    /// Control-path write: any range inside the volume, across extents.
    pub async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), EngineError> {
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
}
