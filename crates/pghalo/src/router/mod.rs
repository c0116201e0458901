//! Statement classification and node choice: pure functions over statement
//! text and the cluster snapshot.
//!
//! Owns: what a statement does, as far as routing and pooling need to know.
//! Must not: do I/O or take locks.

pub mod lexer;
