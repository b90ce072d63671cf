//! o2cb's fencing reaches Kubernetes: the `node.kubernetes.io/out-of-service`
//! taint, applied from the survivors' own evidence that a member is gone.
//!
//! o2cb guarantees that a member the others evicted (its disk heartbeat
//! stopped for the dead threshold) has fenced itself, or will within that
//! threshold: it reboots rather than write on without heartbeating. With
//! its Node NotReady as well, its pods can be restarted elsewhere without a
//! person confirming the node is down, which is what the taint tells
//! Kubernetes (pods force-deleted, volumes detached).
//!
//! Each member publishes its kernel's view on its own Lease every keepalive
//! round ([`ANNOTATION_VIEW`]): the numbers its o2hb sees live, and the
//! evictions it saw (a number that was live and no longer is, with the
//! time it first went missing). One member acts, the lowest-numbered one
//! whose view is fresh ([`leader`]), and it taints a Node only when all of
//! these hold ([`decide`], then [`OutOfService::round`]):
//! - its own kernel saw the member evicted;
//! - a quorum of the members (o2cb's rule: more than half, or exactly half
//!   with the lowest number) publish the same eviction in fresh views: a
//!   minority that lost the others would be fenced itself, and never acts;
//! - the Node is NotReady (a node cut off from o2cb's network that the API
//!   still hears is left to o2cb and to people);
//! - the member's heartbeat slot does not move on any LUN, read from the
//!   disk with O_DIRECT over a few seconds (a node cut off from the API
//!   that still heartbeats is never tainted).
//!
//! The taint, a label and an annotation saying why mark the Node as ours;
//! the leader removes all three once the member heartbeats again in its
//! view and the Node is Ready. A taint someone else applied is never
//! touched. What this relies on: o2cb's self-fencing. A hypervisor that
//! pauses a node's clock defeats it (the node stops heartbeating without
//! knowing, and writes on when it resumes), as it defeats o2cb itself.

use crate::cluster::slots::HeartbeatSlots;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub const TAINT_KEY: &str = "node.kubernetes.io/out-of-service";
/// Kubernetes reads the key only; the value tells a person who set it.
pub const TAINT_VALUE: &str = "o2cb-evicted";
/// On a Node we tainted: why, in words.
pub const ANNOTATION_REASON: &str = "ocfs2.csi.dev/out-of-service";
/// On a Node we tainted (`true`), so the leader finds them with one list.
pub const LABEL_TAINTED: &str = "ocfs2.csi.dev/out-of-service";
/// On each member's Lease: its kernel's view, JSON ([`View`]).
pub const ANNOTATION_VIEW: &str = "ocfs2.csi.dev/o2cb-view";

/// A view older than this counts for nothing: three keepalive rounds.
pub const FRESH: Duration = Duration::from_secs(30);

/// What one member's kernel saw, as published on its Lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// When it was read (the member's clock).
    pub at: Timestamp,
    /// The kernel's boot: a restarted plugin on the same boot adopts its
    /// last view; after a reboot it starts afresh.
    pub boot: String,
    /// Numbers o2hb sees live (this member among them).
    pub live: BTreeSet<u8>,
    /// Numbers that were live and are not, with when they went missing.
    pub evicted: BTreeMap<u8, Timestamp>,
}

impl View {
    /// Before the first reading of a boot: nothing seen live yet.
    pub fn empty(boot: &str) -> View {
        View {
            at: Timestamp::UNIX_EPOCH,
            boot: boot.to_string(),
            live: BTreeSet::new(),
            evicted: BTreeMap::new(),
        }
    }

    pub fn parse(text: &str) -> Option<View> {
        serde_json::from_str(text).ok()
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("a view serialises")
    }

    /// The next view from a new live set: a number live before (or already
    /// evicted) and missing now is evicted, keeping the time it first went
    /// missing; a number live again, or no longer a member (`members`), is
    /// dropped.
    pub fn next(&self, live: BTreeSet<u8>, members: &BTreeSet<u8>, now: Timestamp) -> View {
        let evicted = self
            .live
            .iter()
            .chain(self.evicted.keys())
            .filter(|n| !live.contains(n) && members.contains(n))
            .map(|&n| (n, self.evicted.get(&n).copied().unwrap_or(now)))
            .collect();
        View {
            at: now,
            boot: self.boot.clone(),
            live,
            evicted,
        }
    }

    fn fresh(&self, number: u8, now: Timestamp) -> bool {
        self.live.contains(&number) && age(self.at, now) <= FRESH
    }
}

fn age(t: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(t).try_into().unwrap_or(Duration::ZERO)
}

/// One member as the leader sees it.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub number: u8,
    pub node: String,
    pub view: Option<View>,
}

/// What the leader knows of one member's Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    pub ready: bool,
    /// Any out-of-service taint, ours or a person's.
    pub tainted: bool,
    /// Ours: carries our label.
    pub ours: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Taint {
        number: u8,
        node: String,
        evicted_at: Timestamp,
        seen_by: Vec<(u8, String)>,
    },
    Untaint {
        number: u8,
        node: String,
    },
    /// Evicted in our view, not tainted, and why not.
    Withhold {
        number: u8,
        node: String,
        why: String,
    },
}

/// The member that acts: the lowest number whose view is fresh.
pub fn leader(members: &[MemberView], now: Timestamp) -> Option<u8> {
    members
        .iter()
        .filter(|m| m.view.as_ref().is_some_and(|v| v.fresh(m.number, now)))
        .map(|m| m.number)
        .min()
}

/// What the leader `me` does about each member (see the module comment);
/// `nodes` has the Nodes of members it may act on (absent: no Node).
pub fn decide(
    me: u8,
    members: &[MemberView],
    nodes: &BTreeMap<String, NodeState>,
    now: Timestamp,
) -> Vec<Decision> {
    let mut out = Vec::new();
    if leader(members, now) != Some(me) {
        return out;
    }
    let Some(mine) = members
        .iter()
        .find(|m| m.number == me)
        .and_then(|m| m.view.as_ref())
    else {
        return out;
    };
    let fresh: Vec<(&MemberView, &View)> = members
        .iter()
        .filter_map(|m| Some((m, m.view.as_ref().filter(|v| v.fresh(m.number, now))?)))
        .collect();
    for m in members {
        let Some(state) = nodes.get(&m.node) else {
            continue;
        };
        // The leader may be the member back from the dead: it untaints
        // itself, since nobody else leads.
        if state.ours {
            if mine.live.contains(&m.number) && state.ready {
                out.push(Decision::Untaint {
                    number: m.number,
                    node: m.node.clone(),
                });
            }
            continue;
        }
        if m.number == me {
            continue;
        }
        let Some(&evicted_at) = mine.evicted.get(&m.number) else {
            continue;
        };
        let withhold = |why: String| Decision::Withhold {
            number: m.number,
            node: m.node.clone(),
            why,
        };
        if state.tainted {
            continue;
        }
        let seen_by: Vec<(u8, String)> = fresh
            .iter()
            .filter(|(f, v)| f.number != m.number && v.evicted.contains_key(&m.number))
            .map(|(f, _)| (f.number, f.node.clone()))
            .collect();
        // Members already out of service do not vote; the one in question does.
        let voters: Vec<u8> = members
            .iter()
            .filter(|v| v.number == m.number || !nodes.get(&v.node).is_some_and(|s| s.ours))
            .map(|v| v.number)
            .collect();
        let agree = seen_by.len();
        let lowest = voters.iter().min().copied();
        let quorum = 2 * agree > voters.len()
            || (2 * agree == voters.len() && seen_by.iter().any(|(n, _)| Some(*n) == lowest));
        if !quorum {
            out.push(withhold(format!(
                "only {agree} of {} members see it evicted ({}): not a quorum",
                voters.len(),
                names(&seen_by)
            )));
            continue;
        }
        if state.ready {
            out.push(withhold(
                "its Node is Ready: the API still hears its kubelet".to_string(),
            ));
            continue;
        }
        let evicted_at = fresh
            .iter()
            .filter_map(|(_, v)| v.evicted.get(&m.number).copied())
            .min()
            .unwrap_or(evicted_at);
        out.push(Decision::Taint {
            number: m.number,
            node: m.node.clone(),
            evicted_at,
            seen_by,
        });
    }
    out
}

/// `1 (node1) and 2 (node2)`.
pub fn names(members: &[(u8, String)]) -> String {
    let each: Vec<String> = members.iter().map(|(n, s)| format!("{n} ({s})")).collect();
    match each.as_slice() {
        [] => "none".to_string(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The words on a Node we taint.
pub fn reason(
    number: u8,
    node: &str,
    evicted_at: Timestamp,
    seen_by: &[(u8, String)],
    leader: &str,
) -> String {
    format!(
        "o2cb evicted member {number} ({node}) at {} (its disk heartbeat stopped; o2cb fences a \
         node that cannot heartbeat), seen by members {}; its Node is NotReady and its heartbeat \
         slot does not move on disk; tainted by the ocfs2-csi node plugin on {leader}",
        evicted_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        names(seen_by)
    )
}

pub fn node_state(node: &Node) -> NodeState {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let tainted = taints(node).iter().any(|t| t.key == TAINT_KEY);
    let ours = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_TAINTED));
    NodeState {
        ready,
        tainted,
        ours,
    }
}

fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// Node with our taint, label and annotation added.
pub fn tainted(mut node: Node, why: &str, now: Timestamp) -> Node {
    let spec = node.spec.get_or_insert_with(Default::default);
    let list = spec.taints.get_or_insert_with(Vec::new);
    if !list.iter().any(|t| t.key == TAINT_KEY) {
        list.push(Taint {
            key: TAINT_KEY.to_string(),
            value: Some(TAINT_VALUE.to_string()),
            effect: "NoExecute".to_string(),
            time_added: Some(Time(now)),
        });
    }
    node.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_TAINTED.to_string(), "true".to_string());
    node.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_REASON.to_string(), why.to_string());
    node
}

/// Node without our taint, label and annotation.
pub fn untainted(mut node: Node) -> Node {
    if let Some(list) = node.spec.as_mut().and_then(|s| s.taints.as_mut()) {
        list.retain(|t| t.key != TAINT_KEY);
    }
    if let Some(l) = node.metadata.labels.as_mut() {
        l.remove(LABEL_TAINTED);
    }
    if let Some(a) = node.metadata.annotations.as_mut() {
        a.remove(ANNOTATION_REASON);
    }
    node
}

/// The leader's side: reads the Nodes it may act on and applies
/// [`decide`]'s answers. Each log line says what was done or why not, once
/// per change.
pub struct OutOfService {
    nodes: Api<Node>,
    slots: Arc<dyn HeartbeatSlots>,
    me: String,
    said: BTreeMap<u8, String>,
}

impl OutOfService {
    pub fn new(client: kube::Client, slots: Arc<dyn HeartbeatSlots>, me: &str) -> OutOfService {
        OutOfService {
            nodes: Api::all(client),
            slots,
            me: me.to_string(),
            said: BTreeMap::new(),
        }
    }

    /// One round, when this member (`number`) leads; a no-op otherwise.
    pub async fn round(&mut self, number: u8, members: &[MemberView]) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        if leader(members, now) != Some(number) {
            self.said.clear();
            return Ok(());
        }
        let mine = members
            .iter()
            .find(|m| m.number == number)
            .and_then(|m| m.view.as_ref());
        let mut states = BTreeMap::new();
        // Ours to untaint: one labelled list. Candidates to taint: only the
        // members our own kernel saw evicted.
        let ours = self
            .nodes
            .list(&ListParams::default().labels(&format!("{LABEL_TAINTED}=true")))
            .await?;
        for n in &ours.items {
            states.insert(n.metadata.name.clone().unwrap_or_default(), node_state(n));
        }
        for m in members {
            let evicted = mine.is_some_and(|v| v.evicted.contains_key(&m.number));
            if evicted && !states.contains_key(&m.node) {
                if let Some(n) = self.nodes.get_opt(&m.node).await? {
                    states.insert(m.node.clone(), node_state(&n));
                }
            }
        }
        for d in decide(number, members, &states, now) {
            match d {
                Decision::Taint {
                    number: n,
                    node,
                    evicted_at,
                    seen_by,
                } => {
                    // The last word is the disk's: a slot that moves is a
                    // node that writes, whatever else says it is gone.
                    match self.slots.in_use().await {
                        Ok(used) if used.busy.contains_key(&n) => {
                            let region = &used.busy[&n];
                            self.say(n, &node, format!("not tainting: its heartbeat slot still moves on disk ({region})"));
                            continue;
                        }
                        Err(e) => {
                            self.say(
                                n,
                                &node,
                                format!("not tainting: the heartbeat slots cannot be read ({e})"),
                            );
                            continue;
                        }
                        Ok(_) => {}
                    }
                    let why = reason(n, &node, evicted_at, &seen_by, &self.me);
                    if self.update(&node, |node| tainted(node, &why, now)).await? {
                        tracing::warn!(node = %node, number = n, "applied {TAINT_KEY}: {why}");
                        self.said.remove(&n);
                    }
                }
                Decision::Untaint { number: n, node } => {
                    if self.update(&node, untainted).await? {
                        tracing::info!(node = %node, number = n, "removed {TAINT_KEY}: member {n} heartbeats again and its Node is Ready");
                    }
                }
                Decision::Withhold {
                    number: n,
                    node,
                    why,
                } => self.say(n, &node, format!("not tainting: {why}")),
            }
        }
        Ok(())
    }

    fn say(&mut self, number: u8, node: &str, what: String) {
        if self.said.get(&number) != Some(&what) {
            tracing::info!(node, number, "member {number} evicted by o2cb: {what}");
            self.said.insert(number, what);
        }
    }

    /// Read, change, replace with the read's resourceVersion: a conflict
    /// leaves it for the next round. False when the Node is gone.
    async fn update(
        &self,
        name: &str,
        change: impl FnOnce(Node) -> Node,
    ) -> Result<bool, kube::Error> {
        let Some(node) = self.nodes.get_opt(name).await? else {
            return Ok(false);
        };
        match self
            .nodes
            .replace(name, &PostParams::default(), &change(node))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Each member Lease's holder, number and published view.
pub fn member_views(leases: &[Lease], number_of: impl Fn(&Lease) -> Option<u8>) -> Vec<MemberView> {
    leases
        .iter()
        .filter_map(|l| {
            let number = number_of(l)?;
            let node = l.spec.as_ref()?.holder_identity.clone()?;
            let view = l
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_VIEW))
                .and_then(|v| View::parse(v));
            Some(MemberView { number, node, view })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn set(n: &[u8]) -> BTreeSet<u8> {
        n.iter().copied().collect()
    }

    fn view(at: Timestamp, live: &[u8], evicted: &[(u8, Timestamp)]) -> View {
        View {
            at,
            boot: "b".into(),
            live: set(live),
            evicted: evicted.iter().copied().collect(),
        }
    }

    fn member(number: u8, v: Option<View>) -> MemberView {
        MemberView {
            number,
            node: format!("node{number}"),
            view: v,
        }
    }

    fn down(ours: bool) -> NodeState {
        NodeState {
            ready: false,
            tainted: ours,
            ours,
        }
    }

    #[test]
    fn an_eviction_is_a_live_number_gone_missing() {
        let members = set(&[0, 1, 2]);
        let v = view(t(0), &[0, 1, 2], &[]);
        let v = v.next(set(&[0, 1]), &members, t(10));
        assert_eq!(v.evicted, BTreeMap::from([(2, t(10))]));
        // It keeps the time it first went missing.
        let v2 = v.next(set(&[0, 1]), &members, t(20));
        assert_eq!(v2.evicted, BTreeMap::from([(2, t(10))]));
        // Live again: no longer evicted.
        assert!(v2.next(set(&[0, 1, 2]), &members, t(30)).evicted.is_empty());
        // Released (its Lease gone): forgotten.
        assert!(v2
            .next(set(&[0, 1]), &set(&[0, 1]), t(30))
            .evicted
            .is_empty());
        // A number never seen live is not evicted (a member still joining).
        let v = view(t(0), &[0, 1], &[]).next(set(&[0, 1]), &members, t(10));
        assert!(v.evicted.is_empty());
        // The annotation round-trips.
        assert_eq!(View::parse(&v2.to_annotation()), Some(v2));
    }

    fn three_with_2_lost(now: Timestamp) -> Vec<MemberView> {
        vec![
            member(0, Some(view(now, &[0, 1], &[(2, t(5))]))),
            member(1, Some(view(now, &[0, 1], &[(2, t(3))]))),
            member(2, Some(view(t(-100), &[0, 1, 2], &[]))),
        ]
    }

    #[test]
    fn the_leader_taints_an_evicted_notready_member_seen_by_a_quorum() {
        let now = t(40);
        let members = three_with_2_lost(now);
        let nodes = BTreeMap::from([("node2".to_string(), down(false))]);
        assert_eq!(
            decide(0, &members, &nodes, now),
            vec![Decision::Taint {
                number: 2,
                node: "node2".into(),
                evicted_at: t(3),
                seen_by: vec![(0, "node0".into()), (1, "node1".into())],
            }]
        );
        // Exactly one acts: member 1 is not the leader.
        assert!(decide(1, &members, &nodes, now).is_empty());
        // The leader's view gone stale: member 1 leads.
        let mut stale = members.clone();
        stale[0].view.as_mut().unwrap().at = t(0);
        assert_eq!(leader(&stale, now), Some(1));
    }

    #[test]
    fn never_a_ready_node_nor_without_quorum_nor_a_persons_taint() {
        let now = t(40);
        let members = three_with_2_lost(now);
        let ready = BTreeMap::from([(
            "node2".to_string(),
            NodeState {
                ready: true,
                ..Default::default()
            },
        )]);
        assert!(matches!(
            &decide(0, &members, &ready, now)[..],
            [Decision::Withhold { why, .. }] if why.contains("Ready")
        ));
        // Member 1 has not seen it (yet): 1 of 3 is no quorum.
        let mut alone = members.clone();
        alone[1].view = Some(view(now, &[0, 1, 2], &[]));
        let nodes = BTreeMap::from([("node2".to_string(), down(false))]);
        assert!(matches!(
            &decide(0, &alone, &nodes, now)[..],
            [Decision::Withhold { why, .. }] if why.contains("only 1 of 3")
        ));
        // Member 1's view is stale: its vote does not count.
        let mut stale = members.clone();
        stale[1].view.as_mut().unwrap().at = t(0);
        assert!(matches!(
            &decide(0, &stale, &nodes, now)[..],
            [Decision::Withhold { .. }]
        ));
        // Someone else's taint is left alone, and not doubled.
        let persons = BTreeMap::from([(
            "node2".to_string(),
            NodeState {
                ready: false,
                tainted: true,
                ours: false,
            },
        )]);
        assert!(decide(0, &members, &persons, now).is_empty());
    }

    #[test]
    fn two_members_split_even_need_the_lowest_number() {
        let now = t(40);
        // Member 0 lost: member 1 alone is half without the lowest.
        let lost_low = vec![
            member(0, Some(view(t(-100), &[0, 1], &[]))),
            member(1, Some(view(now, &[1], &[(0, t(2))]))),
        ];
        let nodes = BTreeMap::from([("node0".to_string(), down(false))]);
        assert!(matches!(
            &decide(1, &lost_low, &nodes, now)[..],
            [Decision::Withhold { why, .. }] if why.contains("only 1 of 2")
        ));
        // Member 1 lost: member 0 is half with the lowest.
        let lost_high = vec![
            member(0, Some(view(now, &[0], &[(1, t(2))]))),
            member(1, Some(view(t(-100), &[0, 1], &[]))),
        ];
        let nodes = BTreeMap::from([("node1".to_string(), down(false))]);
        assert!(matches!(
            &decide(0, &lost_high, &nodes, now)[..],
            [Decision::Taint { number: 1, .. }]
        ));
    }

    #[test]
    fn members_already_out_of_service_do_not_vote() {
        let now = t(40);
        // Of four, 3 is tainted already; 2 is lost next; 0 and 1 are 2 of
        // the 3 voters.
        let members = vec![
            member(0, Some(view(now, &[0, 1], &[(2, t(5)), (3, t(1))]))),
            member(1, Some(view(now, &[0, 1], &[(2, t(5)), (3, t(1))]))),
            member(2, None),
            member(3, None),
        ];
        let nodes = BTreeMap::from([
            ("node2".to_string(), down(false)),
            ("node3".to_string(), down(true)),
        ]);
        assert!(matches!(
            &decide(0, &members, &nodes, now)[..],
            [Decision::Taint { number: 2, .. }]
        ));
    }

    #[test]
    fn untainted_once_live_again_and_ready() {
        let now = t(40);
        let back = vec![
            member(0, Some(view(now, &[0, 1, 2], &[]))),
            member(1, Some(view(now, &[0, 1, 2], &[]))),
            member(2, Some(view(now, &[0, 1, 2], &[]))),
        ];
        let mut nodes = BTreeMap::from([("node2".to_string(), down(true))]);
        // Heartbeating, Node not Ready yet: the taint stays.
        assert!(decide(0, &back, &nodes, now).is_empty());
        nodes.get_mut("node2").unwrap().ready = true;
        assert_eq!(
            decide(0, &back, &nodes, now),
            vec![Decision::Untaint {
                number: 2,
                node: "node2".into()
            }]
        );
        // The member back is the lowest number, so it leads: it untaints
        // its own Node.
        let mut nodes0 = BTreeMap::from([("node0".to_string(), down(true))]);
        nodes0.get_mut("node0").unwrap().ready = true;
        assert_eq!(
            decide(0, &back, &nodes0, now),
            vec![Decision::Untaint {
                number: 0,
                node: "node0".into()
            }]
        );
        // Ready but not heartbeating (its plugin not started yet): stays.
        let mut quiet = back.clone();
        quiet[0].view = Some(view(now, &[0, 1], &[(2, t(1))]));
        assert!(decide(0, &quiet, &nodes, now).is_empty());
    }

    #[test]
    fn nodes_are_marked_and_unmarked() {
        let node = Node {
            metadata: kube::api::ObjectMeta {
                name: Some("node2".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let marked = tainted(node.clone(), "why", t(0));
        let state = node_state(&marked);
        assert!(state.tainted && state.ours && !state.ready);
        assert_eq!(taints(&marked).len(), 1);
        assert_eq!(taints(&marked)[0].effect, "NoExecute");
        // Twice is once.
        assert_eq!(taints(&tainted(marked.clone(), "why", t(1))).len(), 1);
        let clean = untainted(marked);
        assert_eq!(node_state(&clean), NodeState::default());
        let why = reason(2, "c", t(0), &[(0, "a".into()), (1, "b".into())], "a");
        assert!(
            why.contains("member 2 (c) at 2027-01-15T08:00:00Z")
                && why.contains("seen by members 0 (a) and 1 (b)"),
            "{why}"
        );
    }
}
