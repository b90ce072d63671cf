//! Serving gRPC: where (unix socket or TCP), how long (until SIGTERM), and
//! what every call goes through (the [`observe`] layer); and registering the
//! node plugin with the kubelet ([`kubelet_registration`]).

pub mod authority;
pub mod endpoint;
pub mod inflight;
pub mod kubelet_registration;
pub mod observe;
pub mod readiness;
pub mod status;

pub use endpoint::Endpoint;
pub use observe::{record_volume, ObserveLayer};
pub use readiness::Readiness;

use std::future::Future;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Router;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {endpoint}: {source}")]
    Listen {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("{0}: exists and is not a socket; refusing to remove it")]
    NotASocket(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `router` on `endpoint` until `shutdown` completes, then lets calls
/// in progress finish.
pub async fn serve<L>(
    router: Router<L>,
    endpoint: &Endpoint,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    L: tower::Layer<tonic::service::Routes> + Clone,
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
    let listen_err = |source| ServeError::Listen {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Unix(path) => {
            let listener = endpoint::bind_unix(path).map_err(|e| match e {
                endpoint::BindError::NotASocket => {
                    ServeError::NotASocket(path.display().to_string())
                }
                endpoint::BindError::Io(source) => listen_err(source),
            })?;
            tracing::info!(endpoint = %endpoint, "serving");
            // Every connection goes through FixAuthority: gRPC C-core clients
            // send the socket path as `:authority`, which h2 refuses before
            // any hook of ours runs (see authority.rs).
            let incoming =
                tokio_stream::StreamExt::map(UnixListenerStream::new(listener), |conn| {
                    conn.map(authority::FixAuthority::new)
                });
            let result = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            let _ = std::fs::remove_file(path);
            result?;
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_err)?;
            tracing::info!(endpoint = %endpoint, "serving");
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await?;
        }
    }
    tracing::info!("server stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Runs a disk-changing operation to its end even if the caller goes away. A
/// sidecar or kubelet that times out drops its RPC; if that killed mkfs or a
/// mount halfway, the retry would start over and a big volume might never
/// finish. Meanwhile the retry gets Aborted from the in-flight set, then the
/// finished result.
pub async fn detached<T, F>(work: F) -> Result<T, tonic::Status>
where
    F: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    T: Send + 'static,
{
    use tracing::Instrument;
    match tokio::spawn(work.instrument(tracing::Span::current())).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            tracing::error!("operation panicked");
            Err(tonic::Status::internal(
                "internal error: the operation panicked",
            ))
        }
        Err(e) => Err(tonic::Status::internal(format!(
            "the operation did not finish: {e}"
        ))),
    }
}
