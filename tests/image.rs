//! The container image: `scripts/image.sh` builds the base image from
//! Debian's packages and then the Dockerfile with buildah (installing
//! buildah and mmdebstrap first when missing), runs `ocfs2-csi --version`
//! inside the image and checks that no host name of this machine's apt
//! configuration was left in it. This test runs the script, so `make test`
//! proves on every CI machine that the image builds and its binary runs.
//! Needs root (buildah with the system's container storage, apt).
//!
//! Cold (tools, base image, release build) it takes minutes; afterwards
//! buildah's layer cache makes it seconds.

use std::process::Command;
use std::time::Instant;

#[test]
fn image_builds_and_prints_its_version() {
    let root = env!("CARGO_MANIFEST_DIR");
    let version = env!("CARGO_PKG_VERSION");
    let started = Instant::now();
    let out = Command::new(format!("{root}/scripts/image.sh"))
        .current_dir(root)
        .output()
        .expect("run scripts/image.sh");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    println!(
        "image test: scripts/image.sh took {:.1}s",
        elapsed.as_secs_f64()
    );
    assert!(
        out.status.success(),
        "scripts/image.sh failed: {}",
        out.status
    );

    // The script's last line: `image: <repository>:<tag> <size>: <what
    // --version printed in the image>`; the tag is the crate's version.
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("image: ")
            && last.contains(&format!(":{version} "))
            && last.ends_with(&format!(": ocfs2-csi {version}")),
        "expected the image's version line, got {last:?}"
    );
}
