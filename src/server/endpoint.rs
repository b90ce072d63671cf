//! `--endpoint unix:///path` (what kubelet and the sidecars use) or
//! `tcp://127.0.0.1:PORT` (for tests).

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            // unix:///csi/csi.sock (absolute) or unix://relative/path
            if path.is_empty() || path.ends_with('/') {
                return Err(format!("{s:?}: no socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp://") {
            return addr
                .parse()
                .map(Endpoint::Tcp)
                .map_err(|e| format!("{s:?}: {e} (expected tcp://IP:PORT)"));
        }
        Err(format!("{s:?}: endpoint must start with unix:// or tcp://"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

#[derive(Debug)]
pub enum BindError {
    NotASocket,
    Io(std::io::Error),
}

/// Binds a unix socket readable and writable by its owner only, replacing a
/// stale socket a previous run left (but never any other kind of file).
pub fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, BindError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(BindError::Io)?
        }
        Ok(_) => return Err(BindError::NotASocket),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BindError::Io(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(BindError::Io)?;
    }
    // The umask applies at bind time, so the socket never exists with wider
    // permissions. It is process-wide, but this runs at start-up before any
    // other file is created.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(BindError::Io)?;
    listener.set_nonblocking(true).map_err(BindError::Io)?;
    tokio::net::UnixListener::from_std(listener).map_err(BindError::Io)
}

/// Completes once something accepts connections on `endpoint`: the server
/// behind it is served elsewhere, and this is what its clients will see.
/// A stale unix socket refuses connections, so it does not count.
pub async fn accepting(endpoint: &Endpoint) {
    loop {
        let accepted = match endpoint {
            Endpoint::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
            Endpoint::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
        };
        if accepted {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            "unix:///csi/csi.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:10000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:10000".parse().unwrap())
        );
        for bad in ["", "unix://", "http://x", "tcp://localhost", "/csi.sock"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn socket_is_private_and_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        let first = bind_unix(&path).unwrap();
        drop(first); // leaves the socket file behind, as a crash would
        let _second = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn never_removes_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("important");
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(bind_unix(&path), Err(BindError::NotASocket)));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
