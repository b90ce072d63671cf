//! o2cb node numbers through a real kube-apiserver (built from the
//! Kubernetes Go module by scripts/kube-tools.sh): 20 simulated node
//! plugins race for numbers and get 20 distinct ones; restarted, each keeps
//! its number; a departed node's number is released only when it is not
//! heartbeating, and whoever held it learns it is gone.

mod common;

use common::kube::Kube;
use ocfs2_csi::cluster::MembershipSource;
use ocfs2_csi::k8s::{KubeError, KubeMembers};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const NODES: u8 = 20;

async fn client(kube: &Kube) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(&kube.kubeconfig).expect("kubeconfig");
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

/// Every simulated node claims at once, each with its own client (as
/// separate plugins would); returns node name -> number.
async fn race(kube: &Kube) -> BTreeMap<String, u8> {
    let claims = (0..NODES).map(|i| async move {
        let km = KubeMembers::new(client(kube).await, "default", "testclu", 7777);
        (
            name(i),
            km.claim(&name(i), address(i)).await.expect("claim"),
        )
    });
    futures::future::join_all(claims)
        .await
        .into_iter()
        .collect()
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
        let first = race(&kube).await;
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

        // Restarted (new processes, new clients): same numbers.
        let again = race(&kube).await;
        assert_eq!(again, first, "numbers changed on restart");
        println!("kube: restarted plugins kept their numbers");

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
        assert_eq!(other.claim("sim-node-00", address(0)).await.unwrap(), 0);
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
        assert_eq!(km.claim("sim-node-new", address(99)).await.unwrap(), gone);
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
    });
}
