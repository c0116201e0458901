//! libpq's keyword/value connection strings (`host=a port=5432
//! password='x y'`), as standbys keep them in primary_conninfo: read, one
//! keyword changed, written back. Only what follow-primary needs: the
//! standby's own settings (user, password, application_name, TLS) are kept
//! and only where it connects changes.

/// Keyword/value pairs, in order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?}"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value for {key:?}")),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value for {key:?}")),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err("a value without a keyword".to_owned());
        }
        pairs.push((key, value));
    }
}

/// The string libpq reads back as `pairs`: every value quoted.
pub fn render(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            format!("{key}='{escaped}'")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` with `keyword` set to `value` (replaced where it was, else
/// added at the end).
pub fn set(pairs: &mut Vec<(String, String)>, keyword: &str, value: &str) {
    match pairs.iter_mut().find(|(k, _)| k == keyword) {
        Some(pair) => pair.1 = value.to_owned(),
        None => pairs.push((keyword.to_owned(), value.to_owned())),
    }
}

/// primary_conninfo pointed at `host`:`port`; `hostaddr` (which would win
/// over host) is dropped.
pub fn pointed_at(text: &str, host: &str, port: u16) -> Result<String, String> {
    let mut pairs = parse(text)?;
    pairs.retain(|(k, _)| k != "hostaddr");
    set(&mut pairs, "host", host);
    set(&mut pairs, "port", &port.to_string());
    Ok(render(&pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_pg_basebackup_writes_and_points_it_elsewhere() {
        let text = "user=repl password=cVG\\ b' channel_binding=prefer host=127.0.0.1 port=20071 \
                    application_name=node1 sslmode=prefer";
        let pairs = parse(text).unwrap();
        assert_eq!(pairs[1], ("password".into(), "cVG b'".into()));
        assert_eq!(pairs[4], ("port".into(), "20071".into()));
        let moved = pointed_at(text, "10.0.0.2", 5433).unwrap();
        let again = parse(&moved).unwrap();
        assert_eq!(again.len(), pairs.len());
        assert_eq!(again[1], ("password".into(), "cVG b'".into()));
        assert_eq!(again[3], ("host".into(), "10.0.0.2".into()));
        assert_eq!(again[4], ("port".into(), "5433".into()));
        assert_eq!(again[5], ("application_name".into(), "node1".into()));
    }

    #[test]
    fn quoted_values_spaces_and_escapes_round_trip() {
        let text = "host = 'a b' password='it\\'s \\\\ here' dbname=x";
        let pairs = parse(text).unwrap();
        assert_eq!(
            pairs,
            [
                ("host".to_string(), "a b".to_string()),
                ("password".to_string(), "it's \\ here".to_string()),
                ("dbname".to_string(), "x".to_string()),
            ]
        );
        assert_eq!(parse(&render(&pairs)).unwrap(), pairs);
        let moved = pointed_at("hostaddr=1.2.3.4 port=1", "h", 2).unwrap();
        assert_eq!(moved, "port='2' host='h'");
    }

    #[test]
    fn bad_strings_are_refused() {
        for bad in ["host", "host='x", "=x", "host=a port"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("").unwrap(), []);
    }
}
