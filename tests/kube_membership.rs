//! o2cb node numbers through a real kube-apiserver (built from the
//! Kubernetes Go module by scripts/kube-tools.sh): 20 simulated node
//! plugins, each its own process, race for numbers and get 20 distinct
//! ones; SIGKILLed and started again, each keeps its number; a departed
//! node's number is released only when it is not heartbeating, and whoever
//! held it learns it is gone; a Lease deleted under its holder is a lost
//! number, and a number whose heartbeat slot advances is never claimed.

use ocfs2_csi_testkit as common;

use common::kube::Kube;
use ocfs2_csi::cluster::{MembershipSource, SlotsInUse};
use ocfs2_csi::k8s::{KubeError, KubeMembers};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODES: u8 = 20;

/// No simulated node heartbeats on a disk.
fn silent() -> SlotsInUse {
    SlotsInUse::default()
}

async fn client(kube: &Kube) -> kube::Client {
    client_from(&kube.kubeconfig).await
}

async fn client_from(kubeconfig: &std::path::Path) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("kubeconfig usable");
    kube::Client::try_from(config).expect("client")
}

fn name(i: u8) -> String {
    format!("sim-node-{i:02}")
}

fn address(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, i + 1)
}

const CHILD_ENV: &str = "OCFS2_CSI_TEST_CLAIM_AS";

/// One simulated node plugin in a process of its own (this test binary run
/// again for `plugin_process`): it claims a number, prints it and keeps
/// renewing its Lease every 2 s until it is killed.
fn spawn_plugin(kube: &Kube, i: u8) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "plugin_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{} {}", name(i), address(i)))
        .env("KUBECONFIG", &kube.kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a plugin process")
}

/// Not a test of its own: the body of one simulated plugin process.
#[test]
fn plugin_process() {
    let Ok(me) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (node, address) = me.split_once(' ').expect("NAME ADDRESS");
    let address: Ipv4Addr = address.parse().expect("address");
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let km = KubeMembers::new(
            client_from(kubeconfig.as_ref()).await,
            "default",
            "testclu",
            7777,
        );
        let number = km.claim(node, address, &silent()).await.expect("claim");
        println!("CLAIMED {number}");
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            km.renew(node, number, None).await.expect("renew");
        }
    });
}

/// Starts every simulated plugin at once, each its own process, and waits
/// for their claims; returns node name -> number and the processes.
fn race(kube: &Kube) -> (BTreeMap<String, u8>, Vec<Child>) {
    let mut children: Vec<Child> = (0..NODES).map(|i| spawn_plugin(kube, i)).collect();
    let numbers = children
        .iter_mut()
        .enumerate()
        .map(|(i, child)| {
            let out = BufReader::new(child.stdout.take().unwrap());
            let number = out
                .lines()
                .map_while(Result::ok)
                // libtest prints "test plugin_process ... " before it.
                .find_map(|l| l.split("CLAIMED ").nth(1).map(|n| n.trim().parse::<u8>()))
                .unwrap_or_else(|| panic!("plugin process {i} ended without a claim"))
                .expect("a number");
            (name(i as u8), number)
        })
        .collect();
    (numbers, children)
}

/// SIGKILL, as a node plugin dies when its pod is killed.
fn kill_all(children: Vec<Child>) {
    for mut child in children {
        child.kill().expect("SIGKILL a plugin process");
        child.wait().expect("reap it");
    }
}

#[test]
fn node_numbers_through_the_api() {
    let kube = Kube::up();
    println!(
        "kube: tools ready in {:.1} s, API server up in {:.1} s",
        kube.tools_time.as_secs_f64(),
        kube.up_time.as_secs_f64()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = Instant::now();
        let (first, children) = race(&kube);
        let numbers: BTreeSet<u8> = first.values().copied().collect();
        assert_eq!(
            numbers.len(),
            NODES as usize,
            "duplicate numbers: {first:?}"
        );
        assert_eq!(numbers, (0..NODES).collect(), "{first:?}");
        println!(
            "kube: {NODES} plugins racing got {NODES} distinct numbers in {:.2} s",
            t.elapsed().as_secs_f64()
        );

        // Killed and started again: same numbers.
        kill_all(children);
        let (again, children) = race(&kube);
        assert_eq!(again, first, "numbers changed on restart");
        kill_all(children);
        println!("kube: {NODES} plugin processes SIGKILLed and started again kept their numbers");

        let km = KubeMembers::new(client(&kube).await, "default", "testclu", 7777);
        let members = km.members().await.unwrap();
        assert_eq!(members.len(), NODES as usize);
        for m in &members {
            let i: u8 = m.name.trim_start_matches("sim-node-").parse().unwrap();
            assert_eq!(m.number, first[&m.name]);
            assert_eq!(m.address, address(i));
            assert_eq!(m.port, 7777);
        }
        // Another cluster's numbers are separate.
        let other = KubeMembers::new(client(&kube).await, "default", "otherclu", 7777);
        assert_eq!(other.claim("sim-node-00", address(0), &silent()).await.unwrap(), 0);
        assert_eq!(other.members().await.unwrap().len(), 1);

        // None of the simulated nodes has a Node object, so each number is
        // released exactly when it does not heartbeat.
        let gone = first["sim-node-05"];
        let live: BTreeSet<u8> = numbers.iter().copied().filter(|n| *n != gone).collect();
        let released = km
            .release_stale("sim-node-00", &live, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(released, vec![gone]);
        // Recently renewed Leases are kept even when silent.
        let kept = km
            .release_stale("sim-node-00", &BTreeSet::new(), Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(kept.is_empty(), "{kept:?}");
        // The freed number goes to the next node that claims...
        assert_eq!(km.claim("sim-node-new", address(99), &silent()).await.unwrap(), gone);
        // ...and the old holder is told, so it stops instead of sharing it.
        match km.renew("sim-node-05", gone, None).await {
            Err(KubeError::Lost { holder, .. }) => {
                assert_eq!(holder.as_deref(), Some("sim-node-new"))
            }
            other => panic!("expected Lost, got {other:?}"),
        }
        println!(
            "kube: departed number {gone} released only when silent; its old holder is refused"
        );

        // The API loses a Lease under its holder: its next renewal says the
        // number is lost (not a passing error to retry)...
        let victim = first["sim-node-07"];
        kube.request_ok(
            "DELETE",
            &format!(
                "/apis/coordination.k8s.io/v1/namespaces/default/leases/{}",
                ocfs2_csi::k8s::members::lease_name("testclu", victim)
            ),
            None,
        );
        match km.renew("sim-node-07", victim, None).await {
            Err(KubeError::Lost { holder: None, .. }) => {}
            other => panic!("expected Lost with no holder, got {other:?}"),
        }
        // ...and while its heartbeat slot advances, a newcomer passes it over.
        let on_disk = SlotsInUse {
            mine: None,
            busy: BTreeMap::from([(victim, "region R".to_string())]),
        };
        let late = km
            .claim("sim-node-late", address(98), &on_disk)
            .await
            .unwrap();
        assert_eq!(late, NODES, "number {victim} still heartbeats");
        println!("kube: a deleted Lease is a lost number; its advancing slot is not claimed ({late} instead)");
    });
}
