//! Live migration with a copy barrier. The map holds at most three kinds of
//! extents: copied (new backend, read-write), the barrier unit being copied
//! (old location, fault-on-write: writes go to the control path, where they
//! wait on the unit's range lock), and not yet copied (old location,
//! read-write). Advancing: set the barrier, drain, lock, copy, point the
//! unit at the new backend. Done when everything is copied; the old
//! backends are then released.

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::EngineError;
use crate::extent::{Extent, ExtentMap, Redirect, Route, StorageDesc};

use super::{blocking, invalid, read_targets, Volume};

/// Copy unit: a 10 KiB host write falls inside one.
pub const MIGRATE_UNIT_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    pub active: bool,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Most extents the map held during the migration.
    pub max_extents: usize,
}

/// The map with `[0, done)` on the new backend, `barrier` blocks after it
/// fault-on-write, and the rest as in `old`.
fn staged(old: &ExtentMap, new_backend: usize, done: u64, barrier: u64, nb: u64) -> ExtentMap {
    let mut redirects: Vec<Redirect> = vec![Redirect {
        desc: StorageDesc::Remap {
            backend: new_backend,
            offset: 0,
        },
        fault_on_read: false,
        fault_on_write: false,
    }];
    let mut extents = Vec::new();
    if done > 0 {
        extents.push(Extent {
            start: 0,
            len: done,
            redirect: 0,
            base: 0,
        });
    }
    let idx = |desc: &StorageDesc, fow: bool, redirects: &mut Vec<Redirect>| -> u32 {
        if let Some(i) = redirects
            .iter()
            .position(|r| &r.desc == desc && r.fault_on_write == fow)
        {
            return i as u32;
        }
        redirects.push(Redirect {
            desc: desc.clone(),
            fault_on_read: false,
            fault_on_write: fow,
        });
        (redirects.len() - 1) as u32
    };
    // The old pieces of [lo, hi), with or without the barrier flag.
    let mut old_pieces = |lo: u64, hi: u64, fow: bool, extents: &mut Vec<Extent>| {
        for e in old.extents() {
            let s = e.start.max(lo);
            let t = e.end().min(hi);
            if s >= t {
                continue;
            }
            let Some(r) = old.redirect(e.redirect) else {
                continue;
            };
            let i = idx(&r.desc, fow, &mut redirects);
            extents.push(Extent {
                start: s,
                len: t - s,
                redirect: i,
                base: e.pos(s),
            });
        }
    };
    let b_end = (done + barrier).min(nb);
    old_pieces(done, b_end, true, &mut extents);
    old_pieces(b_end, nb, false, &mut extents);
    ExtentMap::from_parts(extents, redirects)
}

impl Volume {
    /// Moves the whole volume onto `to` while it stays online, in
    /// [`MIGRATE_UNIT_BYTES`] units. Returns the bytes copied. The old
    /// backends are dropped from the volume at the end.
    pub async fn migrate(&self, to: Arc<dyn Backend>) -> Result<u64, EngineError> {
        if self.mirrored {
            return Err(invalid("migrating a mirrored volume is not supported"));
        }
        let bs = self.block_size as u64;
        let nb = self.num_blocks();
        if to.len() < nb * bs {
            return Err(invalid("migration target is smaller than the volume"));
        }
        let old = {
            let _cp = self.cp.lock().await;
            if self.migration.lock().active {
                return Err(invalid("a migration is already running"));
            }
            *self.migration.lock() = MigrationStatus {
                active: true,
                done_bytes: 0,
                total_bytes: nb * bs,
                max_extents: 0,
            };
            // A copy: holding the published Arc would stall every drain.
            let frozen: ExtentMap = (*self.map.load_full()).clone();
            frozen
        };
        let k = {
            let mut list = self.backends().to_vec();
            list.push(to.clone());
            let k = list.len() - 1;
            self.backends.store(Arc::new(list));
            k
        };
        let unit = (MIGRATE_UNIT_BYTES / bs).max(1);
        let r = self.migrate_units(&old, k, unit, nb).await;
        self.migration.lock().active = false;
        r?;
        // Done: only the new backend is referenced. Release the old ones
        // once nothing resolved through an older map is in flight.
        self.publish_and_drain(ExtentMap::single(
            nb,
            StorageDesc::Remap {
                backend: k,
                offset: 0,
            },
        ))
        .await;
        let list: Vec<Arc<dyn Backend>> = self.backends().iter().map(|_| to.clone()).collect();
        self.backends.store(Arc::new(list));
        tracing::info!(volume = %self.name, bytes = nb * bs, "migration done");
        Ok(nb * bs)
    }

    async fn migrate_units(
        &self,
        old: &ExtentMap,
        k: usize,
        unit: u64,
        nb: u64,
    ) -> Result<(), EngineError> {
        let bs = self.block_size as u64;
        let mut done = 0u64;
        while done < nb {
            let n = unit.min(nb - done);
            // Barrier: new writes to the unit fault to the control path;
            // wait out fast-path writes admitted before.
            let barrier = staged(old, k, done, n, nb);
            self.note_extents(barrier.extents().len());
            self.publish_and_drain(barrier).await;
            // Control-path writes to the unit wait here until it is copied
            // and they resolve through the new map.
            let _g = self.locks.exclusive(done, n).await;
            let (map, src) = self.resolve(done, n, Route::Read(0))?;
            let backends = self.backends();
            let dst = to_backend(&backends, k)?;
            let at = done;
            blocking(move || {
                let _map = map;
                let mut buf = vec![0u8; (n * bs) as usize];
                read_targets(&backends, &src, &mut buf, bs)?;
                // Shifted targets: `src` buffer positions are relative to `at`.
                dst.write_at(at * bs, &buf, false)?;
                Ok(())
            })
            .await?;
            done += n;
            let next = staged(old, k, done, 0, nb);
            self.note_extents(next.extents().len());
            // Unrestrictive (grants the new location): no drain needed.
            self.map.store(Arc::new(next));
            self.migration.lock().done_bytes = done * bs;
        }
        let backends = self.backends();
        let dst = to_backend(&backends, k)?;
        blocking(move || Ok(dst.flush()?)).await
    }

    fn note_extents(&self, n: usize) {
        let mut m = self.migration.lock();
        m.max_extents = m.max_extents.max(n);
    }

    pub fn migration_status(&self) -> MigrationStatus {
        self.migration.lock().clone()
    }
}

fn to_backend(list: &[Arc<dyn Backend>], k: usize) -> Result<Arc<dyn Backend>, EngineError> {
    list.get(k).cloned().ok_or(EngineError::Unmapped(0))
}
