//! o2cb membership through the Kubernetes API.
//!
//! Each node plugin holds one Lease per cluster member, named after its
//! o2cb node number (`ocfs2-<cluster>-n<number>`). The API server creates a
//! name at most once, so two nodes racing for one number cannot both win:
//! the loser sees AlreadyExists, lists again and takes the next free number.
//! The holder identity is the node name (also its configfs name); the
//! address and port are annotations. A plugin that restarts finds its own
//! Lease and keeps its number.
//!
//! A number is released (its Lease deleted) only when all of these hold: its
//! holder's Node object is gone, the number does not heartbeat, and the
//! Lease was not renewed for longer than o2cb needs to declare a node dead.
//! Releasing needs a live set read from the kernel in which this node is
//! live itself: a set that could not be read, or a node that does not
//! heartbeat yet, says nothing about the others.
//!
//! A node that still writes heartbeat keeps its number, whatever the API
//! says: a claim passes over every number whose heartbeat slot advances on
//! disk ([`HeartbeatSlots`]), Lease or not; a node whose kernel already
//! runs with a number claims that one and no other. A renewal that finds
//! our Lease deleted or another node's is a lost number ([`KubeError::Lost`]):
//! the plugin stops, saying so.

use super::out_of_service::{member_views, OutOfService, View, ANNOTATION_VIEW};
use crate::backoff::Backoff;
use crate::cluster::slots::{HeartbeatSlots, SlotsInUse};
use crate::cluster::{live_nodes, Member, MembershipError, MembershipSource};
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

pub const LABEL_CLUSTER: &str = "ocfs2.csi.dev/cluster";
pub const LABEL_NUMBER: &str = "ocfs2.csi.dev/number";
pub const ANNOTATION_ADDRESS: &str = "ocfs2.csi.dev/address";
pub const ANNOTATION_PORT: &str = "ocfs2.csi.dev/port";

/// How many times a claim retries after losing a race.
const CLAIM_ATTEMPTS: usize = 600;
/// Pauses between claims while the API is unreachable or refuses.
const CLAIM_BACKOFF: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(20));
/// How often our Lease is renewed and departed members are looked for.
const KEEPALIVE_PERIOD: Duration = Duration::from_secs(10);

/// How long a silent member's number stays taken: o2cb declares a node dead
/// after `dead_threshold` heartbeats of 2 s; we wait well past that.
pub fn hold_time(dead_threshold: u32) -> Duration {
    Duration::from_secs(u64::from(dead_threshold) * 4 + 60)
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("all 255 o2cb node numbers of cluster {0} are taken")]
    Full(String),
    #[error("could not claim a node number after {0} attempts (too many nodes racing?)")]
    Contention(usize),
    /// Our Lease names another holder, or is gone (`holder` None): the
    /// number may be someone else's now.
    #[error("{}", lost_message(lease, holder.as_deref(), me))]
    Lost {
        lease: String,
        holder: Option<String>,
        me: String,
    },
    #[error("this node's kernel already runs as o2cb node number {number}, but Lease {lease} names {holder}, not this node ({me}): two nodes claim one number; refusing to take another one (that needs this node out of the cluster: unmount its volumes and reboot it)")]
    MineHeld {
        number: u8,
        lease: String,
        holder: String,
        me: String,
    },
    #[error("cannot tell which o2cb node numbers heartbeat on disk, so none is claimed: {0}")]
    Slots(String),
    #[error("node {node} has no InternalIP address in the API (its addresses: {addresses}); o2net needs the node's IPv4 InternalIP")]
    NoAddress { node: String, addresses: String },
    #[error("node {node} has only IPv6 InternalIP addresses ({addresses}), and o2cb's network (o2net) speaks IPv4 only: this node cannot join the cluster until it has an IPv4 InternalIP (dual-stack)")]
    Ipv6Only { node: String, addresses: String },
}

fn lost_message(lease: &str, holder: Option<&str>, me: &str) -> String {
    match holder {
        Some(holder) => format!(
            "o2cb node number lost: Lease {lease} now belongs to {holder}, not to this node ({me}); \
             our number was released while we ran; refusing to go on with it"
        ),
        None => format!(
            "o2cb node number lost: Lease {lease} was deleted while this node ({me}) held it, so \
             another node may claim the number; refusing to go on with it (a restarted plugin \
             claims it again while this node's kernel still heartbeats with it)"
        ),
    }
}

/// What a node without a Lease claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Claim `number`; `passed_over` are lower numbers no Lease holds that
    /// still heartbeat (another node runs with them).
    Number { number: u8, passed_over: Vec<u8> },
    /// Every number is held or heartbeats.
    Full,
    /// This node's kernel runs as `number`, and another node's Lease holds it.
    MineHeld { number: u8, holder: String },
}

/// The number a node without a Lease claims, given the Leases' numbers and
/// their holders: the one its kernel already runs as, else the lowest one
/// that no Lease holds and no heartbeat slot uses.
pub fn choose_number(holders: &BTreeMap<u8, String>, in_use: &SlotsInUse) -> Choice {
    if let Some(mine) = in_use.mine {
        return match holders.get(&mine) {
            Some(holder) => Choice::MineHeld {
                number: mine,
                holder: holder.clone(),
            },
            None => Choice::Number {
                number: mine,
                passed_over: Vec::new(),
            },
        };
    }
    let mut passed_over = Vec::new();
    for n in 0..=crate::cluster::membership::MAX_NODE_NUMBER {
        if holders.contains_key(&n) {
            continue;
        }
        if in_use.busy.contains_key(&n) {
            passed_over.push(n);
            continue;
        }
        return Choice::Number {
            number: n,
            passed_over,
        };
    }
    Choice::Full
}

/// The live set a release round may use: only one read from the kernel in
/// which this node (`number`) is live itself; otherwise why the round is
/// skipped. An unreadable set is not an empty one, and a node that does not
/// heartbeat yet cannot see who else does.
pub fn release_gate<E: std::fmt::Display>(
    read: Result<BTreeSet<u8>, E>,
    number: u8,
) -> Result<BTreeSet<u8>, String> {
    match read {
        Err(e) => Err(format!("the live set cannot be read ({e})")),
        Ok(live) if !live.contains(&number) => Err(format!(
            "this node (number {number}) is not live itself yet (live: {live:?})"
        )),
        Ok(live) => Ok(live),
    }
}

/// The lease name of `number`: DNS-label safe whatever the cluster name.
pub fn lease_name(cluster: &str, number: u8) -> String {
    let safe: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("ocfs2-{}-n{number}", safe.trim_matches('-'))
}

/// What one Lease says, if it is one of ours and well formed.
pub fn member_of(lease: &Lease, default_port: u16) -> Option<Member> {
    let labels = lease.metadata.labels.as_ref()?;
    let number: u8 = labels.get(LABEL_NUMBER)?.parse().ok()?;
    let annotations = lease.metadata.annotations.as_ref()?;
    let address: Ipv4Addr = annotations.get(ANNOTATION_ADDRESS)?.parse().ok()?;
    let port = annotations
        .get(ANNOTATION_PORT)
        .and_then(|p| p.parse().ok())
        .unwrap_or(default_port);
    let name = lease.spec.as_ref()?.holder_identity.clone()?;
    let member = Member {
        name,
        number,
        address,
        port,
    };
    member.validate().ok().map(|()| member)
}

/// Whether a Lease may be deleted: see the module comment.
pub fn releasable(
    renewed: Option<Timestamp>,
    now: Timestamp,
    number: u8,
    live: &BTreeSet<u8>,
    holder_node_exists: bool,
    dead_after: Duration,
) -> bool {
    if live.contains(&number) || holder_node_exists {
        return false;
    }
    match renewed {
        None => true,
        Some(t) => now
            .duration_since(t)
            .try_into()
            .is_ok_and(|age: Duration| age > dead_after),
    }
}

#[derive(Clone)]
pub struct KubeMembers {
    leases: Api<Lease>,
    nodes: Api<Node>,
    cluster: String,
    port: u16,
}

impl KubeMembers {
    pub fn new(client: Client, namespace: &str, cluster: &str, port: u16) -> KubeMembers {
        KubeMembers {
            leases: Api::namespaced(client.clone(), namespace),
            nodes: Api::all(client),
            cluster: cluster.to_string(),
            port,
        }
    }

    fn selector(&self) -> ListParams {
        ListParams::default().labels(&format!("{LABEL_CLUSTER}={}", label_value(&self.cluster)))
    }

    async fn ours(&self) -> Result<Vec<Lease>, KubeError> {
        Ok(self.leases.list(&self.selector()).await?.items)
    }

    /// This node's number: the one it already holds, else the one its
    /// kernel already runs as, else the lowest one no Lease holds and no
    /// heartbeat slot uses ([`choose_number`]), won against any other node
    /// claiming at the same time.
    pub async fn claim(
        &self,
        node: &str,
        address: Ipv4Addr,
        slots: &dyn HeartbeatSlots,
    ) -> Result<u8, KubeError> {
        let mut in_use: Option<SlotsInUse> = None;
        for attempt in 0..CLAIM_ATTEMPTS {
            let leases = self.ours().await?;
            if let Some(lease) = leases.iter().find(|l| holder(l) == Some(node)) {
                let number = lease
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_NUMBER))
                    .and_then(|n| n.parse().ok());
                if let Some(number) = number {
                    self.renew(node, number, Some(address)).await?;
                    return Ok(number);
                }
            }
            let holders: BTreeMap<u8, String> = leases
                .iter()
                .filter_map(|l| {
                    let n = l
                        .metadata
                        .labels
                        .as_ref()?
                        .get(LABEL_NUMBER)?
                        .parse()
                        .ok()?;
                    Some((n, holder(l).unwrap_or("nobody").to_string()))
                })
                .collect();
            // Read once per claim (it watches the disk for a few seconds): a
            // node that starts heartbeating later has claimed its number
            // through a Lease first, which the next listing shows.
            if in_use.is_none() {
                in_use = Some(slots.in_use().await.map_err(KubeError::Slots)?);
            }
            let in_use = in_use.as_ref().expect("read above");
            let number = match choose_number(&holders, in_use) {
                Choice::Full => return Err(KubeError::Full(self.cluster.clone())),
                Choice::MineHeld { number, holder } => {
                    return Err(KubeError::MineHeld {
                        number,
                        lease: lease_name(&self.cluster, number),
                        holder,
                        me: node.to_string(),
                    })
                }
                Choice::Number {
                    number,
                    passed_over,
                } => {
                    for n in passed_over {
                        let seen = in_use.busy.get(&n).map_or("", String::as_str);
                        tracing::warn!(
                            node,
                            number = n,
                            seen,
                            "o2cb node number {n} still heartbeats on disk though no Lease holds it: \
                             another node runs with it; not claiming it"
                        );
                    }
                    if in_use.mine == Some(number) {
                        tracing::info!(
                            node,
                            number,
                            "this node's kernel already runs as o2cb node number {number} and no \
                             Lease holds it: claiming it again"
                        );
                    }
                    number
                }
            };
            match self
                .leases
                .create(&PostParams::default(), &self.lease(node, number, address))
                .await
            {
                Ok(_) => {
                    tracing::info!(node, number, attempt, "o2cb node number claimed");
                    return Ok(number);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(
                        node,
                        number,
                        "number taken by another node first; trying again"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(KubeError::Contention(CLAIM_ATTEMPTS))
    }

    /// [`claim`](Self::claim), retried until the API grants a number: a
    /// node without one cannot join, so there is nothing else to do.
    pub async fn claim_until_won(
        &self,
        node: &str,
        address: Ipv4Addr,
        slots: &dyn HeartbeatSlots,
    ) -> u8 {
        CLAIM_BACKOFF
            .retry("cannot claim an o2cb node number yet", |_| {
                self.claim(node, address, slots)
            })
            .await
    }

    /// Renews our Lease with this node's o2cb view ([`View`]) and releases
    /// departed members' numbers (those that no longer heartbeat, as
    /// `debugfs` shows, in a round where this node is live itself:
    /// [`release_gate`]) every [`KEEPALIVE_PERIOD`], for as long as the
    /// number is ours; with `oos`, the out-of-service round follows. Returns
    /// why the number is not ours any more (our Lease deleted or taken).
    /// Other failures are logged and retried at the next period.
    pub async fn keep_alive(
        self,
        me: String,
        number: u8,
        debugfs: PathBuf,
        dead_threshold: u32,
        mut oos: Option<OutOfService>,
    ) -> KubeError {
        let boot = boot_id();
        let mut view: Option<View> = None;
        loop {
            tokio::time::sleep(KEEPALIVE_PERIOD).await;
            // A failed list still renews our Lease (with the last view):
            // only the work that needs the others' Leases waits a round.
            let leases = match self.ours().await {
                Ok(leases) => Some(leases),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the membership Leases; renewing ours alone this round");
                    None
                }
            };
            let gate = release_gate(live_nodes(&debugfs), number);
            if let (Ok(live), Some(leases)) = (&gate, &leases) {
                let numbers: BTreeSet<u8> = leases.iter().filter_map(lease_number).collect();
                // A restarted plugin on the same boot goes on from its last
                // view; after a reboot nothing seen before counts.
                let last = view.take().or_else(|| {
                    let mine = leases.iter().find(|l| lease_number(l) == Some(number))?;
                    let v = View::parse(mine.metadata.annotations.as_ref()?.get(ANNOTATION_VIEW)?)?;
                    (v.boot == boot).then_some(v)
                });
                let last = last.unwrap_or_else(|| View::empty(&boot));
                let next = last.next(live.clone(), &numbers, Timestamp::now());
                for (n, since) in &next.evicted {
                    if !last.evicted.contains_key(n) {
                        tracing::warn!(number = n, %since, "o2cb member {n} no longer heartbeats: evicted");
                    }
                }
                view = Some(next);
            }
            match self.renew_inner(&me, number, None, view.as_ref()).await {
                Err(e @ KubeError::Lost { .. }) => return e,
                Err(e) => tracing::warn!(error = %e, "cannot renew the membership Lease; retrying"),
                Ok(()) => {}
            }
            let Some(leases) = leases else { continue };
            match &gate {
                Err(why) => {
                    tracing::info!("not releasing departed members' numbers this round: {why}");
                }
                Ok(live) => {
                    if let Err(e) = self
                        .release_stale_in(&me, &leases, live, hold_time(dead_threshold))
                        .await
                    {
                        tracing::warn!(error = %e, "cannot check for departed members");
                    }
                }
            }
            if let (Some(oos), Some(mine)) = (oos.as_mut(), &view) {
                let mut members = member_views(&leases, lease_number);
                for m in members.iter_mut().filter(|m| m.number == number) {
                    m.view = Some(mine.clone());
                }
                if let Err(e) = oos.round(number, &members).await {
                    tracing::warn!(error = %e, "out-of-service round failed; retrying next round");
                }
            }
        }
    }

    fn lease(&self, node: &str, number: u8, address: Ipv4Addr) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(&self.cluster, number)),
                labels: Some(BTreeMap::from([
                    (LABEL_CLUSTER.to_string(), label_value(&self.cluster)),
                    (LABEL_NUMBER.to_string(), number.to_string()),
                ])),
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_ADDRESS.to_string(), address.to_string()),
                    (ANNOTATION_PORT.to_string(), self.port.to_string()),
                ])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.to_string()),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        }
    }

    /// Marks our Lease alive (and updates the address when given). Fails
    /// with `Lost` when the Lease now names another holder or is gone (a
    /// 404 is not a passing failure: the number may be another node's by
    /// the next try).
    pub async fn renew(
        &self,
        node: &str,
        number: u8,
        address: Option<Ipv4Addr>,
    ) -> Result<(), KubeError> {
        self.renew_inner(node, number, address, None).await
    }

    /// [`renew`](Self::renew), publishing `view` too when given.
    async fn renew_inner(
        &self,
        node: &str,
        number: u8,
        address: Option<Ipv4Addr>,
        view: Option<&View>,
    ) -> Result<(), KubeError> {
        let name = lease_name(&self.cluster, number);
        let lost = |holder: Option<String>| KubeError::Lost {
            lease: name.clone(),
            holder,
            me: node.to_string(),
        };
        loop {
            let mut lease = match self.leases.get(&name).await {
                Ok(lease) => lease,
                Err(e) if is_not_found(&e) => return Err(lost(None)),
                Err(e) => return Err(e.into()),
            };
            let holder = holder(&lease).map(str::to_string);
            if holder.as_deref() != Some(node) {
                return Err(lost(holder));
            }
            if let Some(address) = address {
                lease
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ANNOTATION_ADDRESS.to_string(), address.to_string());
            }
            if let Some(view) = view {
                lease
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ANNOTATION_VIEW.to_string(), view.to_annotation());
            }
            lease.spec.get_or_insert_with(LeaseSpec::default).renew_time =
                Some(MicroTime(Timestamp::now()));
            // resourceVersion from the read: a concurrent writer makes this
            // a 409 and we read again.
            match self
                .leases
                .replace(&name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) if is_not_found(&e) => return Err(lost(None)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Deletes the Leases of nodes that are gone for good (see the module
    /// comment); returns the numbers released.
    pub async fn release_stale(
        &self,
        me: &str,
        live: &BTreeSet<u8>,
        dead_after: Duration,
    ) -> Result<Vec<u8>, KubeError> {
        let leases = self.ours().await?;
        self.release_stale_in(me, &leases, live, dead_after).await
    }

    async fn release_stale_in(
        &self,
        me: &str,
        leases: &[Lease],
        live: &BTreeSet<u8>,
        dead_after: Duration,
    ) -> Result<Vec<u8>, KubeError> {
        let mut released = Vec::new();
        for lease in leases {
            let Some(holder) = holder(lease).map(str::to_string) else {
                continue;
            };
            let Some(number) = lease_number(lease) else {
                continue;
            };
            if holder == me {
                continue;
            }
            let renewed = lease
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.clone())
                .map(|t| t.0);
            let exists = self.nodes.get_opt(&holder).await?.is_some();
            if !releasable(renewed, Timestamp::now(), number, live, exists, dead_after) {
                continue;
            }
            // Only this exact version: if the holder came back and renewed
            // in between, the delete fails and the number stays.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: lease.metadata.uid.clone(),
                    resource_version: lease.metadata.resource_version.clone(),
                }),
                ..Default::default()
            };
            let name = lease.metadata.name.clone().unwrap_or_default();
            match self.leases.delete(&name, &params).await {
                Ok(_) => {
                    tracing::info!(node = %holder, number, "o2cb node number released: node gone and not heartbeating");
                    released.push(number);
                }
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(released)
    }

    /// The node's IPv4 InternalIP as the API has it: see [`o2net_address`].
    pub async fn node_address(&self, node: &str) -> Result<Ipv4Addr, KubeError> {
        let n = self.nodes.get(node).await?;
        let addresses = n.status.and_then(|s| s.addresses).unwrap_or_default();
        o2net_address(node, &addresses)
    }
}

/// The address o2net uses for `node`: its first IPv4 InternalIP (the
/// kubelet lists its primary address first). o2net speaks IPv4 only, so on
/// a dual-stack node the IPv6 InternalIPs are passed over, whichever comes
/// first, and a node with IPv6 ones only is refused saying so.
pub fn o2net_address(node: &str, addresses: &[NodeAddress]) -> Result<Ipv4Addr, KubeError> {
    let internal: Vec<&str> = addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.trim())
        .collect();
    if let Some(v4) = internal.iter().find_map(|a| a.parse::<Ipv4Addr>().ok()) {
        return Ok(v4);
    }
    let listed = |all: &mut dyn Iterator<Item = String>| {
        let list: Vec<String> = all.take(8).collect();
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    if internal.iter().any(|a| a.parse::<Ipv6Addr>().is_ok()) {
        return Err(KubeError::Ipv6Only {
            node: node.to_string(),
            addresses: listed(&mut internal.iter().map(|a| a.to_string())),
        });
    }
    Err(KubeError::NoAddress {
        node: node.to_string(),
        addresses: listed(
            &mut addresses
                .iter()
                .map(|a| format!("{} {}", a.type_, a.address)),
        ),
    })
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(e) if e.code == 404)
}

/// The o2cb number a membership Lease holds.
fn lease_number(lease: &Lease) -> Option<u8> {
    lease
        .metadata
        .labels
        .as_ref()?
        .get(LABEL_NUMBER)?
        .parse()
        .ok()
}

/// This kernel's boot (the host's: /proc is the host's in the plugin's pod).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// The cluster's label value. Label values allow 63 of [A-Za-z0-9._-] but
/// must begin and end with a letter or digit, while o2cb cluster names (at
/// most 16 of [A-Za-z0-9_-]) may begin or end with '_' or '-': those are
/// trimmed (the API server refused the list selector of such a cluster, so
/// its plugins never got a number). Names that begin and end with a letter
/// or digit, the only ones that worked before, keep their value. Two names
/// that differ only there share a value, as they already share their Lease
/// names (`lease_name`).
pub fn label_value(cluster: &str) -> String {
    cluster
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(63)
        .collect()
}

impl MembershipSource for KubeMembers {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, MembershipError>> {
        Box::pin(async move {
            let leases = self
                .ours()
                .await
                .map_err(|e| MembershipError::Source(e.to_string()))?;
            let mut members: Vec<Member> = leases
                .iter()
                .filter_map(|l| {
                    let m = member_of(l, self.port);
                    if m.is_none() {
                        tracing::warn!(lease = ?l.metadata.name, "ignoring a malformed membership Lease");
                    }
                    m
                })
                .collect();
            members.sort_by_key(|m| m.number);
            Ok(members)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_labels() {
        assert_eq!(lease_name("testclu", 7), "ocfs2-testclu-n7");
        assert_eq!(lease_name("My_Clu", 254), "ocfs2-my-clu-n254");
    }

    #[test]
    fn label_values_are_valid_for_every_cluster_name() {
        assert_eq!(label_value("ocfs2csi"), "ocfs2csi");
        assert_eq!(label_value("My_Clu-1"), "My_Clu-1");
        assert_eq!(label_value("_Rbac_Clu-"), "Rbac_Clu");
        assert_eq!(label_value("-_-"), "");
        // The API server's rule: empty, or alphanumeric at both ends.
        for name in ["a", "_a", "a-", "--a_b--", "0123456789abcdef"] {
            let v = label_value(name);
            let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
            assert!(
                ends_ok(v.chars().next()) && ends_ok(v.chars().last()),
                "{name} -> {v}"
            );
        }
    }

    fn holders(numbers: &[u8]) -> BTreeMap<u8, String> {
        numbers.iter().map(|&n| (n, format!("node-{n}"))).collect()
    }

    fn busy(numbers: &[u8]) -> SlotsInUse {
        SlotsInUse {
            mine: None,
            busy: numbers
                .iter()
                .map(|&n| (n, "heartbeat region R on /dev/vda1".to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_lowest_number_nobody_holds_or_heartbeats_with() {
        let number = |held: &[u8], used: &[u8]| match choose_number(&holders(held), &busy(used)) {
            Choice::Number { number, .. } => Some(number),
            _ => None,
        };
        assert_eq!(number(&[], &[]), Some(0));
        assert_eq!(number(&[0, 1, 3], &[]), Some(2));
        assert_eq!(
            choose_number(&holders(&(0..=254).collect::<Vec<_>>()), &busy(&[])),
            Choice::Full
        );
        // A number whose Lease is gone but whose slot still advances is
        // passed over, and said so.
        assert_eq!(
            choose_number(&holders(&[1, 3]), &busy(&[0, 1, 2])),
            Choice::Number {
                number: 4,
                passed_over: vec![0, 2]
            }
        );
        let all: Vec<u8> = (0..=254).collect();
        assert_eq!(
            choose_number(&holders(&[0]), &busy(&all[1..])),
            Choice::Full
        );
    }

    #[test]
    fn a_node_whose_kernel_runs_a_number_claims_that_one() {
        // Its own heartbeat makes its slot advance: that is not another
        // node, and no other number would let it join.
        let mine = SlotsInUse {
            mine: Some(2),
            ..busy(&[0, 2])
        };
        assert_eq!(
            choose_number(&holders(&[1]), &mine),
            Choice::Number {
                number: 2,
                passed_over: vec![]
            }
        );
        assert_eq!(
            choose_number(&holders(&[1, 2]), &mine),
            Choice::MineHeld {
                number: 2,
                holder: "node-2".into()
            }
        );
    }

    #[test]
    fn release_needs_a_live_set_read_with_this_node_in_it() {
        let read = |v: &[u8]| Ok::<_, String>(v.iter().copied().collect::<BTreeSet<u8>>());
        assert_eq!(release_gate(read(&[0, 2]), 2), Ok(BTreeSet::from([0, 2])));
        // Not live yet (joining, heartbeat not started): an empty or partial
        // set would make every other member look departed.
        assert!(release_gate(read(&[]), 2)
            .unwrap_err()
            .contains("not live itself"));
        assert!(release_gate(read(&[0]), 2).is_err());
        let failed = release_gate(Err::<BTreeSet<u8>, _>("EIO"), 2).unwrap_err();
        assert!(failed.contains("cannot be read (EIO)"), "{failed}");
    }

    #[test]
    fn a_deleted_lease_is_a_lost_number() {
        let gone = KubeError::Lost {
            lease: "ocfs2-testclu-n0".into(),
            holder: None,
            me: "node1".into(),
        }
        .to_string();
        assert!(
            gone.contains("Lease ocfs2-testclu-n0 was deleted while this node (node1) held it"),
            "{gone}"
        );
        let taken = KubeError::Lost {
            lease: "ocfs2-testclu-n0".into(),
            holder: Some("node3".into()),
            me: "node1".into(),
        }
        .to_string();
        assert!(taken.contains("now belongs to node3"), "{taken}");
        let api = |code: u16| {
            kube::Error::Api(kube::core::Status::failure("", "").with_code(code).boxed())
        };
        assert!(is_not_found(&api(404)));
        assert!(!is_not_found(&api(409)));
        assert!(!is_not_found(&api(503)));
    }

    #[test]
    fn release_needs_gone_silent_and_old() {
        let now = Timestamp::now();
        let old = now - std::time::Duration::from_secs(600);
        let recent = now - std::time::Duration::from_secs(5);
        let dead = Duration::from_secs(120);
        let none = BTreeSet::new();
        assert!(releasable(Some(old), now, 3, &none, false, dead));
        assert!(!releasable(Some(recent), now, 3, &none, false, dead));
        assert!(!releasable(
            Some(old),
            now,
            3,
            &BTreeSet::from([3]),
            false,
            dead
        ));
        assert!(!releasable(Some(old), now, 3, &none, true, dead));
        assert!(releasable(None, now, 3, &none, false, dead));
    }

    fn addresses(list: &[(&str, &str)]) -> Vec<NodeAddress> {
        list.iter()
            .map(|(t, a)| NodeAddress {
                type_: t.to_string(),
                address: a.to_string(),
            })
            .collect()
    }

    #[test]
    fn o2net_address_is_the_ipv4_internal_ip() {
        let v4 = |list| o2net_address("n1", &addresses(list)).unwrap();
        assert_eq!(
            v4(&[("InternalIP", "10.0.0.7")]),
            Ipv4Addr::new(10, 0, 0, 7)
        );
        // Dual-stack with IPv6 first (an IPv6-primary cluster): the IPv4
        // one, never the IPv6 one.
        assert_eq!(
            v4(&[
                ("Hostname", "n1"),
                ("InternalIP", "fd00:10::7"),
                ("ExternalIP", "192.0.2.7"),
                ("InternalIP", "10.0.0.7"),
            ]),
            Ipv4Addr::new(10, 0, 0, 7)
        );
        // The first IPv4 InternalIP when there are several.
        assert_eq!(
            v4(&[("InternalIP", "10.0.0.7"), ("InternalIP", "10.1.0.7")]),
            Ipv4Addr::new(10, 0, 0, 7)
        );
    }

    #[test]
    fn ipv6_only_and_addressless_nodes_are_refused_clearly() {
        let err = o2net_address(
            "n6",
            &addresses(&[
                ("InternalIP", "fd00:10::6"),
                ("InternalIP", "2001:db8::6"),
                ("ExternalIP", "192.0.2.6"),
            ]),
        )
        .unwrap_err();
        assert!(matches!(err, KubeError::Ipv6Only { .. }), "{err:?}");
        let text = err.to_string();
        for part in ["n6", "fd00:10::6, 2001:db8::6", "IPv4 only"] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        // An ExternalIP is not what the members reach each other on.
        let err = o2net_address("n0", &addresses(&[("ExternalIP", "192.0.2.9")])).unwrap_err();
        assert!(matches!(err, KubeError::NoAddress { .. }), "{err:?}");
        assert!(err.to_string().contains("ExternalIP 192.0.2.9"), "{err}");
        let err = o2net_address("n0", &[]).unwrap_err();
        assert!(err.to_string().contains("addresses: none"), "{err}");
    }

    #[test]
    fn leases_become_members() {
        let km_lease = |number: &str, address: &str, holder: &str| Lease {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    LABEL_NUMBER.to_string(),
                    number.to_string(),
                )])),
                annotations: Some(BTreeMap::from([(
                    ANNOTATION_ADDRESS.to_string(),
                    address.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                ..Default::default()
            }),
        };
        assert_eq!(
            member_of(&km_lease("2", "10.0.0.2", "node-b"), 7777),
            Some(Member {
                name: "node-b".into(),
                number: 2,
                address: "10.0.0.2".parse().unwrap(),
                port: 7777
            })
        );
        assert_eq!(member_of(&km_lease("300", "10.0.0.2", "b"), 7777), None);
        assert_eq!(member_of(&km_lease("1", "nope", "b"), 7777), None);
        assert_eq!(member_of(&km_lease("1", "10.0.0.2", "../x"), 7777), None);
    }
}
