//! `ocfs2-csi scan-lun`: what a LUN still holds when its partition table
//! is gone or in doubt. Reads only. Every OCFS2 superblock at a 1 MiB
//! boundary is listed with what an operator needs to rebuild the table
//! (start and end sectors, the volume's name from its label, its UUID),
//! and whether the table on disk, if any, has a partition there (or a
//! snapshot whose copy of its source lies there).

use crate::disk::gpt::{self, Gpt};
use crate::disk::lun_io::BlockIo;
use crate::disk::signatures::{self, Found};
use crate::ocfs2::superblock::{self, Superblock};
use crate::volume::entry::{ALIGN, HEARTBEAT_BYTES};
use crate::volume::snapshot;
use std::fmt::Write;

/// One filesystem (or other signature) found on the LUN.
#[derive(Debug)]
pub struct Finding {
    pub found: Found,
    pub superblock: Option<Superblock>,
    /// The partition of the table on disk that starts there, if any.
    pub partition: Option<u32>,
    /// The snapshot partition of the table on disk whose image (the copy
    /// of its source, 1 MiB in) starts there, if any: not a volume.
    pub snapshot: Option<u32>,
    /// The last sector it may reach: just before the next finding, or the
    /// last sector a GPT leaves usable.
    pub max_last_lba: u64,
}

/// Scans all of `io` at 1 MiB steps (`progress(done, total)` on long
/// scans). Never writes.
pub fn scan(io: &dyn BlockIo, progress: &mut dyn FnMut(u64, u64)) -> std::io::Result<Vec<Finding>> {
    let ss = io.sector_size();
    let table: Option<Gpt> = gpt::read(io).ok().map(|r| r.gpt);
    let last_usable = Gpt::new(ss, io.size_bytes() / ss, uuid::Uuid::nil()).last_usable_lba;
    let found = signatures::scan(io, 0, io.size_bytes(), ALIGN, usize::MAX, progress)?;
    let starts: Vec<u64> = found.iter().map(|f| f.offset / ss).collect();
    Ok(found
        .into_iter()
        .enumerate()
        .map(|(i, found)| {
            let first = found.offset / ss;
            let max_last_lba = starts.get(i + 1).map_or(last_usable, |next| next - 1);
            Finding {
                superblock: superblock::decode(&found.head),
                partition: table.as_ref().and_then(|t| {
                    t.partitions
                        .iter()
                        .find(|p| p.first_lba == first)
                        .map(|p| p.number)
                }),
                snapshot: table.as_ref().and_then(|t| {
                    snapshot::snapshots(t)
                        .into_iter()
                        .find(|e| e.image().offset == found.offset)
                        .map(|e| e.number)
                }),
                max_last_lba,
                found,
            }
        })
        .collect())
}

/// One line per finding, `key=value` words an operator can read and a
/// script can split.
pub fn report(io: &dyn BlockIo, findings: &[Finding]) -> String {
    let ss = io.sector_size();
    let mut out = format!(
        "# {} bytes, {}-byte sectors; sectors are LBAs of this LUN\n",
        io.size_bytes(),
        ss
    );
    // Whose LUN it is, when the stamp survived: the cluster to rebuild for.
    match crate::disk::ownership::read(io) {
        Ok(Some(o)) => {
            let _ = writeln!(
                out,
                "# owner cluster_id={} cluster={} disk_guid={} stamped_by={:?} stamped_at={}",
                o.cluster_id, o.cluster_name, o.disk_guid, o.stamped_by, o.stamped_at
            );
        }
        Ok(None) => out.push_str("# owner none (no ownership stamp)\n"),
        Err(e) => {
            let _ = writeln!(out, "# owner unreadable: {e}");
        }
    }
    for f in findings {
        let first = f.found.offset / ss;
        let table = match (f.partition, f.snapshot) {
            (Some(n), _) => format!("partition-{n}"),
            (None, Some(n)) => format!("snapshot-partition-{n}"),
            (None, None) => "absent".to_string(),
        };
        match &f.superblock {
            Some(sb) => {
                // A snapshot's image is a copy of its source, label and all:
                // rebuilding a table from it would make a twin volume.
                let kind = match (sb.heartbeat, f.snapshot.is_some()) {
                    (true, _) => "heartbeat",
                    (false, true) => "snapshot-image",
                    (false, false) => "volume",
                };
                // mkfs -H records only the 1 MiB it uses; ours spans
                // HEARTBEAT_BYTES.
                let bytes = if sb.heartbeat {
                    HEARTBEAT_BYTES
                } else {
                    sb.bytes
                };
                let last = (first + bytes / ss).saturating_sub(1).min(f.max_last_lba);
                let _ = writeln!(
                    out,
                    "{kind} name={} start={first} end={last} max_end={} bytes={} uuid={} \
                     cluster={} slots={} cluster_size={} table={table}",
                    if sb.label.is_empty() { "-" } else { &sb.label },
                    f.max_last_lba,
                    sb.bytes,
                    sb.uuid,
                    sb.cluster_name.as_deref().unwrap_or("-"),
                    sb.slots,
                    sb.cluster_size,
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "other what={:?} start={first} max_end={} table={table}",
                    f.found.what, f.max_last_lba
                );
            }
        }
    }
    if findings.is_empty() {
        out += "# nothing found at any 1 MiB boundary\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lun_io::MemIo;

    #[test]
    fn lists_each_superblock_with_its_bounds_and_table_state() {
        const MIB: u64 = 1 << 20;
        let io = MemIo::new(512, 64 * MIB);
        let mut sb = vec![0u8; 4096];
        sb[..6].copy_from_slice(b"OCFSV2");
        sb[20..24].copy_from_slice(&256u32.to_le_bytes()); // 256 clusters of 4 KiB
        sb[0xC0 + 56..0xC0 + 60].copy_from_slice(&12u32.to_le_bytes());
        sb[0xC0 + 60..0xC0 + 64].copy_from_slice(&12u32.to_le_bytes());
        sb[0xC0 + 80..0xC0 + 85].copy_from_slice(b"pvc-x");
        io.write_at(4 * MIB + 8192, &sb).unwrap();
        let mut xfs = vec![0u8; 512];
        xfs[..4].copy_from_slice(b"XFSB");
        io.write_at(9 * MIB, &xfs).unwrap();
        let findings = scan(&io, &mut |_, _| {}).unwrap();
        let text = report(&io, &findings);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0]
                .starts_with("volume name=pvc-x start=8192 end=10239 max_end=18431 bytes=1048576"),
            "{text}"
        );
        assert!(lines[0].ends_with("table=absent"), "{text}");
        assert!(
            lines[1].starts_with("other what=\"XFS filesystem\" start=18432"),
            "{text}"
        );

        // The same superblock as a snapshot's image: named so, with its
        // partition.
        use crate::volume::entry::{block_partition, volume_entry, Placement, State};
        let source = volume_entry(
            &block_partition(
                Placement {
                    number: 2,
                    first_lba: 2048,
                    last_lba: 4095,
                },
                uuid::Uuid::nil(),
                "s",
                State::Ready,
            ),
            512,
        )
        .unwrap();
        let mut table = Gpt::new(512, 64 * MIB / 512, uuid::Uuid::new_v4());
        table.partitions.push(snapshot::pending_partition(
            Placement {
                number: 5,
                first_lba: 3 * 2048,
                last_lba: 5 * 2048 - 1,
            },
            uuid::Uuid::new_v4(),
            "snap",
            &source,
        ));
        gpt::write(&io, &table).unwrap();
        let text = report(&io, &scan(&io, &mut |_, _| {}).unwrap());
        let line = text.lines().find(|l| l.contains("pvc-x")).unwrap();
        assert!(line.starts_with("snapshot-image name=pvc-x"), "{text}");
        assert!(line.ends_with("table=snapshot-partition-5"), "{text}");
    }
}
