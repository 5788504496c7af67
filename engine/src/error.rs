use std::io;

/// Errors the engine reports to the front ends, which map them to SCSI sense
/// or NVMe status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("LBA range {lba}+{blocks} beyond capacity {capacity}")]
    OutOfRange {
        lba: u64,
        blocks: u64,
        capacity: u64,
    },
    #[error("backend I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("data length {got} does not match {expected}")]
    BadLength { got: usize, expected: usize },
    #[error("no mapping for LBA {0}")]
    Unmapped(u64),
}
