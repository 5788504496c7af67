//! NVMe over Fabrics, TCP transport: PDUs and framing ([`tcp`]), queue
//! entries and status ([`command`]), Fabrics commands ([`fabrics`]),
//! Identify data ([`identify`]) and log pages ([`log`]).

pub mod command;
pub mod fabrics;
pub mod identify;
pub mod log;
pub mod tcp;
