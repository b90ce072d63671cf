//! Reading the mount table of this process's mount namespace.

use std::path::{Path, PathBuf};

/// Mount points listed in `/proc/self/mountinfo`.
pub fn mount_points() -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mount_points(&text))
}

/// Whether `path` is a mount point (after resolving symlinks, as the kernel
/// lists resolved paths).
pub fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    let resolved = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(mount_points()?.contains(&resolved))
}

/// Field 5 of each line is the mount point, with space, tab, newline and
/// backslash written as octal escapes.
pub fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(crate::escape::decode(field.as_bytes(), b'\\', 3, 8)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                    40 22 0:35 / /var/lib/kubelet/pods/a\\040b rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mount_points(text),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/var/lib/kubelet/pods/a b")
            ]
        );
    }

    #[test]
    fn root_is_a_mount_point_and_missing_path_is_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(!is_mount_point(Path::new("/no/such/path/ocfs2csi")).unwrap());
    }
}
