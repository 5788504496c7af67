//! What recording one command's metrics costs: the per-command work of the
//! front ends (two clock reads, the operation class, two counters and a
//! latency histogram), with no recorder installed (`--no-metrics`) and
//! with the Prometheus recorder, on two threads at once as on the two
//! workers. Prints nanoseconds per command; compare with the target's CPU
//! time per command (interop/bench-vs-tgt.sh prints both).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vtgt::metrics::{OpClass, VolumeMetrics};

const PER_THREAD: u64 = 2_000_000;

fn per_command(m: &Arc<VolumeMetrics>) -> f64 {
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                let cdb = [0x28u8, 0, 0, 0, 0, 0, 0, 0, 8, 0];
                let t = Instant::now();
                for _ in 0..PER_THREAD {
                    let start = Instant::now();
                    let op = OpClass::of_cdb(black_box(&cdb));
                    m.record(op, black_box(4096), start.elapsed(), true);
                }
                t.elapsed().as_nanos() as f64 / PER_THREAD as f64
            })
        })
        .collect();
    let ns: Vec<f64> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
    ns.iter().sum::<f64>() / ns.len().max(1) as f64
}

fn main() {
    // Handles made before a recorder exists are no-ops, as with --no-metrics.
    let off = per_command(&VolumeMetrics::new("bench"));
    let listen = "127.0.0.1:0".parse().expect("loopback address");
    if let Err(e) = vtgt::metrics::install(listen) {
        eprintln!("cannot install the recorder: {e:#}");
        std::process::exit(1);
    }
    let on = per_command(&VolumeMetrics::new("bench"));
    println!(
        "metrics per command: {on:.1} ns with the Prometheus recorder, {off:.1} ns without (--no-metrics): {:.1} ns of recording",
        on - off
    );
}
