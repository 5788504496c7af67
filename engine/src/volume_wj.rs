//! Write journaling on a volume: every host write, and every discard, is
//! appended to the active journal before it goes in place. A full journal
//! is the journal-full fault: the control path seals it and swaps in an
//! empty spare. Sealed journals wait for a copy agent
//! ([`Volume::take_sealed_journals`]), or, on a volume opened with
//! [`Volume::open_write_journals`] (no copy agent), are recycled by the
//! control path as soon as the data they cover is durable in place.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use crate::error::EngineError;
use crate::fault::FaultReason;
use crate::wjournal::{AppendError, JEntry, JOp, ReplayMerge, WriteJournal};

use super::{blocking, invalid, Volume};

/// Journal data replay at open holds in memory at a time.
const REPLAY_BATCH_BYTES: usize = 16 << 20;

/// A volume's journals and their bookkeeping.
#[derive(Debug)]
pub(crate) struct Journaling {
    /// The journal host writes are appended to.
    active: ArcSwapOption<WriteJournal>,
    /// Empty journals to swap in when the active one fills.
    spares: parking_lot::Mutex<Vec<Arc<WriteJournal>>>,
    /// Full journals swapped out, waiting for a copy agent or recycling.
    sealed: parking_lot::Mutex<Vec<Arc<WriteJournal>>>,
    /// Entry sequence numbers, shared by all the journals so that replay
    /// can order entries across them.
    seq: Arc<AtomicU64>,
    /// Bumped on every swap: a writer that found the journal full swaps
    /// only if nobody has since.
    swaps: AtomicU64,
    swap: tokio::sync::Mutex<()>,
    /// One recycling at a time (background or inline).
    recycle: tokio::sync::Mutex<()>,
    auto_recycle: AtomicBool,
    recycled: AtomicU64,
    sealed_notify: tokio::sync::Notify,
    replayed: AtomicU64,
    count: AtomicUsize,
}

impl Default for Journaling {
    fn default() -> Self {
        Self {
            active: ArcSwapOption::empty(),
            spares: parking_lot::Mutex::new(Vec::new()),
            sealed: parking_lot::Mutex::new(Vec::new()),
            seq: Arc::new(AtomicU64::new(1)),
            swaps: AtomicU64::new(0),
            swap: tokio::sync::Mutex::new(()),
            recycle: tokio::sync::Mutex::new(()),
            auto_recycle: AtomicBool::new(false),
            recycled: AtomicU64::new(0),
            sealed_notify: tokio::sync::Notify::new(),
            replayed: AtomicU64::new(0),
            count: AtomicUsize::new(0),
        }
    }
}

/// Write-journal state, for admin and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalStatus {
    /// Journals attached (0: the volume is not journaled).
    pub journals: usize,
    /// Entry bytes the active journal holds, and how many it can.
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub fill_ratio: f64,
    pub spares: usize,
    /// Full journals not yet given back.
    pub sealed: usize,
    /// Sealed journals recycled since open.
    pub recycled: u64,
    /// Entries replayed when the volume was opened.
    pub replayed_at_open: u64,
    pub auto_recycle: bool,
}

/// A journal an in-flight write appended to. While any is held, the
/// journal cannot be recycled: its entry may be all there is of the write.
pub(crate) type JournalPin = Option<Arc<WriteJournal>>;

#[derive(Clone, Copy)]
enum Op<'a> {
    Write(&'a Bytes),
    Discard(u64),
}

impl Volume {
    /// Turns on write journaling: every host write is appended to the
    /// first journal before it is written in place; the others are spares.
    /// Full journals are sealed for a copy agent.
    pub fn attach_write_journals(&self, journals: Vec<Arc<WriteJournal>>) {
        let next = journals.iter().map(|j| j.last_seq()).max().unwrap_or(0) + 1;
        self.wj.seq.store(next, Ordering::SeqCst);
        self.wj.count.store(journals.len(), Ordering::Relaxed);
        let mut it = journals.into_iter();
        self.wj.active.store(it.next());
        *self.wj.spares.lock() = it.collect();
    }

    /// Opens write journaling after a crash or a clean stop: applies the
    /// complete entries of every journal in sequence order (so across
    /// journals too), makes the result durable, empties the journals and
    /// attaches them. Sealed journals are recycled by the control path once
    /// the data they cover is durable in place, so writes never run out of
    /// spares. Returns the entries replayed.
    pub async fn open_write_journals(
        self: &Arc<Self>,
        journals: Vec<Arc<WriteJournal>>,
    ) -> Result<usize, EngineError> {
        self.open_write_journals_retiring(journals, Vec::new())
            .await
    }

    /// [`open_write_journals`](Self::open_write_journals), also replaying
    /// and emptying `retired`: journals the volume used before and no
    /// longer will (its configuration dropped them). Their entries are
    /// ordered with the others'. `journals` may be empty (journaling
    /// turned off): then nothing is attached.
    pub async fn open_write_journals_retiring(
        self: &Arc<Self>,
        journals: Vec<Arc<WriteJournal>>,
        retired: Vec<Arc<WriteJournal>>,
    ) -> Result<usize, EngineError> {
        if journals.len() == 1 {
            return Err(invalid(
                "write journaling needs at least two journals (one active, one spare)",
            ));
        }
        let all: Vec<Arc<WriteJournal>> = journals.iter().chain(&retired).cloned().collect();
        // Merged across journals a batch at a time, so memory stays bounded
        // however large the journals are.
        let mut merge = ReplayMerge::new(&all);
        let mut n = 0;
        loop {
            let (m, batch) = blocking(move || {
                let b = merge.next_batch(REPLAY_BATCH_BYTES)?;
                Ok((merge, b))
            })
            .await?;
            merge = m;
            if batch.is_empty() {
                break;
            }
            if n == 0 {
                tracing::info!(volume = %self.name, "replaying the write journal");
            }
            n += batch.len();
            for e in batch {
                self.apply_entry(e).await?;
            }
        }
        let newest = merge.newest;
        // Durable in place before the entries go.
        self.flush().await?;
        // Oldest first: a crash part-way leaves only journals whose entries
        // are all newer than those already emptied, so replaying them alone
        // cannot put older data over newer.
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by_key(|&i| newest.get(i).copied().unwrap_or(0));
        blocking(move || {
            for i in order {
                if let Some(j) = all.get(i) {
                    j.reset()?;
                }
            }
            Ok(())
        })
        .await?;
        self.wj.replayed.store(n as u64, Ordering::Relaxed);
        if journals.is_empty() {
            return Ok(n);
        }
        self.attach_write_journals(journals);
        self.wj.auto_recycle.store(true, Ordering::SeqCst);
        self.spawn_recycler();
        Ok(n)
    }

    /// Recycles sealed journals in the background as they appear. The task
    /// ends once the volume is gone.
    fn spawn_recycler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(v) = weak.upgrade() else { return };
                let _ = tokio::time::timeout(Duration::from_secs(1), v.wj.sealed_notify.notified())
                    .await;
                if v.wj.sealed.lock().is_empty() {
                    continue;
                }
                if let Err(e) = v.recycle_sealed().await {
                    tracing::warn!(volume = %v.name, "journal recycling failed: {e}");
                }
            }
        });
    }

    /// Gives every sealed journal back as a spare once the data it covers
    /// is durable in place: waits for the writes that appended to it to
    /// finish in place, flushes the volume, then resets the journal.
    /// Returns how many were recycled.
    pub async fn recycle_sealed(&self) -> Result<usize, EngineError> {
        let _r = self.wj.recycle.lock().await;
        // Left in the sealed list (where a host flush finds them) until the
        // volume's data is durable in place.
        let sealed: Vec<Arc<WriteJournal>> = self.wj.sealed.lock().clone();
        if sealed.is_empty() {
            return Ok(0);
        }
        // In-flight writes hold a clone (their pin) until written in place;
        // the list and this copy hold one each.
        for j in &sealed {
            while Arc::strong_count(j) > 2 {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        }
        self.flush().await?;
        let mut n = 0;
        for j in sealed {
            self.wj.sealed.lock().retain(|s| !Arc::ptr_eq(s, &j));
            if let Err(e) = self.recycle_journal(j.clone()).await {
                // Kept sealed (not lost) for a later try.
                self.wj.sealed.lock().push(j);
                return Err(e);
            }
            self.wj.recycled.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        Ok(n)
    }

    /// Whether host writes are journaled.
    pub fn is_journaled(&self) -> bool {
        self.wj.active.load().is_some()
    }

    /// Fraction of the active write journal in use (0 without one).
    pub fn journal_fill_ratio(&self) -> f64 {
        self.wj
            .active
            .load()
            .as_ref()
            .map_or(0.0, |j| j.used() as f64 / j.capacity().max(1) as f64)
    }

    pub fn journal_status(&self) -> JournalStatus {
        let active = self.wj.active.load_full();
        JournalStatus {
            journals: self.wj.count.load(Ordering::Relaxed),
            used_bytes: active.as_ref().map_or(0, |j| j.used()),
            capacity_bytes: active.as_ref().map_or(0, |j| j.capacity()),
            fill_ratio: self.journal_fill_ratio(),
            spares: self.wj.spares.lock().len(),
            sealed: self.wj.sealed.lock().len(),
            recycled: self.wj.recycled.load(Ordering::Relaxed),
            replayed_at_open: self.wj.replayed.load(Ordering::Relaxed),
            auto_recycle: self.wj.auto_recycle.load(Ordering::Relaxed),
        }
    }

    /// Journals that filled up and were swapped out, for a copy agent; give
    /// them back with [`Volume::recycle_journal`] once drained.
    pub fn take_sealed_journals(&self) -> Vec<Arc<WriteJournal>> {
        std::mem::take(&mut *self.wj.sealed.lock())
    }

    /// Empties a drained journal and makes it a spare.
    pub async fn recycle_journal(&self, j: Arc<WriteJournal>) -> Result<(), EngineError> {
        let jj = j.clone();
        blocking(move || Ok(jj.reset()?)).await?;
        self.wj.spares.lock().push(j);
        Ok(())
    }

    /// Makes every journal's entries durable (a host flush must not leave
    /// an older entry to be replayed over data it made durable).
    pub(crate) async fn flush_journals(&self) -> Result<(), EngineError> {
        let mut all: Vec<Arc<WriteJournal>> = self.wj.active.load_full().into_iter().collect();
        all.extend(self.wj.sealed.lock().iter().cloned());
        if all.is_empty() {
            return Ok(());
        }
        blocking(move || {
            for j in &all {
                j.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Whether a write of `len` bytes is journaled and written in place in
    /// pieces (see [`Volume::journaled_write`]).
    pub(crate) fn journal_splits(&self, len: usize) -> bool {
        self.journal_piece_bytes().is_some_and(|max| len > max)
    }

    /// The longest piece of a write journaled as one: half the active
    /// journal, so that it fits an empty one.
    fn journal_piece_bytes(&self) -> Option<usize> {
        let j = self.wj.active.load_full()?;
        Some(2 * j.max_entry_data(self.block_size))
    }

    /// Journals a write, then writes it in place; the caller holds the
    /// range lock. A write longer than half a journal goes piece by piece
    /// (journal, in place, next), so any write fits however small the
    /// journals: a host write is not atomic, and each piece is replayed
    /// whole or not at all.
    pub(crate) async fn journaled_write(
        &self,
        lba: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), EngineError> {
        let max = match self.journal_piece_bytes() {
            Some(max) if data.len() > max => max,
            _ => {
                let _pin = self.journal_append(lba, &data, fua).await?;
                return self.write_unlocked(lba, data, fua).await;
            }
        };
        let bs = self.block_size as usize;
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(max);
            let piece = data.slice(off..off + n);
            let at = lba + (off / bs) as u64;
            // Released before the next piece: that one may need this
            // journal recycled.
            let _pin = self.journal_append(at, &piece, fua).await?;
            self.write_unlocked(at, piece, fua).await?;
            off += n;
        }
        Ok(())
    }

    /// Appends a host write to the active journal. A full journal is the
    /// journal-full fault (counted once per write): the control path seals
    /// it, swaps in an empty spare and retries. Hold the returned pin until
    /// the write is in place.
    pub(crate) async fn journal_append(
        &self,
        lba: u64,
        data: &Bytes,
        fua: bool,
    ) -> Result<JournalPin, EngineError> {
        self.journal_op(lba, Op::Write(data), fua).await
    }

    /// Journals a discard of `blocks` at `lba`.
    pub(crate) async fn journal_discard(
        &self,
        lba: u64,
        blocks: u64,
    ) -> Result<JournalPin, EngineError> {
        let bytes = blocks.saturating_mul(self.block_size as u64);
        self.journal_op(lba, Op::Discard(bytes), false).await
    }

    async fn journal_op(&self, lba: u64, op: Op<'_>, fua: bool) -> Result<JournalPin, EngineError> {
        let bs = self.block_size;
        let (data, discard) = match op {
            Op::Write(d) => (Some(d.clone()), 0),
            Op::Discard(n) => (None, n),
        };
        let len = data.as_ref().map_or(0, |d| d.len());
        let mut counted = false;
        loop {
            // Swaps first: a swap after this makes the value stale, and a
            // stale value only costs a retry.
            let swaps = self.wj.swaps.load(Ordering::SeqCst);
            let Some(j) = self.wj.active.load_full() else {
                return Ok(None);
            };
            if !j.could_hold(len, bs) {
                return Err(invalid("write larger than an empty journal"));
            }
            let (jj, d, seq) = (j.clone(), data.clone(), self.wj.seq.clone());
            let appended = blocking(move || {
                let r = match &d {
                    Some(d) => jj.append(lba, d, bs, fua, &seq),
                    None => jj.append_discard(lba, discard, fua, &seq),
                };
                match r {
                    Ok(_) => Ok(true),
                    Err(AppendError::Full) => Ok(false),
                    Err(AppendError::Io(e)) => Err(EngineError::Io(e)),
                }
            })
            .await?;
            if appended {
                return Ok(Some(j));
            }
            if !counted {
                self.counters.fault(FaultReason::JournalFull);
                counted = true;
            }
            // Hold no pin while waiting: recycling waits for pins to go.
            drop(j);
            self.swap_full(swaps, len).await?;
        }
    }

    /// The control path's journal-full handler: seals the full journal and
    /// swaps in a spare, unless someone swapped since `seen`. Without a
    /// spare, a volume that recycles waits for one.
    async fn swap_full(&self, seen: u64, len: usize) -> Result<(), EngineError> {
        loop {
            {
                let _g = self.wj.swap.lock().await;
                if self.wj.swaps.load(Ordering::SeqCst) != seen {
                    return Ok(());
                }
                let spare = self.wj.spares.lock().pop();
                if let Some(s) = spare {
                    if !s.could_hold(len, self.block_size) {
                        self.wj.spares.lock().push(s);
                        return Err(invalid("write larger than an empty journal"));
                    }
                    if let Some(old) = self.wj.active.swap(Some(s)) {
                        self.wj.sealed.lock().push(old);
                    }
                    self.wj.swaps.fetch_add(1, Ordering::SeqCst);
                    self.wj.sealed_notify.notify_one();
                    return Ok(());
                }
                if !self.wj.auto_recycle.load(Ordering::SeqCst) {
                    return Err(EngineError::Io(std::io::Error::other(
                        "write journal full and no empty journal to swap in",
                    )));
                }
            }
            // Not under the swap lock: writers waiting for it hold no pins,
            // but recycling waits for pins.
            if self.recycle_sealed().await? == 0 && self.wj.spares.lock().is_empty() {
                return Err(EngineError::Io(std::io::Error::other(
                    "write journal full and nothing to recycle",
                )));
            }
        }
    }

    /// Applies a journal's complete entries to the volume in order (after a
    /// crash, or to bring a copy up to date). Returns how many.
    pub async fn replay_journal(&self, j: Arc<WriteJournal>) -> Result<usize, EngineError> {
        let entries: Vec<JEntry> = blocking(move || Ok(j.replay()?)).await?;
        let n = entries.len();
        for e in entries {
            self.apply_entry(e).await?;
        }
        Ok(n)
    }

    /// Applies one entry like the host I/O it records (journaled again if
    /// this volume journals: a replica may).
    async fn apply_entry(&self, e: JEntry) -> Result<(), EngineError> {
        match e.op {
            JOp::Write(data) => self.write(e.lba, Bytes::from(data), false).await,
            JOp::Discard(bytes) => self.discard(e.lba, bytes / self.block_size as u64).await,
        }
    }
}
