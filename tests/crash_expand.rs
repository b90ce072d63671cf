//! The controller SIGKILLed at random moments while ControllerExpandVolume
//! calls run on several volumes at once, round after round on one LUN.
//!
//! The driver grows a volume's last extent in place, into free space right
//! after it, and past a neighbour in new extents elsewhere on the LUN; it
//! never moves a volume. So the volumes here sit before gaps of different
//! sizes (none for the first one, the rest of the LUN for the last), and
//! each round every volume gets a chain of growing targets, sent one after
//! the other, some of them past its gap (up to a cap that keeps the LUN from
//! filling, so every answer is predictable whatever the order the volumes'
//! expands reach the table in).
//!
//! After every kill: one copy of the GPT whole (sgdisk -v clean unless the
//! kill tore the other copy), no overlap, every extent chain whole, every
//! head entry's number, start, GUID, type, name and attributes as they were,
//! and each volume's size (its extents added up) either the one its last
//! answered expand left or the one its expand in flight asked for, never
//! between or beyond. Then a restart, the unanswered expands
//! retried to convergence, sizes and answers as predicted, and each
//! filesystem untouched: the first MiBs of every partition byte for byte as
//! mkfs left them. At the end every volume is fsck-clean with the UUID and
//! FS generation mkfs gave it (a second mkfs would draw a new generation).

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::ListVolumesRequest;
use ocfs2_csi::disk::gpt::Gpt;
use ocfs2_csi::disk::gpt::{self, Partition};
use ocfs2_csi::disk::lun_io::LunFile;
use ocfs2_csi::ocfs2::layout::Layout;
use ocfs2_csi::volume::entry::{volume_entry, volume_in, ALIGN, TYPE_GLOBAL};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Code;

/// Rounds that must cut a growing expand; at most twice as many are run.
const ROUNDS: usize = 20;
/// The writer lease of these controllers: each restart after a SIGKILL
/// waits it out (nothing was released), so it is as short as allowed.
const CRASH_LEASE: &[&str] = &["--writer-lease-secs", "1"];
/// Sparse: only the tables and the filesystems' heads are ever written.
const LUN_BYTES: u64 = 1024 * GIB;
const START_MIB: u64 = 256;
/// Free space left after each volume, in GiB; the last volume has the rest
/// of the LUN.
const GAPS_GIB: [u64; 5] = [0, 2, 3, 5, 8];
/// No target goes beyond this (usable bytes): six volumes at the cap fill
/// less than the LUN, so no expand is refused for room, and rounds of about
/// a GiB each never reach it.
const VOLUME_CAP: u64 = 128 * GIB;
/// Kills fall uniformly in 0..window; the window starts here and then
/// follows how long a round's expands take on this machine (see
/// `next_window`), so most kills land mid-expand on a fast machine too.
const MAX_KILL_DELAY_MS: u64 = 300;
const MIN_KILL_DELAY_MS: u64 = 20;
/// Bytes of each partition's start compared after every round: superblock,
/// system directory and the first cluster group.
const HEAD_BYTES: u64 = 8 * MIB;
const DEFAULT_SEED: u64 = 0x6578_7061_6e64_6373;

/// What the driver does with one expand, predicted from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The partition becomes this many bytes.
    Grow(u64),
    /// It already offers the bytes: answered with its size, nothing written.
    Same,
}

/// One volume as the test tracks it.
#[derive(Clone, Debug)]
struct Vol {
    name: String,
    id: String,
    /// The head entry as created: everything but last_lba must stay so.
    entry: Partition,
    layout: Layout,
    /// The LBA after the last sector its head could grow into in place
    /// when it was made.
    room_end: u64,
    /// The volume's bytes now (its extents added up).
    bytes: u64,
    head: Vec<u8>,
    fs: FsIdentity,
}

impl Vol {
    /// What its head could grow to in place when it was made.
    fn in_place_bytes(&self) -> u64 {
        (self.room_end - self.entry.first_lba) * 512 / ALIGN * ALIGN
    }

    /// The driver's rule: grow to the size that offers the request rounded
    /// to MiB (there is always room here, see [`VOLUME_CAP`]).
    fn predict(&self, from_bytes: u64, required: u64) -> Outcome {
        let wanted = required.div_ceil(MIB) * MIB;
        if wanted <= self.layout.usable_bytes(from_bytes, ALIGN) {
            return Outcome::Same;
        }
        Outcome::Grow(self.layout.partition_bytes(wanted, ALIGN))
    }

    fn part(&self, bytes: u64) -> Part {
        Part {
            number: self.entry.number,
            guid: self.entry.unique_guid.to_string(),
            first: self.entry.first_lba,
            last: self.entry.first_lba + bytes / 512 - 1,
            type_guid: self.entry.type_guid.to_string(),
        }
    }
}

/// A chain of expands for one volume, with the partition size each step
/// leaves behind (index 0: before the first).
#[derive(Clone, Debug)]
struct Chain {
    vol: usize,
    targets: Vec<u64>,
    outcomes: Vec<Outcome>,
    sizes: Vec<u64>,
}

impl Chain {
    fn new(v: &Vol, vol: usize, targets: Vec<u64>) -> Chain {
        let mut sizes = vec![v.bytes];
        let mut outcomes = Vec::new();
        for &t in &targets {
            let now = *sizes.last().unwrap();
            let o = v.predict(now, t);
            outcomes.push(o);
            sizes.push(match o {
                Outcome::Grow(b) => b,
                Outcome::Same => now,
            });
        }
        Chain {
            vol,
            targets,
            outcomes,
            sizes,
        }
    }
}

/// Checks one answer against the prediction; the expand's capacity is the
/// usable size of the partition it leaves.
fn check_answer(
    v: &Vol,
    chain: &Chain,
    step: usize,
    answer: &Result<i64, tonic::Status>,
) -> Result<(), String> {
    let (target, outcome) = (chain.targets[step], chain.outcomes[step]);
    let after = chain.sizes[step + 1];
    match (outcome, answer) {
        (Outcome::Grow(_) | Outcome::Same, Ok(cap)) => {
            let want = v.layout.usable_bytes(after, ALIGN) as i64;
            if *cap == want && *cap as u64 >= target {
                Ok(())
            } else {
                Err(format!(
                    "{} to {target}: capacity {cap}, expected {want} ({outcome:?})",
                    v.name
                ))
            }
        }
        _ => Err(format!(
            "{} to {target}: expected {outcome:?}, got {answer:?}",
            v.name
        )),
    }
}

/// Sends a chain's steps from `from`, one after the other. Returns how many
/// were answered, the answers checked; stops at the first failure that the
/// kill explains (`killed` set), and reports any other.
async fn run_chain(
    mut c: ControllerClient<Channel>,
    v: Vol,
    chain: Chain,
    from: usize,
    killed: Arc<AtomicBool>,
) -> Result<usize, String> {
    for step in from..chain.targets.len() {
        let answer = c
            .controller_expand_volume(expand_request(&v.id, chain.targets[step]))
            .await
            .map(|r| r.into_inner().capacity_bytes);
        match check_answer(&v, &chain, step, &answer) {
            Ok(()) => {}
            // What a client sees when the server dies under its call.
            Err(_)
                if killed.load(Ordering::SeqCst)
                    && answer.as_ref().is_err_and(|s| {
                        matches!(
                            s.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled
                        )
                    }) =>
            {
                return Ok(step)
            }
            Err(why) => return Err(why),
        }
    }
    Ok(chain.targets.len())
}

/// Identity of a filesystem: UUID, the FS generation mkfs draws at random,
/// and its size in clusters (nodes grow it, the controller never does).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FsIdentity {
    uuid: String,
    generation: String,
    clusters: String,
}

fn fs_identity(lun: &Path, part: &Part) -> FsIdentity {
    with_loop(lun, part.first * 512, part.bytes(), |dev| {
        let (ok, stats) = run("debugfs.ocfs2", &["-R", "stats", dev]);
        assert!(ok, "debugfs.ocfs2 stats: {stats}");
        let field = |key: &str| {
            stats
                .lines()
                .find_map(|l| l.split_once(key).map(|(_, v)| v))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_else(|| panic!("no {key} in: {stats}"))
        };
        FsIdentity {
            uuid: field("UUID:"),
            generation: field("FS Generation:"),
            clusters: field("Clusters:"),
        }
    })
}

fn head(lun: &Path, p: &Part) -> Vec<u8> {
    let mut buf = vec![0u8; HEAD_BYTES as usize];
    std::fs::File::open(lun)
        .unwrap()
        .read_exact_at(&mut buf, p.first * 512)
        .unwrap();
    buf
}

/// Creates the volumes with a spacer volume after each, then deletes the
/// spacers: first-fit allocation lays them out in order, so each volume is
/// followed by its gap.
async fn make_volumes(c: &mut ControllerClient<Channel>, lun: &Path) -> Vec<Vol> {
    let mut ids = Vec::new();
    let mut spacers = Vec::new();
    for (i, gap) in GAPS_GIB.iter().chain([&0]).enumerate() {
        let name = format!("grow-{i}");
        let v = c
            .create_volume(create_request(&name, START_MIB * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ids.push((name, v.volume_id, v.volume_context["partitionGuid"].clone()));
        if *gap > 0 && i < GAPS_GIB.len() {
            // One slot, so the spacer's own overhead is small; its usable
            // size is what the gap loses to the rounding, near enough.
            let mut req = create_request(&format!("spacer-{i}"), *gap * GIB);
            req.parameters.insert("nodeSlots".into(), "1".into());
            let s = c.create_volume(req).await.unwrap().into_inner().volume;
            spacers.push(s.unwrap().volume_id);
        }
    }
    for id in spacers {
        c.delete_volume(delete_request(&id)).await.unwrap();
    }
    let table = read_table(lun);
    let mut vols = Vec::new();
    for (name, id, guid) in ids {
        let p = table
            .partitions
            .iter()
            .find(|p| p.unique_guid.to_string() == guid)
            .unwrap()
            .clone();
        let room_end = table
            .partitions
            .iter()
            .map(|q| q.first_lba)
            .filter(|&f| f > p.last_lba)
            .min()
            .unwrap_or(table.last_usable_lba + 1);
        let layout = volume_entry(&p, 512).unwrap().layout;
        let bytes = (p.last_lba - p.first_lba + 1) * 512;
        let mut v = Vol {
            name,
            id,
            entry: p,
            layout,
            room_end,
            bytes,
            head: Vec::new(),
            fs: FsIdentity {
                uuid: String::new(),
                generation: String::new(),
                clusters: String::new(),
            },
        };
        let part = v.part(bytes);
        v.head = head(lun, &part);
        v.fs = fs_identity(lun, &part);
        assert_eq!(
            v.fs.uuid,
            ocfs2_csi::volume::id::filesystem_uuid(&v.name)
                .simple()
                .to_string()
                .to_uppercase()
        );
        vols.push(v);
    }
    vols
}

/// A round's targets for one volume: a few growing steps (some too small
/// to need any growth), and now and then a last one just or far past the
/// room its head had in place; none beyond [`VOLUME_CAP`].
fn targets(rng: &mut Rng, v: &Vol) -> Vec<u64> {
    let mut t = v.layout.usable_bytes(v.bytes, ALIGN);
    let mut out = Vec::new();
    for _ in 0..3 + rng.below(4) {
        t += (1 + rng.below(96)) * MIB;
        out.push(t);
    }
    let in_place = v.layout.usable_bytes(v.in_place_bytes(), ALIGN);
    match rng.below(5) {
        0 => out.push(in_place.max(t) + MIB),
        1 => out.push(in_place.max(t) + (1 + rng.below(3)) * GIB),
        _ => {}
    }
    out.into_iter().map(|t| t.min(VOLUME_CAP)).collect()
}

fn read_table(lun: &Path) -> Gpt {
    ocfs2_csi::volume::extents::read_valid(&LunFile::open(lun).unwrap())
        .expect("a valid table with whole extent chains")
        .gpt
}

/// The volume's head entry and its size (extents added up), from `table`.
fn volume_now(table: &Gpt, v: &Vol) -> (Partition, u64, usize) {
    let p = table
        .partitions
        .iter()
        .find(|p| p.unique_guid == v.entry.unique_guid)
        .unwrap_or_else(|| panic!("{} lost: {:#?}", v.name, table.partitions));
    let e = volume_in(table, p).expect("still a volume");
    (p.clone(), e.size, e.extents.len())
}

/// What a kill left, per round.
#[derive(Default)]
struct Found {
    torn_table: bool,
    sgdisk_objected: bool,
    /// Volumes whose in-flight expand had reached the disk.
    at_new: usize,
    /// Volumes whose in-flight growing expand had not.
    at_old: usize,
    /// What sgdisk -v said about a torn table.
    objection: String,
}

/// The table right after a kill.
fn inspect_after_kill(lun: &Path, vols: &[Vol], chains: &[Chain], answered: &[usize]) -> Found {
    let read = gpt::read(&LunFile::open(lun).unwrap()).expect("a readable table after a kill");
    read_table(lun);
    let mut found = Found {
        torn_table: !(read.primary_valid && read.backup_valid),
        ..Found::default()
    };
    let (ok, text) = run("sgdisk", &["-v", lun.to_str().unwrap()]);
    found.sgdisk_objected = !(ok && text.contains("No problems found"));
    assert!(
        found.torn_table || !found.sgdisk_objected,
        "sgdisk -v after a kill: {text}"
    );
    if found.sgdisk_objected {
        found.objection = text
            .lines()
            .find(|l| l.contains("CRC") || l.contains("header") || l.contains("table"))
            .unwrap_or("")
            .trim()
            .to_string();
    }
    let parts = &read.gpt.partitions;
    // sgdisk reads the same partitions (from the copy it trusts).
    let mut ours: Vec<Listed> = parts
        .iter()
        .map(|p| Listed {
            number: p.number,
            first: p.first_lba,
            last: p.last_lba,
        })
        .collect();
    let mut theirs = sgdisk_partitions(lun);
    ours.sort();
    theirs.sort();
    assert_eq!(theirs, ours, "sgdisk -p and the driver's reader disagree");
    let heads = parts
        .iter()
        .filter(|p| volume_entry(p, 512).is_some())
        .count();
    assert_eq!(heads, vols.len(), "{parts:#?}");
    assert_no_overlap(&partitions(lun));
    for (v, (chain, &done)) in vols.iter().zip(chains.iter().zip(answered)) {
        let (p, bytes, _) = volume_now(&read.gpt, v);
        let mut unchanged = v.entry.clone();
        unchanged.last_lba = p.last_lba;
        assert_eq!(p, unchanged, "{} changed beyond its size", v.name);
        assert!(p.type_guid == TYPE_GLOBAL, "{} not ready: {p:?}", v.name);
        let old = chain.sizes[done];
        let new = chain.sizes.get(done + 1).copied().unwrap_or(old);
        assert!(
            bytes == old || bytes == new,
            "{}: {bytes} bytes after the kill; its last answered expand left {old}, the one \
             in flight asked for {new}",
            v.name
        );
        if new != old {
            if bytes == new {
                found.at_new += 1;
            } else {
                found.at_old += 1;
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_during_expands_leave_old_or_new_sizes() {
    let mut rng = crash_rng(DEFAULT_SEED);
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", LUN_BYTES);
    let mut ctl = Controller::start_with(std::slice::from_ref(&lun), dir.path(), CRASH_LEASE).await;
    let test_started = Instant::now();
    let mut vols = make_volumes(&mut ctl.client().await, &lun).await;
    assert_gpt_valid(&lun);
    println!(
        "{} volumes of {START_MIB} MiB, gaps after them {:?} GiB and the rest of the LUN, \
         made in {:.1} s",
        vols.len(),
        GAPS_GIB,
        test_started.elapsed().as_secs_f64()
    );

    let (mut interesting, mut torn_rounds, mut at_new, mut at_old) = (0, 0, 0, 0);
    let (mut steps_total, mut past_room, mut most_extents) = (0, 0, 1);
    let mut objections = BTreeMap::new();
    let mut window = MAX_KILL_DELAY_MS;
    let mut round = 0;
    while interesting < ROUNDS / 2 || round < ROUNDS {
        assert!(
            round < 2 * ROUNDS,
            "only {interesting} of {round} kills landed mid-expand"
        );
        let chains: Vec<Chain> = vols
            .iter()
            .enumerate()
            .map(|(i, v)| Chain::new(v, i, targets(&mut rng, v)))
            .collect();
        let client = ctl.client().await;
        let killed = Arc::new(AtomicBool::new(false));
        let mut calls = JoinSet::new();
        for chain in &chains {
            let (c, v, chain, killed) = (
                client.clone(),
                vols[chain.vol].clone(),
                chain.clone(),
                killed.clone(),
            );
            calls.spawn(async move { (chain.vol, run_chain(c, v, chain, 0, killed).await) });
        }
        let delay = rng.below(window);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        killed.store(true, Ordering::SeqCst);
        crash(&mut ctl);
        let mut answered = vec![0; vols.len()];
        while let Some(joined) = tokio::time::timeout(Duration::from_secs(30), calls.join_next())
            .await
            .expect("calls end once the controller is dead")
        {
            let (i, result) = joined.unwrap();
            answered[i] = result.unwrap_or_else(|why| panic!("round {round}: {why}"));
        }
        let found = inspect_after_kill(&lun, &vols, &chains, &answered);

        // Restart; finish every chain from its first unanswered step.
        let restarted = Instant::now();
        ctl = Controller::start_with(std::slice::from_ref(&lun), dir.path(), CRASH_LEASE).await;
        // The killed one released nothing: its lease runs out first.
        ctl.wait_writer().await;
        assert_gpt_valid(&lun);
        let client = ctl.client().await;
        let mut retries = JoinSet::new();
        for (chain, &from) in chains.iter().zip(&answered) {
            let (c, v, chain) = (client.clone(), vols[chain.vol].clone(), chain.clone());
            let never = Arc::new(AtomicBool::new(false));
            retries.spawn(async move { run_chain(c, v, chain, from, never).await });
        }
        while let Some(joined) = retries.join_next().await {
            if let Err(why) = joined.unwrap() {
                panic!(
                    "round {round}, retry after restart: {why}\n{}",
                    ctl.log_text()
                );
            }
        }

        // Converged: the predicted sizes, nothing else changed, each
        // filesystem's head byte for byte as mkfs wrote it.
        assert_gpt_valid(&lun);
        assert_no_overlap(&partitions(&lun));
        let table = read_table(&lun);
        for (v, chain) in vols.iter_mut().zip(&chains) {
            let (p, bytes, extents) = volume_now(&table, v);
            let want = *chain.sizes.last().unwrap();
            assert_eq!(bytes, want, "round {round}: {} did not converge", v.name);
            assert_eq!(p.first_lba, v.entry.first_lba);
            most_extents = most_extents.max(extents);
            assert!(
                head(&lun, &head_part(&p)) == v.head,
                "round {round}: {} was written",
                v.name
            );
            v.bytes = want;
        }
        let n_steps: usize = chains.iter().map(|c| c.targets.len()).sum();
        let done_before: usize = answered.iter().sum();
        steps_total += n_steps;
        past_room += chains
            .iter()
            .map(|c| {
                let v = &vols[c.vol];
                c.sizes
                    .windows(2)
                    .filter(|w| w[1] > w[0] && w[1] > v.in_place_bytes())
                    .count()
            })
            .sum::<usize>();
        if found.at_new + found.at_old > 0 {
            interesting += 1;
        }
        torn_rounds += usize::from(found.torn_table);
        if found.sgdisk_objected {
            *objections.entry(found.objection.clone()).or_insert(0) += 1;
        }
        at_new += found.at_new;
        at_old += found.at_old;
        window = next_window(delay, done_before, n_steps);
        println!(
            "round {round:02}: kill at {delay:3} ms, {done_before}/{n_steps} expands answered; \
             growing expands cut: {} on disk, {} not; torn table {}; reconverged in {:.2} s; \
             sizes {:?} MiB",
            found.at_new,
            found.at_old,
            match (found.torn_table, found.sgdisk_objected) {
                (false, _) => "no",
                (true, false) => "yes",
                (true, true) => "yes (sgdisk -v objected)",
            },
            restarted.elapsed().as_secs_f64(),
            vols.iter().map(|v| v.bytes / MIB).collect::<Vec<_>>()
        );
        round += 1;
    }

    // An expand beyond what the LUN holds is refused without a write and
    // says how far the volume can grow; growing it that far then works,
    // and one MiB more is refused without a write.
    let mut c = ctl.client().await;
    let v = &mut vols[0];
    let before = table_bytes(&lun);
    let refused = c
        .controller_expand_volume(expand_request(&v.id, 2 * LUN_BYTES))
        .await
        .expect_err("more than the LUN");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(table_bytes(&lun) == before, "a refused expand wrote");
    let possible: u64 = refused
        .message()
        .split("at most ")
        .nth(1)
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in: {}", refused.message()));
    let cap = c
        .controller_expand_volume(expand_request(&v.id, possible))
        .await
        .unwrap_or_else(|s| panic!("{} to the {possible} bytes it said fit: {s:?}", v.name))
        .into_inner()
        .capacity_bytes;
    assert!(cap as u64 >= possible, "{cap} < {possible}");
    v.bytes = volume_now(&read_table(&lun), v).1;
    let before = table_bytes(&lun);
    let refused = c
        .controller_expand_volume(expand_request(&v.id, cap as u64 + MIB))
        .await
        .expect_err("one MiB more than fits");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(table_bytes(&lun) == before, "a refused expand wrote");
    let final_extents = volume_now(&read_table(&lun), v).2;

    // The end: the API, the tools and the filesystems agree.
    assert_gpt_valid(&lun);
    let listed = c
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let listed: HashMap<String, i64> = listed
        .entries
        .into_iter()
        .map(|e| {
            let v = e.volume.unwrap();
            (v.volume_id, v.capacity_bytes)
        })
        .collect();
    assert_eq!(listed.len(), vols.len());
    let mut sizes = BTreeMap::new();
    let table = read_table(&lun);
    for v in &vols {
        let (head_entry, bytes, _) = volume_now(&table, v);
        let p = head_part(&head_entry);
        assert_eq!(bytes, v.bytes);
        assert_eq!(
            listed[&v.id] as u64,
            v.layout.usable_bytes(v.bytes, ALIGN),
            "{}",
            v.name
        );
        assert!(head(&lun, &p) == v.head, "{} was written", v.name);
        assert_fsck_clean(&lun, &p);
        assert_eq!(
            fs_identity(&lun, &p),
            v.fs,
            "{}: not the mkfs of its create",
            v.name
        );
        sizes.insert(v.name.clone(), v.bytes / MIB);
    }
    println!(
        "{round} rounds in {:.1} s: {interesting} kills cut a growing expand ({at_new} had \
         reached the disk, {at_old} had not), {torn_rounds} torn tables; {steps_total} expands \
         ({past_room} past the room their head had in place; at most {most_extents} extents per \
         volume); {} filled the LUN in {final_extents} extents; final sizes {sizes:?} MiB, all \
         fsck-clean, same UUID and FS generation as created",
        test_started.elapsed().as_secs_f64(),
        vols[0].name,
    );
    for (what, n) in &objections {
        println!("sgdisk -v on a torn table ({n}x): {what}");
    }
    assert!(
        interesting >= ROUNDS / 2,
        "only {interesting} of {round} kills landed mid-expand"
    );
}

/// The next kill window: about as long as a whole round of expands takes,
/// judged from where this round's kill (at `delay` ms) found them.
fn next_window(delay: u64, answered: usize, steps: usize) -> u64 {
    let whole = if answered >= steps {
        // All done before the kill: a round takes less than `delay`.
        delay
    } else {
        delay * steps as u64 / answered.max(1) as u64
    };
    whole.clamp(MIN_KILL_DELAY_MS, MAX_KILL_DELAY_MS)
}

/// The testkit's view of a head entry (for loop devices over it).
fn head_part(p: &Partition) -> Part {
    Part {
        number: p.number,
        guid: p.unique_guid.to_string(),
        first: p.first_lba,
        last: p.last_lba,
        type_guid: p.type_guid.to_string(),
    }
}
