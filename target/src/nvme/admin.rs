//! Admin commands: Identify, Get Log Page, Set/Get Features, Asynchronous
//! Event Request, Keep Alive and Abort. Fabrics commands are in queue.rs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use vtgt_engine::PrRequest;
use vtgt_protocol::nvme::command::{admin as op, feat, sc, Sqe, Status};
use vtgt_protocol::nvme::identify::{
    self, cns, cntrltype, oncs, rescap, IdentifyController, IdentifyNamespace, NsDesc,
};
use vtgt_protocol::nvme::log::{self, lid, GetLogPage, Smart};

use super::controller::{Controller, AER_LIMIT, ERROR_LOG_ENTRIES, RESV_MASK_BITS};
use super::queue::{Reply, Responder};
use super::{discovery, Namespace, NvmeShared, IN_CAPSULE, MAX_IO_QUEUES, MDTS, QUEUE_ENTRIES};

pub const FIRMWARE: &str = "0.1";

/// Cuts controller-to-host data to the host's buffer.
fn fit(mut v: Vec<u8>, xfer: u32) -> Reply {
    v.truncate(xfer as usize);
    Reply::data(Bytes::from(v))
}

pub async fn execute(
    shared: &Arc<NvmeShared>,
    ctrl: &Arc<Controller>,
    resp: &Responder,
    local: SocketAddr,
    sqe: &Sqe,
    data: &[u8],
    xfer: u32,
) -> Reply {
    let opc = sqe.opcode();
    // Before CC.EN/CSTS.RDY only Fabrics commands are allowed.
    if !ctrl.enabled() {
        return Reply::status(Status::generic(sc::CMD_SEQ_ERROR));
    }
    match opc {
        op::IDENTIFY => identify(ctrl, sqe, xfer),
        op::GET_LOG_PAGE => get_log_page(shared, ctrl, local, sqe, xfer),
        op::SET_FEATURES => set_features(ctrl, sqe, data).await,
        op::GET_FEATURES => get_features(ctrl, sqe, xfer).await,
        op::ASYNC_EVENT => match ctrl.add_aer(sqe.cid()) {
            Err(s) => Reply::status(s),
            Ok(None) => Reply::Deferred,
            Ok(Some((cid, dw0))) => {
                // An event was waiting: it completes the oldest AER, which
                // may be an earlier one.
                if cid == sqe.cid() {
                    Reply::result(dw0 as u64)
                } else {
                    resp.complete(cid, Status::SUCCESS, dw0 as u64).await;
                    Reply::Deferred
                }
            }
        },
        op::KEEP_ALIVE => {
            ctrl.touch();
            Reply::ok()
        }
        // Commands finish quickly here; report "not aborted" (DW0 bit 0).
        op::ABORT => Reply::result(1),
        _ => Reply::status(Status::generic(sc::INVALID_OPCODE)),
    }
}

pub fn controller_data(ctrl: &Controller) -> IdentifyController {
    let s = &ctrl.subsys;
    let disc = s.discovery;
    IdentifyController {
        vid: 0,
        ssvid: 0,
        serial: s.serial.clone(),
        model: if disc {
            "vtgt discovery".into()
        } else {
            "vtgt".into()
        },
        firmware: FIRMWARE.into(),
        mdts: MDTS,
        cntlid: ctrl.cntlid,
        ver: vtgt_protocol::nvme::fabrics::VS_1_4,
        oaes: if disc { 0 } else { 1 << 8 },
        cntrltype: if disc {
            cntrltype::DISCOVERY
        } else {
            cntrltype::IO
        },
        acl: 3,
        aerl: (AER_LIMIT - 1) as u8,
        // Extended data for Get Log Page (required on fabrics).
        lpa: 1 << 2,
        elpe: (ERROR_LOG_ENTRIES - 1) as u8,
        kas: 1,
        maxcmd: QUEUE_ENTRIES,
        // The highest NSID a namespace may get, live additions included
        // (as nvmet reports its own limit).
        nn: if disc { 0 } else { super::config::MAX_NSID },
        oncs: if disc {
            0
        } else {
            oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES | oncs::RESERVATIONS
        },
        fuses: if disc { 0 } else { 1 },
        vwc: if disc { 0 } else { 1 },
        // SGLs supported; address as offset for in-capsule data.
        sgls: 1 | (1 << 20),
        subnqn: s.nqn.clone(),
        ioccsz: (64 + IN_CAPSULE) / 16,
        iorcsz: 1,
        icdoff: 0,
        msdbd: 1,
        // Several controllers (hosts, paths) may share the subsystem.
        cmic: if disc { 0 } else { 1 << 1 },
    }
}

fn identify(ctrl: &Controller, sqe: &Sqe, xfer: u32) -> Reply {
    let c = (sqe.dw(10) & 0xff) as u8;
    let csi = (sqe.dw(11) >> 24) as u8;
    let nsid = sqe.nsid();
    let subsys = &ctrl.subsys;
    if subsys.discovery && c != cns::CONTROLLER {
        return Reply::status(Status::generic(sc::INVALID_FIELD));
    }
    let ns = subsys.namespace(nsid);
    let need_ns = || {
        if nsid == 0 || nsid == u32::MAX {
            Err(Reply::status(Status::generic(sc::INVALID_NS)))
        } else {
            Ok(ns)
        }
    };
    match c {
        cns::CONTROLLER => fit(controller_data(ctrl).encode(), xfer),
        cns::NAMESPACE => match need_ns() {
            Err(r) => r,
            // An inactive NSID reads as zeros.
            Ok(None) => fit(vec![0; identify::IDENTIFY_LEN], xfer),
            Ok(Some(ns)) => {
                let v = &ns.entry.volume;
                let n = v.num_blocks();
                let d = IdentifyNamespace {
                    nsze: n,
                    ncap: n,
                    nuse: n,
                    // Thin provisioned; deallocated blocks read as zeros.
                    nsfeat: 1,
                    lbads: v.block_size().trailing_zeros() as u8,
                    nmic: 1,
                    rescap: rescap::ALL_TYPES | rescap::PTPL | rescap::IEKEY,
                    dlfeat: 1,
                    nguid: ns.nguid(),
                    eui64: ns.eui64(),
                };
                fit(d.encode(), xfer)
            }
        },
        cns::ACTIVE_NS_LIST => {
            if nsid >= 0xffff_fffe {
                return Reply::status(Status::generic(sc::INVALID_NS));
            }
            let ids: Vec<u32> = subsys.namespaces().keys().copied().collect();
            fit(identify::encode_ns_list(&ids, nsid), xfer)
        }
        cns::NS_DESC_LIST => match need_ns() {
            Err(r) => r,
            Ok(None) => Reply::status(Status::generic(sc::INVALID_NS)),
            Ok(Some(ns)) => fit(
                identify::encode_ns_descs(&[
                    NsDesc::Eui64(ns.eui64()),
                    NsDesc::Nguid(ns.nguid()),
                    NsDesc::Uuid(ns.uuid()),
                    NsDesc::Csi(0),
                ]),
                xfer,
            ),
        },
        // NVM command set specific structures: nothing beyond zeros.
        cns::CS_NAMESPACE if csi == 0 => match need_ns() {
            Err(r) => r,
            Ok(_) => fit(vec![0; identify::IDENTIFY_LEN], xfer),
        },
        cns::CS_CONTROLLER if csi == 0 => fit(vec![0; identify::IDENTIFY_LEN], xfer),
        cns::CS_INDEP_NAMESPACE => match need_ns() {
            Err(r) => r,
            Ok(None) => fit(vec![0; identify::IDENTIFY_LEN], xfer),
            Ok(Some(_)) => fit(identify::encode_cs_indep_ns(1), xfer),
        },
        cns::CS_SETS => fit(identify::encode_cs_sets(), xfer),
        _ => Reply::status(Status::generic(sc::INVALID_FIELD)),
    }
}

fn get_log_page(
    shared: &NvmeShared,
    ctrl: &Controller,
    local: SocketAddr,
    sqe: &Sqe,
    xfer: u32,
) -> Reply {
    let g = GetLogPage::parse(sqe);
    // Never build more than the host's buffer.
    let len = g.len.min(xfer as u64) as usize;
    let page: Vec<u8> = match (g.lid, ctrl.subsys.discovery) {
        (lid::DISCOVERY, true) => discovery::log_page(shared, ctrl, local),
        (_, true) => return Reply::status(Status::specific(sc::INVALID_LOG_PAGE)),
        (lid::ERROR_INFO, false) => {
            let mut p = Vec::with_capacity(ERROR_LOG_ENTRIES * log::ERROR_ENTRY_LEN);
            for e in ctrl.errors() {
                p.extend_from_slice(&e.encode());
            }
            p.resize(ERROR_LOG_ENTRIES * log::ERROR_ENTRY_LEN, 0);
            p
        }
        (lid::SMART, false) => {
            let st = &ctrl.stats;
            Smart {
                critical_warning: 0,
                temperature: 300,
                avail_spare: 100,
                spare_thresh: 10,
                percent_used: 0,
                data_units_read: st.read_blocks.load(Ordering::Relaxed) / 1000,
                data_units_written: st.write_blocks.load(Ordering::Relaxed) / 1000,
                host_reads: st.reads.load(Ordering::Relaxed),
                host_writes: st.writes.load(Ordering::Relaxed),
                power_on_hours: ctrl.created.elapsed().as_secs() / 3600,
                media_errors: st.media_errors.load(Ordering::Relaxed),
            }
            .encode()
        }
        (lid::FW_SLOT, false) => log::encode_fw_slot(FIRMWARE),
        (lid::CHANGED_NS, false) => log::encode_changed_ns(&ctrl.take_changed(g.rae)),
        (lid::RESV_NOTIFICATION, false) => ctrl.take_resv_log(g.rae),
        _ => return Reply::status(Status::specific(sc::INVALID_LOG_PAGE)),
    };
    match log::window(&page, g.offset, len) {
        Some(v) => Reply::data(Bytes::from(v)),
        None => Reply::status(Status::generic(sc::INVALID_FIELD)),
    }
}

async fn set_features(ctrl: &Controller, sqe: &Sqe, data: &[u8]) -> Reply {
    let d10 = sqe.dw(10);
    let fid = d10 as u8;
    let d11 = sqe.dw(11);
    if d10 & (1 << 31) != 0 {
        return Reply::status(Status::specific(sc::FEAT_NOT_SAVEABLE));
    }
    let _ = data;
    match fid {
        feat::NUM_QUEUES => {
            let nsqr = d11 & 0xffff;
            let ncqr = d11 >> 16;
            if nsqr == 0xffff || ncqr == 0xffff {
                return Reply::status(Status::generic(sc::INVALID_FIELD));
            }
            let n = (nsqr.min(ncqr) + 1).min(MAX_IO_QUEUES as u32) as u16;
            ctrl.io_queues.store(n, Ordering::Release);
            let v = (n - 1) as u64;
            Reply::result(v | (v << 16))
        }
        feat::ASYNC_EVENT => {
            ctrl.aec.store(d11, Ordering::Release);
            Reply::ok()
        }
        feat::KATO => {
            ctrl.set_kato(d11);
            Reply::ok()
        }
        feat::VOLATILE_WC => {
            ctrl.vwc.store(d11 & 1 != 0, Ordering::Release);
            Reply::ok()
        }
        // On fabrics the host identifier comes with Connect.
        feat::HOST_ID => Reply::status(Status::generic(sc::CMD_SEQ_ERROR)),
        feat::RESV_MASK => {
            if d11 & !RESV_MASK_BITS != 0 {
                return Reply::status(Status::generic(sc::INVALID_FIELD));
            }
            let targets = match resv_namespaces(ctrl, sqe.nsid(), true) {
                Ok(t) => t,
                Err(r) => return r,
            };
            let mut m = ctrl.resv_mask.lock();
            for ns in targets {
                m.insert(ns.nsid, d11);
            }
            Reply::ok()
        }
        feat::RESV_PERSIST => {
            let on = d11 & 1 != 0;
            let targets = match resv_namespaces(ctrl, sqe.nsid(), true) {
                Ok(t) => t,
                Err(r) => return r,
            };
            for ns in targets {
                let r = ns
                    .entry
                    .control
                    .reservation_out(ctrl.nexus, PrRequest::Persist { aptpl: on })
                    .await;
                if r.is_err() {
                    return Reply::status(Status::generic(sc::INTERNAL));
                }
            }
            Reply::ok()
        }
        _ => Reply::status(Status::generic(sc::INVALID_FIELD)),
    }
}

/// Namespaces a namespace-scoped feature names: one, or all for
/// FFFFFFFFh when `all_ok`.
fn resv_namespaces(
    ctrl: &Controller,
    nsid: u32,
    all_ok: bool,
) -> Result<Vec<Arc<Namespace>>, Reply> {
    let s = &ctrl.subsys;
    if nsid == u32::MAX && all_ok {
        return Ok(s.namespaces().values().cloned().collect());
    }
    s.namespace(nsid)
        .map(|n| vec![n])
        .ok_or(Reply::status(Status::generic(sc::INVALID_NS)))
}

async fn get_features(ctrl: &Controller, sqe: &Sqe, xfer: u32) -> Reply {
    let d10 = sqe.dw(10);
    let fid = d10 as u8;
    let sel = (d10 >> 8) & 7;
    if sel == 3 {
        // Supported capabilities: changeable, not saveable; the reservation
        // features are also namespace specific.
        let ns_specific = matches!(fid, feat::RESV_MASK | feat::RESV_PERSIST);
        return Reply::result((1 << 2) | ((ns_specific as u64) << 1));
    }
    let default = sel == 1;
    match fid {
        feat::NUM_QUEUES => {
            let n = if default {
                MAX_IO_QUEUES
            } else {
                ctrl.io_queues.load(Ordering::Acquire)
            } as u64
                - 1;
            Reply::result(n | (n << 16))
        }
        feat::ASYNC_EVENT => Reply::result(if default {
            0
        } else {
            ctrl.aec.load(Ordering::Acquire) as u64
        }),
        feat::KATO => Reply::result(if default {
            0
        } else {
            ctrl.kato().as_millis() as u64
        }),
        feat::VOLATILE_WC => Reply::result(if default {
            1
        } else {
            ctrl.vwc.load(Ordering::Acquire) as u64
        }),
        feat::HOST_ID => {
            // Only the 128-bit form exists on fabrics.
            if sqe.dw(11) & 1 == 0 {
                return Reply::status(Status::generic(sc::INVALID_FIELD));
            }
            fit(ctrl.hostid.to_vec(), xfer)
        }
        feat::RESV_MASK => {
            if default {
                return Reply::result(0);
            }
            match resv_namespaces(ctrl, sqe.nsid(), false) {
                Ok(ns) => {
                    let m = ctrl.resv_mask.lock();
                    let v = ns
                        .iter()
                        .map(|n| m.get(&n.nsid).copied().unwrap_or(0))
                        .fold(0, |a, b| a | b);
                    Reply::result(v as u64)
                }
                Err(r) => r,
            }
        }
        feat::RESV_PERSIST => {
            if default {
                return Reply::result(0);
            }
            match resv_namespaces(ctrl, sqe.nsid(), false) {
                Ok(ns) => {
                    let mut on = false;
                    for n in ns {
                        on |= n.entry.control.reservations(|r| r.aptpl).await;
                    }
                    Reply::result(on as u64)
                }
                Err(r) => r,
            }
        }
        _ => Reply::status(Status::generic(sc::INVALID_FIELD)),
    }
}
