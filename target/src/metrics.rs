//! Prometheus metrics (`metrics` crate, served by
//! metrics-exporter-prometheus on `--metrics-listen`).
//!
//! Per-I/O recording goes through handles resolved once per volume, so the
//! hot path does atomic adds only: no lookups, locks or allocation. Engine
//! counters that are already atomics are copied into metrics once a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use vtgt_engine::FaultReason;

use crate::server::Server;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9470";

/// Latency buckets, in seconds: 25 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 10.0,
];

/// Installs the global recorder and its HTTP listener. Call once.
pub fn install(listen: SocketAddr) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .context("histogram buckets")?
        .install()
        .with_context(|| format!("cannot serve metrics on {listen}"))?;
    describe();
    gauge!(
        "vtgt_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
    )
    .set(1.0);
    Ok(())
}

fn describe() {
    describe_counter!(
        "vtgt_volume_ops_total",
        "Commands completed per volume, by operation."
    );
    describe_counter!(
        "vtgt_volume_bytes_total",
        Unit::Bytes,
        "Bytes read or written per volume."
    );
    describe_histogram!(
        "vtgt_volume_op_duration_seconds",
        Unit::Seconds,
        "Command latency per volume and operation, measured at the target."
    );
    describe_counter!(
        "vtgt_volume_errors_total",
        "Commands that ended with a non-GOOD status, per volume."
    );
    describe_counter!(
        "vtgt_fastpath_ios_total",
        "Reads and writes completed on the fast path, per volume."
    );
    describe_counter!(
        "vtgt_fastpath_faults_total",
        "I/Os faulted from the fast path to the control path, by reason."
    );
    describe_gauge!(
        "vtgt_sessions",
        "Connected sessions, per protocol and target."
    );
    describe_counter!(
        "vtgt_logins_total",
        "Login attempts by protocol, target and result."
    );
    describe_counter!(
        "vtgt_digest_errors_total",
        "PDUs received with a bad header or data digest."
    );
    describe_gauge!(
        "vtgt_commands_in_flight",
        "Commands received and not yet answered, per protocol and target."
    );
    describe_gauge!("vtgt_volume_size_bytes", Unit::Bytes, "Volume capacity.");
    describe_gauge!(
        "vtgt_pending_unit_attentions",
        "Unit attentions waiting to be delivered, per volume."
    );
    describe_gauge!("vtgt_build_info", "Build information; the value is 1.");
    describe_gauge!(
        "vtgt_volume_leg_up",
        "1 if a volume's leg (backend or mirror leg) is live, else 0."
    );
    describe_gauge!(
        "vtgt_volume_generation",
        "The volume's generation number (bumped when a mirror leg fails)."
    );
    describe_gauge!(
        "vtgt_resync_total_bytes",
        Unit::Bytes,
        "Bytes the running resync must copy (0 when none runs)."
    );
    describe_gauge!(
        "vtgt_resync_done_bytes",
        Unit::Bytes,
        "Bytes the running resync has copied."
    );
    describe_gauge!(
        "vtgt_resync_rate_bytes_per_second",
        "Copy rate of the running resync since it started."
    );
    describe_gauge!(
        "vtgt_resync_eta_seconds",
        "Estimated seconds until the running resync finishes (0 when unknown)."
    );
    describe_counter!(
        "vtgt_resync_copied_bytes_total",
        Unit::Bytes,
        "Bytes copied by resyncs since the volume was opened."
    );
    describe_gauge!(
        "vtgt_migration_total_bytes",
        Unit::Bytes,
        "Bytes the running migration must copy."
    );
    describe_gauge!(
        "vtgt_migration_done_bytes",
        Unit::Bytes,
        "Bytes the running migration has copied."
    );
    describe_gauge!(
        "vtgt_journal_fill_ratio",
        "Fraction of the volume's active write journal in use."
    );
    describe_counter!(
        "vtgt_journal_recycled_total",
        "Full write journals emptied once their data was durable in place."
    );
}

/// Operation classes for per-volume metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read,
    Write,
    Unmap,
    Flush,
    Other,
}

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
}

struct OpHandles {
    ops: Counter,
    bytes: Counter,
    latency: Histogram,
}

impl OpHandles {
    fn new(volume: &str, op: &'static str) -> Self {
        Self {
            ops: counter!("vtgt_volume_ops_total", "volume" => volume.to_string(), "op" => op),
            bytes: counter!("vtgt_volume_bytes_total", "volume" => volume.to_string(), "op" => op),
            latency: histogram!("vtgt_volume_op_duration_seconds", "volume" => volume.to_string(), "op" => op),
        }
    }
}

/// Handles for one volume, resolved once.
pub struct VolumeMetrics {
    read: OpHandles,
    write: OpHandles,
    unmap: OpHandles,
    flush: OpHandles,
    other: OpHandles,
    errors: Counter,
}

impl std::fmt::Debug for VolumeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeMetrics")
    }
}

impl VolumeMetrics {
    pub fn new(volume: &str) -> Arc<Self> {
        Arc::new(Self {
            read: OpHandles::new(volume, "read"),
            write: OpHandles::new(volume, "write"),
            unmap: OpHandles::new(volume, "unmap"),
            flush: OpHandles::new(volume, "flush"),
            other: OpHandles::new(volume, "other"),
            errors: counter!("vtgt_volume_errors_total", "volume" => volume.to_string()),
        })
    }

    pub fn record(&self, op: OpClass, bytes: u64, elapsed: Duration, ok: bool) {
        let h = match op {
            OpClass::Read => &self.read,
            OpClass::Write => &self.write,
            OpClass::Unmap => &self.unmap,
            OpClass::Flush => &self.flush,
            OpClass::Other => &self.other,
        };
        h.ops.increment(1);
        if bytes > 0 {
            h.bytes.increment(bytes);
        }
        h.latency.record(elapsed.as_secs_f64());
        if !ok {
            self.errors.increment(1);
        }
    }
}

/// A login attempt's outcome, with a bounded set of result labels.
pub fn login(protocol: &'static str, target: &str, result: &'static str) {
    counter!("vtgt_logins_total", "protocol" => protocol, "target" => target.to_string(), "result" => result)
        .increment(1);
}

pub fn digest_error(protocol: &'static str, kind: &'static str) {
    counter!("vtgt_digest_errors_total", "protocol" => protocol, "kind" => kind).increment(1);
}

/// Copies engine counters and session state into metrics once a second.
pub fn spawn_exporter(server: Arc<Server>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            export(&server).await;
        }
    });
}

async fn export(server: &Server) {
    for (name, e) in server.volumes().await {
        let v = &e.volume;
        counter!("vtgt_fastpath_ios_total", "volume" => name.clone())
            .absolute(v.counters.fast_path_hits());
        for r in FaultReason::ALL {
            counter!("vtgt_fastpath_faults_total", "volume" => name.clone(), "reason" => r.as_str())
                .absolute(v.counters.count(r));
        }
        gauge!("vtgt_volume_size_bytes", "volume" => name.clone())
            .set((v.num_blocks() * v.block_size() as u64) as f64);
        gauge!("vtgt_pending_unit_attentions", "volume" => name.clone())
            .set(e.control.pending_notices().await as f64);
        // Engine state. A plain volume has one live leg per backend; a
        // mirrored one reports its mirror legs by id (up = serving reads) and
        // its generation and resync progress.
        let ms = v.mirror_status();
        if v.is_mirrored() {
            for (id, st) in &ms.legs {
                let up = if *st == vtgt_engine::LegState::Up {
                    1.0
                } else {
                    0.0
                };
                gauge!("vtgt_volume_leg_up", "volume" => name.clone(), "leg" => id.to_string())
                    .set(up);
            }
        } else {
            for (i, _) in v.backends().iter().enumerate() {
                gauge!("vtgt_volume_leg_up", "volume" => name.clone(), "leg" => i.to_string())
                    .set(1.0);
            }
        }
        gauge!("vtgt_volume_generation", "volume" => name.clone()).set(ms.generation as f64);
        let r = &ms.resync;
        progress(
            ["vtgt_resync_total_bytes", "vtgt_resync_done_bytes"],
            &name,
            r.active.then_some((r.total_bytes, r.done_bytes)),
        );
        gauge!("vtgt_resync_rate_bytes_per_second", "volume" => name.clone()).set(if r.active {
            r.rate_bps
        } else {
            0.0
        });
        gauge!("vtgt_resync_eta_seconds", "volume" => name.clone())
            .set(r.eta_secs.filter(|_| r.active).unwrap_or(0.0));
        counter!("vtgt_resync_copied_bytes_total", "volume" => name.clone())
            .absolute(v.resync_copied_bytes());
        let mig = v.migration_status();
        progress(
            ["vtgt_migration_total_bytes", "vtgt_migration_done_bytes"],
            &name,
            mig.active.then_some((mig.total_bytes, mig.done_bytes)),
        );
        let js = v.journal_status();
        gauge!("vtgt_journal_fill_ratio", "volume" => name.clone()).set(js.fill_ratio);
        if js.journals > 0 {
            counter!("vtgt_journal_recycled_total", "volume" => name.clone()).absolute(js.recycled);
        }
    }
    let sessions = server.iscsi.sessions.all();
    for t in server.iscsi.targets.load().iter() {
        let mine: Vec<_> = sessions
            .iter()
            .filter(|s| s.target == t.name && !s.discovery)
            .collect();
        gauge!("vtgt_sessions", "protocol" => "iscsi", "target" => t.name.clone())
            .set(mine.len() as f64);
        let inflight: usize = mine.iter().map(|s| s.tasks.lock().len()).sum();
        gauge!("vtgt_commands_in_flight", "protocol" => "iscsi", "target" => t.name.clone())
            .set(inflight as f64);
    }
    gauge!("vtgt_sessions", "protocol" => "iscsi", "target" => "discovery")
        .set(sessions.iter().filter(|s| s.discovery).count() as f64);
}

/// The total and done gauges of a volume's long operation (zero when none
/// runs, so finished work does not linger on dashboards).
fn progress(names: [&'static str; 2], volume: &str, running: Option<(u64, u64)>) {
    let (total, done) = running.unwrap_or((0, 0));
    gauge!(names[0], "volume" => volume.to_string()).set(total as f64);
    gauge!(names[1], "volume" => volume.to_string()).set(done as f64);
}
