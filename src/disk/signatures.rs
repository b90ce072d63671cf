//! Recognising what a device (or a byte range of it) holds by its
//! signatures, and scanning a LUN for signatures at our partition alignment:
//! a LUN whose partition table was zeroed still holds its volumes, and only
//! a scan of where they would start tells it from a blank one.

use super::lun_io::BlockIo;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Whether every byte is zero. Checked a word at a time: copies test every
/// 1 MiB step with it, and byte by byte that costs a debug build seconds
/// per GiB.
pub fn is_zero(b: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u128.
    let (head, words, tail) = unsafe { b.align_to::<u128>() };
    head.iter().all(|&x| x == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&x| x == 0)
}

pub fn at(b: &[u8], offset: usize, magic: &[u8]) -> bool {
    b.get(offset..offset + magic.len()) == Some(magic)
}

/// Recognises filesystems and volume formats by the bytes they start
/// with (`head`: from the start of the filesystem on).
pub fn identify(head: &[u8]) -> Option<String> {
    let found = |s: &str| Some(s.to_string());
    if at(head, 0, b"XFSB") {
        return found("XFS filesystem");
    }
    if at(head, 0, b"LUKS\xba\xbe") {
        return found("LUKS encrypted volume");
    }
    // LVM2 puts its label in one of the first four 512-byte sectors.
    if (0..4).any(|s| at(head, s * 512, b"LABELONE")) {
        return found("LVM2 physical volume");
    }
    // OCFS2's superblock is block 2 of the filesystem's own block size.
    if [512, 1024, 2048, 4096]
        .iter()
        .any(|bs| at(head, 2 * bs, b"OCFSV2"))
    {
        return found("OCFS2 filesystem");
    }
    if at(head, 4086, b"SWAPSPACE2") || at(head, 4086, b"SWAP-SPACE") {
        return found("swap space");
    }
    if head.len() >= 2048 && at(head, 1080, &[0x53, 0xEF]) {
        return found(ext_kind(&head[1024..2048]));
    }
    if at(head, 65536 + 64, b"_BHRfS_M") {
        return found("btrfs filesystem");
    }
    if at(head, 510, &[0x55, 0xAA]) {
        if at(head, 3, b"NTFS    ") {
            return found("NTFS filesystem");
        }
        if at(head, 3, b"EXFAT   ") {
            return found("exFAT filesystem");
        }
        if at(head, 54, b"FAT1") || at(head, 82, b"FAT32") {
            return found("FAT filesystem");
        }
    }
    None
}

/// Tells ext2/3/4 apart by feature flags in the superblock.
fn ext_kind(sb: &[u8]) -> &'static str {
    let compat = le_u32(sb, 0x5C);
    let incompat = le_u32(sb, 0x60);
    let ro_compat = le_u32(sb, 0x64);
    // extents | 64bit | flex_bg; huge_file | gdt_csum | dir_nlink |
    // extra_isize | metadata_csum
    if incompat & (0x40 | 0x80 | 0x200) != 0 || ro_compat & (0x8 | 0x10 | 0x20 | 0x40 | 0x400) != 0
    {
        "ext4 filesystem"
    } else if compat & 0x4 != 0 {
        "ext3 filesystem"
    } else {
        "ext2 filesystem"
    }
}

/// Bytes read at each aligned offset: every signature `identify` knows
/// lies in them (OCFS2's superblock is block 2, at most 8 KiB in), except
/// btrfs's at 64 KiB, which a scan does not look for.
pub const SCAN_READ: usize = 12 * 1024;

/// A signature found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Byte offset on the LUN where the filesystem (or format) starts.
    pub offset: u64,
    pub what: String,
    /// The [`SCAN_READ`] bytes read there, for a closer look (an OCFS2
    /// superblock's label and UUID, say).
    pub head: Vec<u8>,
}

/// How often [`scan`] reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Reads a scan keeps in flight. A SAN answers queued reads about as fast
/// as one, and a blank multi-TiB LUN is a million aligned offsets: read one
/// at a time, each a round trip, that is minutes before the first volume.
const SCAN_WORKERS: u64 = 8;
/// Aligned offsets a worker takes at a time (read in order).
const SCAN_CHUNK: u64 = 64;

/// Looks for signatures at every multiple of `step` in `[from, to)`; stops
/// after `limit` finds and returns the first `limit` by offset, in order.
/// `progress(done, total)` is called every few seconds on long scans
/// (bytes of the range covered so far). Reads only, [`SCAN_WORKERS`] at a
/// time; the first read error ends the scan.
pub fn scan(
    io: &dyn BlockIo,
    from: u64,
    to: u64,
    step: u64,
    limit: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<Vec<Found>> {
    let ss = io.sector_size();
    assert!(
        step.is_multiple_of(ss) && from.is_multiple_of(step),
        "scan steps on sector boundaries"
    );
    let to = to.min(io.size_bytes());
    if from >= to || limit == 0 {
        return Ok(Vec::new());
    }
    let points = (to - from).div_ceil(step);
    let chunks = points.div_ceil(SCAN_CHUNK);
    // Chunks are claimed in order and a claimed chunk is always read to its
    // end, so whatever the workers stop on, the chunks read are a prefix of
    // the range: its first `limit` finds are the range's first `limit`.
    let next = AtomicU64::new(0);
    let chunks_done = AtomicU64::new(0);
    let finds = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let found = Mutex::new(Vec::new());
    let failed = Mutex::new(None::<io::Error>);
    let (alive, finished) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        for _ in 0..SCAN_WORKERS.min(chunks) {
            let alive = alive.clone();
            let (next, chunks_done, finds, stop, found, failed) =
                (&next, &chunks_done, &finds, &stop, &found, &failed);
            s.spawn(move || {
                let _alive = alive;
                let mut head = vec![0u8; SCAN_READ];
                while !stop.load(Ordering::Relaxed) {
                    let chunk = next.fetch_add(1, Ordering::Relaxed);
                    if chunk >= chunks {
                        break;
                    }
                    for point in chunk * SCAN_CHUNK..((chunk + 1) * SCAN_CHUNK).min(points) {
                        let offset = from + point * step;
                        let len = (SCAN_READ as u64).min(to - offset) / ss * ss;
                        if len == 0 {
                            continue;
                        }
                        let buf = &mut head[..len as usize];
                        if let Err(e) = io.read_at(offset, buf) {
                            stop.store(true, Ordering::Relaxed);
                            lock(failed).get_or_insert(e);
                            return;
                        }
                        if let Some(what) = identify(buf) {
                            lock(found).push(Found {
                                offset,
                                what,
                                head: buf.to_vec(),
                            });
                            if finds.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    chunks_done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        drop(alive);
        // Every worker holds a sender: the channel closes when the last ends.
        while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(PROGRESS_EVERY) {
            let covered = chunks_done.load(Ordering::Relaxed) * SCAN_CHUNK * step;
            progress(covered.min(to - from), to - from);
        }
    });
    if let Some(e) = lock(&failed).take() {
        return Err(e);
    }
    let mut found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    found.sort_by_key(|f| f.offset);
    found.truncate(limit);
    Ok(found)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::lun_io::MemIo;
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Writes one sector holding `magic` at `offset` (MemIo takes whole
    /// sectors, as O_DIRECT does).
    fn put(io: &MemIo, offset: u64, magic: &[u8]) {
        let mut sector = vec![0u8; io.sector_size() as usize];
        sector[..magic.len()].copy_from_slice(magic);
        io.write_at(offset, &sector).unwrap();
    }

    fn ocfs2_at(io: &MemIo, offset: u64) {
        put(io, offset + 2 * 4096, b"OCFSV2");
    }

    #[test]
    fn finds_signatures_only_at_the_alignment() {
        let io = MemIo::new(512, 16 * MIB);
        ocfs2_at(&io, 3 * MIB);
        put(&io, 7 * MIB, b"XFSB");
        // Not on a MiB boundary: some file's contents, not a volume.
        ocfs2_at(&io, 9 * MIB + 4096);
        let found = scan(&io, MIB, 16 * MIB, MIB, usize::MAX, &mut |_, _| {}).unwrap();
        let got: Vec<_> = found.iter().map(|f| (f.offset, f.what.as_str())).collect();
        assert_eq!(
            got,
            [(3 * MIB, "OCFS2 filesystem"), (7 * MIB, "XFS filesystem")]
        );
        assert_eq!(found[0].head.len(), SCAN_READ);
    }

    #[test]
    fn stops_at_the_limit_and_at_the_end() {
        let io = MemIo::new(4096, 8 * MIB);
        for mib in 1..8 {
            ocfs2_at(&io, mib * MIB);
        }
        assert_eq!(
            scan(&io, MIB, 8 * MIB, MIB, 2, &mut |_, _| {})
                .unwrap()
                .len(),
            2
        );
        // A range ending inside the last step reads only what is there.
        let short = scan(&io, 7 * MIB, 7 * MIB + 8192, MIB, 9, &mut |_, _| {}).unwrap();
        assert!(
            short.is_empty(),
            "the superblock lies past the range: {short:?}"
        );
        assert!(scan(
            &MemIo::new(512, 8 * MIB),
            0,
            8 * MIB,
            MIB,
            9,
            &mut |_, _| {}
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn returns_the_first_finds_by_offset_whatever_the_workers_order() {
        // 4096 offsets (64 chunks), so every worker has several chunks.
        let io = MemIo::new(512, 16 * MIB);
        let at: Vec<u64> = [5, 63, 64, 700, 1900, 2500, 4000]
            .iter()
            .map(|i| i * 4096)
            .collect();
        for &offset in &at {
            put(&io, offset, b"XFSB");
        }
        let all = scan(&io, 0, 16 * MIB, 4096, usize::MAX, &mut |_, _| {}).unwrap();
        assert_eq!(all.iter().map(|f| f.offset).collect::<Vec<_>>(), at);
        for limit in 1..at.len() {
            let some = scan(&io, 0, 16 * MIB, 4096, limit, &mut |_, _| {}).unwrap();
            assert_eq!(
                some.iter().map(|f| f.offset).collect::<Vec<_>>(),
                at[..limit],
                "limit {limit}"
            );
        }
    }

    /// Fails every read that covers `bad`.
    struct BadSector {
        io: MemIo,
        bad: u64,
    }

    impl BlockIo for BadSector {
        fn sector_size(&self) -> u64 {
            self.io.sector_size()
        }
        fn size_bytes(&self) -> u64 {
            self.io.size_bytes()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            if (offset..offset + buf.len() as u64).contains(&self.bad) {
                return Err(io::Error::other("medium error"));
            }
            self.io.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
            self.io.write_at(offset, buf)
        }
        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
            self.io.discard(offset, len)
        }
    }

    #[test]
    fn a_read_error_ends_the_scan_with_it() {
        let io = BadSector {
            io: MemIo::new(512, 16 * MIB),
            bad: 3000 * 4096,
        };
        put(&io.io, 4096, b"XFSB");
        let e = scan(&io, 0, 16 * MIB, 4096, usize::MAX, &mut |_, _| {}).unwrap_err();
        assert_eq!(e.to_string(), "medium error");
    }
}
