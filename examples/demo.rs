//! `make demo`: the driver's main job on an embedded default. A sparse file
//! stands in for a shared SAN LUN; the real `ocfs2-csi controller` carves
//! ReadWriteMany OCFS2 volumes out of it, lists, grows and deletes them, and
//! every step is checked with the real tools (sgdisk, fsck.ocfs2).
//!
//! Until the lab exists this shows the controller alone; mounting on several
//! nodes is the lab's and the node plugin's part.

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::csi::*;
use std::time::Instant;

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

/// A volume to create: name, bytes, StorageClass parameters.
type Planned = (&'static str, u64, &'static [(&'static str, &'static str)]);

fn request(name: &str, bytes: u64, params: &[(&str, &str)]) -> CreateVolumeRequest {
    let mut r = create_request(name, bytes);
    r.parameters = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    r
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total = Instant::now();
    let dir = tempfile::tempdir()?;
    let lun = sparse_lun(dir.path(), "shared-lun.raw", 64 * GIB);
    println!(
        "== ocfs2-csi demo: a 64 GiB shared LUN (sparse file {})",
        lun.display()
    );
    let started = Instant::now();
    let controller = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    println!(
        "controller ready in {} ms: the blank LUN got a 256-entry GPT and a global-heartbeat device",
        started.elapsed().as_millis()
    );
    let mut c = controller.client().await;

    println!("\n== CreateVolume (ReadWriteMany, filesystem)");
    let plan: [Planned; 3] = [
        ("pvc-vm-disk", 10 * GIB, &[]),
        ("pvc-shared-data", 2 * GIB, &[("nodeSlots", "8")]),
        (
            "pvc-local-hb",
            GIB,
            &[("heartbeat", "local"), ("nodeSlots", "4")],
        ),
    ];
    let mut volumes = Vec::new();
    for (name, bytes, params) in plan {
        let t = Instant::now();
        let v = c
            .create_volume(request(name, bytes, params))
            .await?
            .into_inner()
            .volume
            .ok_or("no volume in the answer")?;
        println!(
            "  {name:<16} asked {:>9}, got {:>9} in {:>4} ms  id={}  heartbeat={}",
            gib(bytes),
            gib(v.capacity_bytes as u64),
            t.elapsed().as_millis(),
            v.volume_id,
            v.volume_context["heartbeat"]
        );
        volumes.push((name, bytes, v));
    }
    let again = c
        .create_volume(request("pvc-vm-disk", 10 * GIB, &[]))
        .await?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    println!(
        "  retry of pvc-vm-disk returns the same volume: {}",
        again.volume_id == volumes[0].2.volume_id
    );

    println!("\n== The LUN's partition table (sgdisk -p)");
    let (_, table) = run("sgdisk", &["-p", lun.to_str().unwrap()]);
    for line in table.lines().skip_while(|l| !l.starts_with("Number")) {
        println!("  {line}");
    }

    println!("\n== Every filesystem checked with fsck.ocfs2 -fn; usable space vs request");
    for (name, bytes, v) in &volumes {
        let part = partition_by_guid(&lun, &v.volume_context["partitionGuid"]);
        assert_fsck_clean(&lun, &part);
        let free = fs_free_bytes(&lun, &part);
        println!(
            "  {name:<16} fsck clean; partition {:>9} (+{:.1}% overhead), free {:>9} = {:.3} x request",
            gib(part.bytes()),
            (part.bytes() - bytes) as f64 * 100.0 / *bytes as f64,
            gib(free),
            free as f64 / *bytes as f64
        );
    }

    println!("\n== ListVolumes");
    let list = c
        .list_volumes(ListVolumesRequest::default())
        .await?
        .into_inner();
    for e in list.entries {
        let v = e.volume.unwrap_or_default();
        println!("  {}  {:>9}", v.volume_id, gib(v.capacity_bytes as u64));
    }

    println!(
        "\n== ControllerExpandVolume: pvc-local-hb 1 GiB -> 3 GiB (grows the GPT entry in place)"
    );
    let t = Instant::now();
    let grown = c
        .controller_expand_volume(expand_request(&volumes[2].2.volume_id, 3 * GIB))
        .await?
        .into_inner();
    println!(
        "  now {} in {} ms; node_expansion_required={} (each node resizes its partition, then one grows the filesystem)",
        gib(grown.capacity_bytes as u64),
        t.elapsed().as_millis(),
        grown.node_expansion_required
    );
    match c
        .controller_expand_volume(expand_request(&volumes[0].2.volume_id, 20 * GIB))
        .await
    {
        Err(s) => println!(
            "  pvc-vm-disk to 20 GiB refused as expected: {:?}: {}",
            s.code(),
            s.message()
        ),
        Ok(_) => return Err("growing into a neighbour's space was allowed".into()),
    }

    let cap = c
        .get_capacity(GetCapacityRequest::default())
        .await?
        .into_inner();
    println!(
        "\n== GetCapacity: {} available, largest new volume {}",
        gib(cap.available_capacity as u64),
        gib(cap.maximum_volume_size.unwrap_or(0) as u64)
    );

    println!("\n== DeleteVolume (wipes signatures, discards, drops the GPT entry)");
    for (name, _, v) in &volumes {
        let t = Instant::now();
        c.delete_volume(delete_request(&v.volume_id)).await?;
        println!("  {name:<16} deleted in {} ms", t.elapsed().as_millis());
    }
    assert_gpt_valid(&lun);
    println!(
        "  partitions left: {} (the heartbeat device); sgdisk -v: no problems found",
        partitions(&lun).len()
    );
    println!(
        "\n== demo finished in {:.1} s",
        total.elapsed().as_secs_f64()
    );
    Ok(())
}
