//! The admin interface: live changes through requests, clear errors that
//! change nothing, and an atomic write-back of the running configuration.

use std::sync::Arc;
use std::time::Duration;

use vtgt::admin::{self, AdminContext, Request};
use vtgt::config::{ChapConfig, Config};
use vtgt::server::Server;
use vtgt_initiator::{LoginConfig, Session, SessionError};

const TARGET: &str = "iqn.2026-11.org.vtgt:admin";

async fn setup(dir: &std::path::Path) -> (Arc<AdminContext>, std::path::PathBuf) {
    let mut cfg = Config::embedded_default();
    // iSCSI only: tests run in parallel and 4420 is a fixed port.
    cfg.nvme.listen.clear();
    cfg.subsystems.clear();
    cfg.data_dir = dir.to_path_buf();
    cfg.iscsi.portals[0].listen = "127.0.0.1:0".parse().unwrap();
    cfg.volumes[0].size = Some("8MiB".into());
    cfg.targets[0].name = TARGET.into();
    let path = dir.join("vtgt.toml");
    admin::save_config(&cfg, &path).unwrap();
    let server = Arc::new(Server::start(Config::load(&path).unwrap()).await.unwrap());
    (
        Arc::new(AdminContext {
            server,
            config_path: Some(path.clone()),
        }),
        path,
    )
}

async fn login(ctx: &AdminContext, initiator: &str) -> Result<Session, SessionError> {
    let addr = ctx.server.iscsi_addrs[0];
    tokio::time::timeout(
        Duration::from_secs(10),
        Session::login(addr, LoginConfig::new(initiator, Some(TARGET))),
    )
    .await
    .expect("login timed out")
}

#[tokio::test]
async fn invalid_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _) = setup(dir.path()).await;
    let before = ctx.server.config().await;
    let bad = [
        Request::AddLun {
            target: TARGET.into(),
            lun: 3,
            volume: "missing".into(),
        },
        Request::AddLun {
            target: "iqn.2026-11.org.vtgt:nope".into(),
            lun: 3,
            volume: "default".into(),
        },
        Request::Resize {
            volume: "default".into(),
            size: "1MiB".into(),
        },
        Request::RemoveVolume {
            name: "default".into(),
        },
        Request::SetChap {
            target: TARGET.into(),
            initiator: None,
            chap: Some(ChapConfig {
                user: "u".into(),
                secret: "short".into(),
                mutual_user: None,
                mutual_secret: None,
            }),
        },
    ];
    for req in bad {
        let err = admin::handle(&ctx, req.clone()).await.unwrap_err();
        assert!(!err.to_string().is_empty(), "{req:?}");
        assert_eq!(
            ctx.server.config().await,
            before,
            "{req:?} changed the config"
        );
    }
    // A session is unaffected by all of that.
    let s = login(&ctx, "iqn.2026-11.test:a").await.unwrap();
    assert_eq!(s.nop(bytes::Bytes::from_static(b"hi")).await.unwrap(), "hi");
}

#[tokio::test]
async fn acl_and_chap_apply_to_new_logins_without_dropping_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, path) = setup(dir.path()).await;
    let old = login(&ctx, "iqn.2026-11.test:old").await.unwrap();
    admin::handle(
        &ctx,
        Request::AllowInitiator {
            target: TARGET.into(),
            initiator: "iqn.2026-11.test:ok".into(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        login(&ctx, "iqn.2026-11.test:other").await,
        Err(SessionError::Login {
            class: 2,
            detail: 2
        })
    ));
    admin::handle(
        &ctx,
        Request::SetChap {
            target: TARGET.into(),
            initiator: None,
            chap: Some(ChapConfig {
                user: "host".into(),
                secret: "a-long-secret".into(),
                mutual_user: None,
                mutual_secret: None,
            }),
        },
    )
    .await
    .unwrap();
    // No credentials: refused with an authentication failure.
    assert!(matches!(
        login(&ctx, "iqn.2026-11.test:ok").await,
        Err(SessionError::Login {
            class: 2,
            detail: 1
        })
    ));
    let mut lc = LoginConfig::new("iqn.2026-11.test:ok", Some(TARGET));
    lc.chap = Some(("host".into(), b"a-long-secret".to_vec()));
    let ok = Session::login(ctx.server.iscsi_addrs[0], lc).await.unwrap();
    assert_eq!(ok.nop(bytes::Bytes::from_static(b"x")).await.unwrap(), "x");
    // The session from before the change is still there.
    assert_eq!(old.nop(bytes::Bytes::from_static(b"y")).await.unwrap(), "y");

    // Save writes the running config back; it reloads to the same thing.
    admin::handle(&ctx, Request::Save).await.unwrap();
    let saved = Config::load(&path).unwrap();
    assert_eq!(saved, ctx.server.config().await);
    assert_eq!(
        saved.targets[0].allowed_initiators,
        vec!["iqn.2026-11.test:ok".to_string()]
    );
    let sessions = admin::handle(&ctx, Request::Sessions).await.unwrap();
    assert_eq!(sessions["iscsi"].as_array().unwrap().len(), 2);
    assert_eq!(
        sessions["iscsi"][0]["negotiated"]["error_recovery_level"],
        0
    );
    assert_eq!(sessions["nvme"].as_array().unwrap().len(), 0);
}
