//! The lexical pre-scan: one pass of the lexer over a query string, before
//! any parse, that
//! - counts its statements (a multi-statement string goes to the primary);
//! - reads a routing hint from its leading comments (`/* pghalo: standby */`,
//!   and pgpool's `/*NO LOAD BALANCE*/`, which means primary);
//! - builds the cache key: the text with comments dropped, whitespace runs
//!   folded to one character, unquoted words lowercased and, in queries
//!   (SELECT, WITH, VALUES, TABLE, INSERT, UPDATE, DELETE, MERGE), literals
//!   replaced by placeholders, so that pgbench's `... WHERE aid = 123` and
//!   `... WHERE aid = 456` share one entry;
//! - settles the plainest case without a parse: one SELECT with no locking
//!   clause, no INTO, no CTE, no DML keyword and no function call at all.
//!
//! The key is exact: two texts get the same key only if they differ in
//! comments, amounts of whitespace, the case of unquoted words or the
//! contents of masked literals, none of which the grammar lets change what
//! a statement does. Placeholders start with a NUL byte, which a query
//! never holds (the classifier refuses NULs before this runs), and keep the
//! literal's kind. Strings with a prefix (`E'..'`, `B'..'`, `U&'..'`) and
//! numbers other than plain decimals stay as written. Literals are never
//! masked in SET, SHOW, EXPLAIN and other utility statements, whose values
//! (`SET pghalo.route = 'standby'`, `EXPLAIN (ANALYZE 0)`) matter.
//!
//! A call, for the plain-SELECT test, is any word or quoted identifier
//! followed by `(`, except a few reserved or column-name keywords that
//! cannot name a function unqualified (`IN (`, `EXISTS (`, `ANY (`,
//! `CAST (`, `COALESCE (`, `VALUES (`...) and not after a `.` (where
//! `pg_catalog.coalesce(` is a real call). Anything unsure counts as a call
//! and takes the full parse. The scan assumes standard_conforming_strings
//! (on since PostgreSQL 9.1), as the parser does.

use super::classify::Hint;
use super::lexer::{Kind, LexError, Lexeme, lexemes};
use super::walk::Unique;

/// What the pre-scan found.
#[derive(Debug)]
pub(crate) struct Prescan {
    /// Non-empty statements in the string.
    pub statements: usize,
    /// The routing hint in the leading comments.
    pub hint: Option<Hint>,
    /// The cache key, when asked for.
    pub key: Option<String>,
    /// The string is one plain SELECT.
    pub plain_select: bool,
}

/// Scans `sql`; builds the cache key only if `want_key`.
pub(crate) fn prescan(sql: &str, want_key: bool) -> Result<Prescan, LexError> {
    let bytes = sql.as_bytes();
    let mut statements = 0usize;
    let mut in_statement = false;
    let mut hint = None;
    let mut leading = true;
    let mut plain = true;
    let mut mask = false;
    let mut key = want_key.then(|| String::with_capacity(sql.len() + 4));
    let mut key_body_from = 0;
    // End of the last lexeme that is not a comment: the gap after it is a
    // separator in the key.
    let mut gap_from = 0;
    let mut prev: Option<Lexeme> = None;
    let mut prev2: Option<Lexeme> = None;
    let mut word = [0u8; 24];

    for lexeme in lexemes(sql) {
        let lx = lexeme?;
        if lx.kind == Kind::Comment {
            if leading && hint.is_none() {
                hint = parse_hint(&sql[lx.start..lx.end]);
            }
            continue;
        }
        let text = &sql[lx.start..lx.end];
        let lower = match lx.kind {
            Kind::Word => lowercase(text, &mut word),
            _ => None,
        };

        if leading {
            leading = false;
            mask = matches!(
                lower,
                Some("select" | "with" | "values" | "table" | "insert" | "update" | "delete")
                    | Some("merge")
            );
            plain = lower == Some("select");
            if let (Some(key), Some(h)) = (key.as_mut(), hint) {
                key.push('\0');
                key.push('H');
                key.push(match h {
                    Hint::Primary => 'p',
                    Hint::Standby => 's',
                    Hint::Any => 'a',
                });
                key_body_from = key.len();
            }
        }

        if lx.kind == Kind::Semicolon {
            in_statement = false;
        } else if !in_statement {
            in_statement = true;
            statements += 1;
            if statements > 1 {
                plain = false;
            }
        }

        if let Some(key) = key.as_mut() {
            if lx.start > gap_from && key.len() > key_body_from {
                let gap = &bytes[gap_from..lx.start];
                // A line break ends a `--` comment (a carriage return
                // too), so it must survive into the key.
                let breaks = gap.iter().any(|b| matches!(b, b'\n' | b'\r'));
                key.push(if breaks { '\n' } else { ' ' });
            }
            match lx.kind {
                Kind::Word => {
                    let from = key.len();
                    key.push_str(text);
                    key[from..].make_ascii_lowercase();
                }
                Kind::String if mask && maskable_string(bytes, lx) => key.push_str("\0S"),
                Kind::Number if mask && plain_decimal(text) => key.push_str("\0N"),
                Kind::Param if mask && text.len() > 1 => key.push_str("\0P"),
                _ => key.push_str(text),
            }
        }
        gap_from = lx.end;

        if plain {
            match lx.kind {
                Kind::Word if lower.is_some_and(|w| REJECT.contains(&w)) => plain = false,
                Kind::Punct(b'(') => {
                    if let Some(p) = prev {
                        let called = match p.kind {
                            Kind::Quoted => true,
                            Kind::Word => {
                                let allowed = lowercase(&sql[p.start..p.end], &mut word)
                                    .is_some_and(|w| ALLOWED_BEFORE_PAREN.contains(&w));
                                let qualified = prev2.is_some_and(|q| q.kind == Kind::Punct(b'.'));
                                !allowed || qualified
                            }
                            _ => false,
                        };
                        if called {
                            plain = false;
                        }
                    }
                }
                _ => {}
            }
        }
        prev2 = prev;
        prev = Some(lx);
    }

    if statements != 1 {
        plain = false;
        if statements > 1 && want_key {
            // Multi-statement strings are rare and go to the primary: key
            // them by their exact text.
            key = Some(sql.to_owned());
        }
    }
    Ok(Prescan {
        statements,
        hint,
        key,
        plain_select: plain,
    })
}

/// Every identifier in `sql` but common keywords, once each: a superset of
/// the relations a plain SELECT reads. Quoted identifiers as written,
/// others lowercased as PostgreSQL folds them (ASCII only).
pub(crate) fn identifiers(sql: &str) -> Vec<String> {
    let mut names = Unique::default();
    let mut word = [0u8; 24];
    for lx in lexemes(sql).map_while(Result::ok) {
        let text = &sql[lx.start..lx.end];
        let name = match lx.kind {
            Kind::Word => match lowercase(text, &mut word) {
                Some(w) if KEYWORDS.contains(&w) || ALLOWED_BEFORE_PAREN.contains(&w) => continue,
                _ => identifier(text),
            },
            Kind::Quoted => identifier(text),
            _ => continue,
        };
        names.insert(name);
    }
    names.into_vec()
}

/// A hint comment: `/* pghalo: primary|standby|any */` (or `-- pghalo: ...`),
/// any case, any spacing; pgpool's `/*NO LOAD BALANCE*/` means primary.
pub(crate) fn parse_hint(comment: &str) -> Option<Hint> {
    let inner = match comment.strip_prefix("/*") {
        Some(body) => body.strip_suffix("*/").unwrap_or(body),
        None => comment.strip_prefix("--").unwrap_or(comment),
    }
    .trim();
    if inner.eq_ignore_ascii_case("NO LOAD BALANCE") {
        return Some(Hint::Primary);
    }
    let prefix = inner.get(..6)?;
    if !prefix.eq_ignore_ascii_case("pghalo") {
        return None;
    }
    let value = inner[6..].trim_start().strip_prefix(':')?.trim();
    Hint::parse(value)
}

/// `word` lowercased into `buf`, if it is short enough to be a keyword.
fn lowercase<'b>(word: &str, buf: &'b mut [u8; 24]) -> Option<&'b str> {
    let bytes = word.as_bytes();
    if bytes.len() > buf.len() || !word.is_ascii() {
        return None;
    }
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// An identifier as the parser names it: unquoted words lowercased (ASCII,
/// as PostgreSQL folds them), quoted ones as written.
fn identifier(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => text.to_ascii_lowercase(),
    }
}

/// A plain `'...'` or dollar-quoted string: not `E'..'`, and not glued to
/// a word or `&` before it (`B'..'`, `X'..'`, `N'..'`, `U&'..'`), whose
/// contents the lexer of the server checks.
fn maskable_string(bytes: &[u8], lx: Lexeme) -> bool {
    if matches!(bytes.get(lx.start), Some(b'e' | b'E')) {
        return false;
    }
    match lx.start.checked_sub(1).and_then(|i| bytes.get(i)) {
        Some(&b) => !(b.is_ascii_alphanumeric() || b == b'_' || b == b'&' || b >= 0x80),
        None => true,
    }
}

/// Digits, at most one `.`, and `_` only between digits.
fn plain_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let mut dots = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {}
            b'.' => dots += 1,
            b'_' => {
                let around =
                    |j: Option<usize>| j.and_then(|j| b.get(j)).is_some_and(|d| d.is_ascii_digit());
                if !around(i.checked_sub(1)) || !around(Some(i + 1)) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    dots <= 1
}

/// Words that rule the plain path out: locking clauses (FOR ...), INTO,
/// CTEs (WITH), and DML anywhere.
const REJECT: &[&str] = &["for", "into", "with", "insert", "update", "delete", "merge"];

/// Keywords that may stand before `(` without being a function call: all
/// reserved or column-name keywords, which the grammar does not accept as
/// an unqualified function name.
const ALLOWED_BEFORE_PAREN: &[&str] = &[
    "select",
    "from",
    "where",
    "and",
    "or",
    "not",
    "in",
    "exists",
    "any",
    "all",
    "some",
    "values",
    "row",
    "array",
    "cast",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "between",
    "on",
    "having",
    "then",
    "else",
    "when",
    "case",
    "limit",
    "offset",
    "using",
    "lateral",
    "distinct",
    "union",
    "intersect",
    "except",
];

/// Common keywords left out of the identifier list (a smaller superset).
const KEYWORDS: &[&str] = &[
    "as",
    "join",
    "inner",
    "left",
    "right",
    "outer",
    "full",
    "cross",
    "natural",
    "group",
    "by",
    "order",
    "asc",
    "desc",
    "nulls",
    "first",
    "last",
    "is",
    "null",
    "true",
    "false",
    "end",
    "like",
    "ilike",
    "similar",
    "escape",
    "fetch",
    "next",
    "rows",
    "only",
    "collate",
    "at",
    "time",
    "zone",
    "interval",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "session_user",
    "user",
    "to",
    "int",
    "integer",
    "bigint",
    "smallint",
    "text",
    "varchar",
    "numeric",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "uuid",
    "jsonb",
    "json",
    "filter",
    "over",
    "partition",
    "window",
    "ties",
    "symmetric",
    "asymmetric",
    "isnull",
    "notnull",
    "tablesample",
    "ordinality",
    "recursive",
    "materialized",
    "default",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> String {
        prescan(sql, true).unwrap().key.unwrap()
    }

    fn plain(sql: &str) -> Option<Vec<String>> {
        prescan(sql, false)
            .unwrap()
            .plain_select
            .then(|| identifiers(sql))
    }

    #[test]
    fn literals_are_masked_in_queries_only() {
        let a = key("SELECT abalance FROM pgbench_accounts WHERE aid = 123");
        assert_eq!(
            a,
            key("select abalance  FROM pgbench_accounts\tWHERE aid = 98765")
        );
        assert_eq!(
            a,
            key("SELECT abalance /* c */ FROM pgbench_accounts WHERE aid = 1")
        );
        assert_eq!(a, "select abalance from pgbench_accounts where aid = \0N");
        assert_eq!(
            key("SELECT 'a', $$b$$, $1"),
            key("SELECT 'zz''z', $q$ $q$, $2")
        );
        assert_ne!(key("SELECT 'a'"), key("SELECT 1"), "kinds differ");
        assert_ne!(key("SELECT E'a'"), key("SELECT E'b'"));
        assert_ne!(key("SELECT B'0'"), key("SELECT B'1'"));
        assert_ne!(key("SELECT 1e5"), key("SELECT 2e5"));
        assert_ne!(key("SELECT \"A\""), key("SELECT a"));
        assert_eq!(key("SELECT A"), key("select a"));
        assert_ne!(key("SELECT a <-1"), key("SELECT a < -1"));
        // Values that matter are kept.
        assert_ne!(
            key("SET pghalo.route = 'standby'"),
            key("SET pghalo.route = 'primary'")
        );
        assert_ne!(
            key("EXPLAIN (ANALYZE 0) DELETE FROM t"),
            key("EXPLAIN (ANALYZE 1) DELETE FROM t")
        );
        // A newline between strings is not a space (string continuation).
        assert_ne!(key("SELECT 'a'\n'b'"), key("SELECT 'a' 'b'"));
        assert_ne!(key("SELECT 'a'\r'b'"), key("SELECT 'a' 'b'"));
        // A carriage return ends a line comment: what follows is a statement.
        assert_ne!(key("-- c\rDELETE FROM t"), key("-- c DELETE FROM t"));
        // Hints are part of the key, other comments are not.
        assert_ne!(key("/* pghalo: primary */ SELECT 1"), key("SELECT 1"));
        assert_eq!(key("/* trace=42 */ SELECT 1"), key("SELECT 1"));
        // Multi-statement strings are keyed as written.
        assert_eq!(key("SELECT 1; SELECT 2"), "SELECT 1; SELECT 2");
    }

    #[test]
    fn counts_statements_and_reads_hints() {
        let p = prescan(" -- pghalo: standby\n SELECT 1;;", false).unwrap();
        assert_eq!((p.statements, p.hint), (1, Some(Hint::Standby)));
        let p = prescan("/*NO LOAD BALANCE*/ SELECT 1; SELECT 2", false).unwrap();
        assert_eq!((p.statements, p.hint), (2, Some(Hint::Primary)));
        assert_eq!(prescan(" ; -- x", false).unwrap().statements, 0);
        assert_eq!(parse_hint("/*PGHALO:ANY*/"), Some(Hint::Any));
        assert_eq!(parse_hint("/* pghalo : primary */"), Some(Hint::Primary));
        assert_eq!(parse_hint("/* pghalo: primay */"), None);
        assert_eq!(parse_hint("/* pghalox: primary */"), None);
        assert_eq!(parse_hint("/* é */"), None);
        // Only leading comments hint.
        assert_eq!(
            prescan("SELECT 1 /* pghalo: primary */", false)
                .unwrap()
                .hint,
            None
        );
    }

    #[test]
    fn plain_selects() {
        assert_eq!(
            plain("SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
            Some(vec![
                "abalance".into(),
                "pgbench_accounts".into(),
                "aid".into()
            ])
        );
        for sql in [
            "SELECT * FROM t WHERE a IN (1, 2) AND EXISTS (SELECT 1 FROM \"U\" u)",
            "select coalesce(a, 0), cast(b as int), x = any($1) from t",
            "SELECT a FROM t UNION (SELECT b FROM u) LIMIT (5)",
            "SELECT 1;",
        ] {
            assert!(plain(sql).is_some(), "{sql}");
        }
        for sql in [
            "SELECT now()",
            "SELECT nextval ('s')",
            "SELECT \"nextval\"('s')",
            "SELECT pg_catalog.coalesce(1)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * INTO x FROM t",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SELECT * FROM (DELETE FROM t RETURNING *) d",
            "SELECT 1; SELECT 2",
            "VALUES (1)",
            "/* x */ INSERT INTO t VALUES (1)",
            "SELECT a::varchar(10) FROM t",
            "SELECT left('abc', 1)",
        ] {
            assert!(plain(sql).is_none(), "{sql}");
        }
        assert!(
            plain("SELECT * FROM \"My Table\"")
                .unwrap()
                .contains(&"My Table".to_string())
        );
    }

    #[test]
    fn unterminated_text_is_an_error() {
        assert!(prescan("SELECT 'abc", true).is_err());
        assert!(prescan("/* SELECT", true).is_err());
    }

    #[test]
    fn numbers() {
        assert!(plain_decimal("123"));
        assert!(plain_decimal("1_000.5"));
        assert!(!plain_decimal("1__0"));
        assert!(!plain_decimal("1_"));
        assert!(!plain_decimal("1.2.3"));
        assert!(!plain_decimal("0x1f"));
        assert!(!plain_decimal("1for"));
    }
}
