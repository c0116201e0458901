//! The one error type of the configuration, and the rewording of serde's and
//! toml's messages into sentences that name the key the operator wrote.

use std::path::PathBuf;

use super::locate::KeyPath;

/// Why a configuration could not be used. Each variant prints as one
/// sentence naming the file, and for a bad file, the line and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `message` already names the key; `key` repeats it for callers that
    /// want to act on it (empty when the key is unknown, as for some TOML
    /// syntax errors).
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

impl ConfigError {
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Read { .. } => None,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}

/// A serde message about the value at `path`, reworded: returns the key it
/// is about and the sentence to print.
pub(super) fn describe_serde(path: &KeyPath, raw: &str) -> (String, String) {
    let raw = one_line(raw);
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        // The span serde reports for an unknown field is the key itself,
        // whose parent is the table that does not know it.
        let table = if path.last_key() == Some(name) {
            path.parent()
        } else {
            path.clone()
        };
        let expected = backticked(after_quoted(rest, name));
        let mut message = format!("unknown key '{name}' {}", place(&table));
        if !expected.is_empty() {
            message.push_str(&format!(" (expected one of: {})", expected.join(", ")));
        }
        return (table.key(name).to_string(), message);
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let message = format!("missing required key '{name}' {}", place(path));
        return (path.clone().key(name).to_string(), message);
    }
    let detail = if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let value = rest.split('`').next().unwrap_or_default();
        let expected = backticked(after_quoted(rest, value));
        format!(
            "invalid value '{value}' (expected one of: {})",
            expected.join(", ")
        )
    } else if raw.starts_with("invalid type:") || raw.starts_with("invalid value:") {
        plain_types(&raw)
    } else {
        raw
    };
    let key = path.to_string();
    if key.is_empty() {
        (key, detail)
    } else {
        let message = format!("{key}: {detail}");
        (key, message)
    }
}

/// A TOML syntax error at `line`: the document did not parse, so the key is
/// guessed from the text, which is what the operator will look at anyway.
pub(super) fn describe_syntax(text: &str, line: usize, raw: &str) -> (String, String) {
    // No backticks: the rest of pghalo's messages quote with '.
    let detail = format!("TOML syntax error: {}", one_line(raw).replace('`', "'"));
    let lines: Vec<&str> = text.lines().collect();
    let Some(current) = lines.get(line.saturating_sub(1)) else {
        return (String::new(), detail);
    };
    let Some((key, _)) = current.split_once('=') else {
        return (String::new(), detail);
    };
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return (String::new(), detail);
    }
    let above = &lines[..line.saturating_sub(1)];
    let header_of = |l: &str| l.split('#').next().unwrap_or_default().trim().to_owned();
    let header = above
        .iter()
        .map(|l| header_of(l))
        .rfind(|l| l.starts_with('['));
    let key = match header.as_deref() {
        Some(header) => {
            let table = header.trim_matches(|c| c == '[' || c == ']').trim();
            if header.starts_with("[[") {
                // The n-th `[[backend]]` header opens backend[n-1].
                let index = above.iter().filter(|l| header_of(l) == header).count();
                format!("{table}[{}].{key}", index.saturating_sub(1))
            } else {
                format!("{table}.{key}")
            }
        }
        None => key.to_owned(),
    };
    let message = format!("{key}: {detail}");
    (key, message)
}

fn place(table: &KeyPath) -> String {
    if table.is_root() {
        "at the top level".to_owned()
    } else {
        format!("in {}", table.as_table())
    }
}

/// Messages from toml can span several lines; a log line should not.
fn one_line(raw: &str) -> String {
    raw.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What follows `quoted` and its closing backtick at the start of `text`.
fn after_quoted<'a>(text: &'a str, quoted: &str) -> &'a str {
    text.get(quoted.len() + 1..).unwrap_or_default()
}

fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// serde speaks of Rust types (`u32`, `a sequence`); the operator wrote TOML.
fn plain_types(raw: &str) -> String {
    let mut out = raw.replace('`', "'");
    for (rust, toml) in [
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("a sequence", "an array"),
        ("sequence", "array"),
        ("a map", "a table"),
        ("map", "table"),
    ] {
        out = out.replace(rust, toml);
    }
    if let Some(start) = out.find("expected struct ") {
        out.replace_range(start.., "expected a table");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> KeyPath {
        KeyPath::default().key("pool")
    }

    #[test]
    fn unknown_field() {
        let (key, msg) = describe_serde(
            &pool().key("max_pool"),
            "unknown field `max_pool`, expected one of `mode`, `max_pool_size`",
        );
        assert_eq!(key, "pool.max_pool");
        assert_eq!(
            msg,
            "unknown key 'max_pool' in [pool] (expected one of: mode, max_pool_size)"
        );
        let (key, msg) = describe_serde(
            &KeyPath::default().key("pol"),
            "unknown field `pol`, expected `pool`",
        );
        assert_eq!(key, "pol");
        assert_eq!(
            msg,
            "unknown key 'pol' at the top level (expected one of: pool)"
        );
    }

    #[test]
    fn missing_field() {
        let path = KeyPath::default().key("backend").index(1);
        let (key, msg) = describe_serde(&path, "missing field `host`");
        assert_eq!(key, "backend[1].host");
        assert_eq!(msg, "missing required key 'host' in backend[1]");
    }

    #[test]
    fn variants_and_types() {
        let (_, msg) = describe_serde(
            &pool().key("mode"),
            "unknown variant `statement`, expected `session` or `transaction`",
        );
        assert_eq!(
            msg,
            "pool.mode: invalid value 'statement' (expected one of: session, transaction)"
        );
        let (_, msg) = describe_serde(
            &pool().key("max_pool_size"),
            "invalid type: string \"x\", expected u32",
        );
        assert_eq!(
            msg,
            "pool.max_pool_size: invalid type: string \"x\", expected a whole number, 0 or more"
        );
        let (_, msg) = describe_serde(
            &pool(),
            "invalid type: integer `3`, expected struct PoolConfig",
        );
        assert_eq!(msg, "pool: invalid type: integer '3', expected a table");
    }

    #[test]
    fn syntax_key_guess() {
        let text = "[pool]\nmax_pool_size = 2x\n";
        let (key, msg) = describe_syntax(text, 2, "invalid integer\nexpected digit");
        assert_eq!(key, "pool.max_pool_size");
        assert_eq!(
            msg,
            "pool.max_pool_size: TOML syntax error: invalid integer; expected digit"
        );
        let text = "[[backend]]\nport = 1\n[[backend]]\nport = 1\nport = 2\n";
        let (key, msg) = describe_syntax(text, 5, "duplicate key `port`");
        assert_eq!(key, "backend[1].port");
        assert_eq!(
            msg,
            "backend[1].port: TOML syntax error: duplicate key 'port'"
        );
        let (key, msg) = describe_syntax("[pool\n", 1, "invalid table header");
        assert_eq!(key, "");
        assert_eq!(msg, "TOML syntax error: invalid table header");
        let (key, _) = describe_syntax("x", 9, "eof");
        assert_eq!(key, "");
    }
}
