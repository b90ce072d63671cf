//! Probe answers in well under 100 ms while DeleteVolume's discard of a
//! large volume is still running.
//!
//! The server runs on a runtime with ONE worker thread, as a small host
//! has few. If the wipe's discard (or any LUN I/O) ran on that worker, the
//! worker would be stuck in the discard until it returned and no other
//! task, the Probe handler and the connection it arrives on included,
//! could run: every Probe below would time out and the test fail. With the
//! I/O on the blocking pool the worker stays free.
//!
//! The discard parks on a channel until the test lets it go, so the test
//! waits for states (the discard has started; the delete has answered),
//! never for a guessed time; the only time bound is the one asked for.

use super::{serve_controller, unix_channel};
use crate::controller::testing::FakeSan;
use crate::csi::controller_client::ControllerClient;
use crate::csi::identity_client::IdentityClient;
use crate::csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use crate::csi::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, ListVolumesRequest, ProbeRequest,
    VolumeCapability,
};
use crate::disk::lun_io::{BlockIo, SparseIo};
use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A LUN whose discard says it has started, then blocks its thread until
/// released (as a BLKDISCARD of many GiB on a slow array does).
struct ParkingIo {
    inner: SparseIo,
    started: tokio::sync::mpsc::UnboundedSender<u64>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl BlockIo for ParkingIo {
    fn sector_size(&self) -> u64 {
        self.inner.sector_size()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, buf)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = self.started.send(len);
        // Blocks this thread, whichever it is, until the test releases it
        // (or gives up and drops the sender).
        let _ = self
            .release
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv();
        self.inner.discard(offset, len)
    }
}

const LUN: &str = "/dev/disk/by-id/fake-parking-lun";
const VOLUME_BYTES: u64 = 40 << 30;
/// The bound the issue asks for.
const PROBE_LIMIT: Duration = Duration::from_millis(100);
const PROBES: usize = 20;

#[test]
fn probe_answers_while_a_large_discard_runs() {
    // The plugin's runtime: one worker, so a blocked worker blocks all.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The client's own runtime, so its timers run whatever the server does.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("controller.sock");

    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (release, parked) = mpsc::channel();
    let io = Arc::new(ParkingIo {
        inner: SparseIo::new(512, 64 << 30),
        started: started_tx,
        release: Mutex::new(parked),
    });
    let served = server_rt.block_on(async {
        let san = FakeSan::new();
        let lun = san.open_lun(LUN, io.clone()).await;
        let volumes = Arc::new(san.volumes(vec![lun]));
        serve_controller(&socket, volumes)
    });

    let latencies = client_rt.block_on(async {
        let channel = unix_channel(&socket).await;
        let mut identity = IdentityClient::new(channel.clone());
        let mut controller = ControllerClient::new(channel.clone());
        let cap = VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        };
        let created = controller
            .create_volume(CreateVolumeRequest {
                name: "pvc-big".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: VOLUME_BYTES as i64,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![cap],
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner()
            .volume
            .expect("a volume");

        // The delete runs on until its discard parks.
        let mut deleting = ControllerClient::new(channel.clone());
        let id = created.volume_id.clone();
        let mut delete = tokio::spawn(async move {
            deleting
                .delete_volume(DeleteVolumeRequest {
                    volume_id: id,
                    ..Default::default()
                })
                .await
        });
        let discarding = tokio::time::timeout(Duration::from_secs(60), started.recv())
            .await
            .expect("the delete reaches its discard")
            .expect("discard started");
        assert!(
            discarding >= VOLUME_BYTES,
            "a discard of {discarding} bytes"
        );

        let mut latencies = Vec::new();
        for _ in 0..PROBES {
            let t = Instant::now();
            // A client-side bound, so a stuck server fails the test
            // instead of hanging it.
            let answer =
                tokio::time::timeout(Duration::from_secs(5), identity.probe(ProbeRequest {})).await;
            let took = t.elapsed();
            let ready = answer
                .unwrap_or_else(|_| panic!("Probe unanswered after 5 s while the discard runs"))
                .expect("Probe")
                .into_inner()
                .ready;
            assert_eq!(ready, Some(true));
            latencies.push(took);
        }
        // Every Probe was answered while the discard was still parked.
        assert!(
            futures::poll!(&mut delete).is_pending(),
            "the delete finished before its discard was released"
        );

        release.send(()).unwrap();
        let deleted = tokio::time::timeout(Duration::from_secs(60), delete)
            .await
            .expect("the delete answers once the discard is released")
            .unwrap();
        deleted.expect("DeleteVolume");
        let left = controller
            .list_volumes(ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert!(left.is_empty(), "{left:?}");
        latencies
    });
    // The client's connections close with its runtime; the server's
    // graceful stop waits for them.
    drop(client_rt);
    server_rt.block_on(served.stop());

    let mut sorted = latencies.clone();
    sorted.sort();
    eprintln!(
        "Probe during a {} GiB discard, {PROBES} calls: min {:?}, median {:?}, max {:?}",
        VOLUME_BYTES >> 30,
        sorted[0],
        sorted[PROBES / 2],
        sorted[PROBES - 1]
    );
    for took in latencies {
        assert!(took < PROBE_LIMIT, "a Probe took {took:?}");
    }
}
