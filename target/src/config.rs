//! The TOML configuration: portals, volumes and their backends, targets with
//! LUNs, initiator ACLs and CHAP credentials. `vtgt serve` with no config
//! uses [`Config::embedded_default`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::nvme::config::{NamespaceConfig, NvmeConfig, NvmePortalConfig, SubsystemConfig};

pub const DEFAULT_TARGET: &str = "iqn.2026-11.org.vtgt:default";
pub const DEFAULT_ISCSI_LISTEN: &str = "0.0.0.0:3260";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where relative backend paths live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub iscsi: IscsiConfig,
    #[serde(default, rename = "volume")]
    pub volumes: Vec<VolumeConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    /// NVMe/TCP ports; off when `listen` is empty.
    #[serde(default)]
    pub nvme: NvmeConfig,
    #[serde(default, rename = "subsystem")]
    pub subsystems: Vec<SubsystemConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IscsiConfig {
    #[serde(default = "default_portals")]
    pub portals: Vec<PortalConfig>,
    /// Seconds of silence before the target pings a connection with NOP-In;
    /// a connection that misses two pings in a row is dropped. 0 disables.
    #[serde(default = "default_nop_interval")]
    pub nop_interval_secs: u64,
    /// CHAP for discovery sessions; absent means none.
    #[serde(default)]
    pub discovery_chap: Option<ChapConfig>,
}

impl Default for IscsiConfig {
    fn default() -> Self {
        Self {
            portals: default_portals(),
            nop_interval_secs: default_nop_interval(),
            discovery_chap: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    pub listen: SocketAddr,
    /// Address given to initiators in SendTargets when it differs from the
    /// one they connect to (NAT, port forwarding). "host:port".
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default = "default_tpgt")]
    pub portal_group: u16,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    File,
    Block,
    Memory,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    pub backend: BackendKind,
    /// File or device path; relative paths are under `data_dir`. Not used
    /// for memory volumes.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Size such as "1GiB" or "512MiB"; required for file and memory.
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// A composition of several backends (stripe, mirror, concat, nested);
    /// replaces `path`. Absent: the volume is the one backend at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<LayoutConfig>,
    /// Write journaling: every write is also appended to a journal first,
    /// and replayed from it after a crash. Absent: not journaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalConfig>,
}

/// `[volume.journal]`: `count` journals of `size` bytes each, files
/// `FILE.0` .. `FILE.<count-1>` (relative to `data_dir`). One takes the
/// writes; when it fills, an empty one is swapped in and the full one is
/// emptied once the data it covers is durable in place.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// File name stem; default `<volume>.journal`. A label for memory
    /// volumes, whose journals are in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Size of each journal, such as "64MiB" (at least 256 KiB).
    pub size: String,
    /// How many journals: one active and the rest spares (2 to 64).
    #[serde(default = "default_journal_count")]
    pub count: u32,
}

/// Smallest journal: a write longer than a quarter of it takes several
/// entries, so this bounds the entry count of the longest host write.
pub const MIN_JOURNAL_BYTES: u64 = 256 << 10;
/// Largest journal: bounds how long replay at open can take.
pub const MAX_JOURNAL_BYTES: u64 = 1 << 30;

impl JournalConfig {
    pub fn check(&self, block_size: u32) -> Result<u64, String> {
        let bytes = parse_size(&self.size)?;
        if !(MIN_JOURNAL_BYTES..=MAX_JOURNAL_BYTES).contains(&bytes)
            || bytes % block_size as u64 != 0
        {
            return Err(format!(
                "size {:?}: from 256KiB to 1GiB, a multiple of the block size",
                self.size
            ));
        }
        if !(2..=MAX_JOURNALS).contains(&self.count) {
            return Err(format!(
                "count {}: between 2 and 64 (one active journal and spares)",
                self.count
            ));
        }
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err("file: empty name".into());
        }
        Ok(bytes)
    }

    /// The journal files of volume `volume`, under `data_dir`.
    pub fn paths(&self, data_dir: &Path, volume: &str) -> Vec<PathBuf> {
        let stem = journal_stem(self.file.as_deref(), data_dir, volume);
        (0..self.count).map(|i| journal_path(&stem, i)).collect()
    }
}

/// Where a volume's journal files are named from: `file`, else
/// `<volume>.journal`, relative to `data_dir` unless absolute.
pub fn journal_stem(file: Option<&Path>, data_dir: &Path, volume: &str) -> PathBuf {
    let stem = file.map_or_else(
        || PathBuf::from(format!("{volume}.journal")),
        Path::to_path_buf,
    );
    if stem.is_absolute() {
        stem
    } else {
        data_dir.join(stem)
    }
}

/// Journal `i` of `stem`: `<stem>.<i>`.
pub fn journal_path(stem: &Path, i: u32) -> PathBuf {
    let mut p = stem.as_os_str().to_owned();
    p.push(format!(".{i}"));
    PathBuf::from(p)
}

/// Most journals a volume may have.
pub const MAX_JOURNALS: u32 = 64;

/// One node of a volume layout: exactly one of `file`, `stripe`, `mirror`,
/// `concat`. Leaves are backends of the volume's kind; their size is the
/// leaf's `size`, else the volume's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LayoutConfig {
    /// A backend file or device (relative to `data_dir`); a label for
    /// memory volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// RAID0 over these, in units of `unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<Vec<LayoutConfig>>,
    /// Stripe unit such as "64KiB" (a multiple of the block size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// RAID1: every child holds the same data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Vec<LayoutConfig>>,
    /// Children laid end to end; top level only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat: Option<Vec<LayoutConfig>>,
    /// Tagged mirror writes (crash-consistent legs, one small tag table
    /// file per leg, a synchronous write per leg per host write). Top level
    /// only; on by default for file and block mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<bool>,
}

impl LayoutConfig {
    /// Checks the shape; `top` is true for the volume's root node.
    pub fn check(&self, block_size: u32, top: bool) -> Result<(), String> {
        let kinds = [
            self.file.is_some(),
            self.stripe.is_some(),
            self.mirror.is_some(),
            self.concat.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err("a layout node needs exactly one of file, stripe, mirror, concat".into());
        }
        if let Some(s) = &self.size {
            let b = parse_size(s)?;
            if b < block_size as u64 || b % block_size as u64 != 0 {
                return Err(format!(
                    "layout size {s:?}: not a multiple of the block size"
                ));
            }
        }
        if self.tags.is_some() && !top {
            return Err("tags is a volume-wide setting: put it at the top of the layout".into());
        }
        if self.unit.is_some() && self.stripe.is_none() {
            return Err("unit is only for stripes".into());
        }
        if let Some(legs) = &self.stripe {
            if legs.len() < 2 {
                return Err("a stripe needs at least two legs".into());
            }
            let unit = parse_size(self.unit.as_deref().ok_or("a stripe needs a unit")?)?;
            if unit < block_size as u64 || unit % block_size as u64 != 0 {
                return Err("stripe unit must be a multiple of the block size".into());
            }
        }
        if self.mirror.as_ref().is_some_and(|m| m.is_empty()) {
            return Err("a mirror needs legs".into());
        }
        if let Some(parts) = &self.concat {
            if !top {
                return Err("concat is only allowed at the top of a layout".into());
            }
            if parts.is_empty() {
                return Err("a concat needs parts".into());
            }
        }
        for c in self
            .stripe
            .iter()
            .chain(self.mirror.iter())
            .chain(self.concat.iter())
            .flatten()
        {
            c.check(block_size, false)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunConfig>,
    /// Initiator names allowed to log in; empty means any.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// CHAP required for every initiator of this target.
    #[serde(default)]
    pub chap: Option<ChapConfig>,
    /// Per-initiator CHAP credentials, taking precedence over `chap`.
    #[serde(default, rename = "initiator_chap")]
    pub initiator_chap: Vec<InitiatorChapConfig>,
    /// ALUA access state of target port groups (`iscsi.portals`'
    /// `portal_group`); groups not listed are active/optimized.
    #[serde(default, rename = "port_group", skip_serializing_if = "Vec::is_empty")]
    pub port_groups: Vec<PortGroupConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortGroupConfig {
    pub id: u16,
    /// "active-optimized", "active-non-optimized" or "standby".
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    pub id: u64,
    pub volume: String,
    /// Start the LU software write protected (SWP in the Control mode
    /// page): writes fail with DATA PROTECT / WRITE PROTECTED and MODE
    /// SENSE reports WP. An initiator may clear it with MODE SELECT.
    #[serde(default)]
    pub write_protect: bool,
    /// A removable medium (INQUIRY RMB = 1): START STOP UNIT with LOEJ
    /// ejects and loads it, PREVENT ALLOW MEDIUM REMOVAL locks it in.
    #[serde(default)]
    pub removable: bool,
    /// Bandwidth cap of SANITIZE OVERWRITE in MiB/s, so an overwrite does
    /// not starve the backend's other volumes; 0 means no cap.
    #[serde(default)]
    pub sanitize_rate_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    /// The name and secret the initiator must present.
    pub user: String,
    pub secret: String,
    /// For mutual CHAP: the name and secret the target presents.
    #[serde(default)]
    pub mutual_user: Option<String>,
    #[serde(default)]
    pub mutual_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InitiatorChapConfig {
    pub initiator: String,
    #[serde(flatten)]
    pub chap: ChapConfig,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("vtgt-data")
}
fn default_portals() -> Vec<PortalConfig> {
    vec![PortalConfig {
        listen: DEFAULT_ISCSI_LISTEN.parse().expect("constant address"),
        advertise: None,
        portal_group: 1,
    }]
}
fn default_nop_interval() -> u64 {
    30
}
fn default_tpgt() -> u16 {
    1
}
fn default_block_size() -> u32 {
    512
}
fn default_journal_count() -> u32 {
    2
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {msg}")]
    Parse {
        path: String,
        line: usize,
        col: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
}

impl Config {
    /// One 1 GiB sparse-file volume exported as LUN 0 of the default target
    /// and as namespace 1 of the default NVMe subsystem.
    pub fn embedded_default() -> Self {
        Config {
            data_dir: default_data_dir(),
            iscsi: IscsiConfig::default(),
            volumes: vec![VolumeConfig {
                name: "default".into(),
                backend: BackendKind::File,
                path: Some(PathBuf::from("default.img")),
                size: Some("1GiB".into()),
                block_size: 512,
                layout: None,
                journal: None,
            }],
            targets: vec![TargetConfig {
                name: DEFAULT_TARGET.into(),
                alias: Some("vtgt default".into()),
                luns: vec![LunConfig {
                    id: 0,
                    volume: "default".into(),
                    write_protect: false,
                    removable: false,
                    sanitize_rate_mib: 0,
                }],
                allowed_initiators: vec![],
                chap: None,
                initiator_chap: vec![],
                port_groups: vec![],
            }],
            nvme: NvmeConfig {
                listen: crate::nvme::config::default_listen(),
            },
            subsystems: vec![crate::nvme::config::default_subsystem("default")],
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError::Parse {
                path: origin.to_string(),
                line,
                col,
                msg: e.message().to_string(),
            }
        })?;
        cfg.validate().map_err(|msg| ConfigError::Invalid {
            path: origin.to_string(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Cross-references and value checks that TOML typing cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.iscsi.portals.is_empty() {
            return Err("iscsi.portals: at least one portal is needed".into());
        }
        let mut names = HashSet::new();
        let mut journal_files = HashSet::new();
        for v in &self.volumes {
            if v.name.is_empty() || !names.insert(v.name.as_str()) {
                return Err(format!("volume {:?}: empty or duplicate name", v.name));
            }
            if !matches!(v.block_size, 512 | 4096) {
                return Err(format!(
                    "volume {:?}: block_size must be 512 or 4096",
                    v.name
                ));
            }
            if let Some(j) = &v.journal {
                j.check(v.block_size)
                    .map_err(|e| format!("volume {:?}: journal: {e}", v.name))?;
                // Two volumes on one journal would replay each other's writes.
                for p in j.paths(&self.data_dir, &v.name) {
                    if !journal_files.insert(p.clone()) {
                        return Err(format!(
                            "volume {:?}: journal file {} is another volume's",
                            v.name,
                            p.display()
                        ));
                    }
                }
            }
            if let Some(l) = &v.layout {
                l.check(v.block_size, true)
                    .map_err(|e| format!("volume {:?}: layout: {e}", v.name))?;
                if v.path.is_some() {
                    return Err(format!(
                        "volume {:?}: path and layout are exclusive",
                        v.name
                    ));
                }
                continue;
            }
            match v.backend {
                BackendKind::File | BackendKind::Memory => {
                    let size = v
                        .size
                        .as_deref()
                        .ok_or_else(|| format!("volume {:?}: size is required", v.name))?;
                    let bytes =
                        parse_size(size).map_err(|e| format!("volume {:?}: size: {e}", v.name))?;
                    if bytes < v.block_size as u64 || bytes % v.block_size as u64 != 0 {
                        return Err(format!(
                            "volume {:?}: size must be a non-zero multiple of the block size",
                            v.name
                        ));
                    }
                }
                BackendKind::Block => {}
            }
            if v.backend != BackendKind::Memory && v.path.is_none() {
                return Err(format!("volume {:?}: path is required", v.name));
            }
        }
        let mut tnames = HashSet::new();
        for t in &self.targets {
            if !valid_iscsi_name(&t.name) {
                return Err(format!(
                    "target {:?}: not a valid iqn./eui./naa. name",
                    t.name
                ));
            }
            if !tnames.insert(t.name.as_str()) {
                return Err(format!("target {:?}: duplicate", t.name));
            }
            let mut luns = HashSet::new();
            for l in &t.luns {
                if l.id >= 16384 {
                    return Err(format!("target {:?}: LUN {} above 16383", t.name, l.id));
                }
                if !luns.insert(l.id) {
                    return Err(format!("target {:?}: duplicate LUN {}", t.name, l.id));
                }
                if !names.contains(l.volume.as_str()) {
                    return Err(format!(
                        "target {:?} LUN {}: unknown volume {:?}",
                        t.name, l.id, l.volume
                    ));
                }
            }
            let mut groups = HashSet::new();
            for g in &t.port_groups {
                if crate::scsi::alua::AccessState::parse(&g.state).is_none() {
                    return Err(format!(
                        "target {:?} port_group {}: state must be active-optimized, \
                         active-non-optimized or standby",
                        t.name, g.id
                    ));
                }
                if !groups.insert(g.id) {
                    return Err(format!(
                        "target {:?}: duplicate port_group {}",
                        t.name, g.id
                    ));
                }
            }
            for c in t
                .chap
                .iter()
                .chain(t.initiator_chap.iter().map(|c| &c.chap))
            {
                check_chap(c).map_err(|e| format!("target {:?}: {e}", t.name))?;
            }
        }
        if let Some(c) = &self.iscsi.discovery_chap {
            check_chap(c).map_err(|e| format!("iscsi.discovery_chap: {e}"))?;
        }
        crate::nvme::config::validate(&self.nvme, &self.subsystems, &names)?;
        Ok(())
    }

    pub fn volume_path(&self, v: &VolumeConfig) -> Option<PathBuf> {
        v.path.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                self.data_dir.join(p)
            }
        })
    }
}

fn check_chap(c: &ChapConfig) -> Result<(), String> {
    if c.user.is_empty() || c.secret.len() < 12 || c.secret.len() > 255 {
        return Err("CHAP needs a user and a secret of 12 to 255 bytes".into());
    }
    match (&c.mutual_user, &c.mutual_secret) {
        (None, None) => Ok(()),
        (Some(u), Some(s)) if !u.is_empty() && (12..=255).contains(&s.len()) => {
            if *s == c.secret {
                return Err("mutual CHAP secret must differ from the initiator's".into());
            }
            Ok(())
        }
        _ => Err("mutual CHAP needs mutual_user and a mutual_secret of 12 to 255 bytes".into()),
    }
}

pub fn valid_iscsi_name(n: &str) -> bool {
    let lower = n.to_ascii_lowercase();
    (lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa."))
        && n.len() <= 223
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
}

/// Parses "1073741824", "1GiB", "512MiB", "4k", "2G" (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::embedded_default().validate().unwrap();
    }

    #[test]
    fn lun_removable_and_sanitize_rate_options() {
        let text = "[[volume]]\nname = \"v\"\nbackend = \"memory\"\nsize = \"1MiB\"\n\
                    [[target]]\nname = \"iqn.2026-11.x:y\"\n\
                    [[target.lun]]\nid = 0\nvolume = \"v\"\n\
                    [[target.lun]]\nid = 1\nvolume = \"v\"\nremovable = true\n\
                    sanitize_rate_mib = 4\n";
        let c = Config::parse(text, "rm.toml").unwrap();
        assert!(!c.targets[0].luns[0].removable);
        assert_eq!(c.targets[0].luns[0].sanitize_rate_mib, 0);
        assert!(c.targets[0].luns[1].removable);
        assert_eq!(c.targets[0].luns[1].sanitize_rate_mib, 4);
    }

    #[test]
    fn lun_write_protect_option() {
        let text = "[[volume]]\nname = \"v\"\nbackend = \"memory\"\nsize = \"1MiB\"\n\
                    [[target]]\nname = \"iqn.2026-11.x:y\"\n\
                    [[target.lun]]\nid = 0\nvolume = \"v\"\n\
                    [[target.lun]]\nid = 1\nvolume = \"v\"\nwrite_protect = true\n";
        let c = Config::parse(text, "wp.toml").unwrap();
        assert!(!c.targets[0].luns[0].write_protect);
        assert!(c.targets[0].luns[1].write_protect);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    #[test]
    fn errors_name_line_and_problem() {
        let e = Config::parse("data_dir = 5\n", "x.toml").unwrap_err();
        assert!(e.to_string().starts_with("x.toml:1:"), "{e}");
        let e = Config::parse(
            "[[target]]\nname = \"iqn.2026-11.x:y\"\n[[target.lun]]\nid = 0\nvolume = \"nope\"\n",
            "y.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown volume"), "{e}");
        let e = Config::parse("bogus = 1\n", "z.toml").unwrap_err();
        assert!(e.to_string().contains("z.toml:1:1"), "{e}");
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
data_dir = "/tmp/x"
[iscsi]
nop_interval_secs = 5
[[iscsi.portals]]
listen = "127.0.0.1:3260"
advertise = "10.0.2.100:3260"
[[volume]]
name = "a"
backend = "memory"
size = "64MiB"
[[target]]
name = "iqn.2026-11.org.vtgt:a"
allowed_initiators = ["iqn.1993-08.org.debian:01:host"]
chap = { user = "u", secret = "0123456789abc" }
[[target.lun]]
id = 0
volume = "a"
[[target.initiator_chap]]
initiator = "iqn.1993-08.org.debian:01:host"
user = "h"
secret = "abcdefghijklm"
mutual_user = "t"
mutual_secret = "mnopqrstuvwxyz"
"#;
        let c = Config::parse(text, "ex").unwrap();
        assert_eq!(c.targets[0].initiator_chap[0].chap.user, "h");
        assert!(c.targets[0].port_groups.is_empty());
        assert_eq!(
            c.iscsi.portals[0].advertise.as_deref(),
            Some("10.0.2.100:3260")
        );
    }
}

#[cfg(test)]
mod port_group_tests {
    use super::*;

    const BASE: &str = "[[iscsi.portals]]\nlisten = \"127.0.0.1:3260\"\n\
        [[iscsi.portals]]\nlisten = \"127.0.0.2:3260\"\nportal_group = 2\n\
        [[target]]\nname = \"iqn.2026-11.org.vtgt:a\"\n";

    #[test]
    fn port_groups_parse_and_validate() {
        let ok = format!(
            "{BASE}[[target.port_group]]\nid = 1\nstate = \"active-optimized\"\n\
             [[target.port_group]]\nid = 2\nstate = \"standby\"\n"
        );
        let c = Config::parse(&ok, "pg").unwrap();
        assert_eq!(c.targets[0].port_groups.len(), 2);
        assert_eq!(c.targets[0].port_groups[1].state, "standby");
        let bad = format!("{BASE}[[target.port_group]]\nid = 1\nstate = \"offline\"\n");
        let e = Config::parse(&bad, "pg").unwrap_err();
        assert!(e.to_string().contains("state must be"), "{e}");
        let dup = format!(
            "{BASE}[[target.port_group]]\nid = 1\nstate = \"standby\"\n\
             [[target.port_group]]\nid = 1\nstate = \"standby\"\n"
        );
        assert!(Config::parse(&dup, "pg").is_err());
        // Omitted: every group active/optimized.
        assert!(Config::parse(BASE, "pg").unwrap().targets[0]
            .port_groups
            .is_empty());
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;

    fn parse(journal: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!(
                "data_dir = \"/d\"\n[[volume]]\nname = \"v\"\nbackend = \"file\"\n\
                 path = \"v.img\"\nsize = \"16MiB\"\n[volume.journal]\n{journal}\n"
            ),
            "j.toml",
        )
    }

    #[test]
    fn journal_table_parses_with_defaults_and_names_files() {
        let c = parse("size = \"4MiB\"").unwrap();
        let j = c.volumes[0].journal.as_ref().unwrap();
        assert_eq!((j.count, j.check(512).unwrap()), (2, 4 << 20));
        assert_eq!(
            j.paths(&c.data_dir, "v"),
            vec![
                PathBuf::from("/d/v.journal.0"),
                PathBuf::from("/d/v.journal.1")
            ]
        );
        let c = parse("size = \"1MiB\"\ncount = 3\nfile = \"wal/x\"").unwrap();
        let j = c.volumes[0].journal.as_ref().unwrap();
        assert_eq!(j.paths(&c.data_dir, "v")[2], PathBuf::from("/d/wal/x.2"));
    }

    #[test]
    fn bad_journals_are_refused_with_a_reason() {
        for (cfg, want) in [
            ("size = \"64KiB\"", "from 256KiB to 1GiB"),
            ("size = \"2GiB\"", "from 256KiB to 1GiB"),
            ("size = \"4MiB\"\ncount = 1", "between 2 and 64"),
            ("size = \"4 parsecs\"", "unknown size unit"),
            ("size = \"4MiB\"\nfile = \"\"", "empty name"),
        ] {
            let e = parse(cfg).unwrap_err().to_string();
            assert!(e.contains("journal") && e.contains(want), "{cfg}: {e}");
        }
        let e = parse("count = 2").unwrap_err().to_string();
        assert!(e.contains("j.toml:") && e.contains("size"), "{e}");
        let two = "data_dir = \"/d\"\n\
            [[volume]]\nname = \"a\"\nbackend = \"file\"\npath = \"a.img\"\nsize = \"16MiB\"\n\
            [volume.journal]\nfile = \"shared\"\nsize = \"4MiB\"\n\
            [[volume]]\nname = \"b\"\nbackend = \"file\"\npath = \"b.img\"\nsize = \"16MiB\"\n\
            [volume.journal]\nfile = \"shared\"\nsize = \"4MiB\"\n";
        let e = Config::parse(two, "j.toml").unwrap_err().to_string();
        assert!(e.contains("another volume's"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn every_example_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3, "examples missing");
        let d = Config::load(&dir.join("default.toml")).unwrap();
        assert_eq!(d, Config::embedded_default());
    }

    #[test]
    fn layouts_parse_and_are_checked() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let c = Config::load(&dir.join("raid10.toml")).unwrap();
        let l = c.volumes[0].layout.as_ref().unwrap();
        let legs = l.stripe.as_ref().unwrap();
        assert_eq!(legs.len(), 2);
        assert_eq!(legs[1].mirror.as_ref().unwrap().len(), 2);
        assert_eq!(l.unit.as_deref(), Some("128KiB"));
        let bad = |layout: &str| {
            let text = format!(
                "[[volume]]\nname = \"v\"\nbackend = \"memory\"\nsize = \"1MiB\"\n[volume.layout]\n{layout}\n"
            );
            let c: Config = toml::from_str(&text).unwrap();
            c.validate().err()
        };
        assert!(bad("mirror = [{ file = \"a\" }, { file = \"b\" }]").is_none());
        assert!(
            bad("stripe = [{ file = \"a\" }, { file = \"b\" }]").is_some(),
            "no unit"
        );
        assert!(bad("unit = \"1000\"\nstripe = [{ file = \"a\" }, { file = \"b\" }]").is_some());
        assert!(bad("mirror = [{ concat = [{ file = \"a\" }] }]").is_some());
        assert!(bad("file = \"a\"\nmirror = [{ file = \"b\" }]").is_some());
    }
}
