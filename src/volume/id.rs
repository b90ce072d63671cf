//! Volume IDs name the LUN (its GPT disk GUID, the same on every host
//! whatever path reaches it) and the partition (its unique GUID, derived from
//! the CSI volume name so a retried CreateVolume finds what it made).

use std::fmt;
use uuid::Uuid;

const PREFIX: &str = "ocfs2-v1";
const SNAPSHOT_PREFIX: &str = "ocfs2-snap-v1";

/// Namespaces of the name-based UUIDs we derive from a volume name.
const PARTITION_NS: Uuid = uuid::uuid!("7b1c2c57-5a0e-4d6e-9a43-0c5f4f0b9e11");
const FILESYSTEM_NS: Uuid = uuid::uuid!("e2f3a9d0-1b7c-4c44-8f1e-6a9b3d2c7f20");
const SNAPSHOT_NS: Uuid = uuid::uuid!("5d8e0c1a-7f3b-4e29-b6a4-2c9d1e8f0a37");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VolumeId {
    pub lun: Uuid,
    pub partition: Uuid,
}

impl VolumeId {
    pub fn parse(id: &str) -> Option<VolumeId> {
        parse_with(PREFIX, id)
    }
}

/// A snapshot's ID: its LUN and its partition, like a volume's, under a
/// prefix of its own so neither is ever taken for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotId(pub VolumeId);

impl SnapshotId {
    pub fn parse(id: &str) -> Option<SnapshotId> {
        parse_with(SNAPSHOT_PREFIX, id).map(SnapshotId)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SNAPSHOT_PREFIX}:{}:{}", self.0.lun, self.0.partition)
    }
}

fn parse_with(want: &str, id: &str) -> Option<VolumeId> {
    let mut parts = id.split(':');
    let (prefix, lun, partition) = (parts.next()?, parts.next()?, parts.next()?);
    if prefix != want || parts.next().is_some() {
        return None;
    }
    let strict = |s: &str| {
        // Only the hyphenated lower-case form we print, so an ID has one
        // spelling.
        Uuid::try_parse(s)
            .ok()
            .filter(|u| u.hyphenated().to_string() == s)
    };
    Some(VolumeId {
        lun: strict(lun)?,
        partition: strict(partition)?,
    })
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}:{}:{}", self.lun, self.partition)
    }
}

/// The partition GUID of the volume called `name`.
pub fn partition_guid(name: &str) -> Uuid {
    Uuid::new_v5(&PARTITION_NS, name.as_bytes())
}

/// The partition GUID of the snapshot called `name`.
pub fn snapshot_guid(name: &str) -> Uuid {
    Uuid::new_v5(&SNAPSHOT_NS, name.as_bytes())
}

/// The filesystem UUID of the volume called `name` (distinct from the
/// partition GUID, so tools that look at both never confuse them).
pub fn filesystem_uuid(name: &str) -> Uuid {
    Uuid::new_v5(&FILESYSTEM_NS, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let id = VolumeId {
            lun: Uuid::new_v4(),
            partition: partition_guid("pvc-1"),
        };
        let text = id.to_string();
        assert!(text.len() <= 128);
        assert_eq!(VolumeId::parse(&text), Some(id));
        assert_eq!(VolumeId::parse(&text.to_uppercase()), None);
        assert_eq!(VolumeId::parse(&format!("{text}:x")), None);
        assert_eq!(VolumeId::parse("ocfs2-v1:../../etc:passwd"), None);
        assert_eq!(VolumeId::parse(""), None);
    }

    #[test]
    fn derived_guids_are_stable_and_distinct() {
        assert_eq!(partition_guid("a"), partition_guid("a"));
        assert_ne!(partition_guid("a"), partition_guid("b"));
        assert_ne!(partition_guid("a"), filesystem_uuid("a"));
        assert_ne!(partition_guid("a"), snapshot_guid("a"));
    }

    #[test]
    fn snapshot_and_volume_ids_are_never_taken_for_each_other() {
        let v = VolumeId {
            lun: Uuid::new_v4(),
            partition: snapshot_guid("s"),
        };
        let s = SnapshotId(v);
        assert_eq!(SnapshotId::parse(&s.to_string()), Some(s));
        assert_eq!(VolumeId::parse(&s.to_string()), None);
        assert_eq!(SnapshotId::parse(&v.to_string()), None);
    }
}
