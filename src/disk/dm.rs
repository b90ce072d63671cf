//! Device-mapper linear maps, through the kernel's ioctl interface
//! (`/dev/mapper/control`, `linux/dm-ioctl.h`), with no dmsetup and no udev
//! needed. The kernel's devtmpfs makes `/dev/dm-N`; `/dev/mapper/NAME`, the
//! name tools expect (mount.ocfs2 canonicalises a dm device to it, and
//! fails when it is missing), is made here when udev has not made it
//! (`ensure_node`): a guest without udev, a pod that started before udev
//! saw the map.
//!
//! Each volume is one map whose table lists its extents on the LUN, in
//! order. A map is created, grown (a new table loaded, then suspended and
//! resumed while it stays open and mounted) and removed only when nothing
//! holds it open. Nothing here ever shrinks a map or moves an existing
//! target: a table that is not the current one plus more is refused.
//!
//! Blocking (ioctls): run on a blocking thread.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// `struct dm_ioctl`'s size; every command's argument starts with it.
const HEADER: usize = 312;
/// `struct dm_target_spec`'s size; each target's parameters follow it.
const SPEC: usize = 40;
const NAME_LEN: usize = 128;
const UUID_LEN: usize = 129;
/// Room for the answers we read back (status with tables, lists).
const BUFFER: usize = 16 * 1024;

const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_DEV_STATUS: u8 = 7;
const DM_TABLE_LOAD: u8 = 9;
const DM_TABLE_STATUS: u8 = 12;

const SUSPEND_FLAG: u32 = 1 << 1;
const STATUS_TABLE_FLAG: u32 = 1 << 4;
const ACTIVE_PRESENT_FLAG: u32 = 1 << 5;
const BUFFER_FULL_FLAG: u32 = 1 << 8;
/// Suspend without freezing the filesystem on top: a linear map that only
/// gains targets needs in-flight I/O drained, not a filesystem freeze (a
/// frozen OCFS2 would hold cluster locks other nodes wait for).
const SKIP_LOCKFS_FLAG: u32 = 1 << 10;
/// Remove once the last opener closes it, if it is open now.
const DEFERRED_REMOVE_FLAG: u32 = 1 << 17;

/// The ioctl number of a device-mapper command: `_IOWR(0xfd, cmd, struct dm_ioctl)`.
fn request(cmd: u8) -> libc::c_ulong {
    (3 << 30) | ((HEADER as libc::c_ulong) << 16) | (0xfd << 8) | libc::c_ulong::from(cmd)
}

/// One linear target: `sectors` 512-byte sectors of the device
/// `major:minor` from `offset` (512-byte sectors), placed at `start` in the
/// map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub start: u64,
    pub sectors: u64,
    pub major: u32,
    pub minor: u32,
    pub offset: u64,
}

impl Linear {
    fn params(&self) -> String {
        format!("{}:{} {}", self.major, self.minor, self.offset)
    }
}

/// The linear targets that lay `extents` (byte offset and length on the
/// device, in order) end to end.
pub fn linear_table(device: libc::dev_t, extents: &[(u64, u64)]) -> Vec<Linear> {
    let (major, minor) = (libc::major(device), libc::minor(device));
    let mut start = 0;
    extents
        .iter()
        .map(|&(offset, bytes)| {
            let t = Linear {
                start,
                sectors: bytes / 512,
                major,
                minor,
                offset: offset / 512,
            };
            start += t.sectors;
            t
        })
        .collect()
}

/// A map as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// `/dev/dm-N`.
    pub device: PathBuf,
    /// Its device number.
    pub dev: libc::dev_t,
    pub open_count: i32,
    /// The live table; empty when the map has none (created, never loaded).
    pub table: Vec<Linear>,
}

impl MapInfo {
    pub fn bytes(&self) -> u64 {
        self.table.iter().map(|t| t.sectors * 512).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("device-mapper is not available ({0}); load the dm-mod module on this host")]
    Unavailable(io::Error),
    #[error("device-mapper {what} of map {name}: {source}")]
    Ioctl {
        what: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("map {name} would lose or move data: it has {have:?}, the table asks for {want:?}; only growth is applied to an existing map")]
    NotGrowth {
        name: String,
        have: Vec<Linear>,
        want: Vec<Linear>,
    },
    #[error("map {name}: the kernel answered a table this driver cannot read: {why}")]
    Unreadable { name: String, why: String },
    #[error("map name {0:?} is empty, too long or has a '/'")]
    BadName(String),
}

/// What `ensure` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Grown,
    Unchanged,
}

/// The control device. Cheap to open; each call opens its own.
pub struct Control(File);

impl Control {
    pub fn open() -> Result<Control, DmError> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/mapper/control")
            .or_else(|e| {
                // No udev (a lab guest) may leave /dev/mapper unmade while
                // the kernel has the misc device: make the node.
                if e.kind() == io::ErrorKind::NotFound {
                    make_control_node()?;
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/mapper/control")
                } else {
                    Err(e)
                }
            })
            .map(Control)
            .map_err(DmError::Unavailable)
    }

    /// The map named `name`, if it exists.
    pub fn info(&self, name: &str) -> Result<Option<MapInfo>, DmError> {
        let mut buf = Buffer::new(name, "", BUFFER)?;
        buf.set_flags(STATUS_TABLE_FLAG);
        match self.call(DM_TABLE_STATUS, &mut buf, name, "status") {
            Ok(()) => {}
            Err(e) if no_such_map(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        if buf.flags() & BUFFER_FULL_FLAG != 0 {
            return Err(DmError::Unreadable {
                name: name.into(),
                why: "its table does not fit the buffer".into(),
            });
        }
        let table = if buf.flags() & ACTIVE_PRESENT_FLAG != 0 {
            buf.targets().map_err(|why| DmError::Unreadable {
                name: name.into(),
                why,
            })?
        } else {
            Vec::new()
        };
        let dev = buf.dev();
        Ok(Some(MapInfo {
            device: PathBuf::from(format!("/dev/dm-{}", libc::minor(dev))),
            dev,
            open_count: buf.open_count(),
            table,
        }))
    }

    /// Makes map `name` (tagged `uuid`) carry `table`: created when missing,
    /// grown when `table` is its live table plus more (the last target
    /// longer, targets added), left alone when equal, replaced when nothing
    /// holds it open, refused otherwise.
    pub fn ensure(
        &self,
        name: &str,
        uuid: &str,
        table: &[Linear],
    ) -> Result<(MapInfo, Ensured), DmError> {
        let outcome = match self.info(name)? {
            None => {
                let mut buf = Buffer::new(name, uuid, HEADER)?;
                match self.call(DM_DEV_CREATE, &mut buf, name, "create") {
                    Ok(()) => {}
                    // Made meanwhile by another call of this plugin.
                    Err(DmError::Ioctl { source, .. })
                        if source.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => return Err(e),
                }
                self.load_and_resume(name, table)?;
                Ensured::Created
            }
            Some(have) if have.table == table => Ensured::Unchanged,
            Some(have) if have.table.is_empty() => {
                // Created by a call that died before its load.
                self.load_and_resume(name, table)?;
                Ensured::Created
            }
            Some(have) if is_growth(&have.table, table) => {
                self.load_and_resume(name, table)?;
                Ensured::Grown
            }
            // Nobody holds it (left over from a volume of the same name
            // deleted and made again): nothing can lose data.
            Some(have) if have.open_count == 0 => {
                self.load_and_resume(name, table)?;
                Ensured::Created
            }
            Some(have) => {
                return Err(DmError::NotGrowth {
                    name: name.into(),
                    have: have.table,
                    want: table.to_vec(),
                })
            }
        };
        let info = self.info(name)?.ok_or_else(|| DmError::Unreadable {
            name: name.into(),
            why: "it vanished right after it was set up".into(),
        })?;
        Ok((info, outcome))
    }

    /// Removes map `name`; if it is open, the kernel removes it when the
    /// last opener closes it. A missing map is no error. Its node in
    /// /dev/mapper goes once the map is gone.
    pub fn remove(&self, name: &str) -> Result<(), DmError> {
        let mut buf = Buffer::new(name, "", HEADER)?;
        buf.set_flags(DEFERRED_REMOVE_FLAG);
        match self.call(DM_DEV_REMOVE, &mut buf, name, "remove") {
            Err(e) if no_such_map(&e) => {}
            other => other?,
        }
        if !self.exists(name)? {
            remove_node(name).map_err(|source| DmError::Ioctl {
                what: "node removal",
                name: name.into(),
                source,
            })?;
        }
        Ok(())
    }

    fn load_and_resume(&self, name: &str, table: &[Linear]) -> Result<(), DmError> {
        let mut buf = Buffer::with_targets(name, table)?;
        self.call(DM_TABLE_LOAD, &mut buf, name, "table load")?;
        // Suspending drains in-flight I/O; resuming swaps the loaded table
        // in. New I/O waits in between, for well under a second.
        let mut buf = Buffer::new(name, "", HEADER)?;
        buf.set_flags(SUSPEND_FLAG | SKIP_LOCKFS_FLAG);
        self.call(DM_DEV_SUSPEND, &mut buf, name, "suspend")?;
        // A map left suspended holds every I/O to the volume: one more try
        // before giving up.
        let resume = || {
            let mut buf = Buffer::new(name, "", HEADER)?;
            buf.set_flags(0);
            self.call(DM_DEV_SUSPEND, &mut buf, name, "resume")
        };
        resume().or_else(|e| {
            tracing::warn!(map = name, error = %e, "resume failed; trying again");
            resume()
        })
    }

    /// Whether the kernel knows map `name` (cheap: no table).
    pub fn exists(&self, name: &str) -> Result<bool, DmError> {
        let mut buf = Buffer::new(name, "", HEADER)?;
        match self.call(DM_DEV_STATUS, &mut buf, name, "status") {
            Ok(()) => Ok(true),
            Err(e) if no_such_map(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn call(
        &self,
        cmd: u8,
        buf: &mut Buffer,
        name: &str,
        what: &'static str,
    ) -> Result<(), DmError> {
        // SAFETY: `buf` is a `struct dm_ioctl` header followed by its data,
        // `data_size` bytes in all, 8-byte aligned; the kernel writes back
        // at most `data_size` bytes.
        let rc = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                request(cmd) as _,
                buf.bytes.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(DmError::Ioctl {
                what,
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// The kernel's answer for a map that does not exist.
fn no_such_map(e: &DmError) -> bool {
    matches!(e, DmError::Ioctl { source, .. } if source.raw_os_error() == Some(libc::ENXIO))
}

/// `/dev/mapper/NAME`.
pub fn mapper_path(name: &str) -> PathBuf {
    PathBuf::from("/dev/mapper").join(name)
}

/// Makes `/dev/mapper/NAME` reach device `dev`: left alone when it does
/// (udev's symlink or an earlier node), replaced when it reaches another
/// device (a node left from an earlier map of that name).
pub fn ensure_node(name: &str, dev: libc::dev_t) -> io::Result<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = mapper_path(name);
    match std::fs::metadata(&path) {
        Ok(m) if m.file_type().is_block_device() && m.rdev() as libc::dev_t == dev => {
            return Ok(path)
        }
        Ok(_) => std::fs::remove_file(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling symlink stats as missing.
            if std::fs::symlink_metadata(&path).is_ok() {
                std::fs::remove_file(&path)?;
            }
        }
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all("/dev/mapper")?;
    nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        dev as nix::libc::dev_t,
    )
    .or_else(|e| {
        if e == nix::errno::Errno::EEXIST {
            Ok(())
        } else {
            Err(e)
        }
    })
    .map_err(io::Error::from)?;
    Ok(path)
}

/// Removes `/dev/mapper/NAME` once map NAME is gone, if it is a node made
/// here (udev removes its own symlinks).
pub fn remove_node(name: &str) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let path = mapper_path(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_block_device() => std::fs::remove_file(&path),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The misc device `device-mapper` as `/dev/mapper/control`, from the
/// numbers sysfs gives.
fn make_control_node() -> io::Result<()> {
    let dev = std::fs::read_to_string("/sys/class/misc/device-mapper/dev")?;
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| io::Error::other(format!("unexpected device numbers {dev:?}")))?;
    std::fs::create_dir_all("/dev/mapper")?;
    nix::sys::stat::mknod(
        "/dev/mapper/control",
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(major.into(), minor.into()),
    )
    .or_else(|e| {
        if e == nix::errno::Errno::EEXIST {
            Ok(())
        } else {
            Err(e)
        }
    })
    .map_err(io::Error::from)
}

/// `want` keeps every target of `have` where it is, the last one possibly
/// longer, and may add targets after them.
pub fn is_growth(have: &[Linear], want: &[Linear]) -> bool {
    let Some((last, before)) = have.split_last() else {
        return true;
    };
    if want.len() < have.len() || want[..before.len()] != *before {
        return false;
    }
    let w = want[before.len()];
    w.start == last.start
        && w.major == last.major
        && w.minor == last.minor
        && w.offset == last.offset
        && w.sectors >= last.sectors
}

/// A `struct dm_ioctl` and what follows it. The kernel copies it into a
/// buffer of its own, so its alignment here does not matter; the offsets
/// inside it keep the header's 8-byte alignment.
struct Buffer {
    bytes: Vec<u8>,
}

impl Buffer {
    fn new(name: &str, uuid: &str, size: usize) -> Result<Buffer, DmError> {
        if name.is_empty() || name.len() >= NAME_LEN || name.contains('/') {
            return Err(DmError::BadName(name.into()));
        }
        if uuid.len() >= UUID_LEN {
            return Err(DmError::BadName(uuid.into()));
        }
        let mut bytes = vec![0u8; size];
        put_u32(&mut bytes, 0, 4); // interface version 4.0.0
        put_u32(&mut bytes, 12, size as u32); // data_size
        put_u32(&mut bytes, 16, HEADER as u32); // data_start
        bytes[48..48 + name.len()].copy_from_slice(name.as_bytes());
        bytes[176..176 + uuid.len()].copy_from_slice(uuid.as_bytes());
        Ok(Buffer { bytes })
    }

    fn with_targets(name: &str, table: &[Linear]) -> Result<Buffer, DmError> {
        let specs: Vec<(Linear, Vec<u8>)> = table
            .iter()
            .map(|t| {
                let mut params = t.params().into_bytes();
                params.push(0);
                params.resize(params.len().div_ceil(8) * 8, 0);
                (*t, params)
            })
            .collect();
        let size = HEADER + specs.iter().map(|(_, p)| SPEC + p.len()).sum::<usize>();
        let mut buf = Buffer::new(name, "", size)?;
        put_u32(&mut buf.bytes, 20, table.len() as u32); // target_count
        let mut at = HEADER;
        for (t, params) in specs {
            let next = SPEC + params.len();
            put_u64(&mut buf.bytes, at, t.start);
            put_u64(&mut buf.bytes, at + 8, t.sectors);
            put_u32(&mut buf.bytes, at + 20, next as u32);
            buf.bytes[at + 24..at + 24 + 6].copy_from_slice(b"linear");
            buf.bytes[at + SPEC..at + next].copy_from_slice(&params);
            at += next;
        }
        Ok(buf)
    }

    fn set_flags(&mut self, flags: u32) {
        put_u32(&mut self.bytes, 28, flags);
    }

    fn flags(&self) -> u32 {
        get_u32(&self.bytes, 28)
    }

    fn open_count(&self) -> i32 {
        get_u32(&self.bytes, 24) as i32
    }

    fn dev(&self) -> libc::dev_t {
        get_u64(&self.bytes, 40) as libc::dev_t
    }

    /// The targets a DM_TABLE_STATUS with the table flag wrote back. Their
    /// `next` counts from the first target.
    fn targets(&self) -> Result<Vec<Linear>, String> {
        let count = get_u32(&self.bytes, 20) as usize;
        let first = get_u32(&self.bytes, 16) as usize;
        let end = (get_u32(&self.bytes, 12) as usize).min(self.bytes.len());
        let mut out = Vec::with_capacity(count);
        let mut at = first;
        for _ in 0..count {
            if at + SPEC > end {
                return Err("target past the end of the answer".into());
            }
            let kind = cstr(&self.bytes[at + 24..at + SPEC]);
            if kind != "linear" {
                return Err(format!(
                    "a {kind:?} target (only linear maps are this driver's)"
                ));
            }
            let params = cstr(&self.bytes[at + SPEC..end]);
            let bad = || format!("linear parameters {params:?}");
            let (dev, offset) = params.split_once(' ').ok_or_else(bad)?;
            let (major, minor) = dev.split_once(':').ok_or_else(bad)?;
            out.push(Linear {
                start: get_u64(&self.bytes, at),
                sectors: get_u64(&self.bytes, at + 8),
                major: major.parse().map_err(|_| bad())?,
                minor: minor.parse().map_err(|_| bad())?,
                offset: offset.trim().parse().map_err(|_| bad())?,
            });
            at = first + get_u32(&self.bytes, at + 20) as usize;
        }
        Ok(out)
    }
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(start: u64, sectors: u64, offset: u64) -> Linear {
        Linear {
            start,
            sectors,
            major: 8,
            minor: 16,
            offset,
        }
    }

    #[test]
    fn request_numbers_match_the_kernel_header() {
        // DM_DEV_CREATE and DM_TABLE_LOAD as `_IOWR(0xfd, n, struct dm_ioctl)`
        // evaluate on x86_64.
        assert_eq!(request(DM_DEV_CREATE), 0xc138_fd03);
        assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
    }

    #[test]
    fn extents_are_laid_end_to_end() {
        let dev = libc::makedev(253, 2);
        let t = linear_table(dev, &[(1 << 20, 4 << 20), (64 << 20, 2 << 20)]);
        assert_eq!(
            t,
            vec![
                Linear {
                    start: 0,
                    sectors: 8192,
                    major: 253,
                    minor: 2,
                    offset: 2048
                },
                Linear {
                    start: 8192,
                    sectors: 4096,
                    major: 253,
                    minor: 2,
                    offset: 131072
                },
            ]
        );
    }

    #[test]
    fn only_growth_is_growth() {
        let have = vec![lin(0, 100, 2048), lin(100, 50, 9000)];
        assert!(is_growth(&have, &have));
        assert!(is_growth(&have, &[lin(0, 100, 2048), lin(100, 80, 9000)]));
        assert!(is_growth(
            &have,
            &[lin(0, 100, 2048), lin(100, 50, 9000), lin(150, 10, 1)]
        ));
        assert!(
            !is_growth(&have, &[lin(0, 100, 2048), lin(100, 40, 9000)]),
            "shrunk"
        );
        assert!(!is_growth(&have, &[lin(0, 100, 2048)]), "target dropped");
        assert!(
            !is_growth(&have, &[lin(0, 100, 4096), lin(100, 50, 9000)]),
            "moved"
        );
        assert!(
            !is_growth(&have, &[lin(0, 120, 2048), lin(120, 50, 9000)]),
            "shifted"
        );
        assert!(is_growth(&[], &have));
    }

    #[test]
    fn a_load_encodes_what_a_status_decodes() {
        // The kernel answers a status with the same layout a load sends,
        // except that `next` counts from the first target, not the current.
        let table = vec![
            lin(0, 8192, 2048),
            lin(8192, 4096, 131072),
            lin(12288, 1, 7),
        ];
        let mut buf = Buffer::with_targets("ocfs2csi-x", &table).unwrap();
        let mut at = HEADER;
        let mut from_first = 0;
        for _ in 0..table.len() {
            let next = get_u32(&buf.bytes, at + 20) as usize;
            assert_eq!(next % 8, 0, "targets stay 8-byte aligned");
            from_first += next;
            put_u32(&mut buf.bytes, at + 20, from_first as u32);
            at += next;
        }
        assert_eq!(at, buf.bytes.len());
        assert_eq!(buf.targets().unwrap(), table);
        assert_eq!(cstr(&buf.bytes[48..176]), "ocfs2csi-x");
    }

    #[test]
    fn names_are_checked() {
        assert!(Buffer::new("", "", HEADER).is_err());
        assert!(Buffer::new("a/b", "", HEADER).is_err());
        assert!(Buffer::new(&"n".repeat(128), "", HEADER).is_err());
        assert!(Buffer::new(&"n".repeat(127), &"u".repeat(128), HEADER).is_ok());
    }
}
