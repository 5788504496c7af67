//! Tagged mirror writes (crash-consistent mirrors without a dirty-region
//! log). Every mirrored write gets one volume-wide tag; before its data
//! reaches a leg, the leg's own tag table durably records {tag, range}.
//! Once every leg has completed the write, the entry is retired (cleared)
//! in batches, off the host's path. After a crash, the legs of each mirror
//! compare tables: a tag some legs hold and others do not marks a write that
//! reached only part of the mirror, and only its range is copied, from a
//! leg that has it to those that lack it.
//!
//! A table is a fixed array of 32-byte slots in a small store (a file per
//! leg); tag `t` lives in slot `t % slots`. A slot is reused only after its
//! previous tag was retired on every leg, so a table never holds two
//! generations of one slot.
//!
//! Durability: an entry is written to the leg's table before the leg's data
//! and lives in the page cache like that data, so it survives a crash of
//! vtgt (the failure the tags are for) at the cost of one small write per
//! leg, with no device flush on the host's path. A power loss can drop
//! entries whose data did reach the media; a [`TagSession`] notices that
//! the machine restarted while the volume was open, and the other legs of
//! each mirror then resync whole from the first, in the background (as md
//! does without a write-intent bitmap).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;

const MAGIC: u32 = 0x5654_5447; // "VTTG"
pub const SLOT_BYTES: u64 = 32;
/// Slots per table: also the most tagged writes in flight or unretired.
pub const TAG_SLOTS: u64 = 4096;
/// Completed tags retired together.
pub const RETIRE_BATCH: usize = 256;

/// Bytes a tag store needs.
pub const fn store_bytes() -> u64 {
    SLOT_BYTES * TAG_SLOTS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TagEntry {
    pub tag: u64,
    pub lba: u64,
    pub blocks: u64,
}

fn crc(b: &[u8]) -> u32 {
    crate::fnv::fnv1a(&[b])
}

fn encode(e: &TagEntry) -> [u8; SLOT_BYTES as usize] {
    let mut s = [0u8; SLOT_BYTES as usize];
    s[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    s[4..12].copy_from_slice(&e.tag.to_le_bytes());
    s[12..20].copy_from_slice(&e.lba.to_le_bytes());
    s[20..28].copy_from_slice(&e.blocks.to_le_bytes());
    let c = crc(&s[..28]);
    s[28..32].copy_from_slice(&c.to_le_bytes());
    s
}

fn decode(s: &[u8]) -> Option<TagEntry> {
    let word = |r: std::ops::Range<usize>| s.get(r).map(|b| b.to_vec());
    let magic = u32::from_le_bytes(word(0..4)?.try_into().ok()?);
    let c = u32::from_le_bytes(word(28..32)?.try_into().ok()?);
    // A torn slot fails the checksum and counts as absent: its data write
    // never completed on this leg either (the entry goes first).
    if magic != MAGIC || c != crc(s.get(..28)?) {
        return None;
    }
    Some(TagEntry {
        tag: u64::from_le_bytes(word(4..12)?.try_into().ok()?),
        lba: u64::from_le_bytes(word(12..20)?.try_into().ok()?),
        blocks: u64::from_le_bytes(word(20..28)?.try_into().ok()?),
    })
}

/// One leg's tag table.
#[derive(Debug, Clone)]
pub struct TagTable {
    store: Arc<dyn Backend>,
}

impl TagTable {
    pub fn new(store: Arc<dyn Backend>) -> io::Result<Self> {
        if store.len() < store_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "tag store too small",
            ));
        }
        Ok(Self { store })
    }

    fn offset(tag: u64) -> u64 {
        (tag % TAG_SLOTS) * SLOT_BYTES
    }

    /// Records an entry before the leg's data write (see the module notes
    /// on durability).
    pub fn record(&self, e: &TagEntry) -> io::Result<()> {
        self.store.write_at(Self::offset(e.tag), &encode(e), false)
    }

    /// Whether recording `tag` may run on an async worker.
    pub fn inline_ok(&self, tag: u64) -> bool {
        self.store
            .write_inline_ok(Self::offset(tag), SLOT_BYTES as usize)
    }

    /// Clears the slots of `tags`, adjacent slots in one write.
    pub fn retire(&self, tags: &[u64]) -> io::Result<()> {
        let mut slots: Vec<u64> = tags.iter().map(|t| Self::offset(*t)).collect();
        slots.sort_unstable();
        let zeros = vec![0u8; slots.len() * SLOT_BYTES as usize];
        let mut i = 0;
        while i < slots.len() {
            let mut n = 1;
            while slots.get(i + n) == Some(&(slots[i] + n as u64 * SLOT_BYTES)) {
                n += 1;
            }
            self.store
                .write_at(slots[i], &zeros[..n * SLOT_BYTES as usize], false)?;
            i += n;
        }
        Ok(())
    }

    pub fn entries(&self) -> io::Result<Vec<TagEntry>> {
        let mut buf = vec![0u8; store_bytes() as usize];
        self.store.read_at(0, &mut buf)?;
        let mut out: Vec<TagEntry> = buf.chunks(SLOT_BYTES as usize).filter_map(decode).collect();
        out.sort();
        Ok(out)
    }

    /// Empties the table (a re-attached leg starts clean: its old entries
    /// describe writes the resync supersedes).
    pub fn wipe(&self) -> io::Result<()> {
        self.store
            .write_at(0, &vec![0u8; store_bytes() as usize], false)?;
        self.store.flush()
    }
}

/// The volume's tag generator and retirement queue.
#[derive(Debug)]
pub struct Tags {
    pub tables: BTreeMap<usize, TagTable>,
    state: parking_lot::Mutex<TagState>,
}

#[derive(Debug, Default)]
struct TagState {
    next: u64,
    /// Issued and not yet retired (in flight or awaiting a batch).
    unretired: BTreeSet<u64>,
    /// Completed on every leg, waiting for the next batch.
    done: Vec<u64>,
}

impl Tags {
    pub fn new(tables: BTreeMap<usize, TagTable>, next: u64) -> Self {
        Self {
            tables,
            state: parking_lot::Mutex::new(TagState {
                next: next.max(1),
                ..Default::default()
            }),
        }
    }

    /// A new tag, or None while its slot still holds an unretired tag (the
    /// caller retires a batch and retries).
    pub fn issue(&self) -> Option<u64> {
        let mut s = self.state.lock();
        let t = s.next;
        if let Some(&oldest) = s.unretired.first() {
            if t >= oldest + TAG_SLOTS {
                return None;
            }
        }
        s.next += 1;
        s.unretired.insert(t);
        Some(t)
    }

    /// Marks a tag complete on every leg; returns a batch to retire when
    /// one is due.
    pub fn complete(&self, tag: u64, force: bool) -> Option<Vec<u64>> {
        let mut s = self.state.lock();
        s.done.push(tag);
        if s.done.len() >= RETIRE_BATCH || force {
            return Some(std::mem::take(&mut s.done));
        }
        None
    }

    /// Gives back a tag that was issued but never recorded.
    pub fn cancel(&self, tag: u64) {
        self.state.lock().unretired.remove(&tag);
    }

    /// Puts back a batch that could not be retired.
    pub fn requeue(&self, batch: &[u64]) {
        self.state.lock().done.extend_from_slice(batch);
    }

    /// Takes whatever is waiting to be retired.
    pub fn take_done(&self) -> Vec<u64> {
        std::mem::take(&mut self.state.lock().done)
    }

    /// Retires `batch` on the tables of `legs`, then frees the slots. On
    /// an error the batch waits for the next retirement.
    pub fn retire(&self, batch: &[u64], legs: &[usize]) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        for l in legs {
            if let Some(t) = self.tables.get(l) {
                if let Err(e) = t.retire(batch) {
                    self.requeue(batch);
                    return Err(e);
                }
            }
        }
        let mut s = self.state.lock();
        for t in batch {
            s.unretired.remove(t);
        }
        Ok(())
    }

    pub fn unretired(&self) -> usize {
        self.state.lock().unretired.len()
    }
}

/// Whether a volume's tag tables can be trusted when it is opened: a file
/// beside its metadata says "clean" after an orderly close, or "open" with
/// the kernel's boot id while it is in use. An "open" file from an earlier
/// boot means the machine went down with the volume open, and entries that
/// only lived in the page cache may be gone.
#[derive(Debug)]
pub struct TagSession {
    path: PathBuf,
}

impl TagSession {
    /// Whether the tables written before this open can be trusted on boot
    /// `boot` (see [`boot_id`]).
    pub fn trusted(path: &Path, boot: &str) -> io::Result<bool> {
        match std::fs::read_to_string(path) {
            // Without a boot id nothing proves the machine did not restart.
            Ok(t) => Ok(match t.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["clean"] => true,
                ["open", b] => *b == boot && boot != "unknown",
                _ => false,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Marks the volume open on `boot`; call once the legs agree.
    pub fn begin(path: &Path, boot: &str) -> io::Result<Self> {
        crate::mirror::write_atomically(path, format!("open {boot}\n").as_bytes())?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Marks an orderly close; call after the legs' data is flushed.
    pub fn close(&self) -> io::Result<()> {
        crate::mirror::write_atomically(&self.path, b"clean\n")
    }
}

/// This boot of the kernel ("unknown" where the kernel does not say).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .unwrap_or_else(|| "unknown".into())
}

/// Ranges to copy after a crash: for each mirror (a group of sibling leg
/// ids, only those usable), every entry some legs hold and others lack, in
/// tag order, as (entry, source leg, legs lacking it).
pub fn unmatched(
    groups: &[Vec<usize>],
    tables: &BTreeMap<usize, Vec<TagEntry>>,
) -> Vec<(TagEntry, usize, Vec<usize>)> {
    let mut out = Vec::new();
    for g in groups {
        let mut all: BTreeSet<TagEntry> = BTreeSet::new();
        for l in g {
            if let Some(es) = tables.get(l) {
                all.extend(es.iter().copied());
            }
        }
        for e in all {
            let has: Vec<usize> = g
                .iter()
                .copied()
                .filter(|l| tables.get(l).is_some_and(|es| es.binary_search(&e).is_ok()))
                .collect();
            if has.len() == g.len() {
                continue;
            }
            let lacking: Vec<usize> = g.iter().copied().filter(|l| !has.contains(l)).collect();
            out.push((e, has[0], lacking));
        }
    }
    // Tag order: an older torn retirement is undone before a newer partial
    // write is copied, so overlapping ranges end identical on every leg.
    out.sort_by_key(|x| x.0.tag);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    #[test]
    fn record_retire_and_match() {
        let mk = || TagTable::new(Arc::new(MemBackend::new(store_bytes()).unwrap())).unwrap();
        let (a, b) = (mk(), mk());
        let e1 = TagEntry {
            tag: 4,
            lba: 14,
            blocks: 1,
        };
        let e2 = TagEntry {
            tag: 51,
            lba: 30,
            blocks: 1,
        };
        for t in [&a, &b] {
            t.record(&e1).unwrap();
        }
        a.record(&e2).unwrap();
        let mut m = BTreeMap::new();
        m.insert(0, a.entries().unwrap());
        m.insert(1, b.entries().unwrap());
        let u = unmatched(&[vec![0, 1]], &m);
        assert_eq!(u, vec![(e2, 0, vec![1])]);
        a.retire(&[4, 51]).unwrap();
        assert!(a.entries().unwrap().is_empty());
        let tags = Tags::new(BTreeMap::new(), 1);
        for _ in 0..TAG_SLOTS {
            assert!(tags.issue().is_some());
        }
        assert_eq!(tags.issue(), None, "slot of tag 1 not yet retired");
        tags.retire(&[1], &[]).unwrap();
        assert!(tags.issue().is_some());
    }

    #[test]
    fn retire_clears_runs_of_slots() {
        let t = TagTable::new(Arc::new(MemBackend::new(store_bytes()).unwrap())).unwrap();
        let e = |tag| TagEntry {
            tag,
            lba: tag * 2,
            blocks: 1,
        };
        for tag in [1, 2, 3, 7, TAG_SLOTS + 8] {
            t.record(&e(tag)).unwrap();
        }
        t.retire(&[2, 3, 1, TAG_SLOTS + 8]).unwrap();
        assert_eq!(t.entries().unwrap(), vec![e(7)]);
    }

    #[test]
    fn session_trusts_a_clean_close_or_the_same_boot_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.tagsession");
        assert!(
            TagSession::trusted(&p, "a").unwrap(),
            "nothing to distrust yet"
        );
        TagSession::begin(&p, "a").unwrap();
        // Killed, restarted on the same boot: the page cache survived.
        assert!(TagSession::trusted(&p, "a").unwrap());
        // Killed, machine restarted: entries may be lost.
        assert!(!TagSession::trusted(&p, "b").unwrap());
        TagSession::begin(&p, "b").unwrap().close().unwrap();
        // Closed cleanly, then a reboot: fine.
        assert!(TagSession::trusted(&p, "c").unwrap());
        std::fs::write(&p, "garbage").unwrap();
        assert!(!TagSession::trusted(&p, "c").unwrap());
        assert!(!boot_id().is_empty());
    }
}
