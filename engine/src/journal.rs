//! A per-volume write-ahead journal for atomic writes. An atomic write is
//! first made durable here as one entry {magic, seq, lba, len, checksum,
//! data}, then written in place, then retired by truncating the journal.
//! After a crash, a complete entry (checksum matches) is replayed on open; a
//! torn tail fails its checksum and is ignored, so the write either happened
//! entirely or not at all.
//!
//! One entry at a time: atomic writes are serialized through the journal,
//! which keeps retirement a plain truncate.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x5654_4a31; // "VTJ1"
const HEADER: usize = 32;
/// Largest entry payload replay will believe; guards allocation on a
/// corrupt length field.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

/// A journal entry recovered on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub lba: u64,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    seq: u64,
    /// An entry is durable but not yet retired. Another append would
    /// overwrite it, losing the only intact copy of a write that may have
    /// landed torn, so appends are refused until it is retired.
    pending: bool,
}

/// FNV-1a over the header fields and data: detects torn or stale entries.
fn checksum(seq: u64, lba: u64, data: &[u8]) -> u32 {
    crate::fnv::fnv1a(&[&seq.to_be_bytes(), &lba.to_be_bytes(), data])
}

impl Journal {
    /// Opens (creating) the journal at `path` and returns the complete entry
    /// it holds, if any, for the caller to replay before serving I/O.
    pub fn open(path: &Path) -> io::Result<(Self, Option<Entry>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let pending = read_entry(&file)?;
        let seq = pending.as_ref().map(|e| e.seq + 1).unwrap_or(1);
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
                seq,
                pending: pending.is_some(),
            },
            pending,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes one entry durable. After this returns the write survives a
    /// crash (replay applies it).
    pub fn append(&mut self, lba: u64, data: &[u8]) -> io::Result<u64> {
        if data.len() > MAX_ENTRY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "atomic write larger than the journal entry limit",
            ));
        }
        if self.pending {
            return Err(io::Error::other(
                "journal holds an unretired atomic write; a restart replays it",
            ));
        }
        let seq = self.seq;
        self.seq += 1;
        let mut buf = Vec::with_capacity(HEADER + data.len());
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&checksum(seq, lba, data).to_be_bytes());
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&lba.to_be_bytes());
        buf.extend_from_slice(&(data.len() as u64).to_be_bytes());
        buf.extend_from_slice(data);
        self.file.set_len(0)?;
        self.pending = true;
        self.file.write_all_at(&buf, 0)?;
        self.file.sync_data()?;
        Ok(seq)
    }

    /// Retires the entry once it is durable in place. Durable itself, so a
    /// later write to the same blocks can never be undone by a replay.
    pub fn retire(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.pending = false;
        Ok(())
    }
}

fn read_entry(file: &File) -> io::Result<Option<Entry>> {
    let len = file.metadata()?.len();
    if len < HEADER as u64 {
        return Ok(None);
    }
    let mut h = [0u8; HEADER];
    file.read_exact_at(&mut h, 0)?;
    let word = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let quad = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[at..at + 8]);
        u64::from_be_bytes(a)
    };
    if word(0) != MAGIC {
        return Ok(None);
    }
    let (sum, seq, lba, n) = (word(4), quad(8), quad(16), quad(24));
    // A torn tail: the header made it, the data did not.
    if n > MAX_ENTRY_BYTES as u64 || HEADER as u64 + n > len {
        return Ok(None);
    }
    let mut data = vec![0u8; n as usize];
    file.read_exact_at(&mut data, HEADER as u64)?;
    if checksum(seq, lba, &data) != sum {
        return Ok(None);
    }
    Ok(Some(Entry { seq, lba, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_entry_replays_torn_tail_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.journal");
        let (mut j, pending) = Journal::open(&p).unwrap();
        assert!(pending.is_none());
        j.append(7, &[0xAB; 1024]).unwrap();
        // Until retired, a second entry may not replace it.
        assert!(j.append(8, &[1; 512]).is_err());
        // Crash here: reopening finds the entry.
        drop(j);
        let (mut j, pending) = Journal::open(&p).unwrap();
        let e = pending.expect("complete entry must replay");
        assert_eq!((e.lba, e.data.len()), (7, 1024));
        assert!(e.data.iter().all(|&b| b == 0xAB));
        j.retire().unwrap();
        drop(j);
        assert!(Journal::open(&p).unwrap().1.is_none());

        // Torn tail: the header and half the data.
        let (mut j, _) = Journal::open(&p).unwrap();
        j.append(9, &[0x11; 4096]).unwrap();
        drop(j);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len((HEADER + 2048) as u64).unwrap();
        assert!(Journal::open(&p).unwrap().1.is_none());

        // Corrupted data of full length: checksum rejects it.
        let (mut j, _) = Journal::open(&p).unwrap();
        j.append(9, &[0x22; 512]).unwrap();
        drop(j);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0x23], HEADER as u64 + 100).unwrap();
        assert!(Journal::open(&p).unwrap().1.is_none());
    }
}
