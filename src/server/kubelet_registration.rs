//! Registering the node plugin with the kubelet, as node-driver-registrar
//! does, for clusters that cannot run that sidecar.
//!
//! The kubelet watches its `plugins_registry` folder for sockets. On
//! `<driver>-reg.sock` it calls `GetInfo`, learns the driver's name and the
//! host path of its CSI socket, calls `NodeGetInfo` there, and reports the
//! result with `NotifyRegistrationStatus`. Removing the socket makes it
//! forget the driver.
//!
//! Neither RPC can fail, so [`RegistrationError`] is about serving the
//! socket only and maps to no gRPC code.

use super::endpoint::{self, Endpoint};
use super::{ObserveLayer, ServeError};
use crate::backoff::Backoff;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

/// The generated types and services of `proto/pluginregistration.proto`.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("pluginregistration");
}

use api::registration_server::{Registration, RegistrationServer};
use api::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};

/// The plugin type the kubelet hands to its CSI handler.
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";
/// The CSI plugin registration versions we speak (the kubelet's CSI
/// handler accepts 1.x).
pub const SUPPORTED_VERSIONS: [&str; 1] = ["1.0.0"];

/// Pauses before the socket is offered again after the kubelet refused the
/// registration: long enough not to flood its log, short enough that a
/// passing cause (an API server restart) costs little.
const REOFFER: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "kubelet registration folder {0}: does not exist (mount the kubelet's \
         plugins_registry folder there)"
    )]
    NoFolder(PathBuf),
    #[error("kubelet registration folder {0}: not a folder")]
    NotAFolder(PathBuf),
    #[error("kubelet registration folder {folder}: {source}")]
    Folder {
        folder: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "kubelet registration path {0}: must be absolute (the CSI socket's path \
         on the host, as the kubelet dials it)"
    )]
    RelativeEndpoint(PathBuf),
    #[error("kubelet registration socket: {0}")]
    Serve(#[from] ServeError),
    #[error("kubelet registration stopped: {0}")]
    Ended(String),
}

/// What the kubelet is told, and where.
#[derive(Clone, Debug)]
pub struct KubeletRegistration {
    driver_name: String,
    socket: PathBuf,
    csi_endpoint: PathBuf,
    reoffer: Backoff,
}

impl KubeletRegistration {
    /// Registration of `driver_name`, whose CSI socket the kubelet reaches
    /// at `csi_endpoint`, through a socket in `folder` (the kubelet's
    /// plugins_registry as this process sees it). The folder must exist:
    /// creating it would only hide a missing mount, and the kubelet would
    /// never look there.
    pub fn new(
        driver_name: &str,
        folder: &Path,
        csi_endpoint: &Path,
    ) -> Result<KubeletRegistration, RegistrationError> {
        match std::fs::metadata(folder) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(RegistrationError::NotAFolder(folder.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistrationError::NoFolder(folder.into()))
            }
            Err(source) => {
                return Err(RegistrationError::Folder {
                    folder: folder.into(),
                    source,
                })
            }
        }
        if !csi_endpoint.is_absolute() {
            return Err(RegistrationError::RelativeEndpoint(csi_endpoint.into()));
        }
        Ok(KubeletRegistration {
            driver_name: driver_name.to_string(),
            // The name node-driver-registrar uses, so that switching
            // between it and this replaces the same socket.
            socket: folder.join(format!("{driver_name}-reg.sock")),
            csi_endpoint: csi_endpoint.into(),
            reoffer: REOFFER,
        })
    }

    /// The CSI socket's path on a kubelet whose root is the usual
    /// /var/lib/kubelet, where the chart puts it.
    pub fn default_csi_endpoint(driver_name: &str) -> PathBuf {
        PathBuf::from(format!("/var/lib/kubelet/plugins/{driver_name}/csi.sock"))
    }

    /// The socket the kubelet finds.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    #[cfg(test)]
    fn with_reoffer(mut self, reoffer: Backoff) -> KubeletRegistration {
        self.reoffer = reoffer;
        self
    }

    fn info(&self) -> PluginInfo {
        PluginInfo {
            r#type: CSI_PLUGIN_TYPE.to_string(),
            name: self.driver_name.clone(),
            endpoint: self.csi_endpoint.display().to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Waits until `csi` accepts connections (the kubelet calls NodeGetInfo
    /// there as soon as it has the registration), then serves the
    /// registration socket until `stop` completes, and removes it.
    pub async fn run(
        self,
        csi: &Endpoint,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<(), RegistrationError> {
        let mut stop = std::pin::pin!(stop);
        tokio::select! {
            _ = endpoint::accepting(csi) => {}
            _ = stop.as_mut() => return Ok(()),
        }
        let (verdict_tx, mut verdicts) = mpsc::unbounded_channel();
        let mut refusals = 0u32;
        loop {
            let service = RegistrationService {
                info: self.info(),
                verdicts: verdict_tx.clone(),
            };
            let router = tonic::transport::Server::builder()
                .layer(ObserveLayer)
                .add_service(RegistrationServer::new(service));
            tracing::info!(
                socket = %self.socket.display(),
                driver = %self.driver_name,
                csi_endpoint = %self.csi_endpoint.display(),
                "offering the driver to the kubelet"
            );
            let mut stopping = false;
            let until = async {
                loop {
                    tokio::select! {
                        _ = stop.as_mut() => {
                            stopping = true;
                            return;
                        }
                        verdict = verdicts.recv() => match verdict {
                            Some(Verdict::Registered) => refusals = 0,
                            Some(Verdict::Refused) => {
                                refusals = refusals.saturating_add(1);
                                return;
                            }
                            // The sender lives as long as this loop.
                            None => std::future::pending().await,
                        },
                    }
                }
            };
            // Binding replaces a stale socket; the socket is removed when
            // serving ends.
            super::serve(router, &Endpoint::Unix(self.socket.clone()), until).await?;
            if stopping {
                tracing::info!(socket = %self.socket.display(), "kubelet registration withdrawn");
                return Ok(());
            }
            // The kubelet does not try again on its own when the failure
            // came after it recorded the plugin (its reconciler takes the
            // socket as handled); node-driver-registrar exits so that its
            // restart re-creates the socket. Restarting this process would
            // redo the node's start-up (number claim, cluster join, mount
            // adoption) and cut its calls in flight, so only the socket is
            // made anew, which is all the kubelet needs to try again.
            let wait = self.reoffer.delay(refusals);
            tracing::warn!(
                refusals,
                retry_in_s = wait.as_secs_f64(),
                "registration socket removed; offering it to the kubelet again after a pause"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.as_mut() => return Ok(()),
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Registered,
    Refused,
}

struct RegistrationService {
    info: PluginInfo,
    verdicts: mpsc::UnboundedSender<Verdict>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<InfoRequest>,
    ) -> Result<Response<PluginInfo>, Status> {
        tracing::info!(
            driver = %self.info.name,
            csi_endpoint = %self.info.endpoint,
            "the kubelet asked for the driver's registration"
        );
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let verdict = if status.plugin_registered {
            tracing::info!(driver = %self.info.name, "registered with the kubelet");
            Verdict::Registered
        } else {
            // The kubelet's own words, capped: they end up in our log.
            let said: String = status.error.chars().take(2000).collect();
            let said = if said.is_empty() {
                "(no reason given)".to_string()
            } else {
                said
            };
            tracing::error!(
                driver = %self.info.name,
                kubelet_error = %said,
                "the kubelet refused the registration"
            );
            Verdict::Refused
        };
        let _ = self.verdicts.send(verdict);
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// A registration running beside the CSI server: main waits on
/// [`Registering::failed`] with the other start-up tasks and calls
/// [`Registering::stop`] on a clean shutdown.
pub struct Registering {
    running: Option<Running>,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RegistrationError>>,
}

impl Registering {
    /// No registration (the node-driver-registrar sidecar does it).
    pub fn off() -> Registering {
        Registering { running: None }
    }

    /// Starts `registration` for the CSI server at `csi`.
    pub fn start(registration: KubeletRegistration, csi: Endpoint) -> Registering {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            registration
                .run(&csi, async {
                    let _ = stopped.await;
                })
                .await
        });
        Registering {
            running: Some(Running { stop, task }),
        }
    }

    /// Completes only when the registration can no longer be served (its
    /// socket cannot be bound): the kubelet would never find the driver.
    pub async fn failed(&mut self) -> RegistrationError {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let ended = (&mut running.task).await;
        self.running = None;
        match ended {
            Ok(Err(e)) => e,
            Ok(Ok(())) => RegistrationError::Ended("without being asked to".into()),
            Err(e) => RegistrationError::Ended(e.to_string()),
        }
    }

    /// Withdraws the registration (the kubelet forgets the driver, as when
    /// node-driver-registrar stops) and waits until its socket is gone.
    pub async fn stop(mut self) {
        if let Some(Running { stop, task }) = self.running.take() {
            let _ = stop.send(());
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kubelet registration ended with an error")
                }
                Err(e) => tracing::warn!(error = %e, "kubelet registration task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::api::registration_client::RegistrationClient;
    use super::*;
    use std::os::unix::fs::FileTypeExt;
    use std::time::Instant;
    use tonic::transport::{Channel, Uri};

    const DRIVER: &str = "ocfs2.example.org";
    const HOST_CSI: &str = "/var/lib/kubelet/plugins/ocfs2.example.org/csi.sock";

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(50), Duration::from_millis(50))
    }

    /// A folder for the registration socket and a listening CSI socket.
    struct Setup {
        dir: tempfile::TempDir,
        csi: Endpoint,
        _csi_listener: Option<tokio::net::UnixListener>,
    }

    fn setup(csi_listening: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let listener = csi_listening.then(|| tokio::net::UnixListener::bind(&path).unwrap());
        std::fs::create_dir(dir.path().join("registry")).unwrap();
        Setup {
            csi: Endpoint::Unix(path),
            _csi_listener: listener,
            dir,
        }
    }

    impl Setup {
        fn registry(&self) -> PathBuf {
            self.dir.path().join("registry")
        }

        fn registration(&self) -> KubeletRegistration {
            KubeletRegistration::new(DRIVER, &self.registry(), Path::new(HOST_CSI))
                .unwrap()
                .with_reoffer(quick())
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_socket(path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
    }

    async fn client(path: &Path) -> RegistrationClient<Channel> {
        let path = path.to_path_buf();
        let channel = tonic::transport::Endpoint::try_from("http://localhost")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        RegistrationClient::new(channel)
    }

    #[tokio::test]
    async fn tells_the_kubelet_the_driver_and_hears_its_verdict() {
        let s = setup(true);
        let registration = s.registration();
        let sock = registration.socket().to_path_buf();
        assert_eq!(sock, s.registry().join("ocfs2.example.org-reg.sock"));
        let running = Registering::start(registration, s.csi.clone());
        wait_for("registration socket", || is_socket(&sock)).await;

        let mut kubelet = client(&sock).await;
        let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, DRIVER);
        assert_eq!(info.endpoint, HOST_CSI);
        assert_eq!(info.supported_versions, ["1.0.0"]);
        kubelet
            .notify_registration_status(RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            })
            .await
            .unwrap();

        // A clean stop withdraws the registration.
        running.stop().await;
        assert!(!sock.exists(), "registration socket left behind");
    }

    #[tokio::test]
    async fn a_refusal_offers_the_socket_anew() {
        let s = setup(true);
        let registration = s.registration();
        let sock = registration.socket().to_path_buf();
        // A pause the test cannot miss between withdrawing and offering.
        let pause = Duration::from_millis(300);
        let registration = registration.with_reoffer(Backoff::new(pause, pause));
        let running = Registering::start(registration, s.csi.clone());
        wait_for("registration socket", || is_socket(&sock)).await;

        let mut kubelet = client(&sock).await;
        kubelet
            .notify_registration_status(RegistrationStatus {
                plugin_registered: false,
                error: "plugin registration failed: NodeGetInfo: connection refused".into(),
            })
            .await
            .unwrap();
        drop(kubelet);
        // Withdrawn, then offered again as a new socket, which the kubelet
        // takes as a new plugin to register.
        wait_for("the socket withdrawn", || !sock.exists()).await;
        wait_for("the socket offered again", || is_socket(&sock)).await;
        let mut kubelet = client(&sock).await;
        let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.name, DRIVER);
        drop(kubelet);
        running.stop().await;
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_file_is_not() {
        let s = setup(true);
        let registration = s.registration();
        let sock = registration.socket().to_path_buf();
        // What a killed plugin leaves: a socket nobody listens on.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let running = Registering::start(registration.clone(), s.csi.clone());
        wait_for("a listening registration socket", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })
        .await;
        let info = client(&sock)
            .await
            .get_info(InfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, DRIVER);
        running.stop().await;

        // Anything but a socket is never removed: serving fails instead.
        std::fs::write(&sock, b"not ours").unwrap();
        let mut running = Registering::start(registration, s.csi.clone());
        let err = tokio::time::timeout(Duration::from_secs(10), running.failed())
            .await
            .expect("a failure");
        assert!(
            matches!(err, RegistrationError::Serve(ServeError::NotASocket(_))),
            "{err}"
        );
        assert_eq!(std::fs::read(&sock).unwrap(), b"not ours");
    }

    #[tokio::test]
    async fn waits_until_the_csi_socket_serves() {
        let s = setup(false);
        let registration = s.registration();
        let sock = registration.socket().to_path_buf();
        let running = Registering::start(registration, s.csi.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!sock.exists(), "registered before the CSI socket served");
        let Endpoint::Unix(csi) = &s.csi else {
            unreachable!()
        };
        let _csi = tokio::net::UnixListener::bind(csi).unwrap();
        wait_for("registration socket", || is_socket(&sock)).await;
        running.stop().await;
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn a_stop_before_the_csi_socket_serves_ends_it() {
        let s = setup(false);
        let running = Registering::start(s.registration(), s.csi.clone());
        tokio::time::timeout(Duration::from_secs(5), running.stop())
            .await
            .expect("stopped");
    }

    #[test]
    fn bad_folders_and_paths_are_named() {
        let s = setup(false);
        let missing = s.dir.path().join("no-such-registry");
        let err = KubeletRegistration::new(DRIVER, &missing, Path::new(HOST_CSI)).unwrap_err();
        assert!(matches!(err, RegistrationError::NoFolder(_)), "{err}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        let file = s.dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = KubeletRegistration::new(DRIVER, &file, Path::new(HOST_CSI)).unwrap_err();
        assert!(matches!(err, RegistrationError::NotAFolder(_)), "{err}");

        let err =
            KubeletRegistration::new(DRIVER, &s.registry(), Path::new("csi.sock")).unwrap_err();
        assert!(
            matches!(err, RegistrationError::RelativeEndpoint(_)),
            "{err}"
        );
    }

    #[test]
    fn default_endpoint_is_under_the_kubelets_plugins() {
        assert_eq!(
            KubeletRegistration::default_csi_endpoint(DRIVER),
            Path::new(HOST_CSI)
        );
    }
}
