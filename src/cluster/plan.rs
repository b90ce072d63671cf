//! What must change in configfs for this node to be in the cluster: a pure
//! function of the configuration, the members, what configfs holds and who
//! is heartbeating, so every rule is tested without a kernel.
//!
//! The running cluster wins wherever changing it could hurt: its name,
//! heartbeat mode and timeouts are never rewritten, this node's identity is
//! never changed under it, and nodes still heartbeating are never removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use super::config::ClusterConfig;
use super::error::{ClusterError, Conflict, Difference};
use super::membership::{validate_members, Member};
use super::state::{cluster_dir, node_dir, CurrentCluster, CurrentNode};

/// One configfs operation; paths are relative to the configfs root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Mkdir(PathBuf),
    Rmdir(PathBuf),
    Write { path: PathBuf, value: String },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Mkdir(p) => write!(f, "mkdir {}", p.display()),
            Step::Rmdir(p) => write!(f, "rmdir {}", p.display()),
            Step::Write { path, value } => write!(f, "write {} = {value}", path.display()),
        }
    }
}

/// Whether this node made the cluster or found it there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterOrigin {
    #[default]
    Adopted,
    Created,
}

/// A node entry left as it is because it is still heartbeating, or a member
/// not added because such an entry holds its number or address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeptAlive {
    /// Gone from the membership source but still alive.
    Departed { name: String, number: u8 },
    /// The source gives it another number or address, but it is alive with
    /// the old ones.
    Changed {
        name: String,
        running: String,
        wanted: String,
    },
    /// Not added: a live entry holds its number or address.
    Blocked { name: String, holder: String },
}

impl fmt::Display for KeptAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeptAlive::Departed { name, number } => write!(
                f,
                "node {name} (number {number}) departed but is still alive; kept until it stops heartbeating"
            ),
            KeptAlive::Changed { name, running, wanted } => write!(
                f,
                "node {name} should be {wanted} but is alive as {running}; kept until it stops heartbeating"
            ),
            KeptAlive::Blocked { name, holder } => write!(
                f,
                "node {name} not added: live node {holder} still holds its number or address"
            ),
        }
    }
}

/// What a join did (or, in a plan, will do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinReport {
    pub cluster: ClusterOrigin,
    /// Node entries made, including ones re-made with new values.
    pub added: Vec<String>,
    /// Node entries removed, including ones re-made with new values.
    pub removed: Vec<String>,
    pub kept_alive: Vec<KeptAlive>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinPlan {
    /// Empty when configfs already matches: a restarted plugin writes
    /// nothing.
    pub steps: Vec<Step>,
    pub report: JoinReport,
}

/// The steps that make configfs hold `cfg`'s cluster with `members`, this
/// node (`local_name`) being the local one. Errors leave nothing planned.
pub fn plan_join(
    cfg: &ClusterConfig,
    local_name: &str,
    members: &[Member],
    current: Option<&CurrentCluster>,
    live: &BTreeSet<u8>,
) -> Result<JoinPlan, ClusterError> {
    cfg.validate()?;
    validate_members(members).map_err(|p| ClusterError::Members(p.message))?;
    if !members.iter().any(|m| m.name == local_name) {
        return Err(ClusterError::NotAMember {
            name: local_name.to_string(),
        });
    }
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|m| m.number);
    let mut plan = JoinPlan::default();
    let Some(current) = current else {
        plan.report.cluster = ClusterOrigin::Created;
        create_cluster(cfg, &mut plan.steps);
        for m in sorted {
            add_node(cfg, m, m.name == local_name, &mut plan);
        }
        return Ok(plan);
    };
    check_cluster(cfg, current)?;
    if let Some(other) = current
        .nodes
        .iter()
        .find(|n| n.local && n.name != local_name)
    {
        return Err(Conflict::OtherLocal {
            cluster: cfg.name.clone(),
            name: local_name.to_string(),
            other: other.name.clone(),
        }
        .into());
    }
    let wanted: BTreeMap<&str, &Member> = members.iter().map(|m| (m.name.as_str(), m)).collect();
    // Entries that stay, and whether ours only lacks `local`.
    let mut staying: Vec<&CurrentNode> = Vec::new();
    let mut set_local = false;
    for node in &current.nodes {
        let alive = node.is_complete() && live.contains(&node.number);
        let ours = node.name == local_name;
        match wanted.get(node.name.as_str()) {
            Some(m) if node.matches(m) => {
                staying.push(node);
                set_local |= ours && !node.local;
            }
            // Only a local entry can be in use; one that never got `local`
            // (an interrupted join) is safe to re-make.
            Some(m) if ours && node.local => {
                return Err(Conflict::LocalChanged {
                    cluster: cfg.name.clone(),
                    name: local_name.to_string(),
                    running: node.describe(),
                    wanted: m.describe(),
                }
                .into())
            }
            Some(m) if alive => {
                staying.push(node);
                plan.report.kept_alive.push(KeptAlive::Changed {
                    name: node.name.clone(),
                    running: node.describe(),
                    wanted: m.describe(),
                });
            }
            None if alive => {
                staying.push(node);
                plan.report.kept_alive.push(KeptAlive::Departed {
                    name: node.name.clone(),
                    number: node.number,
                });
            }
            _ => {
                plan.steps
                    .push(Step::Rmdir(node_dir(&cfg.name, &node.name)));
                plan.report.removed.push(node.name.clone());
            }
        }
    }
    for m in sorted {
        if staying.iter().any(|n| n.name == m.name) {
            continue;
        }
        // The kernel refuses a second entry with a number or address in use.
        let holder = staying
            .iter()
            .find(|n| n.number == m.number || n.address == m.address);
        match holder {
            Some(holder) if m.name == local_name => {
                return Err(Conflict::Taken {
                    cluster: cfg.name.clone(),
                    name: local_name.to_string(),
                    holder: holder.name.clone(),
                    what: m.describe(),
                }
                .into())
            }
            Some(holder) => plan.report.kept_alive.push(KeptAlive::Blocked {
                name: m.name.clone(),
                holder: holder.name.clone(),
            }),
            None => add_node(cfg, m, m.name == local_name, &mut plan),
        }
    }
    if set_local {
        plan.steps
            .push(write(node_dir(&cfg.name, local_name).join("local"), 1));
    }
    Ok(plan)
}

/// Same name, heartbeat mode and timeouts, or a conflict naming each
/// difference.
fn check_cluster(cfg: &ClusterConfig, current: &CurrentCluster) -> Result<(), Conflict> {
    if current.name != cfg.name {
        return Err(Conflict::OtherCluster {
            existing: current.name.clone(),
            wanted: cfg.name.clone(),
        });
    }
    let mut differences = Vec::new();
    if current.heartbeat != cfg.heartbeat {
        differences.push(Difference {
            setting: "heartbeat mode",
            running: current.heartbeat.to_string(),
            configured: cfg.heartbeat.to_string(),
        });
    }
    let running = current.timeouts.named();
    for ((setting, running), (_, configured)) in running.into_iter().zip(cfg.timeouts.named()) {
        if running != configured {
            differences.push(Difference {
                setting,
                running: running.to_string(),
                configured: configured.to_string(),
            });
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Conflict::Settings {
            cluster: cfg.name.clone(),
            differences,
        })
    }
}

/// The keepalive delay the kernel gives a new cluster.
const KERNEL_KEEPALIVE_MS: u32 = 2000;

/// Heartbeat settings go in before any node: o2hb takes them only while no
/// region is running.
fn create_cluster(cfg: &ClusterConfig, steps: &mut Vec<Step>) {
    let dir = cluster_dir(&cfg.name);
    let t = &cfg.timeouts;
    steps.push(Step::Mkdir(dir.clone()));
    steps.push(write(dir.join("heartbeat/mode"), cfg.heartbeat));
    steps.push(write(
        dir.join("heartbeat/dead_threshold"),
        t.dead_threshold,
    ));
    let idle = write(dir.join("idle_timeout_ms"), t.idle_timeout_ms);
    let keepalive = write(dir.join("keepalive_delay_ms"), t.keepalive_delay_ms);
    // The kernel checks each write against the other's current value (idle
    // must stay above keepalive), so an idle timeout at or below the
    // default keepalive needs the keepalive lowered first.
    if t.idle_timeout_ms > KERNEL_KEEPALIVE_MS {
        steps.extend([idle, keepalive]);
    } else {
        steps.extend([keepalive, idle]);
    }
    steps.push(write(dir.join("reconnect_delay_ms"), t.reconnect_delay_ms));
}

/// The kernel takes a node's number only after its port and address, and
/// `local` only after all three.
fn add_node(cfg: &ClusterConfig, m: &Member, local: bool, plan: &mut JoinPlan) {
    let dir = node_dir(&cfg.name, &m.name);
    plan.steps.push(Step::Mkdir(dir.clone()));
    plan.steps.push(write(dir.join("ipv4_port"), m.port));
    plan.steps.push(write(dir.join("ipv4_address"), m.address));
    plan.steps.push(write(dir.join("num"), m.number));
    if local {
        plan.steps.push(write(dir.join("local"), 1));
    }
    plan.report.added.push(m.name.clone());
}

fn write(path: PathBuf, value: impl ToString) -> Step {
    Step::Write {
        path,
        value: value.to_string(),
    }
}

#[cfg(test)]
mod tests;
