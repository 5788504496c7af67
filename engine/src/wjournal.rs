//! The write-journaling primitive: write splitting where one side is a
//! fixed-size on-media journal. Each entry is a header {lba, len, seq,
//! checksum} followed by its data. A full journal is a fault: the control
//! path seals it (for a copy agent, e.g. asynchronous replication) and swaps
//! in an empty one. Replay after a crash yields the complete entries in
//! order and stops at the first torn or stale one.
//!
//! Resetting a journal bumps the epoch in its superblock instead of zeroing
//! it: entries of an older epoch are stale and end the replay.

use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::Backend;

const SB_MAGIC: u32 = 0x5654_574a; // "VTWJ"
const ENTRY_MAGIC: u32 = 0x5654_5745; // "VTWE"
/// Superblock and header sizes; entries are padded to `ALIGN`.
const ALIGN: u64 = 512;
const HEADER: usize = 48;

fn fnv(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for &b in *p {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// A replayed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JEntry {
    pub seq: u64,
    pub lba: u64,
    pub data: Vec<u8>,
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
    next_seq: u64,
    at: u64,
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
                next_seq: 1,
                at: ALIGN,
            }),
        };
        match j.read_epoch()? {
            Some(e) => {
                let entries = j.scan(e)?;
                let mut c = j.cur.lock();
                c.epoch = e;
                if let Some(last) = entries.last() {
                    c.next_seq = last.seq + 1;
                }
                c.at = ALIGN
                    + entries
                        .iter()
                        .map(|x| entry_bytes(x.data.len()))
                        .sum::<u64>();
            }
            None => j.write_epoch(1)?,
        }
        Ok(j)
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
            next_seq: 1,
            at: ALIGN,
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

    /// Whether an entry of `len` data bytes fits.
    pub fn has_room(&self, len: usize) -> bool {
        self.cur.lock().at + entry_bytes(len) <= self.store.len()
    }

    /// Appends an entry; durable on return when `fua`.
    pub fn append(&self, lba: u64, data: &[u8], fua: bool) -> Result<u64, AppendError> {
        // Appends are serialized: one writer per journal.
        let mut c = self.cur.lock();
        let n = entry_bytes(data.len());
        if c.at + n > self.store.len() {
            return Err(AppendError::Full);
        }
        let seq = c.next_seq;
        let mut buf = vec![0u8; n as usize];
        buf[0..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
        buf[8..16].copy_from_slice(&c.epoch.to_le_bytes());
        buf[16..24].copy_from_slice(&seq.to_le_bytes());
        buf[24..32].copy_from_slice(&lba.to_le_bytes());
        buf[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        let dsum = fnv(&[data]);
        buf[40..44].copy_from_slice(&dsum.to_le_bytes());
        let hsum = fnv(&[&buf[..44]]);
        buf[44..48].copy_from_slice(&hsum.to_le_bytes());
        buf[HEADER..HEADER + data.len()].copy_from_slice(data);
        self.store.write_at(c.at, &buf, fua)?;
        c.at += n;
        c.next_seq += 1;
        Ok(seq)
    }

    /// The complete entries of the current epoch, in order.
    pub fn replay(&self) -> io::Result<Vec<JEntry>> {
        let e = self.cur.lock().epoch;
        self.scan(e)
    }

    fn scan(&self, epoch: u64) -> io::Result<Vec<JEntry>> {
        let mut out: Vec<JEntry> = Vec::new();
        let mut at = ALIGN;
        let end = self.store.len();
        while at + HEADER as u64 <= end {
            let mut h = [0u8; HEADER];
            self.store.read_at(at, &mut h)?;
            let u64at = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[i..i + 8]);
                u64::from_le_bytes(b)
            };
            let u32at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let (seq, lba, len) = (u64at(16), u64at(24), u64at(32));
            let expect = out.last().map(|l| l.seq + 1);
            if u32at(0) != ENTRY_MAGIC
                || u64at(8) != epoch
                || u32at(44) != fnv(&[&h[..44]])
                || expect.is_some_and(|s| s != seq)
                || at + entry_bytes(len as usize) > end
            {
                break;
            }
            let mut data = vec![0u8; len as usize];
            self.store.read_at(at + HEADER as u64, &mut data)?;
            // Torn data: the tail ends here.
            if fnv(&[&data]) != u32at(40) {
                break;
            }
            at += entry_bytes(len as usize);
            out.push(JEntry { seq, lba, data });
        }
        Ok(out)
    }

    /// Empties the journal (new epoch).
    pub fn reset(&self) -> io::Result<()> {
        let e = self.cur.lock().epoch;
        self.write_epoch(e + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    #[test]
    fn append_full_replay_torn_tail_and_reset() {
        let store: Arc<dyn Backend> = Arc::new(MemBackend::new(8 * 512).unwrap());
        let j = WriteJournal::open(store.clone()).unwrap();
        // Each 512-byte write takes 1024 bytes (header + padding): 3 fit.
        for i in 0..3u8 {
            j.append(i as u64 * 10, &[i; 512], true).unwrap();
        }
        assert!(matches!(
            j.append(99, &[9; 512], true),
            Err(AppendError::Full)
        ));
        let r = j.replay().unwrap();
        assert_eq!(r.iter().map(|e| e.lba).collect::<Vec<_>>(), vec![0, 10, 20]);
        // Tear the last entry's data: replay stops before it.
        store
            .write_at(512 + 2 * 1024 + 100, &[0xFF; 4], false)
            .unwrap();
        let j = WriteJournal::open(store.clone()).unwrap();
        assert_eq!(j.replay().unwrap().len(), 2);
        assert_eq!(
            j.append(5, &[5; 512], true).unwrap(),
            3,
            "appends after the tail"
        );
        j.reset().unwrap();
        assert!(j.replay().unwrap().is_empty());
        let j = WriteJournal::open(store).unwrap();
        assert!(
            j.replay().unwrap().is_empty(),
            "stale epoch is not replayed"
        );
        assert_eq!(j.used(), 0);
    }
}
