//! Per-volume command statistics: operation counts, bytes, errors and a
//! latency histogram per operation class.
//!
//! These are recorded on every command by both front ends, so they do not
//! go through the `metrics` registry: its histogram handle appends every
//! sample (with a clock read) to one shared lock-free queue, and two
//! workers recording into the same volume fight over its cache lines.
//! Here each thread adds into its own cache-line-aligned shard with
//! relaxed atomic adds; a scrape (or the once-a-second tick) drains the
//! shards into totals and renders them in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

/// Latency bucket upper bounds: 25 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 10.0,
];
const BUCKETS: usize = 17;
/// The same bounds in nanoseconds, compared on the hot path.
const BOUNDS_NS: [u64; BUCKETS] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Operation classes for per-volume metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read,
    Write,
    Unmap,
    Flush,
    Other,
}

const CLASSES: usize = 5;
const CLASS_NAMES: [&str; CLASSES] = ["read", "write", "unmap", "flush", "other"];

impl OpClass {
    /// Classifies a SCSI CDB by its opcode.
    pub fn of_cdb(cdb: &[u8]) -> Self {
        match cdb.first().copied().unwrap_or(0) {
            0x08 | 0x28 | 0xa8 | 0x88 => OpClass::Read,
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x89 | 0x8b | 0x9c => OpClass::Write,
            0x42 | 0x41 | 0x93 => OpClass::Unmap,
            0x35 | 0x91 => OpClass::Flush,
            _ => OpClass::Other,
        }
    }

    /// Classifies an NVM command set opcode.
    pub fn of_nvm(opcode: u8) -> Self {
        use vtgt_protocol::nvme::command::nvm;
        match opcode {
            nvm::READ => OpClass::Read,
            nvm::WRITE | nvm::WRITE_ZEROES => OpClass::Write,
            nvm::DSM => OpClass::Unmap,
            nvm::FLUSH => OpClass::Flush,
            _ => OpClass::Other,
        }
    }
}

/// Whether recording is on: off with `--no-metrics`, so the front ends
/// skip even the clock reads.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Default)]
struct ClassCells {
    bytes: AtomicU64,
    sum_ns: AtomicU64,
    /// Observations per bucket; the last one is above every bound.
    buckets: [AtomicU64; BUCKETS + 1],
}

/// One thread's share. Aligned to two cache lines so that adjacent-line
/// prefetch does not pair two shards either.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    class: [ClassCells; CLASSES],
    errors: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct ClassTotals {
    bytes: u64,
    /// Wide enough for years of summed latency at millions of IOPS.
    sum_ns: u128,
    buckets: [u64; BUCKETS + 1],
}

#[derive(Default, Clone, Copy)]
struct Totals {
    class: [ClassTotals; CLASSES],
    errors: u64,
}

/// Statistics for one volume. Every LU and namespace on the volume shares
/// the one instance (see [`VolumeMetrics::new`]).
pub struct VolumeMetrics {
    name: String,
    shards: Box<[Shard]>,
    totals: Mutex<Totals>,
}

impl std::fmt::Debug for VolumeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeMetrics({})", self.name)
    }
}

/// Live volumes' statistics by name. Weak, so a removed volume's series
/// go with its last LU or namespace.
static REGISTRY: Mutex<BTreeMap<String, Weak<VolumeMetrics>>> = Mutex::new(BTreeMap::new());

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

fn shard_count() -> usize {
    let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
    (cpus * 2).next_power_of_two().clamp(4, 64)
}

impl VolumeMetrics {
    /// The statistics of volume `name`, shared with its other users.
    pub fn new(name: &str) -> Arc<Self> {
        let mut reg = REGISTRY.lock();
        if let Some(m) = reg.get(name).and_then(Weak::upgrade) {
            return m;
        }
        reg.retain(|_, w| w.strong_count() > 0);
        let m = Arc::new(Self {
            name: name.to_string(),
            shards: (0..shard_count()).map(|_| Shard::default()).collect(),
            totals: Mutex::new(Totals::default()),
        });
        reg.insert(name.to_string(), Arc::downgrade(&m));
        m
    }

    /// Records one completed command. Relaxed adds on this thread's shard:
    /// no lock, no allocation, no line shared with another worker.
    #[inline]
    pub fn record(&self, op: OpClass, bytes: u64, elapsed: Duration, ok: bool) {
        if !enabled() {
            return;
        }
        let slot = THREAD_SLOT.with(|s| *s);
        let shard = &self.shards[slot & (self.shards.len() - 1)];
        let c = &shard.class[op as usize];
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let b = BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(BUCKETS);
        c.buckets[b].fetch_add(1, Ordering::Relaxed);
        c.sum_ns.fetch_add(ns, Ordering::Relaxed);
        if bytes > 0 {
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if !ok {
            shard.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Moves what the shards hold into the totals. `swap` loses no
    /// concurrent add, and keeps the shards' u64 sums far from wrapping.
    fn drain(&self) -> Totals {
        let mut t = self.totals.lock();
        for s in self.shards.iter() {
            for (tc, c) in t.class.iter_mut().zip(&s.class) {
                tc.bytes += c.bytes.swap(0, Ordering::Relaxed);
                tc.sum_ns += c.sum_ns.swap(0, Ordering::Relaxed) as u128;
                for (tb, b) in tc.buckets.iter_mut().zip(&c.buckets) {
                    *tb += b.swap(0, Ordering::Relaxed);
                }
            }
            t.errors += s.errors.swap(0, Ordering::Relaxed);
        }
        *t
    }

    /// Commands completed so far for `op` (all shards).
    pub fn ops(&self, op: OpClass) -> u64 {
        self.drain().class[op as usize].buckets.iter().sum()
    }
}

fn live() -> Vec<Arc<VolumeMetrics>> {
    REGISTRY.lock().values().filter_map(Weak::upgrade).collect()
}

/// Drains every volume's shards; run once a second so that no shard's
/// counters wrap between scrapes however rarely they come.
pub fn drain_all() {
    for m in live() {
        m.drain();
    }
}

/// Label value escaping of the text exposition format.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Every live volume's statistics in the Prometheus text format, one
/// family at a time as the format requires.
pub fn render(out: &mut String) {
    let vols: Vec<(String, Totals)> = live().iter().map(|m| (label(&m.name), m.drain())).collect();
    if vols.is_empty() {
        return;
    }
    family(
        out,
        "vtgt_volume_ops_total",
        "counter",
        "Commands completed per volume, by operation.",
    );
    for (v, t) in &vols {
        for (op, c) in CLASS_NAMES.iter().zip(&t.class) {
            let n: u64 = c.buckets.iter().sum();
            let _ = writeln!(
                out,
                "vtgt_volume_ops_total{{volume=\"{v}\",op=\"{op}\"}} {n}"
            );
        }
    }
    family(
        out,
        "vtgt_volume_bytes_total",
        "counter",
        "Bytes read or written per volume.",
    );
    for (v, t) in &vols {
        for op in [OpClass::Read, OpClass::Write] {
            let name = CLASS_NAMES[op as usize];
            let b = t.class[op as usize].bytes;
            let _ = writeln!(
                out,
                "vtgt_volume_bytes_total{{volume=\"{v}\",op=\"{name}\"}} {b}"
            );
        }
    }
    family(
        out,
        "vtgt_volume_errors_total",
        "counter",
        "Commands per volume that ended with an error status.",
    );
    for (v, t) in &vols {
        let _ = writeln!(
            out,
            "vtgt_volume_errors_total{{volume=\"{v}\"}} {}",
            t.errors
        );
    }
    let h = "vtgt_volume_op_duration_seconds";
    family(
        out,
        h,
        "histogram",
        "Command latency per volume and operation, measured at the target.",
    );
    for (v, t) in &vols {
        for (op, c) in CLASS_NAMES.iter().zip(&t.class) {
            let mut cum = 0u64;
            for (i, n) in c.buckets.iter().enumerate() {
                cum += n;
                let le = match LATENCY_BUCKETS.get(i) {
                    Some(b) => b.to_string(),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(
                    out,
                    "{h}_bucket{{volume=\"{v}\",op=\"{op}\",le=\"{le}\"}} {cum}"
                );
            }
            let sum = c.sum_ns as f64 / 1e9;
            let _ = writeln!(out, "{h}_sum{{volume=\"{v}\",op=\"{op}\"}} {sum}");
            let _ = writeln!(out, "{h}_count{{volume=\"{v}\",op=\"{op}\"}} {cum}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
    }

    #[test]
    fn bounds_match_the_published_buckets() {
        for (ns, s) in BOUNDS_NS.iter().zip(LATENCY_BUCKETS) {
            assert_eq!(*ns, (s * 1e9).round() as u64);
        }
        assert_eq!(LATENCY_BUCKETS.len(), BUCKETS);
    }

    #[test]
    fn records_from_many_threads_add_up_and_render_as_a_histogram() {
        enable();
        let m = VolumeMetrics::new("vm-test \"q\"");
        // A second user of the same volume shares the statistics.
        assert!(Arc::ptr_eq(&m, &VolumeMetrics::new("vm-test \"q\"")));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.record(OpClass::Read, 4096, Duration::from_micros(30), true);
                        m.record(OpClass::Write, 512, Duration::from_millis(3), i % 2 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recorder thread");
        }
        m.record(OpClass::Flush, 0, Duration::from_secs(20), true);
        assert_eq!(m.ops(OpClass::Read), 8000);
        let mut text = String::new();
        render(&mut text);
        let v = r#"volume="vm-test \"q\"""#;
        let get = |p: &str| line(&text, p).map(str::to_string);
        let ops_read = format!("vtgt_volume_ops_total{{{v},op=\"read\"}}");
        assert_eq!(get(&ops_read).as_deref(), Some("8000"));
        let bytes_write = format!("vtgt_volume_bytes_total{{{v},op=\"write\"}}");
        assert_eq!(get(&bytes_write).as_deref(), Some("4096000"));
        let errors = format!("vtgt_volume_errors_total{{{v}}}");
        assert_eq!(get(&errors).as_deref(), Some("4000"));
        let h = "vtgt_volume_op_duration_seconds";
        // 30 µs falls in the 50 µs bucket, not the 25 µs one; buckets are
        // cumulative.
        let b25 = format!("{h}_bucket{{{v},op=\"read\",le=\"0.000025\"}}");
        let b50 = format!("{h}_bucket{{{v},op=\"read\",le=\"0.00005\"}}");
        assert_eq!(get(&b25).as_deref(), Some("0"));
        assert_eq!(get(&b50).as_deref(), Some("8000"));
        let w5 = format!("{h}_bucket{{{v},op=\"write\",le=\"0.005\"}}");
        assert_eq!(get(&w5).as_deref(), Some("8000"));
        // 20 s is above every bound: only +Inf counts it.
        let f10 = format!("{h}_bucket{{{v},op=\"flush\",le=\"10\"}}");
        let finf = format!("{h}_bucket{{{v},op=\"flush\",le=\"+Inf\"}}");
        assert_eq!(get(&f10).as_deref(), Some("0"));
        assert_eq!(get(&finf).as_deref(), Some("1"));
        let sum: f64 = get(&format!("{h}_sum{{{v},op=\"read\"}}"))
            .and_then(|s| s.parse().ok())
            .expect("read sum");
        assert!((sum - 0.24).abs() < 1e-9, "sum {sum}");
        // Draining twice changes nothing.
        let mut again = String::new();
        render(&mut again);
        assert_eq!(line(&again, &ops_read), Some("8000"));
        // Families are contiguous: each TYPE line appears once.
        assert_eq!(text.matches("# TYPE vtgt_volume_ops_total").count(), 1);
        drop(m);
        let mut gone = String::new();
        render(&mut gone);
        assert!(!gone.contains("vm-test"));
    }
}
