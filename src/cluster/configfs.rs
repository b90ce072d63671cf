//! Reading and changing the o2cb cluster in configfs.
//!
//! The kernel's node manager is configured only through configfs: a cluster
//! is a directory under `cluster/`, each node a directory under its `node/`,
//! and attributes are files. Node attributes can be written once; changing
//! one means removing the node and adding it again.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::ocfs2::layout::HeartbeatMode;

use super::config::{ClusterConfig, Timeouts};
use super::error::ClusterError;
use super::membership::Member;
use super::plan::{plan_join, JoinReport, Step};
use super::state::{cluster_dir, CurrentCluster, CurrentNode};

/// The kernel's configfs mount point.
pub const CONFIGFS_ROOT: &str = "/sys/kernel/config";

/// The three operations configfs is driven with; tests swap in a fake that
/// creates the attribute files the kernel would.
pub(super) trait Ops: Send + Sync {
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// One write of `value` to an existing attribute file.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The real configfs.
struct Kernel;

impl Ops for Kernel {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // No create: configfs attributes exist from mkdir on, and a missing
        // one means the kernel lacks the feature, which must not be papered
        // over with a plain file.
        fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(value.as_bytes())
    }
}

/// configfs under `root` (normally [`CONFIGFS_ROOT`]).
#[derive(Clone)]
pub struct ConfigFs {
    root: PathBuf,
    pub(super) ops: Arc<dyn Ops>,
}

impl fmt::Debug for ConfigFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFs")
            .field("root", &self.root)
            .finish()
    }
}

impl ConfigFs {
    pub fn new(root: impl Into<PathBuf>) -> ConfigFs {
        ConfigFs {
            root: root.into(),
            ops: Arc::new(Kernel),
        }
    }

    #[cfg(test)]
    pub(super) fn with_ops(root: impl Into<PathBuf>, ops: Arc<dyn Ops>) -> ConfigFs {
        ConfigFs {
            root: root.into(),
            ops,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cluster configfs holds, read back from its files.
    pub fn current(&self) -> Result<Option<CurrentCluster>, ClusterError> {
        let base = self.root.join("cluster");
        let names = subdirs(&base).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ClusterError::Missing {
                path: base.clone(),
                hint: "configfs is not mounted or the ocfs2 node manager module is not loaded",
            },
            _ => ClusterError::Read {
                path: base.clone(),
                source,
            },
        })?;
        match &names[..] {
            [] => Ok(None),
            [name] => self.read_cluster(name).map(Some),
            _ => Err(ClusterError::SeveralClusters { path: base, names }),
        }
    }

    fn read_cluster(&self, name: &str) -> Result<CurrentCluster, ClusterError> {
        let dir = self.root.join(cluster_dir(name));
        let mode_path = dir.join("heartbeat/mode");
        let mode = read_trimmed(&mode_path)?;
        let heartbeat = HeartbeatMode::parse(&mode).ok_or(ClusterError::Value {
            path: mode_path,
            value: mode,
            expected: "local or global",
        })?;
        let timeouts = Timeouts {
            dead_threshold: read_value(&dir.join("heartbeat/dead_threshold"))?,
            idle_timeout_ms: read_value(&dir.join("idle_timeout_ms"))?,
            keepalive_delay_ms: read_value(&dir.join("keepalive_delay_ms"))?,
            reconnect_delay_ms: read_value(&dir.join("reconnect_delay_ms"))?,
        };
        let nodes_dir = dir.join("node");
        let names = subdirs(&nodes_dir).map_err(|source| ClusterError::Read {
            path: nodes_dir.clone(),
            source,
        })?;
        let nodes = names
            .into_iter()
            .map(|n| read_node(&nodes_dir.join(&n), n))
            .collect::<Result<_, _>>()?;
        Ok(CurrentCluster {
            name: name.to_string(),
            heartbeat,
            timeouts,
            nodes,
        })
    }

    /// The heartbeat regions cluster `name` has in configfs.
    pub fn regions(&self, name: &str) -> Result<Vec<String>, ClusterError> {
        let dir = self.root.join(cluster_dir(name)).join("heartbeat");
        subdirs(&dir).map_err(|source| ClusterError::Read { path: dir, source })
    }

    /// Carries out `steps` in order, stopping at the first failure. What was
    /// done before it stays done; planning again from [`ConfigFs::current`]
    /// picks up from there.
    pub fn apply(&self, steps: &[Step]) -> Result<(), ClusterError> {
        for step in steps {
            tracing::debug!(%step, "configfs");
            match step {
                Step::Mkdir(rel) => {
                    let path = self.root.join(rel);
                    self.ops
                        .mkdir(&path)
                        .map_err(|source| ClusterError::Mkdir { path, source })?;
                }
                Step::Rmdir(rel) => {
                    let path = self.root.join(rel);
                    self.ops
                        .rmdir(&path)
                        .map_err(|source| ClusterError::Rmdir { path, source })?;
                }
                Step::Write { path: rel, value } => {
                    let path = self.root.join(rel);
                    self.ops
                        .write(&path, value)
                        .map_err(|source| ClusterError::Write {
                            path,
                            value: value.clone(),
                            source,
                        })?;
                }
            }
        }
        Ok(())
    }

    /// Brings configfs to `members` with this node (`local_name`) as the
    /// local node: reads what is there, plans, applies. `live` are the node
    /// numbers heartbeating now, which are never removed. Blocking (file
    /// I/O on configfs); the kernel makes each write take effect at once.
    pub fn join(
        &self,
        cfg: &ClusterConfig,
        local_name: &str,
        members: &[Member],
        live: &BTreeSet<u8>,
    ) -> Result<JoinReport, ClusterError> {
        let current = self.current()?;
        let plan = plan_join(cfg, local_name, members, current.as_ref(), live)?;
        for kept in &plan.report.kept_alive {
            tracing::warn!(cluster = %cfg.name, "{kept}");
        }
        self.apply(&plan.steps)?;
        Ok(plan.report)
    }
}

fn read_node(dir: &Path, name: String) -> Result<CurrentNode, ClusterError> {
    let address_path = dir.join("ipv4_address");
    let address = read_trimmed(&address_path)?;
    Ok(CurrentNode {
        number: read_value(&dir.join("num"))?,
        address: address.parse().map_err(|_| ClusterError::Value {
            path: address_path,
            value: address,
            expected: "an IPv4 address",
        })?,
        port: read_value(&dir.join("ipv4_port"))?,
        local: read_value::<u8>(&dir.join("local"))? != 0,
        name,
    })
}

/// Directory names under `dir`, sorted.
fn subdirs(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// An attribute's value without the newline the kernel appends.
pub(super) fn read_trimmed(path: &Path) -> Result<String, ClusterError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| ClusterError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn read_value<T: FromStr>(path: &Path) -> Result<T, ClusterError> {
    let value = read_trimmed(path)?;
    value.parse().map_err(|_| ClusterError::Value {
        path: path.to_path_buf(),
        value,
        expected: "a number",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::FakeConfigFs;

    fn m(name: &str, number: u8) -> Member {
        Member {
            name: name.into(),
            number,
            address: [10, 0, 0, number + 1].into(),
            port: 7000 + u16::from(number),
        }
    }

    fn custom() -> ClusterConfig {
        let mut cfg = ClusterConfig::new("lab", HeartbeatMode::Local);
        cfg.timeouts = Timeouts {
            dead_threshold: 15,
            idle_timeout_ms: 20000,
            keepalive_delay_ms: 1000,
            reconnect_delay_ms: 500,
        };
        cfg
    }

    #[test]
    fn join_round_trips_and_a_second_join_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeConfigFs::new(dir.path());
        let fs = fake.configfs();
        assert_eq!(fs.current().unwrap(), None);
        let cfg = custom();
        let members = [m("node-b", 1), m("node-a", 0)];
        let none = BTreeSet::new();
        let plan = plan_join(&cfg, "node-b", &members, None, &none).unwrap();
        let report = fs.join(&cfg, "node-b", &members, &none).unwrap();
        assert_eq!(report, plan.report);
        let applied: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        assert_eq!(fake.take_log(), applied);
        let node = |m: &Member, local| CurrentNode {
            name: m.name.clone(),
            number: m.number,
            address: m.address,
            port: m.port,
            local,
        };
        assert_eq!(
            fs.current().unwrap(),
            Some(CurrentCluster {
                name: "lab".into(),
                heartbeat: HeartbeatMode::Local,
                timeouts: cfg.timeouts,
                nodes: vec![node(&members[1], false), node(&members[0], true)],
            })
        );
        // A restarted plugin adopts it and touches nothing.
        let live = BTreeSet::from([0, 1]);
        let again = fs.join(&cfg, "node-b", &members, &live).unwrap();
        assert_eq!(again, JoinReport::default());
        assert!(fake.take_log().is_empty());
    }

    #[test]
    fn membership_changes_reach_configfs() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeConfigFs::new(dir.path());
        let fs = fake.configfs();
        let cfg = ClusterConfig::new("lab", HeartbeatMode::Global);
        let none = BTreeSet::new();
        fs.join(&cfg, "b", &[m("a", 0), m("b", 1), m("c", 2)], &none)
            .unwrap();
        let mut moved = m("a", 0);
        moved.port = 7777;
        let report = fs.join(&cfg, "b", &[moved, m("b", 1)], &none).unwrap();
        assert_eq!(report.removed, ["a", "c"]);
        assert_eq!(report.added, ["a"]);
        let nodes = fs.current().unwrap().unwrap().nodes;
        let summary: Vec<(String, u16, bool)> = nodes
            .into_iter()
            .map(|n| (n.name, n.port, n.local))
            .collect();
        assert_eq!(
            summary,
            [("a".into(), 7777, false), ("b".into(), 7001, true)]
        );
    }

    #[test]
    fn missing_or_several_clusters_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let fs = ConfigFs::new(dir.path());
        assert!(matches!(fs.current(), Err(ClusterError::Missing { .. })));
        fs::create_dir_all(dir.path().join("cluster/one")).unwrap();
        fs::create_dir_all(dir.path().join("cluster/two")).unwrap();
        let err = fs.current().unwrap_err().to_string();
        assert!(err.contains("several o2cb clusters (one, two)"), "{err}");
    }

    #[test]
    fn real_writes_never_create_attribute_files() {
        let dir = tempfile::tempdir().unwrap();
        let fs = ConfigFs::new(dir.path());
        let step = Step::Write {
            path: "cluster/lab/idle_timeout_ms".into(),
            value: "30000".into(),
        };
        let err = fs
            .apply(&[Step::Mkdir("cluster".into()), step])
            .unwrap_err();
        assert!(
            matches!(&err, ClusterError::Write { value, .. } if value == "30000"),
            "{err}"
        );
        assert!(!dir.path().join("cluster/lab").exists());
        assert_eq!(fs.current().unwrap(), None);
    }
}
