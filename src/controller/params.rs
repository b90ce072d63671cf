//! StorageClass parameters and volume capabilities: checked before anything
//! touches a disk, each bad value a clear InvalidArgument.

use crate::csi::volume_capability::{access_mode::Mode, AccessType};
use crate::csi::VolumeCapability;
use crate::ocfs2::layout::{
    check_journal_total, HeartbeatMode, DEFAULT_SLOTS, KIB, MAX_JOURNAL, MAX_SLOTS, MIB,
    MIN_JOURNAL,
};
use crate::ocfs2::tools::ALLOWED_FEATURES;
use crate::volume::entry::Content;
use std::collections::HashMap;

/// What the StorageClass asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeParams {
    pub slots: u32,
    pub cluster_size: Option<u64>,
    pub block_size: Option<u64>,
    pub journal_size: Option<u64>,
    pub heartbeat: HeartbeatMode,
    pub features: Vec<String>,
    /// Pin to one LUN: its path as given with --lun, or its disk GUID.
    pub lun: Option<String>,
}

impl Default for VolumeParams {
    fn default() -> Self {
        VolumeParams {
            slots: DEFAULT_SLOTS,
            cluster_size: None,
            block_size: None,
            journal_size: None,
            heartbeat: HeartbeatMode::Global,
            features: Vec::new(),
            lun: None,
        }
    }
}

/// Keys Kubernetes adds on its own (PVC/PV names, secrets references).
pub const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";

impl VolumeParams {
    pub fn parse(params: &HashMap<String, String>) -> Result<VolumeParams, String> {
        let mut p = VolumeParams::default();
        let mut keys: Vec<&String> = params.keys().collect();
        keys.sort();
        for key in keys {
            let value = params[key].as_str();
            // Callers' text goes into messages clipped, and only on error.
            let shown = || clip(value);
            match key.as_str() {
                "nodeSlots" => {
                    p.slots = parse_number(key, value)
                        .filter(|n| (1..=u64::from(MAX_SLOTS)).contains(n))
                        .ok_or_else(|| {
                            format!(
                                "nodeSlots {:?} must be a whole number from 1 to {MAX_SLOTS}",
                                shown()
                            )
                        })? as u32;
                }
                "clusterSize" => {
                    p.cluster_size = Some(power_of_two_size(key, value, 4 * KIB, MIB)?);
                }
                "blockSize" => {
                    p.block_size = Some(power_of_two_size(key, value, 512, 4 * KIB)?);
                }
                "journalSize" => {
                    let size = parse_size(value).ok_or_else(|| {
                        format!(
                            "journalSize {:?} is not a size (like 64Mi or 128M)",
                            shown()
                        )
                    })?;
                    if !(MIN_JOURNAL..=MAX_JOURNAL).contains(&size) || size % MIB != 0 {
                        return Err(format!(
                            "journalSize {:?} must be whole MiB between 4Mi and 1Gi",
                            shown()
                        ));
                    }
                    p.journal_size = Some(size);
                }
                "heartbeat" => {
                    p.heartbeat = HeartbeatMode::parse(value).ok_or_else(|| {
                        format!("heartbeat {:?} must be \"global\" or \"local\"", shown())
                    })?;
                }
                "fsFeatures" => p.features = parse_features(value)?,
                "lun" => {
                    if value.is_empty() || value.len() > 4096 || value.contains('\0') {
                        return Err(format!("lun {:?} is not a LUN path or disk GUID", shown()));
                    }
                    p.lun = Some(value.to_string());
                }
                k if k.starts_with(KUBERNETES_PREFIX) => {}
                _ => {
                    return Err(format!(
                        "unknown parameter {:?}; known: nodeSlots, clusterSize, blockSize, \
                         journalSize, heartbeat, fsFeatures, lun",
                        clip(key)
                    ))
                }
            }
        }
        if let (Some(b), Some(c)) = (p.block_size, p.cluster_size) {
            if c < b {
                return Err(format!("clusterSize {c} is smaller than blockSize {b}"));
            }
        }
        // mkfs writes every journal in full: too many too big ones and it
        // would be killed at its time limit, and the create retried, again
        // and again. Only an explicit journalSize can get there (the
        // default journals of 255 slots fit; `Layout::check` checks the
        // journal size chosen by volume size as well).
        if let Some(journal) = p.journal_size {
            check_journal_total(p.slots, journal)?;
        }
        Ok(p)
    }
}

/// At most 64 characters of a caller's value, for messages.
pub fn clip(value: &str) -> String {
    if value.chars().count() <= 64 {
        return value.to_string();
    }
    let head: String = value.chars().take(64).collect();
    format!("{head}... ({} bytes)", value.len())
}

fn parse_number(_key: &str, value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 19 {
        return None;
    }
    value.parse().ok()
}

/// `4096`, `4K`, `4Ki`, `4KiB`, `1M`, `64Mi` ... in binary units.
pub fn parse_size(value: &str) -> Option<u64> {
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let number = parse_number("", &value[..digits_end])?;
    let unit = match &value[digits_end..] {
        "" => 1,
        "K" | "Ki" | "KiB" | "k" => KIB,
        "M" | "Mi" | "MiB" => MIB,
        "G" | "Gi" | "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(unit)
}

fn power_of_two_size(key: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    parse_size(value)
        .filter(|s| s.is_power_of_two() && (min..=max).contains(s))
        .ok_or_else(|| {
            format!(
                "{key} {:?} must be a power of two from {min} to {max} bytes (like 4K)",
                clip(value)
            )
        })
}

fn parse_features(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let name = item.strip_prefix("no").unwrap_or(item);
        if !ALLOWED_FEATURES.contains(&name) {
            return Err(format!(
                "fsFeatures entry {:?} is not allowed; allowed (each optionally \
                 prefixed with \"no\"): {}",
                clip(item),
                ALLOWED_FEATURES.join(", ")
            ));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

/// Why a set of capabilities cannot be served, or Ok.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<(), String> {
    if caps.is_empty() {
        return Err("volume_capabilities must not be empty".into());
    }
    for cap in caps {
        match &cap.access_type {
            Some(AccessType::Mount(m)) => {
                if !(m.fs_type.is_empty() || m.fs_type == "ocfs2") {
                    return Err(format!(
                        "fs_type {:?} is not supported; volumes are OCFS2",
                        clip(&m.fs_type)
                    ));
                }
                crate::volume::mount_options::mount_options(&m.mount_flags)
                    .map_err(|e| e.to_string())?;
            }
            Some(AccessType::Block(_)) => {}
            None => return Err("a volume capability must set mount or block".into()),
        }
        let mode = cap
            .access_mode
            .as_ref()
            .map(|m| m.mode())
            .unwrap_or(Mode::Unknown);
        if mode == Mode::Unknown {
            return Err("a volume capability must set a known access mode".into());
        }
    }
    Ok(())
}

/// What the capabilities ask the volume to hold: all of them block, or all
/// of them mount (a volume is one or the other, for good).
pub fn content_of(caps: &[VolumeCapability]) -> Result<Content, String> {
    let block = caps
        .iter()
        .filter(|c| matches!(c.access_type, Some(AccessType::Block(_))))
        .count();
    match block {
        0 => Ok(Content::Ocfs2),
        n if n == caps.len() => Ok(Content::Block),
        _ => Err(
            "volume_capabilities ask for both block and mount access; a volume is one or the \
             other"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_good_values() {
        assert_eq!(
            VolumeParams::parse(&map(&[])).unwrap(),
            VolumeParams::default()
        );
        let p = VolumeParams::parse(&map(&[
            ("nodeSlots", "8"),
            ("clusterSize", "64K"),
            ("blockSize", "4096"),
            ("journalSize", "32Mi"),
            ("heartbeat", "local"),
            ("fsFeatures", "norefcount, xattr"),
            ("lun", "/dev/disk/by-id/wwn-0x1"),
            ("csi.storage.k8s.io/pvc/name", "x"),
        ]))
        .unwrap();
        assert_eq!(p.slots, 8);
        assert_eq!(p.cluster_size, Some(65536));
        assert_eq!(p.block_size, Some(4096));
        assert_eq!(p.journal_size, Some(32 * MIB));
        assert_eq!(p.heartbeat, HeartbeatMode::Local);
        assert_eq!(p.features, vec!["norefcount", "xattr"]);
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        for (k, v) in [
            ("nodeSlots", "0"),
            ("nodeSlots", "256"),
            ("nodeSlots", "-1"),
            ("nodeSlots", "8; reboot"),
            ("clusterSize", "3K"),
            ("clusterSize", "2M"),
            ("blockSize", "8K"),
            ("journalSize", "1M"),
            ("journalSize", "4.5Mi"),
            ("heartbeat", "GLOBAL"),
            ("fsFeatures", "sparse,$(reboot)"),
            ("fsFeatures", "clusterinfo"),
            ("lun", ""),
            ("bogus", "1"),
        ] {
            let err = VolumeParams::parse(&map(&[(k, v)])).unwrap_err();
            assert!(err.contains(k), "{k}={v}: {err}");
        }
        assert!(VolumeParams::parse(&map(&[("blockSize", "4K"), ("clusterSize", "4K")])).is_ok());
    }

    #[test]
    fn journals_mkfs_cannot_write_in_time_are_refused() {
        let parse = |slots: &str, journal: &str| {
            VolumeParams::parse(&map(&[("nodeSlots", slots), ("journalSize", journal)]))
        };
        // Up to the limit (19200Mi of journals in all), any combination.
        assert!(parse("16", "1Gi").is_ok());
        assert!(parse("150", "128Mi").is_ok());
        assert!(parse("255", "64Mi").is_ok());
        // The largest journal with the default 16 slots fits too.
        assert!(VolumeParams::parse(&map(&[("journalSize", "1Gi")])).is_ok());
        for (slots, journal, product) in [
            ("151", "128Mi", "19328Mi"),
            ("32", "1Gi", "32768Mi"),
            ("255", "1Gi", "261120Mi"),
        ] {
            let err = parse(slots, journal).unwrap_err();
            for part in [
                format!("nodeSlots {slots}"),
                "journalSize".to_string(),
                format!("= {product} of journals"),
                "19200Mi".to_string(),
                "600 s limit".to_string(),
            ] {
                assert!(
                    err.contains(&part),
                    "{slots} x {journal}: {part:?} not in {err}"
                );
            }
        }
        // 18 slots of 1 GiB fit, 19 do not.
        assert!(parse("18", "1Gi").is_ok());
        assert!(parse("19", "1Gi").unwrap_err().contains("19456Mi"));
    }

    fn cap(access: AccessType, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(access),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn capabilities() {
        let mount = |fs: &str| {
            AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                ..Default::default()
            })
        };
        for mode in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            assert!(check_capabilities(&[cap(mount(""), mode)]).is_ok());
        }
        assert!(check_capabilities(&[cap(mount("ocfs2"), Mode::MultiNodeMultiWriter)]).is_ok());
        assert!(check_capabilities(&[cap(mount("ext4"), Mode::MultiNodeMultiWriter)]).is_err());
        assert!(check_capabilities(&[cap(mount(""), Mode::Unknown)]).is_err());
        let block = cap(
            AccessType::Block(BlockVolume {}),
            Mode::MultiNodeMultiWriter,
        );
        assert!(check_capabilities(std::slice::from_ref(&block)).is_ok());
        assert!(check_capabilities(&[]).is_err());
        assert_eq!(content_of(std::slice::from_ref(&block)), Ok(Content::Block));
        assert_eq!(
            content_of(&[block.clone(), block.clone()]),
            Ok(Content::Block)
        );
        let fs = cap(mount(""), Mode::MultiNodeMultiWriter);
        assert_eq!(content_of(std::slice::from_ref(&fs)), Ok(Content::Ocfs2));
        assert!(content_of(&[fs, block]).unwrap_err().contains("both"));
    }
}
