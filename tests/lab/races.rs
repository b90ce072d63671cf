//! A NodeStage racing a DeleteVolume of the same volume, on real OCFS2
//! kernels (issue 12): 50 rounds, each a fresh small volume staged on one
//! guest while the controller deletes it, the two calls started together or
//! one ahead of the other by up to 0.8 s (either way round). Every round
//! must end with the volume mounted and not deleted (the delete refused),
//! or deleted and mounted nowhere; never mounted with its entry gone,
//! marked Deleting, or its superblock wiped. A round where both gave up
//! (the stage unmounted on seeing Deleting, the delete then saw it in the
//! slot map) must leave the volume intact; the retried delete then runs.
//!
//! Rounds run ten at a time (the delete's wait for stages is the same
//! wall-clock time for ten as for one), spread over the three guests.

use crate::common::lab::*;
use crate::common::*;
use ocfs2_csi::csi::Volume;
use ocfs2_csi::volume::entry::{TYPE_DELETING_GLOBAL, TYPE_GLOBAL};
use ocfs2_csi::volume::id::VolumeId;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

const NODES: usize = 3;
const ROUNDS: usize = 50;
const AT_ONCE: usize = 10;
/// How far one call starts ahead of the other, in ms.
const LEADS_MS: [u64; 5] = [0, 150, 300, 500, 800];

fn code<T>(r: &Result<T, tonic::Status>) -> Option<Code> {
    r.as_ref().err().map(|s| s.code())
}

/// Whether the OCFS2 superblock (block 2 of 4 KiB) is at `first` (512-byte
/// sectors of the lab's LUN file).
fn has_signature(lun: &Path, first: u64) -> bool {
    let mut magic = [0u8; 6];
    let f = std::fs::File::open(lun).unwrap();
    f.read_exact_at(&mut magic, first * 512 + 8192).unwrap();
    &magic == b"OCFSV2"
}

/// Guests with `v` mounted at its staging path.
fn mounted_on(lab: &Lab, v: &Volume) -> Vec<usize> {
    (1..=NODES)
        .filter(|&n| {
            lab.must(
                n,
                &format!("grep -c ' {} ' /proc/mounts || true", staging(v)),
            )
            .trim()
                != "0"
        })
        .collect()
}

struct Round {
    index: usize,
    node: usize,
    /// Positive: the stage starts this many ms after the delete; negative:
    /// before it.
    stage_after_ms: i64,
    volume: Volume,
}

/// The 50 rounds on `lab`, whose three plugins run with no volume or mount
/// left; leaves it so.
pub fn run(lab: &Lab, rt: &tokio::runtime::Runtime) {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lun = lab.lun();
    let controller = lab.scenario_controller(rt, dir.path());
    let mut c = rt.block_on(controller.client());

    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_lead: BTreeMap<i64, (usize, usize, usize)> = BTreeMap::new();
    let mut created_s = 0.0;
    for batch in 0..ROUNDS / AT_ONCE {
        let t = Instant::now();
        let rounds: Vec<Round> = (0..AT_ONCE)
            .map(|k| {
                let index = batch * AT_ONCE + k;
                let mut r = create_request(&format!("pvc-race-{index:02}"), 64 * MIB);
                r.parameters.insert("nodeSlots".into(), "4".into());
                let volume = rt
                    .block_on(c.create_volume(r))
                    .unwrap_or_else(|e| panic!("create {index}: {e:?}"))
                    .into_inner()
                    .volume
                    .unwrap();
                let lead = LEADS_MS[(index / 2) % LEADS_MS.len()] as i64;
                Round {
                    index,
                    node: 1 + index % NODES,
                    stage_after_ms: if index.is_multiple_of(2) { lead } else { -lead },
                    volume,
                }
            })
            .collect();
        created_s += t.elapsed().as_secs_f64();
        for node in 1..=NODES {
            let dirs: String = rounds
                .iter()
                .filter(|r| r.node == node)
                .map(|r| format!("{} ", staging(&r.volume)))
                .collect();
            lab.must(node, &format!("mkdir -p {dirs}"));
        }

        // The races, all ten at once.
        let results = rt.block_on(futures::future::join_all(rounds.iter().map(|r| {
            let mut c = c.clone();
            async move {
                let mut n = lab.node_client(r.node).await;
                let (stage_wait, delete_wait) = if r.stage_after_ms >= 0 {
                    (r.stage_after_ms as u64, 0)
                } else {
                    (0, (-r.stage_after_ms) as u64)
                };
                let stage = async {
                    tokio::time::sleep(Duration::from_millis(stage_wait)).await;
                    n.node_stage_volume(stage_request(&r.volume, &staging(&r.volume)))
                        .await
                };
                let delete = async {
                    tokio::time::sleep(Duration::from_millis(delete_wait)).await;
                    c.delete_volume(delete_request(&r.volume.volume_id)).await
                };
                tokio::join!(stage, delete)
            }
        })));

        for (r, (stage, delete)) in rounds.iter().zip(results) {
            let id = VolumeId::parse(&r.volume.volume_id).unwrap();
            let parts = volume_partitions(&lun);
            let entry = parts.iter().find(|p| p.guid == id.partition.to_string());
            let mounted = mounted_on(lab, &r.volume);
            let signature = entry.map(|p| has_signature(&lun, p.first));
            let ready = entry.is_some_and(|p| p.type_guid == TYPE_GLOBAL.to_string());
            let what = format!(
                "round {:02} node{} stage {:+} ms: stage {:?}, delete {:?}; mounted on {mounted:?}, \
                 entry {:?}, signature {signature:?}",
                r.index,
                r.node,
                r.stage_after_ms,
                code(&stage),
                code(&delete),
                entry.map(|p| if p.type_guid == TYPE_DELETING_GLOBAL.to_string() {
                    "deleting"
                } else if ready {
                    "ready"
                } else {
                    "other"
                }),
            );
            let outcome = match (mounted.is_empty(), entry.is_some()) {
                (false, _) => {
                    assert!(
                        ready && signature == Some(true) && mounted == [r.node],
                        "mounted but not intact: {what}"
                    );
                    assert!(
                        stage.is_ok() && code(&delete) == Some(Code::FailedPrecondition),
                        "{what}"
                    );
                    "mounted, not deleted"
                }
                (true, false) => {
                    assert!(delete.is_ok(), "{what}");
                    assert!(stage.is_err(), "{what}");
                    "deleted, not mounted"
                }
                (true, true) => {
                    // Both gave up: the volume must be whole, and ready.
                    assert!(
                        ready && signature == Some(true),
                        "neither, not intact: {what}"
                    );
                    assert!(stage.is_err() && delete.is_err(), "{what}");
                    "neither (both refused), then deleted"
                }
            };
            println!("lab-races: {what} => {outcome}");
            *outcomes.entry(outcome).or_default() += 1;
            let counts = by_lead.entry(r.stage_after_ms).or_default();
            match outcome {
                "mounted, not deleted" => counts.0 += 1,
                "deleted, not mounted" => counts.1 += 1,
                _ => counts.2 += 1,
            }
        }

        // Clean up for the next batch: unstage what is mounted, delete
        // what is left (the delete must go through now).
        rt.block_on(futures::future::join_all(rounds.iter().map(|r| {
            let mut c = c.clone();
            async move {
                let mut n = lab.node_client(r.node).await;
                n.node_unstage_volume(ocfs2_csi::csi::NodeUnstageVolumeRequest {
                    volume_id: r.volume.volume_id.clone(),
                    staging_target_path: staging(&r.volume),
                })
                .await
                .unwrap_or_else(|e| panic!("round {}: unstage: {e:?}", r.index));
                c.delete_volume(delete_request(&r.volume.volume_id))
                    .await
                    .unwrap_or_else(|e| panic!("round {}: delete after: {e:?}", r.index));
            }
        })));
        assert!(
            volume_partitions(&lun).is_empty(),
            "left: {:?}",
            volume_partitions(&lun)
        );
        assert_gpt_valid(&lun);
    }
    for node in 1..=NODES {
        assert_eq!(
            lab.must(node, "grep -c ' ocfs2 ' /proc/mounts || true")
                .trim(),
            "0",
            "node{node}"
        );
    }
    println!(
        "lab-races: {ROUNDS} rounds: {outcomes:?}; by stage start relative to the delete (ms): \
         (mounted, deleted, neither) {by_lead:?}; creates {created_s:.1} s, whole scenario {:.1} s",
        total.elapsed().as_secs_f64()
    );
}
