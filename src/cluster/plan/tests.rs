//! The planner's rules, one case each.

use super::*;
use crate::cluster::config::Timeouts;
use crate::ocfs2::layout::HeartbeatMode;
use std::net::Ipv4Addr;

fn cfg() -> ClusterConfig {
    ClusterConfig::new("lab", HeartbeatMode::Global)
}

fn m(name: &str, number: u8) -> Member {
    Member {
        name: name.into(),
        number,
        address: [10, 0, 0, number + 1].into(),
        port: 7777,
    }
}

fn node(member: &Member, local: bool) -> CurrentNode {
    CurrentNode {
        name: member.name.clone(),
        number: member.number,
        address: member.address,
        port: member.port,
        local,
    }
}

fn cluster(nodes: Vec<CurrentNode>) -> CurrentCluster {
    CurrentCluster {
        name: "lab".into(),
        heartbeat: HeartbeatMode::Global,
        timeouts: Timeouts::default(),
        nodes,
    }
}

fn live(numbers: &[u8]) -> BTreeSet<u8> {
    numbers.iter().copied().collect()
}

fn plan(members: &[Member], current: Option<&CurrentCluster>, alive: &[u8]) -> JoinPlan {
    plan_join(&cfg(), "b", members, current, &live(alive)).unwrap()
}

fn steps(plan: &JoinPlan) -> Vec<String> {
    plan.steps.iter().map(ToString::to_string).collect()
}

fn conflict(members: &[Member], current: &CurrentCluster, alive: &[u8]) -> Conflict {
    match plan_join(&cfg(), "b", members, Some(current), &live(alive)) {
        Err(ClusterError::Conflict(c)) => c,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// The three writes (and mkdir) that add a node, without `local`.
fn adds(name: &str, number: u8) -> Vec<String> {
    let dir = format!("cluster/lab/node/{name}");
    vec![
        format!("mkdir {dir}"),
        format!("write {dir}/ipv4_port = 7777"),
        format!("write {dir}/ipv4_address = 10.0.0.{}", number + 1),
        format!("write {dir}/num = {number}"),
    ]
}

#[test]
fn fresh_cluster_settings_first_then_nodes_by_number() {
    let p = plan(&[m("b", 1), m("a", 0)], None, &[]);
    let mut want: Vec<String> = [
        "mkdir cluster/lab",
        "write cluster/lab/heartbeat/mode = global",
        "write cluster/lab/heartbeat/dead_threshold = 31",
        "write cluster/lab/idle_timeout_ms = 30000",
        "write cluster/lab/keepalive_delay_ms = 2000",
        "write cluster/lab/reconnect_delay_ms = 2000",
    ]
    .map(String::from)
    .to_vec();
    want.extend(adds("a", 0));
    want.extend(adds("b", 1));
    want.push("write cluster/lab/node/b/local = 1".into());
    assert_eq!(steps(&p), want);
    assert_eq!(p.report.cluster, ClusterOrigin::Created);
    assert_eq!(p.report.added, ["a", "b"]);
}

#[test]
fn short_idle_timeout_lowers_keepalive_first() {
    let mut c = cfg();
    c.timeouts.idle_timeout_ms = 1500;
    c.timeouts.keepalive_delay_ms = 500;
    let p = plan_join(&c, "b", &[m("b", 1)], None, &live(&[])).unwrap();
    assert_eq!(
        steps(&p)[3..5],
        [
            "write cluster/lab/keepalive_delay_ms = 500",
            "write cluster/lab/idle_timeout_ms = 1500"
        ]
    );
}

#[test]
fn unchanged_cluster_is_adopted_with_nothing_to_do() {
    let members = [m("a", 0), m("b", 1)];
    let current = cluster(vec![node(&members[0], false), node(&members[1], true)]);
    let p = plan(&members, Some(&current), &[0, 1]);
    assert_eq!(p, JoinPlan::default());
}

#[test]
fn another_cluster_is_refused() {
    let mut current = cluster(vec![]);
    current.name = "other".into();
    let c = conflict(&[m("b", 1)], &current, &[]);
    assert_eq!(
        c.to_string(),
        "configfs already holds o2cb cluster \"other\"; this node is configured for \
         \"lab\"; the host is already in another o2cb cluster, refusing to change it \
         (nothing was changed)"
    );
}

#[test]
fn other_settings_are_named_and_never_rewritten() {
    let mut current = cluster(vec![]);
    current.heartbeat = HeartbeatMode::Local;
    current.timeouts.idle_timeout_ms = 60000;
    let Conflict::Settings { differences, .. } = conflict(&[m("b", 1)], &current, &[]) else {
        panic!("not a settings conflict");
    };
    let text: Vec<String> = differences.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "heartbeat mode is local but configured as global",
            "idle_timeout_ms is 60000 but configured as 30000",
        ]
    );
}

#[test]
fn new_member_is_added_alone() {
    let current = cluster(vec![node(&m("a", 0), false), node(&m("b", 1), true)]);
    let p = plan(&[m("a", 0), m("b", 1), m("c", 2)], Some(&current), &[0, 1]);
    assert_eq!(steps(&p), adds("c", 2));
    assert_eq!(p.report.added, ["c"]);
}

#[test]
fn departed_member_is_removed_only_when_not_alive() {
    let current = cluster(vec![node(&m("a", 0), false), node(&m("b", 1), true)]);
    let p = plan(&[m("b", 1)], Some(&current), &[1]);
    assert_eq!(steps(&p), ["rmdir cluster/lab/node/a"]);
    assert_eq!(p.report.removed, ["a"]);
    let p = plan(&[m("b", 1)], Some(&current), &[0, 1]);
    assert!(p.steps.is_empty());
    assert_eq!(
        p.report.kept_alive,
        [KeptAlive::Departed {
            name: "a".into(),
            number: 0
        }]
    );
}

#[test]
fn changed_remote_member_is_remade_unless_alive() {
    let current = cluster(vec![node(&m("a", 0), false), node(&m("b", 1), true)]);
    let mut moved = m("a", 0);
    moved.address = [10, 0, 9, 9].into();
    let p = plan(&[moved.clone(), m("b", 1)], Some(&current), &[1]);
    let mut want = vec!["rmdir cluster/lab/node/a".to_string()];
    want.extend(adds("a", 0));
    want[3] = "write cluster/lab/node/a/ipv4_address = 10.0.9.9".into();
    assert_eq!(steps(&p), want);
    let p = plan(&[moved, m("b", 1)], Some(&current), &[0, 1]);
    assert!(p.steps.is_empty());
    assert!(p.report.kept_alive[0]
        .to_string()
        .contains("should be number 0 at 10.0.9.9:7777 but is alive as number 0 at 10.0.0.1:7777"));
}

#[test]
fn own_identity_never_changes_under_a_running_cluster() {
    let current = cluster(vec![node(&m("b", 1), true)]);
    let c = conflict(&[m("b", 5)], &current, &[]);
    assert!(matches!(c, Conflict::LocalChanged { .. }), "{c}");
    assert!(
        c.to_string().contains("as number 1 at 10.0.0.2:7777"),
        "{c}"
    );
    // Never made local (an interrupted join): nothing uses it yet.
    let current = cluster(vec![node(&m("b", 1), false)]);
    let p = plan(&[m("b", 5)], Some(&current), &[]);
    let mut want = vec!["rmdir cluster/lab/node/b".to_string()];
    want.extend(adds("b", 5));
    want.push("write cluster/lab/node/b/local = 1".into());
    assert_eq!(steps(&p), want);
}

#[test]
fn interrupted_join_only_sets_local() {
    let current = cluster(vec![node(&m("b", 1), false)]);
    let p = plan(&[m("b", 1)], Some(&current), &[]);
    assert_eq!(steps(&p), ["write cluster/lab/node/b/local = 1"]);
}

#[test]
fn half_made_entry_is_remade_even_if_its_number_reads_live() {
    let mut half = node(&m("a", 0), false);
    half.port = 0;
    half.address = Ipv4Addr::UNSPECIFIED;
    let current = cluster(vec![half, node(&m("b", 1), true)]);
    let p = plan(&[m("a", 0), m("b", 1)], Some(&current), &[0, 1]);
    let mut want = vec!["rmdir cluster/lab/node/a".to_string()];
    want.extend(adds("a", 0));
    assert_eq!(steps(&p), want);
}

#[test]
fn another_local_node_is_a_conflict() {
    let current = cluster(vec![node(&m("a", 0), true)]);
    let c = conflict(&[m("a", 0), m("b", 1)], &current, &[]);
    assert!(matches!(c, Conflict::OtherLocal { ref other, .. } if other == "a"));
}

#[test]
fn live_entry_blocks_whoever_wants_its_number() {
    let current = cluster(vec![node(&m("old", 2), false), node(&m("b", 1), true)]);
    let p = plan(&[m("b", 1), m("new", 2)], Some(&current), &[1, 2]);
    assert!(p.steps.is_empty());
    assert_eq!(
        p.report.kept_alive[1],
        KeptAlive::Blocked {
            name: "new".into(),
            holder: "old".into()
        }
    );
    // Not alive: removed, then the newcomer takes the number.
    let p = plan(&[m("b", 1), m("new", 2)], Some(&current), &[1]);
    let mut want = vec!["rmdir cluster/lab/node/old".to_string()];
    want.extend(adds("new", 2));
    assert_eq!(steps(&p), want);
    // This node itself cannot join with a number someone heartbeats on.
    let current = cluster(vec![node(&m("old", 1), false)]);
    let c = conflict(&[m("b", 1)], &current, &[1]);
    assert!(matches!(c, Conflict::Taken { ref holder, .. } if holder == "old"));
}

#[test]
fn bad_membership_is_refused_before_anything() {
    let err = plan_join(&cfg(), "b", &[m("a", 1), m("b", 1)], None, &live(&[]));
    assert!(
        matches!(&err, Err(ClusterError::Members(msg)) if msg.contains("already taken")),
        "{err:?}"
    );
    let err = plan_join(&cfg(), "z", &[m("a", 0)], None, &live(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "this node (z) is not in the membership source"
    );
}
