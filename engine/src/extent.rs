//! The extent map (Rmap): variable-size extents whose values index a table of
//! redirect entries.

/// What a redirect entry does with an I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageDesc {
    /// Remap to a backend at a byte offset.
    Remap { backend: usize, offset: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub desc: StorageDesc,
    pub fault_on_read: bool,
    pub fault_on_write: bool,
}

/// `[start, start + len)` in volume blocks, pointing at a redirect entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub redirect: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Sorted, non-overlapping extents plus the redirect table they index.
/// Published immutably; the control path builds a new one to change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentMap {
    extents: Vec<Extent>,
    redirects: Vec<Redirect>,
}

impl ExtentMap {
    /// One extent covering the whole volume.
    pub fn single(nblocks: u64, desc: StorageDesc) -> Self {
        Self {
            extents: vec![Extent {
                start: 0,
                len: nblocks,
                redirect: 0,
            }],
            redirects: vec![Redirect {
                desc,
                fault_on_read: false,
                fault_on_write: false,
            }],
        }
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    pub fn redirect(&self, idx: u32) -> Option<&Redirect> {
        self.redirects.get(idx as usize)
    }

    /// The extent holding `lba`, if any (binary search, no locks).
    pub fn lookup(&self, lba: u64) -> Option<(&Extent, &Redirect)> {
        let i = self.extents.partition_point(|e| e.end() <= lba);
        let e = self.extents.get(i)?;
        if e.start > lba {
            return None;
        }
        Some((e, self.redirects.get(e.redirect as usize)?))
    }

    /// Extends the last extent to cover `nblocks` (a grown volume).
    pub fn grown(&self, nblocks: u64) -> Self {
        let mut m = self.clone();
        if let Some(last) = m.extents.last_mut() {
            if last.end() < nblocks {
                last.len = nblocks - last.start;
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_single() {
        let m = ExtentMap::single(
            100,
            StorageDesc::Remap {
                backend: 0,
                offset: 0,
            },
        );
        assert_eq!(m.lookup(0).unwrap().0.len, 100);
        assert!(m.lookup(99).is_some());
        assert!(m.lookup(100).is_none());
        assert_eq!(m.grown(200).lookup(150).unwrap().0.end(), 200);
    }
}
