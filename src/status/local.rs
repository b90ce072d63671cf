//! What `status` reads on this node: o2cb in configfs and debugfs, the
//! LUNs' partition tables and superblocks (opened read-only), and the
//! plugin's stage records with each staged volume's slot map.

use super::{Kernel, KernelCluster, Lun, Region, Staged, Volume};
use crate::cluster::heartbeat::{live_nodes, region_live_nodes, region_name, region_write_age};
use crate::cluster::{ConfigFs, KernelPaths};
use crate::disk::blocking::run_blocking;
use crate::disk::gpt::{self, Gpt};
use crate::disk::lun_io::{BlockIo, LunFile};
use crate::node::records::{Records, StageRecords};
use crate::ocfs2::superblock;
use crate::ocfs2::tools::Ocfs2Tools;
use crate::volume::entry::{volume_in, Content, ALIGN, TYPE_HEARTBEAT};
use crate::volume::id::VolumeId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Enough of a filesystem's head for its superblock at any block size
/// (block 2 of 4 KiB blocks, and the block itself).
const HEAD_BYTES: usize = 12 << 10;

/// How long one read may take. With every path of a multipath LUN down,
/// I/O queues (`no_path_retry queue`) and a read never returns: status
/// must still answer on exactly such a day, saying what did not.
pub const READ_WAIT: Duration = Duration::from_secs(10);

/// `read` on a blocking thread ([`run_blocking`]), given up after `wait`
/// with what was being read. A read stuck in the kernel keeps its thread;
/// the caller exits without waiting for it.
pub async fn bounded<T: Send + 'static>(
    what: &str,
    wait: Duration,
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    run_blocking(wait, read).await.map_err(|_| {
        format!(
            "{what}: no answer within {} s (I/O queued: are its storage paths down?)",
            wait.as_secs()
        )
    })
}

/// o2cb on this node: the cluster `name` in configfs, o2hb's live set,
/// and each region's live set and write age. `what` names regions.
pub fn kernel(
    paths: &KernelPaths,
    name: &str,
    what: &BTreeMap<String, String>,
) -> Result<Kernel, String> {
    let configfs = ConfigFs::new(&paths.configfs);
    let current = configfs.current().map_err(|e| e.to_string())?;
    let Some(cluster) = current.filter(|c| c.name == name) else {
        return Ok(Kernel {
            cluster: None,
            live: Default::default(),
            regions: Vec::new(),
        });
    };
    let regions = configfs
        .regions(name)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| Region {
            what: what.get(&r).cloned(),
            live: region_live_nodes(&paths.debugfs, &r).ok(),
            write_age_ms: region_write_age(&paths.debugfs, &r)
                .ok()
                .flatten()
                .map(|d| d.as_millis() as u64),
            name: r,
        })
        .collect();
    Ok(Kernel {
        cluster: Some(KernelCluster {
            heartbeat: cluster.heartbeat.as_str().to_string(),
            dead_threshold: cluster.timeouts.dead_threshold,
            nodes: cluster
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.number,
                        n.name.clone(),
                        format!("{}:{}", n.address, n.port),
                    )
                })
                .collect(),
        }),
        live: live_nodes(&paths.debugfs).unwrap_or_default(),
        regions,
    })
}

/// Each LUN's table: its space and volumes, with what their superblocks
/// record. A LUN that cannot be read, or does not answer within `wait`,
/// says why and the others go on.
pub async fn luns(paths: &[PathBuf], wait: Duration) -> Vec<Lun> {
    let reads = paths.iter().map(|path| {
        let p = path.clone();
        async move {
            bounded("reading the LUN", wait, move || read_lun(&p))
                .await
                .unwrap_or_else(|e| Lun {
                    path: path.clone(),
                    error: Some(e),
                    ..Default::default()
                })
        }
    });
    futures::future::join_all(reads).await
}

fn read_lun(path: &Path) -> Lun {
    let failed = |error: String| Lun {
        path: path.to_path_buf(),
        error: Some(error),
        ..Default::default()
    };
    match LunFile::open_read_only(path) {
        Err(e) => failed(format!("cannot open: {e}")),
        Ok(io) => match gpt::read(&io) {
            Err(e) => failed(format!("no readable partition table: {e}")),
            Ok(read) => lun(path, &io, &read.gpt),
        },
    }
}

fn lun(path: &Path, io: &dyn BlockIo, table: &Gpt) -> Lun {
    let ss = table.sector_size;
    let free: Vec<u64> = table
        .free_extents(ALIGN / ss)
        .iter()
        .map(|(first, last)| (last - first + 1) * ss)
        .collect();
    let mut volumes = Vec::new();
    for p in &table.partitions {
        if p.type_guid == TYPE_HEARTBEAT {
            let sb = read_superblock(io, p.first_lba * ss);
            volumes.push(Volume {
                handle: String::new(),
                name: "(heartbeat)".into(),
                state: "heartbeat".into(),
                content: "heartbeat".into(),
                partition_bytes: p.size_sectors() * ss,
                extents: 1,
                filesystem_bytes: None,
                filesystem_from: None,
                region: sb.map(|sb| region_name(&sb.uuid)),
            });
            continue;
        }
        let Some(e) = volume_in(table, p) else {
            continue;
        };
        let sb = (e.content == Content::Ocfs2)
            .then(|| read_superblock(io, e.offset))
            .flatten();
        volumes.push(Volume {
            handle: VolumeId {
                lun: table.disk_guid,
                partition: e.guid,
            }
            .to_string(),
            name: e.name.clone(),
            state: e.state.name().into(),
            content: match e.content {
                Content::Ocfs2 => "filesystem",
                Content::Block => "block",
            }
            .into(),
            partition_bytes: e.size,
            extents: e.extents.len(),
            filesystem_bytes: sb.as_ref().map(|sb| sb.bytes),
            filesystem_from: sb.as_ref().map(|_| "on disk".into()),
            region: sb.map(|sb| region_name(&sb.uuid)),
        });
    }
    Lun {
        path: path.to_path_buf(),
        error: None,
        size_bytes: (table.last_usable_lba + 1).saturating_sub(table.first_usable_lba) * ss,
        free_bytes: free.iter().sum(),
        largest_free_bytes: free.iter().copied().max().unwrap_or(0),
        volumes,
    }
}

fn read_superblock(io: &dyn BlockIo, offset: u64) -> Option<superblock::Superblock> {
    let mut head = vec![0u8; HEAD_BYTES];
    io.read_at(offset, &mut head).ok()?;
    superblock::decode(&head)
}

/// Region name -> what it is, from the LUN tables.
pub fn region_names(luns: &[Lun]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for lun in luns {
        for v in &lun.volumes {
            if let Some(r) = &v.region {
                let what = match v.state.as_str() {
                    "heartbeat" => format!("heartbeat of {}", lun.path.display()),
                    _ => format!("volume {}", v.name),
                };
                out.insert(r.clone(), what);
            }
        }
    }
    out
}

/// A volume mounted here is sized by statfs: its superblock on disk may
/// not show a grow the journal has not written home yet.
pub fn prefer_mounted_sizes(luns: &mut [Lun], staged: &[Staged]) {
    for v in luns.iter_mut().flat_map(|l| l.volumes.iter_mut()) {
        if let Some(bytes) = staged
            .iter()
            .find(|s| s.handle == v.handle)
            .and_then(|s| s.filesystem_bytes)
        {
            v.filesystem_bytes = Some(bytes);
            v.filesystem_from = Some("mounted here".into());
        }
    }
}

/// The volumes the plugin's records say it stages, each filesystem's slot
/// map read with debugfs.ocfs2 (read-only).
pub async fn staged(
    state_dir: &Path,
    tools: &Ocfs2Tools,
    wait: Duration,
) -> Result<Vec<Staged>, String> {
    // Open creates the folder: a node that never staged has none.
    if !state_dir.join("staged").is_dir() {
        return Ok(Vec::new());
    }
    let records = Records::open(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let all = records
        .all()
        .map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let mut out = Vec::new();
    for record in all.into_iter().flatten() {
        let (slots, filesystem_bytes) = match record.block {
            true => (None, None),
            false => {
                let slots = tokio::time::timeout(wait, tools.mounted_nodes(&record.device))
                    .await
                    .map_err(|_| format!("no answer within {} s", wait.as_secs()))
                    .and_then(|read| read.map_err(|e| e.to_string()));
                let path = record.staging_path.clone();
                let bytes = bounded("statfs", wait, move || {
                    nix::sys::statvfs::statvfs(&path).map(|s| s.blocks() * s.fragment_size())
                })
                .await;
                (Some(slots), bytes.ok().and_then(Result::ok))
            }
        };
        out.push(Staged {
            handle: record.volume_id,
            path: record.staging_path,
            block: record.block,
            filesystem_bytes,
            slots,
        });
    }
    out.sort_by(|a, b| a.handle.cmp(&b.handle));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lun_io::MemIo;
    use crate::ocfs2::layout::{HeartbeatMode, Layout};
    use crate::volume::entry::{volume_partition, Placement, State};
    use uuid::Uuid;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_table_reads_as_its_volumes_and_free_space() {
        let io = MemIo::new(512, 64 * MIB);
        let mut table = Gpt::new(512, 64 * MIB / 512, Uuid::new_v4());
        let guid = Uuid::new_v4();
        let layout = Layout::for_size(16 * MIB, 2, None, None, None);
        table.partitions.push(volume_partition(
            Placement {
                number: 2,
                first_lba: 2048,
                last_lba: 2048 + 16 * 2048 - 1,
            },
            guid,
            "pvc-one",
            State::Ready,
            HeartbeatMode::Global,
            &layout,
        ));
        gpt::write(&io, &table).unwrap();
        let read = gpt::read(&io).unwrap().gpt;
        let lun = lun(Path::new("/dev/x"), &io, &read);
        assert_eq!(lun.error, None);
        assert_eq!(lun.volumes.len(), 1);
        let v = &lun.volumes[0];
        assert_eq!(v.name, "pvc-one");
        assert_eq!(v.state, "ready");
        assert_eq!(v.partition_bytes, 16 * MIB);
        assert_eq!(v.filesystem_bytes, None, "no filesystem written");
        assert_eq!(
            v.handle,
            VolumeId {
                lun: table.disk_guid,
                partition: guid
            }
            .to_string()
        );
        // The volume at 1-17 MiB; free from there to the last whole MiB
        // before the backup table: one extent of 46 MiB.
        assert_eq!(lun.free_bytes, 46 * MIB);
        assert_eq!(lun.largest_free_bytes, 46 * MIB);
    }

    #[tokio::test]
    async fn a_lun_without_a_table_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank.raw");
        std::fs::write(&blank, vec![0u8; 4 << 20]).unwrap();
        let missing = dir.path().join("missing.raw");
        let out = luns(&[blank, missing], READ_WAIT).await;
        assert!(out[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no readable partition table"));
        assert!(out[1].error.as_deref().unwrap().contains("cannot open"));
    }

    #[tokio::test]
    async fn no_records_folder_is_no_volumes_and_creates_none() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Ocfs2Tools::new(std::sync::Arc::new(crate::tools::SystemRunner));
        let out = staged(dir.path(), &tools, READ_WAIT).await.unwrap();
        assert!(out.is_empty());
        assert!(!dir.path().join("staged").exists());
    }

    #[tokio::test]
    async fn a_read_that_does_not_answer_is_given_up() {
        let started = std::time::Instant::now();
        let err = bounded("reading the LUN", Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(3))
        })
        .await
        .unwrap_err();
        assert!(err.contains("no answer within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
