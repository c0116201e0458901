//! The node table and the rules that turn observations into roles. Pure:
//! no tasks, no clocks, no I/O, so every rule is unit-tested here.
//!
//! # The role rules (the single-node stand-in for the coordinator)
//!
//! A node's *claim* is what it said at its last answer, if that answer is
//! current: the node is up and the check logged in. Then:
//!
//! 1. An ALWAYS_PRIMARY node is the primary, whatever it says.
//! 2. The known primary stays the primary while it claims the role, and
//!    while it cannot be asked for a reason other than being down (a
//!    refused password is pghalo's fault, not the node's).
//! 3. A known primary that is down is replaced by a node that claims the
//!    role on a newer timeline, that is, one promoted after it (if several
//!    do, the single highest timeline wins, else none). A node claiming
//!    the role on the same or an older timeline is not taken: nothing
//!    shows it is not the stale one.
//! 4. With no primary known (at start, or after the primary went into
//!    recovery), once every node has been checked at least once, the
//!    claimant is taken; among several, the single highest timeline wins,
//!    else none (they are all false primaries, `Ambiguous`). A claimant on
//!    an older timeline than some node that is up (a standby that follows
//!    a newer primary) is never taken: it is a former primary, even when
//!    the newer primary is down and nothing was kept across a restart.
//! 5. Every other node that claims the role is a false primary; a node in
//!    recovery is a standby; a node with no current claim keeps its role,
//!    except a former primary, whose role becomes unknown.
//!
//! So a snapshot never names two primaries (rule 4 of DESIGN.md), and a
//! standby promoted by someone else becomes the primary only when the old
//! one is gone (down or in recovery). Each pass that changes any role
//! raises the epoch once. Issue 5 moves the choice of the primary into the
//! coordinator: rules 2 to 4 become its decisions, and `settle` applies
//! decided roles instead of choosing them.

use std::time::Duration;

use crate::config::BackendConfig;

use super::observation::{CheckError, Observation, Sender};
use super::snapshot::{ClusterSnapshot, Detachment, NodeLsns, NodeState, Replication};
use super::types::{Epoch, FalsePrimary, NodeId, Role, Status};

/// A role that changed in one `settle`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RoleChange {
    pub(super) node: NodeId,
    pub(super) from: Role,
    pub(super) to: Role,
}

/// What one observation changed that an operator should hear about.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Notice {
    StatusChanged {
        node: NodeId,
        from: Status,
        to: Status,
        error: Option<CheckError>,
    },
    /// A failure that does not change the status (a configuration error),
    /// told once per distinct error rather than at every check.
    NewError { node: NodeId, error: CheckError },
}

struct Entry {
    state: NodeState,
    /// The replay delay of the last answer, kept apart from
    /// `state.lag_time`, which is derived from it and the role.
    replay_delay: Option<Duration>,
    /// The walsenders of the last answer (a primary's).
    senders: Vec<Sender>,
    /// Any check has come back for this node, answer or not.
    checked: bool,
}

pub(super) struct NodeTable {
    entries: Vec<Entry>,
    epoch: Epoch,
    generation: u64,
    primary: Option<NodeId>,
    always_primary: Option<NodeId>,
    /// A node promoted by decision that has not answered as a primary
    /// yet: its stale "in recovery" does not unseat it.
    promoted: Option<NodeId>,
}

impl NodeTable {
    pub(super) fn new(backends: &[BackendConfig]) -> NodeTable {
        let always_primary = backends
            .iter()
            .position(|b| b.flags.always_primary)
            .map(NodeId);
        let entries = backends
            .iter()
            .enumerate()
            .map(|(index, b)| Entry {
                state: NodeState {
                    // Configuration, not an observation: epoch 0.
                    application_name: b.application_name.clone(),
                    promotion_priority: b.promotion_priority,
                    role: if always_primary == Some(NodeId(index)) {
                        Role::Primary
                    } else {
                        Role::Unknown
                    },
                    ..NodeState::configured(
                        NodeId(index),
                        b.name.clone(),
                        b.host.clone(),
                        b.port,
                        b.weight,
                        b.flags,
                    )
                },
                replay_delay: None,
                senders: Vec::new(),
                checked: false,
            })
            .collect();
        NodeTable {
            entries,
            epoch: Epoch::ZERO,
            generation: 0,
            primary: always_primary,
            always_primary,
            promoted: None,
        }
    }

    /// Records one check. Roles are not touched until `settle`.
    pub(super) fn observe(&mut self, obs: Observation) -> Option<Notice> {
        let entry = self.entries.get_mut(obs.node.index())?;
        entry.checked = true;
        let state = &mut entry.state;
        let before = state.status;
        state.last_check = Some(obs.at);
        state.last_check_duration = Some(obs.elapsed);
        let after = match &obs.outcome {
            Ok(_) => Status::Up,
            Err(e) if e.kind.means_down() => Status::Down,
            // A refused login leaves the status as it was.
            Err(_) => before,
        };
        if after != before {
            state.status_changed = Some(obs.at);
        }
        state.checks.record(
            obs.at,
            obs.elapsed,
            obs.retry,
            obs.outcome.is_err(),
            obs.outcome.as_ref().is_err_and(|e| e.kind.means_down()),
        );
        match obs.outcome {
            Ok(probe) => {
                state.status = Status::Up;
                state.last_answer = Some(obs.at);
                state.last_error = None;
                state.in_recovery = Some(probe.in_recovery);
                if !probe.in_recovery && self.promoted == Some(obs.node) {
                    self.promoted = None;
                }
                if probe.timeline.is_some() {
                    state.timeline = probe.timeline;
                }
                state.lsn = NodeLsns {
                    current: probe.current_lsn,
                    receive: probe.receive_lsn,
                    replay: probe.replay_lsn,
                };
                state.server_version = probe.server_version.or(state.server_version);
                state.synchronous_standby_names = probe.synchronous_standby_names;
                state.slot_name = probe.slot_name;
                entry.replay_delay = probe.replay_delay;
                entry.senders = probe.senders;
                (before != Status::Up).then_some(Notice::StatusChanged {
                    node: obs.node,
                    from: before,
                    to: Status::Up,
                    error: None,
                })
            }
            Err(error) if error.kind.means_down() => {
                state.status = Status::Down;
                let repeated = state.last_error.as_ref() == Some(&error);
                state.last_error = Some(error.clone());
                if before != Status::Down {
                    Some(Notice::StatusChanged {
                        node: obs.node,
                        from: before,
                        to: Status::Down,
                        error: Some(error),
                    })
                } else if !repeated {
                    Some(Notice::NewError {
                        node: obs.node,
                        error,
                    })
                } else {
                    None
                }
            }
            Err(error) => {
                // The node answered but would not let the check in: its
                // status and role stay what they were (see the module docs).
                let repeated = state.last_error.as_ref() == Some(&error);
                state.last_error = Some(error.clone());
                (!repeated).then_some(Notice::NewError {
                    node: obs.node,
                    error,
                })
            }
        }
    }

    /// A committed promotion, acted on: `node` becomes the known primary
    /// (rule 2 then keeps it while it claims the role), and stays so while
    /// its last answer, older than the promotion, still says "in
    /// recovery". Ignored with an ALWAYS_PRIMARY node, which nothing
    /// replaces.
    pub(super) fn set_primary(&mut self, node: NodeId) {
        if self.always_primary.is_none() && node.index() < self.entries.len() {
            self.primary = Some(node);
            self.promoted = Some(node);
        }
    }

    /// A committed detach (or attach): a detached node is routed nothing
    /// and is never taken as primary.
    pub(super) fn set_detached(&mut self, node: NodeId, how: Detachment) {
        let Some(entry) = self.entries.get_mut(node.index()) else {
            return;
        };
        let state = &mut entry.state;
        let detached = how != Detachment::Attached;
        if state.detached != detached {
            let now = std::time::SystemTime::now();
            state.status_changed = Some(now);
            state.detached_since = detached.then_some(now);
        }
        state.detached = detached;
        state.detached_by_hand = how == Detachment::ByHand;
    }

    /// Takes the weights of a reloaded configuration. Names, addresses and
    /// flags need a restart (the reload plan says so), so only the weight
    /// of a node that is still the same node changes.
    pub(super) fn update_backends(&mut self, backends: &[BackendConfig]) {
        for (entry, b) in self.entries.iter_mut().zip(backends) {
            let state = &mut entry.state;
            if state.name == b.name && state.host == b.host && state.port == b.port {
                state.weight = b.weight;
                state.promotion_priority = b.promotion_priority;
            }
        }
    }

    /// Applies the role rules to what has been observed, raises the epoch
    /// if any role changed, and derives the lags.
    pub(super) fn settle(&mut self) -> Vec<RoleChange> {
        let primary = self.choose_primary();
        self.primary = primary;
        let undecided = primary.is_none() && !self.all_checked();
        let reason = match primary {
            Some(p) if Some(p) == self.always_primary => FalsePrimary::AlwaysPrimary(p),
            Some(p) => FalsePrimary::OtherPrimary(p),
            None => FalsePrimary::Ambiguous,
        };
        let mut changes = Vec::new();
        for entry in &mut self.entries {
            let state = &entry.state;
            let role = if Some(state.id) == primary {
                Role::Primary
            } else {
                match claim(state) {
                    Some(true) => Role::Standby,
                    // Before every node has answered once, a claimant is
                    // neither the primary nor a false one yet.
                    Some(false) if undecided => Role::Unknown,
                    Some(false) => Role::FalsePrimary(reason),
                    None => match state.role {
                        Role::Primary => Role::Unknown,
                        Role::FalsePrimary(_) => Role::FalsePrimary(reason),
                        other => other,
                    },
                }
            };
            if role != state.role {
                changes.push(RoleChange {
                    node: state.id,
                    from: state.role,
                    to: role,
                });
                entry.state.role = role;
            }
        }
        if !changes.is_empty() {
            self.epoch = self.epoch.next();
            let now = std::time::SystemTime::now();
            for change in &changes {
                let state = &mut self.entries[change.node.index()].state;
                state.role_epoch = self.epoch;
                state.status_changed = Some(now);
            }
        }
        self.derive_lags();
        changes
    }

    pub(super) fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub(super) fn name(&self, node: NodeId) -> &str {
        self.entries
            .get(node.index())
            .map_or("?", |e| e.state.name.as_str())
    }

    /// The next snapshot to publish.
    pub(super) fn snapshot(&mut self) -> ClusterSnapshot {
        self.generation += 1;
        ClusterSnapshot {
            epoch: self.epoch,
            generation: self.generation,
            primary: self.primary,
            nodes: self.entries.iter().map(|e| e.state.clone()).collect(),
        }
    }

    fn all_checked(&self) -> bool {
        self.entries.iter().all(|e| e.checked)
    }

    fn choose_primary(&self) -> Option<NodeId> {
        if self.always_primary.is_some() {
            return self.always_primary;
        }
        let claimants: Vec<&NodeState> = self
            .entries
            .iter()
            .map(|e| &e.state)
            .filter(|s| claim(s) == Some(false) && !s.detached)
            .collect();
        if let Some(known) = self.primary.and_then(|p| self.entries.get(p.index())) {
            let known = &known.state;
            match claim(known) {
                Some(false) => return Some(known.id),
                Some(true) if self.promoted == Some(known.id) => return Some(known.id),
                Some(true) => {} // Went into recovery: choose again below.
                None if known.status != Status::Down => return Some(known.id),
                None => {
                    let newer: Vec<&NodeState> = claimants
                        .iter()
                        .copied()
                        .filter(
                            |c| matches!((c.timeline, known.timeline), (Some(c), Some(k)) if c > k),
                        )
                        .collect();
                    return highest_timeline(&newer).or(Some(known.id));
                }
            }
        }
        if !self.all_checked() {
            return None;
        }
        let newest = self
            .entries
            .iter()
            .filter(|e| e.state.status == Status::Up)
            .filter_map(|e| e.state.timeline)
            .max();
        let current: Vec<&NodeState> = claimants
            .into_iter()
            .filter(|c| newest.is_none_or(|n| c.timeline.is_some_and(|t| t >= n)))
            .collect();
        highest_timeline(&current)
    }

    /// Takes over a state file's decisions before anything is observed:
    /// its primary is the known primary (so rule 3 holds against a former
    /// one on an older timeline), its detached nodes stay detached. Names
    /// the configuration no longer has are returned, and ignored.
    pub(super) fn restore(
        &mut self,
        primary: Option<(&str, Option<u32>)>,
        detached: &[String],
        by_hand: &[String],
    ) -> Vec<String> {
        let mut unknown = Vec::new();
        let mut find = |name: &str| {
            let found = self.entries.iter().position(|e| e.state.name == name);
            if found.is_none() {
                unknown.push(name.to_owned());
            }
            found
        };
        let primary = primary.and_then(|(name, timeline)| find(name).map(|i| (i, timeline)));
        let detached: Vec<(usize, bool)> = detached
            .iter()
            .filter_map(|n| find(n).map(|i| (i, by_hand.contains(n))))
            .collect();
        for (index, by_hand) in detached {
            let how = if by_hand {
                Detachment::ByHand
            } else {
                Detachment::Automatic
            };
            self.set_detached(NodeId(index), how);
        }
        if let (Some((index, timeline)), None) = (primary, self.always_primary) {
            self.primary = Some(NodeId(index));
            let state = &mut self.entries[index].state;
            state.role = Role::Primary;
            state.timeline = timeline;
        }
        unknown
    }

    fn derive_lags(&mut self) {
        let live_primary = self
            .primary
            .and_then(|p| self.entries.get(p.index()))
            .filter(|e| e.state.status == Status::Up);
        let primary_lsn = live_primary.and_then(|e| e.state.lsn.current);
        let senders = live_primary.map(|e| e.senders.clone()).unwrap_or_default();
        for entry in &mut self.entries {
            let state = &mut entry.state;
            // PostgreSQL matches application names without regard to case.
            state.replication = (state.role == Role::Standby)
                .then(|| {
                    senders.iter().find(|s| {
                        s.application_name
                            .eq_ignore_ascii_case(&state.application_name)
                    })
                })
                .flatten()
                .map(|s| Replication {
                    state: s.state.clone(),
                    sync_state: s.sync_state.clone(),
                });
            (state.lag_bytes, state.lag_time) = match (state.status, state.role) {
                (Status::Up, Role::Primary) => (Some(0), Some(Duration::ZERO)),
                (Status::Up, Role::Standby) => (
                    primary_lsn
                        .zip(state.lsn.replay)
                        .map(|(primary, replay)| primary.bytes_after(replay)),
                    entry.replay_delay,
                ),
                _ => (None, None),
            };
        }
    }
}

/// What a node currently says: `Some(true)` in recovery, `Some(false)` a
/// primary, None when its last word is not current (down, waiting, or the
/// check could not log in).
fn claim(state: &NodeState) -> Option<bool> {
    if state.status == Status::Up && state.last_error.is_none() {
        state.in_recovery
    } else {
        None
    }
}

/// The one node among `nodes` on the highest timeline; None when there is
/// none, or when several share the highest (or it is not known).
fn highest_timeline(nodes: &[&NodeState]) -> Option<NodeId> {
    match nodes {
        [] => None,
        [only] => Some(only.id),
        _ => {
            let top = nodes.iter().filter_map(|n| n.timeline).max()?;
            let mut at_top = nodes.iter().filter(|n| n.timeline == Some(top));
            match (at_top.next(), at_top.next()) {
                (Some(node), None) => Some(node.id),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::cluster::observation::{CheckErrorKind, Probe};
    use crate::cluster::types::Lsn;
    use crate::config::Config;

    fn backends(n: usize, always_primary: Option<usize>) -> Vec<BackendConfig> {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "[[backend]]\nhost = \"10.0.0.{i}\"\nport = 5432\n"
            ));
            if always_primary == Some(i) {
                text.push_str("flags = [\"ALWAYS_PRIMARY\"]\n");
            }
        }
        Config::from_str_with_name(&text, "/t.toml")
            .unwrap()
            .backends
    }

    fn primary(node: usize, timeline: u32, lsn: u64) -> Observation {
        answer(
            node,
            Probe {
                in_recovery: false,
                timeline: Some(timeline),
                current_lsn: Some(Lsn(lsn)),
                ..Probe::default()
            },
        )
    }

    fn standby(node: usize, timeline: u32, replay: u64) -> Observation {
        answer(
            node,
            Probe {
                in_recovery: true,
                timeline: Some(timeline),
                receive_lsn: Some(Lsn(replay)),
                replay_lsn: Some(Lsn(replay)),
                replay_delay: Some(Duration::ZERO),
                ..Probe::default()
            },
        )
    }

    fn answer(node: usize, probe: Probe) -> Observation {
        Observation {
            node: NodeId(node),
            at: SystemTime::now(),
            elapsed: Duration::from_millis(1),
            retry: 0,
            outcome: Ok(probe),
        }
    }

    fn failed(node: usize, kind: CheckErrorKind) -> Observation {
        Observation {
            node: NodeId(node),
            at: SystemTime::now(),
            elapsed: Duration::from_millis(1),
            retry: 0,
            outcome: Err(CheckError::new(kind, "test")),
        }
    }

    fn feed(table: &mut NodeTable, observations: Vec<Observation>) -> ClusterSnapshot {
        for obs in observations {
            table.observe(obs);
        }
        table.settle();
        table.snapshot()
    }

    fn roles(snapshot: &ClusterSnapshot) -> Vec<Role> {
        snapshot.nodes.iter().map(|n| n.role).collect()
    }

    fn primaries(snapshot: &ClusterSnapshot) -> usize {
        snapshot
            .nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .count()
    }

    #[test]
    fn status_changed_moves_only_with_the_status_or_the_role() {
        let mut t = NodeTable::new(&backends(2, None));
        assert_eq!(t.snapshot().nodes[1].status_changed, None);
        let up = standby(1, 1, 900);
        let first = up.at;
        let s = feed(&mut t, vec![primary(0, 1, 1000), up]);
        let changed = s.nodes[1].status_changed.unwrap();
        assert!(changed >= first, "up, and a role: {changed:?}");
        // Another answer, same status and role: unchanged.
        let s = feed(&mut t, vec![standby(1, 1, 950)]);
        assert_eq!(s.nodes[1].status_changed, Some(changed));
        // A refused login leaves the status, and its time, alone.
        let s = feed(&mut t, vec![failed(1, CheckErrorKind::Config)]);
        assert_eq!(s.nodes[1].status_changed, Some(changed));
        let down = failed(1, CheckErrorKind::Connect);
        let at = down.at;
        let s = feed(&mut t, vec![down]);
        assert_eq!(s.nodes[1].status, Status::Down);
        assert!(s.nodes[1].status_changed.unwrap() >= at);
    }

    #[test]
    fn starts_waiting_and_finds_the_roles() {
        let mut t = NodeTable::new(&backends(3, None));
        let s = t.snapshot();
        assert!(s.nodes.iter().all(|n| n.status == Status::Waiting));
        assert_eq!(roles(&s), [Role::Unknown; 3]);
        assert_eq!((s.epoch, s.primary), (Epoch::ZERO, None));

        // The primary answers first, but is not taken until every node has
        // been checked: a second claimant could still turn up.
        let s = feed(&mut t, vec![primary(0, 1, 1000), standby(1, 1, 900)]);
        assert_eq!(s.primary, None);
        assert_eq!(roles(&s), [Role::Unknown, Role::Standby, Role::Unknown]);
        assert_eq!(s.epoch, Epoch(1));
        let s = feed(&mut t, vec![standby(2, 1, 1000)]);
        assert_eq!(s.primary, Some(NodeId(0)));
        assert_eq!(roles(&s), [Role::Primary, Role::Standby, Role::Standby]);
        assert_eq!(s.epoch, Epoch(2));
        assert_eq!(s.nodes[0].role_epoch, Epoch(2));
        assert_eq!(s.nodes[1].role_epoch, Epoch(1));
        assert_eq!(s.nodes[1].lag_bytes, Some(100));
        assert_eq!(s.nodes[2].lag_bytes, Some(0));
        assert_eq!(s.nodes[0].lag_bytes, Some(0));

        // Nothing changes: same epoch, new generation.
        let again = feed(&mut t, vec![primary(0, 1, 1000)]);
        assert_eq!(again.epoch, Epoch(2));
        assert!(again.generation > s.generation);
    }

    #[test]
    fn a_down_node_settles_the_start_too() {
        let mut t = NodeTable::new(&backends(3, None));
        let s = feed(
            &mut t,
            vec![
                primary(0, 1, 10),
                standby(1, 1, 10),
                failed(2, CheckErrorKind::Timeout),
            ],
        );
        assert_eq!(s.primary, Some(NodeId(0)));
        assert_eq!(s.nodes[2].status, Status::Down);
        assert_eq!(s.nodes[2].role, Role::Unknown);
        assert_eq!(s.nodes[2].lag_bytes, None);
    }

    #[test]
    fn a_standby_promoted_behind_a_live_primary_is_a_false_primary() {
        let mut t = NodeTable::new(&backends(2, None));
        feed(&mut t, vec![primary(0, 1, 10), standby(1, 1, 10)]);
        let s = feed(&mut t, vec![primary(1, 2, 20), primary(0, 1, 30)]);
        assert_eq!(s.primary, Some(NodeId(0)));
        assert_eq!(
            roles(&s),
            [
                Role::Primary,
                Role::FalsePrimary(FalsePrimary::OtherPrimary(NodeId(0)))
            ]
        );
        assert_eq!(s.epoch, Epoch(2));
        assert_eq!(s.nodes[1].lag_bytes, None);

        // The old primary goes down: the node promoted after it (newer
        // timeline) takes over, and the old one is no longer the primary.
        let s = feed(&mut t, vec![failed(0, CheckErrorKind::Connect)]);
        assert_eq!(s.primary, Some(NodeId(1)));
        assert_eq!(roles(&s), [Role::Unknown, Role::Primary]);
        assert_eq!(s.epoch, Epoch(3));
        assert_eq!(primaries(&s), 1);

        // It comes back still writable: a false primary.
        let s = feed(&mut t, vec![primary(0, 1, 40)]);
        assert_eq!(s.primary, Some(NodeId(1)));
        assert_eq!(
            s.nodes[0].role,
            Role::FalsePrimary(FalsePrimary::OtherPrimary(NodeId(1)))
        );
        assert_eq!(s.epoch, Epoch(4));

        // Rewound and following the new primary: a standby again.
        let s = feed(&mut t, vec![standby(0, 2, 20)]);
        assert_eq!(roles(&s), [Role::Standby, Role::Primary]);
        assert_eq!(s.epoch, Epoch(5));
    }

    #[test]
    fn a_claimant_on_the_same_timeline_does_not_replace_a_down_primary() {
        let mut t = NodeTable::new(&backends(2, None));
        feed(&mut t, vec![primary(0, 3, 10), standby(1, 3, 10)]);
        let s = feed(
            &mut t,
            vec![failed(0, CheckErrorKind::Timeout), primary(1, 3, 10)],
        );
        assert_eq!(s.primary, Some(NodeId(0)));
        assert_eq!(s.nodes[0].role, Role::Primary);
        assert_eq!(s.nodes[0].status, Status::Down);
        assert!(matches!(s.nodes[1].role, Role::FalsePrimary(_)));
    }

    #[test]
    fn a_former_primary_is_not_taken_at_start_when_a_standby_is_newer() {
        // After a failover to node2 (timeline 2), pghalo restarts with no
        // state file while node2 is down and node0, the old primary, is
        // back: node1 follows timeline 2, so node0 is a former primary.
        let mut t = NodeTable::new(&backends(3, None));
        let s = feed(
            &mut t,
            vec![
                primary(0, 1, 50),
                standby(1, 2, 40),
                failed(2, CheckErrorKind::Connect),
            ],
        );
        assert_eq!(s.primary, None);
        assert!(matches!(s.nodes[0].role, Role::FalsePrimary(_)));
        // node2 comes back: it is the primary.
        let s = feed(&mut t, vec![primary(2, 2, 60)]);
        assert_eq!(s.primary, Some(NodeId(2)));
        assert!(matches!(s.nodes[0].role, Role::FalsePrimary(_)));
    }

    #[test]
    fn a_restored_primary_holds_against_a_former_one() {
        // The state file names node2 on timeline 2; node1 is detached.
        let mut t = NodeTable::new(&backends(3, None));
        let unknown = t.restore(
            Some(("node2", Some(2))),
            &["node1".into(), "gone".into()],
            &["node1".into()],
        );
        assert_eq!(unknown, ["gone"]);
        // Everything but node0 is down, and node0 (timeline 1) claims.
        let s = feed(
            &mut t,
            vec![
                primary(0, 1, 50),
                failed(1, CheckErrorKind::Connect),
                failed(2, CheckErrorKind::Connect),
            ],
        );
        assert_eq!(s.primary, Some(NodeId(2)));
        assert!(s.nodes[1].detached && s.nodes[1].detached_by_hand);
        assert!(matches!(s.nodes[0].role, Role::FalsePrimary(_)));
        // A node promoted after node2 (timeline 3) would be taken.
        let s = feed(&mut t, vec![primary(1, 3, 70)]);
        assert_eq!(s.primary, Some(NodeId(2)), "a detached node is not taken");
        let s = feed(&mut t, vec![primary(0, 3, 70)]);
        assert_eq!(s.primary, Some(NodeId(0)));
    }

    #[test]
    fn a_decided_primary_replaces_a_live_one() {
        // A switchover: node1 promoted by pghalo while node0 still runs
        // as a primary (detached first).
        let mut t = NodeTable::new(&backends(2, None));
        feed(&mut t, vec![primary(0, 1, 10), standby(1, 1, 10)]);
        t.set_detached(NodeId(0), Detachment::Automatic);
        t.set_primary(NodeId(1));
        let s = feed(&mut t, vec![primary(1, 2, 20), primary(0, 1, 30)]);
        assert_eq!(s.primary, Some(NodeId(1)));
        assert!(matches!(s.nodes[0].role, Role::FalsePrimary(_)));
        // A promotion decided before node1's next check: its stale "in
        // recovery" does not leave the cluster without a primary.
        let mut t2 = NodeTable::new(&backends(2, None));
        feed(&mut t2, vec![primary(0, 1, 10), standby(1, 1, 10)]);
        t2.set_primary(NodeId(1));
        let s2 = feed(&mut t2, vec![failed(0, CheckErrorKind::Timeout)]);
        assert_eq!(s2.primary, Some(NodeId(1)));
        let s2 = feed(&mut t2, vec![primary(1, 2, 20)]);
        assert_eq!(s2.primary, Some(NodeId(1)));
        // Seen as a primary once, it is a primary like any other: going
        // into recovery later hands over again.
        let s2 = feed(&mut t2, vec![standby(1, 2, 20)]);
        assert_eq!(s2.primary, None);

        // Attached again, it is still not the primary.
        t.set_detached(NodeId(0), Detachment::Attached);
        let s = feed(&mut t, vec![primary(0, 1, 40)]);
        assert_eq!(s.primary, Some(NodeId(1)));
        assert_eq!(primaries(&s), 1);
    }

    #[test]
    fn a_primary_that_goes_into_recovery_hands_over() {
        let mut t = NodeTable::new(&backends(2, None));
        feed(&mut t, vec![primary(0, 1, 10), standby(1, 1, 10)]);
        // Switchover done by someone else: node1 promoted, node0 follows.
        let s = feed(&mut t, vec![primary(1, 2, 20), standby(0, 2, 20)]);
        assert_eq!(s.primary, Some(NodeId(1)));
        assert_eq!(roles(&s), [Role::Standby, Role::Primary]);
        assert_eq!(s.epoch, Epoch(2));
    }

    #[test]
    fn two_claimants_at_start() {
        let mut t = NodeTable::new(&backends(3, None));
        let s = feed(
            &mut t,
            vec![primary(0, 1, 10), primary(1, 2, 10), standby(2, 2, 10)],
        );
        // The newer timeline wins.
        assert_eq!(s.primary, Some(NodeId(1)));
        assert!(matches!(s.nodes[0].role, Role::FalsePrimary(_)));

        let mut t = NodeTable::new(&backends(2, None));
        let s = feed(&mut t, vec![primary(0, 1, 10), primary(1, 1, 10)]);
        assert_eq!(s.primary, None);
        assert_eq!(roles(&s), [Role::FalsePrimary(FalsePrimary::Ambiguous); 2]);
    }

    #[test]
    fn always_primary_is_not_asked() {
        let mut t = NodeTable::new(&backends(2, Some(1)));
        let s = t.snapshot();
        assert_eq!(s.primary, Some(NodeId(1)));
        assert_eq!(s.nodes[1].role, Role::Primary);
        let s = feed(&mut t, vec![primary(0, 1, 10), standby(1, 1, 10)]);
        assert_eq!(s.primary, Some(NodeId(1)));
        assert_eq!(
            s.nodes[0].role,
            Role::FalsePrimary(FalsePrimary::AlwaysPrimary(NodeId(1)))
        );
        assert_eq!(s.nodes[1].role, Role::Primary);
    }

    #[test]
    fn configuration_errors_and_full_servers_do_not_take_a_node_down() {
        let mut t = NodeTable::new(&backends(2, None));
        feed(&mut t, vec![primary(0, 1, 10), standby(1, 1, 10)]);
        assert!(matches!(
            t.observe(failed(0, CheckErrorKind::Busy)),
            Some(Notice::NewError { .. })
        ));
        t.settle();
        assert_eq!(t.snapshot().nodes[0].status, Status::Up);
        assert_eq!(t.snapshot().nodes[0].checks.consecutive_failures, 0);
        let notice = t.observe(failed(0, CheckErrorKind::Config));
        assert!(matches!(notice, Some(Notice::NewError { .. })));
        // The same error again is not news.
        assert_eq!(t.observe(failed(0, CheckErrorKind::Config)), None);
        t.settle();
        let s = t.snapshot();
        assert_eq!(s.nodes[0].status, Status::Up);
        assert_eq!(s.nodes[0].role, Role::Primary);
        assert!(s.nodes[0].last_error.is_some());
        // And a standby claiming primary meanwhile is not taken.
        let s = feed(&mut t, vec![primary(1, 2, 20)]);
        assert_eq!(s.primary, Some(NodeId(0)));
    }

    #[test]
    fn status_notices() {
        let mut t = NodeTable::new(&backends(1, None));
        let n = t.observe(failed(0, CheckErrorKind::Connect));
        assert!(matches!(
            n,
            Some(Notice::StatusChanged {
                from: Status::Waiting,
                to: Status::Down,
                ..
            })
        ));
        assert_eq!(t.observe(failed(0, CheckErrorKind::Connect)), None);
        assert!(matches!(
            t.observe(failed(0, CheckErrorKind::Timeout)),
            Some(Notice::NewError { .. })
        ));
        assert!(matches!(
            t.observe(primary(0, 1, 1)),
            Some(Notice::StatusChanged { to: Status::Up, .. })
        ));
    }

    #[test]
    fn weights_follow_a_reload() {
        let mut t = NodeTable::new(&backends(2, None));
        let mut next = backends(2, None);
        next[1].weight = 3.0;
        t.update_backends(&next);
        assert_eq!(t.snapshot().nodes[1].weight, 3.0);
    }

    #[test]
    fn lag_needs_a_live_primary() {
        let mut t = NodeTable::new(&backends(2, None));
        feed(&mut t, vec![primary(0, 1, 5000), standby(1, 1, 1000)]);
        let s = feed(&mut t, vec![failed(0, CheckErrorKind::Closed)]);
        assert_eq!(s.nodes[1].lag_bytes, None);
        assert_eq!(s.nodes[1].lag_time, Some(Duration::ZERO));
        assert_eq!(s.nodes[0].lag_bytes, None);
    }
}
