//! Block commands (SBC-3) on the control path: reads, writes, WRITE AND
//! VERIFY, VERIFY, SYNCHRONIZE CACHE, PRE-FETCH, READ CAPACITY and START
//! STOP UNIT. Every one re-checks its CDB and range here, whatever the fast
//! path saw.

use bytes::Bytes;
use vtgt_engine::{EngineError, Volume};
use vtgt_protocol::scsi::cdb::{decode_lba_range, decode_read_capacity, Rw, RwKind};
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::lu::LogicalUnit;
use super::{field, max_transfer_blocks};

/// Blocks one internal read step of a long VERIFY moves.
const CHUNK_BLOCKS: u64 = 8192;

/// LBA OUT OF RANGE unless `lba..lba+blocks` lies inside the medium.
pub fn check_range(vol: &Volume, lba: u64, blocks: u64) -> Result<(), Sense> {
    vol.check_range(lba, blocks)
        .map_err(|_| Sense::lba_out_of_range())
}

/// The sense for an engine error on `lba`.
pub fn engine_sense(e: &EngineError, lba: u64, write: bool) -> Sense {
    match e {
        EngineError::OutOfRange { .. } => Sense::lba_out_of_range(),
        EngineError::BadLength { .. } => {
            Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE)
        }
        EngineError::Io(_) | EngineError::Unmapped(_) => {
            let asc = if write {
                Asc::WRITE_ERROR
            } else {
                Asc::UNRECOVERED_READ_ERROR
            };
            Sense::new(key::MEDIUM_ERROR, asc).with_information(lba)
        }
    }
}

/// Checks the transfer length against the Block Limits VPD page and the
/// range against the medium.
fn check_transfer(vol: &Volume, rw: &Rw, moves_data: bool) -> Result<(), Sense> {
    if moves_data && rw.blocks > max_transfer_blocks(vol.block_size()) {
        return Err(Sense::invalid_cdb_field(rw.len_byte, None));
    }
    check_range(vol, rw.lba, rw.blocks as u64)
}

/// Bytes of data-out the CDB asks for.
pub fn data_out_len(vol: &Volume, rw: &Rw) -> u32 {
    let bs = vol.block_size() as u64;
    let blocks = match rw.kind {
        RwKind::Read => return 0,
        RwKind::Write | RwKind::WriteAndVerify => rw.blocks as u64,
        RwKind::Verify => match rw.bytchk {
            0 => 0,
            3 => (rw.blocks > 0) as u64,
            _ => rw.blocks as u64,
        },
    };
    u32::try_from(blocks * bs).unwrap_or(u32::MAX)
}

/// Reads in chunks no larger than the maximum transfer length, so a long
/// VERIFY does not hold a huge buffer.
async fn for_each_chunk<F>(vol: &Volume, lba: u64, blocks: u64, mut f: F) -> Result<(), Sense>
where
    F: FnMut(u64, &Bytes) -> Result<(), Sense>,
{
    let mut at = lba;
    let end = lba + blocks;
    while at < end {
        let n = (end - at).min(CHUNK_BLOCKS);
        let data = vol
            .read(at, n)
            .await
            .map_err(|e| engine_sense(&e, at, false))?;
        f(at, &data)?;
        at += n;
    }
    Ok(())
}

fn miscompare(lba: u64) -> Sense {
    Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY).with_information(lba)
}

/// Compares `expect` (data-out) with what the medium holds from `lba`.
/// Reports the LBA of the first block that differs.
async fn compare(vol: &Volume, lba: u64, expect: &[u8]) -> Result<(), Sense> {
    let bs = vol.block_size() as usize;
    let blocks = expect.len().div_ceil(bs) as u64;
    let mut off = 0usize;
    for_each_chunk(vol, lba, blocks, |at, data| {
        let want = &expect[off.min(expect.len())..(off + data.len()).min(expect.len())];
        if let Some(i) = data.iter().zip(want).position(|(a, b)| a != b) {
            return Err(miscompare(at + (i / bs) as u64));
        }
        off += data.len();
        Ok(())
    })
    .await
}

/// READ (6/10/12/16) on the control path.
pub async fn read(vol: &Volume, rw: &Rw) -> Result<Bytes, Sense> {
    check_transfer(vol, rw, true)?;
    if rw.blocks == 0 {
        return Ok(Bytes::new());
    }
    vol.read(rw.lba, rw.blocks as u64)
        .await
        .map_err(|e| engine_sense(&e, rw.lba, false))
}

/// The whole blocks of `data_out` the command may use. When the transport
/// delivered less than the CDB asked for, only the complete blocks received
/// are written (the transport reports the rest as residual).
fn received_blocks(vol: &Volume, rw: &Rw, data_out: &Bytes) -> Bytes {
    let bs = vol.block_size() as usize;
    let want = rw.blocks as usize * bs;
    let have = data_out.len().min(want) / bs * bs;
    data_out.slice(..have)
}

/// WRITE (6/10/12/16) and WRITE AND VERIFY (10/12/16).
pub async fn write(lu: &LogicalUnit, rw: &Rw, data_out: &Bytes) -> Result<(), Sense> {
    let vol = lu.volume();
    if rw.kind == RwKind::WriteAndVerify && rw.bytchk > 1 {
        return Err(Sense::invalid_cdb_field(1, Some(2)));
    }
    check_transfer(vol, rw, true)?;
    if lu.write_protected() {
        return Err(Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    }
    let data = received_blocks(vol, rw, data_out);
    if data.is_empty() {
        return Ok(());
    }
    // WRITE AND VERIFY checks the medium, so the data must be on it; with
    // the write cache disabled every write is durable before status.
    let fua = rw.fua || rw.kind == RwKind::WriteAndVerify || !lu.write_cache_enabled();
    vol.write(rw.lba, data.clone(), fua)
        .await
        .map_err(|e| engine_sense(&e, rw.lba, true))?;
    if rw.kind == RwKind::WriteAndVerify {
        if rw.bytchk == 1 {
            compare(vol, rw.lba, &data).await?;
        } else {
            let blocks = (data.len() / vol.block_size() as usize) as u64;
            for_each_chunk(vol, rw.lba, blocks, |_, _| Ok(())).await?;
        }
    }
    Ok(())
}

/// VERIFY (10/12/16). BYTCHK 00b checks the blocks are readable, 01b
/// compares them with the data-out, 11b compares each with one block.
pub async fn verify(vol: &Volume, rw: &Rw, data_out: &Bytes) -> Result<(), Sense> {
    if rw.bytchk == 2 {
        return Err(Sense::invalid_cdb_field(1, Some(2)));
    }
    check_transfer(vol, rw, rw.bytchk != 0)?;
    if rw.blocks == 0 {
        return Ok(());
    }
    let bs = vol.block_size() as usize;
    match rw.bytchk {
        0 => for_each_chunk(vol, rw.lba, rw.blocks as u64, |_, _| Ok(())).await,
        1 => {
            let data = received_blocks(vol, rw, data_out);
            compare(vol, rw.lba, &data).await
        }
        _ => {
            let Some(one) = data_out.get(..bs) else {
                return Ok(());
            };
            for_each_chunk(vol, rw.lba, rw.blocks as u64, |at, data| {
                for (i, blk) in data.chunks(bs).enumerate() {
                    if blk != one {
                        return Err(miscompare(at + i as u64));
                    }
                }
                Ok(())
            })
            .await
        }
    }
}

/// The range of a PRE-FETCH or SYNCHRONIZE CACHE; 0 blocks means to the end.
fn check_cache_range(vol: &Volume, cdb: &[u8]) -> Result<(), Sense> {
    let r = decode_lba_range(cdb).map_err(field)?;
    if r.blocks == 0 {
        if r.lba > vol.num_blocks() {
            return Err(Sense::lba_out_of_range());
        }
        return Ok(());
    }
    check_range(vol, r.lba, r.blocks as u64)
}

/// SYNCHRONIZE CACHE (10/16): makes every completed write durable. IMMED
/// still flushes before status; that is allowed and simpler.
pub async fn synchronize_cache(vol: &Volume, cdb: &[u8]) -> Result<(), Sense> {
    check_cache_range(vol, cdb)?;
    vol.flush()
        .await
        .map_err(|e| engine_sense(&e, 0, true).with_information(0))
}

/// PRE-FETCH (10/16): we keep no cache, so after the range check there is
/// nothing to do; GOOD (not CONDITION MET) says the blocks are not cached.
pub fn pre_fetch(vol: &Volume, cdb: &[u8]) -> Result<(), Sense> {
    check_cache_range(vol, cdb)
}

/// READ CAPACITY (10) and (16): data and allocation length.
pub fn read_capacity(vol: &Volume, cdb: &[u8]) -> Result<(Vec<u8>, usize), Sense> {
    let rc = decode_read_capacity(cdb).map_err(field)?;
    let last = vol.num_blocks().saturating_sub(1);
    let bs = vol.block_size();
    if !rc.sixteen {
        let mut d = Vec::with_capacity(8);
        // Too large for 32 bits: FFFFFFFFh tells the initiator to use (16).
        d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        d.extend_from_slice(&bs.to_be_bytes());
        return Ok((d, 8));
    }
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&last.to_be_bytes());
    d[8..12].copy_from_slice(&bs.to_be_bytes());
    // No protection; one logical block per physical block
    // (LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0: libiscsi 1.19's
    // GetLBAStatus.UnmapSingle queries LBA i + 1 but checks the answer
    // against i + 2^exponent, so any exponent above 0 fails it); thin
    // provisioned (LBPME) with unmapped blocks reading zero (LBPRZ),
    // lowest aligned LBA 0.
    d[14] = super::provisioning::READ_CAPACITY_LBP;
    Ok((d, rc.alloc as usize))
}

/// READ DEFECT DATA (10).
pub const READ_DEFECT_DATA_10: u8 = 0x37;
/// READ DEFECT DATA (12).
pub const READ_DEFECT_DATA_12: u8 = 0xB7;

/// READ DEFECT DATA (10) and (12) (SBC-3 5.12, 5.13). A virtual volume has
/// no grown or primary defects: both lists are present and empty, in the
/// format the initiator asked for (the defect list length is zero, so no
/// descriptor's layout is implied).
pub fn read_defect_data(cdb: &[u8]) -> Result<(Vec<u8>, usize), Sense> {
    let twelve = cdb[0] == READ_DEFECT_DATA_12;
    // REQ_PLIST, REQ_GLIST and DEFECT LIST FORMAT: byte 2 in (10), byte 1
    // in (12).
    let flags = if twelve { cdb[1] } else { cdb[2] } & 0x1F;
    if twelve {
        let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
        // PLISTV/GLISTV/format, generation code 0, defect list length 0.
        Ok((vec![0, flags, 0, 0, 0, 0, 0, 0], alloc))
    } else {
        let alloc = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
        Ok((vec![0, flags, 0, 0], alloc))
    }
}
