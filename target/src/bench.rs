//! `vtgt bench`: drives a target through our own initiator and reports IOPS,
//! throughput, latency percentiles and errors. No client-side caching: every
//! I/O is a command on the wire, and data is really transferred.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::{BufMut, Bytes, BytesMut};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vtgt_initiator::{nvme, DataDir, LoginConfig, Session};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub protocol: Protocol,
    pub portal: SocketAddr,
    pub target: String,
    pub lun: u64,
    pub random: bool,
    /// Percentage of reads (100 = read only, 0 = write only).
    pub read_pct: u32,
    pub block_size: u32,
    pub queue_depth: u32,
    pub connections: u32,
    pub duration: Option<Duration>,
    pub ios: Option<u64>,
    /// LBA range used, in logical blocks (None: the whole LUN).
    pub range_blocks: Option<u64>,
    pub verify: bool,
    pub digests: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Iscsi,
    /// NVMe/TCP; `target` is the subsystem NQN and `lun` the namespace ID.
    Nvme,
}

/// One connection to the target, whichever protocol it speaks.
enum Client {
    Iscsi(Session),
    Nvme {
        ctrl: Box<nvme::Controller>,
        queue: nvme::Queue,
        nsid: u32,
    },
}

impl Client {
    async fn connect(cfg: &BenchConfig, i: u32) -> Result<Client> {
        match cfg.protocol {
            Protocol::Iscsi => {
                let mut lc = LoginConfig::new(
                    &format!("iqn.2026-11.org.vtgt:bench-{i}"),
                    Some(&cfg.target),
                );
                if cfg.digests {
                    lc = lc.key("HeaderDigest", "CRC32C").key("DataDigest", "CRC32C");
                }
                lc = lc
                    .key("MaxRecvDataSegmentLength", "262144")
                    .key("MaxBurstLength", "1048576")
                    .key("FirstBurstLength", "262144");
                Ok(Client::Iscsi(Session::login(cfg.portal, lc).await?))
            }
            Protocol::Nvme => {
                let mut host = nvme::HostConfig::new(&format!("nqn.2026-11.org.vtgt:bench-{i}"));
                host.digests.header = cfg.digests;
                host.digests.data = cfg.digests;
                let ctrl = nvme::Controller::connect(cfg.portal, &host, &cfg.target)
                    .await
                    .map_err(|e| anyhow!("NVMe connect: {e}"))?;
                ctrl.set_num_queues(1).await.map_err(|e| anyhow!("{e}"))?;
                let size = (cfg.queue_depth + 1).clamp(2, 1024) as u16;
                let queue = ctrl
                    .connect_io_queue(1, size)
                    .await
                    .map_err(|e| anyhow!("NVMe I/O queue: {e}"))?;
                let nsid = if cfg.lun == 0 { 1 } else { cfg.lun as u32 };
                Ok(Client::Nvme {
                    ctrl: Box::new(ctrl),
                    queue,
                    nsid,
                })
            }
        }
    }

    /// (blocks, block size) of the LUN or namespace.
    async fn capacity(&self, lun: u64) -> Result<(u64, u32)> {
        match self {
            Client::Iscsi(s) => capacity(s, lun).await,
            Client::Nvme { ctrl, nsid, .. } => {
                let id = ctrl.identify_ns(*nsid).await.map_err(|e| anyhow!("{e}"))?;
                Ok((id.nsze, 1u32 << id.lbads.min(16)))
            }
        }
    }

    /// One read or write; `Ok(None)` is a command the target failed.
    async fn io(
        &self,
        lun: u64,
        write: bool,
        lba: u64,
        blocks: u32,
        lbs: u32,
        data: Bytes,
    ) -> Result<Option<Bytes>> {
        match self {
            Client::Iscsi(s) => {
                let (dir, len) = if write {
                    (DataDir::Write, data.len() as u32)
                } else {
                    (DataDir::Read, blocks * lbs)
                };
                let r = s
                    .command(lun, &rw16(write, lba, blocks), dir, len, data)
                    .await?;
                Ok((r.status == 0).then_some(r.data))
            }
            Client::Nvme { queue, nsid, .. } => {
                let r = if write {
                    queue
                        .write(*nsid, lba, data, lbs, false)
                        .await
                        .map(|_| Bytes::new())
                } else {
                    queue.read(*nsid, lba, blocks, lbs).await
                };
                match r {
                    Ok(d) => Ok(Some(d)),
                    Err(nvme::NvmeError::Status(_)) => Ok(None),
                    Err(e) => Err(anyhow!("{e}")),
                }
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Client::Iscsi(s) => s.is_closed(),
            Client::Nvme { queue, .. } => queue.is_closed(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub verify_failures: u64,
    pub verified_blocks: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mb_per_sec: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub latency_us_max: f64,
}

impl BenchReport {
    pub fn human(&self) -> String {
        format!(
            "{} IOs ({} reads, {} writes) in {:.2}s: {:.0} IOPS, {:.1} MB/s, latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us; {} errors{}",
            self.ios,
            self.reads,
            self.writes,
            self.seconds,
            self.iops,
            self.mb_per_sec,
            self.latency_us_p50,
            self.latency_us_p99,
            self.latency_us_p999,
            self.latency_us_max,
            self.errors,
            if self.verified_blocks > 0 || self.verify_failures > 0 {
                format!(
                    "; verified {} blocks, {} verify failures",
                    self.verified_blocks, self.verify_failures
                )
            } else {
                String::new()
            }
        )
    }
}

struct Shared {
    done: AtomicBool,
    issued: AtomicU64,
    completed: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

fn rw16(write: bool, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = if write { 0x8a } else { 0x88 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A self-describing block: LBA, write sequence, then a payload derived from
/// both, so a read can tell a right block from a stale or misplaced one.
fn fill_block(buf: &mut BytesMut, lba: u64, seq: u64, bs: usize) {
    buf.put_u64(lba);
    buf.put_u64(seq);
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq;
    for _ in 0..(bs - 16) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.put_u64(x);
    }
}

fn check_block(b: &[u8], lba: u64, seq: u64) -> bool {
    let mut want = BytesMut::with_capacity(b.len());
    fill_block(&mut want, lba, seq, b.len());
    &want[..] == b
}

async fn capacity(s: &Session, lun: u64) -> Result<(u64, u32)> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    // A new nexus may see a unit attention first.
    for _ in 0..5 {
        let r = s
            .command(lun, &cdb, DataDir::Read, 32, Bytes::new())
            .await?;
        if r.status == 0 && r.data.len() >= 12 {
            let last = u64::from_be_bytes(r.data[..8].try_into()?);
            let bs = u32::from_be_bytes(r.data[8..12].try_into()?);
            return Ok((last + 1, bs));
        }
    }
    bail!("READ CAPACITY 16 failed")
}

fn lun_field(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

pub async fn run(cfg: BenchConfig) -> Result<BenchReport> {
    if cfg.block_size == 0 || cfg.queue_depth == 0 || cfg.connections == 0 {
        bail!("block size, queue depth and connections must be positive");
    }
    if cfg.duration.is_none() && cfg.ios.is_none() {
        bail!("give a duration or an I/O count");
    }
    let lun = lun_field(cfg.lun);
    let mut sessions = Vec::new();
    for i in 0..cfg.connections {
        sessions.push(Arc::new(Client::connect(&cfg, i).await?));
    }
    let (nblocks, lbs) = sessions[0].capacity(lun).await?;
    for s in &sessions[1..] {
        s.capacity(lun).await?;
    }
    if !cfg.block_size.is_multiple_of(lbs) {
        bail!(
            "block size {} is not a multiple of the LUN's {lbs}",
            cfg.block_size
        );
    }
    let per_io = (cfg.block_size / lbs) as u64;
    let range = cfg.range_blocks.unwrap_or(nblocks).min(nblocks);
    let slots = range / per_io;
    let workers = (cfg.connections * cfg.queue_depth) as u64;
    if slots < workers {
        bail!("LBA range too small for {workers} workers");
    }
    let shared = Arc::new(Shared {
        done: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..workers {
        let s = sessions[(w % cfg.connections as u64) as usize].clone();
        let shared = shared.clone();
        let cfg = cfg.clone();
        // In verify mode each worker owns a disjoint slice of the range, so
        // it alone knows what every block it touches must contain.
        let (lo, hi) = if cfg.verify {
            let per = slots / workers;
            (w * per, (w + 1) * per)
        } else {
            (0, slots)
        };
        handles.push(tokio::spawn(async move {
            worker(s, lun, shared, cfg, per_io, lbs, w, lo, hi).await
        }));
    }
    let mut last = (Instant::now(), 0u64);
    let progress = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let c = shared.completed.load(Ordering::Relaxed);
            if cfg.progress {
                let rate = (c - last.1) as f64 / (now - last.0).as_secs_f64();
                eprint!(
                    "\r[{:>4.0}s] {:>9.0} IOPS {:>9.1} MB/s  {} errors   ",
                    start.elapsed().as_secs_f64(),
                    rate,
                    rate * cfg.block_size as f64 / 1e6,
                    shared.errors.load(Ordering::Relaxed)
                );
            }
            last = (now, c);
            if let Some(d) = cfg.duration {
                if start.elapsed() >= d {
                    shared.done.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    let mut lat = Vec::new();
    let (mut reads, mut writes, mut vfail, mut vok) = (0u64, 0u64, 0u64, 0u64);
    tokio::select! {
        _ = progress => {}
        r = futures_join(handles) => {
            for w in r? {
                let w = w?;
                lat.extend(w.latencies);
                reads += w.reads;
                writes += w.writes;
                vfail += w.verify_failures;
                vok += w.verified;
            }
        }
    }
    if cfg.progress {
        eprintln!();
    }
    let secs = start.elapsed().as_secs_f64();
    for s in sessions {
        match Arc::try_unwrap(s) {
            Ok(Client::Iscsi(s)) => {
                let _ = s.logout().await;
            }
            Ok(Client::Nvme { queue, ctrl, .. }) => {
                queue.close().await;
                ctrl.close().await;
            }
            Err(_) => {}
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let ios = reads + writes;
    Ok(BenchReport {
        ios,
        reads,
        writes,
        errors: shared.errors.load(Ordering::Relaxed),
        verify_failures: vfail,
        verified_blocks: vok,
        seconds: secs,
        iops: ios as f64 / secs,
        mb_per_sec: shared.bytes.load(Ordering::Relaxed) as f64 / secs / 1e6,
        latency_us_p50: pct(0.50),
        latency_us_p99: pct(0.99),
        latency_us_p999: pct(0.999),
        latency_us_max: lat.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
    })
}

async fn futures_join(
    handles: Vec<tokio::task::JoinHandle<Result<WorkerStats>>>,
) -> Result<Vec<Result<WorkerStats>>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.map_err(|e| anyhow!("worker failed: {e}"))?);
    }
    Ok(out)
}

struct WorkerStats {
    latencies: Vec<u64>,
    reads: u64,
    writes: u64,
    verify_failures: u64,
    verified: u64,
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    s: Arc<Client>,
    lun: u64,
    shared: Arc<Shared>,
    cfg: BenchConfig,
    per_io: u64,
    lbs: u32,
    id: u64,
    lo: u64,
    hi: u64,
) -> Result<WorkerStats> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ id);
    let bs = cfg.block_size as usize;
    let fixed = Bytes::from(
        (0..bs)
            .map(|i| (i * 7 + id as usize) as u8)
            .collect::<Vec<u8>>(),
    );
    // Sequential workers interleave so the stream as a whole is sequential.
    let workers = (cfg.connections * cfg.queue_depth) as u64;
    let mut next = if cfg.verify { lo } else { lo + id };
    let mut seqs: Vec<u64> = if cfg.verify {
        vec![0; (hi - lo) as usize]
    } else {
        Vec::new()
    };
    let mut st = WorkerStats {
        latencies: Vec::new(),
        reads: 0,
        writes: 0,
        verify_failures: 0,
        verified: 0,
    };
    let mut wseq = 0u64;
    loop {
        if shared.done.load(Ordering::Relaxed) {
            break;
        }
        if let Some(n) = cfg.ios {
            if shared.issued.fetch_add(1, Ordering::Relaxed) >= n {
                break;
            }
        }
        let slot = if cfg.random {
            rng.gen_range(lo..hi)
        } else {
            let s = next;
            let step = if cfg.verify { 1 } else { workers };
            next += step;
            if next >= hi {
                next = if cfg.verify { lo } else { lo + id % (hi - lo) };
            }
            s
        };
        let mut read = rng.gen_range(0..100) < cfg.read_pct;
        // In verify mode, read only what this worker has written.
        if cfg.verify && read && seqs[(slot - lo) as usize] == 0 {
            read = false;
        }
        let lba = slot * per_io;
        let t = Instant::now();
        let data = if read {
            Bytes::new()
        } else if cfg.verify {
            wseq += 1;
            let seq = (id << 40) | wseq;
            let mut b = BytesMut::with_capacity(bs);
            for i in 0..per_io {
                fill_block(&mut b, lba + i, seq, lbs as usize);
            }
            seqs[(slot - lo) as usize] = seq;
            b.freeze()
        } else {
            fixed.clone()
        };
        let r = s.io(lun, !read, lba, per_io as u32, lbs, data).await;
        let ns = t.elapsed().as_nanos() as u64;
        match r {
            Ok(Some(res_data)) => {
                st.latencies.push(ns);
                shared.bytes.fetch_add(bs as u64, Ordering::Relaxed);
                shared.completed.fetch_add(1, Ordering::Relaxed);
                if read {
                    st.reads += 1;
                    if cfg.verify {
                        let seq = seqs[(slot - lo) as usize];
                        for i in 0..per_io as usize {
                            let b = res_data.get(i * lbs as usize..(i + 1) * lbs as usize);
                            if b.is_some_and(|b| check_block(b, lba + i as u64, seq)) {
                                st.verified += 1;
                            } else {
                                st.verify_failures += 1;
                            }
                        }
                    }
                } else {
                    st.writes += 1;
                }
            }
            Ok(None) | Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if s.is_closed() {
                    break;
                }
            }
        }
    }
    Ok(st)
}

/// Parses "4k", "128KiB", "1m", "512".
pub fn parse_block_size(s: &str) -> Result<u32> {
    let n = crate::config::parse_size(s).map_err(|e| anyhow!(e))?;
    u32::try_from(n).map_err(|_| anyhow!("block size too large"))
}

/// Parses "10s", "500ms", "2m" or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| anyhow!("bad duration {s:?}"))?;
    if !(0.0..=86_400.0).contains(&(v * mult)) {
        bail!("duration out of range");
    }
    Ok(Duration::from_secs_f64(v * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_verify_only_their_own_content() {
        let mut b = BytesMut::new();
        fill_block(&mut b, 7, 3, 512);
        assert_eq!(b.len(), 512);
        assert!(check_block(&b, 7, 3));
        assert!(!check_block(&b, 8, 3));
        assert!(!check_block(&b, 7, 4));
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_block_size("4k").unwrap(), 4096);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
    }
}
