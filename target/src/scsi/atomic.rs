//! Commands that read and write blocks as one indivisible step (SBC-3
//! 5.2, 5.9; SBC-4 5.48): COMPARE AND WRITE, ORWRITE (16) and WRITE ATOMIC
//! (16). Each holds the engine's exclusive range lock, which every other
//! write to the volume (fast path, other sessions, other portals) respects.

use bytes::{Bytes, BytesMut};
use vtgt_protocol::scsi::cdb::{be16, be32, be64};
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::lu::LogicalUnit;
use super::sbc::{check_range, engine_sense};
use super::{max_transfer_blocks, ScsiCommand, ScsiResult};

pub const COMPARE_AND_WRITE: u8 = 0x89;
pub const ORWRITE_16: u8 = 0x8B;
pub const WRITE_ATOMIC_16: u8 = 0x9C;

/// MAXIMUM COMPARE AND WRITE LENGTH (Block Limits VPD, one byte).
pub const MAX_COMPARE_BLOCKS: u8 = 255;
/// MAXIMUM ATOMIC TRANSFER LENGTH: 1 MiB at 512-byte blocks, which one
/// journal entry holds.
pub const MAX_ATOMIC_BLOCKS: u32 = 2048;
/// ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY: 4 KiB, so an
/// atomic write never shares a file system block with another one.
pub const ATOMIC_ALIGNMENT: u32 = 8;
pub const ATOMIC_GRANULARITY: u32 = 8;

fn with_out(bytes: usize) -> ScsiResult {
    ScsiResult {
        data_out_len: Some(u32::try_from(bytes).unwrap_or(u32::MAX)),
        ..ScsiResult::good()
    }
}

/// The data-out a command needs, or the error for a short one.
fn take_data(cmd: &ScsiCommand<'_>, bytes: usize) -> Result<Bytes, Sense> {
    if cmd.data_out.len() < bytes {
        // The transport reports the residual; nothing is written.
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    Ok(cmd.data_out.slice(..bytes))
}

/// COMPARE AND WRITE: if the blocks equal the first half of the data-out,
/// writes the second half; otherwise MISCOMPARE with INFORMATION set to the
/// offset of the first differing byte.
pub async fn compare_and_write(
    lu: &LogicalUnit,
    cmd: &ScsiCommand<'_>,
) -> Result<ScsiResult, Sense> {
    let cdb = cmd.cdb;
    let lba = be64(cdb, 2);
    let blocks = cdb[13] as u64;
    let vol = lu.volume();
    let bs = vol.block_size() as usize;
    let len = 2 * blocks as usize * bs;
    // The data-out must be exactly the compare and write buffers; a
    // mismatch (e.g. a length that wrapped the one-byte field) is refused.
    if cmd.data_out.len() > len {
        return Err(Sense::invalid_cdb_field(13, None));
    }
    if blocks == 0 {
        return Ok(with_out(0));
    }
    if blocks > MAX_COMPARE_BLOCKS as u64 {
        return Err(Sense::invalid_cdb_field(13, None));
    }
    check_range(vol, lba, blocks)?;
    if lu.write_protected() {
        return Err(Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    }
    let data = take_data(cmd, len)?;
    let (expect, new) = (data.slice(..len / 2), data.slice(len / 2..));
    let guard = vol.lock_exclusive(lba, blocks).await;
    let have = vol
        .read(lba, blocks)
        .await
        .map_err(|e| engine_sense(&e, lba, false))?;
    if let Some(i) = have.iter().zip(expect.iter()).position(|(a, b)| a != b) {
        return Err(
            Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY).with_information(i as u64)
        );
    }
    let fua = cdb[1] & 0x08 != 0 || !lu.write_cache_enabled();
    vol.write_locked(&guard, lba, new, fua)
        .await
        .map_err(|e| engine_sense(&e, lba, true))?;
    Ok(with_out(len))
}

/// ORWRITE (16): ORs the data-out into the blocks, atomically.
pub async fn orwrite(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    let cdb = cmd.cdb;
    let lba = be64(cdb, 2);
    let blocks = be32(cdb, 10) as u64;
    let vol = lu.volume();
    let bs = vol.block_size() as usize;
    if blocks > max_transfer_blocks(vol.block_size()) as u64 {
        return Err(Sense::invalid_cdb_field(10, None));
    }
    check_range(vol, lba, blocks)?;
    if lu.write_protected() {
        return Err(Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    }
    let len = blocks as usize * bs;
    if blocks == 0 {
        return Ok(with_out(0));
    }
    let data = take_data(cmd, len)?;
    let guard = vol.lock_exclusive(lba, blocks).await;
    let have = vol
        .read(lba, blocks)
        .await
        .map_err(|e| engine_sense(&e, lba, false))?;
    let mut out = BytesMut::from(&have[..]);
    for (o, d) in out.iter_mut().zip(data.iter()) {
        *o |= d;
    }
    let fua = cdb[1] & 0x08 != 0 || !lu.write_cache_enabled();
    vol.write_locked(&guard, lba, out.freeze(), fua)
        .await
        .map_err(|e| engine_sense(&e, lba, true))?;
    Ok(with_out(len))
}

/// WRITE ATOMIC (16): all of the blocks or none, even across a crash (the
/// engine journals the data first when the volume has a journal).
pub async fn write_atomic(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    let cdb = cmd.cdb;
    let lba = be64(cdb, 2);
    let blocks = be16(cdb, 12) as u64;
    let vol = lu.volume();
    let bs = vol.block_size() as usize;
    if blocks > MAX_ATOMIC_BLOCKS as u64 {
        return Err(Sense::invalid_cdb_field(12, None));
    }
    check_range(vol, lba, blocks)?;
    if lu.write_protected() {
        return Err(Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    }
    let len = blocks as usize * bs;
    if blocks == 0 {
        return Ok(with_out(0));
    }
    if !lba.is_multiple_of(ATOMIC_ALIGNMENT as u64) {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    if !blocks.is_multiple_of(ATOMIC_GRANULARITY as u64) {
        return Err(Sense::invalid_cdb_field(12, None));
    }
    let data = take_data(cmd, len)?;
    let fua = cdb[1] & 0x08 != 0 || !lu.write_cache_enabled();
    vol.write_atomic(lba, data, fua)
        .await
        .map_err(|e| engine_sense(&e, lba, true))?;
    Ok(with_out(len))
}

/// Data-out bytes these commands ask for, for residual reporting.
pub fn data_out_len(bs: u32, cdb: &[u8]) -> Option<u32> {
    let bs = bs as u64;
    let blocks = match *cdb.first()? {
        COMPARE_AND_WRITE if cdb.len() >= 16 => 2 * cdb[13] as u64,
        ORWRITE_16 if cdb.len() >= 16 => be32(cdb, 10) as u64,
        WRITE_ATOMIC_16 if cdb.len() >= 16 => be16(cdb, 12) as u64,
        _ => return None,
    };
    Some(u32::try_from(blocks * bs).unwrap_or(u32::MAX))
}
