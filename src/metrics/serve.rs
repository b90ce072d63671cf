//! The HTTP side: `GET /metrics` on the address given.

use super::{render, Gauges, Mode};
use crate::backoff::Backoff;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A taken port is retried rather than fatal: the driver's own work (mounts,
/// volumes) matters more than its metrics, and the log says why none serve.
const BIND_BACKOFF: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `mode`'s metrics on `addr` for as long as the process runs.
pub async fn serve(addr: SocketAddr, mode: Mode, gauges: Arc<dyn Gauges>) {
    let what = format!("cannot serve metrics on {addr}");
    let listener = BIND_BACKOFF
        .retry(&what, |_| tokio::net::TcpListener::bind(addr))
        .await;
    let shown = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %shown, "metrics served at http://{shown}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let gauges = gauges.clone();
            async move {
                let samples = gauges.read().await;
                (
                    [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    render(mode, samples),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}
