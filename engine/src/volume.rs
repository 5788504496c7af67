//! Volumes: a block address space executed from an extent map.
//!
//! The control-path entry points here (`read`, `write`, `discard`, ...)
//! accept any range and split it across extents, stripe units and mirror
//! legs. They are also the fault handlers: a fast-path fault re-issues the
//! I/O here, where fault-on-write stamps the age list and a failed mirror
//! leg is marked dead before the host sees status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};

use crate::backend::Backend;
use crate::error::EngineError;
use crate::extent::{ExtentMap, LegState, Route, StorageDesc, Target};
use crate::fault::FaultCounters;
use crate::journal::Journal;
use crate::layout::{Compiled, Layout};
use crate::mirror::{MirrorMeta, ResyncStatus};
use crate::rangelock::{RangeGuard, RangeLocks};
use crate::retired::Retired;
use crate::tags::{TagEntry, TagTable, Tags};

#[path = "migrate.rs"]
mod migrate;
pub use migrate::{MigrationLog, MigrationRecord, MigrationStatus};

#[path = "volume_wj.rs"]
mod wj;
pub use wj::JournalStatus;

#[derive(Debug)]
pub struct Volume {
    name: String,
    block_size: u32,
    nblocks: AtomicU64,
    /// Swapped (never shrunk) by migration; targets index into it.
    backends: ArcSwap<Vec<Arc<dyn Backend>>>,
    map: ArcSwap<ExtentMap>,
    /// Map versions replaced while I/Os resolved through them may still
    /// be running (see `retired.rs`).
    retired_maps: Retired<ExtentMap>,
    pub counters: FaultCounters,
    /// Every write holds its range here; atomic commands hold it exclusively.
    locks: Arc<RangeLocks>,
    /// Write-ahead journal for atomic writes, when the volume has one.
    journal: Arc<parking_lot::Mutex<Option<Journal>>>,
    /// Some leg is mirrored: writes are serialized per range (see `write`).
    mirrored: bool,
    /// One backend remapped 1:1 (the only shape that can grow).
    plain: bool,
    /// Unit of fault-on-write, age stamps and resync copies.
    region_blocks: u64,
    /// Round-robin cursor for mirror reads.
    rr: AtomicU64,
    /// Copy of `meta.generation` readable without the lock.
    generation: AtomicU64,
    /// Durable mirror state; changed only by the control path under `cp`.
    meta: parking_lot::Mutex<MirrorMeta>,
    meta_path: Option<PathBuf>,
    /// Serializes control-path metadata changes.
    cp: tokio::sync::Mutex<()>,
    resync: parking_lot::Mutex<ResyncRun>,
    /// Bytes resyncs have copied since open (tests and metrics).
    resync_copied: AtomicU64,
    /// Leg -> the token of its current resync run: a run that finds
    /// another token (fail, then attach, while it ran) stops.
    resync_runs: parking_lot::Mutex<BTreeMap<usize, u64>>,
    resync_tokens: AtomicU64,
    /// Tagged mirror writes, when the legs have tag tables.
    tags: Option<Arc<Tags>>,
    /// What crash reconciliation found and copied at open.
    reconcile: parking_lot::Mutex<ReconcileReport>,
    /// Says whether the tag tables survived; marked clean by `close`.
    tag_session: Option<Arc<crate::tags::TagSession>>,
    /// Write journaling: the journals every host write is also appended to.
    wj: wj::Journaling,
    migration: parking_lot::Mutex<MigrationStatus>,
}

/// The outcome of tag reconciliation at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Tag entries every leg of their mirror held. Their writes may still
    /// have reached only some legs (entries go first): copied too.
    pub matched: u64,
    /// Entries only some legs held.
    pub unmatched: u64,
    /// Bytes copied from a leg holding an entry to the others.
    pub copied_bytes: u64,
    /// The machine restarted while the volume was open, so the tables
    /// could not be trusted: every leg but the first of each mirror was
    /// put in resync over all regions (copied in the background).
    pub full_copy: bool,
}

#[derive(Debug, Default)]
struct ResyncRun {
    leg: Option<usize>,
    active: bool,
    done: u64,
    total: u64,
    started: Option<Instant>,
    elapsed: Duration,
}

/// Leg states and generation, for metrics and admin.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorStatus {
    pub generation: u64,
    pub legs: Vec<(usize, LegState)>,
    /// Regions written while degraded (what a resync would copy).
    pub stale_regions: usize,
    pub region_blocks: u64,
    pub resync: ResyncStatus,
}

/// How often a running resync records its progress durably: after this
/// long or this many regions, whichever comes first (a save costs two
/// fsyncs; a region copy, a region of I/O).
const RESYNC_SAVE_INTERVAL: Duration = Duration::from_millis(250);
const RESYNC_SAVE_REGIONS: usize = 32;

fn invalid(msg: &str) -> EngineError {
    EngineError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        msg.to_string(),
    ))
}

impl Volume {
    /// A volume that is one backend, remapped 1:1.
    pub fn simple(name: &str, backend: Arc<dyn Backend>, block_size: u32) -> Arc<Self> {
        let nblocks = backend.len() / block_size.max(1) as u64;
        let compiled = Compiled {
            map: ExtentMap::single(
                nblocks,
                StorageDesc::Remap {
                    backend: 0,
                    offset: 0,
                },
            ),
            nblocks,
            region_blocks: nblocks.max(1),
            mirrored: false,
        };
        Arc::new(Self::build(
            name,
            vec![backend],
            compiled,
            block_size,
            MirrorMeta::default(),
            None,
        ))
    }

    /// A volume composed from `backends` by `layout`. With `meta_path`, the
    /// mirror state (leg states, generation, age list) is kept there and
    /// reloaded: a leg that was dead stays dead until re-attached.
    pub fn with_layout(
        name: &str,
        backends: Vec<Arc<dyn Backend>>,
        layout: &Layout,
        block_size: u32,
        meta_path: Option<&Path>,
    ) -> Result<Arc<Self>, EngineError> {
        let mut compiled = layout.compile(&backends, block_size)?;
        let loaded = match meta_path {
            Some(p) if compiled.mirrored => MirrorMeta::load(p)?,
            _ => None,
        };
        let mut meta = MirrorMeta::default();
        for (id, _) in compiled.map.legs() {
            meta.legs.insert(id, (LegState::Up, 0));
        }
        if let Some(m) = loaded {
            meta.generation = m.generation;
            meta.ages = m.ages;
            for (id, (st, g)) in m.legs {
                if let Some(e) = meta.legs.get_mut(&id) {
                    // A leg in resync stays there (taking writes, serving no
                    // reads): `resume_resyncs` finishes the copy.
                    *e = (st, g);
                    compiled.map = compiled.map.with_leg_state(id, st);
                    if st == LegState::Resync {
                        let todo = match m.todo.get(&id) {
                            Some(t) => t.clone(),
                            // Not tracked (an older file): all it missed.
                            None => meta
                                .ages
                                .iter()
                                .filter(|a| *a.1 > g)
                                .map(|a| *a.0)
                                .collect(),
                        };
                        meta.todo.insert(id, todo);
                    }
                }
            }
            if meta.legs.values().any(|l| l.0 != LegState::Up) {
                let region = compiled.region_blocks;
                let gen = meta.generation;
                let ages = meta.ages.clone();
                compiled.map = compiled.map.with_fow(true, |_, e| {
                    ages.get(&(e.start / region)).copied() != Some(gen)
                });
            }
        }
        if let (Some(p), true) = (meta_path, compiled.mirrored) {
            meta.save(p)?;
        }
        let v = Self::build(
            name,
            backends,
            compiled,
            block_size,
            meta,
            meta_path.map(Path::to_path_buf),
        );
        Ok(Arc::new(v))
    }

    /// Like [`Volume::with_layout`], with a tag table per mirror leg
    /// (`tag_stores[leg id]`, each at least [`crate::tags::store_bytes`]).
    /// Before returning, reconciles the legs after a crash: every range a
    /// write reached on some legs of a mirror but not all is copied from a
    /// leg that has it. No host I/O can run until this returns.
    pub fn with_layout_tagged(
        name: &str,
        backends: Vec<Arc<dyn Backend>>,
        layout: &Layout,
        block_size: u32,
        meta_path: Option<&Path>,
        tag_stores: BTreeMap<usize, Arc<dyn Backend>>,
    ) -> Result<Arc<Self>, EngineError> {
        let boot = crate::tags::boot_id();
        Self::with_layout_tagged_on(
            name, backends, layout, block_size, meta_path, tag_stores, &boot,
        )
    }

    /// [`Volume::with_layout_tagged`] as if the kernel's boot id were
    /// `boot`: with a `meta_path`, a volume left open by an earlier boot
    /// (a machine crash) has its other legs resynchronised whole from the
    /// first of each mirror ([`Volume::resume_resyncs`]), since the tables
    /// only lived in the page cache.
    pub fn with_layout_tagged_on(
        name: &str,
        backends: Vec<Arc<dyn Backend>>,
        layout: &Layout,
        block_size: u32,
        meta_path: Option<&Path>,
        tag_stores: BTreeMap<usize, Arc<dyn Backend>>,
        boot: &str,
    ) -> Result<Arc<Self>, EngineError> {
        let v = Self::with_layout(name, backends, layout, block_size, meta_path)?;
        let mut v = Arc::try_unwrap(v).map_err(|_| invalid("volume shared while opening"))?;
        if !v.mirrored || tag_stores.is_empty() {
            return Ok(Arc::new(v));
        }
        let legs = v.map.load().legs();
        let mut tables = BTreeMap::new();
        for (id, _) in &legs {
            let store = tag_stores
                .get(id)
                .ok_or_else(|| invalid("a mirror leg has no tag store"))?;
            tables.insert(*id, TagTable::new(store.clone())?);
        }
        let session = meta_path.map(|p| p.with_extension("tagsession"));
        let trusted = match &session {
            Some(p) => crate::tags::TagSession::trusted(p, boot)?,
            None => true,
        };
        let next = v.reconcile_tags(&tables, trusted)?;
        if let Some(p) = session {
            v.tag_session = Some(Arc::new(crate::tags::TagSession::begin(&p, boot)?));
        }
        v.tags = Some(Arc::new(Tags::new(tables, next)));
        Ok(Arc::new(v))
    }

    /// Flushes, and marks an orderly close for the tag tables (so opening
    /// after a machine restart trusts them).
    pub async fn close(&self) -> Result<(), EngineError> {
        self.flush().await?;
        // Writes still in flight (a front end that did not drain) keep the
        // session open: the next open after a reboot then copies whole.
        if self.unretired_tags() > 0 {
            tracing::warn!(volume = %self.name, "closed with mirrored writes in flight");
            return Ok(());
        }
        if let Some(s) = self.tag_session.clone() {
            blocking(move || Ok(s.close()?)).await?;
        }
        Ok(())
    }

    /// Copies the range of every entry the Up legs' tag tables hold, per
    /// mirror, from a leg holding it to the others (everything, from the
    /// first Up leg, when the tables are not `trusted`); then empties the
    /// tables. Returns the next tag.
    fn reconcile_tags(
        &self,
        tables: &BTreeMap<usize, TagTable>,
        trusted: bool,
    ) -> Result<u64, EngineError> {
        let map = self.map.load_full();
        let up: BTreeSet<usize> = map.leg_ids(|st| st == LegState::Up);
        let mut entries = BTreeMap::new();
        let mut max_tag = 0;
        // Ranges some write was in flight to, on any leg.
        let mut touched: Vec<(u64, u64)> = Vec::new();
        for (id, t) in tables {
            let es = t.entries()?;
            max_tag = es.iter().map(|e| e.tag).max().unwrap_or(0).max(max_tag);
            touched.extend(es.iter().map(|e| (e.lba, e.blocks)));
            if up.contains(id) {
                entries.insert(*id, es);
            }
        }
        // A leg in resync may lack any of those writes, even in regions
        // already copied to it: copy them again when the resync resumes.
        // Recorded before the tables are wiped.
        let resyncing: Vec<usize> = map.leg_ids(|st| st == LegState::Resync);
        if !resyncing.is_empty() && !touched.is_empty() {
            let nb = self.num_blocks();
            let mut meta = self.meta.lock().clone();
            for id in &resyncing {
                let todo = meta.todo.entry(*id).or_default();
                for &(lba, blocks) in &touched {
                    if lba < nb && blocks > 0 {
                        todo.extend(self.regions(lba, blocks.min(nb - lba)));
                    }
                }
            }
            if let Some(p) = &self.meta_path {
                meta.save(p)?;
            }
            *self.meta.lock() = meta;
        }
        let groups: Vec<Vec<usize>> = map
            .mirror_groups()
            .into_iter()
            .map(|g| g.into_iter().filter(|l| up.contains(l)).collect::<Vec<_>>())
            .filter(|g| g.len() > 1)
            .collect();
        let bs = self.block_size as u64;
        let nb = self.num_blocks();
        if !trusted {
            // Every leg but the first of each mirror goes to resync over
            // all regions: it takes writes at once, serves no reads until
            // copied, and the copy runs in the background
            // (`resume_resyncs`) instead of holding up the open.
            let all: BTreeSet<u64> = (0..nb.div_ceil(self.region_blocks.max(1))).collect();
            let mut meta = self.meta.lock().clone();
            let mut next = (*map).clone();
            for g in &groups {
                for l in &g[1..] {
                    let gen = meta.legs.get(l).map_or(0, |e| e.1);
                    meta.legs.insert(*l, (LegState::Resync, gen));
                    meta.todo.insert(*l, all.clone());
                    next = next.with_leg_state(*l, LegState::Resync);
                }
            }
            // A leg already in resync may have missed in-flight writes in
            // regions it had been given: it starts over too.
            for l in &resyncing {
                meta.todo.insert(*l, all.clone());
            }
            if let Some(p) = &self.meta_path {
                meta.save(p)?;
            }
            *self.meta.lock() = meta;
            drop(map);
            self.set_map(next);
            tracing::warn!(volume = %self.name,
                "the machine restarted with the mirror open: its other legs resync whole from the first");
            for id in up.iter().chain(&resyncing) {
                if let Some(t) = tables.get(id) {
                    t.wipe()?;
                }
            }
            *self.reconcile.lock() = ReconcileReport {
                full_copy: true,
                ..Default::default()
            };
            return Ok(max_tag + 1);
        }
        let todo = unretired_ranges(&groups, &entries);
        let mut report = ReconcileReport::default();
        for (e, src, lacking) in &todo {
            if e.lba >= nb {
                continue;
            }
            let blocks = e.blocks.min(nb - e.lba);
            let (_m1, from) = self.resolve(e.lba, blocks, Route::Leg(*src))?;
            let mut buf = vec![0u8; (blocks * bs) as usize];
            read_targets(&self.backends(), &from, &mut buf, bs)?;
            for l in lacking {
                let (_m2, to) = self.resolve(e.lba, blocks, Route::Leg(*l))?;
                if let Some((_, err)) = write_targets(&self.backends(), &to, &buf, true, bs)
                    .into_iter()
                    .next()
                {
                    return Err(EngineError::Io(err));
                }
                report.copied_bytes += to.iter().map(|t| t.blocks * bs).sum::<u64>();
            }
        }
        report.unmatched = crate::tags::unmatched(&groups, &entries).len() as u64;
        // Distinct entries per mirror, less the unmatched ones.
        report.matched = groups
            .iter()
            .map(|g| {
                g.iter()
                    .filter_map(|l| entries.get(l))
                    .flatten()
                    .collect::<BTreeSet<_>>()
                    .len() as u64
            })
            .sum::<u64>()
            .saturating_sub(report.unmatched);
        if !todo.is_empty() {
            tracing::warn!(volume = %self.name, ranges = report.unmatched, bytes = report.copied_bytes,
                "mirror legs reconciled after a crash");
        }
        for b in self.backends().iter() {
            b.flush()?;
        }
        for id in up.iter().chain(&resyncing) {
            if let Some(t) = tables.get(id) {
                t.wipe()?;
            }
        }
        *self.reconcile.lock() = report;
        Ok(max_tag + 1)
    }

    /// What reconciliation did when the volume was opened.
    pub fn reconcile_report(&self) -> ReconcileReport {
        self.reconcile.lock().clone()
    }

    /// Tag entries issued but not yet retired.
    pub fn unretired_tags(&self) -> usize {
        self.tags.as_ref().map_or(0, |t| t.unretired())
    }

    fn build(
        name: &str,
        backends: Vec<Arc<dyn Backend>>,
        c: Compiled,
        block_size: u32,
        meta: MirrorMeta,
        meta_path: Option<PathBuf>,
    ) -> Self {
        let plain = backends.len() == 1
            && c.map.extents().len() == 1
            && matches!(
                c.map.redirects().first().map(|r| &r.desc),
                Some(StorageDesc::Remap { offset: 0, .. })
            );
        Self {
            name: name.to_string(),
            block_size,
            nblocks: AtomicU64::new(c.nblocks),
            backends: ArcSwap::from_pointee(backends),
            map: ArcSwap::from_pointee(c.map),
            retired_maps: Retired::new(),
            counters: FaultCounters::default(),
            locks: RangeLocks::new(),
            journal: Arc::new(parking_lot::Mutex::new(None)),
            mirrored: c.mirrored,
            plain,
            region_blocks: c.region_blocks,
            rr: AtomicU64::new(0),
            generation: AtomicU64::new(meta.generation),
            meta: parking_lot::Mutex::new(meta),
            meta_path,
            cp: tokio::sync::Mutex::new(()),
            resync: parking_lot::Mutex::new(ResyncRun::default()),
            resync_copied: AtomicU64::new(0),
            resync_runs: parking_lot::Mutex::new(BTreeMap::new()),
            resync_tokens: AtomicU64::new(0),
            tags: None,
            reconcile: parking_lot::Mutex::new(ReconcileReport::default()),
            tag_session: None,
            wj: wj::Journaling::default(),
            migration: parking_lot::Mutex::new(MigrationStatus::default()),
        }
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

    pub fn backends(&self) -> Arc<Vec<Arc<dyn Backend>>> {
        self.backends.load_full()
    }

    pub fn map(&self) -> Arc<ExtentMap> {
        self.map.load_full()
    }

    pub fn is_mirrored(&self) -> bool {
        self.mirrored
    }

    pub fn region_blocks(&self) -> u64 {
        self.region_blocks
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn next_read_pick(&self) -> u64 {
        self.rr.fetch_add(1, Ordering::Relaxed)
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

    /// Resolves a range through the current map into downstream targets.
    /// The map is returned so the caller holds it until the I/O is done: a
    /// restrictive map change waits for such holders to drain.
    pub(crate) fn resolve(
        &self,
        lba: u64,
        blocks: u64,
        route: Route,
    ) -> Result<(Arc<ExtentMap>, Vec<Target>), EngineError> {
        self.check_range(lba, blocks)?;
        let map = self.map.load_full();
        let bs = self.block_size as u64;
        let mut out = Vec::new();
        let mut cur = lba;
        let end = lba + blocks;
        while cur < end {
            let (ext, red) = map.lookup(cur).ok_or(EngineError::Unmapped(cur))?;
            let n = ext.end().min(end) - cur;
            if !red
                .desc
                .resolve(ext.pos(cur), n, cur - lba, bs, route, None, &mut out)
            {
                return Err(EngineError::Io(std::io::Error::other(
                    "no live mirror leg for this range",
                )));
            }
            cur += n;
        }
        Ok((map, out))
    }

    /// Control-path read: any range inside the volume, across extents. On
    /// a mirror a failed read is retried on the other legs (the round-robin
    /// cursor moves on every attempt).
    pub async fn read(&self, lba: u64, blocks: u64) -> Result<Bytes, EngineError> {
        let tries = if self.mirrored {
            self.map.load().legs().len().max(1)
        } else {
            1
        };
        let mut n = 0;
        loop {
            n += 1;
            match self.read_once(lba, blocks).await {
                Err(e) if n < tries && !matches!(e, EngineError::OutOfRange { .. }) => {
                    tracing::debug!(volume = %self.name, lba, "mirror read failed, trying another leg: {e}");
                }
                r => return r,
            }
        }
    }

    async fn read_once(&self, lba: u64, blocks: u64) -> Result<Bytes, EngineError> {
        let (map, targets) = self.resolve(lba, blocks, Route::Read(self.next_read_pick()))?;
        let total = (blocks * self.block_size as u64) as usize;
        let backends = self.backends();
        let bs = self.block_size as u64;
        let buf = blocking(move || {
            let _map = map;
            let mut buf = BytesMut::zeroed(total);
            read_targets(&backends, &targets, &mut buf, bs)?;
            Ok(buf)
        })
        .await?;
        Ok(buf.freeze())
    }

    /// The volume's LBA range locks.
    pub fn locks(&self) -> &Arc<RangeLocks> {
        &self.locks
    }

    /// The lock a plain write takes. On a mirrored volume it is exclusive
    /// over the range: two overlapping writes could otherwise reach the legs
    /// in different orders (A then B on one leg, B then A on the other) and
    /// leave them different forever. Exclusive range locks order overlapping
    /// writes identically on every leg; disjoint writes still run in
    /// parallel. Journaled volumes need the same (see below); others only
    /// need the shared lock.
    pub(crate) async fn write_lock(&self, lba: u64, blocks: u64) -> RangeGuard {
        // Journaled: the order of overlapping writes in the journal must be
        // the order they reach the volume, or a replay undoes the newer.
        if self.mirrored || self.is_journaled() {
            self.locks.exclusive(lba, blocks).await
        } else {
            self.locks.write(lba, blocks).await
        }
    }

    /// Locks `blocks` at `lba` exclusively: overlapping writes wait until the
    /// guard is dropped. Use [`Volume::write_locked`] to write under it.
    pub async fn lock_exclusive(&self, lba: u64, blocks: u64) -> RangeGuard {
        self.locks.exclusive(lba, blocks).await
    }

    /// Control-path write: any range inside the volume, across extents.
    pub async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), EngineError> {
        let blocks = data.len() as u64 / self.block_size as u64;
        let _g = self.write_lock(lba, blocks).await;
        self.journaled_write(lba, data, fua).await
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
        self.journaled_write(lba, data, fua).await
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
        let (map, targets) = self.resolve(lba, blocks, Route::Read(self.next_read_pick()))?;
        let bs = self.block_size as u64;
        let backends = self.backends();
        blocking(move || {
            let _map = map;
            let mut out: Vec<(u64, u64, bool)> = Vec::new();
            for t in targets {
                let b = backend_of(&backends, &t)?;
                let len = t.blocks * bs;
                let at = lba + t.buf_block;
                for (r, mapped) in b.allocated(t.offset, len)? {
                    let s = at + (r.start - t.offset) / bs;
                    let e = at + (r.end - t.offset).div_ceil(bs);
                    push_run(&mut out, s, e, mapped);
                }
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
        let blocks = data.len() as u64 / bs;
        self.check_range(lba, blocks)?;
        self.stamp_if_fow(lba, blocks).await?;
        let (map, targets) = self.resolve(lba, blocks, Route::Write)?;
        let io = self.host_io(&map, lba, blocks);
        drop(map);
        let (failures, tag) = blocking(move || Ok(io.apply(&targets, Some(&data), fua))).await?;
        self.finish_tag(tag);
        self.complete_write(lba, blocks, failures).await
    }

    /// What a host write's downstream I/O needs, detached from `self` so it
    /// can run on a blocking thread.
    pub(crate) fn host_io(&self, map: &Arc<ExtentMap>, lba: u64, blocks: u64) -> HostIo {
        HostIo {
            backends: self.backends(),
            tags: self.tags.clone(),
            map: map.clone(),
            lba,
            blocks,
            bs: self.block_size as u64,
        }
    }

    /// A tagged write finished on every leg: queue its entry for
    /// retirement; a full batch is retired in the background.
    pub(crate) fn finish_tag(&self, tag: Option<u64>) {
        let (Some(tag), Some(tags)) = (tag, &self.tags) else {
            return;
        };
        if let Some(batch) = tags.complete(tag, false) {
            let tags = tags.clone();
            let live: Vec<usize> = self.map.load().leg_ids(|st| st != LegState::Dead);
            let name = self.name.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = tags.retire(&batch, &live) {
                    tracing::warn!(volume = %name, "tag retirement failed: {e}");
                }
            });
        }
    }

    /// Correlates the status of a write's downstream I/Os: it succeeds when
    /// every piece reached at least one live leg. Legs that failed are marked
    /// dead (durably) before this returns, so the host never sees success
    /// for data only a leg about to be forgotten holds.
    pub(crate) async fn complete_write(
        &self,
        lba: u64,
        blocks: u64,
        failures: Vec<(Target, std::io::Error)>,
    ) -> Result<(), EngineError> {
        let Some(first) = failures.first() else {
            return Ok(());
        };
        let mut legs = Vec::new();
        for (t, e) in &failures {
            match t.leg {
                Some(l) => legs.push(l),
                // Not mirrored: nothing else holds the data.
                None => {
                    return Err(EngineError::Io(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    )))
                }
            }
        }
        tracing::warn!(volume = %self.name, legs = ?legs, error = %first.1, "mirror leg write failed");
        self.fail_legs(&legs, Some((lba, blocks))).await
    }

    /// Marks legs dead: bumps the generation, sets fault-on-write on every
    /// mirrored extent (so the first write to each afterwards stamps its
    /// age), and records it durably. With `written`, the regions of the
    /// write that found the failure are stamped too: the survivors hold
    /// data the dead leg lacks. Refuses to kill a mirror's last Up leg.
    pub async fn fail_legs(
        &self,
        legs: &[usize],
        written: Option<(u64, u64)>,
    ) -> Result<(), EngineError> {
        let _cp = self.cp.lock().await;
        let mut map = (*self.map.load_full()).clone();
        let known = map.legs();
        let mut meta = self.meta.lock().clone();
        let mut newly_dead = false;
        let mut uncopied: BTreeSet<u64> = BTreeSet::new();
        for &id in legs {
            let Some(&(_, st)) = known.iter().find(|l| l.0 == id) else {
                return Err(invalid("no such mirror leg"));
            };
            if st == LegState::Dead {
                // False alarm: someone already handled this leg.
                continue;
            }
            if !map.can_lose(id) {
                return Err(EngineError::Io(std::io::Error::other(format!(
                    "leg {id} is its mirror's last live leg"
                ))));
            }
            map = map.with_leg_state(id, LegState::Dead);
            if let Some(e) = meta.legs.get_mut(&id) {
                e.0 = LegState::Dead;
            }
            // A later attach computes its copy list afresh from the ages;
            // regions it had still to copy count as written now.
            if let Some(t) = meta.todo.remove(&id) {
                uncopied.extend(t);
            }
            newly_dead = true;
        }
        if newly_dead {
            meta.generation += 1;
            map = map.with_fow(true, |_, _| true);
            let gen = meta.generation;
            for r in uncopied {
                meta.ages.insert(r, gen);
            }
        }
        if let Some((lba, blocks)) = written {
            let gen = meta.generation;
            for r in self.regions(lba, blocks) {
                meta.ages.insert(r, gen);
            }
            map = map.with_fow(false, |_, e| overlaps(e.start, e.len, lba, blocks));
        }
        self.persist(&meta).await?;
        self.generation.store(meta.generation, Ordering::Release);
        *self.meta.lock() = meta;
        self.set_map(map);
        Ok(())
    }

    /// Volume regions `lba..lba+blocks` touches.
    fn regions(&self, lba: u64, blocks: u64) -> std::ops::RangeInclusive<u64> {
        let r = self.region_blocks;
        lba / r..=(lba + blocks.max(1) - 1) / r
    }

    async fn persist(&self, meta: &MirrorMeta) -> Result<(), EngineError> {
        let Some(p) = self.meta_path.clone() else {
            return Ok(());
        };
        let m = meta.clone();
        blocking(move || Ok(m.save(&p)?)).await
    }

    /// The fault-on-write handler: the first write to a region after a leg
    /// died stamps the region's age with the current generation (durably)
    /// and clears the flag, so later writes stay on the fast path.
    async fn stamp_if_fow(&self, lba: u64, blocks: u64) -> Result<(), EngineError> {
        let has_fow = |m: &ExtentMap| {
            let mut cur = lba;
            while cur < lba + blocks {
                match m.lookup(cur) {
                    Some((e, r)) => {
                        if r.fault_on_write {
                            return true;
                        }
                        cur = e.end();
                    }
                    None => return false,
                }
            }
            false
        };
        if !self.mirrored || !has_fow(&self.map.load()) {
            return Ok(());
        }
        let _cp = self.cp.lock().await;
        let map = self.map.load_full();
        if !has_fow(&map) {
            return Ok(());
        }
        let mut meta = self.meta.lock().clone();
        let gen = meta.generation;
        for r in self.regions(lba, blocks) {
            meta.ages.insert(r, gen);
        }
        let next = map.with_fow(false, |_, e| overlaps(e.start, e.len, lba, blocks));
        self.persist(&meta).await?;
        *self.meta.lock() = meta;
        // Less restrictive: no need to wait for older I/Os.
        self.set_map(next);
        Ok(())
    }

    /// Publishes a map no more restrictive than the current one: I/Os
    /// resolved through older versions may go on.
    pub(crate) fn set_map(&self, next: ExtentMap) {
        self.retired_maps.retire(self.map.swap(Arc::new(next)));
    }

    /// Publishes a more restrictive map and waits until every I/O resolved
    /// through an older one has finished. Never call it holding `cp`.
    async fn publish_and_drain(&self, next: ExtentMap) {
        self.set_map(next);
        self.retired_maps.drain().await;
    }

    /// Re-attaches a dead leg and resynchronises it: the leg takes writes at
    /// once but serves no reads until every region written since it was
    /// last in sync has been copied to it from a live leg. Returns the
    /// bytes copied.
    pub async fn attach_leg(&self, id: usize) -> Result<u64, EngineError> {
        {
            let _cp = self.cp.lock().await;
            let map = self.map.load_full();
            match map.legs().iter().find(|l| l.0 == id) {
                Some((_, LegState::Dead)) => {}
                Some(_) => return Err(invalid("leg is not dead")),
                None => return Err(invalid("no such mirror leg")),
            }
            // The leg's old tag entries describe writes the resync
            // supersedes; left in place they would look unmatched later.
            if let Some(t) = self.tags.as_ref().and_then(|t| t.tables.get(&id)).cloned() {
                blocking(move || Ok(t.wipe()?)).await?;
            }
            let mut meta = self.meta.lock().clone();
            let since = meta.legs.get(&id).map(|l| l.1).unwrap_or(0);
            if let Some(e) = meta.legs.get_mut(&id) {
                e.0 = LegState::Resync;
            }
            let todo = meta
                .ages
                .iter()
                .filter(|(_, g)| **g > since)
                .map(|(r, _)| *r)
                .collect();
            meta.todo.insert(id, todo);
            self.persist(&meta).await?;
            *self.meta.lock() = meta;
            let next = map.with_leg_state(id, LegState::Resync);
            drop(map);
            self.set_map(next);
        }
        // Writes resolved through any older map could skip the leg: wait
        // them out so every write from here on reaches it. Not under the CP
        // lock: a write holding a range lock may need it (FoW stamping)
        // while an admission under an old map waits for that range.
        self.retired_maps.drain().await;
        self.run_resync(id).await
    }

    /// Finishes the resyncs a restart interrupted: each leg that was in
    /// resync gets the regions still on its list (plus those a crash may
    /// have left it short of), then serves reads again. Returns the bytes
    /// copied.
    pub async fn resume_resyncs(&self) -> Result<u64, EngineError> {
        let legs: Vec<usize> = self.map.load().leg_ids(|st| st == LegState::Resync);
        let mut copied = 0;
        let mut first_err = None;
        // One leg failing must not leave the others in resync.
        for id in legs {
            tracing::info!(volume = %self.name, leg = id, "resuming the resync a restart interrupted");
            match self.run_resync(id).await {
                Ok(n) => copied += n,
                Err(e) => {
                    tracing::warn!(volume = %self.name, leg = id, "resync failed: {e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(copied),
        }
    }

    /// Copies the regions on leg `id`'s resync list to it and marks it Up.
    async fn run_resync(&self, id: usize) -> Result<u64, EngineError> {
        let (since, list) = {
            let meta = self.meta.lock();
            let since = meta.legs.get(&id).map(|l| l.1).unwrap_or(0);
            let list: Vec<u64> = meta
                .todo
                .get(&id)
                .map(|t| t.iter().copied().collect())
                .unwrap_or_default();
            (since, list)
        };
        let bs = self.block_size as u64;
        let nb = self.num_blocks();
        // Region numbers come from a file: bounded before use.
        let ranges: Vec<(u64, u64, u64)> = list
            .iter()
            .filter_map(|r| Some((*r, r.checked_mul(self.region_blocks)?)))
            .filter(|(_, s)| *s < nb)
            .map(|(r, s)| (r, s, self.region_blocks.min(nb - s)))
            .collect();
        {
            let mut p = self.resync.lock();
            *p = ResyncRun {
                leg: Some(id),
                active: true,
                done: 0,
                total: ranges.iter().map(|r| r.2 * bs).sum(),
                started: Some(Instant::now()),
                elapsed: Duration::ZERO,
            };
        }
        tracing::info!(volume = %self.name, leg = id, since, regions = ranges.len(), "resync started");
        let token = self.resync_tokens.fetch_add(1, Ordering::SeqCst) + 1;
        self.resync_runs.lock().insert(id, token);
        let r = self.copy_regions(id, token, &ranges).await;
        let copied = {
            let mut p = self.resync.lock();
            // A superseded run leaves the progress to the newer one.
            if self.resync_runs.lock().get(&id) == Some(&token) {
                p.active = false;
                p.elapsed = p.started.map(|s| s.elapsed()).unwrap_or_default();
            }
            p.done
        };
        match r {
            Ok(true) => {}
            Ok(false) => {
                return Err(EngineError::Io(std::io::Error::other(
                    "resync superseded: the leg failed or a newer resync took over",
                )))
            }
            Err(e) => {
                // The leg failed again (or the source did): back to dead.
                if self.resync_current(id, token) {
                    let _ = self.fail_legs(&[id], None).await;
                }
                return Err(e);
            }
        }
        let _cp = self.cp.lock().await;
        // The leg may have failed again (or been failed by hand) meanwhile,
        // or a newer run taken over.
        if !self.resync_current(id, token) {
            return Err(EngineError::Io(std::io::Error::other(
                "leg left resync, or a newer resync took over, before it completed",
            )));
        }
        let mut map = self.map.load_full().with_leg_state(id, LegState::Up);
        let mut meta = self.meta.lock().clone();
        let gen = meta.generation;
        if let Some(e) = meta.legs.get_mut(&id) {
            *e = (LegState::Up, gen);
        }
        meta.todo.remove(&id);
        if meta.legs.values().all(|l| l.0 == LegState::Up) {
            meta.ages.clear();
            map = map.with_fow(false, |_, _| true);
        }
        self.persist(&meta).await?;
        *self.meta.lock() = meta;
        self.set_map(map);
        tracing::info!(volume = %self.name, leg = id, copied, "resync done");
        Ok(copied)
    }

    /// Copies `(region, start, blocks)` ranges to leg `id`. Every so often
    /// the copies are flushed and the regions struck off the leg's durable
    /// list, so a restart resumes after them.
    /// Whether `token` is leg `id`'s current resync run and the leg is
    /// still in resync.
    fn resync_current(&self, id: usize, token: u64) -> bool {
        self.resync_runs.lock().get(&id) == Some(&token)
            && self.map.load().legs().contains(&(id, LegState::Resync))
    }

    /// Copies `ranges` to leg `id`; Ok(false) when the run was superseded
    /// (see [`Volume::resync_current`]) and stopped.
    async fn copy_regions(
        &self,
        id: usize,
        token: u64,
        ranges: &[(u64, u64, u64)],
    ) -> Result<bool, EngineError> {
        let bs = self.block_size as u64;
        let mut copied: Vec<u64> = Vec::new();
        let mut last_save = Instant::now();
        for (i, &(region, s, n)) in ranges.iter().enumerate() {
            if !self.resync_current(id, token) {
                return Ok(false);
            }
            {
                // Exclusive: no host write to the region can interleave with
                // the copy and be overwritten by older data.
                let _g = self.locks.exclusive(s, n).await;
                let (m1, src) = self.resolve(s, n, Route::Read(self.next_read_pick()))?;
                let (m2, dst) = self.resolve(s, n, Route::Leg(id))?;
                let backends = self.backends();
                let failures = blocking(move || {
                    let _maps = (m1, m2);
                    let mut buf = vec![0u8; (n * bs) as usize];
                    read_targets(&backends, &src, &mut buf, bs)?;
                    Ok(write_targets(&backends, &dst, &buf, false, bs))
                })
                .await?;
                if let Some((_, e)) = failures.into_iter().next() {
                    return Err(EngineError::Io(e));
                }
            }
            self.resync.lock().done += n * bs;
            self.resync_copied.fetch_add(n * bs, Ordering::Relaxed);
            copied.push(region);
            let due =
                copied.len() >= RESYNC_SAVE_REGIONS || last_save.elapsed() >= RESYNC_SAVE_INTERVAL;
            if i + 1 < ranges.len() && due {
                self.save_resync_progress(id, token, &std::mem::take(&mut copied))
                    .await?;
                last_save = Instant::now();
            }
        }
        // The copies must be durable before the leg is declared in sync.
        self.flush_backends().await?;
        Ok(true)
    }

    async fn flush_backends(&self) -> Result<(), EngineError> {
        let (backends, skip) = (self.backends(), self.dead_only_backends());
        blocking(move || Ok(flush_live(&backends, &skip)?)).await
    }

    /// Backends that only dead legs use: nothing durable depends on them,
    /// and a failing device there must not fail the volume's flushes.
    fn dead_only_backends(&self) -> BTreeSet<usize> {
        let map = self.map.load_full();
        let mut uses = Vec::new();
        for r in map.redirects() {
            r.desc.backends(None, &mut uses);
        }
        if !uses.iter().any(|u| u.0 == Some(LegState::Dead)) {
            return BTreeSet::new();
        }
        let live: BTreeSet<usize> = uses
            .iter()
            .filter(|u| u.0 != Some(LegState::Dead))
            .map(|u| u.1)
            .collect();
        uses.iter()
            .filter(|u| u.0 == Some(LegState::Dead) && !live.contains(&u.1))
            .map(|u| u.1)
            .collect()
    }

    /// Makes the copies of `regions` durable, then strikes them off leg
    /// `id`'s resync list.
    async fn save_resync_progress(
        &self,
        id: usize,
        token: u64,
        regions: &[u64],
    ) -> Result<(), EngineError> {
        self.flush_backends().await?;
        let _cp = self.cp.lock().await;
        // A newer run has its own list; this one's copies do not count.
        if !self.resync_current(id, token) {
            return Ok(());
        }
        let mut meta = self.meta.lock().clone();
        // Gone when the leg failed meanwhile.
        let Some(todo) = meta.todo.get_mut(&id) else {
            return Ok(());
        };
        for r in regions {
            todo.remove(r);
        }
        self.persist(&meta).await?;
        *self.meta.lock() = meta;
        Ok(())
    }

    /// Bytes resyncs have copied since the volume was opened.
    pub fn resync_copied_bytes(&self) -> u64 {
        self.resync_copied.load(Ordering::Relaxed)
    }

    pub fn mirror_status(&self) -> MirrorStatus {
        let meta = self.meta.lock().clone();
        let p = self.resync.lock();
        let elapsed = if p.active {
            p.started.map(|s| s.elapsed()).unwrap_or_default()
        } else {
            p.elapsed
        };
        let rate = if elapsed.as_secs_f64() > 0.0 {
            p.done as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        };
        let eta = (rate > 0.0).then(|| (p.total - p.done.min(p.total)) as f64 / rate);
        let since: u64 = meta.legs.values().map(|l| l.1).min().unwrap_or(0);
        MirrorStatus {
            generation: meta.generation,
            legs: self.map.load().legs(),
            stale_regions: meta.ages.values().filter(|g| **g > since).count(),
            region_blocks: self.region_blocks,
            resync: ResyncStatus {
                leg: p.leg,
                active: p.active,
                done_bytes: p.done,
                total_bytes: p.total,
                rate_bps: rate,
                eta_secs: eta,
            },
        }
    }

    /// A human-readable description of the extent map.
    pub fn describe_layout(&self) -> String {
        let map = self.map.load();
        let mut s = format!(
            "volume {} blocks={} bs={} region={} generation={}\n",
            self.name,
            self.num_blocks(),
            self.block_size,
            self.region_blocks,
            self.generation()
        );
        let mut last = None;
        for e in map.extents() {
            // Runs of region pieces sharing an entry print once.
            if last == Some(e.redirect) {
                continue;
            }
            last = Some(e.redirect);
            if let Some(r) = map.redirect(e.redirect) {
                s.push_str(&format!(
                    "  extent @{} -> [{}]{}{}\n",
                    e.start,
                    describe_desc(&r.desc, &self.backends()),
                    if r.fault_on_write { " FoW" } else { "" },
                    if r.fault_on_read { " FoR" } else { "" },
                ));
            }
        }
        s
    }

    /// Makes every completed write durable; on a tagged mirror, also
    /// retires the tags of completed writes (their data is durable now).
    pub async fn flush(&self) -> Result<(), EngineError> {
        self.flush_journals().await?;
        let (backends, skip) = (self.backends(), self.dead_only_backends());
        let tags = self.tags.clone();
        let live: Vec<usize> = self.map.load().leg_ids(|st| st != LegState::Dead);
        blocking(move || {
            match tags {
                Some(t) => {
                    // Taken before the flush: only writes it covers retire.
                    let done = t.take_done();
                    if let Err(e) = flush_live(&backends, &skip) {
                        t.requeue(&done);
                        return Err(e.into());
                    }
                    t.retire(&done, &live)?;
                }
                None => flush_live(&backends, &skip)?,
            }
            Ok(())
        })
        .await
    }

    /// Deallocates blocks; they read back as zeros. On a mirror every live
    /// leg is discarded, like a write of zeros.
    pub async fn discard(&self, lba: u64, blocks: u64) -> Result<(), EngineError> {
        self.check_range(lba, blocks)?;
        let _g = self.write_lock(lba, blocks).await;
        // Journaled too: a replay must not bring back data a discard removed.
        let _pin = self.journal_discard(lba, blocks).await?;
        self.stamp_if_fow(lba, blocks).await?;
        let (map, targets) = self.resolve(lba, blocks, Route::Write)?;
        let io = self.host_io(&map, lba, blocks);
        drop(map);
        let (failures, tag) = blocking(move || Ok(io.apply(&targets, None, false))).await?;
        self.finish_tag(tag);
        self.complete_write(lba, blocks, failures).await
    }

    /// Grows a single-backend volume to `nblocks`.
    pub async fn grow(&self, nblocks: u64) -> Result<(), EngineError> {
        if self.migration_status().active {
            return Err(invalid("a volume cannot grow while it is being migrated"));
        }
        if nblocks <= self.num_blocks() || !self.plain {
            return Err(EngineError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "volume can only grow, and only when it is one plain backend",
            )));
        }
        let b = self.backends()[0].clone();
        let bytes = nblocks * self.block_size as u64;
        blocking(move || Ok(b.grow(bytes)?)).await?;
        self.set_map(self.map.load().grown(nblocks));
        self.nblocks.store(nblocks, Ordering::Release);
        Ok(())
    }
}

/// Every entry the Up legs of each mirror hold, as (entry, a leg holding
/// it, the mirror's other legs). An entry on every leg is no proof its data
/// reached every leg (the entries go first, then the data), so each range
/// is copied from one leg to the others, whether the tables match or not.
///
/// Order: first the entries only some legs hold, in tag order, each from a
/// leg holding it (so a write that reached one leg ends up whole
/// everywhere); then the matched ones, in tag order, from the mirror's
/// first leg. A matched range never undoes an unmatched one: overlapping
/// mirror writes are serialized, so a later write exists only once an
/// earlier one is done on every leg, and the first leg holds the unmatched
/// data by then.
fn unretired_ranges(
    groups: &[Vec<usize>],
    tables: &BTreeMap<usize, Vec<TagEntry>>,
) -> Vec<(TagEntry, usize, Vec<usize>)> {
    let mut out = Vec::new();
    let mut matched = Vec::new();
    for g in groups {
        let all: BTreeSet<TagEntry> = g
            .iter()
            .filter_map(|l| tables.get(l))
            .flatten()
            .copied()
            .collect();
        for e in all {
            let Some(src) = g
                .iter()
                .copied()
                .find(|l| tables.get(l).is_some_and(|es| es.contains(&e)))
            else {
                continue;
            };
            let others: Vec<usize> = g.iter().copied().filter(|l| *l != src).collect();
            let everywhere = others
                .iter()
                .all(|l| tables.get(l).is_some_and(|es| es.contains(&e)));
            if everywhere {
                matched.push((e, src, others));
            } else {
                out.push((e, src, others));
            }
        }
    }
    out.sort_by_key(|x| x.0.tag);
    matched.sort_by_key(|x| x.0.tag);
    out.extend(matched);
    out
}

fn overlaps(s1: u64, n1: u64, s2: u64, n2: u64) -> bool {
    s1 < s2 + n2.max(1) && s2 < s1 + n1
}

fn to_io(e: EngineError) -> std::io::Error {
    match e {
        EngineError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

fn describe_desc(d: &StorageDesc, backends: &[Arc<dyn Backend>]) -> String {
    match d {
        StorageDesc::Remap { backend, offset } => {
            let name = backends
                .get(*backend)
                .map(|b| b.describe())
                .unwrap_or_else(|| "?".into());
            if *offset == 0 {
                name
            } else {
                format!("{name}+{offset}")
            }
        }
        StorageDesc::Stripe { legs, unit_blocks } => format!(
            "stripe unit={unit_blocks} ({})",
            legs.iter()
                .map(|l| describe_desc(l, backends))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        StorageDesc::Mirror { legs } => format!(
            "mirror ({})",
            legs.iter()
                .map(|l| format!(
                    "leg{} {}: {}",
                    l.id,
                    l.state.as_str(),
                    describe_desc(&l.desc, backends)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(crate) fn backend_of<'a>(
    backends: &'a [Arc<dyn Backend>],
    t: &Target,
) -> Result<&'a Arc<dyn Backend>, EngineError> {
    backends
        .get(t.backend)
        .ok_or(EngineError::Unmapped(t.buf_block))
}

/// Reads every target into its place in `buf`.
pub(crate) fn read_targets(
    backends: &[Arc<dyn Backend>],
    targets: &[Target],
    buf: &mut [u8],
    bs: u64,
) -> Result<(), EngineError> {
    for t in targets {
        let at = (t.buf_block * bs) as usize;
        let len = (t.blocks * bs) as usize;
        let dst = buf.get_mut(at..at + len).ok_or(EngineError::BadLength {
            got: at + len,
            expected: 0,
        })?;
        backend_of(backends, t)?.read_at(t.offset, dst)?;
    }
    Ok(())
}

/// Writes every target (mirror legs one after another) and returns the
/// ones that failed; the caller correlates status.
pub(crate) fn write_targets(
    backends: &[Arc<dyn Backend>],
    targets: &[Target],
    data: &[u8],
    fua: bool,
    bs: u64,
) -> Vec<(Target, std::io::Error)> {
    let mut failures = Vec::new();
    for t in targets {
        let at = (t.buf_block * bs) as usize;
        let len = (t.blocks * bs) as usize;
        let r = match (backend_of(backends, t), data.get(at..at + len)) {
            (Ok(b), Some(src)) => b.write_at(t.offset, src, fua),
            (Err(e), _) => Err(to_io(e)),
            (_, None) => Err(std::io::Error::other("write target outside the buffer")),
        };
        if let Err(e) = r {
            failures.push((*t, e));
        }
    }
    failures
}

/// Flushes every backend but those in `skip` (dead legs only).
fn flush_live(backends: &[Arc<dyn Backend>], skip: &BTreeSet<usize>) -> std::io::Result<()> {
    for (i, b) in backends.iter().enumerate() {
        if !skip.contains(&i) {
            b.flush()?;
        }
    }
    Ok(())
}

/// What a host write's downstream I/O did: the targets that failed, and the
/// tag it used (tagged mirrors).
pub(crate) type Applied = (Vec<(Target, std::io::Error)>, Option<u64>);

/// A host write's (or discard's) downstream I/O, ready for a blocking thread.
pub(crate) struct HostIo {
    backends: Arc<Vec<Arc<dyn Backend>>>,
    tags: Option<Arc<Tags>>,
    /// The map the I/O resolved through, held until it is done.
    map: Arc<ExtentMap>,
    lba: u64,
    blocks: u64,
    bs: u64,
}

impl HostIo {
    /// Writes `data` (or discards, with None) to every target. On a tagged
    /// mirror, each leg durably records the write's tag before any of its
    /// data; a leg whose entry cannot be recorded gets no data and counts
    /// as failed. Returns the failures and the tag used.
    pub(crate) fn apply(&self, targets: &[Target], data: Option<&[u8]>, fua: bool) -> Applied {
        let mut tag = None;
        if let (Some(tags), true) = (&self.tags, targets.iter().any(|t| t.leg.is_some())) {
            match self.issue(tags) {
                Ok(t) => tag = Some(t),
                Err(e) => {
                    // No leg got anything: fail the write as unmirrored.
                    let failed = targets
                        .first()
                        .map(|t| (Target { leg: None, ..*t }, e))
                        .into_iter()
                        .collect();
                    return (failed, None);
                }
            }
        }
        self.apply_tagged(targets, data, fua, tag)
    }

    /// [`HostIo::apply`] for a write without FUA on the caller's (async)
    /// thread, when every store it touches takes a buffered write without
    /// waiting and a tag is free at once; None otherwise.
    pub(crate) fn try_apply_inline(&self, targets: &[Target], data: &[u8]) -> Option<Applied> {
        let bs = self.bs as usize;
        let stores_ok = targets.iter().all(|t| {
            backend_of(&self.backends, t)
                .is_ok_and(|b| b.write_inline_ok(t.offset, t.blocks as usize * bs))
        });
        if !stores_ok {
            return None;
        }
        let mut tag = None;
        if let (Some(tags), true) = (&self.tags, targets.iter().any(|t| t.leg.is_some())) {
            let t = tags.issue()?;
            if !tags.tables.values().all(|table| table.inline_ok(t)) {
                // To the pool instead, which takes its own tag.
                tags.cancel(t);
                return None;
            }
            tag = Some(t);
        }
        Some(self.apply_tagged(targets, Some(data), false, tag))
    }

    fn apply_tagged(
        &self,
        targets: &[Target],
        data: Option<&[u8]>,
        fua: bool,
        tag: Option<u64>,
    ) -> Applied {
        let mut groups: BTreeMap<Option<usize>, Vec<Target>> = BTreeMap::new();
        for t in targets {
            groups.entry(t.leg).or_default().push(*t);
        }
        let mirrored = groups.keys().any(|k| k.is_some());
        let entry = tag.map(|tag| TagEntry {
            tag,
            lba: self.lba,
            blocks: self.blocks,
        });
        let used = entry.map(|e| e.tag);
        let mut failures = Vec::new();
        // Each leg's entry is durable before any of its data is written; a
        // leg that cannot record it gets no data.
        if let (Some(e), Some(tags)) = (entry, &self.tags) {
            let legs: Vec<usize> = groups.keys().flatten().copied().collect();
            for leg in legs {
                let Some(table) = tags.tables.get(&leg) else {
                    continue;
                };
                if let Err(err) = table.record(&e) {
                    if let Some(ts) = groups.remove(&Some(leg)) {
                        failures.extend(ts.first().map(|t| (*t, err)));
                    }
                }
            }
        }
        // FUA legs run in parallel, one thread per leg, so a mirrored write
        // costs one device round trip, not one per leg. Page-cache writes
        // are cheaper than a thread.
        if mirrored && groups.len() > 1 && fua {
            std::thread::scope(|sc| {
                let handles: Vec<_> = groups
                    .values()
                    .map(|ts| (ts[0], sc.spawn(move || self.leg_io(ts, data, fua))))
                    .collect();
                for (first, h) in handles {
                    match h.join() {
                        Ok(f) => failures.extend(f),
                        Err(_) => {
                            failures.push((first, std::io::Error::other("leg writer panicked")))
                        }
                    }
                }
            });
            return (failures, used);
        }
        for ts in groups.values() {
            failures.extend(self.leg_io(ts, data, fua));
        }
        (failures, used)
    }

    /// One leg's share of a host write.
    fn leg_io(
        &self,
        targets: &[Target],
        data: Option<&[u8]>,
        fua: bool,
    ) -> Vec<(Target, std::io::Error)> {
        let bs = self.bs;
        let mut failures = Vec::new();
        for t in targets {
            let r = match (backend_of(&self.backends, t), data) {
                (Err(e), _) => Err(to_io(e)),
                (Ok(b), None) => b.discard(t.offset, t.blocks * bs),
                (Ok(b), Some(d)) => {
                    let at = (t.buf_block * bs) as usize;
                    match d.get(at..at + (t.blocks * bs) as usize) {
                        Some(src) => b.write_at(t.offset, src, fua),
                        None => Err(std::io::Error::other("write target outside the buffer")),
                    }
                }
            };
            if let Err(e) = r {
                failures.push((*t, e));
            }
        }
        failures
    }

    /// A fresh tag; when its slot is still taken, retires what is waiting
    /// (or waits for in-flight writes to finish). Gives up after a while
    /// (retirement keeps failing): the write then fails rather than hang.
    fn issue(&self, tags: &Tags) -> std::io::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(t) = tags.issue() {
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(
                    "tag table full: retirement is failing",
                ));
            }
            let batch = tags.take_done();
            let live: Vec<usize> = self.map.leg_ids(|st| st != LegState::Dead);
            if batch.is_empty() || tags.retire(&batch, &live).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
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
