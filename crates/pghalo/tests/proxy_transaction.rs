//! Transaction pooling: many clients share few server connections, a
//! connection changes hands only between transactions, and nothing of one
//! client's session reaches another.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use common::{ProxyConfig, conninfo, pg_connect, shared_lab};
use pghalo::daemon::Daemon;
use std::collections::HashSet;

const SCRAM_ALL: &str = "host all all 127.0.0.1/32 scram-sha-256\n";

async fn transaction_proxy(tag: &str, pool: usize) -> (Daemon, ProxyConfig) {
    let lab = &shared_lab().lab;
    let extra =
        format!("mode = \"transaction\"\nmax_pool_size = {pool}\ncheckout_timeout = \"20s\"");
    let config = ProxyConfig::write(lab, tag, "", &extra, SCRAM_ALL, None);
    let daemon = Daemon::start(&config.path()).await.unwrap();
    (daemon, config)
}

fn password() -> String {
    shared_lab().lab.secrets.postgres.clone()
}

/// 24 clients, each with its own named prepared statements, on 2 server
/// connections: every statement runs, on at most 2 server processes.
#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_work_across_shared_server_connections() {
    let (_daemon, config) = transaction_proxy("tx-prepared", 2).await;
    let info = conninfo(config.port, "postgres", &password());
    let mut tasks = Vec::new();
    for client_no in 0..24i64 {
        let info = info.clone();
        tasks.push(tokio::spawn(async move {
            let client = pg_connect(&info).await.unwrap();
            let add = client
                .prepare("SELECT $1::int8 + $2::int8, pg_backend_pid()")
                .await
                .unwrap();
            let echo = client.prepare("SELECT $1::text").await.unwrap();
            let mut pids = HashSet::new();
            for i in 0..40i64 {
                let row = client.query_one(&add, &[&client_no, &i]).await.unwrap();
                assert_eq!(row.get::<_, i64>(0), client_no + i);
                pids.insert(row.get::<_, i32>(1));
                let text: String = client
                    .query_one(&echo, &[&format!("c{client_no}-{i}")])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(text, format!("c{client_no}-{i}"));
            }
            pids
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert!(
        !all.is_empty() && all.len() <= 2,
        "24 clients ran on {} server processes",
        all.len()
    );
}

/// An open transaction keeps its server connection; others use the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_keeps_its_connection_until_it_ends() {
    let (_daemon, config) = transaction_proxy("tx-hold", 2).await;
    let info = conninfo(config.port, "postgres", &password());
    let holder = pg_connect(&info).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let held: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let other = pg_connect(&info).await.unwrap();
    for _ in 0..10 {
        let pid: i32 = other
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(
            pid, held,
            "a connection inside a transaction was handed to another client"
        );
    }
    let again: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, held);
    holder.batch_execute("COMMIT").await.unwrap();
}

/// Session SETs follow the client to whatever connection it gets, and
/// never reach another client; a SET in a rolled-back transaction is
/// forgotten, as PostgreSQL forgets it.
#[tokio::test(flavor = "multi_thread")]
async fn session_settings_follow_their_client_only() {
    let (_daemon, config) = transaction_proxy("tx-set", 1).await;
    let info = conninfo(config.port, "postgres", &password());
    let setter = pg_connect(&format!("{info} application_name=setter"))
        .await
        .unwrap();
    let other = pg_connect(&info).await.unwrap();
    setter
        .batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    for _ in 0..3 {
        let mine: String = setter
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(mine, "1234ms");
        let theirs = other
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('application_name')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            theirs.get::<_, String>(0),
            "0",
            "one client's SET reached another"
        );
        assert_eq!(
            theirs.get::<_, String>(1),
            "",
            "one client's application_name reached another"
        );
        let name: String = setter
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "setter");
    }
    setter
        .batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK")
        .await
        .unwrap();
    other.batch_execute("SELECT 1").await.unwrap();
    let work_mem: String = setter.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(work_mem, "4MB");
    setter
        .batch_execute("BEGIN; SET work_mem = '9MB'; COMMIT")
        .await
        .unwrap();
    other.batch_execute("SELECT 1").await.unwrap();
    let work_mem: String = setter.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(work_mem, "9MB");
    setter.batch_execute("RESET ALL").await.unwrap();
    other.batch_execute("SELECT 1").await.unwrap();
    let row = setter
        .query_one(
            "SELECT current_setting('work_mem'), current_setting('statement_timeout')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("4MB".into(), "0".into())
    );
}

/// Session state that cannot follow a client is refused, clearly, and the
/// session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn state_that_cannot_follow_the_client_is_refused() {
    let (_daemon, config) = transaction_proxy("tx-refuse", 2).await;
    let client = pg_connect(&conninfo(config.port, "postgres", &password()))
        .await
        .unwrap();
    for sql in [
        "PREPARE p AS SELECT 1",
        "LISTEN somewhere",
        "CREATE TEMP TABLE t (x int)",
        "SELECT set_config('a.b', 'c', false)",
        // PostgreSQL ends a `--` comment at a carriage return too.
        "-- a comment\rLISTEN hidden",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(
            db.message()
                .contains("not supported in transaction pooling mode"),
            "{}",
            db.message()
        );
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    // The same through the extended protocol.
    let err = client.prepare("LISTEN x").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // Transaction-scoped forms are fine.
    client
        .batch_execute("BEGIN; CREATE TEMP TABLE t (x int) ON COMMIT DROP; SET LOCAL work_mem = '2MB'; SELECT pg_advisory_xact_lock(7); COMMIT")
        .await
        .unwrap();
}

/// Session state made where the statement's first words do not say so: a
/// quoted or U&-escaped function name, SELECT INTO TEMP, a table named in
/// pg_temp, a search_path that makes CREATE temporary, a DO block. Each
/// one changes the session when run directly (checked first, so the
/// refusal is of a working statement); through pghalo it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn session_state_in_disguise_is_refused() {
    let (_daemon, config) = transaction_proxy("tx-disguise", 2).await;
    let client = pg_connect(&conninfo(config.port, "postgres", &password()))
        .await
        .unwrap();
    let direct = common::node_client(&shared_lab().lab, "node0", "postgres").await;
    // What a session holds: temporary objects, advisory locks, channels
    // listened to, and two settings.
    let state = "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) \
                 || '/' || (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory') \
                 || '/' || (SELECT count(*) FROM pg_listening_channels()) \
                 || '/' || current_setting('search_path') || '/' || current_setting('work_mem') \
                 || '/' || coalesce(current_setting('a.b', true), '')";
    for sql in [
        "SELECT \"set_config\"('a.b', 'c', false)",
        "SELECT U&\"\\0073et_config\"('a.b', 'c', false)",
        "SELECT U&\"!0073et_config\" UESCAPE '!' ('a.b', 'c', false)",
        "SELECT 1 AS x INTO TEMP disguised",
        "CREATE TABLE pg_temp.disguised (x int)",
        "SET search_path = pg_temp, public",
        "DO $$BEGIN SET work_mem = '7MB'; END$$",
        "DO $$BEGIN IF true THEN PERFORM pg_advisory_lock(42); END IF; END$$",
        "DO $$BEGIN EXECUTE 'LIS' || 'TEN disguised'; END$$",
        "DO $$BEGIN EXECUTE format('%s', 'LISTEN disguised'); END$$",
        "DO $$BEGIN EXECUTE format('%I disguised', 'listen'); END$$",
        "DO $$BEGIN EXECUTE format('%-10sdisguised', 'LISTEN'); END$$",
        "DO $$BEGIN EXECUTE format('LIS' || 'TEN %s', 'disguised'); END$$",
    ] {
        direct.batch_execute("DISCARD ALL").await.unwrap();
        let before: String = direct.query_one(state, &[]).await.unwrap().get(0);
        direct
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} fails directly: {e:?}"));
        let after: String = direct.query_one(state, &[]).await.unwrap().get(0);
        assert_ne!(before, after, "{sql} changes nothing in the session");

        let Err(err) = client.batch_execute(sql).await else {
            panic!("{sql} ran through pghalo");
        };
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{sql}: {err:?}"));
        assert_eq!(db.code().code(), "0A000", "{sql}: {}", db.message());
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    // The search_path rule's reason: CREATE then makes temporary tables.
    direct.batch_execute("DISCARD ALL").await.unwrap();
    direct
        .batch_execute("SET search_path = pg_temp, public; CREATE TABLE by_path (x int)")
        .await
        .unwrap();
    let persistence: i8 = direct
        .query_one(
            "SELECT relpersistence FROM pg_class WHERE relname = 'by_path'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(persistence as u8, b't');
    direct.batch_execute("DISCARD ALL").await.unwrap();
    // The same search_path asked for at login.
    let Err(err) = pg_connect(&format!(
        "{} options='-c search_path=pg_temp,public'",
        conninfo(config.port, "postgres", &password())
    ))
    .await
    else {
        panic!("a login with search_path pg_temp first was pooled");
    };
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err:?}");
    // What looks alike but holds nothing after the transaction runs.
    for sql in [
        "DO $$BEGIN SET LOCAL work_mem = '7MB'; END$$",
        "DO $$BEGIN PERFORM pg_advisory_xact_lock(42); END$$",
        "CREATE TABLE pg_temp.passing (x int) ON COMMIT DROP",
        "SET search_path = public, pg_temp",
        "DO $$BEGIN EXECUTE format('SELECT %L', 'reset all'); END$$",
        "DO $$BEGIN EXECUTE format('SELECT %L ' || '::text', 'reset all'); END$$",
    ] {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

/// standard_conforming_strings off (or a client-only encoding such as SJIS)
/// makes the server read a statement's text differently from pghalo, so a
/// SET could pass unseen: refused at login when set there, and when a
/// function sets it unseen, the session ends once answered and its server
/// connection is closed, so the next client of that pool does not get it.
#[tokio::test(flavor = "multi_thread")]
async fn text_the_server_reads_differently_is_not_pooled() {
    let (_daemon, config) = transaction_proxy("tx-unreadable", 1).await;
    let info = conninfo(config.port, "postgres", &password());
    let Err(err) = pg_connect(&format!(
        "{info} options='-c standard_conforming_strings=off'"
    ))
    .await
    else {
        panic!("a login with standard_conforming_strings off was pooled");
    };
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "0A000", "{}", db.message());
    assert!(
        db.message().contains("standard_conforming_strings"),
        "{}",
        db.message()
    );

    let direct = common::node_client(&shared_lab().lab, "node0", "postgres").await;
    direct
        .batch_execute(
            "CREATE OR REPLACE FUNCTION scs_off() RETURNS int LANGUAGE plpgsql AS \
             $$BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); RETURN 1; END$$",
        )
        .await
        .unwrap();
    let client = pg_connect(&info).await.unwrap();
    let rows = client.simple_query("SELECT scs_off()").await;
    // One server connection in the pool: the next client's is not one left
    // reading backslashes as escapes (nor is that client refused for it).
    let next = pg_connect(&info).await.unwrap();
    let scs: String = next
        .query_one("SHOW standard_conforming_strings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(scs, "on");
    let ended = match rows {
        // The answer, then the end.
        Ok(_) => client.simple_query("SELECT 1").await.unwrap_err(),
        Err(e) => e,
    };
    // Its FATAL comes after the answer's ReadyForQuery: tokio-postgres
    // reports it as the connection closing.
    assert!(
        ended.is_closed() || ended.code().is_some_and(|c| c.code() == "0A000"),
        "{ended:?}"
    );
}

/// A list in a startup parameter (`-c search_path=a,b`) means what it
/// means to PostgreSQL, on every server connection the client gets.
#[tokio::test(flavor = "multi_thread")]
async fn a_startup_list_setting_is_replayed_as_a_list() {
    let (_daemon, config) = transaction_proxy("tx-startup-list", 1).await;
    for options in [
        " options='-c search_path=public,pg_catalog'",
        // One element, not folded to lower case by SET's quoting.
        " options='-c search_path=PUBLIC'",
    ] {
        startup_setting_as_direct(&config, options).await;
    }
}

async fn startup_setting_as_direct(config: &ProxyConfig, options: &str) {
    let lab = &shared_lab().lab;
    let port = lab.node("node0").unwrap().port;
    let direct = pg_connect(&format!(
        "{}{options}",
        conninfo(port, "postgres", &password())
    ))
    .await
    .unwrap();
    let expected: String = direct
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    let client = pg_connect(&format!(
        "{}{options}",
        conninfo(config.port, "postgres", &password())
    ))
    .await
    .unwrap();
    let other = pg_connect(&conninfo(config.port, "postgres", &password()))
        .await
        .unwrap();
    // The other client's transaction in between: the next one replays.
    other.batch_execute("SELECT 1").await.unwrap();
    let got: String = client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, expected, "{options}");
}

/// A named portal runs the statement it was bound to, not the one bound
/// last: its SET is counted when it is executed after another Bind, and
/// follows its client, not the server connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_portal_executed_after_another_bind_counts_its_own_statement() {
    let (_daemon, config) = transaction_proxy("tx-portals", 1).await;
    let info = conninfo(config.port, "postgres", &password());
    let mut setter = pg_connect(&info).await.unwrap();
    let other = pg_connect(&info).await.unwrap();
    let txn = setter.transaction().await.unwrap();
    let set = txn.prepare("SET work_mem = '3MB'").await.unwrap();
    let select = txn.prepare("SELECT 1").await.unwrap();
    let set_portal = txn.bind(&set, &[]).await.unwrap();
    let select_portal = txn.bind(&select, &[]).await.unwrap();
    txn.query_portal(&set_portal, 0).await.unwrap();
    txn.query_portal(&select_portal, 0).await.unwrap();
    txn.commit().await.unwrap();
    // One server connection: the other client's transaction runs on it.
    let theirs: String = other.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(theirs, "4MB", "the SET reached another client");
    let mine: String = setter.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(mine, "3MB", "the SET did not follow its client");
}

/// pgbench's write transactions with prepared statements, 16 clients on 3
/// server connections.
#[tokio::test(flavor = "multi_thread")]
async fn pgbench_runs_clean_in_transaction_mode() {
    let (_daemon, config) = transaction_proxy("tx-pgbench", 3).await;
    let port = config.port.to_string();
    // pgbench -i talks to the proxy's port, so its pgpass entry must match
    // this in-process proxy's port: give it one.
    let pgpass = config.dir.join("pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{port}:*:postgres:{}\n", password()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("pgbench")
            .env("PGPASSFILE", &pgpass)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pgbench {args:?}: {text}");
        text
    };
    run(&["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let text = run(&["-T", "3", "-c", "16", "-j", "2", "-M", mode]);
        assert!(
            text.contains("number of failed transactions: 0 (0.000%)"),
            "{mode}: {text}"
        );
    }
}

/// Pipelined extended-protocol requests in transaction mode: the server
/// connection is not given away while answers are still owed.
#[tokio::test(flavor = "multi_thread")]
async fn pipelines_keep_their_connection_until_answered() {
    let (_daemon, config) = transaction_proxy("tx-pipeline", 2).await;
    let info = conninfo(config.port, "postgres", &password());
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let info = info.clone();
        tasks.push(tokio::spawn(async move {
            let client = pg_connect(&info).await.unwrap();
            let stmt = client.prepare("SELECT $1::int4 + 1").await.unwrap();
            let queries = (0..100i32).map(|i| {
                let client = &client;
                let stmt = &stmt;
                async move { (i, client.query_one(stmt, &[&i]).await) }
            });
            for (i, result) in futures_util::future::join_all(queries).await {
                assert_eq!(result.unwrap().get::<_, i32>(0), i + 1);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// A SET in a transaction block is kept when the block commits, whichever
/// way the COMMIT comes (its own Query, or Parse/Bind/Execute), and when a
/// ROLLBACK TO a later savepoint leaves it standing; either way it stays
/// with its client. DISCARD PLANS leaves the settings alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_committed_set_stays_with_its_client_only() {
    let (_daemon, config) = transaction_proxy("tx-set-commit", 1).await;
    let info = conninfo(config.port, "postgres", &password());
    let setter = pg_connect(&info).await.unwrap();
    let other = pg_connect(&info).await.unwrap();

    for statement in ["BEGIN", "SET work_mem = '7MB'", "COMMIT"] {
        setter.simple_query(statement).await.unwrap();
    }
    assert_eq!(
        show(&other, "work_mem").await,
        "4MB",
        "a committed SET reached another client"
    );
    assert_eq!(show(&setter, "work_mem").await, "7MB");

    for statement in ["BEGIN", "SET work_mem = '6MB'", "COMMIT"] {
        setter.execute(statement, &[]).await.unwrap();
    }
    assert_eq!(
        show(&other, "work_mem").await,
        "4MB",
        "a SET committed by Execute reached another client"
    );
    assert_eq!(show(&setter, "work_mem").await, "6MB");

    for statement in [
        "BEGIN",
        "SET work_mem = '5MB'",
        "SAVEPOINT p",
        "SELECT 1",
        "ROLLBACK TO SAVEPOINT p",
        "COMMIT",
    ] {
        setter.simple_query(statement).await.unwrap();
    }
    assert_eq!(
        show(&other, "work_mem").await,
        "4MB",
        "a SET kept past a ROLLBACK TO reached another client"
    );
    assert_eq!(show(&setter, "work_mem").await, "5MB");

    // ROLLBACK AND CHAIN ends the block (its SETs gone) and opens another.
    for statement in [
        "BEGIN",
        "SET work_mem = '8MB'",
        "ROLLBACK AND CHAIN",
        "COMMIT",
    ] {
        setter.simple_query(statement).await.unwrap();
    }
    assert_eq!(show(&other, "work_mem").await, "4MB");
    assert_eq!(
        show(&setter, "work_mem").await,
        "5MB",
        "a rolled-back SET came back"
    );

    setter.simple_query("DISCARD PLANS").await.unwrap();
    assert_eq!(
        show(&other, "work_mem").await,
        "4MB",
        "DISCARD PLANS let a SET reach another client"
    );
    assert_eq!(show(&setter, "work_mem").await, "5MB");
}

/// DEALLOCATE ALL and DISCARD ALL drop every prepared statement of the
/// server session, pghalo's shared ones included: a client that prepares
/// the same statement next gets it prepared again, and the client that
/// ran them loses its own statements, as with PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn deallocate_all_and_discard_all_leave_prepared_statements_working() {
    let (_daemon, config) = transaction_proxy("tx-deallocate", 1).await;
    let info = conninfo(config.port, "postgres", &password());
    let keeper = pg_connect(&info).await.unwrap();
    let resetter = pg_connect(&info).await.unwrap();
    let kept = keeper.prepare("SELECT $1::int4 + 1").await.unwrap();
    for reset in ["DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE PREPARE ALL"] {
        assert_eq!(
            keeper
                .query_one(&kept, &[&1])
                .await
                .unwrap()
                .get::<_, i32>(0),
            2
        );
        let own = resetter.prepare("SELECT $1::int4 + 1").await.unwrap();
        assert_eq!(
            resetter
                .query_one(&own, &[&2])
                .await
                .unwrap()
                .get::<_, i32>(0),
            3
        );
        resetter.simple_query(reset).await.unwrap();
        let gone = resetter.query_one(&own, &[&2]).await.unwrap_err();
        assert_eq!(
            gone.as_db_error().map(|e| e.code().code()),
            Some("26000"),
            "{reset}: {gone:?}"
        );
        let again = resetter.prepare("SELECT $1::int4 + 1").await.unwrap();
        assert_eq!(
            resetter
                .query_one(&again, &[&4])
                .await
                .unwrap()
                .get::<_, i32>(0),
            5,
            "{reset}"
        );
        assert_eq!(
            keeper
                .query_one(&kept, &[&5])
                .await
                .unwrap()
                .get::<_, i32>(0),
            6,
            "{reset}"
        );
    }
}

/// COPY FROM STDIN over the extended protocol (tokio-postgres; libpq with
/// parameters): the server ignores the Sync sent with the Execute, so one
/// ReadyForQuery answers two Syncs. The connection still goes back to the
/// pool after the COPY, good or failed, and replies keep matching.
#[tokio::test(flavor = "multi_thread")]
async fn copy_in_over_the_extended_protocol_releases_its_connection() {
    use futures_util::SinkExt;
    let (_daemon, config) = transaction_proxy("tx-copy-in", 1).await;
    let info = conninfo(config.port, "postgres", &password());
    let copier = pg_connect(&info).await.unwrap();
    let other = pg_connect(&info).await.unwrap();
    copier
        .batch_execute("DROP TABLE IF EXISTS tx_copy_in; CREATE TABLE tx_copy_in (n int)")
        .await
        .unwrap();
    let limit = std::time::Duration::from_secs(10);
    for round in 0..3i32 {
        let sink = copier
            .copy_in::<_, bytes::Bytes>("COPY tx_copy_in FROM STDIN")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(format!("{round}\n{round}\n")))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 2);

        let bad = copier
            .copy_in::<_, bytes::Bytes>("COPY tx_copy_in FROM STDIN")
            .await
            .unwrap();
        futures_util::pin_mut!(bad);
        let refused = match bad.send(bytes::Bytes::from_static(b"not a number\n")).await {
            Err(e) => e,
            Ok(()) => bad.finish().await.unwrap_err(),
        };
        assert_eq!(
            refused.as_db_error().map(|e| e.code().code()),
            Some("22P02"),
            "{refused:?}"
        );

        let count = tokio::time::timeout(
            limit,
            other.query_one("SELECT count(*)::int4 FROM tx_copy_in", &[]),
        )
        .await
        .expect("the COPY kept the only server connection")
        .unwrap();
        assert_eq!(count.get::<_, i32>(0), 2 * (round + 1));
        let echo = tokio::time::timeout(limit, copier.query_one("SELECT $1::int4", &[&round]))
            .await
            .expect("the copier's next query got no answer")
            .unwrap();
        assert_eq!(echo.get::<_, i32>(0), round);
    }

    // The server refuses a row while the client still streams: it now
    // ignores everything up to the client's Sync, so the connection must
    // stay with the copier until then, not serve the client waiting.
    let sink = copier
        .copy_in::<_, bytes::Bytes>("COPY tx_copy_in FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not a number\n"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let waiting = tokio::spawn(async move {
        tokio::time::timeout(limit, other.query_one("SELECT 7::int4", &[])).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let refused = sink.finish().await.unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("22P02"),
        "{refused:?}"
    );
    let seven = waiting
        .await
        .unwrap()
        .expect("the waiting client got a connection the server was ignoring")
        .unwrap();
    assert_eq!(seven.get::<_, i32>(0), 7);
}

/// A SET counts when it runs, not when it is prepared: one whose Execute
/// fails (prepared fine, then refused by the server) is not replayed on
/// the client's next server connection, where it would fail again.
#[tokio::test(flavor = "multi_thread")]
async fn a_set_that_fails_when_run_is_not_replayed() {
    let (_daemon, config) = transaction_proxy("tx-set-fails", 1).await;
    let info = conninfo(config.port, "postgres", &password());
    let setter = pg_connect(&info).await.unwrap();
    let other = pg_connect(&info).await.unwrap();
    setter.execute("SET work_mem = '3MB'", &[]).await.unwrap();
    let refused = setter
        .execute("SET TIME ZONE 'No/Such_Zone'", &[])
        .await
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("22023"),
        "{refused:?}"
    );
    for _ in 0..2 {
        assert_eq!(show(&other, "work_mem").await, "4MB");
        assert_eq!(show(&setter, "work_mem").await, "3MB");
    }
}

/// A cancel still on its way to the server when its client's query ends
/// (here: held up by a stopped postmaster) keeps that client's server
/// connection from the next client until it has landed; otherwise it would
/// stop the next client's query (57014).
#[tokio::test(flavor = "multi_thread")]
async fn a_late_cancel_never_reaches_the_next_client_of_the_connection() {
    use std::time::Duration;
    let test_lab = common::TestLab::build("tx-late-cancel", |o| o.backends = 1);
    let lab = &test_lab.lab;
    let config = ProxyConfig::write(
        lab,
        "tx-late-cancel",
        "",
        "mode = \"transaction\"\nmax_pool_size = 1\ncheckout_timeout = \"20s\"",
        SCRAM_ALL,
        None,
    );
    let _daemon = Daemon::start(&config.path()).await.unwrap();
    let info = conninfo(config.port, "postgres", &lab.secrets.postgres);
    let canceller = pg_connect(&info).await.unwrap();
    let next = pg_connect(&info).await.unwrap();
    canceller.simple_query("SELECT 1").await.unwrap();
    // Opened now: no login gets through once the postmaster is stopped.
    let watcher = lab.connect("node0").await.unwrap();

    let resume = common::stop_postmaster(lab, "node0");
    let token = canceller.cancel_token();
    let started = std::time::Instant::now();
    let first = tokio::spawn(async move {
        let result = canceller.simple_query("SELECT pg_sleep(0.5)").await;
        (canceller, result, started.elapsed())
    });
    // The cancel must find the query running (a cancel before it would
    // find no server connection to aim at, and prove nothing).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while watcher
        .query(
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(0.5)'",
            &[],
        )
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "the first query never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancel = tokio::spawn(async move { token.cancel_query(tokio_postgres::NoTls).await });
    // The first query is over by now; the cancel waits for the postmaster.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = tokio::spawn(async move { next.simple_query("SELECT pg_sleep(1)").await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(resume);
    let (_canceller, result, took) = first.await.unwrap();
    result.expect("the cancel reached the server only after the query ended");
    assert!(
        took < started.elapsed().saturating_sub(Duration::from_millis(300)),
        "the first client's reply waited for its cancel to land ({took:?})"
    );
    let outcome = second.await.unwrap();
    assert!(
        outcome.is_ok(),
        "the first client's cancel stopped the next client's query: {outcome:?}"
    );
    let _ = cancel.await;
}
