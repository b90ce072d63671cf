//! A volume is an ordered list of extents on its LUN: its own GPT entry
//! (the head, extent 0) and, once it has grown past a neighbour, further
//! entries of type [`TYPE_EXTENT`], one per extent. Nodes reach the volume
//! through a device-mapper map that lays the extents end to end, so the
//! filesystem sees one device.
//!
//! An extent entry names its volume and its place twice: its partition name
//! is `<head GUID, 32 hex digits>/<index>` (readable in any GPT tool) and its
//! unique GUID is derived from the head's GUID and the index (so a retried
//! expand finds what it made, and a name edited by hand does not match).
//! Extents of a volume are numbered 1.. without gaps; a table write adds or
//! drops them together with the head's change, so every table on disk is
//! whole. [`check`] refuses a table that is not (edited by another tool).

use super::entry::{is_volume, Placement, ALIGN};
use crate::disk::gpt::{self, Gpt, GptError, Partition, ReadOutcome};
use crate::disk::lun_io::BlockIo;
use uuid::Uuid;

pub const TYPE_EXTENT: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932a8");

/// Extents per volume, the head included. Each costs a GPT entry (a LUN
/// has 254 for volumes and extents) and a target in every node's map.
pub const MAX_EXTENTS: usize = 16;

/// Where one extent of a volume lies on the LUN, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub size: u64,
}

impl Extent {
    pub fn of(p: &Partition, sector_size: u64) -> Extent {
        Extent {
            offset: p.first_lba * sector_size,
            size: p.size_sectors() * sector_size,
        }
    }
}

/// The unique GUID of extent `index` (1..) of the volume whose head has
/// `head`.
pub fn extent_guid(head: &Uuid, index: u32) -> Uuid {
    Uuid::new_v5(head, format!("extent-{index}").as_bytes())
}

pub fn extent_name(head: &Uuid, index: u32) -> String {
    format!("{}/{index}", head.simple())
}

pub fn extent_partition(at: Placement, head: &Uuid, index: u32) -> Partition {
    Partition {
        number: at.number,
        type_guid: TYPE_EXTENT,
        unique_guid: extent_guid(head, index),
        first_lba: at.first_lba,
        last_lba: at.last_lba,
        attributes: 0,
        name: extent_name(head, index),
    }
}

/// The head GUID and index an extent entry names, if its name parses and
/// its GUID is the one they derive.
pub fn extent_of(p: &Partition) -> Option<(Uuid, u32)> {
    if p.type_guid != TYPE_EXTENT {
        return None;
    }
    let (head, index) = p.name.split_once('/')?;
    let head = Uuid::try_parse(head).ok()?;
    let index: u32 = index.parse().ok().filter(|i| *i >= 1)?;
    (extent_guid(&head, index) == p.unique_guid).then_some((head, index))
}

/// The extent entries of the volume whose head is `head`, by index.
pub fn extent_entries<'t>(table: &'t Gpt, head: &Uuid) -> Vec<(u32, &'t Partition)> {
    let mut out: Vec<(u32, &Partition)> = table
        .partitions
        .iter()
        .filter_map(|p| extent_of(p).filter(|(h, _)| h == head).map(|(_, i)| (i, p)))
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out
}

/// The extents of the volume whose head entry is `head`: the head, then
/// its extent entries by index.
pub fn extents(table: &Gpt, head: &Partition) -> Vec<Extent> {
    std::iter::once(Extent::of(head, table.sector_size))
        .chain(
            extent_entries(table, &head.unique_guid)
                .into_iter()
                .map(|(_, p)| Extent::of(p, table.sector_size)),
        )
        .collect()
}

/// [`gpt::read_valid`], then [`check`]: a table whose volumes can be
/// mapped. Everyone who maps or changes volumes reads the table this way.
pub fn read_valid(io: &dyn BlockIo) -> Result<ReadOutcome, GptError> {
    let outcome = gpt::read_valid(io)?;
    check(&outcome.gpt, is_volume)
        .map_err(|why| GptError::Invalid(format!("volume extents: {why}")))?;
    Ok(outcome)
}

/// Every extent entry belongs to a volume in the table, the indices of each
/// volume run 1.. without a gap, no volume has more than [`MAX_EXTENTS`],
/// and each starts and ends on the alignment.
pub fn check(table: &Gpt, is_volume: impl Fn(&Partition) -> bool) -> Result<(), String> {
    let mut per_head: std::collections::BTreeMap<Uuid, Vec<u32>> = Default::default();
    for p in table
        .partitions
        .iter()
        .filter(|p| p.type_guid == TYPE_EXTENT)
    {
        let (head, index) = extent_of(p).ok_or_else(|| {
            format!(
                "partition {} is an extent entry whose name {:?} does not match its GUID {}",
                p.number, p.name, p.unique_guid
            )
        })?;
        if !table.find_by_guid(&head).is_some_and(&is_volume) {
            return Err(format!(
                "partition {} is extent {index} of volume {head}, which the table does not have",
                p.number
            ));
        }
        let ss = table.sector_size;
        if !(p.first_lba * ss).is_multiple_of(ALIGN)
            || !(p.size_sectors() * ss).is_multiple_of(ALIGN)
        {
            return Err(format!(
                "partition {} (an extent) is not 1 MiB aligned",
                p.number
            ));
        }
        per_head.entry(head).or_default().push(index);
    }
    for (head, mut indices) in per_head {
        indices.sort_unstable();
        if indices.len() + 1 > MAX_EXTENTS {
            return Err(format!(
                "volume {head} has {} extents; at most {MAX_EXTENTS} are supported",
                indices.len() + 1
            ));
        }
        if indices.iter().zip(1..).any(|(i, want)| *i != want) {
            return Err(format!(
                "volume {head} has extents {indices:?}: a gap or a repeat (they run 1..)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(parts: Vec<Partition>) -> Gpt {
        let mut t = Gpt::new(512, 1 << 24, Uuid::new_v4());
        t.partitions = parts;
        t
    }

    fn head(number: u32, first: u64, last: u64) -> Partition {
        Partition {
            number,
            type_guid: super::super::entry::TYPE_GLOBAL,
            unique_guid: Uuid::new_v4(),
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name: "pvc-a".into(),
        }
    }

    fn at(number: u32, first: u64, last: u64) -> Placement {
        Placement {
            number,
            first_lba: first,
            last_lba: last,
        }
    }

    fn is_head(p: &Partition) -> bool {
        p.type_guid == super::super::entry::TYPE_GLOBAL
    }

    #[test]
    fn a_volume_reads_back_in_index_order() {
        let h = head(2, 2048, 4095);
        let g = h.unique_guid;
        let t = table_with(vec![
            h.clone(),
            extent_partition(at(4, 20480, 22527), &g, 2),
            extent_partition(at(3, 8192, 10239), &g, 1),
        ]);
        check(&t, is_head).unwrap();
        let e = extents(&t, &h);
        assert_eq!(
            e.iter().map(|e| e.offset / 512).collect::<Vec<_>>(),
            [2048, 8192, 20480]
        );
        assert!(e.iter().all(|e| e.size == 2048 * 512));
    }

    #[test]
    fn broken_chains_are_refused() {
        let h = head(2, 2048, 4095);
        let g = h.unique_guid;
        let gap = table_with(vec![h.clone(), extent_partition(at(3, 8192, 10239), &g, 2)]);
        assert!(check(&gap, is_head).unwrap_err().contains("gap"));
        let orphan = table_with(vec![extent_partition(at(3, 8192, 10239), &g, 1)]);
        assert!(check(&orphan, is_head)
            .unwrap_err()
            .contains("does not have"));
        let mut renamed = extent_partition(at(3, 8192, 10239), &g, 1);
        renamed.name = extent_name(&g, 2);
        let t = table_with(vec![h.clone(), renamed]);
        assert!(check(&t, is_head).unwrap_err().contains("does not match"));
        let mut many = vec![h.clone()];
        for i in 1..MAX_EXTENTS as u32 + 1 {
            let f = 8192 + u64::from(i) * 4096;
            many.push(extent_partition(at(2 + i, f, f + 2047), &g, i));
        }
        assert!(check(&table_with(many), is_head)
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn names_fit_a_gpt_entry() {
        let n = extent_name(&Uuid::new_v4(), MAX_EXTENTS as u32);
        assert!(n.encode_utf16().count() <= super::super::entry::NAME_UNITS);
    }
}
