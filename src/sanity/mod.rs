//! The plugin served whole, in-process, against the fakes of
//! `controller::testing` and `node::testing`: real gRPC over unix sockets
//! in a temporary folder, real services and domain objects, fake disks and
//! tools. Tests here see what a client (kubelet, a sidecar, csi-sanity)
//! sees, in seconds, without root.
//!
//! - `probe`: Probe stays fast while a large discard runs.
//! - `suite`: the real csi-sanity, Node Service included, against both
//!   sides on one fake SAN.

mod probe;
mod suite;

use crate::controller::{ControllerService, Volumes};
use crate::csi::controller_server::ControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::identity::IdentityService;
use crate::node::{NodeService, NodeVolumes};
use crate::server::{Endpoint, ObserveLayer};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Uri};

pub const DRIVER: &str = "ocfs2.csi.fake";

/// A served plugin; dropping it stops the server.
pub struct Served {
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// Stops serving and waits for the server to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.expect("server task");
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves Identity and Controller, as `ocfs2-csi controller` does, on
/// `socket` (spawned on the current runtime).
pub fn serve_controller(socket: &Path, volumes: Arc<Volumes>) -> Served {
    let identity = IdentityService::new(DRIVER.into(), true, volumes.clone());
    let router = tonic::transport::Server::builder()
        .layer(ObserveLayer)
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(ControllerService::new(volumes)));
    spawn_serve(socket, router)
}

/// Serves Identity and Node, as `ocfs2-csi node` does, on `socket`
/// (spawned on the current runtime).
pub fn serve_node(socket: &Path, volumes: Arc<NodeVolumes>) -> Served {
    let identity = IdentityService::new(DRIVER.into(), false, volumes.clone());
    let router = tonic::transport::Server::builder()
        .layer(ObserveLayer)
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(NodeService::new(volumes)));
    spawn_serve(socket, router)
}

/// Serves Identity (saying it has a Controller Service), Controller and
/// Node on one socket, as a plugin that runs both in one process would.
pub fn serve_all(socket: &Path, controller: Arc<Volumes>, node: Arc<NodeVolumes>) -> Served {
    let identity = IdentityService::new(DRIVER.into(), true, controller.clone());
    let router = tonic::transport::Server::builder()
        .layer(ObserveLayer)
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(ControllerService::new(controller)))
        .add_service(NodeServer::new(NodeService::new(node)));
    spawn_serve(socket, router)
}

fn spawn_serve<L>(socket: &Path, router: tonic::transport::server::Router<L>) -> Served
where
    L: tower::Layer<tonic::service::Routes> + Clone + Send + 'static,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let endpoint = Endpoint::Unix(socket.to_path_buf());
    let done = tokio::spawn(async move {
        crate::server::serve(router, &endpoint, async {
            let _ = stopped.await;
        })
        .await
        .expect("serving");
    });
    Served {
        stop: Some(stop),
        done: Some(done),
    }
}

/// A gRPC channel over the unix socket at `path`, waiting (a bounded time)
/// for the server to listen.
pub async fn unix_channel(path: &Path) -> Channel {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let p = path.to_path_buf();
        let connected = tonic::transport::Endpoint::try_from("http://localhost")
            .expect("endpoint")
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
            Ok(channel) => return channel,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("cannot connect to {}: {e}", path.display())
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}
