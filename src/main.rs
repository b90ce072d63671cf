//! `ocfs2-csi`: one binary, a mode per subcommand.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ocfs2_csi::backoff::Backoff;
use ocfs2_csi::cluster::{
    self, ClusterConfig, KernelPaths, MembershipSource, StaticMembers, Timeouts,
};
use ocfs2_csi::controller::gauges::ControllerGauges;
use ocfs2_csi::controller::pool::{named_in, open_one, watch_size, ClusterIdentity};
use ocfs2_csi::controller::writer::{Writer, WriterConfig};
use ocfs2_csi::controller::{ControllerService, Volumes};
use ocfs2_csi::csi::controller_server::ControllerServer;
use ocfs2_csi::csi::identity_server::IdentityServer;
use ocfs2_csi::csi::node_server::NodeServer;
use ocfs2_csi::disk::region::LoopDevices;
use ocfs2_csi::identity::{validate_driver_name, IdentityService};
use ocfs2_csi::k8s::events::{own_pod, KubeVolumeEvents, PodEvents, Recorder};
use ocfs2_csi::k8s::{KubeMembers, OutOfService};
use ocfs2_csi::metrics;
use ocfs2_csi::node::gauges::{watch_losses, NodeGauges};
use ocfs2_csi::node::records::Records;
use ocfs2_csi::node::startup::{DiskSlots, Startup};
use ocfs2_csi::node::{NodeConfig, NodeService, NodeVolumes};
use ocfs2_csi::ocfs2::layout::HeartbeatMode;
use ocfs2_csi::ocfs2::{validate_cluster_name, Ocfs2Tools};
use ocfs2_csi::server::kubelet_registration::{KubeletRegistration, Registering};
use ocfs2_csi::server::{self, Endpoint, ObserveLayer};
use ocfs2_csi::tools::{Runner, SystemRunner};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Pauses between tries to open the LUNs (a path may come up late).
const LUN_BACKOFF: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(30));

/// The default CSI driver name (a DNS-style name, as CSI asks).
const DEFAULT_DRIVER_NAME: &str = "ocfs2.csi.dev";

#[derive(Parser)]
#[command(
    name = "ocfs2-csi",
    version,
    about = "CSI driver for shared OCFS2 volumes on SAN LUNs"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Carve volumes out of shared LUNs (Identity + Controller services).
    Controller(ControllerArgs),
    /// Join the o2cb cluster and mount volumes on this node (Identity + Node).
    Node(NodeArgs),
    /// List what a LUN holds at every 1 MiB boundary (OCFS2 volumes with
    /// their names, sectors and UUIDs; other signatures), to rebuild a
    /// partition table that was zeroed. Reads only.
    ScanLun {
        #[arg(long)]
        lun: PathBuf,
    },
    /// Run a command (a VM's hypervisor) holding an exclusive lock on its
    /// disk image; exits 75 when another holder, maybe on another node, has it.
    DiskLock(ocfs2_csi::vmdisk::DiskLockArgs),
    /// What an operator asks first: o2cb members and heartbeat regions as
    /// this node's kernel sees them, each LUN's volumes and space, the
    /// volumes staged here and who mounts them. Reads only; run it in a
    /// node plugin pod (deploy/kubectl-ocfs2_csi does, and adds what the
    /// Kubernetes API says).
    Status(StatusArgs),
}

#[derive(Args)]
struct StatusArgs {
    /// The LUNs (as the node plugin has them).
    #[arg(long = "lun", env = "OCFS2_CSI_LUNS", value_delimiter = ',')]
    luns: Vec<PathBuf>,
    #[arg(long, env = "OCFS2_CSI_CLUSTER_NAME", default_value = "ocfs2csi")]
    cluster_name: String,
    /// This node's name, for the headings.
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// The node plugin's state folder (its stage records).
    #[arg(
        long,
        env = "OCFS2_CSI_STATE_DIR",
        default_value = "/var/lib/ocfs2-csi"
    )]
    state_dir: PathBuf,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CommonArgs {
    /// Where to serve: unix:///path/csi.sock or tcp://127.0.0.1:PORT.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: Endpoint,
    /// The CSI driver name reported to Kubernetes.
    #[arg(long, env = "OCFS2_CSI_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Log filter (tracing's env-filter syntax), e.g. info or ocfs2_csi=debug.
    #[arg(long, env = "OCFS2_CSI_LOG", default_value = "info")]
    log: String,
    /// Serve Prometheus metrics at http://ADDRESS/metrics, e.g.
    /// 0.0.0.0:29778 (src/metrics/mod.rs lists them). Off when not given.
    #[arg(long, env = "OCFS2_CSI_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Post Kubernetes Events for what users wait on or must act on
    /// (src/k8s/events.rs): the node plugin on claims (a grow waiting for
    /// nodes; needs --membership kubernetes), the controller on its own pod
    /// (a LUN refused; needs POD_NAME, POD_NAMESPACE and POD_UID).
    #[arg(long, env = "OCFS2_CSI_EVENTS", default_value_t = false, action = clap::ArgAction::Set)]
    events: bool,
}

/// The shared storage and its cluster, the same for controller and nodes.
#[derive(Args)]
struct PoolArgs {
    /// A shared LUN (repeatable; comma-separated in the environment).
    /// Stable paths such as /dev/disk/by-id/... or multipath maps; regular
    /// files work for tests. Controller and nodes list the same LUNs.
    #[arg(
        long = "lun",
        env = "OCFS2_CSI_LUNS",
        value_delimiter = ',',
        required = true
    )]
    luns: Vec<PathBuf>,
    /// The o2cb cluster name (stamped into every filesystem).
    #[arg(long, env = "OCFS2_CSI_CLUSTER_NAME", default_value = "ocfs2csi")]
    cluster_name: String,
    /// This installation's cluster ID, unique to it: stamped on every LUN
    /// when it is initialised, and a LUN stamped with another is refused,
    /// because the o2cb cluster name is the same default in every
    /// installation. Default: the UID of the kube-system namespace, read
    /// from the Kubernetes API.
    #[arg(long, env = "OCFS2_CSI_CLUSTER_ID", value_parser = parse_cluster_id)]
    cluster_id: Option<String>,
    /// How often, in seconds, to look whether the array grew a LUN. Nodes
    /// rescan its paths and have multipathd resize its map when they grew;
    /// the controller then extends the partition table over the new space.
    /// A create or expand that finds no room looks at once, too. The
    /// controller that writes a LUN's table also puts back, as often, a
    /// volume left out of use by a clone or snapshot that was interrupted.
    #[arg(long, env = "OCFS2_CSI_LUN_CHECK_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    lun_check_secs: u64,
}

fn parse_cluster_id(id: &str) -> Result<String, String> {
    ocfs2_csi::disk::ownership::validate_cluster_id(id).map(|()| id.to_string())
}

impl PoolArgs {
    /// --cluster-id, else the Kubernetes cluster's own UID.
    async fn cluster_id(&self) -> anyhow::Result<String> {
        if let Some(id) = &self.cluster_id {
            return Ok(id.clone());
        }
        let client = kube::Client::try_default().await.context(
            "no --cluster-id given, and the Kubernetes API (which would give one) is unreachable",
        )?;
        let id = ocfs2_csi::k8s::cluster_id::cluster_uid(client)
            .await
            .context("no --cluster-id given, and the Kubernetes API cannot give one")?;
        tracing::info!(cluster_id = %id, "cluster ID: the kube-system namespace's UID");
        Ok(id)
    }
}

#[derive(Args)]
struct ControllerArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    pool: PoolArgs,
    /// A LUN of --lun that this controller may initialise (write a new
    /// partition table on) when it finds it blank (repeatable). Without it
    /// a blank LUN is refused: zeroed table copies look blank too. Even
    /// named, a LUN is first scanned and refused if anything is found.
    #[arg(long = "init-lun", env = "OCFS2_CSI_INIT_LUNS", value_delimiter = ',')]
    init_luns: Vec<PathBuf>,
    /// The writer lease time in seconds: a controller that stops renewing
    /// its lease on a LUN for this long is taken over by another (the
    /// failover time when a controller dies without releasing it). Short
    /// leases suit tests; on a SAN keep it well above its worst I/O stall.
    #[arg(long, env = "OCFS2_CSI_WRITER_LEASE_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    writer_lease_secs: u64,
}

#[derive(Args)]
struct NodeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// This node's ID as Kubernetes knows it (the Node name); also its name
    /// in the o2cb cluster.
    #[arg(long, env = "NODE_ID")]
    node_id: String,
    #[command(flatten)]
    pool: PoolArgs,
    /// global (one heartbeat per LUN, the default) or local (one per mount).
    #[arg(long, env = "OCFS2_CSI_HEARTBEAT", default_value = "global", value_parser = parse_heartbeat)]
    heartbeat: HeartbeatMode,
    /// Where the members of the cluster come from: `kubernetes` (Leases in
    /// --namespace; node numbers claimed through the API; the chart's
    /// default) or `static` (--members-file).
    #[arg(long, env = "OCFS2_CSI_MEMBERSHIP", value_enum, default_value_t = Membership::Static)]
    membership: Membership,
    /// Static members: one `NAME NUMBER ADDRESS[:PORT]` per line.
    #[arg(
        long,
        env = "OCFS2_CSI_MEMBERS_FILE",
        required_if_eq("membership", "static")
    )]
    members_file: Option<PathBuf>,
    /// Namespace of the membership Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// This node's o2net address; default: the Node's InternalIP.
    #[arg(long, env = "NODE_IP")]
    node_address: Option<std::net::Ipv4Addr>,
    /// o2net's TCP port, where a member names none.
    #[arg(long, env = "OCFS2_CSI_O2CB_PORT", default_value_t = cluster::DEFAULT_PORT)]
    o2cb_port: u16,
    /// o2cb timeouts: identical on every node (the kernel refuses peers that
    /// differ), so they come from the one shared configuration.
    #[arg(long, env = "OCFS2_CSI_DEAD_THRESHOLD", default_value_t = Timeouts::default().dead_threshold)]
    dead_threshold: u32,
    #[arg(long, env = "OCFS2_CSI_IDLE_TIMEOUT_MS", default_value_t = Timeouts::default().idle_timeout_ms)]
    idle_timeout_ms: u32,
    #[arg(long, env = "OCFS2_CSI_KEEPALIVE_DELAY_MS", default_value_t = Timeouts::default().keepalive_delay_ms)]
    keepalive_delay_ms: u32,
    #[arg(long, env = "OCFS2_CSI_RECONNECT_DELAY_MS", default_value_t = Timeouts::default().reconnect_delay_ms)]
    reconnect_delay_ms: u32,
    /// Where stage records live (a host folder that outlives the plugin).
    #[arg(
        long,
        env = "OCFS2_CSI_STATE_DIR",
        default_value = "/var/lib/ocfs2-csi"
    )]
    state_dir: PathBuf,
    /// Apply node.kubernetes.io/out-of-service to a member's Node once
    /// o2cb evicted it and the Node is NotReady, and remove it when it is
    /// back (src/k8s/out_of_service.rs); with --membership kubernetes only.
    #[arg(long, env = "OCFS2_CSI_OUT_OF_SERVICE", default_value_t = false, action = clap::ArgAction::Set)]
    out_of_service: bool,
    /// Seconds between reads of the membership source.
    #[arg(long, env = "OCFS2_CSI_MEMBERS_POLL", default_value_t = 5)]
    members_poll: u64,
    /// Register with the kubelet ourselves, as node-driver-registrar does:
    /// the kubelet's plugins_registry folder as mounted here, where
    /// DRIVER-reg.sock is served once the CSI endpoint serves. It must
    /// exist. Off when not given (the sidecar registers).
    #[arg(long, env = "OCFS2_CSI_KUBELET_REGISTRATION_DIR")]
    kubelet_registration_dir: Option<PathBuf>,
    /// The CSI socket's path on the host, which the kubelet dials (with
    /// --kubelet-registration-dir only). Default:
    /// /var/lib/kubelet/plugins/DRIVER/csi.sock.
    #[arg(
        long,
        env = "OCFS2_CSI_KUBELET_REGISTRATION_PATH",
        requires = "kubelet_registration_dir"
    )]
    kubelet_registration_path: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Membership {
    Static,
    Kubernetes,
}

fn parse_heartbeat(s: &str) -> Result<HeartbeatMode, String> {
    HeartbeatMode::parse(s).ok_or_else(|| format!("{s:?}: expected global or local"))
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("bad --log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Controller(args) => run_controller(args).await,
        Mode::Node(args) => run_node(args).await,
        Mode::ScanLun { lun } => scan_lun(&lun),
        Mode::DiskLock(args) => std::process::exit(ocfs2_csi::vmdisk::main(args)),
        Mode::Status(args) => status(args).await,
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    use ocfs2_csi::status;
    let sources = status::Sources {
        cluster: args.cluster_name,
        node: args.node_id,
        luns: args.luns,
        state_dir: args.state_dir,
        paths: KernelPaths::default(),
        tools: Ocfs2Tools::new(Arc::new(SystemRunner)),
    };
    let report = status::gather(&sources).await;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => print!("{}", status::render::text(&report)),
    }
    // A read given up on may still be stuck in the kernel on its thread;
    // the runtime would wait for it at exit.
    use std::io::Write;
    std::io::stdout().flush()?;
    std::process::exit(0)
}

fn scan_lun(lun: &std::path::Path) -> anyhow::Result<()> {
    use ocfs2_csi::controller::scan;
    let io = ocfs2_csi::disk::lun_io::LunFile::open_read_only(lun)
        .with_context(|| format!("opening {}", lun.display()))?;
    let findings = scan::scan(&io, &mut |done, total| {
        eprintln!(
            "scan-lun: {}% of {}",
            done * 100 / total.max(1),
            lun.display()
        );
    })
    .with_context(|| format!("reading {}", lun.display()))?;
    print!("{}", scan::report(&io, &findings));
    Ok(())
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    init_logging(&args.common.log)?;
    validate_driver_name(&args.common.driver_name).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!args.node_id.is_empty(), "--node-id must not be empty");
    let timeouts = Timeouts {
        dead_threshold: args.dead_threshold,
        idle_timeout_ms: args.idle_timeout_ms,
        keepalive_delay_ms: args.keepalive_delay_ms,
        reconnect_delay_ms: args.reconnect_delay_ms,
    };
    let cluster = ClusterConfig {
        name: args.pool.cluster_name.clone(),
        heartbeat: args.heartbeat,
        timeouts,
        port: args.o2cb_port,
    };
    cluster.validate()?;
    // Checked before anything slow, so a missing mount fails at once.
    let registration = match &args.kubelet_registration_dir {
        Some(dir) => {
            let csi = args.kubelet_registration_path.clone().unwrap_or_else(|| {
                KubeletRegistration::default_csi_endpoint(&args.common.driver_name)
            });
            Some(KubeletRegistration::new(
                &args.common.driver_name,
                dir,
                &csi,
            )?)
        }
        None => None,
    };
    let cluster_id = args.pool.cluster_id().await?;
    let (members, number, keepalive, client) = membership(&args).await?;
    let common = args.common;
    let runner: Arc<dyn Runner> = Arc::new(SystemRunner);
    let tools = Ocfs2Tools::new(runner.clone());
    let paths = KernelPaths::default();
    let records = Records::open(&args.state_dir)
        .with_context(|| format!("state folder {}", args.state_dir.display()))?;
    if let Some(address) = common.metrics_address {
        let gauges = NodeGauges {
            cluster: args.pool.cluster_name.clone(),
            paths: paths.clone(),
            records: Arc::new(records.clone()),
        };
        tokio::spawn(metrics::serve(
            address,
            metrics::Mode::Node,
            Arc::new(gauges),
        ));
        tokio::spawn(watch_losses(paths.debugfs.clone(), number));
    }
    let volumes = Arc::new(NodeVolumes::new(
        NodeConfig {
            node_id: args.node_id.clone(),
            node_number: number,
            cluster_name: args.pool.cluster_name,
            heartbeat: args.heartbeat,
            luns: args.pool.luns.clone(),
            dlm_mount: paths.dlmfs.clone(),
        },
        tools.clone(),
        records,
    ));
    let startup = Startup {
        cluster,
        cluster_id,
        node_name: args.node_id,
        members,
        runner,
        tools,
        paths,
        luns: args.pool.luns,
        volumes: volumes.clone(),
        poll: Duration::from_secs(args.members_poll.max(1)),
    };
    tokio::spawn(ocfs2_csi::node::device::watch_luns(
        startup.luns.clone(),
        Duration::from_secs(args.pool.lun_check_secs),
    ));
    if common.events {
        let Some(client) = client else {
            anyhow::bail!(
                "--events needs --membership kubernetes: with static membership the node \
                 plugin has no Kubernetes API"
            );
        };
        let recorder = Recorder::new(client, "ocfs2-csi-node", &startup.node_name);
        let events = KubeVolumeEvents::new(
            Arc::new(recorder),
            startup.members.clone(),
            &common.driver_name,
        );
        volumes.set_events(Arc::new(Arc::new(events)));
        tracing::info!("events: on (grows that wait for nodes, on their claims)");
    }
    let ready = volumes.clone();
    let identity = IdentityService::new(common.driver_name, false, volumes.clone());
    let router = tonic::transport::Server::builder()
        .layer(ObserveLayer)
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(NodeService::new(volumes)));
    let mut registering = match registration {
        Some(r) => Registering::start(r, common.endpoint.clone()),
        None => Registering::off(),
    };
    // Serve at once (Probe says "not ready" until joined); a conflict with
    // what the kernel runs ends the process with the reason.
    tokio::select! {
        served = server::serve(router, &common.endpoint, server::shutdown_signal()) => served?,
        fatal = startup.run() => return Err(fatal.into()),
        // The kernel heartbeats on with the number (it cannot stop under
        // mounted volumes); a claim of it elsewhere sees the slot advance.
        lost = keepalive => {
            ready.set_ready(Some(lost.to_string()));
            tracing::error!(error = %lost, "stopping: this node no longer holds its o2cb node number");
            return Err(lost);
        }
        failed = registering.failed() => return Err(failed.into()),
    }
    // Only a clean stop withdraws the registration, as the sidecar's does;
    // after a failure the restarted plugin replaces the socket.
    registering.stop().await;
    Ok(())
}

type Keepalive = futures::future::BoxFuture<'static, anyhow::Error>;

/// The membership source and this node's o2cb number, plus a task that
/// keeps an API-claimed number alive (it ends only when the number is lost),
/// and the Kubernetes API client when membership uses it.
async fn membership(
    args: &NodeArgs,
) -> anyhow::Result<(
    Arc<dyn MembershipSource>,
    u8,
    Keepalive,
    Option<kube::Client>,
)> {
    match args.membership {
        Membership::Static => {
            if args.out_of_service {
                anyhow::bail!(
                    "--out-of-service needs --membership kubernetes: the survivors' views of \
                     o2cb are shared through the membership Leases"
                );
            }
            let path = args
                .members_file
                .clone()
                .context("--members-file is required")?;
            let members = StaticMembers::new(&path, args.o2cb_port);
            let number = members.number_of(&args.node_id).await?;
            Ok((
                Arc::new(members),
                number,
                Box::pin(futures::future::pending()),
                None,
            ))
        }
        Membership::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let km = KubeMembers::new(
                client.clone(),
                &args.namespace,
                &args.pool.cluster_name,
                args.o2cb_port,
            );
            let address = match args.node_address {
                Some(a) => a,
                None => km.node_address(&args.node_id).await?,
            };
            // Never a number whose heartbeat slot still advances on a LUN.
            let runner: Arc<dyn Runner> = Arc::new(SystemRunner);
            let slots = DiskSlots {
                cluster: args.pool.cluster_name.clone(),
                node_name: args.node_id.clone(),
                luns: args.pool.luns.clone(),
                tools: Ocfs2Tools::new(runner.clone()),
                runner,
                paths: KernelPaths::default(),
            };
            let number = km.claim_until_won(&args.node_id, address, &slots).await;
            tracing::info!(node = %args.node_id, number, %address, "o2cb node number from the Kubernetes API");
            let oos = args.out_of_service.then(|| {
                tracing::info!("out-of-service from o2cb evictions: on");
                OutOfService::new(client.clone(), Arc::new(slots), &args.node_id)
            });
            let keepalive = km.clone().keep_alive(
                args.node_id.clone(),
                number,
                KernelPaths::default().debugfs,
                args.dead_threshold,
                oos,
            );
            Ok((
                Arc::new(km),
                number,
                Box::pin(async move { keepalive.await.into() }),
                Some(client),
            ))
        }
    }
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    init_logging(&args.common.log)?;
    validate_driver_name(&args.common.driver_name).map_err(anyhow::Error::msg)?;
    validate_cluster_name(&args.pool.cluster_name).map_err(anyhow::Error::msg)?;
    let cluster_id = args.pool.cluster_id().await?;
    let (events, members) = match args.common.events {
        false => (None, None),
        true => {
            let (events, members) = controller_events(&args.pool.cluster_name).await?;
            (Some(Arc::new(events)), Some(members))
        }
    };
    let runner: Arc<dyn Runner> = Arc::new(SystemRunner);
    let tools = Ocfs2Tools::new(runner.clone());
    let regions = Arc::new(LoopDevices::new(runner));
    let mut volumes = Volumes::new(
        tools.clone(),
        regions.clone(),
        args.pool.cluster_name.clone(),
    );
    if let Some(members) = members {
        volumes = volumes.with_members(members);
    }
    let volumes = Arc::new(volumes);

    if let Some(address) = args.common.metrics_address {
        let gauges = Arc::new(ControllerGauges(volumes.clone()));
        tokio::spawn(metrics::serve(address, metrics::Mode::Controller, gauges));
    }

    // Serve at once (Probe says "not ready"), open the LUNs behind it.
    if let Some(stray) = args
        .init_luns
        .iter()
        .find(|i| !named_in(i, &args.pool.luns))
    {
        anyhow::bail!(
            "--init-lun {} is not one of the --lun paths",
            stray.display()
        );
    }
    let writer = WriterConfig {
        lease: Duration::from_secs(args.writer_lease_secs),
        owner_name: owner_name(),
    };
    // The writer leases of the open LUNs: released on shutdown so a
    // standby controller takes over at once.
    let writers: Arc<std::sync::Mutex<Vec<Arc<Writer>>>> = Arc::default();
    let cluster = Arc::new(ClusterIdentity {
        id: cluster_id,
        name: args.pool.cluster_name.clone(),
    });
    // Each LUN opens on its own: one that cannot be opened (a path down, a
    // LUN of another cluster) leaves the others serving; it is retried.
    volumes.expect_luns(&args.pool.luns);
    let openers: Vec<_> = args
        .pool
        .luns
        .iter()
        .map(|path| {
            let (volumes, writers, cluster) = (volumes.clone(), writers.clone(), cluster.clone());
            let (path, init, writer) = (path.clone(), args.init_luns.clone(), writer.clone());
            let (tools, regions, events) = (tools.clone(), regions.clone(), events.clone());
            let check_every = Duration::from_secs(args.pool.lun_check_secs);
            tokio::spawn(async move {
                let what = format!("cannot open LUN {}", path.display());
                let (lun, lease) = LUN_BACKOFF
                    .retry(&what, |_| async {
                        open_one(&path, &init, &writer, &cluster, &tools, regions.as_ref())
                            .await
                            .inspect_err(|e| {
                                volumes.lun_failed(&path, format!("{e:#}"));
                                if let Some(events) = events.as_ref().filter(|_| e.needs_operator())
                                {
                                    events.lun_refused(format!("{e:#}"));
                                }
                            })
                    })
                    .await;
                if let Err(e) = volumes.lun_opened(lun.clone()) {
                    tracing::error!(lun = %path.display(), error = %e, "not using this LUN");
                    return;
                }
                lease.step().await;
                tokio::spawn(lease.clone().run());
                tokio::spawn(end_stale_clones(
                    volumes.clone(),
                    lun.clone(),
                    lease.clone(),
                    check_every,
                ));
                tokio::spawn(watch_size(lun, check_every));
                writers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(lease);
                tracing::info!(lun = %path.display(), "LUN open; serving it");
                if volumes.all_open() {
                    tracing::info!("all LUNs open; ready");
                }
            })
        })
        .collect();

    let identity = IdentityService::new(args.common.driver_name, true, volumes.clone());
    let router = tonic::transport::Server::builder()
        .layer(ObserveLayer)
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(ControllerService::new(volumes)));
    let result = server::serve(router, &args.common.endpoint, server::shutdown_signal()).await;
    for opener in openers {
        opener.abort();
    }
    let held: Vec<Arc<Writer>> = writers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for w in held {
        w.release().await;
    }
    result?;
    Ok(())
}

/// The controller's events, on its own pod; and the membership Leases in
/// its namespace, to name o2cb nodes in its refusals.
async fn controller_events(
    cluster: &str,
) -> anyhow::Result<(PodEvents, Arc<dyn MembershipSource>)> {
    let pod = own_pod().context(
        "--events needs POD_NAME, POD_NAMESPACE and POD_UID (the chart sets them from the \
         downward API): the controller posts its events on its own pod",
    )?;
    let client = kube::Client::try_default()
        .await
        .context("--events: connecting to the Kubernetes API")?;
    let host = pod.name.clone().unwrap_or_default();
    let namespace = pod.namespace.clone().unwrap_or_default();
    tracing::info!("events: on (LUNs refused, on this pod)");
    let members = KubeMembers::new(client.clone(), &namespace, cluster, cluster::DEFAULT_PORT);
    let events = PodEvents {
        recorder: Arc::new(Recorder::new(client, "ocfs2-csi-controller", &host)),
        pod,
    };
    Ok((events, Arc::new(members)))
}

/// Who this controller is, in its writer leases: the pod (or host) name and
/// the process ID.
fn owner_name() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| {
            let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
            Some(name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{host} pid {}", std::process::id())
}

/// Puts back sources of clones a controller stopped in the middle of,
/// while this process holds the LUN's writer lease: at once, then every
/// `every` (a standby that takes over finds them too).
async fn end_stale_clones(
    volumes: Arc<ocfs2_csi::controller::Volumes>,
    lun: Arc<ocfs2_csi::controller::pool::Lun>,
    lease: Arc<Writer>,
    every: Duration,
) {
    loop {
        if lease.is_writer() {
            volumes.end_stale_clones(&lun).await;
        }
        tokio::time::sleep(every).await;
    }
}
