//! iSCSI initiator on vtgt-protocol.
