//! Crash tests through iSCSI: the real vtgt binary serves a journaled
//! two-leg mirror (with tags), a RAID10 volume and a journaled plain volume;
//! our initiator writes checksummed blocks to all three at once, vtgt is
//! killed with SIGKILL at a random moment, restarted on the same data, and
//! then, through iSCSI: every acknowledged write is there (or a newer one
//! that was in flight), no block is torn or stale, the mirror legs are
//! byte-identical, and reconciliation copied only the ranges of the tag
//! entries it found.
//!
//! A write counts as acknowledged when it completed with FUA, or, for a
//! write without FUA, once a later SYNCHRONIZE CACHE completed.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cdb10, Vtgt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use vtgt_initiator::{DataDir, LoginConfig, Session};
use vtgt_protocol::digest::crc32c;

const TARGET: &str = "iqn.2026-11.org.vtgt:crash";
const HOST: &str = "iqn.2026-11.test:crash-host";
const BS: usize = 512;
/// Blocks of each LU under load (2 MiB: two mirror regions, both RAID10
/// mirrors), owned in chunks of `CHUNK` blocks by one writer each.
const SPAN: u64 = 4096;
const CHUNK: u64 = 8;
const WRITERS: u64 = 4;
const ROUNDS: usize = 8;
/// Mirror leg files that must hold the same bytes, in pairs.
type LegPairs = &'static [(&'static str, &'static str)];
/// (LUN, volume, its mirror leg files).
const LUNS: [(u64, &str, LegPairs); 3] = [
    (0, "mirror", &[("m-a.img", "m-b.img")]),
    (
        1,
        "raid10",
        &[("r-a0.img", "r-a1.img"), ("r-b0.img", "r-b1.img")],
    ),
    (2, "plain", &[]),
];

fn config(dir: &Path) -> PathBuf {
    let cfg = dir.join("vtgt.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"data_dir = "{}"
[[iscsi.portals]]
listen = "127.0.0.1:0"

[[volume]]
name = "mirror"
backend = "file"
size = "8MiB"
[volume.layout]
mirror = [{{ file = "m-a.img" }}, {{ file = "m-b.img" }}]
[volume.journal]
size = "256KiB"
count = 2

[[volume]]
name = "raid10"
backend = "file"
size = "4MiB"
[volume.layout]
unit = "64KiB"
stripe = [
  {{ mirror = [{{ file = "r-a0.img" }}, {{ file = "r-a1.img" }}] }},
  {{ mirror = [{{ file = "r-b0.img" }}, {{ file = "r-b1.img" }}] }},
]

[[volume]]
name = "plain"
backend = "file"
path = "p.img"
size = "8MiB"
[volume.journal]
size = "256KiB"
count = 3

[[target]]
name = "{TARGET}"
[[target.lun]]
id = 0
volume = "mirror"
[[target.lun]]
id = 1
volume = "raid10"
[[target.lun]]
id = 2
volume = "plain"
"#,
            dir.join("data").display()
        ),
    )
    .expect("write config");
    cfg
}

/// Starts vtgt on `cfg`; returns once its portal and admin socket are up.
fn start(cfg: &Path) -> (Vtgt, SocketAddr) {
    let path = cfg.to_str().expect("config path");
    let (child, addr) = common::start(&["--config", path]);
    let v = Vtgt(child);
    let sock = cfg.parent().expect("config dir").join("data/vtgt.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "no admin socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    (v, addr)
}

fn admin(dir: &Path, req: Value) -> Value {
    let mut s =
        std::os::unix::net::UnixStream::connect(dir.join("data/vtgt.sock")).expect("admin socket");
    writeln!(s, "{req}").expect("admin request");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("admin reply");
    let v: Value = serde_json::from_str(&line).expect("admin JSON");
    assert_eq!(v["ok"], true, "{v}");
    v["result"].clone()
}

/// A block that says where it belongs and which write put it there.
fn block(lun: u64, lba: u64, seq: u64) -> [u8; BS] {
    let mut b = [0u8; BS];
    b[0..8].copy_from_slice(&lba.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&lun.to_le_bytes());
    for (i, x) in b[24..BS - 4].iter_mut().enumerate() {
        *x = (seq.wrapping_mul(131) ^ lba.wrapping_mul(7)).wrapping_add(i as u64) as u8;
    }
    let c = crc32c(&b[..BS - 4]);
    b[BS - 4..].copy_from_slice(&c.to_le_bytes());
    b
}

/// The sequence number a block read back carries: 0 for a block never
/// written; an error for a torn, misplaced or corrupt one.
fn seq_of(lun: u64, lba: u64, b: &[u8]) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let crc = u32::from_le_bytes(b[BS - 4..].try_into().unwrap_or([0; 4]));
    if crc != crc32c(&b[..BS - 4]) {
        return Err(format!(
            "LUN {lun} LBA {lba}: bad checksum (torn or garbage)"
        ));
    }
    if word(0) != lba || word(16) != lun {
        return Err(format!(
            "LUN {lun} LBA {lba}: holds LUN {} LBA {}",
            word(16),
            word(0)
        ));
    }
    let seq = word(8);
    if b != &block(lun, lba, seq)[..] {
        return Err(format!(
            "LUN {lun} LBA {lba}: payload differs from seq {seq}"
        ));
    }
    Ok(seq)
}

/// What each block of an LU may hold: the last acknowledged write, or one
/// still unacknowledged when the crash came.
#[derive(Clone, Default)]
struct Expect {
    acked: u64,
    maybe: BTreeSet<u64>,
}

struct Lu {
    lun: u64,
    blocks: Mutex<Vec<Expect>>,
}

/// The LUN field for LUN `lun` (peripheral device addressing).
fn lun_field(lun: u64) -> u64 {
    lun << 48
}

/// Deterministic pseudo-random numbers from a seed the test prints.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

async fn login(addr: SocketAddr) -> Arc<Session> {
    let s = Session::login(addr, LoginConfig::new(HOST, Some(TARGET)))
        .await
        .expect("login");
    // Clear each LU's power-on unit attention.
    for (lun, _, _) in LUNS {
        common::settle(&s, lun_field(lun)).await;
    }
    Arc::new(s)
}

/// One writer: its own chunks of one LU, one write at a time, until the
/// session dies. Returns the writes acknowledged and an error if vtgt
/// answered anything but GOOD while alive.
async fn writer(
    s: Arc<Session>,
    lu: Arc<Lu>,
    w: u64,
    seq: Arc<AtomicU64>,
    seed: u64,
) -> (u64, Option<String>) {
    let mut rng = Lcg(seed);
    let mut acked = 0;
    let timeout = Duration::from_secs(10);
    loop {
        let chunk = rng.below(SPAN / CHUNK / WRITERS) * WRITERS + w;
        let off = rng.below(CHUNK);
        let n = 1 + rng.below(CHUNK - off);
        let lba = chunk * CHUNK + off;
        let fua = rng.below(4) != 0;
        let sq = seq.fetch_add(1, Ordering::SeqCst);
        let mut data = Vec::with_capacity(n as usize * BS);
        for b in lba..lba + n {
            data.extend_from_slice(&block(lu.lun, b, sq));
        }
        {
            let mut bl = lu.blocks.lock();
            for b in lba..lba + n {
                bl[b as usize].maybe.insert(sq);
            }
        }
        let cdb = cdb10(0x2a, if fua { 0x08 } else { 0 }, lba as u32, n as u16);
        let r = tokio::time::timeout(
            timeout,
            s.command(
                lun_field(lu.lun),
                &cdb,
                DataDir::Write,
                data.len() as u32,
                Bytes::from(data),
            ),
        )
        .await;
        match r {
            Ok(Ok(r)) if r.status == 0 => {}
            Ok(Ok(r)) => {
                return (
                    acked,
                    Some(format!("write status {} {:?}", r.status, r.sense_key())),
                )
            }
            // The crash.
            _ => return (acked, None),
        }
        if !fua {
            let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            let r = tokio::time::timeout(
                timeout,
                s.command(lun_field(lu.lun), &sync, DataDir::None, 0, Bytes::new()),
            )
            .await;
            match r {
                Ok(Ok(r)) if r.status == 0 => {}
                Ok(Ok(r)) => return (acked, Some(format!("sync status {}", r.status))),
                _ => return (acked, None),
            }
        }
        let mut bl = lu.blocks.lock();
        for b in lba..lba + n {
            let e = &mut bl[b as usize];
            e.acked = sq;
            e.maybe.clear();
        }
        acked += 1;
    }
}

/// Reads the LU back and checks every block against what may be there;
/// then records what is there as acknowledged (it is durable now).
async fn verify(s: &Session, lu: &Lu) -> Result<(), String> {
    const STEP: u64 = 128;
    let mut bl = lu.blocks.lock().clone();
    for at in (0..SPAN).step_by(STEP as usize) {
        let cdb = cdb10(0x28, 0, at as u32, STEP as u16);
        let r = s
            .command(
                lun_field(lu.lun),
                &cdb,
                DataDir::Read,
                (STEP as usize * BS) as u32,
                Bytes::new(),
            )
            .await
            .map_err(|e| format!("read: {e}"))?;
        if r.status != 0 || r.data.len() != STEP as usize * BS {
            return Err(format!("LUN {} read at {at}: status {}", lu.lun, r.status));
        }
        for i in 0..STEP {
            let lba = at + i;
            let b = &r.data[(i as usize) * BS..(i as usize + 1) * BS];
            let got = seq_of(lu.lun, lba, b)?;
            let e = &mut bl[lba as usize];
            if got != e.acked && !e.maybe.contains(&got) {
                return Err(format!(
                    "LUN {} LBA {lba}: holds write {got}, acknowledged {} (in flight: {:?})",
                    lu.lun, e.acked, e.maybe
                ));
            }
            e.acked = got;
            e.maybe.clear();
        }
    }
    *lu.blocks.lock() = bl;
    Ok(())
}

fn legs_identical(dir: &Path, pairs: &[(&str, &str)]) {
    for (a, b) in pairs {
        let x = std::fs::read(dir.join("data").join(a)).expect("leg file");
        let y = std::fs::read(dir.join("data").join(b)).expect("leg file");
        assert_eq!(x.len(), y.len());
        if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
            panic!("legs {a} and {b} differ at byte {i}");
        }
    }
}

#[test]
fn kill_9_under_write_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("crash test seed {seed}");
    let mut rng = Lcg(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let lus: Vec<Arc<Lu>> = LUNS
        .iter()
        .map(|(lun, _, _)| {
            Arc::new(Lu {
                lun: *lun,
                blocks: Mutex::new(vec![Expect::default(); SPAN as usize]),
            })
        })
        .collect();
    let seq = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let (mut acked_total, mut tag_ranges, mut copied_total, mut replayed_total) = (0, 0, 0, 0);
    let mut journal_full = 0;
    let (mut v, mut addr) = start(&cfg);
    for round in 0..ROUNDS {
        // Load, then SIGKILL at a random moment.
        let load_ms = 200 + rng.below(900);
        let acked = rt.block_on(async {
            let s = login(addr).await;
            let mut tasks = Vec::new();
            for lu in &lus {
                for w in 0..WRITERS {
                    tasks.push(tokio::spawn(writer(
                        s.clone(),
                        lu.clone(),
                        w,
                        seq.clone(),
                        seed ^ (round as u64 * 1000 + lu.lun * 10 + w),
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(load_ms)).await;
            // Faults counted before the crash (status resets on restart).
            let st = admin(dir.path(), json!({"op": "status"}));
            for vol in st["volumes"].as_array().into_iter().flatten() {
                journal_full += vol["faults"]["journal_full"].as_u64().unwrap_or(0);
            }
            // SAFETY: SIGKILL to our own child, not yet reaped.
            assert_eq!(unsafe { libc::kill(v.0.id() as i32, libc::SIGKILL) }, 0);
            let mut acked = 0;
            for t in tasks {
                let (n, err) = t.await.expect("writer task");
                assert!(err.is_none(), "round {round}: {err:?}");
                acked += n;
            }
            acked
        });
        let _ = v.0.wait();
        assert!(
            acked > 0,
            "round {round}: nothing acknowledged in {load_ms} ms"
        );
        acked_total += acked;

        // Restart on the same data and check everything through iSCSI.
        (v, addr) = start(&cfg);
        rt.block_on(async {
            let s = login(addr).await;
            for lu in &lus {
                if let Err(e) = verify(&s, lu).await {
                    panic!("round {round} (seed {seed}): {e}");
                }
            }
        });
        for (_, name, pairs) in LUNS {
            let l = admin(dir.path(), json!({"op": "layout", "volume": name}));
            let rec = &l["reconciled_at_open"];
            let num = |k: &str| rec[k].as_u64().unwrap_or(u64::MAX);
            let (matched, unmatched, copied) =
                (num("matched"), num("unmatched"), num("copied_bytes"));
            // Only the ranges of the entries found are copied: each is one
            // write (at most a chunk) to the other leg of its pair.
            let entries = matched.saturating_add(unmatched);
            assert!(copied <= entries * CHUNK * BS as u64, "{name}: {rec}");
            assert_eq!(copied % BS as u64, 0, "{name}: {rec}");
            if pairs.is_empty() {
                assert_eq!((entries, copied), (0, 0), "{name}: {rec}");
            }
            tag_ranges += entries;
            copied_total += copied;
            // Idle and reconciled: the legs hold the same bytes.
            legs_identical(dir.path(), pairs);
        }
        let st = admin(dir.path(), json!({"op": "status"}));
        for vol in st["volumes"].as_array().into_iter().flatten() {
            if !vol["journal"].is_null() {
                replayed_total += vol["journal"]["replayed_at_open"].as_u64().unwrap_or(0);
            }
        }
        eprintln!(
            "round {round}: killed after {load_ms} ms, {acked} writes acknowledged; \
             so far {tag_ranges} unretired tag ranges reconciled ({copied_total} bytes), \
             {replayed_total} journal entries replayed"
        );
    }
    // A clean stop leaves the legs identical too.
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(v.0.id() as i32, libc::SIGTERM) };
    let st = v.0.wait().expect("wait");
    assert!(st.success(), "exit status {st:?}");
    for (_, _, pairs) in LUNS {
        legs_identical(dir.path(), pairs);
    }
    assert!(replayed_total > 0, "no journal entry was ever replayed");
    // 256 KiB journals under this load fill many times a round.
    assert!(journal_full > 0, "the journals never filled");
    eprintln!(
        "{ROUNDS} rounds in {:?}: {acked_total} writes acknowledged, {journal_full} journal-full faults, \
         {tag_ranges} tag ranges reconciled ({copied_total} bytes copied), {replayed_total} entries replayed",
        started.elapsed()
    );
}

/// A two-leg mirror of `MIB` MiB (1 MiB regions), no journal.
fn resync_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("resync.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"data_dir = "{}"
[[iscsi.portals]]
listen = "127.0.0.1:0"
[[volume]]
name = "big"
backend = "file"
size = "{MIB}MiB"
[volume.layout]
mirror = [{{ file = "big-a.img" }}, {{ file = "big-b.img" }}]
[[target]]
name = "{TARGET}"
[[target.lun]]
id = 0
volume = "big"
"#,
            dir.join("data").display()
        ),
    )
    .expect("write config");
    cfg
}

const MIB: u64 = 192;
const REGION_BYTES: u64 = 1 << 20;

/// Writes one block in every region through iSCSI, then flushes.
async fn touch_every_region(s: &Session, seq: u64) {
    for r in 0..MIB {
        let lba = r * REGION_BYTES / BS as u64 + seq % 64;
        let cdb = cdb10(0x2a, 0, lba as u32, 1);
        let d = Bytes::copy_from_slice(&block(0, lba, seq));
        let res = s
            .command(lun_field(0), &cdb, DataDir::Write, BS as u32, d)
            .await
            .expect("write");
        assert_eq!(res.status, 0);
    }
    let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let res = s
        .command(lun_field(0), &sync, DataDir::None, 0, Bytes::new())
        .await
        .expect("sync");
    assert_eq!(res.status, 0);
}

/// The mirror state file's resync list for leg 1: None when leg 1 is not
/// in resync.
fn resync_left(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("data/big.mirror")).ok()?;
    text.contains("leg 1 resync ")
        .then(|| text.lines().filter(|l| l.starts_with("todo 1 ")).count())
}

#[test]
fn kill_9_during_resync_resumes_it_on_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = resync_config(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Killing mid-resync after some progress was saved is a matter of
    // timing: try a few delays.
    let mut left = None;
    let mut written = BTreeSet::new();
    for (attempt, delay_ms) in [40u64, 80, 120, 180, 250].into_iter().enumerate() {
        let (mut v, addr) = start(&cfg);
        written.extend([attempt as u64 * 2 + 1, attempt as u64 * 2 + 2]);
        rt.block_on(async {
            let s = login(addr).await;
            touch_every_region(&s, attempt as u64 * 2 + 1).await;
            admin(
                dir.path(),
                json!({"op": "fail_leg", "volume": "big", "leg": 1}),
            );
            // Every region now differs from leg 1.
            touch_every_region(&s, attempt as u64 * 2 + 2).await;
            admin(
                dir.path(),
                json!({"op": "attach_leg", "volume": "big", "leg": 1}),
            );
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        });
        // SAFETY: SIGKILL to our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(v.0.id() as i32, libc::SIGKILL) }, 0);
        let _ = v.0.wait();
        match resync_left(dir.path()) {
            Some(n) if n > 0 && n < MIB as usize => {
                left = Some(n);
                break;
            }
            // Killed before any progress was saved, or after the end:
            // bring the legs back in sync and try again later.
            other => {
                eprintln!("attempt {attempt}: {delay_ms} ms, resync list {other:?}; again");
                let (v, _) = start(&cfg);
                let l = admin(dir.path(), json!({"op": "layout", "volume": "big"}));
                if l["legs"][1]["state"] == "dead" {
                    admin(
                        dir.path(),
                        json!({"op": "attach_leg", "volume": "big", "leg": 1}),
                    );
                }
                wait_legs_up(dir.path());
                drop(v);
            }
        }
    }
    let left = left.expect("never killed in the middle of a resync");
    // Restart: leg 1 is still resyncing (not dead) and the resync resumes
    // by itself, copying only the regions still on its list.
    let (mut v, addr) = start(&cfg);
    let l = wait_legs_up(dir.path());
    let done = l["resync"]["done_bytes"].as_u64().expect("done_bytes");
    assert_eq!(done, left as u64 * REGION_BYTES, "{l}");
    eprintln!("killed with {left} of {MIB} regions left; the restart copied {done} bytes");
    // Reads from both legs now: every block is the last version.
    rt.block_on(async {
        let s = login(addr).await;
        for r in 0..MIB {
            let lba = r * REGION_BYTES / BS as u64;
            let cdb = cdb10(0x28, 0, lba as u32, 64);
            for _ in 0..2 {
                let res = s
                    .command(
                        lun_field(0),
                        &cdb,
                        DataDir::Read,
                        64 * BS as u32,
                        Bytes::new(),
                    )
                    .await
                    .expect("read");
                assert_eq!(res.status, 0);
                // Block i of each region holds write i, if there was one.
                for i in 0..64u64 {
                    let got = seq_of(0, lba + i, &res.data[i as usize * BS..][..BS])
                        .unwrap_or_else(|e| panic!("{e}"));
                    let want = if written.contains(&i) { i } else { 0 };
                    assert_eq!(got, want, "region {r} block {i}");
                }
            }
        }
    });
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(v.0.id() as i32, libc::SIGTERM) };
    assert!(v.0.wait().expect("wait").success());
    legs_identical(dir.path(), &[("big-a.img", "big-b.img")]);
    assert_eq!(resync_left(dir.path()), None);
}

/// Polls `layout` until both legs of "big" are up; returns the layout.
fn wait_legs_up(dir: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = admin(dir, json!({"op": "layout", "volume": "big"}));
        let up = l["legs"]
            .as_array()
            .is_some_and(|legs| legs.iter().all(|x| x["state"] == "up"));
        if up && l["resync"]["active"] == false {
            return l;
        }
        assert!(Instant::now() < deadline, "legs never came up: {l}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
