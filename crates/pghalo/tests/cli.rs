//! The operator-facing subcommands outside the lab: `check-config` and
//! `passwd`, through the real binary.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::{PGHALO, pghalo, unique_dir, write_file};

#[test]
fn check_config_accepts_a_good_file_and_names_the_line_of_a_bad_one() {
    let dir = unique_dir("checkconfig");
    std::fs::create_dir_all(&dir).unwrap();
    write_file(
        &dir.join("pool_hba.conf"),
        "host all all 127.0.0.1/32 scram-sha-256\n",
    );
    write_file(&dir.join("pool_passwd"), "");
    let good = "[listen]\nport = 19999\n\n[pool]\nmode = \"transaction\"\n\n[[backend]]\nhost = \"127.0.0.1\"\nport = 5432\n";
    write_file(&dir.join("pghalo.toml"), good);
    let path = dir.join("pghalo.toml");
    let (ok, stdout, stderr) = pghalo(&["check-config", "-c", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("OK") && stdout.contains("transaction pooling"),
        "{stdout}"
    );

    write_file(
        &path,
        &good.replace(
            "mode = \"transaction\"",
            "mode = \"transaction\"\nmax_pool = 3",
        ),
    );
    let (ok, _, stderr) = pghalo(&["check-config", "-c", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("pghalo.toml:6: unknown key 'max_pool' in [pool]"),
        "{stderr}"
    );

    write_file(&path, good);
    write_file(
        &dir.join("pool_hba.conf"),
        "host all all 127.0.0.1/32 trust\nhost all all nowhere md5\n",
    );
    let (ok, _, stderr) = pghalo(&["check-config", "-c", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("pool_hba.conf:2"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn passwd_writes_entries_from_standard_input_never_from_arguments() {
    let dir = unique_dir("passwd");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pool_passwd");
    write_file(
        &file,
        "# kept as is\nbob:md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
    );
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(PGHALO)
            .arg("passwd")
            .arg("--file")
            .arg(&file)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&["--format", "md5", "alice"], "s3cret\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["carol"], "other\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let expected_md5 = pghalo_protocol::md5::hash_password("alice", b"s3cret");
    assert!(text.contains(&format!("alice:{expected_md5}")), "{text}");
    assert!(
        text.contains("# kept as is\nbob:md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"),
        "other lines must be kept: {text}"
    );
    let carol = text.lines().find(|l| l.starts_with("carol:")).unwrap();
    assert!(
        carol.starts_with("carol:SCRAM-SHA-256$4096:"),
        "scram is the default: {carol}"
    );
    assert!(
        !text.contains("other") && !text.contains("s3cret"),
        "no plain password may be stored"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // There is no way to pass the password as an argument.
    let out = run(&["--password", "x", "dave"], "");
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}
