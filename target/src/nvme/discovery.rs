//! The well-known discovery subsystem: its log page lists one entry per
//! subsystem the host may connect to and per NVMe/TCP port.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use vtgt_protocol::nvme::log::{disc, encode_discovery, DiscoveryEntry};

use super::controller::Controller;
use super::{NvmeShared, PortInfo, QUEUE_ENTRIES};

/// (traddr, trsvcid, adrfam) a host should use for `port`: the advertised
/// address if any, else the bound one, with an unspecified address
/// replaced by the one this host reached us on.
pub fn port_address(p: &PortInfo, local: SocketAddr) -> (String, String, u8) {
    let fam = |ip: &std::net::IpAddr| {
        if ip.is_ipv4() {
            disc::ADRFAM_IPV4
        } else {
            disc::ADRFAM_IPV6
        }
    };
    if let Some(a) = &p.advertise {
        if let Ok(sa) = a.parse::<SocketAddr>() {
            return (sa.ip().to_string(), sa.port().to_string(), fam(&sa.ip()));
        }
        if let Ok(ip) = a.parse::<std::net::IpAddr>() {
            return (ip.to_string(), p.listen.port().to_string(), fam(&ip));
        }
        // A host name: keep it as given, port from the listener.
        let (h, port) = match a.rsplit_once(':') {
            Some((h, pt)) if pt.parse::<u16>().is_ok() => (h.to_string(), pt.to_string()),
            _ => (a.clone(), p.listen.port().to_string()),
        };
        return (h, port, disc::ADRFAM_IPV4);
    }
    let ip = if p.listen.ip().is_unspecified() {
        local.ip()
    } else {
        p.listen.ip()
    };
    (ip.to_string(), p.listen.port().to_string(), fam(&ip))
}

pub fn log_page(shared: &NvmeShared, ctrl: &Controller, local: SocketAddr) -> Vec<u8> {
    let mut entries = Vec::new();
    for s in shared.subsystems.load().iter().filter(|s| !s.discovery) {
        if !s.host_allowed(&ctrl.hostnqn) {
            continue;
        }
        for p in &shared.ports {
            let (traddr, trsvcid, adrfam) = port_address(p, local);
            entries.push(DiscoveryEntry {
                trtype: disc::TRTYPE_TCP,
                adrfam,
                subtype: disc::SUBTYPE_NVME,
                treq: disc::TREQ_NOT_REQUIRED | disc::TREQ_DISABLE_SQFLOW,
                portid: p.portid,
                cntlid: 0xffff,
                asqsz: QUEUE_ENTRIES,
                trsvcid,
                subnqn: s.nqn.clone(),
                traddr,
            });
        }
    }
    encode_discovery(shared.genctr.load(Ordering::Acquire), &entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(listen: &str, advertise: Option<&str>) -> PortInfo {
        PortInfo {
            listen: listen.parse().unwrap(),
            advertise: advertise.map(str::to_string),
            portid: 1,
        }
    }

    #[test]
    fn addresses_hosts_are_given() {
        let local: SocketAddr = "192.0.2.7:4420".parse().unwrap();
        let v4 = disc::ADRFAM_IPV4;
        assert_eq!(
            port_address(&port("0.0.0.0:4420", None), local),
            ("192.0.2.7".into(), "4420".into(), v4)
        );
        assert_eq!(
            port_address(&port("127.0.0.1:4421", None), local),
            ("127.0.0.1".into(), "4421".into(), v4)
        );
        assert_eq!(
            port_address(&port("0.0.0.0:4420", Some("10.0.2.100:5000")), local),
            ("10.0.2.100".into(), "5000".into(), v4)
        );
        assert_eq!(
            port_address(&port("0.0.0.0:4420", Some("10.0.2.100")), local),
            ("10.0.2.100".into(), "4420".into(), v4)
        );
        assert_eq!(
            port_address(&port("[::]:4420", Some("[2001:db8::1]:4420")), local),
            ("2001:db8::1".into(), "4420".into(), disc::ADRFAM_IPV6)
        );
        assert_eq!(
            port_address(&port("0.0.0.0:4420", Some("storage.example:4430")), local),
            ("storage.example".into(), "4430".into(), v4)
        );
    }
}
