//! The binary as a server: unix socket permissions, stale-socket handling,
//! graceful SIGTERM, flags from the environment, Identity answers, and Probe
//! staying not-ready (with the reason) while a LUN cannot be used.

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::csi::identity_client::IdentityClient;
use ocfs2_csi::csi::plugin_capability::{service, volume_expansion, Type as CapType};
use ocfs2_csi::csi::*;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = path.clone();
        let connected = Endpoint::try_from("http://unused")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await;
        match connected {
            Ok(ch) => return ch,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {path:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_identity_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/csi.sock");
    // A stale socket from an earlier run must not stop the start.
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());

    // Flags from the environment only.
    let members = dir.path().join("members");
    std::fs::write(&members, "node-a 0 127.0.0.1\n").unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 64 * MIB);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocfs2-csi"))
        .arg("node")
        .env("CSI_ENDPOINT", format!("unix://{}", sock.display()))
        .env("NODE_ID", "node-a")
        .env("OCFS2_CSI_DRIVER_NAME", "ocfs2.example.org")
        .env("OCFS2_CSI_LUNS", &lun)
        .env("OCFS2_CSI_CLUSTER_ID", "server-test")
        .env("OCFS2_CSI_MEMBERS_FILE", &members)
        .env("OCFS2_CSI_STATE_DIR", dir.path().join("state"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let channel = unix_channel(&sock).await;
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let mut id = IdentityClient::new(channel);
    let info = id
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "ocfs2.example.org");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = id
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let expansions: Vec<i32> = caps
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(CapType::VolumeExpansion(v)) => Some(v.r#type),
            _ => None,
        })
        .collect();
    assert!(expansions.contains(&(volume_expansion::Type::Online as i32)));
    assert!(expansions.contains(&(volume_expansion::Type::Offline as i32)));
    // The node mode does not claim the controller service.
    assert!(!caps.iter().any(|c| matches!(
        &c.r#type,
        Some(CapType::Service(s)) if s.r#type == service::Type::ControllerService as i32
    )));
    // This host's kernel has no OCFS2, so the node serves but cannot join
    // its cluster: not ready (the lab proves the ready side).
    assert_eq!(
        id.probe(ProbeRequest {}).await.unwrap().into_inner().ready,
        Some(false)
    );

    let status = terminate(&mut child).await;
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(!sock.exists(), "socket left behind after a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_a_lun_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "mbr.raw", 64 * MIB);
    // A DOS partition table: 0x55AA and one Linux partition.
    let mut mbr = vec![0u8; 512];
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    std::fs::write(&lun, [mbr, vec![0u8; (64 * MIB - 512) as usize]].concat()).unwrap();
    let before = table_bytes(&lun);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocfs2-csi"))
        .args([
            "controller",
            "--endpoint",
            &format!("tcp://127.0.0.1:{port}"),
            "--cluster-id",
            "server-test",
        ])
        .arg("--lun")
        .arg(&lun)
        .arg("--init-lun")
        .arg(&lun)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut id = loop {
        if let Ok(c) = IdentityClient::connect(url.clone()).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        id.probe(ProbeRequest {}).await.unwrap().into_inner().ready,
        Some(false)
    );
    let mut c = ocfs2_csi::csi::controller_client::ControllerClient::connect(url)
        .await
        .unwrap();
    let err = c.create_volume(create_request("v", GIB)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("MBR"), "{}", err.message());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(table_bytes(&lun), before, "a refused LUN was modified");
}

/// `ocfs2-csi node` with --kubelet-registration-dir answers the kubelet's
/// plugin watcher on DRIVER-reg.sock once its CSI socket serves, and a
/// clean stop removes both sockets (the kubelet then forgets the driver).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_with_the_kubelet_itself() {
    use ocfs2_csi::server::kubelet_registration::api::registration_client::RegistrationClient;
    use ocfs2_csi::server::kubelet_registration::api::{InfoRequest, RegistrationStatus};

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi/csi.sock");
    let registry = dir.path().join("plugins_registry");
    std::fs::create_dir(&registry).unwrap();
    let reg_sock = registry.join("ocfs2.example.org-reg.sock");
    let members = dir.path().join("members");
    std::fs::write(&members, "node-a 0 127.0.0.1\n").unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 64 * MIB);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocfs2-csi"))
        .arg("node")
        .arg(format!("--endpoint=unix://{}", sock.display()))
        .arg("--kubelet-registration-dir")
        .arg(&registry)
        .args([
            "--kubelet-registration-path=/var/lib/k/plugins/ocfs2.example.org/csi.sock",
            "--node-id=node-a",
            "--driver-name=ocfs2.example.org",
            "--cluster-id=server-test",
        ])
        .arg("--lun")
        .arg(&lun)
        .arg("--members-file")
        .arg(&members)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut kubelet = RegistrationClient::new(unix_channel(&reg_sock).await);
    // Registered only once the CSI socket serves.
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "ocfs2.example.org");
    assert_eq!(
        info.endpoint,
        "/var/lib/k/plugins/ocfs2.example.org/csi.sock"
    );
    assert_eq!(info.supported_versions, ["1.0.0"]);
    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    drop(kubelet);

    let status = terminate(&mut child).await;
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(!reg_sock.exists(), "registration socket left behind");
    assert!(!sock.exists(), "CSI socket left behind");
}

/// A registration folder that is not there (the kubelet's plugins_registry
/// not mounted) stops the start with its name, before anything else.
#[test]
fn node_refuses_a_missing_registration_folder() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("plugins_registry");
    let members = dir.path().join("members");
    std::fs::write(&members, "node-a 0 127.0.0.1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ocfs2-csi"))
        .arg("node")
        .arg(format!(
            "--endpoint=unix://{}",
            dir.path().join("csi.sock").display()
        ))
        .arg("--kubelet-registration-dir")
        .arg(&missing)
        .args([
            "--node-id=node-a",
            "--cluster-id=server-test",
            "--lun=/nonexistent",
        ])
        .arg("--members-file")
        .arg(&members)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("does not exist"),
        "{stderr}"
    );

    // The CSI path alone means nothing without the folder.
    let out = Command::new(env!("CARGO_BIN_EXE_ocfs2-csi"))
        .args([
            "node",
            "--node-id=node-a",
            "--lun=/nonexistent",
            "--kubelet-registration-path=/var/lib/kubelet/plugins/x/csi.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--kubelet-registration-dir"), "{stderr}");
}

/// SIGTERM to the plugin, then its exit status once it exits (a minute at
/// most: it stops at once, the bound only keeps a hang from blocking CI).
async fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "no exit within 60 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
