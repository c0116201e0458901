//! The value types of `[load_balance]`: name patterns, pgpool's redirect
//! preference lists and disable_load_balance_on_write. Parsed and checked
//! here so that the router (which must not fail on configuration) gets
//! compiled patterns and typed targets.

use std::fmt;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A regular expression that must match a whole name: pgpool adds `^` and
/// `$` around every entry of its lists, and so does pghalo.
#[derive(Clone)]
pub struct Pattern {
    /// What the operator wrote, without the anchors.
    source: String,
    regex: Regex,
}

impl Pattern {
    /// A case-sensitive pattern (function, database, user and application
    /// names, as pgpool compares them).
    pub fn new(source: &str) -> Result<Pattern, String> {
        Pattern::build(source, false)
    }

    /// A case-insensitive pattern (pgpool's primary_routing_query_pattern_list).
    pub fn ignoring_case(source: &str) -> Result<Pattern, String> {
        Pattern::build(source, true)
    }

    fn build(source: &str, ignore_case: bool) -> Result<Pattern, String> {
        let source = source.trim();
        if source.is_empty() {
            return Err("empty pattern".to_owned());
        }
        // The group keeps an alternation inside the anchors: "a|b" must
        // mean "^(a|b)$", not "^a|b$".
        let regex = RegexBuilder::new(&format!("^(?:{source})$"))
            .case_insensitive(ignore_case)
            .build()
            .map_err(|e| {
                // The regex crate's message spans several lines with a
                // caret diagram; the last line says what is wrong.
                let text = e.to_string();
                let why = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_owned();
                format!("invalid regular expression {source:?}: {why}")
            })?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    /// True if the whole of `name` matches.
    pub fn is_match(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source && self.regex.as_str() == other.regex.as_str()
    }
}

/// So that the router can take the lists as strings (it compiles its own
/// `RegexSet`, anchored the same way).
impl AsRef<str> for Pattern {
    fn as_ref(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Pattern::new(text)
    }
}

/// Where a redirect preference sends a session's reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RedirectTarget {
    Primary,
    /// One of the standbys, chosen by weight.
    Standby,
    /// The node with this id (its position among the `[[backend]]`s).
    Node(usize),
}

impl fmt::Display for RedirectTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectTarget::Primary => f.write_str("primary"),
            RedirectTarget::Standby => f.write_str("standby"),
            RedirectTarget::Node(id) => write!(f, "{id}"),
        }
    }
}

/// One entry of pgpool's database_redirect_preference_list,
/// app_name_redirect_preference_list or user_redirect_preference_list:
/// `pattern:target` or `pattern:target(ratio)`, e.g. `myapp:standby(0.5)`
/// (half of myapp's reads go to a standby, the rest are balanced as usual).
#[derive(Clone, Debug, PartialEq)]
pub struct RedirectPreference {
    pub pattern: Pattern,
    pub target: RedirectTarget,
    /// The share of reads sent to `target`, 0 to 1; 1 when not written.
    pub ratio: f64,
}

const REDIRECT_FORM: &str = "use name:primary, name:standby or name:<node id>, optionally followed by (ratio) between 0 and 1";

impl FromStr for RedirectPreference {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad =
            |why: &str| format!("invalid redirect preference {text:?}: {why} ({REDIRECT_FORM})");
        // The target never holds ':', the pattern may: split at the last one.
        let (pattern, rest) = text.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
        let rest = rest.trim();
        let (target, ratio) = match rest.split_once('(') {
            Some((target, ratio)) => {
                let ratio = ratio
                    .strip_suffix(')')
                    .ok_or_else(|| bad("the ratio has no closing ')'"))?;
                let ratio: f64 = ratio
                    .trim()
                    .parse()
                    .map_err(|_| bad("the ratio is not a number"))?;
                (target.trim(), ratio)
            }
            None => (rest, 1.0),
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(bad("the ratio must be between 0 and 1"));
        }
        let target = match target.to_ascii_lowercase().as_str() {
            "primary" => RedirectTarget::Primary,
            "standby" => RedirectTarget::Standby,
            other => RedirectTarget::Node(
                other
                    .parse()
                    .map_err(|_| bad(&format!("unknown target {target:?}")))?,
            ),
        };
        let pattern = Pattern::new(pattern).map_err(|e| bad(&e))?;
        Ok(RedirectPreference {
            pattern,
            target,
            ratio,
        })
    }
}

impl fmt::Display for RedirectPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pattern, self.target)?;
        if self.ratio != 1.0 {
            write!(f, "({})", self.ratio)?;
        }
        Ok(())
    }
}

/// pgpool's disable_load_balance_on_write: what a write does to the
/// load balancing of the reads after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableLoadBalanceOnWrite {
    /// Reads are balanced even after a write.
    Off,
    /// After a write in an explicit transaction, its later reads go to the
    /// primary until it ends (pgpool's default).
    #[default]
    Transaction,
    /// As `Transaction`, and every later explicit transaction of the
    /// session reads from the primary too.
    TransTransaction,
    /// After any write, every later read of the session goes to the primary.
    Always,
    /// In an explicit transaction, reads of a table written earlier in it
    /// go to the primary.
    DmlAdaptive,
}

impl fmt::Display for DisableLoadBalanceOnWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DisableLoadBalanceOnWrite::Off => "off",
            DisableLoadBalanceOnWrite::Transaction => "transaction",
            DisableLoadBalanceOnWrite::TransTransaction => "trans_transaction",
            DisableLoadBalanceOnWrite::Always => "always",
            DisableLoadBalanceOnWrite::DmlAdaptive => "dml_adaptive",
        })
    }
}

/// pgpool's primary_routing_query_pattern_list: one string with `;`
/// between the patterns (`\;` is a `;` inside one), or a TOML array.
/// Matched against the whole statement, ignoring case.
pub(super) fn query_patterns<'de, D>(deserializer: D) -> Result<Vec<Pattern>, D::Error>
where
    D: Deserializer<'de>,
{
    struct PatternsVisitor;

    impl<'de> Visitor<'de> for PatternsVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of patterns or one string with ';' between them")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(split_unescaped(v, ';'))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer
        .deserialize_any(PatternsVisitor)?
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| Pattern::ignoring_case(p).map_err(de::Error::custom))
        .collect()
}

/// Splits at every `separator` not preceded by `\`; `\separator` becomes
/// the separator itself, every other escape is kept for the regex.
fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next) if next == separator => current.push(next),
                Some(next) => {
                    current.push('\\');
                    current.push(next);
                }
                None => current.push('\\'),
            }
        } else if c == separator {
            items.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items
        .into_iter()
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty())
        .collect()
}

pub(super) fn serialize_patterns<S: Serializer>(
    patterns: &[Pattern],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(patterns.iter().map(Pattern::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        let p = Pattern::new("get_.*").unwrap();
        assert!(p.is_match("get_user"));
        assert!(!p.is_match("forget_user"));
        let p = Pattern::new("f1|public.f1").unwrap();
        assert!(p.is_match("public.f1") && p.is_match("f1"));
        assert!(!p.is_match("f1x"));
        assert!(!Pattern::new("NEXTVAL").unwrap().is_match("nextval"));
        assert!(
            Pattern::ignoring_case("select \\* from t1\\;")
                .unwrap()
                .is_match("SELECT * FROM t1;")
        );
        let err = Pattern::new("a(").unwrap_err();
        assert!(
            err.starts_with("invalid regular expression \"a(\""),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        assert!(Pattern::new(" ").is_err());
    }

    #[test]
    fn redirect_preferences() {
        let r: RedirectPreference = "myapp:standby(0.5)".parse().unwrap();
        assert_eq!(r.target, RedirectTarget::Standby);
        assert_eq!(r.ratio, 0.5);
        assert!(r.pattern.is_match("myapp"));
        assert_eq!(r.to_string(), "myapp:standby(0.5)");
        let r: RedirectPreference = "mydb[01]:1(0.3)".parse().unwrap();
        assert_eq!(r.target, RedirectTarget::Node(1));
        assert!(r.pattern.is_match("mydb0") && !r.pattern.is_match("mydb2"));
        let r: RedirectPreference = "postgres:PRIMARY".parse().unwrap();
        assert_eq!((r.target, r.ratio), (RedirectTarget::Primary, 1.0));
        assert_eq!(r.to_string(), "postgres:primary");
        for (bad, words) in [
            ("postgres", "no ':'"),
            ("db:replica", "unknown target \"replica\""),
            ("db:1(2)", "between 0 and 1"),
            ("db:1(x)", "not a number"),
            ("db:1(0.5", "closing"),
            ("(:1", "invalid regular expression"),
        ] {
            let err = bad.parse::<RedirectPreference>().unwrap_err();
            assert!(err.contains(words), "{bad}: {err}");
        }
    }

    #[test]
    fn unescaped_split() {
        assert_eq!(
            split_unescaped(r"SELECT \* FROM t1\;;.*t3.*;", ';'),
            [r"SELECT \* FROM t1;", ".*t3.*"]
        );
        assert_eq!(split_unescaped("", ';'), Vec::<String>::new());
    }
}
