//! Sans-I/O wire formats and state machines for vtgt.
//!
//! Nothing here touches a socket or a runtime: every type turns bytes into
//! values and values into bytes, so the target and our initiator share it and
//! tests can drive it deterministically.

pub mod digest;
pub mod iscsi;
pub mod nvme;
pub mod scsi;
