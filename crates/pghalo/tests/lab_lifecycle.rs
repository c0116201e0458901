//! `lab start`, `lab stop` and `lab destroy` through the CLI: idempotent, and
//! a stopped lab leaves no process behind.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::time::Duration;

use common::{TestLab, eventually, pghalo, postmaster_pids, process_alive};

#[test]
fn stop_leaves_no_process_and_start_stop_are_idempotent() {
    let test_lab = TestLab::build("lifecycle", |opts| opts.backends = 2);
    let dir = test_lab.dir().to_str().unwrap().to_string();

    let running = postmaster_pids(test_lab.dir());
    assert_eq!(running.len(), 2, "both nodes run after init + start");

    let (ok, _, stderr) = pghalo(&["lab", "start", "--dir", &dir]);
    assert!(ok, "start on a running lab must succeed: {stderr}");
    let mut again = postmaster_pids(test_lab.dir());
    again.sort();
    let mut before = running.clone();
    before.sort();
    assert_eq!(
        again, before,
        "start on a running lab must not restart anything"
    );

    let (ok, _, stderr) = pghalo(&["lab", "stop", "--dir", &dir]);
    assert!(ok, "{stderr}");
    for pid in &running {
        assert!(
            !process_alive(*pid),
            "postmaster {pid} or one of its children survived lab stop"
        );
    }
    assert!(postmaster_pids(test_lab.dir()).is_empty());

    let (ok, _, stderr) = pghalo(&["lab", "stop", "--dir", &dir]);
    assert!(ok, "stop on a stopped lab must succeed: {stderr}");

    let (ok, stdout, _) = pghalo(&["lab", "status", "--json", "--dir", &dir]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        json["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["role"] == "down")
    );

    let (ok, _, stderr) = pghalo(&["lab", "start", "--dir", &dir]);
    assert!(ok, "{stderr}");
    let (_, stdout, _) = pghalo(&["lab", "status", "--json", "--dir", &dir]);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["nodes"][0]["role"], "primary");
    assert_eq!(
        json["nodes"][1]["replication"]["state"], "streaming",
        "replication resumes after a restart"
    );

    let restarted = postmaster_pids(test_lab.dir());
    let (ok, _, stderr) = pghalo(&["lab", "destroy", "--dir", &dir]);
    assert!(ok, "{stderr}");
    assert!(!test_lab.dir().exists());
    assert!(eventually(Duration::from_secs(5), || restarted
        .iter()
        .all(|p| !process_alive(*p))));
    let (ok, _, stderr) = pghalo(&["lab", "destroy", "--dir", &dir]);
    assert!(!ok && stderr.contains("not a pghalo lab"), "{stderr}");
}

/// Started by a normal user (here `postgres`, when the suite runs as root):
/// the servers run as that user, and the whole cycle works.
#[test]
fn a_normal_user_can_run_a_lab() {
    if !nix::unistd::Uid::effective().is_root() {
        // Already a normal user: every other test covers this case.
        return;
    }
    let Ok(Some(user)) = nix::unistd::User::from_name("postgres") else {
        return;
    };
    // The binary must be reachable by that user wherever CI cloned us.
    let home = common::unique_dir("normaluser");
    std::fs::create_dir_all(&home).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = home.join("pghalo");
    std::fs::copy(common::PGHALO, &bin).unwrap();
    nix::unistd::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    let dir = home.join("lab");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&bin)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let d = dir.to_str().unwrap();
    let (ok, _, stderr) = run(&[
        "lab",
        "init",
        "--dir",
        d,
        "--backends",
        "2",
        "--proxies",
        "1",
    ]);
    assert!(ok, "init as postgres: {stderr}");
    let (ok, _, stderr) = run(&["lab", "start", "--dir", d]);
    let (_, status, _) = run(&["lab", "status", "--json", "--dir", d]);
    let (destroyed, _, destroy_err) = run(&["lab", "destroy", "--dir", d]);
    assert!(ok, "start as postgres: {stderr}");
    assert!(destroyed, "destroy as postgres: {destroy_err}");
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["nodes"][0]["role"], "primary");
    assert_eq!(json["nodes"][1]["replication"]["state"], "streaming");
    assert_eq!(json["proxies"][0]["status"], "up");
    std::fs::remove_dir_all(&home).unwrap();
}
