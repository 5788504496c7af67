//! The NVMe/TCP part of the TOML config: `[nvme] listen = [...]` and
//! `[[subsystem]]` tables with their namespaces.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use vtgt_protocol::nvme::fabrics::DISCOVERY_NQN;

pub const DEFAULT_SUBSYSTEM: &str = "nqn.2026-11.org.vtgt:default";
pub const DEFAULT_NVME_LISTEN: &str = "0.0.0.0:4420";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct NvmeConfig {
    /// NVMe/TCP ports: "addr:port" or { listen = "...", advertise = "..." }.
    /// Empty means NVMe/TCP is off.
    #[serde(default)]
    pub listen: Vec<NvmePortalConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum NvmePortalConfig {
    Addr(SocketAddr),
    Full(NvmePortalFull),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NvmePortalFull {
    pub listen: SocketAddr,
    /// Address given to hosts in the discovery log when it differs from the
    /// one they connect to (NAT, port forwarding). "host" or "host:port".
    #[serde(default)]
    pub advertise: Option<String>,
}

impl NvmePortalConfig {
    pub fn listen(&self) -> SocketAddr {
        match self {
            Self::Addr(a) => *a,
            Self::Full(f) => f.listen,
        }
    }
    pub fn advertise(&self) -> Option<&str> {
        match self {
            Self::Addr(_) => None,
            Self::Full(f) => f.advertise.as_deref(),
        }
    }
    pub fn set_listen(&mut self, a: SocketAddr) {
        match self {
            Self::Addr(x) => *x = a,
            Self::Full(f) => f.listen = a,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    pub nqn: String,
    /// Any host NQN may connect.
    #[serde(default)]
    pub allow_any_host: bool,
    /// Host NQNs allowed to connect when `allow_any_host` is false.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<NamespaceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub nsid: u32,
    pub volume: String,
}

/// Highest NSID we accept in a config.
pub const MAX_NSID: u32 = 1024;

pub fn default_listen() -> Vec<NvmePortalConfig> {
    vec![NvmePortalConfig::Addr(
        DEFAULT_NVME_LISTEN.parse().expect("constant address"),
    )]
}

pub fn default_subsystem(volume: &str) -> SubsystemConfig {
    SubsystemConfig {
        nqn: DEFAULT_SUBSYSTEM.into(),
        allow_any_host: true,
        allowed_hosts: vec![],
        namespaces: vec![NamespaceConfig {
            nsid: 1,
            volume: volume.into(),
        }],
    }
}

pub fn valid_nqn(n: &str) -> bool {
    n.starts_with("nqn.") && n.len() <= 223 && n.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Checks subsystems against the volume names.
pub fn validate(
    nvme: &NvmeConfig,
    subsystems: &[SubsystemConfig],
    volumes: &HashSet<&str>,
) -> Result<(), String> {
    // Subsystems without a listen address are allowed (NVMe/TCP off, as a
    // test or a staged config may want); the server warns at start.
    let mut addrs = HashSet::new();
    for p in &nvme.listen {
        if !addrs.insert(p.listen()) {
            return Err(format!("nvme.listen: {} is listed twice", p.listen()));
        }
    }
    let mut nqns = HashSet::new();
    for s in subsystems {
        if !valid_nqn(&s.nqn) || s.nqn == DISCOVERY_NQN {
            return Err(format!("subsystem {:?}: not a valid nqn. name", s.nqn));
        }
        if !nqns.insert(s.nqn.as_str()) {
            return Err(format!("subsystem {:?}: duplicate", s.nqn));
        }
        if !s.allow_any_host && s.allowed_hosts.is_empty() {
            return Err(format!(
                "subsystem {:?}: no host may connect; set allow_any_host = true or list allowed_hosts",
                s.nqn
            ));
        }
        let mut ids = HashSet::new();
        for n in &s.namespaces {
            if n.nsid == 0 || n.nsid > MAX_NSID || !ids.insert(n.nsid) {
                return Err(format!(
                    "subsystem {:?}: namespace {} is 0, above {MAX_NSID}, or duplicate",
                    s.nqn, n.nsid
                ));
            }
            if !volumes.contains(n.volume.as_str()) {
                return Err(format!(
                    "subsystem {:?} namespace {}: unknown volume {:?}",
                    s.nqn, n.nsid, n.volume
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::server::{apply_overrides, Overrides};

    const BASE: &str = r#"
[[volume]]
name = "a"
backend = "memory"
size = "1MiB"
"#;

    #[test]
    fn portals_take_both_forms() {
        let c = Config::parse(
            &format!(
                "{BASE}[nvme]\nlisten = [\"127.0.0.1:4420\", {{ listen = \"127.0.0.1:4421\", advertise = \"10.0.2.100:4421\" }}]\n\
                 [[subsystem]]\nnqn = \"nqn.2026-11.org.vtgt:a\"\nallow_any_host = true\n\
                 [[subsystem.namespace]]\nnsid = 1\nvolume = \"a\"\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(c.nvme.listen.len(), 2);
        assert_eq!(c.nvme.listen[1].advertise(), Some("10.0.2.100:4421"));
        assert_eq!(c.nvme.listen[0].listen().port(), 4420);
        assert_eq!(c.subsystems[0].namespaces[0].nsid, 1);
    }

    #[test]
    fn bad_subsystems_are_named() {
        let sub = |body: &str| {
            Config::parse(
                &format!("{BASE}[nvme]\nlisten = [\"127.0.0.1:4420\"]\n[[subsystem]]\n{body}"),
                "t",
            )
            .unwrap_err()
            .to_string()
        };
        assert!(sub("nqn = \"iqn.x\"\nallow_any_host = true\n").contains("not a valid nqn"));
        assert!(
            sub("nqn = \"nqn.2014-08.org.nvmexpress.discovery\"\nallow_any_host = true\n")
                .contains("not a valid nqn")
        );
        assert!(sub("nqn = \"nqn.x:y\"\n").contains("no host may connect"));
        assert!(sub(
            "nqn = \"nqn.x:y\"\nallow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\nvolume = \"zz\"\n"
        )
        .contains("unknown volume"));
        assert!(sub(
            "nqn = \"nqn.x:y\"\nallow_any_host = true\n[[subsystem.namespace]]\nnsid = 0\nvolume = \"a\"\n"
        )
        .contains("namespace 0"));
        let e = Config::parse(
            &format!("{BASE}[nvme]\nlisten = [\"127.0.0.1:4420\", \"127.0.0.1:4420\"]\n"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listed twice"), "{e}");
        // No listen address: NVMe/TCP is simply off.
        Config::parse(
            &format!("{BASE}[[subsystem]]\nnqn = \"nqn.x:y\"\nallow_any_host = true\n"),
            "t",
        )
        .unwrap();
    }

    #[test]
    fn nvme_listen_override_moves_the_default() {
        let mut c = Config::embedded_default();
        assert_eq!(c.subsystems[0].nqn, super::DEFAULT_SUBSYSTEM);
        assert_eq!(c.nvme.listen[0].listen().port(), 4420);
        apply_overrides(
            &mut c,
            &Overrides {
                nvme_listen: Some("127.0.0.1:14420".parse().unwrap()),
                ..Default::default()
            },
        );
        assert_eq!(c.nvme.listen.len(), 1);
        assert_eq!(
            c.nvme.listen[0].listen(),
            "127.0.0.1:14420".parse().unwrap()
        );
        c.validate().unwrap();
    }
}
