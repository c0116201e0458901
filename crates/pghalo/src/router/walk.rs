//! A complete walk over a pg_query parse tree.
//!
//! Every protobuf node type in pg_query derives `serde::Serialize`, so a
//! serializer that writes nothing visits every field of every node, nested
//! however deeply: no node type can be forgotten, which a hand-written walk
//! over the ~270 node kinds could not promise (pg_query's own `nodes()`
//! skips LIMIT, window clauses, array subscripts and more). The walk notes
//! what routing needs: the functions called, the relations named, and the
//! constructs that make a query a writer (row locks, INTO, DML nodes).
//!
//! Depth is bounded by pg_query itself: its protobuf decoding refuses trees
//! nested more than 100 messages deep, and the parse then fails (the
//! statement goes to the primary).

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;

use serde::Serialize;
use serde::ser;

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// Called functions: (schema as written, name).
    pub functions: Unique<(Option<String>, String)>,
    /// Relation names (RangeVar.relname), schema dropped, duplicates
    /// removed.
    pub relations: Unique<String>,
    /// A FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE clause.
    pub row_lock: bool,
    /// An INTO clause (SELECT INTO, CREATE TABLE AS).
    pub into: bool,
    /// An INSERT, UPDATE, DELETE or MERGE node (a data-modifying CTE when
    /// found under a SELECT).
    pub modifies: bool,
    /// The first node kind met (the statement's own, when walking one).
    pub root: &'static str,
}

/// Walks `node` and everything under it.
pub(crate) fn collect<T: Serialize + ?Sized>(node: &T, facts: &mut Facts) {
    let mut walker = Walker {
        facts,
        structs: Vec::with_capacity(32),
        field: "",
        capture: None,
    };
    // The walker itself never fails; an error could only come from a
    // Serialize impl, and then the facts gathered so far stand.
    let _ = node.serialize(&mut walker);
}

struct Walker<'f> {
    facts: &'f mut Facts,
    /// Names of the structs being serialized, innermost last.
    structs: Vec<&'static str>,
    /// The field of the innermost struct being serialized.
    field: &'static str,
    /// Strings of a FuncCall's `funcname` while it is being walked.
    capture: Option<Vec<String>>,
}

impl Walker<'_> {
    fn innermost(&self) -> &'static str {
        self.structs.last().copied().unwrap_or("")
    }

    fn enter(&mut self, name: &'static str) {
        match name {
            "LockingClause" => self.facts.row_lock = true,
            "IntoClause" => self.facts.into = true,
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => self.facts.modifies = true,
            _ => {}
        }
        self.structs.push(name);
    }

    fn record_function(&mut self, mut names: Vec<String>) {
        let Some(name) = names.pop() else { return };
        let schema = names.pop();
        self.facts.functions.insert((schema, name));
    }
}

/// Items in first-seen order, each once: compared one by one while few,
/// through a hash set beyond, so that a statement naming thousands of
/// relations costs linear time.
#[derive(Debug, Clone)]
pub(crate) struct Unique<T> {
    items: Vec<T>,
    index: Option<HashSet<T>>,
}

impl<T> Default for Unique<T> {
    fn default() -> Self {
        Unique {
            items: Vec::new(),
            index: None,
        }
    }
}

impl<T: Eq + Hash + Clone> Unique<T> {
    const LINEAR: usize = 16;

    pub(crate) fn insert(&mut self, item: T) -> bool {
        let new = match self.index.as_mut() {
            Some(index) => index.insert(item.clone()),
            None => !self.items.contains(&item),
        };
        if new {
            self.items.push(item);
            if self.index.is_none() && self.items.len() > Self::LINEAR {
                self.index = Some(self.items.iter().cloned().collect());
            }
        }
        new
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    pub(crate) fn into_vec(self) -> Vec<T> {
        self.items
    }
}

impl<T: Eq + Hash + Clone> FromIterator<T> for Unique<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut unique = Unique::default();
        for item in iter {
            unique.insert(item);
        }
        unique
    }
}

#[derive(Debug)]
pub(crate) struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("walk error")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Never
    }
}

type Done = Result<(), Never>;

impl ser::Serializer for &mut Walker<'_> {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> Done {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Done {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Done {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Done {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Done {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Done {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Done {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Done {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Done {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Done {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Done {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Done {
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Done {
        match (self.innermost(), self.field) {
            ("String", "sval") => {
                if let Some(names) = self.capture.as_mut() {
                    names.push(v.to_owned());
                }
            }
            ("RangeVar", "relname") if !v.is_empty() => {
                self.facts.relations.insert(v.to_owned());
            }
            _ => {}
        }
        Ok(())
    }

    fn serialize_bytes(self, _: &[u8]) -> Done {
        Ok(())
    }
    fn serialize_none(self) -> Done {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Done {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Done {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Done {
        if self.facts.root.is_empty() {
            self.facts.root = variant;
        }
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, Never> {
        self.enter(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        self.enter(variant);
        Ok(self)
    }
}

impl ser::SerializeStruct for &mut Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Done {
        self.field = key;
        if key == "funcname" && self.innermost() == "FuncCall" {
            let outer = self.capture.replace(Vec::new());
            let result = value.serialize(&mut **self);
            let names = std::mem::replace(&mut self.capture, outer).unwrap_or_default();
            self.record_function(names);
            result
        } else {
            value.serialize(&mut **self)
        }
    }

    fn end(self) -> Done {
        self.structs.pop();
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Done {
        self.field = key;
        value.serialize(&mut **self)
    }

    fn end(self) -> Done {
        self.structs.pop();
        Ok(())
    }
}

impl ser::SerializeSeq for &mut Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }

    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }

    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }

    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }

    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeMap for &mut Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Done {
        key.serialize(&mut **self)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }

    fn end(self) -> Done {
        Ok(())
    }
}
