//! Running PostgreSQL's tools and watching its processes.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;

use super::error::LabError;

/// Runs `cmd` to completion under a deadline; a non-zero exit becomes an
/// error carrying the tool's own last words.
pub async fn run(mut cmd: Command, what: &str, limit: Duration) -> Result<Output, LabError> {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Command {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| LabError::Timeout {
            what: what.to_string(),
            secs: limit.as_secs(),
        })?
        .map_err(|e| LabError::Command {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        return Err(LabError::Command {
            what: what.to_string(),
            detail: last_lines(&text, 3),
        });
    }
    Ok(output)
}

/// The last `n` non-empty lines of `text`, joined into one line.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join(" / ")
}

/// The postmaster's pid from `postmaster.pid`, if that process is alive.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    is_alive(pid).then_some(pid)
}

pub use crate::process::is_alive;

/// Pids of live processes whose parent is `parent` (a postmaster's children).
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    let mut fields = rest.split_whitespace();
                    let state = fields.next()?;
                    let ppid: i32 = fields.next()?.parse().ok()?;
                    Some(state != "Z" && ppid == parent)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Last resort when `pg_ctl stop` could not stop a server.
pub fn kill_hard(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}
