//! Which standby to promote when the primary is gone: pure, over the last
//! snapshot before the failure.
//!
//! The rule: among the standbys that are up, not detached, and within
//! max_lag_on_failover
//! of the primary's last known position, the one that has received the most
//! WAL
//! (it holds every commit the others hold; with `ANY 1` synchronous
//! replication, every acknowledged commit is on at least one standby, so
//! the most advanced one has them all). Ties go to the higher
//! `promotion_priority`, then to the lowest node id, so that every instance
//! picks the same node; a standby with priority 0 is never promoted
//! automatically (its position still counts for the synchronous rule). (DISALLOW_TO_FAILOVER, as in
//! pgpool, is about the failed node: the caller does not fail it over.)
//!
//! With synchronous replication on the failed primary, enough of the
//! listed standbys must be up for the most advanced one to hold every
//! acknowledged commit (`sync_rule.rs`); otherwise nothing is promoted
//! automatically. The one promoted need not be listed itself: being the
//! most advanced, it holds whatever the listed ones hold.

use crate::cluster::{ClusterSnapshot, Lsn, NodeId, NodeState, Role, Status};

use super::sync_rule::{SyncRule, SyncRuleError};

/// Why no standby can be promoted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoCandidate {
    #[error("no standby is up")]
    NoStandbyUp,
    #[error(
        "every eligible standby is further behind than max_lag_on_failover ({limit} bytes): the most advanced lacks {lag} bytes"
    )]
    TooFarBehind { limit: u64, lag: u64 },
    #[error("no standby has reported a WAL position")]
    NoPosition,
    #[error(
        "the most advanced standby, {node}, has promotion_priority 0 and is never promoted automatically"
    )]
    NeverPromoted { node: String },
    #[error(
        "synchronous replication ({rule}): an acknowledged commit may be only on a standby that is not up; {heard} of the {listed} listed standbys answered and {needed} must (promote one by hand to accept the loss)"
    )]
    SyncUnsure {
        rule: String,
        heard: usize,
        needed: usize,
        listed: usize,
    },
    #[error("{0} (promote one by hand if no acknowledged commit can be lost)")]
    SyncUnreadable(SyncRuleError),
}

/// The standby to promote in place of `failed`.
pub fn choose_candidate(
    snapshot: &ClusterSnapshot,
    failed: NodeId,
    max_lag: Option<u64>,
) -> Result<NodeId, NoCandidate> {
    let up: Vec<&NodeState> = snapshot
        .nodes
        .iter()
        .filter(|n| {
            n.id != failed && n.role == Role::Standby && n.status == Status::Up && !n.detached
        })
        .collect();
    if up.is_empty() {
        return Err(NoCandidate::NoStandbyUp);
    }
    let sync_names = snapshot
        .node(failed)
        .and_then(|p| p.synchronous_standby_names.as_deref())
        .unwrap_or("");
    if let Some(rule) = SyncRule::parse(sync_names).map_err(NoCandidate::SyncUnreadable)? {
        let standbys: Vec<&str> = snapshot
            .nodes
            .iter()
            .filter(|n| n.id != failed)
            .map(|n| n.application_name.as_str())
            .collect();
        let answered: Vec<&str> = up.iter().map(|n| n.application_name.as_str()).collect();
        let requirement = rule.required(&standbys);
        if !requirement.met_by(&answered) {
            return Err(NoCandidate::SyncUnsure {
                rule: rule.to_string(),
                heard: requirement
                    .members
                    .iter()
                    .filter(|m| answered.iter().any(|a| a.eq_ignore_ascii_case(m)))
                    .count(),
                needed: requirement.needed,
                listed: requirement.listed,
            });
        }
    }
    let position = |n: &NodeState| -> Option<Lsn> {
        match (n.lsn.receive, n.lsn.replay) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    };
    let most = up
        .iter()
        .filter_map(|n| position(n))
        .max()
        .ok_or(NoCandidate::NoPosition)?;
    // Only a standby with everything the most advanced one has: promoting
    // a less advanced one of higher priority could lose commits.
    let best = up
        .iter()
        .filter(|n| position(n) == Some(most))
        .filter(|n| n.promotion_priority > 0)
        // Higher priority first; equal priorities: the lowest id.
        .max_by(|a, b| {
            a.promotion_priority
                .cmp(&b.promotion_priority)
                .then(b.id.cmp(&a.id))
        })
        .map(|n| (most, n.id))
        .ok_or_else(|| NoCandidate::NeverPromoted {
            node: up
                .iter()
                .find(|n| position(n) == Some(most))
                .map_or_else(String::new, |n| n.name.clone()),
        })?;
    if let (Some(limit), Some(primary_at)) =
        (max_lag, snapshot.node(failed).and_then(|p| p.lsn.current))
    {
        let lag = primary_at.bytes_after(best.0);
        if lag > limit {
            return Err(NoCandidate::TooFarBehind { limit, lag });
        }
    }
    Ok(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Epoch, NodeLsns};

    fn node(id: usize, role: Role, receive: Option<u64>) -> NodeState {
        NodeState {
            lsn: NodeLsns {
                current: (role == Role::Primary).then_some(Lsn(1000)),
                receive: receive.map(Lsn),
                replay: receive.map(|r| Lsn(r.saturating_sub(10))),
            },
            ..NodeState::up_for_test(id, role)
        }
    }

    fn cluster(standbys: &[Option<u64>]) -> ClusterSnapshot {
        let mut nodes = vec![node(0, Role::Primary, None)];
        for (i, receive) in standbys.iter().enumerate() {
            nodes.push(node(i + 1, Role::Standby, *receive));
        }
        nodes[0].status = Status::Down;
        ClusterSnapshot {
            epoch: Epoch(1),
            generation: 1,
            primary: Some(NodeId(0)),
            nodes,
        }
    }

    #[test]
    fn the_most_advanced_standby_wins_ties_to_the_lowest_id() {
        let s = cluster(&[Some(900), Some(950)]);
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(2)));
        let s = cluster(&[Some(950), Some(950)]);
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(1)));
    }

    #[test]
    fn down_detached_and_lagging_standbys_are_not_candidates() {
        let mut s = cluster(&[Some(900), Some(950)]);
        s.nodes[2].detached = true;
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(1)));
        s.nodes[2].detached = false;
        s.nodes[2].status = Status::Down;
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(1)));
        s.nodes[1].status = Status::Down;
        assert_eq!(
            choose_candidate(&s, NodeId(0), None),
            Err(NoCandidate::NoStandbyUp)
        );
        let s = cluster(&[Some(900), Some(950)]);
        assert_eq!(choose_candidate(&s, NodeId(0), Some(50)), Ok(NodeId(2)));
        assert_eq!(
            choose_candidate(&s, NodeId(0), Some(10)),
            Err(NoCandidate::TooFarBehind { limit: 10, lag: 50 })
        );
        let s = cluster(&[None, None]);
        assert_eq!(
            choose_candidate(&s, NodeId(0), None),
            Err(NoCandidate::NoPosition)
        );
    }

    #[test]
    fn priority_breaks_ties_and_zero_is_never_promoted() {
        let mut s = cluster(&[Some(950), Some(950)]);
        s.nodes[2].promotion_priority = 5;
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(2)));
        // Priority never beats position.
        let mut s = cluster(&[Some(950), Some(900)]);
        s.nodes[2].promotion_priority = 5;
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(1)));
        // The most advanced is never promoted: nobody is (the other may
        // lack commits).
        s.nodes[1].promotion_priority = 0;
        assert_eq!(
            choose_candidate(&s, NodeId(0), None),
            Err(NoCandidate::NeverPromoted {
                node: "node1".into()
            })
        );
    }

    #[test]
    fn synchronous_replication_needs_enough_listed_standbys() {
        let mut s = cluster(&[Some(900), Some(950)]);
        s.nodes[0].synchronous_standby_names = Some("ANY 1 (node1, node2)".into());
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(2)));
        // node2 may hold a commit node1 lacks: node1 alone is not enough.
        s.nodes[2].status = Status::Down;
        let refused = choose_candidate(&s, NodeId(0), None).unwrap_err();
        assert!(
            matches!(
                refused,
                NoCandidate::SyncUnsure {
                    heard: 1,
                    needed: 2,
                    listed: 2,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains("promote one by hand"),
            "{refused}"
        );
        // Every commit is on the one synchronous standby, which is up.
        s.nodes[0].synchronous_standby_names = Some("node1".into());
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(1)));
        s.nodes[0].synchronous_standby_names = Some("FIRST 1 (node2)".into());
        assert!(matches!(
            choose_candidate(&s, NodeId(0), None),
            Err(NoCandidate::SyncUnsure { .. })
        ));
        s.nodes[0].synchronous_standby_names = Some("ANY 1 (node1".into());
        assert!(matches!(
            choose_candidate(&s, NodeId(0), None),
            Err(NoCandidate::SyncUnreadable(_))
        ));
        s.nodes[0].synchronous_standby_names = Some(String::new());
        assert_eq!(choose_candidate(&s, NodeId(0), None), Ok(NodeId(1)));
    }
}
