//! Three lab guests form their o2cb cluster from the Kubernetes API instead
//! of a members file: a real kube-apiserver on this machine with the chart
//! installed into it, relayed into the lab so the guests reach it; the node
//! plugins in the guests authenticate with the node ServiceAccount's own
//! token (so the chart's RBAC is what they get), find their address in
//! their Node object, claim numbers as Leases and write the cluster into
//! configfs from them. Then a volume is shared by all three, a plugin
//! killed and restarted keeps its number and leaves the mounts alone, and a
//! guest that loses power keeps its number while it is gone (a newcomer
//! gets another) and rejoins with it.
//!
//! The lab runs with short o2cb timeouts (tests/lab.rs): what is tested is
//! that node3's number outlives its loss, not how long o2cb takes to see it.

use crate::common::kube::Kube;
use crate::common::lab::*;
use crate::common::*;
use ocfs2_csi::cluster::{MembershipSource, SlotsInUse};
use ocfs2_csi::k8s::KubeMembers;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::CLUSTER;
const NAMESPACE: &str = "kube-system";
/// The relay's port on the lab namespace's loopback (the namespace is the
/// lab's own, so a fixed port cannot collide).
pub const RELAY_PORT: u16 = 16443;
/// A name the API server's self-signed certificate carries; the guests
/// reach the server by another address (10.0.2.100).
const TLS_NAME: &str = "kubernetes";
const NODES: usize = 3;

async fn admin_members(kube: &Kube) -> KubeMembers {
    let config = ::kube::config::Kubeconfig::read_from(&kube.kubeconfig).expect("kubeconfig");
    let config = ::kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("kubeconfig usable");
    let client = ::kube::Client::try_from(config).expect("client");
    KubeMembers::new(client, NAMESPACE, CLUSTER, 7777)
}

/// node name -> (number, address) as the Leases say.
async fn leases(kube: &Kube) -> BTreeMap<String, (u8, String)> {
    admin_members(kube)
        .await
        .members()
        .await
        .expect("read the membership Leases")
        .into_iter()
        .map(|m| (m.name, (m.number, m.address.to_string())))
        .collect()
}

/// A token of the chart's node ServiceAccount.
fn node_token(kube: &Kube) -> String {
    kube.service_account_token(NAMESPACE, "ocfs2-csi-node")
}

fn guest_kubeconfig(token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    \
         server: https://10.0.2.100:6443\n    certificate-authority: /root/kube-ca.crt\n    \
         tls-server-name: {TLS_NAME}\nusers:\n- name: node\n  user:\n    token: {token}\n\
         contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: node\n\
         current-context: lab\n"
    )
}

fn api_port(kube: &Kube) -> u16 {
    kube.server
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("https://127.0.0.1:PORT")
}

/// `/sys/kernel/config/cluster/lab/node/*/{num,ipv4_address}` on a guest:
/// node name -> (number, address).
fn configfs_members(lab: &Lab, node: usize) -> BTreeMap<String, (u8, String)> {
    let out = lab.must(
        node,
        &format!(
            "cd /sys/kernel/config/cluster/{CLUSTER}/node && \
             for n in *; do echo \"$n $(cat $n/num) $(cat $n/ipv4_address)\"; done"
        ),
    );
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, num, addr) = (w.next()?, w.next()?, w.next()?);
            Some((name.to_string(), (num.parse().ok()?, addr.to_string())))
        })
        .collect()
}

/// How many times `node`'s plugin logged a member it saw stop heartbeating.
fn dead_reports(lab: &Lab, node: usize) -> usize {
    let (_, out) = lab.exec(
        node,
        "grep -c 'o2cb member stopped heartbeating' /tmp/node.log",
    );
    out.trim().parse().unwrap_or(0)
}

fn mountinfo_line(lab: &Lab, node: usize, path: &str) -> String {
    lab.must(node, &format!("grep ' {path} ' /proc/self/mountinfo"))
}

/// How a guest of this lab joins: the node ServiceAccount's kubeconfig, and
/// the plugin with membership from the API.
pub struct ApiMembership {
    ca: String,
    kubeconfig: String,
}

impl ApiMembership {
    /// Writes the kubeconfig on guest `node` and starts its plugin (also on
    /// a guest booted again, whose root is fresh).
    pub fn start_plugin(&self, lab: &Lab, node: usize) {
        lab.must(
            node,
            &format!(
                "cat >/root/kube-ca.crt <<'CA'\n{}CA\ncat >/root/kubeconfig <<'KC'\n{}KC\nchmod 600 /root/kubeconfig",
                self.ca, self.kubeconfig
            ),
        );
        lab.start_node_plugin_with(
            node,
            CLUSTER,
            &format!("--membership kubernetes --namespace {NAMESPACE}"),
        );
    }
}

fn delete_lease(kube: &Kube, number: u8) {
    kube.request_ok(
        "DELETE",
        &format!(
            "/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{}",
            ocfs2_csi::k8s::members::lease_name(CLUSTER, number)
        ),
        None,
    );
}

/// Whether guest `node`'s plugin process still runs (not a zombie).
fn plugin_running(lab: &Lab, node: usize) -> bool {
    let (code, _) = lab.exec(
        node,
        "p=$(cat /tmp/node.pid) && [ -d /proc/$p ] && ! grep -q '^State:[[:space:]]*Z' /proc/$p/status",
    );
    code == 0
}

/// What guest `node`'s kernel logged about another writer in its heartbeat
/// slot (o2hb_check_own_slot), if anything. A second node with this
/// node's number writes its own generation there ("generation mismatch");
/// a node with another slot geometry writes another node number ("Another
/// node is heartbeating"). "sequence mismatch" is neither: the slot holds
/// this node's own generation, an earlier write of its own read back (a
/// write that failed, or storage that returned old data), which o2hb
/// counts as one missed beat. That one is returned apart, to be shown.
fn slot_collisions(lab: &Lab, node: usize) -> (String, String) {
    let collisions = lab
        .exec(
            node,
            "dmesg | grep -E 'heartbeating on device|generation mismatch on device' | tail -n 3",
        )
        .1;
    let own = lab
        .exec(
            node,
            "dmesg | grep -E 'sequence mismatch on device|Write error' | tail -n 3",
        )
        .1;
    (collisions, own)
}

/// The API loses two Leases (issue 12): node1's under its running plugin,
/// and node3's while node3 is down. node1's plugin must say its number is
/// lost and stop; node3, booted again, must not take node1's number while
/// node1's heartbeat slot still advances on the LUN (it takes its own old
/// one, whose slot stands still); node1's plugin restarted takes its number
/// back. Leaves the Leases as `claimed` and node3 booted, its plugin ready.
fn lost_leases(
    lab: &Lab,
    kube: &Kube,
    api: &ApiMembership,
    claimed: &BTreeMap<String, (u8, String)>,
    rt: &tokio::runtime::Runtime,
) {
    let t = Instant::now();
    let (n1, n3) = (claimed["node1"].0, claimed["node3"].0);
    let mut problems: Vec<String> = Vec::new();
    let mut problem = |p: String| {
        println!("kube-lab: PROBLEM: {p}");
        problems.push(p);
    };
    delete_lease(kube, n1);
    delete_lease(kube, n3);
    // node1 renews every 10 s: it finds its Lease gone at the next renewal.
    let deadline = Instant::now() + Duration::from_secs(40);
    while plugin_running(lab, 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let log1 = lab.exec(1, "tail -n 5 /tmp/node.log").1;
    if plugin_running(lab, 1) {
        problem(format!(
            "node1's plugin still runs 40 s after its Lease was deleted; its log ends:\n{log1}"
        ));
    } else if !log1.contains("was deleted while this node") {
        problem(format!(
            "node1's plugin stopped without saying its Lease is gone:\n{log1}"
        ));
    } else {
        println!(
            "kube-lab: node1's plugin stopped {:.1} s after its Lease was deleted",
            t.elapsed().as_secs_f64()
        );
    }
    // node3 comes back with no Lease: the lowest free number in the API is
    // node1's, whose slot still advances.
    api.start_plugin(lab, 3);
    rt.block_on(lab.wait_node_ready(3, Duration::from_secs(180)));
    let got = rt.block_on(leases(kube)).get("node3").map(|l| l.0);
    let running = configfs_members(lab, 3).get("node3").map(|m| m.0);
    if got != Some(n3) || running != Some(n3) {
        problem(format!(
            "node3 claimed {got:?} and runs as {running:?}; node1 heartbeats as {n1}, node3's old number {n3} is free"
        ));
    }
    let skip = format!("o2cb node number {n1} still heartbeats on disk");
    let (_, skipped) = lab.exec(3, &format!("grep '{skip}' /tmp/node.log"));
    if !skipped.contains(&skip) {
        problem(format!("node3 never logged {skip:?}"));
    }
    for node in [1, 3] {
        let (seen, own) = slot_collisions(lab, node);
        if !own.trim().is_empty() {
            println!("kube-lab: node{node}'s kernel read back an earlier beat of its own: {own}");
        }
        if !seen.trim().is_empty() {
            problem(format!(
                "node{node}'s kernel saw its slot written by another node: {seen}"
            ));
        }
    }
    // node1's plugin again: its kernel runs as n1, nobody holds it.
    if !plugin_running(lab, 1) {
        api.start_plugin(lab, 1);
        rt.block_on(lab.wait_node_ready(1, Duration::from_secs(120)));
    }
    let now = rt.block_on(leases(kube));
    if &now != claimed {
        problem(format!("Leases {now:?}, were {claimed:?}"));
    }
    // node3 joined while node1 had no Lease: it adds node1 at its next poll.
    wait_until(
        "node3's configfs to list node1 again",
        Duration::from_secs(60),
        || &configfs_members(lab, 3) == claimed,
    );
    assert!(problems.is_empty(), "lost Leases: {problems:#?}");
    println!(
        "kube-lab: two Leases lost: node1 stopped and took its number back, node3 kept off node1's advancing slot, in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// spec.renewTime of the Lease of o2cb number `number`.
fn renew_time(kube: &Kube, number: u8) -> String {
    let lease = kube.request_ok(
        "GET",
        &format!(
            "/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{}",
            ocfs2_csi::k8s::members::lease_name(CLUSTER, number)
        ),
        None,
    );
    lease["spec"]["renewTime"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Waits until each Lease of `numbers` was renewed `times` more times. A
/// plugin's keepalive round renews its Lease, then releases the Leases it
/// finds stale; so a third renewal seen means two whole rounds are done.
fn wait_renewals(kube: &Kube, numbers: &[u8], times: usize) {
    let mut last: Vec<String> = numbers.iter().map(|&n| renew_time(kube, n)).collect();
    let mut seen = vec![0; numbers.len()];
    let deadline = Instant::now() + Duration::from_secs(30 * times as u64 + 60);
    while seen.iter().any(|&s| s < times) {
        assert!(
            Instant::now() < deadline,
            "Leases {numbers:?} renewed only {seen:?} times"
        );
        std::thread::sleep(Duration::from_millis(500));
        for (i, &n) in numbers.iter().enumerate() {
            let now = renew_time(kube, n);
            if now != last[i] {
                seen[i] += 1;
                last[i] = now;
            }
        }
    }
}

/// Installs the chart into `kube`, registers the three guests as Nodes,
/// forms the cluster from the API and runs the scenarios; returns how
/// guests join (for the scenarios after this one). `lab` was booted with
/// `LAB_API_PORT` = RELAY_PORT, no plugin runs yet.
pub fn run(lab: &Lab, kube: &Kube, rt: &tokio::runtime::Runtime) -> ApiMembership {
    let total = Instant::now();
    println!(
        "kube: tools ready in {:.1} s, API server up in {:.1} s",
        kube.tools_time.as_secs_f64(),
        kube.up_time.as_secs_f64()
    );
    // The chart as a user installs it: membership from the API (the
    // default), its ServiceAccounts and RBAC; no kubelets here, so its pods
    // never run and the plugins run in the guests instead.
    kube.helm(&[
        "install",
        "ocfs2-csi",
        "deploy/helm/ocfs2-csi",
        "--namespace",
        NAMESPACE,
        "--set",
        "luns={/dev/vda}",
        "--set",
        &format!("clusterName={CLUSTER}"),
    ]);
    // Nodes as their kubelets would register them, with the addresses the
    // guests have on the cluster network.
    for i in 1..=NODES {
        kube.request_ok(
            "POST",
            "/api/v1/nodes",
            Some(&serde_json::json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": format!("node{i}")},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": cluster_address(i)}
                ]}
            })),
        );
    }
    let token = node_token(kube);
    let ca = std::fs::read_to_string(&kube.ca).expect("API server certificate");
    let api = ApiMembership {
        ca,
        kubeconfig: guest_kubeconfig(&token),
    };

    lab.relay_into(RELAY_PORT, api_port(kube));
    let dir = tempfile::tempdir().unwrap();
    let lun = lab.lun();
    let controller = rt.block_on(Controller::start(std::slice::from_ref(&lun), dir.path()));
    let mut c = rt.block_on(controller.client());

    // --- the cluster forms from the API ----------------------------------
    let t = Instant::now();
    for node in 1..=NODES {
        api.start_plugin(lab, node);
    }
    for node in 1..=NODES {
        rt.block_on(lab.wait_node_ready(node, Duration::from_secs(180)));
    }
    println!(
        "kube-lab: {NODES} plugins claimed numbers through the API and heartbeat in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let claimed = rt.block_on(leases(kube));
    let names: Vec<String> = (1..=NODES).map(|i| format!("node{i}")).collect();
    assert_eq!(
        claimed.keys().cloned().collect::<Vec<_>>(),
        names,
        "{claimed:?}"
    );
    let mut numbers: Vec<u8> = claimed.values().map(|(n, _)| *n).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), NODES, "numbers not distinct: {claimed:?}");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(claimed[name].1, cluster_address(i + 1), "{claimed:?}");
    }
    println!("kube-lab: Leases {claimed:?}");
    // Every guest's configfs holds exactly what the Leases say, and every
    // member heartbeats.
    for node in 1..=NODES {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = configfs_members(lab, node);
            if seen == claimed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node{node}: configfs {seen:?} never matched the Leases {claimed:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        // A member that just started heartbeating shows up within a few
        // heartbeat intervals.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let live = lab.must(node, "cat /sys/kernel/debug/o2hb/livenodes");
            let mut live: Vec<u8> = live
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            live.sort();
            if live == numbers {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node{node}: live nodes {live:?}, Leases {numbers:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // --- a volume shared by the three ------------------------------------
    let shared = rt
        .block_on(c.create_volume(create_request("pvc-kube-lab", GIB)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    for node in 1..=NODES {
        rt.block_on(stage_and_publish(lab, node, &shared));
    }
    let path = target(&shared);
    for node in 1..=NODES {
        lab.must(
            node,
            &format!("echo written-on-node{node} > {path}/node{node}.txt && sync"),
        );
    }
    for node in 1..=NODES {
        let out = lab.must(node, &format!("cat {path}/node*.txt"));
        for other in 1..=NODES {
            assert!(
                out.contains(&format!("written-on-node{other}")),
                "node{node}: {out}"
            );
        }
    }

    // --- a plugin killed and restarted keeps its number ------------------
    let before = mountinfo_line(lab, 2, &path);
    lab.must(2, "kill -9 $(cat /tmp/node.pid)");
    let t = Instant::now();
    api.start_plugin(lab, 2);
    rt.block_on(lab.wait_node_ready(2, Duration::from_secs(120)));
    println!(
        "kube-lab: node2's plugin SIGKILLed and restarted, ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(rt.block_on(leases(kube)), claimed, "numbers changed");
    assert_eq!(configfs_members(lab, 2), claimed);
    assert_eq!(mountinfo_line(lab, 2, &path), before, "node2 remounted");
    lab.must(
        2,
        &format!("echo after-restart >> {path}/node2.txt && sync"),
    );
    assert!(lab
        .must(1, &format!("cat {path}/node2.txt"))
        .contains("after-restart"));

    // --- node3 lost: its number stays its own, and it rejoins with it ---
    // Its Node object still exists and it may only be cut off, so the
    // survivors must not release its Lease, and a newcomer gets another
    // number.
    let seen: Vec<usize> = [1, 2].map(|n| dead_reports(lab, n)).to_vec();
    let t = Instant::now();
    lab.crash(3);
    for (i, node) in [1, 2].into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(240);
        while dead_reports(lab, node) <= seen[i] {
            assert!(
                Instant::now() < deadline,
                "node{node} never reported node3 dead"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    println!(
        "kube-lab: node3 powered off; the survivors declared it dead after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Two keepalive rounds (each may release stale Leases) on both
    // survivors after that.
    let survivors: Vec<u8> = ["node1", "node2"].map(|n| claimed[n].0).to_vec();
    wait_renewals(kube, &survivors, 3);
    assert_eq!(
        rt.block_on(leases(kube)),
        claimed,
        "node3's Lease changed while it may be alive"
    );
    let newcomer = rt
        .block_on(async {
            admin_members(kube)
                .await
                .claim(
                    "node4",
                    "192.168.77.14".parse().unwrap(),
                    // The host heartbeats nowhere; the Leases alone hold
                    // the newcomer off node3's number.
                    &SlotsInUse::default(),
                )
                .await
        })
        .expect("a newcomer claims a number");
    assert!(
        !claimed.values().any(|(n, _)| *n == newcomer),
        "newcomer got {newcomer}, a number in use: {claimed:?}"
    );
    delete_lease(kube, newcomer);
    println!("kube-lab: node3's number kept while it is gone; a newcomer got {newcomer}");
    let t = Instant::now();
    lab.start_again(3);
    lost_leases(lab, kube, &api, &claimed, rt);
    assert_eq!(
        rt.block_on(leases(kube)),
        claimed,
        "node3 came back with another number"
    );
    assert_eq!(configfs_members(lab, 3), claimed);
    rt.block_on(stage_and_publish(lab, 3, &shared));
    assert!(lab
        .must(3, &format!("cat {path}/node2.txt"))
        .contains("after-restart"));
    println!(
        "kube-lab: node3 booted, rejoined with its number and mounted the volume in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // --- clean up: unstage everywhere, the filesystem is clean ----------
    for node in 1..=NODES {
        rt.block_on(unpublish_and_unstage(lab, node, &shared));
    }
    lab.fsck_volume(1, &shared.volume_context["partitionGuid"]);
    rt.block_on(c.delete_volume(delete_request(&shared.volume_id)))
        .unwrap();
    println!(
        "kube-lab: whole scenario in {:.1} s",
        total.elapsed().as_secs_f64()
    );
    api
}
