//! KubeVirt readiness: a VM disk image on a ReadWriteMany volume shared by
//! two nodes, and `ocfs2-csi disk-lock` keeping two hypervisors off it.
//!
//! `disk_lock_between_processes_on_host`: the real binary, two processes on
//! one host file (no OCFS2 needed): a second holder is refused with exit
//! code 75, `--wait` gets the lock once the holder is gone, the command's
//! exit code comes back.
//!
//! `run` (two guests of the shared lab, node1 and node2, with real OCFS2
//! kernels; the real controller on the host carves the volume, the real
//! node plugins in the guests stage and publish it; node3 is a member of
//! the cluster but never has the volume):
//! 1. a raw `disk.img` owned by uid 107 (qemu in KubeVirt), preallocated
//!    with `fallocate -l`, written with O_DIRECT on node1; "live migration":
//!    closed on node1, opened with O_DIRECT on node2, read back, checksums
//!    equal; node2 writes more, node1 reads it back; a punched hole frees
//!    its blocks and reads as zeros on the other node;
//! 2. the hazard: an OFD ("posix") lock, the kind QEMU takes, is granted on
//!    both nodes at once;
//! 3. the protection: a flock lock held on node1 refuses node2 (75); once
//!    node1's holder is killed, node2's `--wait` gets it;
//! 4. with no filesystem overhead reserved (CDI's filesystemOverhead 0), an
//!    image of exactly the requested size is preallocated while both nodes
//!    have the volume mounted, and written at its end from the other node;
//! 5. unstage everywhere, fsck clean.
//!
//! The driver does not implement VOLUME_MOUNT_GROUP; the kubelet applies a
//! pod's fsGroup itself (CSIDriver fsGroupPolicy File), so the test does
//! what the kubelet does: chgrp the volume root to the fsGroup and set it
//! group-writable and setgid.

use crate::common::lab::*;
use crate::common::*;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The qemu user in KubeVirt's virt-launcher.
const QEMU_UID: u32 = 107;
const EXIT_HELD: i32 = 75;
const IMAGE_MIB: u64 = 1024;
const FIRST_MIB: u64 = 64;
const SECOND_AT_MIB: u64 = 512;
const SECOND_MIB: u64 = 32;
const HOLE_AT_MIB: u64 = 8;
const HOLE_MIB: u64 = 16;

fn as_qemu(cmd: &str) -> String {
    format!("/usr/bin/setpriv --reuid={QEMU_UID} --regid={QEMU_UID} --clear-groups {cmd}")
}

/// Runs `script` and returns (exit code, output, seconds on the host clock).
fn timed(lab: &Lab, node: usize, script: &str) -> (i32, String, f64) {
    let t = Instant::now();
    let (rc, out) = lab.exec(node, script);
    (rc, out, t.elapsed().as_secs_f64())
}

/// The value after `key=` in the output (scripts print `key=value` lines).
fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
        .trim()
        .to_string()
}

fn num(out: &str, key: &str) -> u64 {
    field(out, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}: {out}"))
}

/// Seconds between two /proc/uptime readings printed as `t0=` and `t1=`.
fn guest_secs(out: &str) -> f64 {
    let t = |k| field(out, k).parse::<f64>().unwrap();
    t("t1") - t("t0")
}

/// Starts `ocfs2-csi disk-lock` without a command (hold mode) as uid 107 on
/// `node`; returns its PID and its log once it says it holds the lock, or
/// (None, log) when it did not get it.
fn start_holder(lab: &Lab, node: usize, kind: &str, image: &str) -> (Option<u32>, String) {
    let log = format!("/tmp/hold-{kind}.log");
    let out = lab.must(
        node,
        &format!(
            "rm -f {log}
             {} >{log} 2>&1 </dev/null &
             p=$!
             for i in $(seq 200); do grep -q holding {log} && break; kill -0 $p 2>/dev/null || break; sleep 0.05; done
             cat {log}",
            as_qemu(&format!("ocfs2-csi disk-lock --kind {kind} {image}"))
        ),
    );
    let pid = out
        .lines()
        .find(|l| l.contains("holding"))
        .and_then(|l| l.split("(pid ").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok());
    (pid, out)
}

/// SIGTERM to a holder by PID; it must exit and say it released the lock.
fn stop_holder(lab: &Lab, node: usize, kind: &str, pid: u32) {
    let out = lab.must(
        node,
        &format!(
            "kill -TERM {pid}
             for i in $(seq 100); do kill -0 {pid} 2>/dev/null || break; sleep 0.05; done
             if kill -0 {pid} 2>/dev/null; then echo still running; exit 1; fi
             cat /tmp/hold-{kind}.log"
        ),
    );
    assert!(
        out.contains("disk-lock: released"),
        "node{node}: {kind} holder {pid} did not release cleanly:\n{out}"
    );
}

#[test]
fn disk_lock_between_processes_on_host() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let img = image.to_str().unwrap();
    let bin = binary();
    let hold = |kind: &str| {
        let mut child = Command::new(&bin)
            .args(["disk-lock", "--kind", kind, img])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(
            line.contains(&format!("holding {kind} lock on {img}")),
            "{line}"
        );
        (child, out)
    };
    let attempt = |args: &[&str]| {
        let t = Instant::now();
        let out = Command::new(&bin)
            .arg("disk-lock")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            t.elapsed(),
        )
    };

    let (mut flock_holder, mut flock_out) = hold("flock");
    let (rc, err, took) = attempt(&[img, "--", "true"]);
    assert_eq!(rc, EXIT_HELD, "{err}");
    assert!(
        err.contains(img) && err.contains("possibly on another node"),
        "{err}"
    );
    println!(
        "host: second flock holder refused in {:.3} s: {}",
        took.as_secs_f64(),
        err.trim()
    );
    // On one host an OFD lock conflicts too (the lab shows it does not
    // across nodes); it is independent of the flock lock.
    let (mut posix_holder, _) = hold("posix");
    let (rc, err, _) = attempt(&["--kind", "posix", img, "--", "true"]);
    assert_eq!(rc, EXIT_HELD, "{err}");

    // A waiter gets the lock once the holder is gone, and returns its
    // command's exit code.
    let mut waiter = Command::new(&bin)
        .args(["disk-lock", "--wait", "20", img, "--", "sh", "-c", "exit 7"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the waiter ran while the lock was held"
    );
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(flock_holder.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(flock_holder.wait().unwrap().code(), Some(0));
    let mut rest = String::new();
    flock_out.read_line(&mut rest).unwrap();
    assert!(rest.contains("released"), "{rest}");
    assert_eq!(waiter.wait().unwrap().code(), Some(7));
    println!(
        "host: release -> waiter got the lock and its command exited 7 after {:.3} s",
        t.elapsed().as_secs_f64()
    );
    posix_holder.kill().unwrap();
    posix_holder.wait().unwrap();
}

/// Issue 12 (8): the wrapper SIGKILLed (an OOM kill, a crashed launcher)
/// while its command runs on. Before, the lock's descriptor was
/// close-on-exec, so the lock died with the wrapper and a second VM could
/// start on the image; now the command holds it until it ends.
#[test]
fn disk_lock_outlives_a_killed_wrapper_on_host() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let img = image.to_str().unwrap();
    let pidfile = dir.path().join("cmd.pid");
    let bin = binary();
    let attempt = || {
        Command::new(&bin)
            .args(["disk-lock", img, "--", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .status
            .code()
    };
    let script = format!("echo $$ > {}; exec sleep 600", pidfile.display());
    let mut wrapper = Command::new(&bin)
        .args(["disk-lock", img, "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the command started", Duration::from_secs(30), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| p.ends_with('\n'))
    });
    let cmd: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    assert_eq!(
        attempt(),
        Some(EXIT_HELD),
        "the lock died with its wrapper while the command ran on"
    );
    println!("host: wrapper SIGKILLed, its command still holds the lock");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cmd),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "the lock freed once the command ended",
        Duration::from_secs(30),
        || attempt() == Some(0),
    );
}

/// The KubeVirt scenarios on node1 and node2 of `lab`, whose node plugins
/// already run (an earlier scenario formed the cluster); leaves no volume.
pub fn run(lab: &Lab, rt: &tokio::runtime::Runtime) {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lun = lab.lun();
    let controller = rt.block_on(Controller::start(std::slice::from_ref(&lun), dir.path()));
    let mut c = rt.block_on(controller.client());

    for node in [1, 2] {
        rt.block_on(lab.wait_node_ready(node, Duration::from_secs(60)));
    }
    // Only this scenario's kernel messages count (the lab ran others).
    lab.on_all("echo 'lab: kubevirt scenario begins' > /dev/kmsg");
    // The guests carry this build's binary, with the subcommand.
    lab.on_all("ocfs2-csi disk-lock --help | grep -q -- --kind");
    // Busybox's fallocate cannot punch holes: util-linux's (the host's, same
    // Debian release and libc as the guests' libraries) is copied in.
    let fallocate = std::fs::read("/usr/bin/fallocate").expect("util-linux fallocate on the host");
    let (ok, host_sum) = crate::common::run("sha256sum", &["/usr/bin/fallocate"]);
    assert!(ok, "{host_sum}");
    let b64 = Command::new("base64")
        .args(["-w0", "/usr/bin/fallocate"])
        .output()
        .unwrap();
    assert!(b64.status.success() && !fallocate.is_empty());
    let sums = lab.on_all(&format!(
        "mkdir -p /tmp/bin && echo '{}' | base64 -d > /tmp/bin/fallocate && \
         chmod 755 /tmp/bin/fallocate && /tmp/bin/fallocate --version >/dev/null && \
         sha256sum /tmp/bin/fallocate",
        String::from_utf8(b64.stdout).unwrap().trim()
    ));
    for s in &sums {
        assert_eq!(
            s.split_whitespace().next(),
            host_sum.split_whitespace().next()
        );
    }
    let fa = "/tmp/bin/fallocate";

    // --- the volume: RWX, filesystem, staged and published on both --------
    let requested = 2 * GIB;
    let vol = rt
        .block_on(c.create_volume(create_request("pvc-vm-disk", requested)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let part = partition_by_guid(&lun, &vol.volume_context["partitionGuid"]);
    for node in [1, 2] {
        let took = rt.block_on(stage_and_publish(lab, node, &vol));
        println!(
            "setup: node{node}: NodeStage {:.2} s + NodePublish",
            took.as_secs_f64()
        );
    }
    let t = target(&vol);
    for node in [1, 2] {
        let line = lab.must(
            node,
            &format!("awk '$2 == \"{}\"' /proc/mounts", staging(&vol)),
        );
        assert!(
            line.contains(" ocfs2 ") && !line.contains("localflocks"),
            "node{node}: flock must be cluster-wide: {line}"
        );
    }
    // What the filesystem offers while mounted on both nodes, against what
    // was asked (the figure CDI's filesystemOverhead is about).
    for node in [1, 2] {
        let df = lab.must(node, &format!("df -P -B1 {t} | tail -n 1"));
        let f: Vec<u64> = df
            .split_whitespace()
            .skip(1)
            .take(3)
            .map(|x| x.parse().unwrap())
            .collect();
        let (size, avail) = (f[0], f[2]);
        println!(
            "capacity: node{node}: requested {requested}, partition {}, df size {size}, \
             df available {avail} ({:.4} of requested; partition overhead {:.2}%)",
            part.bytes(),
            avail as f64 / requested as f64,
            (part.bytes() - requested) as f64 * 100.0 / requested as f64
        );
        assert!(
            size >= requested,
            "node{node}: filesystem {size} < requested {requested}"
        );
    }

    // --- 1. the disk image: uid 107, preallocated, O_DIRECT, handover ------
    // The kubelet's fsGroup (policy File): group of the volume root, g+rwxs.
    lab.must(1, &format!("chgrp {QEMU_UID} {t} && chmod 2775 {t}"));
    let seen = lab.must(2, &format!("stat -c '%g %a' {t}"));
    assert_eq!(
        seen.trim(),
        format!("{QEMU_UID} 2775"),
        "node2 sees the root"
    );
    let img = format!("{t}/disk.img");
    let t0 = Instant::now();
    let out = lab.must(
        1,
        &format!(
            "{} && stat -c 'owner=%u:%g' {img} && stat -c 'size=%s' {img} && \
             stat -c 'blocks=%b' {img} && stat -c 'bsize=%B' {img} && \
             echo du_kib=$(du -k {img} | cut -f1)",
            as_qemu(&format!("{fa} -l {IMAGE_MIB}MiB {img}"))
        ),
    );
    let prealloc = t0.elapsed().as_secs_f64();
    assert_eq!(
        field(&out, "owner"),
        format!("{QEMU_UID}:{QEMU_UID}"),
        "{out}"
    );
    let size = num(&out, "size");
    let blocks = num(&out, "blocks");
    let bsize = num(&out, "bsize");
    assert_eq!(size, IMAGE_MIB * MIB, "{out}");
    assert!(
        blocks * bsize >= size,
        "not preallocated: {blocks} x {bsize} < {size}"
    );
    assert!(num(&out, "du_kib") * 1024 >= size, "{out}");
    println!(
        "image: {IMAGE_MIB} MiB disk.img owned by {QEMU_UID}:{QEMU_UID}, preallocated \
         ({blocks} blocks of {bsize} allocated) in {prealloc:.2} s"
    );
    let on2 = lab.must(2, &format!("stat -c 'owner=%u:%g size=%s blocks=%b' {img}"));
    assert_eq!(
        on2.trim(),
        format!("owner={QEMU_UID}:{QEMU_UID} size={size} blocks={blocks}"),
        "node2's view of the image"
    );

    // node1 (the migration source) writes a pattern with O_DIRECT, under the
    // flock lock, as uid 107.
    let out = lab.must(
        1,
        &format!(
            "dd if=/dev/urandom of=/tmp/p1 bs=1M count={FIRST_MIB} 2>/dev/null
             echo sum=$(md5sum < /tmp/p1 | cut -d' ' -f1)
             echo t0=$(cut -d' ' -f1 /proc/uptime)
             {} || exit $?
             echo t1=$(cut -d' ' -f1 /proc/uptime)
             echo blocks=$(stat -c %b {img})",
            as_qemu(&format!(
                "ocfs2-csi disk-lock {img} -- dd if=/tmp/p1 of={img} bs=1M oflag=direct conv=notrunc"
            ))
        ),
    );
    let first_sum = field(&out, "sum");
    assert_eq!(
        num(&out, "blocks"),
        blocks,
        "writing into the preallocated range allocated more"
    );
    println!(
        "image: node1 wrote {FIRST_MIB} MiB with O_DIRECT under the flock lock in {:.2} s (guest clock)",
        guest_secs(&out)
    );
    // node1 has closed the image (its writer exited): node2, the migration
    // target, takes the lock and does its first O_DIRECT read (the
    // handover), then reads the whole pattern back.
    let out = lab.must(
        2,
        "echo t0=$(cut -d' ' -f1 /proc/uptime)
         ocfs2-csi disk-lock --help >/dev/null
         echo t1=$(cut -d' ' -f1 /proc/uptime)",
    );
    let startup = guest_secs(&out);
    let out = lab.must(
        2,
        &format!(
            "echo t0=$(cut -d' ' -f1 /proc/uptime)
             {} || exit $?
             echo t1=$(cut -d' ' -f1 /proc/uptime)",
            as_qemu(&format!(
                "ocfs2-csi disk-lock --wait 30 {img} -- dd if={img} of=/dev/null bs=4k count=1 iflag=direct"
            ))
        ),
    );
    println!(
        "handover: node1 closed disk.img; node2 took the flock lock, opened it and read its first 4 KiB \
         with O_DIRECT in {:.2} s (guest clock; starting the tool alone takes {startup:.2} s under TCG)",
        guest_secs(&out)
    );
    let (rc, out, host) = timed(
        lab,
        2,
        &format!(
            "echo t0=$(cut -d' ' -f1 /proc/uptime)
             {} || exit $?
             echo t1=$(cut -d' ' -f1 /proc/uptime)
             echo sum=$(md5sum < /tmp/r1 | cut -d' ' -f1)",
            as_qemu(&format!(
                "ocfs2-csi disk-lock --wait 30 {img} -- dd if={img} of=/tmp/r1 bs=1M count={FIRST_MIB} iflag=direct"
            ))
        ),
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(
        field(&out, "sum"),
        first_sum,
        "node2 read back different data"
    );
    let (_, _, rtt) = timed(lab, 2, "true");
    println!(
        "handover: node2 read all {FIRST_MIB} MiB back with O_DIRECT under the lock in {:.2} s \
         (guest clock; {host:.2} s host wall clock with md5sum, agent round trip {rtt:.2} s); md5 {first_sum} on both",
        guest_secs(&out)
    );
    // node2 writes more; node1 reads it back with O_DIRECT.
    let out = lab.must(
        2,
        &format!(
            "dd if=/dev/urandom of=/tmp/p2 bs=1M count={SECOND_MIB} 2>/dev/null
             echo sum=$(md5sum < /tmp/p2 | cut -d' ' -f1)
             {}",
            as_qemu(&format!(
                "ocfs2-csi disk-lock {img} -- dd if=/tmp/p2 of={img} bs=1M seek={SECOND_AT_MIB} oflag=direct conv=notrunc"
            ))
        ),
    );
    let second_sum = field(&out, "sum");
    let out = lab.must(
        1,
        &format!(
            "{} && echo sum=$(md5sum < /tmp/r2 | cut -d' ' -f1)",
            as_qemu(&format!(
                "ocfs2-csi disk-lock {img} -- dd if={img} of=/tmp/r2 bs=1M skip={SECOND_AT_MIB} count={SECOND_MIB} iflag=direct"
            ))
        ),
    );
    assert_eq!(
        field(&out, "sum"),
        second_sum,
        "node1 read back different data"
    );
    println!(
        "image: node2 wrote {SECOND_MIB} MiB at {SECOND_AT_MIB} MiB with O_DIRECT; node1 read it back: md5 {second_sum} on both"
    );

    // Hole punching on node2 (a guest's discard): the blocks go, and node1
    // reads zeros there while the data around the hole stays.
    let out = lab.must(
        2,
        &format!(
            "echo before=$(stat -c %b {img})
             {} || exit $?
             echo after=$(stat -c %b {img})
             echo size=$(stat -c %s {img})",
            as_qemu(&format!(
                "ocfs2-csi disk-lock {img} -- {fa} -p -o {HOLE_AT_MIB}MiB -l {HOLE_MIB}MiB {img}"
            ))
        ),
    );
    let (before, after) = (num(&out, "before"), num(&out, "after"));
    assert_eq!(num(&out, "size"), size, "punching changed the size");
    assert_eq!(
        before - after,
        HOLE_MIB * MIB / bsize,
        "allocated blocks must drop by exactly the hole ({before} -> {after})"
    );
    let out = lab.must(
        1,
        &format!(
            "echo blocks=$(stat -c %b {img})
             dd if={img} bs=1M skip={HOLE_AT_MIB} count={HOLE_MIB} iflag=direct 2>/dev/null | md5sum | sed 's/ .*//;s/^/hole=/'
             dd if=/dev/zero bs=1M count={HOLE_MIB} 2>/dev/null | md5sum | sed 's/ .*//;s/^/zeros=/'
             for r in 0:{HOLE_AT_MIB} {}:{}; do
               s=${{r%:*}}; n=${{r#*:}}
               a=$(dd if={img} bs=1M skip=$s count=$n iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
               b=$(dd if=/tmp/p1 bs=1M skip=$s count=$n 2>/dev/null | md5sum | cut -d' ' -f1)
               [ \"$a\" = \"$b\" ] && echo around-$s=same || echo around-$s=DIFFERENT
             done",
            HOLE_AT_MIB + HOLE_MIB,
            FIRST_MIB - HOLE_AT_MIB - HOLE_MIB
        ),
    );
    assert_eq!(num(&out, "blocks"), after, "node1's view of the allocation");
    assert_eq!(
        field(&out, "hole"),
        field(&out, "zeros"),
        "the punched range must read as zeros on node1"
    );
    assert_eq!(field(&out, "around-0"), "same", "{out}");
    assert_eq!(
        field(&out, &format!("around-{}", HOLE_AT_MIB + HOLE_MIB)),
        "same",
        "{out}"
    );
    println!(
        "image: punched {HOLE_MIB} MiB at {HOLE_AT_MIB} MiB on node2: allocated blocks {before} -> {after} \
         (-{} MiB), node1 reads zeros there and the pattern around it",
        (before - after) * bsize / MIB
    );

    // --- 2. the hazard: OFD ("posix") locks are node-local -----------------
    let (p1, log1) = start_holder(lab, 1, "posix", &img);
    let p1 = p1.unwrap_or_else(|| panic!("node1 did not get the posix lock:\n{log1}"));
    // On the same node the lock is real: a second taker is refused.
    let (rc, out) = lab.exec(
        1,
        &as_qemu(&format!("ocfs2-csi disk-lock --kind posix {img} -- true")),
    );
    assert_eq!(rc, EXIT_HELD, "node1, second posix taker: {out}");
    let (p2, log2) = start_holder(lab, 2, "posix", &img);
    let p2 = p2.unwrap_or_else(|| {
        panic!("node2 was refused the posix lock node1 holds (expected the hazard):\n{log2}")
    });
    lab.must(1, &format!("kill -0 {p1}"));
    println!(
        "hazard: node1 (pid {p1}) and node2 (pid {p2}) both hold the posix (OFD) lock on disk.img at once; \
         a second taker on node1 was refused ({EXIT_HELD})"
    );
    stop_holder(lab, 1, "posix", p1);
    stop_holder(lab, 2, "posix", p2);

    // --- 3. the protection: flock is cluster-wide ---------------------------
    let (f1, log1) = start_holder(lab, 1, "flock", &img);
    let f1 = f1.unwrap_or_else(|| panic!("node1 did not get the flock lock:\n{log1}"));
    // The node plugins' metrics show the holder where it is, and only there.
    let held = format!("ocfs2_csi_disk_locks_held{{volume=\"{}\"}}", vol.volume_id);
    let holders: Vec<Option<f64>> = [1, 2]
        .iter()
        .map(|&n| metric(&lab.metrics(n), &held))
        .collect();
    assert_eq!(holders, [Some(1.0), Some(0.0)], "{held} on node1 and node2");
    println!("metrics: {held} is 1 on node1 and 0 on node2 while node1 holds the flock");
    let (rc, out, host) = timed(
        lab,
        2,
        &format!(
            "echo t0=$(cut -d' ' -f1 /proc/uptime)
             {}
             rc=$?
             echo t1=$(cut -d' ' -f1 /proc/uptime)
             exit $rc",
            as_qemu(&format!("ocfs2-csi disk-lock {img} -- touch /tmp/ran"))
        ),
    );
    assert_eq!(rc, EXIT_HELD, "node2 must be refused: {out}");
    assert!(
        out.contains(&img) && out.contains("possibly on another node"),
        "{out}"
    );
    lab.must(2, "test ! -e /tmp/ran");
    println!(
        "protection: node2 refused in {:.2} s (guest clock, tool start-up included; {host:.2} s host wall clock) \
         while node1 holds flock: {}",
        guest_secs(&out),
        out.lines()
            .find(|l| l.contains("possibly"))
            .unwrap_or("")
            .trim()
    );
    // A waiter on node2 gets it only after node1's holder is killed.
    lab.must(
        2,
        &format!(
            "rm -f /tmp/wait.rc /tmp/wait.log
             ( {} >/tmp/wait.log 2>&1; echo $? > /tmp/wait.rc ) </dev/null >/dev/null 2>&1 &
             true",
            as_qemu(&format!(
                "ocfs2-csi disk-lock --wait 60 {img} -- sh -c 'exit 7'"
            ))
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    let pending = lab.must(2, "cat /tmp/wait.rc 2>/dev/null || echo waiting");
    assert_eq!(
        pending.trim(),
        "waiting",
        "node2's waiter finished while node1 held the lock"
    );
    let killed = Instant::now();
    lab.must(
        1,
        &format!("kill -KILL {f1}; while kill -0 {f1} 2>/dev/null; do sleep 0.05; done"),
    );
    let got = loop {
        let out = lab.must(2, "cat /tmp/wait.rc 2>/dev/null || echo waiting");
        if out.trim() != "waiting" {
            break out;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "node2 never got the lock"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let release_to_acquire = killed.elapsed().as_secs_f64();
    assert_eq!(got.trim(), "7", "the waiter's command exit code");
    println!(
        "protection: node1's holder SIGKILLed; node2's --wait got the lock and its command exited 7 \
         within {release_to_acquire:.2} s (host wall clock, includes polling)"
    );

    // --- 4. no filesystem overhead reserved by CDI ------------------------
    // With CDI's filesystemOverhead at 0 the image is as big as the PVC
    // request. It must fit while both nodes have the volume mounted and
    // have allocated from it (their local-allocation windows taken), and
    // the other node must still write into its last MiBs (converting
    // unwritten extents, which needs metadata).
    lab.must(1, &format!("rm {img}"));
    for node in [1, 2] {
        let df = lab.must(node, &format!("sync; df -P -B1 {t} | tail -n 1"));
        let avail: u64 = df.split_whitespace().nth(3).unwrap().parse().unwrap();
        println!(
            "capacity: node{node}: after use, df available {avail} = {:.4} of the {requested} requested",
            avail as f64 / requested as f64
        );
    }
    let full = format!("{t}/full.img");
    let out = lab.must(
        1,
        &format!(
            "{} && echo blocks=$(stat -c %b {full})",
            as_qemu(&format!("{fa} -l {requested} {full}"))
        ),
    );
    assert!(num(&out, "blocks") * bsize >= requested, "{out}");
    let last = requested / MIB - SECOND_MIB;
    lab.must(
        2,
        &as_qemu(&format!(
            "ocfs2-csi disk-lock {full} -- dd if=/tmp/p2 of={full} bs=1M seek={last} oflag=direct conv=notrunc"
        )),
    );
    let out = lab.must(
        1,
        &format!(
            "dd if={full} bs=1M skip={last} count={SECOND_MIB} iflag=direct 2>/dev/null | md5sum | sed 's/ .*//;s/^/sum=/'"
        ),
    );
    assert_eq!(field(&out, "sum"), second_sum, "node1 reads node2's tail");
    println!(
        "capacity: an image of exactly the requested {requested} bytes was preallocated while mounted on \
         both nodes; node2 wrote its last {SECOND_MIB} MiB with O_DIRECT and node1 read them back"
    );
    lab.must(1, &format!("rm {full}"));

    // --- 5. unstage everywhere, fsck ------------------------------------------
    let t = Instant::now();
    rt.block_on(futures::future::join_all(
        [1, 2].map(|node| unpublish_and_unstage(lab, node, &vol)),
    ));
    println!("cleanup: unstaged on both nodes in {}", secs(t));
    for node in [1, 2] {
        let errors = lab.must(
            node,
            "dmesg | sed -n '/lab: kubevirt scenario begins/,$p' | grep -i 'I/O error' || true",
        );
        assert!(errors.trim().is_empty(), "node{node}: {errors}");
    }
    let fsck = lab.fsck_volume(1, &vol.volume_context["partitionGuid"]);
    println!(
        "cleanup: no I/O errors in either kernel log; fsck.ocfs2 -fn exit 0: {}",
        fsck.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    );
    rt.block_on(c.delete_volume(delete_request(&vol.volume_id)))
        .unwrap();
    drop(c);
    drop(controller);
    println!("lab kubevirt finished in {}", secs(total));
}

fn secs(t: Instant) -> String {
    format!("{:.1} s", t.elapsed().as_secs_f64())
}
