//! Live migration with a copy barrier. The map holds at most three kinds of
//! extents: copied (new backend, read-write), the barrier unit being copied
//! (old location, fault-on-write: writes go to the control path, where they
//! wait on the unit's range lock), and not yet copied (old location,
//! read-write). Advancing: set the barrier, drain, lock, copy, point the
//! unit at the new backend. Done when everything is copied; the old
//! backends are then released.
//!
//! With a [`MigrationLog`], each unit is durable on the new backend and
//! its progress recorded before the map sends host writes there, so a
//! crash neither loses those writes (the old backend no longer has them)
//! nor starts the copy over: the volume reopens with the copied part on
//! the new backend and the migration resumes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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

/// What a [`MigrationLog`] holds: where the volume is going and how far
/// the copy got (blocks from 0 that live on the new backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRecord {
    /// Where the volume was when the migration started.
    pub from: PathBuf,
    pub to: PathBuf,
    pub done_blocks: u64,
    pub total_blocks: u64,
    pub complete: bool,
}

const LOG_MAGIC: &[u8; 4] = b"VTMG";
const LOG_SLOT: usize = 512;
/// Bytes of the two paths a record holds (the rest is the header).
const LOG_PATHS_MAX: usize = LOG_SLOT - 40;

/// Durable migration progress: two 512-byte slots written in turn, each
/// with a sequence number and a checksum, so a torn update leaves the
/// previous record readable.
#[derive(Debug)]
pub struct MigrationLog {
    file: File,
    from: PathBuf,
    to: PathBuf,
    total_blocks: u64,
    seq: parking_lot::Mutex<u64>,
}

fn encode_record(seq: u64, r: &MigrationRecord) -> io::Result<[u8; LOG_SLOT]> {
    let to = r.to.as_os_str().as_bytes();
    let from = r.from.as_os_str().as_bytes();
    if to.len() + from.len() > LOG_PATHS_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "migration paths too long",
        ));
    }
    let mut s = [0u8; LOG_SLOT];
    s[0..4].copy_from_slice(LOG_MAGIC);
    s[4..12].copy_from_slice(&seq.to_le_bytes());
    s[12..20].copy_from_slice(&r.done_blocks.to_le_bytes());
    s[20..28].copy_from_slice(&r.total_blocks.to_le_bytes());
    s[28] = r.complete as u8;
    s[30..32].copy_from_slice(&(to.len() as u16).to_le_bytes());
    s[36..38].copy_from_slice(&(from.len() as u16).to_le_bytes());
    s[40..40 + to.len()].copy_from_slice(to);
    s[40 + to.len()..40 + to.len() + from.len()].copy_from_slice(from);
    let c = crc32c::crc32c_append(crc32c::crc32c(&s[..32]), &s[36..]);
    s[32..36].copy_from_slice(&c.to_le_bytes());
    Ok(s)
}

fn decode_record(s: &[u8]) -> Option<(u64, MigrationRecord)> {
    let u64_at = |i: usize| Some(u64::from_le_bytes(s.get(i..i + 8)?.try_into().ok()?));
    let u16_at = |i: usize| Some(u16::from_le_bytes(s.get(i..i + 2)?.try_into().ok()?) as usize);
    if s.get(0..4)? != LOG_MAGIC {
        return None;
    }
    let want = u32::from_le_bytes(s.get(32..36)?.try_into().ok()?);
    let c = crc32c::crc32c_append(crc32c::crc32c(s.get(..32)?), s.get(36..LOG_SLOT)?);
    if c != want {
        return None;
    }
    let (tl, fl) = (u16_at(30)?, u16_at(36)?);
    let to = s.get(40..40 + tl)?;
    let from = s.get(40 + tl..40 + tl + fl)?;
    Some((
        u64_at(4)?,
        MigrationRecord {
            from: PathBuf::from(std::ffi::OsStr::from_bytes(from)),
            to: PathBuf::from(std::ffi::OsStr::from_bytes(to)),
            done_blocks: u64_at(12)?,
            total_blocks: u64_at(20)?,
            complete: s.get(28)? == &1,
        },
    ))
}

impl MigrationLog {
    /// Starts a log for a migration of `total_blocks` from `from` to `to`,
    /// replacing any earlier log atomically (a crash leaves one or the
    /// other, never an empty file).
    pub fn create(path: &Path, from: &Path, to: &Path, total_blocks: u64) -> io::Result<Self> {
        let rec = MigrationRecord {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            done_blocks: 0,
            total_blocks,
            complete: false,
        };
        let mut both = Vec::with_capacity(2 * LOG_SLOT);
        both.extend_from_slice(&encode_record(0, &rec)?);
        both.extend_from_slice(&[0u8; LOG_SLOT]);
        crate::mirror::write_atomically(path, &both)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self {
            file,
            from: rec.from,
            to: rec.to,
            total_blocks,
            seq: parking_lot::Mutex::new(0),
        })
    }

    /// The latest complete record, if the file exists.
    pub fn load(path: &Path) -> io::Result<Option<MigrationRecord>> {
        Ok(Self::open(path)?.map(|(_, r)| r))
    }

    /// Reopens a log to continue the migration it describes.
    pub fn open(path: &Path) -> io::Result<Option<(Self, MigrationRecord)>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = [0u8; 2 * LOG_SLOT];
        let n = file.read_at(&mut buf, 0)?;
        let best = buf[..n]
            .chunks(LOG_SLOT)
            .filter_map(decode_record)
            .max_by_key(|(seq, _)| *seq);
        let Some((seq, rec)) = best else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no valid migration record", path.display()),
            ));
        };
        let log = Self {
            file,
            from: rec.from.clone(),
            to: rec.to.clone(),
            total_blocks: rec.total_blocks,
            seq: parking_lot::Mutex::new(seq),
        };
        Ok(Some((log, rec)))
    }

    /// Durably records progress.
    pub fn record(&self, done_blocks: u64, complete: bool) -> io::Result<()> {
        let mut seq = self.seq.lock();
        let next = *seq + 1;
        let rec = MigrationRecord {
            from: self.from.clone(),
            to: self.to.clone(),
            done_blocks,
            total_blocks: self.total_blocks,
            complete,
        };
        let slot = encode_record(next, &rec)?;
        self.file
            .write_all_at(&slot, (next % 2) * LOG_SLOT as u64)?;
        self.file.sync_data()?;
        *seq = next;
        Ok(())
    }
}

impl Volume {
    /// Moves the whole volume onto `to` while it stays online, in
    /// [`MIGRATE_UNIT_BYTES`] units. Returns the bytes copied. The old
    /// backends are dropped from the volume at the end.
    pub async fn migrate(&self, to: Arc<dyn Backend>) -> Result<u64, EngineError> {
        self.migrate_logged(to, None).await
    }

    /// [`Volume::migrate`], recording progress in `log` (see the module
    /// notes) so that a restart can resume it.
    pub async fn migrate_logged(
        &self,
        to: Arc<dyn Backend>,
        log: Option<Arc<MigrationLog>>,
    ) -> Result<u64, EngineError> {
        let (old, k) = {
            let _cp = self.cp.lock().await;
            self.migration_setup(&to, 0)?
        };
        self.migration_run(old, k, to, log, 0).await
    }

    /// Starts a migration: marks it running (refusing a second one), then
    /// creates its log with `make_log`; an error from either leaves nothing
    /// started. The returned future copies the volume.
    pub async fn start_migration<F>(
        self: &Arc<Self>,
        to: Arc<dyn Backend>,
        make_log: F,
    ) -> Result<
        impl std::future::Future<Output = Result<u64, EngineError>> + Send + 'static,
        EngineError,
    >
    where
        F: FnOnce() -> std::io::Result<Option<MigrationLog>>,
    {
        let _cp = self.cp.lock().await;
        let (old, k) = self.migration_setup(&to, 0)?;
        let log = match make_log() {
            Ok(l) => l.map(Arc::new),
            Err(e) => {
                self.migration.lock().active = false;
                return Err(EngineError::Io(e));
            }
        };
        let v = self.clone();
        Ok(async move { v.migration_run(old, k, to, log, 0).await })
    }

    /// Continues a migration a restart interrupted: blocks `[0, from)` are
    /// on `to` already. Call before the volume serves I/O; the map points
    /// there on return, and the returned future copies the rest.
    pub fn resume_migration(
        self: &Arc<Self>,
        to: Arc<dyn Backend>,
        log: Arc<MigrationLog>,
        from: u64,
    ) -> Result<
        impl std::future::Future<Output = Result<u64, EngineError>> + Send + 'static,
        EngineError,
    > {
        let (old, k) = self.migration_setup(&to, from)?;
        let v = self.clone();
        Ok(async move { v.migration_run(old, k, to, Some(log), from).await })
    }

    /// Marks the migration active, adds `to` to the backends and (when
    /// resuming) points `[0, from)` at it. Returns the map to stage from
    /// and the new backend's index.
    fn migration_setup(
        &self,
        to: &Arc<dyn Backend>,
        from: u64,
    ) -> Result<(ExtentMap, usize), EngineError> {
        if self.mirrored {
            return Err(invalid("migrating a mirrored volume is not supported"));
        }
        let bs = self.block_size as u64;
        let nb = self.num_blocks();
        if to.len() < nb * bs {
            return Err(invalid("migration target is smaller than the volume"));
        }
        if from > nb {
            return Err(invalid("migration progress beyond the volume"));
        }
        {
            let mut m = self.migration.lock();
            if m.active {
                return Err(invalid("a migration is already running"));
            }
            *m = MigrationStatus {
                active: true,
                done_bytes: from * bs,
                total_bytes: nb * bs,
                max_extents: 0,
            };
        }
        // A copy: holding the published Arc would stall every drain.
        let old: ExtentMap = (*self.map.load_full()).clone();
        let mut list = self.backends().to_vec();
        list.push(to.clone());
        let k = list.len() - 1;
        self.backends.store(Arc::new(list));
        if from > 0 {
            self.set_map(staged(&old, k, from, 0, nb));
        }
        Ok((old, k))
    }

    async fn migration_run(
        &self,
        old: ExtentMap,
        k: usize,
        to: Arc<dyn Backend>,
        log: Option<Arc<MigrationLog>>,
        from: u64,
    ) -> Result<u64, EngineError> {
        let bs = self.block_size as u64;
        let nb = self.num_blocks();
        let unit = (MIGRATE_UNIT_BYTES / bs).max(1);
        let mut r = self
            .migrate_units(&old, k, unit, nb, from, log.clone())
            .await;
        if let (Ok(()), Some(log)) = (&r, log) {
            r = blocking(move || Ok(log.record(nb, true)?)).await;
        }
        if r.is_err() {
            self.migration.lock().active = false;
        }
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
        // Only now: a new migration must not start before the swap.
        self.migration.lock().active = false;
        tracing::info!(volume = %self.name, bytes = nb * bs, "migration done");
        Ok(nb * bs)
    }

    async fn migrate_units(
        &self,
        old: &ExtentMap,
        k: usize,
        unit: u64,
        nb: u64,
        from: u64,
        log: Option<Arc<MigrationLog>>,
    ) -> Result<(), EngineError> {
        let bs = self.block_size as u64;
        let mut done = from;
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
            let log = log.clone();
            blocking(move || {
                let _map = map;
                let mut buf = vec![0u8; (n * bs) as usize];
                read_targets(&backends, &src, &mut buf, bs)?;
                // Shifted targets: `src` buffer positions are relative to `at`.
                dst.write_at(at * bs, &buf, false)?;
                // Durable before host writes go there and nowhere else.
                if let Some(log) = log {
                    dst.flush()?;
                    log.record(at + n, false)?;
                }
                Ok(())
            })
            .await?;
            done += n;
            let next = staged(old, k, done, 0, nb);
            self.note_extents(next.extents().len());
            // Unrestrictive (grants the new location): no drain needed.
            self.set_map(next);
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
