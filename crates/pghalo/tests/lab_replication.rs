//! A 3-node lab, as `lab init` + `lab start` leave it: real streaming
//! replication, the seed roles, SCRAM everywhere, and a pgpass that psql uses.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{eventually, pghalo, shared_lab};

#[tokio::test]
async fn primary_reports_one_streaming_row_per_standby() {
    let lab = &shared_lab().lab;
    let primary = lab.connect("node0").await.unwrap();
    let rows = primary
        .query(
            "SELECT application_name, state FROM pg_stat_replication ORDER BY application_name",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        seen,
        vec![
            ("node1".to_string(), "streaming".to_string()),
            ("node2".to_string(), "streaming".to_string())
        ]
    );
    let slots = primary
        .query(
            "SELECT slot_name FROM pg_replication_slots WHERE active ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let slots: Vec<String> = slots.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        slots,
        ["node1", "node2"],
        "each standby streams through its own physical slot"
    );
}

#[tokio::test]
async fn row_written_on_primary_is_readable_on_every_standby() {
    let lab = &shared_lab().lab;
    let primary = lab.connect("node0").await.unwrap();
    primary
        .batch_execute("CREATE TABLE replicated_row (id int PRIMARY KEY, note text); INSERT INTO replicated_row VALUES (1, 'from the primary')")
        .await
        .unwrap();
    for standby in ["node1", "node2"] {
        let client = lab.connect(standby).await.unwrap();
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(in_recovery, "{standby} must be a standby");
        let mut note = None;
        for _ in 0..100 {
            let rows = client
                .query("SELECT note FROM replicated_row WHERE id = 1", &[])
                .await;
            if let Some(row) = rows.ok().and_then(|rows| rows.into_iter().next()) {
                note = Some(row.get::<_, String>(0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            note.as_deref(),
            Some("from the primary"),
            "row not replicated to {standby}"
        );
        let write = client
            .batch_execute("INSERT INTO replicated_row VALUES (2, 'x')")
            .await
            .unwrap_err();
        assert_eq!(
            write.code().map(|c| c.code()),
            Some("25006"),
            "a standby refuses writes"
        );
    }
}

#[test]
fn status_json_describes_every_node() {
    let lab = shared_lab();
    let (ok, stdout, stderr) = pghalo(&[
        "lab",
        "status",
        "--json",
        "--dir",
        lab.dir().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node["name"], format!("node{i}"));
        assert_eq!(node["host"], "127.0.0.1");
        assert_eq!(
            node["port"].as_u64(),
            Some(u64::from(lab.lab.manifest.nodes[i].port))
        );
        assert!(node["pid"].as_i64().is_some());
        assert_eq!(node["role"], if i == 0 { "primary" } else { "standby" });
    }
    assert!(
        nodes[0]["current_lsn"]
            .as_str()
            .is_some_and(|l| l.contains('/'))
    );
    for standby in &nodes[1..] {
        assert_eq!(standby["replication"]["state"], "streaming");
        assert_eq!(standby["replication"]["sync_state"], "async");
        assert!(
            standby["replay_lsn"]
                .as_str()
                .is_some_and(|l| l.contains('/'))
        );
    }
    let (ok, table, _) = pghalo(&["lab", "status", "--dir", lab.dir().to_str().unwrap()]);
    assert!(ok);
    assert!(table.lines().next().unwrap().starts_with("node"));
    assert!(table.contains("streaming (async)"), "{table}");
}

#[test]
fn pgpass_lets_psql_reach_every_node_as_every_lab_user() {
    let lab = shared_lab();
    let pgpass = lab.lab.pgpass();
    let mode = std::fs::metadata(&pgpass).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "libpq ignores a pgpass readable by others");
    for node in &lab.lab.manifest.nodes {
        for user in ["postgres", "pghalo"] {
            let out = common::psql(&pgpass, node.port, user, &["-c", "SELECT current_user"], "");
            assert!(out.ok, "psql to {} as {user}: {}", node.name, out.stderr);
            assert_eq!(out.stdout.trim(), user);
        }
    }
}

#[tokio::test]
async fn roles_use_scram_and_tcp_requires_a_password() {
    let lab = &shared_lab().lab;
    let primary = lab.connect("node0").await.unwrap();
    let rows = primary
        .query(
            "SELECT rolname, rolsuper, rolreplication, rolcanlogin, rolpassword LIKE 'SCRAM-SHA-256$%', \
             pg_has_role(rolname, 'pg_monitor', 'MEMBER') \
             FROM pg_authid WHERE rolname IN ('postgres', 'repl', 'pghalo') ORDER BY rolname",
            &[],
        )
        .await
        .unwrap();
    let roles: Vec<(String, bool, bool, bool, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("pghalo".into(), false, false, true, true, true),
            ("postgres".into(), true, true, true, true, true),
            ("repl".into(), false, true, true, true, false),
        ]
    );
    let port = lab.manifest.nodes[0].port;
    let wrong = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres password=wrong dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("a wrong password must be refused");
    assert_eq!(wrong.code().map(|c| c.code()), Some("28P01"));
    let hba: Vec<(String, String)> = primary
        .query("SELECT type, auth_method FROM pg_hba_file_rules", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        !hba.is_empty() && hba.iter().all(|(_, m)| m == "scram-sha-256"),
        "{hba:?}"
    );
}

#[tokio::test]
async fn primary_is_ready_for_rewind_and_archives_wal() {
    let lab = &shared_lab().lab;
    let primary = lab.connect("node0").await.unwrap();
    for (setting, expected) in [
        ("wal_level", "replica"),
        ("wal_log_hints", "on"),
        ("hot_standby", "on"),
        ("archive_mode", "on"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
    ] {
        let value: String = primary
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(value, expected, "{setting}");
    }
    let segment: String = primary
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .unwrap()
        .get(0);
    primary
        .batch_execute("CREATE TABLE archive_probe AS SELECT 1 AS x; SELECT pg_switch_wal()")
        .await
        .unwrap();
    let archived = lab.dir().join("archive").join(&segment);
    assert!(
        eventually(Duration::from_secs(30), || archived.exists()),
        "{} was not archived",
        archived.display()
    );
}

#[test]
fn passwords_stay_in_private_files_and_out_of_logs() {
    let lab = shared_lab();
    let secrets = lab.dir().join("secrets.json");
    assert_eq!(
        std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let passwords = [
        &lab.lab.secrets.postgres,
        &lab.lab.secrets.repl,
        &lab.lab.secrets.pghalo,
    ];
    for entry in std::fs::read_dir(lab.dir().join("log")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for password in passwords {
            assert!(
                !text.contains(password.as_str()),
                "a password reached a server log"
            );
        }
    }
    let manifest = std::fs::read_to_string(lab.dir().join("lab.json")).unwrap();
    assert!(passwords.iter().all(|p| !manifest.contains(p.as_str())));
}
