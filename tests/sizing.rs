//! The capacity promise, checked against the real mkfs.ocfs2 without the
//! controller: for each requested size and slot count, a partition sized
//! the way CreateVolume sizes it must, once formatted with the controller's
//! own mkfs arguments, offer at least the requested bytes.

use ocfs2_csi::ocfs2::layout::{HeartbeatMode, Layout, GIB, MIB};
use ocfs2_csi::ocfs2::tools::{mkfs_args, MkfsSpec};
use ocfs2_csi::tools::{Runner, SystemRunner};
use ocfs2_csi::volume::entry::{self, ALIGN};
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

const TIB: u64 = 1 << 40;
/// Partitions beyond this may not fit in a sparse file on /tmp (ext4 with
/// 4 KiB blocks stops at 16 TiB); such combinations are skipped if the file
/// cannot be made.
const SPARSE_COMFORT: u64 = 8 * TIB;
const SIZES: &[u64] = &[256 * MIB, GIB, 3 * GIB, 10 * GIB, 100 * GIB, TIB, 4 * TIB];
const SLOTS: &[u32] = &[1, 2, 4, 16, 64, 255];

/// StorageClass overrides (None: the controller's default for the size).
#[derive(Clone, Copy, Default)]
struct Params {
    block: Option<u64>,
    cluster: Option<u64>,
    journal: Option<u64>,
}

/// One combination: what it asked for and what the fresh filesystem offers,
/// or why mkfs refused it.
struct Row {
    what: String,
    requested: u64,
    partition: u64,
    free: Result<u64, String>,
}

impl Row {
    fn overhead_pct(&self) -> f64 {
        (self.partition - self.requested) as f64 * 100.0 / self.requested as f64
    }
}

fn human(bytes: u64) -> String {
    if bytes >= TIB && bytes.is_multiple_of(TIB) {
        format!("{}TiB", bytes / TIB)
    } else if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{}GiB", bytes / GIB)
    } else {
        format!("{}MiB", bytes / MIB)
    }
}

fn number_after(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.split_once(key)?.1.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} in debugfs output:\n{text}"))
}

async fn debugfs(request: &str, image: &Path) -> String {
    let cmd = ocfs2_csi::tools::Cmd::new("debugfs.ocfs2", Duration::from_secs(60))
        .arg("-R")
        .arg(request)
        .arg(image.as_os_str());
    let out = SystemRunner.run(&cmd).await.unwrap().ok(&cmd).unwrap();
    out.stdout
}

/// Formats a sparse file the way the controller formats a partition and
/// returns the partition size and what the fresh filesystem offers (Err:
/// mkfs refused). None: the file could not be made that big here.
async fn format_and_measure(
    dir: &Path,
    requested: u64,
    slots: u32,
    params: Params,
) -> Option<(u64, Result<u64, String>)> {
    // Exactly the controller's arithmetic: sized by the accounted layout,
    // formatted with the layout as asked (volumes.rs create and
    // format_and_confirm).
    let layout = Layout::for_size(
        requested,
        slots,
        params.block,
        params.cluster,
        params.journal,
    );
    let accounted = entry::accounted(&layout);
    let partition = accounted.partition_bytes(requested, ALIGN);
    let image = dir.join("part.img");
    let file = std::fs::File::create(&image).unwrap();
    if let Err(e) = file.set_len(partition) {
        assert!(
            partition > SPARSE_COMFORT,
            "sparse file of {partition} bytes: {e}"
        );
        println!(
            "skip {} x {slots} slots: {partition}-byte sparse file: {e}",
            human(requested)
        );
        return None;
    }
    drop(file);
    let spec = MkfsSpec {
        cluster_name: "sizing".into(),
        label: "sizing".into(),
        uuid: Uuid::new_v4(),
        layout: layout.clone(),
        heartbeat: HeartbeatMode::Global,
        features: Vec::new(),
    };
    let cmd = mkfs_args(&spec, &image);
    let out = SystemRunner.run(&cmd).await.unwrap();
    if let Err(e) = out.ok(&cmd) {
        std::fs::remove_file(&image).unwrap();
        return Some((partition, Err(e.to_string())));
    }
    let stats = debugfs("stats", &image).await;
    assert_eq!(
        number_after(&stats, "Max Node Slots:"),
        u64::from(slots),
        "{stats}"
    );
    let cluster_bits = number_after(&stats, "Cluster Size Bits:");
    assert_eq!(1u64 << cluster_bits, layout.cluster_size, "{stats}");
    let bitmap = debugfs("stat //global_bitmap", &image).await;
    let total = number_after(&bitmap, "Bitmap Total:");
    let used = number_after(&bitmap, "Used:");
    // Journals are written in full; drop each image before the next so the
    // disk never holds more than one.
    std::fs::remove_file(&image).unwrap();
    Some((partition, Ok((total - used) << cluster_bits)))
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<60} {:>15} {:>15} {:>15} {:>8} {:>9}",
        "combination", "requested", "partition", "free", "ratio", "overhead"
    );
    for r in rows {
        let (free, ratio) = match &r.free {
            Ok(f) => (
                f.to_string(),
                format!("{:.4}", *f as f64 / r.requested as f64),
            ),
            Err(_) => ("mkfs failed".to_string(), "-".to_string()),
        };
        println!(
            "{:<60} {:>15} {:>15} {:>15} {:>8} {:>8.3}%",
            r.what,
            r.requested,
            r.partition,
            free,
            ratio,
            r.overhead_pct()
        );
    }
}

/// Every combination that breaks the promise, with how much the formula
/// under-estimates or why mkfs refused, so one run reports them all.
fn failures(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| match &r.free {
            Ok(free) if *free >= r.requested => None,
            Ok(free) => Some(format!(
                "{}: free {free} < requested {} (short by {} bytes)",
                r.what,
                r.requested,
                r.requested - free
            )),
            Err(e) => Some(format!("{}: {e}", r.what)),
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn fresh_filesystem_offers_the_requested_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut rows = Vec::new();
    for &requested in SIZES {
        for &slots in SLOTS {
            let Some((partition, free)) =
                format_and_measure(dir.path(), requested, slots, Params::default()).await
            else {
                continue;
            };
            rows.push(Row {
                what: format!("{} x {slots} slots", human(requested)),
                requested,
                partition,
                free,
            });
        }
    }

    // StorageClass overrides: a journal that is not a power of two (accounted
    // rounded up), the largest clusters (mkfs wants a journal of at least 9
    // clusters, which the default 4-8 MiB journals of small volumes are
    // not), the smallest blocks.
    let p = |block, cluster, journal| Params {
        block,
        cluster,
        journal,
    };
    let custom = [
        (GIB, 2, p(None, None, Some(100 * MIB)), "journalSize=100Mi"),
        (
            10 * GIB,
            16,
            p(None, None, Some(100 * MIB)),
            "journalSize=100Mi",
        ),
        (256 * MIB, 4, p(None, Some(MIB), None), "clusterSize=1M"),
        (GIB, 16, p(None, Some(MIB), None), "clusterSize=1M"),
        (10 * GIB, 16, p(None, Some(MIB), None), "clusterSize=1M"),
        (100 * GIB, 16, p(None, Some(MIB), None), "clusterSize=1M"),
        (
            10 * GIB,
            16,
            p(None, Some(MIB), Some(16 * MIB)),
            "clusterSize=1M,journalSize=16Mi",
        ),
        (256 * MIB, 4, p(Some(512), None, None), "blockSize=512"),
        (3 * GIB, 16, p(Some(512), None, None), "blockSize=512"),
        (100 * GIB, 16, p(Some(512), None, None), "blockSize=512"),
        (
            GIB,
            8,
            p(Some(512), Some(MIB), Some(100 * MIB)),
            "blockSize=512,clusterSize=1M,journalSize=100Mi",
        ),
    ];
    for (requested, slots, params, what) in custom {
        if params.journal == Some(100 * MIB) {
            let layout = Layout::for_size(requested, slots, None, params.cluster, params.journal);
            assert_eq!(entry::accounted(&layout).journal_size, 128 * MIB);
        }
        let (partition, free) = format_and_measure(dir.path(), requested, slots, params)
            .await
            .expect("small custom partitions always fit");
        rows.push(Row {
            what: format!("{} x {slots} slots {what}", human(requested)),
            requested,
            partition,
            free,
        });
    }

    println!();
    print_table(&rows);
    println!(
        "{} filesystems formatted in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );

    let failed = failures(&rows);
    assert!(
        failed.is_empty(),
        "the capacity promise fails:\n{}",
        failed.join("\n")
    );
    // The efficiency goal holds for the default slot count from 10 GiB up.
    for &requested in SIZES.iter().filter(|&&s| s >= 10 * GIB) {
        let l = entry::accounted(&Layout::for_size(requested, 16, None, None, None));
        let p = l.partition_bytes(requested, ALIGN);
        let overhead = (p - requested) as f64 / requested as f64;
        assert!(
            overhead < 0.03,
            "{} x 16 slots: partition overhead {:.3}% is not under 3%",
            human(requested),
            overhead * 100.0
        );
    }
}
