//! The controller's metrics read at scrape time: each LUN, open or not, its
//! space and its volumes.

use super::volumes::{LunUsage, Volumes};
use crate::metrics::{Gauges, Sample};
use crate::volume::entry::State;
use futures::future::BoxFuture;
use std::sync::Arc;

pub struct ControllerGauges(pub Arc<Volumes>);

impl Gauges for ControllerGauges {
    fn read(&self) -> BoxFuture<'_, Vec<Sample>> {
        Box::pin(async move { samples(&self.0.usage().await) })
    }
}

pub fn samples(luns: &[LunUsage]) -> Vec<Sample> {
    let mut out = Vec::new();
    for lun in luns {
        let path = lun.path.display().to_string();
        let open = Sample::new(
            "lun_open",
            "1 when the LUN is open and its table readable, 0 when not (the log says why)",
            f64::from(u8::from(lun.space.is_ok())),
        );
        out.push(open.label("lun", &path));
        let Ok(space) = &lun.space else { continue };
        let bytes = [
            (
                "lun_size_bytes",
                "Usable bytes of the LUN's partition table",
                space.size_bytes,
            ),
            (
                "lun_used_bytes",
                "Bytes held by partitions (volumes and the heartbeat area)",
                space.used_bytes,
            ),
            (
                "lun_free_bytes",
                "Free bytes new volumes can have (1 MiB aligned)",
                space.free_bytes,
            ),
            (
                "lun_largest_free_extent_bytes",
                "The largest free extent: the largest volume that fits in one piece",
                space.largest_free_bytes,
            ),
        ];
        for (name, help, value) in bytes {
            out.push(Sample::new(name, help, value as f64).label("lun", &path));
        }
        for state in [
            State::Ready,
            State::Pending,
            State::Deleting,
            State::Cloning,
        ] {
            let n = space
                .volumes
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            let s = Sample::new("lun_volumes", "Volumes on the LUN, by state", n as f64);
            out.push(s.label("lun", &path).label("state", state.name()));
        }
        let writer = Sample::new(
            "lun_writer",
            "1 when this controller holds the LUN's writer lease (writes its table)",
            f64::from(u8::from(space.writer)),
        );
        out.push(writer.label("lun", &path));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::volumes::LunSpace;
    use crate::metrics::{render, Mode};
    use std::path::PathBuf;

    #[test]
    fn an_open_lun_shows_its_space_and_a_closed_one_only_that_it_is_closed() {
        let luns = vec![
            LunUsage {
                path: PathBuf::from("/dev/mapper/a"),
                space: Ok(LunSpace {
                    size_bytes: 100,
                    used_bytes: 40,
                    free_bytes: 60,
                    largest_free_bytes: 50,
                    volumes: vec![(State::Ready, 2), (State::Deleting, 1)],
                    writer: true,
                }),
            },
            LunUsage {
                path: PathBuf::from("/dev/mapper/b"),
                space: Err("stamped by another cluster".into()),
            },
        ];
        let text = render(Mode::Controller, samples(&luns));
        for line in [
            r#"ocfs2_csi_lun_open{lun="/dev/mapper/a"} 1.0"#,
            r#"ocfs2_csi_lun_open{lun="/dev/mapper/b"} 0.0"#,
            r#"ocfs2_csi_lun_free_bytes{lun="/dev/mapper/a"} 60.0"#,
            r#"ocfs2_csi_lun_largest_free_extent_bytes{lun="/dev/mapper/a"} 50.0"#,
            r#"ocfs2_csi_lun_volumes{lun="/dev/mapper/a",state="ready"} 2.0"#,
            r#"ocfs2_csi_lun_volumes{lun="/dev/mapper/a",state="deleting"} 1.0"#,
            r#"ocfs2_csi_lun_volumes{lun="/dev/mapper/a",state="cloning"} 0.0"#,
            r#"ocfs2_csi_lun_writer{lun="/dev/mapper/a"} 1.0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
        assert!(!text.contains(r#"ocfs2_csi_lun_free_bytes{lun="/dev/mapper/b"}"#));
    }
}
