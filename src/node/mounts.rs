//! Mounting and unmounting on this node, and reading its mount table
//! (parsing the table is `crate::mountinfo`). Both sit behind traits so
//! that [`NodeVolumes`](super::NodeVolumes) can be tested with the fakes
//! of `super::testing`; the real implementations here are proven in the lab.

use crate::mountinfo::{self, MountEntry};
use crate::ocfs2::tools::{Ocfs2Error, Ocfs2Tools};
use futures::future::BoxFuture;
use std::io;
use std::path::Path;
use sys_mount::{Mount, MountFlags, UnmountFlags};

/// What changes this node's mounts.
///
/// `mount_ocfs2` runs a tool (async, with the tool's own timeout); `bind`
/// and `unmount` are system calls that may block (OCFS2 can wait for
/// cluster locks): callers run them on a blocking thread.
pub trait Mounter: Send + Sync {
    /// Mounts the OCFS2 filesystem on `device` at the directory `target`.
    fn mount_ocfs2<'a>(
        &'a self,
        device: &'a Path,
        target: &'a Path,
        options: &'a [String],
    ) -> BoxFuture<'a, Result<(), Ocfs2Error>>;

    /// Bind-mounts `source` on the directory `target`, read-only when asked;
    /// never leaves a writable mount where a read-only one was asked for.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> io::Result<()>;

    /// Binds the block device `device` onto the file `target` (a raw
    /// block volume's publish): no `nodev`, or the device could not be
    /// opened through it.
    fn bind_device(&self, device: &Path, target: &Path, read_only: bool) -> io::Result<()>;

    /// Unmounts the topmost mount at `target`.
    fn unmount(&self, target: &Path) -> io::Result<()>;
}

/// Whether mount `m` is a bind of the device node `device`: the mount
/// table names the node inside /dev's filesystem (`/mapper/<name>`).
pub fn is_device_bind(m: &MountEntry, device: &Path) -> bool {
    device.file_name().is_some() && m.root.file_name() == device.file_name()
}

/// What this node has mounted. Blocking (resolving a path looks at the
/// mount under it, which a hung cluster filesystem can stall): callers run
/// it on a blocking thread with a bounded wait.
pub trait MountTable: Send + Sync {
    /// Every mount, in the kernel's order (later ones cover earlier ones).
    fn mounts(&self) -> io::Result<Vec<MountEntry>>;

    /// The topmost mount at `path`; None when nothing is mounted there or
    /// the path does not exist.
    fn mount_at(&self, path: &Path) -> io::Result<Option<MountEntry>>;

    /// The size in bytes of the filesystem holding `path`, as the kernel
    /// has it (statfs). Growth compares it with the size on disk, so a fake
    /// table whose mounts are not real must answer it from its own disks.
    fn fs_bytes(&self, path: &Path) -> io::Result<u64> {
        let s =
            nix::sys::statvfs::statvfs(path).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        Ok(s.blocks() as u64 * s.fragment_size() as u64)
    }
}

/// The real mounts: mount.ocfs2 for OCFS2, system calls for the rest.
///
/// The OCFS2 mount stays with `mount.ocfs2` rather than a bare mount(2):
/// the helper checks the device's cluster against the running one, starts
/// the volume's heartbeat region on configfs for local heartbeat (and
/// checks the global regions are live for global heartbeat), and only then
/// passes the kernel the `heartbeat=` and cluster options it demands. A
/// bare mount(2) would have to redo all of that here.
#[derive(Clone)]
pub struct SystemMounter {
    tools: Ocfs2Tools,
}

impl SystemMounter {
    pub fn new(tools: Ocfs2Tools) -> SystemMounter {
        SystemMounter { tools }
    }

    /// Sets the per-mount `flags` of the bind mount at `target`; unmounts
    /// it if that fails (a mount never stays without the flags asked for).
    fn remount_bind(&self, target: &Path, flags: MountFlags) -> io::Result<()> {
        // An empty source is passed to the kernel as NULL.
        if let Err(e) = Mount::builder()
            .fstype(NO_TYPE)
            .flags(MountFlags::BIND | MountFlags::REMOUNT | flags)
            .mount("", target)
        {
            let _ = self.unmount(target);
            return Err(e);
        }
        Ok(())
    }
}

/// The kernel ignores the type of a bind mount or a remount; sys-mount
/// wants one named (without one it would try every filesystem it knows).
const NO_TYPE: &str = "none";

impl Mounter for SystemMounter {
    fn mount_ocfs2<'a>(
        &'a self,
        device: &'a Path,
        target: &'a Path,
        options: &'a [String],
    ) -> BoxFuture<'a, Result<(), Ocfs2Error>> {
        Box::pin(self.tools.mount(device, target, options))
    }

    /// A bind mount takes its flags only on a remount, so every bind is two
    /// calls. The remount sets the per-mount flags anew (the kernel keeps
    /// only the atime ones), so it names all that must hold: `nodev` and
    /// `nosuid` always, as on the staging mount (`FORCED_MOUNT_OPTIONS`;
    /// this also covers a staging mount adopted from an older plugin
    /// without them), `noexec` and read-only when the source has them, and
    /// read-only when asked for.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        let inherited = inherited_flags(source)?;
        Mount::builder()
            .fstype(NO_TYPE)
            .flags(MountFlags::BIND)
            .mount(source, target)?;
        let mut flags = inherited | FORCED;
        if read_only {
            flags |= MountFlags::RDONLY;
        }
        self.remount_bind(target, flags)
    }

    fn bind_device(&self, device: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        Mount::builder()
            .fstype(NO_TYPE)
            .flags(MountFlags::BIND)
            .mount(device, target)?;
        if read_only {
            return self.remount_bind(target, MountFlags::RDONLY);
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        sys_mount::unmount(target, UnmountFlags::empty())
    }
}

/// What every published mount gets: `ocfs2::tools::FORCED_MOUNT_OPTIONS`
/// as mount(2) flags.
const FORCED: MountFlags = MountFlags::NODEV.union(MountFlags::NOSUID);

/// The per-mount flags of the mount at `source` that a bind of it keeps.
fn inherited_flags(source: &Path) -> io::Result<MountFlags> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let have = statvfs(source).map_err(io::Error::from)?.flags();
    let mut flags = MountFlags::empty();
    if have.contains(FsFlags::ST_NOEXEC) {
        flags |= MountFlags::NOEXEC;
    }
    if have.contains(FsFlags::ST_RDONLY) {
        flags |= MountFlags::RDONLY;
    }
    Ok(flags)
}

/// The mount table of this process's mount namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcMountTable;

impl MountTable for ProcMountTable {
    fn mounts(&self) -> io::Result<Vec<MountEntry>> {
        mountinfo::mount_table()
    }

    fn mount_at(&self, path: &Path) -> io::Result<Option<MountEntry>> {
        mountinfo::mount_at(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::SystemRunner;
    use std::sync::Arc;

    fn table_of_this_thread() -> Vec<MountEntry> {
        // /proc/self is the process's first thread, which keeps the host's
        // namespace; this thread has its own.
        let text = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        mountinfo::parse_mountinfo(&text)
    }

    /// The real bind mounts and unmount (sys-mount), on tmpfs in a mount
    /// namespace of one thread, so nothing reaches the host's mounts. Needs
    /// CAP_SYS_ADMIN; skipped without it. (mount.ocfs2 needs o2cb: the lab.)
    #[test]
    fn real_binds_nodev_nosuid_read_only_and_unmount_in_a_private_namespace() {
        use nix::mount::{mount, MsFlags};
        std::thread::spawn(|| {
            // This thread only: its file system context is its own.
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
                eprintln!("skipped: no mount namespace of our own (needs root): {e}");
                return;
            }
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let dir = dir.path().canonicalize().unwrap();
            let (src, ro, rw) = (dir.join("src"), dir.join("ro"), dir.join("rw"));
            for d in [&src, &ro, &rw] {
                std::fs::create_dir(d).unwrap();
            }
            // A source with noexec but without nodev,nosuid (a staging
            // mount from an older plugin, say).
            let noexec = MsFlags::MS_NOEXEC;
            mount(Some("tmpfs"), &src, Some("tmpfs"), noexec, None::<&str>).unwrap();
            let m = SystemMounter::new(Ocfs2Tools::new(Arc::new(SystemRunner)));
            m.bind(&src, &ro, true).unwrap();
            m.bind(&src, &rw, false).unwrap();
            let table = table_of_this_thread();
            let at = |p: &Path| table.iter().rfind(|e| e.mount_point == p).cloned();
            let (s, r, w) = (at(&src).unwrap(), at(&ro).unwrap(), at(&rw).unwrap());
            assert!(r.read_only() && !w.read_only() && !s.read_only());
            let has = |e: &MountEntry, o: &str| e.options.iter().any(|x| x == o);
            assert!(!has(&s, "nodev") && !has(&s, "nosuid"), "{:?}", s.options);
            for e in [&r, &w] {
                // Forced on every publish, and the source's noexec kept
                // (a bind remount would drop it otherwise).
                for o in ["nodev", "nosuid", "noexec"] {
                    assert!(
                        has(e, o),
                        "{}: {o} missing in {:?}",
                        e.mount_point.display(),
                        e.options
                    );
                }
            }
            assert_eq!(r.device, s.device, "a bind shares its source's device");
            std::fs::write(rw.join("f"), "x").unwrap();
            assert_eq!(std::fs::read(src.join("f")).unwrap(), b"x");
            let refused = std::fs::write(ro.join("g"), "x").unwrap_err();
            assert_eq!(refused.raw_os_error(), Some(libc::EROFS));
            for p in [&ro, &rw, &src] {
                m.unmount(p).unwrap();
            }
            let err = m.unmount(&src).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "nothing mounted");
            let table = table_of_this_thread();
            assert!(!table.iter().any(|e| e.mount_point.starts_with(&dir)));
        })
        .join()
        .unwrap();
    }
}
