//! The ordered, epoch-stamped topology decisions (DESIGN rule 3): every
//! change pghalo makes to the cluster (promote a node, detach one, attach
//! one back) is first a [`Decision`] committed here with the next epoch and
//! a reason, and only then acted on. [`Solo`] is the one-instance
//! implementation: it commits at once. The watchdog brings the consensus
//! implementation behind the same [`Coordinator`] trait. Must not run
//! commands: it decides, `failover` acts.
//!
//! Not yet: the decided state kept in a state file across restarts
//! (pgpool_status's job). Until then a restart relies on the node table's
//! timeline rule: of two nodes claiming to be primary, the one on the
//! newer timeline is taken, so a restarted old primary is never routed to.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::cluster::{Epoch, NodeId};

/// A change of topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Make `node` the primary in place of `replaces` (failed).
    Promote {
        node: NodeId,
        replaces: Option<NodeId>,
    },
    /// Take `node` out of routing.
    Detach { node: NodeId },
    /// Put `node` back into routing.
    Attach { node: NodeId },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Promote {
                node,
                replaces: Some(old),
            } => write!(f, "promote node {node} in place of node {old}"),
            Decision::Promote {
                node,
                replaces: None,
            } => write!(f, "promote node {node}"),
            Decision::Detach { node } => write!(f, "detach node {node}"),
            Decision::Attach { node } => write!(f, "attach node {node}"),
        }
    }
}

/// A decision with its place in the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub epoch: Epoch,
    pub decision: Decision,
    pub reason: String,
    pub at: SystemTime,
}

/// Why a decision was not committed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Made under an older epoch than the last committed one.
    #[error("decided under epoch {made_under}, but epoch {current} is already committed")]
    Stale { made_under: Epoch, current: Epoch },
}

pub type Decided<'a> = Pin<Box<dyn Future<Output = Result<Committed, Refused>> + Send + 'a>>;

/// Where decisions are committed.
pub trait Coordinator: Send + Sync {
    /// Commits `decision`, made knowing the decisions up to `made_under`:
    /// refused if another was committed since (the caller looks again).
    fn decide(&self, decision: Decision, reason: String, made_under: Epoch) -> Decided<'_>;

    /// The epoch of the last committed decision.
    fn epoch(&self) -> Epoch;

    /// Every committed decision, oldest first (`ctl events`).
    fn events(&self) -> Vec<Committed>;
}

/// One pghalo instance deciding alone.
#[derive(Debug, Default)]
pub struct Solo {
    log: Mutex<Vec<Committed>>,
}

impl Solo {
    pub fn new() -> Solo {
        Solo::default()
    }

    fn commit(
        &self,
        decision: Decision,
        reason: String,
        made_under: Epoch,
    ) -> Result<Committed, Refused> {
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = log.last().map_or(Epoch::ZERO, |c| c.epoch);
        if made_under != current {
            return Err(Refused::Stale {
                made_under,
                current,
            });
        }
        let committed = Committed {
            epoch: current.next(),
            decision,
            reason,
            at: SystemTime::now(),
        };
        tracing::info!(epoch = %committed.epoch, reason = %committed.reason, "decided: {}", committed.decision);
        log.push(committed.clone());
        Ok(committed)
    }
}

impl Coordinator for Solo {
    fn decide(&self, decision: Decision, reason: String, made_under: Epoch) -> Decided<'_> {
        let outcome = self.commit(decision, reason, made_under);
        Box::pin(async move { outcome })
    }

    fn epoch(&self) -> Epoch {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last()
            .map_or(Epoch::ZERO, |c| c.epoch)
    }

    fn events(&self) -> Vec<Committed> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn epochs_rise_and_stale_decisions_are_refused() {
        let solo = Solo::new();
        assert_eq!(solo.epoch(), Epoch::ZERO);
        let first = solo
            .decide(
                Decision::Detach { node: NodeId(2) },
                "down".into(),
                Epoch::ZERO,
            )
            .await
            .unwrap();
        assert_eq!(first.epoch, Epoch(1));
        let promote = Decision::Promote {
            node: NodeId(1),
            replaces: Some(NodeId(0)),
        };
        // Made before the detach was committed: refused.
        assert_eq!(
            solo.decide(promote.clone(), "x".into(), Epoch::ZERO).await,
            Err(Refused::Stale {
                made_under: Epoch::ZERO,
                current: Epoch(1)
            })
        );
        let second = solo
            .decide(promote, "primary down".into(), Epoch(1))
            .await
            .unwrap();
        assert_eq!(second.epoch, Epoch(2));
        assert_eq!(
            second.decision.to_string(),
            "promote node 1 in place of node 0"
        );
        assert_eq!(solo.events().len(), 2);
        assert_eq!(solo.epoch(), Epoch(2));
    }
}
