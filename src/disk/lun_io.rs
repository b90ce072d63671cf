//! Sector-aligned I/O on a shared LUN.
//!
//! Several hosts see the same LUN, so reads must not be served from this
//! host's page cache and writes must not linger in it: `LunFile` uses
//! `O_DIRECT` and an aligned bounce buffer, so callers can pass ordinary
//! slices. `MemIo` and `FailingIo` are in-memory stand-ins for tests,
//! including crash simulation.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Random-access, sector-granular access to a disk-like object.
///
/// Offsets and lengths passed to `read_at`, `write_at` and `discard` must be
/// multiples of `sector_size()` and lie within `size_bytes()`; otherwise the
/// call fails with `io::ErrorKind::InvalidInput` and does nothing.
pub trait BlockIo: Send + Sync {
    /// Logical sector size in bytes (512 or 4096 in practice).
    fn sector_size(&self) -> u64;
    /// Total size in bytes (a multiple of `sector_size()`).
    fn size_bytes(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`. Not durable until `sync()`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable before returning (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Tells the storage the range is unused. The contents read back
    /// afterwards are unspecified for block devices (zeros for files and
    /// `MemIo`). Fails with `io::ErrorKind::Unsupported` when the storage
    /// cannot discard.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes the range read back as zeros, durably once `sync()` returns.
    /// The default writes zeros; devices override it with what the
    /// storage does faster and still guarantees (BLKZEROOUT: the kernel
    /// uses the device's WRITE ZEROES when it has one, else writes zero
    /// pages itself).
    fn zero_out(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zeros(self, offset, len)
    }
    /// Why the device counts as failing (repeated I/O errors), if it does;
    /// see `disk::reopen`.
    fn failing(&self) -> Option<String> {
        None
    }
    /// Asks the device for its size again (after the LUN grew and this
    /// host rescanned it) and returns it; `size_bytes` answers it from then
    /// on. Devices whose size cannot change answer the size they have.
    fn refresh_size(&self) -> io::Result<u64> {
        Ok(self.size_bytes())
    }
}

/// Alignment of the bounce buffer: `O_DIRECT` needs memory aligned to the
/// logical block size, and 4096 covers every sector size we support.
const BUF_ALIGN: usize = 4096;
/// Largest chunk moved per syscall, so a big request does not allocate a
/// bounce buffer of its own size.
const MAX_CHUNK: usize = 1 << 20;

/// Zeros written over the range, a chunk at a time.
fn write_zeros<I: BlockIo + ?Sized>(io: &I, offset: u64, len: u64) -> io::Result<()> {
    check_range(io.sector_size(), io.size_bytes(), offset, len)?;
    let zeros = vec![0u8; MAX_CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MAX_CHUNK as u64);
        io.write_at(offset + done, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// `check_range` against `io`'s sector size and current size.
fn check(io: &impl BlockIo, offset: u64, len: u64) -> io::Result<()> {
    check_range(io.sector_size(), io.size_bytes(), offset, len)
}

/// Checks the `BlockIo` contract for a request, shared by all implementations.
fn check_range(sector: u64, size: u64, offset: u64, len: u64) -> io::Result<()> {
    if sector == 0 || !offset.is_multiple_of(sector) || !len.is_multiple_of(sector) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("offset {offset} / length {len} not aligned to {sector}-byte sectors"),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} beyond device end {size}"),
        )),
    }
}

/// Heap buffer aligned to `BUF_ALIGN`, zero-initialised. Large transfers
/// (a clone's copy) hand one to `read_at`/`write_at`, which then go to the
/// device in one call with no bounce copy.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer owns its allocation alone, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        // Zero-sized allocations are not allowed; round up to one page.
        let layout = Layout::from_size_align(len.max(1).next_multiple_of(BUF_ALIGN), BUF_ALIGN)
            .expect("bounce buffer layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    pub fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.layout.size());
        // SAFETY: the allocation is live, initialised (zeroed) and at least
        // `len` bytes; `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

/// Whether `buf` may go to an `O_DIRECT` file as it is (its length and
/// offset are checked against the sector size apart).
fn is_aligned(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(BUF_ALIGN)
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

mod ioctls {
    // Linux <linux/fs.h>: BLKSSZGET = _IO(0x12, 104) returning int,
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t), BLKDISCARD = _IO(0x12, 119)
    // taking a u64[2] {offset, length}.
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    // BLKZEROOUT = _IO(0x12, 127), the same u64[2].
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

/// Maps the "this storage cannot do that" errnos to `ErrorKind::Unsupported`
/// so callers can treat discard as best effort without matching errnos.
fn discard_error(errno: nix::errno::Errno) -> io::Error {
    match errno {
        nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOTTY => io::Error::new(
            io::ErrorKind::Unsupported,
            format!("discard not supported: {errno}"),
        ),
        other => io::Error::from(other),
    }
}

/// A LUN (block device) or an image file opened for direct I/O.
#[derive(Debug)]
pub struct LunFile {
    file: File,
    path: PathBuf,
    block_device: bool,
    direct: bool,
    sector_size: u64,
    /// Changes only through `refresh_size`.
    size_bytes: AtomicU64,
}

impl LunFile {
    /// Opens `path` read-write with `O_DIRECT`.
    ///
    /// If the filesystem refuses `O_DIRECT` (EINVAL, e.g. older tmpfs) the
    /// file is opened normally instead and every write is followed by
    /// fdatasync; reads may then come from the page cache, which is only
    /// acceptable for files that no other host writes (test images).
    /// `is_direct()` tells which mode is in effect.
    pub fn open(path: &Path) -> io::Result<LunFile> {
        Self::open_mode(path, true)
    }

    /// Opens `path` for reading only (with `O_DIRECT` where it works): a
    /// look at a LUN that must not change it; writes fail with EBADF.
    pub fn open_read_only(path: &Path) -> io::Result<LunFile> {
        Self::open_with(path, true, false)
    }

    fn open_mode(path: &Path, try_direct: bool) -> io::Result<LunFile> {
        Self::open_with(path, try_direct, true)
    }

    fn open_with(path: &Path, try_direct: bool, write: bool) -> io::Result<LunFile> {
        let mut direct = try_direct;
        let file = if try_direct {
            match Self::open_file(path, libc::O_DIRECT, write) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    direct = false;
                    Self::open_file(path, 0, write)?
                }
                other => other?,
            }
        } else {
            Self::open_file(path, 0, write)?
        };
        let file_type = file.metadata()?.file_type();
        let (block_device, sector_size, size_bytes) = if file_type.is_block_device() {
            let mut ss: libc::c_int = 0;
            // SAFETY: fd is open for the duration of the call and the
            // out-pointer points to the type the ioctl writes.
            unsafe {
                ioctls::blksszget(file.as_raw_fd(), &mut ss).map_err(io::Error::from)?;
            }
            (true, ss as u64, device_bytes(&file, true)?)
        } else if file_type.is_file() {
            // Images have no sector size of their own; 512 is what
            // partitioning tools assume for files.
            (false, 512, device_bytes(&file, false)?)
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is neither a block device nor a file", path.display()),
            ));
        };
        if sector_size < 512 || !sector_size.is_power_of_two() || sector_size > BUF_ALIGN as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: unsupported sector size {sector_size}", path.display()),
            ));
        }
        Ok(LunFile {
            file,
            path: path.to_path_buf(),
            block_device,
            direct,
            sector_size,
            // A trailing partial sector cannot be addressed; ignore it.
            size_bytes: AtomicU64::new(size_bytes - size_bytes % sector_size),
        })
    }

    fn open_file(path: &Path, flags: libc::c_int, write: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(flags)
            .open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Whether `O_DIRECT` is in effect (see `open`).
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

/// The size of an open block device or image file, as the kernel sees it
/// now.
fn device_bytes(file: &File, block_device: bool) -> io::Result<u64> {
    if !block_device {
        return Ok(file.metadata()?.len());
    }
    let mut size: u64 = 0;
    // SAFETY: fd is open for the duration of the call and the out-pointer
    // points to the type the ioctl writes.
    unsafe {
        ioctls::blkgetsize64(file.as_raw_fd(), &mut size).map_err(io::Error::from)?;
    }
    Ok(size)
}

impl BlockIo for LunFile {
    fn sector_size(&self) -> u64 {
        self.sector_size
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Relaxed)
    }

    fn refresh_size(&self) -> io::Result<u64> {
        let bytes = device_bytes(&self.file, self.block_device)?;
        let bytes = bytes - bytes % self.sector_size;
        let old = self.size_bytes.swap(bytes, Ordering::Relaxed);
        if old != bytes {
            tracing::info!(device = %self.path.display(), from = old, to = bytes, "device size changed");
        }
        Ok(bytes)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check(self, offset, buf.len() as u64)?;
        if !self.direct || is_aligned(buf) {
            return self.file.read_exact_at(buf, offset);
        }
        let mut bounce = AlignedBuf::new(buf.len().min(MAX_CHUNK));
        for (i, chunk) in buf.chunks_mut(MAX_CHUNK).enumerate() {
            let b = bounce.as_mut_slice(chunk.len());
            self.file
                .read_exact_at(b, offset + (i * MAX_CHUNK) as u64)?;
            chunk.copy_from_slice(b);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        check(self, offset, buf.len() as u64)?;
        if !self.direct {
            self.file.write_all_at(buf, offset)?;
            // Without O_DIRECT the data would sit in the page cache; push it
            // out so the write behaves like a direct one.
            return self.sync();
        }
        if is_aligned(buf) {
            return self.file.write_all_at(buf, offset);
        }
        let mut bounce = AlignedBuf::new(buf.len().min(MAX_CHUNK));
        for (i, chunk) in buf.chunks(MAX_CHUNK).enumerate() {
            let b = bounce.as_mut_slice(chunk.len());
            b.copy_from_slice(chunk);
            self.file.write_all_at(b, offset + (i * MAX_CHUNK) as u64)?;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        // O_DIRECT bypasses the page cache but not the device's volatile
        // write cache; fdatasync issues the flush.
        nix::unistd::fdatasync(&self.file).map_err(io::Error::from)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check(self, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.block_device {
            let range = [offset, len];
            // SAFETY: the fd is open and `range` is the u64[2] BLKDISCARD reads.
            unsafe { ioctls::blkdiscard(self.file.as_raw_fd(), &range) }
                .map(drop)
                .map_err(discard_error)
        } else {
            use nix::fcntl::FallocateFlags;
            let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "range too large");
            nix::fcntl::fallocate(
                &self.file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                libc::off_t::try_from(offset).map_err(|_| too_big())?,
                libc::off_t::try_from(len).map_err(|_| too_big())?,
            )
            .map_err(discard_error)
        }
    }

    fn zero_out(&self, offset: u64, len: u64) -> io::Result<()> {
        check(self, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.block_device {
            let range = [offset, len];
            // SAFETY: the fd is open and `range` is the u64[2] BLKZEROOUT reads.
            return unsafe { ioctls::blkzeroout(self.file.as_raw_fd(), &range) }
                .map(drop)
                .map_err(io::Error::from);
        }
        // An image file: a punched hole reads as zeros.
        match self.discard(offset, len) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => write_zeros(self, offset, len),
            other => other,
        }
    }
}

/// In-memory `BlockIo` for tests. Enforces the same alignment and bounds
/// rules as `LunFile`; `discard` zeroes the range; `sync` does nothing.
#[derive(Debug)]
pub struct MemIo {
    sector_size: u64,
    data: std::sync::Mutex<Vec<u8>>,
}

impl MemIo {
    /// A zero-filled device. Panics unless `size_bytes` is a multiple of
    /// `sector_size`.
    pub fn new(sector_size: u64, size_bytes: u64) -> MemIo {
        let len = usize::try_from(size_bytes).expect("MemIo size fits in memory");
        MemIo::from_bytes(sector_size, vec![0; len])
    }

    /// A device holding `bytes`. Panics unless the length is a multiple of
    /// `sector_size`.
    pub fn from_bytes(sector_size: u64, bytes: Vec<u8>) -> MemIo {
        assert!(sector_size > 0 && (bytes.len() as u64).is_multiple_of(sector_size));
        MemIo {
            sector_size,
            data: std::sync::Mutex::new(bytes),
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Runs `f` on the contents, e.g. to corrupt bytes in a test.
    pub fn with_bytes_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panicking test thread must not hide the data from the others.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn span(offset: u64, len: usize) -> std::ops::Range<usize> {
        // check_range bounded offset+len by the Vec length, so this fits.
        offset as usize..offset as usize + len
    }
}

impl BlockIo for MemIo {
    fn sector_size(&self) -> u64 {
        self.sector_size
    }

    fn size_bytes(&self) -> u64 {
        self.lock().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let data = self.lock();
        check_range(
            self.sector_size,
            data.len() as u64,
            offset,
            buf.len() as u64,
        )?;
        buf.copy_from_slice(&data[Self::span(offset, buf.len())]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut data = self.lock();
        check_range(
            self.sector_size,
            data.len() as u64,
            offset,
            buf.len() as u64,
        )?;
        data[Self::span(offset, buf.len())].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn zero_out(&self, offset: u64, len: u64) -> io::Result<()> {
        // Its discard zeroes.
        self.discard(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut data = self.lock();
        check_range(self.sector_size, data.len() as u64, offset, len)?;
        data[Self::span(offset, len as usize)].fill(0);
        Ok(())
    }
}

/// In-memory `BlockIo` that stores only the chunks ever written, so a test
/// can have LUNs of many GiB (volumes with real layouts) in a few KiB of
/// memory. Clones share the same contents: a test keeps one clone to look
/// at the disk, or to "restart" a controller on it, while another sits
/// behind a `FailingIo`. Same contract as `MemIo`: unwritten and discarded
/// ranges read as zeros, `sync` does nothing.
#[derive(Clone, Debug)]
pub struct SparseIo {
    sector_size: u64,
    /// Shared by clones, like the contents: `grow` is the array growing
    /// the LUN under every host at once.
    size_bytes: std::sync::Arc<AtomicU64>,
    chunks: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, Box<[u8]>>>>,
}

/// Granule of `SparseIo`'s storage.
const SPARSE_CHUNK: u64 = 64 << 10;

impl SparseIo {
    /// A zero-filled device. Panics unless `size_bytes` is a multiple of
    /// `sector_size`.
    pub fn new(sector_size: u64, size_bytes: u64) -> SparseIo {
        assert!(sector_size > 0 && size_bytes.is_multiple_of(sector_size));
        SparseIo {
            sector_size,
            size_bytes: std::sync::Arc::new(AtomicU64::new(size_bytes)),
            chunks: Default::default(),
        }
    }

    /// The LUN grown to `size_bytes` (a multiple of the sector size, not
    /// smaller): the new space reads as zeros.
    pub fn grow(&self, size_bytes: u64) {
        assert!(size_bytes.is_multiple_of(self.sector_size));
        assert!(size_bytes >= self.size_bytes());
        self.size_bytes.store(size_bytes, Ordering::SeqCst);
    }

    /// Bytes of storage in use (whole chunks): shows what a discard freed.
    pub fn allocated_bytes(&self) -> u64 {
        self.lock().len() as u64 * SPARSE_CHUNK
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Box<[u8]>>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f(chunk index, offset in chunk, range of the request)` for
    /// each chunk the request `offset..offset+len` touches.
    fn each_chunk(offset: u64, len: u64, mut f: impl FnMut(u64, usize, std::ops::Range<usize>)) {
        let mut at = offset;
        while at < offset + len {
            let index = at / SPARSE_CHUNK;
            let within = (at % SPARSE_CHUNK) as usize;
            let n = (SPARSE_CHUNK - at % SPARSE_CHUNK).min(offset + len - at);
            let from = (at - offset) as usize;
            f(index, within, from..from + n as usize);
            at += n;
        }
    }
}

impl BlockIo for SparseIo {
    fn sector_size(&self) -> u64 {
        self.sector_size
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::SeqCst)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check(self, offset, buf.len() as u64)?;
        let chunks = self.lock();
        Self::each_chunk(offset, buf.len() as u64, |index, within, part| {
            let n = part.len();
            match chunks.get(&index) {
                Some(c) => buf[part].copy_from_slice(&c[within..within + n]),
                None => buf[part].fill(0),
            }
        });
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        check(self, offset, buf.len() as u64)?;
        let mut chunks = self.lock();
        Self::each_chunk(offset, buf.len() as u64, |index, within, part| {
            let n = part.len();
            let c = chunks
                .entry(index)
                .or_insert_with(|| vec![0; SPARSE_CHUNK as usize].into_boxed_slice());
            c[within..within + n].copy_from_slice(&buf[part]);
        });
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn zero_out(&self, offset: u64, len: u64) -> io::Result<()> {
        // Its discard zeroes.
        self.discard(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check(self, offset, len)?;
        let mut chunks = self.lock();
        let mut partial = Vec::new();
        let first = offset / SPARSE_CHUNK;
        let last = (offset + len).div_ceil(SPARSE_CHUNK);
        // Whole chunks are dropped (without visiting every index of a huge
        // range); the partial ones at either end are zeroed.
        chunks.retain(|&index, _| {
            let start = index * SPARSE_CHUNK;
            let inside = index >= first && index < last;
            let whole = start >= offset && start + SPARSE_CHUNK <= offset + len;
            if inside && !whole {
                partial.push(index);
            }
            !(inside && whole)
        });
        for index in partial {
            let start = index * SPARSE_CHUNK;
            let from = offset.max(start) - start;
            let to = (offset + len).min(start + SPARSE_CHUNK) - start;
            if let Some(c) = chunks.get_mut(&index) {
                c[from as usize..to as usize].fill(0);
            }
        }
        Ok(())
    }
}

/// What `FailingIo` does with mutating calls once its budget is used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Fail every further `write_at`/`discard` with an I/O error
    /// (an error path test: the caller sees the failure).
    Fail,
    /// Report success but drop every further write: the host "crashed" and
    /// nothing more reached the disk. The caller carries on unaware, which is
    /// what lets a test inspect every crash point with one call.
    Drop,
    /// Like `Drop`, but the first dropped write is torn: its first sector
    /// lands, the rest does not (a crash in the middle of a multi-sector
    /// write; single sectors are assumed atomic).
    Tear,
}

/// Wraps a `BlockIo`, letting the first `pass` mutating calls (`write_at`
/// and `discard`) through and then failing or dropping the rest according
/// to `CrashMode`. Reads and `sync` always pass through, so the inner device
/// shows exactly what reached the disk before the simulated crash.
#[derive(Debug)]
pub struct FailingIo<I: BlockIo> {
    inner: I,
    pass: usize,
    mode: CrashMode,
    attempted: AtomicUsize,
}

impl<I: BlockIo> FailingIo<I> {
    pub fn new(inner: I, pass: usize, mode: CrashMode) -> FailingIo<I> {
        FailingIo {
            inner,
            pass,
            mode,
            attempted: AtomicUsize::new(0),
        }
    }

    /// A wrapper that never crashes, for counting the writes of an operation.
    pub fn counting(inner: I) -> FailingIo<I> {
        FailingIo::new(inner, usize::MAX, CrashMode::Fail)
    }

    /// Number of mutating calls made so far, including failed/dropped ones.
    pub fn writes_attempted(&self) -> usize {
        self.attempted.load(Ordering::SeqCst)
    }

    pub fn inner(&self) -> &I {
        &self.inner
    }

    pub fn into_inner(self) -> I {
        self.inner
    }

    /// Takes a slot; returns its 0-based index and whether it is within budget.
    fn take_slot(&self) -> (usize, bool) {
        let n = self.attempted.fetch_add(1, Ordering::SeqCst);
        (n, n < self.pass)
    }

    fn crashed() -> io::Error {
        io::Error::other("simulated write failure")
    }
}

impl<I: BlockIo> BlockIo for FailingIo<I> {
    fn sector_size(&self) -> u64 {
        self.inner.sector_size()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let (n, ok) = self.take_slot();
        if ok {
            return self.inner.write_at(offset, buf);
        }
        match self.mode {
            CrashMode::Fail => Err(Self::crashed()),
            CrashMode::Drop => Ok(()),
            CrashMode::Tear => {
                let ss = self.inner.sector_size() as usize;
                if n == self.pass && buf.len() > ss {
                    self.inner.write_at(offset, &buf[..ss])?;
                }
                Ok(())
            }
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn zero_out(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.take_slot().1 {
            return self.inner.zero_out(offset, len);
        }
        match self.mode {
            CrashMode::Fail => Err(Self::crashed()),
            CrashMode::Drop | CrashMode::Tear => Ok(()),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.take_slot().1 {
            return self.inner.discard(offset, len);
        }
        match self.mode {
            CrashMode::Fail => Err(Self::crashed()),
            CrashMode::Drop | CrashMode::Tear => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn sparse_file(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    fn roundtrip_unaligned(lun: &LunFile) {
        // Slices starting one byte into a Vec are never 4096-aligned, which
        // O_DIRECT would reject without the bounce buffer.
        let data = pattern(8193, 7);
        lun.write_at(4096 * 3, &data[1..]).unwrap();
        let big = pattern(3 * MAX_CHUNK + 4096 + 1, 9);
        lun.write_at(1 << 20, &big[1..]).unwrap();
        lun.sync().unwrap();

        let mut back = vec![0u8; 8193];
        lun.read_at(4096 * 3, &mut back[1..]).unwrap();
        assert_eq!(back[1..], data[1..]);
        let mut back = vec![0u8; big.len()];
        lun.read_at(1 << 20, &mut back[1..]).unwrap();
        assert_eq!(back[1..], big[1..]);
        // Untouched sparse areas read as zeros.
        let mut z = vec![1u8; 4096];
        lun.read_at(0, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
    }

    #[test]
    fn lunfile_direct_io_with_unaligned_buffers() {
        let f = sparse_file(64 << 20);
        let lun = LunFile::open(f.path()).unwrap();
        assert!(!lun.is_block_device());
        assert_eq!(lun.sector_size(), 512);
        assert_eq!(lun.size_bytes(), 64 << 20);
        assert_eq!(lun.path(), f.path());
        roundtrip_unaligned(&lun);
    }

    #[test]
    fn lunfile_direct_io_with_aligned_buffers_in_one_call() {
        let f = sparse_file(64 << 20);
        let lun = LunFile::open(f.path()).unwrap();
        assert!(lun.is_direct());
        let data = pattern(3 * MAX_CHUNK + 4096, 5);
        let mut out = AlignedBuf::new(data.len());
        out.as_mut_slice(data.len()).copy_from_slice(&data);
        lun.write_at(8 << 20, out.as_mut_slice(data.len())).unwrap();
        lun.sync().unwrap();
        let mut back = AlignedBuf::new(data.len());
        lun.read_at(8 << 20, back.as_mut_slice(data.len())).unwrap();
        assert!(back.as_mut_slice(data.len()) == &data[..]);
        // What the bounce path reads back is the same.
        let mut plain = vec![0u8; data.len() + 1];
        lun.read_at(8 << 20, &mut plain[1..]).unwrap();
        assert_eq!(plain[1..], data[..]);
    }

    #[test]
    fn lunfile_buffered_fallback() {
        let f = sparse_file(16 << 20);
        let lun = LunFile::open_mode(f.path(), false).unwrap();
        assert!(!lun.is_direct());
        roundtrip_unaligned(&lun);
    }

    #[test]
    fn lunfile_rejects_misaligned_and_out_of_range() {
        let f = sparse_file(1 << 20);
        let lun = LunFile::open(f.path()).unwrap();
        let mut buf = vec![0u8; 512];
        let kind = |r: io::Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(lun.read_at(100, &mut buf)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(lun.write_at(0, &buf[..100])),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(lun.read_at(1 << 20, &mut buf)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(kind(lun.discard(512, 100)), io::ErrorKind::InvalidInput);
        // Empty requests are fine.
        lun.read_at(0, &mut []).unwrap();
        lun.write_at(512, &[]).unwrap();
    }

    #[test]
    fn zero_out_zeroes_exactly_the_range_everywhere() {
        let f = sparse_file(4 << 20);
        let file = LunFile::open(f.path()).unwrap();
        let mem = MemIo::new(512, 4 << 20);
        let sparse = SparseIo::new(512, 4 << 20);
        let ios: [&dyn BlockIo; 3] = [&file, &mem, &sparse];
        for io in ios {
            io.write_at(0, &pattern(4 << 20, 9)).unwrap();
            io.zero_out(512, 3 << 20).unwrap();
            io.sync().unwrap();
            let mut back = vec![1u8; 4 << 20];
            io.read_at(0, &mut back).unwrap();
            let expect = pattern(4 << 20, 9);
            assert_eq!(back[..512], expect[..512]);
            assert!(back[512..512 + (3 << 20)].iter().all(|&b| b == 0));
            assert_eq!(back[512 + (3 << 20)..], expect[512 + (3 << 20)..]);
            assert_eq!(
                io.zero_out(100, 512).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn lunfile_discard_punches_hole() {
        let f = sparse_file(4 << 20);
        let lun = LunFile::open(f.path()).unwrap();
        lun.write_at(0, &pattern(4 << 20, 3)).unwrap();
        lun.sync().unwrap();
        let before = std::fs::metadata(f.path()).unwrap().blocks();

        lun.discard(1 << 20, 2 << 20).unwrap();
        let after = std::fs::metadata(f.path()).unwrap().blocks();
        assert!(after < before, "st_blocks {before} -> {after}");
        assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 4 << 20);

        let mut back = vec![1u8; 4 << 20];
        lun.read_at(0, &mut back).unwrap();
        let expect = pattern(4 << 20, 3);
        assert_eq!(back[..1 << 20], expect[..1 << 20]);
        assert!(back[1 << 20..3 << 20].iter().all(|&b| b == 0));
        assert_eq!(back[3 << 20..], expect[3 << 20..]);
    }

    #[test]
    fn lunfile_rejects_directories() {
        let d = tempfile::tempdir().unwrap();
        assert!(LunFile::open(d.path()).is_err());
    }

    /// Exercises the block-device paths (ioctls, 4096-byte sectors) on loop
    /// devices. Needs root and losetup, so it only runs when
    /// OCFS2_CSI_LOOP_TESTS=1.
    #[test]
    fn lunfile_block_device() {
        if std::env::var("OCFS2_CSI_LOOP_TESTS").as_deref() != Ok("1") {
            return;
        }
        for ss in [512u64, 4096] {
            let f = sparse_file(32 << 20);
            let dev = loop_attach(f.path(), ss);
            let result = std::panic::catch_unwind(|| {
                let lun = LunFile::open(Path::new(&dev)).unwrap();
                assert!(lun.is_block_device() && lun.is_direct());
                assert_eq!(lun.sector_size(), ss);
                assert_eq!(lun.size_bytes(), 32 << 20);
                roundtrip_unaligned(&lun);
                match lun.discard(0, ss * 8) {
                    Ok(()) => {}
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::Unsupported),
                }
                // BLKZEROOUT: zeros exactly the range, through the cache.
                lun.write_at(0, &pattern(4 << 20, 5)).unwrap();
                lun.zero_out(ss, (1 << 20) - ss).unwrap();
                lun.sync().unwrap();
                let mut back = vec![1u8; 4 << 20];
                lun.read_at(0, &mut back).unwrap();
                let expect = pattern(4 << 20, 5);
                assert_eq!(back[..ss as usize], expect[..ss as usize]);
                assert!(back[ss as usize..1 << 20].iter().all(|&b| b == 0));
                assert_eq!(back[1 << 20..], expect[1 << 20..]);
            });
            loop_detach(&dev);
            result.unwrap();
        }
    }

    pub(crate) fn loop_attach(file: &Path, sector_size: u64) -> String {
        let out = std::process::Command::new("losetup")
            .args(["--show", "-f", "-b", &sector_size.to_string()])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub(crate) fn loop_detach(dev: &str) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", dev])
            .status();
    }

    #[test]
    fn memio_contract() {
        let m = MemIo::new(4096, 64 << 10);
        assert_eq!(m.size_bytes(), 64 << 10);
        let kind = |r: io::Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(m.write_at(512, &[1; 4096])),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(m.write_at(64 << 10, &[1; 4096])),
            io::ErrorKind::InvalidInput
        );
        m.write_at(4096, &[7; 8192]).unwrap();
        m.discard(8192, 4096).unwrap();
        let mut b = vec![0; 12288];
        m.read_at(0, &mut b).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0));
        assert!(b[4096..8192].iter().all(|&x| x == 7));
        assert!(b[8192..].iter().all(|&x| x == 0));
    }

    #[test]
    fn sparse_io_contract() {
        let s = SparseIo::new(512, 1 << 40);
        assert_eq!(s.size_bytes(), 1 << 40);
        let kind = |r: io::Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(s.write_at(100, &[1; 512])),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(s.write_at((1 << 40) - 512, &[1; 1024])),
            io::ErrorKind::InvalidInput
        );
        // A write across a chunk boundary, read back through a clone.
        let data = pattern(3 * 65536 + 1024, 5);
        let at = (1 << 39) - 65536 - 512;
        s.write_at(at, &data[..3 * 65536 + 1024]).unwrap();
        let clone = s.clone();
        let mut back = vec![9u8; data.len()];
        clone.read_at(at, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(s.allocated_bytes(), 5 * 65536);
        // Unwritten space reads as zeros.
        let mut z = vec![1u8; 4096];
        s.read_at(0, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        // A discard frees whole chunks and zeroes the partial ones.
        s.discard(at + 512, 2 * 65536).unwrap();
        clone.read_at(at, &mut back).unwrap();
        assert_eq!(back[..512], data[..512]);
        assert!(back[512..512 + 2 * 65536].iter().all(|&b| b == 0));
        assert_eq!(back[512 + 2 * 65536..], data[512 + 2 * 65536..]);
        assert_eq!(s.allocated_bytes(), 3 * 65536);
        // A partial discard keeps the chunk, zeroed where asked.
        s.discard(at, 512).unwrap();
        clone.read_at(at, &mut back[..512]).unwrap();
        assert!(back[..512].iter().all(|&b| b == 0));
        assert_eq!(s.allocated_bytes(), 3 * 65536);
        s.discard(0, 1 << 40).unwrap();
        assert_eq!(s.allocated_bytes(), 0);
    }

    #[test]
    fn failing_io_modes() {
        let sector = [1u8; 512];
        let two = [2u8; 1024];

        let f = FailingIo::new(MemIo::new(512, 8192), 1, CrashMode::Fail);
        f.write_at(0, &sector).unwrap();
        assert!(f.write_at(512, &sector).is_err());
        assert!(f.discard(0, 512).is_err());
        assert_eq!(f.writes_attempted(), 3);

        let f = FailingIo::new(MemIo::new(512, 8192), 1, CrashMode::Drop);
        f.write_at(0, &sector).unwrap();
        f.write_at(512, &two).unwrap();
        let img = f.into_inner().snapshot();
        assert!(img[..512].iter().all(|&b| b == 1));
        assert!(img[512..].iter().all(|&b| b == 0));

        let f = FailingIo::new(MemIo::new(512, 8192), 0, CrashMode::Tear);
        f.write_at(512, &two).unwrap();
        f.write_at(2048, &two).unwrap();
        let img = f.inner().snapshot();
        assert!(img[512..1024].iter().all(|&b| b == 2));
        assert!(img[1024..].iter().all(|&b| b == 0));

        let f = FailingIo::counting(MemIo::new(512, 8192));
        f.write_at(0, &sector).unwrap();
        f.write_at(512, &sector).unwrap();
        assert_eq!(f.writes_attempted(), 2);
    }
}
