//! The controller SIGKILLed at random moments while it takes space the
//! array added to a full LUN: each round the LUN file grows by a GiB and a
//! volume is expanded past the old end, which makes the controller clear
//! the old backup table, write the table reaching the new end (backup
//! first) and then the volume's new extent.
//!
//! After every kill our reader finds a whole table (never a corrupt one,
//! never the table from before an earlier growth) holding every partition
//! where it was; the volume is its old size or its new one. After a
//! restart the retried expand answers the new size, `sgdisk -v` finds no
//! problem, both copies are whole with the backup at the device's end, and
//! no old backup header is left anywhere the LUN ended before.

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::csi::GetCapacityRequest;
use ocfs2_csi::disk::gpt;
use ocfs2_csi::disk::lun_io::{BlockIo, LunFile};
use ocfs2_csi::volume::entry::ALIGN;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 12;
/// Kills that must land among the writes (after the first, before the
/// last); at most `MAX_ROUNDS` are tried.
const MIN_INTERIOR: usize = 4;
const MAX_ROUNDS: usize = 40;
const START_BYTES: u64 = 4 * GIB;
const CRASH_LEASE: &[&str] = &["--writer-lease-secs", "1"];
const DEFAULT_SEED: u64 = 0x6c75_6e67_726f_7768;

/// Which step of the move and growth a kill left on disk.
fn stage(lun: &Path, old_end: u64, old_size: u64, guid: &str) -> &'static str {
    let io = LunFile::open(lun).unwrap();
    let read = gpt::read(&io).unwrap_or_else(|e| panic!("no whole table after a kill: {e}"));
    let table = &read.gpt;
    table.validate().expect("a valid table after a kill");
    let full = gpt::Gpt::new(512, table.total_sectors, table.disk_guid).last_usable_lba;
    let mut old_backup = vec![0u8; 512];
    io.read_at(old_end - 512, &mut old_backup).unwrap();
    let retired = old_backup.iter().all(|b| *b == 0);
    let mut new_end = vec![0u8; 512];
    io.read_at(io.size_bytes() - 512, &mut new_end).unwrap();
    let size = volume_on(lun, guid).size;
    assert!(size >= old_size, "the volume shrank: {size} < {old_size}");
    let moved = table.last_usable_lba == full;
    if size > old_size {
        assert!(
            moved,
            "the volume grew although the table did not reach the new space"
        );
        return "volume grown";
    }
    match (moved, retired, new_end.starts_with(b"EFI PART")) {
        (true, _, _) if !read.primary_valid => "primary torn, new backup read",
        (true, _, _) => "table moved, volume not yet grown",
        (false, true, true) => "new backup written, primary still old",
        (false, true, false) => "old backup cleared",
        (false, false, _) => "nothing written yet",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_while_taking_new_space_leave_a_whole_table() {
    let mut rng = crash_rng(DEFAULT_SEED);
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", START_BYTES);
    let mut ctl = Controller::start_with(std::slice::from_ref(&lun), dir.path(), CRASH_LEASE).await;
    let mut c = ctl.client().await;
    let v = c
        .create_volume(create_request("pvc-grows", 256 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let guid = v.volume_context["partitionGuid"].clone();
    let room = c
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner()
        .maximum_volume_size
        .unwrap_or_default() as u64;
    c.create_volume(create_request("pvc-filler", room / MIB * MIB))
        .await
        .unwrap();
    let heads: Vec<Part> = partitions(&lun);

    let mut stages: BTreeMap<&str, usize> = BTreeMap::new();
    // Half the kills fall at a random moment of the call; the other half
    // when the first write shows on the LUN (the old backup cleared) plus
    // a random spin of up to `extra` µs, which follows what the kills find,
    // so they land among the writes whatever this machine's pace.
    let mut window = 0u64;
    let mut extra = 2000u64;
    let mut ends = Vec::new();
    let (mut round, mut interior) = (0, 0);
    while round <= ROUNDS || interior < MIN_INTERIOR {
        assert!(
            round <= MAX_ROUNDS,
            "only {interior} of {round} kills landed among the writes: {stages:?}"
        );
        let old_end = std::fs::metadata(&lun).unwrap().len();
        ends.push(old_end);
        let old_size = volume_on(&lun, &guid).size;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&lun)
            .unwrap()
            .set_len(old_end + GIB)
            .unwrap();
        // Half a GiB more than all the LUN had free before it grew: only
        // the new space can give it.
        let entry = volume_on(&lun, &guid);
        let table = gpt::read(&LunFile::open(&lun).unwrap()).unwrap().gpt;
        let free: u64 = table
            .free_extents(ALIGN / 512)
            .iter()
            .map(|(first, last)| (last - first + 1) * 512)
            .sum();
        let want = entry
            .layout
            .usable_bytes(old_size + free + 512 * MIB, ALIGN);
        let mut client = ctl.client().await;
        client
            .get_capacity(GetCapacityRequest::default())
            .await
            .unwrap();
        let id = v.volume_id.clone();
        let started = Instant::now();
        let call = tokio::spawn(async move {
            client
                .controller_expand_volume(expand_request(&id, want))
                .await
        });
        if round == 0 {
            // Unkilled: how long taking the space and growing takes here.
            call.await.unwrap().unwrap();
            window = (started.elapsed().as_micros() as u64 * 2).max(2000);
            println!(
                "an expand into new space takes {:.1} ms here",
                started.elapsed().as_secs_f64() * 1000.0
            );
            round += 1;
            continue;
        }
        round += 1;
        let on_write = round % 2 == 0;
        let delay = rng.below(if on_write { extra } else { window });
        // Stopped at that very moment (the writes take microseconds: a
        // timer's millisecond or a kill(1) process's start-up would skip
        // them), then SIGKILLed with its tools (testkit::crash).
        let pid = nix::unistd::Pid::from_raw(ctl.child.id() as i32);
        let watched = lun.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&watched).unwrap();
            let mut sector = [0u8; 512];
            let give_up = started + Duration::from_secs(10);
            let mut at = started + Duration::from_micros(delay);
            if on_write {
                use std::os::unix::fs::FileExt;
                loop {
                    file.read_exact_at(&mut sector, old_end - 512).unwrap();
                    if !sector.starts_with(b"EFI PART") || Instant::now() > give_up {
                        break;
                    }
                }
                at = Instant::now() + Duration::from_micros(delay);
            }
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        })
        .await
        .unwrap();
        crash(&mut ctl);
        let _ = call.await;
        let at = stage(&lun, old_end, old_size, &guid);
        *stages.entry(at).or_default() += 1;
        match at {
            "nothing written yet" => {}
            "volume grown" if on_write => extra = (extra / 2).max(20),
            "volume grown" => {}
            _ => {
                interior += 1;
                if on_write {
                    extra = (extra * 3 / 2).min(50_000);
                }
            }
        }

        ctl = Controller::start_with(std::slice::from_ref(&lun), dir.path(), CRASH_LEASE).await;
        ctl.wait_writer().await;
        let mut client = ctl.client().await;
        let grown = client
            .controller_expand_volume(expand_request(&v.volume_id, want))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "round {round}: retry after the kill: {e:?}\n{}",
                    ctl.log_text()
                )
            })
            .into_inner()
            .capacity_bytes;
        assert!(grown as u64 >= want, "round {round}: {grown} < {want}");

        // Converged: whole, spanning the device, nothing stale left.
        assert_gpt_valid(&lun);
        let io = LunFile::open(&lun).unwrap();
        let read = gpt::read(&io).unwrap();
        assert!(read.primary_valid && read.backup_valid, "round {round}");
        let full = gpt::Gpt::new(512, read.gpt.total_sectors, read.gpt.disk_guid).last_usable_lba;
        assert_eq!(
            read.gpt.last_usable_lba, full,
            "round {round}: the table spans the LUN"
        );
        for end in &ends {
            let mut sector = vec![0u8; 512];
            io.read_at(end - 512, &mut sector).unwrap();
            assert!(
                !sector.starts_with(b"EFI PART"),
                "round {round}: an old backup header is left at {end}"
            );
        }
        let now = partitions(&lun);
        for h in &heads {
            let p = now.iter().find(|p| p.guid == h.guid).unwrap();
            assert_eq!((p.number, p.first), (h.number, h.first), "round {round}");
        }
        assert_no_overlap(&now);
    }
    println!(
        "{} kills while taking new space: {stages:?}; \
         LUN {} -> {} GiB, table whole after every kill and every restart",
        round - 1,
        START_BYTES / GIB,
        std::fs::metadata(&lun).unwrap().len() / GIB
    );
    ctl.stop();
}
