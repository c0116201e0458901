//! The ordered, epoch-stamped topology decisions (DESIGN rule 3): every
//! change pghalo makes to the cluster (promote a node, detach one, attach
//! one back) is first a [`Decision`] committed here with the next epoch and
//! a reason, and only then acted on. [`Solo`] is the one-instance
//! implementation: it commits at once. The watchdog brings the consensus
//! implementation behind the same [`Coordinator`] trait. Must not run
//! commands: it decides, `failover` acts.
//!
//! # Layout
//! - `mod.rs`: the trait, [`Decision`], [`Event`].
//! - `solo.rs`: [`Solo`].
//! - `state_file.rs`: the decided state kept across restarts
//!   (pgpool_status's job) and the task that keeps it.

mod solo;
mod state_file;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use crate::cluster::{Epoch, NodeId};

pub use solo::Solo;
pub use state_file::{DecidedPrimary, DecidedState, StateFile, StateFileError, StateKeeper};

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

    /// Every committed decision and report, oldest first (`ctl events`).
    fn events(&self) -> Vec<Event>;

    /// Records something that needs an operator without changing the
    /// topology (a failover that is not safe to do automatically).
    fn report(&self, what: String, reason: String);
}

/// One line of `ctl events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The decision's epoch; None for a report.
    pub epoch: Option<Epoch>,
    pub at: SystemTime,
    /// The decision ("promote node 2 in place of node 0") or the report.
    pub what: String,
    pub reason: String,
}

impl From<&Committed> for Event {
    fn from(c: &Committed) -> Event {
        Event {
            epoch: Some(c.epoch),
            at: c.at,
            what: c.decision.to_string(),
            reason: c.reason.clone(),
        }
    }
}
