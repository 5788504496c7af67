//! SANITIZE (SBC-4 5.30, 4.11): OVERWRITE, BLOCK ERASE, CRYPTOGRAPHIC
//! ERASE and EXIT FAILURE MODE.
//!
//! A sanitize runs as a task of its own, detached from the command that
//! started it: task management functions, resets and the loss of the
//! issuing nexus do not stop it. While it runs every command except
//! INQUIRY, REPORT LUNS and REQUEST SENSE ends with NOT READY / LOGICAL
//! UNIT NOT READY, SANITIZE IN PROGRESS and a progress indication; REQUEST
//! SENSE reports the same. One that fails leaves the LU in sanitize failure
//! mode: media commands end with MEDIUM ERROR / SANITIZE COMMAND FAILED
//! until a sanitize succeeds or, if the failed one had AUSE set, EXIT
//! FAILURE MODE.
//!
//! Our volumes are thin and read deallocated blocks as zeros, so BLOCK
//! ERASE deallocates every block; CRYPTOGRAPHIC ERASE, with no media key to
//! change, does the same. Either way the blocks read back (as zeros) right
//! after the sanitize: WABEREQ and WACEREQ are 01b in the Block Device
//! Characteristics VPD page.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use vtgt_engine::Volume;
use vtgt_protocol::scsi::sense::{key, Asc, Sense};

use super::lu::LogicalUnit;
use super::{ScsiCommand, ScsiResult};

/// SANITIZE operation code.
pub const SANITIZE: u8 = 0x48;
pub const SA_OVERWRITE: u16 = 0x01;
pub const SA_BLOCK_ERASE: u16 = 0x02;
pub const SA_CRYPTO_ERASE: u16 = 0x03;
pub const SA_EXIT_FAILURE_MODE: u16 = 0x1F;

/// Blocks one step of an overwrite or erase covers; progress is updated,
/// and the rate cap applied, per step.
const STEP_BYTES: u64 = 1 << 20;

/// The sanitize state of one LU.
#[derive(Debug, Default)]
pub struct SanitizeState {
    running: AtomicBool,
    /// Sanitize failure mode.
    failed: AtomicBool,
    /// The AUSE bit of the sanitize that failed.
    failed_ause: AtomicBool,
    /// Progress of the running sanitize, in 65536ths.
    progress: AtomicU32,
}

impl SanitizeState {
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Whether media commands are refused (running or failed).
    pub fn blocks_media(&self) -> bool {
        self.running() || self.failed()
    }

    pub fn progress(&self) -> u16 {
        self.progress.load(Ordering::Acquire).min(0xFFFF) as u16
    }

    /// NOT READY / SANITIZE IN PROGRESS with the progress indication.
    pub fn in_progress(&self) -> Sense {
        Sense::new(key::NOT_READY, Asc::SANITIZE_IN_PROGRESS).with_progress(self.progress())
    }

    fn set_progress(&self, done: u64, total: u64) {
        let p = (done.min(total) * 0xFFFF).checked_div(total).unwrap_or(0) as u32;
        self.progress.store(p, Ordering::Release);
    }

    /// Claims the LU for a sanitize; false if one is running already.
    fn start(&self) -> bool {
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.progress.store(0, Ordering::Release);
        true
    }

    fn finish(&self, ok: bool, ause: bool) {
        self.failed_ause.store(ause, Ordering::Release);
        self.failed.store(!ok, Ordering::Release);
        self.running.store(false, Ordering::Release);
    }
}

/// MEDIUM ERROR / SANITIZE COMMAND FAILED.
pub fn failed_sense() -> Sense {
    Sense::new(key::MEDIUM_ERROR, Asc::SANITIZE_COMMAND_FAILED)
}

/// The PARAMETER LIST LENGTH of a SANITIZE CDB, for residual accounting.
pub fn data_out_len(cdb: &[u8]) -> Option<u32> {
    (cdb.first() == Some(&SANITIZE) && cdb.len() >= 10)
        .then(|| u16::from_be_bytes([cdb[7], cdb[8]]) as u32)
}

/// What a sanitize does to the medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `passes` passes writing `pattern` repeated in every block, inverted
    /// on every other pass when `invert`.
    Overwrite {
        passes: u8,
        invert: bool,
        pattern: Vec<u8>,
    },
    /// Deallocates every block (block and cryptographic erase).
    Erase,
}

/// Parses the OVERWRITE parameter list (SBC-4 5.30.3). libiscsi expects
/// every inconsistency in it (no pass, an initialization pattern that is
/// empty, longer than a block or not what the parameter list length
/// implies) to be reported as INVALID FIELD IN CDB, at the parameter list
/// length; TEST values other than 00b are refused in the parameter list.
pub fn parse_overwrite(block_size: u32, param_len: u16, data: &[u8]) -> Result<Operation, Sense> {
    let bs = block_size as usize;
    let len = param_len as usize;
    let bad_len = Sense::invalid_cdb_field(7, None);
    if len < 5 || len > bs + 4 {
        return Err(bad_len);
    }
    if data.len() < len {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let invert = data[0] & 0x80 != 0;
    let test = (data[0] >> 5) & 0x03;
    let passes = data[0] & 0x1F;
    let ipl = u16::from_be_bytes([data[2], data[3]]) as usize;
    if ipl == 0 || ipl > bs || ipl + 4 != len || passes == 0 {
        return Err(bad_len);
    }
    if test != 0 {
        return Err(Sense::invalid_param_field(0, Some(6)));
    }
    Ok(Operation::Overwrite {
        passes,
        invert,
        pattern: data[4..4 + ipl].to_vec(),
    })
}

/// One block of `pattern`, repeated from the start of the block.
pub fn pattern_block(pattern: &[u8], block_size: usize, invert: bool) -> Vec<u8> {
    (0..block_size)
        .map(|i| {
            let b = pattern[i % pattern.len()];
            if invert {
                !b
            } else {
                b
            }
        })
        .collect()
}

/// SANITIZE. Validates the CDB and parameter list, then runs the operation
/// in the background; with IMMED clear, waits for it.
pub async fn sanitize(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<ScsiResult, Sense> {
    let cdb = cmd.cdb;
    let immed = cdb[1] & 0x80 != 0;
    let ause = cdb[1] & 0x20 != 0;
    let sa = (cdb[1] & 0x1F) as u16;
    let param_len = u16::from_be_bytes([cdb[7], cdb[8]]);
    let state = lu.sanitize_state().clone();
    let op = match sa {
        SA_OVERWRITE => parse_overwrite(lu.volume().block_size(), param_len, &cmd.data_out)?,
        SA_BLOCK_ERASE | SA_CRYPTO_ERASE | SA_EXIT_FAILURE_MODE => {
            if param_len != 0 {
                return Err(Sense::invalid_cdb_field(7, None));
            }
            if sa == SA_EXIT_FAILURE_MODE {
                // Leaving failure mode is only for a sanitize that failed
                // with AUSE set; outside failure mode there is nothing to
                // leave.
                if state.failed() {
                    if !state.failed_ause.load(Ordering::Acquire) {
                        return Err(Sense::invalid_cdb_field(1, Some(4)));
                    }
                    state.failed.store(false, Ordering::Release);
                }
                return Ok(ScsiResult::good());
            }
            Operation::Erase
        }
        _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
    };
    if lu.write_protected() {
        return Err(Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    }
    if !state.start() {
        return Err(state.in_progress());
    }
    let vol = lu.volume().clone();
    let rate = lu.sanitize_rate();
    let st = state.clone();
    let task = tokio::spawn(async move {
        let ok = run(&vol, &st, &op, rate).await;
        st.finish(ok, ause);
        ok
    });
    if immed {
        return Ok(ScsiResult::good());
    }
    match task.await {
        Ok(true) => Ok(ScsiResult::good()),
        _ => Err(failed_sense()),
    }
}

/// Performs `op` on the whole volume; false on a backend error.
pub async fn run(vol: &Arc<Volume>, state: &SanitizeState, op: &Operation, rate: u64) -> bool {
    let bs = vol.block_size() as u64;
    let nblocks = vol.num_blocks();
    let step = (STEP_BYTES / bs).max(1);
    let begin = tokio::time::Instant::now();
    let mut bytes_done = 0u64;
    match op {
        Operation::Overwrite {
            passes,
            invert,
            pattern,
        } => {
            let total = *passes as u64 * nblocks;
            let mut done = 0u64;
            for pass in 0..*passes {
                let block = pattern_block(pattern, bs as usize, *invert && pass % 2 == 1);
                let mut chunk = BytesMut::with_capacity((step * bs) as usize);
                for _ in 0..step.min(nblocks) {
                    chunk.extend_from_slice(&block);
                }
                let chunk: Bytes = chunk.freeze();
                let mut lba = 0;
                while lba < nblocks {
                    let n = step.min(nblocks - lba);
                    let data = chunk.slice(..(n * bs) as usize);
                    if vol.write(lba, data, false).await.is_err() {
                        return false;
                    }
                    lba += n;
                    done += n;
                    bytes_done += n * bs;
                    state.set_progress(done, total);
                    throttle(begin, bytes_done, rate).await;
                }
            }
        }
        Operation::Erase => {
            let erase_step = step * 64;
            let mut lba = 0;
            while lba < nblocks {
                let n = erase_step.min(nblocks - lba);
                if vol.discard(lba, n).await.is_err() {
                    return false;
                }
                lba += n;
                state.set_progress(lba, nblocks);
            }
        }
    }
    vol.flush().await.is_ok()
}

/// Sleeps until `bytes` at `rate` bytes per second would have taken.
async fn throttle(begin: tokio::time::Instant, bytes: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = begin + Duration::from_secs_f64(bytes as f64 / rate as f64);
    tokio::time::sleep_until(due).await;
}
