//! The extent map (Rmap): variable-size extents whose values index a table of
//! redirect entries. A redirect entry's storage descriptor is itself a small
//! tree (remap, stripe, mirror), so RAID0/1/10 are internal to one entry and
//! concatenation is several extents pointing at different entries.

/// Most extents a map may hold. Mirrored layouts are cut into regions (the
/// unit of fault-on-write and of the age list); the region size grows with
/// the volume so the count stays under this.
pub const MAX_EXTENTS: usize = 4096;

/// State of one mirror leg, as the fast path sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Serves reads and takes writes.
    Up,
    /// Failed: neither reads nor writes.
    Dead,
    /// Being resynchronised: takes writes, serves no reads.
    Resync,
}

impl LegState {
    pub fn as_str(self) -> &'static str {
        match self {
            LegState::Up => "up",
            LegState::Dead => "dead",
            LegState::Resync => "resync",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "up" => Some(LegState::Up),
            "dead" => Some(LegState::Dead),
            "resync" => Some(LegState::Resync),
            _ => None,
        }
    }

    fn takes_writes(self) -> bool {
        self != LegState::Dead
    }
}

/// One side of a mirror. `id` is unique within the volume; admin commands
/// and the metadata file name legs by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorLeg {
    pub id: usize,
    pub state: LegState,
    pub desc: StorageDesc,
}

/// What a redirect entry does with an I/O. Positions inside a descriptor are
/// in blocks from the descriptor's own start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageDesc {
    /// Remap to a backend at a byte offset.
    Remap { backend: usize, offset: u64 },
    /// RAID0: unit `u` of the descriptor lives on leg `u % n` at unit `u / n`.
    Stripe {
        legs: Vec<StorageDesc>,
        unit_blocks: u64,
    },
    /// RAID1: writes go to every leg that takes writes, reads to one Up leg.
    Mirror { legs: Vec<MirrorLeg> },
}

/// One downstream I/O: `blocks` at buffer block `buf_block` go to `backend`
/// at byte `offset`. `leg` is the innermost mirror leg on the way, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub buf_block: u64,
    pub blocks: u64,
    pub backend: usize,
    pub offset: u64,
    pub leg: Option<usize>,
}

/// Which legs an I/O is resolved through.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// A read: one Up leg per mirror, picked by `pick(number of up legs)`.
    Read(u64),
    /// A host write: every leg that takes writes.
    Write,
    /// Only the named leg (resync and reconciliation copies).
    Leg(usize),
    /// Every leg that is Up.
    UpLegs,
}

impl StorageDesc {
    /// Every backend the descriptor uses, with the state of the innermost
    /// mirror leg on the way (None outside mirrors).
    pub fn backends(&self, state: Option<LegState>, out: &mut Vec<(Option<LegState>, usize)>) {
        match self {
            StorageDesc::Remap { backend, .. } => out.push((state, *backend)),
            StorageDesc::Stripe { legs, .. } => legs.iter().for_each(|l| l.backends(state, out)),
            StorageDesc::Mirror { legs } => legs
                .iter()
                .for_each(|l| l.desc.backends(Some(l.state), out)),
        }
    }

    /// Resolves `blocks` at `pos` into downstream targets, appending to
    /// `out`. `buf_block` is where the range starts in the caller's buffer.
    /// Returns false when a mirror has no usable leg for a read.
    // Recursive walk state is passed flat: no allocation per level.
    #[allow(clippy::too_many_arguments)]
    pub fn resolve(
        &self,
        pos: u64,
        blocks: u64,
        buf_block: u64,
        bs: u64,
        route: Route,
        leg: Option<usize>,
        out: &mut Vec<Target>,
    ) -> bool {
        match self {
            StorageDesc::Remap { backend, offset } => {
                if let Route::Leg(want) = route {
                    if leg != Some(want) {
                        return true;
                    }
                }
                out.push(Target {
                    buf_block,
                    blocks,
                    backend: *backend,
                    offset: offset + pos * bs,
                    leg,
                });
                true
            }
            StorageDesc::Stripe { legs, unit_blocks } => {
                let n = legs.len() as u64;
                let unit = *unit_blocks;
                let mut cur = pos;
                let end = pos + blocks;
                let mut ok = true;
                while cur < end {
                    let u = cur / unit;
                    let within = cur % unit;
                    let take = (unit - within).min(end - cur);
                    let Some(l) = legs.get((u % n) as usize) else {
                        return false;
                    };
                    let lpos = (u / n) * unit + within;
                    ok &= l.resolve(lpos, take, buf_block + (cur - pos), bs, route, leg, out);
                    cur += take;
                }
                ok
            }
            StorageDesc::Mirror { legs } => match route {
                Route::Read(pick) => {
                    let up: Vec<&MirrorLeg> =
                        legs.iter().filter(|l| l.state == LegState::Up).collect();
                    if up.is_empty() {
                        return false;
                    }
                    let l = up[(pick % up.len() as u64) as usize];
                    l.desc
                        .resolve(pos, blocks, buf_block, bs, route, Some(l.id), out)
                }
                Route::Write | Route::Leg(_) | Route::UpLegs => {
                    let mut ok = true;
                    for l in legs {
                        let take = match route {
                            Route::Write => l.state.takes_writes(),
                            Route::UpLegs => l.state == LegState::Up,
                            _ => true,
                        };
                        if take {
                            ok &=
                                l.desc
                                    .resolve(pos, blocks, buf_block, bs, route, Some(l.id), out);
                        }
                    }
                    ok
                }
            },
        }
    }

    /// Whether `blocks` at `pos` stays inside one stripe unit at every level,
    /// i.e. becomes one downstream I/O per leg.
    pub fn within_unit(&self, pos: u64, blocks: u64) -> bool {
        match self {
            StorageDesc::Remap { .. } => true,
            StorageDesc::Stripe { legs, unit_blocks } => {
                let unit = *unit_blocks;
                if pos / unit != (pos + blocks - 1) / unit {
                    return false;
                }
                let n = legs.len() as u64;
                let u = pos / unit;
                legs.get((u % n) as usize)
                    .is_some_and(|l| l.within_unit((u / n) * unit + pos % unit, blocks))
            }
            StorageDesc::Mirror { legs } => legs.iter().all(|l| l.desc.within_unit(pos, blocks)),
        }
    }

    pub fn has_mirror(&self) -> bool {
        match self {
            StorageDesc::Remap { .. } => false,
            StorageDesc::Stripe { legs, .. } => legs.iter().any(|l| l.has_mirror()),
            StorageDesc::Mirror { .. } => true,
        }
    }

    /// Every mirror leg in this descriptor, outermost first.
    pub fn legs(&self, out: &mut Vec<(usize, LegState)>) {
        match self {
            StorageDesc::Remap { .. } => {}
            StorageDesc::Stripe { legs, .. } => legs.iter().for_each(|l| l.legs(out)),
            StorageDesc::Mirror { legs } => {
                for l in legs {
                    out.push((l.id, l.state));
                    l.desc.legs(out);
                }
            }
        }
    }

    /// A copy with leg `id` set to `state`.
    pub fn with_leg_state(&self, id: usize, state: LegState) -> StorageDesc {
        match self {
            StorageDesc::Remap { .. } => self.clone(),
            StorageDesc::Stripe { legs, unit_blocks } => StorageDesc::Stripe {
                legs: legs.iter().map(|l| l.with_leg_state(id, state)).collect(),
                unit_blocks: *unit_blocks,
            },
            StorageDesc::Mirror { legs } => StorageDesc::Mirror {
                legs: legs
                    .iter()
                    .map(|l| MirrorLeg {
                        id: l.id,
                        state: if l.id == id { state } else { l.state },
                        desc: l.desc.with_leg_state(id, state),
                    })
                    .collect(),
            },
        }
    }

    /// Whether a leg may be marked dead without leaving its mirror with no
    /// Up leg.
    pub fn can_lose(&self, id: usize) -> Option<bool> {
        match self {
            StorageDesc::Remap { .. } => None,
            StorageDesc::Stripe { legs, .. } => legs.iter().find_map(|l| l.can_lose(id)),
            StorageDesc::Mirror { legs } => {
                if legs.iter().any(|l| l.id == id) {
                    let others_up = legs
                        .iter()
                        .filter(|l| l.id != id && l.state == LegState::Up)
                        .count();
                    return Some(others_up > 0);
                }
                legs.iter().find_map(|l| l.desc.can_lose(id))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub desc: StorageDesc,
    pub fault_on_read: bool,
    pub fault_on_write: bool,
}

/// `[start, start + len)` in volume blocks, pointing at a redirect entry.
/// `base` is where the extent starts inside the entry's descriptor, so one
/// entry can be shared by the pieces of a split extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub redirect: u32,
    pub base: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Position of `lba` inside the redirect entry's descriptor.
    pub fn pos(&self, lba: u64) -> u64 {
        self.base + (lba - self.start)
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
        Self::concat(vec![(nblocks, desc)], nblocks.max(1))
    }

    /// Extents laid end to end, one per part, each cut into `region`-block
    /// pieces that share the part's redirect entry.
    pub fn concat(parts: Vec<(u64, StorageDesc)>, region: u64) -> Self {
        let mut extents = Vec::new();
        let mut redirects = Vec::new();
        let mut at = 0u64;
        for (len, desc) in parts {
            let r = redirects.len() as u32;
            redirects.push(Redirect {
                desc,
                fault_on_read: false,
                fault_on_write: false,
            });
            let mut base = 0;
            while base < len {
                // Cut at volume region boundaries so regions never straddle.
                let next = ((at + base) / region + 1) * region;
                let n = (next - (at + base)).min(len - base);
                extents.push(Extent {
                    start: at + base,
                    len: n,
                    redirect: r,
                    base,
                });
                base += n;
            }
            if len == 0 {
                extents.push(Extent {
                    start: at,
                    len: 0,
                    redirect: r,
                    base: 0,
                });
            }
            at += len;
        }
        Self { extents, redirects }
    }

    /// A map from parts the control path assembled (sorted, contiguous
    /// extents; every redirect index valid).
    pub fn from_parts(extents: Vec<Extent>, redirects: Vec<Redirect>) -> Self {
        let mut m = Self { extents, redirects };
        m.compact();
        m
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    pub fn redirects(&self) -> &[Redirect] {
        &self.redirects
    }

    pub fn redirect(&self, idx: u32) -> Option<&Redirect> {
        self.redirects.get(idx as usize)
    }

    /// Index of the extent holding `lba`, if any.
    pub fn lookup_index(&self, lba: u64) -> Option<usize> {
        let i = self.extents.partition_point(|e| e.end() <= lba);
        self.extents.get(i).filter(|e| e.start <= lba).map(|_| i)
    }

    /// The extent at `idx` with its redirect entry.
    pub fn extent_at(&self, idx: usize) -> Option<(&Extent, &Redirect)> {
        let e = self.extents.get(idx)?;
        Some((e, self.redirects.get(e.redirect as usize)?))
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

    /// Index of the redirect with `desc` and these flags, added if missing.
    fn entry(&mut self, desc: &StorageDesc, fow: bool) -> u32 {
        if let Some(i) = self
            .redirects
            .iter()
            .position(|r| &r.desc == desc && r.fault_on_write == fow && !r.fault_on_read)
        {
            return i as u32;
        }
        self.redirects.push(Redirect {
            desc: desc.clone(),
            fault_on_read: false,
            fault_on_write: fow,
        });
        (self.redirects.len() - 1) as u32
    }

    /// Drops redirect entries no extent references (an entry is freed only
    /// once unreferenced).
    fn compact(&mut self) {
        let mut used = vec![false; self.redirects.len()];
        for e in &self.extents {
            used[e.redirect as usize] = true;
        }
        let mut remap = vec![0u32; self.redirects.len()];
        let mut kept = Vec::new();
        for (i, r) in self.redirects.drain(..).enumerate() {
            if used[i] {
                remap[i] = kept.len() as u32;
                kept.push(r);
            }
        }
        self.redirects = kept;
        for e in &mut self.extents {
            e.redirect = remap[e.redirect as usize];
        }
    }

    /// Sets or clears fault-on-write on every extent holding a mirror for
    /// which `pick(extent index)` is true.
    pub fn with_fow(&self, fow: bool, pick: impl Fn(usize, &Extent) -> bool) -> Self {
        let mut m = self.clone();
        for i in 0..m.extents.len() {
            let e = m.extents[i];
            let r = m.redirects[e.redirect as usize].clone();
            if r.desc.has_mirror() && r.fault_on_write != fow && pick(i, &e) {
                m.extents[i].redirect = m.entry(&r.desc, fow);
            }
        }
        m.compact();
        m
    }

    /// A copy with leg `id` set to `state` in every entry.
    pub fn with_leg_state(&self, id: usize, state: LegState) -> Self {
        let mut m = self.clone();
        for r in &mut m.redirects {
            r.desc = r.desc.with_leg_state(id, state);
        }
        m
    }

    /// Every leg id and its state, once each.
    pub fn legs(&self) -> Vec<(usize, LegState)> {
        let mut out = Vec::new();
        for r in &self.redirects {
            r.desc.legs(&mut out);
        }
        out.sort_by_key(|l| l.0);
        out.dedup_by_key(|l| l.0);
        out
    }

    /// Ids of the legs whose state passes `keep`, in id order.
    pub fn leg_ids<C: FromIterator<usize>>(&self, keep: impl Fn(LegState) -> bool) -> C {
        self.legs()
            .into_iter()
            .filter(|l| keep(l.1))
            .map(|l| l.0)
            .collect()
    }

    /// The leg ids of each mirror, once per mirror.
    pub fn mirror_groups(&self) -> Vec<Vec<usize>> {
        fn walk(d: &StorageDesc, out: &mut Vec<Vec<usize>>) {
            match d {
                StorageDesc::Remap { .. } => {}
                StorageDesc::Stripe { legs, .. } => legs.iter().for_each(|l| walk(l, out)),
                StorageDesc::Mirror { legs } => {
                    out.push(legs.iter().map(|l| l.id).collect());
                    legs.iter().for_each(|l| walk(&l.desc, out));
                }
            }
        }
        let mut out = Vec::new();
        for r in &self.redirects {
            walk(&r.desc, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn can_lose(&self, id: usize) -> bool {
        self.redirects
            .iter()
            .filter_map(|r| r.desc.can_lose(id))
            .all(|ok| ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remap(backend: usize) -> StorageDesc {
        StorageDesc::Remap { backend, offset: 0 }
    }

    #[test]
    fn lookup_single() {
        let m = ExtentMap::single(100, remap(0));
        assert_eq!(m.lookup(0).unwrap().0.len, 100);
        assert!(m.lookup(99).is_some());
        assert!(m.lookup(100).is_none());
        assert_eq!(m.grown(200).lookup(150).unwrap().0.end(), 200);
    }

    #[test]
    fn stripe_resolves_round_robin() {
        let d = StorageDesc::Stripe {
            legs: vec![remap(0), remap(1), remap(2)],
            unit_blocks: 4,
        };
        let mut out = Vec::new();
        assert!(d.resolve(2, 12, 0, 512, Route::Write, None, &mut out));
        let got: Vec<_> = out
            .iter()
            .map(|t| (t.backend, t.offset / 512, t.blocks))
            .collect();
        // Units 0..3: leg 0 unit 0, leg 1 unit 0, leg 2 unit 0, leg 0 unit 1.
        assert_eq!(got, vec![(0, 2, 2), (1, 0, 4), (2, 0, 4), (0, 4, 2)]);
        assert!(d.within_unit(4, 4));
        assert!(!d.within_unit(3, 2));
    }

    #[test]
    fn mirror_routes_by_leg_state() {
        let d = StorageDesc::Mirror {
            legs: vec![
                MirrorLeg {
                    id: 0,
                    state: LegState::Up,
                    desc: remap(0),
                },
                MirrorLeg {
                    id: 1,
                    state: LegState::Resync,
                    desc: remap(1),
                },
            ],
        };
        let mut w = Vec::new();
        d.resolve(0, 1, 0, 512, Route::Write, None, &mut w);
        assert_eq!(w.len(), 2);
        for pick in 0..4 {
            let mut r = Vec::new();
            d.resolve(0, 1, 0, 512, Route::Read(pick), None, &mut r);
            assert_eq!(r[0].backend, 0, "a resyncing leg serves no reads");
        }
        assert_eq!(d.can_lose(0), Some(false));
        assert_eq!(d.can_lose(1), Some(true));
        let dead = d.with_leg_state(1, LegState::Dead);
        let mut w = Vec::new();
        dead.resolve(0, 1, 0, 512, Route::Write, None, &mut w);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn concat_cuts_regions_and_fow_shares_entries() {
        let m = ExtentMap::concat(
            vec![
                (
                    10,
                    StorageDesc::Mirror {
                        legs: vec![MirrorLeg {
                            id: 0,
                            state: LegState::Up,
                            desc: remap(0),
                        }],
                    },
                ),
                (6, remap(1)),
            ],
            4,
        );
        let starts: Vec<_> = m
            .extents()
            .iter()
            .map(|e| (e.start, e.len, e.base))
            .collect();
        assert_eq!(
            starts,
            vec![(0, 4, 0), (4, 4, 4), (8, 2, 8), (10, 2, 0), (12, 4, 2)]
        );
        let f = m.with_fow(true, |_, _| true);
        assert!(f.lookup(5).unwrap().1.fault_on_write);
        assert!(!f.lookup(11).unwrap().1.fault_on_write, "no mirror, no FoW");
        let g = f.with_fow(false, |_, e| e.start == 4);
        assert!(!g.lookup(5).unwrap().1.fault_on_write);
        assert!(g.lookup(0).unwrap().1.fault_on_write);
        assert_eq!(g.redirects().len(), 3);
    }
}
