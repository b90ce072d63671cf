//! What NodeStageVolume did, written beside the node plugin's state so that
//! Unstage (which gets only an ID and a path), growth, volume stats and a
//! restarted plugin know which device and mount belong to a volume.
//!
//! One small JSON file per volume, named by its partition GUID, replaced
//! atomically (write, fsync, rename), so a crash leaves the old or the new
//! record, never half of one.

use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub volume_id: String,
    pub partition_guid: Uuid,
    /// The LUN as this node was told it (`--lun`).
    pub lun: PathBuf,
    pub partition_number: u32,
    /// `/dev/<name>`, the kernel partition mounted.
    pub device: PathBuf,
    pub staging_path: PathBuf,
    pub fs_uuid: Uuid,
    /// `global` or `local`.
    pub heartbeat: String,
    pub mount_options: Vec<String>,
    /// A raw block volume: nothing is mounted; this node's holder mark is
    /// in the volume's header (`volume::block_header`), whose head starts
    /// at `head_offset` on the LUN. Records of earlier versions have
    /// neither and are filesystem volumes.
    #[serde(default)]
    pub block: bool,
    #[serde(default)]
    pub head_offset: u64,
}

/// Where stage records are kept. Blocking (files, fsync): callers run it
/// on a blocking thread.
pub trait StageRecords: Send + Sync {
    fn get(&self, guid: &Uuid) -> io::Result<Option<StageRecord>>;
    /// Replaces the record of `record.partition_guid` as one step.
    fn put(&self, record: &StageRecord) -> io::Result<()>;
    /// Removing a record that is not there is no error.
    fn remove(&self, guid: &Uuid) -> io::Result<()>;
    /// Every record; unreadable ones are reported, not fatal.
    fn all(&self) -> io::Result<Vec<Result<StageRecord, (PathBuf, io::Error)>>>;
}

/// The real records: files in the plugin's state folder.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn open(state_dir: &Path) -> io::Result<Records> {
        let dir = state_dir.join("staged");
        std::fs::create_dir_all(&dir)?;
        Ok(Records { dir })
    }

    fn path(&self, guid: &Uuid) -> PathBuf {
        self.dir.join(format!("{guid}.json"))
    }
}

impl StageRecords for Records {
    fn get(&self, guid: &Uuid) -> io::Result<Option<StageRecord>> {
        match std::fs::read(self.path(guid)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, record: &StageRecord) -> io::Result<()> {
        let path = self.path(&record.partition_guid);
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(record).map_err(io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn remove(&self, guid: &Uuid) -> io::Result<()> {
        match std::fs::remove_file(self.path(guid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn all(&self) -> io::Result<Vec<Result<StageRecord, (PathBuf, io::Error)>>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            out.push(
                std::fs::read(&path)
                    .and_then(|b| {
                        serde_json::from_slice(&b)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                    })
                    .map_err(|e| (path.clone(), e)),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        let r = StageRecord {
            volume_id: "ocfs2-v1:a:b".into(),
            partition_guid: Uuid::new_v4(),
            lun: "/dev/vda".into(),
            partition_number: 2,
            device: "/dev/vda2".into(),
            staging_path: "/stage".into(),
            fs_uuid: Uuid::new_v4(),
            heartbeat: "global".into(),
            mount_options: vec!["noatime".into()],
            block: false,
            head_offset: 0,
        };
        assert_eq!(records.get(&r.partition_guid).unwrap(), None);
        records.put(&r).unwrap();
        assert_eq!(records.get(&r.partition_guid).unwrap(), Some(r.clone()));
        std::fs::write(dir.path().join("staged/junk.json"), "{").unwrap();
        let all = records.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().filter(|r| r.is_ok()).count(), 1);
        // A record written before block volumes existed reads as a
        // filesystem volume's.
        let mut old = serde_json::to_value(&r).unwrap();
        old.as_object_mut().unwrap().remove("block");
        old.as_object_mut().unwrap().remove("head_offset");
        let old: StageRecord = serde_json::from_value(old).unwrap();
        assert_eq!(old, r);
        records.remove(&r.partition_guid).unwrap();
        records.remove(&r.partition_guid).unwrap();
        assert_eq!(records.get(&r.partition_guid).unwrap(), None);
    }
}
