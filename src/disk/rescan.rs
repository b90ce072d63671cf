//! Making this host see a LUN's new size after the array grew it.
//!
//! Nothing tells a Linux host that a SCSI LUN grew: the kernel reads a
//! disk's capacity again only when asked (`device/rescan` in sysfs), and a
//! multipath map keeps its size until `multipathd resize map` reloads it,
//! which multipathd refuses unless every path reports the same size. So
//! [`refresh`] rescans every running path of a multipath map (or the one
//! SCSI disk of a single-path LUN) and, when the paths now report more than
//! the map, asks multipathd to resize it. A virtio disk learns its new
//! size from the hypervisor and an image file has no device: both are
//! left as they are.
//!
//! Paths that are not running (a link down, a session in recovery) are not
//! rescanned: the write would wait for the SCSI timeouts. multipathd then
//! sees paths of different sizes and refuses; the error says so, and the
//! next refresh, once the path is back, succeeds.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Reloads a multipath map at its paths' size.
pub trait Multipath: Send + Sync {
    fn resize(&self, map: &str) -> Result<(), String>;
}

/// `multipathd resize map NAME`, through multipathd's socket (on the
/// host's network namespace: the plugin runs with hostNetwork).
pub struct Multipathd;

/// How long multipathd may take to answer (its own client gives up after
/// a few seconds; this is the bound if it does not).
const MULTIPATHD_TIMEOUT: Duration = Duration::from_secs(30);

impl Multipath for Multipathd {
    fn resize(&self, map: &str) -> Result<(), String> {
        let program = crate::tools::resolve("multipathd").map_err(|e| e.to_string())?;
        let mut child = Command::new(program)
            .args(["resize", "map", map])
            .env_clear()
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start multipathd: {e}"))?;
        let deadline = Instant::now() + MULTIPATHD_TIMEOUT;
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "multipathd did not answer within {MULTIPATHD_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if out.status.success() && !text.trim_start().starts_with("fail") {
            Ok(())
        } else {
            Err(format!(
                "`multipathd resize map {map}` failed: {} (multipathd resizes only when every \
                 path is up and reports the same size; its log says which path differs)",
                text.trim()
            ))
        }
    }
}

/// Where sysfs is (a test points this at a tree of its own).
pub struct Sysfs {
    pub root: PathBuf,
}

impl Sysfs {
    pub fn system() -> Sysfs {
        Sysfs {
            root: PathBuf::from("/sys"),
        }
    }
}

/// What a refresh found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// The device's size before and after, in bytes.
    pub before: u64,
    pub after: u64,
    /// SCSI devices asked to read their capacity again.
    pub rescanned: Vec<String>,
    /// Paths left alone because they were not running.
    pub skipped: Vec<String>,
    /// The multipath map resized, if one was.
    pub resized: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RescanError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Resize(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RescanError {
    let what = what.into();
    move |source| RescanError::Io { what, source }
}

/// [`refresh`] with the system's sysfs and multipathd.
pub fn refresh_lun(lun: &Path) -> Result<Refreshed, RescanError> {
    refresh(lun, &Sysfs::system(), &Multipathd)
}

/// Makes this host see `lun`'s current size (see the module comment).
pub fn refresh(
    lun: &Path,
    sys: &Sysfs,
    multipath: &dyn Multipath,
) -> Result<Refreshed, RescanError> {
    let meta = std::fs::metadata(lun).map_err(io_err(lun.display().to_string()))?;
    if !meta.file_type().is_block_device() {
        let bytes = meta.len();
        return Ok(Refreshed {
            before: bytes,
            after: bytes,
            ..Refreshed::default()
        });
    }
    let rdev = meta.rdev();
    let dev = sys.root.join(format!(
        "dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    let mut done = Refreshed {
        before: sectors(&dev)? * 512,
        ..Refreshed::default()
    };
    if let Some(map) = multipath_name(&dev) {
        let mut widest = 0;
        for path in slaves(&dev)? {
            rescan_one(&path, &mut done)?;
            widest = widest.max(sectors(&path)?);
        }
        if widest * 512 > done.before {
            multipath.resize(&map).map_err(RescanError::Resize)?;
            done.resized = Some(map);
        }
    } else if dev.join("device/rescan").exists() {
        rescan_one(&dev, &mut done)?;
    }
    done.after = sectors(&dev)? * 512;
    if done.after != done.before {
        tracing::info!(
            lun = %lun.display(),
            from = done.before,
            to = done.after,
            rescanned = ?done.rescanned,
            skipped = ?done.skipped,
            resized = ?done.resized,
            "the LUN's size changed on this host"
        );
    }
    Ok(done)
}

/// A block device's size in 512-byte units, as sysfs gives it.
fn sectors(dev: &Path) -> Result<u64, RescanError> {
    let file = dev.join("size");
    let text = std::fs::read_to_string(&file).map_err(io_err(file.display().to_string()))?;
    text.trim().parse().map_err(|_| RescanError::Io {
        what: file.display().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("not a size: {text:?}")),
    })
}

/// The map's name when `dev` is a multipath map.
fn multipath_name(dev: &Path) -> Option<String> {
    let uuid = std::fs::read_to_string(dev.join("dm/uuid")).ok()?;
    if !uuid.starts_with("mpath-") {
        return None;
    }
    let name = std::fs::read_to_string(dev.join("dm/name")).ok()?;
    Some(name.trim().to_string())
}

/// The devices under a device-mapper map (its paths, for multipath).
fn slaves(dev: &Path) -> Result<Vec<PathBuf>, RescanError> {
    let dir = dev.join("slaves");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io_err(dir.display().to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    found.sort();
    Ok(found)
}

/// Asks one SCSI device to read its capacity again, if it is running.
fn rescan_one(dev: &Path, done: &mut Refreshed) -> Result<(), RescanError> {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let state = std::fs::read_to_string(dev.join("device/state")).unwrap_or_default();
    if !dev.join("device/rescan").exists() {
        return Ok(());
    }
    if state.trim() != "running" {
        done.skipped.push(format!("{name} ({})", state.trim()));
        return Ok(());
    }
    let file = dev.join("device/rescan");
    std::fs::write(&file, "1").map_err(io_err(file.display().to_string()))?;
    done.rescanned.push(name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records resizes; a resize makes the map as large as `grow_to`.
    struct FakeMultipath {
        map_size: PathBuf,
        grow_to: u64,
        calls: Mutex<Vec<String>>,
        fail: bool,
    }

    impl Multipath for FakeMultipath {
        fn resize(&self, map: &str) -> Result<(), String> {
            self.calls.lock().unwrap().push(map.to_string());
            if self.fail {
                return Err("path size not consistent".into());
            }
            std::fs::write(&self.map_size, self.grow_to.to_string()).unwrap();
            Ok(())
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A sysfs tree with a multipath map over two SCSI paths, under the
    /// device numbers `dev` of a real block device node that stands for the
    /// map (its own sysfs is never read).
    fn tree(dev: &str, path_sizes: [u64; 2], states: [&str; 2]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("dev/block").join(dev);
        write(&map.join("size"), "2048");
        write(&map.join("dm/uuid"), "mpath-36001405abc\n");
        write(&map.join("dm/name"), "36001405abc\n");
        for (i, (size, state)) in path_sizes.iter().zip(states).enumerate() {
            let p = map.join(format!("slaves/sd{}", (b'a' + i as u8) as char));
            write(&p.join("size"), &size.to_string());
            write(&p.join("device/state"), &format!("{state}\n"));
            write(&p.join("device/rescan"), "");
        }
        dir
    }

    /// Some block device of this host and its sysfs name (MAJ:MIN).
    fn a_block_device() -> Option<(PathBuf, String)> {
        std::fs::read_dir("/dev")
            .ok()?
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let meta = e.metadata().ok()?;
                meta.file_type().is_block_device().then(|| {
                    let r = meta.rdev();
                    (e.path(), format!("{}:{}", libc::major(r), libc::minor(r)))
                })
            })
    }

    #[test]
    fn rescans_running_paths_and_resizes_the_map_when_they_grew() {
        let Some((lun, dev)) = a_block_device() else {
            eprintln!("no block device on this host: skipped");
            return;
        };
        let sys = tree(&dev, [4096, 4096], ["running", "running"]);
        let map = sys.path().join("dev/block").join(&dev);
        let mp = FakeMultipath {
            map_size: map.join("size"),
            grow_to: 4096,
            calls: Mutex::default(),
            fail: false,
        };
        let sysfs = Sysfs {
            root: sys.path().to_path_buf(),
        };
        let done = refresh(&lun, &sysfs, &mp).unwrap();
        assert_eq!((done.before, done.after), (2048 * 512, 4096 * 512));
        assert_eq!(done.rescanned, ["sda", "sdb"]);
        assert_eq!(done.resized.as_deref(), Some("36001405abc"));
        for p in ["sda", "sdb"] {
            let written = std::fs::read_to_string(map.join("slaves").join(p).join("device/rescan"));
            assert_eq!(written.unwrap(), "1");
        }
        // Nothing grew since: no resize asked.
        let again = refresh(&lun, &sysfs, &mp).unwrap();
        assert_eq!((again.before, again.after), (4096 * 512, 4096 * 512));
        assert_eq!(again.resized, None);
        assert_eq!(mp.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_path_that_is_down_is_skipped_and_a_refused_resize_is_an_error() {
        let Some((lun, dev)) = a_block_device() else {
            eprintln!("no block device on this host: skipped");
            return;
        };
        let sys = tree(&dev, [4096, 2048], ["running", "transport-offline"]);
        let map = sys.path().join("dev/block").join(&dev);
        let mp = FakeMultipath {
            map_size: map.join("size"),
            grow_to: 4096,
            calls: Mutex::default(),
            fail: true,
        };
        let sysfs = Sysfs {
            root: sys.path().to_path_buf(),
        };
        let err = refresh(&lun, &sysfs, &mp).unwrap_err().to_string();
        assert!(err.contains("not consistent"), "{err}");
        let untouched = std::fs::read_to_string(map.join("slaves/sdb/device/rescan")).unwrap();
        assert_eq!(
            untouched, "",
            "a path that is not running is never rescanned"
        );
    }

    #[test]
    fn an_image_file_is_left_as_it_is() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let sysfs = Sysfs {
            root: PathBuf::from("/nonexistent"),
        };
        let mp = FakeMultipath {
            map_size: PathBuf::from("/nonexistent"),
            grow_to: 0,
            calls: Mutex::default(),
            fail: true,
        };
        let done = refresh(f.path(), &sysfs, &mp).unwrap();
        assert_eq!((done.before, done.after), (1 << 20, 1 << 20));
        assert!(mp.calls.lock().unwrap().is_empty());
    }
}
