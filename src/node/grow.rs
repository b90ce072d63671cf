//! Growing a mounted volume while other nodes keep writing to it.
//!
//! The rule (docs/design.md, invariant 3): the filesystem grows only after
//! every node that has it mounted sees the bigger partition. The nodes that have it
//! mounted are the volume's slot map; what each of them sees, it says
//! itself through the cluster's lock service (dlmfs), so growth never
//! depends on the Kubernetes API:
//!
//! - Every node that has a volume staged runs a *reporter*: it holds the
//!   exclusive lock `s<vol>.<node number>` and keeps its kernel partition
//!   size in the lock's value block. When another node asks for that lock,
//!   the reporter first re-syncs its partitions from the GPT, writes the new
//!   size, then lets go (and queues to take it back).
//! - The volume lock `v<vol>` orders staging against growth: a stager holds
//!   it shared from partition sync until its reporter has written a size; a
//!   grower holds it exclusively. So a node either mounted before the grow
//!   (and is in the slot map with a reporter) or syncs after it.
//! - The grower (any node's NodeExpandVolume) takes `v<vol>` exclusively,
//!   syncs its own partition, reads the slot map, takes each other node's
//!   size lock shared and reads the size. Only when every one of them
//!   reports at least the table's size does it run `tunefs.ocfs2 -S`, and
//!   only if the filesystem is still smaller than the partition: calls on
//!   every node, in any order or at once, grow it exactly once.
//! - A node whose plugin is down (restarting) cannot answer; its lock still
//!   carries its last size (too small), so the grow is refused until it is
//!   back. Never a guess.

use super::dlm::{DlmError, Domain, Lock, Mode};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// The lock domain every node plugin of the cluster joins.
pub const DOMAIN: &str = "ocfs2csi";

/// How long a grower waits for the volume lock (another grow or a stage in
/// progress) and for each node's answer.
pub const VOLUME_WAIT: Duration = Duration::from_secs(90);
pub const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How long staging waits for its size reporter's first report.
const FIRST_REPORT_WAIT: Duration = Duration::from_secs(60);

const VALUE_PREFIX: &str = "ocfs2csi-size ";

/// 24 hex digits of the partition GUID (96 bits) keep names within dlmfs'
/// 31 bytes with room for a node number.
fn key(guid: &Uuid) -> String {
    guid.simple().to_string()[..24].to_string()
}

pub fn volume_lock(guid: &Uuid) -> String {
    format!("v{}", key(guid))
}

pub fn size_lock(guid: &Uuid, node: u8) -> String {
    format!("s{}.{node}", key(guid))
}

pub fn encode_size(bytes: u64) -> String {
    format!("{VALUE_PREFIX}{bytes}")
}

pub fn decode_size(value: Option<[u8; super::dlm::LVB_BYTES]>) -> Option<u64> {
    let value = value?;
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    std::str::from_utf8(&value[..end])
        .ok()?
        .strip_prefix(VALUE_PREFIX)?
        .parse()
        .ok()
}

/// Something that re-syncs this node's partition of a volume from the GPT
/// and returns the kernel's size of it (blocking work inside).
pub type Resync =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<u64, String>> + Send + Sync>;

/// The reporters of the volumes staged on this node.
#[derive(Default)]
pub struct Reporters {
    running: Mutex<HashMap<Uuid, watch::Sender<bool>>>,
}

impl Reporters {
    pub fn is_running(&self, guid: &Uuid) -> bool {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(guid).is_some_and(|tx| !tx.is_closed())
    }

    /// Starts the reporter of `guid` (unless it runs) and returns once it
    /// has published a size.
    pub async fn start(
        &self,
        domain: Domain,
        guid: Uuid,
        node: u8,
        resync: Resync,
    ) -> Result<(), String> {
        if self.is_running(&guid) {
            return Ok(());
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (first_tx, first_rx) = oneshot::channel();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(guid, stop_tx);
        tokio::spawn(report(
            domain,
            size_lock(&guid, node),
            resync,
            stop_rx,
            first_tx,
        ));
        // Bounded: the size lock is ours alone but for a grower's short
        // read, so a first report that takes longer means the DLM is stuck.
        let result = match tokio::time::timeout(FIRST_REPORT_WAIT, first_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the size reporter ended before its first report".into()),
            Err(_) => Err(format!(
                "no first size report within {FIRST_REPORT_WAIT:?} (its lock was not granted)"
            )),
        };
        if result.is_err() {
            self.stop(&guid);
        }
        result
    }

    pub fn stop(&self, guid: &Uuid) {
        let tx = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(guid);
        if let Some(tx) = tx {
            let _ = tx.send(true);
        }
    }
}

async fn until_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        out = work => Some(out),
        _ = stop.wait_for(|s| *s) => None,
    }
}

async fn report(
    domain: Domain,
    name: String,
    resync: Resync,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    loop {
        let Some(lock) = until_stopped(
            &mut stop,
            domain.lock(&name, Mode::Exclusive, Duration::from_secs(3600)),
        )
        .await
        else {
            return;
        };
        let result = match lock {
            Ok(lock) => publish(&lock, &resync).await.map(|size| (lock, size)),
            Err(e) => Err(e.to_string()),
        };
        let lock = match result {
            Ok((lock, size)) => {
                tracing::debug!(lock = %name, size, "partition size published");
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                lock
            }
            Err(e) => {
                tracing::warn!(lock = %name, error = %e, "cannot publish the partition size; retrying");
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                if until_stopped(&mut stop, tokio::time::sleep(Duration::from_secs(2)))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        match until_stopped(&mut stop, lock.wanted_elsewhere()).await {
            None => return,
            Some(Err(e)) => tracing::warn!(lock = %name, error = %e, "waiting for requests failed"),
            Some(Ok(())) => {
                // Someone is about to read our size: make it the table's.
                match publish(&lock, &resync).await {
                    Ok(size) => {
                        tracing::info!(lock = %name, size, "size asked for by another node; partition synced")
                    }
                    Err(e) => {
                        tracing::warn!(lock = %name, error = %e, "re-sync before answering failed; the old size stands")
                    }
                }
            }
        }
        drop(lock);
    }
}

async fn publish(lock: &Lock, resync: &Resync) -> Result<u64, String> {
    let size = resync().await?;
    lock.write_value(encode_size(size).as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(size)
}

/// One node that has not (yet) shown it sees the grown partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unconfirmed {
    pub node: u32,
    pub why: String,
    /// The size it must see.
    pub wanted: u64,
}

/// Reads node `node`'s reported partition size of `guid`.
pub async fn reported_size(
    domain: &Domain,
    guid: &Uuid,
    node: u8,
) -> Result<Option<u64>, DlmError> {
    let lock = domain
        .lock(&size_lock(guid, node), Mode::Shared, ANSWER_WAIT)
        .await?;
    Ok(decode_size(lock.read_value()?))
}

/// Asks every node in `nodes` (except `me`) for its size; returns those
/// that do not see at least `wanted` bytes.
pub async fn confirm_all(
    domain: &Domain,
    guid: &Uuid,
    me: u8,
    nodes: &[u32],
    wanted: u64,
) -> Vec<Unconfirmed> {
    let asks = nodes
        .iter()
        .filter(|n| **n != u32::from(me))
        .map(|&node| async move {
            let why = match u8::try_from(node) {
                Err(_) => Some(format!("node number {node} is out of range")),
                Ok(n) => match reported_size(domain, guid, n).await {
                    Ok(Some(size)) if size >= wanted => None,
                    Ok(Some(size)) => Some(format!("sees {size} bytes, needs {wanted}")),
                    Ok(None) => {
                        Some("has no size on record (node plugin not running there?)".into())
                    }
                    Err(e) => Some(format!("did not answer: {e}")),
                },
            };
            why.map(|why| Unconfirmed { node, why, wanted })
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_fit_dlmfs() {
        let g = Uuid::new_v4();
        assert!(volume_lock(&g).len() <= super::super::dlm::MAX_NAME);
        assert!(size_lock(&g, 254).len() <= super::super::dlm::MAX_NAME);
        assert_ne!(volume_lock(&g), size_lock(&g, 0));
    }

    #[test]
    fn sizes_round_trip_and_junk_is_none() {
        let mut lvb = [0u8; 64];
        let s = encode_size(123456789);
        lvb[..s.len()].copy_from_slice(s.as_bytes());
        assert_eq!(decode_size(Some(lvb)), Some(123456789));
        assert_eq!(decode_size(None), None);
        assert_eq!(decode_size(Some([0u8; 64])), None);
        let mut junk = [0u8; 64];
        junk[..5].copy_from_slice(b"hello");
        assert_eq!(decode_size(Some(junk)), None);
    }

    #[tokio::test]
    async fn reporter_publishes_before_start_returns() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Domain::join(dir.path(), DOMAIN).unwrap();
        let reporters = Reporters::default();
        let g = Uuid::new_v4();
        let resync: Resync = Arc::new(|| Box::pin(async { Ok(4096) }));
        reporters.start(domain.clone(), g, 3, resync).await.unwrap();
        assert!(reporters.is_running(&g));
        // On plain files locks do not exclude, so the value is readable.
        assert_eq!(reported_size(&domain, &g, 3).await.unwrap(), Some(4096));
        let missing = confirm_all(&domain, &g, 1, &[1, 3, 5], 4096).await;
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].node, 5);
        let short = confirm_all(&domain, &g, 1, &[3], 8192).await;
        assert_eq!(short[0].why, "sees 4096 bytes, needs 8192");
        reporters.stop(&g);
    }
}
