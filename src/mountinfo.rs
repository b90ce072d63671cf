//! Reading the mount table of this process's mount namespace
//! (`/proc/self/mountinfo`); the node and the cluster's kernel checks both
//! read it.

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the device (a bind mount shares it with its source).
    pub device: String,
    /// The path inside the filesystem that is mounted (`/` for a whole fs).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`/`rw`, `noatime`, ...).
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// Filesystem-wide options: `ro` here means the filesystem itself went
    /// read-only, for example after an I/O error with errors=remount-ro.
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    pub fn fs_read_only(&self) -> bool {
        self.super_options.iter().any(|o| o == "ro")
    }
}

/// The mount table of this process.
pub fn mount_table() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// The topmost mount at `path` (the last one listed wins, as later mounts
/// cover earlier ones), after resolving symlinks as the kernel lists
/// resolved paths.
pub fn mount_at(path: &Path) -> std::io::Result<Option<MountEntry>> {
    let resolved = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(mount_table()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == resolved))
}

fn unescape(field: &str) -> String {
    crate::escape::decode(field.as_bytes(), b'\\', 3, 8)
}

/// Fields: id, parent, major:minor, root, mount point, options, optional
/// fields up to `-`, fs type, source, super options. Paths have space, tab,
/// newline and backslash as octal escapes.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            if dash < 6 || fields.len() < dash + 4 {
                return None;
            }
            let list = |s: &str| s.split(',').map(str::to_string).collect();
            Some(MountEntry {
                device: fields[2].to_string(),
                root: PathBuf::from(unescape(fields[3])),
                mount_point: PathBuf::from(unescape(fields[4])),
                options: list(fields[5]),
                fs_type: fields[dash + 1].to_string(),
                source: unescape(fields[dash + 2]),
                super_options: list(fields[dash + 3]),
            })
        })
        .collect()
}

/// Mount points only (kept for callers that need nothing else).
pub fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    parse_mountinfo(text)
        .into_iter()
        .map(|m| m.mount_point)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
        40 22 0:35 / /var/lib/kubelet/pods/a\\040b rw shared:5 - tmpfs tmpfs rw\n\
        51 22 253:2 / /stage rw,noatime - ocfs2 /dev/vda2 ro,relatime,heartbeat=global\n\
        52 22 253:2 / /target ro,noatime master:1 - ocfs2 /dev/vda2 rw\n";

    #[test]
    fn parses_mountinfo() {
        let table = parse_mountinfo(SAMPLE);
        assert_eq!(
            parse_mount_points(SAMPLE),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/var/lib/kubelet/pods/a b"),
                PathBuf::from("/stage"),
                PathBuf::from("/target"),
            ]
        );
        let stage = &table[2];
        assert_eq!(stage.device, "253:2");
        assert_eq!(stage.fs_type, "ocfs2");
        assert_eq!(stage.source, "/dev/vda2");
        assert!(!stage.read_only());
        assert!(stage.fs_read_only());
        assert!(table[3].read_only());
        assert!(!table[3].fs_read_only());
    }

    #[test]
    fn skips_malformed_lines() {
        assert!(parse_mountinfo("garbage\n1 2 3 4 5 6 -\n").is_empty());
    }

    #[test]
    fn root_is_a_mount_point_and_missing_path_is_not() {
        assert!(mount_at(Path::new("/")).unwrap().is_some());
        assert!(mount_at(Path::new("/no/such/path/ocfs2csi"))
            .unwrap()
            .is_none());
    }
}
