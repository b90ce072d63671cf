//! Running external tools (mkfs.ocfs2, debugfs.ocfs2, losetup, ...).
//!
//! Every call goes through [`Runner`]: an argument vector (never a shell
//! string), an absolute program path from a fixed list of system folders,
//! `LC_ALL=C` so output parses the same everywhere, no stdin, and a timeout
//! after which the child is killed. Tests swap in a scripted runner.

use futures::future::BoxFuture;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One invocation: program name (resolved in [`SYSTEM_DIRS`]), arguments and
/// the longest it may run.
#[derive(Clone, Debug)]
pub struct Cmd {
    pub program: &'static str,
    pub args: Vec<OsString>,
    pub timeout: Duration,
}

impl Cmd {
    pub fn new(program: &'static str, timeout: Duration) -> Cmd {
        Cmd {
            program,
            args: Vec::new(),
            timeout,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    /// The command as one line for logs (arguments are ours, never secrets).
    pub fn display(&self) -> String {
        let mut line = self.program.to_string();
        for a in &self.args {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        line
    }
}

/// What a finished tool left behind.
#[derive(Clone, Debug, Default)]
pub struct ToolOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    /// Turns a non-zero exit into [`ToolError::Failed`].
    pub fn ok(self, cmd: &Cmd) -> Result<ToolOutput, ToolError> {
        if self.code == Some(0) {
            Ok(self)
        } else {
            Err(ToolError::Failed {
                command: cmd.display(),
                code: self.code,
                stderr: last_lines(&self.stderr, &self.stdout),
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program} not found in {dirs:?}")]
    NotFound {
        program: &'static str,
        dirs: &'static [&'static str],
    },
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed (exit {code:?}): {stderr}")]
    Failed {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
}

/// Runs external tools. Implementations must never go through a shell.
pub trait Runner: Send + Sync {
    fn run<'a>(&'a self, cmd: &'a Cmd) -> BoxFuture<'a, Result<ToolOutput, ToolError>>;
}

/// Folders searched for tools, in order. PATH is not consulted so that the
/// environment cannot substitute a binary.
pub const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The real runner: tokio child processes, killed when the timeout passes or
/// the calling RPC is dropped.
#[derive(Debug, Default)]
pub struct SystemRunner;

pub fn resolve(program: &'static str) -> Result<PathBuf, ToolError> {
    SYSTEM_DIRS
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .ok_or(ToolError::NotFound {
            program,
            dirs: SYSTEM_DIRS,
        })
}

impl Runner for SystemRunner {
    fn run<'a>(&'a self, cmd: &'a Cmd) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let path = resolve(cmd.program)?;
            let started = Instant::now();
            let mut command = tokio::process::Command::new(&path);
            command
                .args(&cmd.args)
                .env_clear()
                .env("LC_ALL", "C")
                .env("PATH", SYSTEM_DIRS.join(":"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            // If the driver itself is killed (SIGKILL, OOM), its tools die
            // with it: an orphaned mkfs still writing after a restart could
            // land on space a retried create or a delete has moved on from.
            // (The signal follows the spawning thread, a tokio worker that
            // lives as long as the runtime.)
            // SAFETY: the closure only makes an async-signal-safe prctl call.
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
            let child = command.spawn().map_err(|source| ToolError::Spawn {
                command: cmd.display(),
                source,
            })?;
            let out = match tokio::time::timeout(cmd.timeout, child.wait_with_output()).await {
                Ok(result) => result.map_err(|source| ToolError::Spawn {
                    command: cmd.display(),
                    source,
                })?,
                Err(_) => {
                    return Err(ToolError::Timeout {
                        command: cmd.display(),
                        timeout: cmd.timeout,
                    })
                }
            };
            let output = ToolOutput {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            tracing::debug!(
                command = %cmd.display(),
                code = ?output.code,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "tool finished"
            );
            Ok(output)
        })
    }
}

/// The tail of a tool's complaint, short enough for an error message. Both
/// streams count: mkfs.ocfs2 prints its reasons to stdout and only warnings
/// to stderr.
fn last_lines(stderr: &str, stdout: &str) -> String {
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    };
    match (tail(stderr), tail(stdout)) {
        (e, o) if o.is_empty() => e,
        (e, o) if e.is_empty() => o,
        (e, o) => format!("{e} / {o}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_with_argv_and_reports_exit() {
        let cmd = Cmd::new("sh", Duration::from_secs(5))
            .arg("-c")
            .arg("echo out; echo err >&2; exit 3");
        let out = SystemRunner.run(&cmd).await.unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout.trim(), "out");
        let err = out.ok(&cmd).unwrap_err().to_string();
        assert!(err.contains("exit Some(3)") && err.contains("err"), "{err}");
    }

    #[tokio::test]
    async fn arguments_are_not_interpreted_by_a_shell() {
        let cmd = Cmd::new("echo", Duration::from_secs(5)).arg("$(id); `id` | x");
        let out = SystemRunner.run(&cmd).await.unwrap();
        assert_eq!(out.stdout.trim(), "$(id); `id` | x");
    }

    #[tokio::test]
    async fn timeout_kills_the_child() {
        let cmd = Cmd::new("sleep", Duration::from_millis(200)).arg("30");
        let started = Instant::now();
        let err = SystemRunner.run(&cmd).await.unwrap_err();
        assert!(matches!(err, ToolError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn unknown_program_is_not_found() {
        let cmd = Cmd::new("no-such-tool-ocfs2csi", Duration::from_secs(1));
        assert!(matches!(
            SystemRunner.run(&cmd).await,
            Err(ToolError::NotFound { .. })
        ));
    }
}
