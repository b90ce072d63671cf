//! `ocfs2-csi disk-lock`: keeps a VM disk image from being used by two
//! hypervisors at once when the image lives on a volume mounted on many
//! nodes (KubeVirt live migration, a VM restarted on another node).
//!
//! QEMU protects its images with OFD (POSIX-style) byte-range locks. On OCFS2
//! with the o2cb stack those are node-local: a QEMU on another node never
//! sees them. `flock(2)` locks on OCFS2 go through the cluster's DLM and are
//! cluster-wide. So the tool takes an exclusive `flock` on the image (or, with
//! `--kind posix`, an OFD write lock, only to show the hazard), runs the
//! hypervisor (an argument vector, never a shell) while it holds the lock and
//! exits with the hypervisor's exit code. When another holder has the lock it
//! exits with [`EXIT_HELD`] and says so.
//!
//! ```text
//! ocfs2-csi disk-lock [--kind flock|posix] [--wait SECONDS] FILE -- CMD [ARGS...]
//! ocfs2-csi disk-lock FILE          # hold until SIGTERM/SIGINT/SIGHUP
//! ```

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Exit code when another holder has the lock (BSD sysexits' EX_TEMPFAIL).
pub const EXIT_HELD: i32 = 75;
/// Exit code when FILE cannot be opened or locked for another reason.
pub const EXIT_FAILED: i32 = 1;
/// Exit codes when CMD cannot be started, as shells report them.
pub const EXIT_NOT_FOUND: i32 = 127;
pub const EXIT_CANNOT_RUN: i32 = 126;

/// How often a held lock is tried again while `--wait` lasts, and how often
/// a running command and the signal flag are checked.
const POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LockKind {
    /// flock(2) LOCK_EX: cluster-wide on OCFS2 with o2cb.
    Flock,
    /// An OFD write lock on the whole file (fcntl F_OFD_SETLK), the kind
    /// QEMU uses: node-local on OCFS2 with o2cb, so it does not protect the
    /// image from another node.
    Posix,
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockKind::Flock => "flock",
            LockKind::Posix => "posix",
        })
    }
}

/// The subcommand's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DiskLockArgs {
    /// flock (cluster-wide on OCFS2 with o2cb) or posix (an OFD lock, which
    /// OCFS2 with o2cb keeps node-local: offered only to show the hazard).
    #[arg(long, value_enum, default_value_t = LockKind::Flock)]
    pub kind: LockKind,
    /// Seconds to wait for the lock when another holder has it (0: refuse at
    /// once).
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
    /// The disk image (opened read-write; never created).
    pub file: PathBuf,
    /// The command to run while holding the lock, after `--`; without one
    /// the lock is held until SIGTERM, SIGINT or SIGHUP.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: cannot open read-write: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", held_message(path, *kind, *waited))]
    Held {
        path: PathBuf,
        kind: LockKind,
        waited: Duration,
    },
    #[error("{}: {kind} lock failed: {source}", path.display())]
    Lock {
        path: PathBuf,
        kind: LockKind,
        source: std::io::Error,
    },
    #[error("{}: interrupted by signal {signal} while waiting for the {kind} lock", path.display())]
    Interrupted {
        path: PathBuf,
        kind: LockKind,
        signal: i32,
    },
}

impl LockError {
    pub fn exit_code(&self) -> i32 {
        match self {
            LockError::Held { .. } => EXIT_HELD,
            LockError::Interrupted { signal, .. } => 128 + signal,
            LockError::Open { .. } | LockError::Lock { .. } => EXIT_FAILED,
        }
    }
}

fn held_message(path: &Path, kind: LockKind, waited: Duration) -> String {
    let who = match kind {
        LockKind::Flock => "another holder (possibly on another node)",
        // Only holders on this node are ever seen.
        LockKind::Posix => "another holder on this node",
    };
    format!(
        "{}: {who} has the exclusive {kind} lock; refused after waiting {:.1} s",
        path.display(),
        waited.as_secs_f64()
    )
}

/// An exclusive lock on an open disk image; closing the file releases it.
#[derive(Debug)]
pub struct DiskLock {
    file: File,
    pub kind: LockKind,
    pub path: PathBuf,
}

impl DiskLock {
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Opens `path` read-write and takes an exclusive lock of `kind`, trying
/// again until `wait` has passed when another holder has it.
pub fn acquire(path: &Path, kind: LockKind, wait: Duration) -> Result<DiskLock, LockError> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let started = Instant::now();
    loop {
        match try_lock(&file, kind) {
            Ok(true) => {
                return Ok(DiskLock {
                    file,
                    kind,
                    path: path.to_path_buf(),
                })
            }
            Ok(false) => {}
            Err(source) => {
                return Err(LockError::Lock {
                    path: path.to_path_buf(),
                    kind,
                    source,
                })
            }
        }
        let waited = started.elapsed();
        if waited >= wait {
            return Err(LockError::Held {
                path: path.to_path_buf(),
                kind,
                waited,
            });
        }
        if let Some(signal) = signalled() {
            return Err(LockError::Interrupted {
                path: path.to_path_buf(),
                kind,
                signal,
            });
        }
        std::thread::sleep(POLL.min(wait - waited));
    }
}

/// One non-blocking attempt: Ok(false) when another holder has the lock.
fn try_lock(file: &File, kind: LockKind) -> std::io::Result<bool> {
    let fd = file.as_raw_fd();
    loop {
        let rc = match kind {
            // SAFETY: flock on a descriptor we own; no pointers involved.
            LockKind::Flock => unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) },
            LockKind::Posix => {
                // SAFETY: an all-zero `struct flock` is valid; l_pid must
                // be 0 for OFD locks.
                let mut fl: libc::flock = unsafe { std::mem::zeroed() };
                fl.l_type = libc::F_WRLCK as libc::c_short;
                fl.l_whence = libc::SEEK_SET as libc::c_short;
                fl.l_start = 0;
                // Length 0: the whole file, however it grows.
                fl.l_len = 0;
                // SAFETY: F_OFD_SETLK reads the struct we pass and keeps no
                // pointer to it.
                unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) }
            }
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // flock: EWOULDBLOCK (= EAGAIN); F_OFD_SETLK: EAGAIN or EACCES.
            Some(libc::EAGAIN) | Some(libc::EACCES) => return Ok(false),
            _ => return Err(err),
        }
    }
}

// --- signals -----------------------------------------------------------------

/// The last of SIGTERM/SIGINT/SIGHUP received (0: none).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNALLED.store(signal, Ordering::SeqCst);
}

fn signalled() -> Option<i32> {
    match SIGNALLED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// SIGTERM, SIGINT and SIGHUP only set a flag: the tool then ends the way
/// it chooses (forwarding the signal to the command and waiting for it, so
/// the lock is released only once the command is gone).
fn install_signal_handlers() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic
        // (async-signal-safe).
        unsafe { sigaction(s, &action) }?;
    }
    Ok(())
}

// --- the subcommand --------------------------------------------------------------

/// `ocfs2-csi disk-lock`: returns the process exit code.
pub fn main(args: DiskLockArgs) -> i32 {
    if let Err(e) = install_signal_handlers() {
        eprintln!("ocfs2-csi disk-lock: cannot install signal handlers: {e}");
        return EXIT_FAILED;
    }
    run(&args)
}

/// Everything but the signal handlers (so tests can call it).
pub fn run(args: &DiskLockArgs) -> i32 {
    if args.kind == LockKind::Posix {
        eprintln!(
            "ocfs2-csi disk-lock: warning: posix locks are node-local on OCFS2 with o2cb; \
             they do not keep {} from being used on another node",
            args.file.display()
        );
    }
    let started = Instant::now();
    let lock = match acquire(&args.file, args.kind, Duration::from_secs(args.wait)) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("ocfs2-csi disk-lock: {e}");
            return e.exit_code();
        }
    };
    let took = started.elapsed().as_secs_f64();
    let Some((program, rest)) = args.command.split_first() else {
        println!(
            "disk-lock: holding {} lock on {} (pid {}, taken in {took:.3} s); release with SIGTERM",
            lock.kind,
            lock.path.display(),
            std::process::id()
        );
        let _ = std::io::stdout().flush();
        while signalled().is_none() {
            std::thread::sleep(POLL);
        }
        drop(lock);
        println!("disk-lock: released {}", args.file.display());
        return 0;
    };
    eprintln!(
        "ocfs2-csi disk-lock: {} lock on {} taken in {took:.3} s; running {}",
        lock.kind,
        lock.path.display(),
        program.to_string_lossy()
    );
    // The command inherits the lock's descriptor: both locks (flock and
    // OFD) belong to the open file, so the lock lives while either process
    // does. This process killed (SIGKILL, OOM) while the command (a QEMU)
    // runs on must not free the image for another node.
    let code = run_command(program, rest, lock.file().as_raw_fd());
    drop(lock);
    code
}

/// Runs the command (no shell) with `inherit` left open across exec,
/// forwards SIGTERM/SIGINT/SIGHUP to it, and returns its exit code (128 +
/// signal when a signal ended it).
fn run_command(program: &OsString, args: &[OsString], inherit: RawFd) -> i32 {
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: between fork and exec the closure only calls fcntl(2), which
    // is async-signal-safe, on a descriptor this process owns.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(inherit, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "ocfs2-csi disk-lock: cannot run {}: {e}",
                program.to_string_lossy()
            );
            return if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            };
        }
    };
    let mut forwarded = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(EXIT_FAILED)
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("ocfs2-csi disk-lock: waiting for the command: {e}");
                return EXIT_FAILED;
            }
        }
        if let (Some(signal), false) = (signalled(), forwarded) {
            forwarded = true;
            if let Ok(s) = nix::sys::signal::Signal::try_from(signal) {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, s);
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DiskLockArgs,
    }

    fn parse(argv: &[&str]) -> Result<DiskLockArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("disk-lock").chain(argv.iter().copied()))
            .map(|c| c.args)
    }

    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        (dir, path)
    }

    fn args(path: &Path, kind: LockKind, wait: u64, cmd: &[&str]) -> DiskLockArgs {
        DiskLockArgs {
            kind,
            wait,
            file: path.to_path_buf(),
            command: cmd.iter().map(OsString::from).collect(),
        }
    }

    #[test]
    fn parses_kind_wait_file_and_command() {
        let a = parse(&[
            "--kind", "posix", "--wait", "3", "/d.img", "--", "qemu", "-m", "1G",
        ])
        .unwrap();
        assert_eq!(a.kind, LockKind::Posix);
        assert_eq!(a.wait, 3);
        assert_eq!(a.file, PathBuf::from("/d.img"));
        assert_eq!(a.command, ["qemu", "-m", "1G"]);
        // Defaults: flock, refuse at once, hold until a signal.
        let a = parse(&["/d.img"]).unwrap();
        assert_eq!((a.kind, a.wait, a.command.len()), (LockKind::Flock, 0, 0));
        // The command's own flags are not the tool's.
        let a = parse(&["/d.img", "--", "cmd", "--wait", "x"]).unwrap();
        assert_eq!((a.wait, a.command.len()), (0, 3));
        assert!(parse(&["--kind", "fcntl", "/d.img"]).is_err());
        assert!(parse(&["--wait", "-1", "/d.img"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn second_holder_is_refused_for_both_kinds() {
        // Two open file descriptions conflict like two processes would.
        for kind in [LockKind::Flock, LockKind::Posix] {
            let (_dir, path) = image();
            let first = acquire(&path, kind, Duration::ZERO).unwrap();
            let t = Instant::now();
            let e = acquire(&path, kind, Duration::ZERO).unwrap_err();
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{kind}: refusal took {:?}",
                t.elapsed()
            );
            assert!(matches!(e, LockError::Held { .. }), "{kind}: {e:?}");
            assert_eq!(e.exit_code(), EXIT_HELD);
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("another holder"), "{text}");
            assert_eq!(run(&args(&path, kind, 0, &["true"])), EXIT_HELD, "{kind}");
            drop(first);
            // Released: taken again at once.
            acquire(&path, kind, Duration::ZERO).unwrap();
        }
    }

    #[test]
    fn flock_message_says_possibly_another_node() {
        let text = held_message(Path::new("/v/disk.img"), LockKind::Flock, Duration::ZERO);
        assert!(text.starts_with("/v/disk.img: "), "{text}");
        assert!(text.contains("possibly on another node"), "{text}");
        let text = held_message(Path::new("/v/disk.img"), LockKind::Posix, Duration::ZERO);
        assert!(text.contains("on this node"), "{text}");
    }

    #[test]
    fn wait_succeeds_after_release() {
        let (_dir, path) = image();
        let first = acquire(&path, LockKind::Flock, Duration::ZERO).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            drop(first);
        });
        let t = Instant::now();
        let second = acquire(&path, LockKind::Flock, Duration::from_secs(5)).unwrap();
        let took = t.elapsed();
        releaser.join().unwrap();
        assert!(
            took >= Duration::from_millis(350),
            "taken before release: {took:?}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        drop(second);
    }

    #[test]
    fn wait_gives_up_after_the_limit() {
        let (_dir, path) = image();
        let _first = acquire(&path, LockKind::Flock, Duration::ZERO).unwrap();
        let t = Instant::now();
        let e = acquire(&path, LockKind::Flock, Duration::from_secs(1)).unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, LockError::Held { .. }), "{e:?}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(e.to_string().contains("waiting 1.0 s"), "{e}");
    }

    #[test]
    fn command_exit_code_is_propagated() {
        // Each call below takes the lock the previous one released. Other
        // tests fork children meanwhile, and a child forked between our
        // open and close holds a copy of the lock's descriptor until it
        // execs: then a call that refused at once would see 75, not the
        // code under test. Waiting for the lock keeps this test about exit
        // codes.
        const WAIT: u64 = 30;
        let (_dir, path) = image();
        assert_eq!(run(&args(&path, LockKind::Flock, WAIT, &["true"])), 0);
        assert_eq!(run(&args(&path, LockKind::Flock, WAIT, &["false"])), 1);
        assert_eq!(
            run(&args(
                &path,
                LockKind::Flock,
                WAIT,
                &["sh", "-c", "exit 42"]
            )),
            42
        );
        // Killed by a signal: 128 + signal, as shells report it.
        assert_eq!(
            run(&args(
                &path,
                LockKind::Flock,
                WAIT,
                &["sh", "-c", "kill -TERM $$"]
            )),
            128 + libc::SIGTERM
        );
        assert_eq!(
            run(&args(&path, LockKind::Flock, WAIT, &["/nonexistent/qemu"])),
            EXIT_NOT_FOUND
        );
        // The argument vector is not interpreted by a shell.
        let marker = path.with_file_name("pwned");
        let cmd = format!("true; touch {}", marker.display());
        assert_eq!(
            run(&args(&path, LockKind::Flock, WAIT, &[&cmd])),
            EXIT_NOT_FOUND
        );
        assert!(!marker.exists());
        // The lock is released when the command is done.
        acquire(&path, LockKind::Flock, Duration::ZERO).unwrap();
    }

    #[test]
    fn lock_is_held_while_the_command_runs() {
        let (_dir, path) = image();
        // The runner waits: the probe below may hold the lock for a moment.
        let a = args(&path, LockKind::Flock, 5, &["sleep", "1"]);
        let runner = std::thread::spawn(move || run(&a));
        // Until the command ends, nobody else gets the lock.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match acquire(&path, LockKind::Flock, Duration::ZERO) {
                Err(LockError::Held { .. }) => break,
                Ok(l) => {
                    drop(l);
                    assert!(Instant::now() < deadline, "the runner never took the lock");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let e = acquire(&path, LockKind::Flock, Duration::ZERO).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_HELD);
        assert_eq!(runner.join().unwrap(), 0);
        acquire(&path, LockKind::Flock, Duration::ZERO).unwrap();
    }

    #[test]
    fn missing_image_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.img");
        let e = acquire(&path, LockKind::Flock, Duration::ZERO).unwrap_err();
        assert!(matches!(e, LockError::Open { .. }), "{e:?}");
        assert_eq!(e.exit_code(), EXIT_FAILED);
        assert!(!path.exists());
    }
}
