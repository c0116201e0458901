//! What a primary's `synchronous_standby_names` promises about an
//! acknowledged commit, and so which standbys pghalo must hear from before
//! it may promote one (DESIGN rule 4). Pure.
//!
//! A commit acknowledged under `FIRST k (list)` or `ANY k (list)` is on at
//! least k of the listed standbys (under FIRST, on the k that were
//! synchronous at the time, which are listed too). So once pghalo has read
//! the position of at least `listed - k + 1` of them, one of those holds
//! every acknowledged commit, and the most advanced standby read holds it
//! too. With fewer, an acknowledged commit may live only on a standby
//! pghalo cannot see: no automatic promotion. The rule is the same for
//! FIRST and ANY, which keeps it safe while the synchronous set moves.

use std::fmt;

/// A parsed `synchronous_standby_names`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRule {
    /// How many standbys acknowledge a commit.
    pub num_sync: usize,
    /// The listed names, as written (compared without regard to case, as
    /// PostgreSQL does). `*` matches every standby.
    pub names: Vec<String>,
}

/// The setting does not parse; the failover treats that as "cannot be
/// sure" rather than as asynchronous.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot read synchronous_standby_names {text:?}: {why}")]
pub struct SyncRuleError {
    pub text: String,
    pub why: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Star,
    Open,
    Close,
    Comma,
}

impl SyncRule {
    /// None for an empty setting (asynchronous replication).
    pub fn parse(text: &str) -> Result<Option<SyncRule>, SyncRuleError> {
        let fail = |why| SyncRuleError {
            text: text.to_owned(),
            why,
        };
        let tokens = tokenize(text).map_err(fail)?;
        if tokens.is_empty() {
            return Ok(None);
        }
        let keyword = |t: &Token, k: &str| matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(k));
        let number = |t: &Token| match t {
            Token::Word(w) => w.parse::<usize>().ok(),
            _ => None,
        };
        // [FIRST | ANY] num ( list ) | num ( list ) | list
        let (num_sync, list) = match tokens.as_slice() {
            [kw, n, Token::Open, rest @ .., Token::Close]
                if (keyword(kw, "first") || keyword(kw, "any")) && number(n).is_some() =>
            {
                (number(n).unwrap_or(1), rest)
            }
            [n, Token::Open, rest @ .., Token::Close] if number(n).is_some() => {
                (number(n).unwrap_or(1), rest)
            }
            list => (1, list),
        };
        if num_sync == 0 {
            return Err(fail(
                "the number of synchronous standbys must be at least 1",
            ));
        }
        let mut names = Vec::new();
        for (i, token) in list.iter().enumerate() {
            let expect_name = i % 2 == 0;
            match (expect_name, token) {
                (true, Token::Word(w) | Token::Quoted(w)) => names.push(w.clone()),
                (true, Token::Star) => names.push("*".to_owned()),
                (false, Token::Comma) => {}
                _ => return Err(fail("expected a comma-separated list of names")),
            }
        }
        if names.is_empty() || list.len() % 2 == 0 {
            return Err(fail("expected a comma-separated list of names"));
        }
        Ok(Some(SyncRule { num_sync, names }))
    }

    /// How many of `standbys` (application names of the configured
    /// standbys other than the failed primary) pghalo must read before it
    /// may promote, and which of them count. A listed name that matches no
    /// configured node counts as a standby pghalo cannot read.
    pub fn required(&self, standbys: &[&str]) -> Requirement {
        let wildcard = self.names.iter().any(|n| n == "*");
        let mut listed: Vec<String> = if wildcard {
            standbys.iter().map(|s| s.to_ascii_lowercase()).collect()
        } else {
            self.names.iter().map(|s| s.to_ascii_lowercase()).collect()
        };
        listed.sort();
        listed.dedup();
        let members = standbys
            .iter()
            .filter(|s| listed.contains(&s.to_ascii_lowercase()))
            .map(|s| (*s).to_owned())
            .collect();
        Requirement {
            members,
            // With more required than listed, no commit is ever
            // acknowledged: hearing from one is enough.
            needed: (listed.len() + 1).saturating_sub(self.num_sync).max(1),
            listed: listed.len(),
        }
    }
}

impl fmt::Display for SyncRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of ({})", self.num_sync, self.names.join(", "))
    }
}

/// How many listed standbys must answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The configured standbys the rule lists.
    pub members: Vec<String>,
    pub needed: usize,
    pub listed: usize,
}

impl Requirement {
    /// True when `answered` (application names) includes enough members.
    pub fn met_by(&self, answered: &[&str]) -> bool {
        let heard = self
            .members
            .iter()
            .filter(|m| answered.iter().any(|a| a.eq_ignore_ascii_case(m)))
            .count();
        heard >= self.needed
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, &'static str> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' | '*' => {
                chars.next();
                tokens.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ',' => Token::Comma,
                    _ => Token::Star,
                });
            }
            '"' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            word.push('"');
                        }
                        Some('"') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated quoted name"),
                    }
                }
                tokens.push(Token::Quoted(word));
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii() => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii() {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Word(word));
            }
            _ => return Err("unexpected character"),
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> SyncRule {
        SyncRule::parse(text).unwrap().unwrap()
    }

    #[test]
    fn parses_the_forms_postgres_accepts() {
        assert_eq!(SyncRule::parse("").unwrap(), None);
        assert_eq!(SyncRule::parse("  ").unwrap(), None);
        assert_eq!(
            rule("node1"),
            SyncRule {
                num_sync: 1,
                names: vec!["node1".into()]
            }
        );
        assert_eq!(rule("a, b").names, ["a", "b"]);
        assert_eq!(rule("ANY 1 (node1, node2)").num_sync, 1);
        assert_eq!(rule("first 2 (a,b,c)").num_sync, 2);
        assert_eq!(rule("2 (a, b, c)").num_sync, 2);
        assert_eq!(rule("*").names, ["*"]);
        assert_eq!(
            rule("ANY 2 (\"Node A\", \"x\"\"y\", *)").names,
            ["Node A", "x\"y", "*"]
        );
        // A name that happens to be a keyword or a number.
        assert_eq!(rule("any, 5").names, ["any", "5"]);
    }

    #[test]
    fn refuses_what_postgres_refuses() {
        for text in [
            "ANY 0 (a)",
            "ANY 1 ()",
            "a,,b",
            "(a)",
            "ANY 1 (a",
            "\"a",
            "a b",
            "a;b",
            ",",
        ] {
            assert!(SyncRule::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn enough_listed_standbys_must_answer() {
        // ANY 1 of two: an acknowledged commit may be on either alone.
        let r = rule("ANY 1 (node1, node2)").required(&["node1", "node2"]);
        assert_eq!(r.needed, 2);
        assert!(r.met_by(&["node1", "node2"]));
        assert!(!r.met_by(&["node2"]));
        // ANY 2 of two: every commit is on both.
        let r = rule("ANY 2 (node1, node2)").required(&["node1", "node2"]);
        assert!(r.met_by(&["NODE2"]));
        // A listed name no configured node has counts as unreachable.
        let r = rule("FIRST 1 (node1, elsewhere)").required(&["node1", "node2"]);
        assert_eq!((r.needed, r.listed), (2, 2));
        assert!(!r.met_by(&["node1", "node2"]));
        // An unlisted standby does not help.
        let r = rule("node1").required(&["node1", "node2"]);
        assert!(!r.met_by(&["node2"]));
        assert!(r.met_by(&["node1"]));
        // '*' lists every configured standby.
        let r = rule("ANY 1 (*)").required(&["node1", "node2", "node3"]);
        assert_eq!(r.needed, 3);
        // More required than listed: nothing was ever acknowledged.
        let r = rule("ANY 3 (node1, node2)").required(&["node1", "node2"]);
        assert!(r.met_by(&["node1"]));
    }
}
