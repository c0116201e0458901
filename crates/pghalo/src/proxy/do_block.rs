//! DO blocks, read for what they do to the session (transaction
//! pooling's rules, `tx_policy`): a PL/pgSQL body's statements are judged
//! like top-level ones, and so is the text a statement EXECUTEs when it is
//! built from string literals (`format()` evaluated with them). A session
//! SET inside a block is refused, not tracked: the block decides at run
//! time whether it runs.
//!
//! The body is client input: every level is read in time linear in its
//! text, and levels (a DO inside an EXECUTEd string inside a DO...) stop at
//! [`MAX_DEPTH`], refused beyond it.

use std::collections::HashMap;

use super::tx_policy::{Effect, SESSION_WORDS, effect_at};
use crate::router::lexer::{Kind, Statement, Token, lexemes, statements, string_content};

/// How many DO blocks and EXECUTEd strings deep pghalo reads.
const MAX_DEPTH: u8 = 3;

/// Words after which a PL/pgSQL statement starts inside a statement the
/// lexer sees (it splits at `;` only): `BEGIN SET ...`, `THEN LISTEN ...`.
const PLPGSQL_STARTERS: [&str; 5] = ["begin", "then", "else", "loop", "declare"];

/// How many statement starts that open with a session word one statement
/// may hold before pghalo stops reading it (each is judged in time linear
/// in the statement; starts opening with other words cost nothing).
const MAX_STARTS: usize = 64;

/// How many `format()` calls without a closing parenthesis one EXECUTE
/// statement may hold before pghalo stops reading it (each is read to the
/// statement's end).
const MAX_UNCLOSED: usize = 16;

const UNREADABLE: &str = "a body pghalo cannot read";

/// The effect of DO statement `stmt`, found `depth` levels down. A block
/// in another language than PL/pgSQL is like a function: its body is not
/// looked into.
pub(super) fn do_block(stmt: &Statement<'_>, depth: u8) -> Effect {
    let refuse = |what: &str| Effect::Refuse(format!("{what} inside a DO block"));
    if depth >= MAX_DEPTH {
        return refuse("a DO block nested this deep");
    }
    let lexed: Vec<(Kind, &str)> = lexemes(stmt.text)
        .map_while(Result::ok)
        .filter(|l| l.kind != Kind::Comment)
        .map(|l| (l.kind, &stmt.text[l.start..l.end]))
        .collect();
    // None: not named, or named in a way pghalo does not read (then the
    // body is read as PL/pgSQL: erring towards seeing more).
    let mut language: Option<String> = None;
    let mut body = String::new();
    let mut readable = true;
    // After DO (inside a body, the statement's text may begin with BEGIN,
    // THEN...).
    let Some(mut at) = lexed
        .iter()
        .position(|&(k, t)| k == Kind::Word && t.eq_ignore_ascii_case("do"))
        .map(|p| p + 1)
    else {
        return refuse(UNREADABLE);
    };
    while let Some(&(kind, text)) = lexed.get(at) {
        match kind {
            Kind::Word if text.eq_ignore_ascii_case("language") => {
                // U&"..." arrives as U, '&' and the quoted part.
                let unicode = matches!(lexed.get(at + 2), Some((Kind::Punct(b'&'), _)));
                language = lexed
                    .get(at + 1)
                    .filter(|_| !unicode)
                    .and_then(|&(k, t)| language_name(k, t));
                at += 2;
                continue;
            }
            // Adjacent literals are one string to the server.
            Kind::String => match string_content(text) {
                Some(content) => body.push_str(&content),
                None => readable = false,
            },
            // U&'...' and anything else pghalo would have to guess at.
            _ => readable = false,
        }
        at += 1;
    }
    if language.as_deref().is_some_and(|l| l != "plpgsql") {
        return Effect::Plain;
    }
    if !readable {
        return refuse(UNREADABLE);
    }
    match body_effect(&body, depth + 1) {
        Some(what) => refuse(&what),
        None => Effect::Plain,
    }
}

/// A language name as PostgreSQL reads it, when it is spelt plainly.
fn language_name(kind: Kind, text: &str) -> Option<String> {
    match kind {
        Kind::Word => Some(text.to_ascii_lowercase()),
        Kind::Quoted => Some(text.get(1..text.len() - 1)?.replace("\"\"", "\"")),
        Kind::String if text.starts_with('\'') => string_content(text),
        _ => None,
    }
}

/// What in PL/pgSQL text `body` would change the session, if anything.
fn body_effect(body: &str, depth: u8) -> Option<String> {
    let Ok(list) = statements(body) else {
        return Some(UNREADABLE.to_string());
    };
    // What its EXECUTEd strings may evaluate to, all together.
    let mut budget = evaluated_limit(body);
    for inner in &list {
        if let Some(what) = session_change(effect_at(inner, depth)) {
            return Some(what);
        }
        // Statements that start after BEGIN, THEN... and open with a word
        // a rule starts with (CASE ... THEN expr ... costs nothing).
        let starts = inner.tokens.windows(2).enumerate().filter_map(|(i, pair)| {
            let [Token::Word(starter), Token::Word(first)] = pair else {
                return None;
            };
            (PLPGSQL_STARTERS.contains(&starter.as_str())
                && (SESSION_WORDS.contains(&first.as_str()) || first == "explain"))
                .then_some(i + 1)
        });
        for (n, start) in starts.enumerate() {
            if n >= MAX_STARTS {
                return Some(UNREADABLE.to_string());
            }
            let part = Statement {
                text: inner.text,
                tokens: inner.tokens.get(start..).unwrap_or_default().to_vec(),
            };
            if let Some(what) = session_change(effect_at(&part, depth)) {
                return Some(what);
            }
        }
        if let Some(what) = executed(inner, depth, &mut budget) {
            return Some(what);
        }
    }
    None
}

/// What an effect found in a body means there: anything but Plain is
/// refused (a SET cannot be tracked where the block decides whether it
/// runs).
fn session_change(effect: Effect) -> Option<String> {
    match effect {
        Effect::Plain | Effect::RollbackToSavepoint => None,
        Effect::Refuse(what) => Some(what),
        Effect::Set { name, .. } => Some(format!("SET {name}")),
        Effect::Reset(_) => Some("RESET".to_string()),
        Effect::Discard => Some("DISCARD ALL".to_string()),
        Effect::DeallocateAll => Some("DEALLOCATE ALL".to_string()),
    }
}

/// What the text an EXECUTE in `stmt` runs would do, as far as its string
/// literals show: they are joined (`'LIS' || 'TEN x'`, `'UPDATE ' ||
/// quote_ident(t) || ' SET a = 1'`) and read as statements; a `format()`
/// call is evaluated with its literal arguments (see [`evaluate_format`]).
/// Literals after USING or INTO are the statement's parameters and
/// targets, not its text.
fn executed(stmt: &Statement<'_>, depth: u8, budget: &mut usize) -> Option<String> {
    if !stmt
        .tokens
        .iter()
        .any(|t| matches!(t, Token::Word(w) if w == "execute"))
    {
        return None;
    }
    let text = stmt.text;
    let lexed: Vec<_> = lexemes(text)
        .map_while(Result::ok)
        .filter(|l| l.kind != Kind::Comment)
        .collect();
    let word = |i: usize, w: &str| {
        lexed
            .get(i)
            .is_some_and(|l| l.kind == Kind::Word && text[l.start..l.end].eq_ignore_ascii_case(w))
    };
    let mut joined = String::new();
    // The same from the first format() call with a guessed argument on,
    // with that call's text made with the guesses unknown: a guess such as
    // `coalesce(v, '--')` may hide what follows the call, too.
    let mut joined_alt: Option<String> = None;
    // Texts read on their own, each a statement list: a guessed
    // argument's literals (see `Format`). Joined, one with an odd quote
    // would swallow the others.
    let mut separate: Vec<String> = Vec::new();
    let mut after_execute = false;
    let mut literals = 0;
    // A call without its closing parenthesis is read to the end of the
    // statement, and so is each call nested in it: few are tried.
    let mut unclosed = 0;
    let mut i = 0;
    while let Some(lexeme) = lexed.get(i) {
        let piece = &text[lexeme.start..lexeme.end];
        i += 1;
        match lexeme.kind {
            // Not dynamic SQL: a trigger's EXECUTE FUNCTION, GRANT EXECUTE
            // ON.
            Kind::Word if word(i - 1, "execute") => {
                after_execute = !(word(i, "function") || word(i, "procedure") || word(i, "on"));
            }
            Kind::Word if after_execute && (word(i - 1, "using") || word(i - 1, "into")) => break,
            Kind::Word
                if after_execute
                    && word(i - 1, "format")
                    && lexed.get(i).is_some_and(|l| l.kind == Kind::Punct(b'(')) =>
            {
                if unclosed >= MAX_UNCLOSED {
                    return Some(UNREADABLE.to_string());
                }
                match evaluate_format(text, &lexed, i + 1, budget) {
                    Format::Text(evaluated, alt, parts, after) => {
                        match (&mut joined_alt, alt) {
                            (Some(text), alt) => {
                                text.push_str(alt.as_deref().unwrap_or(&evaluated))
                            }
                            (None, Some(alt)) => joined_alt = Some(format!("{joined}{alt}")),
                            (None, None) => {}
                        }
                        joined.push_str(&evaluated);
                        separate.extend(parts);
                        literals += 1;
                        i = after;
                    }
                    // Each literal read as a statement of its own: which
                    // of them the call puts first is not known.
                    Format::Unevaluated(parts, after) => {
                        literals += parts.len();
                        separate.extend(parts);
                        i = after;
                    }
                    Format::Unreadable => return Some(UNREADABLE.to_string()),
                    // Not a statement PostgreSQL runs; its literals are
                    // joined like any others.
                    Format::Unclosed => unclosed += 1,
                }
            }
            Kind::String if after_execute => {
                // U&'...': the escapes would have to be decoded.
                let unicode = lexeme.start > 0 && text.as_bytes()[lexeme.start - 1] == b'&';
                match string_content(piece).filter(|_| !unicode) {
                    Some(content) => {
                        if let Some(text) = &mut joined_alt {
                            text.push_str(&content);
                        }
                        joined.push_str(&content);
                    }
                    None => return Some("dynamic SQL pghalo cannot read".to_string()),
                }
                literals += 1;
            }
            _ => {}
        }
    }
    if literals == 0 {
        // Built from variables only: like a function's body, not seen.
        return None;
    }
    if depth + 1 >= MAX_DEPTH {
        return Some("dynamic SQL nested this deep".to_string());
    }
    std::iter::once(&joined)
        .chain(&joined_alt)
        .chain(&separate)
        .find_map(|text| body_effect(text, depth + 1))
}

/// What a `format()` call evaluates to, as far as pghalo knows.
enum Format {
    /// Its text; the same made with its guessed arguments unknown, if it
    /// has any; their literals (each read on its own: see
    /// [`evaluate_format`]); and the index of the lexeme after its closing
    /// parenthesis.
    Text(String, Option<String>, Vec<String>, usize),
    /// Not a format string pghalo evaluates (not made of literals, a width
    /// from an argument that is not a number, a type PostgreSQL rejects,
    /// too few arguments): the string literals inside the call, each of
    /// which may be a statement the call puts together, and the index
    /// after the call.
    Unevaluated(Vec<String>, usize),
    /// Its text would be larger than the budget, or a literal in it is one
    /// pghalo would have to decode.
    Unreadable,
    /// No closing parenthesis in the statement.
    Unclosed,
}

/// A `format()` argument, as far as pghalo knows it.
enum Arg {
    /// String literals only (joined by `||` or adjacent): its value.
    Known(String),
    /// An expression holding literals (`'x'::text`, `lower('X')`, a nested
    /// call): its literals joined (the nearest guess at its value), and
    /// each of them.
    Guess(String, Vec<String>),
    /// The word NULL.
    Null,
    /// Anything else (a variable, a number): unknown.
    Unknown,
}

/// The most text the EXECUTEd strings of one body may evaluate to, all
/// statements together, before pghalo stops reading it:
/// `format('%1$s%1$s...', long literal)` would otherwise grow without
/// bound.
fn evaluated_limit(text: &str) -> usize {
    (4 * text.len()).max(64 * 1024)
}

/// What the argument made of `lexemes` is (see [`Arg`]); `contents` holds
/// each literal's decoded text by lexeme index.
fn argument(
    text: &str,
    lexed: &[crate::router::lexer::Lexeme],
    lexemes: &[usize],
    contents: &HashMap<usize, String>,
) -> Arg {
    let kinds: Vec<Kind> = lexemes.iter().map(|&i| lexed[i].kind).collect();
    let strings = || {
        lexemes
            .iter()
            .filter_map(|i| contents.get(i).cloned())
            .collect::<Vec<String>>()
    };
    let piece = |n: usize| &text[lexed[lexemes[n]].start..lexed[lexemes[n]].end];
    match kinds.as_slice() {
        [Kind::Word] if piece(0).eq_ignore_ascii_case("null") => Arg::Null,
        [Kind::Number] => Arg::Known(piece(0).to_string()),
        [Kind::Punct(b'-'), Kind::Number] => Arg::Known(format!("-{}", piece(1))),
        k if !k.is_empty()
            && k.iter()
                .all(|k| matches!(k, Kind::String | Kind::Punct(b'|'))) =>
        {
            Arg::Known(strings().concat())
        }
        k if k.contains(&Kind::String) => {
            let parts = strings();
            Arg::Guess(parts.concat(), parts)
        }
        _ => Arg::Unknown,
    }
}

/// Evaluates `format(` whose arguments start at `lexed[at]` the way
/// PostgreSQL's format() does (`%s`, `%I`, `%L`, `%%`, positions `%2$s`,
/// `-` flags, a width, also `*` from an argument), with each argument in
/// its place as far as pghalo knows it (see [`Arg`]): an unknown one
/// becomes `x` for `%s` and `%I` and NULL for `%L`, so unknown text reads
/// as no statement, as a variable alone does. Where a guessed argument is
/// used, the text is also made with it unknown, and each of its literals
/// is read as a statement too (all of these on their own). A width pads with one space,
/// enough to separate words. `%I` is never quoted for a plain lowercase
/// name (PostgreSQL leaves unreserved keywords such as `listen` bare), so a
/// keyword it makes is seen. What it makes is charged to `budget`.
fn evaluate_format(
    text: &str,
    lexed: &[crate::router::lexer::Lexeme],
    at: usize,
    budget: &mut usize,
) -> Format {
    let mut args: Vec<Arg> = Vec::new();
    // The current argument's lexemes, and the decoded content of every
    // literal in the call.
    let mut current: Vec<usize> = Vec::new();
    let mut contents: HashMap<usize, String> = HashMap::new();
    let mut literals: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut i = at;
    let after = loop {
        let Some(lexeme) = lexed.get(i) else {
            return Format::Unclosed;
        };
        i += 1;
        match lexeme.kind {
            Kind::Punct(b')' | b',') if depth == 0 => {
                args.push(argument(text, lexed, &current, &contents));
                current.clear();
                if lexeme.kind == Kind::Punct(b')') {
                    break i;
                }
                continue;
            }
            Kind::Semicolon => return Format::Unclosed,
            Kind::String => {
                // U&'...': the escapes would have to be decoded.
                let unicode = lexeme.start > 0 && text.as_bytes()[lexeme.start - 1] == b'&';
                match string_content(&text[lexeme.start..lexeme.end]).filter(|_| !unicode) {
                    Some(content) => {
                        literals.push(content.clone());
                        contents.insert(i - 1, content);
                    }
                    None => return Format::Unreadable,
                }
            }
            Kind::Punct(b'(' | b'[') => depth += 1,
            Kind::Punct(b')' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
        current.push(i - 1);
    };
    let unevaluated = |literals| Format::Unevaluated(literals, after);
    let Some((Arg::Known(spec), values)) = args.split_first() else {
        return unevaluated(literals);
    };
    let mut out = String::new();
    // The same with each guessed argument as unknown, from the first guess
    // on (until then it is `out`): a guess may be wrong in a way that
    // hides what follows (`coalesce(v, '--')`).
    let mut alt: Option<String> = None;
    let mut next = 0usize;
    // Guessed arguments used (each once): their literals are also read as
    // statements of their own, as where nothing is evaluated.
    let mut guessed = vec![false; values.len()];
    let mut chars = spec.chars().peekable();
    // `%n$` at `chars`: n - 1, when it is there.
    let position = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        let mut lookahead = chars.clone();
        let mut digits = String::new();
        while let Some(d) = lookahead.next_if(char::is_ascii_digit) {
            digits.push(d);
        }
        if digits.is_empty() || lookahead.next() != Some('$') {
            return Ok(None);
        }
        *chars = lookahead;
        match digits.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n - 1)),
            _ => Err(()),
        }
    };
    while let Some(c) = chars.next() {
        if out.len() + alt.as_ref().map_or(0, String::len) > *budget {
            return Format::Unreadable;
        }
        if c != '%' {
            out.push(c);
            if let Some(alt) = &mut alt {
                alt.push(c);
            }
            continue;
        }
        if chars.next_if_eq(&'%').is_some() {
            out.push('%');
            if let Some(alt) = &mut alt {
                alt.push('%');
            }
            continue;
        }
        // %[position$][flags][width]type. As in PostgreSQL, a width from
        // an argument (`*`, `*n$`) is read first, from the next argument
        // or argument n, and the value is the argument after it unless
        // the position says otherwise.
        let Ok(argpos) = position(&mut chars) else {
            return unevaluated(literals);
        };
        let mut left = false;
        while chars.next_if_eq(&'-').is_some() {
            left = true;
        }
        let mut width: Option<usize> = None;
        if chars.next_if_eq(&'*').is_some() {
            let index = match position(&mut chars) {
                Ok(Some(n)) => n,
                Ok(None) => next,
                Err(()) => return unevaluated(literals),
            };
            next = index + 1;
            let Some(Arg::Known(n)) = values.get(index) else {
                return unevaluated(literals);
            };
            let Ok(n) = n.trim().parse::<i64>() else {
                return unevaluated(literals);
            };
            left |= n < 0;
            width = Some(usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX));
        } else {
            let mut digits = String::new();
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                digits.push(d);
            }
            if !digits.is_empty() {
                width = Some(digits.parse().unwrap_or(usize::MAX));
            }
        }
        if let Some(n) = argpos {
            next = n;
        }
        let Some(value) = values.get(next) else {
            return unevaluated(literals);
        };
        next += 1;
        if let (Arg::Guess(..), Some(seen)) = (value, guessed.get_mut(next - 1)) {
            *seen = true;
        }
        let text = match value {
            Arg::Known(v) => Some(v.clone()),
            Arg::Guess(joined, _) => Some(joined.clone()),
            Arg::Null | Arg::Unknown => None,
        };
        let guess = matches!(value, Arg::Guess(..));
        let made = match (chars.next(), text) {
            (Some('s'), Some(v)) => v,
            (Some('s'), None) if matches!(value, Arg::Null) => String::new(),
            (Some('s' | 'I'), None) if matches!(value, Arg::Unknown) => "x".to_string(),
            (Some('I'), Some(v)) => {
                let bare = v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && v.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                // A guess is not quoted: what it stands for may be a
                // keyword PostgreSQL leaves bare.
                if bare || guess {
                    v
                } else {
                    format!("\"{}\"", v.replace('"', "\"\""))
                }
            }
            (Some('L'), Some(v)) => {
                let quoted = format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"));
                if v.contains('\\') {
                    format!("E{quoted}")
                } else {
                    quoted
                }
            }
            (Some('L'), None) => "NULL".to_string(),
            // PostgreSQL rejects it (a NULL identifier, an unknown type):
            // the statement runs nothing.
            _ => return unevaluated(literals),
        };
        let unknown = match (guess, &made) {
            (false, made) => made.as_str(),
            (true, made) if made.starts_with('\'') || made.starts_with("E'") => "NULL",
            (true, _) => "x",
        };
        if guess && alt.is_none() {
            alt = Some(out.clone());
        }
        // Padding separates words, however wide: one space stands for it.
        let pad = width.is_some_and(|w| w > made.chars().count());
        let texts = [
            Some((&mut out, made.as_str())),
            alt.as_mut().map(|a| (a, unknown)),
        ];
        for (text, value) in texts.into_iter().flatten() {
            if pad && !left {
                text.push(' ');
            }
            text.push_str(value);
            if pad && left {
                text.push(' ');
            }
        }
    }
    let mut parts: Vec<String> = Vec::new();
    for (value, _) in values.iter().zip(&guessed).filter(|(_, seen)| **seen) {
        if let Arg::Guess(_, literals) = value {
            parts.extend(literals.iter().cloned());
        }
    }
    // `executed` may copy what came before the call into its second
    // reading: counted as the alternative's length again, at most.
    let made = out.len()
        + 2 * alt.as_ref().map_or(0, String::len)
        + parts.iter().map(String::len).sum::<usize>();
    match budget.checked_sub(made) {
        Some(left) => *budget = left,
        None => return Format::Unreadable,
    }
    Format::Text(out, alt, parts, after)
}

#[cfg(test)]
mod tests {
    use super::super::tx_policy::effects;
    use super::*;

    fn one(sql: &str) -> Effect {
        effects(sql).remove(0)
    }

    #[test]
    fn do_blocks_are_read_for_session_state() {
        for sql in [
            "DO $$BEGIN SET work_mem = '1MB'; END$$",
            "do $x$ declare n int; begin perform set_config('a.b', '1', false); end $x$",
            "DO $$BEGIN IF true THEN LISTEN ch; END IF; END$$",
            "DO $$BEGIN CREATE TEMP TABLE t (a int); END$$",
            "DO $$BEGIN PERFORM pg_advisory_lock(1); END$$",
            "DO $$BEGIN EXECUTE 'SET ROLE x'; END$$",
            "DO $$BEGIN EXECUTE format('SET %I = %L', 'work_mem', '1MB'); END$$",
            "DO $$BEGIN EXECUTE 'SET ' || 'work_mem = 1'; END$$",
            "DO $$BEGIN EXECUTE 'LIS' || 'TEN x'; END$$",
            "DO $$BEGIN EXECUTE E'SET work_mem = \\'1MB\\''; END$$",
            "DO 'BEGIN RESET ALL; END'",
            "DO LANGUAGE plpgsql $$BEGIN DISCARD ALL; END$$",
            "DO $$BEGIN SELECT 1 INTO TEMP t; END$$",
            "DO $$BEGIN EXECUTE $q$DO $i$BEGIN SET x.y = 1; END$i$$q$; END$$",
            "DO $$BEGIN 'unterminated; END$$",
            // What the server decodes and pghalo would have to.
            "DO E'BEGIN \\114ISTEN x; END'",
            "DO U&'BEGIN \\004CISTEN x; END'",
            "DO $$BEGIN EXECUTE E'\\114ISTEN x'; END$$",
            "DO $$BEGIN EXECUTE U&'\\004CISTEN x'; END$$",
            // Adjacent literals are one string.
            "DO 'BEGIN LIS'\n'TEN x; END'",
            // A language spelt in a way pghalo does not read is PL/pgSQL.
            "DO LANGUAGE U&\"plpgsql\" $$BEGIN LISTEN x; END$$",
            "DO $$BEGIN EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1; END$$",
            "DO $$BEGIN DO $i$BEGIN LISTEN x; END$i$; END$$",
            // format() evaluated with its literal arguments.
            "DO $$BEGIN EXECUTE format('%s', 'LISTEN x'); END$$",
            "DO $$BEGIN EXECUTE format('%s x', 'listen'); END$$",
            "DO $$BEGIN EXECUTE format('%I x', 'listen'); END$$",
            "DO $$BEGIN EXECUTE format('%2$s %1$s', 'x', 'LISTEN'); END$$",
            "DO $$BEGIN EXECUTE format('%-10s x', 'listen'); END$$",
            "DO $$BEGIN EXECUTE format('%%%s', 'x; LISTEN y'); END$$",
            "DO $$BEGIN EXECUTE 'LISTEN ' || format('%I', 'x'); END$$",
            "DO $$BEGIN EXECUTE format('SET %I = %L', name, val); END$$",
            "DO $$BEGIN EXECUTE pg_catalog.format(E'%2$s', lower('x'), 'LISTEN x'); END$$",
            // Widths pad: a space separates words.
            "DO $$BEGIN EXECUTE format('%-7sx', 'LISTEN'); END$$",
            "DO $$BEGIN EXECUTE format('LISTEN%2s', 'x'); END$$",
            "DO $$BEGIN EXECUTE format('SELECT 1 -%1s-1; LISTEN x', ''); END$$",
            "DO $$BEGIN EXECUTE format('%*s', 3, 'SET work_mem = 1'); END$$",
            "DO $$BEGIN EXECUTE format('%*s%s', 0, 'LIS', 'TEN x'); END$$",
            // Arguments that are not one literal.
            "DO $$BEGIN EXECUTE format('%s', 'LISTEN x'::text); END$$",
            "DO $$BEGIN EXECUTE format('%s', lower('LISTEN x')); END$$",
            "DO $$BEGIN EXECUTE format('%s', format('LISTEN %s', 'x')); END$$",
            "DO $$BEGIN EXECUTE format('LIS%sTEN x', NULL); END$$",
            "DO $$BEGIN EXECUTE format('%3$s', ARRAY['a', 'b'], 'c', 'LISTEN x'); END$$",
            // A format string joined from literals.
            "DO $$BEGIN EXECUTE format('LIS' || 'TEN %s', 'x'); END$$",
            "DO $$BEGIN EXECUTE format('') || format('') || format('%s', 'LISTEN x'); END$$",
            // Widths from arguments, as PostgreSQL reads them.
            "DO $$BEGIN EXECUTE format('%*1$s', 10, 'LISTEN x'); END$$",
            "DO $$BEGIN EXECUTE format('SELECT %1$*s; LISTEN x', 5, '--'); END$$",
            // Guessed arguments: also read literal by literal.
            "DO $$BEGIN EXECUTE format('%s', format('%s', 'LISTEN x')); END$$",
            "DO $$BEGIN EXECUTE format('%s', concat_ws(' ', 'LISTEN', 'x')); END$$",
            "DO $$BEGIN EXECUTE format('%I x', lower('LISTEN')); END$$",
            "DO $$BEGIN EXECUTE format('SELECT %s; LISTEN x', coalesce(v, '--')); END$$",
            "DO $$BEGIN EXECUTE format('%s', coalesce(v, '--')) || '; LISTEN y'; END$$",
            // An odd quote in a piece: refused, as the LISTEN or as text
            // pghalo cannot read, never let through.
            "DO $$BEGIN EXECUTE format(v, 'a''', 'LISTEN y', ''''); END$$",
            "DO $$BEGIN EXECUTE format('SELECT %s %s; LISTEN x; SELECT ''%s', replace('--', '-', ''), concat('''', v), concat(w, '')); END$$",
            // A format pghalo does not evaluate: each literal a statement.
            "DO $$BEGIN EXECUTE format(v, 'LISTEN x'); END$$",
        ] {
            assert!(
                matches!(one(sql), Effect::Refuse(_)),
                "{sql}: {:?}",
                one(sql)
            );
        }
        for sql in [
            "DO $$BEGIN INSERT INTO t VALUES (1); END$$",
            "DO $$DECLARE r record; BEGIN FOR r IN SELECT 1 LOOP RAISE NOTICE 'set %', r; END LOOP; END$$",
            "DO $$BEGIN SET LOCAL work_mem = '1MB'; UPDATE t SET a = 1; END$$",
            "DO $$BEGIN EXECUTE 'UPDATE t SET a = 1'; END$$",
            "DO $$BEGIN EXECUTE 'SELECT ' || 'a FROM t'; END$$",
            // Migrations: fragments of a statement are not statements.
            "DO $$BEGIN EXECUTE 'UPDATE ' || quote_ident('t') || ' SET updated_at = now()'; END$$",
            "DO $$BEGIN EXECUTE 'ALTER TABLE ' || 't' || ' RESET (fillfactor)'; END$$",
            "DO $$DECLARE temp int; BEGIN SELECT count(*) INTO temp FROM t; END$$",
            "DO $$DECLARE temp int; BEGIN INSERT INTO t VALUES (1) RETURNING a INTO temp; END$$",
            "DO $$BEGIN EXECUTE 'INSERT INTO t VALUES ($1)' USING 'SET x = 1'; END$$",
            "DO E'BEGIN NULL; END'",
            "DO E'BEGIN RAISE NOTICE \\'it\\'\\'s\\'; END'",
            "DO LANGUAGE plperl $$ spi_exec_query('SET x.y = 1') $$",
            "DO $$ SET x = 1 $$ LANGUAGE plpython3u",
            "DO LANGUAGE 'plpython3u' $$ SET x = 1 $$",
            // An audit trigger made by a migration.
            "DO $$BEGIN EXECUTE 'CREATE TRIGGER a AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit(''full'')'; END$$",
            "DO $$BEGIN EXECUTE 'GRANT EXECUTE ON FUNCTION f() TO app'; END$$",
            "DO $$DECLARE temp int; BEGIN EXECUTE 'SELECT 1' INTO temp USING 1; END$$",
            "DO $$BEGIN DO $i$BEGIN NULL; END$i$; END$$",
            // An argument of format() is a value, not a statement.
            "DO $$BEGIN EXECUTE format('INSERT INTO log VALUES (%L)', 'reset done'); END$$",
            "DO $$BEGIN EXECUTE format('UPDATE %I SET a = %L', t, 'LISTEN x'); END$$",
            "DO $$BEGIN EXECUTE format('SELECT %L', E'a\\\\'); END$$",
            "DO $$BEGIN EXECUTE format('UPDATE %I SET a = %s', 'My Table', 1); END$$",
            // A format string over several lines, as migrations write it.
            "DO $$BEGIN EXECUTE format('UPDATE %I ' || 'SET a = %L WHERE id = %s', t, v, id); END$$",
            "DO $$BEGIN EXECUTE format('UPDATE %I '\n'SET a = %L', t, v); END$$",
            "DO $$BEGIN EXECUTE format('ALTER TABLE %I ' || 'RESET (fillfactor)', t); END$$",
            "DO $$BEGIN EXECUTE format('ALTER TABLE %I ADD COLUMN %I text', t, c); END$$",
            // Arguments beyond the format's are not used.
            "DO $$BEGIN EXECUTE format('SELECT %s', lower('x'), 'LISTEN x'); END$$",
            &format!(
                "DO $$BEGIN SELECT CASE {} END INTO x; END$$",
                "WHEN a THEN 1 ".repeat(200)
            ),
        ] {
            assert_eq!(one(sql), Effect::Plain, "{sql}");
        }
    }

    #[test]
    fn deep_or_wide_bodies_are_read_in_bounded_time_or_refused() {
        // Each level doubled the work once: '' || $a$ EXECUTE '' || $b$...
        let mut sql = String::from("SELECT 1");
        for level in 0..40 {
            sql = format!("EXECUTE '' || $l{level}$ {sql} $l{level}$");
        }
        let started = std::time::Instant::now();
        let effect = one(&format!("DO $$BEGIN {sql}; END$$"));
        assert!(matches!(effect, Effect::Refuse(_)), "{effect:?}");
        // Plain nesting deep enough to overflow a recursive reader's stack.
        let mut sql = String::from("SELECT 1");
        for level in 0..6000 {
            sql = format!("EXECUTE $l{level}$ {sql} $l{level}$");
        }
        let effect = one(&format!("DO $$BEGIN {sql}; END$$"));
        assert!(matches!(effect, Effect::Refuse(_)), "{effect:?}");
        // Many starts in one statement: free unless they open with a word
        // a rule starts with, and then at most MAX_STARTS of them.
        let wide = "IF true THEN NULL ".repeat(5000);
        let effect = one(&format!("DO $$BEGIN {wide}; END$$"));
        assert_eq!(effect, Effect::Plain);
        let wide = "IF true THEN DISCARD PLANS ".repeat(5000);
        let effect = one(&format!("DO $$BEGIN {wide}; END$$"));
        assert!(matches!(effect, Effect::Refuse(_)), "{effect:?}");
        // format() calls nested or repeated: few evaluated, and what they
        // make is bounded.
        let nested = format!(
            "{}'x'{}",
            "format('%s' || ".repeat(20_000),
            ")".repeat(20_000)
        );
        let effect = one(&format!("DO $$BEGIN EXECUTE {nested}; END$$"));
        assert_eq!(effect, Effect::Plain);
        let growing = format!(
            "DO $$BEGIN EXECUTE format('{}', '{}'); END$$",
            "%1$s".repeat(20_000),
            "x".repeat(20_000)
        );
        assert!(matches!(one(&growing), Effect::Refuse(_)));
        // Plain text after the budget (64 KiB here) is spent, in the same
        // call or the next.
        for (copies, length, after, next) in [
            (8, 8192, "z", "SELECT 1"),
            (7, 9360, "", "SELECT 1, 2, 3, 4, 5"),
        ] {
            let spent = format!(
                "DO $$BEGIN EXECUTE format('{}{after}', '{}'); EXECUTE format('{next}'); END$$",
                "%1$s".repeat(copies),
                "a".repeat(length)
            );
            assert!(
                matches!(one(&spent), Effect::Refuse(_)),
                "{copies} x {length}"
            );
        }
        // A guessed argument used many times counts once.
        let guesses = format!(
            "DO $$BEGIN EXECUTE format('{}', concat({})); END$$",
            "%1$s".repeat(20_000),
            vec!["''"; 5_000].join(", ")
        );
        assert_eq!(one(&guesses), Effect::Plain);
        let repeated = format!(
            "DO $$BEGIN EXECUTE 'SELECT 1' {}; END$$",
            format!("|| format('%1$s%1$s%1$s', '{}') ", "x".repeat(1000)).repeat(1000)
        );
        assert_eq!(one(&repeated), Effect::Plain);
        // Generous for a debug build on a shared machine: the unbounded
        // reader took seconds on the first case alone.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// format() calls of any shape inside EXECUTE: never a panic.
    #[test]
    fn random_format_calls_never_panic() {
        const PIECES: [&str; 22] = [
            "'", "''", "'%s'", "'%I'", "'%L'", "'%%'", "'%2$s'", "'%-5s'", "'%*s'", "'%'", "'%1$'",
            "'%0$s'", "E'\\\\'", "U&'x'", "x", ", ", "(", ")", " || ", "LISTEN ", "format(", "é",
        ];
        for _ in 0..COUNT {
            let len = rand::random::<usize>() % 12;
            let args: String = (0..len)
                .map(|_| PIECES[rand::random::<usize>() % PIECES.len()])
                .collect();
            let _ = effects(&format!("DO $$BEGIN EXECUTE format({args}); END$$"));
        }
    }

    const COUNT: usize = 20_000;

    /// Client text of any shape: never a panic, whatever it is made of.
    #[test]
    fn random_text_built_from_sql_pieces_never_panics() {
        const PIECES: [&str; 39] = [
            "DO ",
            "$$",
            "$a$",
            "'",
            "''",
            "E'",
            "\\",
            "U&",
            "\"",
            "UESCAPE ",
            "!",
            "BEGIN ",
            "EXECUTE ",
            "SET ",
            "LISTEN ",
            "; ",
            "INTO ",
            "TEMP ",
            "pg_temp.",
            "CREATE ",
            "TABLE ",
            "(",
            ")",
            " || ",
            "THEN ",
            "LANGUAGE ",
            "é",
            "\\0073",
            "--",
            "\n",
            "/*",
            "EXPLAIN ",
            "format(",
            "%s",
            "%I",
            "%L",
            "%2$",
            "%-3",
            ", ",
        ];
        for _ in 0..COUNT {
            let len = rand::random::<usize>() % 24;
            let text: String = (0..len)
                .map(|_| PIECES[rand::random::<usize>() % PIECES.len()])
                .collect();
            let _ = effects(&text);
        }
    }
}
