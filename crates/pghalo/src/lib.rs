//! pghalo: a PostgreSQL high-availability middleware (the job pgpool-II with
//! watchdog does for a streaming-replication cluster).
//!
//! # Layout
//! The data path runs `proxy -> router, pool -> backend -> net ->
//! pghalo-protocol`; the control path runs `health -> coordinator ->
//! failover/recovery -> cluster`, and the two meet only in `cluster`'s
//! immutable snapshot. ARCHITECTURE.md at the repository root is the codemap;
//! each module's own docs say what it owns and what it must not touch.

pub mod admin;

pub mod backend;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod daemon;
pub mod failover;
pub mod health;
pub mod lab;
pub mod net;
pub mod pool;
pub mod process;
pub mod proxy;
pub mod recovery;
pub mod router;
pub mod watchdog;
