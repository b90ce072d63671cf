//! One LUN filled to its partition limit by the real controller: volumes of
//! mixed small sizes and slot counts created a few at a time, the GPT checked
//! by sgdisk after every batch; one create more fails with ResourceExhausted
//! and changes nothing on disk; ListVolumes pages through exactly the
//! volumes made; a sample is fsck-clean; then everything is deleted again,
//! leaving only the heartbeat partition.
//!
//! The limit: the kernel names partitions 1 to 255 (DISK_MAX_PARTS is 256,
//! minor 0 being the whole disk) and the driver keeps partition 1 for o2cb
//! global heartbeat, so a LUN holds at most 254 volumes even though its GPT
//! has 256 entries.

use ocfs2_csi_testkit as common;

use common::*;
use futures::stream::{self, StreamExt};
use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::{GetCapacityRequest, ListVolumesRequest, Volume};
use ocfs2_csi::volume::entry::TYPE_GLOBAL;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

/// Partitions 2..=255: what the kernel can name, minus the heartbeat.
const VOLUME_LIMIT: usize = 254;
/// Usable sizes asked for, cycled; 7 is prime to the slot cycle's 4 so
/// every size meets every slot count.
const SIZES_MIB: [u64; 7] = [64, 96, 128, 192, 256, 384, 512];
/// nodeSlots per volume, cycled; None is the driver's default (16). Fewer
/// slots also mean fewer journals for mkfs to write (16 slots: 68 MB per
/// volume, 17 GB for a full LUN).
const SLOTS: [Option<u32>; 4] = [None, Some(4), Some(2), Some(8)];
/// The largest partition of the mix (512 MiB, 16 slots) is about 700 MiB;
/// 254 of the mix need about 100 GiB. The file is sparse.
const LUN_BYTES: u64 = 200 * GIB;
const BATCH: usize = 32;
const IN_FLIGHT: usize = 4;
/// Deletes at once: each waits out a stage's window (3 s) after marking
/// its entry, idle time, so a batch goes at once, as the provisioner's
/// workers send them when a namespace is deleted.
const DELETES_IN_FLIGHT: usize = BATCH;
const PAGE: i64 = 40;
const FSCK_EVERY: usize = 25;
const RETRY_FOR: Duration = Duration::from_secs(120);

fn size_of(i: usize) -> u64 {
    SIZES_MIB[i % SIZES_MIB.len()] * MIB
}

fn slots_of(i: usize) -> Option<u32> {
    SLOTS[i % SLOTS.len()]
}

fn name_of(i: usize) -> String {
    format!("scale-{i:03}")
}

fn request(i: usize) -> ocfs2_csi::csi::CreateVolumeRequest {
    let mut req = create_request(&name_of(i), size_of(i));
    if let Some(n) = slots_of(i) {
        req.parameters.insert("nodeSlots".into(), n.to_string());
    }
    req
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::Aborted | Code::Unavailable)
}

async fn create(mut c: ControllerClient<Channel>, i: usize) -> (usize, Volume, Duration) {
    let started = Instant::now();
    loop {
        match c.create_volume(request(i)).await {
            Ok(r) => return (i, r.into_inner().volume.unwrap(), started.elapsed()),
            Err(s) if retryable(&s) && started.elapsed() < RETRY_FOR => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("create {}: {s:?}", name_of(i)),
        }
    }
}

async fn delete(mut c: ControllerClient<Channel>, id: String) -> Duration {
    let started = Instant::now();
    loop {
        match c.delete_volume(delete_request(&id)).await {
            Ok(_) => return started.elapsed(),
            Err(s) if retryable(&s) && started.elapsed() < RETRY_FOR => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("delete {id}: {s:?}"),
        }
    }
}

/// After every batch: sgdisk finds no problem, its partitions are the ones
/// the driver's reader sees, numbered 1..=count without overlap, all of
/// them ready volumes with exactly the GUIDs the calls answered. While
/// only creates have run, numbers are handed out lowest first, so `dense`
/// asks for partitions 1..=count exactly.
fn check_table(lun: &Path, expected_guids: &BTreeSet<String>, dense: bool) -> Vec<Listed> {
    assert_gpt_valid(lun);
    let listed = sgdisk_partitions(lun);
    let mut by_start = listed.clone();
    by_start.sort_by_key(|p| p.first);
    for w in by_start.windows(2) {
        assert!(w[0].last < w[1].first, "overlap per sgdisk -p: {w:?}");
    }
    let ours = partitions(lun);
    let mut ours_listed: Vec<Listed> = ours
        .iter()
        .map(|p| Listed {
            number: p.number,
            first: p.first,
            last: p.last,
        })
        .collect();
    ours_listed.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, ours_listed,
        "sgdisk and the driver's reader disagree"
    );
    assert_no_overlap(&ours);
    let numbers: Vec<u32> = sorted.iter().map(|p| p.number).collect();
    assert_eq!(numbers.first(), Some(&1), "the heartbeat partition is gone");
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    if dense {
        let want: Vec<u32> = (1..=numbers.len() as u32).collect();
        assert_eq!(numbers, want, "partition numbers");
    }
    let vols: Vec<&Part> = ours.iter().filter(|p| p.number != 1).collect();
    for p in &vols {
        assert!(p.type_guid == TYPE_GLOBAL.to_string(), "not ready: {p:?}");
    }
    let on_disk: BTreeSet<String> = vols.iter().map(|p| p.guid.clone()).collect();
    assert_eq!(on_disk.len(), vols.len(), "duplicate GUIDs");
    assert_eq!(&on_disk, expected_guids);
    listed
}

fn allocated_bytes(lun: &Path) -> u64 {
    std::fs::metadata(lun).unwrap().blocks() * 512
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lun_filled_to_its_partition_limit_and_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", LUN_BYTES);
    let ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    let c = ctl.client().await;
    let test_started = Instant::now();

    // Fill, a batch at a time, a few calls in flight.
    let mut made: BTreeMap<usize, Volume> = BTreeMap::new();
    let mut guids = BTreeSet::new();
    let mut latencies = Vec::new();
    let mut checks = Duration::ZERO;
    let started = Instant::now();
    for batch in (0..VOLUME_LIMIT).collect::<Vec<_>>().chunks(BATCH) {
        let calls = batch.iter().map(|&i| create(c.clone(), i));
        let mut done = stream::iter(calls).buffer_unordered(IN_FLIGHT);
        while let Some((i, v, took)) = done.next().await {
            assert!(
                v.capacity_bytes as u64 >= size_of(i),
                "{} holds less than asked: {v:?}",
                name_of(i)
            );
            assert!(guids.insert(v.volume_context["partitionGuid"].clone()));
            latencies.push(took);
            made.insert(i, v);
        }
        let t = Instant::now();
        let listed = check_table(&lun, &guids, true);
        assert_eq!(listed.len(), made.len() + 1);
        checks += t.elapsed();
    }
    let fill = started.elapsed();
    latencies.sort();
    let parts = volume_partitions(&lun);
    let last_end = parts.iter().map(|p| p.last).max().unwrap();
    let used_bytes: u64 = parts.iter().map(Part::bytes).sum();
    println!(
        "fill: {VOLUME_LIMIT} volumes ({} GiB of partitions) in {:.1} s ({:.1} s of it \
         checking the table after each of {} batches); per create p50 {} ms, p95 {} ms, \
         max {} ms; LUN file holds {} MiB",
        used_bytes / GIB,
        fill.as_secs_f64(),
        checks.as_secs_f64(),
        VOLUME_LIMIT.div_ceil(BATCH),
        percentile(&latencies, 50).as_millis(),
        percentile(&latencies, 95).as_millis(),
        latencies[latencies.len() - 1].as_millis(),
        allocated_bytes(&lun) / MIB
    );
    let numbers: BTreeSet<u32> = partitions(&lun).iter().map(|p| p.number).collect();
    assert_eq!(
        numbers,
        (1..=255).collect(),
        "every number the kernel can name"
    );
    // The LUN is full of numbers, not of space.
    let free_after_last = (LUN_BYTES / 512 - 1 - 64 - last_end) * 512;
    assert!(
        free_after_last > 10 * size_of(6),
        "the LUN ran short of space ({free_after_last} bytes left); the test would not \
         prove the number limit"
    );

    // One more is refused, says why, and writes nothing.
    let table_before = table_bytes(&lun);
    let blocks_before = allocated_bytes(&lun);
    let over = c
        .clone()
        .create_volume(create_request("scale-one-too-many", 64 * MIB))
        .await
        .expect_err("a create beyond the partition limit");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    let msg = over.message();
    assert!(
        msg.contains("GPT entry") && msg.contains(&VOLUME_LIMIT.to_string()),
        "the refusal should name the partition limit ({VOLUME_LIMIT} volumes per LUN): {msg}"
    );
    assert!(
        table_bytes(&lun) == table_before,
        "the refused create changed the GPT"
    );
    assert_eq!(
        allocated_bytes(&lun),
        blocks_before,
        "the refused create wrote to the LUN"
    );
    println!("one more create: {:?}: {msg}", over.code());
    // A retry of an existing volume needs no new number: still answered.
    let again = c.clone().create_volume(request(7)).await.unwrap();
    assert_eq!(
        again.into_inner().volume.unwrap().volume_id,
        made[&7].volume_id
    );
    assert!(
        table_bytes(&lun) == table_before,
        "a repeated create wrote the GPT"
    );
    // And the pool reports no room for another volume.
    let cap = c
        .clone()
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (cap.available_capacity, cap.maximum_volume_size),
        (0, Some(0)),
        "GetCapacity on a LUN without partition numbers: {cap:?}"
    );

    // ListVolumes, page by page: exactly the volumes made, each once.
    let started = Instant::now();
    let mut listed: BTreeMap<String, i64> = BTreeMap::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .clone()
            .list_volumes(ListVolumesRequest {
                max_entries: PAGE as i32,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.entries.len() <= PAGE as usize);
        assert!(
            page.entries.len() == PAGE as usize || page.next_token.is_empty(),
            "a short page {} with a next token",
            page.entries.len()
        );
        for e in page.entries {
            let v = e.volume.unwrap();
            assert!(
                listed
                    .insert(v.volume_id.clone(), v.capacity_bytes)
                    .is_none(),
                "{} listed twice",
                v.volume_id
            );
        }
        if page.next_token.is_empty() {
            break;
        }
        assert!(pages <= VOLUME_LIMIT, "ListVolumes never ends");
        token = page.next_token;
    }
    assert_eq!(pages, VOLUME_LIMIT.div_ceil(PAGE as usize));
    let ids: BTreeSet<&String> = made.values().map(|v| &v.volume_id).collect();
    assert_eq!(listed.keys().collect::<BTreeSet<_>>(), ids);
    for (i, v) in &made {
        assert_eq!(listed[&v.volume_id], v.capacity_bytes, "{}", name_of(*i));
    }
    println!(
        "ListVolumes: {} volumes in {pages} pages of {PAGE} in {:.2} s",
        listed.len(),
        started.elapsed().as_secs_f64()
    );

    // fsck a sample, one per core.
    let started = Instant::now();
    let sample: Vec<Part> = (0..VOLUME_LIMIT)
        .step_by(FSCK_EVERY)
        .map(|i| partition_by_guid(&lun, &made[&i].volume_context["partitionGuid"]))
        .collect();
    std::thread::scope(|s| {
        for half in sample.chunks(sample.len().div_ceil(2)) {
            let lun = &lun;
            s.spawn(move || half.iter().for_each(|p| assert_fsck_clean(lun, p)));
        }
    });
    println!(
        "fsck: {} volumes (every {FSCK_EVERY}th) clean in {:.1} s",
        sample.len(),
        started.elapsed().as_secs_f64()
    );

    // Delete everything, a batch at a time, in an order unlike creation.
    let started = Instant::now();
    let mut order: Vec<usize> = made.keys().copied().collect();
    order.sort_by_key(|i| (i * 97) % VOLUME_LIMIT);
    let mut delete_latencies = Vec::new();
    for batch in order.chunks(BATCH) {
        let calls = batch
            .iter()
            .map(|i| delete(c.clone(), made[i].volume_id.clone()));
        let mut done = stream::iter(calls).buffer_unordered(DELETES_IN_FLIGHT);
        while let Some(took) = done.next().await {
            delete_latencies.push(took);
        }
        for i in batch {
            guids.remove(&made[i].volume_context["partitionGuid"]);
        }
        check_table(&lun, &guids, false);
    }
    let emptied = started.elapsed();
    delete_latencies.sort();
    let left = sgdisk_partitions(&lun);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].number, 1);
    assert_eq!(partitions(&lun)[0].number, 1);
    let after = c
        .clone()
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(after.entries.is_empty(), "{after:?}");
    // Deletes discard: what is left allocated is the tables and heartbeat.
    let allocated = allocated_bytes(&lun);
    assert!(
        allocated < 64 * MIB,
        "{} MiB still allocated after every volume was deleted",
        allocated / MIB
    );
    println!(
        "delete: {VOLUME_LIMIT} volumes in {:.1} s; per delete p50 {} ms, p95 {} ms; \
         LUN file holds {} MiB after; whole test {:.1} s",
        emptied.as_secs_f64(),
        percentile(&delete_latencies, 50).as_millis(),
        percentile(&delete_latencies, 95).as_millis(),
        allocated / MIB,
        test_started.elapsed().as_secs_f64()
    );
}
