//! Bad input to `pghalo lab`: one clear sentence, a non-zero exit, and
//! nothing created or destroyed.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{pghalo, pghalo_env, unique_dir, write_file};

fn init(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["lab", "init", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, _, stderr) = pghalo(&args);
    (ok, stderr)
}

/// The error is one line that starts like every pghalo error.
fn assert_one_sentence(stderr: &str, expected: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pghalo: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected in: {stderr}"
    );
    assert!(
        errors[0].contains(expected),
        "expected {expected:?} in {:?}",
        errors[0]
    );
}

#[test]
fn init_refuses_a_non_empty_directory_and_touches_nothing() {
    let dir = unique_dir("nonempty");
    std::fs::create_dir(&dir).unwrap();
    write_file(&dir.join("keep.txt"), "precious");
    let (ok, stderr) = init(&dir, &[]);
    assert!(!ok);
    assert_one_sentence(&stderr, "is not empty");
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
        "precious"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn init_refuses_a_port_in_use() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = unique_dir("port");
    let (ok, stderr) = init(&dir, &["--base-port", &port.to_string()]);
    assert!(!ok);
    assert_one_sentence(
        &stderr,
        &format!("port {port} on 127.0.0.1 is already in use"),
    );
    assert!(!dir.exists(), "nothing may be left behind");

    // The busy port is the second of the block.
    let dir = unique_dir("port2");
    let (ok, stderr) = init(
        &dir,
        &["--base-port", &(port - 1).to_string(), "--backends", "2"],
    );
    assert!(!ok);
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(!dir.exists());
}

#[test]
fn init_reports_missing_binaries() {
    let dir = unique_dir("nobin");
    let (ok, stderr) = init(&dir, &["--pg-bin", "/nonexistent/pg/bin"]);
    assert!(!ok);
    assert_one_sentence(
        &stderr,
        "PostgreSQL server binaries not found in /nonexistent/pg/bin",
    );
    assert!(!dir.exists());

    let empty = unique_dir("emptybin");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, stderr) = pghalo_env(
        &["lab", "init", "--dir", dir.to_str().unwrap()],
        &[("PG_BIN", empty.to_str().unwrap())],
    );
    assert!(!ok);
    assert_one_sentence(&stderr, "postgres is missing");
    assert!(!dir.exists());
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn init_refuses_postgresql_older_than_13() {
    // Stand-ins that only answer `--version`: the lab must refuse before it
    // runs anything else from this directory.
    let bin = unique_dir("oldbin");
    std::fs::create_dir(&bin).unwrap();
    for tool in [
        "postgres",
        "initdb",
        "pg_ctl",
        "pg_basebackup",
        "pg_controldata",
    ] {
        let path = bin.join(tool);
        write_file(&path, "#!/bin/sh\necho 'postgres (PostgreSQL) 12.22'\n");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dir = unique_dir("old");
    let (ok, stderr) = init(&dir, &["--pg-bin", bin.to_str().unwrap()]);
    assert!(!ok);
    assert_one_sentence(&stderr, "PostgreSQL 12.22");
    assert!(stderr.contains("needs PostgreSQL 13 or newer"), "{stderr}");
    assert!(!dir.exists());
    std::fs::remove_dir_all(&bin).unwrap();
}

#[test]
fn init_refuses_a_directory_the_server_user_cannot_write() {
    let parent = unique_dir("private");
    std::fs::create_dir(&parent).unwrap();
    let root = nix::unistd::Uid::effective().is_root();
    // As root the servers run as another user, who cannot enter a 0700
    // directory of root's; as a normal user, a read-only parent does it.
    std::fs::set_permissions(
        &parent,
        std::fs::Permissions::from_mode(if root { 0o700 } else { 0o555 }),
    )
    .unwrap();
    let dir = parent.join("lab");
    let (ok, stderr) = init(&dir, &[]);
    assert!(!ok);
    if root {
        assert_one_sentence(&stderr, "has no write access to");
    } else {
        assert_one_sentence(&stderr, "cannot create");
    }
    assert!(!dir.exists(), "a refused init leaves nothing behind");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&parent).unwrap();
}

#[test]
fn a_failure_after_creating_files_leaves_the_directory_as_it_was() {
    // An existing empty directory whose path the lab cannot use in
    // archive_command: init fails after it has started writing.
    let dir = std::env::temp_dir().join(format!("pghalo-test-has space-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let (ok, stderr) = init(&dir, &[]);
    assert!(!ok);
    assert_one_sentence(&stderr, "contains characters the lab does not support");
    assert!(
        dir.is_dir(),
        "a directory that existed before init must survive"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "and be empty again"
    );
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn commands_refuse_a_directory_that_is_not_a_lab() {
    let dir = unique_dir("notalab");
    std::fs::create_dir(&dir).unwrap();
    write_file(&dir.join("data.txt"), "keep me");
    for command in ["start", "stop", "status", "destroy"] {
        let (ok, _, stderr) = pghalo(&["lab", command, "--dir", dir.to_str().unwrap()]);
        assert!(!ok, "{command}");
        assert_one_sentence(&stderr, "is not a pghalo lab");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("data.txt")).unwrap(),
        "keep me"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn init_refuses_a_nonsensical_backend_count() {
    let dir = unique_dir("count");
    let (ok, stderr) = init(&dir, &["--backends", "0"]);
    assert!(!ok);
    assert_one_sentence(&stderr, "--backends must be between 1 and 16");
    assert!(!dir.exists());
}
