//! Read balancing against real servers: reads spread by backend weight, a
//! standby past delay_threshold gets none, read_your_writes keeps a
//! session's reads where its writes are, and SHOW POOL_NODES shows it all.
//!
//! One private lab for the file (these tests pause replay and delay it);
//! the tests take turns (`SERIAL`), each with its own database and its own
//! in-process pghalo. Where a read landed is told twice: by
//! `inet_server_port()`, and by pg_stat_statements on each node.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{
    TestLab, conninfo_db, eventually, monitor_section, node_client, pg_connect, pgpass_for, psql,
    routing_config, wait_for_replay, wait_for_topology,
};
use pghalo::cluster::NodeId;
use pghalo::daemon::Daemon;
use pghalo::lab::Lab;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

const NODES: [&str; 3] = ["node0", "node1", "node2"];

/// pgpool 4.5's SHOW POOL_NODES columns.
const POOL_NODES_COLUMNS: [&str; 14] = [
    "node_id",
    "hostname",
    "port",
    "status",
    "pg_status",
    "lb_weight",
    "role",
    "pg_role",
    "select_cnt",
    "load_balance_node",
    "replication_delay",
    "replication_state",
    "replication_sync_state",
    "last_status_change",
];

/// The tests take turns: they pause and delay replay on the shared lab.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lab() -> &'static Lab {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    static LAB: OnceLock<TestLab> = OnceLock::new();
    &LAB.get_or_init(|| TestLab::build("route-balance", |_| {}))
        .lab
}

fn password() -> String {
    lab().secrets.postgres.clone()
}

/// A fresh database `db` on the primary, pg_stat_statements readable from
/// the postgres database, every standby caught up.
async fn prepare(db: &str, setup: &str) {
    let lab = lab();
    wait_for_replay(lab, Duration::from_secs(60)).await;
    let admin = node_client(lab, "node0", "postgres").await;
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    if !setup.is_empty() {
        node_client(lab, "node0", db)
            .await
            .batch_execute(setup)
            .await
            .unwrap();
    }
    wait_for_replay(lab, Duration::from_secs(60)).await;
}

/// Per node: the calls pg_stat_statements counts in `db` for statements
/// whose text is LIKE `pattern`.
async fn calls(db: &str, pattern: &str) -> [i64; 3] {
    let mut out = [0; 3];
    for (i, node) in NODES.iter().enumerate() {
        let client = node_client(lab(), node, "postgres").await;
        out[i] = client
            .query_one(
                "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1) AND query LIKE $2",
                &[&db, &pattern],
            )
            .await
            .unwrap()
            .get(0);
    }
    out
}

/// The node index of a lab port.
fn node_of_port(port: &str) -> usize {
    let port: u16 = port.parse().unwrap();
    lab()
        .manifest
        .nodes
        .iter()
        .position(|n| n.port == port)
        .unwrap_or_else(|| panic!("port {port} is no lab node"))
}

/// Sends `count` times `sql` (one row whose first column is
/// inet_server_port()) through `client`; returns how many landed on each
/// node.
async fn count_reads(client: &Client, sql: &str, count: usize) -> [i64; 3] {
    let mut landed = [0; 3];
    for _ in 0..count {
        let messages = client.simple_query(sql).await.unwrap();
        let port = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap();
        landed[node_of_port(&port)] += 1;
    }
    landed
}

/// A fresh database `db` and an in-process pghalo balancing every
/// statement over the lab's nodes (with `weights`), the monitor's topology
/// known.
async fn statement_balanced_proxy(
    db: &str,
    tag: &str,
    weights: &[f64],
) -> (common::ProxyConfig, Daemon) {
    let lab = lab();
    prepare(db, "").await;
    let sections = format!(
        "[load_balance]\nstatement_level_load_balance = true\n\n{}",
        monitor_section(lab, "")
    );
    let config = routing_config(lab, tag, &sections, weights);
    let daemon = Daemon::start(&config.path()).await.unwrap();
    wait_for_topology(&daemon, Duration::from_secs(30)).await;
    (config, daemon)
}

async fn proxy_client(port: u16, db: &str) -> Client {
    pg_connect(&conninfo_db(port, "postgres", &password(), db))
        .await
        .unwrap()
}

fn sub(a: [i64; 3], b: [i64; 3]) -> [i64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// Runs psql commands against `node` as postgres, when dropped: undoes
/// what a test did to a server, pass or fail.
struct Undo {
    node: &'static str,
    commands: Vec<&'static str>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        let lab = lab();
        let port = lab.node(self.node).unwrap().port;
        let mut args = Vec::new();
        for c in &self.commands {
            args.push("-c");
            args.push(c);
        }
        let out = psql(&lab.pgpass(), port, "postgres", &args, "");
        if !out.ok {
            eprintln!(
                "undoing {:?} on {} failed: {}",
                self.commands, self.node, out.stderr
            );
        }
    }
}

/// a) With weights 1, 2, 1 and statement-level balancing, 10,000 reads of
/// one session land on each node in proportion to its weight (±10%
/// relative), the primary included; pg_stat_statements agrees.
#[tokio::test(flavor = "multi_thread")]
async fn reads_spread_over_the_nodes_by_weight() {
    let _turn = SERIAL.lock().await;
    let weights = [1.0, 2.0, 1.0];
    let (config, daemon) =
        statement_balanced_proxy("balance_weights", "balance-weights", &weights).await;

    let pattern = "SELECT inet_server_port() -- weights%";
    let before = calls("balance_weights", pattern).await;
    let client = proxy_client(config.port, "balance_weights").await;
    let total = 10_000;
    let started = Instant::now();
    let landed = count_reads(&client, "SELECT inet_server_port() -- weights", total).await;
    let elapsed = started.elapsed();
    let counted = sub(calls("balance_weights", pattern).await, before);
    eprintln!(
        "{total} reads in {elapsed:.1?}: by port {landed:?}, by pg_stat_statements {counted:?}"
    );

    assert_eq!(
        landed, counted,
        "inet_server_port() and pg_stat_statements disagree on where the reads went"
    );
    let sum: f64 = weights.iter().sum();
    for (i, &w) in weights.iter().enumerate() {
        let expected = w / sum;
        let share = landed[i] as f64 / total as f64;
        assert!(
            (share - expected).abs() <= expected * 0.10,
            "{} (weight {w}) got {:.1}% of the reads, expected {:.1}% ±10%: {landed:?}",
            NODES[i],
            share * 100.0,
            expected * 100.0
        );
    }
    daemon.stop();
}

/// With standard_conforming_strings off the server reads a statement's
/// text differently from pghalo, which could not see every SET to replay
/// it on the standbys: such a session's reads stay on the primary.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_pghalo_cannot_read_stays_on_the_primary() {
    let _turn = SERIAL.lock().await;
    let lab = lab();
    let (config, daemon) =
        statement_balanced_proxy("balance_unreadable", "balance-unreadable", &[]).await;
    let info = conninfo_db(config.port, "postgres", &password(), "balance_unreadable");
    let read = "SELECT inet_server_port()";

    let plain = pg_connect(&info).await.unwrap();
    let landed = count_reads(&plain, read, 60).await;
    assert!(
        landed[1] + landed[2] > 0,
        "no read was balanced: {landed:?}"
    );

    let at_login = pg_connect(&format!(
        "{info} options='-c standard_conforming_strings=off'"
    ))
    .await
    .unwrap();
    let landed = count_reads(&at_login, read, 60).await;
    assert_eq!(landed, [60, 0, 0], "set at login");

    // Set by a function, where pghalo cannot see it.
    node_client(lab, "node0", "balance_unreadable")
        .await
        .batch_execute(
            "CREATE FUNCTION scs_off() RETURNS int LANGUAGE plpgsql AS \
             $$BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); RETURN 1; END$$",
        )
        .await
        .unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;
    let later = pg_connect(&info).await.unwrap();
    later.simple_query("SELECT scs_off()").await.unwrap();
    let landed = count_reads(&later, read, 60).await;
    assert_eq!(landed, [60, 0, 0], "set by a function");

    // Set by the client: the SET itself runs on the primary, where the
    // rest of the session goes, not on the standby it would have been
    // balanced to.
    for _ in 0..10 {
        let client = pg_connect(&info).await.unwrap();
        client
            .simple_query("SET standard_conforming_strings = off")
            .await
            .unwrap();
        for _ in 0..5 {
            let row = client
                .query_one(
                    "SELECT current_setting('standard_conforming_strings'), inet_server_port()",
                    &[],
                )
                .await
                .unwrap();
            let (value, port): (String, i32) = (row.get(0), row.get(1));
            assert_eq!(
                (value.as_str(), node_of_port(&port.to_string())),
                ("off", 0),
                "after the client's SET"
            );
        }
    }
    daemon.stop();
}

/// Session state only the primary will keep (SET ROLE pins the session
/// there) is refused inside a transaction running on a standby: after it,
/// the session would go on on the primary without it.
#[tokio::test(flavor = "multi_thread")]
async fn pinning_state_inside_a_transaction_on_a_standby_is_refused() {
    let _turn = SERIAL.lock().await;
    let (config, daemon) =
        statement_balanced_proxy("balance_pin_in_tx", "balance-pin-in-tx", &[]).await;
    let info = conninfo_db(config.port, "postgres", &password(), "balance_pin_in_tx");
    let client = pg_connect(&info).await.unwrap();
    let mut on_standby = false;
    for _ in 0..100 {
        client.batch_execute("BEGIN READ ONLY").await.unwrap();
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        if node_of_port(&port.to_string()) != 0 {
            on_standby = true;
            break;
        }
        client.batch_execute("COMMIT").await.unwrap();
    }
    assert!(on_standby, "no read-only transaction landed on a standby");
    let err = client
        .batch_execute("SET ROLE pg_monitor")
        .await
        .expect_err("SET ROLE ran in a transaction on a standby");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err:?}");
    // The block is aborted, as a failed statement aborts it.
    let aborted = client.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        aborted.code().map(|c| c.code()),
        Some("25P02"),
        "{aborted:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    // Outside a transaction it runs, on the primary, and stays there.
    client.batch_execute("SET ROLE pg_monitor").await.unwrap();
    for _ in 0..10 {
        let row = client
            .query_one("SELECT current_user::text, inet_server_port()", &[])
            .await
            .unwrap();
        let (user, port): (String, i32) = (row.get(0), row.get(1));
        assert_eq!(
            (user.as_str(), node_of_port(&port.to_string())),
            ("pg_monitor", 0)
        );
    }

    // Pipelined behind a BEGIN READ ONLY that went to a standby, the SET
    // ROLE was planned for the primary while no transaction was open yet;
    // it waited for a move that never came. It belongs to the transaction.
    let mut refused = false;
    for _ in 0..100 {
        // A new session each time: where the BEGIN went to the primary,
        // the SET ROLE ran there, and pghalo (which had not seen the
        // transaction open yet) keeps that session on the primary.
        let client = pg_connect(&info).await.unwrap();
        let (begin, set) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                client.batch_execute("BEGIN READ ONLY"),
                client.batch_execute("SET ROLE pg_monitor")
            )
        })
        .await
        .expect("a request pipelined behind BEGIN READ ONLY hangs");
        begin.unwrap();
        client.batch_execute("ROLLBACK").await.unwrap();
        if let Err(e) = set {
            assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e:?}");
            refused = true;
            break;
        }
    }
    assert!(refused, "no pipelined BEGIN READ ONLY landed on a standby");
    daemon.stop();
}

/// With both function lists empty, pg_proc decides: a user-defined
/// STABLE function created through pghalo is balanced once pghalo has read
/// the catalog again (after the DDL), while a VOLATILE one, and the
/// functions before they exist, stay on the primary.
#[tokio::test(flavor = "multi_thread")]
async fn user_functions_are_judged_by_pg_proc() {
    let _turn = SERIAL.lock().await;
    let lab = lab();
    let (config, daemon) =
        statement_balanced_proxy("balance_functions", "balance-functions", &[]).await;
    let client = proxy_client(config.port, "balance_functions").await;
    client
        .batch_execute(
            "CREATE FUNCTION port_stable() RETURNS text LANGUAGE sql STABLE \
               AS $$ SELECT inet_server_port()::text $$; \
             CREATE FUNCTION port_volatile() RETURNS text LANGUAGE sql VOLATILE \
               AS $$ SELECT inet_server_port()::text $$;",
        )
        .await
        .unwrap();
    // The DDL above was one multi-statement string: a second one, alone,
    // is what sessions usually send, and what asks for a catalog read.
    client
        .batch_execute("COMMENT ON FUNCTION port_stable() IS 'balanced'")
        .await
        .unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stable = [0; 3];
    while Instant::now() < deadline && stable[1] + stable[2] == 0 {
        stable = count_reads(&client, "SELECT port_stable()", 30).await;
    }
    let volatile = count_reads(&client, "SELECT port_volatile()", 300).await;
    eprintln!("stable {stable:?}, volatile {volatile:?}");
    assert!(
        stable[1] + stable[2] > 0,
        "a STABLE user function never reached a standby: {stable:?}"
    );
    assert_eq!(
        volatile,
        [300, 0, 0],
        "a VOLATILE user function must stay on the primary"
    );
    daemon.stop();
}

/// b) A standby whose replay is paused falls past delay_threshold (64kB)
/// once the primary writes a few MB: it gets none of 1,000 reads, the
/// primary and the other standby get them.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_past_delay_threshold_gets_no_reads() {
    let _turn = SERIAL.lock().await;
    let lab = lab();
    prepare("balance_delay", "CREATE TABLE filler (x text)").await;
    let sections = format!(
        "[load_balance]\nstatement_level_load_balance = true\n\n{}",
        monitor_section(lab, "delay_threshold = \"64kB\"")
    );
    let config = routing_config(lab, "balance-delay", &sections, &[]);
    let daemon = Daemon::start(&config.path()).await.unwrap();
    wait_for_topology(&daemon, Duration::from_secs(30)).await;
    let limit = 64 * 1024;
    let view = daemon.cluster().view();
    let lag = |s: &pghalo::cluster::ClusterSnapshot, i: usize| s.nodes[i].lag_bytes;
    view.wait_for(Duration::from_secs(20), |s| {
        (1..3).all(|i| lag(s, i).is_some_and(|l| l <= limit))
    })
    .await
    .unwrap_or_else(|s| panic!("the standbys never looked caught up: {s:?}"));

    let _resume = Undo {
        node: "node1",
        commands: vec!["SELECT pg_wal_replay_resume()"],
    };
    node_client(lab, "node1", "postgres")
        .await
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    node_client(lab, "node0", "balance_delay")
        .await
        .batch_execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 4000)")
        .await
        .unwrap();
    let seen = view
        .wait_for(Duration::from_secs(20), |s| {
            lag(s, 1).is_some_and(|l| l > limit) && lag(s, 2).is_some_and(|l| l <= limit)
        })
        .await
        .unwrap_or_else(|s| {
            panic!("the monitor never saw node1 behind and node2 caught up: {s:?}")
        });
    eprintln!(
        "lag seen by the monitor: node1 {:?} bytes, node2 {:?} bytes",
        lag(&seen, 1),
        lag(&seen, 2)
    );

    // SHOW POOL_NODES says so too: replication_delay in bytes (no
    // delay_threshold_by_time), node1's past the threshold.
    let pgpass = pgpass_for(&config.dir, config.port, "postgres", &password());
    let shown = show_pool_nodes_psql(&pgpass, config.port);
    assert!(
        shown.len() == 3 && number(&shown[1][10]) > limit as f64,
        "SHOW POOL_NODES should show node1's replication_delay past {limit}: {shown:?}"
    );
    assert!(
        number(&shown[2][10]) <= limit as f64,
        "SHOW POOL_NODES should show node2 caught up: {shown:?}"
    );

    let pattern = "SELECT inet_server_port() -- delay%";
    let before = calls("balance_delay", pattern).await;
    let client = proxy_client(config.port, "balance_delay").await;
    let landed = count_reads(&client, "SELECT inet_server_port() -- delay", 1_000).await;
    let counted = sub(calls("balance_delay", pattern).await, before);
    eprintln!(
        "1000 reads with node1 behind: by port {landed:?}, by pg_stat_statements {counted:?}"
    );
    let still = daemon.cluster().view().snapshot();
    assert!(
        lag(&still, 1).is_some_and(|l| l > limit),
        "node1 caught up during the reads (replay should be paused): {:?}",
        lag(&still, 1)
    );
    assert_eq!(
        landed[1], 0,
        "node1 is past delay_threshold but got reads: {landed:?}"
    );
    assert_eq!(
        counted[1], 0,
        "pg_stat_statements shows reads on node1: {counted:?}"
    );
    assert!(
        landed[0] > 0 && landed[2] > 0,
        "the primary and node2 should share the reads: {landed:?}"
    );
    assert_eq!(landed, counted);
    daemon.stop();
}

/// c) read_your_writes: with both standbys applying WAL 2 s late, 1,000
/// rounds of UPDATE then SELECT in one session always read the value just
/// written; once the standbys have replayed the session's last write, its
/// reads go to them again. (The node is told by inet_server_port(), which
/// is stable: pg_is_in_recovery() is volatile, so never balanced.)
#[tokio::test(flavor = "multi_thread")]
async fn a_session_reads_its_own_writes() {
    let _turn = SERIAL.lock().await;
    let lab = lab();
    prepare(
        "balance_ryw",
        "CREATE TABLE rw (id int PRIMARY KEY, v int); INSERT INTO rw VALUES (1, 0)",
    )
    .await;
    let mut undo = Vec::new();
    for node in ["node1", "node2"] {
        undo.push(Undo {
            node,
            commands: vec![
                "ALTER SYSTEM RESET recovery_min_apply_delay",
                "SELECT pg_reload_conf()",
            ],
        });
        let client = node_client(lab, node, "postgres").await;
        client
            .batch_execute("ALTER SYSTEM SET recovery_min_apply_delay = '2s'")
            .await
            .unwrap();
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
    }
    for node in ["node1", "node2"] {
        let port = lab.node(node).unwrap().port;
        assert!(
            eventually(Duration::from_secs(10), || {
                let out = psql(
                    &lab.pgpass(),
                    port,
                    "postgres",
                    &["-c", "SHOW recovery_min_apply_delay"],
                    "",
                );
                out.stdout.trim() == "2s"
            }),
            "{node} did not take recovery_min_apply_delay"
        );
    }

    let sections = format!(
        "[load_balance]\nstatement_level_load_balance = true\nread_your_writes = true\n\n{}",
        monitor_section(lab, "")
    );
    let config = routing_config(lab, "balance-ryw", &sections, &[]);
    let daemon = Daemon::start(&config.path()).await.unwrap();
    wait_for_topology(&daemon, Duration::from_secs(30)).await;
    let client = proxy_client(config.port, "balance_ryw").await;

    let rounds = 1_000;
    let started = Instant::now();
    let mut stale = Vec::new();
    let mut on_standby = 0;
    for i in 1..=rounds {
        client
            .simple_query(&format!("UPDATE rw SET v = {i} WHERE id = 1"))
            .await
            .unwrap();
        let row = client
            .query_one("SELECT v, inet_server_port() FROM rw WHERE id = 1", &[])
            .await
            .unwrap();
        let v: i32 = row.get(0);
        let node = NODES[node_of_port(&row.get::<_, i32>(1).to_string())];
        if node != "node0" {
            on_standby += 1;
        }
        if v != i {
            stale.push((i, v, node));
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{rounds} write-then-read rounds in {elapsed:.1?}; reads on a standby: {on_standby}; stale: {}",
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "{} reads missed the session's own write (round, value read, node): {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );

    // Once the standbys have replayed the last write (2 s apply delay, a
    // monitor check every 200 ms), reads spread again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut reached = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reached && Instant::now() < deadline {
        let row = client
            .query_one("SELECT v, inet_server_port() FROM rw WHERE id = 1", &[])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            rounds,
            "a stale read after the catch-up"
        );
        reached = node_of_port(&row.get::<_, i32>(1).to_string()) != 0;
    }
    if !reached {
        let primary_lsn: String = node_client(lab, "node0", "postgres")
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let snapshot = daemon.cluster().snapshot();
        let seen: Vec<String> = snapshot
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{}: replay {:?} current {:?}",
                    n.name, n.lsn.replay, n.lsn.current
                )
            })
            .collect();
        panic!(
            "10 s after the standbys caught up, no read of the session reached a standby \
             (primary now at {primary_lsn}; the monitor saw {seen:?})"
        );
    }
    daemon.stop();
    drop(undo);
}

/// One SHOW POOL_NODES row, as text.
type PoolRow = Vec<String>;

fn show_pool_nodes_psql(pgpass: &Path, port: u16) -> Vec<PoolRow> {
    let out = psql(pgpass, port, "postgres", &["-c", "SHOW POOL_NODES"], "");
    assert!(out.ok, "psql SHOW POOL_NODES failed: {}", out.stderr);
    out.stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Any value, as text (SHOW POOL_NODES should send text; the binary forms
/// of the integer types are read too, should pghalo declare them).
struct AsText(String);

impl<'a> FromSql<'a> for AsText {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = match *ty {
            Type::INT2 => i16::from_sql(ty, raw)?.to_string(),
            Type::INT4 => i32::from_sql(ty, raw)?.to_string(),
            Type::INT8 => i64::from_sql(ty, raw)?.to_string(),
            Type::BOOL => bool::from_sql(ty, raw)?.to_string(),
            _ => String::from_utf8_lossy(raw).into_owned(),
        };
        Ok(AsText(text))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn number(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {text:?}"))
}

/// d) SHOW POOL_NODES, answered by pghalo over the simple and the extended
/// protocol: pgpool's columns, one row per node with its role, status,
/// weight and replication delay; select_cnt grows with the reads.
#[tokio::test(flavor = "multi_thread")]
async fn show_pool_nodes_lists_every_node() {
    let _turn = SERIAL.lock().await;
    let lab = lab();
    let weights = [1.0, 2.0, 1.0];
    let (config, daemon) = statement_balanced_proxy("balance_show", "balance-show", &weights).await;
    let pgpass = pgpass_for(&config.dir, config.port, "postgres", &password());

    let rows = show_pool_nodes_psql(&pgpass, config.port);
    assert_eq!(rows.len(), 3, "one row per node: {rows:?}");
    let weight_sum: f64 = weights.iter().sum();
    let shown_sum: f64 = rows.iter().map(|r| number(&r[5])).sum();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), POOL_NODES_COLUMNS.len(), "columns of {row:?}");
        let node = &lab.manifest.nodes[i];
        assert_eq!(row[0], i.to_string(), "node_id: {row:?}");
        assert_eq!(row[1], "127.0.0.1", "hostname: {row:?}");
        assert_eq!(row[2], node.port.to_string(), "port: {row:?}");
        assert_eq!(row[3], "up", "status: {row:?}");
        assert_eq!(row[4], "up", "pg_status: {row:?}");
        // pgpool shows the weight normalised (weight / sum); compare shares.
        let share = number(&row[5]) / shown_sum;
        assert!(
            (share - weights[i] / weight_sum).abs() < 0.001,
            "lb_weight of {}: {} (of {shown_sum}), configured {} (of {weight_sum}): {rows:?}",
            node.name,
            row[5],
            weights[i],
        );
        let role = if i == 0 { "primary" } else { "standby" };
        assert_eq!(row[6], role, "role: {row:?}");
        assert_eq!(row[7], role, "pg_role: {row:?}");
        assert!(
            number(&row[10]) >= 0.0,
            "replication_delay of {}: {row:?}",
            node.name
        );
        if i == 0 {
            assert_eq!(
                number(&row[10]),
                0.0,
                "the primary's replication_delay: {row:?}"
            );
        }
    }

    let client = proxy_client(config.port, "balance_show").await;
    let reads = 300;
    let landed = count_reads(&client, "SELECT inet_server_port()", reads).await;
    let after = show_pool_nodes_psql(&pgpass, config.port);
    let grown: Vec<i64> = (0..3)
        .map(|i| after[i][8].parse::<i64>().unwrap() - rows[i][8].parse::<i64>().unwrap())
        .collect();
    eprintln!("{reads} reads landed {landed:?}; select_cnt grew by {grown:?}");
    for i in 0..3 {
        assert!(
            grown[i] >= landed[i] && (landed[i] == 0 || grown[i] > 0),
            "select_cnt of {} grew by {} but {} reads landed there",
            NODES[i],
            grown[i],
            landed[i]
        );
    }

    // The same rows over the extended protocol and tokio-postgres' simple
    // query; load_balance_node is per session and replication_delay moves.
    let comparable = |row: &PoolRow| -> Vec<String> {
        row.iter()
            .enumerate()
            .filter(|(c, _)| ![9, 10].contains(c))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let extended = client.query("SHOW POOL_NODES", &[]).await.unwrap();
    let names: Vec<&str> = extended
        .first()
        .map(|r| r.columns().iter().map(|c| c.name()).collect())
        .unwrap_or_default();
    assert_eq!(
        names, POOL_NODES_COLUMNS,
        "column names over the extended protocol"
    );
    let extended: Vec<PoolRow> = extended
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.get::<_, Option<AsText>>(i)
                        .map(|t| t.0)
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    let simple: Vec<PoolRow> = client
        .simple_query("SHOW POOL_NODES")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let again = show_pool_nodes_psql(&pgpass, config.port);
    for (how, got) in [("extended", &extended), ("simple", &simple)] {
        assert_eq!(
            got.iter().map(comparable).collect::<Vec<_>>(),
            again.iter().map(comparable).collect::<Vec<_>>(),
            "SHOW POOL_NODES over the {how} protocol differs from psql's"
        );
    }
    // The primary is known to the cluster as node 0 throughout.
    assert_eq!(daemon.cluster().snapshot().primary, Some(NodeId(0)));
    let map: HashMap<&str, &str> = POOL_NODES_COLUMNS
        .iter()
        .copied()
        .zip(again[1].iter().map(String::as_str))
        .collect();
    eprintln!("SHOW POOL_NODES, node1: {map:?}");
    daemon.stop();
}

/// Some drivers (pgx's describe-exec mode) prepare the unnamed statement
/// in one segment (Parse, Describe, Sync) and bind it in the next; a Bind
/// with large parameters arrives in pieces. It must still go where the
/// statement was prepared, never to another node (which lacks it, or
/// worse, has an unnamed statement of its own).
#[tokio::test(flavor = "multi_thread")]
async fn a_large_bind_of_the_unnamed_statement_follows_it() {
    let _turn = SERIAL.lock().await;
    let (config, daemon) = common::trusting_balanced_proxy(lab(), "balance-large-bind").await;
    let prepare = common::prepare_unnamed("SELECT inet_server_port(), length($1::text)");
    let large = "x".repeat(200_000);
    let mut bind = b"\0\0\0\0\0\x01".to_vec();
    bind.extend_from_slice(&(large.len() as i32).to_be_bytes());
    bind.extend_from_slice(large.as_bytes());
    bind.extend_from_slice(b"\0\0");
    let mut execute = common::frontend_message(b'B', &bind);
    execute.extend(common::frontend_message(b'E', b"\0\0\0\0\0"));
    execute.extend(common::frontend_message(b'S', b""));
    let mut landed = [0; 3];
    for _ in 0..30 {
        // A new session each time: once a session has read a large
        // message its reads are large too, and the Bind arrives whole.
        let mut client = common::RawClient::login(config.port).await;
        // A read first: balanced, it moves the session; a segment that
        // runs nothing (Parse, Describe) stays where the session is.
        client.send(&common::query_message("SELECT 1")).await;
        client.until_ready().await;
        client.send(&prepare).await;
        client.until_ready().await;
        client.send(&execute).await;
        let row = common::first_row(&client.until_ready().await);
        assert_eq!(row[1], "200000", "{row:?}");
        landed[node_of_port(&row[0])] += 1;
    }
    assert!(
        landed[1] + landed[2] > 0,
        "no read was balanced: {landed:?}"
    );
    daemon.stop();
}
