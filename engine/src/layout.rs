//! Layouts: a recursive description of how a volume is composed from
//! backends (stripe, mirror, concat), compiled by the control path into an
//! extent map of redirect entries the fast path executes.

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::EngineError;
use crate::extent::{ExtentMap, LegState, MirrorLeg, StorageDesc, MAX_EXTENTS};

/// Smallest region (unit of fault-on-write, age stamps and resync copies):
/// 1 MiB at 512-byte blocks.
pub const MIN_REGION_BLOCKS: u64 = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A backend of the volume, by index.
    Backend(usize),
    /// RAID0 over `legs`, in units of `unit_blocks`.
    Stripe { unit_blocks: u64, legs: Vec<Layout> },
    /// RAID1: every leg holds the same data.
    Mirror { legs: Vec<Layout> },
    /// Parts laid end to end (top level only: each part is one extent run).
    Concat { parts: Vec<Layout> },
}

fn bad(msg: String) -> EngineError {
    EngineError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg))
}

/// A compiled layout.
#[derive(Debug)]
pub struct Compiled {
    pub map: ExtentMap,
    pub nblocks: u64,
    pub region_blocks: u64,
    pub mirrored: bool,
}

impl Layout {
    /// Compiles into an extent map over `backends`. Mirror legs get ids in
    /// depth-first order, starting at 0.
    pub fn compile(&self, backends: &[Arc<dyn Backend>], bs: u32) -> Result<Compiled, EngineError> {
        let bs = bs as u64;
        if bs == 0 {
            return Err(bad("block size 0".into()));
        }
        let mut next_leg = 0usize;
        let parts: Vec<&Layout> = match self {
            Layout::Concat { parts } if parts.is_empty() => {
                return Err(bad("concat with no parts".into()))
            }
            Layout::Concat { parts } => parts.iter().collect(),
            other => vec![other],
        };
        let mut compiled = Vec::new();
        for p in parts {
            compiled.push(p.desc(backends, bs, &mut next_leg)?);
        }
        let nblocks: u64 = compiled.iter().map(|c| c.1).sum();
        let mirrored = compiled.iter().any(|c| c.0.has_mirror());
        let region_blocks = if mirrored {
            let min = nblocks.div_ceil(MAX_EXTENTS as u64 / 2).max(1);
            min.next_power_of_two().max(MIN_REGION_BLOCKS)
        } else {
            nblocks.max(1)
        };
        let map = ExtentMap::concat(
            compiled.into_iter().map(|(d, n)| (n, d)).collect(),
            region_blocks,
        );
        if map.extents().len() > MAX_EXTENTS {
            return Err(bad(format!(
                "layout needs {} extents, more than {MAX_EXTENTS}",
                map.extents().len()
            )));
        }
        Ok(Compiled {
            map,
            nblocks,
            region_blocks,
            mirrored,
        })
    }

    /// How many mirror legs the layout has (their ids are 0..n).
    pub fn mirror_legs(&self) -> usize {
        match self {
            Layout::Backend(_) => 0,
            Layout::Stripe { legs, .. } | Layout::Concat { parts: legs } => {
                legs.iter().map(Layout::mirror_legs).sum()
            }
            Layout::Mirror { legs } => {
                legs.len() + legs.iter().map(Layout::mirror_legs).sum::<usize>()
            }
        }
    }

    /// The descriptor and its capacity in blocks.
    fn desc(
        &self,
        backends: &[Arc<dyn Backend>],
        bs: u64,
        next_leg: &mut usize,
    ) -> Result<(StorageDesc, u64), EngineError> {
        match self {
            Layout::Backend(i) => {
                let b = backends
                    .get(*i)
                    .ok_or_else(|| bad(format!("layout names backend {i}, which is missing")))?;
                Ok((
                    StorageDesc::Remap {
                        backend: *i,
                        offset: 0,
                    },
                    b.len() / bs,
                ))
            }
            Layout::Stripe { unit_blocks, legs } => {
                if *unit_blocks == 0 || legs.len() < 2 {
                    return Err(bad("a stripe needs 2+ legs and a unit > 0".into()));
                }
                let mut ds = Vec::new();
                let mut min = u64::MAX;
                for l in legs {
                    let (d, n) = l.desc(backends, bs, next_leg)?;
                    min = min.min(n);
                    ds.push(d);
                }
                // Only whole units on every leg are usable.
                let per_leg = min / unit_blocks * unit_blocks;
                Ok((
                    StorageDesc::Stripe {
                        legs: ds,
                        unit_blocks: *unit_blocks,
                    },
                    per_leg * legs.len() as u64,
                ))
            }
            Layout::Mirror { legs } => {
                if legs.is_empty() {
                    return Err(bad("a mirror needs legs".into()));
                }
                let mut ms = Vec::new();
                let mut min = u64::MAX;
                for l in legs {
                    let id = *next_leg;
                    *next_leg += 1;
                    let (d, n) = l.desc(backends, bs, next_leg)?;
                    min = min.min(n);
                    ms.push(MirrorLeg {
                        id,
                        state: LegState::Up,
                        desc: d,
                    });
                }
                Ok((StorageDesc::Mirror { legs: ms }, min))
            }
            Layout::Concat { .. } => Err(bad("concat is only allowed at the top level".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    fn mems(n: usize, blocks: u64) -> Vec<Arc<dyn Backend>> {
        (0..n)
            .map(|_| Arc::new(MemBackend::new(blocks * 512).unwrap()) as Arc<dyn Backend>)
            .collect()
    }

    #[test]
    fn capacities_and_leg_ids() {
        let b = mems(4, 100);
        let s = Layout::Stripe {
            unit_blocks: 8,
            legs: vec![Layout::Backend(0), Layout::Backend(1)],
        };
        assert_eq!(s.compile(&b, 512).unwrap().nblocks, 192);
        let r10 = Layout::Stripe {
            unit_blocks: 8,
            legs: vec![
                Layout::Mirror {
                    legs: vec![Layout::Backend(0), Layout::Backend(1)],
                },
                Layout::Mirror {
                    legs: vec![Layout::Backend(2), Layout::Backend(3)],
                },
            ],
        };
        let c = r10.compile(&b, 512).unwrap();
        assert!(c.mirrored);
        let ids: Vec<_> = c.map.legs().iter().map(|l| l.0).collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
        let cat = Layout::Concat {
            parts: vec![Layout::Backend(0), Layout::Backend(1)],
        };
        let c = cat.compile(&b, 512).unwrap();
        assert_eq!(c.nblocks, 200);
        assert_eq!(c.map.lookup(150).unwrap().0.pos(150), 50);
        assert!(Layout::Backend(9).compile(&b, 512).is_err());
        assert!(Layout::Mirror {
            legs: vec![Layout::Concat { parts: vec![] }]
        }
        .compile(&b, 512)
        .is_err());
    }
}
