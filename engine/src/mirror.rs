//! Durable mirror state: the volume generation, each leg's state and the
//! generation it was last in sync at, and the age list (the generation at
//! which each region was last written while a leg was missing).
//!
//! The control path rewrites the whole file on every change, crash-safely
//! (temp file, fsync, rename, fsync directory): it changes only on a leg
//! failure, on the first write to a region after one, and around resyncs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::extent::LegState;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorMeta {
    pub generation: u64,
    /// leg id -> (state, generation it was last complete at).
    pub legs: BTreeMap<usize, (LegState, u64)>,
    /// region index -> generation of its last write while degraded.
    pub ages: BTreeMap<u64, u64>,
    /// Legs in resync -> regions still to copy to them, so that a resync
    /// a restart interrupted resumes where it was.
    pub todo: BTreeMap<usize, BTreeSet<u64>>,
}

impl MirrorMeta {
    pub fn encode(&self) -> String {
        let mut s = format!("vtgt-mirror 2\ngeneration {}\n", self.generation);
        for (id, (st, g)) in &self.legs {
            s.push_str(&format!("leg {id} {} {g}\n", st.as_str()));
        }
        for (r, g) in &self.ages {
            s.push_str(&format!("age {r} {g}\n"));
        }
        for (id, regions) in &self.todo {
            // Even with nothing left: "resync" says the list is tracked.
            s.push_str(&format!("resync {id}\n"));
            for r in regions {
                s.push_str(&format!("todo {id} {r}\n"));
            }
        }
        s.push_str("end\n");
        s
    }

    pub fn decode(text: &str) -> io::Result<Self> {
        let bad = |l: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad line {l:?}"));
        let mut m = MirrorMeta::default();
        let mut lines = text.lines();
        // Version 1 has no resync lists; a resync leg in one is copied again
        // from its age list.
        if !matches!(lines.next(), Some("vtgt-mirror 1" | "vtgt-mirror 2")) {
            return Err(bad("header"));
        }
        let mut ended = false;
        for l in lines {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| -> io::Result<u64> {
                f.get(i)
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad(l))
            };
            match f.first().copied() {
                Some("generation") => m.generation = num(1)?,
                Some("leg") => {
                    let st = f
                        .get(2)
                        .and_then(|s| LegState::parse(s))
                        .ok_or_else(|| bad(l))?;
                    m.legs.insert(num(1)? as usize, (st, num(3)?));
                }
                Some("age") => {
                    m.ages.insert(num(1)?, num(2)?);
                }
                Some("resync") => {
                    m.todo.entry(num(1)? as usize).or_default();
                }
                Some("todo") => {
                    m.todo.entry(num(1)? as usize).or_default().insert(num(2)?);
                }
                Some("end") => ended = true,
                _ => return Err(bad(l)),
            }
        }
        // A file without its end marker was torn: rename makes that
        // impossible unless something else wrote it.
        if !ended {
            return Err(bad("missing end"));
        }
        Ok(m)
    }

    pub fn load(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(Self::decode(&t)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        write_atomically(path, self.encode().as_bytes())
    }
}

/// Replaces `path` with `data` so that a crash leaves either the old or the
/// new content: write a temp file, fsync it, rename over, fsync the dir.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(&dir)?.sync_all()
}

/// Progress of the running (or last) resync, for metrics and `watch`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResyncStatus {
    pub leg: Option<usize>,
    pub active: bool,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Bytes per second since the resync started.
    pub rate_bps: f64,
    /// Seconds left at the current rate; None before any progress.
    pub eta_secs: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_crash_safe_replace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.mirror");
        assert_eq!(MirrorMeta::load(&p).unwrap(), None);
        let mut m = MirrorMeta {
            generation: 3,
            ..Default::default()
        };
        m.legs.insert(0, (LegState::Up, 3));
        m.legs.insert(1, (LegState::Dead, 2));
        m.ages.insert(7, 3);
        m.legs.insert(2, (LegState::Resync, 1));
        m.todo.insert(2, [7u64, 9].into_iter().collect());
        // Tracked with nothing left to copy is not the same as untracked.
        m.todo.insert(3, BTreeSet::new());
        m.save(&p).unwrap();
        assert_eq!(MirrorMeta::load(&p).unwrap(), Some(m.clone()));
        // Version 1 files still load.
        std::fs::write(&p, "vtgt-mirror 1\ngeneration 4\nleg 0 up 4\nend\n").unwrap();
        assert_eq!(MirrorMeta::load(&p).unwrap().unwrap().generation, 4);
        std::fs::write(&p, "vtgt-mirror 1\ngeneration 4\n").unwrap();
        assert!(MirrorMeta::load(&p).is_err(), "a torn file is refused");
    }
}
