//! `pghalo demo`, the README's main job: brings up a replicated cluster,
//! prints how to reach it, serves until Ctrl-C, then removes it.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{PGHALO, eventually, postmaster_pids, process_alive, reap_on_exit, unique_dir};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn demo_serves_a_replicated_cluster_until_interrupted() {
    let dir = unique_dir("demo");
    let _reaper = reap_on_exit(&dir);
    let mut child = Command::new(PGHALO)
        .args(["demo", "--backends", "2", "--dir", dir.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut shown = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.starts_with("Serving until Ctrl-C");
        shown.push(line);
        if done {
            break;
        }
    }
    let text = shown.join("\n");
    assert!(text.contains("node0    primary"), "{text}");
    assert!(text.contains("# pghalo0 (pghalo)"), "{text}");
    assert!(text.contains("streaming (async)"), "{text}");
    assert!(text.contains("psql -h 127.0.0.1 -p"), "{text}");

    let pids = postmaster_pids(&dir);
    assert_eq!(pids.len(), 2);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "demo must exit cleanly on Ctrl-C: {status}"
    );
    assert!(!dir.exists(), "the demo removes its lab");
    assert!(eventually(Duration::from_secs(10), || pids
        .iter()
        .all(|p| !process_alive(*p))));
}
