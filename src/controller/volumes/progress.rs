//! How long work on a LUN (zeroing, copying) says how far it got: every
//! 10 s while it runs, and its rate at the end, in the volume's log lines.

use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(10);

pub(super) struct Progress<'a> {
    volume: &'a str,
    what: &'a str,
    total: u64,
    done: u64,
    start: Instant,
    said: Instant,
}

impl<'a> Progress<'a> {
    /// `what` names the work ("zeroing the new raw block volume").
    pub fn new(volume: &'a str, what: &'a str, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            volume,
            what,
            total,
            done: 0,
            start: now,
            said: now,
        }
    }

    /// `bytes` more are done; logs when the last line is 10 s old.
    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if self.said.elapsed() >= EVERY {
            self.said = Instant::now();
            tracing::info!(
                volume = self.volume,
                done_mib = self.done >> 20,
                total_mib = self.total >> 20,
                "{}",
                self.what
            );
        }
    }

    /// Logs the end: `finished` says what was done ("zeroed ...").
    pub fn finish(self, finished: &str) {
        let secs = self.start.elapsed().as_secs_f64();
        tracing::info!(
            volume = self.volume,
            mib = self.total >> 20,
            seconds = format!("{secs:.2}"),
            mib_per_s = format!("{:.0}", (self.total >> 20) as f64 / secs.max(1e-6)),
            "{finished}"
        );
    }
}
