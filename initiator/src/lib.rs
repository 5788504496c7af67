//! iSCSI and NVMe/TCP initiators on `vtgt-protocol`, for tests, benchmarks
//! and scripts. The NVMe/TCP host is in [`nvme`].
//!
//! [`Session::login`] runs the login phase; the session then carries many
//! outstanding commands at once (tagged by ITT), answers R2Ts with Data-Out,
//! honours the target's CmdSN window and answers NOP-In pings.

pub mod iscsi;
pub mod nvme;

pub use iscsi::{CommandResult, DataDir, LoginConfig, Session, SessionError};
