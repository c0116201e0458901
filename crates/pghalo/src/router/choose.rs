//! Which node serves a read: pure functions over the cluster snapshot, the
//! backend weights and a session's constraints. Writes need no choosing:
//! they go to the snapshot's primary.
//!
//! pgpool's model, kept: every routable node takes reads in proportion to
//! its weight, the primary included; the choice is made once per session
//! (or per statement with statement_level_load_balance); a chosen standby
//! past delay_threshold sends that read to the primary, or, with
//! prefer_lower_delay_standby, to the least delayed standby within the
//! limit. Beyond pgpool: a session reading its own writes only reads from a
//! standby whose replay, as the monitor last saw it, has passed them.

use crate::cluster::{ClusterSnapshot, LagLimits, Lsn, NodeId, NodeState, Role};
use crate::config::{RedirectPreference, RedirectTarget};

/// What a read must respect besides the snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadConstraints {
    pub limits: LagLimits,
    pub prefer_lower_delay_standby: bool,
    /// Read-your-writes: the WAL position the session's last write reached;
    /// a standby serves the read only once its replay LSN is at or past it.
    /// The monitor's replay LSN is a past reading of a value that only
    /// grows, so a standby it shows past the write is past it now.
    pub replayed_at_least: Option<Lsn>,
}

/// The node a session's reads go to when nothing forbids it: drawn by
/// weight among the routable nodes within the lag limits (pgpool's
/// select_load_balancing_node), or as a redirect preference says.
/// `draws` are two uniform numbers in [0, 1): one for the preference's
/// ratio, one for the weighted pick. None when no node is routable.
pub fn choose_read_node(
    snapshot: &ClusterSnapshot,
    constraints: &ReadConstraints,
    preference: Option<&RedirectPreference>,
    draws: (f64, f64),
) -> Option<NodeId> {
    let usable_standby = |n: &NodeState| n.role == Role::Standby && usable(n, constraints);
    if let Some(preference) = preference {
        let hit = draws.0 < preference.ratio;
        let target = match (preference.target, hit) {
            (RedirectTarget::Primary, true) => snapshot.primary,
            (RedirectTarget::Primary, false) | (RedirectTarget::Standby, true) => {
                weighted(&snapshot.nodes, usable_standby, draws.1)
            }
            (RedirectTarget::Node(id), true) => snapshot
                .node(NodeId(id))
                .filter(|n| usable(n, constraints))
                .map(|n| n.id),
            // pgpool sends what the ratio leaves to the primary.
            (RedirectTarget::Standby | RedirectTarget::Node(_), false) => snapshot.primary,
        };
        if target.is_some() {
            return target;
        }
    }
    weighted(&snapshot.nodes, |n| usable(n, constraints), draws.1)
}

/// Where a read goes now, for a session whose read node is `chosen`: that
/// node while it stays usable; else the least delayed usable standby if
/// `prefer_lower_delay_standby`; else the primary. None: no primary known
/// and nothing else usable.
pub fn read_node_now(
    snapshot: &ClusterSnapshot,
    constraints: &ReadConstraints,
    chosen: Option<NodeId>,
) -> Option<NodeId> {
    if let Some(node) = chosen.and_then(|id| snapshot.node(id))
        && usable(node, constraints)
    {
        return Some(node.id);
    }
    if constraints.prefer_lower_delay_standby
        && let Some(node) = snapshot
            .standbys()
            .filter(|n| usable(n, constraints) && n.weight > 0.0)
            .min_by_key(|n| n.lag_bytes.unwrap_or(u64::MAX))
    {
        return Some(node.id);
    }
    snapshot.primary
}

/// Whether a read may run on `node` now.
pub fn usable(node: &NodeState, constraints: &ReadConstraints) -> bool {
    if !node.is_routable() {
        return false;
    }
    if node.role == Role::Primary {
        return true;
    }
    if node.is_behind(&constraints.limits) {
        return false;
    }
    match constraints.replayed_at_least {
        None => true,
        Some(wanted) => node.lsn.replay.is_some_and(|replay| replay >= wanted),
    }
}

/// A draw by weight (`draw` in [0, 1)); nodes of weight 0 never win.
fn weighted(nodes: &[NodeState], keep: impl Fn(&NodeState) -> bool, draw: f64) -> Option<NodeId> {
    let candidates = || nodes.iter().filter(|n| n.weight > 0.0 && keep(n));
    let total: f64 = candidates().map(|n| n.weight).sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = draw.clamp(0.0, 1.0) * total;
    let mut last = None;
    for node in candidates() {
        if point < node.weight {
            return Some(node.id);
        }
        point -= node.weight;
        last = Some(node.id);
    }
    // Rounding left the point past the end: the last node is the one.
    last
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::{Epoch, NodeLsns, Status};

    fn node(id: usize, role: Role, weight: f64, lag: Option<u64>) -> NodeState {
        NodeState {
            port: 5432 + id as u16,
            weight,
            lsn: NodeLsns {
                current: None,
                receive: None,
                replay: lag.map(|l| Lsn(1000 - l)),
            },
            lag_bytes: lag,
            lag_time: lag.map(|_| Duration::ZERO),
            ..NodeState::up_for_test(id, role)
        }
    }

    fn cluster(weights: [f64; 3]) -> ClusterSnapshot {
        ClusterSnapshot {
            epoch: Epoch(1),
            generation: 1,
            primary: Some(NodeId(0)),
            nodes: vec![
                node(0, Role::Primary, weights[0], Some(0)),
                node(1, Role::Standby, weights[1], Some(0)),
                node(2, Role::Standby, weights[2], Some(0)),
            ],
        }
    }

    fn spread(snapshot: &ClusterSnapshot, c: &ReadConstraints) -> [usize; 3] {
        let mut counts = [0; 3];
        for i in 0..1000 {
            let draw = (i as f64 + 0.5) / 1000.0;
            let id = choose_read_node(snapshot, c, None, (0.0, draw)).unwrap();
            counts[id.index()] += 1;
        }
        counts
    }

    #[test]
    fn reads_spread_by_weight_primary_included() {
        let c = ReadConstraints::default();
        assert_eq!(spread(&cluster([1.0, 2.0, 1.0]), &c), [250, 500, 250]);
        assert_eq!(spread(&cluster([0.0, 1.0, 1.0]), &c), [0, 500, 500]);
    }

    #[test]
    fn down_and_lagging_standbys_get_no_reads() {
        let mut s = cluster([1.0, 1.0, 1.0]);
        s.nodes[1].status = Status::Down;
        s.nodes[2].lag_bytes = Some(10_000);
        let c = ReadConstraints {
            limits: LagLimits {
                bytes: Some(1000),
                time: None,
            },
            ..ReadConstraints::default()
        };
        assert_eq!(spread(&s, &c), [1000, 0, 0]);
        // A session that chose node 2 before it fell behind reads from the
        // primary, or from the least delayed standby when preferred.
        assert_eq!(read_node_now(&s, &c, Some(NodeId(2))), Some(NodeId(0)));
        s.nodes[1].status = Status::Up;
        let prefer = ReadConstraints {
            prefer_lower_delay_standby: true,
            ..c
        };
        assert_eq!(read_node_now(&s, &prefer, Some(NodeId(2))), Some(NodeId(1)));
    }

    #[test]
    fn unknown_lag_counts_as_over_a_set_limit() {
        let mut s = cluster([1.0, 1.0, 1.0]);
        s.nodes[1].lag_bytes = None;
        let c = ReadConstraints {
            limits: LagLimits {
                bytes: Some(1000),
                time: None,
            },
            ..ReadConstraints::default()
        };
        assert!(!usable(&s.nodes[1], &c));
        assert!(usable(&s.nodes[1], &ReadConstraints::default()));
    }

    #[test]
    fn read_your_writes_needs_replay_past_the_write() {
        let mut s = cluster([1.0, 1.0, 1.0]);
        s.nodes[1].lsn.replay = Some(Lsn(500));
        s.nodes[2].lsn.replay = Some(Lsn(900));
        let c = ReadConstraints {
            replayed_at_least: Some(Lsn(800)),
            ..ReadConstraints::default()
        };
        assert_eq!(spread(&s, &c), [500, 0, 500]);
        assert_eq!(read_node_now(&s, &c, Some(NodeId(1))), Some(NodeId(0)));
        s.nodes[2].lsn.replay = None;
        assert_eq!(read_node_now(&s, &c, Some(NodeId(2))), Some(NodeId(0)));
    }

    #[test]
    fn false_primaries_and_unknown_nodes_get_nothing() {
        let mut s = cluster([1.0, 1.0, 1.0]);
        s.nodes[1].role = Role::FalsePrimary(crate::cluster::FalsePrimary::Ambiguous);
        s.nodes[2].role = Role::Unknown;
        assert_eq!(spread(&s, &ReadConstraints::default()), [1000, 0, 0]);
        s.primary = None;
        s.nodes[0].role = Role::Unknown;
        assert_eq!(
            choose_read_node(&s, &ReadConstraints::default(), None, (0.0, 0.5)),
            None
        );
    }

    #[test]
    fn redirect_preferences_take_their_ratio() {
        let s = cluster([1.0, 1.0, 1.0]);
        let c = ReadConstraints::default();
        let pref: RedirectPreference = "app:standby(0.25)".parse().unwrap();
        let mut counts = [0; 3];
        for i in 0..100 {
            for j in 0..10 {
                let draws = ((i as f64 + 0.5) / 100.0, (j as f64 + 0.5) / 10.0);
                counts[choose_read_node(&s, &c, Some(&pref), draws)
                    .unwrap()
                    .index()] += 1;
            }
        }
        assert_eq!(counts, [750, 125, 125]);
        let pref: RedirectPreference = "app:primary".parse().unwrap();
        assert_eq!(
            choose_read_node(&s, &c, Some(&pref), (0.5, 0.9)),
            Some(NodeId(0))
        );
        let pref: RedirectPreference = "app:2".parse().unwrap();
        assert_eq!(
            choose_read_node(&s, &c, Some(&pref), (0.5, 0.1)),
            Some(NodeId(2))
        );
    }
}
