//! Clients that are not Go: Python's grpcio (gRPC's C core), with default
//! options, calls Identity over the driver's unix socket. The C core sends
//! the socket path, percent-encoded, as `:authority` ("run%2Fcsi.sock"),
//! which HTTP/2 servers that parse the authority refuse; Go clients send
//! "localhost" and never hit this.
//!
//! Needs the grpcio venv that scripts/py-grpc-deps.sh installs (the test runs
//! it; it is a no-op once done).

use ocfs2_csi_testkit as common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Python client. Hand-written protobuf: both requests are empty
/// messages; GetPluginInfoResponse.name is field 1 and ProbeResponse.ready is
/// field 1, a google.protobuf.BoolValue whose field 1 is the bool. It prints
/// one `key=value` line per finding and exits non-zero on a failed call.
const CLIENT: &str = r#"
import sys, time, grpc

def fields(buf):
    out, i = {}, 0
    def varint():
        nonlocal i
        v = s = 0
        while True:
            b = buf[i]; i += 1
            v |= (b & 0x7F) << s; s += 7
            if b < 0x80:
                return v
    while i < len(buf):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            out[num] = varint()
        elif wire == 2:
            n = varint(); out[num] = buf[i:i + n]; i += n
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return out

def ready(resp):
    f = fields(resp)
    if 1 not in f:
        return "unset"
    return "true" if fields(f[1]).get(1, 0) else "false"

target = sys.argv[1]
with grpc.insecure_channel(target) as ch:  # default options: no authority override
    info = ch.unary_unary("/csi.v1.Identity/GetPluginInfo")
    probe = ch.unary_unary("/csi.v1.Identity/Probe")
    try:
        name = fields(info(b"", timeout=10))[1].decode()
        print("name=" + name, flush=True)
        deadline = time.monotonic() + 60
        r = ready(probe(b"", timeout=10))
        while r != "true" and time.monotonic() < deadline:
            time.sleep(0.1)
            r = ready(probe(b"", timeout=10))
        print("ready=" + r, flush=True)
        # Calls to 120 different (unknown) methods with long names: the
        # client's HPACK encoder adds each :path to its table, evicting and
        # re-adding its :authority entry again and again on this connection.
        # Every call must get an answer (UNIMPLEMENTED), none a reset.
        for i in range(120):
            nope = ch.unary_unary("/csi.v1.Identity/Nope%d%s" % (i, "x" * 150))
            try:
                nope(b"", timeout=10)
                raise SystemExit("unknown method %d answered" % i)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
        if fields(info(b"", timeout=10))[1].decode() != name:
            raise SystemExit("wrong name after the churn")
        print("churn=ok", flush=True)
    except grpc.RpcError as e:
        print("error=%s: %s" % (e.code(), e.details()), flush=True)
        sys.exit(1)
"#;

/// The venv's python, installed by the project's own script.
fn grpc_python() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/py-grpc-deps.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed; run it by hand to install grpcio (it needs python3 with venv and \
         access to the Python package index)",
        script.display()
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let python = PathBuf::from(stdout.lines().last().unwrap_or_default());
    assert!(
        python.is_file(),
        "{} printed no python: {stdout:?}",
        script.display()
    );
    python
}

fn wait_for_socket(sock: &Path, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "no socket within 30 s; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn call(python: &Path, target: &str) -> (bool, String) {
    let out = Command::new(python)
        .arg("-c")
        .arg(CLIENT)
        .arg(target)
        .env("GRPC_VERBOSITY", "ERROR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn python_grpcio_with_default_options_over_the_unix_socket() {
    let python = grpc_python();
    let dir = tempfile::tempdir().unwrap();
    // A path with folders, so the C core's authority has `%2F` in it.
    let sock = dir.path().join("run/plugin/csi.sock");
    let lun = sparse_lun(dir.path(), "lun.raw", 64 * MIB);
    let log = dir.path().join("controller.log");
    let mut child = Command::new(binary())
        .arg("controller")
        .arg("--endpoint")
        .arg(format!("unix://{}", sock.display()))
        .args(["--driver-name", "ocfs2.example.org", "--log", "debug"])
        .args(["--cluster-id", "grpc-clients"])
        .arg("--lun")
        .arg(&lun)
        .arg("--init-lun")
        .arg(&lun)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start ocfs2-csi");
    wait_for_socket(&sock, &log);

    // Both spellings of a unix target the C core takes.
    for target in [
        format!("unix://{}", sock.display()),
        format!("unix:{}", sock.display()),
    ] {
        let (ok, text) = call(&python, &target);
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            ok,
            "{target}: the call failed:\n{text}\ncontroller log:\n{}",
            log_text()
        );
        assert!(
            text.contains("name=ocfs2.example.org\n"),
            "{target}: {text}"
        );
        assert!(text.contains("ready=true\n"), "{target}: {text}");
        assert!(text.contains("churn=ok\n"), "{target}: {text}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
