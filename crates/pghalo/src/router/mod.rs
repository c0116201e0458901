//! Statement classification and node choice: pure functions over statement
//! text and the cluster snapshot.
//!
//! Owns: what a statement does, as far as routing and pooling need to know.
//! Must not: do I/O or take locks (but the classification cache's own).
//!
//! Layout:
//! - `lexer.rs`: the quote-, dollar-quote- and comment-aware lexer.
//! - `classify.rs`: the [`Classifier`] trait, [`PgQueryClassifier`] (the
//!   real PostgreSQL grammar through libpg_query) and what it reports.
//! - `prescan.rs`: the lexical pass before any parse (statement count,
//!   hints, the literal-masked cache key, the plain-SELECT fast path).
//! - `walk.rs`: a complete walk over a parse tree.
//! - `functions.rs`: which function calls keep a read on the primary
//!   (built-in writers, pgpool's function lists, volatility).
//! - `cache.rs`: the bounded classification cache.
//! - `choose.rs`: which node serves a read (weights, lag, read-your-writes,
//!   redirect preferences).
//! - `corpus.txt`: the statements the classifier is tested against.

mod cache;
pub mod choose;
pub mod classify;
pub mod functions;
pub mod lexer;
mod prescan;
mod walk;

pub use cache::CacheStats;
pub use choose::{ReadConstraints, choose_read_node, read_node_now};
pub use classify::{
    Classification, Classifier, ClassifierConfig, Hint, Isolation, PgQueryClassifier, Reason,
    Route, RouteSetting, StatementKind, TxControl, TxMode,
};
pub use functions::{
    CatalogVolatility, FunctionList, FunctionListError, FunctionRules, FunctionVolatility,
    StaticVolatility, Volatility, merge_volatility,
};
