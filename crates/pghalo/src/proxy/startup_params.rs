//! Applying a client's startup parameters (application_name, DateStyle,
//! `options`...) to a pooled server connection that was opened with its own.

use pghalo_protocol::{SqlState, StartupMessage};

use super::error::ClientError;

/// Parameters that are part of the connection's identity, not settings.
const NOT_SETTINGS: [&str; 4] = ["user", "database", "replication", "options"];

/// `(name, value)` settings the client asked for at startup, `options`
/// (`-c name=value`, `--name=value`) included, in order.
pub fn requested_settings(msg: &StartupMessage) -> Result<Vec<(String, String)>, ClientError> {
    let mut settings = Vec::new();
    for (name, value) in &msg.params {
        if name.starts_with("_pq_.") || NOT_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        settings.push((name.clone(), value.clone()));
    }
    if let Some(options) = msg.param("options") {
        settings.extend(parse_options(options)?);
    }
    Ok(settings)
}

/// Settings whose SET quotes each element as an identifier: `SET
/// search_path TO 'MySchema'` names "MySchema" where the startup packet's
/// `search_path=MySchema` names myschema.
const QUOTED_LISTS: [&str; 4] = [
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
];

/// The statements that bring a server session to the requested settings,
/// skipping those the server already reports with that value. Where SET
/// would read the value differently from a startup packet (a list: `SET
/// search_path TO 'a,b'` names one schema "a,b"; a quoted list setting; a
/// name SET would cut at 63 bytes), it goes through set_config, as the
/// startup packet's does. Others take SET, which the server runs without
/// planning a query (replayed at every new client in session pooling).
pub fn set_statements(
    settings: &[(String, String)],
    current: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut sql = String::new();
    for (name, value) in settings {
        if current
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && v == value)
        {
            continue;
        }
        let raw = value.contains(',')
            || name.len() >= 63
            || QUOTED_LISTS.iter().any(|l| l.eq_ignore_ascii_case(name));
        if raw {
            sql.push_str("SELECT pg_catalog.set_config(");
            push_literal(&mut sql, name);
            sql.push_str(", ");
            push_literal(&mut sql, value);
            sql.push_str(", false);");
        } else {
            sql.push_str("SET ");
            push_ident(&mut sql, name);
            sql.push_str(" TO ");
            push_literal(&mut sql, value);
            sql.push(';');
        }
    }
    sql
}

/// libpq's `options`: whitespace-separated switches, backslash escapes a
/// character (so `\ ` is a space inside a value).
fn parse_options(options: &str) -> Result<Vec<(String, String)>, ClientError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let assignment = if w == "-c" {
            words
                .next()
                .ok_or_else(|| bad_option("-c without a setting"))?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else {
            return Err(bad_option(&format!(
                "unsupported switch \"{w}\" (pghalo accepts -c name=value and --name=value)"
            )));
        };
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| bad_option(&format!("\"{assignment}\" is not name=value")))?;
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

fn bad_option(why: &str) -> ClientError {
    ClientError::fatal(
        SqlState::PROTOCOL_VIOLATION,
        format!("invalid command-line argument in the options startup parameter: {why}"),
    )
}

pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    push_ident(&mut out, name);
    out
}

// Appending in place: a pooled connection's settings are replayed at every
// checkout, and each intermediate String was an allocation.
fn push_ident(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

fn push_literal(out: &mut String, value: &str) {
    // E'' with doubled backslashes is immune to standard_conforming_strings.
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_statements_quote_names_and_values() {
        let settings = vec![
            ("application_name".to_string(), "it's a \\ test".to_string()),
            ("odd\"name".to_string(), "x".to_string()),
            ("DateStyle".to_string(), "ISO, MDY".to_string()),
        ];
        let current =
            std::collections::BTreeMap::from([("datestyle".to_string(), "ISO, MDY".to_string())]);
        assert_eq!(
            set_statements(&settings, &current),
            "SET \"application_name\" TO E'it''s a \\\\ test';SET \"odd\"\"name\" TO E'x';"
        );
        let list = vec![("search_path".to_string(), "a, b".to_string())];
        assert_eq!(
            set_statements(&list, &std::collections::BTreeMap::new()),
            "SELECT pg_catalog.set_config(E'search_path', E'a, b', false);"
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn options_follow_libpq() {
        let parsed = parse_options("-c geqo=off --search-path=a\\ b -cwork_mem=64MB").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("geqo".to_string(), "off".to_string()),
                ("search_path".to_string(), "a b".to_string()),
                ("work_mem".to_string(), "64MB".to_string())
            ]
        );
        assert!(parse_options("-d 5").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
    }

    #[test]
    fn only_differing_settings_are_set() {
        let mut current = std::collections::BTreeMap::new();
        current.insert("DateStyle".to_string(), "ISO, MDY".to_string());
        let wanted = vec![
            ("datestyle".to_string(), "ISO, MDY".to_string()),
            ("application_name".to_string(), "it's".to_string()),
        ];
        assert_eq!(
            set_statements(&wanted, &current),
            "SET \"application_name\" TO E'it''s';"
        );
    }
}
