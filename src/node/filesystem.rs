//! What is on a volume's device, read before it is mounted (stage checks
//! it is the filesystem the volume context names). Behind a trait so stage
//! runs in-process against a fake.

use crate::ocfs2::tools::{FsInfo, Ocfs2Error, Ocfs2Tools};
use futures::future::BoxFuture;
use std::path::Path;

/// Reads the OCFS2 superblock of a device (async: a tool runs, with its own
/// timeout).
pub trait Inspector: Send + Sync {
    /// The filesystem on `device`, or None when it holds no OCFS2 signature.
    fn inspect<'a>(&'a self, device: &'a Path)
        -> BoxFuture<'a, Result<Option<FsInfo>, Ocfs2Error>>;
}

/// The real one: `debugfs.ocfs2 -R stats`.
impl Inspector for Ocfs2Tools {
    fn inspect<'a>(
        &'a self,
        device: &'a Path,
    ) -> BoxFuture<'a, Result<Option<FsInfo>, Ocfs2Error>> {
        Box::pin(Ocfs2Tools::inspect(self, device))
    }
}
