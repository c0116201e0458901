//! What a statement does to session state, for transaction pooling: a
//! client's session-level settings must follow it from one server
//! connection to the next (tracked and replayed), and state that cannot
//! follow it (SQL-level PREPARE, LISTEN, WITH HOLD cursors, temporary
//! tables, session advisory locks, set_config, role changes) is refused with
//! a clear error rather than left behind for another client.

use crate::router::lexer::{Kind, Statement, Token, statements};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing that outlives the transaction.
    Plain,
    /// A session-level SET of `name`; `statement` replays it.
    Set { name: String, statement: String },
    /// RESET of one parameter, or of all (`None`).
    Reset(Option<String>),
    /// DISCARD ALL: the server forgets the session's state, prepared
    /// statements included.
    Discard,
    /// DEALLOCATE ALL: every prepared statement of the server session is
    /// gone, at once and for good (it is not undone by a ROLLBACK).
    DeallocateAll,
    /// ROLLBACK TO SAVEPOINT: the transaction goes on without what was
    /// done after the savepoint, session SETs included.
    RollbackToSavepoint,
    /// Not possible under transaction pooling; the reason names it.
    Refuse(String),
}

/// The effects of each statement in `sql`, in order.
pub fn effects(sql: &str) -> Vec<Effect> {
    if plainly_plain(sql) {
        return vec![Effect::Plain];
    }
    effects_by_lexing(sql)
}

/// First words of every statement [`effect`] may find more than Plain in.
pub(super) const SESSION_WORDS: [&str; 11] = [
    "set",
    "reset",
    "discard",
    "deallocate",
    "rollback",
    "prepare",
    "listen",
    "load",
    "declare",
    "create",
    "do",
];

/// One statement that cannot touch session state, told without lexing it
/// (transaction pooling looks at every Query, and most are like this): no
/// `;` but a last one, so a single statement; a first word none of
/// [`effect`]'s rules starts with; and no mention of the functions it
/// refuses. Anything else (a leading comment or parenthesis included) is
/// lexed.
fn plainly_plain(sql: &str) -> bool {
    let body = sql.trim_end_matches(|c: char| c.is_ascii_whitespace());
    let body = body.strip_suffix(';').unwrap_or(body);
    if body.contains(';') {
        return false;
    }
    let text = body.trim_start_matches(|c: char| c.is_ascii_whitespace());
    if !text.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return false;
    }
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let first = &text[..end];
    !SESSION_WORDS.iter().any(|w| first.eq_ignore_ascii_case(w))
        && !contains_ignoring_case(text, "set_config")
        && !contains_ignoring_case(text, "advisory_lock")
        // SELECT ... INTO TEMP, pg_temp.
        && !contains_ignoring_case(text, "temp")
        // A U&"..." name may spell anything.
        && !text.contains("&\"")
}

fn contains_ignoring_case(text: &str, lower: &str) -> bool {
    text.as_bytes()
        .windows(lower.len())
        .any(|w| w.eq_ignore_ascii_case(lower.as_bytes()))
}

fn effects_by_lexing(sql: &str) -> Vec<Effect> {
    match statements(sql) {
        Ok(list) => list.iter().map(|stmt| effect_at(stmt, 0)).collect(),
        // Unreadable text reaches the server, which reports the error.
        Err(_) => vec![Effect::Plain],
    }
}

/// What `stmt` does to the session; `depth` counts the DO blocks and
/// EXECUTEd strings it is found in (see `do_block`).
pub(super) fn effect_at(stmt: &Statement<'_>, depth: u8) -> Effect {
    let words = stmt.leading_words(4);
    let refuse = |what: &str| Effect::Refuse(what.to_string());
    if stmt.calls("set_config") && !set_config_only_locally(&stmt.tokens) {
        return refuse("set_config() at session level");
    }
    for function in [
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    ] {
        if stmt.calls(function) {
            return refuse(&format!("{function}() at session level"));
        }
    }
    if let Some(what) = temp_creation(stmt) {
        return refuse(what);
    }
    match words.as_slice() {
        // For the transaction only, but CREATE in it makes temporary
        // objects that outlive it.
        ["set", "local", "search_path" | "schema", ..]
            if temp_schema_creates(&set_values(stmt.text)) =>
        {
            refuse("a search_path with pg_temp first")
        }
        ["set", "local", ..] | ["set", "transaction", ..] | ["set", "constraints", ..] => {
            Effect::Plain
        }
        ["set", "session", "characteristics", ..] => refuse("SET SESSION CHARACTERISTICS"),
        ["set", "role", ..] | ["set", "session", "role", ..] | ["reset", "role", ..] => {
            refuse("SET ROLE")
        }
        ["set", "session", "authorization", ..] | ["reset", "session", "authorization", ..] => {
            refuse("SET SESSION AUTHORIZATION")
        }
        ["set", ..] => match set_target(stmt) {
            // Then CREATE makes temporary objects, without saying TEMP.
            Some(name) if name == "search_path" && temp_schema_creates(&set_values(stmt.text)) => {
                refuse("a search_path with pg_temp first")
            }
            Some(name)
                if let Some(what) = set_values(stmt.text)
                    .first()
                    .and_then(|value| unreadable_setting(&name, value)) =>
            {
                Effect::Refuse(what)
            }
            Some(name) => Effect::Set {
                name,
                statement: stmt.text.to_string(),
            },
            None => refuse("this SET"),
        },
        ["reset", "all", ..] => Effect::Reset(None),
        // The same spelling rules as SET's target (dotted custom names,
        // TIME ZONE...), so that the RESET finds the SET it undoes.
        ["reset", ..] => match set_target(stmt) {
            Some(name) => Effect::Reset(Some(name)),
            None => refuse("this RESET"),
        },
        ["discard", "all", ..] => Effect::Discard,
        // PLANS, SEQUENCES, TEMP: caches and temporary objects, no settings.
        ["discard", ..] => Effect::Plain,
        ["deallocate", "all", ..] | ["deallocate", "prepare", "all", ..] => Effect::DeallocateAll,
        // Its tag is ROLLBACK's: only the text tells the transaction goes on.
        ["rollback", "to", ..] | ["rollback", "work" | "transaction", "to", ..] => {
            Effect::RollbackToSavepoint
        }
        ["prepare", "transaction", ..] => Effect::Plain,
        ["prepare", ..] => {
            refuse("PREPARE (SQL-level prepared statements; protocol-level ones work)")
        }
        ["listen", ..] => refuse("LISTEN"),
        ["load", ..] => refuse("LOAD"),
        ["declare", ..] if has_words(stmt, &["with", "hold"]) => refuse("DECLARE ... WITH HOLD"),
        ["create", "temp" | "temporary", ..]
        | ["create", "local" | "global", "temp" | "temporary", ..] => {
            if has_words(stmt, &["on", "commit", "drop"]) {
                Effect::Plain
            } else {
                refuse("temporary tables")
            }
        }
        ["create", "or", "replace", "temp" | "temporary", ..] => refuse("temporary views"),
        ["do", ..] => super::do_block::do_block(stmt, depth),
        // EXPLAIN ANALYZE runs its statement.
        ["explain", ..] => {
            let tokens = stmt
                .tokens
                .get(explained(&stmt.tokens)..)
                .unwrap_or_default();
            // PostgreSQL does not explain an EXPLAIN: nothing runs (and
            // pghalo does not recurse on a client's say-so).
            if matches!(tokens.first(), Some(Token::Word(w)) if w == "explain") {
                return Effect::Plain;
            }
            let inner = Statement {
                text: stmt.text,
                tokens: tokens.to_vec(),
            };
            effect_at(&inner, depth)
        }
        _ => Effect::Plain,
    }
}

/// A temporary object made without CREATE TEMP: `SELECT ... INTO TEMP`,
/// or a CREATE whose object is named in pg_temp (kept: ON COMMIT DROP).
fn temp_creation(stmt: &Statement<'_>) -> Option<&'static str> {
    let tokens = &stmt.tokens;
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    for (i, token) in tokens.iter().enumerate().skip(1) {
        if !matches!(token, Token::Word(w) if w == "into")
            || matches!(word(i - 1), Some("insert" | "merge"))
        {
            continue;
        }
        let mut at = i + 1;
        if matches!(word(at), Some("local" | "global")) {
            at += 1;
        }
        if !matches!(word(at), Some("temp" | "temporary")) {
            continue;
        }
        at += 1;
        if word(at) == Some("table") {
            at += 1;
        }
        // A table's name follows; a PL/pgSQL variable named temp does not
        // (`SELECT count(*) INTO temp FROM t`, `RETURNING id INTO temp`).
        let named = match tokens.get(at) {
            Some(Token::Quoted(_)) => true,
            Some(Token::Word(w)) => !NOT_A_NAME.contains(&w.as_str()),
            _ => false,
        };
        if named {
            return Some("SELECT ... INTO TEMP");
        }
    }
    if word(0) != Some("create") || has_words(stmt, &["on", "commit", "drop"]) {
        return None;
    }
    // The object's name comes before its definition, or before the table
    // an index, trigger or rule is made ON.
    for (i, token) in tokens.iter().enumerate().skip(1) {
        match token {
            Token::Punct('(') => break,
            Token::Word(w) if matches!(w.as_str(), "as" | "on" | "from") => break,
            Token::Word(name) | Token::Quoted(name)
                if is_temp_schema(name) && tokens.get(i + 1) == Some(&Token::Punct('.')) =>
            {
                return Some("objects in pg_temp");
            }
            _ => {}
        }
    }
    None
}

/// Whether every set_config call in `tokens` says `true` as its third
/// argument: the setting lasts only for the transaction, like SET LOCAL
/// (PostgREST sets its role and claims so on every request). Anything but
/// the plain word (a string, an expression) counts as session level.
fn set_config_only_locally(tokens: &[Token]) -> bool {
    let mut at = 0;
    while let Some(offset) = tokens[at..].windows(2).position(|w| {
        matches!((&w[0], &w[1]),
            (Token::Word(f) | Token::Quoted(f), Token::Punct('(')) if f == "set_config")
    }) {
        let open = at + offset + 1;
        let mut depth = 0usize;
        let mut argument = 0;
        let mut third: Vec<&Token> = Vec::new();
        let mut closed = false;
        for token in &tokens[open..] {
            match token {
                Token::Punct('(') => depth += 1,
                Token::Punct(')') => {
                    depth -= 1;
                    if depth == 0 {
                        closed = true;
                        break;
                    }
                }
                Token::Punct(',') if depth == 1 => {
                    argument += 1;
                    continue;
                }
                _ => {}
            }
            if argument == 2 && depth >= 1 {
                third.push(token);
            }
        }
        if !closed || !matches!(third.as_slice(), [Token::Word(w)] if w == "true") {
            return false;
        }
        at = open;
    }
    true
}

/// Words that end a SELECT's INTO clause: no table is named there.
const NOT_A_NAME: [&str; 15] = [
    "using",
    "from",
    "where",
    "group",
    "having",
    "order",
    "limit",
    "offset",
    "union",
    "intersect",
    "except",
    "window",
    "for",
    "fetch",
    "into",
];

/// Where the statement an EXPLAIN explains starts: after `EXPLAIN
/// (options)` or `EXPLAIN [ANALYZE] [VERBOSE]`.
fn explained(tokens: &[Token]) -> usize {
    let mut at = 1;
    if tokens.get(at) == Some(&Token::Punct('(')) {
        let mut depth = 0usize;
        for (i, token) in tokens.iter().enumerate().skip(at) {
            match token {
                Token::Punct('(') => depth += 1,
                Token::Punct(')') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
        }
        return tokens.len();
    }
    while matches!(tokens.get(at), Some(Token::Word(w)) if matches!(w.as_str(), "analyze" | "analyse" | "verbose"))
    {
        at += 1;
    }
    at
}

/// pg_temp, or the session's own temporary schema (pg_temp_3).
fn is_temp_schema(name: &str) -> bool {
    name == "pg_temp"
        || name
            .strip_prefix("pg_temp_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Why pghalo could no longer read the session's statements the way the
/// server does, once the server runs with `name` = `value`: with
/// standard_conforming_strings off a backslash escapes a quote in every
/// string, and in a client-only encoding (SJIS, BIG5, GBK, UHC, GB18030,
/// JOHAB) a character's second byte may be a backslash, while pghalo reads
/// the text as sent. A SET it cannot see would then stay behind.
pub fn unreadable_setting(name: &str, value: &str) -> Option<String> {
    if name != "standard_conforming_strings" && name != "client_encoding" {
        return None;
    }
    let folded: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    match name {
        "standard_conforming_strings"
            if !matches!(folded.as_str(), "on" | "true" | "yes" | "1" | "default") =>
        {
            Some("standard_conforming_strings = off".to_string())
        }
        "client_encoding"
            if matches!(
                folded.as_str(),
                "sjis"
                    | "shiftjis"
                    | "mskanji"
                    | "win932"
                    | "cp932"
                    | "shiftjis2004"
                    | "big5"
                    | "win950"
                    | "cp950"
                    | "gbk"
                    | "win936"
                    | "cp936"
                    | "gb18030"
                    | "uhc"
                    | "win949"
                    | "cp949"
                    | "johab"
            ) =>
        {
            Some(format!("client_encoding {value}"))
        }
        _ => None,
    }
}

/// The values of `SET [SESSION] name {TO|=} value, ...` (or of `SET
/// SCHEMA value`), unquoted and lowercased where PostgreSQL folds them; a
/// quoted string's comma-separated parts count as values too (erring
/// towards seeing more).
fn set_values(sql: &str) -> Vec<String> {
    let lexemes = crate::router::lexer::lexemes(sql)
        .map_while(Result::ok)
        .filter(|l| l.kind != Kind::Comment)
        .map(|l| (l.kind, &sql[l.start..l.end]))
        .skip(1) // SET
        .skip_while(|(kind, text)| {
            *kind == Kind::Word
                && (text.eq_ignore_ascii_case("session") || text.eq_ignore_ascii_case("local"))
        })
        .skip(1) // the parameter
        .skip_while(|(kind, text)| {
            *kind == Kind::Punct(b'=') || (*kind == Kind::Word && text.eq_ignore_ascii_case("to"))
        });
    let mut values = Vec::new();
    let mut skip_next = false;
    for (kind, text) in lexemes {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        match kind {
            Kind::Word | Kind::Number => values.push(text.to_ascii_lowercase()),
            Kind::Quoted => values.push(text.trim_matches('"').to_string()),
            // Escapes pghalo would have to decode (E'pg\_temp').
            Kind::String if text.starts_with(['e', 'E']) && text.contains('\\') => {
                values.push(UNKNOWN_VALUE.to_string());
            }
            Kind::String => {
                let inner = text.trim_start_matches(['e', 'E']).trim_matches('\'');
                values.extend(
                    inner
                        .split(',')
                        .map(|v| v.trim().trim_matches('"').to_string()),
                );
            }
            // U&"..." or U&'...' (the U just pushed, the quoted part
            // next): the same.
            Kind::Punct(b'&') => {
                values.pop();
                values.push(UNKNOWN_VALUE.to_string());
                skip_next = true;
                continue;
            }
            _ => {}
        }
    }
    values
}

/// A value `set_values` cannot spell out; it may be anything.
const UNKNOWN_VALUE: &str = "\0unknown";

/// Whether CREATE makes temporary objects under a search_path of
/// `schemas`: PostgreSQL creates in the first listed schema that exists,
/// so pg_temp first counts, and after `"$user"` or an empty name (which
/// rarely exist) too. A schema the client names before pg_temp is taken to
/// exist: if it did not, its CREATEs would be going astray already.
fn temp_schema_creates(schemas: &[String]) -> bool {
    schemas
        .iter()
        .find(|schema| !schema.is_empty() && schema.as_str() != "$user")
        .is_some_and(|schema| is_temp_schema(schema) || schema == UNKNOWN_VALUE)
}

/// Why transaction pooling cannot take a client whose startup parameters
/// are `settings`: they are replayed on every server connection it gets,
/// which is fine, except a search_path that makes CREATE temporary.
pub fn startup_refusal(settings: &[(String, String)]) -> Option<String> {
    settings
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("search_path"))
        .any(|(_, value)| {
            let schemas: Vec<String> = value
                .split(',')
                .map(|v| v.trim().trim_matches('"').to_ascii_lowercase())
                .collect();
            temp_schema_creates(&schemas)
        })
        .then(|| "a search_path with pg_temp first".to_string())
}

/// The parameter a `SET [SESSION] name {TO|=} ...` changes.
fn set_target(stmt: &Statement<'_>) -> Option<String> {
    let mut tokens = stmt.tokens.iter().skip(1).peekable();
    if matches!(tokens.peek(), Some(Token::Word(w)) if w == "session") {
        tokens.next();
    }
    let first = match tokens.next()? {
        Token::Word(w) => w.clone(),
        Token::Quoted(q) => q.to_lowercase(),
        _ => return None,
    };
    // Special forms of SET whose parameter is spelt differently.
    Some(match first.as_str() {
        "time" => "timezone".to_string(),
        "names" => "client_encoding".to_string(),
        "schema" => "search_path".to_string(),
        "xml" => "xmloption".to_string(),
        _ => {
            // A dotted custom parameter: myapp.user_id
            let mut name = first;
            while matches!(tokens.peek(), Some(Token::Punct('.'))) {
                tokens.next();
                match tokens.next() {
                    Some(Token::Word(w)) => {
                        name.push('.');
                        name.push_str(w);
                    }
                    _ => return None,
                }
            }
            name
        }
    })
}

fn has_words(stmt: &Statement<'_>, seq: &[&str]) -> bool {
    stmt.tokens.windows(seq.len()).any(|w| {
        w.iter()
            .zip(seq)
            .all(|(t, s)| matches!(t, Token::Word(x) if x == s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Effect {
        effects(sql).remove(0)
    }

    #[test]
    fn the_shortcut_agrees_with_the_lexer() {
        let plain = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "SELECT 1 ;\n",
            "SELECT 1 -- a comment;",
            "  select count(*) from t",
            "INSERT INTO t VALUES ('set x to 1')",
            "UPDATE t SET a = 1",
            "selectsomething",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "COMMIT",
            "BEGIN",
            "settle()",
        ];
        for sql in plain {
            assert!(plainly_plain(sql), "{sql}");
            assert_eq!(effects(sql), effects_by_lexing(sql), "{sql}");
        }
        let lexed = [
            "SET work_mem = '1MB'",
            "set search_path to x",
            "  RESET ALL",
            "rollback to savepoint a",
            "SELECT set_config('a.b', '1', false)",
            "SELECT SET_CONFIG('a.b', '1', false)",
            "select pg_advisory_lock(1)",
            "SELECT 1; SET x = 1",
            "SELECT 1;;",
            "SELECT 'a;b'",
            "SET x = 1;",
            "/* hint */ SET x = 1",
            "-- c\nSET x = 1",
            "(SELECT 1)",
            "create temp table t (a int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "LISTEN x",
            "prepare p as select 1",
            "DISCARD ALL",
            "DEALLOCATE ALL",
            "load 'x'",
            "",
            "   ",
        ];
        for sql in lexed {
            assert!(!plainly_plain(sql), "{sql}");
        }
    }

    #[test]
    fn sets_are_tracked_with_their_parameter() {
        assert_eq!(
            one("SET work_mem = '64MB'"),
            Effect::Set {
                name: "work_mem".into(),
                statement: "SET work_mem = '64MB'".into()
            }
        );
        assert!(
            matches!(one("set session search_path to a,b"), Effect::Set { name, .. } if name == "search_path")
        );
        assert!(
            matches!(one("SET TIME ZONE 'UTC'"), Effect::Set { name, .. } if name == "timezone")
        );
        assert!(
            matches!(one("SET myapp.user_id = 42"), Effect::Set { name, .. } if name == "myapp.user_id")
        );
        assert!(
            matches!(one("SET \"DateStyle\" TO ISO"), Effect::Set { name, .. } if name == "datestyle")
        );
        assert_eq!(one("SET LOCAL work_mem = '1MB'"), Effect::Plain);
        assert_eq!(
            one("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Effect::Plain
        );
        assert_eq!(one("RESET ALL"), Effect::Reset(None));
        assert_eq!(
            one("RESET pghalo.route"),
            Effect::Reset(Some("pghalo.route".into()))
        );
        assert_eq!(
            one("RESET \"MyApp\".x -- note"),
            Effect::Reset(Some("myapp.x".into()))
        );
        assert_eq!(
            one("reset work_mem"),
            Effect::Reset(Some("work_mem".into()))
        );
    }

    #[test]
    fn state_that_cannot_follow_the_client_is_refused() {
        for sql in [
            "PREPARE p AS SELECT 1",
            "LISTEN ch",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE t (x int)",
            "create temporary table t (x int)",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT pg_advisory_lock(1)",
            "SET ROLE nobody",
            "SET SESSION AUTHORIZATION nobody",
            "LOAD 'auto_explain'",
        ] {
            assert!(matches!(one(sql), Effect::Refuse(_)), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "CREATE TEMP TABLE t (x int) ON COMMIT DROP",
            "SELECT pg_advisory_xact_lock(1)",
            "DECLARE c CURSOR FOR SELECT 1",
            "PREPARE TRANSACTION 'x'",
            "SELECT 'SET ROLE x'",
            "INSERT INTO t VALUES ('listen')",
        ] {
            assert_eq!(one(sql), Effect::Plain, "{sql}");
        }
    }

    #[test]
    fn temporary_objects_made_without_create_temp_are_refused() {
        for sql in [
            "SELECT * INTO TEMP t FROM pg_class",
            "select 1 as a into temporary table t",
            "SELECT 1 INTO LOCAL TEMP t",
            "WITH x AS (SELECT 1) SELECT * INTO TEMP t FROM x",
            "(SELECT 1) INTO TEMP t",
            "CREATE TABLE pg_temp.t (a int)",
            "create table if not exists PG_TEMP.t (a int)",
            "CREATE TABLE \"pg_temp\".t (a int)",
            "CREATE VIEW pg_temp.v AS SELECT 1",
            "CREATE SEQUENCE pg_temp_3.s",
            "CREATE FUNCTION pg_temp.f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
            "CREATE TABLE pg_temp.t AS SELECT 1",
            "SET search_path = pg_temp, public",
            "set search_path to 'pg_temp', public",
            "SET SESSION search_path = \"pg_temp\"",
            "SET SCHEMA 'pg_temp'",
            "SET search_path = '', pg_temp",
            "SET search_path = \"$user\", pg_temp, public",
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
            "EXPLAIN (ANALYZE, BUFFERS) CREATE TABLE pg_temp.t AS SELECT 1",
            "explain analyze verbose select 1 into temp t",
            "SET LOCAL search_path = pg_temp",
            "SET search_path = U&\"pg\\005Ftemp\", public",
            "SET search_path = E'pg\\_temp', public",
        ] {
            assert!(matches!(one(sql), Effect::Refuse(_)), "{sql}");
            assert!(!plainly_plain(sql), "{sql}");
        }
        for sql in [
            "INSERT INTO temp VALUES (1)",
            "MERGE INTO temp USING s ON true WHEN MATCHED THEN DO NOTHING",
            "SELECT * INTO t FROM pg_class",
            "CREATE TABLE pg_temp.t (a int) ON COMMIT DROP",
            "CREATE TABLE t AS SELECT * FROM pg_temp.x",
            "CREATE INDEX i ON pg_temp.t (a)",
            "CREATE TABLE pg_temporary.t (a int)",
            "SELECT temperature FROM weather",
            "SELECT count(*) INTO temp FROM t",
            "INSERT INTO t VALUES (1) RETURNING a INTO temp",
            "SELECT a INTO temp, b FROM t",
            "EXPLAIN SELECT 1",
            "EXPLAIN (FORMAT JSON) SELECT * FROM t",
            "SET LOCAL search_path = public, pg_temp",
            "SET LOCAL work_mem = '1MB'",
        ] {
            assert_eq!(one(sql), Effect::Plain, "{sql}");
        }
        for sql in [
            "SET search_path = public, pg_temp",
            "SET search_path = app, pg_temp",
        ] {
            assert!(
                matches!(one(sql), Effect::Set { name, .. } if name == "search_path"),
                "{sql}"
            );
        }
        let startup = |value: &str| vec![("search_path".to_string(), value.to_string())];
        assert!(startup_refusal(&startup("pg_temp, public")).is_some());
        assert!(startup_refusal(&startup("\"$user\", pg_temp")).is_some());
        assert!(startup_refusal(&startup("public, pg_temp")).is_none());
        assert!(startup_refusal(&startup("app, public")).is_none());
        assert!(startup_refusal(&[("work_mem".into(), "pg_temp".into())]).is_none());
    }

    #[test]
    fn explain_chains_are_read_in_bounded_time() {
        let sql = format!("{}SELECT 1 INTO TEMP t", "EXPLAIN ".repeat(100_000));
        let started = std::time::Instant::now();
        // Refused for its INTO TEMP, seen in one pass over the text.
        assert!(matches!(one(&sql), Effect::Refuse(_)));
        let sql = format!("{}LISTEN x", "EXPLAIN ".repeat(100_000));
        assert_eq!(one(&sql), Effect::Plain);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn set_config_for_the_transaction_only_is_plain() {
        for sql in [
            "SELECT set_config('role', 'web_anon', true)",
            "select set_config('request.jwt.claims', $1, TRUE), set_config('role', $2, true)",
            "SELECT pg_catalog.set_config('a.b', format('%s', (1)), true)",
        ] {
            assert_eq!(one(sql), Effect::Plain, "{sql}");
        }
        for sql in [
            "SELECT set_config('role', 'x', false)",
            "SELECT set_config('role', 'x', 'true')",
            "SELECT set_config('a.b', 'x', true), set_config('c.d', 'y', false)",
            "SELECT set_config('a.b', 'x', true OR false)",
            "SELECT set_config('a.b', 'x', $1)",
            "SELECT set_config('a.b', 'x'",
            "SELECT set_config('a.b', 'x', (true))",
        ] {
            assert!(matches!(one(sql), Effect::Refuse(_)), "{sql}");
        }
    }

    #[test]
    fn quoted_names_of_refused_functions_are_refused() {
        for sql in [
            "SELECT \"set_config\"('a.b', '1', false)",
            "SELECT pg_catalog.\"pg_advisory_lock\"(1)",
            "SELECT U&\"\\0073et_config\"('a.b', '1', false)",
        ] {
            assert!(!plainly_plain(sql), "{sql}");
            assert!(matches!(one(sql), Effect::Refuse(_)), "{sql}");
        }
    }

    #[test]
    fn settings_that_change_how_text_reads_are_refused() {
        for sql in [
            "SET standard_conforming_strings = off",
            "set standard_conforming_strings to 'off'",
            "SET standard_conforming_strings = false",
            "SET standard_conforming_strings = 0",
            "SET client_encoding = 'SJIS'",
            "SET client_encoding TO \"Shift_JIS\"",
            "SET NAMES 'gbk'",
            "SET client_encoding = WIN950",
        ] {
            assert!(matches!(one(sql), Effect::Refuse(_)), "{sql}");
        }
        for sql in [
            "SET standard_conforming_strings = on",
            "SET standard_conforming_strings TO DEFAULT",
            "SET client_encoding = 'UTF8'",
            "SET NAMES 'LATIN1'",
            "SET client_encoding = 'EUC_JP'",
        ] {
            assert!(matches!(one(sql), Effect::Set { .. }), "{sql}");
        }
        assert!(unreadable_setting("standard_conforming_strings", "off").is_some());
        assert!(unreadable_setting("standard_conforming_strings", "on").is_none());
        assert!(unreadable_setting("client_encoding", "SJIS").is_some());
        assert!(unreadable_setting("client_encoding", "UTF8").is_none());
        assert!(unreadable_setting("DateStyle", "off").is_none());
    }

    #[test]
    fn only_discard_all_and_deallocate_all_drop_session_state() {
        assert_eq!(one("DISCARD ALL"), Effect::Discard);
        assert_eq!(one("discard plans"), Effect::Plain);
        assert_eq!(one("DISCARD SEQUENCES"), Effect::Plain);
        assert_eq!(one("DISCARD TEMP"), Effect::Plain);
        assert_eq!(one("DEALLOCATE ALL"), Effect::DeallocateAll);
        assert_eq!(one("deallocate prepare all"), Effect::DeallocateAll);
        assert_eq!(one("DEALLOCATE s1"), Effect::Plain);
        assert_eq!(one("ROLLBACK TO SAVEPOINT p"), Effect::RollbackToSavepoint);
        assert_eq!(one("rollback work to p"), Effect::RollbackToSavepoint);
        assert_eq!(one("ROLLBACK"), Effect::Plain);
        assert_eq!(one("ROLLBACK PREPARED 'x'"), Effect::Plain);
    }

    #[test]
    fn multi_statement_strings_give_one_effect_each() {
        let e = effects("BEGIN; SET statement_timeout = 5; COMMIT");
        assert_eq!(e.len(), 3);
        assert!(matches!(&e[1], Effect::Set { name, .. } if name == "statement_timeout"));
    }
}
