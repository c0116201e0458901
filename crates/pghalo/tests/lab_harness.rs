//! The harness itself: a lab built by a test process is gone once that
//! process ends, whether its test passed or panicked.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestLab, eventually, postmaster_pids, process_alive};

const REPORT_VAR: &str = "PGHALO_HARNESS_REPORT";

/// Run in a child process by the tests below (ignored in normal runs): builds
/// a lab, reports where it is, then ends as told.
#[test]
#[ignore]
fn child_builds_a_lab_then_ends() {
    let Ok(report) = std::env::var(REPORT_VAR) else {
        return;
    };
    let test_lab = TestLab::build("child", |opts| opts.backends = 1);
    let pids: Vec<String> = postmaster_pids(test_lab.dir())
        .iter()
        .map(|p| p.to_string())
        .collect();
    std::fs::write(
        &report,
        format!("{}\n{}\n", test_lab.dir().display(), pids.join(",")),
    )
    .unwrap();
    // Statics are never dropped: the shape of a shared lab at process exit.
    std::mem::forget(test_lab);
    if std::env::var("PGHALO_HARNESS_PANIC").is_ok() {
        panic!("deliberate panic with a lab running");
    }
}

fn run_child(panic: bool) {
    let report = common::unique_dir("report");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_builds_a_lab_then_ends",
        "--ignored",
        "--nocapture",
    ])
    .env(REPORT_VAR, &report);
    if panic {
        cmd.env("PGHALO_HARNESS_PANIC", "1");
    }
    // Captured, so the child's own test summary does not mix with ours.
    let output = cmd.output().unwrap();
    assert_eq!(
        output.status.success(),
        !panic,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    std::fs::remove_file(&report).unwrap();
    let mut lines = text.lines();
    let dir = std::path::PathBuf::from(lines.next().unwrap());
    let pids: Vec<i32> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "the child's lab was running");
    assert!(
        eventually(Duration::from_secs(60), || !dir.exists()
            && pids.iter().all(|p| !process_alive(*p))),
        "the lab in {} outlived its test process",
        dir.display()
    );
}

#[test]
fn lab_is_removed_when_its_test_process_passes() {
    run_child(false);
}

#[test]
fn lab_is_removed_when_its_test_process_panics() {
    run_child(true);
}
