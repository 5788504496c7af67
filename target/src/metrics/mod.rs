//! Prometheus metrics (`metrics` crate, rendered by
//! metrics-exporter-prometheus and served on `--metrics-listen`).
//!
//! Per-command statistics go to per-thread shards (`volume.rs`), so the
//! hot path does a few uncontended atomic adds: no lookups, locks or
//! allocation. Engine counters that are already atomics are copied into
//! metrics once a second.

mod http;
mod volume;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use vtgt_engine::FaultReason;

pub use volume::{enabled, OpClass, VolumeMetrics, LATENCY_BUCKETS};

use crate::server::Server;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9470";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How long a gauge the export stopped setting stays in the output.
const GAUGE_IDLE: Duration = Duration::from_secs(10);

/// Installs the global recorder, turns per-volume recording on and serves
/// `/metrics` on `listen` (from the current tokio runtime). Call once.
/// Returns the bound address.
pub fn install(listen: SocketAddr) -> Result<SocketAddr> {
    let sock = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot serve metrics on {listen}"))?;
    sock.set_nonblocking(true)?;
    let bound = sock.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(sock)?;
    // Gauges are all set by the once-a-second export, so one not set for a
    // while belongs to something gone (a removed volume, target or mirror
    // leg): drop it rather than report its last value forever.
    let recorder = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    let _ = HANDLE.set(handle.clone());
    describe();
    volume::enable();
    tokio::spawn(http::serve(listener, handle));
    Ok(bound)
}

/// The exposition a scrape would get now, once [`install`] has run.
pub fn render() -> Option<String> {
    HANDLE.get().map(http::render)
}

fn describe() {
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
        "Connected iSCSI sessions or NVMe controllers, per protocol and target (NVMe: subsystem)."
    );
    describe_counter!(
        "vtgt_logins_total",
        "iSCSI logins and NVMe admin-queue connects, by protocol, target and result."
    );
    describe_counter!(
        "vtgt_digest_errors_total",
        "PDUs received with a bad header or data digest."
    );
    describe_counter!(
        "vtgt_nvme_keep_alive_timeouts_total",
        "NVMe controllers torn down because the host went silent past KATO, per subsystem."
    );
    describe_gauge!(
        "vtgt_reservations_held",
        "1 if a persistent (or SPC-2) reservation is held on the volume, else 0."
    );
    describe_gauge!(
        "vtgt_reservation_registrations",
        "Persistent reservation registrations on the volume."
    );
    describe_counter!(
        "vtgt_unit_attentions_total",
        "Unit attentions (NVMe: asynchronous event notices) raised, per volume."
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

/// A login attempt's outcome, with a bounded set of result labels.
pub fn login(protocol: &'static str, target: &str, result: &'static str) {
    counter!("vtgt_logins_total", "protocol" => protocol, "target" => target.to_string(), "result" => result)
        .increment(1);
}

pub fn digest_error(protocol: &'static str, kind: &'static str) {
    counter!("vtgt_digest_errors_total", "protocol" => protocol, "kind" => kind).increment(1);
}

pub fn keep_alive_timeout(subsystem: &str) {
    counter!("vtgt_nvme_keep_alive_timeouts_total", "subsystem" => subsystem.to_string())
        .increment(1);
}

/// Copies engine counters and session state into metrics once a second.
pub fn spawn_exporter(server: Arc<Server>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            volume::drain_all();
            if let Some(h) = HANDLE.get() {
                h.run_upkeep();
            }
            export(&server).await;
        }
    });
}

async fn export(server: &Server) {
    gauge!("vtgt_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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
        let cs = e.control.stats().await;
        gauge!("vtgt_pending_unit_attentions", "volume" => name.clone())
            .set(cs.pending_notices as f64);
        counter!("vtgt_unit_attentions_total", "volume" => name.clone())
            .absolute(cs.raised_notices);
        gauge!("vtgt_reservations_held", "volume" => name.clone()).set(if cs.reserved {
            1.0
        } else {
            0.0
        });
        gauge!("vtgt_reservation_registrations", "volume" => name.clone())
            .set(cs.registrations as f64);
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
    let ctrls = server.nvme.controllers.all();
    for sub in server.nvme.subsystems.load().iter() {
        let mine: Vec<_> = ctrls
            .iter()
            .filter(|c| Arc::ptr_eq(&c.subsys, sub))
            .collect();
        gauge!("vtgt_sessions", "protocol" => "nvme", "target" => sub.nqn.clone())
            .set(mine.len() as f64);
        let inflight: usize = mine.iter().map(|c| c.in_flight()).sum();
        gauge!("vtgt_commands_in_flight", "protocol" => "nvme", "target" => sub.nqn.clone())
            .set(inflight as f64);
        // Present from the start, so a first timeout shows as an increase.
        counter!("vtgt_nvme_keep_alive_timeouts_total", "subsystem" => sub.nqn.clone())
            .increment(0);
    }
}

/// The total and done gauges of a volume's long operation (zero when none
/// runs, so finished work does not linger on dashboards).
fn progress(names: [&'static str; 2], volume: &str, running: Option<(u64, u64)>) {
    let (total, done) = running.unwrap_or((0, 0));
    gauge!(names[0], "volume" => volume.to_string()).set(total as f64);
    gauge!(names[1], "volume" => volume.to_string()).set(done as f64);
}
