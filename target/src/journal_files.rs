//! A volume's write journal files across restarts and config changes.
//!
//! The files in use are recorded in `<data_dir>/<volume>.journals` before
//! any write can reach them. A later start whose config drops some of
//! them (fewer journals, another file name, journaling turned off) still
//! replays what they hold, in sequence order with the rest, and deletes
//! them only once the replayed data is durable in place: changing the
//! journal settings cannot lose an acknowledged write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use vtgt_engine::wjournal::WriteJournal;
use vtgt_engine::{write_atomically, Backend, FileBackend, MemBackend, Volume};

use crate::config::{
    journal_path, journal_stem, BackendKind, Config, JournalConfig, VolumeConfig, MAX_JOURNALS,
};

fn manifest_path(cfg: &Config, volume: &str) -> PathBuf {
    cfg.data_dir.join(format!("{volume}.journals"))
}

/// The journal files the manifest lists; none when it does not exist.
fn read_manifest(path: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let list: Vec<PathBuf> = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a journal list", path.display()))?;
            Ok(list)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_manifest(path: &Path, files: &[PathBuf]) -> Result<()> {
    let text = serde_json::to_string_pretty(files)?;
    write_atomically(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Opens (creating if missing) the configured journals: files beside the
/// data, or memory for memory volumes.
fn open_configured(
    cfg: &Config,
    v: &VolumeConfig,
    j: &JournalConfig,
) -> Result<Vec<Arc<WriteJournal>>> {
    let size = j
        .check(v.block_size)
        .map_err(|e| anyhow!("volume {:?}: journal: {e}", v.name))?;
    j.paths(&cfg.data_dir, &v.name)
        .into_iter()
        .map(|p| {
            let store: Arc<dyn Backend> = match v.backend {
                BackendKind::Memory => Arc::new(MemBackend::new(size)?),
                _ => Arc::new(FileBackend::open_or_create(&p, size)?),
            };
            Ok(Arc::new(WriteJournal::open(store)?))
        })
        .map(|r: std::io::Result<_>| r.with_context(|| format!("volume {:?}: journal", v.name)))
        .collect()
}

/// Journal files this volume may have written before and the config no
/// longer names: those the manifest lists, and (for data dirs from before
/// manifests) numbered files of the configured or default name. Only files
/// that hold a journal are taken; anything else is left alone.
fn retired(
    cfg: &Config,
    v: &VolumeConfig,
    configured: &[PathBuf],
    listed: Vec<PathBuf>,
) -> Result<Vec<(PathBuf, Arc<WriteJournal>)>> {
    let mut candidates = listed;
    let file = v.journal.as_ref().and_then(|j| j.file.as_deref());
    for stem in [
        journal_stem(file, &cfg.data_dir, &v.name),
        journal_stem(None, &cfg.data_dir, &v.name),
    ] {
        candidates.extend((0..MAX_JOURNALS).map(|i| journal_path(&stem, i)));
    }
    // Another volume's journals, in use or awaiting replay, are not ours
    // whatever their names.
    let mut theirs: Vec<PathBuf> = Vec::new();
    for o in cfg.volumes.iter().filter(|o| o.name != v.name) {
        if let Some(j) = &o.journal {
            theirs.extend(j.paths(&cfg.data_dir, &o.name));
        }
        theirs.extend(read_manifest(&manifest_path(cfg, &o.name)).unwrap_or_default());
    }
    let mut out: Vec<(PathBuf, Arc<WriteJournal>)> = Vec::new();
    for p in candidates {
        if configured.contains(&p)
            || theirs.contains(&p)
            || out.iter().any(|(q, _)| *q == p)
            || !p.is_file()
        {
            continue;
        }
        let store = FileBackend::open_existing(&p)
            .with_context(|| format!("volume {:?}: journal {}", v.name, p.display()))?;
        if let Some(j) = WriteJournal::open_existing(Arc::new(store))
            .with_context(|| format!("volume {:?}: journal {}", v.name, p.display()))?
        {
            out.push((p, Arc::new(j)));
        }
    }
    Ok(out)
}

/// Replays what a crash left in the volume's journals — the configured
/// ones and any its config dropped — and attaches the configured ones.
/// Returns the entries replayed.
pub async fn open(cfg: &Config, v: &VolumeConfig, volume: &Arc<Volume>) -> Result<usize> {
    let replay =
        |e| anyhow::Error::new(e).context(format!("volume {:?}: write journal replay", v.name));
    if v.backend == BackendKind::Memory {
        // Memory journals start empty, like the volume.
        let Some(j) = &v.journal else { return Ok(0) };
        let journals = open_configured(cfg, v, j)?;
        return volume.open_write_journals(journals).await.map_err(replay);
    }
    let manifest = manifest_path(cfg, &v.name);
    let configured: Vec<PathBuf> = v
        .journal
        .as_ref()
        .map(|j| j.paths(&cfg.data_dir, &v.name))
        .unwrap_or_default();
    let old = retired(cfg, v, &configured, read_manifest(&manifest)?)?;
    if configured.is_empty() && old.is_empty() {
        if manifest.exists() {
            std::fs::remove_file(&manifest)
                .with_context(|| format!("removing {}", manifest.display()))?;
        }
        return Ok(0);
    }
    // Every file that may hold entries is listed before any is written.
    let mut listed = configured.clone();
    listed.extend(old.iter().map(|(p, _)| p.clone()));
    write_manifest(&manifest, &listed)?;
    let journals = match &v.journal {
        Some(j) => open_configured(cfg, v, j)?,
        None => Vec::new(),
    };
    let retired_journals = old.iter().map(|(_, j)| j.clone()).collect();
    let n = volume
        .open_write_journals_retiring(journals, retired_journals)
        .await
        .map_err(replay)?;
    // Replayed, durable in place and emptied: the dropped files can go.
    for (p, _) in &old {
        match std::fs::remove_file(p) {
            Ok(()) => {
                tracing::info!(volume = %v.name, file = %p.display(), "write journal no longer configured: replayed and removed")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    if configured.is_empty() {
        std::fs::remove_file(&manifest)
            .with_context(|| format!("removing {}", manifest.display()))?;
    } else if !old.is_empty() {
        write_manifest(&manifest, &configured)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Volume "j" with `journal` (TOML, may be empty), and volume "other"
    /// whose journals are named from `other_stem`.
    fn config(dir: &Path, journal: &str, other_stem: &str) -> Config {
        let text = format!(
            r#"
data_dir = "{}"
[[volume]]
name = "j"
backend = "file"
path = "j.img"
size = "1MiB"
{journal}
[[volume]]
name = "other"
backend = "file"
path = "other.img"
size = "1MiB"
[volume.journal]
file = "{other_stem}"
size = "256KiB"
count = 2
"#,
            dir.display()
        );
        let cfg = Config::parse(&text, "test").expect("test config");
        cfg.validate().expect("valid test config");
        cfg
    }

    fn data(cfg: &Config) -> Arc<Volume> {
        let p = cfg.data_dir.join("j.img");
        let b = FileBackend::open_or_create(&p, 1 << 20).expect("data file");
        Volume::simple("j", Arc::new(b), 512)
    }

    /// A journal file at `p` holding one write of `fill` at `lba`, never
    /// applied in place (the crash came first).
    fn journal_with_entry(p: &Path, lba: u64, fill: u8, seq: u64) {
        let store = FileBackend::open_or_create(p, 256 << 10).expect("journal file");
        let j = WriteJournal::open(Arc::new(store)).expect("journal");
        let seq = AtomicU64::new(seq);
        j.append(lba, &[fill; 512], 512, true, &seq)
            .expect("append");
    }

    async fn block(v: &Arc<Volume>, lba: u64) -> u8 {
        let d = v.read(lba, 1).await.expect("read");
        assert!(d.iter().all(|&b| b == d[0]), "block {lba} is uniform");
        d[0]
    }

    #[tokio::test]
    async fn fewer_journals_replay_the_dropped_ones_then_delete_them() {
        let dir = tempfile::tempdir().unwrap();
        let four = "[volume.journal]\nsize = \"256KiB\"\ncount = 4";
        let cfg = config(dir.path(), four, "o.journal");
        let v = &cfg.volumes[0];
        let vol = data(&cfg);
        assert_eq!(open(&cfg, v, &vol).await.unwrap(), 0);
        let listed = read_manifest(&manifest_path(&cfg, "j")).unwrap();
        assert_eq!(listed.len(), 4);
        drop(vol);
        // What a crash left: the newest version of LBA 5 in journal 3,
        // an older one in journal 0.
        journal_with_entry(&listed[0], 5, 0x11, 10);
        journal_with_entry(&listed[3], 5, 0x33, 20);
        // A file that only looks like one of j's journals is not touched.
        let stranger = dir.path().join("j.journal.7");
        std::fs::write(&stranger, vec![0xee; 64 << 10]).unwrap();

        let two = "[volume.journal]\nsize = \"256KiB\"\ncount = 2";
        let cfg = config(dir.path(), two, "o.journal");
        let v = &cfg.volumes[0];
        let vol = data(&cfg);
        assert_eq!(open(&cfg, v, &vol).await.unwrap(), 2);
        assert_eq!(
            block(&vol, 5).await,
            0x33,
            "the dropped journal's newer entry wins"
        );
        assert!(!listed[3].exists() && !listed[2].exists());
        assert!(listed[0].exists() && listed[1].exists());
        assert_eq!(
            read_manifest(&manifest_path(&cfg, "j")).unwrap(),
            listed[..2].to_vec()
        );
        assert_eq!(std::fs::read(&stranger).unwrap(), vec![0xee; 64 << 10]);
    }

    #[tokio::test]
    async fn journaling_turned_off_still_replays_then_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let on = "[volume.journal]\nfile = \"jj\"\nsize = \"256KiB\"\ncount = 2";
        let cfg = config(dir.path(), on, "o.journal");
        let vol = data(&cfg);
        open(&cfg, &cfg.volumes[0], &vol).await.unwrap();
        drop(vol);
        let listed = read_manifest(&manifest_path(&cfg, "j")).unwrap();
        journal_with_entry(&listed[1], 9, 0x5a, 3);
        // Now the other volume's journals have j's default names, but they
        // are not j's.
        let cfg = config(dir.path(), "", "j.journal");
        let theirs = cfg.volumes[1]
            .journal
            .as_ref()
            .unwrap()
            .paths(&cfg.data_dir, "other");
        for p in &theirs {
            journal_with_entry(p, 1, 0x77, 1);
        }

        assert!(cfg.volumes[0].journal.is_none());
        let vol = data(&cfg);
        assert_eq!(open(&cfg, &cfg.volumes[0], &vol).await.unwrap(), 1);
        assert_eq!(block(&vol, 9).await, 0x5a);
        assert!(listed.iter().all(|p| !p.exists()));
        assert!(!manifest_path(&cfg, "j").exists());
        for p in &theirs {
            let j = WriteJournal::open(Arc::new(FileBackend::open_existing(p).unwrap())).unwrap();
            assert_eq!(j.replay().unwrap().len(), 1, "{} untouched", p.display());
        }
        // Nothing left to do the next time.
        assert_eq!(open(&cfg, &cfg.volumes[0], &vol).await.unwrap(), 0);
    }
}
