//! Partition sync against this host's kernel: a loop device over a sparse
//! file stands for a shared LUN, and sgdisk on the file (not the device, so
//! the kernel is not told) plays the other host that changes its GPT.
//! Needs root and loop devices with partition support.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ocfs2_csi::disk::gpt;
use ocfs2_csi::disk::kernel_partitions::{
    block_device_name, kernel_partitions, partition_device_name, KernelPartition,
};
use ocfs2_csi::disk::lun_io::LunFile;
use ocfs2_csi::disk::partition_sync::{
    sync, Change, PartitionFailure, Refused, SyncError, WantedPartition,
};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// A loop device with partition scanning, detached when dropped (also when
/// the test panics). Partitions still open then keep it until they close:
/// the kernel turns the detach into autoclear.
struct LoopDev {
    dev: PathBuf,
}

impl LoopDev {
    fn attach(file: &Path) -> LoopDev {
        let out = Command::new("losetup")
            .args(["--find", "--show", "-P"])
            .arg(file)
            .output()
            .expect("run losetup (this test needs root and util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        LoopDev { dev: dev.into() }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("--detach")
            .arg(&self.dev)
            .status();
    }
}

fn sgdisk(file: &Path, args: &[&str]) {
    let out = Command::new("sgdisk")
        .args(args)
        .arg(file)
        .output()
        .expect("run sgdisk");
    assert!(
        out.status.success(),
        "sgdisk {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Partition `number` from `first` to `last` (inclusive) sectors, as
/// sysfs would report it.
fn part(number: u32, first: u64, last: u64) -> KernelPartition {
    KernelPartition {
        number,
        start_bytes: first * SECTOR,
        size_bytes: (last - first + 1) * SECTOR,
    }
}

/// The table in the image file, read the way `sync` reads the device.
fn table_of(file: &Path) -> Vec<KernelPartition> {
    let g = gpt::read(&LunFile::open(file).unwrap()).unwrap().gpt;
    g.partitions
        .iter()
        .map(|p| part(p.number, p.first_lba, p.last_lba))
        .collect()
}

/// Opens a partition's device node; devtmpfs makes it while the BLKPG add
/// runs, but a host with udev may rename or re-create it a moment later.
fn open_partition(disk_name: &str, number: u32) -> File {
    let path = format!("/dev/{}", partition_device_name(disk_name, number));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match File::open(&path) {
            Ok(f) => return f,
            Err(e) if Instant::now() > deadline => panic!("open {path}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn added_numbers(changes: &[WantedPartition]) -> Vec<u32> {
    changes.iter().map(|w| w.number).collect()
}

fn resized(changes: &[Change]) -> Vec<(u32, u64, u64)> {
    changes
        .iter()
        .map(|c| match *c {
            Change::Resize {
                number, from, to, ..
            } => (number, from, to),
            other => panic!("not a resize: {other:?}"),
        })
        .collect()
}

#[test]
fn kernel_partitions_follow_the_gpt_without_touching_what_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lun.raw");
    File::create(&file).unwrap().set_len(2 << 30).unwrap();
    // 256 entries, like the controller's tables; three 100 MiB volumes.
    sgdisk(
        &file,
        &[
            "-o",
            "-S",
            "256",
            "-n",
            "1:2048:206847",
            "-n",
            "2:206848:411647",
            "-n",
            "3:411648:616447",
        ],
    );
    let lun = LoopDev::attach(&file);
    let dev = lun.dev.as_path();
    let name = block_device_name(dev).unwrap();
    assert_eq!(
        Some(name.as_str()),
        dev.file_name().and_then(|n| n.to_str())
    );

    // A symlink (as under /dev/disk/by-id) resolves to the same disk.
    let link = dir.path().join("by-id-link");
    std::os::unix::fs::symlink(dev, &link).unwrap();
    assert_eq!(block_device_name(&link).unwrap(), name);

    // The partition scan at attach may or may not have found the table
    // (kernels built without CONFIG_EFI_PARTITION find nothing); either way
    // one sync makes the kernel match and a second has nothing to do.
    let scanned = kernel_partitions(dev).unwrap();
    eprintln!("{name}: partition scan at attach found {scanned:?}");
    let first = sync(&link).unwrap();
    assert_eq!(first.added.len(), 3 - scanned.len(), "{first:?}");
    let v1 = vec![
        part(1, 2048, 206847),
        part(2, 206848, 411647),
        part(3, 411648, 616447),
    ];
    assert_eq!(kernel_partitions(dev).unwrap(), v1);
    assert!(sync(dev).unwrap().is_empty());

    // A partition's own device is not a disk.
    let p1_path = PathBuf::from(format!("/dev/{}", partition_device_name(&name, 1)));
    let _ = open_partition(&name, 1);
    let e = kernel_partitions(&p1_path).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");

    // Another host deletes volume 2, grows 3 to 300 MiB, and makes volume
    // 4 in the space 2 left. The loop device serves reads of the file
    // through the file's page cache, and LunFile reads the device with
    // O_DIRECT, so sync sees sgdisk's buffered writes without a flush.
    sgdisk(
        &file,
        &[
            "-d",
            "2",
            "-d",
            "3",
            "-n",
            "3:411648:1026047",
            "-n",
            "4:206848:309247",
        ],
    );
    let v2 = vec![
        part(1, 2048, 206847),
        part(3, 411648, 1026047),
        part(4, 206848, 309247),
    ];
    assert_eq!(table_of(&file), v2);
    let report = sync(dev).unwrap();
    assert_eq!(report.deleted, [part(2, 206848, 411647)]);
    assert_eq!(resized(&report.resized), [(3, 100 * MIB, 300 * MIB)]);
    assert_eq!(added_numbers(&report.added), [4]);
    assert_eq!(kernel_partitions(dev).unwrap(), v2);

    // In use: p1 and p3 are open (a mount holds a partition open the same
    // way). The table drops p1 and grows p3 to 500 MiB.
    let p1 = open_partition(&name, 1);
    let p3 = open_partition(&name, 3);
    let mut buf = [0u8; 512];
    let past_old_end = 400 * MIB;
    assert_eq!(
        p3.read_at(&mut buf, past_old_end).unwrap(),
        0,
        "EOF at 300 MiB"
    );
    // An open partition keeps the whole disk open, so the disk's page cache
    // now outlives each reader: prime it with the old table to show that
    // sync does not read through it.
    let disk_size = 2 << 30;
    let cached = |at: u64| {
        let mut b = vec![0u8; 64 << 10];
        File::open(dev).unwrap().read_exact_at(&mut b, at).unwrap();
        b
    };
    let (head, tail) = (cached(0), cached(disk_size - (64 << 10)));
    sgdisk(&file, &["-d", "1", "-d", "3", "-n", "3:411648:1435647"]);
    let stale = cached(0) == head && cached(disk_size - (64 << 10)) == tail;
    eprintln!("buffered reads of {name} after the change: stale = {stale}");
    let err = sync(dev).unwrap_err();
    let message = err.to_string();
    let SyncError::Incomplete { done, failures, .. } = err else {
        panic!("expected a partial sync, got {message}");
    };
    assert!(
        matches!(
            failures.as_slice(),
            [PartitionFailure::InUse {
                number: 1,
                action: Refused::Delete,
                ..
            }]
        ),
        "{message}"
    );
    let p1_name = partition_device_name(&name, 1);
    assert!(message.contains(&p1_name), "{message}");
    assert_eq!(resized(&done.resized), [(3, 300 * MIB, 500 * MIB)]);
    assert!(done.added.is_empty() && done.deleted.is_empty(), "{done:?}");
    let v3_with_p1 = vec![
        part(1, 2048, 206847),
        part(3, 411648, 1435647),
        part(4, 206848, 309247),
    ];
    assert_eq!(kernel_partitions(dev).unwrap(), v3_with_p1);
    // The holder of the open partition sees the new size at once.
    assert_eq!(p3.read_at(&mut buf, past_old_end).unwrap(), 512);

    // p1 is closed now, p3 still open. The table shrinks p3 back to 300 MiB
    // and moves volume 4 (unused) into the space p1 held, so p1 must go
    // before p4 can come back at its new start.
    drop(p1);
    sgdisk(
        &file,
        &[
            "-d",
            "3",
            "-d",
            "4",
            "-n",
            "3:411648:1026047",
            "-n",
            "4:2048:104447",
        ],
    );
    let err = sync(dev).unwrap_err();
    let message = err.to_string();
    let SyncError::Incomplete { done, failures, .. } = err else {
        panic!("expected a partial sync, got {message}");
    };
    assert!(
        matches!(
            failures.as_slice(),
            [PartitionFailure::InUse {
                number: 3,
                action: Refused::Shrink,
                ..
            }]
        ),
        "{message}"
    );
    assert_eq!(
        done.deleted,
        [part(1, 2048, 206847), part(4, 206848, 309247)]
    );
    assert_eq!(added_numbers(&done.added), [4]);
    assert_eq!(
        kernel_partitions(dev).unwrap(),
        [part(3, 411648, 1435647), part(4, 2048, 104447)]
    );

    // Once nothing holds p3, the shrink goes through.
    drop(p3);
    let report = sync(dev).unwrap();
    assert_eq!(resized(&report.resized), [(3, 500 * MIB, 300 * MIB)]);
    let end = table_of(&file);
    assert_eq!(end, [part(3, 411648, 1026047), part(4, 2048, 104447)]);
    assert_eq!(kernel_partitions(dev).unwrap(), end);
    assert!(sync(dev).unwrap().is_empty());
}
