//! Prometheus metrics, both modes: what happened (counted where it happens,
//! in this module's process-wide families) and what is (read at scrape
//! time from the mode's own state through [`Gauges`]). [`serve`] answers
//! `GET /metrics` in the OpenMetrics text format.
//!
//! Every name starts with `ocfs2_csi_`; counters end in `_total`, sizes in
//! `_bytes`, times in `_seconds` (Prometheus' conventions).

mod serve;

pub use serve::serve;

use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

const PREFIX: &str = "ocfs2_csi";

/// CSI calls take from a millisecond (Probe) to minutes (mkfs of a large
/// volume, a clone's copy).
const RPC_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    grpc_method: String,
    grpc_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    wait: &'static str,
}

/// The process-wide event metrics; their handles share state, so each
/// scrape registers clones.
struct Events {
    handled: Family<RpcLabels, Counter>,
    handling: Family<RpcLabels, Histogram>,
    members_lost: Counter,
    grows: Family<OutcomeLabels, Counter>,
    grow_waits: Family<WaitLabels, Histogram>,
}

static EVENTS: LazyLock<Events> = LazyLock::new(|| Events {
    handled: Family::default(),
    handling: Family::new_with_constructor(|| Histogram::new(RPC_BUCKETS)),
    members_lost: Counter::default(),
    grows: Family::default(),
    grow_waits: Family::new_with_constructor(|| Histogram::new(RPC_BUCKETS)),
});

/// One gRPC call ended with `code` after `seconds`.
pub fn rpc_handled(method: &str, code: tonic::Code, seconds: f64) {
    // A method we do not serve is any path a caller sent: one label for
    // all of them keeps the series few (and the value needs no escaping).
    let known = code != tonic::Code::Unimplemented
        && (1..=64).contains(&method.len())
        && method.bytes().all(|b| b.is_ascii_alphanumeric());
    let labels = RpcLabels {
        grpc_method: if known { method } else { "other" }.to_string(),
        grpc_code: code_name(code).to_string(),
    };
    EVENTS.handled.get_or_create(&labels).inc();
    EVENTS.handling.get_or_create(&labels).observe(seconds);
}

/// gRPC's own names for its codes (as grpc-go's `code.String()` has them).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// `count` o2cb members this node saw heartbeating stopped (o2cb evicts
/// such a member once the dead threshold passes).
pub fn members_lost(count: u64) {
    EVENTS.members_lost.inc_by(count);
}

/// How a NodeExpandVolume ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowOutcome {
    /// This call ran tunefs.ocfs2 and the filesystem grew.
    Grown,
    /// The filesystem already filled its partition (another node grew it).
    AlreadyFull,
    /// Refused: a node that mounts the volume does not see the new size yet.
    NodesBehind,
    Failed,
}

/// What a grow waited for before it could run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowWait {
    /// The volume's cluster lock (another node's grow or stage).
    VolumeLock,
    /// Every other node that mounts the volume to report its size.
    NodeSizes,
    /// The journal to write the last grow home (on-disk size = mounted).
    Journal,
}

pub fn grow_ended(outcome: GrowOutcome) {
    let outcome = match outcome {
        GrowOutcome::Grown => "grown",
        GrowOutcome::AlreadyFull => "already_full",
        GrowOutcome::NodesBehind => "nodes_behind",
        GrowOutcome::Failed => "failed",
    };
    EVENTS.grows.get_or_create(&OutcomeLabels { outcome }).inc();
}

pub fn grow_waited(wait: GrowWait, seconds: f64) {
    let wait = match wait {
        GrowWait::VolumeLock => "volume_lock",
        GrowWait::NodeSizes => "node_sizes",
        GrowWait::Journal => "journal",
    };
    EVENTS
        .grow_waits
        .get_or_create(&WaitLabels { wait })
        .observe(seconds);
}

/// One gauge value read at scrape time: `name` without the prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            name,
            help,
            labels: Vec::new(),
            value,
        }
    }

    /// Adds a label; its value is escaped here, as the text format asks
    /// (the encoder writes values as given).
    pub fn label(mut self, key: &'static str, value: impl AsRef<str>) -> Sample {
        self.labels.push((key, escape_label(value.as_ref())));
        self
    }
}

fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// What a mode knows now, read at each scrape.
pub trait Gauges: Send + Sync + 'static {
    fn read(&self) -> BoxFuture<'_, Vec<Sample>>;
}

/// Which event families a mode shows: a family that can never move in a
/// mode would only mislead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Controller,
    Node,
}

type GaugeFamily = Family<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>;

/// The text a scrape gets: the events of `mode`, then `samples` (one
/// family per name, in first-seen order).
pub fn render(mode: Mode, samples: Vec<Sample>) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    let e = &*EVENTS;
    registry.register(
        "grpc_server_handled",
        "gRPC calls served, by method and status code",
        e.handled.clone(),
    );
    registry.register(
        "grpc_server_handling_seconds",
        "Time to answer a gRPC call, by method and status code",
        e.handling.clone(),
    );
    if mode == Mode::Node {
        registry.register(
            "o2cb_members_lost",
            "o2cb members this node saw stop heartbeating (o2cb evicts them after the dead threshold)",
            e.members_lost.clone(),
        );
        registry.register(
            "volume_grows",
            "NodeExpandVolume calls, by outcome",
            e.grows.clone(),
        );
        registry.register(
            "volume_grow_wait_seconds",
            "Time a grow waited, by what it waited for",
            e.grow_waits.clone(),
        );
    }
    let mut families: Vec<(&'static str, &'static str, Vec<Sample>)> = Vec::new();
    for s in samples {
        match families.iter_mut().find(|(n, _, _)| *n == s.name) {
            Some((_, _, all)) => all.push(s),
            None => families.push((s.name, s.help, vec![s])),
        }
    }
    for (name, help, all) in families {
        if let [one] = &all[..] {
            if one.labels.is_empty() {
                let gauge = Gauge::<f64, AtomicU64>::default();
                gauge.set(one.value);
                registry.register(name, help, gauge);
                continue;
            }
        }
        let family = GaugeFamily::default();
        for s in all {
            family.get_or_create(&s.labels).set(s.value);
        }
        registry.register(name, help, family);
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the first line starting with `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn calls_are_counted_and_timed_by_method_and_code() {
        rpc_handled("TestOnlyMethod", tonic::Code::Ok, 0.003);
        rpc_handled("TestOnlyMethod", tonic::Code::Ok, 7.0);
        rpc_handled("TestOnlyMethod", tonic::Code::InvalidArgument, 0.001);
        rpc_handled("Nope\"{", tonic::Code::Unimplemented, 0.001);
        let text = render(Mode::Controller, Vec::new());
        let ok = r#"{grpc_method="TestOnlyMethod",grpc_code="OK"}"#;
        let bad = r#"{grpc_method="TestOnlyMethod",grpc_code="InvalidArgument"}"#;
        let handled = "ocfs2_csi_grpc_server_handled_total";
        assert_eq!(value(&text, &format!("{handled}{ok}")), Some(2.0), "{text}");
        assert_eq!(value(&text, &format!("{handled}{bad}")), Some(1.0));
        let count = "ocfs2_csi_grpc_server_handling_seconds_count";
        assert_eq!(value(&text, &format!("{count}{ok}")), Some(2.0));
        let le5 = r#"ocfs2_csi_grpc_server_handling_seconds_bucket{le="5.0",grpc_method="TestOnlyMethod",grpc_code="OK"}"#;
        assert_eq!(value(&text, le5), Some(1.0), "{text}");
        let other =
            r#"ocfs2_csi_grpc_server_handled_total{grpc_method="other",grpc_code="Unimplemented"}"#;
        assert!(value(&text, other).is_some_and(|n| n >= 1.0), "{text}");
        assert!(!text.contains("Nope"));
        // Node-only families are not shown by a controller.
        assert!(!text.contains("volume_grows"));
    }

    #[test]
    fn samples_become_one_gauge_family_per_name() {
        let samples = vec![
            Sample::new("lun_free_bytes", "Free bytes", 10.0).label("lun", "/dev/a"),
            Sample::new("lun_volumes", "Volumes", 3.0).label("lun", "/dev/a"),
            Sample::new("lun_free_bytes", "Free bytes", 20.0).label("lun", "/dev/b\"x\\y\nz"),
        ];
        let text = render(Mode::Node, samples);
        assert_eq!(
            text.matches("# TYPE ocfs2_csi_lun_free_bytes gauge")
                .count(),
            1
        );
        assert_eq!(
            value(&text, r#"ocfs2_csi_lun_free_bytes{lun="/dev/a"}"#),
            Some(10.0)
        );
        assert_eq!(
            value(&text, r#"ocfs2_csi_lun_free_bytes{lun="/dev/b\"x\\y\nz"}"#),
            Some(20.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"ocfs2_csi_lun_volumes{lun="/dev/a"}"#),
            Some(3.0)
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
