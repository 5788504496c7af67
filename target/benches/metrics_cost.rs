//! What recording one command's metrics costs the front ends: two clock
//! reads, the operation class and the per-volume statistics, on two
//! threads at once recording into the same volume, as the two workers do.
//! The baseline is the same loop with recording off (`--no-metrics`,
//! where the front ends skip the clock reads too). Prints nanoseconds per
//! command; compare with the target's CPU time per command
//! (interop/bench-vs-tgt.sh prints both).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vtgt::metrics::{OpClass, VolumeMetrics};

const PER_THREAD: u64 = 4_000_000;
const THREADS: usize = 2;

/// Mean nanoseconds per command over the threads.
fn per_command(m: &Arc<VolumeMetrics>) -> f64 {
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                let cdb = [0x28u8, 0, 0, 0, 0, 0, 0, 0, 8, 0];
                let t = Instant::now();
                for _ in 0..PER_THREAD {
                    // As iscsi/conn.rs and nvme/io.rs do it.
                    let start = vtgt::metrics::enabled().then(Instant::now);
                    let op = OpClass::of_cdb(black_box(&cdb));
                    if let Some(start) = start {
                        m.record(op, black_box(4096), start.elapsed(), true);
                    }
                    black_box(op);
                }
                t.elapsed().as_nanos() as f64 / PER_THREAD as f64
            })
        })
        .collect();
    let ns: Vec<f64> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
    ns.iter().sum::<f64>() / ns.len().max(1) as f64
}

fn main() {
    let m = VolumeMetrics::new("bench");
    let off = per_command(&m);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let listen = "127.0.0.1:0".parse().expect("loopback address");
    if let Err(e) = rt.block_on(async { vtgt::metrics::install(listen) }) {
        eprintln!("cannot install the recorder: {e:#}");
        std::process::exit(1);
    }
    let on = per_command(&m);
    // What a scrape reports must be what was recorded.
    let want = (THREADS as u64 * PER_THREAD).to_string();
    let text = vtgt::metrics::render().unwrap_or_default();
    let line = r#"vtgt_volume_ops_total{volume="bench",op="read"} "#;
    let got = text
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .unwrap_or("missing");
    if got != want {
        eprintln!("scrape shows {got} reads, {want} were recorded");
        std::process::exit(1);
    }
    println!(
        "metrics per command: {on:.1} ns recording, {off:.1} ns with --no-metrics: {:.1} ns of recording ({THREADS} threads, one volume, {want} commands scraped back)",
        on - off
    );
}
