//! The data path in session mode against a real lab: what clients see
//! through pghalo must be what they see on the primary itself.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::time::{Duration, Instant};

use common::{ProxyConfig, conninfo, pg_connect, shared_lab};
use pghalo::daemon::Daemon;

const TRUST_ALL: &str = "host all all 127.0.0.1/32 scram-sha-256\n";

fn proxy_port() -> u16 {
    shared_lab().lab.proxy("pghalo0").unwrap().port
}

fn password() -> String {
    shared_lab().lab.secrets.postgres.clone()
}

/// A statement list run on the primary and through pghalo, compared
/// result by result: rows (as text), command tags, SQLSTATEs.
#[tokio::test]
async fn simple_query_results_match_the_primary() {
    let lab = &shared_lab().lab;
    let direct = lab.connect("node0").await.unwrap();
    let proxied = pg_connect(&conninfo(proxy_port(), "postgres", &password()))
        .await
        .unwrap();
    let script = [
        "CREATE TEMP TABLE diff_simple (id int PRIMARY KEY, name text, at timestamptz DEFAULT '2026-01-01')",
        "INSERT INTO diff_simple VALUES (1, 'one'), (2, NULL)",
        "SELECT id, name, at FROM diff_simple ORDER BY id",
        "SELECT 1/0",
        "SELECT * FROM no_such_table",
        "SHOW server_version_num",
        "SELECT repeat('x', 100000) AS big",
        "",
        "BEGIN; SELECT 1; COMMIT",
        "DO $$ BEGIN RAISE NOTICE 'hello'; END $$",
    ];
    for sql in script {
        let a = outcome(direct.simple_query(sql).await);
        let b = outcome(proxied.simple_query(sql).await);
        assert_eq!(a, b, "different outcome for {sql:?}");
    }
}

fn outcome(
    result: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
) -> String {
    match result {
        Ok(messages) => messages
            .iter()
            .map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
                tokio_postgres::SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
                _ => "other".to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("error {:?}", e.code().map(|c| c.code().to_string())),
    }
}

/// Extended protocol, typed parameters, binary results, prepared statements.
#[tokio::test]
async fn extended_protocol_with_binary_results_matches_the_primary() {
    let lab = &shared_lab().lab;
    let direct = lab.connect("node0").await.unwrap();
    let proxied = pg_connect(&conninfo(proxy_port(), "postgres", &password()))
        .await
        .unwrap();
    for client in [&direct, &proxied] {
        let stmt = client
            .prepare("SELECT $1::int8 * 2, $2::text || '!', $3::float8, now() IS NOT NULL")
            .await
            .unwrap();
        for i in 0..50i64 {
            let row = client
                .query_one(&stmt, &[&i, &format!("n{i}"), &(i as f64 / 3.0)])
                .await
                .unwrap();
            let doubled: i64 = row.get(0);
            let text: String = row.get(1);
            let float: f64 = row.get(2);
            let flag: bool = row.get(3);
            assert_eq!(
                (doubled, text, float, flag),
                (i * 2, format!("n{i}!"), i as f64 / 3.0, true)
            );
        }
        let err = client
            .query_one("SELECT $1::int / 0", &[&1i32])
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "22012");
        // The session survives the error.
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_user_fail_alike() {
    let port = proxy_port();
    let wrong = pg_connect(&conninfo(port, "postgres", "not-the-password"))
        .await
        .err()
        .unwrap();
    let unknown = pg_connect(&conninfo(port, "no_such_user", "whatever"))
        .await
        .err()
        .unwrap();
    assert_eq!(wrong.code().unwrap().code(), "28P01");
    assert_eq!(unknown.code().unwrap().code(), "28P01");
    let text = |e: &tokio_postgres::Error| e.as_db_error().unwrap().message().to_string();
    assert_eq!(
        text(&wrong),
        "password authentication failed for user \"postgres\""
    );
    assert_eq!(
        text(&unknown),
        "password authentication failed for user \"no_such_user\""
    );
}

#[test]
fn psql_runs_copy_both_ways_through_pghalo() {
    let pgpass = shared_lab().lab.pgpass();
    let run = |args: &[&str], stdin: &str| {
        let out = common::psql(
            &pgpass,
            proxy_port(),
            "postgres",
            &[&["-v", "ON_ERROR_STOP=1"], args].concat(),
            stdin,
        );
        assert!(out.ok, "psql failed: {}", out.stderr);
        out.stdout
    };
    run(
        &[
            "-c",
            "DROP TABLE IF EXISTS copy_through; CREATE TABLE copy_through (id int, t text)",
        ],
        "",
    );
    let rows: String = (0..20_000).map(|i| format!("{i}\trow {i}\n")).collect();
    run(&["-c", "COPY copy_through FROM STDIN"], &rows);
    let out = run(
        &[
            "-c",
            "COPY (SELECT * FROM copy_through ORDER BY id) TO STDOUT",
        ],
        "",
    );
    assert_eq!(out, rows);
    // A COPY that fails half-way leaves the session usable.
    let failed = common::psql(
        &pgpass,
        proxy_port(),
        "postgres",
        &[
            "-c",
            "COPY copy_through FROM STDIN",
            "-c",
            "SELECT count(*) FROM copy_through",
        ],
        "1\tok\nnot-a-number\tbad\n",
    );
    assert!(
        failed
            .stderr
            .contains("invalid input syntax for type integer"),
        "{}",
        failed.stderr
    );
    assert_eq!(failed.stdout.trim(), "20000");
}

#[tokio::test]
async fn large_results_stream_through() {
    let proxied = pg_connect(&conninfo(proxy_port(), "postgres", &password()))
        .await
        .unwrap();
    let rows = proxied
        .simple_query("SELECT g, repeat('y', 200) FROM generate_series(1, 300000) g")
        .await
        .unwrap();
    let count = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(count, 300_000);
}

#[tokio::test]
async fn listen_notify_reaches_a_session_mode_client() {
    use futures_util::StreamExt;
    let (listener, mut connection) = tokio_postgres::connect(
        &conninfo(proxy_port(), "postgres", &password()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(stream.for_each(move |message| {
        if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
            let _ = tx.send(n.payload().to_string());
        }
        futures_util::future::ready(())
    }));
    listener
        .batch_execute("LISTEN pghalo_channel")
        .await
        .unwrap();
    let sender = pg_connect(&conninfo(proxy_port(), "postgres", &password()))
        .await
        .unwrap();
    sender
        .batch_execute("NOTIFY pghalo_channel, 'through the proxy'")
        .await
        .unwrap();
    let payload = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload, "through the proxy");
}

#[tokio::test]
async fn cancel_reaches_only_the_running_query() {
    let client = pg_connect(&conninfo(proxy_port(), "postgres", &password()))
        .await
        .unwrap();
    let bystander = pg_connect(&conninfo(proxy_port(), "postgres", &password()))
        .await
        .unwrap();
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    let other = tokio::spawn(async move {
        bystander
            .simple_query("SELECT pg_sleep(2), 'finished'")
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        other.await.unwrap().is_ok(),
        "the cancel must not reach another session"
    );
}

#[tokio::test]
async fn startup_parameters_reach_the_server() {
    let info = format!(
        "{} application_name=diffapp options='-c work_mem=12MB'",
        conninfo(proxy_port(), "postgres", &password())
    );
    let client = pg_connect(&info).await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('application_name'), current_setting('work_mem')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("diffapp".to_string(), "12MB".to_string())
    );
}

/// With one server connection for everyone, the second client gets the
/// first one's server process, reset: no settings, no temp table, no
/// open transaction.
#[tokio::test(flavor = "multi_thread")]
async fn released_connections_are_clean_for_the_next_client() {
    let lab = &shared_lab().lab;
    let config = ProxyConfig::write(
        lab,
        "reset",
        "",
        "max_pool_size = 1\ncheckout_timeout = \"5s\"",
        TRUST_ALL,
        None,
    );
    let daemon = Daemon::start(&config.path()).await.unwrap();
    let info = conninfo(config.port, "postgres", &password());

    let first = pg_connect(&info).await.unwrap();
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    first
        .batch_execute(
            "SET work_mem = '77MB'; CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1",
        )
        .await
        .unwrap();
    drop(first);

    let second = pg_connect(&info).await.unwrap();
    let row = second
        .query_one("SELECT pg_backend_pid(), current_setting('work_mem'), to_regclass('pg_temp.scratch') IS NULL, (SELECT count(*) FROM pg_prepared_statements WHERE name = 'p')", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        pid,
        "the pooled server connection is reused"
    );
    assert_eq!(row.get::<_, String>(1), "4MB");
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, i64>(3), 0);

    // A client that vanishes inside a transaction: its writes are rolled
    // back and the next client finds no transaction open.
    second
        .batch_execute("CREATE TABLE IF NOT EXISTS vanish (x int)")
        .await
        .unwrap();
    second
        .batch_execute("BEGIN; INSERT INTO vanish VALUES (1)")
        .await
        .unwrap();
    drop(second);
    let third = pg_connect(&info).await.unwrap();
    let row = third.query_one("SELECT pg_backend_pid(), (SELECT count(*) FROM vanish), pg_current_xact_id_if_assigned() IS NULL", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), pid);
    assert_eq!(row.get::<_, i64>(1), 0);
    assert!(row.get::<_, bool>(2), "no transaction may be open");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_pool_queues_then_fails_with_53300() {
    let lab = &shared_lab().lab;
    let config = ProxyConfig::write(
        lab,
        "exhaust",
        "",
        "max_pool_size = 1\ncheckout_timeout = \"1s\"",
        TRUST_ALL,
        None,
    );
    let _daemon = Daemon::start(&config.path()).await.unwrap();
    let info = conninfo(config.port, "postgres", &password());
    let holder = pg_connect(&info).await.unwrap();
    holder.batch_execute("SELECT 1").await.unwrap();
    let started = Instant::now();
    let err = pg_connect(&info).await.err().unwrap();
    assert_eq!(err.code().unwrap().code(), "53300");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the waiter waits checkout_timeout first"
    );
    // A waiter gets the connection once the holder leaves.
    let waiter = tokio::spawn({
        let info = info.clone();
        async move { pg_connect(&info).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(holder);
    assert!(waiter.await.unwrap().is_ok());
}

/// Many requests sent before any answer (tokio-postgres pipelines
/// concurrent queries on one connection): every answer comes back to the
/// right request, in order.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let client = pg_connect(&conninfo(proxy_port(), "postgres", &password()))
        .await
        .unwrap();
    let stmt = client
        .prepare("SELECT $1::int4 * 10, pg_sleep(0.001)::text")
        .await
        .unwrap();
    let queries = (0..200i32).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move { (i, client.query_one(stmt, &[&i]).await) }
    });
    for (i, result) in futures_util::future::join_all(queries).await {
        assert_eq!(result.unwrap().get::<_, i32>(0), i * 10);
    }
    // An error in the middle of a pipeline fails only its own request.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int4", &[]),
        client.query_one("SELECT 1/0", &[]),
        client.query_one("SELECT 3::int4", &[])
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().code().unwrap().code(), "22012");
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
}

/// libpq's large-object calls use the protocol's FunctionCall message.
#[test]
fn function_calls_work_through_pghalo() {
    let file = common::unique_dir("lo");
    std::fs::write(&file, b"large object through pghalo\n").unwrap();
    let script = format!(
        "\\lo_import {}\nSELECT convert_from(lo_get(:LASTOID), 'UTF8');\n",
        file.display()
    );
    let out = common::psql(
        &shared_lab().lab.pgpass(),
        proxy_port(),
        "postgres",
        &["-v", "ON_ERROR_STOP=1"],
        &script,
    );
    std::fs::remove_file(&file).unwrap();
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("large object through pghalo"),
        "{}",
        out.stdout
    );
}
