//! The node plugin's metrics read at scrape time: the o2cb members as this
//! node's kernel sees them, its heartbeat per region, and the volumes it
//! has staged. Also the watch that counts members lost between scrapes.

use super::records::{StageRecord, StageRecords};
use crate::cluster::heartbeat::{live_nodes, region_write_age};
use crate::cluster::{ConfigFs, CurrentCluster, KernelPaths};
use crate::metrics::{members_lost, Gauges, Sample};
use futures::future::BoxFuture;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// o2hb writes every region every 2 s; a member is declared dead after
/// (dead_threshold - 1) of them.
const HEARTBEAT_MS: f64 = 2000.0;

#[derive(Clone)]
pub struct NodeGauges {
    pub cluster: String,
    pub paths: KernelPaths,
    pub records: Arc<dyn StageRecords>,
}

/// What the kernel says, read on a blocking thread (configfs, debugfs).
struct Kernel {
    cluster: Option<CurrentCluster>,
    live: BTreeSet<u8>,
    regions: Vec<(String, Option<Duration>)>,
}

impl NodeGauges {
    fn kernel(&self) -> Kernel {
        let configfs = ConfigFs::new(&self.paths.configfs);
        let cluster = configfs
            .current()
            .ok()
            .flatten()
            .filter(|c| c.name == self.cluster);
        let live = live_nodes(&self.paths.debugfs).unwrap_or_default();
        let regions = match &cluster {
            None => Vec::new(),
            Some(_) => configfs
                .regions(&self.cluster)
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    let age = region_write_age(&self.paths.debugfs, &r).ok().flatten();
                    (r, age)
                })
                .collect(),
        };
        Kernel {
            cluster,
            live,
            regions,
        }
    }
}

impl NodeGauges {
    /// Each staged filesystem volume's flock holders on this node, from
    /// its OCFS2 lock states in debugfs; a volume whose file cannot be
    /// read is left out rather than shown as 0.
    fn disk_locks(&self, records: &[RecordRead]) -> Vec<(String, u64)> {
        records
            .iter()
            .flatten()
            .filter(|r| !r.block)
            .filter_map(|r| {
                let dir = r.fs_uuid.simple().to_string().to_uppercase();
                let path = self
                    .paths
                    .debugfs
                    .join("ocfs2")
                    .join(dir)
                    .join("locking_state");
                // Read a line at a time: a filesystem with many cached
                // inodes lists several lock resources for each.
                let file = std::fs::File::open(path).ok()?;
                let held = flock_holders(std::io::BufReader::new(file)).ok()?;
                Some((r.volume_id.clone(), held))
            })
            .collect()
    }
}

type RecordRead = Result<StageRecord, (PathBuf, std::io::Error)>;

/// o2dlm's protected read and exclusive levels (LKM_PRMODE, LKM_EXMODE).
const DLM_PR: i32 = 3;
const DLM_EX: i32 = 5;

/// Open files holding a flock, in an OCFS2 `locking_state` (one lock
/// resource per line, tab-separated: format version, name, level, ...).
/// A flock's resource is named `F` + padding + inode and is per open file;
/// unlocked, it drops to the null level.
pub fn flock_holders(locking_state: impl std::io::BufRead) -> std::io::Result<u64> {
    let mut held = 0;
    for line in locking_state.lines() {
        let line = line?;
        let mut fields = line.split('\t');
        let (_version, name, level) = (fields.next(), fields.next(), fields.next());
        let flock = name.is_some_and(|n| n.starts_with('F'));
        let level = level.and_then(|l| l.trim().parse::<i32>().ok());
        if flock && level.is_some_and(|l| l == DLM_PR || l == DLM_EX) {
            held += 1;
        }
    }
    Ok(held)
}

impl Gauges for NodeGauges {
    fn read(&self) -> BoxFuture<'_, Vec<Sample>> {
        Box::pin(async move {
            let me = self.clone();
            let read = tokio::task::spawn_blocking(move || {
                let records = me.records.all().unwrap_or_default();
                let locks = me.disk_locks(&records);
                (me.kernel(), records, locks)
            });
            let Ok((kernel, records, locks)) = read.await else {
                return Vec::new();
            };
            let block = records.iter().flatten().filter(|r| r.block).count();
            let staged = records.iter().flatten().count();
            let mut out = samples(&kernel);
            for (volume, held) in locks {
                let s = Sample::new(
                    "disk_locks_held",
                    "flock locks (ocfs2-csi disk-lock) held on this node on files of the volume",
                    held as f64,
                );
                out.push(s.label("volume", volume));
            }
            for (content, n) in [("filesystem", staged - block), ("block", block)] {
                let s = Sample::new("volumes_staged", "Volumes staged on this node", n as f64);
                out.push(s.label("content", content));
            }
            out
        })
    }
}

fn samples(k: &Kernel) -> Vec<Sample> {
    let mut out = Vec::new();
    let joined = Sample::new(
        "o2cb_joined",
        "1 when this node is a member of the driver's o2cb cluster in the kernel",
        f64::from(u8::from(k.cluster.is_some())),
    );
    out.push(joined);
    let Some(cluster) = &k.cluster else {
        return out;
    };
    let complete = || cluster.nodes.iter().filter(|n| n.is_complete());
    let live = complete().filter(|n| k.live.contains(&n.number)).count();
    let down = complete().count() - live;
    for (state, n) in [("live", live), ("down", down)] {
        let s = Sample::new(
            "o2cb_members",
            "o2cb members configured in the kernel, by whether they heartbeat (live) or not (down)",
            n as f64,
        );
        out.push(s.label("state", state));
    }
    for node in complete() {
        let s = Sample::new(
            "o2cb_member_live",
            "1 when the member heartbeats on disk as this node's kernel sees it",
            f64::from(u8::from(k.live.contains(&node.number))),
        );
        out.push(
            s.label("member", node.number.to_string())
                .label("node", &node.name),
        );
    }
    let dead = f64::from(cluster.timeouts.dead_threshold.saturating_sub(1)) * HEARTBEAT_MS / 1000.0;
    out.push(Sample::new(
        "o2cb_heartbeat_dead_seconds",
        "How long a member's heartbeat may stop before o2cb evicts it (and it fences itself)",
        dead,
    ));
    for (region, age) in &k.regions {
        let Some(age) = age else { continue };
        let s = Sample::new(
            "o2cb_heartbeat_write_age_seconds",
            "Time since this node's last heartbeat write to the region completed; near the dead time, it fences itself",
            age.as_secs_f64(),
        );
        out.push(s.label("region", region));
    }
    out
}

/// Members that heartbeated before and do not now, while this node itself
/// still heartbeats (when it stops, nobody was lost).
fn lost(before: &BTreeSet<u8>, now: &BTreeSet<u8>, me: u8) -> u64 {
    if !before.contains(&me) || !now.contains(&me) {
        return 0;
    }
    before.difference(now).count() as u64
}

/// Counts members lost (`ocfs2_csi_o2cb_members_lost_total`), looking as
/// often as o2hb writes.
pub async fn watch_losses(debugfs: PathBuf, me: u8) {
    let mut before: Option<BTreeSet<u8>> = None;
    loop {
        let path = debugfs.clone();
        let now = tokio::task::spawn_blocking(move || live_nodes(&path).ok())
            .await
            .ok()
            .flatten();
        if let Some(now) = now {
            if let Some(before) = &before {
                members_lost(lost(before, &now, me));
            }
            before = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS as u64)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{CurrentNode, Timeouts};
    use crate::metrics::{render, Mode};
    use crate::ocfs2::layout::HeartbeatMode;

    fn node(name: &str, number: u8) -> CurrentNode {
        CurrentNode {
            name: name.into(),
            number,
            address: [10, 0, 0, number + 1].into(),
            port: 7777,
            local: number == 0,
        }
    }

    #[test]
    fn members_are_shown_live_or_down_and_each_region_with_its_write_age() {
        let kernel = Kernel {
            cluster: Some(CurrentCluster {
                name: "c".into(),
                heartbeat: HeartbeatMode::Global,
                timeouts: Timeouts::default(),
                nodes: vec![node("a", 0), node("b", 1), node("c", 2)],
            }),
            live: [0, 2].into(),
            regions: vec![
                ("AB12".into(), Some(Duration::from_millis(1500))),
                ("CD34".into(), None),
            ],
        };
        let text = render(Mode::Node, samples(&kernel));
        for line in [
            "ocfs2_csi_o2cb_joined 1.0",
            r#"ocfs2_csi_o2cb_members{state="live"} 2.0"#,
            r#"ocfs2_csi_o2cb_members{state="down"} 1.0"#,
            r#"ocfs2_csi_o2cb_member_live{member="1",node="b"} 0.0"#,
            r#"ocfs2_csi_o2cb_member_live{member="2",node="c"} 1.0"#,
            r#"ocfs2_csi_o2cb_heartbeat_write_age_seconds{region="AB12"} 1.5"#,
            "ocfs2_csi_o2cb_heartbeat_dead_seconds 60.0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
        assert!(!text.contains("CD34"), "a region never written has no age");
    }

    #[test]
    fn not_joined_shows_only_that() {
        let kernel = Kernel {
            cluster: None,
            live: BTreeSet::new(),
            regions: Vec::new(),
        };
        let text = render(Mode::Node, samples(&kernel));
        assert!(
            text.lines().any(|l| l == "ocfs2_csi_o2cb_joined 0.0"),
            "{text}"
        );
        assert!(!text.contains("o2cb_members{"));
    }

    #[test]
    fn only_flock_resources_at_a_held_level_count() {
        let state = "0x4\tF$$$$$000000000000a00c0b1c2d3e\t5\t0x41\t0x0\t0x0\t0\t0\t5\t-1\t0x0\n\
                     0x4\tF$$$$$000000000000a00d0b1c2d3e\t0\t0x41\t0x0\t0x0\t0\t0\t0\t-1\n\
                     0x4\tM000000000000000000a00c0b1c2d3e\t5\t0x41\t0x0\t0x0\t0\t1\t5\t-1\n\
                     0x4\tF$$$$$000000000000a00e0b1c2d3e\t3\t0x41\t0x0\t0x0\t0\t0\t3\t-1\n";
        assert_eq!(flock_holders(state.as_bytes()).unwrap(), 2);
        assert_eq!(flock_holders(&b""[..]).unwrap(), 0);
    }

    #[test]
    fn a_loss_counts_only_while_this_node_heartbeats() {
        let all: BTreeSet<u8> = [0, 1, 2].into();
        assert_eq!(lost(&all, &[0, 2].into(), 0), 1);
        assert_eq!(lost(&all, &[0].into(), 0), 2);
        assert_eq!(lost(&all, &BTreeSet::new(), 0), 0, "we stopped, not they");
        assert_eq!(lost(&[1].into(), &[0, 1].into(), 0), 0);
    }
}
