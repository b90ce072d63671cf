//! An appender on a lab guest: a line appended and fsynced every 50 ms to
//! a shared volume, each acked only once on disk, with the longest wait
//! between two acks kept. What the failure scenarios and the soak watch
//! writes through.

use crate::lab::{wait_until, Lab};
use std::time::Duration;

/// Starts on `node` an appender: each line "HOST SEQ" is appended and
/// fsynced to DIR/log-TAG-HOST; only after the fsync returned is SEQ written to
/// /tmp/appender/acked, so "acked" is what the node knows to be on disk.
/// The longest time between two acks (centiseconds, by /proc/uptime) goes
/// to /tmp/appender/stall.
pub fn start_appender(lab: &Lab, node: usize, dir: &str, tag: &str) {
    lab.must(
        node,
        &format!(
            "A=/tmp/appender; rm -rf $A; mkdir -p $A; H=$(hostname)
             ( i=0; max=0; read up _ < /proc/uptime; last=${{up%.*}}${{up#*.}}
               while [ ! -e $A/stop ]; do i=$((i+1))
                 if echo \"$H $i\" | dd of={dir}/log-{tag}-$H bs=64 oflag=append conv=notrunc,fsync \
                      >/dev/null 2>$A/err; then echo $i > $A/acked
                   read up _ < /proc/uptime; now=${{up%.*}}${{up#*.}}
                   [ $((now - last)) -gt $max ] && max=$((now - last)) && echo $max > $A/stall
                   last=$now
                 else echo \"$i: $(cat $A/err)\" >> $A/errors; fi
                 sleep 0.05
               done; touch $A/done ) </dev/null >/dev/null 2>&1 &
             true"
        ),
    );
}

/// The longest time `node`'s appender waited between two acked lines (s).
pub fn longest_stall(lab: &Lab, node: usize) -> f64 {
    lab.must(node, "cat /tmp/appender/stall 2>/dev/null || echo 0")
        .trim()
        .parse::<f64>()
        .unwrap_or(0.0)
        / 100.0
}

pub fn acked(lab: &Lab, node: usize) -> u64 {
    lab.must(node, "cat /tmp/appender/acked 2>/dev/null || echo 0")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Waits until each of `nodes` has acked more lines than in `past` (its
/// appender runs, and gets on while whatever is tested happens).
pub fn wait_appenders_past(lab: &Lab, nodes: &[usize], past: &[u64], what: &str) {
    wait_until(
        &format!("{what}: appenders on {nodes:?} past {past:?}"),
        Duration::from_secs(240),
        || nodes.iter().zip(past).all(|(&n, &p)| acked(lab, n) > p),
    );
}

/// Stops `node`'s appender; returns (acked, errors text).
pub fn stop_appender(lab: &Lab, node: usize) -> (u64, String) {
    let out = lab.must(
        node,
        "A=/tmp/appender; touch $A/stop
         for k in $(seq 600); do [ -e $A/done ] && break; sleep 0.1; done
         cat $A/acked; cat $A/errors 2>/dev/null; true",
    );
    let mut lines = out.lines();
    let acked = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
    (acked, lines.collect::<Vec<_>>().join("\n"))
}
