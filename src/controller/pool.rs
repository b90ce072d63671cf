//! The storage pool: the shared LUNs this controller carves volumes from.
//!
//! A blank LUN named in --init-lun gets a GPT with room for 256 entries and
//! a heartbeat partition formatted for o2cb global heartbeat, after a scan
//! of every place a volume could start finds nothing there: "blank" only
//! says the first and last MiB are zero, which is also what a LUN whose
//! table copies were zapped looks like. A LUN holding anything else (an
//! MBR, a filesystem, a GPT that is not ours) is refused and left untouched.

use super::error::LunError;
use super::writer::{Stamp, TableWriter, Writer, WriterConfig};
use crate::disk::blocking::run_blocking;
use crate::disk::gpt::{self, Contents, Gpt, GptError, Partition};
use crate::disk::lun_io::{BlockIo, LunFile};
use crate::disk::ownership::{self, Ownership, OwnershipError};
use crate::disk::region::{with_region, RegionDevices};
use crate::disk::reopen::Reopening;
use crate::disk::signatures::{self, Found};
use crate::ocfs2::superblock;
use crate::ocfs2::tools::Ocfs2Tools;
use crate::volume::entry::{ALIGN, HEARTBEAT_BYTES, HEARTBEAT_NUMBER, TYPE_HEARTBEAT};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Longest wait for a partition table read or write (a few hundred KiB
/// with a sync): past it the LUN is stalled, and the RPC says so rather
/// than hang. The I/O itself goes on and keeps `table_io` until it ends, so
/// no later table I/O of this process can slip in between.
pub const TABLE_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// One shared LUN. Its partition table is changed only with `lock` held,
/// and only while this process holds the LUN's writer lease (`writer`).
pub struct Lun {
    pub path: PathBuf,
    pub io: Arc<dyn BlockIo>,
    pub writer: Arc<dyn TableWriter>,
    pub disk_guid: Uuid,
    /// UUID of the heartbeat filesystem nodes start global heartbeat on.
    pub heartbeat_uuid: Uuid,
    /// Orders table reads against writes in this process: a read between a
    /// write's entries and its header would see a CRC mismatch. Held only
    /// for the I/O itself, by the blocking thread doing it.
    table_io: Arc<std::sync::Mutex<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{path}: refusing to use a LUN that holds {what}; ocfs2-csi only takes blank LUNs \
             or LUNs it initialised itself. Wipe it (after checking nothing on it is needed) or \
             remove it from --lun"
    )]
    Foreign { path: String, what: String },
    #[error(
        "{path}: the heartbeat device belongs to o2cb cluster {found:?}, but this controller \
             runs cluster {ours:?}"
    )]
    OtherCluster {
        path: String,
        found: String,
        ours: String,
    },
    #[error(
        "{path} holds no partition table; ocfs2-csi initialises a LUN only when it is named \
             in --init-lun (chart value initLuns): name it there if it may be set up from scratch"
    )]
    NotOptedIn { path: String },
    #[error(
        "{path}: refusing to initialise: its first and last MiB are zero (no partition table) \
             but it holds {found}. A LUN whose table was zeroed still holds its volumes; \
             `ocfs2-csi scan-lun --lun {path}` lists them (read-only) so the table can be rebuilt"
    )]
    NotBlank { path: String, found: String },
    #[error(
        "{path} belongs to another cluster: its ownership stamp names {found}, but this \
             controller runs cluster ID {ours:?}. A LUN zoned to two clusters is corrupted by \
             both; remove it from --lun, or fix the zoning"
    )]
    OtherOwner {
        path: String,
        found: String,
        ours: String,
    },
    #[error("{path} is the same LUN (disk GUID {guid}) as another --lun")]
    SameLun { path: String, guid: Uuid },
    /// What was read before this controller held the writer lease is no
    /// longer what the LUN holds: another writer changed it meanwhile.
    #[error(
        "{path} changed while this controller waited for its writer lease (another controller \
             wrote it first); opening it again from what it holds now"
    )]
    Changed { path: String },
    #[error(transparent)]
    Lun(#[from] LunError),
}

impl OpenError {
    /// Refused until an operator acts (zoning, --init-lun, a wipe), as
    /// opposed to what passes by itself (a path down, a writer racing).
    pub fn needs_operator(&self) -> bool {
        !matches!(self, OpenError::Changed { .. } | OpenError::Lun(_))
    }
}

/// How long opening a LUN's device may take before start-up retries it (a
/// path that queues I/O while down would otherwise hold the open forever).
const OPEN_WAIT: Duration = Duration::from_secs(60);

/// Whether `path` is one of `init` (the --init-lun paths), also when
/// one of them names it through a symbolic link (/dev/disk/by-id/...).
pub fn named_in(path: &Path, init: &[PathBuf]) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    init.iter().any(|i| i == path || real(i) == real(path))
}

/// Whose LUNs these are: the installation's cluster ID, stamped on every
/// LUN, and the o2cb cluster name, stamped into every filesystem.
#[derive(Clone, Debug)]
pub struct ClusterIdentity {
    pub id: String,
    pub name: String,
}

/// The LUNs `open_all` opened, and their writer leases, which the caller
/// runs (`Writer::run`) and releases on shutdown.
pub struct Opened {
    pub luns: Vec<Arc<Lun>>,
    pub writers: Vec<Arc<Writer>>,
}

/// Opens every LUN of `paths` (`open_one`), refusing one LUN listed twice
/// under two paths. Only LUNs named in `init` may be initialised.
pub async fn open_all(
    paths: &[PathBuf],
    init: &[PathBuf],
    writer: &WriterConfig,
    cluster: &ClusterIdentity,
    tools: &Ocfs2Tools,
    regions: &dyn RegionDevices,
) -> Result<Opened, OpenError> {
    let mut luns: Vec<Arc<Lun>> = Vec::new();
    let mut writers = Vec::new();
    for path in paths {
        let (lun, lease) = open_one(path, init, writer, cluster, tools, regions).await?;
        if let Some(same) = luns.iter().find(|l| l.disk_guid == lun.disk_guid) {
            return Err(same_lun(same, &lun));
        }
        // A free or released lease is taken before the LUN counts as open,
        // so a controller that follows a cleanly stopped one serves changes
        // from its first call; a held one is watched from here on.
        lease.step().await;
        luns.push(lun);
        writers.push(lease);
    }
    Ok(Opened { luns, writers })
}

/// The error for `second`, the same LUN as the open `first` under another
/// path.
pub fn same_lun(first: &Lun, second: &Lun) -> OpenError {
    OpenError::SameLun {
        path: second.name(),
        guid: first.disk_guid,
    }
}

/// Opens the LUN at `path` (`open_lun`) with its writer lease, which the
/// caller steps once (`Writer::step`: takes a free lease) when it keeps the
/// LUN, then runs (`Writer::run`) and releases on shutdown. It may be
/// initialised only when named in `init`.
pub async fn open_one(
    path: &Path,
    init: &[PathBuf],
    writer: &WriterConfig,
    cluster: &ClusterIdentity,
    tools: &Ocfs2Tools,
    regions: &dyn RegionDevices,
) -> Result<(Arc<Lun>, Arc<Writer>), OpenError> {
    let name = path.display().to_string();
    let p = path.to_path_buf();
    // Through its path again when the device goes (an iSCSI re-login).
    let reopening = Arc::new(
        lun_io(&name, "opening", OPEN_WAIT, move || {
            Reopening::open(
                &p,
                Box::new(|p| Ok(Arc::new(LunFile::open(p)?) as Arc<dyn BlockIo>)),
            )
        })
        .await?,
    );
    let may_initialise = named_in(path, init);
    let io: Arc<dyn BlockIo> = reopening.clone();
    let lease = Writer::new(io.clone(), name.clone(), writer.clone());
    let lun = open_lun(
        path,
        io,
        may_initialise,
        lease.clone(),
        cluster,
        tools,
        regions,
    )
    .await?;
    reopening.expect_disk_guid(lun.disk_guid);
    tracing::info!(lun = %name, disk_guid = %lun.disk_guid, heartbeat = %lun.heartbeat_uuid, "LUN open");
    Ok((Arc::new(lun), lease))
}

impl Lun {
    pub fn sector_size(&self) -> u64 {
        self.io.sector_size()
    }

    /// Whether a `lun` StorageClass parameter names this LUN (its --lun
    /// path or its disk GUID).
    pub fn matches(&self, want: &str) -> bool {
        self.path.as_os_str() == want || self.disk_guid.to_string() == want
    }

    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Serialises partition-table changes on this LUN (and keeps the
    /// writer lease from being handed over meanwhile).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.changes().lock().await
    }

    /// The table as it is on disk now (direct I/O: another host may have
    /// written it). Read on a blocking thread.
    pub async fn read_table(&self) -> Result<Gpt, LunError> {
        match self.read_table_once().await {
            // The table was moved to the end of a LUN that grew, by this
            // process before a restart or by another controller: see it.
            Err(LunError::Table {
                source: GptError::DeviceSmaller { .. },
                ..
            }) => {
                self.refresh().await?;
                self.read_table_once().await
            }
            other => other,
        }
    }

    async fn read_table_once(&self) -> Result<Gpt, LunError> {
        let (io, table_io) = (self.io.clone(), self.table_io.clone());
        let read = run_blocking(TABLE_IO_TIMEOUT, move || {
            let _io = table_io.lock().unwrap_or_else(|p| p.into_inner());
            let mut read = crate::volume::extents::read_valid(io.as_ref());
            if let Err(GptError::Corrupt(_)) = read {
                // Another host may be halfway through a write; a moment
                // later one copy is whole again.
                std::thread::sleep(Duration::from_millis(20));
                read = crate::volume::extents::read_valid(io.as_ref());
            }
            read
        })
        .await
        .map_err(|stalled| self.stalled("reading the partition table", stalled))?;
        read.map(|r| r.gpt).map_err(|source| LunError::Table {
            lun: self.name(),
            source,
        })
    }

    /// Writes `table`, a change of the table read before it, if this
    /// process is still the LUN's writer and the table on disk is still the
    /// one it was made from (compare, then write); stamps it with the
    /// writer's identity and generation; afterwards makes sure the lease
    /// was not lost meanwhile, so a write that raced a takeover is never
    /// acknowledged. See `gpt::write` for why a crash at any point leaves a
    /// valid table.
    pub async fn write_table(&self, table: &Gpt) -> Result<(), LunError> {
        let writer_err = |source| LunError::Writer {
            lun: self.name(),
            source,
        };
        let stamp = self.writer.check().await.map_err(writer_err)?;
        let on_disk = self.read_table().await?;
        let (expected, found) = (stamp_of(table), stamp_of(&on_disk));
        if expected != found {
            return Err(LunError::TableChanged {
                lun: self.name(),
                expected,
                found,
            });
        }
        let mut table = table.clone();
        set_stamp(&mut table, &stamp);
        let (io, table_io) = (self.io.clone(), self.table_io.clone());
        run_blocking(TABLE_IO_TIMEOUT, move || {
            let _io = table_io.lock().unwrap_or_else(|p| p.into_inner());
            gpt::write(io.as_ref(), &table)
        })
        .await
        .map_err(|stalled| self.stalled("writing the partition table", stalled))?
        .map_err(|source| LunError::Table {
            lun: self.name(),
            source,
        })?;
        self.writer.confirm(stamp).await.map_err(writer_err)
    }

    /// Makes this host see the LUN's current size (rescan, multipath
    /// resize: `disk::rescan`) and this process's device answer it.
    /// Returns the size in bytes.
    pub async fn refresh(&self) -> Result<u64, LunError> {
        refresh_device(&self.path, self.io.clone()).await
    }

    /// After the array grew the LUN: extends the table over the new space
    /// (its backup moved to the new end); false when there is none. Call
    /// with `lock` held. A controller that is not the LUN's writer changes
    /// nothing and says so.
    pub async fn take_new_space(&self) -> Result<bool, LunError> {
        self.refresh().await?;
        let table = self.read_table().await?;
        let Some((grown, old_backup)) = table.grown() else {
            return Ok(false);
        };
        self.writer
            .check()
            .await
            .map_err(|source| LunError::Writer {
                lun: self.name(),
                source,
            })?;
        // The old backup goes first, so at every moment one copy is whole
        // and none is stale (`gpt::retire_backup`).
        let (io, table_io, disk) = (self.io.clone(), self.table_io.clone(), table.disk_guid);
        run_blocking(TABLE_IO_TIMEOUT, move || {
            let _io = table_io.lock().unwrap_or_else(|p| p.into_inner());
            gpt::retire_backup(io.as_ref(), old_backup, disk)
        })
        .await
        .map_err(|stalled| self.stalled("clearing the old backup table", stalled))?
        .map_err(|source| LunError::Table {
            lun: self.name(),
            source,
        })?;
        self.write_table(&grown).await?;
        let ss = self.sector_size();
        let bytes = |g: &Gpt| (g.last_usable_lba + 1) * ss;
        tracing::info!(
            lun = %self.name(),
            from = bytes(&table),
            to = bytes(&grown),
            "the LUN grew: its partition table now spans the new space"
        );
        Ok(true)
    }

    pub fn stalled(&self, what: &'static str, stalled: crate::disk::blocking::Stalled) -> LunError {
        LunError::Stalled {
            lun: self.name(),
            what,
            source: stalled,
        }
    }

    pub fn io_error(&self, source: std::io::Error) -> LunError {
        LunError::Io {
            lun: self.name(),
            source,
        }
    }
}

/// Opens one LUN: initialises it if blank (and `may_initialise`), repairs a
/// table copy a crash left stale, and makes sure its heartbeat device is
/// formatted.
pub async fn open_lun(
    path: &Path,
    io: Arc<dyn BlockIo>,
    may_initialise: bool,
    writer: Arc<dyn TableWriter>,
    cluster: &ClusterIdentity,
    tools: &Ocfs2Tools,
    regions: &dyn RegionDevices,
) -> Result<Lun, OpenError> {
    let name = path.display().to_string();
    let table_err = |source: GptError| LunError::Table {
        lun: name.clone(),
        source,
    };
    regions.release_stale(path).await.map_err(LunError::from)?;
    // A LUN the array grew while no controller ran: see its new size
    // before reading a table that may already span it.
    if let Err(e) = refresh_device(path, io.clone()).await {
        tracing::warn!(lun = %name, error = %e, "could not rescan the LUN; going on with the size this host sees");
    }
    let foreign = |what: &str| OpenError::Foreign {
        path: name.clone(),
        what: what.to_string(),
    };
    let stalled = |what: &'static str| {
        let name = name.clone();
        move |source| LunError::Stalled {
            lun: name,
            what,
            source,
        }
    };
    // Another cluster's LUN is refused before anything else is read or
    // written (a blank-looking one too: its stamp survived a zeroed table).
    let stamp_io = io.clone();
    let stamped = run_blocking(TABLE_IO_TIMEOUT, move || ownership::read(stamp_io.as_ref()))
        .await
        .map_err(stalled("reading the ownership stamp"))?;
    let stamped = match stamped {
        Ok(found) => found,
        Err(OwnershipError::Io(source)) => return Err(LunError::Io { lun: name, source }.into()),
        Err(e) => return Err(foreign(&e.to_string())),
    };
    if let Some(o) = stamped.as_ref().filter(|o| o.cluster_id != cluster.id) {
        return Err(OpenError::OtherOwner {
            path: name,
            found: o.describe(),
            ours: cluster.id.clone(),
        });
    }
    let probe_io = io.clone();
    let probed = run_blocking(TABLE_IO_TIMEOUT, move || gpt::probe(probe_io.as_ref()))
        .await
        .map_err(stalled("probing what the LUN holds"))?;
    // Writes at start-up (a new table, a repaired copy, a table moved to
    // the end of a grown LUN after clearing its old backup at `retire`, the
    // ownership stamp) need the lease too; a live writer elsewhere does
    // them itself, and this open is retried.
    //
    // What was read above was read before this controller held the lease
    // (unless it already did), and a blank LUN's scan may have taken
    // minutes: another writer may have written meanwhile. So when the lease
    // was not ours before, the LUN is read again once it is, and must still
    // hold exactly what it held (the same stamp or none, and still blank or
    // the same table), or the open starts again from what it holds now
    // ([`OpenError::Changed`]).
    let first = probed.as_ref().ok().cloned();
    let take_lease = || {
        let (io, writer) = (io.clone(), writer.clone());
        let (name, stamped, first) = (name.clone(), stamped.clone(), first.clone());
        async move {
            let held = writer.holds();
            writer
                .take_if_free()
                .await
                .map_err(|source| LunError::Writer {
                    lun: name.clone(),
                    source,
                })?;
            if held {
                return Ok(());
            }
            let again = run_blocking(TABLE_IO_TIMEOUT, move || {
                (ownership::read(io.as_ref()), gpt::probe(io.as_ref()))
            })
            .await
            .map_err(|source| LunError::Stalled {
                lun: name.clone(),
                what: "reading the LUN again",
                source,
            })?;
            let same_stamp = matches!(&again.0, Ok(now) if *now == stamped);
            if same_stamp && again.1.ok() == first {
                Ok(())
            } else {
                Err(OpenError::Changed { path: name })
            }
        }
    };
    let write = |mut table: Gpt, retire: Option<u64>| {
        let (io, writer) = (io.clone(), writer.clone());
        let name = name.clone();
        let take_lease = take_lease();
        async move {
            take_lease.await?;
            let stamp = writer.check().await.map_err(|source| LunError::Writer {
                lun: name.clone(),
                source,
            })?;
            set_stamp(&mut table, &stamp);
            run_blocking(TABLE_IO_TIMEOUT, move || {
                if let Some(lba) = retire {
                    gpt::retire_backup(io.as_ref(), lba, table.disk_guid)?;
                }
                gpt::write(io.as_ref(), &table)
            })
            .await
            .map_err(stalled("writing the partition table"))?
            .map_err(table_err)?;
            Ok::<(), OpenError>(())
        }
    };
    let stamp = |disk_guid: Uuid| {
        let (io, writer) = (io.clone(), writer.clone());
        let name = name.clone();
        let owner = Ownership {
            cluster_id: cluster.id.clone(),
            cluster_name: cluster.name.clone(),
            disk_guid,
            stamped_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            stamped_by: writer.who(),
        };
        let take_lease = take_lease();
        async move {
            let writer_err = |source| LunError::Writer {
                lun: name.clone(),
                source,
            };
            take_lease.await?;
            let checked = writer.check().await.map_err(writer_err)?;
            run_blocking(TABLE_IO_TIMEOUT, move || {
                ownership::write(io.as_ref(), &owner)
            })
            .await
            .map_err(stalled("writing the ownership stamp"))?
            .map_err(|e| LunError::Io {
                lun: name.clone(),
                source: match e {
                    OwnershipError::Io(e) => e,
                    other => std::io::Error::other(other.to_string()),
                },
            })?;
            writer.confirm(checked).await.map_err(writer_err)?;
            Ok::<(), OpenError>(())
        }
    };
    let table = match probed.map_err(table_err)? {
        Contents::Blank => {
            if !may_initialise {
                return Err(OpenError::NotOptedIn { path: name });
            }
            let found = scan_blank(&name, io.clone()).await?;
            if !found.is_empty() {
                return Err(OpenError::NotBlank {
                    path: name,
                    found: describe(&found),
                });
            }
            let table = initial_table(io.as_ref());
            // The stamp first: a crash before the table leaves a LUN that
            // is blank but for our own stamp, initialised again next time.
            stamp(table.disk_guid).await?;
            write(table.clone(), None).await?;
            tracing::info!(lun = %name, disk_guid = %table.disk_guid, "initialised blank LUN");
            table
        }
        Contents::Mbr => return Err(foreign("an MBR partition table")),
        Contents::Other(what) => return Err(foreign(&what)),
        Contents::Gpt(read) => {
            let mut table = read.gpt;
            // Entries checked before any arithmetic on them.
            table.validate().map_err(table_err)?;
            match table.partition(HEARTBEAT_NUMBER) {
                Some(p) if p.type_guid == TYPE_HEARTBEAT => {}
                _ => return Err(foreign("a GPT that ocfs2-csi did not make")),
            }
            // A grown LUN: extend the usable area to its new end, the old
            // backup cleared first (see `Lun::take_new_space`).
            let retire = table.grown().map(|(grown, old_backup)| {
                table = grown;
                old_backup
            });
            let grown = retire.is_some();
            if !(read.primary_valid && read.backup_valid) || grown {
                tracing::warn!(
                    lun = %name,
                    primary_valid = read.primary_valid,
                    backup_valid = read.backup_valid,
                    grown,
                    "rewriting both partition table copies"
                );
                write(table.clone(), retire).await?;
            }
            match &stamped {
                Some(o) if o.disk_guid != table.disk_guid => {
                    return Err(foreign(&format!(
                        "an ownership stamp made for another partition table (disk GUID {}, \
                         the table's is {})",
                        o.disk_guid, table.disk_guid
                    )))
                }
                Some(_) => {}
                None => {
                    stamp(table.disk_guid).await?;
                    tracing::warn!(
                        lun = %name,
                        cluster_id = %cluster.id,
                        "stamped a LUN initialised before ownership stamps existed as this cluster's"
                    );
                }
            }
            table
        }
    };
    let hb = table
        .partition(HEARTBEAT_NUMBER)
        .cloned()
        .expect("heartbeat partition checked above");
    let heartbeat_uuid = ensure_heartbeat(
        path,
        &hb,
        table.sector_size,
        &cluster.name,
        writer.as_ref(),
        tools,
        regions,
    )
    .await?;
    Ok(Lun {
        path: path.to_path_buf(),
        io,
        writer,
        disk_guid: table.disk_guid,
        heartbeat_uuid,
        table_io: Arc::new(std::sync::Mutex::new(())),
    })
}

/// The writer stamp a table carries: its heartbeat partition's name.
fn stamp_of(table: &Gpt) -> String {
    table
        .partition(HEARTBEAT_NUMBER)
        .map(|p| p.name.clone())
        .unwrap_or_default()
}

fn set_stamp(table: &mut Gpt, stamp: &Stamp) {
    if let Some(p) = table
        .partitions
        .iter_mut()
        .find(|p| p.number == HEARTBEAT_NUMBER)
    {
        p.name = stamp.name();
    }
}

/// At most this many finds make a LUN's refusal (one is enough to refuse;
/// a few tell the operator what kind of LUN it is).
const REFUSAL_FINDS: usize = 3;

/// Scans a blank-looking LUN for signatures wherever a partition of ours
/// (or another tool's, at 1 MiB alignment) could start, on a blocking
/// thread, logging its progress. Large LUNs take a while (one small read
/// per MiB); it happens once, before a LUN is first initialised.
async fn scan_blank(name: &str, io: Arc<dyn BlockIo>) -> Result<Vec<Found>, LunError> {
    let size = io.size_bytes();
    // A minute, plus ten per TiB: the slowest SAN we would still call working.
    let limit = Duration::from_secs(60 + 600 * size.div_ceil(1 << 40));
    tracing::info!(lun = %name, bytes = size, "scanning the blank LUN for signatures before initialising it");
    let lun = name.to_string();
    lun_io(name, "scanning for signatures", limit, move || {
        let mut progress = |done: u64, total: u64| {
            tracing::info!(lun = %lun, percent = done * 100 / total.max(1), "scanning for signatures");
        };
        signatures::scan(io.as_ref(), ALIGN, size.saturating_sub(ALIGN), ALIGN, REFUSAL_FINDS, &mut progress)
    })
    .await
}

/// Rescans `path` on this host (when it is a block device) and has `io`
/// read its size again; see `disk::rescan`. A rescan that fails is logged
/// and the size read anyway: the node plugin on this host rescans too, and
/// a controller in a pod may not reach multipathd (before multipath-tools
/// 0.12 it listens in the host's network namespace only).
pub async fn refresh_device(path: &Path, io: Arc<dyn BlockIo>) -> Result<u64, LunError> {
    use crate::disk::rescan::{refresh_lun, RescanError};
    let lun = path.to_path_buf();
    let name = path.display().to_string();
    run_blocking(TABLE_IO_TIMEOUT, move || {
        if lun.exists() {
            match refresh_lun(&lun) {
                Ok(_) => {}
                Err(e @ RescanError::Resize(_)) => tracing::warn!(
                    lun = %lun.display(),
                    error = %e,
                    "the LUN's paths grew but its multipath map could not be resized from here; \
                     the node plugin on this host resizes it at its next LUN check"
                ),
                Err(e) => {
                    tracing::debug!(lun = %lun.display(), error = %e, "could not rescan the LUN")
                }
            }
        }
        io.refresh_size().map_err(|source| LunError::Io {
            lun: lun.display().to_string(),
            source,
        })
    })
    .await
    .map_err(|source| LunError::Stalled {
        lun: name,
        what: "rescanning the LUN",
        source,
    })?
}

/// Every `every`, looks whether the array grew the LUN and, if this
/// controller is its writer, extends the table over the new space, so
/// GetCapacity shows it before anyone runs out of room.
pub async fn watch_size(lun: Arc<Lun>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let _locked = lun.lock().await;
        match lun.take_new_space().await {
            Ok(_) | Err(LunError::Writer { .. }) => {}
            Err(e) => {
                tracing::warn!(lun = %lun.name(), error = %e, "could not check whether the LUN grew")
            }
        }
    }
}

/// Runs LUN I/O on a blocking thread for at most `limit`; a stall and an
/// I/O error become the LUN's errors, naming `what` was being done.
async fn lun_io<T: Send + 'static>(
    lun: &str,
    what: &'static str,
    limit: Duration,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, LunError> {
    run_blocking(limit, work)
        .await
        .map_err(|source| LunError::Stalled {
            lun: lun.to_string(),
            what,
            source,
        })?
        .map_err(|source| LunError::Io {
            lun: lun.to_string(),
            source,
        })
}

/// "OCFS2 filesystem at 1 MiB (label "x", UUID y), ..." for a refusal.
fn describe(found: &[Found]) -> String {
    let each = found.iter().map(|f| {
        let mut text = format!("{} at {} MiB", f.what, f.offset >> 20);
        if let Some(sb) = superblock::decode(&f.head) {
            text += &format!(" (label {:?}, UUID {})", sb.label, sb.uuid);
        }
        text
    });
    let mut text = each.collect::<Vec<_>>().join(", ");
    if found.len() >= REFUSAL_FINDS {
        text += " and possibly more";
    }
    text
}

fn initial_table(io: &dyn BlockIo) -> Gpt {
    let ss = io.sector_size();
    let mut table = Gpt::new(ss, io.size_bytes() / ss, Uuid::new_v4());
    let align = ALIGN / ss;
    let first = table.first_usable_lba.div_ceil(align) * align;
    table.partitions.push(Partition {
        number: HEARTBEAT_NUMBER,
        type_guid: TYPE_HEARTBEAT,
        unique_guid: Uuid::new_v5(&table.disk_guid, b"heartbeat"),
        first_lba: first,
        last_lba: first + HEARTBEAT_BYTES / ss - 1,
        attributes: 0,
        name: "ocfs2-csi-heartbeat".into(),
    });
    table
}

/// Formats the heartbeat partition if it holds no filesystem (a crash right
/// after initialisation), and returns its filesystem UUID. Nodes cannot
/// heartbeat on a device without one, so formatting a blank one is safe.
async fn ensure_heartbeat(
    lun: &Path,
    hb: &Partition,
    sector_size: u64,
    cluster_name: &str,
    writer: &dyn TableWriter,
    tools: &Ocfs2Tools,
    regions: &dyn RegionDevices,
) -> Result<Uuid, OpenError> {
    let offset = hb.first_lba * sector_size;
    let size = (hb.last_lba - hb.first_lba + 1) * sector_size;
    let found = with_region(regions, lun, offset, size, |dev| async move {
        let info = match tools.inspect(&dev).await.map_err(LunError::from)? {
            Some(info) => info,
            None => {
                // Formatting is a write like the table's: the writer does it.
                writer
                    .take_if_free()
                    .await
                    .map_err(|source| LunError::Writer {
                        lun: lun.display().to_string(),
                        source,
                    })?;
                let uuid = Uuid::new_v4();
                tools
                    .mkfs_heartbeat(cluster_name, uuid, &dev)
                    .await
                    .map_err(LunError::from)?;
                tracing::info!(lun = %lun.display(), %uuid, "formatted heartbeat device");
                tools
                    .inspect(&dev)
                    .await
                    .map_err(LunError::from)?
                    .ok_or_else(|| {
                        LunError::NotReady("heartbeat device unreadable after mkfs".into())
                    })?
            }
        };
        Ok::<_, LunError>(info)
    })
    .await?;
    match found.cluster_name {
        Some(c) if c != cluster_name => Err(OpenError::OtherCluster {
            path: lun.display().to_string(),
            found: c,
            ours: cluster_name.to_string(),
        }),
        _ => Ok(found.uuid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::{test_cluster, test_writer, FakeSan};

    #[tokio::test]
    async fn one_lun_under_two_paths_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lun = dir.path().join("lun.raw");
        std::fs::File::create(&lun)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let alias = dir.path().join("by-id-alias");
        std::os::unix::fs::symlink(&lun, &alias).unwrap();
        let san = FakeSan::new();
        for p in [&lun, &alias] {
            san.add_lun(p, Arc::new(LunFile::open(p).unwrap()));
        }
        let tools = san.tools();

        let init = [lun.clone()];
        let one = open_all(
            std::slice::from_ref(&lun),
            &init,
            &test_writer(),
            &test_cluster(),
            &tools,
            san.as_ref(),
        )
        .await
        .unwrap();
        let one = one.luns;
        assert_eq!(one.len(), 1);
        match open_all(
            &[lun.clone(), alias.clone()],
            &init,
            &test_writer(),
            &test_cluster(),
            &tools,
            san.as_ref(),
        )
        .await
        {
            Err(OpenError::SameLun { path, guid }) => {
                assert_eq!(path, alias.display().to_string());
                assert_eq!(guid, one[0].disk_guid);
            }
            Err(other) => panic!("expected SameLun, got {other}"),
            Ok(opened) => panic!("opened {} LUNs", opened.luns.len()),
        }
    }

    /// A standby waiting for the writer lease while the writer initialises
    /// the blank LUN it scanned: it takes the lease when the writer dies,
    /// and must not initialise the LUN a second time (found in the nodes
    /// tier: a replica that scanned the blank LUN took the lease minutes
    /// later, when the node of the writer was lost, and wrote a new table
    /// over the one whose volume was in use).
    #[tokio::test]
    async fn a_blank_lun_initialised_while_waiting_for_the_lease_is_not_initialised_again() {
        use crate::controller::writer::{SoleWriter, Stamp, WriterError};
        use crate::disk::lun_io::SparseIo;
        use futures::future::BoxFuture;

        /// Not the writer until `take_if_free`, which first lets the
        /// other controller open (initialise) the LUN.
        struct Late {
            held: std::sync::atomic::AtomicBool,
            meanwhile: std::sync::Mutex<Option<BoxFuture<'static, ()>>>,
            inner: SoleWriter,
        }
        impl TableWriter for Late {
            fn take_if_free(&self) -> BoxFuture<'_, Result<(), WriterError>> {
                let meanwhile = self.meanwhile.lock().unwrap().take();
                Box::pin(async move {
                    if let Some(f) = meanwhile {
                        f.await;
                    }
                    self.held.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                })
            }
            fn holds(&self) -> bool {
                self.held.load(std::sync::atomic::Ordering::SeqCst)
            }
            fn check(&self) -> BoxFuture<'_, Result<Stamp, WriterError>> {
                self.inner.check()
            }
            fn confirm(&self, stamp: Stamp) -> BoxFuture<'_, Result<(), WriterError>> {
                self.inner.confirm(stamp)
            }
            fn who(&self) -> String {
                "late standby".into()
            }
            fn changes(&self) -> &tokio::sync::Mutex<()> {
                self.inner.changes()
            }
        }

        const PATH: &str = "/dev/disk/by-id/fake-shared";
        let disk = SparseIo::new(512, 4 << 30);
        let san = FakeSan::new();
        san.add_lun(Path::new(PATH), Arc::new(disk.clone()));
        let (first, other) = (san.clone(), disk.clone());
        let late = Arc::new(Late {
            held: false.into(),
            meanwhile: std::sync::Mutex::new(Some(Box::pin(async move {
                first.open_lun(PATH, Arc::new(other)).await;
            }))),
            inner: SoleWriter::default(),
        });
        let (cluster, tools) = (test_cluster(), san.tools());
        let open = || {
            open_lun(
                Path::new(PATH),
                Arc::new(disk.clone()),
                true,
                late.clone(),
                &cluster,
                &tools,
                san.as_ref(),
            )
        };
        let before_guid = || gpt::read(&disk).unwrap().gpt.disk_guid;
        match open().await {
            Err(OpenError::Changed { path }) => assert_eq!(path, PATH),
            Err(e) => panic!("expected Changed, got {e}"),
            Ok(lun) => panic!(
                "initialised the LUN again over the first controller's table: disk GUID {} now ({} on disk)",
                lun.disk_guid,
                before_guid()
            ),
        }
        let made = before_guid();
        // Opened again, it finds the first controller's table and keeps it.
        let lun = open().await.unwrap();
        assert_eq!(lun.disk_guid, made);
        assert_eq!(before_guid(), made);
    }
}
