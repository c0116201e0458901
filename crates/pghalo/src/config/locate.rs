//! Turns a byte offset into a line and a key path, and a key path back into a
//! line, so that every configuration error can say where it is.
//!
//! serde's errors know a span but not the key; validation after
//! deserialisation knows the key but not the span. The document parsed once
//! more with `toml_edit`, which keeps every key's span, answers both.

use std::fmt;
use std::ops::Range;

use toml_edit::{Array, ArrayOfTables, ImDocument, Item, TableLike, Value};

/// One step of a key path: a key in a table or a position in an array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path as an operator would type it: `pool.max_pool_size`,
/// `backend[1].weight`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(super) struct KeyPath(pub(super) Vec<Seg>);

impl KeyPath {
    pub(super) fn key(mut self, key: &str) -> KeyPath {
        self.0.push(Seg::Key(key.to_owned()));
        self
    }

    pub(super) fn index(mut self, index: usize) -> KeyPath {
        self.0.push(Seg::Index(index));
        self
    }

    pub(super) fn parent(&self) -> KeyPath {
        let mut parent = self.0.clone();
        parent.pop();
        KeyPath(parent)
    }

    pub(super) fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Key(key)) => Some(key),
            _ => None,
        }
    }

    pub(super) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The table this path names, as its header would read: `[pool]`,
    /// `backend[1]` (an element of `[[backend]]`).
    pub(super) fn as_table(&self) -> String {
        match self.0.last() {
            Some(Seg::Key(_)) => format!("[{self}]"),
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The 1-based line of a byte offset; an offset past the end (a span from a
/// different text, which would be a bug) clamps to the last line rather than
/// panicking.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// The deepest key whose key or value covers `offset`.
pub(super) fn path_at(doc: &ImDocument<&str>, offset: usize) -> KeyPath {
    let mut path = Vec::new();
    in_table(doc.as_table(), offset, &mut path);
    KeyPath(path)
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset) || s.start == offset)
}

fn in_table(table: &dyn TableLike, offset: usize, path: &mut Vec<Seg>) -> bool {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        path.push(Seg::Key(name.to_owned()));
        if covers(key.span(), offset) || in_item(item, offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn in_item(item: &Item, offset: usize, path: &mut Vec<Seg>) -> bool {
    match item {
        // A table's own span runs from its header to its last value, so it
        // is checked after its children to let the deeper key win.
        Item::Table(table) => in_table(table, offset, path) || covers(table.span(), offset),
        Item::ArrayOfTables(array) => {
            for (index, table) in array.iter().enumerate() {
                path.push(Seg::Index(index));
                if in_table(table, offset, path) || covers(table.span(), offset) {
                    return true;
                }
                path.pop();
            }
            false
        }
        Item::Value(value) => in_value(value, offset, path),
        Item::None => false,
    }
}

fn in_value(value: &Value, offset: usize, path: &mut Vec<Seg>) -> bool {
    match value {
        Value::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                path.push(Seg::Index(index));
                if in_value(element, offset, path) {
                    return true;
                }
                path.pop();
            }
            covers(array.span(), offset)
        }
        Value::InlineTable(table) => in_table(table, offset, path) || covers(table.span(), offset),
        other => covers(other.span(), offset),
    }
}

/// Where `path` is written: the span of its key (or of its array element),
/// or, when it was not written at all (a default that fails a check against
/// another key), of the deepest part of it that was.
pub(super) fn span_of(doc: &ImDocument<&str>, path: &KeyPath) -> Option<Range<usize>> {
    let mut best = None;
    let mut node = Node::Table(doc.as_table());
    for seg in &path.0 {
        let Some((span, next)) = step(node, seg) else {
            break;
        };
        best = span.or(best);
        node = next;
    }
    best
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a dyn TableLike),
    Tables(&'a ArrayOfTables),
    Array(&'a Array),
    Leaf,
}

fn step<'a>(node: Node<'a>, seg: &Seg) -> Option<(Option<Range<usize>>, Node<'a>)> {
    match (node, seg) {
        (Node::Table(table), Seg::Key(name)) => {
            let (key, item) = table.get_key_value(name)?;
            Some((key.span().or_else(|| item.span()), node_of_item(item)))
        }
        (Node::Tables(array), Seg::Index(index)) => {
            let table = array.get(*index)?;
            Some((table.span(), Node::Table(table)))
        }
        (Node::Array(array), Seg::Index(index)) => {
            let value = array.get(*index)?;
            Some((value.span(), node_of_value(value)))
        }
        _ => None,
    }
}

fn node_of_item(item: &Item) -> Node<'_> {
    match item {
        Item::Table(table) => Node::Table(table),
        Item::ArrayOfTables(array) => Node::Tables(array),
        Item::Value(value) => node_of_value(value),
        Item::None => Node::Leaf,
    }
}

fn node_of_value(value: &Value) -> Node<'_> {
    match value {
        Value::InlineTable(table) => Node::Table(table),
        Value::Array(array) => Node::Array(array),
        _ => Node::Leaf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
[pool]
max_pool_size = 4
mode = \"session\"

[[backend]]
host = \"a\"
port = 1

[[backend]]
host = \"b\"
flags = [\"X\", \"Y\"]
opts = { a = 1, b = 2 }
";

    fn doc() -> ImDocument<&'static str> {
        ImDocument::parse(TEXT).unwrap()
    }

    fn offset_of(needle: &str) -> usize {
        TEXT.find(needle).unwrap()
    }

    #[test]
    fn lines() {
        assert_eq!(line_of(TEXT, 0), 1);
        assert_eq!(line_of(TEXT, offset_of("max_pool_size")), 3);
        assert_eq!(line_of(TEXT, usize::MAX), TEXT.lines().count() + 1);
    }

    #[test]
    fn path_at_offsets() {
        let doc = doc();
        let at = |needle: &str| path_at(&doc, offset_of(needle)).to_string();
        assert_eq!(at("max_pool_size"), "pool.max_pool_size");
        assert_eq!(at("\"session\""), "pool.mode");
        assert_eq!(at("\"b\""), "backend[1].host");
        assert_eq!(at("\"Y\""), "backend[1].flags[1]");
        assert_eq!(at("b = 2"), "backend[1].opts.b");
        assert_eq!(at("[pool]"), "pool");
        assert_eq!(at("# comment"), "");
    }

    #[test]
    fn spans_of_paths() {
        let doc = doc();
        let line = |path: KeyPath| span_of(&doc, &path).map(|s| line_of(TEXT, s.start));
        let backend = |i| KeyPath::default().key("backend").index(i);
        assert_eq!(line(KeyPath::default().key("pool").key("mode")), Some(4));
        assert_eq!(line(backend(1).key("host")), Some(11));
        assert_eq!(line(backend(1)), Some(10));
        // Not written: falls back to the element that holds it.
        assert_eq!(line(backend(0).key("weight")), Some(6));
        assert_eq!(line(backend(1).key("opts").key("b")), Some(13));
        assert_eq!(line(backend(1).key("flags").index(1)), Some(12));
        assert_eq!(line(KeyPath::default().key("tls").key("enabled")), None);
    }

    #[test]
    fn key_path_display() {
        let p = KeyPath::default().key("backend").index(2).key("weight");
        assert_eq!(p.to_string(), "backend[2].weight");
        assert_eq!(p.parent().as_table(), "backend[2]");
        assert_eq!(KeyPath::default().key("pool").as_table(), "[pool]");
        assert_eq!(p.last_key(), Some("weight"));
    }
}
