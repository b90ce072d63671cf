//! Where the global heartbeat region lies on a heartbeat device formatted
//! with `mkfs.ocfs2 -H`, as debugfs.ocfs2 reports it: the kernel needs the
//! block size, the first block of the `//heartbeat` system file and the
//! number of slots.

use std::path::Path;
use std::time::Duration;

use super::error::ClusterError;
use crate::tools::{Cmd, Runner};

/// Blocks per region: one slot per possible node (O2NM_MAX_NODES), as
/// o2cb's own tool writes.
pub const REGION_BLOCKS: u32 = 255;
const DEBUGFS_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the heartbeat slots are on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatGeometry {
    pub block_bytes: u32,
    pub start_block: u64,
    pub blocks: u32,
}

/// The first extent of the heartbeat system file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub clusters: u64,
    pub block: u64,
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (_, rest) = line.split_once(key)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Block and cluster size bits from `debugfs.ocfs2 -R stats`.
pub fn parse_size_bits(stats: &str) -> Result<(u32, u32), String> {
    let bits = |key| {
        number_after(stats, key)
            .and_then(|b| u32::try_from(b).ok())
            .ok_or_else(|| format!("no {key:?} line"))
    };
    Ok((bits("Block Size Bits:")?, bits("Cluster Size Bits:")?))
}

/// The first record under the `## Offset Clusters Block# Flags` header of
/// `debugfs.ocfs2 -R "stat //heartbeat"`, columns found by their titles.
pub fn parse_first_extent(stat: &str) -> Result<Extent, String> {
    if let Some(depth) = number_after(stat, "Tree Depth:").filter(|&d| d != 0) {
        return Err(format!(
            "heartbeat file has an extent tree of depth {depth}"
        ));
    }
    let mut lines = stat.lines();
    let header: Vec<&str> = lines
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.first() == Some(&"##")).then_some(words)
        })
        .ok_or("no extent table")?;
    let column = |title| {
        header
            .iter()
            .position(|w| *w == title)
            .ok_or_else(|| format!("no {title} column"))
    };
    let (clusters_at, block_at) = (column("Clusters")?, column("Block#")?);
    let record: Vec<&str> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| !w.is_empty())
        .ok_or("no extent record")?;
    let field = |at: usize| {
        record
            .get(at)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("bad extent record {:?}", record.join(" ")))
    };
    Ok(Extent {
        clusters: field(clusters_at)?,
        block: field(block_at)?,
    })
}

/// The region for a heartbeat file starting at `extent`, refused when the
/// kernel would (block size) or the file is too small for every slot.
pub fn geometry_from(
    block_bits: u32,
    cluster_bits: u32,
    extent: Extent,
) -> Result<HeartbeatGeometry, String> {
    if !(9..=12).contains(&block_bits) || cluster_bits < block_bits || cluster_bits > 20 {
        return Err(format!(
            "unexpected block/cluster size bits {block_bits}/{cluster_bits}"
        ));
    }
    let available = extent.clusters << (cluster_bits - block_bits);
    if available < u64::from(REGION_BLOCKS) {
        return Err(format!(
            "heartbeat file holds {available} blocks, {REGION_BLOCKS} are needed"
        ));
    }
    Ok(HeartbeatGeometry {
        block_bytes: 1 << block_bits,
        start_block: extent.block,
        blocks: REGION_BLOCKS,
    })
}

async fn debugfs(runner: &dyn Runner, request: &str, dev: &Path) -> Result<String, ClusterError> {
    let cmd = Cmd::new("debugfs.ocfs2", DEBUGFS_TIMEOUT)
        .arg("-R")
        .arg(request)
        .arg(dev.as_os_str());
    let out = runner.run(&cmd).await?.ok(&cmd)?;
    // debugfs.ocfs2 exits 0 when it cannot read the device; keep its
    // complaint for the parse error that follows.
    Ok(format!("{}\n{}", out.stdout, out.stderr))
}

/// The region geometry of the heartbeat device `dev` (formatted with
/// `mkfs.ocfs2 -H`), read with debugfs.ocfs2.
pub async fn geometry(runner: &dyn Runner, dev: &Path) -> Result<HeartbeatGeometry, ClusterError> {
    let failed = |request: &str, what: String| ClusterError::ToolOutput {
        command: format!("debugfs.ocfs2 -R {request:?} {}", dev.display()),
        what,
    };
    let stats = debugfs(runner, "stats", dev).await?;
    let (block_bits, cluster_bits) =
        parse_size_bits(&stats).map_err(|w| failed("stats", with_tail(w, &stats)))?;
    let stat = debugfs(runner, "stat //heartbeat", dev).await?;
    let extent =
        parse_first_extent(&stat).map_err(|w| failed("stat //heartbeat", with_tail(w, &stat)))?;
    geometry_from(block_bits, cluster_bits, extent).map_err(|w| failed("stat //heartbeat", w))
}

fn with_tail(what: String, output: &str) -> String {
    match output.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("{what} (last line: {:?})", last.trim()),
        None => format!("{what} (no output)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{ToolError, ToolOutput};
    use futures::future::BoxFuture;

    const STATS: &str = "\tRevision: 0.90\n\tMount Count: 0   Max Mount Count: 20\n\
        \tBlock Size Bits: 9   Cluster Size Bits: 12\n\tMax Node Slots: 0\n";
    const STAT_HEARTBEAT: &str = "\tInode: 10   Mode: 0644   Generation: 1 (0x1)\n\
        \tTree Depth: 0   Count: 19   Next Free Rec: 1\n\
        \t## Offset        Clusters       Block#          Flags\n\
        \t0  0             32             296             0x0 \n";

    #[test]
    fn parses_debugfs_output() {
        assert_eq!(parse_size_bits(STATS).unwrap(), (9, 12));
        let extent = parse_first_extent(STAT_HEARTBEAT).unwrap();
        assert_eq!(
            extent,
            Extent {
                clusters: 32,
                block: 296
            }
        );
        assert_eq!(
            geometry_from(9, 12, extent).unwrap(),
            HeartbeatGeometry {
                block_bytes: 512,
                start_block: 296,
                blocks: 255
            }
        );
        // 16 clusters of 4 KiB hold only 128 slots of 512 bytes.
        let small = Extent {
            clusters: 16,
            block: 296,
        };
        assert!(geometry_from(9, 12, small)
            .unwrap_err()
            .contains("128 blocks"));
        assert!(parse_size_bits("Block Size Bits: 9\n").is_err());
        assert!(parse_first_extent("\tInode: 10\n").is_err());
        let no_record = "\t## Offset        Clusters       Block#          Flags\n";
        assert!(parse_first_extent(no_record).is_err());
        let deep = STAT_HEARTBEAT.replace("Tree Depth: 0", "Tree Depth: 1");
        assert!(parse_first_extent(&deep).is_err());
    }

    struct Debugfs;

    impl Runner for Debugfs {
        fn run<'a>(&'a self, cmd: &'a Cmd) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
            let stdout = match cmd.args[1].to_str().unwrap() {
                "stats" => STATS,
                "stat //heartbeat" => STAT_HEARTBEAT,
                other => panic!("unexpected request {other}"),
            };
            assert_eq!(cmd.program, "debugfs.ocfs2");
            assert_eq!(cmd.args[2], "/dev/vda1");
            Box::pin(async move {
                Ok(ToolOutput {
                    code: Some(0),
                    stdout: stdout.into(),
                    stderr: String::new(),
                })
            })
        }
    }

    #[tokio::test]
    async fn geometry_comes_from_debugfs() {
        let g = geometry(&Debugfs, Path::new("/dev/vda1")).await.unwrap();
        assert_eq!((g.block_bytes, g.start_block, g.blocks), (512, 296, 255));
    }
}
