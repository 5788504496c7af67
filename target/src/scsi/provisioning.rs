//! Logical block provisioning (SBC-3 4.7, 5.28, 5.41-5.43, 5.17): UNMAP,
//! WRITE SAME (10/16) with UNMAP/ANCHOR/NDOB, GET LBA STATUS, and the limits
//! the Block Limits and Logical Block Provisioning VPD pages report.
//!
//! Volumes are thin: deallocated blocks read as zeros (LBPRZ = 1), so an
//! all-zero WRITE SAME with UNMAP may deallocate instead of writing.

use bytes::{Bytes, BytesMut};
use vtgt_protocol::scsi::cdb::{be16, be32, be64};
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::lu::LogicalUnit;
use super::sbc::{check_range, engine_sense};
use super::{ScsiCommand, ScsiResult};

pub const UNMAP: u8 = 0x42;
pub const WRITE_SAME_10: u8 = 0x41;
pub const WRITE_SAME_16: u8 = 0x93;
/// SERVICE ACTION IN (16) / GET LBA STATUS.
pub const SA_GET_LBA_STATUS: u16 = 0x12;

/// MAXIMUM UNMAP LBA COUNT: blocks one UNMAP may deallocate in total.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// OPTIMAL UNMAP GRANULARITY: 4 KiB, the file systems' hole granularity.
pub const UNMAP_GRANULARITY: u32 = 8;
/// MAXIMUM WRITE SAME LENGTH. The pattern is written in bounded chunks, so
/// the limit only bounds how long one command runs: 2 GiB at 512 bytes per
/// block, enough to cover typical LUs in one command.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 1 << 22;
/// Bytes one WRITE SAME step writes.
const WRITE_SAME_CHUNK: usize = 1 << 20;
/// Most descriptors one GET LBA STATUS returns, and how far it looks.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 1024;
const LBA_STATUS_WINDOW: u64 = 1 << 24;

fn data_protect() -> Sense {
    Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED)
}

/// UNMAP: validates the whole parameter list first, then deallocates.
pub async fn unmap(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    let cdb = cmd.cdb;
    let param_len = be16(cdb, 7) as usize;
    let done = |r: Result<(), Sense>| {
        r.map(|()| ScsiResult {
            data_out_len: Some(param_len as u32),
            ..ScsiResult::good()
        })
    };
    // ANCHOR needs ANC_SUP, which we do not claim.
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    if param_len == 0 {
        return done(Ok(()));
    }
    if param_len < 8 {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if lu.write_protected() {
        return Err(data_protect());
    }
    let p = &cmd.data_out[..cmd.data_out.len().min(param_len)];
    if p.len() < 8 {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let data_len = be16(p, 0) as usize;
    let desc_len = be16(p, 2) as usize;
    // The lengths must be consistent with what was sent.
    if data_len + 2 > p.len() || desc_len + 8 > p.len() {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let n = desc_len / 16;
    if n > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2, None));
    }
    let vol = lu.volume();
    let mut ranges = Vec::with_capacity(n);
    let mut total: u64 = 0;
    for i in 0..n {
        let d = &p[8 + i * 16..8 + (i + 1) * 16];
        let (lba, blocks) = (be64(d, 0), be32(d, 8) as u64);
        check_range(vol, lba, blocks)?;
        total += blocks;
        if total > MAX_UNMAP_BLOCKS as u64 {
            return Err(Sense::invalid_param_field(8 + i * 16 + 8, None));
        }
        if blocks > 0 {
            ranges.push((lba, blocks));
        }
    }
    for (lba, blocks) in ranges {
        vol.discard(lba, blocks)
            .await
            .map_err(|e| engine_sense(&e, lba, true))?;
    }
    done(Ok(()))
}

/// WRITE SAME (10) and (16).
pub async fn write_same(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    let cdb = cmd.cdb;
    let sixteen = cdb[0] == WRITE_SAME_16;
    let (lba, blocks, len_byte) = if sixteen {
        (be64(cdb, 2), be32(cdb, 10) as u64, 10)
    } else {
        (be32(cdb, 2) as u64, be16(cdb, 7) as u64, 7)
    };
    let anchor = cdb[1] & 0x10 != 0;
    let unmap = cdb[1] & 0x08 != 0;
    let ndob = sixteen && cdb[1] & 0x01 != 0;
    let vol = lu.volume();
    let bs = vol.block_size() as usize;
    let out_len = if ndob { 0 } else { bs as u32 };
    // ANCHOR without UNMAP is invalid; with it, it needs ANC_SUP.
    if anchor {
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    // The range first, so a zero-length request past the end reports that.
    check_range(vol, lba, blocks.max(1))?;
    // WSNZ = 1: zero blocks does not mean "to the end". (With WSNZ = 0,
    // libiscsi 1.19's WriteSame10.UnmapUntilEnd unmaps to the end with a
    // data-out block of FFh and expects zeros back, which SBC-4 forbids:
    // reads must return the block that was sent.)
    if blocks == 0 || blocks > MAX_WRITE_SAME_BLOCKS {
        return Err(Sense::invalid_cdb_field(len_byte, None));
    }
    if lu.write_protected() {
        return Err(data_protect());
    }
    let block: Bytes = if ndob {
        Bytes::from(vec![0u8; bs])
    } else {
        // Exactly one block: anything else is a malformed request.
        match cmd.data_out.len() {
            n if n == bs => cmd.data_out.clone(),
            n if n < bs => return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)),
            _ => return Err(Sense::invalid_cdb_field(len_byte, None)),
        }
    };
    let result = ScsiResult {
        data_out_len: Some(out_len),
        ..ScsiResult::good()
    };
    // Deallocated blocks read as zeros, so unmapping is writing zeros.
    if unmap && block.iter().all(|&b| b == 0) {
        vol.discard(lba, blocks)
            .await
            .map_err(|e| engine_sense(&e, lba, true))?;
        // With the write cache disabled a write is durable before status;
        // a hole is file metadata, made durable by a flush.
        if !lu.write_cache_enabled() {
            vol.flush().await.map_err(|e| engine_sense(&e, lba, true))?;
        }
        return Ok(result);
    }
    let per_chunk = (WRITE_SAME_CHUNK / bs).max(1) as u64;
    let mut pattern = BytesMut::with_capacity(per_chunk.min(blocks) as usize * bs);
    for _ in 0..per_chunk.min(blocks) {
        pattern.extend_from_slice(&block);
    }
    let pattern = pattern.freeze();
    let fua = !lu.write_cache_enabled();
    let mut at = lba;
    let end = lba + blocks;
    while at < end {
        let n = (end - at).min(per_chunk);
        vol.write(at, pattern.slice(..n as usize * bs), fua)
            .await
            .map_err(|e| engine_sense(&e, at, true))?;
        at += n;
    }
    Ok(result)
}

/// GET LBA STATUS: mapped/deallocated runs from the starting LBA, bounded
/// by the allocation length and a fixed window.
pub async fn get_lba_status(lu: &LogicalUnit, cdb: &[u8]) -> Result<(Vec<u8>, usize), Sense> {
    let lba = be64(cdb, 2);
    let alloc = be32(cdb, 10) as usize;
    let vol = lu.volume();
    let cap = vol.num_blocks();
    if lba >= cap {
        return Err(Sense::lba_out_of_range());
    }
    let want = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let span = (cap - lba).min(LBA_STATUS_WINDOW);
    let runs = vol
        .allocated(lba, span)
        .await
        .map_err(|e| engine_sense(&e, lba, false))?;
    let mut out = vec![0u8; 8];
    for (start, blocks, mapped) in runs.into_iter().take(want) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&start.to_be_bytes());
        // A run longer than 32 bits is reported in pieces by later calls.
        d[8..12].copy_from_slice(&u32::try_from(blocks).unwrap_or(u32::MAX).to_be_bytes());
        d[12] = if mapped { 0 } else { 1 };
        out.extend_from_slice(&d);
    }
    let n = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&n.to_be_bytes());
    Ok((out, alloc))
}

/// The Logical Block Provisioning VPD page body (B2h): LBPU, LBPWS,
/// LBPWS10, LBPRZ; thin provisioned.
pub fn vpd_b2() -> Vec<u8> {
    vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]
}

/// Fills the provisioning and atomicity fields of a Block Limits VPD body
/// (B0h, offsets relative to the page's byte 4).
pub fn fill_vpd_b0(b: &mut [u8]) {
    if b.len() < 52 {
        return;
    }
    // WSNZ: a zero-length WRITE SAME is refused.
    b[0] |= 0x01;
    b[1] = super::atomic::MAX_COMPARE_BLOCKS;
    b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
    b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
    b[24..28].copy_from_slice(&UNMAP_GRANULARITY.to_be_bytes());
    // UGAVALID with alignment 0.
    b[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes());
    b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    b[40..44].copy_from_slice(&super::atomic::MAX_ATOMIC_BLOCKS.to_be_bytes());
    b[44..48].copy_from_slice(&super::atomic::ATOMIC_ALIGNMENT.to_be_bytes());
    b[48..52].copy_from_slice(&super::atomic::ATOMIC_GRANULARITY.to_be_bytes());
}

/// Data-out bytes UNMAP and WRITE SAME ask for.
pub fn data_out_len(bs: u32, cdb: &[u8]) -> Option<u32> {
    match *cdb.first()? {
        UNMAP if cdb.len() >= 10 => Some(be16(cdb, 7) as u32),
        WRITE_SAME_10 if cdb.len() >= 10 => Some(bs),
        WRITE_SAME_16 if cdb.len() >= 16 => Some(if cdb[1] & 0x01 != 0 { 0 } else { bs }),
        _ => None,
    }
}

/// READ CAPACITY (16) byte 14: LBPME and LBPRZ.
pub const READ_CAPACITY_LBP: u8 = 0x80 | 0x40;
