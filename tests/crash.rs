//! The controller SIGKILLed at random moments during concurrent creates and
//! deletes, round after round on one LUN. After every kill the GPT must be
//! valid, without overlap or duplicate, and hold nothing but the volumes that
//! exist or were being made; after a restart every interrupted call, retried,
//! must converge. At the end the LUN holds exactly the volumes the calls say,
//! all ready and fsck-clean.

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::{DeleteVolumeRequest, ListVolumesRequest};
use ocfs2_csi::disk::{gpt, lun_io::LunFile};
use ocfs2_csi::volume::entry::{TYPE_GLOBAL, TYPE_PENDING_GLOBAL};
use ocfs2_csi::volume::id::partition_guid;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};

const ROUNDS: usize = 20;
/// The writer lease of these controllers: each restart after a SIGKILL
/// waits it out (nothing was released), so it is as short as allowed.
const CRASH_LEASE: &[&str] = &["--writer-lease-secs", "1"];
const LUN_BYTES: u64 = 64 * GIB;
const SIZES_MIB: [u64; 4] = [256, 384, 512, 1024];
/// Kills fall uniformly in 0..this. A batch of 256 MiB-1 GiB volumes is done
/// in 200-350 ms on two cores, so most kills land mid-operation and some
/// before the first call or after the last answer.
const MAX_KILL_DELAY_MS: u64 = 300;
/// Fixed so a failure replays; CRASH_SEED overrides it to explore.
const DEFAULT_SEED: u64 = 0x6f63_6673_3263_7369;

#[derive(Clone, Debug)]
enum Op {
    Create { name: String, bytes: u64 },
    Delete { name: String, id: String },
}

impl Op {
    fn name(&self) -> &str {
        match self {
            Op::Create { name, .. } | Op::Delete { name, .. } => name,
        }
    }
}

/// One call; a create answers its volume ID.
async fn attempt(c: &mut ControllerClient<Channel>, op: &Op) -> Result<Option<String>, Status> {
    match op {
        Op::Create { name, bytes } => {
            let v = c.create_volume(create_request(name, *bytes)).await?;
            let v = v.into_inner().volume.unwrap();
            assert!(v.capacity_bytes as u64 >= *bytes, "{name}: {v:?}");
            Ok(Some(v.volume_id))
        }
        Op::Delete { id, .. } => {
            let req = DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            };
            c.delete_volume(req).await.map(|_| None)
        }
    }
}

/// Retries on Aborted and Unavailable only (CSI's "try again"); any other
/// failure of a retried call is a failure of the test.
async fn until_done(mut c: ControllerClient<Channel>, op: Op, log: String) -> Option<String> {
    let started = Instant::now();
    loop {
        match attempt(&mut c, &op).await {
            Ok(id) => return id,
            Err(s)
                if matches!(s.code(), Code::Aborted | Code::Unavailable)
                    && started.elapsed() < Duration::from_secs(120) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!(
                "{op:?} after restart: {s:?}\ncontroller log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }
}

fn loops_on(lun: &Path) -> Vec<String> {
    let (ok, out) = run("losetup", &["-j", lun.to_str().unwrap()]);
    assert!(ok, "losetup -j: {out}");
    out.lines()
        .filter_map(|l| l.split(':').next())
        .filter(|d| d.starts_with("/dev/"))
        .map(String::from)
        .collect()
}

/// Whether an OCFS2 superblock (block 2, 4 KiB blocks) is still there: a
/// delete wipes it before it drops the GPT entry.
fn has_signature(lun: &Path, part: &Part) -> bool {
    let mut magic = [0u8; 6];
    let f = std::fs::File::open(lun).unwrap();
    f.read_exact_at(&mut magic, part.first * 512 + 8192)
        .unwrap();
    &magic == b"OCFSV2"
}

fn guid_of(name: &str) -> String {
    partition_guid(name).to_string()
}

/// What one kill interrupted, as found on disk before the restart.
#[derive(Default)]
struct Found {
    pending: usize,
    deletes_unfinished: usize,
    wiped_but_listed: usize,
    torn_table: bool,
    sgdisk_objected: bool,
    stale_loops: usize,
}

/// The LUN right after a kill: a valid table (sgdisk may only object to a
/// copy the kill left half-written, which the next start repairs), no
/// overlap or duplicate, nothing but live volumes and this batch's creates,
/// every live volume still ready, and every answered call durable.
fn inspect_after_kill(
    lun: &Path,
    live: &BTreeMap<String, Vol>,
    batch: &[Op],
    done: &[bool],
) -> Found {
    let mut found = Found {
        stale_loops: loops_on(lun).len(),
        ..Found::default()
    };
    let read = gpt::read(&LunFile::open(lun).unwrap()).expect("a readable table after a kill");
    found.torn_table = !(read.primary_valid && read.backup_valid);
    let (ok, text) = run("sgdisk", &["-v", lun.to_str().unwrap()]);
    found.sgdisk_objected = !(ok && text.contains("No problems found"));
    assert!(
        found.torn_table || !found.sgdisk_objected,
        "sgdisk -v after a kill: {text}"
    );
    let parts = partitions(lun);
    assert_no_overlap(&parts);
    let guids: BTreeSet<&str> = parts.iter().map(|p| p.guid.as_str()).collect();
    assert_eq!(guids.len(), parts.len(), "duplicate GUIDs: {parts:#?}");

    let by_guid: BTreeMap<String, &Part> = parts
        .iter()
        .filter(|p| p.number != 1)
        .map(|p| (p.guid.clone(), p))
        .collect();
    let creating: BTreeSet<String> = batch
        .iter()
        .filter(|op| matches!(op, Op::Create { .. }))
        .map(|op| guid_of(op.name()))
        .collect();
    for (guid, p) in &by_guid {
        assert!(
            live.values().any(|v| v.guid == *guid) || creating.contains(guid),
            "a partition nobody asked for: {p:?}"
        );
        if p.type_guid == TYPE_PENDING_GLOBAL.to_string() {
            assert!(creating.contains(guid), "pending but not being made: {p:?}");
            found.pending += 1;
        }
    }
    let deleting: BTreeSet<&str> = batch
        .iter()
        .filter(|op| matches!(op, Op::Delete { .. }))
        .map(Op::name)
        .collect();
    for (name, v) in live {
        if deleting.contains(name.as_str()) {
            continue;
        }
        let p = by_guid
            .get(&v.guid)
            .unwrap_or_else(|| panic!("{name} lost"));
        assert!(
            p.type_guid == TYPE_GLOBAL.to_string(),
            "{name} no longer ready: {p:?}"
        );
    }
    for (op, done) in batch.iter().zip(done) {
        let on_disk = by_guid.get(&guid_of(op.name()));
        match (op, done, on_disk) {
            (Op::Create { name, .. }, true, p) => assert!(
                p.is_some_and(|p| p.type_guid == TYPE_GLOBAL.to_string()),
                "{name} was answered but is not ready: {p:?}"
            ),
            (Op::Delete { name, .. }, true, p) => {
                assert!(
                    p.is_none(),
                    "{name} was answered deleted but is back: {p:?}"
                )
            }
            (Op::Delete { .. }, false, Some(p)) => {
                found.deletes_unfinished += 1;
                if !has_signature(lun, p) {
                    found.wiped_but_listed += 1;
                }
            }
            _ => {}
        }
    }
    found
}

#[derive(Clone, Debug)]
struct Vol {
    id: String,
    guid: String,
    bytes: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_during_creates_and_deletes_converge() {
    let mut rng = crash_rng(DEFAULT_SEED);
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", LUN_BYTES);
    let mut ctl = Controller::start_with(std::slice::from_ref(&lun), dir.path(), CRASH_LEASE).await;
    let test_started = Instant::now();

    let mut live: BTreeMap<String, Vol> = BTreeMap::new();
    let mut gone: BTreeMap<String, u64> = BTreeMap::new();
    let mut interesting = 0;
    let mut totals = Found::default();
    let mut tools_killed = 0;
    let mut torn_rounds = 0;

    for round in 0..ROUNDS {
        // The batch: new volumes, repeats of live ones, now and then a
        // deleted name coming back, and deletes of other live ones.
        let mut names: Vec<String> = live.keys().cloned().collect();
        rng.shuffle(&mut names);
        let n_delete = match live.len() {
            0..=3 => 0,
            4..=9 => 1 + rng.below(2) as usize,
            _ => 3,
        };
        let mut batch = Vec::new();
        for name in names.drain(..n_delete) {
            let id = live[&name].id.clone();
            batch.push(Op::Delete { name, id });
        }
        for name in names.iter().take(rng.below(3) as usize) {
            let bytes = live[name].bytes;
            batch.push(Op::Create {
                name: name.clone(),
                bytes,
            });
        }
        if !gone.is_empty() && rng.below(3) == 0 {
            let (name, bytes) = gone
                .iter()
                .nth(rng.below(gone.len() as u64) as usize)
                .unwrap();
            batch.push(Op::Create {
                name: name.clone(),
                bytes: *bytes,
            });
        }
        for k in 0..2 + rng.below(3) {
            let bytes = SIZES_MIB[rng.below(SIZES_MIB.len() as u64) as usize] * MIB;
            batch.push(Op::Create {
                name: format!("crash-{round:02}-{k}"),
                bytes,
            });
        }
        rng.shuffle(&mut batch);

        let client = ctl.client().await;
        let mut calls = JoinSet::new();
        for (i, op) in batch.iter().enumerate() {
            let (mut c, op) = (client.clone(), op.clone());
            calls.spawn(async move { (i, attempt(&mut c, &op).await) });
        }
        let delay = rng.below(MAX_KILL_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let killed = crash(&mut ctl);
        tools_killed += killed;

        // Calls answered before the kill count as done.
        let mut done = vec![false; batch.len()];
        let mut answered: BTreeMap<String, String> = BTreeMap::new();
        while let Some(joined) = tokio::time::timeout(Duration::from_secs(30), calls.join_next())
            .await
            .expect("calls end once the controller is dead")
        {
            if let (i, Ok(id)) = joined.unwrap() {
                done[i] = true;
                if let Some(id) = id {
                    answered.insert(batch[i].name().to_string(), id);
                }
            }
        }
        let found = inspect_after_kill(&lun, &live, &batch, &done);
        let creates = batch
            .iter()
            .filter(|op| matches!(op, Op::Create { .. }))
            .count();

        // Restart and retry every call of the batch, answered or not: a
        // retry of a finished one must be a no-op.
        let restarted = Instant::now();
        ctl = Controller::start_with(std::slice::from_ref(&lun), dir.path(), CRASH_LEASE).await;
        assert_eq!(
            loops_on(&lun),
            Vec::<String>::new(),
            "loop devices of the killed run still attached after a restart"
        );
        assert_gpt_valid(&lun);
        let client = ctl.client().await;
        let log = ctl.log.to_string_lossy().into_owned();
        let mut retries = JoinSet::new();
        for (i, op) in batch.iter().enumerate() {
            let (c, op, log) = (client.clone(), op.clone(), log.clone());
            retries.spawn(async move { (i, until_done(c, op, log).await) });
        }
        while let Some(joined) = retries.join_next().await {
            let (i, id) = joined.unwrap();
            match &batch[i] {
                Op::Create { name, bytes } => {
                    let id = id.unwrap();
                    let earlier = live.get(name).map(|v| &v.id).or(answered.get(name));
                    if let Some(earlier) = earlier {
                        assert_eq!(&id, earlier, "{name} came back with another ID");
                    }
                    gone.remove(name);
                    let guid = guid_of(name);
                    assert!(id.ends_with(&guid), "{id} does not name {guid}");
                    let bytes = *bytes;
                    live.insert(name.clone(), Vol { id, guid, bytes });
                }
                Op::Delete { name, .. } => {
                    let v = live.remove(name).unwrap();
                    gone.insert(name.clone(), v.bytes);
                }
            }
        }

        // Converged: exactly the live volumes, all ready.
        let parts = volume_partitions(&lun);
        let on_disk: BTreeSet<&str> = parts.iter().map(|p| p.guid.as_str()).collect();
        let expected: BTreeSet<&str> = live.values().map(|v| v.guid.as_str()).collect();
        assert_eq!(on_disk, expected, "round {round}: {parts:#?}");
        assert_eq!(on_disk.len(), parts.len());
        for p in &parts {
            assert!(
                p.type_guid == TYPE_GLOBAL.to_string(),
                "round {round}: {p:?}"
            );
        }
        // The creates the kill cut short were finished by the retry.
        for (op, done) in batch.iter().zip(&done) {
            if let (Op::Create { name, .. }, false) = (op, done) {
                let p = parts.iter().find(|p| p.guid == guid_of(name)).unwrap();
                assert_fsck_clean(&lun, p);
            }
        }

        if found.pending > 0 || found.wiped_but_listed > 0 {
            interesting += 1;
        }
        println!(
            "round {round:02}: {creates} creates + {} deletes, kill at {delay:4} ms \
             ({killed} tools), {}/{} answered; on disk: {} pending, {} deletes unfinished \
             ({} wiped, entry kept), torn table {}, {} loop devices left; \
             reconverged in {:.1} s, {} live",
            batch.len() - creates,
            done.iter().filter(|d| **d).count(),
            batch.len(),
            found.pending,
            found.deletes_unfinished,
            found.wiped_but_listed,
            match (found.torn_table, found.sgdisk_objected) {
                (false, _) => "no",
                (true, false) => "yes",
                (true, true) => "yes (sgdisk -v objected)",
            },
            found.stale_loops,
            restarted.elapsed().as_secs_f64(),
            live.len()
        );
        totals.pending += found.pending;
        totals.deletes_unfinished += found.deletes_unfinished;
        totals.wiped_but_listed += found.wiped_but_listed;
        torn_rounds += usize::from(found.torn_table);
        totals.stale_loops += found.stale_loops;
    }

    // The end state, through the table, the tools and the API.
    let parts = volume_partitions(&lun);
    assert_no_overlap(&partitions(&lun));
    let on_disk: BTreeSet<&str> = parts.iter().map(|p| p.guid.as_str()).collect();
    let expected: BTreeSet<&str> = live.values().map(|v| v.guid.as_str()).collect();
    assert_eq!(on_disk, expected);
    assert_eq!(on_disk.len(), parts.len());
    assert!(parts.iter().all(|p| p.type_guid == TYPE_GLOBAL.to_string()));
    assert_gpt_valid(&lun);
    std::thread::scope(|s| {
        for half in parts.chunks(parts.len().div_ceil(2).max(1)) {
            let lun = &lun;
            s.spawn(move || half.iter().for_each(|p| assert_fsck_clean(lun, p)));
        }
    });
    let listed = ctl
        .client()
        .await
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.next_token.is_empty());
    let listed: BTreeSet<String> = listed
        .entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect();
    let ids: BTreeSet<String> = live.values().map(|v| v.id.clone()).collect();
    assert_eq!(listed, ids);

    println!(
        "{ROUNDS} rounds in {:.1} s: {interesting} kills found a pending entry or a wiped \
         volume still listed; {} pending entries, {} unfinished deletes ({} wiped, entry \
         kept), {} tools killed mid-run, {} loop devices left behind, {torn_rounds} torn tables; \
         {} volumes at the end, all fsck-clean",
        test_started.elapsed().as_secs_f64(),
        totals.pending,
        totals.deletes_unfinished,
        totals.wiped_but_listed,
        tools_killed,
        totals.stale_loops,
        live.len()
    );
    // Proof the kills hit the window that matters, not just idle moments.
    assert!(
        interesting >= ROUNDS / 2,
        "only {interesting} of {ROUNDS} kills landed mid-operation"
    );
}
