//! Read/write routing against real servers: every statement of the corpus
//! (tests/route_corpus/statements.txt) runs directly on the primary and
//! through pghalo, and must end the same way; pg_stat_statements on each
//! node shows where pghalo sent it, and no statement labelled `primary`
//! may have run on a standby.
//!
//! Two databases made by the same script (route_corpus/setup.sql): route_a,
//! used directly on the primary, and route_b, used through pghalo with
//! statement-level load balancing so that reads spread over every node.
//! One session each, statements in corpus order. After each statement the
//! test waits until both standbys have replayed everything the primary
//! wrote (asking the nodes), so a read never meets a standby that is behind:
//! this test is about where statements go, not about lag. It then reads
//! pg_stat_statements on every node and charges each call that appeared
//! in route_b to that statement.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    TestLab, conninfo_db, monitor_section, node_client, pg_connect, routing_config,
    wait_for_replay, wait_for_topology,
};
use futures_util::{SinkExt, TryStreamExt};
use pghalo::daemon::Daemon;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

const SETUP: &str = include_str!("route_corpus/setup.sql");
const STATEMENTS: &str = include_str!("route_corpus/statements.txt");
const NODES: [&str; 3] = ["node0", "node1", "node2"];
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// A read: may run on any node.
    Any,
    /// Must never reach a standby.
    Primary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Det,
    Nondet,
    Loose,
}

#[derive(Debug, Clone)]
enum Mode {
    Simple,
    /// Named prepared statement (Parse/Describe, then Bind/Execute), the
    /// parameters declared text.
    Ext(Vec<String>),
    /// Unnamed statement, Parse/Bind/Describe/Execute/Sync in one go
    /// (tokio-postgres' query_typed), the parameters declared text.
    Unnamed(Vec<String>),
    CopyIn(String),
    CopyOut,
}

#[derive(Debug, Clone)]
struct Entry {
    n: usize,
    line: usize,
    label: Label,
    check: Check,
    /// "ok" or a SQLSTATE.
    expect: String,
    mode: Mode,
    limit: bool,
    /// As written in the corpus (placeholders unexpanded).
    text: String,
    /// What is sent: expanded, with the trailing tag.
    sql: String,
}

impl Entry {
    fn short(&self) -> String {
        let one_line: String = self
            .text
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        truncate(&one_line, 110)
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

fn expand(text: &str) -> String {
    let mb = "x".repeat(1 << 20);
    text.replace("{NL}", "\n")
        .replace("{TAB}", "\t")
        .replace("{1MB}", &mb)
}

fn parse_corpus(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let (head, statement) = raw
            .split_once('|')
            .unwrap_or_else(|| panic!("statements.txt:{line}: no '|'"));
        let statement = statement.strip_prefix(' ').unwrap_or(statement);
        let fields: Vec<&str> = head.split_whitespace().collect();
        assert!(
            fields.len() == 4 || (fields.len() == 5 && fields[4] == "limit"),
            "statements.txt:{line}: expected `label check expect mode [limit] |`"
        );
        let label = match fields[0] {
            "any" => Label::Any,
            "primary" => Label::Primary,
            other => panic!("statements.txt:{line}: label {other}"),
        };
        let check = match fields[1] {
            "det" => Check::Det,
            "nondet" => Check::Nondet,
            "loose" => Check::Loose,
            other => panic!("statements.txt:{line}: check {other}"),
        };
        let expect = fields[2].to_string();
        assert!(
            expect == "ok" || expect.len() == 5,
            "statements.txt:{line}: expect {expect}"
        );
        let mode = match fields[3] {
            "simple" => Mode::Simple,
            "ext" => Mode::Ext(Vec::new()),
            "copyout" => Mode::CopyOut,
            m if m.starts_with("ext:") => Mode::Ext(m[4..].split(',').map(expand).collect()),
            "unnamed" => Mode::Unnamed(Vec::new()),
            m if m.starts_with("unnamed:") => {
                Mode::Unnamed(m[8..].split(',').map(expand).collect())
            }
            m if m.starts_with("copyin:") => Mode::CopyIn(expand(&m[7..])),
            other => panic!("statements.txt:{line}: mode {other}"),
        };
        let n = entries.len() + 1;
        entries.push(Entry {
            n,
            line,
            label,
            check,
            expect,
            mode,
            limit: fields.len() == 5,
            text: statement.to_string(),
            sql: format!("{}\n-- corpus:{n}", expand(statement)),
        });
    }
    entries
}

/// What a statement produced, in order.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Columns(Vec<String>),
    Row(Vec<Option<String>>),
    Done(u64),
    Copy(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok(Vec<Part>),
    /// A SQLSTATE, or `client: ...` for an error that is not the server's.
    Err(String),
}

impl Outcome {
    fn status(&self) -> &str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Err(code) => code,
        }
    }

    /// What `check` compares.
    fn compared(&self, check: Check) -> Outcome {
        match (self, check) {
            (Outcome::Err(_), _) | (_, Check::Det) => self.clone(),
            (Outcome::Ok(_), Check::Loose) => Outcome::Ok(Vec::new()),
            (Outcome::Ok(parts), Check::Nondet) => Outcome::Ok(
                parts
                    .iter()
                    .map(|p| match p {
                        Part::Row(values) => Part::Row(vec![None; values.len()]),
                        Part::Copy(_) => Part::Copy(Vec::new()),
                        other => other.clone(),
                    })
                    .collect(),
            ),
        }
    }

    fn brief(&self) -> String {
        truncate(&format!("{self:?}"), 300)
    }
}

fn error_outcome(e: &tokio_postgres::Error) -> Outcome {
    match e.as_db_error() {
        Some(db) => Outcome::Err(db.code().code().to_string()),
        None => Outcome::Err(format!("client: {e}")),
    }
}

/// A session through pghalo, driven here rather than by pg_connect so
/// that the test can tell why it ended.
async fn connect_via(
    info: &str,
) -> (
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(info, tokio_postgres::NoTls)
        .await
        .expect("connecting through pghalo");
    (client, tokio::spawn(connection))
}

/// Any value, as the bytes the server sent.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn render(ty: &Type, raw: &[u8]) -> String {
    let text_like = [
        Type::TEXT,
        Type::VARCHAR,
        Type::NAME,
        Type::BPCHAR,
        Type::UNKNOWN,
    ];
    if text_like.contains(ty) {
        String::from_utf8_lossy(raw).into_owned()
    } else {
        format!("{ty}:{raw:02x?}")
    }
}

fn row_part(row: &tokio_postgres::Row) -> Part {
    Part::Row(
        row.columns()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                row.get::<_, Option<Raw>>(i)
                    .map(|r| render(c.type_(), &r.0))
            })
            .collect(),
    )
}

async fn run(client: &Client, entry: &Entry) -> Outcome {
    match tokio::time::timeout(STATEMENT_TIMEOUT, run_inner(client, entry)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Err(format!("client: no answer in {STATEMENT_TIMEOUT:?}")),
    }
}

async fn run_inner(client: &Client, entry: &Entry) -> Outcome {
    match &entry.mode {
        Mode::Simple => match client.simple_query(&entry.sql).await {
            Err(e) => error_outcome(&e),
            Ok(messages) => Outcome::Ok(
                messages
                    .into_iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::RowDescription(columns) => Some(Part::Columns(
                            columns.iter().map(|c| c.name().to_string()).collect(),
                        )),
                        SimpleQueryMessage::Row(row) => Some(Part::Row(
                            (0..row.len())
                                .map(|i| row.get(i).map(str::to_string))
                                .collect(),
                        )),
                        SimpleQueryMessage::CommandComplete(n) => Some(Part::Done(n)),
                        _ => None,
                    })
                    .collect(),
            ),
        },
        Mode::Ext(params) => {
            let types = vec![Type::TEXT; params.len()];
            let statement = match client.prepare_typed(&entry.sql, &types).await {
                Ok(s) => s,
                Err(e) => return error_outcome(&e),
            };
            let mut parts = vec![Part::Columns(
                statement
                    .columns()
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect(),
            )];
            let args: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            let stream = match client.query_raw(&statement, args).await {
                Ok(s) => s,
                Err(e) => return error_outcome(&e),
            };
            let mut stream = pin!(stream);
            loop {
                match stream.try_next().await {
                    Err(e) => return error_outcome(&e),
                    Ok(None) => break,
                    Ok(Some(row)) => parts.push(row_part(&row)),
                }
            }
            parts.push(Part::Done(stream.rows_affected().unwrap_or(u64::MAX)));
            Outcome::Ok(parts)
        }
        Mode::Unnamed(params) => {
            let args = params
                .iter()
                .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT));
            let stream = match client.query_typed_raw(&entry.sql, args).await {
                Ok(s) => s,
                Err(e) => return error_outcome(&e),
            };
            let mut stream = pin!(stream);
            let mut parts = Vec::new();
            loop {
                match stream.try_next().await {
                    Err(e) => return error_outcome(&e),
                    Ok(None) => break,
                    Ok(Some(row)) => parts.push(row_part(&row)),
                }
            }
            parts.push(Part::Done(stream.rows_affected().unwrap_or(u64::MAX)));
            Outcome::Ok(parts)
        }
        Mode::CopyIn(data) => {
            let sink = match client.copy_in::<_, Bytes>(&entry.sql).await {
                Ok(s) => s,
                Err(e) => return error_outcome(&e),
            };
            let mut sink = pin!(sink);
            if let Err(e) = sink.send(Bytes::from(data.clone())).await {
                return error_outcome(&e);
            }
            match sink.finish().await {
                Ok(n) => Outcome::Ok(vec![Part::Done(n)]),
                Err(e) => error_outcome(&e),
            }
        }
        Mode::CopyOut => {
            let stream = match client.copy_out(&entry.sql).await {
                Ok(s) => s,
                Err(e) => return error_outcome(&e),
            };
            let mut stream = pin!(stream);
            let mut data = Vec::new();
            loop {
                match stream.try_next().await {
                    Err(e) => return error_outcome(&e),
                    Ok(None) => break,
                    Ok(Some(chunk)) => data.extend_from_slice(&chunk),
                }
            }
            Outcome::Ok(vec![Part::Copy(data)])
        }
    }
}

/// A pg_stat_statements entry: (dbid, userid, toplevel, queryid).
type StatKey = (u32, u32, bool, i64);

/// Calls per entry of `dbs`, on one node (texts left out: cheap).
async fn stat_calls(monitor: &Client, dbs: &[u32]) -> HashMap<StatKey, i64> {
    stat_entries(monitor, dbs, "calls FROM pg_stat_statements(false)").await
}

async fn stat_texts(monitor: &Client, dbs: &[u32]) -> HashMap<StatKey, String> {
    stat_entries(monitor, dbs, "left(query, 200) FROM pg_stat_statements").await
}

/// One value per pg_stat_statements entry of `dbs`: `value_from` is the
/// value column and the FROM clause.
async fn stat_entries<T>(monitor: &Client, dbs: &[u32], value_from: &str) -> HashMap<StatKey, T>
where
    T: for<'a> FromSql<'a>,
{
    let dbs: Vec<i64> = dbs.iter().map(|&d| i64::from(d)).collect();
    let sql = format!(
        "SELECT dbid::oid::int8, userid::oid::int8, toplevel, queryid, {value_from} \
         WHERE dbid::oid::int8 = ANY($1)"
    );
    monitor
        .query(&sql, &[&dbs])
        .await
        .unwrap_or_else(|e| panic!("reading pg_stat_statements: {e}"))
        .iter()
        .map(|r| {
            let db: i64 = r.get(0);
            let user: i64 = r.get(1);
            (
                (
                    u32::try_from(db).unwrap(),
                    u32::try_from(user).unwrap(),
                    r.get(2),
                    r.get(3),
                ),
                r.get(4),
            )
        })
        .collect()
}

fn delta(before: &HashMap<StatKey, i64>, after: &HashMap<StatKey, i64>) -> Vec<(StatKey, i64)> {
    let mut grown: Vec<(StatKey, i64)> = after
        .iter()
        .filter_map(|(k, &calls)| {
            let was = before.get(k).copied().unwrap_or(0);
            (calls > was).then_some((*k, calls - was))
        })
        .collect();
    grown.sort();
    grown
}

/// Waits until each standby (monitors 1 and 2) has replayed what the
/// primary (monitor 0) has written.
async fn wait_replayed(monitors: &[Client]) {
    let lsn: String = monitors[0]
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for (i, monitor) in monitors.iter().enumerate().skip(1) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done: bool = monitor
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .await
                .unwrap()
                .get(0);
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not replay up to {lsn} in 30 s",
                NODES[i]
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Statements pghalo itself sends to a server connection (no corpus tag):
/// the pool's reset query, or SET / RESET bringing a new server connection
/// in line with the client's settings. Reported, not charged to the corpus
/// statement they ran under.
fn is_pghalo_own(text: &str) -> bool {
    let t = text.trim().to_ascii_uppercase();
    !text.contains("corpus:")
        && (matches!(
            t.trim_end_matches(';'),
            "DISCARD ALL" | "ABORT" | "ROLLBACK" | "RESET ALL"
        ) || t.starts_with("SET ")
            || t.starts_with("RESET "))
}

struct Run {
    direct: Outcome,
    via: Outcome,
    /// Per node: pg_stat_statements entries of route_b whose calls grew.
    landed: [Vec<(StatKey, i64)>; 3],
    /// pg_stat_statements entries of route_a that grew on the primary.
    direct_landed: Vec<(StatKey, i64)>,
}

#[tokio::test(flavor = "multi_thread")]
async fn corpus_every_statement_behaves_as_on_the_primary_and_no_write_reaches_a_standby() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let entries = parse_corpus(STATEMENTS);
    assert!(
        entries.len() >= 200,
        "the corpus has {} statements",
        entries.len()
    );
    let lab = TestLab::build("route-corpus", |_| {});
    let (report, failed) = run_corpus(&lab, &entries).await;
    eprintln!("{report}");
    assert!(!failed, "{report}");
}

/// Runs the corpus; returns the report and whether it failed.
async fn run_corpus(test_lab: &TestLab, entries: &[Entry]) -> (String, bool) {
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();

    // Two databases from the same script; the extension's view in postgres
    // too, where the monitoring sessions read it.
    let admin = node_client(lab, "node0", "postgres").await;
    for sql in [
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        "CREATE DATABASE route_a",
        "CREATE DATABASE route_b",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    for db in ["route_a", "route_b"] {
        node_client(lab, "node0", db)
            .await
            .batch_execute(SETUP)
            .await
            .unwrap_or_else(|e| panic!("setup.sql in {db}: {e}"));
    }
    let oid = |db: &'static str| {
        let admin = &admin;
        async move {
            let oid: i64 = admin
                .query_one(
                    "SELECT oid::int8 FROM pg_database WHERE datname = $1",
                    &[&db],
                )
                .await
                .unwrap()
                .get(0);
            u32::try_from(oid).unwrap()
        }
    };
    let (db_a, db_b) = (oid("route_a").await, oid("route_b").await);
    // pghalo's own checks log in as this role (its catalog reads after a
    // session's DDL land in the corpus databases too): not the corpus.
    let monitor_role: i64 = admin
        .query_one(
            "SELECT oid::int8 FROM pg_roles WHERE rolname = 'pghalo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let monitor_role = u32::try_from(monitor_role).unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;

    let sections = format!(
        "[load_balance]\nstatement_level_load_balance = true\n\n{}",
        monitor_section(lab, "")
    );
    let config = routing_config(lab, "route-corpus", &sections, &[]);
    let daemon = Daemon::start(&config.path())
        .await
        .expect("starting pghalo");
    wait_for_topology(&daemon, Duration::from_secs(30)).await;

    let primary_port = lab.node("node0").unwrap().port;
    let direct_info = conninfo_db(primary_port, "postgres", &password, "route_a");
    let via_info = conninfo_db(config.port, "postgres", &password, "route_b");
    let mut direct = pg_connect(&direct_info).await.expect("connecting directly");
    let (mut via, mut via_end) = connect_via(&via_info).await;
    let mut monitors = Vec::new();
    for node in NODES {
        monitors.push(node_client(lab, node, "postgres").await);
    }
    let dbs = [db_a, db_b];
    let mut before = Vec::new();
    for m in &monitors {
        before.push(stat_calls(m, &dbs).await);
    }

    let started = Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    let mut aborted: Vec<(usize, String)> = Vec::new();
    for entry in entries {
        let direct_outcome = run(&direct, entry).await;
        assert!(
            !direct.is_closed(),
            "the direct session closed at corpus:{}",
            entry.n
        );
        let via_outcome = run(&via, entry).await;
        wait_replayed(&monitors).await;
        let mut after = Vec::new();
        for m in &monitors {
            after.push(stat_calls(m, &dbs).await);
        }
        let grown: Vec<Vec<(StatKey, i64)>> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| delta(b, a))
            .collect();
        let only = |db: u32, g: &[(StatKey, i64)]| -> Vec<(StatKey, i64)> {
            g.iter()
                .filter(|(k, _)| k.0 == db && k.1 != monitor_role)
                .copied()
                .collect()
        };
        runs.push(Run {
            direct: direct_outcome,
            via: via_outcome,
            landed: [
                only(db_b, &grown[0]),
                only(db_b, &grown[1]),
                only(db_b, &grown[2]),
            ],
            direct_landed: only(db_a, &grown[0]),
        });
        before = after;
        if via.is_closed() {
            // Reported as a failure; both sessions start again, so that the
            // rest of the corpus still runs with equal session state.
            let why = match tokio::time::timeout(Duration::from_secs(5), &mut via_end).await {
                Ok(Ok(Err(e))) => format!("{e}"),
                Ok(Ok(Ok(()))) => "the server closed it".to_string(),
                other => format!("{other:?}"),
            };
            aborted.push((entry.n, why));
            direct = pg_connect(&direct_info)
                .await
                .expect("connecting directly again");
            (via, via_end) = connect_via(&via_info).await;
        }
    }
    let elapsed = started.elapsed();
    let mut texts = Vec::new();
    for m in &monitors {
        texts.push(stat_texts(m, &dbs).await);
    }
    daemon.stop();

    judge(entries, &runs, &texts, &aborted, elapsed)
}

/// Where pg_stat_statements saw a statement's run through pghalo, and
/// what (a failed statement leaves no trace; what shows then is what
/// pghalo sent around it).
fn ran_on(run: &Run, texts: &[HashMap<StatKey, String>]) -> String {
    let seen: Vec<String> = (0..3)
        .filter(|&n| !run.landed[n].is_empty())
        .map(|n| {
            let what: Vec<String> = run.landed[n]
                .iter()
                .map(|(k, _)| {
                    texts[n]
                        .get(k)
                        .map_or_else(|| "?".to_string(), |t| truncate(&t.replace('\n', " "), 80))
                })
                .collect();
            format!("{} [{}]", NODES[n], what.join(" | "))
        })
        .collect();
    if seen.is_empty() {
        "nothing".to_string()
    } else {
        seen.join("; ")
    }
}

/// Everything the run showed, as a report, and whether the test fails.
fn judge(
    entries: &[Entry],
    runs: &[Run],
    texts: &[HashMap<StatKey, String>],
    aborted: &[(usize, String)],
    elapsed: Duration,
) -> (String, bool) {
    let mut corpus_rot = Vec::new();
    let mut mismatches = Vec::new();
    let mut limits = Vec::new();
    let mut leaks = Vec::new();
    let mut missing = Vec::new();
    let mut reset_noise = Vec::new();
    // reads: (statements with route_b activity, per node with activity)
    let mut reads_seen = 0usize;
    let mut reads_on = [0usize; 3];
    let mut writes_on_primary = 0usize;
    for (entry, run) in entries.iter().zip(runs) {
        let tag = format!("corpus:{} (line {})", entry.n, entry.line);
        if run.direct.status() != entry.expect {
            corpus_rot.push(format!(
                "{tag}: expected {} directly, got {}: {}",
                entry.expect,
                run.direct.brief(),
                entry.short()
            ));
        }
        if run.direct.compared(entry.check) != run.via.compared(entry.check) {
            let line = format!(
                "{tag}: {}\n    direct: {}\n    pghalo: {}\n    seen through pghalo: {}\n    the statement before: {}",
                entry.short(),
                run.direct.brief(),
                run.via.brief(),
                ran_on(run, texts),
                runs.get(entry.n.wrapping_sub(2))
                    .map_or_else(|| "-".to_string(), |r| ran_on(r, texts))
            );
            if entry.limit {
                limits.push(line);
            } else {
                mismatches.push(line);
            }
        }
        let text_of = |node: usize, key: &StatKey| {
            texts[node]
                .get(key)
                .map_or_else(|| "?".to_string(), |t| t.replace('\n', " "))
        };
        let active: Vec<bool> = run.landed.iter().map(|l| !l.is_empty()).collect();
        match entry.label {
            Label::Any => {
                if active.iter().any(|&a| a) {
                    reads_seen += 1;
                }
                for (node, &a) in active.iter().enumerate() {
                    if a {
                        reads_on[node] += 1;
                    }
                }
            }
            Label::Primary => {
                for (node, landed) in run.landed.iter().enumerate().skip(1) {
                    for (key, calls) in landed {
                        let text = text_of(node, key);
                        if is_pghalo_own(&text) {
                            reset_noise.push(format!("{tag} {}: {text}", NODES[node]));
                            continue;
                        }
                        let line = format!(
                            "{tag} ran on {} ({calls} call(s) of `{text}`): {}",
                            NODES[node],
                            entry.short()
                        );
                        if entry.limit {
                            limits.push(line);
                        } else {
                            leaks.push(line);
                        }
                    }
                }
                if !run.direct_landed.is_empty() {
                    if active[0] {
                        writes_on_primary += 1;
                    } else if !entry.limit {
                        missing.push(format!(
                            "{tag}: pg_stat_statements shows it directly on the primary, but not through pghalo (standbys: {}): {}",
                            [1, 2]
                                .iter()
                                .filter(|&&n| active[n])
                                .map(|&n| NODES[n])
                                .collect::<Vec<_>>()
                                .join(", "),
                            entry.short()
                        ));
                    }
                }
            }
        }
    }

    let mut report = String::new();
    let reads = entries.iter().filter(|e| e.label == Label::Any).count();
    let _ = writeln!(
        report,
        "route corpus: {} statements ({} any, {} primary) in {:.1?}; reads with activity in route_b: {reads_seen}, on node0/node1/node2: {:?}; primary-only statements seen on the primary: {writes_on_primary}",
        entries.len(),
        reads,
        entries.len() - reads,
        elapsed,
        reads_on
    );
    let mut failed = false;
    for (n, why) in aborted {
        failed = true;
        let _ = writeln!(
            report,
            "FAILED: the session through pghalo was closed after corpus:{n} ({why}); both sessions were opened again for the rest"
        );
    }
    let mut section = |title: &str, lines: &[String], fails: bool| {
        if lines.is_empty() {
            return;
        }
        if fails {
            failed = true;
        }
        let _ = writeln!(
            report,
            "{}{title} ({}):",
            if fails { "FAILED: " } else { "note: " },
            lines.len()
        );
        for l in lines {
            let _ = writeln!(report, "  {l}");
        }
    };
    section(
        "the primary itself answered other than the corpus says",
        &corpus_rot,
        true,
    );
    section(
        "outcome through pghalo differs from the primary's",
        &mismatches,
        true,
    );
    section(
        "statements labelled primary that ran on a standby",
        &leaks,
        true,
    );
    section(
        "statements labelled primary not seen on the primary",
        &missing,
        true,
    );
    section("known limits (reported, not failed)", &limits, false);
    section(
        "pghalo's own statements on standbys during primary-only statements",
        &reset_noise,
        false,
    );
    // Reads must spread: at least a tenth of the reads on each standby.
    let floor = reads_seen / 10;
    let spread: Vec<String> = [1, 2]
        .iter()
        .filter(|&&n| reads_on[n] < floor.max(1))
        .map(|&n| {
            format!(
                "{} served {} of {reads_seen} reads (at least {} expected)",
                NODES[n],
                reads_on[n],
                floor.max(1)
            )
        })
        .collect();
    section("reads did not reach the standbys", &spread, true);
    if !failed {
        let _ = writeln!(report, "ok");
    }
    (report, failed)
}
