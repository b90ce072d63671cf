//! This node's holder marks in raw block volumes' headers
//! (`volume::block_header`), behind a trait so the stage logic runs against
//! in-memory LUNs in tests. Blocking (direct I/O): callers run it on a
//! blocking thread.

use crate::disk::lun_io::{BlockIo, LunFile};
use crate::volume::block_header::{self, Holder};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

pub trait HolderMarks: Send + Sync {
    /// Writes node `number`'s mark in the volume whose head is at `head`.
    fn set(&self, lun: &Path, head: u64, guid: &Uuid, number: u8, node: &str) -> io::Result<()>;
    /// Zeroes node `number`'s mark.
    fn clear(&self, lun: &Path, head: u64, number: u8) -> io::Result<()>;
    /// Every mark, or None when the header is not the volume's.
    fn read(&self, lun: &Path, head: u64, guid: &Uuid) -> io::Result<Option<Vec<Holder>>>;
}

/// Marks over any way of opening a LUN.
pub struct Marks<O> {
    open: O,
}

impl<O> Marks<O> {
    pub fn new(open: O) -> Self {
        Marks { open }
    }
}

impl<O> HolderMarks for Marks<O>
where
    O: Fn(&Path) -> io::Result<Arc<dyn BlockIo>> + Send + Sync,
{
    fn set(&self, lun: &Path, head: u64, guid: &Uuid, number: u8, node: &str) -> io::Result<()> {
        block_header::set_mark((self.open)(lun)?.as_ref(), head, guid, number, node)
    }

    fn clear(&self, lun: &Path, head: u64, number: u8) -> io::Result<()> {
        block_header::clear_mark((self.open)(lun)?.as_ref(), head, number)
    }

    fn read(&self, lun: &Path, head: u64, guid: &Uuid) -> io::Result<Option<Vec<Holder>>> {
        block_header::read_holders((self.open)(lun)?.as_ref(), head, guid)
    }
}

/// The real marks: the LUN opened for direct I/O at each call.
pub fn on_luns() -> Arc<dyn HolderMarks> {
    Arc::new(Marks::new(|lun: &Path| {
        LunFile::open(lun).map(|f| Arc::new(f) as Arc<dyn BlockIo>)
    }))
}

/// Marks on the given disks, by LUN path (tests, csi-sanity on fakes).
pub fn on_disks(disks: HashMap<PathBuf, Arc<dyn BlockIo>>) -> Arc<dyn HolderMarks> {
    Arc::new(Marks::new(move |lun: &Path| {
        disks.get(lun).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no disk {}", lun.display()),
            )
        })
    }))
}
