//! What a clone needs to know and change of the OCFS2 filesystem it
//! copies, behind a small trait: the real one reads the allocation bitmap
//! and rewrites superblocks on the LUN (`ocfs2::bitmap`, `ocfs2::restamp`,
//! proven on real filesystems in their tests and in the lab); the fakes'
//! (`testing::FakeSan`) play it on their own superblock format.

use super::error::LunError;
use super::pool::Lun;
use crate::disk::blocking::run_blocking;
use crate::disk::region::{with_region, RegionDevices};
use crate::ocfs2::restamp::{self, Identity};
use crate::ocfs2::{bitmap, superblock, Ocfs2Tools};
use crate::volume::entry::VolumeEntry;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// Reading a bitmap or a few superblocks; generous for a LUN that queues.
const IO_TIMEOUT: Duration = Duration::from_secs(300);

pub trait FsImage: Send + Sync {
    /// The byte ranges (volume offset, bytes) of the filesystem on `e` that
    /// hold anything: its global bitmap's used clusters, sorted.
    fn used_ranges<'a>(
        &'a self,
        lun: &'a Lun,
        e: &'a VolumeEntry,
    ) -> BoxFuture<'a, Result<Vec<(u64, u64)>, LunError>>;

    /// Gives the filesystem on `e` a new UUID and label, in its superblock
    /// and every backup, durably.
    fn restamp<'a>(
        &'a self,
        lun: &'a Lun,
        e: &'a VolumeEntry,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<(), LunError>>;

    /// Grows the filesystem on pending `e` (which no node can mount) to
    /// its partition, offline, without the cluster.
    fn grow<'a>(&'a self, lun: &'a Lun, e: &'a VolumeEntry) -> BoxFuture<'a, Result<(), LunError>>;
}

/// The real filesystem on the LUN.
pub struct Ocfs2Image {
    tools: Ocfs2Tools,
    regions: Arc<dyn RegionDevices>,
}

impl Ocfs2Image {
    pub fn new(tools: Ocfs2Tools, regions: Arc<dyn RegionDevices>) -> Self {
        Ocfs2Image { tools, regions }
    }
}

fn corrupt(e: &VolumeEntry, why: String) -> LunError {
    LunError::NotReady(format!(
        "the filesystem of {} cannot be cloned: {why}",
        e.name
    ))
}

impl FsImage for Ocfs2Image {
    fn used_ranges<'a>(
        &'a self,
        lun: &'a Lun,
        e: &'a VolumeEntry,
    ) -> BoxFuture<'a, Result<Vec<(u64, u64)>, LunError>> {
        Box::pin(async move {
            let tools = &self.tools;
            let head = e.head();
            let text = with_region(
                self.regions.as_ref(),
                &lun.path,
                head.offset,
                head.size,
                |dev| async move { tools.global_bitmap(&dev).await.map_err(LunError::from) },
            )
            .await?;
            let chains = bitmap::parse_chains(&text).map_err(|w| corrupt(e, w))?;
            let (io, e2) = (lun.io.clone(), e.clone());
            let runs = run_blocking(IO_TIMEOUT, move || {
                let io = io.as_ref();
                let (block, _) = match primary_io(io, &e2)? {
                    Ok(p) => p,
                    Err(why) => return Ok(Err(why)),
                };
                let geo = match bitmap::geometry(&block) {
                    Ok(g) => g,
                    Err(why) => return Ok(Err(why)),
                };
                let bs = geo.block_size;
                let read = |blkno: u64, buf: &mut [u8]| {
                    let at = e2.lun_offset(blkno * bs).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("block {blkno} lies outside the volume"),
                        )
                    })?;
                    io.read_at(at, buf)
                };
                Ok(bitmap::used_runs(&chains, &geo, read).map(|runs| (runs, geo.cluster_size)))
            })
            .await
            .map_err(|s| lun.stalled("reading a filesystem's allocation bitmap", s))?
            .map_err(|err| lun.io_error(err))?;
            let (runs, cs) = runs.map_err(|w| corrupt(e, w))?;
            Ok(runs
                .into_iter()
                .map(|(first, n)| (first * cs, (n * cs).min(e.size.saturating_sub(first * cs))))
                .filter(|r| r.1 > 0)
                .collect())
        })
    }

    fn restamp<'a>(
        &'a self,
        lun: &'a Lun,
        e: &'a VolumeEntry,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<(), LunError>> {
        let id = id.clone();
        Box::pin(rewrite_superblocks(
            lun,
            e,
            Superblocks::All,
            move |b, at| restamp::restamp(b, at, &id),
        ))
    }

    fn grow<'a>(&'a self, lun: &'a Lun, e: &'a VolumeEntry) -> BoxFuture<'a, Result<(), LunError>> {
        Box::pin(async move {
            // One extent: a clone's partition is placed whole.
            let (offset, size) = match e.extents.as_slice() {
                [one] => (one.offset, one.size),
                _ => return Err(corrupt(e, "a clone to grow lies in one extent".into())),
            };
            // Local for the grow only: tunefs then needs no cluster lock.
            rewrite_superblocks(lun, e, Superblocks::Primary, |b, at| {
                restamp::set_local(b, at, true)
            })
            .await?;
            let tools = &self.tools;
            with_region(
                self.regions.as_ref(),
                &lun.path,
                offset,
                size,
                |dev| async move { tools.grow(&dev).await.map_err(LunError::from) },
            )
            .await?;
            rewrite_superblocks(lun, e, Superblocks::All, |b, at| {
                restamp::set_local(b, at, false)
            })
            .await
        })
    }
}

/// Which superblocks [`rewrite_superblocks`] rewrites.
#[derive(Clone, Copy)]
enum Superblocks {
    /// tunefs reads this one, and writes the backups from it.
    Primary,
    /// The primary and every backup it says exists.
    All,
}

/// Reads, changes with `change` and writes back the superblocks of `e`'s
/// filesystem, durably.
async fn rewrite_superblocks(
    lun: &Lun,
    e: &VolumeEntry,
    which: Superblocks,
    change: impl Fn(&mut [u8], u64) -> Result<(), String> + Send + 'static,
) -> Result<(), LunError> {
    let (io, e2) = (lun.io.clone(), e.clone());
    let done = run_blocking(IO_TIMEOUT, move || {
        let io = io.as_ref();
        let (block, bs) = match primary_io(io, &e2)? {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        let offsets = match which {
            Superblocks::Primary => vec![2 * bs],
            Superblocks::All => match restamp::superblock_offsets(&block) {
                Ok(o) => o,
                Err(why) => return Ok(Err(why)),
            },
        };
        let mut buf = vec![0u8; bs as usize];
        for at in offsets {
            let Some(lun_at) = e2.lun_offset(at) else {
                return Ok(Err(format!("superblock at {at} lies outside the volume")));
            };
            io.read_at(lun_at, &mut buf)?;
            if let Err(why) = change(&mut buf, at) {
                return Ok(Err(why));
            }
            io.write_at(lun_at, &buf)?;
        }
        io.sync()?;
        Ok(Ok(()))
    })
    .await
    .map_err(|s| lun.stalled("writing a clone's superblocks", s))?
    .map_err(|err| lun.io_error(err))?;
    done.map_err(|w| corrupt(e, w))
}

/// The primary superblock block of `e`'s filesystem, and its block size.
fn primary_io(
    io: &dyn crate::disk::lun_io::BlockIo,
    e: &VolumeEntry,
) -> std::io::Result<Result<(Vec<u8>, u64), String>> {
    let mut head = vec![0u8; 16384];
    io.read_at(e.offset, &mut head)?;
    let Some(sb) = superblock::decode(&head) else {
        return Ok(Err("no OCFS2 superblock".into()));
    };
    let bs = sb.block_size as usize;
    Ok(Ok((head[2 * bs..3 * bs].to_vec(), sb.block_size)))
}
