//! Sessions follow the topology the replication monitor publishes, not the
//! order of the `[[backend]]` entries.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::time::Duration;

use common::{ProxyConfig, conninfo, pg_connect, shared_lab};
use pghalo::cluster::NodeId;
use pghalo::daemon::Daemon;

#[tokio::test(flavor = "multi_thread")]
async fn sessions_go_to_the_primary_the_monitor_found() {
    let lab = &shared_lab().lab;
    // Written by the harness with node0 first; rewrite the backends with a
    // standby first, so the configured order would pick the wrong node.
    let config = ProxyConfig::write(
        lab,
        "topology",
        "",
        "",
        "host all all 127.0.0.1/32 scram-sha-256\n",
        None,
    );
    let text = std::fs::read_to_string(config.path()).unwrap();
    let head = &text[..text.find("[[backend]]").unwrap()];
    let backend = |name: &str| {
        let node = lab.node(name).unwrap();
        format!(
            "[[backend]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {}\n\n",
            node.port
        )
    };
    let monitor = format!(
        "[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"{}\"\nsr_check_period = \"200ms\"\nsr_check_timeout = \"2s\"\n\n",
        lab.secrets.pghalo
    );
    std::fs::write(
        config.path(),
        format!(
            "{head}{monitor}{}{}{}",
            backend("node1"),
            backend("node0"),
            backend("node2")
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config.path()).await.unwrap();

    let found = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(20), |s| s.primary.is_some())
        .await;
    assert_eq!(
        found.unwrap().primary,
        Some(NodeId(1)),
        "node0 is the second backend entry"
    );

    let client = pg_connect(&conninfo(config.port, "postgres", &lab.secrets.postgres))
        .await
        .unwrap();
    let row = client
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "a session landed on a standby");
    assert_eq!(
        row.get::<_, i32>(1),
        i32::from(lab.node("node0").unwrap().port)
    );
    client.batch_execute("CREATE TABLE IF NOT EXISTS topology_probe (x int); INSERT INTO topology_probe VALUES (1)").await.unwrap();
}
