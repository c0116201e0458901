//! A small SQL lexer: enough to split a query string into statements and
//! see each statement's leading keywords and the functions it calls,
//! honouring quotes, dollar quotes and comments. It never guesses: a
//! construct it cannot read ends the scan and callers treat the statement
//! as unknown (DESIGN rule 2: unknown goes the safe way).

/// One token of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An unquoted identifier or keyword, lowercased.
    Word(String),
    /// A double-quoted identifier, as written inside the quotes.
    Quoted(String),
    /// A string or number literal (content not kept).
    Literal,
    /// Any single punctuation character.
    Punct(char),
}

/// The tokens of one statement (terminating ';' excluded) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    pub text: &'a str,
    pub tokens: Vec<Token>,
}

impl Statement<'_> {
    /// The leading unquoted words, lowercased, up to `n`.
    pub fn leading_words(&self, n: usize) -> Vec<&str> {
        self.tokens
            .iter()
            .take(n)
            .map_while(|t| match t {
                Token::Word(w) => Some(w.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Whether the statement calls a function named `name` (bare or
    /// schema-qualified, plain, quoted or U&-quoted), i.e. the name is
    /// followed by '('.
    pub fn calls(&self, name: &str) -> bool {
        self.tokens.windows(2).any(|w| {
            matches!((&w[0], &w[1]),
                (Token::Word(f) | Token::Quoted(f), Token::Punct('(')) if f == name)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("unterminated quoted string or comment")]
    Unterminated,
}

/// What a [`Lexeme`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An unquoted identifier or keyword, as written (not lowercased).
    Word,
    /// A double-quoted identifier, quotes included.
    Quoted,
    /// A string literal: `'...'`, `E'...'` (prefix included) or a
    /// dollar-quoted string.
    String,
    /// A number: a digit followed by letters, digits, `.` and `_`.
    Number,
    /// `$` followed by digits (a positional parameter), or a lone `$`.
    Param,
    /// A block or line comment, delimiters included.
    Comment,
    /// The `;` that ends a statement.
    Semicolon,
    /// Any other single character outside whitespace.
    Punct(u8),
}

/// One lexeme: its kind and its byte range in the text. Whitespace
/// between lexemes is not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexeme {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// The lexemes of `sql`, in order, without allocating. After an error the
/// iterator ends.
pub fn lexemes(sql: &str) -> Lexemes<'_> {
    Lexemes {
        bytes: sql.as_bytes(),
        i: 0,
        done: false,
    }
}

/// Iterator returned by [`lexemes`].
pub struct Lexemes<'a> {
    bytes: &'a [u8],
    i: usize,
    done: bool,
}

impl Iterator for Lexemes<'_> {
    type Item = Result<Lexeme, LexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let bytes = self.bytes;
        let mut i = self.i;
        // PostgreSQL's whitespace; \v since 16 (on 15 it is a syntax
        // error, so reading it as whitespace only errs towards seeing more).
        while i < bytes.len()
            && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
        {
            i += 1;
        }
        if i >= bytes.len() {
            self.done = true;
            return None;
        }
        let start = i;
        let scanned = match bytes[i] {
            b';' => Ok((Kind::Semicolon, i + 1)),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                // As in PostgreSQL's scanner, a carriage return ends the
                // comment too: "-- x\rSET ROLE y" runs the SET.
                while i < bytes.len() && !matches!(bytes[i], b'\n' | b'\r') {
                    i += 1;
                }
                Ok((Kind::Comment, i))
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                skip_block_comment(bytes, i).map(|end| (Kind::Comment, end))
            }
            b'\'' => skip_quoted(bytes, i, b'\'', false).map(|end| (Kind::String, end)),
            b'e' | b'E' if bytes.get(i + 1) == Some(&b'\'') => {
                skip_quoted(bytes, i + 1, b'\'', true).map(|end| (Kind::String, end))
            }
            b'"' => skip_quoted(bytes, i, b'"', false).map(|end| (Kind::Quoted, end)),
            b'$' => match dollar_tag(bytes, i) {
                Some(tag_len) => {
                    skip_dollar_quoted(bytes, i, tag_len).map(|end| (Kind::String, end))
                }
                None => {
                    // A positional parameter ($1) or an operator.
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                    Ok((Kind::Param, i))
                }
            },
            c if c.is_ascii_digit() => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.' || bytes[i] == b'_')
                {
                    i += 1;
                }
                Ok((Kind::Number, i))
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || bytes[i] == b'_'
                        || bytes[i] == b'$'
                        || bytes[i] >= 0x80)
                {
                    i += 1;
                }
                Ok((Kind::Word, i))
            }
            c => Ok((Kind::Punct(c), i + 1)),
        };
        match scanned {
            Ok((kind, end)) => {
                self.i = end;
                Some(Ok(Lexeme { kind, start, end }))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Splits `sql` into statements. Empty statements (`;;`) are dropped.
pub fn statements(sql: &str) -> Result<Vec<Statement<'_>>, LexError> {
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut skip_uescape = 0u8;
    for lexeme in lexemes(sql) {
        let Lexeme {
            kind,
            start: from,
            end,
        } = lexeme?;
        if kind != Kind::Comment && skip_uescape > 0 {
            // UESCAPE and its literal belong to the name before them.
            skip_uescape -= 1;
            continue;
        }
        match kind {
            Kind::Semicolon => {
                if !tokens.is_empty() {
                    out.push(Statement {
                        text: sql[start..from].trim(),
                        tokens: std::mem::take(&mut tokens),
                    });
                }
                start = end;
            }
            Kind::Comment => {}
            Kind::String | Kind::Number | Kind::Param => tokens.push(Token::Literal),
            Kind::Quoted => {
                let quoted = sql[from + 1..end - 1].replace("\"\"", "\"");
                // U&"..." reaches here as the word U, '&' and the quoted
                // part, all touching: the name is what its escapes spell.
                let unicode = from >= 2
                    && tokens.last() == Some(&Token::Punct('&'))
                    && sql
                        .get(from - 2..from)
                        .is_some_and(|p| p.eq_ignore_ascii_case("u&"))
                    && matches!(tokens.iter().rev().nth(1), Some(Token::Word(w)) if w == "u");
                if unicode {
                    tokens.truncate(tokens.len() - 2);
                    let named = uescape_after(&sql[end..]);
                    if named.is_some() {
                        skip_uescape = 2;
                    }
                    let escape = named.unwrap_or('\\');
                    // An escape the server would reject: the statement fails
                    // there, so what it names does not matter.
                    tokens.push(Token::Quoted(
                        unescape_unicode(&quoted, escape).unwrap_or(quoted),
                    ));
                } else {
                    tokens.push(Token::Quoted(quoted));
                }
            }
            Kind::Word => tokens.push(Token::Word(sql[from..end].to_ascii_lowercase())),
            Kind::Punct(c) => tokens.push(Token::Punct(char::from(c))),
        }
    }
    if !tokens.is_empty() {
        out.push(Statement {
            text: sql[start..].trim(),
            tokens,
        });
    }
    Ok(out)
}

/// The escape character a `UESCAPE 'c'` clause at the head of `rest`
/// names, comments skipped.
fn uescape_after(rest: &str) -> Option<char> {
    let mut next = lexemes(rest)
        .map_while(Result::ok)
        .filter(|l| l.kind != Kind::Comment);
    let word = next.next()?;
    if word.kind != Kind::Word || !rest[word.start..word.end].eq_ignore_ascii_case("uescape") {
        return None;
    }
    let literal = next.next()?;
    // Any string constant: 'c', E'c', $$c$$.
    let inner = string_content(&rest[literal.start..literal.end])?;
    let mut chars = inner.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// The text a string literal stands for: `'...'` with its doubled quotes,
/// a dollar-quoted string's, an E'...' string's when its only escapes are
/// `\'` and `\\`; None for other escapes, which would have to be decoded.
pub fn string_content(literal: &str) -> Option<String> {
    if let Some(inner) = literal.strip_prefix(['e', 'E']) {
        let inner = inner.strip_prefix('\'')?.strip_suffix('\'')?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    escaped @ ('\'' | '\\') => out.push(escaped),
                    _ => return None,
                },
                '\'' => {
                    // A doubled quote.
                    chars.next();
                    out.push('\'');
                }
                c => out.push(c),
            }
        }
        return Some(out);
    }
    if let Some(inner) = literal.strip_prefix('\'') {
        return Some(inner.strip_suffix('\'')?.replace("''", "'"));
    }
    let tag_end = literal.strip_prefix('$')?.find('$')? + 2;
    let inner = literal.get(tag_end..literal.len().checked_sub(tag_end)?)?;
    Some(inner.to_string())
}

/// A U&-quoted identifier's text with its escapes (`\XXXX`,
/// `\+XXXXXX`, a doubled escape) turned into characters; None where the
/// server would refuse it.
fn unescape_unicode(text: &str, escape: char) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    let mut high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != escape {
            if high.is_some() {
                return None;
            }
            out.push(c);
            continue;
        }
        let code = match chars.clone().next() {
            Some(c2) if c2 == escape => {
                chars.next();
                out.push(escape);
                continue;
            }
            Some('+') => {
                chars.next();
                hex_digits(&mut chars, 6)?
            }
            _ => hex_digits(&mut chars, 4)?,
        };
        match (high.take(), code) {
            (None, 0xD800..=0xDBFF) => high = Some(code),
            (Some(h), 0xDC00..=0xDFFF) => out.push(char::from_u32(
                0x10000 + ((h - 0xD800) << 10) + (code - 0xDC00),
            )?),
            (None, _) => out.push(char::from_u32(code)?),
            (Some(_), _) => return None,
        }
    }
    high.is_none().then_some(out)
}

/// The next `n` characters read as a hexadecimal number.
fn hex_digits(chars: &mut std::str::Chars<'_>, n: usize) -> Option<u32> {
    let digits: String = chars.take(n).collect();
    if digits.len() != n {
        return None;
    }
    u32::from_str_radix(&digits, 16).ok()
}

fn skip_block_comment(bytes: &[u8], mut i: usize) -> Result<usize, LexError> {
    // PostgreSQL's block comments nest.
    let mut depth = 0usize;
    while i + 1 < bytes.len() {
        if bytes[i] == b'/' && bytes[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err(LexError::Unterminated)
}

/// Returns the index just past the closing quote.
fn skip_quoted(bytes: &[u8], open: usize, quote: u8, backslash: bool) -> Result<usize, LexError> {
    let mut i = open + 1;
    while i < bytes.len() {
        let c = bytes[i];
        if backslash && c == b'\\' {
            i += 2;
            continue;
        }
        if c == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(LexError::Unterminated)
}

/// Length of a `$tag$` opener at `i`, if there is one.
fn dollar_tag(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < bytes.len()
        && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] >= 0x80)
    {
        if j == i + 1 && bytes[j].is_ascii_digit() {
            return None;
        }
        j += 1;
    }
    (bytes.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

fn skip_dollar_quoted(bytes: &[u8], i: usize, tag_len: usize) -> Result<usize, LexError> {
    let tag = &bytes[i..i + tag_len];
    let body = i + tag_len;
    bytes[body..]
        .windows(tag_len)
        .position(|w| w == tag)
        .map(|p| body + p + tag_len)
        .ok_or(LexError::Unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<Vec<String>> {
        statements(sql)
            .unwrap()
            .iter()
            .map(|s| s.leading_words(3).into_iter().map(String::from).collect())
            .collect()
    }

    #[test]
    fn a_line_comment_ends_at_a_carriage_return_and_vertical_tab_is_space() {
        assert_eq!(words("-- c\rSET ROLE x"), vec![vec!["set", "role", "x"]]);
        assert_eq!(
            words("SET a=1; SELECT 1 --c\r; SET b=2"),
            vec![vec!["set", "a"], vec!["select"], vec!["set", "b"]]
        );
        assert_eq!(words("\x0bLISTEN x"), vec![vec!["listen", "x"]]);
    }

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        assert_eq!(
            words("SET a = 'x;y'; /* ; */ select $$;$$, \"a;b\" -- ;\n; ;RESET all"),
            vec![vec!["set", "a"], vec!["select"], vec!["reset", "all"]]
        );
        assert_eq!(
            words("/* outer /* nested ; */ still */ SET x TO 1"),
            vec![vec!["set", "x", "to"]]
        );
        assert_eq!(
            words("SELECT E'it\\'s;' ; SELECT $tag$ $$ ; $tag$"),
            vec![vec!["select"], vec!["select"]]
        );
    }

    #[test]
    fn finds_calls() {
        let s = statements("SELECT pg_catalog.set_config('a', 'b', false)").unwrap();
        assert!(s[0].calls("set_config"));
        let s = statements("SELECT 'set_config(' , set_configx(1)").unwrap();
        assert!(!s[0].calls("set_config"));
    }

    #[test]
    fn quoted_and_unicode_names_are_calls_too() {
        for sql in [
            "SELECT \"set_config\"('a.b', '1', false)",
            "SELECT pg_catalog.\"set_config\"('a.b', '1', false)",
            "SELECT U&\"\\0073et_config\"('a.b', '1', false)",
            "SELECT u&\"set\\005Fconfig\"('a.b', '1', false)",
            "SELECT U&\"!0073et_config\" UESCAPE '!' ('a.b', '1', false)",
            "SELECT U&\"!+000073et_config\" /* c */ UESCAPE '!'('a.b', '1', false)",
            "SELECT U&\"!0073et_config\" UESCAPE E'!' ('a.b', '1', false)",
            "SELECT U&\"!0073et_config\" UESCAPE $$!$$ ('a.b', '1', false)",
            // Not U&: a column ANDed with a call.
            "SELECT u & \"set_config\"('a.b', '1', false)",
        ] {
            let s = statements(sql).unwrap();
            assert!(s[0].calls("set_config"), "{sql}: {:?}", s[0].tokens);
        }
        for sql in [
            // Quoted names keep their case: this is another function.
            "SELECT \"SET_CONFIG\"('a.b', '1', false)",
            "SELECT U&\"\\0073et_configx\"(1)",
        ] {
            let s = statements(sql).unwrap();
            assert!(!s[0].calls("set_config"), "{sql}: {:?}", s[0].tokens);
        }
        assert_eq!(
            unescape_unicode("d\\0061t\\+000061\\\\", '\\').as_deref(),
            Some("data\\")
        );
        assert_eq!(
            unescape_unicode("\\D83D\\DE00", '\\').as_deref(),
            Some("\u{1F600}")
        );
        assert_eq!(unescape_unicode("\\D83Dx", '\\'), None);
        assert_eq!(unescape_unicode("\\12", '\\'), None);
    }

    #[test]
    fn string_contents() {
        assert_eq!(string_content("'it''s'").as_deref(), Some("it's"));
        assert_eq!(string_content("$q$a$b$q$").as_deref(), Some("a$b"));
        assert_eq!(string_content("E'a\\'b\\\\c'").as_deref(), Some("a'b\\c"));
        assert_eq!(string_content("E'a\\nb'"), None);
        assert_eq!(string_content("$$"), None);
    }

    #[test]
    fn unterminated_constructs_are_errors() {
        for sql in [
            "SELECT 'abc",
            "SELECT \"abc",
            "SELECT $q$ abc",
            "/* abc",
            "SELECT E'abc\\'",
        ] {
            assert_eq!(statements(sql), Err(LexError::Unterminated), "{sql}");
        }
    }

    #[test]
    fn lexemes_carry_kinds_and_spans() {
        let sql = "SELECT/*c*/e'x', $1, \"Q\" ;-- d\n1.5";
        let got: Vec<(Kind, &str)> = lexemes(sql)
            .map(|l| l.unwrap())
            .map(|l| (l.kind, &sql[l.start..l.end]))
            .collect();
        assert_eq!(
            got,
            vec![
                (Kind::Word, "SELECT"),
                (Kind::Comment, "/*c*/"),
                (Kind::String, "e'x'"),
                (Kind::Punct(b','), ","),
                (Kind::Param, "$1"),
                (Kind::Punct(b','), ","),
                (Kind::Quoted, "\"Q\""),
                (Kind::Semicolon, ";"),
                (Kind::Comment, "-- d"),
                (Kind::Number, "1.5"),
            ]
        );
        let mut it = lexemes("SELECT 'x");
        assert!(matches!(it.next(), Some(Ok(_))));
        assert_eq!(it.next(), Some(Err(LexError::Unterminated)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn positional_parameters_are_not_dollar_quotes() {
        assert_eq!(
            words("SELECT $1, $2; SELECT 1"),
            vec![vec!["select"], vec!["select"]]
        );
    }
}
