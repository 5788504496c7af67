//! An iSCSI initiator on `vtgt-protocol`, for tests, benchmarks and scripts.
//!
//! [`Session::login`] runs the login phase; the session then carries many
//! outstanding commands at once (tagged by ITT), answers R2Ts with Data-Out,
//! honours the target's CmdSN window and answers NOP-In pings.

pub mod iscsi;

pub use iscsi::{CommandResult, DataDir, LoginConfig, Session, SessionError};
