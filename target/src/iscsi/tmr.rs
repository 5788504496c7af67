//! Task management functions (RFC 7143 §11.5, SAM-5 §7).

use bytes::Bytes;
use vtgt_protocol::iscsi::pdu::{self, sn_le, sn_lt, tmf, Pdu};

use super::conn::Conn;
use super::decode_lun;
use super::writer::Stamp;
use crate::scsi;

pub async fn handle(conn: &mut Conn, p: &Pdu) {
    let req = pdu::TaskMgmtRequest::parse(&p.bhs);
    let response = run(conn, &req).await;
    // Aborted transfers gave their R2T budget back: feed any starved ones.
    conn.release_budget(0).await;
    let rsp = pdu::TaskMgmtResponse {
        response,
        itt: req.itt,
        ..Default::default()
    };
    conn.send(Pdu::new(rsp.to_bhs(), Bytes::new()), Stamp::Status)
        .await;
    if req.function == tmf::TARGET_COLD_RESET && response == tmf::FUNCTION_COMPLETE {
        // A cold reset ends every session of the target, ours included,
        // after the response has gone out.
        if let Some(t) = &conn.target {
            for s in conn.shared.sessions.of_target(&t.name) {
                s.kill.cancel();
            }
        }
    }
}

async fn run(conn: &mut Conn, req: &pdu::TaskMgmtRequest) -> u8 {
    let Some(target) = conn.target.clone() else {
        return tmf::FUNCTION_REJECTED;
    };
    let lun = decode_lun(req.lun);
    let lu = lun.and_then(|l| target.lun(l));
    match req.function {
        tmf::ABORT_TASK => {
            let aborted = conn
                .session
                .abort_tasks(|itt, t| itt == req.rtt && t.lun == req.lun);
            if !aborted.is_empty() {
                conn.drop_transfers(&aborted);
                return tmf::FUNCTION_COMPLETE;
            }
            // RFC 7143 §11.5.1: a referenced command not yet received is
            // treated as received; one outside the window does not exist.
            let exp = conn.window.exp();
            if sn_le(exp, req.ref_cmdsn)
                && sn_le(req.ref_cmdsn, conn.window.announced())
                && sn_lt(req.ref_cmdsn, req.cmdsn)
            {
                conn.plug_hole(req.ref_cmdsn);
                tmf::FUNCTION_COMPLETE
            } else {
                tmf::TASK_DOES_NOT_EXIST
            }
        }
        tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET => {
            if lu.is_none() {
                return tmf::LUN_DOES_NOT_EXIST;
            }
            let aborted = conn.session.abort_tasks(|_, t| t.lun == req.lun);
            conn.drop_transfers(&aborted);
            if req.function == tmf::CLEAR_TASK_SET {
                for s in conn.shared.sessions.of_target(&target.name) {
                    s.abort_tasks(|_, t| t.lun == req.lun);
                }
            }
            tmf::FUNCTION_COMPLETE
        }
        tmf::LOGICAL_UNIT_RESET => {
            let Some(lu) = lu else {
                return tmf::LUN_DOES_NOT_EXIST;
            };
            let aborted = conn.session.abort_tasks(|_, t| t.lun == req.lun);
            conn.drop_transfers(&aborted);
            for s in conn.shared.sessions.of_target(&target.name) {
                s.abort_tasks(|_, t| t.lun == req.lun);
            }
            scsi::lun_reset(&lu, conn.session.nexus).await;
            tmf::FUNCTION_COMPLETE
        }
        tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
            let aborted = conn.session.abort_tasks(|_, _| true);
            conn.drop_transfers(&aborted);
            for s in conn.shared.sessions.of_target(&target.name) {
                s.abort_tasks(|_, _| true);
            }
            for lu in target.luns().values() {
                scsi::lun_reset(lu, conn.session.nexus).await;
                if req.function == tmf::TARGET_COLD_RESET {
                    // A cold reset is a power cycle as far as hosts know.
                    lu.control()
                        .raise_all(vtgt_engine::Notice::PowerOn, None)
                        .await;
                }
            }
            tmf::FUNCTION_COMPLETE
        }
        tmf::CLEAR_ACA => tmf::FUNCTION_NOT_SUPPORTED,
        tmf::TASK_REASSIGN => tmf::REASSIGN_NOT_SUPPORTED,
        _ => tmf::FUNCTION_REJECTED,
    }
}
