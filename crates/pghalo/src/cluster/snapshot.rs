//! The immutable picture of the cluster that readers get: every node's
//! identity, role, status, WAL positions and lag, and the epoch of the
//! roles. Built by the owner task only; never changed once published.

use std::time::{Duration, SystemTime};

use crate::config::{BackendFlags, BackendHost, StreamingReplicationConfig};

use super::observation::CheckError;
use super::types::{Epoch, Lsn, NodeId, Role, Status};

/// The cluster as the control path last saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSnapshot {
    /// The epoch of the roles below: raised by every change of any role.
    pub epoch: Epoch,
    /// Raised by every publication, role change or not (a new check time
    /// is enough); lets a reader tell that something was published.
    pub generation: u64,
    /// The node writes go to, if one is known. Always the one node whose
    /// role is `Primary`.
    pub primary: Option<NodeId>,
    /// Every configured node, by id.
    pub nodes: Vec<NodeState>,
}

impl ClusterSnapshot {
    pub fn node(&self, id: NodeId) -> Option<&NodeState> {
        self.nodes.get(id.index())
    }

    pub fn node_named(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The primary's state, if a primary is known.
    pub fn primary_node(&self) -> Option<&NodeState> {
        self.primary.and_then(|id| self.node(id))
    }

    /// The nodes taken as standbys, up or not.
    pub fn standbys(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| n.role == Role::Standby)
    }
}

/// One node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeState {
    pub id: NodeId,
    /// `[[backend]] name`.
    pub name: String,
    /// The name it streams under (pgpool backend_application_name).
    pub application_name: String,
    pub host: BackendHost,
    pub port: u16,
    /// pgpool backend_weight (changes on reload).
    pub weight: f64,
    pub flags: BackendFlags,
    /// `[[backend]] promotion_priority`: 0 = never promoted automatically.
    pub promotion_priority: u32,
    pub role: Role,
    /// The epoch at which `role` was set.
    pub role_epoch: Epoch,
    pub status: Status,
    /// What the node said at its last answer: `Some(false)` = "I am a
    /// primary". Stale while `status` is not `Up`.
    pub in_recovery: Option<bool>,
    /// The last timeline seen.
    pub timeline: Option<u32>,
    /// The WAL positions of the last answer (kept when the node goes
    /// down, with `last_check` saying how old they are).
    pub lsn: NodeLsns,
    /// Bytes of WAL the node has still to replay: the primary's current
    /// LSN minus this standby's replay LSN (0 on the primary). None when
    /// either is down or unknown.
    pub lag_bytes: Option<u64>,
    /// How far behind its replay is in time (see `Probe::replay_delay`; 0
    /// on the primary). None while the node is not up.
    pub lag_time: Option<Duration>,
    /// When the last check started, answered or not.
    pub last_check: Option<SystemTime>,
    /// How long the last check took.
    pub last_check_duration: Option<Duration>,
    /// When the status or the role last changed (pgpool's
    /// last_status_change); None while neither has.
    pub status_changed: Option<SystemTime>,
    /// Taken out of routing by a committed decision (pgpool shows such a
    /// node as down).
    pub detached: bool,
    /// Detached by the operator (`pghalo ctl detach`): auto_failback
    /// leaves it alone.
    pub detached_by_hand: bool,
    /// When it was detached (or when a restart took the detachment over).
    pub detached_since: Option<SystemTime>,
    /// When the node last answered.
    pub last_answer: Option<SystemTime>,
    /// Why the last check failed; None after an answer.
    pub last_error: Option<CheckError>,
    /// `server_version_num`.
    pub server_version: Option<u32>,
    /// The `synchronous_standby_names` of the node's last answer as a
    /// primary (kept when it goes down: the failover's synchronous rule
    /// reads the dead primary's); None if it last answered as a standby.
    pub synchronous_standby_names: Option<String>,
    /// On a standby, how the primary's last answer showed its walsender;
    /// None when the primary is not up or has no walsender for it.
    pub replication: Option<Replication>,
    /// On a standby, its `primary_slot_name` at its last answer (the slot
    /// to drop on the primary once it has been detached too long).
    pub slot_name: Option<String>,
    /// Every check since pghalo started (SHOW POOL_HEALTH_CHECK_STATS).
    pub checks: CheckStats,
}

/// Counts of a node's checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    pub total: u64,
    pub success: u64,
    pub fail: u64,
    /// Failed checks in a row that said the node is down (a refused login
    /// neither counts nor resets them).
    pub consecutive_failures: u32,
    /// Checks that retried a failed one (health_check_max_retries).
    pub retries: u64,
    /// The most retries one failure had.
    pub max_retry: u32,
    pub min: Option<Duration>,
    pub max: Option<Duration>,
    pub sum: Duration,
    /// When the last failed check started.
    pub last_failure: Option<SystemTime>,
}

impl CheckStats {
    pub fn average(&self) -> Option<Duration> {
        u32::try_from(self.total)
            .ok()
            .filter(|n| *n > 0)
            .map(|n| self.sum / n)
    }

    /// Retries per check on schedule (pgpool's average_retry_count).
    pub fn average_retries(&self) -> f64 {
        let scheduled = self.total.saturating_sub(self.retries);
        if scheduled == 0 {
            0.0
        } else {
            self.retries as f64 / scheduled as f64
        }
    }

    /// Records one check that took `elapsed`; `retry` as in
    /// [`Observation`](super::Observation); `down` for a failure that says
    /// the node is not serving, `failed` for any failure.
    pub(super) fn record(
        &mut self,
        at: SystemTime,
        elapsed: Duration,
        retry: u32,
        failed: bool,
        down: bool,
    ) {
        self.total += 1;
        if retry > 0 {
            self.retries += 1;
            self.max_retry = self.max_retry.max(retry);
        }
        self.sum += elapsed;
        self.min = Some(self.min.map_or(elapsed, |m| m.min(elapsed)));
        self.max = Some(self.max.map_or(elapsed, |m| m.max(elapsed)));
        if failed {
            self.fail += 1;
            self.last_failure = Some(at);
            if down {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            }
        } else {
            self.success += 1;
            self.consecutive_failures = 0;
        }
    }
}

/// Why a node is out of routing, if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detachment {
    Attached,
    /// By pghalo (a failed standby, one that could not follow, a
    /// switchover's old primary): auto_failback may attach it again.
    Automatic,
    /// By the operator: only `pghalo ctl attach` brings it back.
    ByHand,
}

/// A standby's stream as the primary reports it (SHOW POOL_NODES'
/// replication_state and replication_sync_state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    pub state: String,
    pub sync_state: String,
}

/// The WAL positions a node reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeLsns {
    /// `pg_current_wal_lsn()` (a node not in recovery).
    pub current: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()` (a standby).
    pub receive: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()` (a standby).
    pub replay: Option<Lsn>,
}

impl NodeState {
    /// A configured node nothing has been observed about: waiting, role
    /// unknown, at epoch 0.
    pub fn configured(
        id: NodeId,
        name: String,
        host: BackendHost,
        port: u16,
        weight: f64,
        flags: BackendFlags,
    ) -> NodeState {
        NodeState {
            id,
            application_name: name.clone(),
            name,
            host,
            port,
            weight,
            flags,
            promotion_priority: 1,
            role: Role::Unknown,
            role_epoch: Epoch::ZERO,
            status: Status::Waiting,
            in_recovery: None,
            timeline: None,
            lsn: NodeLsns::default(),
            lag_bytes: None,
            lag_time: None,
            last_check: None,
            last_check_duration: None,
            status_changed: None,
            detached: false,
            detached_by_hand: false,
            detached_since: None,
            last_answer: None,
            last_error: None,
            server_version: None,
            synchronous_standby_names: None,
            replication: None,
            slot_name: None,
            checks: CheckStats::default(),
        }
    }

    /// For unit tests: `node<id>` on 127.0.0.1, weight 1, up in `role` on
    /// timeline 1 (in recovery unless primary), observed at epoch 1.
    #[cfg(test)]
    pub(crate) fn up_for_test(id: usize, role: Role) -> NodeState {
        NodeState {
            role,
            role_epoch: Epoch(1),
            status: Status::Up,
            in_recovery: Some(role != Role::Primary),
            timeline: Some(1),
            server_version: Some(150_000),
            ..NodeState::configured(
                NodeId(id),
                format!("node{id}"),
                BackendHost::Tcp("127.0.0.1".into()),
                5432,
                1.0,
                BackendFlags::default(),
            )
        }
    }

    /// Up, and a primary or a standby: a node the data path may use.
    /// Whether a standby is too far behind is `LagLimits`' question.
    pub fn is_routable(&self) -> bool {
        self.status == Status::Up
            && !self.detached
            && matches!(self.role, Role::Primary | Role::Standby)
    }

    /// True if this standby is over `limits`. pgpool's rule: with a time
    /// limit, only time counts; else bytes; with neither, nothing is too
    /// far. A lag that is not known counts as over a limit that is set:
    /// a standby whose distance cannot be measured is not trusted to be
    /// close. The primary is never behind.
    pub fn is_behind(&self, limits: &LagLimits) -> bool {
        if self.role == Role::Primary {
            return false;
        }
        match (limits.time, limits.bytes) {
            (Some(limit), _) => self.lag_time.is_none_or(|lag| lag > limit),
            (None, Some(limit)) => self.lag_bytes.is_none_or(|lag| lag > limit),
            (None, None) => false,
        }
    }
}

/// pgpool's delay_threshold and delay_threshold_by_time, as limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagLimits {
    pub bytes: Option<u64>,
    pub time: Option<Duration>,
}

impl LagLimits {
    pub fn from_config(config: &StreamingReplicationConfig) -> LagLimits {
        LagLimits {
            bytes: Some(config.delay_threshold.bytes()).filter(|b| *b > 0),
            time: config.delay_threshold_by_time.limit(),
        }
    }
}
