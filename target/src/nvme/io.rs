//! NVM I/O commands. Reads and writes go through the engine's fast path
//! exactly as SCSI does; any fault falls back to the control path, which
//! delivers pending engine notices (as asynchronous events), answers
//! Reservation Conflict when the reservations forbid the command, and
//! otherwise runs the I/O with `Volume::read/write` and its range checks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use vtgt_engine::{EngineError, IoKind};
use vtgt_protocol::nvme::command::{nvm, sc, DsmRange, Sqe, Status};

use super::controller::Controller;
use super::queue::Reply;
use super::{pr, Namespace, MAX_IO_BYTES};
use crate::metrics::OpClass;

fn engine_status(e: &EngineError, write: bool) -> Status {
    match e {
        EngineError::OutOfRange { .. } => Status::generic(sc::LBA_RANGE),
        EngineError::BadLength { .. } => Status::generic(sc::INVALID_FIELD),
        EngineError::Unmapped(_) => Status::generic(sc::INTERNAL),
        EngineError::Io(_) if write => Status::media(sc::WRITE_FAULT),
        EngineError::Io(_) => Status::media(sc::READ_ERROR),
    }
}

/// A command's namespace and range. The caller holds the namespace until
/// the command completes, so a namespace removed meanwhile finishes it.
struct Rw<'a> {
    ns: &'a Arc<Namespace>,
    slba: u64,
    nlb: u64,
    bytes: u64,
}

/// The command's namespace, which [`execute`] looked up once.
fn present(ns: Option<&Arc<Namespace>>) -> Result<&Arc<Namespace>, Status> {
    ns.ok_or(Status::generic(sc::INVALID_NS))
}

fn resolve<'a>(ns: Option<&'a Arc<Namespace>>, sqe: &Sqe) -> Result<Rw<'a>, Status> {
    let ns = present(ns)?;
    let nlb = sqe.nlb() as u64;
    let bytes = nlb * ns.entry.volume.block_size() as u64;
    Ok(Rw {
        ns,
        slba: sqe.slba(),
        nlb,
        bytes,
    })
}

pub async fn execute(ctrl: &Arc<Controller>, sqe: &Sqe, data: Bytes, xfer: u32) -> Reply {
    if !ctrl.enabled() {
        return Reply::status(Status::generic(sc::CMD_SEQ_ERROR));
    }
    // Looked up once: the command runs on it and its metrics go to it.
    let ns = ctrl.subsys.namespace(sqe.nsid());
    let start = (ns.is_some() && crate::metrics::enabled()).then(Instant::now);
    let res = run(ctrl, sqe, ns.as_ref(), data, xfer).await;
    if let (Some(ns), Some(start)) = (&ns, start) {
        let op = OpClass::of_nvm(sqe.opcode());
        let bytes = match op {
            OpClass::Read | OpClass::Write if res.is_ok() => {
                sqe.nlb() as u64 * ns.entry.volume.block_size() as u64
            }
            _ => 0,
        };
        ns.metrics.record(op, bytes, start.elapsed(), res.is_ok());
    }
    match res {
        Ok(r) => r,
        Err(s) => {
            if s.sct == 2 {
                ctrl.stats.media_errors.fetch_add(1, Ordering::Relaxed);
            }
            Reply::status(s)
        }
    }
}

async fn run(
    ctrl: &Arc<Controller>,
    sqe: &Sqe,
    ns: Option<&Arc<Namespace>>,
    data: Bytes,
    xfer: u32,
) -> Result<Reply, Status> {
    match sqe.opcode() {
        nvm::READ => {
            let rw = resolve(ns, sqe)?;
            if rw.bytes > MAX_IO_BYTES as u64 {
                return Err(Status::generic(sc::INVALID_FIELD));
            }
            if (xfer as u64) < rw.bytes {
                return Err(Status::generic(sc::SGL_INVALID_DATA_LEN));
            }
            let d = read(ctrl, &rw).await?;
            ctrl.stats.reads.fetch_add(1, Ordering::Relaxed);
            ctrl.stats.read_blocks.fetch_add(rw.nlb, Ordering::Relaxed);
            Ok(Reply::data(d))
        }
        nvm::WRITE => {
            let rw = resolve(ns, sqe)?;
            if data.len() as u64 != rw.bytes {
                return Err(Status::generic(sc::SGL_INVALID_DATA_LEN));
            }
            write(ctrl, &rw, data, sqe.fua()).await?;
            ctrl.stats.writes.fetch_add(1, Ordering::Relaxed);
            ctrl.stats.write_blocks.fetch_add(rw.nlb, Ordering::Relaxed);
            Ok(Reply::ok())
        }
        nvm::FLUSH => {
            let nsid = sqe.nsid();
            let targets: Vec<Arc<Namespace>> = if nsid == u32::MAX {
                ctrl.subsys.namespaces().values().cloned().collect()
            } else {
                vec![present(ns)?.clone()]
            };
            // Flush belongs to the write command group (as in Linux nvmet).
            for ns in &targets {
                pr::check(ctrl, ns, true).await?;
            }
            for ns in targets {
                ns.entry
                    .volume
                    .flush()
                    .await
                    .map_err(|e| engine_status(&e, true))?;
            }
            Ok(Reply::ok())
        }
        nvm::WRITE_ZEROES => {
            let rw = resolve(ns, sqe)?;
            let v = &rw.ns.entry.volume;
            v.check_range(rw.slba, rw.nlb)
                .map_err(|e| engine_status(&e, true))?;
            control_notices(ctrl).await;
            pr::check(ctrl, rw.ns, true).await?;
            // DEAC: deallocate; our volumes read deallocated blocks as
            // zeros, so both forms end the same.
            if sqe.dw(12) & (1 << 25) != 0 {
                v.discard(rw.slba, rw.nlb)
                    .await
                    .map_err(|e| engine_status(&e, true))?;
            } else {
                let bs = v.block_size() as u64;
                let step = (MAX_IO_BYTES as u64 / bs).max(1);
                let mut at = rw.slba;
                let end = rw.slba + rw.nlb;
                while at < end {
                    let n = step.min(end - at);
                    let z = Bytes::from(vec![0u8; (n * bs) as usize]);
                    v.write(at, z, sqe.fua())
                        .await
                        .map_err(|e| engine_status(&e, true))?;
                    at += n;
                }
            }
            Ok(Reply::ok())
        }
        nvm::DSM => {
            let ns = present(ns)?;
            let nr = (sqe.dw(10) & 0xff) as usize + 1;
            let ranges =
                DsmRange::parse_all(&data, nr).ok_or(Status::generic(sc::SGL_INVALID_DATA_LEN))?;
            // Only the deallocate attribute changes anything.
            if sqe.dw(11) & (1 << 2) != 0 {
                control_notices(ctrl).await;
                pr::check(ctrl, ns, true).await?;
                let v = &ns.entry.volume;
                for r in &ranges {
                    v.check_range(r.slba, r.nlb as u64)
                        .map_err(|e| engine_status(&e, true))?;
                }
                for r in ranges.iter().filter(|r| r.nlb > 0) {
                    v.discard(r.slba, r.nlb as u64)
                        .await
                        .map_err(|e| engine_status(&e, true))?;
                }
            }
            Ok(Reply::ok())
        }
        nvm::COMPARE => {
            let rw = resolve(ns, sqe)?;
            compare(ctrl, &rw, &data).await?;
            Ok(Reply::ok())
        }
        nvm::RESV_REGISTER | nvm::RESV_REPORT | nvm::RESV_ACQUIRE | nvm::RESV_RELEASE => {
            let ns = present(ns)?;
            control_notices(ctrl).await;
            pr::execute(ctrl, ns, sqe, &data, xfer).await
        }
        _ => Err(Status::generic(sc::INVALID_OPCODE)),
    }
}

async fn compare(ctrl: &Arc<Controller>, rw: &Rw<'_>, data: &[u8]) -> Result<(), Status> {
    if data.len() as u64 != rw.bytes || rw.bytes > MAX_IO_BYTES as u64 {
        return Err(Status::generic(sc::SGL_INVALID_DATA_LEN));
    }
    let cur = read(ctrl, rw).await?;
    if cur[..] != data[..] {
        return Err(Status::media(sc::COMPARE_FAILED));
    }
    Ok(())
}

/// Fused Compare (first) and Write (second): the write happens only if
/// the compare matched. Both run under the engine's exclusive range lock,
/// which every other write to the volume (either protocol, fast path or
/// not) respects, so nothing lands between the compare and the write.
pub async fn fused(
    ctrl: &Arc<Controller>,
    first: &Sqe,
    fdata: Bytes,
    second: &Sqe,
    sdata: Bytes,
) -> (Status, Status) {
    if !ctrl.enabled() {
        let s = Status::generic(sc::CMD_SEQ_ERROR);
        return (s, s);
    }
    let aborted = Status::generic(sc::ABORT_FAILED_FUSED);
    if first.opcode() != nvm::COMPARE
        || second.opcode() != nvm::WRITE
        || first.nsid() != second.nsid()
        || first.slba() != second.slba()
        || first.nlb() != second.nlb()
    {
        return (Status::generic(sc::INVALID_FIELD), aborted);
    }
    let ns = ctrl.subsys.namespace(first.nsid());
    let (c, w) = match (resolve(ns.as_ref(), first), resolve(ns.as_ref(), second)) {
        (Ok(c), Ok(w)) => (c, w),
        (Err(s), _) | (_, Err(s)) => return (s, aborted),
    };
    let start = crate::metrics::enabled().then(Instant::now);
    let (a, b) = compare_and_write(ctrl, &c, fdata, second, &w, sdata).await;
    if let Some(start) = start {
        let ok = a == Status::SUCCESS && b == Status::SUCCESS;
        let bytes = if ok { w.bytes } else { 0 };
        c.ns.metrics
            .record(OpClass::Write, bytes, start.elapsed(), ok);
    }
    (a, b)
}

async fn compare_and_write(
    ctrl: &Arc<Controller>,
    c: &Rw<'_>,
    fdata: Bytes,
    second: &Sqe,
    w: &Rw<'_>,
    sdata: Bytes,
) -> (Status, Status) {
    let aborted = Status::generic(sc::ABORT_FAILED_FUSED);
    if sdata.len() as u64 != w.bytes {
        return (Status::generic(sc::SGL_INVALID_DATA_LEN), aborted);
    }
    if fdata.len() as u64 != c.bytes || c.bytes > MAX_IO_BYTES as u64 {
        return (Status::generic(sc::SGL_INVALID_DATA_LEN), aborted);
    }
    let v = &c.ns.entry.volume;
    if let Err(e) = v.check_range(c.slba, c.nlb) {
        return (engine_status(&e, false), aborted);
    }
    control_notices(ctrl).await;
    // The write half needs write access; a host without it fails the
    // compare half too, so nothing is read for it.
    if let Err(s) = pr::check(ctrl, c.ns, true).await {
        return (s, aborted);
    }
    let guard = v.lock_exclusive(c.slba, c.nlb).await;
    let cur = match v.read(c.slba, c.nlb).await {
        Ok(d) => d,
        Err(e) => return (engine_status(&e, false), aborted),
    };
    if cur[..] != fdata[..] {
        return (Status::media(sc::COMPARE_FAILED), aborted);
    }
    let fua = second.fua() || !ctrl.vwc.load(Ordering::Acquire);
    match v.write_locked(&guard, w.slba, sdata, fua).await {
        Ok(()) => {
            ctrl.stats.writes.fetch_add(1, Ordering::Relaxed);
            ctrl.stats.write_blocks.fetch_add(w.nlb, Ordering::Relaxed);
            (Status::SUCCESS, Status::SUCCESS)
        }
        Err(e) => (aborted, engine_status(&e, true)),
    }
}

/// Takes pending engine notices for this controller (the control path's
/// first job, as SCSI reports unit attentions).
async fn control_notices(ctrl: &Controller) {
    ctrl.drain_notices().await;
}

async fn read(ctrl: &Controller, rw: &Rw<'_>) -> Result<Bytes, Status> {
    let e = &rw.ns.entry;
    match e
        .control
        .exposure()
        .admit(ctrl.nexus, IoKind::Read, rw.slba, rw.nlb)
    {
        Ok(a) => a.read().await.map_err(|e| engine_status(&e, false)),
        Err(_) => {
            control_notices(ctrl).await;
            pr::check(ctrl, rw.ns, false).await?;
            e.volume
                .read(rw.slba, rw.nlb)
                .await
                .map_err(|e| engine_status(&e, false))
        }
    }
}

async fn write(ctrl: &Controller, rw: &Rw<'_>, data: Bytes, fua: bool) -> Result<(), Status> {
    let e = &rw.ns.entry;
    // With the volatile write cache off, every write is durable.
    let fua = fua || !ctrl.vwc.load(Ordering::Acquire);
    match e
        .control
        .exposure()
        .admit(ctrl.nexus, IoKind::Write, rw.slba, rw.nlb)
    {
        Ok(a) => a
            .write(data, fua)
            .await
            .map_err(|e| engine_status(&e, true)),
        Err(_) => {
            control_notices(ctrl).await;
            pr::check(ctrl, rw.ns, true).await?;
            e.volume
                .write(rw.slba, data, fua)
                .await
                .map_err(|e| engine_status(&e, true))
        }
    }
}
