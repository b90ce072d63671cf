//! The one way start-up steps are retried: a pause that grows with each
//! failure up to a bound, and a log line per failure that says what failed,
//! why and when the next try is. Used where giving up would only leave the
//! plugin unready (opening LUNs, claiming an o2cb number, joining the
//! cluster); the step itself decides what is worth retrying.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// Pause `step × n` after the n-th failure, never more than `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub step: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(step: Duration, max: Duration) -> Backoff {
        Backoff { step, max }
    }

    /// The pause after the `failures`-th failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        self.step.saturating_mul(failures).min(self.max)
    }

    /// Runs `attempt` until it succeeds, logging every failure as `what`
    /// (with the error's whole chain: `{:#}`) and pausing before the next
    /// try. `attempt` receives the number of failures so far.
    pub async fn retry<T, E, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Display,
    {
        let mut failures = 0u32;
        loop {
            match attempt(failures).await {
                Ok(value) => return value,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = self.delay(failures);
                    tracing::error!(
                        error = %format!("{e:#}"),
                        failures,
                        retry_in_s = wait.as_secs_f64(),
                        "{what}"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_then_stops_at_the_bound() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(30));
        let secs: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 15, 20, 25, 30, 30, 30]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn retries_until_success_and_counts_failures() {
        let b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let mut seen = Vec::new();
        let got = b
            .retry("flaky step", |failures| {
                seen.push(failures);
                async move {
                    if failures < 3 {
                        Err(format!("failure {failures}"))
                    } else {
                        Ok(failures * 10)
                    }
                }
            })
            .await;
        assert_eq!(got, 30);
        assert_eq!(seen, [0, 1, 2, 3]);
    }
}
