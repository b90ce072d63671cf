//! Blocking disk I/O off the async workers.
//!
//! O_DIRECT reads and writes, fdatasync and BLKDISCARD block their thread
//! until the storage answers: microseconds on a healthy LUN, minutes for a
//! large discard, forever on a path that queues I/O while it is down. On a
//! tokio worker that would stall every other task the worker owns (Probe
//! among them; a 2-core host has 2 workers), so such calls run on the
//! blocking pool instead, and the async side waits a bounded time.
//!
//! A wait that gives up does not stop the I/O: the thread stays in the
//! kernel until the storage answers, and whatever the closure holds (a lock
//! guard, an in-flight key) stays held until then. Callers put in the
//! closure exactly what must not be released while the I/O may still land.

use std::time::Duration;

/// The I/O did not finish within the wait; it may still complete.
#[derive(Debug, thiserror::Error)]
#[error("did not finish within {0:?} (the storage may be stalled; the I/O is still pending)")]
pub struct Stalled(pub Duration);

/// Runs `work` on tokio's blocking pool and waits at most `limit` for it.
/// A panic in `work` is resumed in the caller.
pub async fn run_blocking<T, F>(limit: Duration, work: F) -> Result<T, Stalled>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime shuts down under us.
        Ok(Err(_)) | Err(_) => Err(Stalled(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stalled_call_times_out_and_keeps_what_it_holds() {
        let (release, parked) = mpsc::channel::<()>();
        // Stands for what the closure holds; dropped when it really ends.
        let (held, ended) = tokio::sync::oneshot::channel::<()>();
        let mut ended = std::pin::pin!(ended);
        let r = run_blocking(Duration::from_millis(50), move || {
            let _held = held;
            parked.recv().ok();
        })
        .await;
        assert!(matches!(r, Err(Stalled(_))));
        // Given up on, but still running and still holding.
        assert!(futures::poll!(ended.as_mut()).is_pending());
        release.send(()).unwrap();
        assert!(ended.await.is_err(), "dropped when the closure ended");
        assert_eq!(
            run_blocking(Duration::from_secs(30), || 7).await.unwrap(),
            7
        );
    }
}
