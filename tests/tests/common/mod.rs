//! Shared helpers for the loopback integration tests: in-process servers,
//! login shortcuts, CDB builders, a raw PDU connection and data patterns.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vtgt::config::{
    BackendKind, Config, IscsiConfig, LunConfig, PortalConfig, TargetConfig, VolumeConfig,
};
use vtgt::server::Server;
use vtgt_initiator::iscsi::{CommandResult, DataDir, LoginConfig, Session, SessionError};
use vtgt_protocol::iscsi::login::{
    InitiatorConfig, InitiatorLogin, LoginProgress, LoginResponseInfo, SessionParams, Stage,
};
use vtgt_protocol::iscsi::pdu::{self, Digests, FrameConfig, Opcode, Pdu};

pub const TARGET: &str = "iqn.2026-11.org.vtgt:itest";
pub const INITIATOR: &str = "iqn.2026-11.org.vtgt.host:a";
pub const INITIATOR_B: &str = "iqn.2026-11.org.vtgt.host:b";
pub const BLOCK: usize = 512;
/// Size of the default test volume.
pub const VOLUME_BYTES: u64 = 16 << 20;
pub const VOLUME_BLOCKS: u64 = VOLUME_BYTES / BLOCK as u64;
/// Upper bound for any single step that could hang.
pub const STEP: Duration = Duration::from_secs(10);

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;

/// Panics if `f` does not finish within [`STEP`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

pub fn volume(name: &str, size: u64) -> VolumeConfig {
    VolumeConfig {
        name: name.into(),
        backend: BackendKind::Memory,
        path: None,
        size: Some(size.to_string()),
        block_size: BLOCK as u32,
        layout: None,
        journal: None,
    }
}

pub fn target(name: &str, volume: &str) -> TargetConfig {
    TargetConfig {
        name: name.into(),
        alias: Some("itest".into()),
        luns: vec![LunConfig {
            id: 0,
            volume: volume.into(),
            write_protect: false,
            removable: false,
            sanitize_rate_mib: 0,
        }],
        allowed_initiators: vec![],
        chap: None,
        initiator_chap: vec![],
        port_groups: vec![],
    }
}

/// One iSCSI portal on an ephemeral loopback port, NOP pings off.
pub fn loopback_iscsi() -> IscsiConfig {
    IscsiConfig {
        portals: vec![PortalConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            portal_group: 1,
        }],
        nop_interval_secs: 0,
        discovery_chap: None,
    }
}

/// One memory volume exported as LUN 0 of [`TARGET`], portal on an
/// ephemeral loopback port, NOP pings off.
pub fn mem_config() -> Config {
    Config {
        data_dir: std::env::temp_dir(),
        iscsi: loopback_iscsi(),
        volumes: vec![volume("v0", VOLUME_BYTES)],
        targets: vec![target(TARGET, "v0")],
        nvme: Default::default(),
        subsystems: vec![],
    }
}

/// Like [`mem_config`] but the volume is a file at `path`.
pub fn file_config(path: PathBuf, size: u64) -> Config {
    let mut c = mem_config();
    c.data_dir = path.parent().unwrap().to_path_buf();
    c.volumes = vec![VolumeConfig {
        name: "v0".into(),
        backend: BackendKind::File,
        path: Some(path),
        size: Some(size.to_string()),
        block_size: BLOCK as u32,
        layout: None,
        journal: None,
    }];
    c
}

pub async fn start(cfg: Config) -> (Server, SocketAddr) {
    cfg.validate().expect("test config is valid");
    let s = within("server start", Server::start(cfg))
        .await
        .expect("server starts");
    let addr = s.iscsi_addrs[0];
    assert!(addr.ip().is_loopback());
    (s, addr)
}

pub async fn start_mem() -> (Server, SocketAddr) {
    start(mem_config()).await
}

static NEXT_ISID: AtomicU32 = AtomicU32::new(1);

/// A login config with a deterministic, process-unique ISID.
pub fn lcfg(initiator: &str, target: Option<&str>) -> LoginConfig {
    let mut c = LoginConfig::new(initiator, target);
    let n = NEXT_ISID.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    c.isid = [0x80, 0x00, n[0], n[1], n[2], n[3]];
    c
}

pub async fn login_with(addr: SocketAddr, cfg: LoginConfig) -> Session {
    within("login", Session::login(addr, cfg))
        .await
        .expect("login succeeds")
}

pub async fn login(addr: SocketAddr, initiator: &str) -> Session {
    login_with(addr, lcfg(initiator, Some(TARGET))).await
}

pub async fn try_login(addr: SocketAddr, cfg: LoginConfig) -> Result<Session, SessionError> {
    within("login attempt", Session::login(addr, cfg)).await
}

/// LUN field for LUN `n` (peripheral addressing, n < 256).
pub fn lun(n: u64) -> u64 {
    n << 48
}

// ---- CDBs ---------------------------------------------------------------

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn write10(lba: u32, blocks: u16, fua: bool) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = 0x2a;
    if fua {
        c[1] = 0x08;
    }
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn write16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x8a;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn sync_cache10() -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = 0x35;
    c
}

pub fn test_unit_ready() -> Vec<u8> {
    vec![0u8; 6]
}

// ---- data patterns ------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*) for `seed`.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = BytesMut::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out.freeze()
}

/// FNV-1a over `data`; used to compare large buffers with short messages.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        panic!(
            "{what}: data differs from byte {first} (checksum {:#x} vs {:#x})",
            checksum(got),
            checksum(want)
        );
    }
}

pub fn assert_good(what: &str, r: &CommandResult) {
    assert_eq!(
        (r.response, r.status),
        (0, GOOD),
        "{what}: not GOOD, sense {:?}",
        r.sense_key()
    );
}

/// WRITE(10) of `data` at `lba`; asserts GOOD.
pub async fn write_at(s: &Session, lba: u32, data: Bytes) {
    assert_eq!(data.len() % BLOCK, 0);
    let blocks = (data.len() / BLOCK) as u16;
    let n = data.len() as u32;
    let r = within(
        "write",
        s.command(0, &write10(lba, blocks, false), DataDir::Write, n, data),
    )
    .await
    .expect("write completes");
    assert_good("write", &r);
}

/// READ(10) of `blocks` at `lba`; asserts GOOD and full length.
pub async fn read_at(s: &Session, lba: u32, blocks: u16) -> Bytes {
    let n = blocks as u32 * BLOCK as u32;
    let r = within(
        "read",
        s.command(0, &read10(lba, blocks), DataDir::Read, n, Bytes::new()),
    )
    .await
    .expect("read completes");
    assert_good("read", &r);
    assert_eq!(r.data.len(), n as usize, "read length");
    r.data
}

/// Writes a small pattern and reads it back: the session is healthy.
pub async fn check_healthy(s: &Session, lba: u32, seed: u64) {
    let d = pattern(seed, 4096);
    write_at(s, lba, d.clone()).await;
    let got = read_at(s, lba, 8).await;
    assert_same("healthy session round trip", &got, &d);
}

// ---- raw connection -----------------------------------------------------

/// A logged-in connection driven PDU by PDU, for hostile input.
pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
    pub digests: Digests,
    pub params: SessionParams,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

/// What a read on a raw connection produced.
#[derive(Debug)]
pub enum Got {
    Pdu(Box<Pdu>),
    Closed,
    Silent,
}

impl RawConn {
    /// Logs in to [`TARGET`] as `initiator` proposing `keys`.
    pub async fn login(addr: SocketAddr, initiator: &str, keys: &[(&str, &str)]) -> RawConn {
        within("raw login", Self::login_inner(addr, initiator, keys)).await
    }

    async fn login_inner(addr: SocketAddr, initiator: &str, keys: &[(&str, &str)]) -> RawConn {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut icfg = InitiatorConfig::normal(initiator, TARGET);
        let n = NEXT_ISID.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        icfg.isid = [0x80, 0x00, n[0], n[1], n[2], n[3]];
        icfg.itt = 1;
        icfg.cmdsn = 1;
        for (k, v) in keys {
            icfg.set_key(k, v);
        }
        let mut login = InitiatorLogin::new(icfg);
        let fcfg = FrameConfig {
            digests: Digests::default(),
            max_data_segment: 1 << 20,
        };
        let mut buf = BytesMut::new();
        let mut exp_statsn = 0u32;
        let params = loop {
            let req = login.next_request().expect("a login request");
            let hdr = req.header(exp_statsn);
            let mut out = BytesMut::new();
            Pdu::new(hdr.to_bhs(), Bytes::from(req.data)).encode(&mut out, Digests::default());
            stream.write_all(&out).await.unwrap();
            let p = read_one(&mut stream, &mut buf, &fcfg)
                .await
                .expect("login response");
            assert_eq!(p.bhs.opcode(), Some(Opcode::LoginResponse));
            let r = pdu::LoginResponseHdr::parse(&p.bhs);
            assert_eq!(r.status_class, 0, "raw login refused");
            exp_statsn = r.statsn.wrapping_add(1);
            let info = LoginResponseInfo {
                transit: r.transit,
                cont: r.cont,
                csg: Stage::from_bits(r.csg).unwrap(),
                nsg: Stage::from_bits(r.nsg).unwrap(),
                status_class: r.status_class,
                status_detail: r.status_detail,
                tsih: r.tsih,
                stat_sn: r.statsn,
                data: &p.data,
            };
            match login.handle_response(&info).expect("login progresses") {
                LoginProgress::Continue => {}
                LoginProgress::Complete(p) => break p,
            }
        };
        RawConn {
            stream,
            buf,
            digests: Digests {
                header: params.header_digest,
                data: params.data_digest,
            },
            params,
            cmdsn: 1,
            exp_statsn,
        }
    }

    pub async fn send(&mut self, p: &Pdu) {
        let mut out = BytesMut::new();
        p.encode(&mut out, self.digests);
        self.send_bytes(&out).await;
    }

    /// Writes bytes; a connection the target already closed is not an error
    /// here (the caller checks for the close).
    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    /// The next PDU, or Closed, or Silent if nothing came within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Got {
        let cfg = FrameConfig {
            digests: self.digests,
            max_data_segment: 1 << 20,
        };
        match tokio::time::timeout(wait, read_one(&mut self.stream, &mut self.buf, &cfg)).await {
            Err(_) => Got::Silent,
            Ok(None) => Got::Closed,
            Ok(Some(p)) => {
                if matches!(
                    p.bhs.opcode(),
                    Some(Opcode::ScsiResponse)
                        | Some(Opcode::NopIn)
                        | Some(Opcode::Reject)
                        | Some(Opcode::TaskMgmtResponse)
                ) {
                    self.exp_statsn = p.bhs.u32_at(24).wrapping_add(1);
                }
                Got::Pdu(Box::new(p))
            }
        }
    }

    /// Reads PDUs until the target closes the connection; returns them, or
    /// panics if the connection is still open after `wait`.
    pub async fn expect_close(&mut self, wait: Duration) -> Vec<Pdu> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        for _ in 0..64 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Got::Closed => return seen,
                Got::Pdu(p) => seen.push(*p),
                Got::Silent => break,
            }
        }
        panic!(
            "connection still open after {wait:?}; got {} PDUs",
            seen.len()
        );
    }

    pub fn next_cmdsn(&mut self) -> u32 {
        let c = self.cmdsn;
        self.cmdsn = self.cmdsn.wrapping_add(1);
        c
    }
}

/// Reads one PDU; None when the stream ends or the bytes cannot be framed.
pub async fn read_one(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cfg: &FrameConfig,
) -> Option<Pdu> {
    loop {
        match pdu::decode(buf, cfg) {
            Ok(Some(p)) => return Some(p),
            Ok(None) => {}
            Err(_) => return None,
        }
        buf.reserve(64 * 1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Waits until reading `stream` reports EOF/reset, or panics after `wait`.
/// Returns the bytes seen before the close.
pub async fn until_closed(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let r = tokio::time::timeout(wait, async {
        let mut b = [0u8; 4096];
        loop {
            match stream.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.extend_from_slice(&b[..n]);
                    if seen.len() > 1 << 20 {
                        panic!("target keeps sending");
                    }
                }
            }
        }
    })
    .await;
    assert!(r.is_ok(), "connection not closed within {wait:?}");
    seen
}

/// Learns the target's real CmdSN window with an immediate NOP-Out: the
/// initiator starts with MaxCmdSN = 1 and only updates it from responses.
pub async fn prime_window(s: &Session) {
    within("priming NOP", s.nop(Bytes::new()))
        .await
        .expect("NOP-In");
}

/// Sends TEST UNIT READY until it is GOOD (at most 8 times), consuming any
/// pending unit attentions.
pub async fn drain_unit_attentions(s: &Session) {
    for _ in 0..8 {
        let r = s
            .command(0, &[0u8; 6], DataDir::None, 0, Bytes::new())
            .await
            .expect("TUR");
        if r.status == GOOD {
            return;
        }
    }
    panic!("unit attentions never cleared");
}
