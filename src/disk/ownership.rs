//! Which cluster a LUN belongs to: one sector in the gap between the GPT's
//! entry array and the first partition, written when the LUN is
//! initialised (or when a LUN initialised before stamps existed is first
//! opened) and never changed afterwards.
//!
//! The o2cb cluster name cannot say it: it is the same default string in
//! every installation, so a LUN zoned to two Kubernetes clusters by mistake
//! would be taken by both, each heartbeating and mounting on its own, which
//! corrupts every volume on it. The cluster ID is unique per installation
//! (the chart uses the UID of the cluster's kube-system namespace); a
//! controller or node plugin given another one refuses the LUN, naming both.

use super::lun_io::BlockIo;
use std::io;
use uuid::Uuid;

/// Byte offset of the ownership sector: like the writer lease's (768 KiB),
/// past the GPT entries for either sector size and below 1 MiB, and a whole
/// sector of either.
pub const OWNERSHIP_OFFSET: u64 = 512 << 10;

const _: () = assert!(
    2 * 4096 + 256 * 128 <= OWNERSHIP_OFFSET
        && OWNERSHIP_OFFSET.is_multiple_of(4096)
        && OWNERSHIP_OFFSET + 4096 <= super::lease::LEASE_OFFSET
);

const MAGIC: &[u8; 12] = b"OCFS2CSIOWNR";
const VERSION: u32 = 1;
/// Longest cluster ID, in bytes (a UID is 36; room for operators' names).
pub const ID_BYTES: usize = 128;
const NAME_BYTES: usize = 16;
const BY_BYTES: usize = 64;
/// Bytes covered by the CRC (everything before it).
const BODY: usize = 16 + 16 + 8 + ID_BYTES + NAME_BYTES + BY_BYTES;

/// What the ownership sector says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The installation's cluster ID (`--cluster-id`).
    pub cluster_id: String,
    /// The o2cb cluster name it ran then, for people.
    pub cluster_name: String,
    /// The disk GUID of the table the stamp was written with: a stamp is
    /// about that table, not about whatever a LUN holds later.
    pub disk_guid: Uuid,
    /// Seconds since the epoch when it was written.
    pub stamped_at: u64,
    /// Who wrote it (pod or host name and PID), for people.
    pub stamped_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error(
        "the ownership sector at byte {OWNERSHIP_OFFSET} is not ocfs2-csi's (bad magic or version)"
    )]
    Foreign,
    #[error("the ownership sector at byte {OWNERSHIP_OFFSET} fails its CRC (torn write?)")]
    Crc,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Whether `id` can be a cluster ID: 1 to 128 printable ASCII characters
/// without spaces (it is compared byte for byte and printed in errors).
pub fn validate_cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "cluster ID {id:?} must be 1 to {ID_BYTES} printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

fn put_str(s: &mut [u8], at: usize, max: usize, value: &str) {
    let b = value.as_bytes();
    let n = b.len().min(max);
    s[at..at + n].copy_from_slice(&b[..n]);
}

fn get_str(s: &[u8], at: usize, max: usize) -> String {
    let field = &s[at..at + max];
    let end = field.iter().position(|&b| b == 0).unwrap_or(max);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl Ownership {
    /// The sector's bytes (one logical sector of `sector_size`).
    pub fn encode(&self, sector_size: u64) -> Vec<u8> {
        let mut s = vec![0u8; sector_size as usize];
        s[0..12].copy_from_slice(MAGIC);
        s[12..16].copy_from_slice(&VERSION.to_le_bytes());
        s[16..32].copy_from_slice(self.disk_guid.as_bytes());
        s[32..40].copy_from_slice(&self.stamped_at.to_le_bytes());
        let mut at = 40;
        put_str(&mut s, at, ID_BYTES, &self.cluster_id);
        at += ID_BYTES;
        put_str(&mut s, at, NAME_BYTES, &self.cluster_name);
        at += NAME_BYTES;
        put_str(&mut s, at, BY_BYTES, &self.stamped_by);
        let crc = crc32fast::hash(&s[..BODY]);
        s[BODY..BODY + 4].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// None for an all-zero sector (never stamped).
    pub fn decode(s: &[u8]) -> Result<Option<Ownership>, OwnershipError> {
        if s.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if s.len() < BODY + 4 || &s[0..12] != MAGIC || s[12..16] != VERSION.to_le_bytes() {
            return Err(OwnershipError::Foreign);
        }
        let crc = u32::from_le_bytes(s[BODY..BODY + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&s[..BODY]) != crc {
            return Err(OwnershipError::Crc);
        }
        let at = 40;
        Ok(Some(Ownership {
            disk_guid: Uuid::from_slice(&s[16..32]).expect("16 bytes"),
            stamped_at: u64::from_le_bytes(s[32..40].try_into().expect("8 bytes")),
            cluster_id: get_str(s, at, ID_BYTES),
            cluster_name: get_str(s, at + ID_BYTES, NAME_BYTES),
            stamped_by: get_str(s, at + ID_BYTES + NAME_BYTES, BY_BYTES),
        }))
    }

    /// One line for errors and logs.
    pub fn describe(&self) -> String {
        format!(
            "cluster ID {:?} (o2cb cluster {:?}, stamped by {} at {} s since the epoch)",
            self.cluster_id, self.cluster_name, self.stamped_by, self.stamped_at
        )
    }
}

/// Reads the ownership sector with the device's own I/O (direct on a LUN).
pub fn read(io: &dyn BlockIo) -> Result<Option<Ownership>, OwnershipError> {
    let mut s = vec![0u8; io.sector_size() as usize];
    io.read_at(OWNERSHIP_OFFSET, &mut s)?;
    Ownership::decode(&s)
}

/// Writes the ownership sector and makes it durable (one sector: whole or
/// not at all).
pub fn write(io: &dyn BlockIo, ownership: &Ownership) -> Result<(), OwnershipError> {
    io.write_at(OWNERSHIP_OFFSET, &ownership.encode(io.sector_size()))?;
    io.sync()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::lun_io::MemIo;
    use super::*;

    fn stamp() -> Ownership {
        Ownership {
            cluster_id: "6f1c2a9e-1b7d-4c1e-9f57-0d4b0c7f3a11".into(),
            cluster_name: "ocfs2csi".into(),
            disk_guid: Uuid::from_u128(0xfeed),
            stamped_at: 1_790_000_000,
            stamped_by: "ocfs2-csi-controller-5d8f pid 1".into(),
        }
    }

    #[test]
    fn round_trips_on_both_sector_sizes() {
        for ss in [512, 4096] {
            let io = MemIo::new(ss, 2 << 20);
            assert_eq!(read(&io).unwrap(), None);
            write(&io, &stamp()).unwrap();
            assert_eq!(read(&io).unwrap(), Some(stamp()));
        }
    }

    #[test]
    fn the_longest_id_fits_and_a_torn_or_foreign_sector_is_an_error() {
        let long = Ownership {
            cluster_id: "x".repeat(ID_BYTES),
            ..stamp()
        };
        assert_eq!(Ownership::decode(&long.encode(512)).unwrap(), Some(long));
        let mut s = stamp().encode(512);
        s[50] ^= 1;
        assert!(matches!(Ownership::decode(&s), Err(OwnershipError::Crc)));
        let mut s = stamp().encode(512);
        s[0] = b'X';
        assert!(matches!(
            Ownership::decode(&s),
            Err(OwnershipError::Foreign)
        ));
    }

    #[test]
    fn cluster_ids_are_printable_and_bounded() {
        assert!(validate_cluster_id("6f1c2a9e-1b7d-4c1e-9f57-0d4b0c7f3a11").is_ok());
        assert!(validate_cluster_id("prod/eu-1").is_ok());
        for bad in ["", "has space", "tab\t", &"x".repeat(ID_BYTES + 1), "é"] {
            assert!(validate_cluster_id(bad).is_err(), "{bad:?}");
        }
    }
}
