//! A temp directory that behaves like configfs for the cluster's files:
//! mkdir makes the attribute files the kernel would, rmdir takes them along,
//! and writes only go to files that exist. Every operation is logged.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::configfs::{ConfigFs, Ops};

pub(super) struct FakeConfigFs {
    root: PathBuf,
    log: Mutex<Vec<String>>,
}

impl FakeConfigFs {
    /// A fake under `root` with the node manager's `cluster/` directory.
    pub fn new(root: &Path) -> Arc<FakeConfigFs> {
        fs::create_dir_all(root.join("cluster")).unwrap();
        Arc::new(FakeConfigFs {
            root: root.to_path_buf(),
            log: Mutex::new(Vec::new()),
        })
    }

    pub fn configfs(self: &Arc<Self>) -> ConfigFs {
        ConfigFs::with_ops(&self.root, self.clone())
    }

    /// The operations so far, as `Step`s display them; clears the log.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn rel(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap().to_path_buf()
    }

    fn record(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

/// Writes `name = value` files (values get the kernel's newline).
pub(super) fn files(dir: &Path, files: &[(&str, &str)]) {
    for (name, value) in files {
        let text = if value.is_empty() {
            String::new()
        } else {
            format!("{value}\n")
        };
        fs::write(dir.join(name), text).unwrap();
    }
}

impl Ops for FakeConfigFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)?;
        let rel = self.rel(path);
        let parts: Vec<&str> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        match parts[..] {
            ["cluster", _] => {
                files(
                    path,
                    &[
                        ("fence_method", "reset"),
                        ("idle_timeout_ms", "30000"),
                        ("keepalive_delay_ms", "2000"),
                        ("reconnect_delay_ms", "2000"),
                    ],
                );
                fs::create_dir(path.join("node"))?;
                fs::create_dir(path.join("heartbeat"))?;
                files(
                    &path.join("heartbeat"),
                    &[("dead_threshold", "31"), ("mode", "local")],
                );
            }
            ["cluster", _, "node", _] => files(
                path,
                &[
                    ("ipv4_port", "0"),
                    ("ipv4_address", "0.0.0.0"),
                    ("num", "0"),
                    ("local", "0"),
                ],
            ),
            ["cluster", _, "heartbeat", _] => files(
                path,
                &[
                    ("block_bytes", "512"),
                    ("start_block", "0"),
                    ("blocks", "0"),
                    ("dev", ""),
                    ("pid", ""),
                ],
            ),
            _ => {}
        }
        self.record(format!("mkdir {}", rel.display()));
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)?;
        self.record(format!("rmdir {}", self.rel(path).display()));
        Ok(())
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        if !path.is_file() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        fs::write(path, format!("{value}\n"))?;
        self.record(format!("write {} = {value}", self.rel(path).display()));
        Ok(())
    }
}
