//! Where volumes and their extents go on a LUN: pure functions of the
//! table, so the policy is tested (and measured, in a churn of creates,
//! grows and deletes) without a LUN.
//!
//! - A new volume goes first fit. Leaving growth room after the volume
//!   before it (`Packing::Room`: in the largest range, as much as that
//!   volume's size, only while the range still holds two more of the new
//!   one) needs about a fifth fewer new extents in a churn of creates,
//!   grows and deletes (`churn_needs_fewer_extents_with_growth_room`), but
//!   under concurrent creates and deletes (tests/storm.rs) it still split
//!   free space so that an 8 GiB create found no contiguous range. Creates
//!   are one extent, so the driver keeps first fit until a create can span
//!   extents; growth past a neighbour is cheap now anyway.
//! - A volume grows its last extent in place first, then in new extents
//!   (`grow_plan`).

use crate::disk::gpt::Gpt;
use crate::volume::entry::{
    is_volume, Placement, VolumeEntry, ALIGN, FIRST_VOLUME_NUMBER, MAX_PARTITION,
};
use crate::volume::extents::{extent_partition, MAX_EXTENTS, TYPE_EXTENT};

/// Whether a new volume packs into the first range that holds it (the
/// driver's policy) or leaves growth room for the entry before it where
/// that looks cheap (measured, not used: see the module's comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    Room,
    FirstFit,
}

/// The first LBA for a new volume of `sectors`, if the LUN has room.
pub fn place_volume(table: &Gpt, sectors: u64) -> Option<u64> {
    place_volume_with(table, sectors, Packing::FirstFit)
}

pub fn place_volume_with(table: &Gpt, sectors: u64, packing: Packing) -> Option<u64> {
    let align = ALIGN / table.sector_size;
    let fits: Vec<(u64, u64)> = table
        .free_extents(align)
        .into_iter()
        .filter(|(f, l)| l - f + 1 >= sectors)
        .collect();
    let first_fit = fits.first()?.0;
    if packing == Packing::FirstFit {
        return Some(first_fit);
    }
    // The first of the largest.
    let &(first, last) = fits.iter().rev().max_by_key(|(f, l)| l - f)?;
    let before = table
        .partitions
        .iter()
        .filter(|p| is_volume(p) || p.type_guid == TYPE_EXTENT)
        .filter(|p| p.last_lba < first && first - p.last_lba <= align)
        .map(|p| p.size_sectors())
        .max()
        .unwrap_or(0);
    let spare = last - first + 1 - sectors;
    let room = before.min(spare / 2) / align * align;
    if room == 0 || spare - room < 2 * sectors {
        return Some(first_fit);
    }
    Some(first + room)
}

/// How a volume grows: its last extent in place by `in_place_sectors`,
/// then new extents at `added` (first and last LBA), in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Growth {
    pub in_place_sectors: u64,
    pub added: Vec<(u64, u64)>,
}

/// Why a volume cannot grow by what was asked: the most it could grow by.
#[derive(Debug)]
pub struct NoRoom {
    pub bytes: u64,
    pub why: String,
}

/// Grows `e` by `bytes` (a multiple of [`ALIGN`]): the last extent in place
/// as far as the space after it allows, the rest in new extents.
///
/// A new extent goes into the largest free range, in its middle when the
/// range is more than twice what it needs: the half before stays room for
/// whatever ends there to grow in place, the half after is room for the
/// new extent itself. A range too small for the rest is taken whole. So
/// volumes that keep growing need few extents, and each new extent costs
/// its neighbours at most half their room.
pub fn grow_plan(table: &Gpt, e: &VolumeEntry, bytes: u64) -> Result<Growth, NoRoom> {
    let ss = table.sector_size;
    let align = ALIGN / ss;
    let mut left = bytes / ss;
    let last = *e.extents.last().expect("a volume has its head");
    let last_end = (last.offset + last.size) / ss; // first LBA after it
    let room_end = table
        .partitions
        .iter()
        .map(|q| q.first_lba)
        .filter(|&f| f >= last_end)
        .min()
        .unwrap_or(table.last_usable_lba + 1);
    let in_place = ((room_end - last_end) / align * align).min(left);
    left -= in_place;
    // Free ranges, minus the room just taken after the last extent.
    let mut free: Vec<(u64, u64)> = table
        .free_extents(align)
        .into_iter()
        .filter_map(|(f, l)| {
            let f = if f == last_end { f + in_place } else { f };
            (f <= l).then_some((f, l))
        })
        .collect();
    let mut added = Vec::new();
    let numbers = (FIRST_VOLUME_NUMBER..=MAX_PARTITION)
        .filter(|n| table.partition(*n).is_none())
        .count();
    let slots = (MAX_EXTENTS - e.extents.len()).min(numbers);
    let len = |r: &(u64, u64)| r.1 - r.0 + 1;
    while left > 0 && added.len() < slots {
        let Some(i) = (0..free.len()).max_by_key(|&i| (len(&free[i]), std::cmp::Reverse(i))) else {
            break;
        };
        let range = free.remove(i);
        let take = len(&range).min(left);
        let spare = len(&range) - take;
        let first = if spare > take {
            range.0 + spare / 2 / align * align
        } else {
            range.0
        };
        added.push((first, first + take - 1));
        left -= take;
        if first > range.0 {
            free.push((range.0, first - 1));
        }
        if first + take <= range.1 {
            free.push((first + take, range.1));
        }
    }
    if left > 0 {
        let most = bytes - left * ss;
        let why = if added.len() == slots && slots < MAX_EXTENTS - e.extents.len() {
            format!("no GPT entry is left on its LUN for another extent (the LUN holds at most {} volumes and extents)", MAX_PARTITION - FIRST_VOLUME_NUMBER + 1)
        } else if added.len() == slots {
            format!("a volume has at most {MAX_EXTENTS} extents and growing further needs more")
        } else {
            "its LUN has no more free space".into()
        };
        return Err(NoRoom { bytes: most, why });
    }
    Ok(Growth {
        in_place_sectors: in_place,
        added,
    })
}

impl Growth {
    /// Writes the growth into `table` (not yet to disk).
    pub fn apply(&self, table: &mut Gpt, e: &VolumeEntry) {
        let ss = table.sector_size;
        let last = *e.extents.last().expect("a volume has its head");
        let last_lba = (last.offset + last.size) / ss - 1;
        if self.in_place_sectors > 0 {
            let p = table
                .partitions
                .iter_mut()
                .find(|p| p.last_lba == last_lba && p.first_lba == last.offset / ss)
                .expect("the last extent is in the table");
            p.last_lba += self.in_place_sectors;
        }
        for (i, &(first, last)) in self.added.iter().enumerate() {
            let number = (FIRST_VOLUME_NUMBER..=MAX_PARTITION)
                .find(|n| table.partition(*n).is_none())
                .expect("grow_plan counted the free numbers");
            let index = (e.extents.len() + i) as u32;
            let at = Placement {
                number,
                first_lba: first,
                last_lba: last,
            };
            table.partitions.push(extent_partition(at, &e.guid, index));
        }
        table.partitions.sort_by_key(|p| p.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocfs2::layout::{HeartbeatMode, Layout, GIB, MIB};
    use crate::volume::entry::{volume_in, volume_partition, State};
    use uuid::Uuid;

    const SS: u64 = 512;

    fn empty(bytes: u64) -> Gpt {
        Gpt::new(SS, bytes / SS, Uuid::new_v4())
    }

    fn add(t: &mut Gpt, first: u64, bytes: u64) -> Uuid {
        let guid = Uuid::new_v4();
        let at = Placement {
            number: (FIRST_VOLUME_NUMBER..=MAX_PARTITION)
                .find(|n| t.partition(*n).is_none())
                .unwrap(),
            first_lba: first,
            last_lba: first + bytes / SS - 1,
        };
        let layout = Layout::for_size(bytes, 2, None, None, None);
        t.partitions.push(volume_partition(
            at,
            guid,
            "v",
            State::Ready,
            HeartbeatMode::Global,
            &layout,
        ));
        t.partitions.sort_by_key(|p| p.number);
        guid
    }

    fn volume(t: &Gpt, guid: &Uuid) -> VolumeEntry {
        volume_in(t, t.find_by_guid(guid).unwrap()).unwrap()
    }

    #[test]
    fn a_new_volume_leaves_room_after_the_one_before() {
        let room = |t: &Gpt, sectors| place_volume_with(t, sectors, Packing::Room);
        let mut t = empty(64 * GIB);
        let a_at = room(&t, GIB / SS).unwrap();
        let a = add(&mut t, a_at, GIB);
        let b_at = room(&t, GIB / SS).unwrap();
        assert_eq!(b_at, a_at + 2 * GIB / SS, "a GiB of room after a");
        add(&mut t, b_at, GIB);
        // a can double in place.
        let plan = grow_plan(&t, &volume(&t, &a), GIB).unwrap();
        assert_eq!(plan.added, vec![]);
        assert_eq!(plan.in_place_sectors, GIB / SS);
        // First fit packs them, and the same grow needs an extent.
        let mut packed = empty(64 * GIB);
        let at = place_volume_with(&packed, GIB / SS, Packing::FirstFit).unwrap();
        let a = add(&mut packed, at, GIB);
        let b_at = place_volume_with(&packed, GIB / SS, Packing::FirstFit).unwrap();
        add(&mut packed, b_at, GIB);
        let plan = grow_plan(&packed, &volume(&packed, &a), GIB).unwrap();
        assert_eq!(plan.in_place_sectors, 0);
        assert_eq!(plan.added.len(), 1);
        assert!(plan.added[0].0 > b_at);
    }

    #[test]
    fn a_tight_range_is_used_whole() {
        // The only range that holds the volume has no room to spare.
        let mut t = empty(4 * GIB);
        let at = t.first_usable_lba.div_ceil(2048) * 2048;
        let a = add(&mut t, at, GIB);
        let a_end = volume(&t, &a).offset / SS + GIB / SS;
        let rest = (t.last_usable_lba + 1) / 2048 * 2048 - (a_end + GIB / SS);
        add(&mut t, a_end + GIB / SS, rest * SS);
        for packing in [Packing::Room, Packing::FirstFit] {
            assert_eq!(place_volume_with(&t, GIB / SS, packing), Some(a_end));
            assert_eq!(place_volume_with(&t, GIB / SS + 2048, packing), None);
        }
    }

    #[test]
    fn growth_takes_the_room_after_then_new_extents() {
        let mut t = empty(16 * GIB);
        let a = add(&mut t, 2048 * 16, GIB);
        let a0 = volume(&t, &a);
        // 256 MiB free after a, then a blocker, then the rest.
        add(&mut t, (a0.offset + a0.size + 256 * MIB) / SS, GIB);
        let plan = grow_plan(&t, &a0, 2 * GIB).unwrap();
        assert_eq!(plan.in_place_sectors, 256 * MIB / SS);
        assert_eq!(plan.added.len(), 1);
        let (first, last) = plan.added[0];
        assert_eq!((last - first + 1) * SS, 2 * GIB - 256 * MIB);
        plan.apply(&mut t, &a0);
        crate::volume::extents::check(&t, is_volume).unwrap();
        t.validate().unwrap();
        let a1 = volume(&t, &a);
        assert_eq!(a1.size, a0.size + 2 * GIB);
        assert_eq!(a1.extents.len(), 2);
        // More than the LUN has: refused, with how far it could grow.
        let free: u64 = t
            .free_extents(ALIGN / SS)
            .iter()
            .map(|(f, l)| (l - f + 1) * SS)
            .sum();
        let err = grow_plan(&t, &a1, 64 * GIB).unwrap_err();
        assert_eq!(err.bytes, free);
        assert!(err.why.contains("no more free space"), "{}", err.why);
    }

    /// Creates, grows and deletes at random on one LUN kept 40-70 % full,
    /// with each packing; how often a grow needs a new extent. The driver's
    /// packing must need clearly fewer than first fit.
    #[test]
    fn churn_needs_fewer_extents_with_growth_room() {
        let room = churn(Packing::Room, 0x5eed);
        let packed = churn(Packing::FirstFit, 0x5eed);
        for (name, c) in [("growth room", &room), ("first fit", &packed)] {
            println!(
                "churn ({name}): {} creates ({} refused), {} grows: {} in place, {} needed new \
                 extents ({:.1} %), {} refused; at most {} extents per volume",
                c.creates,
                c.creates_refused,
                c.grows,
                c.grows - c.needed_extent - c.grows_refused,
                c.needed_extent,
                c.needed_extent as f64 * 100.0 / c.grows as f64,
                c.grows_refused,
                c.most_extents
            );
        }
        assert!(room.grows > 500 && packed.grows > 500);
        assert!(
            room.needed_extent * 10 < packed.needed_extent * 9,
            "growth room saves under a tenth of new extents: {room:?} vs {packed:?}"
        );
        assert!(
            room.creates_refused <= packed.creates_refused,
            "growth room costs creates: {room:?} vs {packed:?}"
        );
    }

    #[derive(Debug, Default)]
    struct Churn {
        creates: usize,
        creates_refused: usize,
        grows: usize,
        needed_extent: usize,
        grows_refused: usize,
        most_extents: usize,
    }

    fn churn(packing: Packing, seed: u64) -> Churn {
        let lun = 1024 * GIB;
        let mut t = empty(lun);
        let mut rng = seed;
        let mut next = |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let mut vols: Vec<Uuid> = Vec::new();
        let mut c = Churn::default();
        for _ in 0..3000 {
            let used: u64 = t.partitions.iter().map(|p| p.size_sectors() * SS).sum();
            let fill = used * 100 / lun;
            let op = next(10);
            if vols.is_empty() || (fill < 40 && op < 6) || (fill < 70 && op < 3) {
                let bytes = (1 + next(32)) * GIB;
                c.creates += 1;
                match place_volume_with(&t, bytes / SS, packing) {
                    Some(first) if t.partitions.len() < MAX_PARTITION as usize - 1 => {
                        vols.push(add(&mut t, first, bytes))
                    }
                    _ => c.creates_refused += 1,
                }
            } else if fill > 70 || op == 9 {
                let guid = vols.swap_remove(next(vols.len() as u64) as usize);
                let heads: Vec<u32> = crate::volume::extents::extent_entries(&t, &guid)
                    .into_iter()
                    .map(|(_, p)| p.number)
                    .collect();
                t.partitions
                    .retain(|p| p.unique_guid != guid && !heads.contains(&p.number));
            } else {
                let guid = vols[next(vols.len() as u64) as usize];
                let e = volume(&t, &guid);
                let by = (e.size * (10 + next(90)) / 100).div_ceil(ALIGN) * ALIGN;
                c.grows += 1;
                match grow_plan(&t, &e, by) {
                    Ok(plan) => {
                        c.needed_extent += usize::from(!plan.added.is_empty());
                        plan.apply(&mut t, &e);
                        c.most_extents = c.most_extents.max(volume(&t, &guid).extents.len());
                    }
                    Err(_) => c.grows_refused += 1,
                }
            }
        }
        crate::volume::extents::check(&t, is_volume).unwrap();
        t.validate().unwrap();
        c
    }
}
