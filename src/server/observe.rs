//! The layer every gRPC call passes through: a request ID, one log line per
//! call with method, volume, duration and outcome, the call counted in the
//! metrics (by method and code), and a panic in a handler
//! turned into Internal instead of a dropped connection.
//!
//! Requests are never logged whole (they can carry secrets); handlers name
//! the volume with [`record_volume`].

use futures::future::{BoxFuture, FutureExt};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tracing::Instrument;

#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Names the volume (ID, or name for CreateVolume) in the current call's log.
pub fn record_volume(volume: &str) {
    // IDs are ours or the CO's; cap what a hostile caller can put in a log.
    let shown: String = volume.chars().take(160).collect();
    tracing::Span::current().record("volume", shown.as_str());
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "rpc",
            request_id = id,
            method = %method,
            volume = tracing::field::Empty
        );
        // The service that was polled ready handles this call; a clone takes
        // its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = span.in_scope(|| inner.call(request));
        let quiet = method == "Probe";
        Box::pin(
            async move {
                let started = Instant::now();
                let response = match AssertUnwindSafe(call).catch_unwind().await {
                    Ok(result) => result?,
                    Err(panic) => {
                        let what = panic_message(&panic);
                        tracing::error!(panic = %what, "handler panicked");
                        tonic::Status::internal(format!("internal error: handler panicked: {what}"))
                            .into_http()
                    }
                };
                log_outcome(&method, &response, started, quiet);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Errors travel in the response headers (trailers-only responses); success
/// carries its status in the trailers, so no header means OK.
fn log_outcome(method: &str, response: &HttpResponse, started: Instant, quiet: bool) {
    let seconds = started.elapsed().as_secs_f64();
    let ms = seconds * 1000.0;
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from)
        .unwrap_or(Code::Ok);
    crate::metrics::rpc_handled(method, code, seconds);
    if code == Code::Ok {
        if quiet {
            tracing::debug!(duration_ms = ms, outcome = "OK", "call finished");
        } else {
            tracing::info!(duration_ms = ms, outcome = "OK", "call finished");
        }
    } else {
        let message = response
            .headers()
            .get("grpc-message")
            .map(|v| percent_decode(v.as_bytes()))
            .unwrap_or_default();
        tracing::warn!(duration_ms = ms, outcome = ?code, %message, "call failed");
    }
}

fn percent_decode(bytes: &[u8]) -> String {
    crate::escape::decode(bytes, b'%', 2, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn a_panicking_handler_becomes_internal() {
        let panicking = tower::service_fn(|_req: http::Request<()>| async {
            if true {
                panic!("boom");
            }
            Ok::<HttpResponse, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut svc = ObserveLayer.layer(panicking);
        let request = http::Request::builder()
            .uri("/csi.v1.Controller/CreateVolume")
            .body(())
            .unwrap();
        let response = svc.ready().await.unwrap().call(request).await.unwrap();
        let code = response.headers().get("grpc-status").unwrap();
        assert_eq!(code.to_str().unwrap(), (Code::Internal as i32).to_string());
        let message = response.headers().get("grpc-message").unwrap();
        assert!(percent_decode(message.as_bytes()).contains("boom"));
    }

    #[tokio::test]
    async fn a_normal_call_passes_through() {
        let ok = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<HttpResponse, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut svc = ObserveLayer.layer(ok);
        let request = http::Request::builder()
            .uri("/csi.v1.Identity/Probe")
            .body(())
            .unwrap();
        let response = svc.ready().await.unwrap().call(request).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none());
    }

    #[test]
    fn decodes_grpc_messages() {
        assert_eq!(percent_decode(b"a%20b%3A"), "a b:");
        assert_eq!(percent_decode(b"100%"), "100%");
    }
}
