//! What the control path tells the cluster: one node checked once, with
//! what it answered or why it did not. Observations are facts, not
//! decisions; the table turns them into roles (see `table.rs`).

use std::fmt;
use std::time::{Duration, SystemTime};

use super::types::{Lsn, NodeId};

/// One check of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub node: NodeId,
    /// When the check started (wall clock, for display).
    pub at: SystemTime,
    /// How long it took, answer or not.
    pub elapsed: Duration,
    /// 0 for a check on schedule; n for the nth retry of a failed one
    /// (health_check_max_retries).
    pub retry: u32,
    pub outcome: Result<Probe, CheckError>,
}

/// What a node answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// `pg_is_in_recovery()`: false means the node says it is a primary.
    pub in_recovery: bool,
    /// The node's timeline: on a primary the one it writes, on a standby
    /// the newest it has received (see the probe), even when not streaming.
    pub timeline: Option<u32>,
    /// `pg_current_wal_lsn()`, on a node not in recovery.
    pub current_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()`, on a standby.
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()`, on a standby.
    pub replay_lsn: Option<Lsn>,
    /// On a standby, `now() - pg_last_xact_replay_timestamp()` when it has
    /// received WAL it has not replayed, else zero (pgpool's convention);
    /// None when no transaction was replayed since the standby started.
    pub replay_delay: Option<Duration>,
    /// `server_version_num`.
    pub server_version: Option<u32>,
    /// On a primary, its `synchronous_standby_names` (`""` when
    /// replication is asynchronous); None on a standby.
    pub synchronous_standby_names: Option<String>,
    /// On a primary, one entry per walsender (`pg_stat_replication`).
    pub senders: Vec<Sender>,
    /// On a standby, its `primary_slot_name`; None when it has none.
    pub slot_name: Option<String>,
}

/// One walsender of a primary, as `pg_stat_replication` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    /// The standby's application_name (pgpool backend_application_name).
    pub application_name: String,
    /// `startup`, `catchup`, `streaming`, `backup`, `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
}

/// Why a check got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckError {
    pub kind: CheckErrorKind,
    /// One line for the operator; never holds a password.
    pub message: String,
}

impl CheckError {
    pub fn new(kind: CheckErrorKind, message: impl Into<String>) -> CheckError {
        CheckError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// The kinds of failure the cluster tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckErrorKind {
    /// No answer within health_check_timeout (a hung node, or a network that
    /// drops packets).
    Timeout,
    /// The connection could not be made (refused, unreachable, DNS).
    Connect,
    /// The connection broke during the check.
    Closed,
    /// The server answered that it cannot serve now (starting up, shutting
    /// down).
    Unavailable,
    /// The server answered that it has no connection slot left
    /// (too_many_connections): busy, not down. pgpool-II fails over here;
    /// a full primary is still a writable primary, so pghalo does not.
    Busy,
    /// The server failed the check's query for another reason.
    Query,
    /// pghalo's settings are wrong for this node: the user, password or
    /// database is refused, or the user lacks a privilege. Not a node
    /// failure: the node answered (issue 5: "reported as a configuration
    /// error, not a node failure that triggers failover").
    Config,
}

impl CheckErrorKind {
    /// True if this failure says the node itself is not serving.
    pub const fn means_down(self) -> bool {
        !matches!(self, CheckErrorKind::Config | CheckErrorKind::Busy)
    }
}

impl fmt::Display for CheckErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckErrorKind::Timeout => "timeout",
            CheckErrorKind::Connect => "cannot connect",
            CheckErrorKind::Closed => "connection lost",
            CheckErrorKind::Unavailable => "unavailable",
            CheckErrorKind::Busy => "too many connections",
            CheckErrorKind::Query => "query failed",
            CheckErrorKind::Config => "configuration error",
        })
    }
}
