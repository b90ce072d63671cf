//! Mounting and unmounting on this node (reading the mount table is
//! `crate::mountinfo`).

use std::path::Path;

/// Bind-mounts `source` on `target`, read-only when asked (a bind mount
/// takes MS_RDONLY only on a remount).
pub fn bind(source: &Path, target: &Path, read_only: bool) -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            // Never leave a writable mount where a read-only one was asked for.
            let _ = nix::mount::umount(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `target` (blocking: OCFS2 may wait for cluster locks).
pub fn unmount(target: &Path) -> nix::Result<()> {
    nix::mount::umount(target)
}
