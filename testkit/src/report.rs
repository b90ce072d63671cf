//! The demos' report: a line per step as it starts, its time when done,
//! and the list of steps with their times at the end.

use std::time::Instant;

#[derive(Default)]
pub struct Report(pub Vec<(String, f64)>);

impl Report {
    /// Runs one step, printing what it is and then how long it took.
    pub fn step<T>(&mut self, what: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        println!("-- {what}");
        let out = f();
        let s = t.elapsed().as_secs_f64();
        println!("   done in {s:.1} s");
        self.0.push((what.to_string(), s));
        out
    }
}
