//! Copy offload (SPC-4 6.4, 6.18): EXTENDED COPY (LID1) with
//! identification CSCD descriptors (E4h, NAA designators) and block-to-block
//! segment descriptors (02h), RECEIVE COPY RESULTS (COPY STATUS, OPERATING
//! PARAMETERS), and the Third-party Copy VPD page. The data moves through
//! the engine's chunked copy loop.
//!
//! Copies may span any LUs of this process: a registry maps each LU's NAA
//! designator to its volume; the server fills it as it builds LUs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;
use vtgt_engine::{copy::copy_blocks, NexusId, Volume};
use vtgt_protocol::scsi::cdb::{be16, be32, be64};
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::inquiry::naa6;
use super::lu::LogicalUnit;
use super::{ScsiCommand, ScsiResult};

pub const EXTENDED_COPY: u8 = 0x83;
pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
pub const SA_EXTENDED_COPY_LID1: u16 = 0x00;
pub const SA_COPY_STATUS: u16 = 0x00;
pub const SA_OPERATING_PARAMETERS: u16 = 0x03;

/// Copy manager limits, reported in OPERATING PARAMETERS.
pub const MAX_CSCD_DESCRIPTORS: u16 = 4;
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
const CSCD_LEN: usize = 32;
const SEGMENT_LEN: usize = 28;
pub const MAX_DESCRIPTOR_LIST_LEN: u32 = (MAX_CSCD_DESCRIPTORS as u32) * CSCD_LEN as u32
    + (MAX_SEGMENT_DESCRIPTORS as u32) * SEGMENT_LEN as u32;
/// Bytes one segment may move (65535 blocks of 4 KiB at most).
pub const MAX_SEGMENT_BYTES: u32 = 256 << 20;
/// Completed copies whose status is kept, per LU.
const KEPT_RESULTS: usize = 64;

const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc(0x26, 0x06);
const UNSUPPORTED_TARGET_DESCRIPTOR: Asc = Asc(0x26, 0x07);
const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc(0x26, 0x08);
const UNSUPPORTED_SEGMENT_DESCRIPTOR: Asc = Asc(0x26, 0x09);
const COPY_TARGET_NOT_REACHABLE: Asc = Asc(0x0D, 0x02);
const COPY_ABORTED: u8 = 0x0A;

/// NAA designator (16 bytes) → volume, for every LU of this process.
static REGISTRY: LazyLock<Mutex<HashMap<[u8; 16], Weak<Volume>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Makes the LU with NAA identity `naa_id` reachable as a copy source or
/// destination.
pub fn register(naa_id: u64, volume: &Arc<Volume>) {
    let mut r = REGISTRY.lock();
    r.retain(|_, v| v.strong_count() > 0);
    r.insert(naa6(naa_id), Arc::downgrade(volume));
}

fn lookup(lu: &LogicalUnit, designator: &[u8]) -> Option<Arc<Volume>> {
    if designator == naa6(lu.identity().naa_id) {
        return Some(lu.volume().clone());
    }
    let key: [u8; 16] = designator.try_into().ok()?;
    REGISTRY.lock().get(&key).and_then(Weak::upgrade)
}

/// The outcome of one copy, for RECEIVE COPY RESULTS.
#[derive(Debug, Clone, Copy)]
struct CopyResult {
    nexus: NexusId,
    list_id: u8,
    good: bool,
    segments: u16,
    bytes: u64,
}

/// Per-LU copy manager state.
#[derive(Debug, Default)]
pub struct CopyManager {
    results: Mutex<VecDeque<CopyResult>>,
}

impl CopyManager {
    fn record(&self, r: CopyResult) {
        let mut q = self.results.lock();
        q.retain(|x| !(x.nexus == r.nexus && x.list_id == r.list_id));
        if q.len() >= KEPT_RESULTS {
            q.pop_front();
        }
        q.push_back(r);
    }

    fn find(&self, nexus: NexusId, list_id: u8) -> Option<CopyResult> {
        self.results
            .lock()
            .iter()
            .find(|x| x.nexus == nexus && x.list_id == list_id)
            .copied()
    }
}

fn aborted(asc: Asc) -> Sense {
    Sense::new(COPY_ABORTED, asc)
}

fn len_error() -> Sense {
    Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)
}

/// A copy source or destination named by the parameter list.
enum Cscd {
    Volume(Arc<Volume>),
    /// NUL set, or a designator no LU of ours has.
    Unreachable,
}

struct Segment {
    src: u16,
    dst: u16,
    blocks: u64,
    src_lba: u64,
    dst_lba: u64,
}

/// EXTENDED COPY (LID1): validates the whole parameter list, then runs the
/// segments in order.
pub async fn extended_copy(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    let param_len = be32(cmd.cdb, 10) as usize;
    let out = ScsiResult {
        data_out_len: Some(param_len as u32),
        ..ScsiResult::good()
    };
    if param_len == 0 {
        return Ok(out);
    }
    if param_len < 16 || cmd.data_out.len() < param_len {
        return Err(len_error());
    }
    let p = &cmd.data_out[..param_len];
    let list_id = p[0];
    let usage = (p[1] >> 3) & 0x03;
    // List ID usage 11b: no list identifier, so it must be zero.
    if usage == 3 && list_id != 0 {
        return Err(Sense::invalid_param_field(0, None));
    }
    let cscd_len = be16(p, 2) as usize;
    let seg_len = be32(p, 8) as usize;
    let inline_len = be32(p, 12) as usize;
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LEN as usize {
        return Err(len_error());
    }
    if 16 + cscd_len + seg_len + inline_len > param_len {
        return Err(len_error());
    }
    if inline_len != 0 {
        return Err(Sense::invalid_param_field(12, None));
    }
    if !cscd_len.is_multiple_of(CSCD_LEN) {
        return Err(len_error());
    }
    if cscd_len / CSCD_LEN > MAX_CSCD_DESCRIPTORS as usize {
        return Err(Sense::illegal(TOO_MANY_TARGET_DESCRIPTORS));
    }
    let segs = &p[16 + cscd_len..16 + cscd_len + seg_len];
    // Count segment descriptors by their own lengths first.
    let mut count = 0usize;
    let mut at = 0usize;
    while at + 4 <= segs.len() {
        count += 1;
        at += 4 + be16(segs, at + 2) as usize;
    }
    if at != segs.len() {
        return Err(len_error());
    }
    if count > MAX_SEGMENT_DESCRIPTORS as usize {
        return Err(Sense::illegal(TOO_MANY_SEGMENT_DESCRIPTORS));
    }

    let mut cscds = Vec::new();
    for (i, d) in p[16..16 + cscd_len].chunks(CSCD_LEN).enumerate() {
        let base = 16 + i * CSCD_LEN;
        if d[0] != 0xE4 {
            return Err(Sense::illegal(UNSUPPORTED_TARGET_DESCRIPTOR)
                .with_field(vtgt_protocol::scsi::sense::FieldPointer::param(base, None)));
        }
        // LU ID TYPE is ignored (SPC-4): the designator names the LU.
        // Block devices only.
        if d[1] & 0x1F != 0 {
            return Err(Sense::invalid_param_field(base + 1, Some(4)));
        }
        let nul = d[1] & 0x20 != 0;
        let (code_set, ty, dlen) = (d[4] & 0x0F, d[5] & 0x0F, d[7] as usize);
        let target = if nul || code_set != 1 || ty != 3 || dlen != 16 {
            Cscd::Unreachable
        } else {
            lookup(lu, &d[8..24])
                .map(Cscd::Volume)
                .unwrap_or(Cscd::Unreachable)
        };
        cscds.push(target);
    }

    let mut segments = Vec::with_capacity(count);
    let mut at = 0usize;
    while at < segs.len() {
        let d = &segs[at..];
        let dlen = be16(d, 2) as usize;
        if d[0] != 0x02 {
            return Err(Sense::illegal(UNSUPPORTED_SEGMENT_DESCRIPTOR).with_field(
                vtgt_protocol::scsi::sense::FieldPointer::param(16 + cscd_len + at, None),
            ));
        }
        if dlen != SEGMENT_LEN - 4 {
            return Err(Sense::invalid_param_field(16 + cscd_len + at + 2, None));
        }
        segments.push(Segment {
            src: be16(d, 4),
            dst: be16(d, 6),
            blocks: be16(d, 10) as u64,
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
        });
        at += 4 + dlen;
    }

    let mut done = CopyResult {
        nexus: cmd.nexus,
        list_id,
        good: false,
        segments: 0,
        bytes: 0,
    };
    let keep = usage < 2;
    let r = run_segments(lu, &cscds, &segments, &mut done).await;
    done.good = r.is_ok();
    if keep {
        lu.copy_manager().record(done);
    }
    r.map(|()| out)
}

async fn run_segments(
    lu: &LogicalUnit,
    cscds: &[Cscd],
    segments: &[Segment],
    done: &mut CopyResult,
) -> Result<(), Sense> {
    let reach = |i: u16| match cscds.get(i as usize) {
        Some(Cscd::Volume(v)) => Ok(v.clone()),
        _ => Err(aborted(COPY_TARGET_NOT_REACHABLE)),
    };
    for (n, s) in segments.iter().enumerate() {
        let src = reach(s.src)?;
        let dst = reach(s.dst)?;
        let bytes = s.blocks * dst.block_size() as u64;
        if bytes > MAX_SEGMENT_BYTES as u64 {
            return Err(aborted(Asc::NO_ADDITIONAL_SENSE).with_information(n as u64));
        }
        if Arc::ptr_eq(&dst, lu.volume()) && lu.write_protected() {
            return Err(Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED));
        }
        if src.check_range(s.src_lba, s.blocks).is_err()
            || dst.check_range(s.dst_lba, s.blocks).is_err()
            || src.block_size() != dst.block_size()
        {
            // The copy cannot be performed as described: aborted, with the
            // failing segment in INFORMATION.
            return Err(aborted(Asc::NO_ADDITIONAL_SENSE).with_information(n as u64));
        }
        copy_blocks(&src, s.src_lba, &dst, s.dst_lba, s.blocks)
            .await
            .map_err(|(_, _)| aborted(Asc::NO_ADDITIONAL_SENSE).with_information(n as u64))?;
        // Copies write without FUA; with the write cache disabled the data
        // must be durable before status.
        if !lu.write_cache_enabled() {
            dst.flush()
                .await
                .map_err(|_| aborted(Asc::NO_ADDITIONAL_SENSE).with_information(n as u64))?;
        }
        done.segments += 1;
        done.bytes += bytes;
    }
    Ok(())
}

/// RECEIVE COPY RESULTS: COPY STATUS and OPERATING PARAMETERS.
pub fn receive_copy_results(
    lu: &LogicalUnit,
    cmd: &ScsiCommand<'_>,
    sa: u16,
) -> Result<(Vec<u8>, usize), Sense> {
    let cdb = cmd.cdb;
    let alloc = be32(cdb, 10) as usize;
    match sa {
        SA_OPERATING_PARAMETERS => {
            let mut d = vec![0u8; 44];
            // SNLID: list IDs are held per nexus.
            d[4] = 0x01;
            d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
            d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
            d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LEN.to_be_bytes());
            d[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
            // No inline or held data, no streams.
            d[34..36].copy_from_slice(&1u16.to_be_bytes());
            d[36] = 1;
            // Granularities as log2: one block.
            d[37] = 9;
            d[38] = 9;
            d[39] = 9;
            let codes = [0x02u8, 0xE4];
            d[43] = codes.len() as u8;
            d.extend_from_slice(&codes);
            let n = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&n.to_be_bytes());
            Ok((d, alloc))
        }
        _ => {
            let r = lu
                .copy_manager()
                .find(cmd.nexus, cdb[2])
                .ok_or(Sense::invalid_cdb_field(2, None))?;
            let mut d = vec![0u8; 12];
            d[3] = 8;
            // Completed, with or without errors; held data discarded.
            d[4] = if r.good { 0x01 } else { 0x02 };
            d[5..7].copy_from_slice(&r.segments.to_be_bytes());
            // Transfer count in bytes.
            d[7] = 0x00;
            d[8..12].copy_from_slice(&u32::try_from(r.bytes).unwrap_or(u32::MAX).to_be_bytes());
            Ok((d, alloc))
        }
    }
}

/// The Third-party Copy VPD page body (8Fh): a Supported Commands
/// descriptor listing EXTENDED COPY (LID1) and RECEIVE COPY RESULTS.
pub fn vpd_8f() -> Vec<u8> {
    let list = [
        EXTENDED_COPY,
        1,
        SA_EXTENDED_COPY_LID1 as u8,
        RECEIVE_COPY_RESULTS,
        2,
        SA_COPY_STATUS as u8,
        SA_OPERATING_PARAMETERS as u8,
    ];
    let mut body = vec![list.len() as u8];
    body.extend_from_slice(&list);
    while !(body.len() + 4).is_multiple_of(4) {
        body.push(0);
    }
    let mut d = vec![0x00, 0x01];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend(body);
    d
}

/// Data-out bytes EXTENDED COPY asks for.
pub fn data_out_len(cdb: &[u8]) -> Option<u32> {
    (cdb.first() == Some(&EXTENDED_COPY) && cdb.len() >= 14).then(|| be32(cdb, 10))
}
