//! Text requests in the full-feature phase: SendTargets (RFC 7143 §12.3,
//! appendix C) for discovery and normal sessions.

use std::net::SocketAddr;

use vtgt_protocol::iscsi::nego::NOT_UNDERSTOOD;
use vtgt_protocol::iscsi::text::TextPairs;

use super::conn::Conn;
use super::portal::IscsiShared;

/// The text answer to a request's key=value data.
pub fn answer(conn: &Conn, data: &[u8]) -> Vec<u8> {
    let pairs = match TextPairs::parse(data) {
        Ok(p) => p,
        Err(_) => return b"SendTargets=Reject\0".to_vec(),
    };
    let mut out = Vec::new();
    for (k, v) in pairs.iter() {
        if k == "SendTargets" {
            let initiator = &conn.session.initiator;
            let names: Vec<String> = match v {
                "All" if conn.session.discovery => visible(&conn.shared, initiator, None),
                "All" => visible(&conn.shared, initiator, Some(&conn.session.target)),
                "" if !conn.session.discovery => {
                    visible(&conn.shared, initiator, Some(&conn.session.target))
                }
                "" => vec![],
                name => visible(&conn.shared, initiator, Some(name)),
            };
            for n in names {
                push(&mut out, "TargetName", &n);
                for p in conn.shared.portals.iter() {
                    push(&mut out, "TargetAddress", &portal_address(p, conn.local));
                }
            }
        } else {
            push(&mut out, k, NOT_UNDERSTOOD);
        }
    }
    out
}

fn visible(shared: &IscsiShared, initiator: &str, only: Option<&str>) -> Vec<String> {
    shared
        .targets
        .load()
        .iter()
        .filter(|t| only.is_none_or(|n| n == t.name))
        .filter(|t| t.initiator_allowed(initiator))
        .map(|t| t.name.clone())
        .collect()
}

/// "address:port,tpgt"; an unspecified listen address is replaced by the
/// address the initiator reached us on.
pub fn portal_address(p: &super::PortalInfo, local: SocketAddr) -> String {
    if let Some(a) = &p.advertise {
        return format!("{a},{}", p.tpgt);
    }
    let mut addr = p.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(local.ip());
    }
    match addr {
        SocketAddr::V4(a) => format!("{}:{},{}", a.ip(), a.port(), p.tpgt),
        SocketAddr::V6(a) => format!("[{}]:{},{}", a.ip(), a.port(), p.tpgt),
    }
}

fn push(out: &mut Vec<u8>, k: &str, v: &str) {
    out.extend_from_slice(k.as_bytes());
    out.push(b'=');
    out.extend_from_slice(v.as_bytes());
    out.push(0);
}
