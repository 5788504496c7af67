//! iSCSI (RFC 7143): PDUs, login text keys, negotiation and CHAP.

pub mod chap;
pub mod login;
pub mod nego;
pub mod pdu;
pub mod text;
