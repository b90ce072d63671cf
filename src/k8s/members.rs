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
//! A node that still writes heartbeat keeps its number, whatever the API
//! says.

use crate::backoff::Backoff;
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
    #[error("Lease {lease} now belongs to {holder:?}, not to this node ({me}): our number was released while we ran; refusing to go on with it")]
    Lost {
        lease: String,
        holder: Option<String>,
        me: String,
    },
    #[error("node {node} has no InternalIP address in the API (its addresses: {addresses}); o2net needs the node's IPv4 InternalIP")]
    NoAddress { node: String, addresses: String },
    #[error("node {node} has only IPv6 InternalIP addresses ({addresses}), and o2cb's network (o2net) speaks IPv4 only: this node cannot join the cluster until it has an IPv4 InternalIP (dual-stack)")]
    Ipv6Only { node: String, addresses: String },
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

/// The lowest number not in `taken`.
pub fn lowest_free(taken: &BTreeSet<u8>) -> Option<u8> {
    (0..=crate::cluster::membership::MAX_NODE_NUMBER).find(|n| !taken.contains(n))
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

    /// This node's number: the one it already holds, else the lowest free
    /// one, won against any other node claiming at the same time.
    pub async fn claim(&self, node: &str, address: Ipv4Addr) -> Result<u8, KubeError> {
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
            let taken: BTreeSet<u8> = leases
                .iter()
                .filter_map(|l| l.metadata.labels.as_ref()?.get(LABEL_NUMBER)?.parse().ok())
                .collect();
            let number =
                lowest_free(&taken).ok_or_else(|| KubeError::Full(self.cluster.clone()))?;
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
    pub async fn claim_until_won(&self, node: &str, address: Ipv4Addr) -> u8 {
        CLAIM_BACKOFF
            .retry("cannot claim an o2cb node number yet", |_| {
                self.claim(node, address)
            })
            .await
    }

    /// Renews our Lease and releases departed members' numbers (those that
    /// no longer heartbeat, as `debugfs` shows) every [`KEEPALIVE_PERIOD`],
    /// for as long as the number is ours; returns why it is not any more.
    /// Other failures are logged and retried at the next period.
    pub async fn keep_alive(
        self,
        me: String,
        number: u8,
        debugfs: PathBuf,
        dead_threshold: u32,
    ) -> KubeError {
        loop {
            tokio::time::sleep(KEEPALIVE_PERIOD).await;
            match self.renew(&me, number, None).await {
                Err(e @ KubeError::Lost { .. }) => return e,
                Err(e) => tracing::warn!(error = %e, "cannot renew the membership Lease; retrying"),
                Ok(()) => {}
            }
            let live = live_nodes(&debugfs).unwrap_or_default();
            if let Err(e) = self
                .release_stale(&me, &live, hold_time(dead_threshold))
                .await
            {
                tracing::warn!(error = %e, "cannot check for departed members");
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
    /// with `Lost` when the Lease now names another holder.
    pub async fn renew(
        &self,
        node: &str,
        number: u8,
        address: Option<Ipv4Addr>,
    ) -> Result<(), KubeError> {
        let name = lease_name(&self.cluster, number);
        loop {
            let mut lease = self.leases.get(&name).await?;
            let holder = holder(&lease).map(str::to_string);
            if holder.as_deref() != Some(node) {
                return Err(KubeError::Lost {
                    lease: name,
                    holder,
                    me: node.to_string(),
                });
            }
            if let Some(address) = address {
                lease
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ANNOTATION_ADDRESS.to_string(), address.to_string());
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
        let mut released = Vec::new();
        for lease in self.ours().await? {
            let Some(holder) = holder(&lease).map(str::to_string) else {
                continue;
            };
            let Some(number) = lease
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_NUMBER))
                .and_then(|n| n.parse::<u8>().ok())
            else {
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

    #[test]
    fn lowest_free_number() {
        assert_eq!(lowest_free(&BTreeSet::new()), Some(0));
        assert_eq!(lowest_free(&BTreeSet::from([0, 1, 3])), Some(2));
        assert_eq!(lowest_free(&(0..=254).collect()), None);
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
