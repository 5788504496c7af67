//! The write-journaling primitive: write splitting where one side is a
//! fixed-size on-media journal. Each entry is a header {lba, len, seq,
//! checksum} followed by its data. A full journal is a fault: the control
//! path seals it (for a copy agent, e.g. asynchronous replication, or to be
//! recycled once its data is durable in place) and swaps in an empty one.
//! Replay after a crash yields the complete entries in order and stops at
//! the first torn or stale one.
//!
//! Sequence numbers come from a counter the caller owns, so a volume with
//! several journals can order their entries against each other: within a
//! journal they only increase.
//!
//! Resetting a journal bumps the epoch in its superblock instead of zeroing
//! it: entries of an older epoch are stale and end the replay.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::Backend;
use crate::fnv::{self, fnv1a as fnv};

const SB_MAGIC: u32 = 0x5654_574a; // "VTWJ"
const ENTRY_MAGIC: u32 = 0x5654_5745; // "VTWE"
/// Superblock and header sizes; entries are padded to `ALIGN`.
const ALIGN: u64 = 512;
const HEADER: usize = 48;
/// Entry flag: a discard of `len` bytes, with no data.
const FLAG_DISCARD: u32 = 1;

/// What a replayed entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JOp {
    Write(Vec<u8>),
    /// Deallocate this many bytes.
    Discard(u64),
}

/// A replayed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JEntry {
    pub seq: u64,
    pub lba: u64,
    pub op: JOp,
}

impl JEntry {
    /// Bytes of the volume the entry covers.
    pub fn len(&self) -> u64 {
        match &self.op {
            JOp::Write(d) => d.len() as u64,
            JOp::Discard(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("journal full")]
    Full,
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug)]
struct Cursor {
    epoch: u64,
    at: u64,
    /// Highest sequence number held (0: none).
    last_seq: u64,
}

/// One journal device.
#[derive(Debug)]
pub struct WriteJournal {
    store: Arc<dyn Backend>,
    cur: Mutex<Cursor>,
}

fn entry_bytes(len: usize) -> u64 {
    (HEADER as u64 + len as u64).div_ceil(ALIGN) * ALIGN
}

impl WriteJournal {
    /// Opens a journal; a store without a valid superblock is formatted.
    /// The cursor is placed after the complete entries (see [`replay`]).
    pub fn open(store: Arc<dyn Backend>) -> io::Result<Self> {
        if store.len() < 2 * ALIGN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "journal too small",
            ));
        }
        let j = Self {
            store,
            cur: Mutex::new(Cursor {
                epoch: 0,
                at: ALIGN,
                last_seq: 0,
            }),
        };
        match j.read_epoch()? {
            Some(e) => {
                let mut pos = ScanPos::new(e);
                while j.next_entry(&mut pos)?.is_some() {}
                let mut c = j.cur.lock();
                c.epoch = e;
                c.last_seq = pos.last_seq.unwrap_or(0);
                c.at = pos.at;
            }
            None => j.write_epoch(1)?,
        }
        Ok(j)
    }

    /// Opens a journal only if `store` already holds one (a valid
    /// superblock); otherwise leaves the store untouched and returns `None`.
    pub fn open_existing(store: Arc<dyn Backend>) -> io::Result<Option<Self>> {
        if store.len() < 2 * ALIGN {
            return Ok(None);
        }
        let probe = Self {
            store: store.clone(),
            cur: Mutex::new(Cursor {
                epoch: 0,
                at: ALIGN,
                last_seq: 0,
            }),
        };
        match probe.read_epoch()? {
            Some(_) => Self::open(store).map(Some),
            None => Ok(None),
        }
    }

    fn read_epoch(&self) -> io::Result<Option<u64>> {
        let mut sb = [0u8; 16];
        self.store.read_at(0, &mut sb)?;
        let magic = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
        let mut e = [0u8; 8];
        e.copy_from_slice(&sb[4..12]);
        let c = u32::from_le_bytes([sb[12], sb[13], sb[14], sb[15]]);
        if magic != SB_MAGIC || c != fnv(&[&sb[..12]]) {
            return Ok(None);
        }
        Ok(Some(u64::from_le_bytes(e)))
    }

    fn write_epoch(&self, epoch: u64) -> io::Result<()> {
        let mut sb = [0u8; 16];
        sb[0..4].copy_from_slice(&SB_MAGIC.to_le_bytes());
        sb[4..12].copy_from_slice(&epoch.to_le_bytes());
        let c = fnv(&[&sb[..12]]);
        sb[12..16].copy_from_slice(&c.to_le_bytes());
        self.store.write_at(0, &sb, true)?;
        let mut cur = self.cur.lock();
        *cur = Cursor {
            epoch,
            at: ALIGN,
            last_seq: 0,
        };
        Ok(())
    }

    /// Bytes of entries currently held.
    pub fn used(&self) -> u64 {
        self.cur.lock().at - ALIGN
    }

    pub fn capacity(&self) -> u64 {
        self.store.len() - ALIGN
    }

    /// Highest sequence number the journal holds (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.cur.lock().last_seq
    }

    /// Largest data one entry carries: a quarter of the journal, in whole
    /// blocks, so one big write cannot take a whole journal. Longer writes
    /// become several entries.
    pub fn max_entry_data(&self, bs: u32) -> usize {
        let bs = u64::from(bs.max(1));
        ((self.capacity() / 4) / bs * bs).max(bs) as usize
    }

    /// Journal bytes a write of `len` bytes takes.
    fn bytes_for(&self, len: usize, bs: u32) -> u64 {
        let max = self.max_entry_data(bs);
        let full = (len / max) as u64;
        let rest = len % max;
        full * entry_bytes(max) + if rest > 0 { entry_bytes(rest) } else { 0 }
    }

    /// Whether a write of `len` bytes fits now.
    pub fn has_room(&self, len: usize, bs: u32) -> bool {
        self.cur.lock().at + self.bytes_for(len, bs) <= self.store.len()
    }

    /// Whether a write of `len` bytes fits in this journal when it is empty.
    pub fn could_hold(&self, len: usize, bs: u32) -> bool {
        ALIGN + self.bytes_for(len, bs) <= self.store.len()
    }

    /// Appends a write of blocks of `bs` bytes at `lba`, as one or more
    /// entries (see [`WriteJournal::max_entry_data`]) written together;
    /// durable on return when `fua`. Sequence numbers are taken from `seq`.
    /// Returns the last one.
    pub fn append(
        &self,
        lba: u64,
        data: &[u8],
        bs: u32,
        fua: bool,
        seq: &AtomicU64,
    ) -> Result<u64, AppendError> {
        let max = self.max_entry_data(bs);
        // Appends are serialized: one writer per journal, so sequence
        // numbers increase along the journal.
        let mut c = self.cur.lock();
        let n = self.bytes_for(data.len(), bs);
        if c.at + n > self.store.len() {
            return Err(AppendError::Full);
        }
        let mut buf = vec![0u8; n as usize];
        let mut at = 0usize;
        let mut last = 0;
        let mut chunk_lba = lba;
        for chunk in data.chunks(max.max(1)) {
            last = seq.fetch_add(1, Ordering::SeqCst);
            let e = &mut buf[at..at + entry_bytes(chunk.len()) as usize];
            encode_header(e, 0, c.epoch, last, chunk_lba, chunk.len() as u64, chunk);
            e[HEADER..HEADER + chunk.len()].copy_from_slice(chunk);
            at += e.len();
            chunk_lba += (chunk.len() / bs.max(1) as usize) as u64;
        }
        self.put(c.at, &buf, fua)?;
        c.at += n;
        c.last_seq = last;
        Ok(last)
    }

    /// Appends a discard of `bytes` bytes at `lba` (one header, no data).
    pub fn append_discard(
        &self,
        lba: u64,
        bytes: u64,
        fua: bool,
        seq: &AtomicU64,
    ) -> Result<u64, AppendError> {
        let mut c = self.cur.lock();
        let n = entry_bytes(0);
        if c.at + n > self.store.len() {
            return Err(AppendError::Full);
        }
        let s = seq.fetch_add(1, Ordering::SeqCst);
        let mut buf = vec![0u8; n as usize];
        encode_header(&mut buf, FLAG_DISCARD, c.epoch, s, lba, bytes, &[]);
        self.put(c.at, &buf, fua)?;
        c.at += n;
        c.last_seq = s;
        Ok(s)
    }

    /// Writes entries at `at`. With FUA the whole journal is made durable,
    /// not just these entries: replay stops at the first missing entry, so
    /// a durable entry behind a lost one would be skipped while older
    /// entries before the gap are replayed over its data.
    fn put(&self, at: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        self.store.write_at(at, buf, false)?;
        if fua {
            self.store.flush()?;
        }
        Ok(())
    }

    /// The complete entries of the current epoch, in order, with their
    /// data. Holds the whole journal in memory: for tests and small
    /// journals; replay at open uses [`ReplayMerge`].
    pub fn replay(&self) -> io::Result<Vec<JEntry>> {
        let mut pos = ScanPos::new(self.cur.lock().epoch);
        let mut out = Vec::new();
        while let Some(r) = self.next_entry(&mut pos)? {
            out.push(self.load(&r)?);
        }
        Ok(out)
    }

    /// Reads an entry's data (checked against its checksum again).
    pub fn load(&self, r: &EntryRef) -> io::Result<JEntry> {
        let op = if r.discard {
            JOp::Discard(r.len)
        } else {
            let mut data = vec![0u8; r.len as usize];
            self.store.read_at(r.at + HEADER as u64, &mut data)?;
            if fnv(&[&data]) != r.sum {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("journal entry {} changed while replaying", r.seq),
                ));
            }
            JOp::Write(data)
        };
        Ok(JEntry {
            seq: r.seq,
            lba: r.lba,
            op,
        })
    }

    /// Makes every appended entry durable.
    pub fn flush(&self) -> io::Result<()> {
        self.store.flush()
    }

    /// Empties the journal (new epoch).
    pub fn reset(&self) -> io::Result<()> {
        let e = self.cur.lock().epoch;
        self.write_epoch(e + 1)
    }
}

/// A complete entry found by a scan, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub seq: u64,
    pub lba: u64,
    /// Where its header is.
    at: u64,
    /// Data bytes, or bytes discarded.
    len: u64,
    discard: bool,
    sum: u32,
}

/// Bytes of data checksummed per read while scanning.
const SCAN_CHUNK: usize = 1 << 20;

/// Where a scan of a journal stands.
struct ScanPos {
    epoch: u64,
    at: u64,
    last_seq: Option<u64>,
    done: bool,
}

impl ScanPos {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            at: ALIGN,
            last_seq: None,
            done: false,
        }
    }
}

impl WriteJournal {
    /// The complete entry at `pos`, checking its data in bounded chunks
    /// without keeping it, and moves past it; `None` from the first torn,
    /// stale or out-of-order entry on (the tail).
    fn next_entry(&self, pos: &mut ScanPos) -> io::Result<Option<EntryRef>> {
        let r = if pos.done { None } else { self.entry_at(pos)? };
        match &r {
            Some(e) => {
                pos.at += entry_bytes(if e.discard { 0 } else { e.len as usize });
                pos.last_seq = Some(e.seq);
            }
            None => pos.done = true,
        }
        Ok(r)
    }

    fn entry_at(&self, pos: &ScanPos) -> io::Result<Option<EntryRef>> {
        let (at, end) = (pos.at, self.store.len());
        if at + HEADER as u64 > end {
            return Ok(None);
        }
        let mut h = [0u8; HEADER];
        self.store.read_at(at, &mut h)?;
        let u64at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (flags, seq, lba, len) = (u32at(4), u64at(16), u64at(24), u64at(32));
        let discard = flags == FLAG_DISCARD;
        let stored = if discard { 0 } else { len };
        if u32at(0) != ENTRY_MAGIC
            || u64at(8) != pos.epoch
            || u32at(44) != fnv(&[&h[..44]])
            || (flags != 0 && !discard)
            || pos.last_seq.is_some_and(|l| seq <= l)
            || stored > end
            || at + entry_bytes(stored as usize) > end
        {
            return Ok(None);
        }
        let sum = u32at(40);
        if !discard {
            // The hash runs over the data in order, so chunks chain.
            let mut hash = fnv::OFFSET;
            let mut buf = vec![0u8; SCAN_CHUNK.min(len as usize)];
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                self.store
                    .read_at(at + HEADER as u64 + off, &mut buf[..n])?;
                hash = fnv::extend(hash, &buf[..n]);
                off += n as u64;
            }
            // Torn data: the tail ends here.
            if hash != sum {
                return Ok(None);
            }
        }
        Ok(Some(EntryRef {
            seq,
            lba,
            at,
            len,
            discard,
            sum,
        }))
    }
}

/// One journal's entries, walked in order by a [`ReplayMerge`].
struct Scanner {
    j: Arc<WriteJournal>,
    pos: ScanPos,
}

impl Scanner {
    fn new(j: Arc<WriteJournal>) -> Self {
        let pos = ScanPos::new(j.cur.lock().epoch);
        Self { j, pos }
    }

    fn next_ref(&mut self) -> io::Result<Option<EntryRef>> {
        self.j.next_entry(&mut self.pos)
    }
}

/// Several journals' entries merged into one sequence order, read a batch
/// at a time: what replay at open holds in memory is one batch and one
/// entry header per journal, whatever the journals' sizes.
pub struct ReplayMerge {
    scanners: Vec<Scanner>,
    heads: Vec<Option<EntryRef>>,
    /// Per journal, the highest sequence number seen.
    pub newest: Vec<u64>,
    started: bool,
}

impl ReplayMerge {
    pub fn new(journals: &[Arc<WriteJournal>]) -> Self {
        Self {
            scanners: journals.iter().cloned().map(Scanner::new).collect(),
            heads: vec![None; journals.len()],
            newest: vec![0; journals.len()],
            started: false,
        }
    }

    /// The next entries in sequence order, with their data, up to about
    /// `max_bytes` of data (at least one entry); empty when all are done.
    pub fn next_batch(&mut self, max_bytes: usize) -> io::Result<Vec<JEntry>> {
        if !self.started {
            for i in 0..self.scanners.len() {
                self.advance(i)?;
            }
            self.started = true;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while bytes < max_bytes || out.is_empty() {
            let next = self
                .heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|r| (r.seq, i)))
                .min();
            let Some((_, i)) = next else { break };
            let Some(r) = self.heads[i].take() else { break };
            let e = self.scanners[i].j.load(&r)?;
            bytes += match &e.op {
                JOp::Write(d) => d.len(),
                JOp::Discard(_) => HEADER,
            };
            out.push(e);
            self.advance(i)?;
        }
        Ok(out)
    }

    fn advance(&mut self, i: usize) -> io::Result<()> {
        let r = self.scanners[i].next_ref()?;
        if let Some(r) = &r {
            self.newest[i] = self.newest[i].max(r.seq);
        }
        self.heads[i] = r;
        Ok(())
    }
}

/// Fills an entry header; `data` is what the data checksum covers.
fn encode_header(e: &mut [u8], flags: u32, epoch: u64, seq: u64, lba: u64, len: u64, data: &[u8]) {
    e[0..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    e[4..8].copy_from_slice(&flags.to_le_bytes());
    e[8..16].copy_from_slice(&epoch.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..32].copy_from_slice(&lba.to_le_bytes());
    e[32..40].copy_from_slice(&len.to_le_bytes());
    e[40..44].copy_from_slice(&fnv(&[data]).to_le_bytes());
    let hsum = fnv(&[&e[..44]]);
    e[44..48].copy_from_slice(&hsum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    fn write_of(e: &JEntry) -> &[u8] {
        match &e.op {
            JOp::Write(d) => d,
            JOp::Discard(_) => panic!("not a write: {e:?}"),
        }
    }

    #[test]
    fn append_full_replay_torn_tail_and_reset() {
        let store: Arc<dyn Backend> = Arc::new(MemBackend::new(8 * 512).unwrap());
        let seq = AtomicU64::new(1);
        let j = WriteJournal::open(store.clone()).unwrap();
        // Each 512-byte write takes 1024 bytes (header + padding): 3 fit.
        for i in 0..3u8 {
            j.append(i as u64 * 10, &[i; 512], 512, true, &seq).unwrap();
        }
        assert!(matches!(
            j.append(99, &[9; 512], 512, true, &seq),
            Err(AppendError::Full)
        ));
        let r = j.replay().unwrap();
        assert_eq!(r.iter().map(|e| e.lba).collect::<Vec<_>>(), vec![0, 10, 20]);
        assert_eq!(write_of(&r[2]), &[2u8; 512][..]);
        // Tear the last entry's data: replay stops before it.
        store
            .write_at(512 + 2 * 1024 + 100, &[0xFF; 4], false)
            .unwrap();
        let j = WriteJournal::open(store.clone()).unwrap();
        assert_eq!(j.replay().unwrap().len(), 2);
        assert_eq!(j.last_seq(), 2);
        let s = j.append(5, &[5; 512], 512, true, &seq).unwrap();
        assert!(s > 2, "sequence numbers keep increasing");
        assert_eq!(j.replay().unwrap().len(), 3, "appends after the tail");
        j.reset().unwrap();
        assert!(j.replay().unwrap().is_empty());
        let j = WriteJournal::open(store).unwrap();
        assert!(
            j.replay().unwrap().is_empty(),
            "stale epoch is not replayed"
        );
        assert_eq!(j.used(), 0);
    }

    #[test]
    fn long_writes_split_and_discards_replay() {
        // 32 KiB of room: entries carry at most 8 KiB of data.
        let store: Arc<dyn Backend> = Arc::new(MemBackend::new(512 + 32 * 1024).unwrap());
        let seq = AtomicU64::new(100);
        let j = WriteJournal::open(store.clone()).unwrap();
        assert_eq!(j.max_entry_data(512), 8192);
        let data: Vec<u8> = (0..20 * 1024).map(|i| (i % 251) as u8).collect();
        assert!(j.has_room(data.len(), 512));
        let last = j.append(7, &data, 512, false, &seq).unwrap();
        assert_eq!(last, 102, "three entries");
        j.append_discard(1000, 1 << 30, false, &seq).unwrap();
        let r = WriteJournal::open(store).unwrap().replay().unwrap();
        assert_eq!(
            r.iter()
                .map(|e| (e.seq, e.lba, e.len()))
                .collect::<Vec<_>>(),
            vec![
                (100, 7, 8192),
                (101, 7 + 16, 8192),
                (102, 7 + 32, 4096),
                (103, 1000, 1 << 30)
            ]
        );
        let joined: Vec<u8> = r[..3].iter().flat_map(|e| write_of(e).to_vec()).collect();
        assert_eq!(joined, data);
        assert_eq!(r[3].op, JOp::Discard(1 << 30));
        // More than an empty journal can hold.
        assert!(!j.could_hold(40 * 1024, 512));
        assert!(matches!(
            j.append(0, &vec![0u8; 40 * 1024], 512, false, &seq),
            Err(AppendError::Full)
        ));
    }

    #[test]
    fn merge_orders_across_journals_in_bounded_batches() {
        let seq = AtomicU64::new(1);
        let js: Vec<Arc<WriteJournal>> = (0..3)
            .map(|_| {
                let store: Arc<dyn Backend> = Arc::new(MemBackend::new(64 * 512).unwrap());
                Arc::new(WriteJournal::open(store).unwrap())
            })
            .collect();
        // Sequence numbers dealt round the journals out of turn.
        for i in 0..12u64 {
            let j = &js[(i * 7 % 3) as usize];
            j.append(i, &[i as u8; 512], 512, false, &seq).unwrap();
        }
        js[1].append_discard(40, 4096, false, &seq).unwrap();
        let mut m = ReplayMerge::new(&js);
        let mut got = Vec::new();
        loop {
            let b = m.next_batch(1024).unwrap();
            if b.is_empty() {
                break;
            }
            // 512-byte writes: two reach the bound.
            assert!(b.len() <= 2, "batch of {}", b.len());
            got.extend(b);
        }
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=13).collect::<Vec<_>>());
        assert_eq!(write_of(&got[4]), &[4u8; 512][..]);
        assert_eq!(got[12].op, JOp::Discard(4096));
        assert_eq!(m.newest[1], 13);
    }

    #[test]
    fn large_entries_are_checked_chunk_by_chunk() {
        let store: Arc<dyn Backend> = Arc::new(MemBackend::new(8 << 20).unwrap());
        let seq = AtomicU64::new(1);
        let j = WriteJournal::open(store.clone()).unwrap();
        // One entry larger than a scan chunk.
        let data: Vec<u8> = (0..(3 << 19)).map(|i: u32| (i % 251) as u8).collect();
        j.append(0, &data, 512, true, &seq).unwrap();
        j.append(9000, &[1; 512], 512, true, &seq).unwrap();
        let r = WriteJournal::open(store.clone()).unwrap().replay().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(write_of(&r[0]), &data[..]);
        // A torn byte in the second chunk ends the replay before it.
        store
            .write_at(512 + HEADER as u64 + (1 << 20) + 77, &[0xAA], false)
            .unwrap();
        let j = WriteJournal::open(store).unwrap();
        assert!(j.replay().unwrap().is_empty());
        assert_eq!(j.used(), 0);
    }
}
