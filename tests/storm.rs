//! A storm of concurrent CreateVolume and DeleteVolume calls on one LUN: every
//! call succeeds, and afterwards the GPT holds exactly the volumes the calls
//! say, without overlap, duplicates or pending leftovers, each filesystem
//! fsck-clean and as big as asked.

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::{DeleteVolumeRequest, ListVolumesRequest, Volume};
use ocfs2_csi::volume::entry::TYPE_GLOBAL;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Code;

/// Sizes in GiB, cycled through in a fixed interleaving so neighbours differ.
const SIZES_GIB: [u64; 5] = [1, 2, 3, 5, 8];
const FIRST: usize = 50;
const CHURN: usize = 25;

/// Aborted (same volume in flight) and Unavailable (not ready) mean "try
/// again" in CSI; anything else is a failure of the test.
fn retryable(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::Aborted | Code::Unavailable)
}

const RETRY_FOR: Duration = Duration::from_secs(300);

async fn create(mut c: ControllerClient<Channel>, name: String, bytes: u64) -> (Volume, Duration) {
    let started = Instant::now();
    loop {
        match c.create_volume(create_request(&name, bytes)).await {
            Ok(r) => return (r.into_inner().volume.unwrap(), started.elapsed()),
            Err(s) if retryable(&s) && started.elapsed() < RETRY_FOR => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("create {name}: {s:?}"),
        }
    }
}

async fn delete(mut c: ControllerClient<Channel>, id: String) -> Duration {
    let started = Instant::now();
    loop {
        let req = DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        };
        match c.delete_volume(req).await {
            Ok(_) => return started.elapsed(),
            Err(s) if retryable(&s) && started.elapsed() < RETRY_FOR => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("delete {id}: {s:?}"),
        }
    }
}

fn size_of(i: usize) -> u64 {
    SIZES_GIB[(i * 3) % SIZES_GIB.len()] * GIB
}

fn latency_summary(mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |x: Duration| x.as_millis();
    format!(
        "min {} ms, median {} ms, max {} ms",
        ms(d[0]),
        ms(d[d.len() / 2]),
        ms(d[d.len() - 1])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_deletes_converge() {
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 400 * GIB);
    let ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    let c = ctl.client().await;

    // Phase 1: all creates at once.
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..FIRST {
        let (c, name) = (c.clone(), format!("storm-a-{i:02}"));
        tasks.spawn(async move {
            let (v, took) = create(c, name.clone(), size_of(i)).await;
            (name, size_of(i), v, took)
        });
    }
    // name -> (requested bytes, volume)
    let mut live: BTreeMap<String, (u64, Volume)> = BTreeMap::new();
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (name, bytes, v, took) = done.unwrap();
        latencies.push(took);
        live.insert(name, (bytes, v));
    }
    let phase1 = started.elapsed();
    let requested: u64 = (0..FIRST).map(size_of).sum();
    println!(
        "phase 1: {FIRST} concurrent creates ({} GiB) in {:.1} s; per call {}",
        requested / GIB,
        phase1.as_secs_f64(),
        latency_summary(latencies)
    );
    assert_eq!(live.len(), FIRST);
    assert_eq!(volume_partitions(&lun).len(), FIRST);

    // Phase 2: delete every other volume while creating as many new ones.
    let doomed: Vec<String> = live.keys().step_by(2).take(CHURN).cloned().collect();
    let started = Instant::now();
    let mut deletes = JoinSet::new();
    for name in &doomed {
        let id = live[name].1.volume_id.clone();
        deletes.spawn(delete(c.clone(), id));
    }
    let mut creates = JoinSet::new();
    for i in 0..CHURN {
        let (c, name) = (c.clone(), format!("storm-b-{i:02}"));
        // Offset the mix so phase 2 does not mirror phase 1's sizes.
        let bytes = size_of(i + 2);
        creates.spawn(async move {
            let (v, took) = create(c, name.clone(), bytes).await;
            (name, bytes, v, took)
        });
    }
    let mut delete_latencies = Vec::new();
    while let Some(took) = deletes.join_next().await {
        delete_latencies.push(took.unwrap());
    }
    let mut create_latencies = Vec::new();
    while let Some(done) = creates.join_next().await {
        let (name, bytes, v, took) = done.unwrap();
        create_latencies.push(took);
        assert!(live.insert(name, (bytes, v)).is_none());
    }
    for name in &doomed {
        live.remove(name);
    }
    println!(
        "phase 2: {CHURN} deletes + {CHURN} creates concurrently in {:.1} s; \
         deletes {}; creates {}",
        started.elapsed().as_secs_f64(),
        latency_summary(delete_latencies),
        latency_summary(create_latencies)
    );

    // The table holds exactly the surviving volumes, all ready, no overlap.
    let started = Instant::now();
    assert_no_overlap(&partitions(&lun));
    let parts = volume_partitions(&lun);
    assert_eq!(parts.len(), FIRST, "{parts:#?}");
    let on_disk: BTreeSet<String> = parts.iter().map(|p| p.guid.clone()).collect();
    let expected: BTreeSet<String> = live
        .values()
        .map(|(_, v)| v.volume_context["partitionGuid"].clone())
        .collect();
    assert_eq!(on_disk, expected);
    for p in &parts {
        assert!(p.type_guid == TYPE_GLOBAL.to_string(), "not ready: {p:?}");
    }
    assert_gpt_valid(&lun);

    // ListVolumes reads the same set back from disk, sizes included.
    let listed = c
        .clone()
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.next_token.is_empty());
    let listed: BTreeMap<String, i64> = listed
        .entries
        .into_iter()
        .map(|e| {
            let v = e.volume.unwrap();
            (v.volume_id, v.capacity_bytes)
        })
        .collect();
    let expected_ids: BTreeSet<&String> = live.values().map(|(_, v)| &v.volume_id).collect();
    assert_eq!(listed.keys().collect::<BTreeSet<_>>(), expected_ids);
    for (name, (bytes, v)) in &live {
        assert!(v.capacity_bytes as u64 >= *bytes, "{name}: {v:?}");
        assert!(listed[&v.volume_id] as u64 >= *bytes, "{name} as listed");
    }

    // Two at a time: one per core.
    std::thread::scope(|s| {
        for half in parts.chunks(parts.len().div_ceil(2)) {
            let lun = &lun;
            s.spawn(move || half.iter().for_each(|p| assert_fsck_clean(lun, p)));
        }
    });
    println!(
        "checks: table, ListVolumes and fsck of {} volumes in {:.1} s",
        parts.len(),
        started.elapsed().as_secs_f64()
    );
}
