//! GUID partition table (UEFI spec, chapter 5) codec for shared LUNs.
//!
//! We write tables with 256 entries so one LUN can be carved into many
//! volumes, but read any entry count another tool (e.g. sgdisk's 128) used.
//! Writes are ordered so that an interrupted write never leaves a LUN whose
//! table cannot be read (see `write`).

use std::collections::HashSet;
use std::io;

use uuid::Uuid;

use super::lease::{Lease, Request, LEASE_OFFSET, REQUEST_OFFSET};
use super::lun_io::BlockIo;
use super::ownership::{Ownership, OWNERSHIP_OFFSET};
use super::signatures::{at, identify, is_zero};

/// Entries in the tables we create.
pub const ENTRY_COUNT: u32 = 256;
/// Size of one partition entry; the only size we read or write.
pub const ENTRY_SIZE: u32 = 128;

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Revision 1.0.
const REVISION: u32 = 0x0001_0000;
/// Bytes of the header covered by its CRC; the rest of the sector is zero.
const HEADER_SIZE: u32 = 92;
/// UTF-16 code units in a partition name.
const NAME_UNITS: usize = 36;
/// UEFI requires room for at least 16 KiB of entries.
const MIN_WRITE_ENTRIES: u32 = 128;
/// Upper bound on an entry array we are willing to allocate for a header
/// that merely passed a CRC (CRC is not protection against a bad writer).
const MAX_ENTRY_ARRAY_BYTES: u64 = 1 << 20;
/// `probe` looks at this much of the start and end of the device.
const PROBE_SPAN: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based slot in the entry array.
    pub number: u32,
    pub type_guid: Uuid,
    pub unique_guid: Uuid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    /// Stored as UTF-16LE, at most 36 code units.
    pub name: String,
}

impl Partition {
    /// Length in sectors (0 for an inverted range read from a foreign table).
    pub fn size_sectors(&self) -> u64 {
        self.last_lba
            .checked_sub(self.first_lba)
            .map_or(0, |d| d.saturating_add(1))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    pub sector_size: u64,
    pub total_sectors: u64,
    pub disk_guid: Uuid,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub entry_count: u32,
    /// Used entries only, sorted by number (as `read` returns them; `write`
    /// accepts any order).
    pub partitions: Vec<Partition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    /// From the primary copy when it is valid, else from the backup.
    pub gpt: Gpt,
    /// The primary header and entries passed every check.
    pub primary_valid: bool,
    /// The backup passed every check and, if the primary is valid, describes
    /// the same table. A stale backup left by an interrupted write counts as
    /// invalid, so `primary_valid && backup_valid` means nothing to repair.
    pub backup_valid: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// The first and last MiB (or the whole device, if smaller) are zero.
    Blank,
    Gpt(ReadOutcome),
    /// A DOS partition table (0x55AA signature, no GPT).
    Mbr,
    /// Something else; the string says what, e.g. "ext4 filesystem" or
    /// "non-zero data at offset N".
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A GPT signature is present but neither copy is usable.
    #[error("corrupt GPT: {0}")]
    Corrupt(String),
    /// No GPT signature at either header location.
    #[error("no GPT found")]
    NotGpt,
    /// The table given to `write` (or a request) breaks the rules.
    #[error("invalid GPT: {0}")]
    Invalid(String),
    /// No free entry or no large enough free extent.
    #[error("no room: {0}")]
    NoRoom(String),
    /// The primary header puts the backup past the device's end: the table
    /// was written for a larger device. Either the LUN grew and this host
    /// has not seen it yet (rescan its paths), or it was shrunk.
    #[error(
        "the partition table spans {table_sectors} sectors but the device has only \
         {device_sectors}: the LUN grew and this host still sees its old size \
         (rescan its paths), or it was shrunk"
    )]
    DeviceSmaller {
        table_sectors: u64,
        device_sectors: u64,
    },
}

fn entry_sectors(entry_count: u32, sector_size: u64) -> u64 {
    (u64::from(entry_count) * u64::from(ENTRY_SIZE)).div_ceil(sector_size)
}

fn name_units(name: &str) -> usize {
    name.encode_utf16().count()
}

impl Gpt {
    /// An empty table with `ENTRY_COUNT` entries laid out as UEFI describes:
    /// header at LBA 1, entries from LBA 2, mirrored at the end of the disk.
    /// Too small a disk gives a table that `validate` rejects.
    pub fn new(sector_size: u64, total_sectors: u64, disk_guid: Uuid) -> Gpt {
        let es = entry_sectors(ENTRY_COUNT, sector_size.max(1));
        Gpt {
            sector_size,
            total_sectors,
            disk_guid,
            first_usable_lba: 2 + es,
            last_usable_lba: total_sectors.saturating_sub(2 + es),
            entry_count: ENTRY_COUNT,
            partitions: Vec::new(),
        }
    }

    /// The last usable LBA when the table reaches the device's end, as
    /// `new` lays it out.
    fn full_last_usable(&self) -> u64 {
        let es = entry_sectors(self.entry_count, self.sector_size.max(1));
        self.total_sectors.saturating_sub(2 + es)
    }

    /// After the LUN grew: this table with its usable range reaching the
    /// device's new end (`total_sectors` is the device's size as read), and
    /// the LBA where its backup header sat before. None when there is
    /// nothing to gain. Writing it moves the backup to the new end (see
    /// `write` for why that is crash-safe); `retire_backup` then clears the
    /// old one.
    pub fn grown(&self) -> Option<(Gpt, u64)> {
        let last = self.full_last_usable();
        if last <= self.last_usable_lba {
            return None;
        }
        let es = entry_sectors(self.entry_count, self.sector_size.max(1));
        let old_backup = self.last_usable_lba + 1 + es;
        let mut grown = self.clone();
        grown.last_usable_lba = last;
        Some((grown, old_backup))
    }

    pub fn validate(&self) -> Result<(), GptError> {
        let bad = |m: String| Err(GptError::Invalid(m));
        if !self.sector_size.is_power_of_two() || !(512..=4096).contains(&self.sector_size) {
            return bad(format!("unsupported sector size {}", self.sector_size));
        }
        let array_bytes = u64::from(self.entry_count) * u64::from(ENTRY_SIZE);
        if self.entry_count < MIN_WRITE_ENTRIES || array_bytes > MAX_ENTRY_ARRAY_BYTES {
            return bad(format!("unsupported entry count {}", self.entry_count));
        }
        let es = entry_sectors(self.entry_count, self.sector_size);
        if self.first_usable_lba < 2 + es
            || self.last_usable_lba.saturating_add(2 + es) > self.total_sectors
            || self.first_usable_lba > self.last_usable_lba
        {
            return bad(format!(
                "usable range {}..={} does not fit a {}-sector disk with {} entry sectors",
                self.first_usable_lba, self.last_usable_lba, self.total_sectors, es
            ));
        }
        let mut numbers = HashSet::new();
        for p in &self.partitions {
            let n = p.number;
            if n == 0 || n > self.entry_count {
                return bad(format!(
                    "partition number {n} not in 1..={}",
                    self.entry_count
                ));
            }
            if !numbers.insert(n) {
                return bad(format!("duplicate partition number {n}"));
            }
            if p.type_guid.is_nil() {
                // A nil type marks an unused entry; the partition would vanish.
                return bad(format!("partition {n} has a nil type GUID"));
            }
            if p.first_lba > p.last_lba
                || p.first_lba < self.first_usable_lba
                || p.last_lba > self.last_usable_lba
            {
                return bad(format!(
                    "partition {n} ({}..={}) outside usable range {}..={}",
                    p.first_lba, p.last_lba, self.first_usable_lba, self.last_usable_lba
                ));
            }
            if name_units(&p.name) > NAME_UNITS {
                return bad(format!(
                    "partition {n} name longer than {NAME_UNITS} UTF-16 units"
                ));
            }
            if p.name.contains('\0') {
                // NUL terminates the name on disk, so it would not round-trip.
                return bad(format!("partition {n} name contains NUL"));
            }
        }
        let mut by_start: Vec<&Partition> = self.partitions.iter().collect();
        by_start.sort_by_key(|p| p.first_lba);
        for w in by_start.windows(2) {
            if w[1].first_lba <= w[0].last_lba {
                return bad(format!(
                    "partitions {} and {} overlap",
                    w[0].number, w[1].number
                ));
            }
        }
        Ok(())
    }

    pub fn partition(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    pub fn find_by_guid(&self, guid: &Uuid) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.unique_guid == *guid)
    }

    /// Free ranges `(first, last)` (inclusive) of the usable space, ascending.
    /// With `align_sectors` > 1 both `first` and `last + 1` are multiples of
    /// it, so any aligned size up to the extent's length fits at `first`;
    /// gaps holding no whole aligned unit are omitted.
    pub fn free_extents(&self, align_sectors: u64) -> Vec<(u64, u64)> {
        let align = align_sectors.max(1);
        let mut used: Vec<(u64, u64)> = self
            .partitions
            .iter()
            .map(|p| (p.first_lba, p.last_lba))
            .collect();
        used.sort_unstable();
        let mut out = Vec::new();
        let mut push = |first: u64, last: u64| {
            let start = first.div_ceil(align) * align;
            let end = (last + 1) / align * align; // exclusive
            if start < end {
                out.push((start, end - 1));
            }
        };
        let mut cursor = self.first_usable_lba;
        for (first, last) in used {
            if first > cursor {
                push(cursor, (first - 1).min(self.last_usable_lba));
            }
            cursor = cursor.max(last.saturating_add(1));
        }
        if cursor <= self.last_usable_lba {
            push(cursor, self.last_usable_lba);
        }
        out
    }

    pub fn lowest_free_number(&self) -> Option<u32> {
        let used: HashSet<u32> = self.partitions.iter().map(|p| p.number).collect();
        (1..=self.entry_count).find(|n| !used.contains(n))
    }

    /// Adds a partition of `size_sectors` in the lowest free slot, at the
    /// start of the first aligned free extent large enough (first fit).
    /// Only changes `self`; call `write` to store it.
    pub fn add_partition(
        &mut self,
        size_sectors: u64,
        align_sectors: u64,
        type_guid: Uuid,
        unique_guid: Uuid,
        name: &str,
    ) -> Result<&Partition, GptError> {
        if size_sectors == 0 {
            return Err(GptError::Invalid("zero-sized partition".into()));
        }
        let number = self
            .lowest_free_number()
            .ok_or_else(|| GptError::NoRoom(format!("all {} entries used", self.entry_count)))?;
        let (first, _) = self
            .free_extents(align_sectors)
            .into_iter()
            .find(|&(f, l)| l - f + 1 >= size_sectors)
            .ok_or_else(|| GptError::NoRoom(format!("no free extent of {size_sectors} sectors")))?;
        let p = Partition {
            number,
            type_guid,
            unique_guid,
            first_lba: first,
            last_lba: first + size_sectors - 1,
            attributes: 0,
            name: name.to_string(),
        };
        let mut next = self.clone();
        next.partitions.push(p);
        next.partitions.sort_by_key(|p| p.number);
        next.validate()?;
        *self = next;
        Ok(self.partition(number).expect("just added"))
    }
}

// ---------------------------------------------------------------------------
// On-disk encoding

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// GUIDs are stored with their first three fields little-endian.
fn guid_at(b: &[u8], at: usize) -> Uuid {
    Uuid::from_bytes_le(b[at..at + 16].try_into().expect("16 bytes"))
}

/// Header CRC: over `size` bytes with the CRC field itself taken as zero.
fn header_crc(h: &[u8], size: usize) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..16]);
    c.update(&[0; 4]);
    c.update(&h[20..size]);
    c.finalize()
}

struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Uuid,
    entries_lba: u64,
    entry_count: u32,
    entries_crc: u32,
}

impl Header {
    fn encode(&self, sector_size: u64) -> Vec<u8> {
        let mut s = vec![0u8; sector_size as usize];
        s[..8].copy_from_slice(SIGNATURE);
        s[8..12].copy_from_slice(&REVISION.to_le_bytes());
        s[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        s[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        s[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        s[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        s[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        s[56..72].copy_from_slice(&self.disk_guid.to_bytes_le());
        s[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        s[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        s[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = header_crc(&s, HEADER_SIZE as usize);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// Parses and checks the header read from `lba` of a disk with
    /// `total` sectors. Every check a reader needs before trusting the
    /// entry location is here, so a bad header can't direct reads anywhere.
    fn parse(s: &[u8], lba: u64, total: u64, primary: bool) -> Result<Header, CopyError> {
        if &s[..8] != SIGNATURE {
            return Err(CopyError::NoSignature);
        }
        let bad = |m: String| Err(CopyError::Bad(m));
        let revision = le_u32(s, 8);
        if revision >> 16 != 1 {
            return bad(format!("unsupported revision {revision:#x}"));
        }
        let size = le_u32(s, 12) as usize;
        if size < HEADER_SIZE as usize || size > s.len() {
            return bad(format!("bad header size {size}"));
        }
        if header_crc(s, size) != le_u32(s, 16) {
            return bad("header CRC mismatch".into());
        }
        let h = Header {
            my_lba: le_u64(s, 24),
            alternate_lba: le_u64(s, 32),
            first_usable: le_u64(s, 40),
            last_usable: le_u64(s, 48),
            disk_guid: guid_at(s, 56),
            entries_lba: le_u64(s, 72),
            entry_count: le_u32(s, 80),
            entries_crc: le_u32(s, 88),
        };
        if h.my_lba != lba {
            return bad(format!("my_lba {} but read from LBA {lba}", h.my_lba));
        }
        // The primary's alternate may lie before the end if the LUN grew;
        // past the end, the table was written for a larger device than
        // this host sees.
        if primary && h.alternate_lba >= total {
            return Err(CopyError::BeyondEnd(h.alternate_lba));
        }
        let alternate_ok = if primary {
            h.alternate_lba > 1
        } else {
            h.alternate_lba == 1
        };
        if !alternate_ok {
            return bad(format!("bad alternate_lba {}", h.alternate_lba));
        }
        let entry_size = le_u32(s, 84);
        if entry_size != ENTRY_SIZE {
            return bad(format!("unsupported entry size {entry_size}"));
        }
        let array_bytes = u64::from(h.entry_count) * u64::from(ENTRY_SIZE);
        if h.entry_count == 0 || array_bytes > MAX_ENTRY_ARRAY_BYTES {
            return bad(format!("unsupported entry count {}", h.entry_count));
        }
        let es = entry_sectors(h.entry_count, s.len() as u64);
        let entries_end = h.entries_lba.saturating_add(es); // exclusive
        let entries_ok = h.entries_lba >= 2
            && entries_end < total
            && (if primary {
                h.entries_lba > lba
            } else {
                entries_end <= lba
            });
        if !entries_ok {
            return bad(format!("entry array at LBA {} out of place", h.entries_lba));
        }
        if h.first_usable < 2 || h.first_usable > h.last_usable || h.last_usable >= total - 1 {
            return bad(format!(
                "bad usable range {}..={}",
                h.first_usable, h.last_usable
            ));
        }
        if entries_end > h.first_usable && h.entries_lba <= h.last_usable {
            return bad("entry array overlaps usable space".into());
        }
        Ok(h)
    }
}

fn encode_entries(gpt: &Gpt) -> Vec<u8> {
    let es = entry_sectors(gpt.entry_count, gpt.sector_size);
    // Zero padding to the sector boundary; the CRC covers only the entries.
    let mut buf = vec![0u8; (es * gpt.sector_size) as usize];
    for p in &gpt.partitions {
        let e = &mut buf[(p.number as usize - 1) * ENTRY_SIZE as usize..][..ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
        e[16..32].copy_from_slice(&p.unique_guid.to_bytes_le());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (i, unit) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    buf
}

fn decode_entries(array: &[u8], count: u32) -> Vec<Partition> {
    let mut out = Vec::new();
    for (i, e) in array
        .chunks_exact(ENTRY_SIZE as usize)
        .take(count as usize)
        .enumerate()
    {
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(Partition {
            number: i as u32 + 1,
            type_guid,
            unique_guid: guid_at(e, 16),
            first_lba: le_u64(e, 32),
            last_lba: le_u64(e, 40),
            attributes: le_u64(e, 48),
            // Names are labels; a broken surrogate must not make a
            // CRC-valid table unreadable.
            name: String::from_utf16_lossy(&units),
        });
    }
    out
}

fn protective_mbr(sector_size: u64, total_sectors: u64) -> Vec<u8> {
    let mut s = vec![0u8; sector_size as usize];
    let e = &mut s[446..462];
    // Status 0, CHS start 0/0/2, type 0xEE, CHS end maxed out.
    e[..8].copy_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

// ---------------------------------------------------------------------------
// Reading

enum CopyError {
    NoSignature,
    Bad(String),
    /// A whole primary header whose backup lies at this LBA, past the end.
    BeyondEnd(u64),
}

impl CopyError {
    fn describe(&self) -> String {
        match self {
            CopyError::NoSignature => "no signature".into(),
            CopyError::Bad(m) => m.clone(),
            CopyError::BeyondEnd(lba) => format!("backup header at LBA {lba}, past the end"),
        }
    }
}

type Copy = Result<Gpt, CopyError>;

fn read_copy(io: &dyn BlockIo, lba: u64, primary: bool) -> Result<Copy, GptError> {
    let ss = io.sector_size();
    let total = io.size_bytes() / ss;
    let mut sector = vec![0u8; ss as usize];
    io.read_at(lba * ss, &mut sector)?;
    let h = match Header::parse(&sector, lba, total, primary) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let es = entry_sectors(h.entry_count, ss);
    let mut array = vec![0u8; (es * ss) as usize];
    io.read_at(h.entries_lba * ss, &mut array)?;
    let crc_len = h.entry_count as usize * ENTRY_SIZE as usize;
    if crc32fast::hash(&array[..crc_len]) != h.entries_crc {
        return Ok(Err(CopyError::Bad("entry array CRC mismatch".into())));
    }
    Ok(Ok(Gpt {
        sector_size: ss,
        total_sectors: total,
        disk_guid: h.disk_guid,
        first_usable_lba: h.first_usable,
        last_usable_lba: h.last_usable,
        entry_count: h.entry_count,
        partitions: decode_entries(&array, h.entry_count),
    }))
}

/// Both copies: primary at LBA 1, backup at the last LBA.
fn read_copies(io: &dyn BlockIo) -> Result<(Copy, Copy), GptError> {
    let total = io.size_bytes() / io.sector_size();
    if total < 4 {
        return Ok((Err(CopyError::NoSignature), Err(CopyError::NoSignature)));
    }
    Ok((read_copy(io, 1, true)?, read_copy(io, total - 1, false)?))
}

/// Reads the table, preferring the primary copy; falls back to the backup
/// only when the primary fails a check. Does not `validate()` the
/// partitions: a table another tool wrote is reported as found.
///
/// A primary header whose backup lies past the device's end is
/// `DeviceSmaller`, whatever the last sectors hold: a backup found there
/// would be the one from before the LUN grew, an older table.
pub fn read(io: &dyn BlockIo) -> Result<ReadOutcome, GptError> {
    match read_copies(io)? {
        (Err(CopyError::BeyondEnd(alternate)), _) => Err(GptError::DeviceSmaller {
            table_sectors: alternate + 1,
            device_sectors: io.size_bytes() / io.sector_size(),
        }),
        (Ok(p), b) => {
            let backup_valid = matches!(&b, Ok(b) if *b == p);
            Ok(ReadOutcome {
                gpt: p,
                primary_valid: true,
                backup_valid,
            })
        }
        (Err(_), Ok(b)) => Ok(ReadOutcome {
            gpt: b,
            primary_valid: false,
            backup_valid: true,
        }),
        (Err(CopyError::NoSignature), Err(CopyError::NoSignature)) => Err(GptError::NotGpt),
        (Err(p), Err(b)) => Err(GptError::Corrupt(format!(
            "primary: {}; backup: {}",
            p.describe(),
            b.describe()
        ))),
    }
}

/// [`read`], then [`Gpt::validate`]: for a table this driver made and is
/// about to compute offsets from. Every entry is checked (inside the
/// usable range, first before last, no overlap, no duplicate number)
/// before anyone multiplies an LBA: another host, an older version or a
/// stray tool may have written it.
pub fn read_valid(io: &dyn BlockIo) -> Result<ReadOutcome, GptError> {
    let outcome = read(io)?;
    outcome.gpt.validate()?;
    Ok(outcome)
}

// ---------------------------------------------------------------------------
// Writing

/// Writes `gpt` (protective MBR, both headers, both entry arrays).
///
/// Crash safety: whatever prefix of these writes reaches the disk, `read`
/// afterwards returns the complete old table or the complete new one.
/// - Each copy is rewritten entries first, then header. A header sector is
///   written atomically and its CRC covers the entry array's CRC, so a copy
///   is wholly old, wholly new, or fails its checks (this holds even if the
///   device reorders the two writes, as nothing orders them but the sync).
/// - The copies are rewritten one after the other with a sync in between,
///   so at every moment at least one copy is complete and valid.
/// - Order: when both copies hold the same table, the primary goes first;
///   while it is torn `read` falls back to the identical backup, and once it
///   is synced `read` prefers it. When the primary is valid but the backup
///   is stale or missing (an earlier write was interrupted), the backup goes
///   first instead: falling back to a stale backup would resurrect a table
///   older than the one `read` currently returns.
///
/// So a failed or interrupted write is repaired by simply writing again.
/// On a blank device a crash before the primary header lands leaves a
/// protective MBR and/or entry bytes without a header: `read` then says
/// `NotGpt` and `probe` reports `Other`, not `Blank`.
pub fn write(io: &dyn BlockIo, gpt: &Gpt) -> Result<(), GptError> {
    gpt.validate()?;
    let ss = io.sector_size();
    if ss != gpt.sector_size || io.size_bytes() / ss != gpt.total_sectors {
        return Err(GptError::Invalid(format!(
            "table is for {} sectors of {} bytes, device has {} of {}",
            gpt.total_sectors,
            gpt.sector_size,
            io.size_bytes() / ss,
            ss
        )));
    }
    let primary_first = match read_copies(io)? {
        (Ok(p), Ok(b)) => p == b,
        (Ok(_), Err(_)) => false,
        (Err(_), _) => true,
    };

    let last = gpt.total_sectors - 1;
    let es = entry_sectors(gpt.entry_count, ss);
    let entries = encode_entries(gpt);
    let entries_crc = crc32fast::hash(&entries[..gpt.entry_count as usize * ENTRY_SIZE as usize]);
    let header = |my_lba, alternate_lba, entries_lba| {
        Header {
            my_lba,
            alternate_lba,
            first_usable: gpt.first_usable_lba,
            last_usable: gpt.last_usable_lba,
            disk_guid: gpt.disk_guid,
            entries_lba,
            entry_count: gpt.entry_count,
            entries_crc,
        }
        .encode(ss)
    };
    let backup_entries_lba = last - es;

    let write_primary = || -> Result<(), GptError> {
        io.write_at(0, &protective_mbr(ss, gpt.total_sectors))?;
        io.write_at(2 * ss, &entries)?;
        io.write_at(ss, &header(1, last, 2))?;
        io.sync()?;
        Ok(())
    };
    let write_backup = || -> Result<(), GptError> {
        io.write_at(backup_entries_lba * ss, &entries)?;
        io.write_at(last * ss, &header(last, 1, backup_entries_lba))?;
        io.sync()?;
        Ok(())
    };
    if primary_first {
        write_primary()?;
        write_backup()
    } else {
        write_backup()?;
        write_primary()
    }
}

/// Clears the backup header a table left at `lba` before the LUN grew
/// (`Gpt::grown` says where), if it is still there: a host that still sees
/// the old size and finds the primary torn would otherwise fall back to it,
/// a table older than the current one. Only a backup header of `disk_guid`
/// whose own LBA is `lba` is cleared, never the device's last sector.
/// Returns whether one was.
///
/// Clear it before writing the grown table: the primary then stays the one
/// valid copy until the backup is rewritten at the new end, and a crash in
/// between leaves nothing stale behind.
pub fn retire_backup(io: &dyn BlockIo, lba: u64, disk_guid: Uuid) -> Result<bool, GptError> {
    let ss = io.sector_size();
    let total = io.size_bytes() / ss;
    if lba < 2 || lba + 1 >= total {
        return Ok(false);
    }
    let mut sector = vec![0u8; ss as usize];
    io.read_at(lba * ss, &mut sector)?;
    match Header::parse(&sector, lba, total, false) {
        Ok(h) if h.disk_guid == disk_guid => {
            io.write_at(lba * ss, &vec![0u8; ss as usize])?;
            io.sync()?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

// ---------------------------------------------------------------------------
// Probing

/// Says what the device holds, so callers only claim blank LUNs and only
/// parse GPTs. Returns `Err(Corrupt)` when a GPT signature is present but
/// neither copy is usable.
pub fn probe(io: &dyn BlockIo) -> Result<Contents, GptError> {
    let ss = io.sector_size();
    let size = io.size_bytes();
    let span = PROBE_SPAN.min(size) / ss * ss;
    let mut head = vec![0u8; span as usize];
    io.read_at(0, &mut head)?;
    // Our writer lease, a handover request or ownership stamp alone (a
    // crash between writing them and the first table) does not make a LUN less blank; the caller
    // reads the stamp itself.
    let lease_at = LEASE_OFFSET as usize..(LEASE_OFFSET + ss) as usize;
    if let Some(sector) = head.get_mut(lease_at) {
        if matches!(Lease::decode(sector), Ok(Some(_))) {
            sector.fill(0);
        }
    }
    let request_at = REQUEST_OFFSET as usize..(REQUEST_OFFSET + ss) as usize;
    if let Some(sector) = head.get_mut(request_at) {
        if matches!(Request::decode(sector), Ok(Some(_))) {
            sector.fill(0);
        }
    }
    let stamp_at = OWNERSHIP_OFFSET as usize..(OWNERSHIP_OFFSET + ss) as usize;
    if let Some(sector) = head.get_mut(stamp_at) {
        if matches!(Ownership::decode(sector), Ok(Some(_))) {
            sector.fill(0);
        }
    }
    let tail_start = size - span;
    let mut tail = vec![0u8; span as usize];
    io.read_at(tail_start, &mut tail)?;

    if is_zero(&head) && is_zero(&tail) {
        return Ok(Contents::Blank);
    }
    let ssu = ss as usize;
    let tail_sig = tail.len() >= ssu && at(&tail, tail.len() - ssu, SIGNATURE);
    if at(&head, ssu, SIGNATURE) || tail_sig {
        return match read(io) {
            Ok(outcome) => Ok(Contents::Gpt(outcome)),
            // A signature whose copies are both unusable is not blank either.
            Err(GptError::NotGpt) => Ok(Contents::Other("GPT signature with bad header".into())),
            Err(e) => Err(e),
        };
    }
    for other in [512u64, 4096] {
        if other != ss && at(&head, other as usize, SIGNATURE) {
            return Ok(Contents::Other(format!(
                "GPT for {other}-byte sectors on a device with {ss}-byte sectors"
            )));
        }
    }
    if let Some(what) = identify(&head) {
        return Ok(Contents::Other(what));
    }
    if at(&head, 510, &[0x55, 0xAA]) {
        let protective = (0..4).any(|i| head[446 + 16 * i + 4] == 0xEE);
        // A protective MBR and nothing else is what a crash during our own
        // first-time setup leaves (the MBR is written before the headers):
        // no table was ever complete, so there is nothing to lose.
        let only_mbr = is_zero(&head[..446]) && is_zero(&head[ssu..]) && is_zero(&tail);
        return Ok(match (protective, only_mbr) {
            (true, true) => Contents::Blank,
            (true, false) => Contents::Other("protective MBR without a GPT header".into()),
            (false, _) => Contents::Mbr,
        });
    }
    let offset = match head.iter().position(|&b| b != 0) {
        Some(i) => i as u64,
        None => tail_start + tail.iter().position(|&b| b != 0).unwrap_or(0) as u64,
    };
    Ok(Contents::Other(format!("non-zero data at offset {offset}")))
}

#[cfg(test)]
mod tests {
    use super::super::lun_io::{CrashMode, FailingIo, LunFile, MemIo};
    use super::*;
    use std::path::Path;
    use std::process::Command;

    const LINUX_FS: Uuid = uuid::uuid!("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    const SGDISK: &str = "/usr/sbin/sgdisk";
    const MIB: u64 = 1 << 20;

    fn guid(n: u8) -> Uuid {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, &[n])
    }

    fn part(number: u32, first: u64, last: u64, name: &str) -> Partition {
        Partition {
            number,
            type_guid: LINUX_FS,
            unique_guid: guid(number as u8),
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name: name.into(),
        }
    }

    /// A table with a few partitions at 1 MiB boundaries, names exercising
    /// the 36-unit limit, non-ASCII and a surrogate pair.
    fn sample(ss: u64, total: u64, seed: u8) -> Gpt {
        let mib = MIB / ss;
        let mut g = Gpt::new(ss, total, guid(200 + seed));
        g.partitions = vec![
            part(1, mib, 3 * mib - 1, &"n".repeat(36)),
            part(2, 3 * mib, 4 * mib - 1, "ñandú-vol"),
            part(7, 6 * mib, 8 * mib - 1, &format!("{}😀", "x".repeat(34))),
            part(ENTRY_COUNT, 10 * mib, 10 * mib + seed as u64, "last slot"),
        ];
        g.partitions[2].attributes = 1 << 60;
        g
    }

    fn mem(ss: u64, total: u64) -> MemIo {
        MemIo::new(ss, ss * total)
    }

    /// A CRC-valid table whose entry 1 ends at LBA u64::MAX (another writer
    /// got it wrong): `read` reports it, `read_valid` refuses it before
    /// anyone computes a size or an offset from it.
    #[test]
    fn entries_are_checked_before_any_arithmetic() {
        let io = mem(512, 131072);
        let mut g = Gpt::new(512, 131072, guid(9));
        g.partitions.push(part(1, 2048, 4095, "a"));
        write(&io, &g).unwrap();
        let es = entry_sectors(g.entry_count, 512);
        let last = g.total_sectors - 1;
        for (header_lba, entries_lba) in [(1, 2), (last, last - es)] {
            let mut entries = vec![0u8; (es * 512) as usize];
            io.read_at(entries_lba * 512, &mut entries).unwrap();
            entries[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
            io.write_at(entries_lba * 512, &entries).unwrap();
            let crc = crc32fast::hash(&entries[..g.entry_count as usize * ENTRY_SIZE as usize]);
            let mut h = vec![0u8; 512];
            io.read_at(header_lba * 512, &mut h).unwrap();
            h[88..92].copy_from_slice(&crc.to_le_bytes());
            h[16..20].fill(0);
            let header_crc = crc32fast::hash(&h[..92]);
            h[16..20].copy_from_slice(&header_crc.to_le_bytes());
            io.write_at(header_lba * 512, &h).unwrap();
        }
        let found = read(&io).unwrap();
        assert_eq!(found.gpt.partition(1).unwrap().last_lba, u64::MAX);
        assert!(found.primary_valid && found.backup_valid);
        match read_valid(&io) {
            Err(GptError::Invalid(m)) => assert!(m.contains("outside usable range"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn layout_of_new() {
        let g = Gpt::new(512, 1 << 20, guid(1));
        assert_eq!(
            (g.first_usable_lba, g.last_usable_lba),
            (66, (1 << 20) - 66)
        );
        let g = Gpt::new(4096, 1 << 17, guid(1));
        assert_eq!(
            (g.first_usable_lba, g.last_usable_lba),
            (10, (1 << 17) - 10)
        );
        assert_eq!(g.entry_count, ENTRY_COUNT);
        g.validate().unwrap();
    }

    #[test]
    fn round_trip_both_sector_sizes() {
        for ss in [512u64, 4096] {
            let total = 64 * MIB / ss;
            let io = mem(ss, total);
            let g = sample(ss, total, 0);
            write(&io, &g).unwrap();
            let r = read(&io).unwrap();
            assert!(r.primary_valid && r.backup_valid);
            assert_eq!(r.gpt, g);
            assert_eq!(r.gpt.partition(2).unwrap().name, "ñandú-vol");
            assert_eq!(r.gpt.find_by_guid(&guid(7)).unwrap().number, 7);
            assert!(r.gpt.find_by_guid(&guid(99)).is_none());
            let img = io.snapshot();
            assert_eq!(&img[510..512], &[0x55, 0xAA]);
            assert_eq!(img[446 + 4], 0xEE);
            assert_eq!(le_u32(&img, 446 + 12), total as u32 - 1);
            // Header padding is zero.
            assert!(is_zero(&img[ss as usize + 92..2 * ss as usize]));
        }
    }

    #[test]
    fn protective_mbr_size_is_capped() {
        let s = protective_mbr(512, 1 << 40);
        assert_eq!(le_u32(&s, 446 + 12), u32::MAX);
    }

    #[test]
    fn write_rejects_mismatched_device() {
        let io = mem(512, 128 * 1024);
        let g = Gpt::new(512, 128 * 1024 + 8, guid(1));
        assert!(matches!(write(&io, &g), Err(GptError::Invalid(_))));
        let g = Gpt::new(4096, 16 * 1024, guid(1));
        assert!(matches!(write(&io, &g), Err(GptError::Invalid(_))));
        assert!(is_zero(&io.snapshot()));
    }

    #[test]
    fn read_blank_is_not_gpt() {
        assert!(matches!(read(&mem(512, 4096)), Err(GptError::NotGpt)));
    }

    fn flip(io: &MemIo, offset: u64) {
        io.with_bytes_mut(|b| b[offset as usize] ^= 0x40);
    }

    #[test]
    fn corruption_falls_back_to_backup() {
        for ss in [512u64, 4096] {
            let total = 32 * MIB / ss;
            let g = sample(ss, total, 0);
            let last = (total - 1) * ss;
            let fresh = || {
                let io = mem(ss, total);
                write(&io, &g).unwrap();
                io
            };

            let io = fresh();
            flip(&io, ss + 40); // primary header: first_usable
            let r = read(&io).unwrap();
            assert!(!r.primary_valid && r.backup_valid);
            assert_eq!(r.gpt, g);

            let io = fresh();
            flip(&io, 2 * ss + 128 + 60); // primary entries: name of #2
            let r = read(&io).unwrap();
            assert!(!r.primary_valid && r.backup_valid);
            assert_eq!(r.gpt, g);

            let io = fresh();
            flip(&io, last + 8); // backup header: revision
            let r = read(&io).unwrap();
            assert!(r.primary_valid && !r.backup_valid);
            assert_eq!(r.gpt, g);

            let io = fresh();
            flip(&io, ss + 3);
            flip(&io, last - ss + 1);
            match read(&io) {
                Err(GptError::Corrupt(why)) => {
                    assert!(why.contains("signature") && why.contains("CRC"), "{why}")
                }
                other => panic!("expected Corrupt, got {:?}", other.map(|r| r.gpt)),
            }
            assert!(matches!(probe(&io), Err(GptError::Corrupt(_))));

            // A header with a consistent CRC but wrong my_lba is rejected too.
            let io = fresh();
            io.with_bytes_mut(|b| {
                let h = &mut b[ss as usize..2 * ss as usize];
                h[24..32].copy_from_slice(&5u64.to_le_bytes());
                let crc = header_crc(h, 92);
                h[16..20].copy_from_slice(&crc.to_le_bytes());
            });
            assert!(!read(&io).unwrap().primary_valid);
        }
    }

    /// Writes `new` over the image `base` with only the first `n` writes
    /// reaching the disk; returns what `read` sees afterwards.
    fn crashed_read(ss: u64, base: &[u8], new: &Gpt, n: usize, mode: CrashMode) -> Option<Gpt> {
        let io = FailingIo::new(MemIo::from_bytes(ss, base.to_vec()), n, mode);
        write(&io, new).unwrap();
        match read(io.inner()) {
            Ok(r) => Some(r.gpt),
            Err(GptError::NotGpt) => None,
            Err(e) => panic!("n={n} {mode:?}: {e}"),
        }
    }

    fn write_count(ss: u64, base: &[u8], new: &Gpt) -> usize {
        let io = FailingIo::counting(MemIo::from_bytes(ss, base.to_vec()));
        write(&io, new).unwrap();
        io.writes_attempted()
    }

    /// Every crash point of write(new) over `base` reads back as one of
    /// `allowed`; with all writes through it reads back as `new`.
    fn check_crash_points(ss: u64, base: &[u8], new: &Gpt, allowed: &[Option<&Gpt>]) {
        let total = write_count(ss, base, new);
        assert_eq!(total, 5);
        for mode in [CrashMode::Drop, CrashMode::Tear] {
            for n in 0..=total {
                let got = crashed_read(ss, base, new, n, mode);
                assert!(
                    allowed.contains(&got.as_ref()),
                    "n={n} {mode:?}: read {got:?}"
                );
                if n == total {
                    assert_eq!(got.as_ref(), Some(new));
                }
            }
        }
    }

    #[test]
    fn crash_at_every_write_gives_old_or_new() {
        for ss in [512u64, 4096] {
            let total = 32 * MIB / ss;
            let a = sample(ss, total, 1);
            let mut b = sample(ss, total, 2);
            b.partitions.remove(1);
            b.partitions[0].name = "renamed".into();
            let io = mem(ss, total);
            write(&io, &a).unwrap();
            check_crash_points(ss, &io.snapshot(), &b, &[Some(&a), Some(&b)]);

            // Only a header field changes: entries are identical.
            let mut c = a.clone();
            c.disk_guid = guid(99);
            check_crash_points(ss, &io.snapshot(), &c, &[Some(&a), Some(&c)]);
        }
    }

    /// The image `base` on a device grown to `total` sectors (the array
    /// grew the LUN: the new space reads as zeroes).
    fn grown_image(base: &[u8], ss: u64, total: u64) -> Vec<u8> {
        let mut bytes = base.to_vec();
        bytes.resize((total * ss) as usize, 0);
        bytes
    }

    #[test]
    fn a_grown_lun_keeps_its_table_until_it_is_moved() {
        for ss in [512u64, 4096] {
            let (old_total, new_total) = (32 * MIB / ss, 48 * MIB / ss);
            let a = sample(ss, old_total, 1);
            let io = mem(ss, old_total);
            write(&io, &a).unwrap();
            assert!(a.grown().is_none(), "a table that fills its device");

            // Seen grown: the primary alone, every partition where it was.
            let grown_io = MemIo::from_bytes(ss, grown_image(&io.snapshot(), ss, new_total));
            let r = read(&grown_io).unwrap();
            assert!(r.primary_valid && !r.backup_valid);
            assert_eq!(r.gpt.partitions, a.partitions);
            assert_eq!(r.gpt.total_sectors, new_total);
            let (b, old_backup) = r.gpt.grown().unwrap();
            assert_eq!(old_backup, old_total - 1);
            assert_eq!(
                b.last_usable_lba,
                Gpt::new(ss, new_total, b.disk_guid).last_usable_lba
            );

            // Moved: the old backup cleared first, then the table written.
            assert!(retire_backup(&grown_io, old_backup, a.disk_guid).unwrap());
            assert!(!retire_backup(&grown_io, old_backup, a.disk_guid).unwrap());
            let retired = grown_io.snapshot();
            check_crash_points(ss, &retired, &b, &[Some(&r.gpt), Some(&b)]);

            // A host that still sees the old size reads the old table or is
            // told the device is smaller than the table, never anything else,
            // at every crash point of the move.
            for n in 0..=write_count(ss, &retired, &b) {
                let io = FailingIo::new(MemIo::from_bytes(ss, retired.clone()), n, CrashMode::Drop);
                write(&io, &b).unwrap();
                let small = MemIo::from_bytes(
                    ss,
                    io.inner().snapshot()[..(old_total * ss) as usize].to_vec(),
                );
                match read(&small) {
                    Ok(r) => assert_eq!(r.gpt.partitions, a.partitions, "n={n}"),
                    Err(GptError::DeviceSmaller {
                        table_sectors,
                        device_sectors,
                    }) => assert_eq!((table_sectors, device_sectors), (new_total, old_total)),
                    Err(e) => panic!("n={n}: {e}"),
                }
            }
        }
    }

    #[test]
    fn retire_backup_clears_only_an_old_backup_of_this_disk() {
        let ss = 512;
        let total = 32 * MIB / ss;
        let a = sample(ss, total, 1);
        let io = mem(ss, total);
        write(&io, &a).unwrap();
        // The live backup at the last LBA is never cleared.
        assert!(!retire_backup(&io, total - 1, a.disk_guid).unwrap());
        let grown = MemIo::from_bytes(ss, grown_image(&io.snapshot(), ss, 2 * total));
        assert!(!retire_backup(&grown, total - 1, guid(42)).unwrap());
        assert!(!retire_backup(&grown, total - 2, a.disk_guid).unwrap());
        assert!(!retire_backup(&grown, 1, a.disk_guid).unwrap());
        assert_eq!(read(&grown).unwrap().gpt.partitions, a.partitions);
    }

    #[test]
    fn crash_after_interrupted_write_never_goes_back() {
        // An earlier write of B stopped after the primary: primary B,
        // backup A. read() says B, so a crash while writing C must give
        // B or C, never A.
        let ss = 512;
        let total = 32 * MIB / ss;
        let (a, b) = (sample(ss, total, 1), sample(ss, total, 2));
        let mut c = sample(ss, total, 3);
        c.partitions.truncate(1);
        let io = mem(ss, total);
        write(&io, &a).unwrap();
        let io = FailingIo::new(io, 3, CrashMode::Drop);
        write(&io, &b).unwrap();
        let r = read(io.inner()).unwrap();
        assert!(r.primary_valid && !r.backup_valid);
        assert_eq!(r.gpt, b);
        check_crash_points(ss, &io.inner().snapshot(), &c, &[Some(&b), Some(&c)]);
    }

    #[test]
    fn crash_while_initialising_blank_disk() {
        let ss = 4096;
        let total = 16 * MIB / ss;
        let g = sample(ss, total, 1);
        let blank = vec![0u8; (ss * total) as usize];
        check_crash_points(ss, &blank, &g, &[None, Some(&g)]);
    }

    #[test]
    fn failing_write_reports_error() {
        let io = FailingIo::new(mem(512, 65536), 2, CrashMode::Fail);
        let g = sample(512, 65536, 1);
        assert!(matches!(write(&io, &g), Err(GptError::Io(_))));
    }

    #[test]
    fn validate_rejects_bad_tables() {
        let ok = sample(512, 65536, 0);
        ok.validate().unwrap();
        let check = |f: &dyn Fn(&mut Gpt), what: &str| {
            let mut g = ok.clone();
            f(&mut g);
            match g.validate() {
                Err(GptError::Invalid(m)) => assert!(m.contains(what), "{m}"),
                other => panic!("{what}: {other:?}"),
            }
            assert!(write(&mem(512, 65536), &g).is_err());
        };
        check(&|g| g.partitions[1].first_lba = 3000, "overlap");
        check(&|g| g.partitions.push(part(9, 3000, 3000, "x")), "overlap");
        check(&|g| g.partitions[0].first_lba = 65, "outside");
        check(&|g| g.partitions[0].last_lba = 65536 - 66 + 1, "outside");
        check(&|g| g.partitions[0].last_lba = 10, "outside");
        check(&|g| g.partitions[1].number = 1, "duplicate");
        check(&|g| g.partitions[1].number = 0, "number 0");
        check(&|g| g.partitions[1].number = ENTRY_COUNT + 1, "not in");
        check(&|g| g.partitions[0].name = "n".repeat(37), "name");
        check(
            &|g| g.partitions[2].name = format!("{}😀", "x".repeat(35)),
            "name",
        );
        check(&|g| g.partitions[0].name = "a\0b".into(), "NUL");
        check(&|g| g.partitions[0].type_guid = Uuid::nil(), "nil");
        check(&|g| g.sector_size = 1024 + 1, "sector size");
        check(&|g| g.entry_count = 64, "entry count");
        check(&|g| g.first_usable_lba = 10, "usable");
        check(&|g| g.last_usable_lba = 65536 - 2, "usable");
        check(&|g| *g = Gpt::new(512, 100, guid(1)), "usable");
    }

    #[test]
    fn free_extents_and_numbers() {
        let mut g = Gpt::new(512, 20480, guid(1)); // 10 MiB
        assert_eq!(g.free_extents(1), vec![(66, 20480 - 66)]);
        assert_eq!(g.free_extents(2048), vec![(2048, 18431)]);
        assert_eq!(g.lowest_free_number(), Some(1));
        g.partitions = vec![
            part(1, 2048, 4095, "a"),
            part(3, 4096, 5000, "b"),
            part(2, 8192, 10239, "c"),
        ];
        assert_eq!(
            g.free_extents(1),
            vec![(66, 2047), (5001, 8191), (10240, 20414)]
        );
        // 66..2047 holds no whole 1 MiB unit; 5001..8191 rounds to 6144..8191.
        assert_eq!(g.free_extents(2048), vec![(6144, 8191), (10240, 18431)]);
        assert_eq!(g.lowest_free_number(), Some(4));

        let mut full = Gpt::new(512, 20480, guid(1));
        full.partitions = (1..=ENTRY_COUNT)
            .map(|n| part(n, 66 + u64::from(n), 66 + u64::from(n), "p"))
            .collect();
        assert_eq!(full.lowest_free_number(), None);
        assert!(matches!(
            full.add_partition(1, 1, LINUX_FS, guid(1), "x"),
            Err(GptError::NoRoom(_))
        ));
    }

    #[test]
    fn add_partition_first_fit() {
        let mut g = Gpt::new(512, 20480, guid(1));
        let p = g.add_partition(2048, 2048, LINUX_FS, guid(1), "a").unwrap();
        assert_eq!((p.number, p.first_lba, p.last_lba), (1, 2048, 4095));
        let p = g.add_partition(4096, 2048, LINUX_FS, guid(2), "b").unwrap();
        assert_eq!((p.number, p.first_lba), (2, 4096));
        g.partitions.retain(|p| p.number != 1);
        let p = g.add_partition(1024, 2048, LINUX_FS, guid(3), "c").unwrap();
        assert_eq!((p.number, p.first_lba), (1, 2048));
        assert!(matches!(
            g.add_partition(20000, 2048, LINUX_FS, guid(4), "d"),
            Err(GptError::NoRoom(_))
        ));
        assert!(matches!(
            g.add_partition(1, 1, LINUX_FS, guid(4), &"d".repeat(37)),
            Err(GptError::Invalid(_))
        ));
        assert_eq!(g.partitions.len(), 2);
        g.validate().unwrap();
    }

    fn probe_str(io: &MemIo) -> String {
        match probe(io).unwrap() {
            Contents::Blank => "blank".into(),
            Contents::Gpt(r) => format!("gpt {}", r.gpt.partitions.len()),
            Contents::Mbr => "mbr".into(),
            Contents::Other(s) => s,
        }
    }

    fn image_with(ss: u64, len: u64, patches: &[(usize, &[u8])]) -> MemIo {
        let io = MemIo::new(ss, len);
        io.with_bytes_mut(|b| {
            for (at, bytes) in patches {
                b[*at..*at + bytes.len()].copy_from_slice(bytes);
            }
        });
        io
    }

    #[test]
    fn probe_recognises_contents() {
        let len = 16 * MIB;
        assert_eq!(probe_str(&MemIo::new(512, len)), "blank");
        assert_eq!(probe_str(&MemIo::new(4096, 64 * 1024)), "blank");
        // Our own ownership stamp alone (a crash before the first table).
        let stamped = MemIo::new(512, len);
        let stamp = crate::disk::ownership::Ownership {
            cluster_id: "c".into(),
            cluster_name: "n".into(),
            disk_guid: Uuid::nil(),
            stamped_at: 0,
            stamped_by: "t".into(),
        };
        crate::disk::ownership::write(&stamped, &stamp).unwrap();
        assert_eq!(probe_str(&stamped), "blank");

        for ss in [512, 4096] {
            let io = MemIo::new(ss, len);
            write(&io, &sample(ss, len / ss, 0)).unwrap();
            assert_eq!(probe_str(&io), "gpt 4");
            // Only the backup survives: still a GPT.
            io.with_bytes_mut(|b| b[..2 * ss as usize].fill(0));
            match probe(&io).unwrap() {
                Contents::Gpt(r) => assert!(!r.primary_valid && r.backup_valid),
                _ => panic!("expected GPT"),
            }
        }

        // A DOS table: one type 0x83 partition.
        let mut entry = [0u8; 16];
        entry[4] = 0x83;
        entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
        entry[12..16].copy_from_slice(&4096u32.to_le_bytes());
        let mbr = image_with(512, len, &[(446, &entry), (510, &[0x55, 0xAA])]);
        assert_eq!(probe_str(&mbr), "mbr");
        let pmbr = image_with(512, len, &[(0, &protective_mbr(512, len / 512))]);
        assert_eq!(probe_str(&pmbr), "blank");
        let pmbr_data = image_with(
            512,
            len,
            &[(0, &protective_mbr(512, len / 512)), (4096, b"data")],
        );
        assert_eq!(probe_str(&pmbr_data), "protective MBR without a GPT header");

        let ext4 = image_with(512, len, &[(1080, &[0x53, 0xEF]), (1024 + 0x60, &[0x40])]);
        assert_eq!(probe_str(&ext4), "ext4 filesystem");
        let ext3 = image_with(512, len, &[(1080, &[0x53, 0xEF]), (1024 + 0x5C, &[4])]);
        assert_eq!(probe_str(&ext3), "ext3 filesystem");
        let cases: &[(usize, &[u8], &str)] = &[
            (0, b"XFSB", "XFS filesystem"),
            (1024 + 512, b"LABELONE", "LVM2 physical volume"),
            (2 * 4096, b"OCFSV2", "OCFS2 filesystem"),
            (2 * 1024, b"OCFSV2", "OCFS2 filesystem"),
            (4086, b"SWAPSPACE2", "swap space"),
            (12345, b"?", "non-zero data at offset 12345"),
            (
                len as usize - 7,
                b"?",
                &format!("non-zero data at offset {}", len - 7),
            ),
        ];
        for (at, magic, want) in cases {
            assert_eq!(probe_str(&image_with(512, len, &[(*at, magic)])), *want);
        }
        // Beyond the probed first and last MiB counts as blank.
        assert_eq!(
            probe_str(&image_with(512, len, &[(4 * MIB as usize, b"?")])),
            "blank"
        );

        // A GPT written for 512-byte sectors seen through 4096-byte sectors.
        let io = MemIo::new(512, len);
        write(&io, &sample(512, len / 512, 0)).unwrap();
        let wrong = MemIo::from_bytes(4096, io.snapshot());
        match probe(&wrong) {
            // The backup header at the last 512-byte LBA is not at the last
            // 4096-byte LBA's start either, so nothing parses.
            Ok(Contents::Other(s)) => assert!(s.contains("512-byte sectors"), "{s}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("run command");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?}: {text}");
        text
    }

    fn sparse(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    /// `sgdisk -v` finds no problems and `sgdisk -i` shows each partition
    /// with its full name (`-p` truncates long names).
    fn sgdisk_accepts(path: &Path, parts: &[(u32, &str)]) {
        let v = run(Command::new(SGDISK).arg("-v").arg(path));
        assert!(v.contains("No problems found"), "{v}");
        let p = run(Command::new(SGDISK).arg("-p").arg(path));
        assert!(p.contains("8300"), "{p}");
        for (number, name) in parts {
            let i = run(Command::new(SGDISK).arg(format!("-i{number}")).arg(path));
            assert!(i.contains(&format!("Partition name: '{name}'")), "{i}");
            let shown: String = name.chars().take(19).collect();
            assert!(p.contains(&shown), "{p}");
        }
    }

    #[test]
    fn sgdisk_accepts_our_tables() {
        for len in [64 * MIB, 10 << 30] {
            let f = sparse(len);
            let lun = LunFile::open(f.path()).unwrap();
            let total = len / 512;
            let mut g = Gpt::new(512, total, guid(5));
            g.add_partition(2048, 2048, LINUX_FS, guid(1), "alpha")
                .unwrap();
            g.add_partition(4096, 2048, LINUX_FS, guid(2), "beta-volume")
                .unwrap();
            // One at the very end of the usable space.
            let (first, last) = *g.free_extents(2048).last().unwrap();
            g.partitions.push(part(200, first, last, &"z".repeat(36)));
            write(&lun, &g).unwrap();
            let z = "z".repeat(36);
            sgdisk_accepts(f.path(), &[(1, "alpha"), (2, "beta-volume"), (200, &z)]);
            assert_eq!(read(&lun).unwrap().gpt, g);
        }
    }

    #[test]
    fn reads_sgdisk_tables() {
        let f = sparse(64 * MIB);
        run(Command::new(SGDISK)
            .args([
                "-o",
                "-n",
                "1:2048:+1M",
                "-c",
                "1:hello",
                "-n",
                "3:8192:+2M",
            ])
            .arg(f.path()));
        let lun = LunFile::open(f.path()).unwrap();
        let r = read(&lun).unwrap();
        assert!(r.primary_valid && r.backup_valid);
        let g = r.gpt;
        assert_eq!(g.entry_count, 128);
        assert_eq!(g.total_sectors, 64 * MIB / 512);
        assert_eq!(g.partitions.len(), 2);
        let p = g.partition(1).unwrap();
        assert_eq!((p.first_lba, p.last_lba), (2048, 2048 + 2047));
        assert_eq!((p.name.as_str(), p.type_guid), ("hello", LINUX_FS));
        assert_eq!(g.partition(3).unwrap().first_lba, 8192);
        assert!(matches!(probe(&lun).unwrap(), Contents::Gpt(_)));

        // Rewriting it (same 128-entry layout) keeps sgdisk happy.
        let mut g2 = g.clone();
        g2.partitions[0].name = "renamed".into();
        write(&lun, &g2).unwrap();
        sgdisk_accepts(f.path(), &[(1, "renamed")]);
        assert_eq!(read(&lun).unwrap().gpt, g2);
    }

    #[test]
    fn probe_real_filesystems() {
        let tools: &[(&str, &[&str], &str)] = &[
            ("/usr/sbin/mkfs.ext4", &["-q", "-F"], "ext4 filesystem"),
            ("/usr/sbin/mkswap", &[], "swap space"),
            (
                "/usr/sbin/mkfs.ocfs2",
                &["-q", "-F", "-M", "local", "-b", "4096"],
                "OCFS2 filesystem",
            ),
        ];
        for (tool, args, want) in tools {
            if !Path::new(tool).exists() {
                continue;
            }
            let f = sparse(64 * MIB);
            run(Command::new(tool).args(*args).arg(f.path()));
            let lun = LunFile::open(f.path()).unwrap();
            match probe(&lun).unwrap() {
                Contents::Other(s) => assert_eq!(s, *want),
                _ => panic!("{tool}: not Other"),
            }
        }
    }

    /// The same checks on loop devices, including 4096-byte sectors; needs
    /// root, so only with OCFS2_CSI_LOOP_TESTS=1.
    #[test]
    fn sgdisk_on_block_devices() {
        use super::super::lun_io::tests::{loop_attach, loop_detach};
        if std::env::var("OCFS2_CSI_LOOP_TESTS").as_deref() != Ok("1") {
            return;
        }
        for ss in [512u64, 4096] {
            let f = sparse(64 * MIB);
            let dev = loop_attach(f.path(), ss);
            let result = std::panic::catch_unwind(|| {
                let lun = LunFile::open(Path::new(&dev)).unwrap();
                assert_eq!(lun.sector_size(), ss);
                let g = sample(ss, 64 * MIB / ss, 0);
                write(&lun, &g).unwrap();
                sgdisk_accepts(
                    Path::new(&dev),
                    &[(2, "ñandú-vol"), (ENTRY_COUNT, "last slot")],
                );
                assert_eq!(read(&lun).unwrap().gpt, g);
            });
            loop_detach(&dev);
            result.unwrap();
        }
    }
}
