//! What keeps a LUN's data safe from the controller itself (issue 12): a
//! LUN is initialised only when named in --init-lun and only when nothing
//! is found on it, so a table someone zapped is never taken as blank; the
//! read-only `scan-lun` lists what such a LUN still holds.

use ocfs2_csi_testkit as common;

use common::*;
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
