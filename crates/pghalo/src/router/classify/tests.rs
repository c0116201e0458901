use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::router::functions::{StaticVolatility, Volatility};
use crate::router::lexer::{Token, statements};

fn volatility() -> StaticVolatility {
    let mut v = StaticVolatility::with_builtins();
    v.insert("my_volatile_insert", Volatility::Volatile);
    v.insert("app.audit_log", Volatility::Volatile);
    v.insert("get_user_name", Volatility::Stable);
    v.insert("compute_tax", Volatility::Immutable);
    v.insert("app.price_of", Volatility::Immutable);
    v
}

fn classifier_with(config: ClassifierConfig) -> PgQueryClassifier {
    PgQueryClassifier::new(config, Arc::new(volatility()))
}

fn classifier() -> PgQueryClassifier {
    classifier_with(ClassifierConfig::default())
}

/// No pre-scan fast path, no cache: every statement takes the full parse.
fn parsing_classifier() -> PgQueryClassifier {
    classifier_with(ClassifierConfig {
        lexical_fast_path: false,
        cache_entries: 0,
        ..ClassifierConfig::default()
    })
}

fn classify(sql: &str) -> Arc<Classification> {
    classifier().classify(sql.as_bytes())
}

fn label(route: Route) -> String {
    match route {
        Route::Any { hinted: false } => "any -".to_owned(),
        Route::Any { hinted: true } => "any hinted".to_owned(),
        Route::Primary { reason } => format!("primary {reason}"),
    }
}

struct Case {
    line: usize,
    expect: String,
    sql: &'static str,
}

fn corpus() -> Vec<Case> {
    include_str!("../corpus.txt")
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let (expect, sql) = l.split_once('|').expect("corpus line without '|'");
            let expect = expect.split_whitespace().collect::<Vec<_>>().join(" ");
            Case {
                line: i + 1,
                expect,
                sql: sql.strip_prefix(' ').unwrap_or(sql),
            }
        })
        .collect()
}

#[test]
fn corpus_routes() {
    let cases = corpus();
    assert!(cases.len() >= 250, "corpus has {} statements", cases.len());
    let cached = classifier();
    let parsing = parsing_classifier();
    let mut failures = Vec::new();
    for case in &cases {
        let got = cached.classify(case.sql.as_bytes());
        if label(got.route) != case.expect {
            failures.push(format!(
                "line {}: expected {}, got {} ({:?}): {}",
                case.line,
                case.expect,
                label(got.route),
                got.function,
                case.sql
            ));
            continue;
        }
        // A second time, from the cache (or the pre-scan): the same answer.
        assert_eq!(cached.classify(case.sql.as_bytes()), got, "{}", case.sql);
        // The full parse agrees with the pre-scan, but where the pre-scan
        // let a malformed SELECT through.
        let parsed = parsing.classify(case.sql.as_bytes());
        if parsed.route != got.route
            && !(got.lexical && case.sql.contains("malformed plain SELECT"))
        {
            failures.push(format!(
                "line {}: full parse says {}, pre-scan {}: {}",
                case.line,
                label(parsed.route),
                label(got.route),
                case.sql
            ));
        }
        if got.route == (Route::Any { hinted: false }) && !got.runs_on_standby {
            failures.push(format!("line {}: balanced but not standby-safe", case.line));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let stats = cached.cache_stats();
    assert!(stats.hits > 0 && stats.entries > 0, "{stats:?}");
}

#[test]
fn corpus_covers_every_reason() {
    let cases = corpus();
    for reason in [
        Reason::Empty,
        Reason::Unparsable,
        Reason::MultiStatement,
        Reason::Hint,
        Reason::Write,
        Reason::Ddl,
        Reason::CopyFrom,
        Reason::CopyFile,
        Reason::DataModifyingCte,
        Reason::SelectInto,
        Reason::RowLock,
        Reason::WritingFunction,
        Reason::VolatileFunction,
        Reason::UnknownFunction,
        Reason::Serializable,
        Reason::ReadWrite,
        Reason::TwoPhase,
        Reason::Snapshot,
        Reason::Lock,
        Reason::Call,
        Reason::Do,
        Reason::Maintenance,
        Reason::ListenNotify,
        Reason::Cursor,
        Reason::PreparedStatement,
        Reason::Discard,
        Reason::Utility,
    ] {
        let label = format!("primary {reason}");
        assert!(
            cases.iter().any(|c| c.expect == label),
            "no corpus case for {label}"
        );
    }
}

#[test]
fn temporary_tables_and_relations() {
    for (sql, temp) in [
        ("CREATE TEMP TABLE x (id int)", vec!["x"]),
        ("create temporary table \"X y\" (id int)", vec!["X y"]),
        ("CREATE TABLE pg_temp.y (id int)", vec!["y"]),
        ("SELECT 1 AS a INTO TEMP z", vec!["z"]),
        ("CREATE TEMP VIEW v AS SELECT 1", vec!["v"]),
        ("CREATE TEMP SEQUENCE s", vec!["s"]),
        ("CREATE TEMP TABLE a AS SELECT 1", vec!["a"]),
        (
            "CREATE TEMP TABLE b (id int); INSERT INTO b VALUES (1)",
            vec!["b"],
        ),
        ("CREATE TABLE t (id int)", vec![]),
        ("CREATE UNLOGGED TABLE u (id int)", vec![]),
        ("SELECT 1 INTO w", vec![]),
    ] {
        let c = classify(sql);
        assert_eq!(c.temp_created, temp, "{sql}");
        assert!(c.route.is_primary() && c.writes, "{sql}");
    }
    assert_eq!(
        classify("CREATE VIEW v AS SELECT * FROM tmp").created,
        vec!["v"]
    );
    assert!(
        classify("CREATE VIEW v AS SELECT * FROM tmp")
            .relations
            .contains(&"tmp".to_owned())
    );

    // Full parse: the relations exactly, schemas dropped.
    let c = classify("SELECT count(*) FROM x JOIN public.y ON x.id = y.id");
    assert!(!c.lexical);
    assert_eq!(c.relations, vec!["x", "y"]);
    assert!(c.touches(|r| r == "y"));
    assert!(!c.touches(|r| r == "z"));
    // Pre-scan: a superset.
    let c = classify("SELECT a FROM tmp_orders o WHERE o.id = 1");
    assert!(c.lexical && c.relations.contains(&"tmp_orders".to_owned()));
    for sql in [
        "EXPLAIN SELECT * FROM tmp",
        "COPY tmp TO STDOUT",
        "COPY (SELECT lower(a) FROM tmp) TO STDOUT",
        "INSERT INTO tmp VALUES (1)",
        "SELECT lower(a) FROM pg_temp.tmp",
        "WITH q AS (SELECT * FROM tmp) SELECT abs(1) FROM q",
        "SELECT abs(1) FROM t WHERE EXISTS (SELECT 1 FROM tmp)",
        "DECLARE c CURSOR FOR SELECT * FROM tmp",
        "LOCK tmp",
        "TRUNCATE tmp",
        "SELECT \"tmp\".a FROM \"tmp\"",
    ] {
        assert!(
            classify(sql).touches(|r| r == "tmp"),
            "{sql}: {:?}",
            classify(sql).relations
        );
    }
}

#[test]
fn transaction_control() {
    let tx = |sql: &str| classify(sql).transaction;
    let ro = TxMode {
        read_only: Some(true),
        ..TxMode::default()
    };
    assert_eq!(tx("BEGIN"), Some(TxControl::Begin(TxMode::default())));
    assert_eq!(tx("BEGIN READ ONLY"), Some(TxControl::Begin(ro)));
    assert_eq!(
        tx("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"),
        Some(TxControl::Begin(TxMode {
            isolation: Some(Isolation::Serializable),
            read_only: Some(true),
            deferrable: Some(true),
        }))
    );
    assert_eq!(
        tx("BEGIN ISOLATION LEVEL REPEATABLE READ"),
        Some(TxControl::Begin(TxMode {
            isolation: Some(Isolation::RepeatableRead),
            ..TxMode::default()
        }))
    );
    assert_eq!(tx("COMMIT"), Some(TxControl::Commit { chain: false }));
    assert_eq!(tx("END"), Some(TxControl::Commit { chain: false }));
    assert_eq!(
        tx("COMMIT AND CHAIN"),
        Some(TxControl::Commit { chain: true })
    );
    assert_eq!(tx("ABORT"), Some(TxControl::Rollback { chain: false }));
    assert_eq!(tx("SAVEPOINT a"), Some(TxControl::Savepoint));
    assert_eq!(tx("RELEASE a"), Some(TxControl::ReleaseSavepoint));
    assert_eq!(tx("ROLLBACK TO a"), Some(TxControl::RollbackToSavepoint));
    assert_eq!(
        tx("PREPARE TRANSACTION 'x'"),
        Some(TxControl::PrepareTransaction)
    );
    assert_eq!(tx("COMMIT PREPARED 'x'"), Some(TxControl::CommitPrepared));
    assert_eq!(
        tx("ROLLBACK PREPARED 'x'"),
        Some(TxControl::RollbackPrepared)
    );
    assert_eq!(
        tx("SET TRANSACTION READ ONLY"),
        Some(TxControl::SetTransaction(ro))
    );
    assert_eq!(
        tx("SET transaction_read_only = 'on'"),
        Some(TxControl::SetTransaction(ro))
    );
    assert_eq!(
        tx("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
        Some(TxControl::SetSessionCharacteristics(ro))
    );
    assert_eq!(
        tx("SET default_transaction_read_only TO true"),
        Some(TxControl::SetSessionCharacteristics(ro))
    );
    assert_eq!(
        tx("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        Some(TxControl::SetSessionCharacteristics(TxMode {
            isolation: Some(Isolation::Serializable),
            ..TxMode::default()
        }))
    );
    assert_eq!(
        tx("RESET default_transaction_isolation"),
        Some(TxControl::SetSessionCharacteristics(TxMode {
            isolation: Some(Isolation::ReadCommitted),
            ..TxMode::default()
        }))
    );
    assert_eq!(
        tx("SET transaction_isolation TO DEFAULT"),
        Some(TxControl::SetTransaction(TxMode {
            isolation: Some(Isolation::ReadCommitted),
            ..TxMode::default()
        }))
    );
    assert_eq!(
        tx("RESET ALL"),
        Some(TxControl::SetSessionCharacteristics(TxMode::DEFAULTS))
    );
    assert_eq!(
        tx("DISCARD ALL"),
        Some(TxControl::SetSessionCharacteristics(TxMode::DEFAULTS))
    );
    assert_eq!(tx("SET work_mem = '1MB'"), None);
    assert_eq!(tx("SELECT 1"), None);
    // The last one, in a multi-statement string.
    assert_eq!(
        tx("BEGIN; INSERT INTO t VALUES (1); COMMIT"),
        Some(TxControl::Commit { chain: false })
    );
    // A SERIALIZABLE session default: the statement runs anywhere, the
    // transactions after it only on the primary.
    let c = classify("SET default_transaction_isolation = 'serializable'");
    assert!(c.route.is_primary() && c.runs_on_standby);
    let c = classify("BEGIN ISOLATION LEVEL SERIALIZABLE");
    assert!(c.route.is_primary() && !c.runs_on_standby && !c.writes);
}

#[test]
fn route_settings() {
    let setting = |sql: &str| classify(sql).route_setting.clone();
    assert_eq!(
        setting("SET pghalo.route = standby"),
        Some(RouteSetting::Set {
            hint: Hint::Standby,
            local: false
        })
    );
    assert_eq!(
        setting("SET LOCAL pghalo.route TO 'PRIMARY'"),
        Some(RouteSetting::Set {
            hint: Hint::Primary,
            local: true
        })
    );
    assert_eq!(
        setting("set session \"pghalo.route\" = 'any'"),
        Some(RouteSetting::Set {
            hint: Hint::Any,
            local: false
        })
    );
    assert_eq!(setting("RESET pghalo.route"), Some(RouteSetting::Reset));
    assert_eq!(
        setting("SET pghalo.route TO DEFAULT"),
        Some(RouteSetting::Reset)
    );
    assert_eq!(setting("RESET ALL"), Some(RouteSetting::Reset));
    assert_eq!(setting("DISCARD ALL"), Some(RouteSetting::Reset));
    assert_eq!(
        setting("SET pghalo.route = 'nowhere'"),
        Some(RouteSetting::Invalid("nowhere".into()))
    );
    assert_eq!(setting("SET pghalo.other = standby"), None);
    assert_eq!(setting("DISCARD PLANS"), None);
    // The literal matters: no sharing of cache entries between values.
    let c = classifier();
    let a = c.classify(b"SET pghalo.route = 'standby'");
    let b = c.classify(b"SET pghalo.route = 'primary'");
    assert_ne!(a.route_setting, b.route_setting);
}

#[test]
fn hints_and_session_routes() {
    let random = classify("SELECT random()");
    assert_eq!(
        random.route_with(Some(Hint::Standby)),
        Route::Any { hinted: true }
    );
    assert_eq!(
        random.route_with(Some(Hint::Any)),
        Route::Primary {
            reason: Reason::VolatileFunction
        }
    );
    assert_eq!(random.route_with(None), random.route);
    let read = classify("SELECT 1");
    assert_eq!(
        read.route_with(Some(Hint::Primary)),
        Route::Primary {
            reason: Reason::Hint
        }
    );
    assert_eq!(
        read.route_with(Some(Hint::Standby)),
        Route::Any { hinted: false }
    );
    for sql in [
        "INSERT INTO t VALUES (1)",
        "SELECT nextval('s')",
        "SELECT * FROM t FOR SHARE",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "DECLARE c CURSOR FOR SELECT random()",
        "SELECT random(); SELECT 1",
        "LOCK t",
        "SELECT lower(\"x\") FROM t; VACUUM",
    ] {
        assert!(
            classify(sql).route_with(Some(Hint::Standby)).is_primary(),
            "a standby hint never sends {sql} to a standby"
        );
    }
    // The statement's own hint beats the session's.
    let c = classify("/* pghalo: any */ SELECT 1");
    assert_eq!(c.hint, Some(Hint::Any));
    assert_eq!(
        c.route_with(Some(Hint::Primary)),
        Route::Any { hinted: false }
    );
    let c = classify("/* pghalo: primary */ SELECT 1");
    assert!(c.route_with(Some(Hint::Standby)).is_primary());
    let c = classify("/* pghalo: any */ SELECT random()");
    assert!(c.route_with(Some(Hint::Standby)).is_primary());
}

#[test]
fn facts_of_common_statements() {
    let c = classify("SELECT 1");
    assert_eq!(
        (c.kind, c.writes, c.runs_on_standby, c.statements),
        (StatementKind::Select, false, true, 1)
    );
    for (sql, kind) in [
        ("INSERT INTO t VALUES (1)", StatementKind::Insert),
        ("UPDATE t SET a = 1", StatementKind::Update),
        ("DELETE FROM t", StatementKind::Delete),
        (
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            StatementKind::Merge,
        ),
        ("CREATE TABLE t (a int)", StatementKind::Ddl),
        ("ALTER TABLE t ADD b int", StatementKind::Ddl),
        ("GRANT SELECT ON t TO r", StatementKind::Ddl),
        ("VACUUM", StatementKind::Other),
    ] {
        let c = classify(sql);
        assert_eq!(c.kind, kind, "{sql}");
        assert!(c.writes && !c.runs_on_standby, "{sql}");
    }
    assert_eq!(classify("BEGIN").kind, StatementKind::Transaction);
    assert_eq!(classify("VALUES (1)").kind, StatementKind::Select);
    assert_eq!(classify("SET a.b = 1").kind, StatementKind::Other);
    assert_eq!(classify("EXPLAIN SELECT 1").kind, StatementKind::Other);
    // Kept on the primary, yet harmless on a standby.
    for sql in [
        "DECLARE c CURSOR FOR SELECT * FROM t",
        "FETCH 1 FROM c",
        "CLOSE c",
        "PREPARE p AS SELECT 1",
        "DEALLOCATE p",
        "DISCARD ALL",
        "LOCK t IN ACCESS SHARE MODE",
        "UNLISTEN *",
        "COPY t TO '/tmp/t'",
    ] {
        let c = classify(sql);
        assert!(
            c.route.is_primary() && c.runs_on_standby && !c.writes,
            "{sql}"
        );
    }
    for sql in ["LISTEN ch", "LOCK t", "EXECUTE p", "SELECT random()"] {
        assert!(!classify(sql).runs_on_standby, "{sql}");
    }
    assert_eq!(
        classify("SELECT nextval('s')").function.as_deref(),
        Some("nextval")
    );
    assert_eq!(
        classify("SELECT app.audit_log('x')").function.as_deref(),
        Some("app.audit_log")
    );
    assert_eq!(classify("SELECT 1; SELECT 2").statements, 2);
}

#[test]
fn bad_input_goes_to_the_primary() {
    let c = classifier();
    let reason = |sql: &[u8]| match c.classify(sql).route {
        Route::Primary { reason } => Some(reason),
        Route::Any { .. } => None,
    };
    assert_eq!(reason(b""), Some(Reason::Empty));
    assert_eq!(reason(b"   \n\t"), Some(Reason::Empty));
    assert_eq!(reason(b"\0"), Some(Reason::NulByte));
    assert_eq!(reason(b"SELECT 1\0"), Some(Reason::NulByte));
    assert_eq!(reason(b"SELECT 1\0; DELETE FROM t"), Some(Reason::NulByte));
    assert_eq!(reason(b"SELECT '\xff'"), Some(Reason::InvalidUtf8));
    assert_eq!(reason(b"SELECT \xff\xfe FROM t"), Some(Reason::InvalidUtf8));
    assert_eq!(
        reason(b"SELECT * FROM \"t\xc3\""),
        Some(Reason::InvalidUtf8)
    );
    assert_eq!(reason(b"\xc3"), Some(Reason::InvalidUtf8));
    // A LATIN1 client's valid INSERT: unknown, so a write.
    let latin1 = c.classify(b"INSERT INTO t VALUES ('caf\xe9')");
    assert!(latin1.route.is_primary() && latin1.writes && !latin1.runs_on_standby);
    assert!(c.classify(b"SELEC 1").writes, "unparsable: may write");
    assert_eq!(reason("SELECT 'é', \"ü\" FROM tæble".as_bytes()), None);
    assert_eq!(
        reason("SELECT lower(\"ü\") FROM tæble".as_bytes()),
        None,
        "non-ASCII identifiers parse"
    );

    const MB: usize = 1 << 20;
    // 1 MB plain SELECT: the pre-scan settles it.
    let mut big = String::from("SELECT * FROM t WHERE id IN (0");
    let mut i = 1;
    while big.len() < MB {
        big.push_str(&format!(",{i}"));
        i += 1;
    }
    big.push(')');
    let got = c.classify(big.as_bytes());
    assert!(got.lexical && !got.route.is_primary());
    // 1 MB of distinct identifiers: linear, not quadratic.
    let columns: Vec<String> = (0..MB / 8).map(|i| format!("c{i}")).collect();
    let wide = format!("SELECT {} FROM t", columns.join(", "));
    let started = Instant::now();
    let got = c.classify(wide.as_bytes());
    assert!(got.lexical && got.relations.len() == columns.len() + 1);
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    // Thousands of relations through the full parse.
    let tables: Vec<String> = (0..3000).map(|i| format!("t{i}")).collect();
    let joined = format!("SELECT abs(1) FROM {}", tables.join(", "));
    let got = c.classify(joined.as_bytes());
    assert!(!got.lexical && !got.route.is_primary());
    assert_eq!(got.relations, tables);
    let big = format!("SELECT '{}'", "x".repeat(MB));
    assert!(!c.classify(big.as_bytes()).route.is_primary());
    // 1 MB statements the pre-scan cannot settle: not parsed.
    let mut insert = String::from("INSERT INTO t VALUES (0)");
    while insert.len() < MB {
        insert.push_str(",(1)");
    }
    assert_eq!(reason(insert.as_bytes()), Some(Reason::TooLarge));
    let call = format!("SELECT lower('{}')", "x".repeat(MB));
    assert_eq!(reason(call.as_bytes()), Some(Reason::TooLarge));
    let write_in_read = format!("SELECT '{}' FROM t FOR UPDATE", "x".repeat(MB));
    assert!(reason(write_in_read.as_bytes()).is_some());
    // Only comments, and unterminated.
    let comment = format!("/* {} */", "x".repeat(MB));
    assert_eq!(reason(comment.as_bytes()), Some(Reason::Empty));
    let open = format!("SELECT '{}", "x".repeat(MB));
    assert_eq!(reason(open.as_bytes()), Some(Reason::Unparsable));
    // A large statement the parser does read, when allowed to.
    let roomy = classifier_with(ClassifierConfig {
        max_parse_bytes: 2 * MB,
        ..ClassifierConfig::default()
    });
    let mut insert = String::from("INSERT INTO t VALUES (0)");
    while insert.len() < 256 * 1024 {
        insert.push_str(",(1)");
    }
    assert_eq!(
        roomy.classify(insert.as_bytes()).route,
        Route::Primary {
            reason: Reason::Write
        }
    );

    // Trees nested deeper than pg_query decodes: unparsable, not a panic.
    let deep = format!("SELECT abs({}1)", "1+".repeat(200));
    assert_eq!(reason(deep.as_bytes()), Some(Reason::Unparsable));
    let deep = format!("SELECT abs({}1{})", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(reason(deep.as_bytes()), None, "parentheses add no depth");
    let deep = format!("SELECT abs({}1{})", "(".repeat(20_000), ")".repeat(20_000));
    assert_eq!(reason(deep.as_bytes()), Some(Reason::Unparsable));
    let deep = format!("SELECT {}1{}", "(SELECT ".repeat(300), ")".repeat(300));
    let _ = reason(deep.as_bytes());
}

#[test]
fn cache_hits_with_literals_masked() {
    let c = classifier();
    let first = c.classify(b"SELECT count(*) FROM pgbench_accounts WHERE aid = 1");
    assert!(!first.lexical);
    for aid in [2, 3, 123_456] {
        let sql = format!("select count(*)  FROM pgbench_accounts WHERE aid = {aid}");
        assert_eq!(c.classify(sql.as_bytes()), first);
    }
    let stats = c.cache_stats();
    assert_eq!((stats.entries, stats.hits, stats.misses), (1, 3, 1));
    // A hint is part of the key.
    let hinted =
        c.classify(b"/* pghalo: primary */ SELECT count(*) FROM pgbench_accounts WHERE aid = 1");
    assert!(hinted.route.is_primary());
    // Parameters of prepared statements too.
    let a = c.classify(b"SELECT abs($1) FROM t WHERE id = $2");
    let b = c.classify(b"SELECT abs($3) FROM t WHERE id = $4");
    assert_eq!(a, b);
    c.clear_cache();
    assert_eq!(c.cache_stats().entries, 0);
}

/// A volatility source whose answers change, as a pg_proc lookup's do
/// after `ALTER FUNCTION ... VOLATILE`.
struct Switchable {
    volatility: Mutex<Volatility>,
    generation: AtomicU64,
}

impl FunctionVolatility for Switchable {
    fn volatility(&self, _: Option<&str>, name: &str) -> Option<Volatility> {
        (name == "f").then(|| *self.volatility.lock().unwrap())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

#[test]
fn a_new_volatility_generation_invalidates_the_cache() {
    let source = Arc::new(Switchable {
        volatility: Mutex::new(Volatility::Stable),
        generation: AtomicU64::new(0),
    });
    let c = PgQueryClassifier::new(ClassifierConfig::default(), source.clone());
    assert!(!c.classify(b"SELECT f(1)").route.is_primary());
    *source.volatility.lock().unwrap() = Volatility::Volatile;
    assert!(
        !c.classify(b"SELECT f(2)").route.is_primary(),
        "same generation: cached"
    );
    source.generation.store(1, Ordering::SeqCst);
    assert!(c.classify(b"SELECT f(3)").route.is_primary());
}

#[test]
fn pgpool_function_lists() {
    let write_list = classifier_with(ClassifierConfig {
        functions: FunctionRules::from_lists(&[], &["my_.*", "app\\.audit_log"]).unwrap(),
        ..ClassifierConfig::default()
    });
    let route = |c: &PgQueryClassifier, sql: &str| label(c.classify(sql.as_bytes()).route);
    assert_eq!(
        route(&write_list, "SELECT my_volatile_insert()"),
        "primary writing_function"
    );
    assert_eq!(
        route(
            &write_list,
            "/* pghalo: standby */ SELECT my_volatile_insert()"
        ),
        "primary writing_function",
        "a listed writer is a write"
    );
    assert_eq!(
        route(&write_list, "SELECT app.audit_log()"),
        "primary writing_function"
    );
    assert_eq!(route(&write_list, "SELECT random()"), "any -");
    assert_eq!(route(&write_list, "SELECT mystery_func()"), "any -");
    assert_eq!(
        route(&write_list, "SELECT nextval('s')"),
        "primary writing_function"
    );

    let read_list = classifier_with(ClassifierConfig {
        functions: FunctionRules::from_lists(&["get_.*", "lower"], &[]).unwrap(),
        ..ClassifierConfig::default()
    });
    assert_eq!(route(&read_list, "SELECT get_user_name(1)"), "any -");
    assert_eq!(route(&read_list, "SELECT lower('A')"), "any -");
    assert_eq!(
        route(&read_list, "SELECT upper('a')"),
        "primary not_read_only_function"
    );
    assert_eq!(
        route(&read_list, "SELECT count(*) FROM t"),
        "primary not_read_only_function",
        "pgpool: every function not listed writes"
    );
    assert_eq!(
        route(&read_list, "/* pghalo: standby */ SELECT upper('a')"),
        "any hinted"
    );
    assert_eq!(
        route(&read_list, "SELECT pg_advisory_lock(1)"),
        "primary writing_function"
    );
}

/// A fake classifier: the trait lets the session's tests use one.
struct AlwaysPrimary;

impl Classifier for AlwaysPrimary {
    fn classify(&self, _: &[u8]) -> Arc<Classification> {
        Arc::new(Classification::primary(Reason::Hint))
    }
}

#[test]
fn the_trait_takes_a_stand_in() {
    let classifiers: Vec<Box<dyn Classifier>> =
        vec![Box::new(AlwaysPrimary), Box::new(classifier())];
    let routes: Vec<bool> = classifiers
        .iter()
        .map(|c| c.classify(b"SELECT 1").route.is_primary())
        .collect();
    assert_eq!(routes, vec![true, false]);
}

/// Statements starting with these write or fail on a standby (or must
/// stay with their node), whatever follows.
const WRITE_STARTS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "create",
    "drop",
    "alter",
    "truncate",
    "grant",
    "revoke",
    "lock",
    "vacuum",
    "cluster",
    "reindex",
    "refresh",
    "call",
    "do",
    "listen",
    "notify",
    "comment",
    "security",
    "import",
    "reassign",
    "prepare",
    "execute",
    "declare",
    "fetch",
    "move",
    "close",
    "discard",
    "checkpoint",
    "load",
];

/// Built-in writers: a call outside EXPLAIN means the primary.
const WRITER_CALLS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "txid_current",
    "pg_notify",
    "set_config",
    "lo_import",
];

/// An oracle independent of the parser: what the text shows at top level
/// that can never be balanced.
fn visibly_writes(text: &str) -> bool {
    let Ok(list) = statements(text) else {
        return false;
    };
    list.iter().any(|s| {
        let words: Vec<&str> = s
            .tokens
            .iter()
            .map(|t| match t {
                Token::Word(w) => w.as_str(),
                _ => "",
            })
            .collect();
        let first = s
            .tokens
            .iter()
            .find_map(|t| match t {
                Token::Word(w) => Some(w.as_str()),
                Token::Punct('(') => None,
                _ => Some(""),
            })
            .unwrap_or("");
        if WRITE_STARTS.contains(&first) {
            return true;
        }
        if first == "explain" {
            return false;
        }
        let after_paren = s.tokens.windows(2).any(|w| {
            matches!(&w[0], Token::Punct('('))
                && matches!(&w[1], Token::Word(x) if ["insert", "update", "delete", "merge"].contains(&x.as_str()))
        });
        let locks = words.windows(2).any(|w| {
            w[0] == "for" && ["update", "share", "no", "key"].contains(&w[1])
        });
        // `f(1) 'x'` is a typed literal (a cast to type f), not a call.
        let typed_literal = s
            .tokens
            .windows(2)
            .any(|w| matches!((&w[0], &w[1]), (Token::Punct(')'), Token::Literal)));
        let writer = !typed_literal
            && s.tokens.windows(2).any(|w| {
                matches!(&w[0], Token::Word(f) if WRITER_CALLS.contains(&f.as_str()))
                    && matches!(&w[1], Token::Punct('('))
            });
        after_paren || locks || writer || words.contains(&"into")
    })
}

const SNIPPETS: &[&str] = &[
    ";",
    "'",
    "\"",
    "$$",
    "/*",
    "*/",
    "--",
    "\n",
    "(",
    ")",
    " ",
    ",",
    "$1",
    "::",
    " FOR UPDATE",
    " FOR SHARE",
    " INTO x",
    " nextval('s')",
    "DELETE FROM t ",
    "INSERT INTO t VALUES (1)",
    "WITH d AS (DELETE FROM t RETURNING *) ",
    "UPDATE ",
    "; DROP TABLE t",
    "/* pghalo: standby */ ",
    "/* pghalo: primary */",
    "E'\\''",
    "SELECT ",
    "pg_advisory_lock(1)",
    "random()",
    "my_volatile_insert()",
    "é",
    "\u{1F600}",
    "EXPLAIN ANALYZE ",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "COPY t FROM STDIN",
    "LOCK t",
    "$a$",
    "U&'\\0041'",
    "0x1F",
    "1e5",
    "1_000",
    "CALL p()",
    "DO $$ $$",
    "TABLE t",
];

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut s = base.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        let at = rng.gen_range(0..=s.len());
        match rng.gen_range(0..8) {
            0 => {
                let snippet = SNIPPETS[rng.gen_range(0..SNIPPETS.len())].as_bytes();
                s.splice(at..at, snippet.iter().copied());
            }
            1 if !s.is_empty() => {
                let end = (at + rng.gen_range(1..8)).min(s.len());
                s.drain(at.min(end)..end);
            }
            2 if !s.is_empty() => {
                let end = (at + rng.gen_range(1..16)).min(s.len());
                let piece = s[at.min(end)..end].to_vec();
                s.splice(at..at, piece);
            }
            3 if at < s.len() => s[at] = rng.r#gen(),
            4 => s.insert(at, [0u8, 0xff, 0xc3, 0x80, b'\\'][rng.gen_range(0..5)]),
            5 => s.truncate(at),
            6 => s.make_ascii_uppercase(),
            _ => {
                let snippet = SNIPPETS[rng.gen_range(0..SNIPPETS.len())].as_bytes();
                s.extend_from_slice(snippet);
            }
        }
    }
    s
}

#[test]
fn mutations_never_panic_and_never_balance_a_visible_write() {
    let cases = corpus();
    let cached = classifier();
    let parsing = parsing_classifier();
    let mut rng = StdRng::seed_from_u64(0x9e3779b97f4a7c15);
    let mut balanced = 0;
    for i in 0..12_000 {
        let base = cases[rng.gen_range(0..cases.len())].sql.as_bytes();
        let bytes = mutate(&mut rng, base);
        let classifier = if i % 2 == 0 { &cached } else { &parsing };
        let c = classifier.classify(&bytes);
        if c.route.is_primary() {
            continue;
        }
        balanced += 1;
        let text = std::str::from_utf8(&bytes).expect("balanced text is UTF-8");
        assert!(!text.contains('\0'));
        assert!(
            !visibly_writes(text),
            "balanced a visible write: {text:?} -> {c:?}"
        );
        assert_eq!(c.statements, 1, "{text:?}");
        if !c.lexical && c.route == (Route::Any { hinted: false }) {
            assert!(c.runs_on_standby, "{text:?}");
        }
    }
    assert!(
        balanced > 1000,
        "the mutations should keep many reads: {balanced}"
    );
    // And bytes that were never SQL.
    for _ in 0..3_000 {
        let len = rng.gen_range(0..64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        let _ = cached.classify(&bytes);
    }
}

/// Classification throughput, warm and cold cache: not a pass/fail test
/// (timings depend on the machine). Run with
/// `cargo test --release -p pghalo --lib router::classify::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    fn rate(label: &str, n: usize, mut f: impl FnMut(usize)) {
        // Warm up, then measure.
        for i in 0..n / 10 {
            f(i);
        }
        let start = Instant::now();
        for i in 0..n {
            f(i);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{label:<58} {:>12.0} statements/s {:>8.2} us/statement",
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
    }
    let warm = classifier();
    let cold = classifier_with(ClassifierConfig {
        cache_entries: 0,
        ..ClassifierConfig::default()
    });
    let parse_only = parsing_classifier();

    let pgbench: Vec<String> = (0..10_000)
        .map(|aid| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"))
        .collect();
    rate("pgbench -S, warm cache", 200_000, |i| {
        let _ = warm.classify(pgbench[i % pgbench.len()].as_bytes());
    });
    rate(
        "pgbench -S, cold (no cache: the pre-scan settles it)",
        200_000,
        |i| {
            let _ = cold.classify(pgbench[i % pgbench.len()].as_bytes());
        },
    );
    rate(
        "pgbench -S, cold (no cache, no pre-scan: full parse)",
        20_000,
        |i| {
            let _ = parse_only.classify(pgbench[i % pgbench.len()].as_bytes());
        },
    );
    let calls: Vec<String> = (0..10_000)
        .map(|aid| format!("SELECT count(*) FROM pgbench_accounts WHERE aid = {aid}"))
        .collect();
    rate("SELECT count(*) ... aid = N, warm cache", 200_000, |i| {
        let _ = warm.classify(calls[i % calls.len()].as_bytes());
    });
    rate(
        "SELECT count(*) ... aid = N, cold (no cache: full parse)",
        20_000,
        |i| {
            let _ = cold.classify(calls[i % calls.len()].as_bytes());
        },
    );
    let update = "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 42";
    rate("pgbench UPDATE, warm cache", 200_000, |_| {
        let _ = warm.classify(update.as_bytes());
    });
    rate(
        "pgbench UPDATE, cold (no cache: full parse)",
        20_000,
        |_| {
            let _ = cold.classify(update.as_bytes());
        },
    );
    let corpus: Vec<&str> = corpus().iter().map(|c| c.sql).collect();
    rate("corpus mix, warm cache", 200_000, |i| {
        let _ = warm.classify(corpus[i % corpus.len()].as_bytes());
    });
    rate(
        "corpus mix, cold (no cache; pre-scan, else full parse)",
        20_000,
        |i| {
            let _ = cold.classify(corpus[i % corpus.len()].as_bytes());
        },
    );
    println!("{:?}", warm.cache_stats());
}
