//! What the kernel must offer before this node can join: the ocfs2 modules
//! and device-mapper (volumes are reached through its maps), configfs,
//! dlmfs and debugfs mounted, and o2cb as the cluster stack.
//!
//! Every step looks first and acts only when needed, so a restarted plugin
//! changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::configfs::CONFIGFS_ROOT;
use super::error::ClusterError;
use super::heartbeat::DEBUGFS_ROOT;
use crate::mountinfo::parse_mount_points;
use crate::tools::{Cmd, Runner};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The kernel interfaces used, so tests can point them at a temp dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPaths {
    pub configfs: PathBuf,
    pub debugfs: PathBuf,
    /// Where dlmfs is mounted; o2cb's tools and mount.ocfs2 expect /dlm.
    pub dlmfs: PathBuf,
    pub mountinfo: PathBuf,
    pub filesystems: PathBuf,
    /// ocfs2_stackglue's sysfs directory, holding `cluster_stack`.
    pub ocfs2_sysfs: PathBuf,
    /// device-mapper's misc device in sysfs: there once dm-mod is loaded.
    pub device_mapper: PathBuf,
}

impl Default for KernelPaths {
    fn default() -> KernelPaths {
        KernelPaths {
            configfs: CONFIGFS_ROOT.into(),
            debugfs: DEBUGFS_ROOT.into(),
            dlmfs: "/dlm".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            filesystems: "/proc/filesystems".into(),
            ocfs2_sysfs: "/sys/fs/ocfs2".into(),
            device_mapper: "/sys/class/misc/device-mapper".into(),
        }
    }
}

/// Whether `point` is listed as a mount point in mountinfo text.
pub fn is_mounted(mountinfo: &str, point: &Path) -> bool {
    parse_mount_points(mountinfo).iter().any(|p| p == point)
}

/// Whether /proc/filesystems lists `name` (lines like `nodev\tconfigfs`).
pub fn has_filesystem(filesystems: &str, name: &str) -> bool {
    filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

fn read(path: &Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
        path: path.to_path_buf(),
        source,
    })
}

async fn run(runner: &dyn Runner, cmd: Cmd, done: &mut Vec<String>) -> Result<(), ClusterError> {
    runner.run(&cmd).await?.ok(&cmd)?;
    tracing::info!(command = %cmd.display(), "kernel prerequisite");
    done.push(cmd.display());
    Ok(())
}

async fn ensure_mounted(
    runner: &dyn Runner,
    paths: &KernelPaths,
    fs_type: &str,
    point: &Path,
    done: &mut Vec<String>,
) -> Result<(), ClusterError> {
    if is_mounted(&read(&paths.mountinfo)?, point) {
        return Ok(());
    }
    let cmd = Cmd::new("mount", TOOL_TIMEOUT)
        .arg("-t")
        .arg(fs_type)
        .arg(fs_type)
        .arg(point.as_os_str());
    run(runner, cmd, done).await
}

/// Loads and mounts what is missing; returns the commands it ran (empty
/// when everything was in place).
pub async fn ensure_prerequisites(
    runner: &dyn Runner,
    paths: &KernelPaths,
) -> Result<Vec<String>, ClusterError> {
    let mut done = Vec::new();
    let stack = paths.ocfs2_sysfs.join("cluster_stack");
    let cluster_dir = paths.configfs.join("cluster");
    let modules_missing = !stack.exists()
        || !cluster_dir.is_dir()
        || !has_filesystem(&read(&paths.filesystems)?, "ocfs2_dlmfs")
        || !paths.device_mapper.exists();
    if modules_missing {
        // -a: several modules; already loaded ones are left as they are.
        let cmd = Cmd::new("modprobe", TOOL_TIMEOUT)
            .arg("-a")
            .arg("ocfs2")
            .arg("ocfs2_stack_o2cb")
            .arg("ocfs2_dlmfs")
            .arg("dm_mod");
        run(runner, cmd, &mut done).await?;
    }
    ensure_mounted(runner, paths, "configfs", &paths.configfs, &mut done).await?;
    if !cluster_dir.is_dir() {
        return Err(ClusterError::Missing {
            path: cluster_dir,
            hint: "the ocfs2 node manager did not register with configfs",
        });
    }
    let found = read(&stack)?.trim().to_string();
    if found != "o2cb" {
        return Err(ClusterError::WrongStack { path: stack, found });
    }
    std::fs::create_dir_all(&paths.dlmfs).map_err(|source| ClusterError::Mkdir {
        path: paths.dlmfs.clone(),
        source,
    })?;
    ensure_mounted(runner, paths, "ocfs2_dlmfs", &paths.dlmfs, &mut done).await?;
    ensure_mounted(runner, paths, "debugfs", &paths.debugfs, &mut done).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{ToolError, ToolOutput};
    use futures::future::BoxFuture;
    use std::fs;
    use std::io::Write;
    use std::sync::Mutex;

    /// A runner that does to the temp dir what modprobe and mount would.
    struct FakeKernel {
        paths: KernelPaths,
        stack: &'static str,
        ran: Mutex<Vec<String>>,
    }

    fn append(path: &Path, line: &str) {
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    impl Runner for FakeKernel {
        fn run<'a>(&'a self, cmd: &'a Cmd) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
            let p = &self.paths;
            let args: Vec<String> = cmd
                .args
                .iter()
                .map(|a| a.to_string_lossy().into())
                .collect();
            match cmd.program {
                "modprobe" => {
                    fs::create_dir_all(&p.ocfs2_sysfs).unwrap();
                    fs::write(p.ocfs2_sysfs.join("cluster_stack"), self.stack).unwrap();
                    // configfs is not mounted yet; the directory appears
                    // with the mount below.
                    append(&p.filesystems, "nodev\tocfs2_dlmfs");
                    fs::create_dir_all(&p.device_mapper).unwrap();
                }
                "mount" => {
                    let point = Path::new(&args[3]);
                    if args[1] == "configfs" {
                        fs::create_dir_all(point.join("cluster")).unwrap();
                    }
                    let line = format!("99 1 0:99 / {} rw - {} {} rw", args[3], args[1], args[2]);
                    append(&p.mountinfo, &line);
                }
                other => panic!("unexpected {other}"),
            }
            self.ran.lock().unwrap().push(cmd.display());
            Box::pin(async {
                Ok(ToolOutput {
                    code: Some(0),
                    ..Default::default()
                })
            })
        }
    }

    fn setup(dir: &Path, stack: &'static str) -> FakeKernel {
        let paths = KernelPaths {
            configfs: dir.join("config"),
            debugfs: dir.join("debug"),
            dlmfs: dir.join("dlm"),
            mountinfo: dir.join("mountinfo"),
            filesystems: dir.join("filesystems"),
            ocfs2_sysfs: dir.join("sys-ocfs2"),
            device_mapper: dir.join("sys-dm"),
        };
        fs::write(&paths.mountinfo, "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap();
        fs::write(&paths.filesystems, "nodev\tsysfs\n\text4\n").unwrap();
        FakeKernel {
            paths,
            stack,
            ran: Mutex::new(Vec::new()),
        }
    }

    #[tokio::test]
    async fn loads_and_mounts_what_is_missing_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = setup(dir.path(), "o2cb\n");
        let done = ensure_prerequisites(&kernel, &kernel.paths).await.unwrap();
        let p = &kernel.paths;
        let want = vec![
            "modprobe -a ocfs2 ocfs2_stack_o2cb ocfs2_dlmfs dm_mod".to_string(),
            format!("mount -t configfs configfs {}", p.configfs.display()),
            format!("mount -t ocfs2_dlmfs ocfs2_dlmfs {}", p.dlmfs.display()),
            format!("mount -t debugfs debugfs {}", p.debugfs.display()),
        ];
        assert_eq!(done, want);
        assert!(p.dlmfs.is_dir());
        // A restarted plugin finds everything in place.
        kernel.ran.lock().unwrap().clear();
        assert!(ensure_prerequisites(&kernel, p).await.unwrap().is_empty());
        assert!(kernel.ran.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn another_cluster_stack_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = setup(dir.path(), "pcmk\n");
        let err = ensure_prerequisites(&kernel, &kernel.paths)
            .await
            .unwrap_err();
        assert!(matches!(&err, ClusterError::WrongStack { found, .. } if found == "pcmk"));
        assert!(err.to_string().contains("not o2cb"), "{err}");
    }

    #[test]
    fn mount_and_filesystem_checks() {
        let info = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 22 0:30 / /sys/kernel/config rw - configfs configfs rw\n\
                    31 22 0:31 / /a\\040b rw - tmpfs tmpfs rw\n";
        assert!(is_mounted(info, Path::new("/sys/kernel/config")));
        assert!(is_mounted(info, Path::new("/a b")));
        assert!(!is_mounted(info, Path::new("/dlm")));
        let fss = "nodev\tsysfs\n\text4\nnodev\tocfs2_dlmfs\n";
        assert!(has_filesystem(fss, "ocfs2_dlmfs") && has_filesystem(fss, "ext4"));
        assert!(!has_filesystem(fss, "ocfs2"));
    }
}
