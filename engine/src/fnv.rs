//! FNV-1a, the checksum of the engine's on-media records (journal entries,
//! tag slots, superblocks): cheap, and enough to tell torn or stale records
//! from whole ones.

pub(crate) const OFFSET: u32 = 0x811c_9dc5;

/// Continues a running hash over `data`, so data read in pieces hashes as
/// if read whole.
pub(crate) fn extend(mut h: u32, data: &[u8]) -> u32 {
    for &b in data {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The hash of `parts` laid end to end.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(OFFSET, |h, p| extend(h, p))
}
