//! One writer per LUN, enforced on the LUN itself: the controller process
//! holding the LUN's writer lease (`disk::lease`) is the only one that
//! changes its partition table. Kubernetes does not run exactly one
//! controller pod (a replacement starts while a cut-off pod still runs), so
//! nothing here trusts the API.
//!
//! - A contender takes a free or released lease at once, and a held one
//!   only after seeing its counter stand still for the holder's lease time.
//!   It writes itself in with the next generation, waits `settle`, and
//!   holds the lease only if the sector still names it.
//! - The holder advances the counter every quarter of the lease time, and
//!   treats itself as the writer only while its last renewal began less
//!   than half the lease time ago: a holder that is paused, cut off from
//!   the LUN or starved stops writing well before anyone may take over.
//! - Right before every table write the holder reads the sector again
//!   (compare, then write) and right after it checks it still holds it, so
//!   a change made while it lost the lease is never acknowledged.
//!
//! - Several controllers may run (the chart runs two). The provisioner
//!   and resizer sidecars elect their leaders on their own, so a change may
//!   reach a standby: it writes a handover request (`disk::lease::Request`)
//!   and waits; the holder, once idle for `idle()`, releases the lease for
//!   that standby only, which takes it at once. A holder that dies is still
//!   taken over only after its lease time.
//!
//! What it cannot do without SCSI COMPARE AND WRITE or fencing: a write
//! that the storage holds back (queued on a path that is down) for longer
//! than the lease time may land after another writer took over. The table
//! stamp (`Stamp`) makes such a late write visible to the next writer,
//! which then refuses to build on it.

use crate::disk::blocking::run_blocking;
use crate::disk::lease::{self, Lease, LeaseError, Request};
use crate::disk::lun_io::BlockIo;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The default lease time: how long a holder may stop renewing before a
/// contender takes over (the failover time after a holder dies without
/// releasing).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub lease: Duration,
    /// Who this process is, for the people reading the sector or the logs.
    pub owner_name: String,
}

impl WriterConfig {
    fn renew_every(&self) -> Duration {
        self.lease / 4
    }
    /// The holder writes only while its last renewal is younger than this.
    fn fresh_for(&self) -> Duration {
        self.lease / 2
    }
    /// The wait between writing a claim and reading it back: far longer
    /// than another contender's read-then-write.
    fn settle(&self) -> Duration {
        (self.lease / 10).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }
    /// How long a holder must have made no table change before it hands
    /// the lease over on request.
    fn idle(&self) -> Duration {
        self.settle() * 2
    }
    /// How often a holder looks for handover requests (and a standby
    /// watches the lease).
    fn tick(&self) -> Duration {
        self.renew_every().min(Duration::from_secs(1))
    }
    fn lease_ms(&self) -> u32 {
        u32::try_from(self.lease.as_millis()).unwrap_or(u32::MAX)
    }
}

/// What every table write carries in the heartbeat partition's name: the
/// writer (first 32 bits of its owner UUID), its generation and a per-process
/// sequence number. It fits the 36 UTF-16 units of a GPT name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub writer: u32,
    pub generation: u32,
    pub seq: u32,
}

impl Stamp {
    pub fn name(&self) -> String {
        format!(
            "w{:08x} g{:x} s{:x}",
            self.writer, self.generation, self.seq
        )
    }

    /// Reads a heartbeat partition name written by `name`.
    pub fn parse(name: &str) -> Option<Stamp> {
        let mut words = name.split(' ');
        let mut field = |prefix: char| {
            let w = words.next()?.strip_prefix(prefix)?;
            u32::from_str_radix(w, 16).ok()
        };
        let stamp = Stamp {
            writer: field('w')?,
            generation: field('g')?,
            seq: field('s')?,
        };
        words.next().is_none().then_some(stamp)
    }
}

/// Who may write a LUN's partition table: the LUN's lease ([`Writer`]), or
/// for in-process tests of the volume logic, a process that is by
/// construction the only one ([`SoleWriter`]).
pub trait TableWriter: Send + Sync {
    /// Becomes the writer for a write at start-up (see `Writer::take_if_free`).
    fn take_if_free(&self) -> BoxFuture<'_, Result<(), WriterError>>;
    /// Whether this process holds the lease now: what it read before it
    /// did may be stale by the time it does.
    fn holds(&self) -> bool;
    /// Right before a table write: the stamp to write, or why not to.
    fn check(&self) -> BoxFuture<'_, Result<Stamp, WriterError>>;
    /// Right after a table write stamped `stamp`: still the writer.
    fn confirm(&self, stamp: Stamp) -> BoxFuture<'_, Result<(), WriterError>>;
    /// Who this writer is, for people (pod or host name and PID).
    fn who(&self) -> String;
    /// Held by whoever changes the table (read, change, write): the lease
    /// is handed over only while nobody in this process holds it.
    fn changes(&self) -> &tokio::sync::Mutex<()>;
}

impl TableWriter for Writer {
    fn take_if_free(&self) -> BoxFuture<'_, Result<(), WriterError>> {
        Box::pin(Writer::take_if_free(self))
    }
    fn holds(&self) -> bool {
        self.is_writer()
    }
    fn check(&self) -> BoxFuture<'_, Result<Stamp, WriterError>> {
        Box::pin(Writer::check(self))
    }
    fn confirm(&self, stamp: Stamp) -> BoxFuture<'_, Result<(), WriterError>> {
        Box::pin(async move {
            match self.generation() {
                Some(g) if g as u32 == stamp.generation => Writer::confirm(self, g).await,
                _ => Err(WriterError::NotWriter(None)),
            }
        })
    }
    fn who(&self) -> String {
        self.cfg.owner_name.clone()
    }
    fn changes(&self) -> &tokio::sync::Mutex<()> {
        &self.changes
    }
}

/// The only writer there is: for in-process tests, where one fake LUN
/// belongs to one test. Stamps generation 1 with a growing sequence.
#[derive(Default)]
pub struct SoleWriter {
    seq: AtomicU64,
    changes: tokio::sync::Mutex<()>,
}

impl TableWriter for SoleWriter {
    fn take_if_free(&self) -> BoxFuture<'_, Result<(), WriterError>> {
        Box::pin(async { Ok(()) })
    }
    fn holds(&self) -> bool {
        true
    }
    fn check(&self) -> BoxFuture<'_, Result<Stamp, WriterError>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) as u32;
        Box::pin(async move {
            Ok(Stamp {
                writer: 0x5013_0000,
                generation: 1,
                seq,
            })
        })
    }
    fn confirm(&self, _: Stamp) -> BoxFuture<'_, Result<(), WriterError>> {
        Box::pin(async { Ok(()) })
    }
    fn who(&self) -> String {
        "in-process test".into()
    }
    fn changes(&self) -> &tokio::sync::Mutex<()> {
        &self.changes
    }
}

/// This process's identity in every writer lease it takes: one per
/// process, so a LUN opened again after a failed try knows its own claim.
fn process_owner() -> Uuid {
    static OWNER: std::sync::OnceLock<Uuid> = std::sync::OnceLock::new();
    *OWNER.get_or_init(Uuid::new_v4)
}

fn writer_id(owner: &Uuid) -> u32 {
    u32::from_be_bytes(owner.as_bytes()[..4].try_into().expect("4 bytes"))
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("this controller is not the writer of the LUN{}; changes are served by the writer, \
             or by this controller once the writer stops renewing its lease", holder_text(.0))]
    NotWriter(Option<Lease>),
    #[error(
        "this controller's last renewal of its writer lease began {0:?} ago (the lease lets \
             it write for {1:?}): the LUN or this process is too slow to write safely"
    )]
    Stale(Duration, Duration),
    #[error("the writer lease sector: {0}")]
    Lease(#[from] LeaseError),
    #[error("the writer lease sector did not answer within {0:?}")]
    Stalled(Duration),
}

fn holder_text(l: &Option<Lease>) -> String {
    match l {
        Some(l) if !l.released => format!(
            ": {} holds it (generation {}; taken over after {} ms without renewal)",
            l.owner_name, l.generation, l.lease_ms
        ),
        _ => " (the lease is free; this controller takes it within moments)".into(),
    }
}

#[derive(Debug)]
enum State {
    /// Not the writer; what the sector said last, and since when it has
    /// not changed (the takeover clock, local and monotonic).
    Standby { seen: Option<(Lease, Instant)> },
    Held {
        generation: u64,
        counter: u64,
        /// When the last successful renewal (or the claim) began.
        renewed: Instant,
    },
}

pub struct Writer {
    io: Arc<dyn BlockIo>,
    lun: String,
    me: Uuid,
    cfg: WriterConfig,
    state: Mutex<State>,
    seq: AtomicU64,
    /// When this process last began or ended a table write (`check`,
    /// `confirm`): a holder busy with changes does not hand over.
    last_use: Mutex<Option<Instant>>,
    /// See [`TableWriter::changes`].
    changes: tokio::sync::Mutex<()>,
    contending: tokio::sync::Mutex<()>,
}

impl Writer {
    pub fn new(io: Arc<dyn BlockIo>, lun: String, cfg: WriterConfig) -> Arc<Writer> {
        Writer::with_owner(io, lun, cfg, process_owner())
    }

    /// A writer with its own identity: two controller processes in one
    /// test.
    fn with_owner(io: Arc<dyn BlockIo>, lun: String, cfg: WriterConfig, me: Uuid) -> Arc<Writer> {
        Arc::new(Writer {
            io,
            lun,
            me,
            cfg,
            state: Mutex::new(State::Standby { seen: None }),
            seq: AtomicU64::new(0),
            last_use: Mutex::new(None),
            changes: tokio::sync::Mutex::new(()),
            contending: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_writer(&self) -> bool {
        matches!(*self.state(), State::Held { .. })
    }

    async fn read(&self) -> Result<Option<Lease>, WriterError> {
        let io = self.io.clone();
        let limit = self.cfg.fresh_for();
        run_blocking(limit, move || lease::read(io.as_ref()))
            .await
            .map_err(|_| WriterError::Stalled(limit))?
            .map_err(WriterError::from)
    }

    async fn write(&self, l: Lease) -> Result<(), WriterError> {
        let io = self.io.clone();
        let limit = self.cfg.fresh_for();
        run_blocking(limit, move || lease::write(io.as_ref(), &l))
            .await
            .map_err(|_| WriterError::Stalled(limit))?
            .map_err(WriterError::from)
    }

    fn mine(&self, generation: u64, counter: u64, released: bool) -> Lease {
        Lease {
            owner: self.me,
            generation,
            counter,
            lease_ms: self.cfg.lease_ms(),
            released,
            handed_to: Uuid::nil(),
            owner_name: self.cfg.owner_name.clone(),
        }
    }

    fn used_now(&self) {
        *self.last_use.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn idle(&self) -> bool {
        self.last_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= self.cfg.idle())
    }

    /// One step of the protocol: renew when holding, otherwise watch and
    /// take over when allowed. Returns whether this process is the writer.
    pub async fn step(&self) -> bool {
        let held = match &*self.state() {
            State::Held {
                generation,
                counter,
                ..
            } => Some((*generation, *counter)),
            State::Standby { .. } => None,
        };
        match held {
            Some((generation, counter)) => self.renew(generation, counter).await,
            None => self.contend().await,
        }
    }

    async fn renew(&self, generation: u64, counter: u64) -> bool {
        let began = Instant::now();
        let on_disk = match self.read().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(lun = %self.lun, error = %e, "cannot read the writer lease to renew it");
                return true;
            }
        };
        match on_disk {
            Some(l) if l.owner == self.me && l.generation == generation => {
                let next = self.mine(generation, counter + 1, false);
                match self.write(next).await {
                    Ok(()) => {
                        *self.state() = State::Held {
                            generation,
                            counter: counter + 1,
                            renewed: began,
                        };
                    }
                    Err(e) => {
                        tracing::warn!(lun = %self.lun, error = %e, "cannot renew the writer lease")
                    }
                }
                true
            }
            other => {
                tracing::error!(
                    lun = %self.lun,
                    holder = %holder_text(&other),
                    generation,
                    "lost the writer lease of the LUN: no more table writes from this controller"
                );
                *self.state() = State::Standby {
                    seen: other.map(|l| (l, Instant::now())),
                };
                false
            }
        }
    }

    async fn contend(&self) -> bool {
        // The loop and a waiting change may both contend: one at a time, or
        // the second would take this process's fresh claim as an earlier
        // one and claim again.
        let _one = self.contending.lock().await;
        if self.is_writer() {
            return true;
        }
        let on_disk = match self.read().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(lun = %self.lun, error = %e, "cannot read the writer lease");
                return false;
            }
        };
        let now = Instant::now();
        let (free, previous) = {
            let mut state = self.state();
            let State::Standby { seen } = &mut *state else {
                return true;
            };
            match on_disk {
                None => (true, None),
                // Released, or this process's own (an earlier try at opening
                // the LUN claimed it): taken at once, with the next generation.
                Some(l) if l.free_for(&self.me) || (l.owner == self.me && !l.released) => {
                    (true, Some(l))
                }
                Some(l) => {
                    // The takeover clock restarts whenever the holder moves.
                    let since = match seen {
                        Some((old, since))
                            if old.owner == l.owner
                                && old.generation == l.generation
                                && old.counter == l.counter =>
                        {
                            *since
                        }
                        _ => {
                            tracing::info!(
                                lun = %self.lun,
                                holder = %l.owner_name,
                                generation = l.generation,
                                lease_ms = l.lease_ms,
                                "standby: another controller is the LUN's writer"
                            );
                            now
                        }
                    };
                    let expired = now.duration_since(since)
                        > Duration::from_millis(u64::from(l.lease_ms)) + self.cfg.settle();
                    *seen = Some((l.clone(), since));
                    (expired, Some(l))
                }
            }
        };
        if !free {
            return false;
        }
        self.claim(previous).await
    }

    async fn claim(&self, previous: Option<Lease>) -> bool {
        let generation = previous.as_ref().map_or(0, |l| l.generation) + 1;
        let began = Instant::now();
        if let Err(e) = self.write(self.mine(generation, 0, false)).await {
            tracing::warn!(lun = %self.lun, error = %e, "cannot write a claim of the writer lease");
            return false;
        }
        tokio::time::sleep(self.cfg.settle()).await;
        match self.read().await {
            Ok(Some(l)) if l.owner == self.me && l.generation == generation => {
                tracing::info!(
                    lun = %self.lun,
                    generation,
                    previous = %previous.as_ref().map_or("nobody".to_string(), |p| format!(
                        "{}{}", p.owner_name, match (p.released, p.handed_to == self.me) {
                            (true, true) => " (handed over on request)",
                            (true, false) => " (released)",
                            (false, _) => " (stopped renewing)",
                        }
                    )),
                    "this controller is now the LUN's writer"
                );
                *self.state() = State::Held {
                    generation,
                    counter: 0,
                    renewed: began,
                };
                true
            }
            other => {
                tracing::info!(lun = %self.lun, "another controller claimed the writer lease at the same time; standing by");
                *self.state() = State::Standby {
                    seen: other.ok().flatten().map(|l| (l, Instant::now())),
                };
                false
            }
        }
    }

    /// Runs the protocol until the process ends: renews (or watches) the
    /// lease, and while holding it answers handover requests when idle.
    pub async fn run(self: Arc<Self>) {
        let mut next_step = Instant::now();
        loop {
            if Instant::now() >= next_step {
                let holding = self.step().await;
                next_step = Instant::now()
                    + if holding {
                        self.cfg.renew_every()
                    } else {
                        self.cfg.tick()
                    };
            }
            if self.is_writer() {
                self.answer_request().await;
            }
            tokio::time::sleep(self.cfg.tick()).await;
        }
    }

    /// Hands the lease to a standby that asked for it, if this holder is
    /// idle; a busy one answers at a later tick.
    async fn answer_request(&self) {
        let Some(generation) = self.generation() else {
            return;
        };
        let io = self.io.clone();
        let limit = self.cfg.fresh_for();
        let request = match run_blocking(limit, move || lease::read_request(io.as_ref())).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(lun = %self.lun, error = %e, "cannot read the handover request sector");
                return;
            }
            Err(_) => return,
        };
        // A request about an earlier generation was answered (giving up
        // ends this generation) or is stale.
        if request.requester == self.me || request.generation != generation {
            return;
        }
        // No change of this process may be between its compare and its
        // write while the lease changes hands: held until given up.
        let Ok(_no_change) = self.changes.try_lock() else {
            return;
        };
        if !self.idle() {
            return;
        }
        tracing::info!(
            lun = %self.lun,
            requester = %request.requester_name,
            generation,
            "handing the writer lease over on request (this controller is idle)"
        );
        self.give_up(request.requester).await;
    }

    /// A standby asked for a change: asks the holder to hand the lease
    /// over and waits for it, up to one lease time. Taken at once when it
    /// is free.
    async fn request_handover(&self) -> Result<(), WriterError> {
        let deadline = Instant::now() + self.cfg.lease;
        let mut asked_generation = None;
        loop {
            if self.contend().await {
                return Ok(());
            }
            let holder = self.read().await?;
            match &holder {
                Some(l) if !l.free_for(&self.me) && asked_generation != Some(l.generation) => {
                    let request = Request {
                        requester: self.me,
                        generation: l.generation,
                        requester_name: self.cfg.owner_name.clone(),
                    };
                    let io = self.io.clone();
                    let limit = self.cfg.fresh_for();
                    run_blocking(limit, move || lease::write_request(io.as_ref(), &request))
                        .await
                        .map_err(|_| WriterError::Stalled(limit))??;
                    tracing::info!(
                        lun = %self.lun,
                        holder = %l.owner_name,
                        generation = l.generation,
                        "asked the LUN's writer to hand its lease over for a change sent here"
                    );
                    asked_generation = Some(l.generation);
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(WriterError::NotWriter(holder));
            }
            tokio::time::sleep(self.cfg.settle().min(Duration::from_millis(200))).await;
        }
    }

    /// Takes the lease for a write at start-up (a new table, a repaired
    /// copy): at once when it is free or released, after its lease time
    /// when its holder stopped renewing (a crash); gives up after three
    /// lease times of a holder that keeps renewing (it does the write).
    pub async fn take_if_free(&self) -> Result<(), WriterError> {
        let give_up = Instant::now() + self.cfg.lease * 3;
        loop {
            if self.is_writer() || self.contend().await {
                return Ok(());
            }
            if Instant::now() >= give_up {
                return Err(WriterError::NotWriter(self.read().await.ok().flatten()));
            }
            tokio::time::sleep(self.cfg.renew_every().min(Duration::from_secs(1))).await;
        }
    }

    /// Compare: right before a table write. The stamp to write if this
    /// process holds the lease, has renewed it recently and the sector
    /// still names it.
    pub async fn check(&self) -> Result<Stamp, WriterError> {
        self.used_now();
        if !self.is_writer() {
            self.request_handover().await?;
            self.used_now();
        }
        let (generation, renewed) = match &*self.state() {
            State::Held {
                generation,
                renewed,
                ..
            } => (*generation, *renewed),
            State::Standby { seen } => {
                return Err(WriterError::NotWriter(seen.as_ref().map(|s| s.0.clone())))
            }
        };
        let age = renewed.elapsed();
        if age >= self.cfg.fresh_for() {
            return Err(WriterError::Stale(age, self.cfg.fresh_for()));
        }
        self.confirm(generation).await?;
        Ok(Stamp {
            writer: writer_id(&self.me),
            generation: generation as u32,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) as u32,
        })
    }

    /// After a table write (or before it): the sector still names this
    /// process with `generation`. On a loss, stands by.
    pub async fn confirm(&self, generation: u64) -> Result<(), WriterError> {
        self.used_now();
        match self.read().await? {
            Some(l) if l.owner == self.me && l.generation == generation && !l.released => Ok(()),
            other => {
                tracing::error!(lun = %self.lun, holder = %holder_text(&other), "lost the writer lease of the LUN");
                *self.state() = State::Standby {
                    seen: other.clone().map(|l| (l, Instant::now())),
                };
                Err(WriterError::NotWriter(other))
            }
        }
    }

    /// The generation held now, if any (for `confirm` after a write).
    pub fn generation(&self) -> Option<u64> {
        match &*self.state() {
            State::Held { generation, .. } => Some(*generation),
            State::Standby { .. } => None,
        }
    }

    /// Gives the lease up on a clean shutdown, so a standby takes over at
    /// once instead of after the lease time.
    pub async fn release(&self) {
        self.give_up(Uuid::nil()).await
    }

    /// Releases the lease for `to` (nil: for anyone).
    async fn give_up(&self, to: Uuid) {
        let (generation, counter) = {
            let mut state = self.state();
            let State::Held {
                generation,
                counter,
                ..
            } = *state
            else {
                return;
            };
            *state = State::Standby { seen: None };
            (generation, counter)
        };
        if self.confirm(generation).await.is_ok() {
            let released = Lease {
                handed_to: to,
                ..self.mine(generation, counter + 1, true)
            };
            match self.write(released).await {
                Ok(()) => tracing::info!(lun = %self.lun, generation, "released the writer lease"),
                Err(e) => {
                    tracing::warn!(lun = %self.lun, error = %e, "cannot release the writer lease")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lun_io::MemIo;

    fn cfg(name: &str, ms: u64) -> WriterConfig {
        WriterConfig {
            lease: Duration::from_millis(ms),
            owner_name: name.into(),
        }
    }

    #[test]
    fn stamps_fit_a_gpt_name_and_read_back() {
        let s = Stamp {
            writer: u32::MAX,
            generation: u32::MAX,
            seq: u32::MAX,
        };
        assert!(s.name().encode_utf16().count() <= 36, "{}", s.name());
        assert_eq!(Stamp::parse(&s.name()), Some(s));
        assert_eq!(Stamp::parse("ocfs2-csi-heartbeat"), None);
        assert_eq!(Stamp::parse("w1 g2 s3 x"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_writer_and_a_takeover_only_after_the_lease_time() {
        let io: Arc<dyn BlockIo> = Arc::new(MemIo::new(512, 2 << 20));
        let lease = Duration::from_millis(1500);
        let a = Writer::with_owner(io.clone(), "lun".into(), cfg("a", 1500), Uuid::new_v4());
        let b = Writer::with_owner(io.clone(), "lun".into(), cfg("b", 1500), Uuid::new_v4());
        a.take_if_free().await.unwrap();
        assert!(!b.step().await);
        assert!(a.check().await.is_ok());
        // b is sent a change: it asks a, which (stepping by hand here)
        // never answers, and keeps renewing: b gives up after a lease time.
        let renewing = {
            let a = a.clone();
            tokio::spawn(async move {
                loop {
                    a.step().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        assert!(matches!(b.check().await, Err(WriterError::NotWriter(Some(l))) if l.owner == a.me));
        renewing.abort();
        let _ = renewing.await;

        // a keeps renewing: b cannot take over (it sees the counter move).
        for _ in 0..5 {
            assert!(a.step().await);
            assert!(!b.step().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // a stops (paused, cut off): b takes over, and only after watching
        // the counter stand still for the lease time.
        let stopped = Instant::now();
        while !b.step().await {
            assert!(
                stopped.elapsed() < Duration::from_secs(60),
                "b never took over"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stopped.elapsed() > lease, "{:?}", stopped.elapsed());
        assert!(b.check().await.is_ok());
        // a comes back: it finds out before any write and stands by.
        assert!(a.check().await.is_err());
        assert!(!a.step().await);
        assert!(!a.is_writer());
        assert_eq!(lease::read(io.as_ref()).unwrap().unwrap().generation, 2);
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let io: Arc<dyn BlockIo> = Arc::new(MemIo::new(4096, 2 << 20));
        let a = Writer::with_owner(io.clone(), "lun".into(), cfg("a", 20_000), Uuid::new_v4());
        let b = Writer::with_owner(io.clone(), "lun".into(), cfg("b", 20_000), Uuid::new_v4());
        a.take_if_free().await.unwrap();
        a.release().await;
        assert!(!a.is_writer());
        let started = Instant::now();
        b.take_if_free().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(b.check().await.is_ok());
    }

    /// Two controllers, each running its loop, the chart's way: a change
    /// sent to the standby is served by it once the idle holder hands the
    /// lease over, well before a lease time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_holder_hands_over_on_request() {
        let io: Arc<dyn BlockIo> = Arc::new(MemIo::new(512, 2 << 20));
        let a = Writer::with_owner(io.clone(), "lun".into(), cfg("a", 20_000), Uuid::new_v4());
        let b = Writer::with_owner(io.clone(), "lun".into(), cfg("b", 20_000), Uuid::new_v4());
        a.take_if_free().await.unwrap();
        let loops = [tokio::spawn(a.clone().run()), tokio::spawn(b.clone().run())];
        let started = Instant::now();
        let stamp = b.check().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(stamp.generation, 2);
        assert!(!a.is_writer());
        let on_disk = lease::read(io.as_ref()).unwrap().unwrap();
        assert_eq!((on_disk.owner, on_disk.generation), (b.me, 2));
        // And back: a is sent a change next.
        let stamp = a.check().await.unwrap();
        assert_eq!(stamp.generation, 3);
        assert!(!b.is_writer());
        for l in loops {
            l.abort();
        }
    }

    /// A holder in the middle of a change (its compare done, its write to
    /// come) never hands over: the standby's call is refused after a lease
    /// time, retryably, and the holder's write goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_in_a_change_does_not_hand_over() {
        let io: Arc<dyn BlockIo> = Arc::new(MemIo::new(512, 2 << 20));
        let a = Writer::with_owner(io.clone(), "lun".into(), cfg("a", 1500), Uuid::new_v4());
        let b = Writer::with_owner(io.clone(), "lun".into(), cfg("b", 1500), Uuid::new_v4());
        a.take_if_free().await.unwrap();
        let changing = a.changes.lock().await;
        let stamp = a.check().await.unwrap();
        let loops = [tokio::spawn(a.clone().run()), tokio::spawn(b.clone().run())];
        let refused = b.check().await;
        assert!(
            matches!(refused, Err(WriterError::NotWriter(Some(ref l))) if l.owner == a.me),
            "{refused:?}"
        );
        assert!(a.is_writer());
        a.confirm(stamp.generation.into()).await.unwrap();
        drop(changing);
        for l in loops {
            l.abort();
        }
    }

    /// A lease handed to one standby is not free for others, nor for the
    /// holder that handed it over.
    #[tokio::test]
    async fn a_lease_handed_to_one_standby_is_not_free_for_others() {
        let io: Arc<dyn BlockIo> = Arc::new(MemIo::new(512, 2 << 20));
        let a = Writer::with_owner(io.clone(), "lun".into(), cfg("a", 20_000), Uuid::new_v4());
        let c = Writer::with_owner(io.clone(), "lun".into(), cfg("c", 20_000), Uuid::new_v4());
        let b_id = Uuid::new_v4();
        a.take_if_free().await.unwrap();
        a.give_up(b_id).await;
        let handed = lease::read(io.as_ref()).unwrap().unwrap();
        assert!(handed.released && handed.handed_to == b_id);
        assert!(!a.step().await);
        assert!(!c.step().await);
        assert!(handed.free_for(&b_id) && !handed.free_for(&a.me) && !handed.free_for(&c.me));
    }
}
