//! The mount options a volume may be mounted with, checked the same way
//! wherever they come from: a StorageClass's `mountOptions` (the controller
//! checks them at create) or a capability's mount flags (the node, at stage).

use crate::ocfs2::tools::FORCED_MOUNT_OPTIONS;

/// A mount flag that is not allowed, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mount flag {flag:?} is not allowed: {why}")]
pub struct MountFlagError {
    pub flag: String,
    pub why: String,
}

/// Mount options a StorageClass (`mountOptions`) or capability may ask for.
/// Anything that changes how the node takes part in the cluster (heartbeat,
/// cluster stack, `nocluster`, `localflocks`) is ours alone: getting it wrong
/// corrupts a shared volume or breaks cluster-wide flock.
const FLAGS: &[&str] = &[
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "nosuid",
    "nodev",
    "noexec",
    "acl",
    "noacl",
    "user_xattr",
    "nouser_xattr",
    "inode64",
    "usrquota",
    "grpquota",
    "intr",
    "nointr",
    "journal_async_commit",
];

/// Options with a value, and the values allowed (`None` = an integer).
const VALUED: &[(&str, Option<&[&str]>)] = &[
    ("data", Some(&["ordered", "writeback"])),
    ("errors", Some(&["remount-ro", "panic", "continue"])),
    ("coherency", Some(&["full", "buffered"])),
    ("barrier", Some(&["0", "1"])),
    ("commit", None),
    ("atime_quantum", None),
    ("localalloc", None),
    ("resv_level", None),
    ("dir_resv_level", None),
];

const OURS: &[&str] = &[
    "heartbeat",
    "nocluster",
    "localflocks",
    "cluster_stack",
    "hb",
    "ro",
    "rw",
    "remount",
    "bind",
];

/// The opposites of what every volume is mounted with
/// (`ocfs2::tools::FORCED_MOUNT_OPTIONS`: `nodev,nosuid`). Refused rather
/// than silently overridden, so that a StorageClass asking for them learns
/// at create time that it will not get them.
const UNDOES_FORCED: &[&str] = &["dev", "suid"];

/// Validates the CO's mount flags (each may itself be comma-separated) and
/// returns them as single options, in order, without duplicates.
pub fn mount_options(flags: &[String]) -> Result<Vec<String>, MountFlagError> {
    let mut out: Vec<String> = Vec::new();
    for option in flags.iter().flat_map(|f| f.split(',')).map(str::trim) {
        if option.is_empty() {
            continue;
        }
        let bad = |why: String| MountFlagError {
            flag: option.chars().take(100).collect(),
            why,
        };
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        if UNDOES_FORCED.contains(&key) {
            return Err(bad(format!(
                "volumes are always mounted {} (a filesystem shared by pods on many \
                 nodes must not honour device nodes or set-user-ID programs)",
                FORCED_MOUNT_OPTIONS.join(",")
            )));
        }
        if OURS.contains(&key) {
            return Err(bad(
                "the driver sets it (read-only is asked for with the readonly field)".into(),
            ));
        }
        match (value, VALUED.iter().find(|(k, _)| *k == key)) {
            (None, None) if FLAGS.contains(&key) => {}
            (Some(v), Some((_, Some(allowed)))) if allowed.contains(&v) => {}
            (Some(v), Some((_, None)))
                if !v.is_empty() && v.len() <= 9 && v.parse::<u32>().is_ok() => {}
            (_, Some((_, Some(allowed)))) => {
                return Err(bad(format!("expected {key}= one of {allowed:?}")))
            }
            (_, Some((_, None))) => return Err(bad(format!("expected {key}=<integer>"))),
            _ => return Err(bad("not an OCFS2 mount option this driver allows".into())),
        }
        if !out.iter().any(|o| o == option) {
            out.push(option.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_flags_are_whitelisted() {
        let ok = mount_options(&[
            "noatime,nodiratime".into(),
            "data=writeback".into(),
            "commit=30".into(),
            "noatime".into(),
        ])
        .unwrap();
        assert_eq!(ok, ["noatime", "nodiratime", "data=writeback", "commit=30"]);
        for bad in [
            "heartbeat=none",
            "nocluster",
            "localflocks",
            "data=journal",
            "commit=x",
            "commit=",
            "commit=99999999999",
            "ro",
            "bogus",
            "noatime;reboot",
            "$(reboot)",
        ] {
            let err = mount_options(&[bad.into()]).unwrap_err();
            assert!(
                err.flag == bad.chars().take(100).collect::<String>(),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn nodev_nosuid_cannot_be_undone() {
        // Asking for what is forced anyway is fine.
        assert_eq!(
            mount_options(&["nodev,nosuid".into()]).unwrap(),
            ["nodev", "nosuid"]
        );
        for bad in ["dev", "suid", "noatime,suid", "dev=1"] {
            let err = mount_options(&[bad.into()]).unwrap_err();
            assert!(
                err.why.contains("always mounted nodev,nosuid"),
                "{bad}: {err}"
            );
        }
    }
}
