//! What a statement does to session state, for transaction pooling: a
//! client's session-level settings must follow it from one server
//! connection to the next (tracked and replayed), and state that cannot
//! follow it (SQL-level PREPARE, LISTEN, WITH HOLD cursors, temporary
//! tables, session advisory locks, set_config, role changes) is refused with
//! a clear error rather than left behind for another client.

use crate::router::lexer::{Statement, Token, statements};

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
const SESSION_WORDS: [&str; 10] = [
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
}

fn contains_ignoring_case(text: &str, lower: &str) -> bool {
    text.as_bytes()
        .windows(lower.len())
        .any(|w| w.eq_ignore_ascii_case(lower.as_bytes()))
}

fn effects_by_lexing(sql: &str) -> Vec<Effect> {
    match statements(sql) {
        Ok(list) => list.iter().map(effect).collect(),
        // Unreadable text reaches the server, which reports the error.
        Err(_) => vec![Effect::Plain],
    }
}

fn effect(stmt: &Statement<'_>) -> Effect {
    let words = stmt.leading_words(4);
    let refuse = |what: &str| Effect::Refuse(what.to_string());
    for function in [
        "set_config",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    ] {
        if stmt.calls(function) {
            return refuse(&format!("{function}() at session level"));
        }
    }
    match words.as_slice() {
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
        _ => Effect::Plain,
    }
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
