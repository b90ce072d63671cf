//! The status report as text, for a person at a terminal.

use super::{Kernel, Lun, Report, Staged};
use std::collections::BTreeMap;
use std::fmt::Write;

/// `1.5 GiB`, `512.0 MiB`: sizes as people compare them.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

fn numbers<'a>(set: impl IntoIterator<Item = &'a u8>) -> String {
    let all: Vec<String> = set.into_iter().map(u8::to_string).collect();
    match all.is_empty() {
        true => "none".into(),
        false => all.join(" "),
    }
}

/// o2cb number -> node name, from configfs.
fn names(kernel: &Result<Kernel, String>) -> BTreeMap<u32, String> {
    let Ok(Kernel {
        cluster: Some(c), ..
    }) = kernel
    else {
        return BTreeMap::new();
    };
    c.nodes
        .iter()
        .map(|(n, name, _)| (u32::from(*n), name.clone()))
        .collect()
}

pub fn text(report: &Report) -> String {
    let mut out = String::new();
    kernel(&mut out, report);
    if report.luns.is_empty() {
        out.push_str("LUNs: none given (--lun, or OCFS2_CSI_LUNS as the node plugin has it)\n\n");
    }
    for lun in &report.luns {
        self::lun(&mut out, lun);
    }
    staged(&mut out, report);
    out
}

fn kernel(out: &mut String, report: &Report) {
    let here = report.node.as_deref().unwrap_or("this node");
    let k = match &report.kernel {
        Err(e) => {
            let _ = writeln!(out, "o2cb on {here}: cannot read: {e}\n");
            return;
        }
        Ok(k) => k,
    };
    let Some(c) = &k.cluster else {
        let _ = writeln!(
            out,
            "o2cb on {here}: cluster {:?} is not set up (the node plugin has not joined)\n",
            report.cluster
        );
        return;
    };
    let _ = writeln!(
        out,
        "o2cb cluster {:?} on {here}: {} heartbeat, dead threshold {} (a node fences itself \
         when a heartbeat write takes {} s; the others declare a silent node dead after {} s)",
        report.cluster,
        c.heartbeat,
        c.dead_threshold,
        u64::from(c.dead_threshold.saturating_sub(1)) * 2,
        u64::from(c.dead_threshold) * 2,
    );
    let _ = writeln!(
        out,
        "  members (o2cb number, node, o2net address, heartbeat):"
    );
    for (number, name, address) in &c.nodes {
        let state = match k.live.contains(number) {
            true => "live",
            false => "NOT HEARTBEATING",
        };
        let _ = writeln!(out, "    {number:>3}  {name:<20} {address:<22} {state}");
    }
    let _ = writeln!(
        out,
        "  heartbeat regions (live numbers; this node's last write):"
    );
    if k.regions.is_empty() {
        let _ = writeln!(out, "    none");
    }
    for r in &k.regions {
        let live = r.live.as_ref().map_or("unknown".into(), numbers);
        let age = r.write_age_ms.map_or("no write yet".into(), |ms| {
            format!("wrote {:.1} s ago", ms as f64 / 1000.0)
        });
        let what = r.what.as_deref().unwrap_or("not on a LUN of this node");
        let _ = writeln!(out, "    {}  {what}: live {live}; {age}", r.name);
    }
    out.push('\n');
}

fn lun(out: &mut String, lun: &Lun) {
    if let Some(e) = &lun.error {
        let _ = writeln!(out, "LUN {}: {e}\n", lun.path.display());
        return;
    }
    let count = lun.volumes.iter().filter(|v| !v.handle.is_empty()).count();
    let _ = writeln!(
        out,
        "LUN {}: {}, {} free, largest free extent {} (the largest volume that fits), {count} volumes",
        lun.path.display(),
        size(lun.size_bytes),
        size(lun.free_bytes),
        size(lun.largest_free_bytes),
    );
    for v in lun.volumes.iter().filter(|v| !v.handle.is_empty()) {
        let mut notes = Vec::new();
        if v.state != "ready" {
            notes.push(v.state.clone());
        }
        match v.filesystem_bytes {
            Some(fs) if fs + (1 << 20) <= v.partition_bytes && v.content == "filesystem" => notes
                .push(format!(
                    "filesystem {} {}: grow not finished",
                    size(fs),
                    v.filesystem_from.as_deref().unwrap_or("")
                )),
            None if v.content == "filesystem" && v.state == "ready" => {
                notes.push("no superblock found".into())
            }
            _ => {}
        }
        if v.extents > 1 {
            notes.push(format!("{} extents", v.extents));
        }
        let notes = match notes.is_empty() {
            true => String::new(),
            false => format!(" ({})", notes.join(", ")),
        };
        let _ = writeln!(
            out,
            "  {:<44} {:<10} {:>10}{notes}\n    {}",
            v.name,
            v.content,
            size(v.partition_bytes),
            v.handle
        );
    }
    out.push('\n');
}

fn staged(out: &mut String, report: &Report) {
    let here = report.node.as_deref().unwrap_or("this node");
    let staged: &[Staged] = match &report.staged {
        Err(e) => {
            let _ = writeln!(
                out,
                "volumes staged on {here}: cannot read the records: {e}"
            );
            return;
        }
        Ok(s) => s,
    };
    let _ = writeln!(out, "volumes staged on {here}: {}", staged.len());
    let names = names(&report.kernel);
    let volume_names: BTreeMap<&str, &str> = report
        .luns
        .iter()
        .flat_map(|l| &l.volumes)
        .map(|v| (v.handle.as_str(), v.name.as_str()))
        .collect();
    for s in staged {
        let name = volume_names.get(s.handle.as_str()).copied().unwrap_or("?");
        let mounted = match &s.slots {
            None => "raw block: no slot map".to_string(),
            Some(Err(e)) => format!("slot map unreadable: {e}"),
            Some(Ok(nodes)) => {
                let each: Vec<String> = nodes
                    .iter()
                    .map(|n| match names.get(n) {
                        Some(name) => format!("{name} ({n})"),
                        None => format!("o2cb node {n}"),
                    })
                    .collect();
                format!("mounted on {} (its slot map)", each.join(", "))
            }
        };
        let _ = writeln!(
            out,
            "  {name}: {mounted}\n    {} at {}",
            s.handle,
            s.path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{KernelCluster, Region, Volume};
    use super::*;
    use std::path::PathBuf;

    const GIB: u64 = 1 << 30;

    fn report() -> Report {
        Report {
            cluster: "ocfs2csi".into(),
            node: Some("node2".into()),
            kernel: Ok(Kernel {
                cluster: Some(KernelCluster {
                    heartbeat: "global".into(),
                    dead_threshold: 31,
                    nodes: vec![
                        (0, "node1".into(), "10.0.0.1:7777".into()),
                        (1, "node2".into(), "10.0.0.2:7777".into()),
                        (2, "node3".into(), "10.0.0.3:7777".into()),
                    ],
                }),
                live: [0, 1].into(),
                regions: vec![Region {
                    name: "AB12".into(),
                    what: Some("heartbeat of /dev/lun".into()),
                    live: Some([0, 1].into()),
                    write_age_ms: Some(400),
                }],
            }),
            luns: vec![Lun {
                path: PathBuf::from("/dev/lun"),
                error: None,
                size_bytes: 100 * GIB,
                free_bytes: 90 * GIB,
                largest_free_bytes: 60 * GIB,
                volumes: vec![Volume {
                    handle: "ocfs2-v1:a:b".into(),
                    name: "pvc-shared".into(),
                    state: "ready".into(),
                    content: "filesystem".into(),
                    partition_bytes: 2 * GIB,
                    extents: 2,
                    filesystem_bytes: Some(GIB),
                    filesystem_from: Some("on disk".into()),
                    region: Some("CD34".into()),
                }],
            }],
            staged: Ok(vec![Staged {
                handle: "ocfs2-v1:a:b".into(),
                path: PathBuf::from("/staging/b"),
                block: false,
                filesystem_bytes: Some(GIB),
                slots: Some(Ok(vec![0, 1, 7])),
            }]),
        }
    }

    #[test]
    fn sizes_read_as_people_compare_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(100 << 40), "100.0 TiB");
    }

    #[test]
    fn the_text_says_what_is_wrong() {
        let text = text(&report());
        assert!(text.contains("o2cb cluster \"ocfs2csi\" on node2: global heartbeat, dead threshold 31 (a node fences itself when a heartbeat write takes 60 s; the others declare a silent node dead after 62 s)"), "{text}");
        assert!(text.contains("  0  node1"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains("node3") && l.ends_with("NOT HEARTBEATING")),
            "{text}"
        );
        assert!(
            text.contains("AB12  heartbeat of /dev/lun: live 0 1; wrote 0.4 s ago"),
            "{text}"
        );
        assert!(
            text.contains("LUN /dev/lun: 100.0 GiB, 90.0 GiB free, largest free extent 60.0 GiB"),
            "{text}"
        );
        assert!(
            text.contains("(filesystem 1.0 GiB on disk: grow not finished, 2 extents)"),
            "{text}"
        );
        assert!(
            text.contains(
                "pvc-shared: mounted on node1 (0), node2 (1), o2cb node 7 (its slot map)"
            ),
            "{text}"
        );
    }

    #[test]
    fn parts_that_cannot_be_read_say_why() {
        let mut r = report();
        r.kernel = Err("configfs is not mounted".into());
        r.luns[0].error = Some("cannot open: No such file".into());
        r.staged = Err("/var/lib/ocfs2-csi: denied".into());
        let text = text(&r);
        assert!(
            text.contains("o2cb on node2: cannot read: configfs is not mounted"),
            "{text}"
        );
        assert!(
            text.contains("LUN /dev/lun: cannot open: No such file"),
            "{text}"
        );
        assert!(
            text.contains("cannot read the records: /var/lib/ocfs2-csi: denied"),
            "{text}"
        );
    }
}
