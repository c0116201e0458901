//! Real clients through pghalo, differentially: a scripted psycopg 3 session
//! must print the very same transcript through pghalo as against the
//! primary itself, and pgbench must commit every transaction it counts,
//! in every query mode, with the database consistent afterwards.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ProxyConfig, shared_lab};
use pghalo::daemon::Daemon;

const PSYCOPG_SESSION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/psycopg_session.py"
);

fn lab_proxy_port() -> u16 {
    shared_lab().lab.proxy("pghalo0").unwrap().port
}

fn primary_port() -> u16 {
    shared_lab().lab.node("node0").unwrap().port
}

fn pgpass() -> std::path::PathBuf {
    shared_lab().lab.pgpass()
}

fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// psycopg 3 must be importable; scripts/prereqs.sh installs it.
fn require_psycopg() {
    let out = Command::new("python3")
        .args(["-c", "import psycopg; print(psycopg.__version__)"])
        .output()
        .expect("python3 is needed for the client tests");
    assert!(
        out.status.success(),
        "psycopg 3 is not installed for python3: run `source scripts/prereqs.sh && pghalo_ensure_prereqs` (or `python3 -m pip install 'psycopg[binary]'`)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the psycopg session against `port` and returns its transcript.
fn psycopg_transcript(port: u16, pgpass: &Path) -> String {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres application_name=pghalo-diff connect_timeout=10"
    );
    let out = Command::new("python3")
        .arg(PSYCOPG_SESSION)
        .arg(&conninfo)
        .env("PGPASSFILE", pgpass)
        .env_remove("PGAPPNAME")
        .env_remove("PGOPTIONS")
        .env_remove("PGTZ")
        .env_remove("PGDATESTYLE")
        .env_remove("PGCLIENTENCODING")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the psycopg session failed on port {port}:\n{}",
        output_text(&out)
    );
    let transcript = String::from_utf8(out.stdout).unwrap();
    assert!(
        transcript.contains("\"step\": \"final\""),
        "the transcript is incomplete"
    );
    transcript
}

/// Asserts equal transcripts, showing the first lines that differ.
fn assert_same_transcript(direct: &str, proxied: &str, what: &str) {
    if direct == proxied {
        return;
    }
    let a: Vec<&str> = direct.lines().collect();
    let b: Vec<&str> = proxied.lines().collect();
    let first = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let from = first.saturating_sub(15);
    let show =
        |lines: &[&str]| lines[from.min(lines.len())..(first + 5).min(lines.len())].join("\n");
    panic!(
        "{what}: the transcripts differ from line {} on\n=== direct ===\n{}\n=== through pghalo ===\n{}",
        first + 1,
        show(&a),
        show(&b)
    );
}

/// The same psycopg session (DDL, many types in text and binary, errors
/// with every diagnostic field, notices, COPY both ways and both formats,
/// prepared statements, transactions and savepoints rolled back, a named
/// cursor, pipeline mode, LISTEN/NOTIFY, large results) prints the same
/// transcript on the primary and through the lab's pghalo.
#[test]
fn psycopg_session_is_identical_direct_and_through_pghalo() {
    require_psycopg();
    let pgpass = pgpass();
    let direct = psycopg_transcript(primary_port(), &pgpass);
    let proxied = psycopg_transcript(lab_proxy_port(), &pgpass);
    assert_same_transcript(&direct, &proxied, "pghalo0");
}

/// With a single pooled server connection, the second session runs on the
/// server process the first one used, after the reset: psycopg's prepared
/// statement names, temp tables, LISTEN and settings must all be gone, so
/// both transcripts still match the direct one.
#[tokio::test(flavor = "multi_thread")]
async fn psycopg_sessions_on_a_reused_server_connection_match_direct() {
    require_psycopg();
    let lab = &shared_lab().lab;
    let config = ProxyConfig::write(
        lab,
        "psycopg-reuse",
        "",
        "max_pool_size = 1\ncheckout_timeout = \"30s\"",
        "host all all 127.0.0.1/32 scram-sha-256\n",
        None,
    );
    let daemon = Daemon::start(&config.path()).await.unwrap();
    let port = config.port;
    // The lab's pgpass knows the lab's ports only.
    let pgpass = config.dir.join("pgpass");
    common::write_file(
        &pgpass,
        &format!("127.0.0.1:*:*:postgres:{}\n", lab.secrets.postgres),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let transcripts = tokio::task::spawn_blocking(move || {
        let direct = psycopg_transcript(primary_port(), &pgpass);
        let first = psycopg_transcript(port, &pgpass);
        let second = psycopg_transcript(port, &pgpass);
        (direct, first, second)
    })
    .await
    .unwrap();
    let (direct, first, second) = transcripts;
    assert_same_transcript(&direct, &first, "first session");
    assert_same_transcript(&direct, &second, "second session, reused connection");
    let key = pghalo::pool::PoolKey {
        node: 0,
        database: "postgres".into(),
        user: "postgres".into(),
    };
    // The last release (reset queries) finishes in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while daemon.proxy().pools.counts(&key) != (1, 0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        daemon.proxy().pools.counts(&key),
        (1, 0),
        "one idle server connection served both sessions"
    );
}

/// tokio-postgres sets no application_name; directly the server reports
/// an empty one, and a proxy in between should not change what the client
/// sees.
#[tokio::test]
async fn a_client_without_application_name_sees_the_servers_default() {
    let lab = &shared_lab().lab;
    let pw = lab.secrets.postgres.clone();
    let mut seen = Vec::new();
    for port in [primary_port(), lab_proxy_port()] {
        let client = common::pg_connect(&common::conninfo(port, "postgres", &pw))
            .await
            .unwrap();
        let row = client
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .unwrap();
        seen.push(row.get::<_, String>(0));
    }
    assert_eq!(seen[0], "");
    assert_eq!(seen[1], seen[0], "through pghalo vs direct");
}

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

fn pgbench(port: u16, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .args(args)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .arg("postgres")
        .env("PGPASSFILE", pgpass())
        .env_remove("PGOPTIONS")
        .output()
        .expect("pgbench (postgresql-client) is needed");
    let text = output_text(&out);
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// The number after `label` on its line of pgbench's report.
fn report_number(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the pgbench report:\n{report}"))
}

/// A run's (processed, failed) transactions.
fn processed_and_failed(report: &str) -> (u64, u64) {
    (
        report_number(report, "number of transactions actually processed: "),
        report_number(report, "number of failed transactions: "),
    )
}

fn psql_value(port: u16, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-w",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGPASSFILE", pgpass())
        .output()
        .unwrap();
    assert!(out.status.success(), "psql: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// pgbench through pghalo: initialise, then the TPC-B-like write script in
/// simple, extended and prepared mode with 8 clients, then select-only with
/// a new connection per transaction. No transaction fails, every one that
/// pgbench counted is in pgbench_history exactly once, and the balances
/// add up, read through pghalo and on the primary alike.
#[test]
fn pgbench_through_pghalo_loses_nothing_and_stays_consistent() {
    let port = lab_proxy_port();
    pgbench(port, &["-i", "-s", "1", "-q"]);
    let mut committed = 0;
    for mode in ["simple", "extended", "prepared"] {
        // -n: no vacuum, so pgbench_history keeps every run's rows.
        let report = pgbench(port, &["-n", "-T", "5", "-c", "8", "-j", "2", "-M", mode]);
        let (processed, failed) = processed_and_failed(&report);
        assert_eq!(failed, 0, "-M {mode}:\n{report}");
        assert!(processed > 0, "-M {mode} did nothing:\n{report}");
        committed += processed;
    }
    let report = pgbench(port, &["-n", "-S", "-C", "-T", "3", "-c", "4", "-j", "2"]);
    let (processed, failed) = processed_and_failed(&report);
    assert_eq!(failed, 0, "-S -C:\n{report}");
    assert!(processed > 0, "-S -C did nothing:\n{report}");

    let check = "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || \
                 (SELECT sum(delta) FROM pgbench_history) || ' ' || \
                 (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || \
                 (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || \
                 (SELECT sum(tbalance) FROM pgbench_tellers)";
    let through = psql_value(port, check);
    let direct = psql_value(primary_port(), check);
    assert_eq!(through, direct, "through pghalo vs on the primary");
    let numbers: Vec<i64> = direct
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        numbers[0] as u64, committed,
        "history rows vs transactions pgbench counted"
    );
    assert!(
        numbers[1..].iter().all(|&sum| sum == numbers[1]),
        "sum(delta), sum(abalance), sum(bbalance), sum(tbalance) differ: {direct}"
    );
}
