//! vtgt: a block storage target. The `vtgt` binary is in main.rs; this
//! library holds the front ends, the SCSI layer and the runtime so that
//! integration tests can start a target in-process.

pub mod admin;
pub mod bench;
pub mod config;
pub mod framing;
pub mod initiator_cli;
pub mod iscsi;
pub mod journal_files;
pub mod metrics;
pub mod nvme;
pub mod scsi;
pub mod server;
pub mod target;
