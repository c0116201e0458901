//! pgpool's failover_command and follow_primary_command: a shell command
//! line with placeholders, run with `sh -c` under a time limit, whose exit
//! status decides (pgpool ignores it). What the command prints is logged,
//! cut short; it is never parsed.
//!
//! Placeholders (pgpool 4.5's): `%d` `%h` `%p` `%D` the failed node (for
//! follow_primary_command, the standby to point at the new primary), `%m`
//! `%H` `%r` `%R` the new primary, `%M` the old main node, `%P` `%N` `%S`
//! the old primary (id, host, port), `%%` a percent sign. pghalo has no
//! "main node" apart from the primary, so `%M` is the old primary's id. An
//! unknown placeholder is left as it is, as pgpool does.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::cluster::NodeId;
use crate::config::BackendHost;

/// How much of a command's output is kept for the log.
const OUTPUT_KEPT: usize = 2048;

/// One node as the placeholders show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub id: NodeId,
    pub host: BackendHost,
    pub port: u16,
    pub data_directory: Option<PathBuf>,
}

/// Everything a template may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placeholders {
    /// `%d %h %p %D`.
    pub node: NodeFacts,
    /// `%m %H %r %R`.
    pub new_primary: NodeFacts,
    /// `%P %N %S` (and `%M`).
    pub old_primary: NodeFacts,
}

/// `template` with every placeholder replaced.
pub fn expand(template: &str, p: &Placeholders) -> String {
    let dir = |n: &NodeFacts| {
        n.data_directory
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    };
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push('%');
            break;
        };
        match code {
            'd' => out.push_str(&p.node.id.to_string()),
            'h' => out.push_str(&p.node.host.to_string()),
            'p' => out.push_str(&p.node.port.to_string()),
            'D' => out.push_str(&dir(&p.node)),
            'm' => out.push_str(&p.new_primary.id.to_string()),
            'H' => out.push_str(&p.new_primary.host.to_string()),
            'r' => out.push_str(&p.new_primary.port.to_string()),
            'R' => out.push_str(&dir(&p.new_primary)),
            'M' | 'P' => out.push_str(&p.old_primary.id.to_string()),
            'N' => out.push_str(&p.old_primary.host.to_string()),
            'S' => out.push_str(&p.old_primary.port.to_string()),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start it: {0}")]
    Spawn(std::io::Error),
    #[error("it exited with status {code}{}", shown(.output))]
    Failed { code: i32, output: String },
    #[error("it was killed by signal {signal}{}", shown(.output))]
    Killed { signal: i32, output: String },
    #[error("it did not finish within {limit:?} and was killed")]
    Timeout { limit: Duration },
}

fn shown(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!("; it printed: {}", output.trim())
    }
}

/// Runs `line` with `sh -c` in a process group of its own; past `limit`
/// the whole group is killed. Ok holds what it printed (stdout and stderr,
/// cut to a couple of KiB, invalid UTF-8 replaced).
pub async fn run(line: &str, limit: Duration) -> Result<String, CommandError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(CommandError::Spawn)?;
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let collect = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        out.extend_from_slice(&err);
        (status, out)
    };
    let (status, bytes) = match tokio::time::timeout(limit, collect).await {
        Ok(done) => done,
        Err(_) => {
            if let Some(group) = group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(group),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(CommandError::Timeout { limit });
        }
    };
    let mut output = String::from_utf8_lossy(&bytes[..bytes.len().min(OUTPUT_KEPT)]).into_owned();
    if bytes.len() > OUTPUT_KEPT {
        output.push_str(" [...]");
    }
    let status = status.map_err(CommandError::Spawn)?;
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(output),
        (Some(code), _) => Err(CommandError::Failed { code, output }),
        (None, Some(signal)) => Err(CommandError::Killed { signal, output }),
        (None, None) => Err(CommandError::Failed { code: -1, output }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(id: usize, port: u16, dir: Option<&str>) -> NodeFacts {
        NodeFacts {
            id: NodeId(id),
            host: BackendHost::Tcp(format!("10.0.0.{id}")),
            port,
            data_directory: dir.map(PathBuf::from),
        }
    }

    #[test]
    fn every_placeholder_is_pgpools() {
        let p = Placeholders {
            node: facts(0, 5432, Some("/data/0")),
            new_primary: facts(2, 5434, Some("/data/2")),
            old_primary: facts(0, 5432, Some("/data/0")),
        };
        assert_eq!(
            expand("%d %h %p %D|%m %H %r %R|%M %P %N %S|%% %x %", &p),
            "0 10.0.0.0 5432 /data/0|2 10.0.0.2 5434 /data/2|0 0 10.0.0.0 5432|% %x %"
        );
        let p = Placeholders {
            node: facts(1, 5433, None),
            ..p
        };
        assert_eq!(expand("promote.sh %D-%R", &p), "promote.sh -/data/2");
        assert_eq!(expand("", &p), "");
        assert_eq!(expand("üñï %h", &p), "üñï 10.0.0.1");
    }

    #[tokio::test]
    async fn the_exit_status_decides() {
        assert_eq!(
            run("echo promoted", Duration::from_secs(10))
                .await
                .unwrap()
                .trim(),
            "promoted"
        );
        let err = run("echo nope >&2; exit 3", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CommandError::Failed { code: 3, .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "it exited with status 3; it printed: nope");
        let err = run("kill -9 $$", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CommandError::Killed { signal: 9, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_with_its_children() {
        let dir = std::env::temp_dir().join(format!("pghalo-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("child.pid");
        let line = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let started = std::time::Instant::now();
        let err = run(&line, Duration::from_millis(500)).await.unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep went with the group.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while crate::process::is_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "sleep {pid} survived");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn garbage_output_is_cut_and_kept_as_text() {
        let out = run(
            "head -c 100000 /dev/urandom; printf '\\377\\376'",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(out.len() <= OUTPUT_KEPT * 4 + 10, "{}", out.len());
        assert!(out.ends_with(" [...]"));
    }
}
