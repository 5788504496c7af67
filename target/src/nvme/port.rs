//! NVMe/TCP ports: accept loops. Every connection is a queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::debug;

use super::{queue, NvmeShared, PortInfo};

pub async fn serve(listener: TcpListener, port: PortInfo, shared: Arc<NvmeShared>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let port = port.clone();
                    let shared = shared.clone();
                    tokio::spawn(async move { queue::serve(stream, peer, port, shared).await });
                }
                Err(e) => {
                    debug!("NVMe accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shared.shutdown.cancelled() => break,
        }
    }
}

/// Binds the configured NVMe/TCP ports and starts their accept loops.
pub async fn start(
    cfg: &crate::config::Config,
    volumes: &std::collections::HashMap<String, crate::server::VolumeEntry>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<(Arc<NvmeShared>, Vec<std::net::SocketAddr>)> {
    use anyhow::Context;
    let subsystems = super::build_subsystems(&cfg.subsystems, volumes)?;
    if cfg.nvme.listen.is_empty() && !subsystems.is_empty() {
        tracing::warn!("NVMe subsystems are configured but nvme.listen is empty: NVMe/TCP is off");
    }
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    for p in &cfg.nvme.listen {
        let l = TcpListener::bind(p.listen())
            .await
            .with_context(|| format!("cannot listen on {} (NVMe/TCP port)", p.listen()))?;
        ports.push(PortInfo {
            listen: l.local_addr()?,
            advertise: p.advertise().map(str::to_string),
            portid: ports.len() as u16 + 1,
        });
        listeners.push(l);
    }
    let shared = NvmeShared::new(subsystems, ports.clone());
    for (l, p) in listeners.into_iter().zip(ports.iter()) {
        tracing::info!(listen = %p.listen, "NVMe/TCP port up");
        tasks.push(tokio::spawn(serve(l, p.clone(), shared.clone())));
    }
    Ok((shared, ports.iter().map(|p| p.listen).collect()))
}
