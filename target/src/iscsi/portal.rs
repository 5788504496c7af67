//! Network portals: accept loops and the life of one connection from login
//! to close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use vtgt_protocol::iscsi::pdu::{Digests, FrameConfig};

use super::conn::{Conn, PduReader, QUEUE_DEPTH};
use super::login;
use super::session::SessionRegistry;
use super::writer::{self, Window};
use crate::config::ChapConfig;
use crate::target::{NexusRegistry, Target};

#[derive(Debug, Clone)]
pub struct PortalInfo {
    /// The address actually bound.
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub tpgt: u16,
    /// Relative target port identifier (1-based, unique per vtgt).
    pub relative_id: u16,
}

/// State every iSCSI connection shares.
#[derive(Debug)]
pub struct IscsiShared {
    pub targets: ArcSwap<Vec<Arc<Target>>>,
    pub portals: Vec<PortalInfo>,
    pub nexus: NexusRegistry,
    pub sessions: SessionRegistry,
    pub nop_interval: Duration,
    pub discovery_chap: Option<ChapConfig>,
    pub shutdown: CancellationToken,
}

impl IscsiShared {
    pub fn target(&self, name: &str) -> Option<Arc<Target>> {
        self.targets
            .load()
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .cloned()
    }
}

pub async fn serve(listener: TcpListener, portal: PortalInfo, shared: Arc<IscsiShared>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let portal = portal.clone();
                    let shared = shared.clone();
                    tokio::spawn(async move { connection(stream, peer, portal, shared).await });
                }
                Err(e) => {
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shared.shutdown.cancelled() => break,
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    portal: PortalInfo,
    shared: Arc<IscsiShared>,
) {
    // Without NODELAY, Nagle plus delayed ACKs stall small PDU exchanges.
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(portal.listen);
    let (rd, mut wr) = stream.into_split();
    let mut reader = PduReader::new(
        rd,
        FrameConfig {
            digests: Digests::default(),
            max_data_segment: login::LOGIN_MAX_SEGMENT,
        },
    );
    let outcome = tokio::select! {
        o = tokio::time::timeout(login::LOGIN_TIMEOUT, login::run(&mut reader, &mut wr, &shared, &portal, peer)) => match o {
            Ok(Some(o)) => o,
            _ => return,
        },
        _ = shared.shutdown.cancelled() => return,
    };
    let session = outcome.session.clone();
    info!(
        initiator = %session.initiator, target = %session.target, %peer,
        tsih = session.tsih, discovery = session.discovery, "session logged in"
    );
    let params = outcome.params;
    reader.cfg = FrameConfig {
        digests: Digests {
            header: params.header_digest,
            data: params.data_digest,
        },
        max_data_segment: params.max_recv,
    };
    let window = Window::new(outcome.exp_cmdsn, QUEUE_DEPTH);
    let (tx, rx) = mpsc::channel(1024);
    let wtask = tokio::spawn(writer::run(
        wr,
        rx,
        window.clone(),
        reader.cfg.digests,
        outcome.statsn,
    ));
    let mut conn = Conn::new(
        shared.clone(),
        portal,
        local,
        session.clone(),
        outcome.target,
        params,
        tx,
        window,
    );
    conn.run(&mut reader).await;
    // Outstanding tasks of a closed connection are aborted (ERL 0).
    session.abort_tasks(|_, _| true);
    // The I_T nexus is gone with its only connection: its SPC-2
    // reservations end. Done before `done`, so a reinstating login cannot
    // have reserved yet.
    if let Some(t) = conn.target.clone() {
        for lu in t.luns().values() {
            crate::scsi::pr::nexus_lost(lu, session.nexus).await;
        }
    }
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(5), wtask).await;
    shared.sessions.remove(&session);
    session.done.cancel();
    info!(initiator = %session.initiator, tsih = session.tsih, "session closed");
}
