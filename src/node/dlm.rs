//! Cluster-wide locks through dlmfs, the o2dlm's file interface.
//!
//! A directory under the dlmfs mount is a lock domain (every node that makes
//! it joins); a file in it is a lock. Opening it read-only takes a shared
//! (PR) lock, for writing an exclusive (EX) one; closing releases it. While a
//! lock is held, `poll` turns readable when another node asks for a
//! conflicting mode (a "blocking AST"), which is how a holder learns that it
//! should finish up and let go. Each lock carries a 64-byte value block
//! (LVB): written by an EX holder, read by whoever holds it next. Measured on
//! the lab kernel: names are at most 31 bytes.
//!
//! Used by node-side growth (`grow`): it works while the Kubernetes API is
//! unreachable, since o2dlm runs over the cluster's own network.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

pub const MAX_NAME: usize = 31;
pub const LVB_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Protected read: many holders at once.
    Shared,
    /// One holder; conflicts with everything.
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum DlmError {
    #[error("joining lock domain {dir}: {source} (is the o2cb cluster up and heartbeating?)")]
    Domain { dir: PathBuf, source: io::Error },
    #[error("lock {name}: {source}")]
    Io { name: String, source: io::Error },
    #[error("lock {name} ({mode:?}) not granted within {waited:?}: held elsewhere")]
    Timeout {
        name: String,
        mode: Mode,
        waited: Duration,
    },
}

/// A joined lock domain.
#[derive(Clone, Debug)]
pub struct Domain {
    dir: PathBuf,
}

impl Domain {
    /// Joins (creates) domain `name` under the dlmfs mount `mount`.
    pub fn join(mount: &Path, name: &str) -> Result<Domain, DlmError> {
        let dir = mount.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(DlmError::Domain { dir, source }),
        }
        Ok(Domain { dir })
    }

    /// Takes lock `name`, waiting at most `wait`. The wait happens on a
    /// blocking thread (dlmfs open blocks until granted and cannot be
    /// interrupted); if we give up first, that thread releases the lock as
    /// soon as it gets it, which is bounded by the holders: every holder
    /// here lets go within its own operation's limits.
    ///
    /// Not O_NONBLOCK (a NOQUEUE request, ETXTBSY when not grantable at
    /// once): a node keeps a lock it closed cached at its level and gives
    /// it up only on a blocking AST, which a NOQUEUE request never sends.
    /// Tried in the lab: a grow on node2 found the volume lock that node1's
    /// earlier grow had closed "held elsewhere" for the whole 90 s.
    pub async fn lock(&self, name: &str, mode: Mode, wait: Duration) -> Result<Lock, DlmError> {
        assert!(name.len() <= MAX_NAME, "lock name {name} too long");
        let path = self.dir.join(name);
        let owned = name.to_string();
        let task = tokio::task::spawn_blocking(move || open(&path, mode));
        match tokio::time::timeout(wait, task).await {
            Ok(Ok(Ok(file))) => Lock::new(owned, mode, file),
            Ok(Ok(Err(source))) => Err(DlmError::Io {
                name: owned,
                source,
            }),
            Ok(Err(join)) => Err(DlmError::Io {
                name: owned,
                source: io::Error::other(join),
            }),
            Err(_) => Err(DlmError::Timeout {
                name: owned,
                mode,
                waited: wait,
            }),
        }
    }
}

fn open(path: &Path, mode: Mode) -> io::Result<File> {
    let mut options = OpenOptions::new();
    match mode {
        // std refuses create without write; O_CREAT as a raw flag is fine.
        Mode::Shared => options.read(true).custom_flags(libc::O_CREAT),
        Mode::Exclusive => options.read(true).write(true).create(true),
    };
    options.mode(0o600).open(path)
}

/// A held lock; dropping it releases the lock.
pub struct Lock {
    name: String,
    mode: Mode,
    fd: Pollable,
}

/// dlmfs files can be polled; plain files (unit tests) cannot.
enum Pollable {
    Yes(AsyncFd<File>),
    No(File),
}

impl Pollable {
    fn file(&self) -> &File {
        match self {
            Pollable::Yes(fd) => fd.get_ref(),
            Pollable::No(file) => file,
        }
    }
}

impl Lock {
    fn new(name: String, mode: Mode, file: File) -> Result<Lock, DlmError> {
        // SAFETY: the File owns its descriptor and moves into the AsyncFd,
        // so the descriptor stays open and the same for the AsyncFd's life.
        let registered =
            unsafe { AsyncFd::register_with_interest(file, tokio::io::Interest::READABLE) };
        let fd = match registered {
            Ok(fd) => Pollable::Yes(fd),
            Err(e) => {
                let (file, source) = e.into_parts();
                if source.raw_os_error() != Some(libc::EPERM) {
                    return Err(DlmError::Io { name, source });
                }
                Pollable::No(file)
            }
        };
        Ok(Lock { name, mode, fd })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value block, or None when it is not valid (nobody wrote it since
    /// the lock was created, or its last EX holder died).
    pub fn read_value(&self) -> Result<Option<[u8; LVB_BYTES]>, DlmError> {
        let mut buf = [0u8; LVB_BYTES];
        // dlmfs honours the file position: always at offset 0.
        let n = self
            .fd
            .file()
            .read_at(&mut buf, 0)
            .map_err(|source| self.io(source))?;
        Ok((n > 0 && buf.iter().any(|b| *b != 0)).then_some(buf))
    }

    /// Sets the value block (EX holders only); the next holder reads it.
    pub fn write_value(&self, value: &[u8]) -> Result<(), DlmError> {
        assert!(self.mode == Mode::Exclusive && value.len() <= LVB_BYTES);
        let mut buf = [0u8; LVB_BYTES];
        buf[..value.len()].copy_from_slice(value);
        self.fd
            .file()
            .write_all_at(&buf, 0)
            .map_err(|source| self.io(source))
    }

    /// Resolves when another node asks for a conflicting mode.
    pub async fn wanted_elsewhere(&self) -> Result<(), DlmError> {
        match &self.fd {
            Pollable::Yes(fd) => {
                let mut guard = fd.readable().await.map_err(|source| self.io(source))?;
                guard.retain_ready();
                Ok(())
            }
            Pollable::No(_) => std::future::pending().await,
        }
    }

    fn io(&self, source: io::Error) -> DlmError {
        DlmError::Io {
            name: self.name.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // dlmfs exists only on OCFS2 kernels (the lab proves the real thing);
    // on a plain directory the file mechanics still hold.
    #[tokio::test]
    async fn value_round_trip_on_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Domain::join(dir.path(), "dom").unwrap();
        Domain::join(dir.path(), "dom").unwrap();
        let lock = domain
            .lock("v1", Mode::Exclusive, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(lock.read_value().unwrap(), None);
        lock.write_value(b"size 42").unwrap();
        drop(lock);
        let lock = domain
            .lock("v1", Mode::Shared, Duration::from_secs(5))
            .await
            .unwrap();
        let value = lock.read_value().unwrap().unwrap();
        assert_eq!(&value[..7], b"size 42");
    }
}
