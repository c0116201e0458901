//! `lab init --sync`: quorum synchronous replication over the standbys.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use common::TestLab;

#[tokio::test]
async fn sync_lab_reports_quorum_standbys() {
    let test_lab = TestLab::build("sync", |opts| opts.sync = true);
    let lab = &test_lab.lab;
    let primary = lab.connect("node0").await.unwrap();
    let names: String = primary
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(names, "ANY 1 (node1, node2)");
    let rows = primary
        .query(
            "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("node1".into(), "streaming".into(), "quorum".into()),
            ("node2".into(), "streaming".into(), "quorum".into()),
        ]
    );
    // A commit returns only once a standby has it: with both standbys
    // streaming it must not hang.
    let commit = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        primary.batch_execute("CREATE TABLE sync_probe (x int); INSERT INTO sync_probe VALUES (1)"),
    )
    .await;
    assert!(
        matches!(commit, Ok(Ok(()))),
        "synchronous commit did not complete: {commit:?}"
    );
    let status = lab.status().await.unwrap();
    assert!(
        status.nodes[1..].iter().all(|n| n
            .replication
            .as_ref()
            .and_then(|r| r.sync_state.as_deref())
            == Some("quorum"))
    );
}
