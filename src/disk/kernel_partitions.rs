//! The kernel's view of a disk's partitions, and the BLKPG ioctls that change
//! it one partition at a time.
//!
//! A node must follow partition table changes that another host made while
//! volumes on the same disk stay mounted. BLKRRPART (re-read the whole table)
//! fails with EBUSY as long as any partition is open, and on kernels built
//! without a GPT parser it would drop every partition; BLKPG adds, resizes
//! or deletes a single partition and leaves the others alone.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Sysfs reports `start` and `size` in 512-byte units whatever the logical
/// block size of the device.
const SYSFS_SECTOR: u64 = 512;

/// A partition as the kernel currently has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelPartition {
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
}

/// The kernel's name of the whole-disk block device at `disk` (`vda`,
/// `loop3`, `dm-0`), following symlinks such as `/dev/disk/by-id/...`.
///
/// Found through the device number rather than the path's last component, so
/// a device node with another name (made by mknod in a container, or a
/// symlink) still resolves. A partition is refused: its partitions are not a
/// thing.
pub fn block_device_name(disk: &Path) -> io::Result<String> {
    let dir = sysfs_dir(disk)?;
    dir.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            io::Error::other(format!(
                "{}: odd sysfs path {}",
                disk.display(),
                dir.display()
            ))
        })
}

/// The kernel's name for partition `number` of disk `disk_name`: a `p`
/// separates the two when the disk's name ends in a digit (`loop3p1`,
/// `nvme0n1p2`), otherwise they are joined (`vda2`, `sdb10`).
pub fn partition_device_name(disk_name: &str, number: u32) -> String {
    if disk_name.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk_name}p{number}")
    } else {
        format!("{disk_name}{number}")
    }
}

/// The partitions the kernel has for the whole disk at `disk`, sorted by
/// number, read from sysfs.
pub fn kernel_partitions(disk: &Path) -> io::Result<Vec<KernelPartition>> {
    let dir = sysfs_dir(disk)?;
    partitions_in(&dir).map_err(|e| with_context(e, format!("{}", disk.display())))
}

/// The canonical sysfs directory of the whole disk at `disk`.
fn sysfs_dir(disk: &Path) -> io::Result<PathBuf> {
    let ctx = |e: io::Error| with_context(e, format!("{}", disk.display()));
    let meta = fs::metadata(disk).map_err(ctx)?;
    if !meta.file_type().is_block_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a block device", disk.display()),
        ));
    }
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let dir = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).map_err(ctx)?;
    if dir.join("partition").exists() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a partition ({}), not a whole disk",
                disk.display(),
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

/// Partitions below a disk's sysfs directory: the subdirectories that have a
/// `partition` file (the others are `queue`, `holders`, `power`, ...).
fn partitions_in(dir: &Path) -> io::Result<Vec<KernelPartition>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let sub = entry?.path();
        if !sub.join("partition").is_file() {
            continue;
        }
        match read_partition(&sub) {
            Ok(p) => out.push(p),
            // Deleted between listing and reading: it is gone, so skip it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_context(e, format!("{}", sub.display()))),
        }
    }
    out.sort_by_key(|p| p.number);
    Ok(out)
}

fn read_partition(sub: &Path) -> io::Result<KernelPartition> {
    let number = read_number(&sub.join("partition"))?;
    let start = read_number(&sub.join("start"))?;
    let size = read_number(&sub.join("size"))?;
    let bytes = |sectors: u64| {
        sectors
            .checked_mul(SYSFS_SECTOR)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "sector count overflows u64"))
    };
    Ok(KernelPartition {
        number: u32::try_from(number).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("partition number {number}"),
            )
        })?,
        start_bytes: bytes(start)?,
        size_bytes: bytes(size)?,
    })
}

fn read_number(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a number: {:?}", path.display(), text.trim()),
        )
    })
}

/// Prefixes an error's message, keeping its kind.
fn with_context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------
// BLKPG

/// `<linux/blkpg.h>`: the ioctl's argument.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `<linux/blkpg.h>`: one partition; `start` and `length` in bytes. The
/// kernel ignores the names.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

mod ioctls {
    // BLKPG = _IO(0x12, 105); the size is not encoded in the request.
    nix::ioctl_write_ptr_bad!(blkpg, 0x1269, super::BlkpgIoctlArg);
}

/// Which BLKPG operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkpgOp {
    Add,
    Delete,
    Resize,
}

impl BlkpgOp {
    fn code(self) -> libc::c_int {
        match self {
            BlkpgOp::Add => 1,
            BlkpgOp::Delete => 2,
            BlkpgOp::Resize => 3,
        }
    }
}

impl fmt::Display for BlkpgOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlkpgOp::Add => "add",
            BlkpgOp::Delete => "delete",
            BlkpgOp::Resize => "resize",
        })
    }
}

/// The error inside the `io::Error` a BLKPG call returns. The `io::Error`
/// keeps the errno's kind (EBUSY is `ResourceBusy`); this keeps the errno
/// itself, which a custom-message `io::Error` cannot.
#[derive(Debug)]
pub struct BlkpgFailure {
    pub op: BlkpgOp,
    pub number: u32,
    /// The disk, as `/proc/self/fd` names the descriptor.
    pub disk: String,
    pub errno: nix::errno::Errno,
}

impl BlkpgFailure {
    /// The failure behind an error from `blkpg_add`/`_resize`/`_delete`.
    pub fn of(e: &io::Error) -> Option<&BlkpgFailure> {
        e.get_ref()?.downcast_ref()
    }
}

impl fmt::Display for BlkpgFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BLKPG {} of partition {} on {}: {}",
            self.op,
            self.number,
            self.disk,
            self.errno.desc()
        )
    }
}

impl std::error::Error for BlkpgFailure {}

/// Tells the kernel about partition `number` of the disk open on `disk_fd`.
/// Fails with EBUSY (`ResourceBusy`) if the number is taken or the range
/// overlaps another partition, EINVAL if it is not aligned to the logical
/// block size or the disk cannot have partitions.
pub fn blkpg_add(
    disk_fd: BorrowedFd<'_>,
    number: u32,
    start_bytes: u64,
    size_bytes: u64,
) -> io::Result<()> {
    blkpg(disk_fd, BlkpgOp::Add, number, start_bytes, size_bytes)
}

/// Changes the size of partition `number`; `start_bytes` must be its current
/// start (the kernel refuses a move with EINVAL). Works while the partition
/// is open or mounted.
pub fn blkpg_resize(
    disk_fd: BorrowedFd<'_>,
    number: u32,
    start_bytes: u64,
    size_bytes: u64,
) -> io::Result<()> {
    blkpg(disk_fd, BlkpgOp::Resize, number, start_bytes, size_bytes)
}

/// Removes partition `number`. Fails with EBUSY (`ResourceBusy`) while
/// anything has it open (a mount, a process), ENXIO if there is none.
pub fn blkpg_delete(disk_fd: BorrowedFd<'_>, number: u32) -> io::Result<()> {
    blkpg(disk_fd, BlkpgOp::Delete, number, 0, 0)
}

fn blkpg(
    disk_fd: BorrowedFd<'_>,
    op: BlkpgOp,
    number: u32,
    start_bytes: u64,
    size_bytes: u64,
) -> io::Result<()> {
    let fd = disk_fd.as_raw_fd();
    let fail = |errno| {
        let failure = BlkpgFailure {
            op,
            number,
            disk: fd_name(fd),
            errno,
        };
        io::Error::new(io::Error::from(errno).kind(), failure)
    };
    let (Ok(start), Ok(length), Ok(pno)) = (
        libc::c_longlong::try_from(start_bytes),
        libc::c_longlong::try_from(size_bytes),
        libc::c_int::try_from(number),
    ) else {
        return Err(fail(nix::errno::Errno::EOVERFLOW));
    };
    let mut part = BlkpgPartition {
        start,
        length,
        pno,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: op.code(),
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: the fd is borrowed, so open for the call; `arg` and the
    // partition it points to are live #[repr(C)] values of the layout the
    // kernel reads, and the kernel does not keep the pointers.
    unsafe { ioctls::blkpg(fd, &arg) }.map(drop).map_err(fail)
}

/// What the descriptor is open on, for error messages.
fn fd_name(fd: libc::c_int) -> String {
    fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("fd {fd}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_follow_the_kernel_rule() {
        assert_eq!(partition_device_name("loop3", 1), "loop3p1");
        assert_eq!(partition_device_name("nvme0n1", 2), "nvme0n1p2");
        assert_eq!(partition_device_name("vda", 2), "vda2");
        assert_eq!(partition_device_name("sdb", 10), "sdb10");
    }

    #[test]
    fn blkpg_structs_match_the_kernel_abi() {
        // x86_64/aarch64 sizes of struct blkpg_ioctl_arg and blkpg_partition.
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<BlkpgIoctlArg>(), 24);
        }
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
    }

    fn fake_partition(dir: &Path, name: &str, number: &str, start: &str, size: &str) {
        let sub = dir.join(name);
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("partition"), number).unwrap();
        fs::write(sub.join("start"), start).unwrap();
        fs::write(sub.join("size"), size).unwrap();
    }

    #[test]
    fn reads_partitions_in_512_byte_units_and_skips_other_dirs() {
        let dir = tempfile::tempdir().unwrap();
        fake_partition(dir.path(), "loop3p2", "2\n", "206848\n", "204800\n");
        fake_partition(dir.path(), "loop3p1", "1\n", "2048\n", "8\n");
        fs::create_dir(dir.path().join("queue")).unwrap();
        fs::create_dir(dir.path().join("holders")).unwrap();
        fs::write(dir.path().join("size"), "4194304\n").unwrap();
        let parts = partitions_in(dir.path()).unwrap();
        assert_eq!(
            parts,
            vec![
                KernelPartition {
                    number: 1,
                    start_bytes: 2048 * 512,
                    size_bytes: 8 * 512
                },
                KernelPartition {
                    number: 2,
                    start_bytes: 206848 * 512,
                    size_bytes: 204800 * 512
                },
            ]
        );
    }

    #[test]
    fn garbage_in_sysfs_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fake_partition(dir.path(), "vda1", "1", "x", "8");
        let e = partitions_in(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("vda1/start"), "{e}");
    }

    #[test]
    fn a_regular_file_is_not_a_disk() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = kernel_partitions(f.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn blkpg_on_a_non_disk_fails_with_context() {
        let f = tempfile::tempfile().unwrap();
        let e = blkpg_delete(std::os::fd::AsFd::as_fd(&f), 7).unwrap_err();
        let failure = BlkpgFailure::of(&e).expect("a BlkpgFailure inside");
        assert_eq!(failure.op, BlkpgOp::Delete);
        assert_eq!(failure.number, 7);
        assert_eq!(failure.errno, nix::errno::Errno::ENOTTY);
        assert!(e.to_string().contains("delete of partition 7"), "{e}");
    }
}
