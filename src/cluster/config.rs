//! What this node is told about the o2cb cluster: its name, heartbeat mode,
//! timeouts and port. Every node must be given the same values; o2net and
//! o2hb refuse peers whose timeouts differ.

use crate::ocfs2::layout::HeartbeatMode;

use super::error::ClusterError;

/// The port o2cb's own tools use.
pub const DEFAULT_PORT: u16 = 7777;

/// o2hb ignores a dead threshold of 2 or less (it only takes values above
/// O2HB_MIN_DEAD_THRESHOLD = 2), so the write would silently do nothing.
pub const MIN_DEAD_THRESHOLD: u32 = 3;

/// Heartbeat and network timeouts, as the kernel's configfs files hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Heartbeat iterations (2 s each) without an update before a node is
    /// declared dead.
    pub dead_threshold: u32,
    pub idle_timeout_ms: u32,
    pub keepalive_delay_ms: u32,
    pub reconnect_delay_ms: u32,
}

/// The kernel's own values after `mkdir cluster/<name>`, so a cluster made
/// with defaults matches one made by o2cb's tools.
impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            dead_threshold: 31,
            idle_timeout_ms: 30000,
            keepalive_delay_ms: 2000,
            reconnect_delay_ms: 2000,
        }
    }
}

impl Timeouts {
    /// The chart's `o2cb.profile: fast`: a node whose heartbeat write takes
    /// 30 s fences itself and the others declare it dead after 32 s; o2net
    /// drops a silent peer after 15 s. Half of o2cb's defaults: node loss
    /// stops the survivors about half as long, and an outage of every
    /// storage path longer than 30 s fences the node (README, "Failover
    /// profiles").
    pub const FAST: Timeouts = Timeouts {
        dead_threshold: 16,
        idle_timeout_ms: 15000,
        keepalive_delay_ms: 2000,
        reconnect_delay_ms: 2000,
    };

    /// How long a node's own heartbeat write may take before it fences
    /// itself: (threshold - 1) heartbeats of 2 s. The others declare a
    /// silent node dead one heartbeat later.
    pub fn dead_time(&self) -> std::time::Duration {
        std::time::Duration::from_secs(2 * u64::from(self.dead_threshold.saturating_sub(1)))
    }

    /// The values the kernel would refuse (or, for the threshold, ignore).
    pub fn validate(&self) -> Result<(), String> {
        if self.dead_threshold < MIN_DEAD_THRESHOLD {
            return Err(format!(
                "dead_threshold {} must be at least {MIN_DEAD_THRESHOLD}",
                self.dead_threshold
            ));
        }
        // configfs rejects 0 and u32::MAX for the o2net values.
        for (name, value) in self.named().into_iter().skip(1) {
            if value == 0 || value == u32::MAX {
                return Err(format!(
                    "{name} {value} must be between 1 and {}",
                    u32::MAX - 1
                ));
            }
        }
        if self.keepalive_delay_ms >= self.idle_timeout_ms {
            return Err(format!(
                "keepalive_delay_ms {} must be smaller than idle_timeout_ms {}",
                self.keepalive_delay_ms, self.idle_timeout_ms
            ));
        }
        Ok(())
    }

    /// Each value under its configfs file name, threshold first.
    pub fn named(&self) -> [(&'static str, u32); 4] {
        [
            ("dead_threshold", self.dead_threshold),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("keepalive_delay_ms", self.keepalive_delay_ms),
            ("reconnect_delay_ms", self.reconnect_delay_ms),
        ]
    }
}

/// The cluster this node joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub heartbeat: HeartbeatMode,
    pub timeouts: Timeouts,
    /// The port of members whose line does not name one.
    pub port: u16,
}

impl ClusterConfig {
    /// A cluster with the kernel's default timeouts and o2cb's port.
    pub fn new(name: impl Into<String>, heartbeat: HeartbeatMode) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            heartbeat,
            timeouts: Timeouts::default(),
            port: DEFAULT_PORT,
        }
    }

    pub fn validate(&self) -> Result<(), ClusterError> {
        crate::ocfs2::validate_cluster_name(&self.name)
            .and_then(|()| self.timeouts.validate())
            .and_then(|()| validate_port(self.port))
            .map_err(ClusterError::Config)
    }
}

/// configfs takes ports 1 to 65534 (it rejects 0 and `(u16)-1`).
pub fn validate_port(port: u16) -> Result<(), String> {
    if port == 0 || port == u16::MAX {
        return Err(format!(
            "port {port} must be between 1 and {}",
            u16::MAX - 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart sets the profiles' timeouts from its own table
    /// (`ocfs2-csi.o2cbTimeouts`): it must say what this code says.
    #[test]
    fn the_charts_profiles_are_these() {
        let helpers = include_str!("../../deploy/helm/ocfs2-csi/templates/_helpers.tpl");
        let dict = |t: &Timeouts| {
            format!(
                "(dict \"deadThreshold\" {} \"idleTimeoutMs\" {} \"keepaliveDelayMs\" {} \"reconnectDelayMs\" {})",
                t.dead_threshold, t.idle_timeout_ms, t.keepalive_delay_ms, t.reconnect_delay_ms
            )
        };
        let default = dict(&Timeouts::default());
        assert!(
            helpers.contains(&format!("$default := {}", &default[1..default.len() - 1])),
            "{default}"
        );
        assert!(helpers.contains(&format!("\"fast\" {}", dict(&Timeouts::FAST))));
        Timeouts::FAST.validate().unwrap();
        assert_eq!(Timeouts::FAST.dead_time().as_secs(), 30);
        assert_eq!(Timeouts::default().dead_time().as_secs(), 60);
    }

    #[test]
    fn defaults_are_valid_and_limits_are_the_kernels() {
        assert!(ClusterConfig::new("lab", HeartbeatMode::Global)
            .validate()
            .is_ok());
        let bad = |f: fn(&mut Timeouts)| {
            let mut t = Timeouts::default();
            f(&mut t);
            t.validate().unwrap_err()
        };
        assert!(bad(|t| t.dead_threshold = 2).contains("at least 3"));
        assert!(bad(|t| t.reconnect_delay_ms = 0).contains("reconnect_delay_ms 0"));
        assert!(bad(|t| t.keepalive_delay_ms = 30000).contains("smaller than"));
        let mut cfg = ClusterConfig::new("a/b", HeartbeatMode::Local);
        assert!(cfg.validate().is_err());
        cfg.name = "lab".into();
        cfg.port = 65535;
        assert!(cfg.validate().unwrap_err().to_string().contains("65534"));
    }
}
