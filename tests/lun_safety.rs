//! What keeps a LUN's data safe from the controller itself (issue 12): a
//! LUN is initialised only when named in --init-lun and only when nothing
//! is found on it, so a table someone zapped is never taken as blank; the
//! read-only `scan-lun` lists what such a LUN still holds.

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::controller::writer::Stamp;
use ocfs2_csi::volume::entry::State;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

/// How long a refusing controller may take to say so.
const SAY: Duration = Duration::from_secs(60);

fn zero(lun: &Path, offset: u64, len: u64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(lun).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&vec![0u8; len as usize]).unwrap();
    f.sync_all().unwrap();
}

fn digest(lun: &Path) -> String {
    let (ok, out) = run("sha256sum", &[lun.to_str().unwrap()]);
    assert!(ok, "{out}");
    out.split_whitespace().next().unwrap().to_string()
}

/// The hazard: three volumes, then both GPT copies zeroed (first and last
/// MiB). Before this change a restarted controller took the LUN as blank,
/// wrote a new table and formatted the next volumes over the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zapped_table_is_not_taken_as_blank() {
    let dir = tempfile::tempdir().unwrap();
    let size = GIB;
    let lun = sparse_lun(dir.path(), "lun.raw", size);
    let mut made = Vec::new();
    {
        let ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
        let mut c = ctl.client().await;
        for name in ["pvc-keep-a", "pvc-keep-b", "pvc-keep-c"] {
            let mut r = create_request(name, 128 * MIB);
            // Few slots: mkfs writes a journal per slot, and any volume will do.
            r.parameters.insert("nodeSlots".into(), "2".into());
            let v = c
                .create_volume(r)
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap();
            made.push((name, v.volume_context["fsUuid"].clone()));
        }
    }
    let parts = partitions(&lun);
    zero(&lun, 0, MIB);
    zero(&lun, size - MIB, MIB);
    let before = digest(&lun);

    // Even named in --init-lun, the LUN is scanned and refused.
    let lun_arg = lun.to_str().unwrap();
    let mut ctl = Controller::spawn_with(
        std::slice::from_ref(&lun),
        dir.path(),
        &["--init-lun", lun_arg],
    );
    let log = ctl.wait_log("refusing to initialise", SAY);
    assert!(log.contains("OCFS2 filesystem at 1 MiB"), "{log}");
    assert!(
        log.contains("scan-lun"),
        "the refusal names the way out: {log}"
    );
    ctl.kill();
    assert_eq!(digest(&lun), before, "a refused LUN was written to");

    // What an operator rebuilds the table from: every volume, by name, at
    // the start it had, with its filesystem UUID.
    let (ok, out) = run(binary().to_str().unwrap(), &["scan-lun", "--lun", lun_arg]);
    assert!(ok, "{out}");
    println!("{out}");
    for ((name, fs_uuid), p) in made.iter().zip(parts.iter().skip(1)) {
        let line = out
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("scan-lun does not list {name}:\n{out}"));
        assert!(
            line.contains(&format!("start={}", p.first)),
            "{name}: {line} ({p:?})"
        );
        assert!(line.contains(fs_uuid.as_str()), "{name}: {line}");
    }
    assert!(out.contains("heartbeat"), "{out}");
    assert_eq!(digest(&lun), before, "scan-lun wrote to the LUN");
}

/// A blank LUN is initialised only when named in --init-lun; without it
/// the controller says how to opt in and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_lun_needs_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", GIB);
    let before = digest(&lun);
    let mut ctl = Controller::spawn_with(std::slice::from_ref(&lun), dir.path(), &[]);
    let log = ctl.wait_log("--init-lun", SAY);
    assert!(log.contains("holds no partition table"), "{log}");
    ctl.kill();
    assert_eq!(
        digest(&lun),
        before,
        "a LUN not named in --init-lun was written"
    );

    let ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    assert!(ctl.log_text().contains("initialised blank LUN"));
    assert_gpt_valid(&lun);
}

/// Issue 12, point 2: a LUN belongs to one cluster. Another installation
/// (the same default o2cb cluster name, another cluster ID) given the LUN
/// refuses it, naming both, and writes nothing; a LUN initialised before
/// stamps existed is stamped by the first controller that opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lun_of_another_cluster_is_refused() {
    use ocfs2_csi::disk::{lun_io::LunFile, ownership};
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", GIB);
    let stamp = || ownership::read(&LunFile::open_read_only(&lun).unwrap()).unwrap();
    let table = || {
        let io = LunFile::open_read_only(&lun).unwrap();
        ocfs2_csi::disk::gpt::read(&io).unwrap().gpt
    };
    {
        let mut ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
        let mut r = create_request("pvc-ours", 128 * MIB);
        r.parameters.insert("nodeSlots".into(), "2".into());
        ctl.client().await.create_volume(r).await.unwrap();
        ctl.stop();
    }
    let ours = stamp().expect("an initialised LUN carries a stamp");
    assert_eq!(ours.cluster_id, CLUSTER_ID);
    let made = table();
    assert_eq!(ours.disk_guid, made.disk_guid);
    let before = digest(&lun);

    let mut other = Controller::spawn_with(
        std::slice::from_ref(&lun),
        dir.path(),
        &["--cluster-id", "another-installation"],
    );
    let log = other.wait_log("belongs to another cluster", SAY);
    assert!(
        log.contains(&format!("{CLUSTER_ID:?}")) && log.contains("\"another-installation\""),
        "the refusal names both clusters: {log}"
    );
    other.kill();
    assert_eq!(
        digest(&lun),
        before,
        "a LUN of another cluster was written to"
    );

    // One refused LUN does not take the others down: the other
    // installation, given its own LUN too, serves that one; a create free
    // to pick any LUN (which must look for an earlier try on every one)
    // is refused retryably, naming the LUN it cannot open.
    let theirs = sparse_lun(dir.path(), "theirs.raw", GIB);
    let other = Controller::start_with(
        &[theirs.clone(), lun.clone()],
        dir.path(),
        &["--cluster-id", "another-installation"],
    )
    .await;
    let mut c = other.client().await;
    let mut pinned = create_request("pvc-theirs", 128 * MIB);
    pinned.parameters.insert("nodeSlots".into(), "2".into());
    pinned
        .parameters
        .insert("lun".into(), theirs.display().to_string());
    c.create_volume(pinned).await.unwrap();
    let mut any = create_request("pvc-anywhere", 128 * MIB);
    any.parameters.insert("nodeSlots".into(), "2".into());
    let refused = c.create_volume(any).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&lun.display().to_string())
            && refused.message().contains("belongs to another cluster"),
        "{refused:?}"
    );
    drop(other);
    assert_eq!(
        digest(&lun),
        before,
        "a LUN of another cluster was written to"
    );

    // A LUN from before stamps: adopted, and stamped, by the first opener.
    zero(&lun, ownership::OWNERSHIP_OFFSET, 4096);
    let mut ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    assert!(
        ctl.log_text()
            .contains("stamped a LUN initialised before ownership stamps existed"),
        "{}",
        ctl.log_text()
    );
    ctl.stop();
    assert_eq!(stamp().map(|s| s.cluster_id).as_deref(), Some(CLUSTER_ID));
    assert_eq!(table(), made, "adopting changed the table");
}

/// What a test controller's RPCs came to.
#[derive(Default, Debug)]
struct Acked {
    /// name -> (volume id, capacity) of every acknowledged create/expand.
    volumes: std::collections::HashMap<String, (String, u64)>,
    /// (name, volume id) of every acknowledged delete.
    deleted: Vec<(String, String)>,
    /// Refusals with a retryable code (the standby's answer).
    retryable: usize,
    /// (name, volume id) of every delete refused with a retryable code.
    /// Such a delete may have got as far as wiping the filesystem before
    /// the lease went: the entry stays Deleting, and a retry finishes it.
    delete_refused: Vec<(String, String)>,
}

/// The partition that heads volume `id` (its ID ends with the head's
/// unique GUID), if the table holds it.
fn head_of<'a>(parts: &'a [Part], id: &str) -> Option<&'a Part> {
    let guid = id.rsplit(':').next().unwrap();
    parts.iter().find(|p| p.guid.eq_ignore_ascii_case(guid))
}

/// The codes a CO retries: a standby's Unavailable, or Aborted for a
/// call that met another change of the table in flight.
fn retryable(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Aborted)
}

/// `creates` creates of `prefix-N` on `ctl`, all at once; then an expand of
/// every even one and a delete of every third. Anything but success or a
/// retryable refusal fails the test.
async fn workload(ctl: &Controller, prefix: &str, creates: usize) -> Acked {
    let mut tasks = Vec::new();
    for i in 0..creates {
        let mut c = ctl.client().await;
        let name = format!("{prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            let mut r = create_request(&name, 64 * MIB);
            r.parameters.insert("nodeSlots".into(), "2".into());
            let mut out: Vec<Result<(String, String, u64), tonic::Status>> = Vec::new();
            let v = match c.create_volume(r).await {
                Ok(v) => v.into_inner().volume.unwrap(),
                Err(s) => return vec![Err(s)],
            };
            out.push(Ok((
                "create".into(),
                v.volume_id.clone(),
                v.capacity_bytes as u64,
            )));
            if i % 2 == 0 {
                match c
                    .controller_expand_volume(expand_request(&v.volume_id, 128 * MIB))
                    .await
                {
                    Ok(r) => out.push(Ok((
                        "expand".into(),
                        v.volume_id.clone(),
                        r.into_inner().capacity_bytes as u64,
                    ))),
                    Err(s) => out.push(Err(s)),
                }
            }
            if i % 3 == 0 {
                match c.delete_volume(delete_request(&v.volume_id)).await {
                    Ok(_) => out.push(Ok(("delete".into(), v.volume_id.clone(), 0))),
                    Err(s) if retryable(&s) => {
                        out.push(Ok(("delete refused".into(), v.volume_id.clone(), 0)));
                        out.push(Err(s));
                    }
                    Err(s) => out.push(Err(s)),
                }
            }
            out
        }));
    }
    let mut acked = Acked::default();
    for (i, t) in tasks.into_iter().enumerate() {
        let name = format!("{prefix}-{i}");
        for r in t.await.unwrap() {
            match r {
                Ok((what, id, bytes)) => match what.as_str() {
                    "delete" => {
                        acked.volumes.remove(&name);
                        acked.deleted.push((name.clone(), id));
                    }
                    "delete refused" => acked.delete_refused.push((name.clone(), id)),
                    _ => {
                        acked.volumes.insert(name.clone(), (id, bytes));
                    }
                },
                Err(s) if retryable(&s) => acked.retryable += 1,
                // Only when the LUN has no room left for the growth.
                Err(s) if s.code() == tonic::Code::OutOfRange => {}
                Err(s) => panic!("{name}: not a retryable refusal: {s:?}"),
            }
        }
    }
    acked
}

/// The hazard: two controller processes on one LUN (a replacement pod
/// while the old one still runs, or the chart's two replicas). Each table
/// change is read-modify-write of the whole table, so one's stale write
/// wiped the other's entries and volumes acknowledged as created vanished
/// or held the other's filesystem. Now one of them at a time is the LUN's
/// writer: a call sent to the other waits for the writer to hand the lease
/// over (when idle) or is refused with a retryable code; every
/// acknowledged volume is on the LUN, at its acknowledged size, holding its
/// own filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_on_one_lun() {
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 8 * GIB);
    let args = ["--writer-lease-secs", "5"];
    let a = Controller::start_with(std::slice::from_ref(&lun), dir.path(), &args).await;
    let b = Controller::start_with(std::slice::from_ref(&lun), dir.path(), &args).await;
    let (got_a, got_b) = tokio::join!(workload(&a, "pvc-a", 10), workload(&b, "pvc-b", 10));
    let handovers = |c: &Controller| {
        c.log_text()
            .matches("handing the writer lease over")
            .count()
    };
    println!(
        "two controllers: a acknowledged {} volumes ({} retryable refusals, handed over {} times), \
         b {} ({}, {})",
        got_a.volumes.len(),
        got_a.retryable,
        handovers(&a),
        got_b.volumes.len(),
        got_b.retryable,
        handovers(&b)
    );
    assert!(
        !got_b.volumes.is_empty() || !got_b.deleted.is_empty(),
        "the standby served nothing: {}",
        b.log_text()
    );
    assert_gpt_valid(&lun);
    let parts = partitions(&lun);
    let on_disk = std::fs::File::open(&lun).unwrap();
    let refused: Vec<&(String, String)> = got_a
        .delete_refused
        .iter()
        .chain(got_b.delete_refused.iter())
        .collect();
    for (name, (id, bytes)) in got_a.volumes.iter().chain(got_b.volumes.iter()) {
        let delete_refused = refused.iter().any(|(_, r)| r == id);
        let Some(p) = head_of(&parts, id) else {
            assert!(
                delete_refused,
                "{name} was acknowledged but is not in the table"
            );
            continue;
        };
        // The volume's size: its head and the extents it grew into.
        let entry = volume_on(&lun, &p.guid);
        if delete_refused && entry.state == State::Deleting {
            // Its delete may have wiped it before the lease went; the
            // retry below finishes it.
            continue;
        }
        let size = entry.size;
        assert!(
            size >= *bytes,
            "{name}: volume of {size} bytes, acknowledged {bytes}"
        );
        let mut head = vec![0u8; 16384];
        std::os::unix::fs::FileExt::read_exact_at(&on_disk, &mut head, p.first * 512).unwrap();
        let sb = ocfs2_csi::ocfs2::superblock::decode(&head)
            .unwrap_or_else(|| panic!("{name}: no OCFS2 filesystem at its start"));
        assert_eq!(&sb.label, name, "{name} holds another volume's filesystem");
    }
    // Every table write carries the writer's identity and generation: the
    // last one is the lease holder's.
    let (held, stamp) = writer_on_disk(&lun);
    assert!(stamped_by(&held, &stamp), "{held:?} {stamp:?}");
    println!(
        "table stamp {stamp:?}, written by {} (generation {})",
        held.owner_name, held.generation
    );
    for (name, id) in got_a.deleted.iter().chain(got_b.deleted.iter()) {
        assert!(
            head_of(&parts, id).is_none(),
            "{name} was acknowledged as deleted but is still in the table"
        );
    }
    // A delete refused mid-way is finished by its retry, as the CO's.
    let mut c = a.client().await;
    for (name, id) in refused {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            match c.delete_volume(delete_request(id)).await {
                Ok(_) => break,
                Err(s) if std::time::Instant::now() < deadline && retryable(&s) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(s) => panic!("{name}: the retried delete: {s:?}"),
            }
        }
        assert!(
            head_of(&partitions(&lun), id).is_none(),
            "{name}: still in the table after its retried delete"
        );
        println!("two controllers: {name}'s refused delete finished on retry");
    }
}

/// The writer lease and the table's stamp as they are on the LUN.
fn writer_on_disk(lun: &Path) -> (ocfs2_csi::disk::lease::Lease, Stamp) {
    use ocfs2_csi::disk::{gpt, lease, lun_io::LunFile};
    let io = LunFile::open_read_only(lun).unwrap();
    let held = lease::read(&io).unwrap().expect("a writer lease");
    let table = gpt::read(&io).unwrap().gpt;
    let name = &table.partition(1).unwrap().name;
    let stamp = Stamp::parse(name).unwrap_or_else(|| panic!("no stamp in {name:?}"));
    (held, stamp)
}

fn stamped_by(held: &ocfs2_csi::disk::lease::Lease, stamp: &Stamp) -> bool {
    stamp.writer == u32::from_be_bytes(held.owner.as_bytes()[..4].try_into().unwrap())
        && u64::from(stamp.generation) == held.generation
}

/// Creates `name` on `ctl` until it succeeds (Unavailable while it is not
/// the writer); returns how long that took.
async fn create_until_served(ctl: &Controller, name: &str) -> Duration {
    let t = std::time::Instant::now();
    let mut c = ctl.client().await;
    loop {
        let mut r = create_request(name, 64 * MIB);
        r.parameters.insert("nodeSlots".into(), "2".into());
        match c.create_volume(r).await {
            Ok(_) => return t.elapsed(),
            Err(s) if s.code() == tonic::Code::Unavailable => {}
            Err(s) => panic!("{name}: {s:?}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{name} never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a volume named `name` is in the LUN's table.
fn in_table(lun: &Path, name: &str) -> bool {
    let guid = ocfs2_csi::volume::id::partition_guid(name).to_string();
    partitions(lun)
        .iter()
        .any(|p| p.guid.eq_ignore_ascii_case(&guid))
}

/// Failover and handover: a change sent to the standby while the writer is
/// idle (served after a handover); the writer cut off (SIGSTOP: a paused
/// pod, a node that lost the SAN's attention): the standby takes over after
/// the lease time, and the old writer, back again, never writes with its
/// old generation nor loses what was written meanwhile; the writer killed
/// (no release); the writer stopped cleanly (released at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_writer_cannot_write_after_a_takeover() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    const LEASE: &str = "3";
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 4 * GIB);
    let args = ["--writer-lease-secs", LEASE];
    let mut a = Controller::start_with(std::slice::from_ref(&lun), dir.path(), &args).await;
    let mut b = Controller::start_with(std::slice::from_ref(&lun), dir.path(), &args).await;
    create_until_served(&a, "pvc-by-a").await;
    let (held, stamp) = writer_on_disk(&lun);
    assert!(stamped_by(&held, &stamp), "{held:?} {stamp:?}");
    assert_eq!(held.generation, 1);

    // The sidecar leads in b's pod: b asks, the idle writer a hands over.
    let took = create_until_served(&b, "pvc-by-b").await;
    println!("a change sent to the standby: served after a handover in {took:.1?}");
    let (held, stamp) = writer_on_disk(&lun);
    assert_eq!(held.generation, 2);
    assert!(stamped_by(&held, &stamp), "{held:?} {stamp:?}");
    assert!(a
        .log_text()
        .contains("handing the writer lease over on request"));

    let b_pid = Pid::from_raw(b.child.id() as i32);
    kill(b_pid, Signal::SIGSTOP).unwrap();
    let took = create_until_served(&a, "pvc-a-2").await;
    println!("writer stopped (SIGSTOP): the standby served CreateVolume after {took:.1?} (lease {LEASE} s)");
    let (held, stamp) = writer_on_disk(&lun);
    assert_eq!(held.generation, 3);
    assert!(stamped_by(&held, &stamp), "{held:?} {stamp:?}");

    // b comes back believing it holds generation 2. Its change is refused
    // (its lease is stale) or served after a proper handover at a later
    // generation; either way built on the table as it is now.
    kill(b_pid, Signal::SIGCONT).unwrap();
    let mut c = b.client().await;
    let mut r = create_request("pvc-b-late", 64 * MIB);
    r.parameters.insert("nodeSlots".into(), "2".into());
    let late = c.create_volume(r).await;
    let (held_after, stamp_after) = writer_on_disk(&lun);
    match &late {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
            assert!(!in_table(&lun, "pvc-b-late"));
            println!("old writer back: refused: {}", s.message());
        }
        Ok(_) => {
            assert!(held_after.generation > 3, "{held_after:?}");
            assert!(stamped_by(&held_after, &stamp_after));
            println!(
                "old writer back: served after a handover (generation {})",
                held_after.generation
            );
        }
    }
    for name in ["pvc-by-a", "pvc-by-b", "pvc-a-2"] {
        assert!(in_table(&lun, name), "{name} lost");
    }

    // b is the writer (asked for it), then killed without releasing: a
    // serves after the lease time.
    create_until_served(&b, "pvc-b-3").await;
    let b_holds = writer_on_disk(&lun).0;
    assert!(
        b_holds
            .owner_name
            .ends_with(&format!(" pid {}", b.child.id())),
        "{b_holds:?}"
    );
    b.kill();
    let took = create_until_served(&a, "pvc-after-kill").await;
    println!("writer killed (SIGKILL): the standby served CreateVolume after {took:.1?} (lease {LEASE} s)");
    assert!(writer_on_disk(&lun).0.generation > b_holds.generation);
    // a stopped cleanly: it releases, and a new controller serves at once.
    let a_pid = Pid::from_raw(a.child.id() as i32);
    kill(a_pid, Signal::SIGTERM).unwrap();
    a.child.wait().unwrap();
    assert!(
        a.log_text().contains("released the writer lease"),
        "{}",
        a.log_text()
    );
    let c2 = Controller::start_with(std::slice::from_ref(&lun), dir.path(), &args).await;
    let took = create_until_served(&c2, "pvc-after-release").await;
    println!(
        "writer stopped cleanly (SIGTERM): a new controller served CreateVolume after {took:.1?}"
    );
    for name in [
        "pvc-by-a",
        "pvc-by-b",
        "pvc-a-2",
        "pvc-b-3",
        "pvc-after-kill",
        "pvc-after-release",
    ] {
        assert!(in_table(&lun, name), "{name} lost");
    }
    assert_gpt_valid(&lun);
}
