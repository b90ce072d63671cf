//! The LUN's writer lease: one sector in the gap between the GPT's entry
//! array and the first partition (which starts at 1 MiB), saying which
//! controller process may change the partition table, since when (its
//! generation) and that it is still alive (a counter it advances).
//!
//! It is a delta lease in sanlock's sense: nobody compares clocks. A
//! contender that sees the same owner, generation and counter for longer
//! than the owner's declared lease time takes the lease over with the next
//! generation; the owner stops writing the table well before that time has
//! passed since its last renewal. The protocol lives in `controller::writer`; this
//! module only encodes, decodes, reads and writes the sector.

use super::lun_io::BlockIo;
use std::io;
use uuid::Uuid;

/// Byte offset of the lease sector: past the GPT's 256 entries for either
/// sector size (they end by 34 KiB with 512-byte sectors, 40 KiB with
/// 4 KiB ones) and below the first partition at 1 MiB. 4 KiB-aligned, so it
/// is one sector of any logical sector size.
pub const LEASE_OFFSET: u64 = 768 << 10;

// Past 256 entries of 128 bytes after the header for either sector size,
// a whole sector of either, and below 1 MiB, where partitions start.
const _: () = assert!(
    2 * 4096 + 256 * 128 <= LEASE_OFFSET
        && LEASE_OFFSET.is_multiple_of(4096)
        && LEASE_OFFSET + 4096 <= 1 << 20
);

const MAGIC: &[u8; 12] = b"OCFS2CSIWRTL";
/// Version 2 added `handed_to` in the name's last 16 bytes; version 1
/// sectors (a 64-byte name, nobody handed to) still read.
const VERSION: u32 = 2;
/// Bytes covered by the CRC (everything before it).
const BODY: usize = 120;
const NAME_BYTES: usize = 48;
const NAME_BYTES_V1: usize = 64;
const HANDED_TO: usize = 56 + NAME_BYTES;

/// What the lease sector says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The holding process (a random UUID per controller process).
    pub owner: Uuid,
    /// Raised by one at each takeover; every table write carries it.
    pub generation: u64,
    /// Advanced by the owner at each renewal: the heartbeat contenders watch.
    pub counter: u64,
    /// How long contenders must see the counter stand still before they
    /// may take over, in milliseconds (the owner's setting).
    pub lease_ms: u32,
    /// Given up on purpose (a clean shutdown, a handover): contenders may
    /// take it at once.
    pub released: bool,
    /// Released for this process only (a handover on its request); nil
    /// for anyone. Others wait the lease time, as for a silent holder.
    pub handed_to: Uuid,
    /// Who the owner is, for people: host or pod name and PID.
    pub owner_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the writer lease sector at byte {LEASE_OFFSET} is not ours (bad magic or version)")]
    Foreign,
    #[error("the writer lease sector at byte {LEASE_OFFSET} fails its CRC (torn write?)")]
    Crc,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Lease {
    /// The sector's bytes (one logical sector of `sector_size`).
    pub fn encode(&self, sector_size: u64) -> Vec<u8> {
        let mut s = new_sector(sector_size, MAGIC, VERSION);
        s[16..32].copy_from_slice(self.owner.as_bytes());
        s[32..40].copy_from_slice(&self.generation.to_le_bytes());
        s[40..48].copy_from_slice(&self.counter.to_le_bytes());
        s[48..52].copy_from_slice(&self.lease_ms.to_le_bytes());
        s[52..56].copy_from_slice(&u32::from(self.released).to_le_bytes());
        put_name(&mut s, &self.owner_name, NAME_BYTES);
        s[HANDED_TO..HANDED_TO + 16].copy_from_slice(self.handed_to.as_bytes());
        seal(s)
    }

    /// Whether `me` may take it at once: released for anyone, or for `me`.
    pub fn free_for(&self, me: &Uuid) -> bool {
        self.released && (self.handed_to.is_nil() || self.handed_to == *me)
    }

    /// None for an all-zero sector (no lease was ever written).
    pub fn decode(s: &[u8]) -> Result<Option<Lease>, LeaseError> {
        let Some(version) = opened(s, MAGIC, &[1, VERSION])? else {
            return Ok(None);
        };
        let (name_bytes, handed_to) = match version {
            1 => (NAME_BYTES_V1, Uuid::nil()),
            _ => (
                NAME_BYTES,
                Uuid::from_slice(&s[HANDED_TO..HANDED_TO + 16]).expect("16 bytes"),
            ),
        };
        Ok(Some(Lease {
            handed_to,
            owner: Uuid::from_slice(&s[16..32]).expect("16 bytes"),
            generation: u64_at(s, 32),
            counter: u64_at(s, 40),
            lease_ms: u32_at(s, 48),
            released: u32_at(s, 52) & 1 != 0,
            owner_name: name_at(s, name_bytes),
        }))
    }
}

/// Reads the lease sector with the device's own I/O (direct on a LUN:
/// another host writes it).
pub fn read(io: &dyn BlockIo) -> Result<Option<Lease>, LeaseError> {
    Lease::decode(&read_sector(io, LEASE_OFFSET)?)
}

/// Writes the lease sector and makes it durable: one sector, which the
/// storage writes whole or not at all.
pub fn write(io: &dyn BlockIo, lease: &Lease) -> Result<(), LeaseError> {
    write_sector(io, LEASE_OFFSET, &lease.encode(io.sector_size()))
}

/// Byte offset of the handover request sector, right after the lease's:
/// a standby controller that was asked for a change writes it, and the
/// holder, when idle, releases the lease for it (`controller::writer`).
/// Only requesters write it, so it never races the holder's renewals.
pub const REQUEST_OFFSET: u64 = LEASE_OFFSET + 4096;

const _: () = assert!(REQUEST_OFFSET + 4096 <= 1 << 20);

const REQUEST_MAGIC: &[u8; 12] = b"OCFS2CSIWRTQ";
const REQUEST_VERSION: u32 = 1;

/// A standby's request for the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The requesting process (its lease owner UUID).
    pub requester: Uuid,
    /// The holder's generation it asks to give up: a request about an
    /// earlier holder means nothing to a later one.
    pub generation: u64,
    pub requester_name: String,
}

impl Request {
    pub fn encode(&self, sector_size: u64) -> Vec<u8> {
        let mut s = new_sector(sector_size, REQUEST_MAGIC, REQUEST_VERSION);
        s[16..32].copy_from_slice(self.requester.as_bytes());
        s[32..40].copy_from_slice(&self.generation.to_le_bytes());
        put_name(&mut s, &self.requester_name, NAME_BYTES_V1);
        seal(s)
    }

    /// None for an all-zero sector (never requested).
    pub fn decode(s: &[u8]) -> Result<Option<Request>, LeaseError> {
        if opened(s, REQUEST_MAGIC, &[REQUEST_VERSION])?.is_none() {
            return Ok(None);
        }
        Ok(Some(Request {
            requester: Uuid::from_slice(&s[16..32]).expect("16 bytes"),
            generation: u64_at(s, 32),
            requester_name: name_at(s, NAME_BYTES_V1),
        }))
    }
}

pub fn read_request(io: &dyn BlockIo) -> Result<Option<Request>, LeaseError> {
    Request::decode(&read_sector(io, REQUEST_OFFSET)?)
}

pub fn write_request(io: &dyn BlockIo, request: &Request) -> Result<(), LeaseError> {
    write_sector(io, REQUEST_OFFSET, &request.encode(io.sector_size()))
}

// The layout both sectors share: magic (12 bytes), version, fields, a
// NUL-padded name at 56, a CRC of the first BODY bytes at BODY.

fn new_sector(sector_size: u64, magic: &[u8; 12], version: u32) -> Vec<u8> {
    let mut s = vec![0u8; sector_size as usize];
    s[0..12].copy_from_slice(magic);
    s[12..16].copy_from_slice(&version.to_le_bytes());
    s
}

fn put_name(s: &mut [u8], name: &str, max: usize) {
    let name = name.as_bytes();
    let n = name.len().min(max);
    s[56..56 + n].copy_from_slice(&name[..n]);
}

fn name_at(s: &[u8], max: usize) -> String {
    let name = &s[56..56 + max];
    let end = name.iter().position(|&b| b == 0).unwrap_or(max);
    String::from_utf8_lossy(&name[..end]).into_owned()
}

fn seal(mut s: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&s[..BODY]);
    s[BODY..BODY + 4].copy_from_slice(&crc.to_le_bytes());
    s
}

fn u32_at(s: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes"))
}

fn u64_at(s: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"))
}

/// The sector's version; None for an all-zero sector (never written).
fn opened(s: &[u8], magic: &[u8; 12], versions: &[u32]) -> Result<Option<u32>, LeaseError> {
    if s.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    if s.len() < BODY + 4 || &s[0..12] != magic || !versions.contains(&u32_at(s, 12)) {
        return Err(LeaseError::Foreign);
    }
    if crc32fast::hash(&s[..BODY]) != u32_at(s, BODY) {
        return Err(LeaseError::Crc);
    }
    Ok(Some(u32_at(s, 12)))
}

fn read_sector(io: &dyn BlockIo, offset: u64) -> Result<Vec<u8>, LeaseError> {
    let mut s = vec![0u8; io.sector_size() as usize];
    io.read_at(offset, &mut s)?;
    Ok(s)
}

fn write_sector(io: &dyn BlockIo, offset: u64, sector: &[u8]) -> Result<(), LeaseError> {
    io.write_at(offset, sector)?;
    io.sync()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::lun_io::MemIo;
    use super::*;

    fn lease() -> Lease {
        Lease {
            owner: Uuid::from_u128(0x1234),
            generation: 7,
            counter: 99,
            lease_ms: 20_000,
            released: false,
            handed_to: Uuid::nil(),
            owner_name: "ocfs2-csi-controller-5d8f pid 1".into(),
        }
    }

    #[test]
    fn round_trips_on_both_sector_sizes() {
        for ss in [512, 4096] {
            let io = MemIo::new(ss, 2 << 20);
            assert_eq!(read(&io).unwrap(), None);
            write(&io, &lease()).unwrap();
            assert_eq!(read(&io).unwrap(), Some(lease()));
            let released = Lease {
                released: true,
                ..lease()
            };
            write(&io, &released).unwrap();
            assert_eq!(read(&io).unwrap(), Some(released));
        }
    }

    #[test]
    fn requests_round_trip_apart_from_the_lease() {
        let io = MemIo::new(512, 2 << 20);
        assert_eq!(read_request(&io).unwrap(), None);
        let r = Request {
            requester: Uuid::from_u128(9),
            generation: 3,
            requester_name: "standby pid 2".into(),
        };
        write(&io, &lease()).unwrap();
        write_request(&io, &r).unwrap();
        assert_eq!(read_request(&io).unwrap(), Some(r));
        assert_eq!(read(&io).unwrap(), Some(lease()));
        assert!(matches!(
            Lease::decode(&lease().encode(512)[..]).map(|_| ()),
            Ok(())
        ));
        let mut s = vec![0u8; 512];
        io.read_at(REQUEST_OFFSET, &mut s).unwrap();
        assert!(Lease::decode(&s).is_err(), "a request is not a lease");
    }

    #[test]
    fn a_torn_or_foreign_sector_is_an_error_not_a_free_lease() {
        let mut s = lease().encode(512);
        s[40] ^= 1;
        assert!(matches!(Lease::decode(&s), Err(LeaseError::Crc)));
        let mut s = lease().encode(512);
        s[0] = b'X';
        assert!(matches!(Lease::decode(&s), Err(LeaseError::Foreign)));
    }
}
